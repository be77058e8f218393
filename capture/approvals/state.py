"""Approvals as a read model folded from events, and the rules that guard them.

Pure: no I/O and no clock. :class:`ApprovalBook` folds ApprovalRequested,
ApprovalDecided, ApprovalExpired, GrantIssued, ApprovalClaimed (uses of
approvals and tickets), PolicyDecided (JIT grant use, and ticket use recorded
before claims existed) and RequestForwarded (approval use recorded before claims
existed) into :class:`Approval` and :class:`Grant` values. The ``check_*``
functions take the current view and the time and raise :class:`ApprovalError`
naming what is wrong and what to do.

The fold does not depend on the order in which events arrive. On Kafka the
request, each vote and an expiry sit in different sessions and so possibly in
different partitions; a process may see a vote before the request it belongs
to. The status is therefore computed from the whole set, in the order of the
events' own timestamps: votes are taken in time order until a deny (any deny
wins) or the N-th approval; votes at or after the deadline (the expiry, or an
earlier forced expiry) do not count; a vote by the requester (same issuer and
subject, whatever the token) never counts, even if a faulty writer logged one;
nor does a vote signed in at another issuer than the requester's: an OIDC
``sub`` is unique only within its issuer, and gateways that trust different
IdPs may share one log, so a vote of ``alice`` at a second IdP is neither the
requester's own (which would let her approve herself) nor a second person's
(which would let one approver fill two seats). Grants likewise bind the
subject's issuer.

Uses are claims (:class:`ApprovalClaimed`). A gateway appends a claim before a
request goes upstream under an approval or a change ticket, reads the log up to
it, and forwards only if :meth:`ApprovalBook.claim_verdict` admits it. Claims on
one approval share one log partition, so every process sees them in the same
order, and a claim is admitted only if it fits after *every* earlier claim that
was not released. That is conservative on purpose: a reader need not know
whether an earlier claim was admitted, only whether it was given back (released,
which a gateway does only for a request it did not forward). So however the
views of two gateways differ, the operations that reached the database never
exceed the limit. A claim whose gateway died before forwarding or releasing it
stays counted: that can only refuse more.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from capture.policy import _glob_match
from capture.types import Identity
from schemas.models import (
    ActionClass,
    ApprovalClaimed,
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    Event,
    GrantIssued,
    Operation,
    PolicyDecided,
    RequestForwarded,
)

__all__ = [
    "ACTION_ALIASES",
    "ApprovalBook",
    "ApprovalError",
    "ApprovalKind",
    "ApprovalStatus",
    "Approval",
    "ClaimVerdict",
    "ERROR_STATUS",
    "Grant",
    "Vote",
    "approval_to_json",
    "check_consume",
    "check_decision",
    "check_grant_issue",
    "check_ticket",
    "grant_to_json",
    "normalize_actions",
    "normalize_collections",
    "satisfies_groups",
]

ApprovalKind = Literal["request", "ticket", "grant"]
ApprovalStatus = Literal["pending", "approved", "denied", "expired"]

#: HTTP status of each error code.
ERROR_STATUS: dict[str, int] = {
    "not_found": 404,
    "already_decided": 409,
    "expired": 410,
    "self_approval": 403,
    "foreign_issuer": 403,
    "not_an_approver": 403,
    "already_voted": 409,
    "content_mismatch": 409,
    "already_used": 409,
    "not_approved": 403,
    "wrong_requester": 403,
    "ticket_not_found": 403,
    "ticket_not_approved": 403,
    "ticket_expired": 403,
    "ticket_exhausted": 403,
    "ticket_out_of_scope": 403,
    "ticket_wrong_subject": 403,
    "grant_self": 403,
    "bad_request": 400,
}


class ApprovalError(Exception):
    """A refused approval operation. ``code`` is short and stable (the JSON
    ``error``), ``message`` a sentence that names what was wrong and what to
    do, ``status`` the HTTP status. None of them carries a token or a body."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status if status is not None else ERROR_STATUS.get(code, 400)


@dataclass(frozen=True)
class Vote:
    subject: str
    issuer: str
    reason: str
    at: datetime
    token_id: str | None = None


