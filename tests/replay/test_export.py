"""replay/export.py and `embedguard export`: the evidence bundle, its README's
DuckDB queries, the AuditViewed event, filters and zip output."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from embedguard.cli import app
from replay.bundle_sign import read_manifest
from tests.replay.conftest import COLLECTION, Bundle, Scenario
from tests.support.approval_e2e import events_of
from tests.support.gateway import UPSTREAM_SECRET

runner = CliRunner()


def test_bundle_layout_and_manifest(bundle: Bundle, scenario: Scenario) -> None:
    m = read_manifest(bundle.path)
    for name in (
        "events.parquet",
        "requests.parquet",
        "approvals.parquet",
        "lineage.parquet",
        "bodies.parquet",
        "checkpoints.json",
        "proofs/inclusion.json",
        "proofs/consistency.json",
        "index.json",
        "README.md",
    ):
        assert name in m["files"], name
        assert len(m["files"][name]["sha256"]) == 64
    assert (bundle.path / "manifest.sig").is_file()
    assert m["row_counts"]["events"] == pq.read_metadata(bundle.path / "events.parquet").num_rows
    assert m["row_counts"]["approvals"] == 2  # alice's approval and oscar's ticket
    assert m["row_counts"]["checkpoints"] >= 1
    assert m["tool_version"] and m["exported_at"] and m["filters"]["actor"] is None
    assert set(scenario.sessions[k] for k in ("carol", "dave", "alice")) <= set(m["sessions"])
    inclusion = json.loads((bundle.path / "proofs/inclusion.json").read_text())
    # the gateway stopped cleanly, so its last checkpoint covers every event
    assert len(inclusion) == m["row_counts"]["events"]


def test_no_secret_in_the_bundle(bundle: Bundle) -> None:
    for p in bundle.path.rglob("*"):
        if p.is_file():
            assert UPSTREAM_SECRET.encode() not in p.read_bytes(), p
    assert b"BEGIN PRIVATE KEY" not in (bundle.path / "manifest.json").read_bytes()


def test_export_emits_audit_viewed(bundle: Bundle, scenario: Scenario) -> None:
    viewed = [e for e in events_of(scenario.log_url, "AuditViewed") if e.target == str(bundle.path)]
    assert len(viewed) == 1
    assert viewed[0].viewer_subject == "auditor-ann" and viewed[0].what == "evidence_export"


def _readme_queries(readme: str) -> list[str]:
    return re.findall(r"```sql\n(.*?)```", readme, flags=re.S)


def test_readme_duckdb_queries_answer_the_three_questions(
    bundle: Bundle, scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (bundle.path / "README.md").read_text()
    q_added, q_altered, q_bulk = _readme_queries(readme)
    monkeypatch.chdir(bundle.path)
    con = duckdb.connect()

    def run(sql: str, **subst: str) -> list[tuple]:  # type: ignore[type-arg]
        for k, v in subst.items():
            sql = sql.replace(k, v)
        return con.execute(sql).fetchall()

    who = run(q_added, COLLECTION=COLLECTION, POINT_ID="doc-05")
    assert [r[0] for r in who] == ["ingest-job"]
    who = run(q_added, COLLECTION=COLLECTION, POINT_ID="a1")
    assert who[0][0] == "alice" and who[0][6] == scenario.approval_id
    who = run(q_added, COLLECTION=COLLECTION, POINT_ID="o1")
    assert who[0][0] == "oscar" and who[0][7] == scenario.ticket_id
    altered = run(q_altered, COLLECTION=COLLECTION)
    assert {r[0] for r in altered} == {"root", "ingest-job", "alice", "oscar"}
    assert "carol" not in {r[0] for r in altered}
    bulk = run(q_bulk)
    assert [(r[0], r[3], r[4]) for r in bulk] == [("ingest-job", COLLECTION, 20)]
    assert bulk[0][1] == scenario.sessions["ingest-job"]


def test_filters_and_zip(scenario: Scenario, bundle: Bundle, tmp_path: Path) -> None:
    out = tmp_path / "carol.zip"
    res = runner.invoke(
        app,
        [
            "export",
            "--actor",
            "carol",
            "--out",
            str(out),
            "--export-key",
            str(bundle.export_key),
            "--viewer",
            "auditor-ann",
            "--log",
            scenario.log_url,
            "--warehouse",
            scenario.lake_url,
        ],
    )
    assert res.exit_code == 0, res.output
    with zipfile.ZipFile(out) as zf:
        m = json.loads(zf.read("manifest.json"))
    assert list(m["sessions"]) == [scenario.sessions["carol"]]
    assert m["filters"]["actor"] == "carol" and m["row_counts"]["requests"] == 2
    again = runner.invoke(
        app,
        [
            "export",
            "--out",
            str(out),
            "--export-key",
            str(bundle.export_key),
            "--log",
            scenario.log_url,
            "--warehouse",
            scenario.lake_url,
        ],
    )
    assert again.exit_code == 2 and "exists" in again.stderr
    none = runner.invoke(
        app,
        [
            "export",
            "--actor",
            "nobody",
            "--out",
            str(tmp_path / "x"),
            "--export-key",
            str(bundle.export_key),
            "--log",
            scenario.log_url,
            "--warehouse",
            scenario.lake_url,
        ],
    )
    assert none.exit_code == 1 and "no session matches" in none.stderr
    bad = runner.invoke(
        app,
        [
            "export",
            "--since",
            "yesterday",
            "--out",
            str(tmp_path / "y"),
            "--export-key",
            str(bundle.export_key),
            "--log",
            scenario.log_url,
            "--warehouse",
            scenario.lake_url,
        ],
    )
    assert bad.exit_code == 2 and "ISO 8601" in bad.stderr and "Traceback" not in bad.output


def test_no_audit_record_no_export(scenario: Scenario, bundle: Bundle, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    out = tmp_path / "refused"
    res = runner.invoke(
        app,
        [
            "export",
            "--out",
            str(out),
            "--export-key",
            str(bundle.export_key),
            "--log",
            f"sqlite:{blocker}/events.db",
            "--warehouse",
            scenario.lake_url,
        ],
    )
    assert res.exit_code == 1, res.output
    assert "AuditViewed" in res.stderr and "nothing was exported" in res.stderr
    assert not out.exists() and "Traceback" not in res.output


def test_a_session_longer_than_a_query_page_is_exported_whole(tmp_path: Path) -> None:
    """An export once read each session through the timeline query, whose page
    stops at 10,000 events: a longer session lost its tail, and a chain checked
    from its start cannot tell. Every event must ship, and the bundle verify."""
    from datetime import UTC, datetime, timedelta

    from pipeline import queries
    from pipeline.warehouse import open_warehouse
    from replay.export import ExportFilters, export_bundle
    from replay.verify import verify_bundle
    from replay.verify_core import leaf_hash
    from schemas.chain import EventStamper
    from schemas.codec import default_codec
    from schemas.merkle import root_of
    from schemas.models import Checkpoint
    from schemas.note import CheckpointBody, Signer, checkpoint_origin
    from tests.embedguard.hostile import lake_of, write_request

    t0 = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    gw_key = Signer.generate("embedguard-gateway-gw-long")
    st = EventStamper("gw-long")
    stamped = []
    for i in range(queries.MAX_LIMIT // 5 + 10):  # one session, > MAX_LIMIT events
        stamped += write_request(st, "s-long", f"r-{i}", "alice", "kb",
                                 t0 + timedelta(milliseconds=10 * i))
    leaves = [leaf_hash(default_codec().decode(s.wire)) for s in stamped]
    body = CheckpointBody(checkpoint_origin("gw-long", str(stamped[0].event.envelope.event_id)),
                          len(leaves), root_of(leaves))
    stamped.append(st.stamp(
        Checkpoint, session_id="gateway:gw-long", origin=body.origin, tree_size=body.tree_size,
        root_hash=body.root_hash.hex(), signed_note=body.sign(gw_key),
        key_id=gw_key.verifier.id_text, occurred_at=t0 + timedelta(hours=1)))
    lake = lake_of(tmp_path / "lake", stamped, "sqlite:long-session")
    export_key = Signer.generate("embedguard-export")
    out = tmp_path / "b.zip"
    with open_warehouse(lake) as wh:
        res = export_bundle(wh, out, filters=ExportFilters(sessions=("s-long",)),
                            signer=export_key, tool_version="test")
    assert res.row_counts["events"] == len(stamped) - 1 > queries.MAX_LIMIT
    assert res.manifest["sessions"]["s-long"]["events"] == len(stamped) - 1
    report = verify_bundle(out, [gw_key.verifier.vkey], [export_key.verifier.vkey])
    assert report.ok, [str(f) for f in report.errors[:5]]
