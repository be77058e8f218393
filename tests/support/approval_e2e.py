"""Helpers for end-to-end approval tests: the control API of a gateway process,
and event-driven waits on the shared log."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

import httpx

from capture.devidp import mint_token
from schemas.codec import DecodedEvent
from tests.support.events import read_events
from tests.support.gateway import GatewayProcess

__all__ = ["CHROMA_T", "api", "approval_requested", "collection", "decide", "events_of",
           "wait_for"]

CHROMA_T = "/api/v2/tenants/default_tenant/databases/default_database"


def api(base: str, method: str, path: str, token: str, json: Any = None,
        headers: dict[str, str] | None = None, timeout: float = 120) -> httpx.Response:
    return httpx.request(method, f"{base}{path}", json=json, timeout=timeout, trust_env=False,
                         headers={"Authorization": f"Bearer {token}", **(headers or {})})


def decide(base: str, token: str, approval_id: str, decision: str,
           reason: str = "reviewed") -> httpx.Response:
    return api(base, "POST", f"/_embedguard/approvals/{approval_id}/decision", token,
               {"decision": decision, "reason": reason})


def events_of(log_url: str, type_: str | None = None) -> list[Any]:
    return [d.event for d in read_events(log_url)
            if type_ is None or d.event.envelope.type == type_]


def wait_for(log_url: str, pick: Callable[[list[DecodedEvent]], Any], *,
             timeout: float = 90, what: str = "an event",
             client: concurrent.futures.Future[Any] | None = None) -> Any:
    """Poll the log until ``pick(events)`` returns something truthy (and fail at
    once if the ``client`` that should be waiting has already finished)."""
    deadline = time.monotonic() + timeout
    while True:
        found = pick(read_events(log_url))
        if found:
            return found
        if client is not None and client.done():
            raise AssertionError(f"waiting for {what}, but the client finished: "
                                 f"{client.result()!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not appear in {log_url} within {timeout}s")
        time.sleep(0.2)


def approval_requested(log_url: str, *, subject: str, collection: str,
                       timeout: float = 90,
                       client: concurrent.futures.Future[Any] | None = None) -> Any:
    """The ApprovalRequested of ``subject`` for an operation on ``collection``."""

    def pick(evs: list[DecodedEvent]) -> Any:
        for d in evs:
            e = d.event
            if (e.envelope.type == "ApprovalRequested" and e.requester_subject == subject
                    and any(op.collection == collection for op in e.operations)):
                return e
        return None

    return wait_for(log_url, pick, timeout=timeout, client=client,
                    what=f"ApprovalRequested by {subject} on {collection}")


def approved_ticket(base: str, requester: str, approver: str, *, actions: list[str],
                    collections: list[str], window: str = "1h",
                    max_operations: int | None = None) -> str:
    """Open a change ticket as ``requester`` and approve it as ``approver``
    (both tokens) through a gateway's control API; returns the ticket id."""
    r = api(base, "POST", "/_embedguard/tickets", requester,
            {"actions": actions, "collections": collections, "window": window,
             "max_operations": max_operations, "reason": "test change"})
    assert r.status_code == 201, r.text
    ticket = str(r.json()["approval_id"])
    d = decide(base, approver, ticket, "approve", "peer-reviewed")
    assert d.status_code == 200 and d.json()["status"] == "approved", d.text
    return ticket


def collection(gw: GatewayProcess, issuer: str, name: str) -> str:
    """Create (or get) the Chroma collection ``name`` through ``gw`` as an admin
    of ``issuer``; its id."""
    admin = mint_token(issuer, "root", ["Vector-Admin"])
    r = api(gw.url, "POST", f"{CHROMA_T}/collections", admin,
            {"name": name, "get_or_create": True})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])
