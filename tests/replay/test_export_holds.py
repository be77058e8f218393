"""Evidence holds end to end, over the scenario recorded through a real gateway
and real Chroma into a real SQLite log (tests/replay/conftest.py): `embedguard
export` records EvidenceHeld durably before the bundle exists, the loader
projects it, the hold-aware purge keeps the bundle's bodies on the lake while
unheld bodies of the same age go, a rebuilt warehouse has the same holds, and
a log that refuses the hold leaves no bundle.

Age is simulated with the purge's clock, never slept."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from capture.signing_keys import load_or_create_signing_key
from embedguard.cli import app
from pipeline.retention import (
    EvidenceHold,
    HoldNotRecorded,
    holds,
    purge_bodies,
    retention_report,
)
from pipeline.warehouse import open_warehouse
from replay.bundle_sign import read_manifest
from replay.export import BundleContents, ExportFilters, export_bundle
from schemas.models import EvidenceHeld
from tests.replay.conftest import Bundle, Scenario
from tests.support.approval_e2e import events_of
from tests.support.gateway import UPSTREAM_SECRET

runner = CliRunner()


def _holds_in_log(log_url: str, hold_id: str) -> list[EvidenceHeld]:
    return [e for e in events_of(log_url, "EvidenceHeld") if e.hold_id == hold_id]


def _load(log_url: str, lake_url: str, status: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "embedguard.cli", "loader", "--once", "--log", log_url,
         "--warehouse", lake_url, "--status-dir", str(status)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]


def _export(scenario: Scenario, out: Path, *extra: str) -> dict[str, Any]:
    res = runner.invoke(
        app,
        ["export", "--out", str(out), "--export-key", str(scenario.tmp / "keys" / "export.key"),
         "--viewer", "auditor-ann", "--log", scenario.log_url, "--warehouse", scenario.lake_url,
         "--json", *extra],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary: dict[str, Any] = json.loads(res.stdout)
    return summary


def _body_shas(url: str) -> set[str]:
    with open_warehouse(url) as wh:
        return {r["sha256"] for r in wh.query("SELECT DISTINCT sha256 FROM {bodies}", {})}


def test_export_records_the_hold_of_exactly_its_bundle(bundle: Bundle, scenario: Scenario) -> None:
    m = read_manifest(bundle.path)
    hold = m["evidence_hold"]
    assert bundle.summary["hold"]["hold_id"] == hold["hold_id"]
    parts = _holds_in_log(scenario.log_url, hold["hold_id"])
    assert len(parts) == parts[0].parts >= 1
    ev = parts[0]
    assert (
        ev.bundle_sha256 == hashlib.sha256((bundle.path / "manifest.json").read_bytes()).hexdigest()
    )
    assert ev.bundle_name == bundle.path.name and ev.held_by == "auditor-ann"
    assert ev.held_until.isoformat() == datetime.fromisoformat(hold["held_until"]).isoformat()
    days = (ev.held_until - ev.envelope.occurred_at).total_seconds() / 86400
    assert 364.9 < days < 365.1  # the default hold
    bundled = set(pq.read_table(bundle.path / "bodies.parquet")["sha256"].to_pylist())
    assert bundled and {s for p in parts for s in p.body_sha256s} == bundled
    assert ev.body_count == len(bundled)
    assert {s for p in parts for s in p.session_ids} == set(m["sessions"])
    assert ev.event_count == m["row_counts"]["events"]


def test_hold_events_carry_no_secret(bundle: Bundle, scenario: Scenario) -> None:
    from tests.support.events import read_events

    held = [d for d in read_events(scenario.log_url) if d.event.envelope.type == "EvidenceHeld"]
    assert held
    for d in held:
        assert UPSTREAM_SECRET.encode() not in d.canonical
        assert b"eyJ" not in d.canonical  # no bearer token (JWTs start with eyJ)
        assert b"PRIVATE KEY" not in d.canonical


def test_the_hold_is_durable_before_the_bundle_is_written(
    scenario: Scenario, tmp_path: Path
) -> None:
    """On the real export path: when the hold is recorded, nothing is at ``out``
    yet, and the log already holds every part of it."""
    out = tmp_path / "carol.zip"
    signer = load_or_create_signing_key(tmp_path / "export.key", name="embedguard-export")
    hold = EvidenceHold(scenario.log_url, held_by="auditor-ann", hold_days=30, stream="test/holds")
    seen: dict[str, Any] = {}

    def before_handout(contents: BundleContents) -> None:
        assert not out.exists()
        hold(contents)
        assert not out.exists()
        seen["parts"] = _holds_in_log(scenario.log_url, hold.hold_id)
        seen["contents"] = contents

    with open_warehouse(scenario.lake_url) as wh:
        result = export_bundle(
            wh, out, filters=ExportFilters(sessions=(scenario.sessions["carol"],)),
            signer=signer, tool_version="test", manifest_extra=hold.manifest_fields(),
            before_handout=before_handout,
        )  # fmt: skip
    assert result.path == out and out.is_file()
    parts = seen["parts"]
    assert parts and {str(p.envelope.event_id) for p in parts} == set(hold.event_ids)
    contents = seen["contents"]
    assert {s for p in parts for s in p.body_sha256s} == set(contents.body_sha256s)
    assert {s for p in parts for s in p.session_ids} == {scenario.sessions["carol"]}


def _corrupt_log(tmp_path: Path) -> str:
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(b"this is not an SQLite database" * 200)
    return f"sqlite:{bad}"


def test_a_log_that_refuses_the_hold_leaves_no_bundle(scenario: Scenario, tmp_path: Path) -> None:
    out = tmp_path / "refused"
    signer = load_or_create_signing_key(tmp_path / "export.key", name="embedguard-export")
    hold = EvidenceHold(
        _corrupt_log(tmp_path), held_by="auditor-ann", hold_days=30, stream="test/holds"
    )
    with open_warehouse(scenario.lake_url) as wh, pytest.raises(HoldNotRecorded) as exc:
        export_bundle(
            wh, out, filters=ExportFilters(sessions=(scenario.sessions["carol"],)),
            signer=signer, tool_version="test", manifest_extra=hold.manifest_fields(),
            before_handout=hold,
        )  # fmt: skip
    assert not out.exists()
    assert "did not record the evidence hold" in str(exc.value)
    assert "nothing was exported" in str(exc.value)


def test_export_cli_refuses_a_bad_hold_and_an_unwritable_log(
    scenario: Scenario, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    res = runner.invoke(
        app,
        ["export", "--out", str(out), "--hold-days", "0", "--log", scenario.log_url,
         "--warehouse", scenario.lake_url],
    )  # fmt: skip
    assert res.exit_code == 2 and "--hold-days must be a whole number of days" in res.output
    assert not out.exists()
    res = runner.invoke(
        app,
        ["export", "--out", str(out), "--export-key", str(tmp_path / "k"), "--viewer", "ann",
         "--log", _corrupt_log(tmp_path), "--warehouse", scenario.lake_url],
    )  # fmt: skip
    assert res.exit_code == 1 and "nothing was exported" in res.output
    assert "Traceback" not in res.output and not out.exists()


@pytest.fixture(scope="module")
def held_lake(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of the scenario's lake (the shared one stays untouched) with a
    30-day body retention, after carol's session was exported with a 1000-day
    hold and the log was loaded into it again. (Other exports of the shared log
    hold at most 365 days, so at +400 days only this hold is active.)"""
    tmp = tmp_path_factory.mktemp("held-lake")
    summary = _export(scenario, tmp / "carol-bundle", "--session", scenario.sessions["carol"],
                      "--hold-days", "1000")  # fmt: skip
    shutil.copytree(Path(scenario.lake_url.removeprefix("lake:")), tmp / "lake")
    url = f"lake:{tmp / 'lake'}?body_retention_days=30"
    _load(scenario.log_url, url, tmp / "status")
    bundled = set(pq.read_table(tmp / "carol-bundle" / "bodies.parquet")["sha256"].to_pylist())
    return {"url": url, "tmp": tmp, "hold": summary["hold"], "bundled": bundled}


