"""The dashboard's one data module: every read, decision and audit record.

Pages only render; they call the functions here. Clients are
``st.cache_resource`` (the warehouse, the audit trail), results are
``st.cache_data(ttl=...)``. Every public function takes the signed-in
:class:`~dashboard.auth.User` and refuses (:class:`AccessDenied`) when the
user's roles do not allow it, whatever the page did. Queries come from
``pipeline.queries`` only; approvals go through the gateway's control API
with the user's own access token, so the gateway enforces the four-eyes rules.

Viewing recordings and exporting evidence append an ``AuditViewed`` event to
the event log through this process's own stream (``dashboard:<host>:<pid>``)
before the data is shown; if the log cannot take it, nothing is shown.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import streamlit as st

from dashboard.auth import ROLES, AccessDenied, Role, User
from dashboard.text import md_literal
from pipeline import queries
from pipeline.warehouse import Warehouse, open_warehouse

__all__ = [
    "PAGE_ROLES",
    "AccessDenied",
    "AuditTrail",
    "AuditUnavailable",
    "DashboardConfig",
    "approval_context",
    "approvals_decided",
    "approvals_pending",
    "config",
    "decide_approval",
    "diff_requests",
    "diff_sessions",
    "evidence_bytes",
    "export_evidence",
    "lineage_by_approval",
    "lineage_by_point",
    "loader_lag",
    "overview",
    "page_user",
    "pages_for",
    "policy_history",
    "policy_view",
    "replay",
    "replay_targets",
    "request_body",
    "session_bodies",
    "session_detail",
    "session_events",
    "sessions_page",
    "sessions_total",
    "simulate_policy",
]

ALL: tuple[Role, ...] = ROLES
RECORDINGS: tuple[Role, ...] = ("auditor", "admin")

#: page key → roles that see it; the data functions below check the same roles.
PAGE_ROLES: dict[str, tuple[Role, ...]] = {
    "overview": ALL,
    "sessions": RECORDINGS,
    "session": RECORDINGS,
    "diff": RECORDINGS,
    "replay": ("admin",),
    "approvals": ("approver", "admin"),
    "lineage": RECORDINGS,
    "evidence": RECORDINGS,
    "policy": ALL,
}

TTL_S = 10


def pages_for(user: User) -> list[str]:
    """The pages the router offers this user, in menu order."""
    return [page for page, roles in PAGE_ROLES.items() if user.has(*roles)]


def _allow(user: User, page: str, what: str) -> None:
    user.require(PAGE_ROLES[page], what)


def page_user(page: str) -> User:
    """The signed-in user of a page, or stop the page: not signed in, or a role
    that may not see it (the router does not offer it, but a URL can name it)."""
    from dashboard.auth import current_user

    user = current_user()
    if user is None:
        st.info("Sign in to use the dashboard.")
        st.stop()
    if not user.has(*PAGE_ROLES[page]):
        st.error(f"{md_literal(user.subject)} may not open this page: it needs the role "
                 + " or ".join(PAGE_ROLES[page]) + ".")
        st.stop()
    return user


# -- configuration ------------------------------------------------------------------


@dataclass(frozen=True)
class DashboardConfig:
    warehouse_url: str
    log_url: str
    data_dir: Path
    gateway_url: str | None
    policy_path: Path | None
    #: replay targets ([[targets]] in embedguard.toml / EMBEDGUARD_TARGETS)
    targets: tuple[Any, ...]
    #: pinned gateway checkpoint keys, for verifying exported bundles
    gateway_vkeys: tuple[str, ...]


@st.cache_resource
def config() -> DashboardConfig:
    """From the environment ``embedguard dashboard`` sets (and embedguard.toml)."""
    from embedguard.settings import Settings

    s = Settings()
    policy = os.environ.get("EMBEDGUARD_POLICY")
    vkeys = [k.strip() for k in os.environ.get("EMBEDGUARD_GATEWAY_VKEYS", "").splitlines()
             if k.strip()]
    if not vkeys:
        from capture.signing_keys import SigningKeyError, load_signing_key

        key = s.data_dir / "keys" / "gateway.key"
        try:
            vkeys = [load_signing_key(key).verifier.vkey] if key.exists() else []
        except SigningKeyError:
            vkeys = []
    return DashboardConfig(
        warehouse_url=s.warehouse_url,
        log_url=s.log_url,
        data_dir=s.data_dir,
        gateway_url=os.environ.get("EMBEDGUARD_GATEWAY_URL") or None,
        policy_path=Path(policy) if policy else None,
        targets=tuple(s.targets),
        gateway_vkeys=tuple(vkeys),
    )


# -- clients ---------------------------------------------------------------------------


class _Warehouse:
    """One warehouse handle per process; chDB sessions are not re-entrant."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._wh: Warehouse = open_warehouse(url)
        self._lock = threading.Lock()

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(self._wh, *args, **kwargs)


