"""A recorded session, rebuilt from the warehouse as ordered steps.

Each :class:`Step` pairs one request with the identity it ran as, the policy
decision, its approval (if one was needed), the response as delivered (the
masked body the client got, or a note that it expired or was redacted) and its
latency. The session's hash chain is verified while reading, from the events'
bytes as written; a gap, an altered event or a reordering is reported naming
the event (:class:`ChainIssue`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from pipeline import queries
from pipeline.warehouse.base import Warehouse
from schemas.chain import verify_chains
from schemas.codec import DecodeError, default_codec

__all__ = ["ChainIssue", "RecordedSession", "SessionNotFound", "Step", "load_session"]


class SessionNotFound(LookupError):
    pass


@dataclass(frozen=True)
class ChainIssue:
    kind: str  # gap, altered, reordered, undecodable
    event_id: str | None
    seq: int | None
    detail: str

    def __str__(self) -> str:
        where = f"event {self.event_id} (seq {self.seq})" if self.event_id else "session"
        return f"{where}: {self.kind}: {self.detail}"


@dataclass
class Step:
    index: int
    request_id: str
    received_at: str
    method: str | None
    path: str | None
    query: str | None
    product: str | None
    actions: list[str]
    collections: list[str]
    operations: list[dict[str, Any]]
    subject: str | None
    identity: dict[str, Any] | None
    decision: str | None
    matched_rules: list[str]
    reasons: list[str]
    state: str
    approval: dict[str, Any] | None
    approval_id: str | None
    ticket_id: str | None
    grant_id: str | None
    status: int | None
    latency_us: int | None
    request_body_sha256: str | None
    request_body_size: int | None
    response_body_sha256: str | None
    response_body_size: int | None
    request_body: bytes | None = None
    response_body: bytes | None = None

    @property
    def request_body_state(self) -> str:
        return _body_state(self.request_body, self.request_body_size)

    @property
    def response_body_state(self) -> str:
        return _body_state(self.response_body, self.response_body_size)

    @property
    def writes(self) -> bool:
        """Changes state (write, delete, admin): not replayed by default."""
        return bool({"write", "delete", "admin"} & set(self.actions))

    def to_json(self, *, bodies: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("request_body", "response_body")}
        out["request_body_state"] = self.request_body_state
        out["response_body_state"] = self.response_body_state
        if bodies:
            for k in ("request_body", "response_body"):
                raw = getattr(self, k)
                out[k] = None if raw is None else raw.decode("utf-8", errors="replace")
        return out


def _body_state(body: bytes | None, size: int | None) -> str:
    if body is not None:
        return "present"
    if not size:
        return "empty"
    return "expired_or_redacted"


@dataclass
class RecordedSession:
    session_id: str
    summary: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    events: int = 0
    chain_issues: list[ChainIssue] = field(default_factory=list)

    @property
    def chain_ok(self) -> bool:
        return not self.chain_issues

    def to_json(self, *, bodies: bool = False) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "summary": self.summary,
            "events": self.events,
            "chain_ok": self.chain_ok,
            "chain_issues": [i.__dict__ for i in self.chain_issues],
            "steps": [s.to_json(bodies=bodies) for s in self.steps],
        }


def verify_session_chain(wh: Warehouse, session_id: str) -> tuple[int, list[ChainIssue]]:
    """Check the session's chain over its events' bytes as written, in seq order."""
    codec = default_codec()
    rows = queries.session_raw_events(wh, session_id)
    decoded = []
    issues: list[ChainIssue] = []
    for r in rows:
        try:
            dec = codec.decode(base64.b64decode(r["raw_b64"]))
        except DecodeError as exc:
            issues.append(ChainIssue("undecodable", r["event_id"], r["seq"], str(exc)))
            continue
        if str(dec.event.envelope.event_id) != r["event_id"]:
            issues.append(
                ChainIssue(
                    "altered",
                    r["event_id"],
                    r["seq"],
                    f"the stored bytes are those of event {dec.event.envelope.event_id}",
                )
            )
        decoded.append(dec)
    by_seq = {d.event.envelope.seq: d for d in decoded}
    for p in verify_chains(decoded):
        prev = by_seq.get((p.seq or 0) - 1) if p.kind == "altered" and p.seq else None
        if prev is not None:
            # the chain breaks at the event after the changed one: name the changed one
            env = prev.event.envelope
            issues.append(
                ChainIssue(
                    "altered",
                    str(env.event_id),
                    env.seq,
                    f"its bytes no longer hash to the prev_hash of the next event, "
                    f"{p.event_id} (seq {p.seq}): it was changed or replaced",
                )
            )
            continue
        issues.append(ChainIssue(p.kind, p.event_id, p.seq, p.detail))
    return len(rows), issues


def _identities(wh: Warehouse, session_id: str) -> tuple[dict[str, dict[str, Any]], list[Any]]:
    """IdentityResolved payloads by request id, and in order (for requests
    that share the session's identity)."""
    by_request: dict[str, dict[str, Any]] = {}
    ordered: list[Any] = []
    for ev in queries.session_events(wh, session_id):
        if ev["type"] != "IdentityResolved":
            continue
        payload = json.loads(ev["payload_json"])
        ident = {
            k: payload.get(k)
            for k in (
                "subject",
                "issuer",
                "groups",
                "token_id",
                "token_expires_at",
                "auth_method",
                "dpop_jkt",
                "client_address",
                "client_id",
            )
        }
        if ev.get("request_id"):
            by_request[ev["request_id"]] = ident
        ordered.append((ev["occurred_at"], ident))
    return by_request, ordered


def load_session(wh: Warehouse, session_id: str, *, bodies: bool = True) -> RecordedSession:
    summary = queries.session(wh, session_id)
    if summary is None:
        raise SessionNotFound(
            f"no session {session_id!r} in {wh.url}; list them with `embedguard sessions list` "
            "(a session appears once the loader has loaded it)"
        )
    out = RecordedSession(session_id, summary)
    out.events, out.chain_issues = verify_session_chain(wh, session_id)
    by_request, ordered = _identities(wh, session_id)
    approvals: dict[str, dict[str, Any] | None] = {}
    for i, r in enumerate(queries.session_requests(wh, session_id)):
        ident = by_request.get(r["request_id"])
        if ident is None:
            earlier = [x for t, x in ordered if t <= r["received_at"]]
            ident = earlier[-1] if earlier else None
        aid = r.get("approval_id")
        if aid and aid not in approvals:
            approvals[aid] = queries.approval(wh, aid)
        step = Step(
            index=i,
            request_id=r["request_id"],
            received_at=r["received_at"],
            method=r.get("method"),
            path=r.get("path"),
            query=r.get("query"),
            product=r.get("product"),
            actions=list(r.get("actions") or []),
            collections=list(r.get("collections") or []),
            operations=json.loads(r["operations_json"]) if r.get("operations_json") else [],
            subject=r.get("subject"),
            identity=ident,
            decision=r.get("decision"),
            matched_rules=list(r.get("matched_rules") or []),
            reasons=list(r.get("reasons") or []),
            state=r.get("state") or "received",
            approval=approvals.get(aid) if aid else None,
            approval_id=aid,
            ticket_id=r.get("ticket_id"),
            grant_id=r.get("grant_id"),
            status=r.get("status"),
            latency_us=r.get("latency_us"),
            request_body_sha256=r.get("request_body_sha256"),
            request_body_size=r.get("request_body_size"),
            response_body_sha256=r.get("response_body_sha256"),
            response_body_size=r.get("response_body_size"),
        )
        if bodies:
            if step.request_body_sha256 and step.request_body_size:
                step.request_body = queries.body(wh, step.request_body_sha256)
            if step.response_body_sha256 and step.response_body_size:
                step.response_body = queries.body(wh, step.response_body_sha256)
        out.steps.append(step)
    return out