def test_the_loader_projects_the_hold(held_lake: dict[str, Any]) -> None:
    with open_warehouse(held_lake["url"]) as wh:
        found = {h.hold_id: h for h in holds(wh)}
    h = found[held_lake["hold"]["hold_id"]]
    assert h.active and h.complete and h.held_by == "auditor-ann"
    assert h.bodies_loaded == h.body_count == len(held_lake["bundled"]) > 0
    assert h.bundle_name == "carol-bundle"


def test_purge_keeps_held_bodies_and_drops_unheld_ones_of_the_same_age(
    held_lake: dict[str, Any], scenario: Scenario
) -> None:
    url, bundled = held_lake["url"], held_lake["bundled"]
    before = _body_shas(url)
    assert bundled <= before and before - bundled  # some bodies are not carol's
    with open_warehouse(url) as wh:
        events = wh.query("SELECT count() AS n FROM {events}", {})[0]["n"]
        # everything is past 30 days, and the other exports' holds have ended
        now = datetime.now(UTC) + timedelta(days=400)
        held_elsewhere = {
            r["item"]
            for r in wh.query(
                "SELECT item FROM {evidence_holds} WHERE item_kind = 'body' "
                "AND hold_id != {h:String} "
                "AND held_until > parseDateTime64BestEffort({now:String}, 6, 'UTC')",
                {"h": held_lake["hold"]["hold_id"], "now": now.isoformat()},
            )
        }
        plan = retention_report(wh, now=now)
        assert plan.delete_bodies == len(before - bundled - held_elsewhere)
        done = purge_bodies(wh, now=now)
        assert done.deleted_rows and done.deleted_rows >= plan.delete_bodies
        after = _body_shas(url)
        assert after == before & (bundled | held_elsewhere)
        assert bundled <= after  # the bundle's bodies survive
        assert wh.query("SELECT count() AS n FROM {events}", {})[0]["n"] == events
        # once every hold has ended, the next purge lets them go
        much_later = datetime.now(UTC) + timedelta(days=1001)
        purge_bodies(wh, now=much_later)
        assert _body_shas(url) == set()
        assert wh.query("SELECT count() AS n FROM {events}", {})[0]["n"] == events