@st.cache_resource
def _warehouse(url: str) -> _Warehouse:
    return _Warehouse(url)


def _wh() -> _Warehouse:
    return _warehouse(config().warehouse_url)


class AuditUnavailable(RuntimeError):
    """The event log did not take the AuditViewed event: nothing is shown."""


class AuditTrail:
    """Appends AuditViewed events durably from this dashboard process.

    It owns an event loop thread with the open log, and a stamper for the
    stream ``dashboard:<host>:<pid>`` whose events form one session chain.
    Stamping and appending happen together under one lock, so the chain and the
    stream numbering follow the log's order; after a failed append a new stream
    (``...#n``) starts, as the gateway's recorder does.
    """

    def __init__(self, log_url: str) -> None:
        from schemas.chain import EventStamper

        self.log_url = log_url
        self.base_stream = f"dashboard:{socket.gethostname()}:{os.getpid()}"
        self._epoch = 0
        self.stamper = EventStamper(self.base_stream)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="embedguard-audit", daemon=True
        )
        self._thread.start()
        self._log: Any = None
        self._lock: asyncio.Lock | None = None

    @property
    def session_id(self) -> str:
        return self.stamper.gateway_id

    async def _append(self, body: dict[str, Any]) -> str:
        from pipeline.events import EventPublisher
        from pipeline.transport import open_log
        from schemas.chain import EventStamper
        from schemas.models import AuditViewed

        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._log is None:
                log = open_log(self.log_url)
                await log.start()
                self._log = log
            stamped = self.stamper.stamp(AuditViewed, session_id=self.session_id, **body)
            try:
                await EventPublisher(self._log).publish([stamped])
            except Exception:
                self._epoch += 1
                self.stamper = EventStamper(f"{self.base_stream}#{self._epoch}")
                raise
            return str(stamped.event.envelope.event_id)

    def record(
        self,
        user: User,
        *,
        what: str,
        target: str,
        filters: Mapping[str, Any] | None = None,
        row_count: int | None = None,
    ) -> str:
        body = {
            "viewer_subject": user.subject,
            "viewer_issuer": user.issuer,
            "what": what,
            "target": target,
            "filters_json": json.dumps(dict(filters or {}), sort_keys=True, default=str),
            "row_count": row_count,
        }
        future = asyncio.run_coroutine_threadsafe(self._append(body), self._loop)
        try:
            return future.result(timeout=60)
        except Exception as exc:
            from pipeline.loader_status import scrub

            raise AuditUnavailable(
                f"the event log did not record that you viewed {what} "
                f"({type(exc).__name__}: {scrub(str(exc))}); nothing is shown. Check that "
                "the log is reachable and writable."
            ) from None


@st.cache_resource
def _audit_trail(log_url: str) -> AuditTrail:
    return AuditTrail(log_url)