@dataclass(frozen=True)
class Approval:
    """One approval as every process sees it once it has read the log."""

    approval_id: str
    kind: ApprovalKind
    status: ApprovalStatus
    requester_subject: str
    requester_issuer: str
    requester_token_id: str | None
    operations: list[Operation]
    request_sha256: str
    approver_groups: list[list[str]]
    min_approvals: int
    expires_at: datetime
    mode: Literal["hold", "async"]
    reason: str | None
    blast_radius: int | None
    approvals: tuple[Vote, ...]
    denials: tuple[Vote, ...]
    session_id: str
    request_id: str | None
    gateway_id: str
    requested_at: datetime
    decided_at: datetime | None
    used: bool
    # tickets only: the scope an approved ticket grants
    scope_actions: tuple[str, ...] = ()
    scope_collections: tuple[str, ...] = ()
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    max_operations: int | None = None

    @property
    def deadline(self) -> datetime:
        return self.expires_at

    def is_requester(self, who: Identity) -> bool:
        return (who.issuer, who.subject) == (self.requester_issuer, self.requester_subject)


@dataclass(frozen=True)
class Grant:
    grant_id: str
    kind: Literal["ticket", "jit"]
    subject: str
    actions: tuple[str, ...]
    collections: tuple[str, ...]
    valid_from: datetime
    valid_until: datetime
    max_operations: int | None
    used_operations: int
    approval_id: str | None
    issued_by: str
    reason: str | None = None
    #: the issuer of ``subject`` (None: a grant recorded before grants named
    #: it, which no request matches)
    subject_issuer: str | None = None

    def holder(self, issuer: str, subject: str) -> bool:
        """Is (``issuer``, ``subject``) the principal this grant is for?"""
        return self.subject_issuer is not None and (self.subject_issuer, self.subject) == (
            issuer, subject)

    def active(self, now: datetime) -> bool:
        return self.valid_from <= now < self.valid_until and (
            self.max_operations is None or self.used_operations < self.max_operations
        )

    def covers(self, op: Operation) -> bool:
        return _in_scope(op, self.actions, self.collections)


# ----------------------------------------------------------------------- scope

#: Words people use for an action, mapped to the action classes the gateway
#: classifies operations into (``--actions upsert,delete``).
ACTION_ALIASES: dict[str, str] = {
    "upsert": "write",
    "add": "write",
    "insert": "write",
    "update": "write",
    "put": "write",
    "import": "write",
    "remove": "delete",
    "query": "search",
    "get": "read",
    "fetch": "read",
    "scroll": "read",
}

_NAMED = {a.value for a in ActionClass if a is not ActionClass.UNKNOWN}


def normalize_actions(actions: Iterable[str]) -> tuple[str, ...]:
    """Action names (``upsert``, ``write``, ``delete``...) as sorted, distinct
    action classes. ValueError names any word that is no action."""
    out: set[str] = set()
    for raw in actions:
        word = raw.strip().lower()
        if not word:
            continue
        cls = ACTION_ALIASES.get(word, word)
        if cls not in _NAMED:
            known = ", ".join(sorted(_NAMED | set(ACTION_ALIASES)))
            raise ValueError(f"{raw!r} is not an action; use one of: {known}")
        out.add(cls)
    if not out:
        raise ValueError("name at least one action, e.g. --actions upsert,delete")
    return tuple(sorted(out))


def normalize_collections(globs: Iterable[str]) -> tuple[str, ...]:
    """Collection globs (``docs-*``), checked like the policy's; ValueError says why."""
    from capture.policy import _check_glob

    out: list[str] = []
    for g in globs:
        g = g.strip()
        if not g:
            continue
        out.append(_check_glob(g))
    if not out:
        raise ValueError("name at least one collection or glob, e.g. --collections 'docs-*'")
    return tuple(dict.fromkeys(out))


def _in_scope(op: Operation, actions: Sequence[str], collections: Sequence[str]) -> bool:
    if op.action.value not in actions or op.collection is None:
        return False
    return any(_glob_match(g, op.collection) for g in collections)


def _describe(op: Operation) -> str:
    where = f" on {op.collection!r}" if op.collection is not None else " (no collection)"
    return f"{op.action.value}{where}"


def satisfies_groups(groups: Iterable[str], approver_groups: Sequence[Sequence[str]]) -> bool:
    """True if ``groups`` hold every group of at least one AND-set (OR over sets).
    An empty rule is satisfied by no one: approvals without approvers never pass."""
    held = set(groups)
    return any(sets and set(sets) <= held for sets in approver_groups)


