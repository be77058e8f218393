"""capture/policy.py's remembered evaluation: :func:`evaluate` compiles each
policy's rules once and remembers rule matches and whole decisions per policy
object. It must decide exactly as :func:`_evaluate_reference` (every rule
worked out afresh, nothing remembered) for the example policy and for random
policies, over random callers, operations, tickets, grants and times, whether
an answer comes fresh or from memory; and a reloaded policy never answers from
the old one's memory."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from capture.enforcer import Enforcer
from capture.policy import (
    ACTIONS,
    GrantScope,
    Policy,
    PolicyError,
    RequestContext,
    TicketCheck,
    _compiled,
    _contributions,
    _evaluate_reference,
    _RuleMatcher,
    _why_not,
    evaluate,
    explain,
    load_policy,
    parse_policy,
)
from capture.types import Identity, Product
from schemas.models import ActionClass, Operation

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"
NOW = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)  # a Monday
TICKET = "0192f0c0-1234-7000-8000-00000000abcd"
GROUPS = ["Vector-Read", "Vector-Write", "Vector-Pipeline", "Vector-Admin", "Vector-Approve",
          "G1", "G2"]
SUBJECTS = ["alice", "bob", "svc-1", "u1"]
ISSUERS = ["https://idp.test", "https://other.test"]
COLLECTIONS = [None, "", "*", "docs", "docs-2", "restricted-x", "bocs", "shared-a", "a/b"]
GLOBS = ["*", "docs", "docs-*", "restricted-*", "[a-d]ocs", "[!d]ocs", "?ocs", "shared-*",
         "a/*"]
TICKETS = [None, "", TICKET, "CHG-12", "x" * 300]

# ------------------------------------------------------------------ strategies


@st.composite
def identities(draw: st.DrawFn) -> Identity:
    issued = draw(st.one_of(st.none(), st.integers(0, 120).map(
        lambda m: NOW - timedelta(minutes=m))))
    expires = None
    if issued is not None:
        expires = draw(st.one_of(st.none(), st.integers(1, 180).map(
            lambda m: issued + timedelta(minutes=m))))
    return Identity(
        subject=draw(st.sampled_from(SUBJECTS)), issuer=draw(st.sampled_from(ISSUERS)),
        groups=draw(st.frozensets(st.sampled_from(GROUPS), max_size=3)),
        issued_at=issued, expires_at=expires,
        auth_method=draw(st.sampled_from(["bearer", "dpop"])),
    )


operations = st.builds(
    Operation,
    action=st.sampled_from(list(ActionClass)),
    collection=st.sampled_from(COLLECTIONS),
    database=st.sampled_from([None, "", "db1", "prod", "*"]),
    ids=st.lists(st.sampled_from(["1", "2", "3", "4"]), max_size=4),
    ids_known=st.booleans(),
    vector_count=st.integers(0, 6),
    filter_present=st.booleans(),
    limit=st.one_of(st.none(), st.integers(0, 150)),
    bulk=st.booleans(),
    detail=st.sampled_from([None, "odd endpoint"]),
)

grants = st.builds(
    GrantScope,
    grant_id=st.sampled_from(["g1", "g2"]),
    kind=st.sampled_from(["jit", "ticket"]),
    actions=st.lists(st.sampled_from([*ACTIONS, "*"]), min_size=1, max_size=3),
    collections=st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2),
    valid_from=st.integers(-120, 60).map(lambda m: NOW + timedelta(minutes=m)),
    valid_until=st.integers(-60, 240).map(lambda m: NOW + timedelta(minutes=m)),
    issued_by=st.sampled_from([None, "carol"]),
)


@st.composite
def contexts(draw: st.DrawFn) -> RequestContext:
    ticket = draw(st.sampled_from(TICKETS))
    check = draw(st.one_of(st.none(), st.builds(
        TicketCheck, ticket_id=st.sampled_from([t for t in TICKETS if t] + ["other"]),
        valid=st.booleans(), reason=st.sampled_from(["", "it expired"]),
        error=st.sampled_from([None, "ticket_expired"]))))
    return RequestContext(
        # minutes over two weeks: every day and time of day, in and out of windows
        now=NOW + timedelta(minutes=draw(st.integers(-10080, 10080))),
        change_ticket=ticket,
        ticket=check,
        verify_tickets=draw(st.booleans()),
        grants=draw(st.lists(grants, max_size=2)),
        dpop_bound=draw(st.booleans()),
        client_address=draw(st.sampled_from([None, "10.1.2.3", "192.168.0.9",
                                             "::ffff:10.0.0.1", "[::1]", "junk"])),
        product=draw(st.sampled_from([None, "qdrant", "chroma", "milvus", "pinecone",
                                      "weaviate"])),
        method=draw(st.sampled_from([None, "GET", "POST"])),
        path=draw(st.sampled_from([None, "/collections/docs/points/scroll",
                                   "/collections/docs/points/1", "/x"])),
    )


requests = st.tuples(identities(), st.lists(operations, max_size=3), contexts())

_FILTER = {
    "qdrant": {"must": [{"key": "team", "match": {"any": "{groups}"}}]},
    "chroma": {"team": {"$in": "{groups}"}},
    "milvus": "team in {groups}",
}


@st.composite
def conditions(draw: st.DrawFn, actions: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        out["max_ids"] = draw(st.integers(1, 6))
    if draw(st.integers(0, 2)) == 0:
        out["require_change_ticket"] = True
    if draw(st.integers(0, 2)) == 0:
        out["change_ticket_pattern"] = draw(st.sampled_from(
            ["^CHG-[0-9]+$", "^[0-9a-f-]{36}$"]))
    if draw(st.integers(0, 2)) == 0:
        start = draw(st.sampled_from(["00:00", "08:00", "18:00", "23:30"]))
        end = draw(st.sampled_from(["08:00", "18:00", "23:30", "24:00"]))
        assume(start != end)
        out["time_window"] = {
            "days": draw(st.lists(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat",
                                                   "sun"]), min_size=1, max_size=4)),
            "start": start, "end": end,
            "timezone": draw(st.sampled_from(["UTC", "Europe/Berlin"])),
        }
    if draw(st.integers(0, 2)) == 0:
        out["max_token_age"] = draw(st.sampled_from(["15m", "1h"]))
    if draw(st.integers(0, 2)) == 0:
        out["max_token_lifetime"] = draw(st.sampled_from(["30m", "2h"]))
    if draw(st.integers(0, 2)) == 0:
        out["require_dpop"] = True
    if ("*" in actions or bool({"search", "read"} & set(actions))) and draw(st.booleans()):
        out["max_limit"] = draw(st.integers(1, 100))
    if draw(st.integers(0, 2)) == 0:
        out["client_networks"] = draw(st.sampled_from([["10.0.0.0/8"],
                                                       ["192.168.0.0/16", "::1/128"]]))
    return out


@st.composite
def rules(draw: st.DrawFn, index: int) -> dict[str, Any]:
    effect = draw(st.sampled_from(["allow", "deny", "require_approval"]))
    kind = draw(st.sampled_from(["authenticated", "groups", "users", "service_accounts"]))
    subjects: dict[str, Any] = (
        {"authenticated": True} if kind == "authenticated" else
        {kind: draw(st.lists(st.sampled_from(GROUPS if kind == "groups" else SUBJECTS),
                             min_size=1, max_size=2))})
    if draw(st.integers(0, 4)) == 0:
        subjects["issuer"] = draw(st.sampled_from(ISSUERS))
    actions = draw(st.one_of(st.just(["*"]), st.lists(st.sampled_from(ACTIONS), min_size=1,
                                                       max_size=3, unique=True)))
    no_collection = draw(st.booleans())
    rule: dict[str, Any] = {
        "id": f"r{index}", "effect": effect, "subjects": subjects, "actions": actions,
        "collections": draw(st.lists(st.sampled_from(GLOBS), min_size=0 if no_collection
                                     else 1, max_size=3)),
        "no_collection": no_collection,
    }
    if draw(st.booleans()):
        rule["description"] = f"rule number {index}"
    if draw(st.integers(0, 3)) == 0:
        rule["databases"] = draw(st.lists(st.sampled_from(["*", "db?", "prod"]), min_size=1,
                                          max_size=2))
    if effect == "deny":
        return rule
    cond = draw(conditions(actions)) if draw(st.booleans()) else {}
    if cond:
        rule["conditions"] = cond
    ob: dict[str, Any] = {}
    if draw(st.booleans()):
        ob["mask"] = {"detectors": draw(st.lists(st.sampled_from(["email", "phone", "card"]),
                                                 min_size=1, max_size=2)),
                      "fields": draw(st.lists(st.sampled_from(["email", "ssn"]), max_size=2)),
                      "mode": draw(st.sampled_from(["placeholder", "hmac"]))}
    if draw(st.booleans()):
        ob["strip_vectors"] = True
    if "*" not in actions and set(actions) <= {"search", "read", "schema", "health"} \
            and draw(st.booleans()):
        ob["inject_filter"] = _FILTER
    if ob:
        rule["obligations"] = ob
    if effect == "require_approval" and draw(st.booleans()):
        rule["approvers"] = {"groups_any_of": [["G1"], ["G2", "Vector-Approve"]],
                             "min_approvals": draw(st.integers(1, 2)),
                             "mode": draw(st.sampled_from(["hold", "async"]))}
    return rule


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    n = draw(st.integers(0, 7))
    doc = {
        "version": 1,
        "change_ticket_header": draw(st.sampled_from(["X-Change-Ticket", "X-Ticket"])),
        "approvers": {"groups_any_of": [["Vector-Approve"]], "expires_after": "30m"},
        "rules": [draw(rules(i)) for i in range(n)],
    }
    try:
        return parse_policy(json.dumps(doc), "random.yaml")
    except PolicyError:
        assume(False)
        raise


# ------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def example() -> Policy:
    """One policy object for every example, so that its memory fills across
    them and later examples are answered from what earlier ones left."""
    return load_policy(EXAMPLE)


Request = tuple[Identity, list[Operation], RequestContext]


def _neighbours(request: Request) -> list[Request]:
    """The request and others that differ from it in one input only (a ticket
    verified or not, another caller in the same groups, another database, a
    later time, no grants, another product), so that a memory keyed on too little is caught."""
    i, ops, c = request
    out = [request]
    if c.change_ticket:
        out.append((i, ops, c.model_copy(update={
            "ticket": TicketCheck(ticket_id=c.change_ticket.strip(), valid=True),
            "verify_tickets": True})))
        out.append((i, ops, c.model_copy(update={"ticket": None, "verify_tickets": False})))
    out.append((replace(i, subject=i.subject + "-2"), ops, c))
    out.append((i, [o.model_copy(update={"database": "other"}) for o in ops], c))
    out.append((i, ops, c.model_copy(update={"now": c.now + timedelta(hours=7, minutes=31),
                                             "grants": []})))
    out.append((i, ops, c.model_copy(update={  # a row filter that fits, or cannot
        "product": "qdrant" if c.product is None else None,
        "path": "/collections/docs/points/1"})))
    return out


def _contributes_as_traced(policy: Policy, identity: Identity, ops: list[Operation],
                           c: RequestContext) -> None:
    """What the memory is keyed on, per request, is what explain() traces: each
    matching rule, what it contributed, and the conditions that failed."""
    parts = _contributions(_compiled(policy), policy, identity, ops, c)
    traced = explain(policy, identity, ops, c).operations
    assert len(traced) == len(parts)
    for trace, got in zip(traced, parts, strict=True):
        assert [(policy.rules[r].id, outcome) for r, outcome, _ in got] == [
            (rt.rule_id, rt.contributed) for rt in trace.rules if rt.matched]
        failed = {rt.rule_id: "; ".join(rt.failed_conditions) for rt in trace.rules}
        for r, outcome, reason in got:
            rule = policy.rules[r]
            if outcome == "deny" and rule.effect != "deny":
                assert reason == failed[rule.id]
            else:
                assert failed[rule.id] == ""


def _same_as_reference(policy: Policy, batch: list[Request]) -> None:
    batch = [n for r in batch for n in _neighbours(r)]
    fast = [evaluate(policy, i, ops, c) for i, ops, c in batch]
    again = [evaluate(policy, i, ops, c) for i, ops, c in reversed(batch)][::-1]
    for (i, ops, c), first, second in zip(batch, fast, again, strict=True):
        _contributes_as_traced(policy, i, ops, c)
        want = _evaluate_reference(policy, i, ops, c)
        assert not any("evaluation failed" in r for r in want.reasons)
        assert first == want
        assert second == want
        assert first.to_event_fields() == want.to_event_fields()
        assert explain(policy, i, ops, c).decision == want


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(requests, min_size=1, max_size=4))
def test_example_policy_decides_as_the_reference(
    example: Policy, batch: list[tuple[Identity, list[Operation], RequestContext]],
) -> None:
    _same_as_reference(example, batch)


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(policy=policies(), batch=st.lists(requests, min_size=1, max_size=4))
def test_random_policies_decide_as_the_reference(
    policy: Policy, batch: list[tuple[Identity, list[Operation], RequestContext]],
) -> None:
    _same_as_reference(policy, batch)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(rule=st.integers(0, 5).flatmap(rules), identity=identities(), op=operations)
def test_compiled_matcher_matches_like_why_not(
    rule: dict[str, Any], identity: Identity, op: Operation,
) -> None:
    rule.pop("conditions", None)
    rule.pop("obligations", None)
    rule.pop("approvers", None)
    rule["effect"] = "allow"
    try:
        policy = parse_policy(json.dumps({"version": 1, "rules": [rule]}))
    except PolicyError:
        assume(False)
        raise
    compiled = _RuleMatcher.of(policy.rules[0])
    assert compiled.matches(identity, op) == (_why_not(policy.rules[0], identity, op) is None)


def test_a_condition_is_checked_on_every_request_not_remembered(example: Policy) -> None:
    """The pipeline rule's max_token_age: the same caller and operation, once
    with a fresh token and once with an old one, from the same memory."""
    op = Operation(action=ActionClass.SEARCH, collection="docs", limit=5)
    fresh = Identity(subject="p", issuer="i", groups=frozenset({"Vector-Pipeline"}),
                     issued_at=NOW - timedelta(minutes=1))
    old = Identity(subject="p", issuer="i", groups=frozenset({"Vector-Pipeline"}),
                   issued_at=NOW - timedelta(minutes=20))
    c = RequestContext(now=NOW)
    for _ in range(2):
        assert evaluate(example, fresh, [op], c).outcome == "allow"
        denied = evaluate(example, old, [op], c)
        assert denied.outcome == "deny" and "20m old" in denied.reason
        later = RequestContext(now=NOW + timedelta(minutes=30))
        assert evaluate(example, fresh, [op], later).outcome == "deny"


def test_a_row_filter_is_checked_on_every_request() -> None:
    """A rule with a row filter and no conditions still depends on the request:
    whether its endpoint can take the filter and the product has one."""
    policy = parse_policy(json.dumps({"version": 1, "rules": [{
        "id": "tenant", "effect": "allow", "subjects": {"authenticated": True},
        "actions": ["search", "read"], "collections": ["*"],
        "obligations": {"inject_filter": _FILTER}}]}))
    who = Identity(subject="a", issuer="i", groups=frozenset({"G1"}))
    op = [Operation(action=ActionClass.READ, collection="docs", ids=["1"])]
    cases: list[tuple[Product | None, str | None, str]] = [
        ("qdrant", "/collections/docs/points/scroll", "allow"),
        ("qdrant", "/collections/docs/points/1", "deny"),
        ("pinecone", "/query", "deny"), (None, None, "allow")]
    for _ in range(2):
        for product, path, outcome in cases:
            c = RequestContext(now=NOW, product=product, path=path)
            d = evaluate(policy, who, op, c)
            assert d == _evaluate_reference(policy, who, op, c)
            assert d.outcome == outcome, (product, path)


def test_a_grant_is_weighed_at_the_request_time(example: Policy) -> None:
    """A data scientist's write needs approval; a grant valid now allows it, the
    same grant past its end does not, whichever was decided first."""
    op = Operation(action=ActionClass.WRITE, collection="docs", ids=["1"])
    who = Identity(subject="alice", issuer="i", groups=frozenset({"Vector-Read"}))
    g = GrantScope(grant_id="g1", actions=["write"], collections=["docs"],
                   valid_from=NOW - timedelta(minutes=5), valid_until=NOW + timedelta(minutes=5))
    for _ in range(2):
        assert evaluate(example, who, [op], RequestContext(now=NOW, grants=[g])).grant_id == "g1"
        late = evaluate(example, who, [op], RequestContext(now=NOW + timedelta(minutes=6),
                                                           grants=[g]))
        assert late.outcome == "require_approval" and late.grant_id is None


_ALLOW_DOCS = """version: 1
rules:
  - id: read-docs
    effect: allow
    subjects: {groups: [Vector-Read]}
    actions: [read]
    collections: ["*"]
