"""The session tracker: an idle gap closes a session, unless one of its
requests is still in flight; the gap then counts from that request's end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from capture.sessions import SessionTracker

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
KEY = SessionTracker.key("alice", "jti-1", "127.0.0.1", None)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_an_idle_gap_closes_the_session() -> None:
    t = SessionTracker(idle_s=60)
    s, started, ended = t.touch(KEY, at(0))
    assert started and ended is None
    assert t.expire(at(59)) == []
    assert t.expire(at(61)) == [s]
    s2, started, ended = t.touch(KEY, at(62))
    assert started and ended is None and s2.session_id != s.session_id


def test_the_next_request_after_a_gap_replaces_the_session() -> None:
    t = SessionTracker(idle_s=60)
    s, _, _ = t.touch(KEY, at(0))
    s2, started, ended = t.touch(KEY, at(61))
    assert started and ended is s and s2.session_id != s.session_id
    assert s2.request_count == 1


def test_a_request_in_flight_keeps_the_session_open() -> None:
    t = SessionTracker(idle_s=60)
    s, _, _ = t.touch(KEY, at(0), "flow-1")
    assert t.expire(at(600)) == []  # held for approval for ten minutes
    same, started, ended = t.touch(KEY, at(601), "flow-2")  # joins, not replaced
    assert same is s and not started and ended is None and s.request_count == 2
    t.release(s.session_id, "flow-2", at(602))
    assert t.expire(at(700)) == []  # flow-1 is still in flight
    t.release(s.session_id, "flow-1", at(900))
    assert t.expire(at(959)) == []  # the gap counts from the last request's end
    assert t.expire(at(961)) == [s]


def test_release_of_an_unknown_flow_or_closed_session_is_ignored() -> None:
    t = SessionTracker(idle_s=60)
    s, _, _ = t.touch(KEY, at(0), "flow-1")
    t.release(s.session_id, "flow-x", at(30))
    t.release("no-such-session", "flow-1", at(30))
    assert s.in_flight == {"flow-1"} and s.last_seen == at(0)
    assert t.close_all() == [s]
    t.release(s.session_id, "flow-1", at(31))  # closed meanwhile (shutdown, rotation)
    assert s.in_flight == {"flow-1"}


def test_a_flow_that_never_ends_stops_holding_its_session_once_forgotten() -> None:
    t = SessionTracker(idle_s=60)
    s, _, _ = t.touch(KEY, at(0), "flow-1")
    assert t.expire(at(4000)) == []
    t.forget_flows(["flow-1"])
    assert t.expire(at(4000)) == [s]


def test_an_earlier_clock_never_moves_last_seen_back() -> None:
    t = SessionTracker(idle_s=60)
    s, _, _ = t.touch(KEY, at(10), "flow-1")
    t.release(s.session_id, "flow-1", at(5))
    assert s.last_seen == at(10)
