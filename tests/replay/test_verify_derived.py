"""Evidence bundles: the derived columns (a request's decision and state, a
lineage row's took_effect, an approval's status and approvers) must be what the
signed events make them, and an approval's votes ship with the bundle even when
the approver's session is not exported.

The scenario is the real one of tests/replay/conftest.py (a gateway in front
of Chroma; alice's write held until bob approves it). Each tamper rewrites the
warehouse (a copy of the scenario's lake) the way someone with write access to
it could, leaving every event's bytes, chain and proof intact; the export is
then signed honestly, and the bundle must not verify."""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import deltalake
import pyarrow.parquet as pq
import pytest

from pipeline.warehouse import open_warehouse
from replay.export import APPROVAL_EVENTS, ExportFilters, export_bundle
from replay.verify import verify_bundle
from replay.verify_core import VerifyReport
from schemas.note import Signer
from tests.replay.conftest import Scenario


def _export_alice(lake_dir: Path, sc: Scenario, out: Path) -> tuple[VerifyReport, Signer]:
    key = Signer.generate("embedguard-export")
    with open_warehouse(f"lake:{lake_dir}") as wh:
        export_bundle(wh, out, filters=ExportFilters(sessions=(sc.sessions["alice"],)),
                      signer=key, tool_version="test")
    return verify_bundle(out, [sc.gateway_vkey], [key.verifier.vkey]), key


def _table(bundle: Path, name: str) -> list[dict[str, Any]]:
    with zipfile.ZipFile(bundle) as z:
        return pq.read_table(io.BytesIO(z.read(name))).to_pylist()


@pytest.fixture
def lake_copy(scenario: Scenario, tmp_path: Path) -> Path:
    dst = tmp_path / "lake"
    shutil.copytree(Path(scenario.lake_url.split(":", 1)[1]), dst)
    return dst