def _audit(
    user: User, what: str, target: str, filters: Mapping[str, Any] | None = None,
    row_count: int | None = None,
) -> None:
    """Record once per browser session and view (a rerun of the same view is not
    a new look), before anything is returned to the page."""
    key = json.dumps([user.subject, what, target, dict(filters or {})], sort_keys=True,
                     default=str)
    seen: set[str] = st.session_state.setdefault("embedguard_audited", set())
    if key in seen:
        return
    _audit_trail(config().log_url).record(
        user, what=what, target=target, filters=filters, row_count=row_count
    )
    seen.add(key)


# -- overview -------------------------------------------------------------------------


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _overview(url: str, since: str, bucket_s: int) -> dict[str, Any]:
    wh = _warehouse(url)
    return {
        "stats": wh.run(queries.stats_over_time, bucket_s=bucket_s, since=since),
        "top_actors": wh.run(queries.top_actors, since=since, limit=10),
        "top_collections": wh.run(queries.top_collections, since=since, limit=10),
        "pending": wh.run(queries.approvals_list, status="pending", limit=100),
    }


def overview(user: User, *, hours: int = 24) -> dict[str, Any]:
    """Requests over time by decision, top actors and collections, pending approvals."""
    _allow(user, "overview", "see the overview")
    since = (datetime.now(UTC) - timedelta(hours=hours)).replace(minute=0, second=0,
                                                                   microsecond=0)
    bucket_s = 300 if hours <= 6 else 3600 if hours <= 72 else 86400
    return _overview(config().warehouse_url, since.isoformat(), bucket_s)


@st.cache_data(ttl=5, show_spinner=False)
def _loader_lag(log_url: str, warehouse_url: str, data_dir: str) -> dict[str, Any]:
    from embedguard.cli_loader import status_report
    from pipeline.loader import DEFAULT_GROUP

    return status_report(log_url, warehouse_url, DEFAULT_GROUP, Path(data_dir) / "loader")


def loader_lag(user: User) -> dict[str, Any]:
    """The loader's lag, rate and last error (``embedguard loader status``)."""
    _allow(user, "overview", "see the loader status")
    c = config()
    return _loader_lag(c.log_url, c.warehouse_url, str(c.data_dir))


# -- sessions -------------------------------------------------------------------------


SESSION_FILTERS = ("actor", "group", "collection", "action", "decision", "since", "until",
                   "body")


def _clean(filters: Mapping[str, str | None]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in filters.items()
                        if k in SESSION_FILTERS and v not in (None, "")))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _sessions(url: str, filters: tuple[tuple[str, str], ...], limit: int, offset: int) -> (
    list[dict[str, Any]]
):
    given: dict[str, Any] = dict(filters)
    f = queries.SessionFilter(**given)
    return list(_warehouse(url).run(queries.sessions_list, f, limit=limit, offset=offset))


def sessions_page(
    user: User, filters: Mapping[str, str | None], *, page: int = 0, page_size: int = 50
) -> tuple[list[dict[str, Any]], bool]:
    """One page of sessions matching the filters (newest first), and whether a
    next page exists. It asks for one row more than a page instead of counting
    every match, which at 10M events costs more than the page itself on the
    lake; ``sessions_total`` counts on demand."""
    _allow(user, "sessions", "browse recorded sessions")
    clean = _clean(filters)
    rows = _sessions(config().warehouse_url, clean, page_size + 1, page * page_size)
    _audit(user, "sessions", "sessions list", {**dict(clean), "page": page}, len(rows[:page_size]))
    return rows[:page_size], len(rows) > page_size


@st.cache_data(ttl=60, show_spinner=False)
def _sessions_total(url: str, filters: tuple[tuple[str, str], ...]) -> int:
    given: dict[str, Any] = dict(filters)
    f = queries.SessionFilter(**given)
    return int(_warehouse(url).run(queries.sessions_count, f))


