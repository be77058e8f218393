"""ApprovalService: four-eyes approvals, change tickets and JIT grants, as events.

Every state change is an event made durable through the ``emit`` callable (in
the gateway, :meth:`capture.recorder.Recorder.emit`), and every process learns
state only by folding the log (:class:`~capture.approvals.state.ApprovalBook`).
So a decision taken through gateway B releases a flow held by gateway A: A's
tail of the log sees B's ApprovalDecided within ``poll_interval_s``. Every
rule check first calls :meth:`sync`, which reads the log up to its current end.

Sessions: events go into sessions of *this* gateway only (the requester's or
approver's session as the Recorder tracks it, or the gateway's system session
for expiries), because a session's hash chain is stamped by one gateway stream.

Deviations from the shared interface (all backward compatible):

* ``ApprovalError`` also uses the code ``bad_request`` (400) for malformed input.
* ``check_ticket`` checks a ticket against the operations used and claimed so
  far; it takes nothing (``request_id`` is accepted and ignored). A request
  takes operations only with :meth:`ApprovalService.claim`.
* ``expire`` takes ``force=True`` for the holder's maximum hold time.
* ``open_ticket`` also takes ``client_address`` and ``session_id``; ``issue_grant``
  takes ``client_address``.

Uses are claims (``ApprovalClaimed``, see :mod:`capture.approvals.state`):
:meth:`claim` appends one in the approval's own partition, reads the log up to
it and admits it only if it fits after every earlier claim not given back, so a
use is taken once across every gateway on the log. A request that then does not
go upstream gives its claim back with :meth:`release` (retried in the
background until the log takes it), so a change ticket's ``max_operations``
counts the operations that reached the database.

Caveat: decisions taken at the same moment through two gateways are ordered by
their timestamps in the fold; every process reaches the same result, but a flow
could already have been released by the first approval it saw.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from uuid_utils.compat import uuid7

from capture.approvals.state import (
    Approval,
    ApprovalBook,
    ApprovalError,
    Grant,
    Vote,
    check_consume,
    check_decision,
    check_grant_issue,
    normalize_actions,
    normalize_collections,
)
from capture.approvals.state import (
    check_ticket as _check_ticket_rule,
)
from capture.types import Identity
from pipeline.events import decode_records
from pipeline.transport.base import EventLog, LogReader, LogRecord
from pipeline.transport.errors import EventLogError
from schemas.codec import SINGLE_OBJECT_MAGIC, default_codec
from schemas.models import (
    ApprovalClaimed,
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    Event,
    GrantIssued,
    Operation,
)

if TYPE_CHECKING:
    from capture.approvals.webhook import Webhook
    from capture.policy import ApprovalRequirement, Policy

__all__ = [
    "CLAIM_KEY",
    "Approval",
    "ApprovalError",
    "ApprovalService",
    "EmitRequest",
    "Emitter",
    "Grant",
    "Vote",
    "now_utc",
]

log = logging.getLogger("embedguard.approvals")

MAX_WINDOW = timedelta(days=7)
_FOLDED = frozenset({"ApprovalRequested", "ApprovalDecided", "ApprovalExpired", "GrantIssued",
                     "ApprovalClaimed", "PolicyDecided", "RequestForwarded"})
#: Types the fold needs only when some trailing optional fields are set, with
#: those fields: PolicyDecided only with grant_id or ticket_id, RequestForwarded
#: only with approval_id (or grant_id). Every request writes one of each, so they
#: are most of the log the tail reads.
_TAIL_NULLS: dict[str, tuple[str, ...]] = {
    "PolicyDecided": ("grant_id", "ticket_id"),
    "RequestForwarded": ("approval_id", "grant_id", "injected_filter"),
}
MAX_REASON = 2000
#: FlowState.extra key of a request's admitted claim: (approval or ticket id, kind)
CLAIM_KEY = "approval_claim"
#: how long a release that the log refused is retried
RELEASE_RETRY_S = 3600.0
#: how long close() waits for releases being recorded
RELEASE_AT_CLOSE_S = 5.0
#: a claim an earlier run of this gateway left unforwarded is given back at
#: start only when at least this old (see ApprovalService._release_orphans)
ORPHAN_AGE_S = 60.0


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass
class EmitRequest:
    """Events to stamp in one session and append durably, as one batch."""

    events: list[tuple[type[Event], dict[str, Any]]]
    identity: Identity | None = None
    session_id: str | None = None
    request_id: str | None = None
    client_address: str | None = None
    #: claims: the log key (partition) every gateway uses for the same approval;
    #: the events go into a session of this gateway stream kept for that key
    partition_key: str | None = None


Emitter = Callable[[EmitRequest], Awaitable[None]]


@dataclass
class _Release:
    ref: str
    kind: Literal["request", "ticket"]
    request_id: str
    reason: str
    since: float = field(default_factory=time.monotonic)
    attempts: int = 0


def _trailing_nulls(writer: Any, fields: tuple[str, ...]) -> bytes | None:
    """The bytes a record of ``writer`` ends with when ``fields`` (its last
    fields: nullable unions, then at most one boolean) are all null, or None if
    the writer schema does not end that way. A null union branch is the varint
    0; a boolean is one byte (0 or 1, compared separately)."""
    names = [f["name"] for f in writer.schema.get("fields", [])]
    if names[-len(fields):] != list(fields):
        return None
    out = b""
    for f in writer.schema["fields"][-len(fields):]:
        t = f["type"]
        if isinstance(t, list) and len(t) == 2 and t[0] == "null":
            out += b"\x00"
        elif t == "boolean" and f is writer.schema["fields"][-1]:
            out += b"?"  # either byte
        else:
            return None
    return out


def _reason(text: str | None, *, required: bool) -> str:
    value = (text or "").strip()
    if required and not value:
        raise ApprovalError("bad_request", "give a reason (--reason ...): it is recorded "
                            "with the decision")
    if len(value) > MAX_REASON:
        raise ApprovalError("bad_request", f"the reason is {len(value)} characters; keep it "
                            f"under {MAX_REASON}")
    return value


def _window(window: timedelta) -> timedelta:
    if window <= timedelta(0) or window > MAX_WINDOW:
        raise ApprovalError("bad_request", f"the window must be more than 0 and at most "
                            f"{MAX_WINDOW.days} days")
    return window


class ApprovalService:
    def __init__(
        self,
        log: EventLog,
        emit: Emitter,
        *,
        clock: Callable[[], datetime] = now_utc,
        webhook: Webhook | None = None,
        poll_interval_s: float = 0.2,
        grant_issuer_groups: Sequence[Sequence[str]] | None = None,
        sweep_interval_s: float = 1.0,
        ticket_requirement: Callable[[], ApprovalRequirement | None] | None = None,
        stream: Callable[[], str] | None = None,
    ) -> None:
        """``stream``: this gateway's current event stream (the recorder's), so
        that of several gateways (or workers) that each recorded an approval's
        expiry only the one whose record came first notifies the webhook."""
        self.log = log
        self._stream = stream
        #: the streams this service's expiries were recorded on (rotations too)
        self._own_streams: set[str] = set()
        self._emit = emit
        self.clock = clock
        self.webhook = webhook
        self.poll_interval_s = poll_interval_s
        self.sweep_interval_s = sweep_interval_s
        self.grant_issuer_groups = [list(s) for s in (grant_issuer_groups or [["Vector-Approve"]])]
        self.ticket_requirement = ticket_requirement
        self.book = ApprovalBook()
        self._codec = default_codec()
        self._releases: dict[tuple[str, str], _Release] = {}
        self._release_tasks: set[asyncio.Task[None]] = set()
        #: writer fingerprint -> None (decode) or the trailing bytes that mean skip
        self._skip_tail: dict[bytes, bytes | None] = {}
        self._reader: LogReader | None = None
        self._read_lock = asyncio.Lock()
        self._decide_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.started = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        if self._reader is not None:
            return
        reader = self.log.tail_reader(from_beginning=True)
        await reader.start()
        self._reader = reader
        try:
            await self.sync(timeout_s=3600.0)  # a long log takes a while to fold at start
        except BaseException:
            self._reader, self.book = None, ApprovalBook()  # start() may be retried
            with contextlib.suppress(Exception):
                await reader.close()
            raise
        self._release_orphans()
        if self.webhook is not None:
            await self.webhook.start()
        self._tasks = [
            asyncio.create_task(self._tail(), name="approvals-tail"),
            asyncio.create_task(self._sweep(), name="approvals-sweeper"),
        ]
        self.started.set()

    def _release_orphans(self) -> None:
        """At start, give back the claims an earlier run of this gateway (same
        gateway id, so same stream name) admitted but never forwarded: it
        stopped in between, and the approved request could otherwise never be
        sent again. Only claims older than ORPHAN_AGE_S count, in case another
        process runs under the same id (a live one forwards within moments)."""
        if self._stream is None:
            return
        base = self._stream().split("#", 1)[0]

        def ours(stream: str) -> bool:
            return stream == base or stream.startswith(base + "#")

        before = self.clock() - timedelta(seconds=ORPHAN_AGE_S)
        orphans = self.book.orphan_claims(ours, before)
        for ref, request_id in orphans:
            self.release(ref, kind="request", request_id=request_id,
                         reason="an earlier run of this gateway claimed it and stopped "
                                "before forwarding; given back at restart")
        if orphans:
            log.warning("approvals: giving back %d claim(s) an earlier run of %s made but "
                        "never forwarded", len(orphans), base)

    async def close(self) -> None:
        if self._release_tasks:  # give claims back while the log is still open
            await asyncio.wait(list(self._release_tasks), timeout=RELEASE_AT_CLOSE_S)
        for t in [*self._tasks, *self._release_tasks]:
            t.cancel()
        for t in [*self._tasks, *self._release_tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        self._release_tasks = set()
        if self._releases:
            log.warning("approvals: %d claim release(s) could not be recorded before shutdown; "
                        "their operations stay counted", len(self._releases))
        if self.webhook is not None:
            await self.webhook.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            async with self._read_lock:
                await reader.close()

    async def __aenter__(self) -> ApprovalService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- reading the log ---------------------------------------------------------
    def _relevant(self, value: bytes) -> bool:
        """Skip decoding what the fold ignores (most of the log: requests and
        responses); the single-object header names the writer schema. A
        PolicyDecided without grant or ticket and a RequestForwarded without
        approval or grant are skipped too: those fields are the record's last,
        so their nulls are its last bytes. A non-null id ends in its own text;
        the ids the fold counts (:func:`~capture.approvals.state.valid_id`) are
        never empty and never end in a NUL, so they never end in null bytes.
        ``bench/approvals_tail.py`` measures the gain; a test checks that every
        record skipped is one the fold ignores, for every schema version."""
        if value[:2] != SINGLE_OBJECT_MAGIC or len(value) < 10:
            return True  # Confluent framing or junk: decode (and report) it
        fp = value[2:10]
        try:
            tail = self._skip_tail[fp]
        except KeyError:
            writer = self._codec.schemas.by_fingerprint.get(fp)
            if writer is None:
                return True  # unknown writer: decode (and report) it
            if writer.type_name not in _FOLDED:
                tail = b""
            else:
                nulls = _TAIL_NULLS.get(writer.type_name)
                tail = _trailing_nulls(writer, nulls) if nulls else None
            self._skip_tail[fp] = tail
        if tail is None:
            return True
        if not tail:
            return False
        end = value[-len(tail):]
        if tail[-1:] == b"?":
            return end[:-1] != tail[:-1] or end[-1] > 1
        return end != tail

    def _apply(self, records: Sequence[LogRecord]) -> None:
        changed: set[str] = set()
        wanted = [r for r in records if self._relevant(r.value)]
        for dec in decode_records(wanted, self._codec):
            if dec.decoded is None:
                log.warning("approvals: record %d:%d does not decode (%s); skipped",
                            dec.record.partition, dec.record.offset, dec.error)
                continue
            changed |= self.book.apply(dec.decoded.event)
        if changed:
            flag, self._changed = self._changed, asyncio.Event()
            flag.set()

    async def sync(self, timeout_s: float = 10.0) -> None:
        """Fold every event the log holds now. Raises EventLogError if it cannot."""
        reader = self._reader
        if reader is None:
            raise EventLogError("the approval service is not started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with self._read_lock:
            ends = await reader.end_offsets()
            while True:
                pos = reader.positions()
                if all(pos.get(p, 0) >= e for p, e in ends.items() if e > 0):
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise EventLogError(
                        f"could not read the event log {self.log.url} up to its end within "
                        f"{timeout_s:g}s; approvals cannot be checked now, retry later"
                    )
                self._apply(await reader.poll(max_records=2000, timeout=min(remaining, 0.5)))

    async def _tail(self) -> None:
        reader = self._reader
        assert reader is not None
        while True:
            try:
                async with self._read_lock:
                    records = await reader.poll(max_records=2000, timeout=0)
                    self._apply(records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the tail must survive a flaky log
                log.warning("approvals: reading the log failed (%s); retrying", exc)
                records = []
            if len(records) < 2000:
                await asyncio.sleep(self.poll_interval_s)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                now = self.clock()
                due = [a.approval_id for a in self.book.approvals()
                       if a.status == "pending" and a.expires_at + self._stagger(a.approval_id)
                       <= now]
                for aid in due:
                    await self.expire(aid)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep sweeping
                log.warning("approvals: expiry sweep failed (%s); retrying", exc)
            for key, rel in list(self._releases.items()):
                if not any(t.get_name() == f"release:{key}" for t in self._release_tasks):
                    self._spawn_release(rel)

    def _stagger(self, approval_id: str) -> timedelta:
        """How long after its deadline this gateway records an approval's expiry:
        0 to 4 sweep intervals, spread by gateway stream and approval, so that
        of several gateways (or workers) sweeping one log, usually one records
        it and the others find it expired. A late record changes nothing: past
        its deadline an approval is refused by the clock either way."""
        if self._stream is None:
            return timedelta(0)
        spread = zlib.crc32(f"{self._stream()}|{approval_id}".encode()) % 1000 / 1000
        return timedelta(seconds=spread * 4 * self.sweep_interval_s)

    async def _emit_and_sync(self, req: EmitRequest) -> None:
        await self._emit(req)  # EventLogError: nothing was recorded
        try:
            await self.sync()
        except EventLogError as exc:  # recorded; the tail folds it when the log answers
            log.warning("approvals: recorded, but the log cannot be read back now: %s", exc)

    def _notify(self, what: Literal["requested", "decided", "expired"], a: Approval | None,
                vote: Vote | None = None, decision: str | None = None) -> None:
        if self.webhook is not None and a is not None:
            self.webhook.notify(what, a, vote=vote, decision=decision)

    # -- queries -----------------------------------------------------------------
    def get(self, approval_id: str) -> Approval | None:
        return self.book.get(approval_id)

    def list(self, *, status: str | None = None) -> builtins.list[Approval]:
        return [a for a in self.book.approvals() if status is None or a.status == status]

    def tickets(self) -> builtins.list[Approval]:
        return [a for a in self.book.approvals() if a.kind == "ticket"]

    def grants(self) -> builtins.list[Grant]:
        return self.book.grants()

    def active_grants(self, issuer: str, subject: str, now: datetime) -> builtins.list[Grant]:
        """The JIT grants of the principal (``issuer``, ``subject``) active at ``now``
        (a grant recorded without its subject's issuer matches nobody)."""
        # called for every request: build only the caller's grants in their window
        # (book.grants() builds and sorts every grant ever issued, expired ones
        # included), then order them as book.grants() does
        book = self.book
        mine = [g.grant_id for g in book._grants.values()
                if g.kind == "jit" and g.subject == subject and g.subject_issuer == issuer
                and g.valid_from <= now < g.valid_until]
        if not mine:
            return []
        out = [g for gid in mine if (g := book.grant(gid)) is not None and g.active(now)]
        return sorted(out, key=lambda g: (g.valid_from, g.grant_id))

    # -- requests ------------------------------------------------------------------
    async def request_approval(
        self,
        *,
        requester: Identity,
        operations: Sequence[Operation],
        request_sha256: str,
        requirement: ApprovalRequirement,
        mode: Literal["hold", "async"],
        reason: str | None,
        blast_radius: int | None,
        session_id: str | None,
        request_id: str | None,
        client_address: str | None,
    ) -> Approval:
        now = self.clock()
        approval_id = str(uuid7())
        body: dict[str, Any] = {
            "approval_id": approval_id,
            "kind": "request",
            "requester_subject": requester.subject,
            "requester_issuer": requester.issuer,
            "requester_token_id": requester.token_id,
            "operations": list(operations),
            "request_sha256": request_sha256,
            "approver_groups": [list(s) for s in requirement.groups_any_of],
            "min_approvals": requirement.min_approvals,
            "expires_at": now + requirement.expires_after,
            "mode": mode,
            "reason": reason,
            "blast_radius": blast_radius,
            "occurred_at": now,
        }
        await self._emit_and_sync(EmitRequest(
            [(ApprovalRequested, body)], identity=requester, session_id=session_id,
            request_id=request_id, client_address=client_address))
        a = self.get(approval_id)
        if a is None:
            raise EventLogError(f"approval {approval_id} was appended but is not in the log")
        self._notify("requested", a)
        return a

    async def wait(self, approval_id: str, timeout_s: float) -> Approval:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_s, 0.0)
        if self.get(approval_id) is None:  # made through another gateway just now
            await self.sync()
        while True:
            a = self.get(approval_id)
            if a is None:
                raise ApprovalError("not_found", f"there is no approval {approval_id!r}")
            if a.status != "pending":
                return a
            remaining = deadline - loop.time()
            if remaining <= 0:
                return a
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()

    async def decide(
        self,
        approval_id: str,
        approver: Identity,
        decision: Literal["approve", "deny"],
        reason: str,
        *,
        client_address: str | None = None,
    ) -> Approval:
        text = _reason(reason, required=True)
        async with self._decide_lock:
            await self.sync()
            now = self.clock()
            a = self.get(approval_id)
            check_decision(a, approval_id, approver, decision, now)
            assert a is not None
            body: dict[str, Any] = {
                "approval_id": approval_id,
                "decision": decision,
                "approver_subject": approver.subject,
                "approver_issuer": approver.issuer,
                "approver_token_id": approver.token_id,
                "reason": text,
                # the time the rules were checked at, on the service's clock
                "occurred_at": now,
            }
            events: list[tuple[type[Event], dict[str, Any]]] = [(ApprovalDecided, body)]
            if a.kind == "ticket":
                trial = ApprovalDecided.model_validate({
                    **{k: v for k, v in body.items() if k != "occurred_at"},
                    "envelope": {
                        "event_id": uuid7(), "type": "ApprovalDecided", "occurred_at": now,
                        "gateway_id": "-", "session_id": "-", "seq": 0, "stream_seq": 0,
                        "prev_hash": "0" * 64,
                    },
                })
                after = self.book.preview(approval_id, trial)
                if after is not None and after.status == "approved":
                    events.append((GrantIssued, {
                        "grant_id": approval_id,
                        "kind": "ticket",
                        "approval_id": approval_id,
                        "subject": a.requester_subject,
                        "actions": list(a.scope_actions),
                        "collections": list(a.scope_collections),
                        "valid_from": a.valid_from or now,
                        "valid_until": a.valid_until or now,
                        "max_operations": a.max_operations,
                        "issued_by": approver.subject,
                        "reason": a.reason,
                        "subject_issuer": a.requester_issuer,
                        "occurred_at": now,
                    }))
            await self._emit_and_sync(EmitRequest(
                events, identity=approver, request_id=None, client_address=client_address))
        result = self.get(approval_id)
        vote = Vote(approver.subject, approver.issuer, text, now, approver.token_id)
        self._notify("decided", result, vote=vote, decision=decision)
        assert result is not None
        return result

    async def expire(self, approval_id: str, *, force: bool = False) -> Approval:
        async with self._decide_lock:
            await self.sync()
            now = self.clock()
            a = self.get(approval_id)
            if a is None:
                raise ApprovalError("not_found", f"there is no approval {approval_id!r}")
            if a.status != "pending" or (not force and now < a.expires_at):
                return a
            if self._stream is not None:
                self._own_streams.add(self._stream())
            await self._emit_and_sync(EmitRequest(
                [(ApprovalExpired, {"approval_id": approval_id,
                                    "expired_at": now if force else a.expires_at,
                                    "occurred_at": now})],
                request_id=a.request_id))
        result = self.get(approval_id)
        assert result is not None
        first = self.book.first_expiry_stream(approval_id)
        if result.status == "expired" and (
            self._stream is None or first is None or first in self._own_streams
        ):
            self._notify("expired", result)
        return result

    async def consume(
        self, approval_id: str, *, request_sha256: str, requester: Identity,
        request_id: str | None = None,
    ) -> Approval:
        """Check that a re-sent request may go ahead under ``approval_id`` and
        claim its one use for ``request_id`` (:meth:`claim`)."""
        await self.sync()
        a = self.get(approval_id)
        check_consume(a, approval_id, request_sha256=request_sha256, requester=requester,
                      used=False)
        await self.claim(approval_id, kind="request", request_id=request_id or str(uuid7()))
        assert a is not None
        return a

    # -- claims ------------------------------------------------------------------------
    async def claim(
        self,
        ref: str,
        *,
        kind: Literal["request", "ticket"],
        request_id: str,
        operations: int = 1,
    ) -> None:
        """Take ``operations`` uses of approval or ticket ``ref`` for ``request_id``,
        once across every gateway on the log: append an ApprovalClaimed, read the
        log up to it, and keep it only if it fits after every earlier claim not
        given back. Raises ApprovalError (``already_used`` for an approval,
        ``ticket_exhausted`` for a ticket) if it does not fit, EventLogError if
        the claim cannot be made or read back; in both cases the claim is given
        back (:meth:`release`) and the request must not go upstream."""
        operations = max(1, operations)
        body: dict[str, Any] = {"approval_id": ref, "kind": kind, "operations": operations}
        try:
            await self._emit(EmitRequest([(ApprovalClaimed, body)], request_id=request_id,
                                         partition_key=f"claims:{ref}"))
            await self.sync()
        except EventLogError:
            # the claim may be in the log even though the append failed
            self.release(ref, kind=kind, request_id=request_id,
                         reason="the claim could not be confirmed; the request was not forwarded")
            raise
        a = self.get(ref)
        limit = 1 if kind == "request" else (a.max_operations if a is not None else None)
        v = self.book.claim_verdict(ref, request_id, limit)
        if v.admitted:
            return
        self.release(ref, kind=kind, request_id=request_id,
                     reason="the claim did not fit; the request was refused")
        if not v.found:
            raise EventLogError(f"the claim on {ref} was appended but is not in the log; "
                                "retry later")
        who = (f" by request {v.ahead.request_id} through gateway {v.ahead.gateway_id}"
               if v.ahead is not None else "")
        if kind == "request":
            raise ApprovalError(
                "already_used",
                f"approval {ref} was already used{who}; an approval lets one request through "
                "once, across every gateway. Ask for a new approval if this one did not go "
                "through.")
        raise ApprovalError(
            "ticket_exhausted",
            f"change ticket {ref} allows {limit} operation(s) and {v.held} are used or taken "
            f"by requests in flight; this request needs {operations} more. Retry if one of "
            "them fails, or open a new ticket.")

    def release(self, ref: str, *, kind: Literal["request", "ticket"], request_id: str,
                reason: str) -> None:
        """Give back the claim of ``request_id`` on ``ref`` (its request did not go
        upstream). Recorded in the background, retried until the log takes it."""
        key = (ref, request_id)
        if key in self._releases:
            return
        rel = _Release(ref, kind, request_id, reason[:MAX_REASON])
        self._releases[key] = rel
        self._spawn_release(rel)

    def _spawn_release(self, rel: _Release) -> None:
        key = (rel.ref, rel.request_id)
        task = asyncio.ensure_future(self._record_release(rel))
        task.set_name(f"release:{key}")
        self._release_tasks.add(task)
        task.add_done_callback(self._release_tasks.discard)

    async def _record_release(self, rel: _Release) -> None:
        key = (rel.ref, rel.request_id)
        rel.attempts += 1
        try:
            await self._emit(EmitRequest(
                [(ApprovalClaimed, {"approval_id": rel.ref, "kind": rel.kind, "released": True,
                                    "reason": rel.reason})],
                request_id=rel.request_id, partition_key=f"claims:{rel.ref}"))
        except EventLogError as exc:
            if time.monotonic() - rel.since > RELEASE_RETRY_S:
                log.error("approvals: giving up releasing the claim of %s on %s: %s",
                          rel.request_id, rel.ref, exc)
                self._releases.pop(key, None)
            elif rel.attempts == 1:  # the sweeper tries again, quietly
                log.warning("approvals: the claim of %s on %s could not be released yet (%s)",
                            rel.request_id, rel.ref, exc)
            return
        self._releases.pop(key, None)

    @property
    def pending_releases(self) -> int:
        """Releases not recorded yet (the log refused them; they are retried)."""
        return len(self._releases)

    async def flush_releases(self) -> None:
        """Wait for the releases being recorded now."""
        while self._release_tasks:
            await asyncio.gather(*list(self._release_tasks), return_exceptions=True)

    # -- tickets and grants ----------------------------------------------------------
    async def open_ticket(
        self,
        requester: Identity,
        *,
        actions: Sequence[str],
        collections: Sequence[str],
        window: timedelta,
        max_operations: int | None,
        reason: str,
        requirement: ApprovalRequirement | None = None,
        client_address: str | None = None,
        session_id: str | None = None,
    ) -> Approval:
        try:
            acts = normalize_actions(actions)
            globs = normalize_collections(collections)
        except ValueError as exc:
            raise ApprovalError("bad_request", str(exc)) from None
        window = _window(window)
        text = _reason(reason, required=True)
        if max_operations is not None and max_operations < 1:
            raise ApprovalError("bad_request", "max_operations must be at least 1 (or unset)")
        req = requirement or (self.ticket_requirement() if self.ticket_requirement else None)
        groups = [list(s) for s in req.groups_any_of] if req else [["Vector-Approve"]]
        min_approvals = req.min_approvals if req else 1
        expires_after = req.expires_after if req else timedelta(minutes=30)
        now = self.clock()
        valid_until = now + window
        approval_id = str(uuid7())
        ops = [Operation(action=act, collection=g, detail="ticket scope")  # type: ignore[arg-type]
               for act in acts for g in globs]
        body: dict[str, Any] = {
            "approval_id": approval_id,
            "kind": "ticket",
            "requester_subject": requester.subject,
            "requester_issuer": requester.issuer,
            "requester_token_id": requester.token_id,
            "operations": ops,
            "request_sha256": _scope_sha256(acts, globs, now, valid_until, max_operations),
            "approver_groups": groups,
            "min_approvals": min_approvals,
            "expires_at": min(now + expires_after, valid_until),
            "mode": "async",
            "reason": text,
            "scope_actions": list(acts),
            "scope_collections": list(globs),
            "valid_from": now,
            "valid_until": valid_until,
            "max_operations": max_operations,
            "occurred_at": now,
        }
        await self._emit_and_sync(EmitRequest(
            [(ApprovalRequested, body)], identity=requester, session_id=session_id,
            client_address=client_address))
        a = self.get(approval_id)
        if a is None:
            raise EventLogError(f"ticket {approval_id} was appended but is not in the log")
        self._notify("requested", a)
        return a

    async def check_ticket(
        self,
        ticket_id: str,
        identity: Identity,
        operations: Sequence[Operation],
        now: datetime,
        *,
        request_id: str | None = None,
    ) -> Grant:
        await self.sync()
        t = self.get(ticket_id)
        used = self.book.uses(ticket_id)
        _check_ticket_rule(t, ticket_id, identity, operations, now, used)
        assert t is not None
        g = self.book.grant(ticket_id)
        if g is not None:
            return g
        # approved but the GrantIssued is not folded yet: the approval has the scope
        return Grant(
            grant_id=ticket_id, kind="ticket", subject=t.requester_subject,
            actions=t.scope_actions, collections=t.scope_collections,
            valid_from=t.valid_from or now, valid_until=t.valid_until or now,
            max_operations=t.max_operations, used_operations=used, approval_id=ticket_id,
            issued_by=t.approvals[-1].subject if t.approvals else "",
            subject_issuer=t.requester_issuer,
        )

    async def issue_grant(
        self,
        issuer: Identity,
        *,
        subject: str,
        actions: Sequence[str],
        collections: Sequence[str],
        window: timedelta,
        reason: str,
        client_address: str | None = None,
    ) -> Grant:
        try:
            acts = normalize_actions(actions)
            globs = normalize_collections(collections)
        except ValueError as exc:
            raise ApprovalError("bad_request", str(exc)) from None
        window = _window(window)
        text = _reason(reason, required=True)
        subject = subject.strip()
        if not subject or len(subject) > 256:
            raise ApprovalError("bad_request", "name the subject who gets the grant (--subject)")
        check_grant_issue(issuer, subject, self.grant_issuer_groups)
        now = self.clock()
        grant_id = str(uuid7())
        await self._emit_and_sync(EmitRequest(
            [(GrantIssued, {
                "grant_id": grant_id, "kind": "jit", "approval_id": None, "subject": subject,
                "actions": list(acts), "collections": list(globs), "valid_from": now,
                "valid_until": now + window, "max_operations": None,
                "issued_by": issuer.subject, "reason": text, "occurred_at": now,
                # a subject of the issuing approver's own identity provider
                "subject_issuer": issuer.issuer,
            })],
            identity=issuer, client_address=client_address))
        g = self.book.grant(grant_id)
        if g is None:
            raise EventLogError(f"grant {grant_id} was appended but is not in the log")
        return g


def ticket_requirement(policy: Policy) -> ApprovalRequirement | None:
    """Who approves change tickets: the policy's top-level ``approvers``."""
    from capture.policy import ApprovalRequirement

    spec = policy.approvers
    if spec is None:
        return None
    return ApprovalRequirement(
        rule_ids=[], groups_any_of=[list(s) for s in spec.groups_any_of],
        min_approvals=spec.min_approvals, expires_after=spec.expires_after, mode="async")


def approver_groups(policy: Policy) -> list[list[str]] | None:
    """Who may issue JIT grants: the policy's top-level approver groups."""
    return [list(s) for s in policy.approvers.groups_any_of] if policy.approvers else None


def _scope_sha256(
    actions: Sequence[str], globs: Sequence[str], start: datetime, end: datetime,
    max_operations: int | None,
) -> str:
    """A ticket binds its exact scope, as a request approval binds its content."""
    import hashlib
    import json

    doc = {"actions": list(actions), "collections": list(globs), "valid_from": start.isoformat(),
           "valid_until": end.isoformat(), "max_operations": max_operations}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