def _groups_text(approver_groups: Sequence[Sequence[str]]) -> str:
    if not approver_groups:
        return "(no approver groups configured)"
    return " or ".join("[" + " and ".join(s) + "]" for s in approver_groups)


# ------------------------------------------------------------------------ fold


@dataclass
class _VoteRecord:
    event_id: UUID
    decision: Literal["approve", "deny"]
    vote: Vote


@dataclass
class _Record:
    requested: ApprovalRequested | None = None
    votes: dict[UUID, _VoteRecord] = field(default_factory=dict)
    expiries: list[datetime] = field(default_factory=list)
    #: the stream (envelope gateway_id) of the first ApprovalExpired in log order:
    #: the one gateway that notifies the expiry when several recorded one
    first_expiry_stream: str | None = None
    used: bool = False
    view: Approval | None = None


@dataclass(frozen=True)
class _Claim:
    event_id: UUID
    request_id: str
    operations: int
    gateway_id: str
    at: datetime


@dataclass
class _Uses:
    """Claims on one approval or ticket in log order, and what was given back."""

    claims: list[_Claim] = field(default_factory=list)
    claimed: set[str] = field(default_factory=set)
    released: set[str] = field(default_factory=set)
    #: uses recorded without a claim (before claims existed, or a JIT grant):
    #: request id -> operations, from PolicyDecided (tickets, grants) or
    #: RequestForwarded (approvals)
    unclaimed: dict[str, int] = field(default_factory=dict)

    def without_claim(self) -> int:
        """Uses recorded without a claim; a request that claimed, or whose claim
        was given back (even one whose claim never reached the log), is counted
        by its claim only."""
        return sum(n for rid, n in self.unclaimed.items()
                   if rid not in self.claimed and rid not in self.released)

    def total(self) -> int:
        held = sum(c.operations for c in self.claims if c.request_id not in self.released)
        return held + self.without_claim()


@dataclass(frozen=True)
class ClaimVerdict:
    """Whether the claim of ``request_id`` is admitted, given every claim before it.

    ``held`` counts the operations of earlier claims not released plus uses
    recorded without a claim; ``ahead`` is the earliest such claim (who holds it)."""

    found: bool
    admitted: bool
    held: int
    ahead: _Claim | None = None


def _settle(rec: _Record) -> Approval | None:
    req = rec.requested
    if req is None:
        return None
    requester = (req.requester_issuer, req.requester_subject)
    deadline = min([req.expires_at, *rec.expiries])
    approvals: list[Vote] = []
    denials: list[Vote] = []
    voters: set[tuple[str, str]] = set()
    status: ApprovalStatus = "pending"
    decided_at: datetime | None = None
    for vr in sorted(rec.votes.values(), key=lambda v: (v.vote.at, v.event_id)):
        who = (vr.vote.issuer, vr.vote.subject)
        if (who == requester or who in voters or vr.vote.at >= deadline
                or who[0] != req.requester_issuer):
            continue
        voters.add(who)
        if vr.decision == "deny":
            denials.append(vr.vote)
            status, decided_at = "denied", vr.vote.at
            break
        approvals.append(vr.vote)
        if len(approvals) >= req.min_approvals:
            status, decided_at = "approved", vr.vote.at
            break
    if status == "pending" and rec.expiries:
        status, decided_at = "expired", min(rec.expiries)
    env = req.envelope
    return Approval(
        approval_id=req.approval_id,
        kind=req.kind,
        status=status,
        requester_subject=req.requester_subject,
        requester_issuer=req.requester_issuer,
        requester_token_id=req.requester_token_id,
        operations=list(req.operations),
        request_sha256=req.request_sha256,
        approver_groups=[list(s) for s in req.approver_groups],
        min_approvals=req.min_approvals,
        expires_at=req.expires_at,
        mode=req.mode,
        reason=req.reason,
        blast_radius=req.blast_radius,
        approvals=tuple(approvals),
        denials=tuple(denials),
        session_id=env.session_id,
        request_id=env.request_id,
        gateway_id=env.gateway_id,
        requested_at=env.occurred_at,
        decided_at=decided_at,
        used=rec.used,
        scope_actions=tuple(req.scope_actions),
        scope_collections=tuple(req.scope_collections),
        valid_from=req.valid_from,
        valid_until=req.valid_until,
        max_operations=req.max_operations,
    )


