"""Control API: approvals, tickets and grants over HTTP, on every gateway listener.

The first addon. Requests under the reserved prefix ``/_embedguard/`` are
answered here with JSON and never go upstream; every other request passes
untouched. The caller is verified with the same OIDC verifier (bearer token or
DPoP, whose proof must name this gateway's URL as on the data path:
:func:`capture.identity.dpop_url`, never the client's Host) as data requests,
and every decision is taken by the
:class:`~capture.approvals.service.ApprovalService`, which enforces the rules
on the server, whatever the client::

    GET  /_embedguard/approvals[?status=pending]      approvals you requested or may decide
    GET  /_embedguard/approvals/{id}                  one approval (an async status_url)
    POST /_embedguard/approvals/{id}/decision         {decision: approve|deny, reason}
    POST /_embedguard/tickets                         {actions, collections, window,
                                                       max_operations, reason}
    GET  /_embedguard/tickets[/{id}]                  tickets (with their use)
    POST /_embedguard/grants                          {subject, actions, collections, window,
                                                       reason}
    GET  /_embedguard/grants                          grants (issuers see all, others theirs)

Errors are ``{error, reason, request_id}`` with the ApprovalError code as
``error``. Tokens never appear in answers or logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from mitmproxy import http
from uuid_utils.compat import uuid7

from capture.approvals.state import (
    Approval,
    ApprovalError,
    approval_to_json,
    grant_to_json,
    satisfies_groups,
    valid_id,
)
from capture.dpop import AuthError
from capture.identity import dpop_url
from capture.state import REQUEST_ID_HEADER, error_response, state_of
from capture.types import Identity
from pipeline.transport.errors import EventLogError

if TYPE_CHECKING:
    from capture.approvals.service import ApprovalService
    from capture.oidc import OidcVerifier

__all__ = ["CONTROL_FLOW", "PREFIX", "ControlApi"]

log = logging.getLogger("embedguard.control")

PREFIX = "/_embedguard/"
#: flow.metadata key marking a flow this addon answers (later addons skip it)
CONTROL_FLOW = "embedguard.control"
MAX_BODY = 64 * 1024


def _json_response(status: int, body: Any, request_id: str) -> http.Response:
    return http.Response.make(
        status,
        json.dumps(body, ensure_ascii=False).encode(),
        {"content-type": "application/json", REQUEST_ID_HEADER: request_id,
         "cache-control": "no-store"},
    )


def _bad(message: str) -> ApprovalError:
    return ApprovalError("bad_request", message)


def _str_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"'{key}' must be a list of strings (or one comma-separated string)")
    return [v.strip() for v in value if v.strip()]


def _window(body: dict[str, Any]) -> timedelta:
    from capture.policy import parse_duration

    raw = body.get("window")
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        if raw <= 0:
            raise _bad("'window' must be positive")
        return timedelta(seconds=float(raw))
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise _bad(f"'window': {exc}") from None


def _reason(body: dict[str, Any]) -> str:
    value = body.get("reason")
    if not isinstance(value, str) or not value.strip():
        raise _bad("'reason' is required: say why (it is recorded)")
    return value


def _limit(value: str | None) -> int | None:
    """``?limit=N`` (1 to 1000) of an approvals list, or None without one."""
    if value is None:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 1000:
        raise _bad("limit must be a whole number from 1 to 1000")
    return int(value)


def may_see(a: Approval, who: Identity, issuer_groups: Sequence[Sequence[str]]) -> bool:
    """The requester, anyone who could decide it, and grant issuers see an approval."""
    return (
        a.is_requester(who)
        or satisfies_groups(who.groups, a.approver_groups)
        or satisfies_groups(who.groups, issuer_groups)
    )


class ControlApi:
    def __init__(
        self,
        service: ApprovalService,
        verifier: OidcVerifier,
        *,
        ready: asyncio.Event | None = None,
        require_tls: bool = False,
    ) -> None:
        self.service = service
        self.verifier = verifier
        #: a listener configured for TLS takes tokens only over TLS (as Intake does)
        self.require_tls = require_tls
        self._ready = ready
        self._starter: asyncio.Task[None] | None = None
        #: set once the approval service has read the log (run_gateway waits for it)
        self.started = service.started

    # -- lifecycle --------------------------------------------------------------
    async def running(self) -> None:
        # The Recorder opens the log after this addon's running(); start later.
        self._starter = asyncio.create_task(self._start_service())

    async def _start_service(self) -> None:
        if self._ready is not None:
            await self._ready.wait()
        while True:
            try:
                await self.service.start()
                return
            except EventLogError as exc:
                log.error("approvals cannot read the event log (%s); retrying", exc)
            except Exception:  # noqa: BLE001 - keep trying; the control API answers 503
                log.exception("approvals failed to start; retrying")
            await asyncio.sleep(1.0)

    async def done(self) -> None:
        if self._starter is not None:
            self._starter.cancel()
        await self.service.close()

    # -- hooks ------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.path.startswith(PREFIX):
            flow.metadata[CONTROL_FLOW] = True

    async def request(self, flow: http.HTTPFlow) -> None:
        if not flow.metadata.get(CONTROL_FLOW) or flow.response is not None:
            return
        st = state_of(flow)  # Intake gave the flow its request id
        rid = st.request_id if st is not None else str(uuid7())
        try:
            status, body = await self._handle(flow, rid)
            flow.response = _json_response(status, body, rid)
        except ApprovalError as exc:
            flow.response = error_response(exc.status, exc.code, exc.message, rid,
                                           method=flow.request.method)
        except AuthError as exc:
            error = "identity_unavailable" if exc.status == 503 else "unauthenticated"
            flow.response = error_response(exc.status, error, f"{exc.code}: {exc.message}", rid,
                                           method=flow.request.method)
            if exc.status == 401:
                flow.response.headers["www-authenticate"] = exc.www_authenticate()
        except EventLogError as exc:
            log.error("control request %s: event log unavailable: %s", rid, exc)
            flow.response = error_response(
                503, "audit_log_unavailable",
                "the audit log cannot record or read approvals now; check the state with a "
                "GET and retry later", rid, method=flow.request.method)
        except Exception:  # noqa: BLE001 - clients never get a stack trace
            log.exception("control request %s failed", rid)
            flow.response = error_response(
                500, "internal_error", "the gateway failed while handling this request", rid,
                method=flow.request.method)

    # -- routing ------------------------------------------------------------------
    async def _identity(self, flow: http.HTTPFlow) -> Identity:
        headers = flow.request.headers
        if len(headers.get_all("authorization")) > 1 or len(headers.get_all("dpop")) > 1:
            raise AuthError("duplicate_credentials",
                            "send exactly one Authorization header (and at most one DPoP header)")
        # The proof must be made for this gateway's URL (the route's public URL,
        # or the address the connection arrived on), as on the data path: never
        # a Host header the client chose, or a proof for another server passes.
        st = state_of(flow)
        client_host = st.client_host if st is not None else (flow.request.host_header or "")
        url = dpop_url(flow, st.route.public_url if st is not None else None, client_host)
        return await self.verifier.authenticate(
            authorization=headers.get("authorization"),
            dpop_proof=headers.get("dpop"),
            method=flow.request.method,
            url=url,
            now=datetime.now(UTC),
        )

    def _body(self, flow: http.HTTPFlow) -> dict[str, Any]:
        raw = flow.request.raw_content or b""
        if flow.request.headers.get("content-encoding"):
            raise _bad("send the JSON body uncompressed")
        if len(raw) > MAX_BODY:
            raise ApprovalError("bad_request", f"the body is larger than {MAX_BODY} bytes", 413)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise _bad("the body is not JSON; send a JSON object") from None
        if not isinstance(body, dict):
            raise _bad("the body must be a JSON object")
        return body

    async def _handle(self, flow: http.HTTPFlow, rid: str) -> tuple[int, Any]:
        if self.require_tls and not flow.client_conn.tls_established:
            raise ApprovalError("tls_required", "this listener accepts only TLS; connect with "
                                "https://", 403)
        if not self.service.started.is_set():
            raise ApprovalError("starting", "the gateway is still reading its approvals; "
                                "retry in a moment", 503)
        path, _, query = flow.request.path.partition("?")
        parts = [urllib.parse.unquote(p) for p in path[len(PREFIX):].split("/")]
        method = flow.request.method.upper()
        who = await self._identity(flow)
        address = flow.client_conn.peername[0] if flow.client_conn.peername else None
        svc = self.service
        issuers = svc.grant_issuer_groups

        def need(expected: str) -> None:
            if method != expected:
                raise ApprovalError("method_not_allowed",
                                    f"use {expected} for {path}", 405)

        def check_id(value: str) -> str:
            if not valid_id(value):
                raise ApprovalError("not_found", "that id is not an approval, ticket or grant id")
            return value

        if parts[0] == "approvals":
            if len(parts) == 1 or parts[1:] == [""]:
                need("GET")
                params = dict(urllib.parse.parse_qsl(query))
                status = params.get("status") or None
                if status not in (None, "pending", "approved", "denied", "expired"):
                    raise _bad("status must be pending, approved, denied or expired")
                limit = _limit(params.get("limit"))
                await svc.sync()
                seen = [a for a in svc.list(status=status) if may_see(a, who, issuers)]
                if limit is not None:  # the newest ``limit``, newest first
                    seen = seen[::-1][:limit]
                return 200, {"approvals": [approval_to_json(a) for a in seen]}
            aid = check_id(parts[1])
            if len(parts) == 2:
                need("GET")
                await svc.sync()
                a = svc.get(aid)
                if a is None or not may_see(a, who, issuers):
                    raise ApprovalError("not_found", f"there is no approval {aid} you may see")
                return 200, approval_to_json(a)
            if len(parts) == 3 and parts[2] == "decision":
                need("POST")
                body = self._body(flow)
                decision = body.get("decision")
                if decision not in ("approve", "deny"):
                    raise _bad("'decision' must be \"approve\" or \"deny\"")
                a = await svc.decide(aid, who, decision, _reason(body), client_address=address)
                return 200, approval_to_json(a)
        elif parts[0] == "tickets":
            if len(parts) == 1 or parts[1:] == [""]:
                if method == "GET":
                    await svc.sync()
                    return 200, {"tickets": [self._ticket_json(t) for t in svc.tickets()
                                             if may_see(t, who, issuers)]}
                need("POST")
                body = self._body(flow)
                max_ops = body.get("max_operations")
                if max_ops is not None and (not isinstance(max_ops, int)
                                            or isinstance(max_ops, bool)):
                    raise _bad("'max_operations' must be a whole number or null")
                t = await svc.open_ticket(
                    who, actions=_str_list(body, "actions"),
                    collections=_str_list(body, "collections"), window=_window(body),
                    max_operations=max_ops, reason=_reason(body), client_address=address)
                return 201, self._ticket_json(t)
            if len(parts) == 2:
                need("GET")
                tid = check_id(parts[1])
                await svc.sync()
                found = svc.get(tid)
                if found is None or found.kind != "ticket" or not may_see(found, who, issuers):
                    raise ApprovalError("not_found", f"there is no ticket {tid} you may see")
                return 200, self._ticket_json(found)
        elif parts[0] == "grants" and (len(parts) == 1 or parts[1:] == [""]):
            if method == "GET":
                await svc.sync()
                mine = satisfies_groups(who.groups, issuers)
                return 200, {"grants": [grant_to_json(g) for g in svc.grants()
                                        if mine or g.holder(who.issuer, who.subject)]}
            need("POST")
            body = self._body(flow)
            subject = body.get("subject")
            if not isinstance(subject, str):
                raise _bad("'subject' must name who gets the grant")
            g = await svc.issue_grant(
                who, subject=subject, actions=_str_list(body, "actions"),
                collections=_str_list(body, "collections"), window=_window(body),
                reason=_reason(body), client_address=address)
            return 201, grant_to_json(g)
        raise ApprovalError("not_found", f"no control endpoint {method} {path[:100]}; see "
                            "/_embedguard/approvals, /tickets, /grants")

    def _ticket_json(self, t: Approval) -> dict[str, Any]:
        out = approval_to_json(t)
        out["used_operations"] = self.service.book.uses(t.approval_id)
        g = self.service.book.grant(t.approval_id)
        out["grant"] = grant_to_json(g) if g is not None else None
        return out
