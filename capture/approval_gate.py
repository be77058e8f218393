"""ApprovalGate: a request the policy sends to approval waits for a decision.

Placed after the Enforcer and before Credentials and the Recorder. For a
``require_approval`` decision it

1. makes the request's RequestReceived and PolicyDecided durable
   (:meth:`Recorder.record_received`), so the approval points at a recorded
   request;
2. computes the review context (:mod:`capture.review`: for a delete or update by
   filter, a recorded read-only count call upstream) and emits
   ApprovalRequested through the :class:`~capture.approvals.service.ApprovalService`,
   bound to the request's content hash (:func:`request_sha256`);
3. then either

   * **hold** (default): intercepts the flow and waits for the decision, which
     may come from any gateway process through the log. Approved → the flow
     goes on to Credentials and the Recorder, which records RequestForwarded
     with the approval id. Denied → 403 ``approval_denied`` with the approval id
     and the denier's reason. Expired, or not decided within the gateway's
     maximum hold time → the approval is expired (ApprovalExpired) and the
     client gets 403 ``approval_expired``. Only this flow waits; if the client
     goes away, the wait ends, the approval is expired and the request is
     recorded as blocked.
   * **async** (the policy's ``mode: async``, or ``Prefer: respond-async``):
     answers 202 ``{approval_id, status_url}``. After approval the client sends
     the same request again with ``X-Embedguard-Approval: ID``; it is accepted
     once, for the same requester and the same content hash
     (:meth:`ApprovalService.consume`): on another route (listener or
     upstream), with another Milvus ``db-name`` or any other bound difference
     it is refused as ``content_mismatch``.

Either way the approved request claims the approval's one use through the log
before it goes on (:meth:`ApprovalService.claim`, an ApprovalClaimed event):
the same approved re-send sent to two gateways at once goes upstream once, and
the other gets 409 ``already_used``. A claimed request that is then not
forwarded (the log refused it, the client left) gives its claim back from the
``response`` and ``error`` hooks, as does a change ticket's claim taken by the
Enforcer.

The session's events therefore read RequestReceived, PolicyDecided,
ApprovalRequested and, after the decision, RequestForwarded or RequestBlocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from mitmproxy import connection, http

from capture.approvals.service import CLAIM_KEY
from capture.classify import HEADERS_PRESENT, HEADERS_READ
from capture.config import GatewayConfig, Route
from capture.recorder import APPROVAL_ID, APPROVAL_STATUS
from capture.review import Review, blast_radius
from capture.state import REQUEST_ID_HEADER, Blocked, FlowState, fail_closed, state_of
from pipeline.transport.errors import EventLogError
from schemas.models import Event

if TYPE_CHECKING:
    from capture.approvals.service import Approval, ApprovalService
    from capture.enforcer import Enforcer
    from capture.recorder import Recorder

__all__ = [
    "APPROVAL_HEADER",
    "BINDING_VERSION",
    "ApprovalGate",
    "RequestBinding",
    "approval_mode",
    "binding_of",
    "request_sha256",
    "status_url",
]

log = logging.getLogger("embedguard.approvals.gate")

#: The header a client re-sends an async request with, naming its approval.
APPROVAL_HEADER = "X-Embedguard-Approval"
CONTROL_PREFIX = "/_embedguard"

RecordReceived = Callable[[http.HTTPFlow], Awaitable[None]]
RecordSystem = Callable[[str, list[tuple[type[Event], dict[str, Any]]]], Awaitable[None]]


#: The first field of every binding: a binding of another shape never shares a
#: hash with this one (v1 was method, path and body alone).
#: v3 binds Content-Type (a classification header since Weaviate was found to
#: read YAML bodies too: an approval given for a JSON body must not pass the
#: same bytes read another way)
BINDING_VERSION = "embedguard.approval-binding.v3"


@dataclass(frozen=True)
class RequestBinding:
    """Everything that decides what a held request does upstream; an approval
    binds its :attr:`sha256` (ApprovalRequested.request_sha256, "the request
    content hash") and a re-sent request must hash the same.

    * the route it arrived on: the upstream URL, the product (``kind``), the
      upstream credential's reference (its name, never the secret: one
      upstream reached with two keys may be two projects), the Pinecone index
      and the Chroma v1 switch, which both change what a path means. Not the
      listen address: any gateway replica serving the same route may take a
      re-send;
    * the method and the full request target (path with its query, as sent);
    * every value, in order, of each header classification reads
      (``capture.classify.HEADERS_READ``, e.g. Milvus' ``db-name`` and the
      body's ``content-type``): repeated
      fields are bound as sent, whichever one the upstream takes. The client's
      Host only on an ``auto`` route, where it can pick the product; on a route
      with a product it is never read (Pinecone's index is the route's, and
      the upstream gets the route's Host). On an ``auto`` route also whether
      each ``HEADERS_PRESENT`` header (``api-key``) was sent, never its value;
    * the body as the client sent it (decoded from any Content-Encoding).

    Fields are length-prefixed, so no two bindings share a hash by moving bytes
    between fields. :meth:`describe` is what approvers are shown of it.
    """

    kind: str
    upstream: str
    credential_ref: str | None
    pinecone_index: str | None
    chroma_v1: bool
    method: str
    target: str
    headers: tuple[tuple[str, tuple[str, ...]], ...]
    present: tuple[str, ...]
    body: bytes

    @classmethod
    def of(cls, route: Route, method: str, target: str,
           header_fields: Iterable[tuple[bytes, bytes]], client_host: str,
           body: bytes) -> RequestBinding:
        """The binding of a request with these raw header fields (name, value)
        that arrived on ``route`` with Host ``client_host``."""
        auto = route.kind == "auto"
        read: dict[str, list[str]] = {}
        sent: set[str] = set()
        for k, v in header_fields:
            name = k.decode("latin-1").lower()
            if name in HEADERS_READ and name != "host":
                read.setdefault(name, []).append(v.decode("utf-8", "surrogateescape"))
            elif auto and name in HEADERS_PRESENT:
                sent.add(name)
        if auto:
            read["host"] = [client_host]
        return cls(
            kind=route.kind, upstream=route.upstream, credential_ref=route.credential_ref,
            pinecone_index=route.pinecone_index, chroma_v1=route.chroma_v1,
            method=method.upper(), target=target,
            headers=tuple((n, tuple(read[n])) for n in sorted(read)),
            present=tuple(sorted(sent)), body=body,
        )

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()

        def put(part: str | bytes) -> None:
            raw = part if isinstance(part, bytes) else part.encode("utf-8", "surrogateescape")
            h.update(len(raw).to_bytes(8, "big"))
            h.update(raw)

        def put_optional(part: str | None) -> None:
            put("0" if part is None else "1")
            if part is not None:
                put(part)

        put(BINDING_VERSION)
        put(self.kind)
        put(self.upstream)
        put_optional(self.credential_ref)
        put_optional(self.pinecone_index)
        put("1" if self.chroma_v1 else "0")
        put(self.method)
        put(self.target)
        put(str(len(self.headers)))
        for name, values in self.headers:
            put(name)
            put(str(len(values)))
            for v in values:
                put(v)
        put(str(len(self.present)))
        for name in self.present:
            put(name)
        put(self.body)
        return h.hexdigest()

    def describe(self, max_target: int = 300) -> str:
        """One line for approvers: what the approval will let through. Values a
        client chose are JSON-quoted; only an over-long target is shortened
        (the hash binds all of it)."""
        target = self.target
        if len(target) > max_target:
            target = f"{target[:max_target]}… ({len(self.target)} characters)"
        route = f"{self.kind} upstream {self.upstream}"
        if self.pinecone_index:
            route += f" index {self.pinecone_index}"
        if self.chroma_v1:
            route += " (Chroma v1 paths)"
        if self.credential_ref:
            route += f" with credential {self.credential_ref}"
        parts = [f"{self.method} {json.dumps(target)} to {route}"]
        for name, values in self.headers:
            shown = ", ".join(json.dumps(v[:200]) for v in values) or "(none)"
            parts.append(f"header {name}: {shown}")
        for name in self.present:
            parts.append(f"header {name}: (sent)")
        body_sha = hashlib.sha256(self.body).hexdigest()
        parts.append(f"body {len(self.body)} bytes, sha256 {body_sha}")
        return "; ".join(parts)


def binding_of(flow: http.HTTPFlow, st: FlowState) -> RequestBinding:
    """The binding of a flow as the gate sees it (after classification, before
    any filter injection reaches the body the client sent)."""
    return RequestBinding.of(st.route, flow.request.method, flow.request.path,
                             flow.request.headers.fields, st.client_host, st.client_body)


def request_sha256(binding: RequestBinding) -> str:
    """The content hash an approval binds (ApprovalRequested.request_sha256):
    :attr:`RequestBinding.sha256`. The one definition used when the approval
    is asked for and when a re-sent request is checked."""
    return binding.sha256


def approval_mode(policy_mode: str, prefer: str | None) -> Literal["hold", "async"]:
    """async if the policy says so or the client asked with ``Prefer: respond-async``."""
    if policy_mode == "async":
        return "async"
    for pref in (prefer or "").split(","):
        if pref.split(";", 1)[0].strip().lower() == "respond-async":
            return "async"
    return "hold"


def status_url(scheme: str, host: str, approval_id: str) -> str:
    """This gateway's control API address of an approval (the async status_url)."""
    return f"{scheme}://{host}{CONTROL_PREFIX}/approvals/{approval_id}"


def _json_response(status: int, doc: dict[str, Any], request_id: str, method: str,
                   extra: dict[str, str] | None = None) -> http.Response:
    body = json.dumps(doc).encode()
    return http.Response.make(
        status,
        b"" if method.upper() == "HEAD" else body,
        {"content-type": "application/json", REQUEST_ID_HEADER: request_id,
         "cache-control": "no-store", **(extra or {})},
    )


def _refuse(flow: http.HTTPFlow, st: FlowState, status: int, error: str, reason: str,
            approval_id: str | None = None) -> None:
    st.blocked = Blocked(status, error, reason, "approval")
    doc: dict[str, Any] = {"error": error, "reason": reason, "request_id": st.request_id}
    if approval_id:
        doc["approval_id"] = approval_id
    flow.response = _json_response(status, doc, st.request_id, flow.request.method)


class ApprovalGate:
    def __init__(
        self,
        config: GatewayConfig,
        service: ApprovalService,
        *,
        record_received: RecordReceived,
        record_system: RecordSystem,
        policy_sha256: Callable[[], str] = lambda: "",
    ) -> None:
        self.config = config
        self.service = service
        self.record_received = record_received
        self.record_system = record_system
        self.policy_sha256 = policy_sha256
        #: flows held now: flow id → (client connection id, set when the client goes)
        self._held: dict[str, tuple[str, asyncio.Event]] = {}
        self._stopping = False

    @classmethod
    def wire(cls, config: GatewayConfig, service: ApprovalService, *, enforcer: Enforcer,
             recorder: Recorder) -> ApprovalGate:
        """The gate for a gateway process, and the enforcer connected to the same
        approvals service (tickets, grants) and recorder."""
        from capture.approvals.service import EmitRequest

        enforcer.approvals = service
        enforcer.record_received = recorder.record_received

        async def record_system(request_id: str,
                                events: list[tuple[type[Event], dict[str, Any]]]) -> None:
            await recorder.emit(EmitRequest(list(events), session_id=recorder.system_session,
                                            request_id=request_id))

        return cls(config, service, record_received=recorder.record_received,
                   record_system=record_system,
                   policy_sha256=lambda: enforcer.policy.sha256)

    @property
    def held(self) -> int:
        """How many flows wait for a decision now."""
        return len(self._held)

    # -- hooks --------------------------------------------------------------------
    @fail_closed("approval")
    async def request(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or flow.response is not None or st.blocked is not None:
            return
        d = st.decision
        if d is None or st.identity is None or st.classification is None:
            return
        if d.outcome != "require_approval":
            # the header only ever means something for a request that needs approval
            if APPROVAL_HEADER in flow.request.headers:
                del flow.request.headers[APPROVAL_HEADER]
            return
        binding = binding_of(flow, st)
        digest = request_sha256(binding)
        resent = flow.request.headers.get(APPROVAL_HEADER)
        if resent is not None:
            await self._resent(flow, st, resent.strip(), digest)
            return
        if d.approval is None:
            _refuse(flow, st, 403, "approval_required",
                    f"{d.reason}; but no approvers are configured for it — ask the policy "
                    "owner to set approvers")
            return
        mode = approval_mode(d.approval.mode, flow.request.headers.get("prefer"))
        try:
            await self.record_received(flow)
            review = await self._review(flow, st)
            approval = await self.service.request_approval(
                requester=st.identity,
                operations=list(st.classification.operations),
                request_sha256=digest,
                requirement=d.approval,
                mode=mode,
                reason="; ".join(x for x in (d.reason, review.note,
                                             f"approves exactly: {binding.describe()}") if x),
                blast_radius=review.blast_radius,
                session_id=st.session_id,
                request_id=st.request_id,
                client_address=st.client_address or None,
            )
        except EventLogError as exc:
            log.error("request %s: approval could not be recorded: %s", st.request_id, exc)
            st.forwarded = False
            _log_refusal(flow, st)
            return
        st.extra[APPROVAL_ID] = approval.approval_id
        if mode == "async":
            self._accepted(flow, st, approval)
            return
        await self._hold(flow, st, approval)

    def response(self, flow: http.HTTPFlow) -> None:
        self._release_unforwarded(flow, "answered without going upstream")

    def error(self, flow: http.HTTPFlow) -> None:
        self._client_gone(flow.id)
        self._release_unforwarded(flow, "the flow ended in an error before going upstream")

    def _release_unforwarded(self, flow: http.HTTPFlow, why: str) -> None:
        """A claimed approval or ticket use comes back if the request did not go
        upstream (the Recorder sets ``forwarded`` once RequestForwarded is durable)."""
        st = state_of(flow)
        if st is None or st.forwarded:
            return
        claim = st.extra.pop(CLAIM_KEY, None)
        if claim is None:
            return
        ref, kind = claim
        blocked = f" ({st.blocked.status} {st.blocked.error})" if st.blocked else ""
        self.service.release(ref, kind=kind, request_id=st.request_id,
                             reason=f"request {st.request_id} was not forwarded{blocked}: {why}")

    def client_disconnected(self, client: connection.Client) -> None:
        for fid, (cid, _) in list(self._held.items()):
            if cid == client.id:
                self._client_gone(fid)

    async def done(self) -> None:
        self._stopping = True
        for fid in list(self._held):
            self._client_gone(fid)

    def _client_gone(self, flow_id: str) -> None:
        entry = self._held.get(flow_id)
        if entry is not None:
            entry[1].set()

    # -- the modes ------------------------------------------------------------------
    async def _review(self, flow: http.HTTPFlow, st: FlowState) -> Review:
        cls = st.classification
        assert cls is not None

        async def record(events: list[tuple[type[Event], dict[str, Any]]]) -> None:
            await self.record_system(st.request_id, events)

        return await blast_radius(
            config=self.config, route=st.route, product=cls.product,
            method=flow.request.method, path=flow.request.path.split("?", 1)[0],
            body=st.client_body, operations=cls.operations, request_id=st.request_id,
            record=record, policy_sha256=self.policy_sha256(),
        )

    def _accepted(self, flow: http.HTTPFlow, st: FlowState, approval: Approval) -> None:
        scheme = "https" if flow.client_conn.tls_established else "http"
        url = status_url(scheme, st.client_host or flow.request.host_header or "",
                         approval.approval_id)
        reason = (f"approval {approval.approval_id} is pending; when it is approved, send the "
                  f"same request again with {APPROVAL_HEADER}: {approval.approval_id}")
        st.blocked = Blocked(202, "approval_pending", reason, "approval")
        doc = {
            "approval_id": approval.approval_id,
            "status": approval.status,
            "status_url": url,
            "expires_at": approval.expires_at.isoformat(),
            "request_id": st.request_id,
            "reason": reason,
        }
        headers = {"location": url}
        if approval_mode("hold", flow.request.headers.get("prefer")) == "async":
            headers["preference-applied"] = "respond-async"
        flow.response = _json_response(202, doc, st.request_id, flow.request.method, headers)

    async def _resent(self, flow: http.HTTPFlow, st: FlowState, approval_id: str,
                      digest: str) -> None:
        from capture.approvals.service import ApprovalError

        assert st.identity is not None
        try:
            approval = await self.service.consume(approval_id, request_sha256=digest,
                                                  requester=st.identity,
                                                  request_id=st.request_id)
        except ApprovalError as exc:
            _refuse(flow, st, exc.status, exc.code, exc.message, approval_id[:80])
            return
        except EventLogError as exc:
            log.error("request %s: approvals unreadable: %s", st.request_id, exc)
            _log_refusal(flow, st)
            return
        del flow.request.headers[APPROVAL_HEADER]
        st.extra[CLAIM_KEY] = (approval.approval_id, "request")
        st.extra[APPROVAL_ID] = approval.approval_id
        st.extra[APPROVAL_STATUS] = "approved"

    async def _hold(self, flow: http.HTTPFlow, st: FlowState, approval: Approval) -> None:
        aid = approval.approval_id
        now = datetime.now(UTC)
        timeout = min(self.config.hold_timeout_s, (approval.expires_at - now).total_seconds())
        gone = asyncio.Event()
        self._held[flow.id] = (flow.client_conn.id, gone)
        flow.intercept()
        waiter = asyncio.ensure_future(self.service.wait(aid, max(timeout, 0.0)))
        watcher = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (waiter, watcher):
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(waiter, watcher, return_exceptions=True)
            self._held.pop(flow.id, None)
            flow.resume()
        client_gone = gone.is_set()
        result: Approval | None = None
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            result = waiter.result()
        try:
            if result is None or result.status == "pending":
                # held too long or the client left: nobody may approve it any more
                result = await self.service.expire(aid, force=True)
        except Exception as exc:  # noqa: BLE001 - the client must get an answer
            log.error("request %s: could not expire approval %s: %s", st.request_id, aid, exc)
            _log_refusal(flow, st)
            return
        if result.status == "approved" and not client_gone and not await self._claim(flow, st, aid):
            return
        self._finish(flow, st, result, client_gone=client_gone, held_s=timeout)

    async def _claim(self, flow: http.HTTPFlow, st: FlowState, aid: str) -> bool:
        """Take the approval's one use for the held request (a re-send of it with
        the header through another gateway may race it)."""
        from capture.approvals.service import ApprovalError

        try:
            await self.service.claim(aid, kind="request", request_id=st.request_id)
        except ApprovalError as exc:
            _refuse(flow, st, exc.status, exc.code, exc.message, aid)
            return False
        except EventLogError as exc:
            log.error("request %s: the use of approval %s cannot be recorded: %s",
                      st.request_id, aid, exc)
            _log_refusal(flow, st)
            return False
        st.extra[CLAIM_KEY] = (aid, "request")
        return True

    def _finish(self, flow: http.HTTPFlow, st: FlowState, a: Approval, *, client_gone: bool,
                held_s: float) -> None:
        aid = a.approval_id
        if a.status == "approved" and not client_gone:
            names = ", ".join(v.subject for v in a.approvals)
            log.info("request %s released by approval %s (%s)", st.request_id, aid, names)
            st.extra[APPROVAL_STATUS] = "approved"
            return
        if client_gone and self._stopping:
            _refuse(flow, st, 503, "gateway_stopping",
                    f"the gateway stopped while the request was held for approval {aid}; the "
                    "approval was expired and nothing was forwarded — send the request again",
                    aid)
            return
        if client_gone:
            _refuse(flow, st, 499, "client_closed_request",
                    f"the client closed the connection while request was held for approval "
                    f"{aid}; it was not forwarded", aid)
            return
        if a.status == "denied":
            who = "; ".join(f"{v.subject}: {v.reason}" for v in a.denials) or "an approver"
            _refuse(flow, st, 403, "approval_denied",
                    f"approval {aid} was denied ({who}); the request was not forwarded", aid)
            return
        if a.status == "expired" and a.expires_at <= datetime.now(UTC):
            why = f"approval {aid} expired at {a.expires_at.isoformat()} without a decision"
        else:
            why = (f"approval {aid} was not decided within the gateway's maximum hold time "
                   f"({held_s:g}s) and has expired")
        _refuse(flow, st, 403, "approval_expired",
                f"{why}; the request was not forwarded — send it again to ask anew, or use "
                "Prefer: respond-async to get an approval id and re-send later", aid)


def _log_refusal(flow: http.HTTPFlow, st: FlowState) -> None:
    st.forwarded = False
    st.blocked = Blocked(
        503, "audit_log_unavailable",
        "the audit log cannot record the approval of this request, so it was not forwarded; "
        "retry later", "log")
    doc = {"error": st.blocked.error, "reason": st.blocked.reason, "request_id": st.request_id}
    flow.response = _json_response(503, doc, st.request_id, flow.request.method)