class ApprovalBook:
    """The fold. ``apply`` returns the ids of approvals whose view changed."""

    def __init__(self) -> None:
        self._records: dict[str, _Record] = {}
        self._grants: dict[str, GrantIssued] = {}
        #: claims and uses per approval / ticket / grant id
        self._uses: dict[str, _Uses] = {}
        self._seen: set[UUID] = set()

    def _record(self, approval_id: str) -> _Record:
        rec = self._records.get(approval_id)
        if rec is None:
            rec = self._records[approval_id] = _Record()
        return rec

    def _use(self, ref: str) -> _Uses:
        u = self._uses.get(ref)
        if u is None:
            u = self._uses[ref] = _Uses()
        return u

    def apply(self, event: Event) -> set[str]:
        if not isinstance(
            event,
            ApprovalRequested | ApprovalDecided | ApprovalExpired | GrantIssued
            | ApprovalClaimed | PolicyDecided | RequestForwarded,
        ):
            return set()
        eid = event.envelope.event_id
        if eid in self._seen:  # at-least-once delivery: fold each event once
            return set()
        changed: set[str] = set()
        if isinstance(event, ApprovalRequested):
            self._seen.add(eid)
            rec = self._record(event.approval_id)
            if rec.requested is None:  # the first request for an id wins
                rec.requested = event
                changed.add(event.approval_id)
        elif isinstance(event, ApprovalDecided):
            self._seen.add(eid)
            rec = self._record(event.approval_id)
            rec.votes[eid] = _VoteRecord(
                eid,
                event.decision,
                Vote(
                    event.approver_subject,
                    event.approver_issuer,
                    event.reason,
                    event.envelope.occurred_at,
                    event.approver_token_id,
                ),
            )
            changed.add(event.approval_id)
        elif isinstance(event, ApprovalExpired):
            self._seen.add(eid)
            rec_e = self._record(event.approval_id)
            rec_e.expiries.append(event.expired_at)
            if rec_e.first_expiry_stream is None:
                rec_e.first_expiry_stream = event.envelope.gateway_id
            changed.add(event.approval_id)
        elif isinstance(event, GrantIssued):
            self._seen.add(eid)
            self._grants.setdefault(event.grant_id, event)
            if event.approval_id:
                changed.add(event.approval_id)
        elif isinstance(event, ApprovalClaimed):
            self._seen.add(eid)
            u = self._use(event.approval_id)
            rid = event.envelope.request_id or str(eid)
            if event.released:
                u.released.add(rid)
            elif rid not in u.claimed:  # one claim per request: the first counts
                u.claimed.add(rid)
                u.claims.append(_Claim(eid, rid, event.operations, event.envelope.gateway_id,
                                       event.envelope.occurred_at))
            changed.add(event.approval_id)
        elif isinstance(event, PolicyDecided):
            # only ids that can name a ticket or grant (the tail skips the rest unread)
            refs = [r for r in (event.ticket_id, event.grant_id) if r is not None and valid_id(r)]
            if event.outcome != "allow" or not refs:
                return set()
            self._seen.add(eid)
            count = max(1, len(event.operation_decisions))
            rid = event.envelope.request_id or str(eid)
            for ref in set(refs):
                self._use(ref).unclaimed.setdefault(rid, count)
                changed.add(ref)
        elif (isinstance(event, RequestForwarded) and event.approval_id
              and valid_id(event.approval_id)):
            self._seen.add(eid)
            rid = event.envelope.request_id or str(eid)
            self._use(event.approval_id).unclaimed.setdefault(rid, 1)
            changed.add(event.approval_id)
        for aid in list(changed):
            rec2 = self._records.get(aid)
            if rec2 is None:
                continue
            rec2.used = self.uses(aid) > 0
            view = _settle(rec2)
            if view == rec2.view:
                changed.discard(aid)
            rec2.view = view
        return changed

    # -- queries ------------------------------------------------------------------
    def first_expiry_stream(self, approval_id: str) -> str | None:
        """Which stream recorded the approval's first expiry (in log order)."""
        rec = self._records.get(approval_id)
        return rec.first_expiry_stream if rec is not None else None

    def get(self, approval_id: str) -> Approval | None:
        rec = self._records.get(approval_id)
        return rec.view if rec is not None else None

    def approvals(self) -> list[Approval]:
        out = [r.view for r in self._records.values() if r.view is not None]
        return sorted(out, key=lambda a: (a.requested_at, a.approval_id))

    def uses(self, ref: str) -> int:
        """Operations used or claimed under an approval, ticket or grant: every
        claim not released, and every use recorded without a claim."""
        u = self._uses.get(ref)
        return u.total() if u is not None else 0

    def counted(self, ref: str, request_id: str) -> bool:
        u = self._uses.get(ref)
        if u is None:
            return False
        if request_id in u.claimed or request_id in u.released:
            return request_id in u.claimed and request_id not in u.released
        return request_id in u.unclaimed

    def orphan_claims(
        self, by_stream: Callable[[str], bool], made_before: datetime
    ) -> list[tuple[str, str]]:
        """(approval id, request id) of every claim on a request approval that a
        stream accepted by ``by_stream`` made before ``made_before``, that was
        not given back, and whose request has no RequestForwarded under the
        approval: the gateway stopped between claiming and forwarding (the
        RequestForwarded record is durable before a request goes upstream)."""
        out: list[tuple[str, str]] = []
        for ref, u in self._uses.items():
            rec = self._records.get(ref)
            if rec is None or rec.requested is None or rec.requested.kind != "request":
                continue
            for c in u.claims:
                if (c.request_id in u.released or c.request_id in u.unclaimed
                        or not by_stream(c.gateway_id) or c.at >= made_before):
                    continue
                out.append((ref, c.request_id))
        return out

    def claim_verdict(self, ref: str, request_id: str, limit: int | None) -> ClaimVerdict:
        """Is the claim of ``request_id`` on ``ref`` admitted under ``limit``?

        It is if its operations fit after every earlier claim (in log order) that
        was not released, and after every use recorded without a claim. A claim
        released since is not admitted any more."""
        u = self._uses.get(ref)
        if u is None or request_id not in u.claimed:
            return ClaimVerdict(found=False, admitted=False, held=0)
        held = u.without_claim()
        ahead: _Claim | None = None
        for c in u.claims:
            if c.request_id == request_id:
                ok = (request_id not in u.released
                      and (limit is None or held + c.operations <= limit))
                return ClaimVerdict(found=True, admitted=ok, held=held, ahead=ahead)
            if c.request_id not in u.released:
                held += c.operations
                ahead = ahead or c
        raise AssertionError("claimed request without a claim")  # pragma: no cover

    def grants(self) -> list[Grant]:
        out = [self._grant(g) for g in self._grants.values()]
        return sorted(out, key=lambda g: (g.valid_from, g.grant_id))

    def grant(self, grant_id: str) -> Grant | None:
        g = self._grants.get(grant_id)
        return self._grant(g) if g is not None else None

    def _grant(self, g: GrantIssued) -> Grant:
        return Grant(
            grant_id=g.grant_id,
            kind=g.kind,
            subject=g.subject,
            actions=tuple(g.actions),
            collections=tuple(g.collections),
            valid_from=g.valid_from,
            valid_until=g.valid_until,
            max_operations=g.max_operations,
            used_operations=self.uses(g.grant_id),
            approval_id=g.approval_id,
            issued_by=g.issued_by,
            reason=g.reason,
            subject_issuer=g.subject_issuer,
        )

    def preview(self, approval_id: str, event: ApprovalDecided) -> Approval | None:
        """The approval as it would be with ``event`` folded in (nothing changes)."""
        rec = self._records.get(approval_id)
        if rec is None:
            return None
        eid = event.envelope.event_id
        trial = replace(rec, votes=dict(rec.votes))
        trial.votes[eid] = _VoteRecord(
            eid,
            event.decision,
            Vote(event.approver_subject, event.approver_issuer, event.reason,
                 event.envelope.occurred_at, event.approver_token_id),
        )
        return _settle(trial)