def sessions_total(user: User, filters: Mapping[str, str | None]) -> int:
    """How many sessions match the filters (asked for, not shown on every page)."""
    _allow(user, "sessions", "count recorded sessions")
    return _sessions_total(config().warehouse_url, _clean(filters))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _body_search(url: str, needle: str, kind: str | None) -> list[dict[str, Any]]:
    return list(_warehouse(url).run(queries.body_search, needle, kind=kind, limit=100))


def body_search(user: User, needle: str, kind: str | None = None) -> list[dict[str, Any]]:
    """Recorded bodies (masked as delivered) containing ``needle``."""
    _allow(user, "sessions", "search recorded bodies")
    rows = _body_search(config().warehouse_url, needle, kind)
    _audit(user, "body_search", needle, {"kind": kind or ""}, len(rows))
    return rows


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _session(url: str, session_id: str) -> dict[str, Any]:
    wh = _warehouse(url)
    return {
        "summary": wh.run(queries.session, session_id),
        "requests": wh.run(queries.session_requests, session_id),
        "chain": _chain(wh, session_id),
    }


def _chain(wh: _Warehouse, session_id: str) -> dict[str, Any]:
    """The session's hash chain over the events as written (replay.sessions)."""
    from replay.sessions import verify_session_chain

    count, issues = wh.run(verify_session_chain, session_id)
    return {"ok": count > 0 and not issues, "events": count,
            "problems": [str(i) for i in issues]}


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _session_events(url: str, session_id: str) -> list[dict[str, Any]]:
    return list(_warehouse(url).run(queries.session_events, session_id))


def session_events(user: User, session_id: str) -> list[dict[str, Any]]:
    """Every event of a session in chain order (on demand: the timeline does not need it)."""
    _allow(user, "session", "view a recorded session")
    rows = _session_events(config().warehouse_url, session_id)
    _audit(user, "session", session_id)
    return rows


def session_detail(user: User, session_id: str) -> dict[str, Any]:
    """A session's summary, its requests (the timeline), its events and the
    verdict of its hash chain."""
    _allow(user, "session", "view a recorded session")
    data = dict(_session(config().warehouse_url, session_id))
    _audit(user, "session", session_id)
    return data


@st.cache_data(ttl=60, show_spinner=False)
def _body(url: str, sha256: str) -> bytes | None:
    body: bytes | None = _warehouse(url).run(queries.body, sha256)
    return body


