"""replay/replayer.py and `embedguard replay`: re-execute a recorded session
against the real Chroma server and diff the answers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from embedguard.cli import app
from embedguard.settings import ReplayTarget, Settings
from pipeline.warehouse import open_warehouse
from replay.replayer import ReplayError, ReplayRefused, replay_session, resolve_target
from replay.sessions import load_session
from tests.replay.conftest import Scenario, chroma_ids, chroma_update_document
from tests.support.approval_e2e import CHROMA_T
from tests.support.services import chroma_server
from tests.support.upstream import recording_upstream

runner = CliRunner()


@pytest.fixture
def config(scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "embedguard.toml"
    path.write_text(
        f"""
[[targets]]
name = "prod"
url = "{scenario.chroma_url}"
production = true

[[targets]]
name = "staging"
url = "{scenario.chroma_url}/"
production = false
"""
    )
    monkeypatch.setenv("EMBEDGUARD_CONFIG", str(path))
    return path


def _replay(args: list[str]) -> dict:  # type: ignore[type-arg]
    res = runner.invoke(app, ["replay", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_changed_document_shows_exactly_that_id(scenario: Scenario) -> None:
    # dave's search ran after every recorded change: replayed now, it is the same
    unchanged = _replay(
        [
            scenario.sessions["dave"],
            "--target",
            scenario.chroma_url,
            "--warehouse",
            scenario.lake_url,
        ]
    )
    assert unchanged["summary"]["replayed"] == 1 and unchanged["summary"]["identical"] == 1
    chroma_update_document(scenario.chroma_url, scenario.cid, "doc-01", "tampered since")
    try:
        out = _replay(
            [
                scenario.sessions["dave"],
                "--target",
                scenario.chroma_url,
                "--warehouse",
                scenario.lake_url,
            ]
        )
    finally:
        chroma_update_document(scenario.chroma_url, scenario.cid, "doc-01", "document 1")
    (step,) = out["steps"]
    assert step["replayed"] and step["status_then"] == 200 and step["status_now"] == 200
    diff = step["diff"]
    assert diff["changed_ids"] == ["doc-01"]
    assert diff["added_ids"] == diff["removed_ids"] == diff["moved_ids"] == []
    assert not diff["identical"] and diff["structural"] == {}
    assert out["summary"] == {
        "steps": 1,
        "replayed": 1,
        "skipped": 0,
        "identical": 0,
        "different": 1,
        "status_changed": 0,
        "errors": 0,
    }


def test_reads_replayed_writes_skipped_by_default(scenario: Scenario) -> None:
    with open_warehouse(scenario.lake_url) as wh:
        alice = load_session(wh, scenario.sessions["alice"])
        carol = load_session(wh, scenario.sessions["carol"])
    target = ReplayTarget(name="staging", url=scenario.chroma_url, production=False)
    report = replay_session(alice, target)
    (write,) = [s for s in report.steps if "write" in s.actions]
    assert not write.replayed and "--include-writes" in (write.skipped_reason or "")
    # carol's search and get still match, except doc-02 changed after she read it
    report = replay_session(carol, target)
    assert [s.replayed for s in report.steps] == [True, True]
    assert [s.diff.changed_ids for s in report.steps if s.diff] == [["doc-02"], ["doc-02"]]


def test_include_writes_against_production_is_refused(scenario: Scenario, config: Path) -> None:
    before = chroma_ids(scenario.chroma_url, scenario.cid)
    for target in ("prod", scenario.chroma_url + "/unlisted"):
        res = runner.invoke(
            app,
            [
                "replay",
                scenario.sessions["alice"],
                "--target",
                target,
                "--include-writes",
                "--warehouse",
                scenario.lake_url,
            ],
        )
        assert res.exit_code == 2, res.output
        assert "refused" in res.stderr and "production" in res.stderr
        assert "Traceback" not in res.output
    with open_warehouse(scenario.lake_url) as wh:
        alice = load_session(wh, scenario.sessions["alice"])
    with pytest.raises(ReplayRefused):
        replay_session(alice, resolve_target("prod", Settings().targets), include_writes=True)
    assert chroma_ids(scenario.chroma_url, scenario.cid) == before


def test_include_writes_against_staging_replays_the_write(scenario: Scenario, config: Path) -> None:
    out = _replay(
        [
            scenario.sessions["alice"],
            "--target",
            "staging",
            "--include-writes",
            "--warehouse",
            scenario.lake_url,
        ]
    )
    (write,) = [s for s in out["steps"] if "write" in s["actions"]]
    # the same upsert again: Chroma answers as it did
    assert write["replayed"] and write["status_now"] == write["status_then"] == 200


def test_targets_and_tokens_are_checked(scenario: Scenario) -> None:
    with pytest.raises(ReplayError, match="neither a URL nor a configured target"):
        resolve_target("nowhere", [])
    with open_warehouse(scenario.lake_url) as wh:
        carol = load_session(wh, scenario.sessions["carol"])
    target = ReplayTarget(name="staging", url=scenario.chroma_url, production=False)
    with pytest.raises(ReplayError, match="dev_issuer"):
        replay_session(carol, target, as_recorded_identity=True)
    with pytest.raises(ReplayError, match="not both"):
        replay_session(carol, target, as_recorded_identity=True, token="t")


def test_credentials_sent_to_the_target(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What reaches the target: the recorded request line and body, and the
    credential chosen (recorded identity, --token, or the target's variable)."""
    from capture.devidp import mint_token

    minted: list[tuple[str, list[str]]] = []

    def mint(issuer: str, sub: str, groups: list[str]) -> str:
        minted.append((sub, groups))
        return mint_token(issuer, sub, groups)

    with open_warehouse(scenario.lake_url) as wh:
        carol = load_session(wh, scenario.sessions["carol"])
    with recording_upstream() as up:
        target = ReplayTarget(
            name="stage",
            url=up.url,
            production=False,
            dev_issuer=scenario.issuer,
            credential_env="EG_REPLAY_TEST_CRED",
        )
        replay_session(carol, target, as_recorded_identity=True, mint=mint)
        assert minted == [("carol", ["Vector-Read"])] * 2
        # Chroma: the target's UUID of the recorded collection name is looked up
        # first, with the step's own credential (this target has no such collection)
        lookup, first = up.requests[0], up.requests[1]
        assert lookup.method == "GET"
        assert lookup.path.endswith("/collections/" + carol.steps[0].collections[0])
        assert lookup.headers["authorization"] == first.headers["authorization"]
        assert first.method == "POST" and first.path == carol.steps[0].path
        assert json.loads(first.body) == scenario.query_body
        assert first.headers["authorization"].startswith("Bearer ey")
        assert first.headers["x-embedguard-replay-of"] == carol.steps[0].request_id
        replay_session(carol, target, token="tok-123")
        assert up.requests[-1].headers["authorization"] == "Bearer tok-123"
        with pytest.raises(ReplayError, match="EG_REPLAY_TEST_CRED"):
            replay_session(carol, target)
        monkeypatch.setenv("EG_REPLAY_TEST_CRED", "s3cret-value")
        report = replay_session(carol, target)
        assert up.requests[-1].headers["authorization"] == "Bearer s3cret-value"
        assert "s3cret-value" not in json.dumps(report.to_json())