# ----------------------------------------------------------------------- rules


def check_decision(
    approval: Approval | None,
    approval_id: str,
    approver: Identity,
    decision: str,
    now: datetime,
) -> None:
    """Raise unless ``approver`` may cast ``decision`` on ``approval`` at ``now``."""
    if decision not in ("approve", "deny"):
        raise ApprovalError("bad_request", f"decision must be 'approve' or 'deny', not "
                            f"{decision[:20]!r}")
    if approval is None:
        raise ApprovalError(
            "not_found",
            f"there is no approval {approval_id[:80]!r}; check the id "
            "(`embedguard approvals list --pending` lists the open ones)",
        )
    if approval.status in ("approved", "denied"):
        when = f" at {approval.decided_at.isoformat()}" if approval.decided_at else ""
        raise ApprovalError(
            "already_decided",
            f"approval {approval_id} was already {approval.status}{when}; a decision cannot "
            "be changed. The requester must ask again if something changed.",
        )
    if approval.status == "expired" or now >= approval.expires_at:
        raise ApprovalError(
            "expired",
            f"approval {approval_id} expired at {approval.expires_at.isoformat()}; decisions "
            "after expiry are refused. The requester must send the request again.",
        )
    if approver.issuer != approval.requester_issuer:
        raise ApprovalError(
            "foreign_issuer",
            f"approval {approval_id} was requested by a subject of {approval.requester_issuer}; "
            f"only approvers signed in there may decide it, and your token is from "
            f"{approver.issuer}. Sign in at the requester's identity provider.",
        )
    if approval.is_requester(approver):
        raise ApprovalError(
            "self_approval",
            f"you ({approver.subject}) requested approval {approval_id} yourself; someone "
            f"else in {_groups_text(approval.approver_groups)} must decide it (another "
            "token for the same subject does not count)",
        )
    if not satisfies_groups(approver.groups, approval.approver_groups):
        held = ", ".join(sorted(approver.groups)) or "none"
        raise ApprovalError(
            "not_an_approver",
            f"approval {approval_id} needs an approver in {_groups_text(approval.approver_groups)}"
            f"; your token's groups are: {held}. Ask someone in those groups.",
        )
    for v in (*approval.approvals, *approval.denials):
        if (v.issuer, v.subject) == (approver.issuer, approver.subject):
            raise ApprovalError(
                "already_voted",
                f"you ({approver.subject}) already decided approval {approval_id}; it needs "
                f"{approval.min_approvals} different approvers",
            )


