"""Per-flow state that the addons share through ``flow.metadata``.

Each addon fills in its part; the recorder turns the whole into events.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from mitmproxy import http
from uuid_utils import uuid7  # native: str() of it is 5x cheaper than of a uuid.UUID

from capture.types import Classification, Identity

if TYPE_CHECKING:
    from capture.config import Route
    from capture.policy import Decision

__all__ = ["Blocked", "FlowState", "block", "error_response", "fail_closed", "state_of"]

KEY = "embedguard"
REQUEST_ID_HEADER = "x-embedguard-request-id"


@dataclass(frozen=True)
class Blocked:
    status: int
    error: str
    reason: str
    stage: str  # identity, classify, policy, approval, log, upstream


@dataclass
class FlowState:
    route: Route
    request_id: str = field(default_factory=lambda: str(uuid7()))
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_ns: int = field(default_factory=time.perf_counter_ns)
    client_address: str = ""
    #: the Host header the client sent (reverse mode rewrites it later)
    client_host: str = ""
    #: the request body as the client sent it, before any filter injection
    client_body: bytes = b""
    identity: Identity | None = None
    auth_error_code: str | None = None
    classification: Classification | None = None
    decision: Decision | None = None
    blocked: Blocked | None = None
    session_id: str | None = None
    injected_filter: bool = False
    forwarded: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def state_of(flow: http.HTTPFlow) -> FlowState | None:
    st = flow.metadata.get(KEY)
    return st if isinstance(st, FlowState) else None


def error_response(
    status: int, error: str, reason: str, request_id: str, *, method: str = ""
) -> http.Response:
    """The one shape of every error the gateway sends: JSON, no stack trace.

    An answer to HEAD has no body (RFC 9110 9.3.2). mitmproxy sends whatever
    body an addon sets, and the client would read it as the start of the next
    response on the connection.
    """
    body = json.dumps({"error": error, "reason": reason, "request_id": request_id}).encode()
    return http.Response.make(
        status,
        b"" if method.upper() == "HEAD" else body,
        {
            "content-type": "application/json",
            REQUEST_ID_HEADER: request_id,
            "cache-control": "no-store",
        },
    )


def block(
    flow: http.HTTPFlow, st: FlowState, status: int, error: str, reason: str, stage: str
) -> None:
    """Refuse the flow: nothing goes upstream, the client gets a clear JSON error."""
    st.blocked = Blocked(status, error, reason, stage)
    flow.response = error_response(status, error, reason, st.request_id,
                                   method=flow.request.method)


_log = logging.getLogger("embedguard.failclosed")

Hook = TypeVar("Hook", bound=Callable[..., Any])


def fail_closed(stage: str) -> Callable[[Hook], Hook]:
    """Wrap an addon hook so that any exception refuses the flow.

    mitmproxy logs an addon's exception and carries on with the flow, which
    for a gateway would mean forwarding a request that was never checked or
    recorded. With this wrapper the client gets a 500 JSON error instead, and
    the flow is marked blocked so no later hook forwards it.
    """

    def wrap(fn: Hook) -> Hook:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_hook(self: Any, flow: http.HTTPFlow) -> None:
                try:
                    await fn(self, flow)
                except Exception:  # noqa: BLE001 - fail closed, whatever happened
                    _refuse(flow, stage)

            return async_hook  # type: ignore[return-value]

        @functools.wraps(fn)
        def hook(self: Any, flow: http.HTTPFlow) -> None:
            try:
                fn(self, flow)
            except Exception:  # noqa: BLE001 - fail closed, whatever happened
                _refuse(flow, stage)

        return hook  # type: ignore[return-value]

    return wrap


def _refuse(flow: http.HTTPFlow, stage: str) -> None:
    st = state_of(flow)
    rid = st.request_id if st else str(uuid7())
    _log.exception("internal error in %s for request %s; refused", stage, rid)
    reason = "the gateway failed while checking this request; it was not forwarded"
    if st is not None:
        st.forwarded = False
        block(flow, st, 500, "internal_error", reason, stage if stage in _STAGES else "upstream")
    else:
        flow.response = error_response(500, "internal_error", reason, rid,
                                       method=flow.request.method)


_STAGES = frozenset({"identity", "classify", "policy", "approval", "log", "upstream"})
