"""ApprovalService on real event logs: two services on one log stand for two
gateway processes; every decision travels through the log, never in memory."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from capture.approvals.service import ApprovalError, ApprovalService, EmitRequest
from capture.approvals.state import ApprovalBook
from capture.recorder import Recorder
from pipeline.events import decode_records
from pipeline.transport.errors import EventLogError
from pipeline.transport.sqlite import SqliteEventLog
from schemas.chain import verify_chains
from schemas.models import (
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    GrantIssued,
    IdentityResolved,
    Operation,
    OperationDecision,
    PolicyDecided,
    RequestForwarded,
)
from tests.support.approvals import ISS, Clock, approval_stack, requirement, who
from tests.support.events import read_events

SHA = "c" * 64
OPS = [Operation(action="write", collection="docs", ids=["p1", "p2"], vector_count=2)]
DANA = who("dana", "Vector-Read", "Vector-Approve")
ANN = who("ann", "Vector-Approve")
BOB = who("bob", "Vector-Approve")
CY = who("cy", "Vector-Approve")


async def ask(svc: ApprovalService, n: int = 1, **kw: object) -> str:
    a = await svc.request_approval(
        requester=DANA, operations=OPS, request_sha256=SHA, requirement=requirement(n, **kw),  # type: ignore[arg-type]
        mode="hold", reason="reindex", blast_radius=None, session_id=None, request_id="req-1",
        client_address="127.0.0.1",
    )
    assert a.status == "pending"
    return a.approval_id


async def refused(code: str, coro: object) -> ApprovalError:
    with pytest.raises(ApprovalError) as info:
        await coro  # type: ignore[misc]
    assert info.value.code == code, info.value.message
    return info.value


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:{tmp_path / 'events.db'}"


async def test_two_gateways_share_decisions_through_one_sqlite_log(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    async with (
        approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-a", url) as (_, a),
        approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-b", url) as (_, b),
    ):
        aid = await ask(a)
        held = asyncio.create_task(a.wait(aid, timeout_s=60))
        await asyncio.sleep(0.1)
        assert not held.done()  # A holds until someone decides
        decided = await b.decide(aid, ANN, "approve", "reviewed the diff")  # B learns of it
        assert decided.status == "approved"
        released = await asyncio.wait_for(held, 30)
        assert released.status == "approved"
        assert [(v.subject, v.reason) for v in released.approvals] == [("ann", "reviewed the diff")]

        # 2 of 3, votes through both gateways; the third is too late
        aid2 = await ask(a, n=2)
        assert (await b.decide(aid2, ANN, "approve", "ok")).status == "pending"
        assert (await a.decide(aid2, BOB, "approve", "ok too")).status == "approved"
        await refused("already_decided", b.decide(aid2, CY, "deny", "wait"))
        assert (await a.wait(aid2, 5)).status == "approved"

        # a timeout returns the still-pending approval
        aid3 = await ask(b)
        assert (await a.wait(aid3, 0.2)).status == "pending"
        assert {x.approval_id for x in a.list(status="pending")} == {aid3}
        assert {x.approval_id for x in b.list(status="approved")} == {aid, aid2}

    events = await asyncio.to_thread(read_events, url)
    assert verify_chains(events) == []
    decisions = [d.event for d in events if isinstance(d.event, ApprovalDecided)]
    assert [(e.approval_id, e.approver_subject) for e in decisions] == [
        (aid, "ann"), (aid2, "ann"), (aid2, "bob")]
    # each decision sits in its approver's session, on the gateway that took it
    by_session = {d.event.envelope.session_id: d.event for d in events
                  if isinstance(d.event, IdentityResolved)}
    for e in decisions:
        assert by_session[e.envelope.session_id].subject == e.approver_subject
    req = next(d.event for d in events if isinstance(d.event, ApprovalRequested))
    assert by_session[req.envelope.session_id].subject == "dana"
    assert req.envelope.request_id == "req-1" and req.envelope.gateway_id == "gw-a"


async def test_server_rules_with_a_real_log(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    async with (
        approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-a", url) as (_, a),
        approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-b", url) as (_, b),
    ):
        aid = await ask(a, n=2, groups=[["Vector-Approve", "Security"], ["CISO"]])
        # dana is an approver herself, but not of her own request, under any token
        e = await refused("self_approval", a.decide(aid, DANA, "approve", "mine"))
        assert e.status == 403
        await refused("self_approval", b.decide(
            aid, who("dana", "CISO", token="another-token"), "approve", "still mine"))
        await refused("not_an_approver", b.decide(aid, ANN, "approve", "not enough groups"))
        ok = await b.decide(aid, who("ann", "Vector-Approve", "Security"), "approve", "AND set")
        assert ok.status == "pending"
        await refused("already_voted", a.decide(
            aid, who("ann", "Vector-Approve", "Security", token="t2"), "approve", "again"))
        # any deny wins over an approval already given
        denied = await a.decide(aid, who("cy", "CISO"), "deny", "not during the freeze")
        assert denied.status == "denied" and [v.subject for v in denied.denials] == ["cy"]
        assert (await b.wait(aid, 5)).status == "denied"
        await refused("not_found", a.decide("no-such-id", ANN, "approve", "?"))
        await refused("bad_request", a.decide(aid, ANN, "approve", "  "))
    # refusals leave no trace in the decisions
    events = [d.event for d in await asyncio.to_thread(read_events, url)]
    assert Counter(type(e).__name__ for e in events)["ApprovalDecided"] == 2


async def test_expiry_sweeper_and_decisions_after_expiry(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    clock = Clock()
    async with (
        approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-a", url, clock=clock)
        as (_, a),
        approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-b", url, clock=clock)
        as (_, b),
    ):
        aid = await ask(a, expires=timedelta(minutes=10))
        held = asyncio.create_task(a.wait(aid, timeout_s=60))
        clock.advance(timedelta(minutes=11))
        expired = await asyncio.wait_for(held, 30)  # both sweepers may emit; one expiry
        assert expired.status == "expired"
        assert expired.decided_at == expired.expires_at
        e = await refused("expired", b.decide(aid, ANN, "approve", "too late"))
        assert e.status == 410
        # due, whether or not a sweeper got to it yet: refused by the clock
        aid2 = await ask(a, expires=timedelta(minutes=10))
        clock.advance(timedelta(minutes=10))
        await refused("expired", b.decide(aid2, ANN, "approve", "on the dot"))
        # a holder's maximum hold time forces expiry before the deadline
        aid3 = await ask(a, expires=timedelta(hours=1))
        assert (await a.expire(aid3)).status == "pending"  # not due
        assert (await a.expire(aid3, force=True)).status == "expired"
        assert (await b.expire(aid3, force=True)).status == "expired"  # idempotent
    events = [d.event for d in await asyncio.to_thread(read_events, url)]
    expiries = Counter(e.approval_id for e in events if isinstance(e, ApprovalExpired))
    assert {aid, aid3} <= set(expiries) <= {aid, aid2, aid3}
    assert expiries[aid3] == 1  # the second forced expire saw the first and added none
    assert not any(isinstance(e, ApprovalDecided) for e in events)


async def test_async_approval_is_used_once_with_the_same_content(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    async with (
        approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-a", url) as (ra, a),
        approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-b", url) as (_, b),
    ):
        aid = await ask(a)
        await refused("not_approved", a.consume(aid, request_sha256=SHA, requester=DANA))
        await b.decide(aid, ANN, "approve", "ok")
        await refused("content_mismatch", a.consume(aid, request_sha256="d" * 64,
                                                    requester=DANA))
        await refused("wrong_requester", a.consume(aid, request_sha256=SHA, requester=ANN))
        # the same subject with a fresh token may re-send
        dana2 = who("dana", "Vector-Read", token="fresh")
        assert (await a.consume(aid, request_sha256=SHA, requester=dana2)).approval_id == aid
        await refused("already_used", a.consume(aid, request_sha256=SHA, requester=DANA))
        # the forwarded request carries the approval id: gateway B sees the use
        await ra.emit(EmitRequest([(RequestForwarded, {"upstream": "http://u",
                                                       "approval_id": aid})],
                                  identity=DANA, request_id="req-2"))
        await refused("already_used", b.consume(aid, request_sha256=SHA, requester=DANA))
        assert b.get(aid).used  # type: ignore[union-attr]
        await refused("not_found", b.consume("nope", request_sha256=SHA, requester=DANA))


async def _use_ticket(rec: Recorder, tid: str, rid: str, n: int) -> None:
    """What the gateway records when a request goes ahead under a ticket."""
    await rec.emit(EmitRequest([(PolicyDecided, {
        "outcome": "allow", "policy_sha256": "p", "ticket_id": tid,
        "operation_decisions": [OperationDecision(index=i, outcome="allow", reason="ticket")
                                for i in range(n)]})], identity=DANA, request_id=rid))


async def test_ticket_flow_with_overuse_across_gateways(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    clock = Clock()
    async with (
        approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-a", url, clock=clock)
        as (ra, a),
        approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-b", url, clock=clock)
        as (_, b),
    ):
        t = await a.open_ticket(DANA, actions=["upsert", "delete"], collections=["docs-*"],
                                window=timedelta(hours=2), max_operations=3,
                                reason="CHG-7 reindex")
        tid = t.approval_id
        assert t.kind == "ticket" and t.status == "pending"
        assert t.scope_actions == ("delete", "write") and t.max_operations == 3
        w = [Operation(action="write", collection="docs-1")]
        now = clock()
        await refused("ticket_not_approved", a.check_ticket(tid, DANA, w, now))
        await refused("self_approval", b.decide(tid, DANA, "approve", "mine"))
        approved = await b.decide(tid, ANN, "approve", "CHG-7 is scheduled")
        assert approved.status == "approved"
        grant = await a.check_ticket(tid, DANA, w * 2, clock())
        assert grant.grant_id == tid and grant.issued_by == "ann"
        # checking takes nothing; claiming does, across gateways
        await a.claim(tid, kind="ticket", request_id="r1", operations=2)
        assert a.book.uses(tid) == 2
        await refused("ticket_exhausted", b.check_ticket(tid, DANA, w * 2, clock()))
        e = await refused("ticket_exhausted", b.claim(tid, kind="ticket", request_id="r2",
                                                      operations=2))
        assert "allows 3 operation(s) and 2 are used or taken" in e.message
        await b.flush_releases()  # the refused claim is given back
        await a.sync()
        assert a.book.uses(tid) == 2
        assert (await a.check_ticket(tid, DANA, w, clock())).grant_id == tid
        await a.claim(tid, kind="ticket", request_id="r3", operations=1)
        await _use_ticket(ra, tid, "r3", 1)  # its PolicyDecided does not count again
        # gateway B counts the uses from the log
        e = await refused("ticket_exhausted", b.check_ticket(tid, DANA, w, clock()))
        assert "allows 3 operation(s) and 3 were used" in e.message
        # r3 did not reach the database after all: its claim is given back
        a.release(tid, kind="ticket", request_id="r3", reason="test: not forwarded")
        await a.flush_releases()
        await b.sync()
        assert b.book.uses(tid) == 2
        await b.claim(tid, kind="ticket", request_id="r4", operations=1)
        await refused("ticket_wrong_subject", b.check_ticket(tid, ANN, w, clock()))
        await refused("ticket_out_of_scope", b.check_ticket(
            tid, DANA, [Operation(action="write", collection="hr")], clock()))
        await refused("ticket_not_found", b.check_ticket("T-unknown", DANA, w, clock()))
        clock.advance(timedelta(hours=2))
        await refused("ticket_expired", b.check_ticket(tid, DANA, [], clock()))
        assert [g.grant_id for g in b.grants()] == [tid]
        assert [x.approval_id for x in b.tickets()] == [tid]
        # bad input is refused before anything is recorded
        await refused("bad_request", a.open_ticket(DANA, actions=["fly"], collections=["x"],
                                                   window=timedelta(hours=1),
                                                   max_operations=None, reason="r"))
        await refused("bad_request", a.open_ticket(DANA, actions=["upsert"], collections=["x"],
                                                   window=timedelta(days=30),
                                                   max_operations=None, reason="r"))
    events = [d.event for d in await asyncio.to_thread(read_events, url)]
    grants = [e for e in events if isinstance(e, GrantIssued)]
    assert len(grants) == 1 and grants[0].kind == "ticket" and grants[0].max_operations == 3
    assert grants[0].approval_id == tid and grants[0].issued_by == "ann"
    assert grants[0].reason == "CHG-7 reindex"


async def test_jit_grants(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    clock = Clock()
    async with approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-a", url,
                              clock=clock) as (_, a):
        g = await a.issue_grant(ANN, subject="dana", actions=["upsert"],
                                collections=["scratch-*"], window=timedelta(hours=1),
                                reason="hotfix")
        assert g.kind == "jit" and g.subject == "dana" and g.issued_by == "ann"
        assert g.reason == "hotfix"  # recorded in GrantIssued
        assert g.subject_issuer == ANN.issuer  # a subject of the issuing approver's IdP
        assert [x.grant_id for x in a.active_grants(ISS, "dana", clock())] == [g.grant_id]
        assert a.active_grants(ISS, "eve", clock()) == []
        # "dana" signed in at another IdP is another principal: the grant is not hers
        assert a.active_grants("https://other.example", "dana", clock()) == []
        clock.advance(timedelta(hours=1))
        assert a.active_grants(ISS, "dana", clock()) == []
        await refused("grant_self", a.issue_grant(ANN, subject="ann", actions=["upsert"],
                                                  collections=["x"], window=timedelta(hours=1),
                                                  reason="me"))
        await refused("not_an_approver", a.issue_grant(
            who("eve", "Vector-Read"), subject="dana", actions=["upsert"], collections=["x"],
            window=timedelta(hours=1), reason="pal"))


async def test_a_restarted_gateway_rebuilds_its_view_from_the_log(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    async with approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-a", url) as (_, a):
        aid = await ask(a)
        await a.decide(aid, ANN, "approve", "ok")
    async with approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-c", url) as (_, c):
        again = c.get(aid)
        assert again is not None and again.status == "approved"
        await refused("already_decided", c.decide(aid, BOB, "deny", "late"))


@pytest.mark.kafka
@pytest.mark.slow
async def test_two_gateways_share_decisions_through_kafka(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    from pipeline.transport.kafka import KafkaEventLog

    def kafka_log() -> KafkaEventLog:
        return KafkaEventLog(kafka_bootstrap, topic=kafka_topic, partitions=3,
                             connect_timeout=10.0, request_timeout=10.0, append_timeout=20.0)

    url = f"kafka://{kafka_bootstrap}?topic={kafka_topic}"
    async with approval_stack(kafka_log(), "gw-a", url) as (_, a):
        async with approval_stack(kafka_log(), "gw-b", url) as (_, b):
            aid = await ask(a, n=2)
            held = asyncio.create_task(a.wait(aid, timeout_s=90))
            await b.sync()
            await refused("self_approval", b.decide(aid, DANA, "approve", "mine"))
            assert (await b.decide(aid, ANN, "approve", "one")).status == "pending"
            assert (await b.decide(aid, BOB, "approve", "two")).status == "approved"
            released = await asyncio.wait_for(held, 90)
            assert released.status == "approved"
            assert {v.subject for v in released.approvals} == {"ann", "bob"}
            await refused("already_decided", a.decide(aid, CY, "deny", "late"))


async def test_a_refused_request_gives_its_ticket_claim_back(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    async with approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-a", url) as (ra, a):
        t = await a.open_ticket(DANA, actions=["upsert"], collections=["docs"],
                                window=timedelta(hours=1), max_operations=1, reason="one")
        await a.decide(t.approval_id, ANN, "approve", "ok")
        w = [Operation(action="write", collection="docs")]
        now = a.clock()
        await a.claim(t.approval_id, kind="ticket", request_id="r1")
        await refused("ticket_exhausted", a.check_ticket(t.approval_id, DANA, w, now))
        await refused("ticket_exhausted", a.claim(t.approval_id, kind="ticket",
                                                  request_id="r2"))
        # r1 was not forwarded after all (e.g. 503 from the log): nothing was used
        a.release(t.approval_id, kind="ticket", request_id="r1", reason="not forwarded")
        await a.flush_releases()
        await a.sync()
        assert a.book.uses(t.approval_id) == 0
        await a.check_ticket(t.approval_id, DANA, w, now)
        await a.claim(t.approval_id, kind="ticket", request_id="r3")
        assert a.book.uses(t.approval_id) == 1


async def test_start_can_be_retried_after_the_log_was_unreadable(tmp_path: Path) -> None:
    from pipeline.transport.errors import EventLogError

    path = tmp_path / "later.db"

    async def emit(req: EmitRequest) -> None:
        raise AssertionError("nothing is emitted here")

    svc = ApprovalService(SqliteEventLog(path), emit)
    with pytest.raises(EventLogError):
        await svc.start()  # no log file yet
    assert not svc.started.is_set()
    async with SqliteEventLog(path):  # the recorder creates it
        await svc.start()
        assert svc.started.is_set() and svc.list() == []
        await svc.close()


# -- the tail's cheap skip -------------------------------------------------------------


def _tail_cases() -> list[Any]:
    from schemas.chain import EventStamper
    from schemas.models import ApprovalClaimed, RequestBlocked

    st = EventStamper("gw-skip")
    ids: list[str | None] = [None, "", "g", "0190f1b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b", "x\x00"]
    out: list[Any] = []
    for outcome in ("allow", "deny", "require_approval"):
        for grant in ids:
            for ticket in ids:
                out.append(st.stamp(PolicyDecided, session_id="s", request_id="r",
                                    outcome=outcome, policy_sha256="p", grant_id=grant,
                                    ticket_id=ticket, operation_decisions=[OperationDecision(
                                        index=0, outcome=outcome, reason="r")]))
    for approval in ids:
        for grant in ids:
            for injected in (False, True):
                out.append(st.stamp(RequestForwarded, session_id="s", request_id="r",
                                    upstream="http://u", approval_id=approval, grant_id=grant,
                                    injected_filter=injected))
    out.append(st.stamp(ApprovalClaimed, session_id="c", request_id="r", approval_id="A",
                        kind="request"))
    out.append(st.stamp(RequestBlocked, session_id="s", request_id="r", status=403,
                        error="e", reason="r", stage="policy"))
    return out


def _old_writer_records() -> list[tuple[str, bytes]]:
    """The same kind of records as written by every frozen schema version."""
    import io
    import json as json_

    import fastavro

    from schemas.codec import FIXTURES_DIR, SINGLE_OBJECT_MAGIC, EventSchema, default_codec

    codec = default_codec()
    current = {es.type_name: es for es in codec.schemas.by_fingerprint.values()
               if es.version == "current"}
    out = []
    for vdir in sorted(p for p in FIXTURES_DIR.iterdir() if p.is_dir()):
        for name in ("PolicyDecided", "RequestForwarded"):
            old = EventSchema.from_schema(json_.loads((vdir / f"{name}.avsc").read_text()),
                                          vdir.name)
            for st in _tail_cases():
                if st.event.envelope.type != name:
                    continue
                rec = fastavro.schemaless_reader(io.BytesIO(codec.body(st.event)),
                                                 current[name].parsed, old.parsed)
                buf = io.BytesIO()
                fastavro.schemaless_writer(buf, old.parsed, rec)
                out.append((vdir.name, SINGLE_OBJECT_MAGIC + old.fingerprint + buf.getvalue()))
    return out


async def test_the_tail_skips_only_records_the_fold_ignores(tmp_path: Path) -> None:
    """The tail decides from a record's header and last bytes whether to decode
    it; a record it skips must be one the fold would ignore, whatever its ids
    and whichever schema version wrote it."""
    from pipeline.transport.base import LogRecord

    async def no_emit(_: EmitRequest) -> None:
        raise AssertionError("nothing is appended")

    svc = ApprovalService(SqliteEventLog(tmp_path / "unused.db"), no_emit)
    wires = [("current", st.wire) for st in _tail_cases()] + _old_writer_records()
    assert len(wires) > 200
    skipped = 0
    for version, wire in wires:
        [dec] = decode_records([LogRecord(0, 0, b"k", wire, 0)])
        assert dec.decoded is not None, version
        ev = dec.decoded.event
        book = ApprovalBook()
        matters = bool(book.apply(ev)) or bool(book._uses)  # noqa: SLF001
        if not svc._relevant(wire):  # noqa: SLF001
            skipped += 1
            assert not matters, (version, ev)
        if isinstance(ev, PolicyDecided) and ev.grant_id is None and ev.ticket_id is None:
            assert not svc._relevant(wire) or version != "current", ev  # noqa: SLF001
        if isinstance(ev, RequestForwarded) and ev.approval_id is None and ev.grant_id is None:
            assert not svc._relevant(wire) or version != "current", ev  # noqa: SLF001
    assert skipped >= 30  # the common case (no ids) is skipped, not decoded


async def test_a_release_the_log_refuses_is_retried_until_it_is_recorded(
    tmp_path: Path,
) -> None:
    url = sqlite_url(tmp_path)
    async with approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-a", url) as (ra, a):
        t = await a.open_ticket(DANA, actions=["upsert"], collections=["docs"],
                                window=timedelta(hours=1), max_operations=1, reason="one")
        await a.decide(t.approval_id, ANN, "approve", "ok")
        await a.claim(t.approval_id, kind="ticket", request_id="r1")
        ra.started.clear()  # the recorder refuses appends (as while its log reopens)
        with pytest.raises(EventLogError):  # a claim cannot be made now either
            await a.claim(t.approval_id, kind="ticket", request_id="r2")
        a.release(t.approval_id, kind="ticket", request_id="r1", reason="503: not forwarded")
        await a.flush_releases()
        assert a.pending_releases == 2  # r1's, and r2's (its claim may have been written)
        await a.sync()
        assert a.book.uses(t.approval_id) == 1
        ra.started.set()
        for _ in range(400):  # the sweeper retries every 0.05 s here
            if a.pending_releases == 0:
                break
            await asyncio.sleep(0.05)
        assert a.pending_releases == 0
        await a.sync()
        assert a.book.uses(t.approval_id) == 0
        await a.claim(t.approval_id, kind="ticket", request_id="r3")


async def test_a_restarted_gateway_gives_back_claims_it_never_forwarded(tmp_path: Path) -> None:
    """A gateway that stops between claiming an approval's one use and
    forwarding the request left the approval used up. Restarted under the same
    gateway id, it gives such claims back (older than ORPHAN_AGE_S); a claim
    whose request was forwarded, or another gateway's, stays counted."""
    url = sqlite_url(tmp_path)
    clock = Clock()
    db = tmp_path / "events.db"
    hour = timedelta(hours=1)
    async with approval_stack(SqliteEventLog(db), "gw-a", url, clock=clock) as (ra, a):
        orphan, forwarded = await ask(a, expires=hour), await ask(a, expires=hour)
        for aid in (orphan, forwarded):
            await a.decide(aid, ANN, "approve", "ok")
        await a.claim(orphan, kind="request", request_id="req-orphan")  # then it "crashes"
        await a.claim(forwarded, kind="request", request_id="req-fwd")
        await ra.emit(EmitRequest([(RequestForwarded, {"upstream": "http://u",
                                                       "approval_id": forwarded})],
                                  identity=DANA, request_id="req-fwd"))
    async with approval_stack(SqliteEventLog(db), "gw-b", url, clock=clock) as (_, b):
        others = await ask(b, expires=hour)
        await b.decide(others, ANN, "approve", "ok")
        await b.claim(others, kind="request", request_id="req-b")
    # restarted at once: the claims are too fresh to be taken for abandoned
    async with approval_stack(SqliteEventLog(db), "gw-a", url, clock=clock) as (_, again):
        assert again.pending_releases == 0
        assert again.book.uses(orphan) == 1
    clock.advance(timedelta(minutes=2))
    async with approval_stack(SqliteEventLog(db), "gw-a", url, clock=clock) as (_, a2):
        for _ in range(300):
            if a2.pending_releases == 0 and a2.book.uses(orphan) == 0:
                break
            await asyncio.sleep(0.05)
            await a2.sync()
        assert a2.book.uses(orphan) == 0  # given back
        assert a2.book.uses(forwarded) == 1 and a2.book.uses(others) == 1
        # the approved request can go upstream now, once
        await a2.claim(orphan, kind="request", request_id="req-orphan-again")
        await refused("already_used", a2.claim(orphan, kind="request", request_id="req-3"))
    released = [d.event for d in await asyncio.to_thread(read_events, url)
                if d.event.envelope.type == "ApprovalClaimed" and d.event.released]
    at_restart = [(e.approval_id, e.envelope.request_id) for e in released
                  if "restart" in (e.reason or "")]
    assert at_restart == [(orphan, "req-orphan")]
    given_back = {e.envelope.request_id for e in released}
    assert not given_back & {"req-fwd", "req-b"}  # forwarded, or not this gateway's
