"""The approval fold and rules, pure: events in, a view and verdicts out."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from capture.approvals.state import (
    ApprovalBook,
    ApprovalError,
    check_consume,
    check_decision,
    check_grant_issue,
    check_ticket,
    normalize_actions,
    normalize_collections,
    satisfies_groups,
)
from capture.types import Identity
from schemas.chain import EventStamper
from schemas.models import (
    ApprovalClaimed,
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    Event,
    GrantIssued,
    Operation,
    OperationDecision,
    PolicyDecided,
    RequestForwarded,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ISS = "https://idp.example"
SHA = "a" * 64
stamper = EventStamper("gw-test")


def ident(sub: str, *groups: str, token: str | None = None, iss: str = ISS) -> Identity:
    return Identity(sub, iss, frozenset(groups), token_id=token or f"jti-{sub}")


def ev(cls: type[Event], at: datetime, session: str = "s", **body: Any) -> Event:
    return stamper.stamp(cls, session_id=session, occurred_at=at, **body).event


def requested(aid: str = "A1", *, groups: list[list[str]] | None = None, n: int = 1,
              kind: str = "request", expires: timedelta = timedelta(minutes=30),
              **extra: Any) -> Event:
    return ev(
        ApprovalRequested, T0, approval_id=aid, kind=kind, requester_subject="dana",
        requester_issuer=ISS, requester_token_id="jti-dana",
        operations=[Operation(action="write", collection="docs", ids=["1", "2"])],
        request_sha256=SHA, approver_groups=groups or [["Vector-Approve"]], min_approvals=n,
        expires_at=T0 + expires, mode="hold", **extra,
    )


def vote(who: str, decision: str = "approve", at: timedelta = timedelta(minutes=1),
         aid: str = "A1", iss: str = ISS) -> Event:
    return ev(ApprovalDecided, T0 + at, session=f"s-{who}", approval_id=aid, decision=decision,
              approver_subject=who, approver_issuer=iss, reason=f"{who} says {decision}")


def fold(*events: Event) -> ApprovalBook:
    book = ApprovalBook()
    for e in events:
        book.apply(e)
    return book


# -- groups -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "rule", "ok"),
    [
        ({"A"}, [["A"]], True),
        ({"A"}, [["A", "B"]], False),  # AND: every group of the set
        ({"A", "B"}, [["A", "B"]], True),
        ({"C"}, [["A", "B"], ["C"]], True),  # OR over sets
        ({"B"}, [["A", "B"], ["C"]], False),
        (set(), [["A"]], False),
        ({"A"}, [], False),  # no approvers configured: nobody passes
        ({"A"}, [[]], False),
    ],
)
def test_approver_groups_or_of_ands(held: set[str], rule: list[list[str]], ok: bool) -> None:
    assert satisfies_groups(held, rule) is ok


# -- the fold -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "votes", "status", "approvers", "deniers"),
    [
        (1, [], "pending", [], []),
        (1, [("ann", "approve", 1)], "approved", ["ann"], []),
        (2, [("ann", "approve", 1)], "pending", ["ann"], []),
        (2, [("ann", "approve", 1), ("bob", "approve", 2)], "approved", ["ann", "bob"], []),
        # 2 of 3: the third vote is not needed and not counted
        (2, [("ann", "approve", 1), ("bob", "approve", 2), ("cy", "deny", 3)], "approved",
         ["ann", "bob"], []),
        # any deny wins, whenever it comes before the decision
        (2, [("ann", "approve", 1), ("cy", "deny", 2), ("bob", "approve", 3)], "denied",
         ["ann"], ["cy"]),
        (1, [("cy", "deny", 1)], "denied", [], ["cy"]),
        # the same approver twice counts once
        (2, [("ann", "approve", 1), ("ann", "approve", 2)], "pending", ["ann"], []),
        # the requester's own vote never counts, even if a faulty writer logged it
        (1, [("dana", "approve", 1)], "pending", [], []),
        # votes at or after the expiry do not count
        (1, [("ann", "approve", 30)], "pending", [], []),
    ],
)
def test_fold_n_of_m_deny_wins(
    n: int, votes: list[tuple[str, str, int]], status: str, approvers: list[str],
    deniers: list[str],
) -> None:
    book = fold(requested(n=n), *[vote(w, d, timedelta(minutes=m)) for w, d, m in votes])
    a = book.get("A1")
    assert a is not None
    assert a.status == status
    assert [v.subject for v in a.approvals] == approvers
    assert [v.subject for v in a.denials] == deniers


def test_fold_is_independent_of_arrival_order() -> None:
    """On Kafka the request, votes and an expiry can arrive in any order."""
    events = [requested(n=2), vote("ann", at=timedelta(minutes=1)),
              vote("cy", "deny", timedelta(minutes=2)), vote("bob", at=timedelta(minutes=3)),
              ev(ApprovalExpired, T0 + timedelta(minutes=30), approval_id="A1",
                 expired_at=T0 + timedelta(minutes=30))]
    views = set()
    for seed in range(12):
        shuffled = events[:]
        random.Random(seed).shuffle(shuffled)
        a = fold(*shuffled).get("A1")
        assert a is not None
        views.add((a.status, a.decided_at, tuple(v.subject for v in a.approvals)))
    assert views == {("denied", T0 + timedelta(minutes=2), ("ann",))}


def test_votes_before_their_request_wait_for_it() -> None:
    book = ApprovalBook()
    assert book.apply(vote("ann")) == set()
    assert book.get("A1") is None
    assert book.apply(requested()) == {"A1"}
    assert book.get("A1").status == "approved"  # type: ignore[union-attr]


def test_expiry_duplicates_fold_to_one_and_forced_expiry_cuts_votes() -> None:
    exp = [ev(ApprovalExpired, T0 + timedelta(minutes=30), session=f"gw{i}", approval_id="A1",
              expired_at=T0 + timedelta(minutes=30)) for i in range(3)]
    a = fold(requested(), *exp).get("A1")
    assert a is not None and a.status == "expired"
    assert a.decided_at == T0 + timedelta(minutes=30)
    # a holder gave up at minute 5: a vote at minute 6 comes too late
    forced = ev(ApprovalExpired, T0 + timedelta(minutes=5), approval_id="A1",
                expired_at=T0 + timedelta(minutes=5))
    a = fold(requested(), forced, vote("ann", at=timedelta(minutes=6))).get("A1")
    assert a is not None and a.status == "expired" and a.approvals == ()
    # ... but one at minute 4 had already decided it
    a = fold(requested(), forced, vote("ann", at=timedelta(minutes=4))).get("A1")
    assert a is not None and a.status == "approved"


def test_the_same_event_twice_folds_once() -> None:
    book = ApprovalBook()
    pd = ev(PolicyDecided, T0, request_id="r1", outcome="allow", policy_sha256="p",
            ticket_id="T1", operation_decisions=[
                OperationDecision(index=0, outcome="allow", reason="ok"),
                OperationDecision(index=1, outcome="allow", reason="ok")])
    r = requested()
    for e in (r, r, pd, pd):
        book.apply(e)
    assert book.uses("T1") == 2
    assert len(book.approvals()) == 1


def test_use_is_folded_from_forwarded_and_policy_events() -> None:
    book = fold(requested(), vote("ann"))
    assert book.get("A1").used is False  # type: ignore[union-attr]
    book.apply(ev(RequestForwarded, T0, request_id="r9", upstream="u", approval_id="A1"))
    assert book.get("A1").used is True  # type: ignore[union-attr]
    denied = ev(PolicyDecided, T0, request_id="r2", outcome="deny", policy_sha256="p",
                ticket_id="T1")
    book.apply(denied)
    assert book.uses("T1") == 0  # a refused request used nothing
    book.apply(ev(GrantIssued, T0, grant_id="G1", kind="jit", subject="dana",
                  actions=["write"], collections=["docs"], valid_from=T0,
                  valid_until=T0 + timedelta(hours=1), issued_by="ann"))
    book.apply(ev(PolicyDecided, T0, request_id="r3", outcome="allow", policy_sha256="p",
                  grant_id="G1"))
    g = book.grant("G1")
    assert g is not None and g.used_operations == 1 and g.active(T0)
    assert not g.active(T0 + timedelta(hours=1))


# -- decisions ----------------------------------------------------------------------

APPROVER = ident("ann", "Vector-Approve")


def _pending(**kw: Any) -> Any:
    return fold(requested(**kw)).get("A1")


@pytest.mark.parametrize(
    ("events", "who", "decision", "now", "code", "status"),
    [
        ([], APPROVER, "approve", T0, "not_found", 404),
        ([vote("bob")], APPROVER, "approve", T0 + timedelta(minutes=2), "already_decided", 409),
        ([vote("bob", "deny")], APPROVER, "deny", T0 + timedelta(minutes=2), "already_decided",
         409),
        ([], APPROVER, "approve", T0 + timedelta(minutes=30), "expired", 410),
        ([], ident("dana", "Vector-Approve"), "approve", T0, "self_approval", 403),
        # a second token for the same subject is still the requester
        ([], ident("dana", "Vector-Approve", token="another-jti"), "approve", T0,
         "self_approval", 403),
        ([], ident("eve", "Vector-Read"), "approve", T0, "not_an_approver", 403),
        ([], APPROVER, "maybe", T0, "bad_request", 400),
    ],
)
def test_decision_refusals(
    events: list[Event], who: Identity, decision: str, now: datetime, code: str, status: int
) -> None:
    book = fold(*([requested(n=2)] if code != "not_found" else []), *events)
    a = book.get("A1")
    if code == "already_decided":  # make the earlier vote decisive
        book = fold(requested(n=1), *events)
        a = book.get("A1")
    with pytest.raises(ApprovalError) as info:
        check_decision(a, "A1", who, decision, now)
    assert info.value.code == code and info.value.status == status
    assert info.value.message  # a sentence, never empty


def test_already_voted_and_and_groups() -> None:
    book = fold(requested(n=2, groups=[["Vector-Approve", "Security"], ["CISO"]]), vote("ann"))
    a = book.get("A1")
    with pytest.raises(ApprovalError) as info:
        check_decision(a, "A1", ident("ann", "Vector-Approve", "Security"), "approve", T0)
    assert info.value.code == "already_voted"
    with pytest.raises(ApprovalError) as info:
        check_decision(a, "A1", ident("bob", "Vector-Approve"), "approve", T0)
    assert info.value.code == "not_an_approver"
    assert "[Vector-Approve and Security] or [CISO]" in info.value.message
    check_decision(a, "A1", ident("bob", "Vector-Approve", "Security"), "approve", T0)
    check_decision(a, "A1", ident("cy", "CISO"), "deny", T0)
    # a subject of another issuer may not decide it: not the requester "dana"
    # signed in at a second IdP, nor "ann" again, nor anyone else there
    for name in ("dana", "ann", "zed"):
        with pytest.raises(ApprovalError) as info:
            check_decision(a, "A1", ident(name, "CISO", iss="https://other"), "approve", T0)
        assert info.value.code == "foreign_issuer" and info.value.status == 403
        assert "https://other" in info.value.message


def test_votes_from_another_issuer_never_count() -> None:
    """Logged by a gateway that trusts another IdP (or a faulty writer): the
    requester at a second IdP cannot approve herself, and one approver at two
    IdPs fills one seat at most."""
    other = "https://other"
    book = fold(requested(n=1), vote("dana", iss=other))
    assert book.get("A1").status == "pending"  # type: ignore[union-attr]
    book = fold(requested(n=2), vote("ann"), vote("ann", at=timedelta(minutes=2), iss=other))
    a = book.get("A1")
    assert a is not None and a.status == "pending" and [v.subject for v in a.approvals] == ["ann"]
    book = fold(requested(n=1), vote("zed", "deny", iss=other),
                vote("ann", at=timedelta(minutes=2)))
    assert book.get("A1").status == "approved"  # type: ignore[union-attr]


# -- async use ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("approved", "who", "sha", "used", "code"),
    [
        (True, ident("dana"), SHA, False, None),
        (True, ident("dana", token="second-token"), SHA, False, None),
        (False, ident("dana"), SHA, False, "not_approved"),
        (True, ident("eve"), SHA, False, "wrong_requester"),
        (True, ident("dana"), "b" * 64, False, "content_mismatch"),
        (True, ident("dana"), SHA, True, "already_used"),
    ],
)
def test_consume(approved: bool, who: Identity, sha: str, used: bool, code: str | None) -> None:
    book = fold(requested(), *([vote("ann")] if approved else []))
    a = book.get("A1")
    if code is None:
        check_consume(a, "A1", request_sha256=sha, requester=who, used=used)
        return
    with pytest.raises(ApprovalError) as info:
        check_consume(a, "A1", request_sha256=sha, requester=who, used=used)
    assert info.value.code == code
    with pytest.raises(ApprovalError) as info:
        check_consume(None, "nope", request_sha256=SHA, requester=who, used=False)
    assert info.value.code == "not_found"


# -- tickets ------------------------------------------------------------------------


def ticket(*votes: Event, max_ops: int | None = 3) -> Any:
    t = requested(kind="ticket", scope_actions=["delete", "write"],
                  scope_collections=["docs-*"], valid_from=T0,
                  valid_until=T0 + timedelta(hours=2), max_operations=max_ops)
    return fold(t, *votes).get("A1")


W = Operation(action="write", collection="docs-1")
D = Operation(action="delete", collection="docs-2")
DANA = ident("dana")


@pytest.mark.parametrize(
    ("t", "who", "ops", "now", "used", "code"),
    [
        (ticket(vote("ann")), DANA, [W, D], T0 + timedelta(minutes=5), 0, None),
        (ticket(vote("ann")), DANA, [W], T0 + timedelta(minutes=5), 2, None),
        (ticket(vote("ann")), DANA, [W, D], T0 + timedelta(minutes=5), 2, "ticket_exhausted"),
        (ticket(vote("ann")), DANA, [W], T0 + timedelta(hours=2), 0, "ticket_expired"),
        (ticket(vote("ann")), DANA, [W], T0 - timedelta(seconds=1), 0, "ticket_expired"),
        (ticket(vote("ann")), DANA, [Operation(action="write", collection="hr")],
         T0, 0, "ticket_out_of_scope"),
        (ticket(vote("ann")), DANA, [Operation(action="admin", collection="docs-1")],
         T0, 0, "ticket_out_of_scope"),
        (ticket(vote("ann")), DANA, [Operation(action="admin")], T0, 0, "ticket_out_of_scope"),
        (ticket(vote("ann")), ident("eve"), [W], T0, 0, "ticket_wrong_subject"),
        (ticket(), DANA, [W], T0, 0, "ticket_not_approved"),
        (ticket(vote("ann", "deny")), DANA, [W], T0, 0, "ticket_not_approved"),
        # self-approved: the requester's own vote does not approve it
        (ticket(vote("dana")), DANA, [W], T0, 0, "ticket_not_approved"),
        (None, DANA, [W], T0, 0, "ticket_not_found"),
        (ticket(vote("ann"), max_ops=None), DANA, [W] * 50, T0, 1000, None),
    ],
)
def test_ticket_rules(t: Any, who: Identity, ops: list[Operation], now: datetime, used: int,
                      code: str | None) -> None:
    if code is None:
        check_ticket(t, "A1", who, ops, now, used)
        return
    with pytest.raises(ApprovalError) as info:
        check_ticket(t, "A1", who, ops, now, used)
    assert info.value.code == code and info.value.status == 403


def test_a_request_approval_is_no_ticket() -> None:
    with pytest.raises(ApprovalError) as info:
        check_ticket(fold(requested(), vote("ann")).get("A1"), "A1", DANA, [W], T0, 0)
    assert info.value.code == "ticket_not_found"


# -- grants and scope words ---------------------------------------------------------


def test_grant_issue_rules() -> None:
    groups = [["Vector-Approve"]]
    check_grant_issue(APPROVER, "dana", groups)
    for who, subject, code in [(APPROVER, "ann", "grant_self"),
                               (ident("eve", "Vector-Read"), "dana", "not_an_approver")]:
        with pytest.raises(ApprovalError) as info:
            check_grant_issue(who, subject, groups)
        assert info.value.code == code


def test_action_words_and_globs() -> None:
    assert normalize_actions(["upsert", "delete", "Write", " "]) == ("delete", "write")
    assert normalize_actions(["search", "query"]) == ("search",)
    for bad in (["unknown"], ["fly"], [], [""]):
        with pytest.raises(ValueError):
            normalize_actions(bad)
    assert normalize_collections(["docs-*", "docs-*", "hr"]) == ("docs-*", "hr")
    for bad in (["docs-**"], ["[a"], []):
        with pytest.raises(ValueError):
            normalize_collections(bad)


# -- claims -------------------------------------------------------------------------


def claim(ref: str, rid: str, n: int = 1, *, released: bool = False, gw: str = "gw-a",
          kind: str = "ticket") -> Event:
    e = ev(ApprovalClaimed, T0, session=f"claims:{ref}@{gw}", request_id=rid, approval_id=ref,
           kind=kind, operations=n, released=released)
    return e.model_copy(update={"envelope": e.envelope.model_copy(update={"gateway_id": gw})})


def test_the_first_claim_on_an_approval_wins_and_a_released_one_lets_the_next_in() -> None:
    book = fold(requested(), vote("ann"), claim("A1", "r1", kind="request", gw="gw-a"),
                claim("A1", "r2", kind="request", gw="gw-b"))
    first, second = book.claim_verdict("A1", "r1", 1), book.claim_verdict("A1", "r2", 1)
    assert first.found and first.admitted and first.held == 0
    assert second.found and not second.admitted and second.held == 1
    assert second.ahead is not None and second.ahead.request_id == "r1"
    assert second.ahead.gateway_id == "gw-a"
    assert book.get("A1").used is True  # type: ignore[union-attr]
    assert book.claim_verdict("A1", "r9", 1).found is False  # no claim of r9
    # r1 was not forwarded: it gives the use back; a later claim fits, r2 stays refused
    book.apply(claim("A1", "r1", kind="request", released=True))
    assert not book.claim_verdict("A1", "r1", 1).admitted
    assert book.get("A1").used is True  # r2's claim is not released yet
    book.apply(claim("A1", "r2", kind="request", released=True))
    assert book.get("A1").used is False
    book.apply(claim("A1", "r3", kind="request"))
    assert book.claim_verdict("A1", "r3", 1).admitted


def test_a_ticket_counts_claims_not_released_and_never_admits_past_its_limit() -> None:
    book = fold(claim("T1", "r1", 2), claim("T1", "r2", 2), claim("T1", "r3", 1))
    assert [book.claim_verdict("T1", r, 3).admitted for r in ("r1", "r2", "r3")] == [
        True, False, False]  # r2 does not fit; r3 is counted after r2 until r2 is released
    assert book.uses("T1") == 5
    book.apply(claim("T1", "r2", released=True))
    assert book.claim_verdict("T1", "r3", 3).admitted and book.uses("T1") == 3
    assert book.counted("T1", "r1") and not book.counted("T1", "r2")
    # the request's PolicyDecided (recorded after its claim) is not a second use
    book.apply(ev(PolicyDecided, T0, request_id="r1", outcome="allow", policy_sha256="p",
                  ticket_id="T1", operation_decisions=[
                      OperationDecision(index=i, outcome="allow", reason="ok") for i in (0, 1)]))
    assert book.uses("T1") == 3
    # a use recorded before claims existed counts, and counts ahead of every claim
    book.apply(ev(PolicyDecided, T0, request_id="old", outcome="allow", policy_sha256="p",
                  ticket_id="T1"))
    assert book.uses("T1") == 4 and book.claim_verdict("T1", "r1", 3).held == 1
    # ... unless its request gave a claim back (a claim that never reached the log)
    book.apply(claim("T1", "old", released=True))
    assert book.uses("T1") == 3
    assert book.claim_verdict("T1", "r1", None).admitted  # no limit


def test_any_interleaving_of_claims_on_two_gateways_never_admits_past_the_limit() -> None:
    """Whatever each gateway has seen of the other's releases, admitted claims
    whose requests were forwarded never exceed the limit."""
    rng = random.Random(7)
    for _ in range(200):
        limit = rng.randint(1, 4)
        log: list[Event] = []
        forwarded: dict[str, int] = {}
        released: set[str] = set()
        for i in range(rng.randint(1, 12)):
            rid, n = f"r{i}", rng.randint(1, 2)
            log.append(claim("T", rid, n, gw=rng.choice(["gw-a", "gw-b"])))
            # the claimant decides on a prefix of the log that holds its claim
            view = fold(*log)
            if view.claim_verdict("T", rid, limit).admitted and rng.random() < 0.7:
                forwarded[rid] = n
            else:
                released.add(rid)
            # some earlier releases reach the log now, in any order
            for r in sorted(released):
                if rng.random() < 0.5:
                    log.append(claim("T", r, released=True))
                    released.discard(r)
        assert sum(forwarded.values()) <= limit


def test_a_grant_binds_its_subjects_issuer_and_an_old_one_binds_nobody() -> None:
    """A grant is for (issuer, subject); a GrantIssued recorded before grants
    named the issuer cannot say whose it is, so it matches no one (issue it
    again) rather than every IdP's subject of that name."""
    window = {"valid_from": T0, "valid_until": T0 + timedelta(hours=1)}
    book = fold(
        ev(GrantIssued, T0, grant_id="G1", kind="jit", subject="dana", actions=["write"],
           collections=["docs"], issued_by="ann", subject_issuer=ISS, **window),
        ev(GrantIssued, T0, grant_id="G0", kind="jit", subject="dana", actions=["write"],
           collections=["docs"], issued_by="ann", **window),
    )
    g1, g0 = book.grant("G1"), book.grant("G0")
    assert g1 is not None and g0 is not None
    assert g1.holder(ISS, "dana") and not g1.holder("https://other", "dana")
    assert not g1.holder(ISS, "eve")
    assert g0.subject_issuer is None and not g0.holder(ISS, "dana")