def _parsed(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")


def request_body(user: User, sha256: str) -> Any:
    """A recorded body (masked as delivered): parsed JSON when it is JSON, else text;
    None when it expired, was redacted or was never stored."""
    _allow(user, "session", "view a recorded body")
    raw = _body(config().warehouse_url, sha256)
    if raw is None:
        return None
    _audit(user, "body", sha256, None, 1)
    return _parsed(raw)


@st.cache_data(ttl=60, show_spinner=False)
def _bodies(url: str, sha256s: tuple[str, ...]) -> dict[str, bytes]:
    found: dict[str, bytes] = _warehouse(url).run(queries.bodies, list(sha256s))
    return found


def session_bodies(user: User, session_id: str, sha256s: Iterable[str]) -> dict[str, Any]:
    """The stored bodies of a session's timeline in one query: sha256 → parsed body
    (absent when expired, redacted or never stored)."""
    _allow(user, "session", "view recorded bodies")
    wanted = tuple(sorted({s for s in sha256s if s}))
    found = _bodies(config().warehouse_url, wanted)
    _audit(user, "session", session_id)  # the same view as session_detail: one record
    return {sha: _parsed(raw) for sha, raw in found.items()}


# -- approvals ------------------------------------------------------------------------


def _control(user: User) -> Any:
    from capture.approvals.client import ControlApiError, ControlClient

    gateway = config().gateway_url
    if not gateway:
        raise ControlApiError(
            "no_gateway", "the dashboard has no gateway URL; start it with --gateway URL "
            "(or set EMBEDGUARD_GATEWAY_URL)")
    return ControlClient(gateway, user.access_token or "", timeout_s=30)


def approvals_pending(user: User) -> list[dict[str, Any]]:
    """The pending queue, as the gateway shows it to this user."""
    _allow(user, "approvals", "see the approval queue")
    with _control(user) as client:
        return list(client.list_approvals(status="pending"))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _approvals(url: str, status: str) -> list[dict[str, Any]]:
    return list(_warehouse(url).run(queries.approvals_list, status=status, limit=200))


_STATUSES = ("pending", "approved", "denied", "expired")


def approvals_decided(user: User) -> dict[str, list[dict[str, Any]]]:
    """Approvals by status (pending, approved, denied, expired), the newest 200
    of each. An admin sees every approval, from the warehouse. Anyone else sees
    what the gateway shows them (``may_see``: their own requests, and the
    approvals whose approver groups they are in), so the console never lists
    other groups' requesters, collections and reasons."""
    _allow(user, "approvals", "see decided approvals")
    if user.has("admin"):
        url = config().warehouse_url
        return {s: _approvals(url, s) for s in _STATUSES}
    with _control(user) as client:
        return {s: [_approval_row(a) for a in client.list_approvals(status=s, limit=200)]
                for s in _STATUSES}


def _approval_row(a: Mapping[str, Any]) -> dict[str, Any]:
    """A control API approval in the warehouse list's columns."""
    ops = a.get("operations") or []
    return {
        "approval_id": a.get("approval_id"),
        "kind": a.get("kind"),
        "requester_subject": (a.get("requester") or {}).get("subject"),
        "actions": sorted({str(o.get("action")) for o in ops if o.get("action")}),
        "collections": sorted({str(o.get("collection")) for o in ops if o.get("collection")}),
        "approvers": sorted(str(v.get("subject")) for v in a.get("approvals") or []),
        "deniers": sorted(str(v.get("subject")) for v in a.get("denials") or []),
        "requested_at": a.get("requested_at"),
        "decided_at": a.get("decided_at"),
        "reason": a.get("reason"),
    }


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _recent_activity(url: str, subject: str) -> list[dict[str, Any]]:
    return list(_warehouse(url).run(
        queries.sessions_list, queries.SessionFilter(actor=subject), limit=10))


def approval_context(user: User, approval: Mapping[str, Any]) -> dict[str, Any]:
    """The review context of one pending approval: the requester's recent sessions."""
    _allow(user, "approvals", "review an approval")
    requester = approval.get("requester")
    subject = str((requester.get("subject") if isinstance(requester, dict) else None)
                  or approval.get("requester_subject") or "")
    recent = _recent_activity(config().warehouse_url, subject) if subject else []
    # the requester's sessions are recordings: looking at them is recorded too
    _audit(user, "approval_context", subject, {"approval_id": approval.get("approval_id")},
           len(recent))
    return {"recent_sessions": recent}


def decide_approval(user: User, approval_id: str, decision: str, reason: str) -> dict[str, Any]:
    """Approve or deny through the gateway with the user's own token. The gateway
    refuses what the rules refuse (self-approval, wrong group, expired, decided):
    the ControlApiError carries its code and reason."""
    _allow(user, "approvals", "decide approvals")
    if decision not in ("approve", "deny"):
        raise ValueError(f"decision must be approve or deny, not {decision!r}")
    if not reason.strip():
        raise ValueError("a reason is required: say what you checked")
    with _control(user) as client:
        result = dict(client.decide(approval_id, decision, reason.strip()))
    _approvals.clear()
    return result


# -- lineage --------------------------------------------------------------------------


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _lineage_point(url: str, collection: str, point_id: str) -> list[dict[str, Any]]:
    return list(_warehouse(url).run(queries.vector_lineage, collection, point_id))


def lineage_by_point(user: User, collection: str, point_id: str) -> list[dict[str, Any]]:
    """Who wrote or deleted a point, when, and under which approval, ticket or grant."""
    _allow(user, "lineage", "look up vector lineage")
    rows = _lineage_point(config().warehouse_url, collection, point_id)
    _audit(user, "lineage", f"{collection}/{point_id}", None, len(rows))
    return rows


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _lineage_approval(url: str, approval_id: str) -> dict[str, Any]:
    wh = _warehouse(url)
    return {"approval": wh.run(queries.approval, approval_id),
            "writes": wh.run(queries.approval_writes, approval_id)}


def lineage_by_approval(user: User, approval_id: str) -> dict[str, Any]:
    """An approval and the requests it held or released."""
    _allow(user, "lineage", "look up what an approval released")
    data = _lineage_approval(config().warehouse_url, approval_id)
    _audit(user, "lineage_approval", approval_id, None, len(data["writes"]))
    return data


# -- policy ---------------------------------------------------------------------------


def policy_view(user: User) -> dict[str, Any]:
    """The active policy file: its text, sha256 and rules (or the reason it does not load)."""
    _allow(user, "policy", "see the policy")
    path = config().policy_path
    if path is None:
        return {"error": "no policy file configured; start the dashboard with --policy FILE"}
    from capture.policy import PolicyError, load_policy

    try:
        text = path.read_text(encoding="utf-8")
        policy = load_policy(path)
    except OSError as exc:
        return {"error": f"cannot read {path}: {exc.strerror or exc}"}
    except PolicyError as exc:
        return {"error": str(exc), "text": text}
    rules = [
        {"id": r.id, "effect": r.effect, "actions": ", ".join(str(a) for a in r.actions),
         "collections": ", ".join(r.collections),
         "description": r.description or ""}
        for r in policy.rules
    ]
    return {"path": str(path), "sha256": policy.sha256, "text": text, "rules": rules}


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _policy_history(url: str) -> list[dict[str, Any]]:
    return list(_warehouse(url).run(queries.events_by_type, "PolicyChanged", limit=200))


def policy_history(user: User) -> list[dict[str, Any]]:
    """PolicyChanged events, newest first: when, which gateway, old → new hash, diff."""
    _allow(user, "policy", "see the policy history")
    rows = []
    for row in _policy_history(config().warehouse_url):
        body = json.loads(row.get("payload_json") or "{}")
        rows.append({"occurred_at": row["occurred_at"], "gateway_id": row["gateway_id"],
                     "old_sha256": body.get("old_sha256"), "new_sha256": body.get("new_sha256"),
                     "diff": body.get("diff") or ""})
    return rows


def simulate_policy(
    user: User, *, subject: str, groups: Iterable[str], operations: Iterable[str],
    ticket: str | None = None, dpop: bool = False, token_age_min: int = 0,
) -> dict[str, Any]:
    """What the active policy decides for an identity and operations
    (``ACTION[:COLLECTION[:ID,ID]]``), rule by rule (capture.policy.explain)."""
    _allow(user, "policy", "simulate the policy")
    from capture.policy import RequestContext, explain, load_policy
    from capture.types import Identity
    from schemas.models import ActionClass, Operation

    path = config().policy_path
    if path is None:
        raise ValueError("no policy file configured; start the dashboard with --policy FILE")
    ops = []
    for spec in operations:
        spec = spec.strip()
        if not spec:
            continue
        action, _, rest = spec.partition(":")
        collection, _, ids = rest.partition(":")
        try:
            cls = ActionClass(action.strip().lower())
        except ValueError:
            raise ValueError(
                f"{spec!r}: {action!r} is not an action; use one of "
                + ", ".join(a.value for a in ActionClass)) from None
        ops.append(Operation(action=cls, collection=collection or None,
                             ids=[i for i in ids.split(",") if i]))
    if not ops:
        raise ValueError("give at least one operation, e.g. write:docs:1,2")
    now = datetime.now(UTC)
    issued = now - timedelta(minutes=token_age_min)
    identity = Identity(subject=subject, issuer="dashboard-simulator",
                        groups=frozenset(g.strip() for g in groups if g.strip()),
                        issued_at=issued, expires_at=now + timedelta(minutes=5),
                        auth_method="dpop" if dpop else "bearer")
    ctx = RequestContext(now=now, change_ticket=ticket or None, dpop_bound=dpop)
    result = explain(load_policy(path), identity, ops, ctx)
    return {"text": result.to_text(), "json": result.model_dump(mode="json"),
            "outcome": result.decision.outcome}


# -- diff -----------------------------------------------------------------------------


@st.cache_data(ttl=60, show_spinner=False)
def _request_and_body(url: str, request_id: str) -> tuple[dict[str, Any] | None, bytes | None]:
    wh = _warehouse(url)
    req = wh.run(queries.request_by_id, request_id)
    if req is None or not req.get("response_body_sha256"):
        return req, None
    return req, wh.run(queries.body, req["response_body_sha256"])


def _response(url: str, request_id: str) -> tuple[dict[str, Any], Any]:
    from replay.diff import parse_body

    req, body = _request_and_body(url, request_id)
    if req is None:
        raise LookupError(f"no request {request_id} in the warehouse")
    return req, parse_body(body)


def diff_requests(user: User, then_id: str, now_id: str) -> dict[str, Any]:
    """The responses of two recorded requests, side by side, and their structured
    diff by the replay module's rules (replay.diff.diff_bodies)."""
    _allow(user, "diff", "compare recorded responses")
    from replay.diff import diff_bodies

    url = config().warehouse_url
    (req_a, body_a), (req_b, body_b) = _response(url, then_id), _response(url, now_id)
    result = diff_bodies(body_a, body_b, status_then=req_a.get("status"),
                         status_now=req_b.get("status"))
    _audit(user, "diff", f"{then_id} vs {now_id}", None, 2)
    return {"then": {"request": req_a, "body": body_a}, "now": {"request": req_b, "body": body_b},
            "diff": result.to_json()}


def diff_sessions(user: User, then_session: str, now_session: str) -> list[dict[str, Any]]:
    """Two sessions' requests paired in order, each pair diffed as above."""
    _allow(user, "diff", "compare recorded sessions")
    url = config().warehouse_url
    a = _session(url, then_session)["requests"]
    b = _session(url, now_session)["requests"]
    if not a or not b:
        missing = then_session if not a else now_session
        raise LookupError(f"no requests of session {missing} in the warehouse")
    pairs = []
    from replay.diff import diff_bodies

    for i in range(max(len(a), len(b))):
        ra = a[i] if i < len(a) else None
        rb = b[i] if i < len(b) else None
        entry: dict[str, Any] = {"index": i, "then": ra, "now": rb}
        if ra is not None and rb is not None:
            _, body_a = _response(url, ra["request_id"])
            _, body_b = _response(url, rb["request_id"])
            entry["diff"] = diff_bodies(body_a, body_b, status_then=ra.get("status"),
                                        status_now=rb.get("status")).to_json()
        pairs.append(entry)
    _audit(user, "diff_sessions", f"{then_session} vs {now_session}", None, len(pairs))
    return pairs


# -- replay ---------------------------------------------------------------------------


def replay_targets(user: User) -> list[dict[str, Any]]:
    """The configured replay targets (name, url, production)."""
    _allow(user, "replay", "see replay targets")
    return [{"name": t.name, "url": t.url, "production": t.production}
            for t in config().targets]


def replay(
    user: User, session_id: str, target: str, *, include_writes: bool,
    on_step: Any = None,
) -> dict[str, Any]:
    """Replay a recorded session against a configured target with the user's own
    token (replay.replayer: writes are refused against production). Returns the
    per-request report; ``on_step(done, total)`` follows progress."""
    _allow(user, "replay", "replay sessions")
    from replay.replayer import replay_session, resolve_target
    from replay.sessions import load_session

    chosen = resolve_target(target, config().targets)
    session = _wh().run(load_session, session_id)
    _audit(user, "replay", session_id, {"target": chosen.name,
                                        "include_writes": include_writes}, len(session.steps))
    total = len(session.steps)
    done = [0]

    def step(_: Any) -> None:
        done[0] += 1
        if on_step is not None:
            on_step(done[0], total)

    report = replay_session(session, chosen, include_writes=include_writes,
                            token=user.access_token or None, on_step=step)
    return dict(report.to_json())


# -- evidence -------------------------------------------------------------------------


def export_evidence(
    user: User, *, since: str | None = None, until: str | None = None,
    actor: str | None = None, collection: str | None = None,
    sessions: Sequence[str] = (), on_progress: Any = None,
) -> dict[str, Any]:
    """Export a signed evidence bundle (replay.export) to a new zip under
    ``<data>/exports/``, after recording the AuditViewed event, then verify it
    (replay.verify) against the pinned gateway keys and the export key. Its
    bodies are held (EvidenceHeld, recorded before the zip is written) for
    EMBEDGUARD_EVIDENCE_HOLD_DAYS (default 365) days."""
    _allow(user, "evidence", "export evidence")
    from capture.signing_keys import load_or_create_signing_key
    from embedguard import __version__
    from pipeline.retention import EvidenceHold, HoldNotRecorded, configured_hold_days
    from replay.export import ExportFilters, export_bundle
    from replay.verify import verify_bundle

    c = config()
    filters = ExportFilters(since or None, until or None, actor or None, collection or None,
                            tuple(x for x in sessions if x))
    for value in (since, until):
        if value:
            queries._time(value)  # a clear ValueError before anything happens
    out_dir = c.data_dir / "exports"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"evidence-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}.zip"
    signer = load_or_create_signing_key(c.data_dir / "keys" / "export.key",
                                        name="embedguard-export")
    hold = EvidenceHold(c.log_url, held_by=user.subject, held_by_issuer=user.issuer,
                        hold_days=configured_hold_days(),
                        stream=f"dashboard:{socket.gethostname()}:{os.getpid()}")
    _audit(user, "evidence_export", out.name, filters.to_json())

    def progress(stage: str, done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(stage, done, total)

    try:
        result = _wh().run(lambda wh: export_bundle(
            wh, out, filters=filters, signer=signer, tool_version=__version__,
            exported_at=datetime.now(UTC), progress=progress,
            manifest_extra=hold.manifest_fields(), before_handout=hold))
    except HoldNotRecorded as exc:
        raise AuditUnavailable(str(exc)) from None
    # Just exported: the newest events may wait for the gateway's next
    # checkpoint. They are shown as NOT PROVEN warnings, not as a failure.
    report = verify_bundle(result.path, list(c.gateway_vkeys), [signer.verifier.vkey],
                           allow_unproven=True)
    return {
        "path": str(result.path),
        "name": result.path.name,
        "sessions": len(result.sessions),
        "row_counts": result.row_counts,
        "bodies_unavailable": len(result.bodies_unavailable),
        "export_vkey": signer.verifier.vkey,
        "gateway_vkeys": list(c.gateway_vkeys),
        "verification": report.to_json(),
        "hold": hold.to_json(),
    }


def evidence_bytes(user: User, name: str) -> bytes:
    """An exported bundle's bytes, for the download button (only files of
    ``<data>/exports/`` by their plain name)."""
    _allow(user, "evidence", "download evidence")
    exports = config().data_dir / "exports"
    path = exports / Path(name).name
    if path.parent != exports or not path.is_file():
        raise LookupError(f"no exported bundle {name!r}")
    return path.read_bytes()