def check_consume(
    approval: Approval | None,
    approval_id: str,
    *,
    request_sha256: str,
    requester: Identity,
    used: bool,
) -> None:
    """Raise unless a re-sent request may go ahead under ``approval``."""
    if approval is None or approval.kind != "request":
        raise ApprovalError(
            "not_found",
            f"there is no approval {approval_id[:80]!r} for a request; send the approval id "
            "the gateway returned in its 202 answer",
        )
    if not approval.is_requester(requester):
        raise ApprovalError(
            "wrong_requester",
            f"approval {approval_id} was requested by someone else; only the requester may "
            "use it",
        )
    if approval.status != "approved":
        raise ApprovalError(
            "not_approved",
            f"approval {approval_id} is {approval.status}, not approved; "
            + ("wait for the decision and try again" if approval.status == "pending"
               else "send the request again without the header to ask anew"),
        )
    if request_sha256 != approval.request_sha256:
        raise ApprovalError(
            "content_mismatch",
            f"this request differs from the one approved as {approval_id} (the route it "
            "came in on, the method, the path or query, a header classification reads such as "
            "DB-Name, or the body changed); re-send exactly the approved request on the same "
            "route, or ask for a new approval",
        )
    if used or approval.used:
        raise ApprovalError(
            "already_used",
            f"approval {approval_id} was already used; an approval lets one request through "
            "once. Ask for a new approval.",
        )