def test_a_rebuilt_warehouse_has_the_same_holds(
    held_lake: dict[str, Any], scenario: Scenario
) -> None:
    into = held_lake["tmp"] / "rebuilt"
    res = runner.invoke(
        app,
        ["warehouse", "rebuild", "--log", scenario.log_url, "--warehouse", held_lake["url"],
         "--into", f"lake:{into}", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    now = datetime.now(UTC)
    with open_warehouse(held_lake["url"]) as a, open_warehouse(f"lake:{into}") as b:
        ours = held_lake["hold"]["hold_id"]
        ha = [h for h in holds(a, now=now) if h.hold_id == ours]
        hb = [h for h in holds(b, now=now) if h.hold_id == ours]
        assert ha == hb and len(ha) == 1
        # every hold of the log, not only ours (the rebuild read the log to its end)
        assert {h.hold_id for h in holds(a, now=now)} <= {h.hold_id for h in holds(b, now=now)}


def test_retention_cli_shows_holds_and_the_plan(held_lake: dict[str, Any]) -> None:
    at = (datetime.now(UTC) + timedelta(days=60)).isoformat()
    res = runner.invoke(
        app, ["warehouse", "retention", "--warehouse", held_lake["url"], "--at", at, "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["body_retention_days"] == 30 and out["active_holds"] >= 1
    ours = [h for h in out["holds"] if h["hold_id"] == held_lake["hold"]["hold_id"]]
    assert ours and ours[0]["bodies_loaded"] == len(held_lake["bundled"])
    assert ours[0]["held_by"] == "auditor-ann" and ours[0]["complete"]
    res = runner.invoke(app, ["warehouse", "retention", "--warehouse", held_lake["url"]])
    assert res.exit_code == 0, res.output
    assert "30 days" in res.stdout and "carol-bundle" in res.stdout and "auditor-ann" in res.stdout
    assert "never deleted by retention" in res.stdout
    res = runner.invoke(
        app, ["warehouse", "retention", "--warehouse", held_lake["url"], "--at", "soon"]
    )
    assert res.exit_code == 2 and "--at" in res.output and "ISO 8601" in res.output


def test_purge_cli_waits_for_unloaded_holds(scenario: Scenario, tmp_path: Path) -> None:
    shutil.copytree(Path(scenario.lake_url.removeprefix("lake:")), tmp_path / "lake")
    url = f"lake:{tmp_path / 'lake'}?body_retention_days=30"
    _load(scenario.log_url, url, tmp_path / "status")
    # a new export: its hold is in the log, not yet in this warehouse
    _export(scenario, tmp_path / "dave-bundle", "--session", scenario.sessions["dave"])
    res = runner.invoke(app, ["warehouse", "purge", "--warehouse", url, "--log", scenario.log_url])
    assert res.exit_code == 1, res.output
    assert (
        "evidence hold event(s) not yet loaded" in res.output and "nothing was purged" in res.output
    )
    res = runner.invoke(
        app, ["warehouse", "compact", "--warehouse", url, "--log", scenario.log_url, "--json"]
    )
    assert res.exit_code == 0, res.output
    assert "not loaded yet" in json.loads(res.stdout)["body_purge_deferred"]
    _load(scenario.log_url, url, tmp_path / "status")
    res = runner.invoke(
        app, ["warehouse", "compact", "--warehouse", url, "--log", scenario.log_url, "--json"]
    )
    assert res.exit_code == 0 and "body_purge_deferred" not in json.loads(res.stdout)
    res = runner.invoke(
        app, ["warehouse", "purge", "--warehouse", url, "--log", scenario.log_url, "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["deleted_rows"] == 0  # the scenario's bodies are minutes old, not 30 days
    res = runner.invoke(
        app, ["warehouse", "purge", "--warehouse", scenario.lake_url, "--log", scenario.log_url]
    )
    assert res.exit_code == 2 and "no body retention" in res.output


def test_merge_tree_honours_the_exported_hold(
    held_lake: dict[str, Any], scenario: Scenario
) -> None:
    """The same log loaded into chDB MergeTree by the in-process loader: the
    lightweight-DELETE purge keeps exactly what the lake's purge keeps."""
    import asyncio

    from pipeline.loader import Loader, LoaderConfig
    from pipeline.transport import open_log
    from tests.pipeline.warehouse.scenario import chdb_warehouse

    wh = chdb_warehouse()
    wh.body_retention_days = 30
    wh.migrate()

    async def load() -> None:
        async with open_log(scenario.log_url) as lg:
            config = LoaderConfig(tail=True, compact_interval=None)
            await Loader(lg, wh, config).run(once=True)

    asyncio.run(load())
    ours = held_lake["hold"]["hold_id"]
    assert [h.hold_id for h in holds(wh) if h.hold_id == ours] == [ours]
    now = datetime.now(UTC) + timedelta(days=400)
    held = {
        r["item"]
        for r in wh.query(
            "SELECT item FROM {evidence_holds} WHERE item_kind = 'body' "
            "AND held_until > parseDateTime64BestEffort({now:String}, 6, 'UTC')",
            {"now": now.isoformat()},
        )
    }
    assert held_lake["bundled"] <= held
    before = {r["sha256"] for r in wh.query("SELECT DISTINCT sha256 FROM {bodies}", {})}
    assert before - held
    purge_bodies(wh, now=now)
    after = {r["sha256"] for r in wh.query("SELECT DISTINCT sha256 FROM {bodies}", {})}
    assert after == before & held


def test_a_warehouse_with_holds_still_verifies(
    held_lake: dict[str, Any], scenario: Scenario
) -> None:
    """Each hold is a stream of its own, numbered from 0: the warehouse's chains
    and streams verify with the holds in them, also after bodies were purged."""
    from replay.verify import verify_warehouse

    with open_warehouse(held_lake["url"]) as wh:
        streams = wh.query(
            "SELECT gateway_id, count() AS n, max(stream_seq) AS top FROM {events} "
            "WHERE type = 'EvidenceHeld' GROUP BY gateway_id",
            {},
        )
        assert len(streams) >= 2
        assert all(int(s["top"]) == int(s["n"]) - 1 for s in streams)
        report = verify_warehouse(wh, [scenario.gateway_vkey])
    assert report.ok, [str(f) for f in report.errors]
