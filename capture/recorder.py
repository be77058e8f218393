"""Recorder: turns each flow into events and makes them durable *before* the
request goes upstream and before the response goes back (invariant 1).

It runs last among the request hooks, after identity, classification, policy
and credentials have filled in the flow's state. If the log refuses the
events, the client gets 503 and nothing is forwarded.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from mitmproxy import http
from pydantic import BaseModel
from uuid_utils import uuid7

from capture.approvals.service import EmitRequest
from capture.checkpointer import Checkpointer
from capture.config import GatewayConfig
from capture.control_api import CONTROL_FLOW
from capture.credentials import CLIENT_QUERY
from capture.headers import header_value
from capture.intake import raw_headers
from capture.masker import BODY_SEEN
from capture.policy import Decision, RequestObligations
from capture.redact import body_holds_credentials, redact_header_records, redact_query
from capture.sessions import SESSION_HEADER, Session, SessionTracker
from capture.signing_keys import SigningKeyError, load_or_create_signing_key
from capture.state import FlowState, block, error_response, fail_closed, state_of
from embedguard import __version__
from pipeline.events import EventPublisher
from pipeline.transport import EventLog, EventLogError, open_log
from pipeline.transport.sqlite import AppendFence, SqliteEventLog
from schemas.chain import EventStamper, StampedEvent
from schemas.codec import InvalidEvent
from schemas.models import (
    Event,
    GatewayStarted,
    IdentityResolved,
    PolicyDecided,
    RequestBlocked,
    RequestForwarded,
    RequestReceived,
    ResponseRecorded,
    SessionEnded,
    SessionStarted,
)

__all__ = [
    "APPROVAL_ID",
    "APPROVAL_STATUS",
    "RECEIVED_RECORDED",
    "Recorder",
    "approved_by_gate",
    "decided_body",
    "decided_key",
    "default_gateway_id",
    "received_key",
]

#: FlowState.extra keys the approval gate sets (capture/approval_gate.py)
RECEIVED_RECORDED = "received_recorded"
APPROVAL_ID = "approval_id"
APPROVAL_STATUS = "approval_status"


def approved_by_gate(st: FlowState) -> bool:
    """A require_approval request that an approval released (hold or async)."""
    return (
        st.decision is not None
        and st.decision.outcome == "require_approval"
        and st.extra.get(APPROVAL_STATUS) == "approved"
        and bool(st.extra.get(APPROVAL_ID))
    )

log = logging.getLogger("embedguard.recorder")
_SESSION_HEADER = SESSION_HEADER.lower().encode()
#: a flow this old without a response or error hook is no longer counted as
#: in flight (longer than any hold for approval, whose timeout is bounded)
_STALE_FLOW_S = 3600.0


def _checkpointer(config: GatewayConfig) -> Checkpointer | None:
    if config.signing_key is None:
        return None
    try:
        signer = load_or_create_signing_key(config.signing_key)
    except (SigningKeyError, OSError) as exc:
        raise ValueError(f"--signing-key: {exc}") from None
    return Checkpointer(
        signer, every=config.checkpoint_every, interval_s=config.checkpoint_interval_s
    )


def default_gateway_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recordable(value: Any) -> Any:
    """``value`` with every string made valid Unicode (the same object if it was).

    Client text reaches events as Python strings that may hold lone
    surrogates: mitmproxy decodes non-UTF-8 bytes in the path and headers
    with surrogateescape, and JSON bodies may escape one (``"\\udc80"``). Avro
    strings are UTF-8, so such an event could not be encoded and the request
    was refused with 500 and never recorded. An escaped byte becomes ``\\xNN``,
    any other lone surrogate ``\\uNNNN``: the record still shows what came.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return "".join(
                (f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else f"\\u{ord(c):04x}")
                if 0xD800 <= ord(c) <= 0xDFFF else c
                for c in value
            )
    if isinstance(value, list | tuple):
        items = [recordable(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items)
    if isinstance(value, dict):
        fixed = {recordable(k): recordable(v) for k, v in value.items()}
        unchanged = all(k in value and fixed[k] is value[k] for k in fixed)
        return value if unchanged and len(fixed) == len(value) else fixed
    if isinstance(value, BaseModel):
        update = {}
        for name in type(value).model_fields:
            old = getattr(value, name)
            new = recordable(old)
            if new is not old:
                update[name] = new
        return value.model_copy(update=update) if update else value
    return value


class _RecordableStamper(EventStamper):
    """The stamper of one stream of this gateway run. ``fence``: its appends
    (AppendFence), so that after one fails no later one of the stream is
    stored; the recorder then starts a new stream (``_rotate_stream``)."""

    def __init__(self, gateway_id: str) -> None:
        super().__init__(gateway_id)
        self.fence = AppendFence()

    def stamp(self, cls: Any, **fields: Any) -> StampedEvent:
        # Almost every event encodes as it is; walking every value first would
        # cost more than the encoding. A failed stamp changes no state, so the
        # rare event with lone surrogates is simply stamped again, cleaned.
        try:
            return super().stamp(cls, **fields)
        except InvalidEvent:
            return super().stamp(cls, **{k: recordable(v) for k, v in fields.items()})

    def stamp_record(self, cls: Any, **fields: Any) -> StampedEvent:
        try:
            return super().stamp_record(cls, **fields)
        except InvalidEvent:
            fields["body"] = recordable(fields["body"])
            fields["request_id"] = recordable(fields.get("request_id"))
            fields["body_key"] = None  # rare: not worth keeping
            return super().stamp_record(cls, **fields)


def _records(items: Sequence[BaseModel]) -> list[dict[str, Any]]:
    """Nested models as the plain records ``stamp_record`` takes (their
    ``__dict__`` holds exactly the validated field values)."""
    return [item.__dict__ for item in items]


#: obligations as event records, by what they contain (the policy merges a new
#: MaskSpec per request; the same few recur)
_OBLIGATIONS: dict[tuple[Any, ...], list[dict[str, Any]]] = {}


def _obligation_key(ob: RequestObligations) -> tuple[Any, ...] | None:
    """What the obligations' records are made of (None: not keyed)."""
    if ob.row_filters:  # rare, and their filters are nested models: not cached
        return None
    m = ob.mask
    return (
        None if m is None else tuple(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in m.__dict__.items()
        ),
        ob.strip_vectors,
    )


def _obligation_records(ob: RequestObligations) -> list[dict[str, Any]]:
    key = _obligation_key(ob)
    if key is None:
        return _records(ob.to_event())
    found = _OBLIGATIONS.get(key)
    if found is None:
        if len(_OBLIGATIONS) >= 1024:
            _OBLIGATIONS.clear()
        found = _OBLIGATIONS[key] = _records(ob.to_event())
    return found


def decided_body(decision: Decision) -> dict[str, Any]:
    """The PolicyDecided body of ``decision`` as plain records: what
    ``Decision.to_event_fields`` gives, without building its nested models on
    every request (tests/capture/test_recorder.py holds the two equal)."""
    return {
        "outcome": decision.outcome,
        "matched_rules": list(decision.matched_rules),
        "reasons": list(decision.reasons),
        "obligations": _obligation_records(decision.obligations),
        "operation_decisions": [
            {"index": v.index, "outcome": v.outcome, "rule_id": v.rule_id, "reason": v.reason}
            for v in decision.per_operation
        ],
        "policy_sha256": decision.policy_sha256,
        "grant_id": decision.grant_id,
        "ticket_id": decision.ticket_id,
    }


def decided_key(decision: Decision) -> tuple[Any, ...] | None:
    """Every input of ``decided_body(decision)``: its body's encoding is kept
    under this key (``EventCodec.record_bytes(body_key=...)``)."""
    obligations = _obligation_key(decision.obligations)
    if obligations is None:
        return None
    return (
        decision.outcome,
        tuple(decision.matched_rules),
        tuple(decision.reasons),
        obligations,
        tuple((v.index, v.outcome, v.rule_id, v.reason) for v in decision.per_operation),
        decision.policy_sha256,
        decision.grant_id,
        decision.ticket_id,
    )


#: the largest request body a RequestReceived body key holds (a larger one is
#: encoded every time rather than kept in the codec's cache)
_KEYED_BODY_MAX = 1024
_KEYED_OPERATIONS_MAX = 16
_KEYED_TEXT_MAX = 4096


def received_key(body: dict[str, Any], operations: Sequence[BaseModel]) -> tuple[Any, ...] | None:
    """Every value of a RequestReceived ``body`` (its operations given as the
    models it was built from), or None for one too big to keep. Header values
    are the redacted ones: no credential is held by a key. Values come from
    validated models and strings, so equal keys mean equal values of the same
    types, as ``record_bytes(body_key=...)`` requires."""
    raw = body["body"]
    if (raw is not None and len(raw) > _KEYED_BODY_MAX) or len(
        operations
    ) > _KEYED_OPERATIONS_MAX:
        return None
    headers = tuple([(h["name"], h["value"]) for h in body["headers"]])
    if len(body["path"]) + len(body["query"]) + sum(len(v) for _, v in headers) > _KEYED_TEXT_MAX:
        return None  # kept keys and bytes stay small: at most ~1024 of a few kB
    return (
        body["method"], body["scheme"], body["host"], body["path"], body["query"], headers,
        raw, body["body_sha256"], body["body_size"], body["content_type"], body["product"],
        tuple([
            tuple([tuple(v) if type(v) is list else v for v in op.__dict__.values()])
            for op in operations
        ]),
    )


class Recorder:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        log_: EventLog | None = None,
        policy_sha256: Callable[[], str] | None = None,
    ) -> None:
        self.config = config
        self._policy_sha256 = policy_sha256
        #: called once GatewayStarted is durable (e.g. to record the active policy)
        self.on_started: list[Callable[[], Awaitable[None]]] = []
        #: set once the log is open and GatewayStarted is durable
        self.started = asyncio.Event()
        self._log = log_
        self._epoch = 0
        self.stamper = _RecordableStamper(self._stream_id())
        self.sessions = SessionTracker(config.session_idle_s)
        self.publisher: EventPublisher | None = None
        self._sweeper: asyncio.Task[None] | None = None
        #: ResponseRecorded appends still in flight (--response-durability async)
        self._in_flight: set[asyncio.Future[Any]] = set()
        #: sessions of abandoned streams (when abandoned, monotonic s): a flow
        #: that began in one has no chain left to continue (``_retired``)
        self._retired: dict[str, float] = {}
        #: flows between requestheaders and their response or error hook, by id,
        #: with when they began (monotonic s): one alone may commit on the loop
        self._live: dict[str, float] = {}
        if config.response_durability == "async":
            log.warning(
                "--response-durability async: responses are delivered while their "
                "record is being made durable; a crash can lose the record of a response"
            )
        #: this run of the gateway: a restart with the same --gateway-id (or a
        #: restarted worker) begins new chains, so its system session is new too
        self._run = str(uuid7())
        #: signed Merkle checkpoints of each stream (None without a signing key)
        self.checkpointer = _checkpointer(config)

    @property
    def system_session(self) -> str:
        """The session of gateway-level events (GatewayStarted, PolicyChanged,
        checkpoints, ...): one per stream of one run. A new stream after a failed
        append, or a restart with the same gateway id, starts its chains again at
        seq 0, so it must not continue the session of an earlier one."""
        return f"gateway:{self.stamper.gateway_id}@{self._run}"

    def _stream_id(self) -> str:
        return (
            self.config.gateway_id
            if self._epoch == 0
            else f"{self.config.gateway_id}#{self._epoch}"
        )

    # -- lifecycle ----------------------------------------------------------
    async def running(self) -> None:
        if self._log is None:
            self._log = open_log(self.config.log_url)
        if isinstance(self._log, SqliteEventLog):
            # One request at a time, an append finds the writer thread idle:
            # committing it right here (same fsync, same order) saves two
            # thread wake-ups per append. With other flows in flight it would
            # hold them all up for the fsync and defeat group commit, so only
            # a flow that is alone commits inline (docs/benchmarks.md, Gateway
            # overhead). Whoever opened the log (build_addons shares it with
            # the approval service), the recorder's appends are the hot path.
            self._log.commit_inline_when_idle = self.alone
        await self._log.start()
        self.publisher = EventPublisher(self._log)
        if self.config.response_durability == "async" and not hasattr(
            self._log, "append_nowait"
        ):
            log.warning(
                "--response-durability async has no effect with %s: it cannot queue an "
                "append in order without waiting, so every response waits for its record",
                self._log.url,
            )
        await self.record_system(
            GatewayStarted,
            config_sha256=self.config.config_sha256(),
            version=__version__,
            listen=[f"{r.listen_host}:{r.listen_port}" for r in self.config.routes],
            upstreams=[r.upstream for r in self.config.routes],
            policy_sha256=self._policy_sha256() if self._policy_sha256 else None,
            pid=os.getpid(),
        )
        for hook in self.on_started:
            await hook()
        self.started.set()
        self._sweeper = asyncio.create_task(self._sweep_idle())
        if self.checkpointer is not None:
            self.checkpointer.start(self.record_system, lambda: self.stamper.gateway_id)

    async def done(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        events = [self._session_ended(s, "shutdown") for s in self.sessions.close_all()]
        if events and self.publisher:
            try:
                await self.publisher.publish(events, fence=self.stamper.fence)
                self._observe(events)
            except EventLogError as exc:
                log.error("could not record %d session end(s) at shutdown: %s", len(events), exc)
        if self._in_flight:  # async responses still being made durable
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self.checkpointer is not None and self.publisher is not None:
            await self.checkpointer.stop(self.record_system, self.stamper.gateway_id)
        if self._log is not None:
            await self._log.close()

    async def _sweep_idle(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, max(self.config.session_idle_s / 4, 0.05)))
            self._forget_stale_flows(time.monotonic())
            ended = self.sessions.expire(datetime.now(UTC))
            if ended:
                try:
                    await self.append([self._session_ended(s, "idle") for s in ended])
                except EventLogError as exc:
                    log.error("could not record %d idle session end(s): %s", len(ended), exc)

    # -- flows in flight ------------------------------------------------------
    def alone(self) -> bool:
        """Is at most one flow between its request headers and its end? (Then
        an append may block the event loop for its own commit: nobody waits.)"""
        return len(self._live) <= 1

    def _forget_stale_flows(self, now: float) -> None:
        # A flow mitmproxy never ended with a response or error hook would keep
        # inline commits off for good; one older than any request could run
        # (held approvals included) is forgotten: it steers that choice, and
        # would hold its session open (never idle) for good.
        horizon = now - _STALE_FLOW_S
        stale = [k for k, t in self._live.items() if t < horizon]
        for flow_id in stale:
            del self._live[flow_id]
        self.sessions.forget_flows(stale)
        for sid in [k for k, t in self._retired.items() if t < horizon]:
            del self._retired[sid]

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._live[flow.id] = time.monotonic()

    # -- appending -----------------------------------------------------------
    async def append(self, events: Sequence[StampedEvent], *, key: str | None = None) -> None:
        """Append ``events``, just stamped by ``self.stamper``, durably (in its
        stream's order: nothing may be awaited between stamping and this call).
        ``key``: one partition for a key (claims on one approval), whatever the
        session. Raises EventLogError, and the stream is then abandoned."""
        assert self.publisher is not None, "recorder used before running()"
        stamper = self.stamper
        try:
            await self.publisher.publish(
                events, key=None if key is None else key.encode(), fence=stamper.fence
            )
        except EventLogError:
            self._rotate_stream(stamper)
            raise
        self._observe(events)

    def _observe(self, events: Sequence[StampedEvent]) -> None:
        """Durable events become leaves of their stream's Merkle tree."""
        if self.checkpointer is not None:
            self.checkpointer.observe(events)

    def _rotate_stream(self, failed: EventStamper | None = None) -> None:
        """After a failed append of ``failed``'s stream, some stamped events never
        reached the log. Its fence refuses every later append of it, so what the
        log holds of it is a contiguous prefix. Start a new stream and new
        sessions so no chain continues over the hole (once per stream: the
        appends refused after the first failure find it already done).
        ``failed``: the stream's stamper (default: the current one)."""
        if failed is not None and failed is not self.stamper:
            return
        self._epoch += 1
        self.stamper = _RecordableStamper(self._stream_id())
        now = time.monotonic()
        for s in self.sessions.close_all():
            self._retired[s.session_id] = now
        log.warning("event log refused an append; continuing on stream %s", self._stream_id())

    def _check_session(self, session_id: str | None) -> None:
        """Raise EventLogError if ``session_id`` is a session of an abandoned
        stream: its chain ends at the failed append, and this stream's chain of
        it would begin again at seq 0 (a flow that was in flight then, e.g. its
        response, or the outcome of a request held for approval)."""
        if self._retired and session_id in self._retired:
            raise EventLogError(
                f"session {session_id} belonged to a stream that was abandoned after a "
                "failed append; its chain cannot continue"
            )

    async def record_system(self, cls: type[Event], **body: Any) -> None:
        """Record a gateway-level event (GatewayStarted, PolicyChanged, ...)."""
        await self.append([self.stamper.stamp(cls, session_id=self.system_session, **body)])

    async def emit(self, req: EmitRequest) -> None:
        """The approval service's emitter: stamp ``req.events`` in one session of
        this gateway and append them durably (EventLogError otherwise).

        An explicit ``session_id`` wins (it must be a session of this gateway,
        e.g. the held request's). Otherwise the identity's session is the one
        the tracker keys by (subject, token, client address), started with
        SessionStarted and IdentityResolved if new; without an identity, the
        gateway's system session."""
        if not self.started.is_set():
            raise EventLogError("the gateway is still opening its audit log; retry in a moment")
        out: list[StampedEvent] = []
        ident = req.identity
        if req.partition_key:
            # a session of this stream for the key, so its chain stays in one partition
            sid = f"{req.partition_key}@{self.stamper.gateway_id}"
        elif req.session_id:
            self._check_session(req.session_id)
            sid = req.session_id
        elif ident is not None:
            now = datetime.now(UTC)
            address = req.client_address or ""
            key = self.sessions.key(ident.subject, ident.dpop_jkt or ident.token_id, address, None)
            session, started, ended = self.sessions.touch(key, now)
            sid = session.session_id
            if ended is not None:
                out.append(self._session_ended(ended, "idle"))
            if started:
                out.append(self.stamper.stamp(
                    SessionStarted, session_id=sid, occurred_at=now, subject=ident.subject,
                    issuer=ident.issuer, client_address=address, token_id=ident.token_id,
                    dpop_jkt=ident.dpop_jkt))
                out.append(self.stamper.stamp(
                    IdentityResolved, session_id=sid, request_id=req.request_id,
                    occurred_at=now, subject=ident.subject, issuer=ident.issuer,
                    groups=sorted(ident.groups), token_id=ident.token_id,
                    token_issued_at=ident.issued_at, token_expires_at=ident.expires_at,
                    auth_method=ident.auth_method, dpop_jkt=ident.dpop_jkt,
                    client_address=address, client_id=ident.client_id))
        else:
            sid = self.system_session
        for cls, body in req.events:
            fields = dict(body)
            rid = fields.pop("request_id", req.request_id)
            out.append(self.stamper.stamp(cls, session_id=sid, request_id=rid, **fields))
        await self.append(out, key=req.partition_key)

    def _session_ended(self, s: Session, reason: str) -> StampedEvent:
        ev = self.stamper.stamp(
            SessionEnded,
            session_id=s.session_id,
            reason=reason,
            request_count=s.request_count,
            started_at=s.started_at,
        )
        self.stamper.end_session(s.session_id)
        return ev

    # -- hooks ------------------------------------------------------------------
    @fail_closed("log")
    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(CONTROL_FLOW):
            return  # the control API answered it; its own events are emitted there
        st = state_of(flow)
        if st is None:  # never forward what the chain did not see
            flow.response = error_response(
                500, "internal_error", "the request was not checked; it was not forwarded", "-",
                method=flow.request.method,
            )
            return
        if not self.started.is_set():
            st.forwarded = False
            block(
                flow,
                st,
                503,
                "gateway_starting",
                "the gateway is still opening its audit log; retry in a moment",
                "log",
            )
            return
        if st.blocked is None and (
            st.identity is None
            or st.classification is None
            or st.decision is None
            or not (st.decision.outcome == "allow" or approved_by_gate(st))
        ):
            # Defence in depth: only a request every check allowed goes upstream.
            block(
                flow,
                st,
                500,
                "internal_error",
                "the request was not fully checked; it was not forwarded",
                "policy",
            )
        try:
            if st.extra.get(RECEIVED_RECORDED):
                # the approval gate made RequestReceived and PolicyDecided durable
                # before it held the flow; only the outcome is left to record
                self._check_session(st.session_id)
                events = self._outcome_events(st)
            else:
                events = self._received_events(flow, st) + self._outcome_events(st)
            await self.append(events)
        except EventLogError as exc:
            log.error("request %s refused: event log unavailable: %s", st.request_id, exc)
            st.forwarded = False
            block(
                flow,
                st,
                503,
                "audit_log_unavailable",
                "the audit log cannot record this request, so it was not forwarded; retry later",
                "log",
            )
            return
        st.forwarded = st.blocked is None

    async def response(self, flow: http.HTTPFlow) -> None:
        try:
            await self._record_response(flow)
        finally:
            self._flow_ended(flow)

    def _flow_ended(self, flow: http.HTTPFlow) -> None:
        self._live.pop(flow.id, None)
        st = state_of(flow)
        if st is not None:  # its last event is stamped: the session may now go idle
            self.sessions.release(st.session_id, flow.id, datetime.now(UTC))

    @fail_closed("log")
    async def _record_response(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or not st.forwarded or flow.response is None:
            return
        try:
            self._check_session(st.session_id)
            event = self._response_event(flow, st)
            if self.config.response_durability == "async" and self._publish_in_background(
                event, st.request_id
            ):
                return
            await self.append([event])
        except EventLogError as exc:
            log.error("response to %s withheld: event log unavailable: %s", st.request_id, exc)
            flow.response = error_response(
                503,
                "audit_log_unavailable",
                "the upstream answered but the audit log cannot record the response, so it was "
                "withheld; the operation may have completed upstream",
                st.request_id,
                method=flow.request.method,
            )

    def _publish_in_background(self, event: StampedEvent, request_id: str) -> bool:
        """--response-durability async: queue the event now, in stream order, and
        let the response go while it is made durable. False if the log cannot
        queue synchronously (the caller then appends and waits, as in sync mode)."""
        assert self.publisher is not None, "recorder used before running()"
        stamper = self.stamper
        try:
            # never inline: the point is not to hold the response for the commit
            future = self.publisher.publish_nowait([event], inline=False, fence=stamper.fence)
        except EventLogError:
            self._rotate_stream(stamper)
            raise
        if future is None:
            return False
        self._in_flight.add(future)
        future.add_done_callback(
            functools.partial(self._background_done, request_id, stamper))
        future.add_done_callback(
            lambda f: None if f.cancelled() or f.exception() else self._observe([event])
        )
        return True

    def _background_done(
        self, request_id: str, stamper: EventStamper, future: asyncio.Future[Any]
    ) -> None:
        self._in_flight.discard(future)
        if future.cancelled() or future.exception() is None:
            return
        log.error(
            "the response to %s was delivered (--response-durability async) but its "
            "ResponseRecorded could not be made durable: %s",
            request_id,
            future.exception(),
        )
        self._rotate_stream(stamper)

    async def error(self, flow: http.HTTPFlow) -> None:
        try:
            await self._record_error(flow)
        finally:
            self._flow_ended(flow)

    async def _record_error(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or not st.forwarded or flow.response is not None:
            return
        message = flow.error.msg if flow.error else "unknown upstream error"
        if self._retired and st.session_id in self._retired:
            log.error("could not record upstream error of %s: its session's stream was "
                      "abandoned after a failed append", st.request_id)
            return
        ev = self.stamper.stamp(
            ResponseRecorded,
            session_id=st.session_id or self.system_session,
            request_id=st.request_id,
            status=502,
            body=None,
            body_sha256=_sha256(b""),
            body_size=0,
            original_body_sha256=_sha256(b""),
            upstream_error=message[:500],
            latency_us=(time.perf_counter_ns() - st.started_ns) // 1000,
        )
        try:
            await self.append([ev])
        except EventLogError as exc:
            log.error("could not record upstream error of %s: %s", st.request_id, exc)

    async def record_received(self, flow: http.HTTPFlow) -> None:
        """Make the request's identity, RequestReceived and PolicyDecided durable
        now, ahead of the request hook (the approval gate does this before it
        emits ApprovalRequested and holds the flow). Raises EventLogError."""
        st = state_of(flow)
        assert st is not None, "record_received on a flow without state"
        if st.extra.get(RECEIVED_RECORDED):
            return
        if not self.started.is_set():
            raise EventLogError("the gateway is still opening its audit log")
        await self.append(self._received_events(flow, st))
        st.extra[RECEIVED_RECORDED] = True

    # -- event building ---------------------------------------------------------
    def _received_events(self, flow: http.HTTPFlow, st: FlowState) -> list[StampedEvent]:
        now = st.received_at
        ident = st.identity
        token_ref = (ident.dpop_jkt or ident.token_id) if ident else None
        headers = flow.request.headers
        session_name = header_value(headers, _SESSION_HEADER)
        key = self.sessions.key(
            ident.subject if ident else None,
            token_ref,
            st.client_address,
            session_name,
        )
        # the flow holds its session open until its response or error hook
        session, started, ended = self.sessions.touch(key, now, flow.id)
        st.session_id = session.session_id
        sid, rid = session.session_id, st.request_id
        stamp = self.stamper.stamp
        out: list[StampedEvent] = []
        if ended is not None:
            out.append(self._session_ended(ended, "idle"))
        if started:
            out.append(
                stamp(
                    SessionStarted,
                    session_id=sid,
                    occurred_at=now,
                    subject=ident.subject if ident else "anonymous",
                    issuer=ident.issuer if ident else "",
                    client_address=st.client_address,
                    token_id=ident.token_id if ident else None,
                    dpop_jkt=ident.dpop_jkt if ident else None,
                    client_session_name=session_name,
                    user_agent=header_value(headers, b"user-agent"),
                )
            )
            if ident is not None:
                out.append(
                    stamp(
                        IdentityResolved,
                        session_id=sid,
                        request_id=rid,
                        occurred_at=now,
                        subject=ident.subject,
                        issuer=ident.issuer,
                        groups=sorted(ident.groups),
                        token_id=ident.token_id,
                        token_issued_at=ident.issued_at,
                        token_expires_at=ident.expires_at,
                        auth_method=ident.auth_method,
                        dpop_jkt=ident.dpop_jkt,
                        client_address=st.client_address,
                        client_id=ident.client_id,
                    )
                )
        body = st.client_body
        limit = self.config.record_body_limit
        if len(body) <= limit and body_holds_credentials(body):
            # Milvus users/create, an import's keys...: like an oversized body,
            # recorded by its hash and size only (an oversized one is never
            # scanned: it is not recorded anyway)
            limit = -1
        cls = st.classification
        path, _, query = flow.request.path.partition("?")
        operations = cls.operations if cls else []
        received = {
            "method": flow.request.method,
            # as the client sent it, like host: reverse mode rewrites
            # flow.request to the upstream's scheme
            "scheme": "https" if flow.client_conn.tls_established else "http",
            "host": st.client_host,
            "path": path,
            # as the client sent it, its credential parameters redacted
            "query": redact_query(st.extra.get(CLIENT_QUERY, query)),
            "headers": redact_header_records(st.extra.get("client_headers", [])),
            "body": body if len(body) <= limit else None,
            "body_sha256": _sha256(body),
            "body_size": len(body),
            "content_type": header_value(headers, b"content-type"),
            "product": cls.product
            if cls
            else (st.route.kind if st.route.kind != "auto" else "unknown"),
            "operations": _records(operations),
        }
        out.append(
            self.stamper.stamp_record(
                RequestReceived,
                session_id=sid,
                request_id=rid,
                occurred_at=now,
                body=received,
                body_key=received_key(received, operations),
            )
        )
        if st.decision is not None:
            out.append(
                self.stamper.stamp_record(
                    PolicyDecided, session_id=sid, request_id=rid,
                    body=decided_body(st.decision), body_key=decided_key(st.decision),
                )
            )
        return out

    def _outcome_events(self, st: FlowState) -> list[StampedEvent]:
        sid, rid = st.session_id, st.request_id
        assert sid is not None, "outcome recorded before the request was received"
        stamp = self.stamper.stamp_record
        out: list[StampedEvent] = []
        if st.blocked is not None:
            b = st.blocked
            out.append(
                stamp(
                    RequestBlocked,
                    session_id=sid,
                    request_id=rid,
                    body={"status": b.status, "error": b.error, "reason": b.reason,
                          "stage": b.stage},
                )
            )
        else:
            forwarded = {
                "upstream": st.route.upstream,
                "credential_ref": st.route.credential_ref,
                "approval_id": st.extra.get(APPROVAL_ID),
                "grant_id": st.decision.grant_id if st.decision else None,
                "injected_filter": st.injected_filter,
            }
            key = tuple(forwarded.values())
            out.append(
                stamp(
                    RequestForwarded,
                    session_id=sid,
                    request_id=rid,
                    body=forwarded,
                    # all str, None or bool: hashable, and equal only if equal
                    body_key=key if all(
                        v is None or type(v) is str or type(v) is bool for v in key
                    ) else None,
                )
            )
        return out

    def _response_event(self, flow: http.HTTPFlow, st: FlowState) -> StampedEvent:
        assert flow.response is not None
        seen = st.extra.get(BODY_SEEN)
        encoding = header_value(flow.response.headers, b"content-encoding")
        if seen is not None and seen[0] is flow.response.raw_content and seen[1] == encoding:
            # the very body the masker read and hashed: nothing replaced it since
            _, _, delivered, delivered_sha256 = seen
        else:
            delivered = flow.response.raw_content or b""
            if encoding:
                delivered = flow.response.get_content(strict=False) or b""
            delivered_sha256 = _sha256(delivered)
        limit = self.config.record_body_limit
        return self.stamper.stamp_record(
            ResponseRecorded,
            session_id=st.session_id or self.system_session,
            request_id=st.request_id,
            body={
                "status": flow.response.status_code,
                "headers": redact_header_records(raw_headers(flow.response.headers)),
                "body": delivered if len(delivered) <= limit else None,
                "body_sha256": delivered_sha256,
                "body_size": len(delivered),
                "original_body_sha256": st.extra.get("original_body_sha256", delivered_sha256),
                "masked_fields": _records(st.extra.get("masked_fields", [])),
                "result_ids": st.extra.get("result_ids", [])[:10_000],
                "upstream_error": st.extra.get("upstream_error"),
                "latency_us": (time.perf_counter_ns() - st.started_ns) // 1000,
            },
        )

