"""replay/sessions.py: a recorded session as verified, ordered steps."""

from __future__ import annotations

import json

from pipeline.warehouse import open_warehouse
from replay.sessions import SessionNotFound, load_session
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