def test_chroma_collection_uuids_follow_the_name_on_another_server(
    scenario: Scenario, tmp_path: Path
) -> None:
    """Chroma assigns each collection its own UUID, so a staging server holding a
    copy of the recorded collection knows it under another one: the replayer
    sends each step to the target's UUID of the recorded collection name, and
    says so when the target has no such collection."""
    with open_warehouse(scenario.lake_url) as wh:
        dave = load_session(wh, scenario.sessions["dave"])
    (recorded,) = dave.steps
    assert recorded.path and scenario.cid in recorded.path
    (name,) = recorded.collections  # the name the gateway resolved and recorded
    base = f"{scenario.chroma_url}{CHROMA_T}/collections"
    source = httpx.get(f"{base}/{name}", trust_env=False).json()  # Chroma: by name
    assert source["id"] == scenario.cid
    records = httpx.post(
        f"{base}/{scenario.cid}/get",
        json={"include": ["embeddings", "documents", "metadatas"]},
        trust_env=False,
    ).json()
    with chroma_server(tmp_path / "staging-chroma" / "data") as staging:
        target = ReplayTarget(name="staging", url=staging, production=False)
        (missing,) = replay_session(dave, target).steps
        assert missing.replayed and missing.path_sent is None
        assert missing.note and f"no collection {name!r}" in missing.note
        assert missing.status_now != 200

        created = httpx.post(
            f"{staging}{CHROMA_T}/collections",
            json={
                "name": name,
                **({"metadata": source["metadata"]} if source.get("metadata") else {}),
                **(
                    {"configuration": source["configuration_json"]}
                    if source.get("configuration_json")
                    else {}
                ),
            },
            trust_env=False,
        )
        assert created.status_code == 200, created.text
        new_cid = created.json()["id"]
        assert new_cid != scenario.cid
        added = httpx.post(
            f"{staging}{CHROMA_T}/collections/{new_cid}/add",
            json={k: records[k] for k in ("ids", "embeddings", "documents", "metadatas")},
            trust_env=False,
        )
        assert added.status_code in (200, 201), added.text
        (step,) = replay_session(dave, target).steps
        assert step.path_sent == recorded.path.replace(scenario.cid, new_cid)
        assert step.note is None and step.status_now == 200
        assert step.diff is not None and step.diff.identical, step.diff.to_json()
