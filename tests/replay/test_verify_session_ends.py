"""replay.verify's session-end check on chains built with the real stamper and
codec: a session is whole when its chain runs from SessionStarted to
SessionEnded; without the end it is named (a warning); an event after the end
is an error."""

from __future__ import annotations

from datetime import UTC, datetime

from replay.verify import _check_session_ends
from replay.verify_core import VerifyReport, chain_findings
from schemas.chain import EventStamper, StampedEvent
from schemas.codec import DecodedEvent, default_codec
from schemas.models import PolicyChanged, SessionEnded, SessionStarted

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _policy_changed(stamper: EventStamper, sid: str, i: int) -> StampedEvent:
    return stamper.stamp(PolicyChanged, session_id=sid, old_sha256=None,
                         new_sha256=f"{i:064x}", source="test", diff="")


def _session(stamper: EventStamper, sid: str, *, end: bool) -> list[DecodedEvent]:
    out = [stamper.stamp(SessionStarted, session_id=sid, subject="alice", issuer="https://idp",
                         client_address="127.0.0.1")]
    out += [_policy_changed(stamper, sid, i) for i in range(2)]
    if end:
        out.append(stamper.stamp(SessionEnded, session_id=sid, reason="idle", request_count=2,
                                 started_at=T0))
    codec = default_codec()
    return [codec.decode(s.wire) for s in out]


def _check(events: list[DecodedEvent]) -> VerifyReport:
    events = sorted(events, key=lambda d: (d.event.envelope.session_id, d.event.envelope.seq))
    wheres = [f"events.parquet row {i}" for i in range(len(events))]
    report = VerifyReport()
    report.findings.extend(chain_findings(events, wheres))
    _check_session_ends(events, wheres, report)
    return report


def test_ended_sessions_are_whole_and_open_ones_named() -> None:
    st = EventStamper("gw-1")
    whole = _session(st, "s-whole", end=True)
    open_ = _session(st, "s-open", end=False)
    system = [default_codec().decode(_policy_changed(st, "gateway:gw-1@run", 7).wire)]
    report = _check([*whole, *open_, *system])
    assert report.ok and (report.sessions_whole, report.sessions_open) == (1, 1)
    (warn,) = report.findings
    assert (warn.kind, warn.severity, warn.session_id) == ("session_open", "warning", "s-open")
    assert warn.event_id == str(open_[-1].event.envelope.event_id)  # its last shipped event


def test_an_event_after_the_end_is_an_error() -> None:
    st = EventStamper("gw-1")
    events = _session(st, "s-1", end=True)
    # a chain that goes on after its SessionEnded (the idle sweep used to end a
    # session under a request in flight)
    late = default_codec().decode(_policy_changed(st, "s-1", 9).wire)
    report = _check([*events, late])
    (err,) = report.errors
    assert err.kind == "session_after_end" and err.event_id == str(late.event.envelope.event_id)
    assert "SessionEnded (seq 3" in err.detail
    assert report.sessions_whole == 0


def test_a_broken_chain_is_not_counted_whole() -> None:
    st = EventStamper("gw-1")
    events = _session(st, "s-1", end=True)
    report = _check([events[0], *events[2:]])  # seq 1 left out
    assert {f.kind for f in report.errors} == {"chain_gap"}
    assert report.sessions_whole == 0 and report.sessions_open == 0


def test_a_chain_not_shipped_from_its_start_is_left_to_the_chain_check() -> None:
    st = EventStamper("gw-1")
    events = _session(st, "s-1", end=False)
    report = _check(events[1:])
    assert not [f for f in report.findings if f.kind.startswith("session_")]
    assert (report.sessions_whole, report.sessions_open) == (0, 0)