def check_ticket(
    ticket: Approval | None,
    ticket_id: str,
    identity: Identity,
    operations: Sequence[Operation],
    now: datetime,
    used_operations: int,
) -> None:
    """Raise unless ``identity`` may run ``operations`` under ticket ``ticket_id``."""
    if ticket is None or ticket.kind != "ticket":
        raise ApprovalError(
            "ticket_not_found",
            f"there is no change ticket {ticket_id[:80]!r}; open one with `embedguard tickets "
            "open` and have a peer approve it",
        )
    if not ticket.is_requester(identity):
        raise ApprovalError(
            "ticket_wrong_subject",
            f"change ticket {ticket_id} belongs to {ticket.requester_subject}, not to "
            f"{identity.subject}; open your own ticket",
        )
    if ticket.status != "approved":
        why = {
            "pending": "is still waiting for approval",
            "denied": "was denied",
            "expired": "expired before anyone approved it",
        }.get(ticket.status, ticket.status)
        raise ApprovalError(
            "ticket_not_approved",
            f"change ticket {ticket_id} {why}; it must be approved by another person first",
        )
    if any(v.subject == ticket.requester_subject and v.issuer == ticket.requester_issuer
           for v in ticket.approvals):
        raise ApprovalError("ticket_not_approved",
                            f"change ticket {ticket_id} was approved by its own requester")
    start, end = ticket.valid_from, ticket.valid_until
    if start is None or end is None or now < start or now >= end:
        span = f"{start.isoformat()} to {end.isoformat()}" if start and end else "unknown"
        raise ApprovalError(
            "ticket_expired",
            f"change ticket {ticket_id} is valid from {span}, not now; open a new ticket",
        )
    outside = [op for op in operations
               if not _in_scope(op, ticket.scope_actions, ticket.scope_collections)]
    if outside:
        raise ApprovalError(
            "ticket_out_of_scope",
            f"change ticket {ticket_id} covers {', '.join(ticket.scope_actions)} on "
            f"{', '.join(ticket.scope_collections)}; this request also does "
            f"{', '.join(_describe(op) for op in outside[:5])}",
        )
    limit = ticket.max_operations
    if limit is not None and used_operations + max(1, len(operations)) > limit:
        raise ApprovalError(
            "ticket_exhausted",
            f"change ticket {ticket_id} allows {limit} operation(s) and {used_operations} "
            f"were used; this request needs {max(1, len(operations))} more. Open a new ticket.",
        )


def check_grant_issue(
    issuer: Identity, subject: str, issuer_groups: Sequence[Sequence[str]]
) -> None:
    if subject == issuer.subject:
        raise ApprovalError(
            "grant_self",
            "you cannot grant rights to yourself; another approver must issue the grant",
        )
    if not satisfies_groups(issuer.groups, issuer_groups):
        held = ", ".join(sorted(issuer.groups)) or "none"
        raise ApprovalError(
            "not_an_approver",
            f"issuing a grant needs a caller in {_groups_text(issuer_groups)}; your token's "
            f"groups are: {held}",
        )


# ------------------------------------------------------------------------ JSON


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _vote_json(v: Vote) -> dict[str, Any]:
    return {"subject": v.subject, "issuer": v.issuer, "reason": v.reason, "at": _ts(v.at)}


def approval_to_json(a: Approval) -> dict[str, Any]:
    """The approval as the control API answers it (no tokens, no bodies)."""
    out: dict[str, Any] = {
        "approval_id": a.approval_id,
        "kind": a.kind,
        "status": a.status,
        "requester": {"subject": a.requester_subject, "issuer": a.requester_issuer},
        "operations": [json.loads(op.model_dump_json(exclude_defaults=True))
                       for op in a.operations],
        "request_sha256": a.request_sha256,
        "approver_groups": a.approver_groups,
        "min_approvals": a.min_approvals,
        "expires_at": _ts(a.expires_at),
        "mode": a.mode,
        "reason": a.reason,
        "blast_radius": a.blast_radius,
        "approvals": [_vote_json(v) for v in a.approvals],
        "denials": [_vote_json(v) for v in a.denials],
        "session_id": a.session_id,
        "request_id": a.request_id,
        "gateway_id": a.gateway_id,
        "requested_at": _ts(a.requested_at),
        "decided_at": _ts(a.decided_at),
        "used": a.used,
    }
    if a.kind == "ticket":
        out["scope"] = {
            "actions": list(a.scope_actions),
            "collections": list(a.scope_collections),
            "valid_from": _ts(a.valid_from),
            "valid_until": _ts(a.valid_until),
            "max_operations": a.max_operations,
        }
    return out


def grant_to_json(g: Grant) -> dict[str, Any]:
    return {
        "grant_id": g.grant_id,
        "kind": g.kind,
        "subject": g.subject,
        "subject_issuer": g.subject_issuer,
        "actions": list(g.actions),
        "collections": list(g.collections),
        "valid_from": _ts(g.valid_from),
        "valid_until": _ts(g.valid_until),
        "max_operations": g.max_operations,
        "used_operations": g.used_operations,
        "approval_id": g.approval_id,
        "issued_by": g.issued_by,
        "reason": g.reason,
    }


_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def valid_id(value: str) -> bool:
    """Ids are uuids in practice; anything else in a URL is refused early."""
    return _ID.fullmatch(value) is not None
