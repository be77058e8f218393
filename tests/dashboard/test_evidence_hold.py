"""dashboard/data.py ``export_evidence``: the Evidence page's export holds its
bundle's bodies (EvidenceHeld, recorded before the zip is written) for
EMBEDGUARD_EVIDENCE_HOLD_DAYS, and a bad value is a clear message, not a
traceback."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pyarrow.parquet as pq
import pytest

from tests.dashboard.conftest import SECRET_EMAIL, Seeded
from tests.dashboard.test_app import AUDITOR, app
from tests.dashboard.test_text import shown
from tests.support.approval_e2e import events_of


def test_dashboard_export_records_the_hold(
    dash_env: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBEDGUARD_EVIDENCE_HOLD_DAYS", "7")
    at = app(dash_env, AUDITOR, "pages/evidence.py")
    at.text_input(key="ev_actor").input("alice")
    at.button[0].click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    result = at.session_state["evidence_result"]
    hold = result["hold"]
    assert hold["hold_days"] == 7 and hold["events"] >= 1
    zf = zipfile.ZipFile(dash_env.data_dir / "exports" / result["name"])
    manifest = zf.read("manifest.json")
    bodies = set(pq.read_table(io.BytesIO(zf.read("bodies.parquet")))["sha256"].to_pylist())
    parts = [e for e in events_of(dash_env.log_url, "EvidenceHeld") if e.hold_id == hold["hold_id"]]
    assert len(parts) == parts[0].parts == hold["events"]
    ev = parts[0]
    assert ev.held_by == "audrey" and ev.held_by_issuer
    assert ev.bundle_name == result["name"]
    assert ev.bundle_sha256 == hashlib.sha256(manifest).hexdigest()
    assert {s for p in parts for s in p.body_sha256s} == bodies
    days = (ev.held_until - ev.envelope.occurred_at).total_seconds() / 86400
    assert 6.9 < days < 7.1
    assert b'"evidence_hold"' in manifest and hold["hold_id"].encode() in manifest
    for p in parts:
        assert SECRET_EMAIL not in p.model_dump_json()


def test_a_bad_hold_setting_is_a_clear_message(
    dash_env: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBEDGUARD_EVIDENCE_HOLD_DAYS", "forever")
    before = len(list((dash_env.data_dir / "exports").glob("*.zip")))
    at = app(dash_env, AUDITOR, "pages/evidence.py")
    at.text_input(key="ev_actor").input("alice")
    at.button[0].click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("EMBEDGUARD_EVIDENCE_HOLD_DAYS" in shown(e.value) for e in at.error)
    assert len(list((dash_env.data_dir / "exports").glob("*.zip"))) == before