def test_the_approvers_vote_ships_with_its_proof_and_backs_the_approval(
    scenario: Scenario, lake_copy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "alice.zip"
    report, _ = _export_alice(lake_copy, scenario, out)
    assert report.ok, [str(f) for f in report.errors]
    assert report.sessions == 1
    votes = [r for r in _table(out, APPROVAL_EVENTS) if r["type"] == "ApprovalDecided"]
    assert [(v["approval_id"], v["subject"]) for v in votes] == [(scenario.approval_id, "bob")]
    assert all(v["session_id"] != scenario.sessions["alice"] for v in votes)
    [row] = [r for r in _table(out, "approvals.parquet")
             if r["approval_id"] == scenario.approval_id]
    assert (row["status"], row["approvers"], row["requester_subject"]) == (
        "approved", ["bob"], "alice")
    # the vote is proven like any other event: its inclusion proof was checked
    assert report.inclusion_verified == len(_table(out, "events.parquet")) + len(
        _table(out, APPROVAL_EVENTS))


def _update(table: str, updates: dict[str, str], predicate: str) -> Callable[[Path, Scenario],
                                                                               None]:
    def tamper(lake: Path, sc: Scenario) -> None:
        deltalake.DeltaTable(str(lake / table)).update(
            updates=updates, predicate=predicate.format(alice=sc.sessions["alice"]))
    return tamper


def _delete(table: str, predicate: str) -> Callable[[Path, Scenario], None]:
    def tamper(lake: Path, sc: Scenario) -> None:
        deltalake.DeltaTable(str(lake / table)).delete(
            predicate.format(alice=sc.sessions["alice"]))
    return tamper


@pytest.mark.parametrize(("tamper", "shown", "intact"), [
    # "approved by bob" becomes "approved by mallory"
    (_update("approvals", {"approver_subject": "'mallory'"}, "approver_subject = 'bob'"),
     "column approvers says ['mallory'], but its verified events settle it as ['bob']", True),
    # the held write shows as plainly allowed
    (_update("requests", {"outcome": "'allow'"}, "outcome = 'require_approval'"),
     "column decision says 'allow', but its verified events record 'require_approval'", True),
    # alice's completed requests look as if they never got an answer (and so
    # never took effect, in lineage)
    (_delete("requests", "type = 'ResponseRecorded' AND session_id = '{alice}'"),
     "column state says 'forwarded', but its verified events make it 'completed'", True),
    # bob's vote gone from the events, its approvals row kept: nothing signed
    # backs "approved" any more (the stream's proofs break as well)
    (_delete("events", "type = 'ApprovalDecided'"),
     "column status says 'approved', but its verified events settle it as 'pending'", False),
], ids=["approver", "decision", "state", "vote-dropped"])
def test_a_rewritten_derived_column_fails(
    scenario: Scenario, lake_copy: Path, tmp_path: Path,
    tamper: Callable[[Path, Scenario], None], shown: str, intact: bool,
) -> None:
    tamper(lake_copy, scenario)
    report, _ = _export_alice(lake_copy, scenario, tmp_path / "b.zip")
    assert report.errors, "the tampered bundle verified"
    assert any(shown in f.detail for f in report.errors if f.kind == "projection_mismatch"), [
        str(f) for f in report.errors]
    if intact:
        # the events themselves are intact: only the derived column is wrong
        assert {f.kind for f in report.errors} == {"projection_mismatch"}, [
            str(f) for f in report.errors]
        assert report.inclusion_verified > 0


def test_lineage_took_effect_must_follow_the_events(
    scenario: Scenario, lake_copy: Path, tmp_path: Path
) -> None:
    """A write that took effect shown as one that did not (or the reverse)."""
    out = tmp_path / "b.zip"
    report, key = _export_alice(lake_copy, scenario, out)
    assert report.ok
    rows = _table(out, "lineage.parquet")
    assert rows and any(r["took_effect"] for r in rows)
    # rewrite the bundle's lineage table and sign it again with the export key:
    # what an exporter with a buggy or hostile warehouse would hand out
    from replay.bundle_sign import build_manifest, read_manifest, sign_manifest

    root = tmp_path / "open"
    with zipfile.ZipFile(out) as z:
        z.extractall(root)
    table = pq.read_table(root / "lineage.parquet")
    flipped = table.set_column(
        table.schema.get_field_index("took_effect"), "took_effect",
        [[not v for v in table.column("took_effect").to_pylist()]])
    pq.write_table(flipped, root / "lineage.parquet")
    m = read_manifest(root)
    manifest = build_manifest(
        root, tool_version=m["tool_version"], exported_at=_dt(m["exported_at"]),
        filters=m["filters"], row_counts=m["row_counts"],
        extra={k: m[k] for k in ("sessions", "streams", "bodies_unavailable", "export_key")})
    sign_manifest(root, manifest, key)
    report = verify_bundle(root, [scenario.gateway_vkey], [key.verifier.vkey])
    assert {f.kind for f in report.errors} == {"projection_mismatch"}
    assert any("took_effect says False" in f.detail for f in report.errors)


def _dt(text: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text)


def test_a_bundle_without_the_votes_says_why_its_approval_fails(
    scenario: Scenario, lake_copy: Path, tmp_path: Path
) -> None:
    """A bundle as exports made before approval_events.parquet existed: the
    approvers' votes are not in it, so nothing signed backs "approved"; verify
    fails it and says what to do."""
    import json

    from replay.bundle_sign import build_manifest, read_manifest, sign_manifest

    out = tmp_path / "b.zip"
    _, key = _export_alice(lake_copy, scenario, out)
    root = tmp_path / "open"
    with zipfile.ZipFile(out) as z:
        z.extractall(root)
    (root / APPROVAL_EVENTS).unlink()
    index = json.loads((root / "index.json").read_text())
    (root / "index.json").write_text(json.dumps([e for e in index if "file" not in e]))
    m = read_manifest(root)
    counts = {k: v for k, v in m["row_counts"].items() if k != "approval_events"}
    manifest = build_manifest(
        root, tool_version=m["tool_version"], exported_at=_dt(m["exported_at"]),
        filters=m["filters"], row_counts=counts,
        extra={k: m[k] for k in ("sessions", "streams", "bodies_unavailable", "export_key")})
    sign_manifest(root, manifest, key)
    report = verify_bundle(root, [scenario.gateway_vkey], [key.verifier.vkey])
    assert {f.kind for f in report.errors} == {"projection_mismatch"}, [
        str(f) for f in report.errors]
    assert any("status says 'approved'" in f.detail and "export the sessions again" in f.detail
               for f in report.errors), [f.detail for f in report.errors]