"""
_DENY_DOCS = _ALLOW_DOCS + """  - id: docs-closed
    effect: deny
    subjects: {groups: [Vector-Read]}
    actions: ["*"]
    collections: [docs]
"""


async def test_a_reloaded_policy_never_answers_from_the_old_ones_memory(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(_ALLOW_DOCS, encoding="utf-8")
    enforcer = Enforcer(path)
    who = Identity(subject="alice", issuer="i", groups=frozenset({"Vector-Read"}))
    op = [Operation(action=ActionClass.READ, collection="docs", ids=["1"])]
    c = RequestContext(now=NOW)
    old = enforcer.policy
    for _ in range(3):  # remembered by the old policy
        assert evaluate(enforcer.policy, who, op, c).outcome == "allow"
    path.write_text(_DENY_DOCS, encoding="utf-8")
    st_ = path.stat()
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000))
    assert await enforcer.reload_if_changed()
    assert enforcer.policy is not old
    for _ in range(2):
        d = evaluate(enforcer.policy, who, op, c)
        assert d.outcome == "deny" and d.matched_rules == ["read-docs", "docs-closed"]
        assert d.policy_sha256 == enforcer.policy.sha256 != old.sha256
    assert evaluate(old, who, op, c).outcome == "allow"  # each policy its own memory


def test_a_copy_with_other_rules_does_not_reuse_the_compiled_rules() -> None:
    allow, deny = parse_policy(_ALLOW_DOCS), parse_policy(_DENY_DOCS)
    who = Identity(subject="alice", issuer="i", groups=frozenset({"Vector-Read"}))
    op = [Operation(action=ActionClass.READ, collection="docs", ids=["1"])]
    c = RequestContext(now=NOW)
    assert evaluate(allow, who, op, c).outcome == "allow"
    copy = allow.model_copy(update={"rules": deny.rules})
    assert evaluate(copy, who, op, c).outcome == "deny"
    assert evaluate(allow, who, op, c).outcome == "allow"


def test_the_memory_is_bounded_and_still_decides_right(monkeypatch: pytest.MonkeyPatch) -> None:
    from capture import policy as policy_module

    monkeypatch.setattr(policy_module, "_DECISION_CACHE_SIZE", 8)
    monkeypatch.setattr(policy_module, "_MATCH_CACHE_SIZE", 8)
    policy = load_policy(EXAMPLE)
    who = Identity(subject="alice", issuer="i", groups=frozenset({"Vector-Read"}))
    c = RequestContext(now=NOW)
    for i in range(40):
        name = f"restricted-{i}" if i % 3 == 0 else f"docs-{i}"
        op = [Operation(action=ActionClass.READ, collection=name, ids=["1"])]
        assert evaluate(policy, who, op, c) == _evaluate_reference(policy, who, op, c)
        comp = _compiled(policy)
        assert len(comp.decisions) <= 8 and len(comp.matches) <= 8
