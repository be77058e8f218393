"""replay/sessions.py: a recorded session as verified, ordered steps."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from pipeline.transport import open_log
from pipeline.transport.base import LogRecord
from pipeline.warehouse import LoadBatch, open_warehouse
from pipeline.warehouse.lake import LakeWarehouse
from replay.sessions import SessionNotFound, load_session
from schemas.codec import default_codec
from tests.replay.conftest import Scenario


def test_carols_session_as_steps(scenario: Scenario) -> None:
    with open_warehouse(scenario.lake_url) as wh:
        s = load_session(wh, scenario.sessions["carol"])
    assert s.chain_ok and s.events > 0, s.chain_issues
    assert [st.path.rsplit("/", 1)[-1] for st in s.steps if st.path] == ["query", "get"]
    q = s.steps[0]
    assert q.actions == ["search"] and q.decision == "allow" and q.status == 200
    assert q.identity is not None and q.identity["subject"] == "carol"
    assert q.identity["groups"] == ["Vector-Read"]
    assert q.latency_us is not None and q.latency_us > 0
    assert q.response_body_state == "present" and q.response_body is not None
    assert json.loads(q.request_body or b"{}") == scenario.query_body
    assert "doc-01" in json.loads(q.response_body)["ids"][0]
    assert s.steps[1].received_at > q.received_at


def test_held_write_carries_its_approval(scenario: Scenario) -> None:
    with open_warehouse(scenario.lake_url) as wh:
        s = load_session(wh, scenario.sessions["alice"])
    (step,) = [st for st in s.steps if "write" in st.actions]
    assert step.decision == "require_approval" and step.status == 200
    assert step.approval_id == scenario.approval_id
    assert step.approval is not None and step.approval["status"] == "approved"
    assert step.approval["approvers"] == ["bob"]
    assert step.writes and s.chain_ok


def test_unknown_session_is_named(scenario: Scenario) -> None:
    with open_warehouse(scenario.lake_url) as wh:
        try:
            load_session(wh, "no-such-session")
        except SessionNotFound as exc:
            assert "no-such-session" in str(exc)
        else:
            raise AssertionError("expected SessionNotFound")


def _session_records(scenario: Scenario, session_id: str) -> list[LogRecord]:
    async def read() -> list[LogRecord]:
        async with open_log(scenario.log_url) as lg:
            reader = lg.tail_reader()
            async with reader:
                out: list[LogRecord] = []
                while batch := await reader.poll(max_records=5000, timeout=0.3):
                    out.extend(batch)
                return out

    codec = default_codec()
    return [
        r
        for r in asyncio.run(read())
        if codec.decode(r.value).event.envelope.session_id == session_id
    ]


def _warehouse_of(tmp: Path, records: list[LogRecord]) -> LakeWarehouse:
    wh = LakeWarehouse(tmp / "lake")
    wh.migrate()
    wh.write_batch(
        LoadBatch(
            "sqlite:tampered",
            0,
            [LogRecord(0, i, r.key, r.value, r.timestamp_ms) for i, r in enumerate(records)],
        )
    )
    return wh


def test_chain_gap_and_alteration_are_named(scenario: Scenario, tmp_path: Path) -> None:
    sid = scenario.sessions["carol"]
    records = _session_records(scenario, sid)
    codec = default_codec()
    decoded = [codec.decode(r.value) for r in records]
    assert [d.event.envelope.seq for d in decoded] == list(range(len(decoded)))

    # a gap: the event at seq 2 is missing
    with _warehouse_of(tmp_path / "gap", [*records[:2], *records[3:]]) as wh:
        s = load_session(wh, sid)
    (issue,) = s.chain_issues
    assert issue.kind == "gap" and issue.event_id == str(decoded[3].event.envelope.event_id)

    # an alteration: the response's latency rewritten, the event re-encoded
    i = next(n for n, d in enumerate(decoded) if d.event.envelope.type == "ResponseRecorded")
    changed = decoded[i].event.model_copy(update={"latency_us": 1})
    forged = LogRecord(0, 0, records[i].key, codec.encode(changed), records[i].timestamp_ms)
    with _warehouse_of(tmp_path / "alt", [*records[:i], forged, *records[i + 1 :]]) as wh:
        s = load_session(wh, sid)
    (issue,) = s.chain_issues
    assert issue.kind == "altered" and issue.event_id == str(decoded[i].event.envelope.event_id)
    assert not s.chain_ok
