"""capture/policy.py: loading with line-numbered errors, the seed's three duties
against examples/policy.yaml, rule semantics, each condition, obligations,
approvals, explain, and the ``embedguard policy`` commands."""

from __future__ import annotations

import hashlib
import json
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from capture import policy as policy_module
from capture.policy import (
    Decision,
    Policy,
    PolicyError,
    RequestContext,
    evaluate,
    explain,
    format_duration,
    load_policy,
    parse_duration,
    parse_policy,
    policy_diff,
    policy_sha256,
)
from capture.types import Identity, Product
from schemas.models import ActionClass, Envelope, Operation, PolicyDecided

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"
NOW = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)  # a Monday, 11:00 in Berlin

A = ActionClass


def ident(*groups: str, sub: str = "u1", age: timedelta = timedelta(minutes=1),
          lifetime: timedelta | None = timedelta(minutes=10), iat: bool = True,
          client_id: str | None = None) -> Identity:
    issued = NOW - age
    return Identity(
        subject=sub, issuer="https://idp.test", groups=frozenset(groups),
        issued_at=issued if iat else None,
        expires_at=issued + lifetime if (lifetime is not None and iat) else None,
        client_id=client_id,
    )


def op(action: ActionClass, collection: str | None = "docs", **kw: Any) -> Operation:
    return Operation(action=action, collection=collection, **kw)


def ctx(**kw: Any) -> RequestContext:
    return RequestContext(now=kw.pop("now", NOW), **kw)


def make(rules: str, head: str = "") -> Policy:
    text = "version: 1\n" + textwrap.dedent(head) + "rules:\n" + textwrap.indent(
        textwrap.dedent(rules), "  ")
    return parse_policy(text, "test.yaml")


@pytest.fixture(scope="module")
def example() -> Policy:
    return load_policy(EXAMPLE)


# ------------------------------------------------------------- the seed duties

TICKET = "0192f0c0-1234-7000-8000-00000000abcd"

SEED = [
    # data scientists (Vector-Read): search and read; upserts and deletes need approval
    ("Vector-Read", A.SEARCH, "docs", {}, timedelta(minutes=1), "allow", "ds-search", "allowed"),
    ("Vector-Read", A.READ, "docs", {}, timedelta(hours=9), "allow", "ds-read", "allowed"),
    ("Vector-Read", A.SCHEMA, None, {}, timedelta(minutes=1), "allow", "ds-read", "allowed"),
    ("Vector-Read", A.WRITE, "docs", {}, timedelta(minutes=1), "require_approval",
     "ds-change-needs-approval", "requires approval by 1 of Vector-Approve"),
    ("Vector-Read", A.DELETE, "docs", {"change_ticket": "CHG-1"}, timedelta(minutes=1),
     "require_approval", "ds-change-needs-approval", "requires approval"),
    ("Vector-Read", A.ADMIN, "docs", {}, timedelta(minutes=1), "deny", None,
     "no rule allows admin on docs for u1 (groups: Vector-Read)"),
    # ops engineers (Vector-Write): write and delete only with a change ticket
    ("Vector-Write", A.WRITE, "docs", {}, timedelta(minutes=1), "deny", "ops-write",
     "rule ops-write needs an X-Change-Ticket header"),
    # (the ticket's approval is checked by the gateway: see test_ticket_verdicts)
    ("Vector-Write", A.WRITE, "docs", {"change_ticket": TICKET}, timedelta(minutes=1),
     "allow", "ops-write", "allowed by rule ops-write"),
    ("Vector-Write", A.DELETE, "docs", {"change_ticket": "please"}, timedelta(minutes=1),
     "deny", "ops-write", "X-Change-Ticket 'please' does not match"),
    ("Vector-Write", A.DELETE, "docs", {"change_ticket": "CHG-1234"}, timedelta(minutes=1),
     "deny", "ops-write", "does not match"),
    ("Vector-Write", A.SEARCH, "docs", {}, timedelta(minutes=1), "deny", None,
     "no rule allows search on docs"),
    # pipelines (Vector-Pipeline): read-only with tokens of at most 15 minutes;
    # writes are held for a human
    ("Vector-Pipeline", A.SEARCH, "docs", {}, timedelta(minutes=14), "allow", "pipeline-read",
     "allowed"),
    ("Vector-Pipeline", A.READ, "docs", {}, timedelta(minutes=20), "deny", "pipeline-read",
     "token is 20m old; rule pipeline-read allows at most 15m"),
    ("Vector-Pipeline", A.WRITE, "docs", {}, timedelta(minutes=2), "require_approval",
     "pipeline-write-held", "requires approval by 1 of Vector-Approve"),
    ("Vector-Pipeline", A.WRITE, "docs", {}, timedelta(minutes=16), "deny",
     "pipeline-write-held", "token is 16m old"),
    ("Vector-Pipeline", A.ADMIN, "docs", {}, timedelta(minutes=1), "deny", None, "no rule"),
    # admin only for Vector-Admin, with a ticket
    ("Vector-Admin", A.ADMIN, "docs", {"change_ticket": "CHG-9"}, timedelta(minutes=1),
     "allow", "admin", "allowed"),
    ("Vector-Admin", A.ADMIN, None, {}, timedelta(minutes=1), "deny", "admin",
     "rule admin needs an X-Change-Ticket header"),
    ("Vector-Write", A.ADMIN, "docs", {"change_ticket": "CHG-9"}, timedelta(minutes=1),
     "deny", None, "no rule allows admin"),
    # health for every authenticated caller; nothing else for strangers
    ("Marketing", A.HEALTH, None, {}, timedelta(minutes=1), "allow", "health", "allowed"),
    ("Marketing", A.SEARCH, "docs", {}, timedelta(minutes=1), "deny", None,
     "no rule allows search on docs for u1 (groups: Marketing)"),
    # guard rail: restricted-* is off limits even for allowed groups
    ("Vector-Read", A.SEARCH, "restricted-hr", {}, timedelta(minutes=1), "deny",
     "restricted-collections", "denied by rule restricted-collections"),
    ("Vector-Write", A.WRITE, "restricted-hr", {"change_ticket": TICKET},
     timedelta(minutes=1), "deny", "restricted-collections", "denied by rule"),
    # unclassified operations never pass
    ("Vector-Admin", A.UNKNOWN, "docs", {"change_ticket": "CHG-1"}, timedelta(minutes=1),
     "deny", None, "unclassified (unknown) operations are never allowed"),
]


@pytest.mark.parametrize(("group", "action", "collection", "context", "age", "outcome",
                          "rule_id", "reason"), SEED)
def test_seed_duties(example: Policy, group: str, action: ActionClass, collection: str | None,
                     context: dict[str, Any], age: timedelta, outcome: str,
                     rule_id: str | None, reason: str) -> None:
    d = evaluate(example, ident(group, age=age), [op(action, collection, limit=10)],
                 ctx(**context))
    assert d.outcome == outcome
    assert d.per_operation[0].rule_id == rule_id
    assert reason in d.reasons[0]
    assert d.status == (200 if outcome == "allow" else 403)
    assert d.error == {"allow": None, "deny": "policy_denied",
                       "require_approval": "approval_required"}[outcome]


def test_example_masks_email_for_data_scientists(example: Policy) -> None:
    d = evaluate(example, ident("Vector-Read"), [op(A.SEARCH, limit=5)], ctx())
    assert d.obligations.mask is not None
    assert d.obligations.mask.detectors == ["email"]
    assert "email" in d.obligations.mask.fields
    assert d.obligations.mask.mode == "placeholder"
    kinds = [(o.kind, json.loads(o.params_json)) for o in d.obligations.to_event()]
    assert kinds == [("mask", {"detectors": ["email"], "fields": ["email"], "paths": [],
                               "mode": "placeholder", "filters": "deny"})]
    # pipelines are not masked
    d = evaluate(example, ident("Vector-Pipeline"), [op(A.SEARCH, limit=5)], ctx())
    assert d.obligations.mask is None


def test_a_mask_refuses_filters_on_masked_fields_unless_every_rule_waives_it() -> None:
    def policy(*waived: bool) -> Policy:
        rules = [{"id": f"r{i}", "effect": "allow", "subjects": {"groups": ["Vector-Read"]},
                  "actions": ["search"], "collections": ["*"],
                  "obligations": {"mask": {"fields": [f"f{i}"],
                                           **({"filters": "allow"} if w else {})}}}
                 for i, w in enumerate(waived)]
        return Policy.model_validate({"version": 1, "rules": rules})

    def merged(*waived: bool) -> str:
        d = evaluate(policy(*waived), ident("Vector-Read"), [op(A.SEARCH, limit=5)], ctx())
        assert d.obligations.mask is not None
        return d.obligations.mask.filters

    assert merged(False) == "deny"  # the default
    assert merged(True) == "allow"
    assert merged(True, False) == "deny"  # one rule that keeps it wins
    assert merged(True, True) == "allow"


def test_example_approvers_are_vector_approve(example: Policy) -> None:
    d = evaluate(example, ident("Vector-Read"), [op(A.WRITE, ids=["1"])], ctx())
    assert d.approval is not None
    assert d.approval.groups_any_of == [["Vector-Approve"]]
    assert d.approval.min_approvals == 1
    assert d.approval.expires_after == timedelta(minutes=30)
    assert d.approval.mode == "hold"
    assert d.obligations.mask is None  # masking comes from read rules, not this one


def test_example_limits_data_scientist_search(example: Policy) -> None:
    d = evaluate(example, ident("Vector-Read"), [op(A.SEARCH, limit=500)], ctx())
    assert d.reasons == ["the request asks for 500 results; rule ds-search allows at most 100"]


# ----------------------------------------------------------- combining rules

BOTH = """\
- id: first
  effect: {first}
  subjects: {{groups: [g]}}
  actions: [write]
  collections: ["*"]
- id: second
  effect: {second}
  subjects: {{groups: [g]}}
  actions: ["*"]
  collections: ["do*"]
"""
APPROVERS = "approvers: {groups_any_of: [[approvers]]}\n"


@pytest.mark.parametrize(
    ("first", "second", "outcome", "rule_id"),
    [
        ("allow", "deny", "deny", "second"),
        ("deny", "allow", "deny", "first"),
        ("allow", "require_approval", "require_approval", "second"),
        ("require_approval", "deny", "deny", "second"),
        ("require_approval", "allow", "require_approval", "first"),
        ("allow", "allow", "allow", "first"),
    ],
)
def test_deny_overrides_approval_overrides_allow(first: str, second: str, outcome: str,
                                                 rule_id: str) -> None:
    p = make(BOTH.format(first=first, second=second), APPROVERS)
    d = evaluate(p, ident("g"), [op(A.WRITE)], ctx())
    assert d.outcome == outcome
    assert d.per_operation[0].rule_id == rule_id
    assert d.matched_rules == ["first", "second"]


def test_failing_condition_of_any_matching_rule_denies() -> None:
    p = make("""\
        - id: strict
          effect: allow
          subjects: {groups: [ops]}
          actions: [write]
          collections: ["*"]
          conditions: {require_change_ticket: true}
        - id: lenient
          effect: allow
          subjects: {groups: [breakglass]}
          actions: [write]
          collections: ["*"]
        """)
    assert evaluate(p, ident("breakglass"), [op(A.WRITE)], ctx()).outcome == "allow"
    d = evaluate(p, ident("ops", "breakglass"), [op(A.WRITE)], ctx())
    assert d.outcome == "deny"
    assert d.reasons == ["rule strict needs an X-Change-Ticket header"]


def test_default_deny_names_action_collection_and_caller() -> None:
    p = make("[]\n")
    d = evaluate(p, ident("g2", "g1", sub="alice"), [op(A.SEARCH)], ctx())
    assert d.outcome == "deny"
    assert d.reasons == ["no rule allows search on docs for alice (groups: g1, g2)"]
    assert d.per_operation[0].rule_id is None
    assert d.matched_rules == []
    d = evaluate(p, ident(sub="bob"), [op(A.HEALTH, None)], ctx())
    assert d.reasons == ["no rule allows health without a collection for bob (groups: none)"]
    d = evaluate(p, ident(), [op(A.READ, "docs", database="prod")], ctx())
    assert "on prod/docs" in d.reasons[0]


def test_no_operations_is_denied() -> None:
    p = make("""\
        - id: all
          effect: allow
          subjects: {authenticated: true}
          actions: ["*"]
          collections: ["*"]
          no_collection: true
        """)
    d = evaluate(p, ident(), [], ctx())
    assert d.outcome == "deny"
    assert d.reasons == ["the request has no operations to allow"]


EVERYTHING = """\
- id: everything
  effect: allow
  subjects: {authenticated: true}
  actions: ["*"]
  collections: ["*"]
  no_collection: true
"""


@pytest.mark.parametrize("collection", ["docs", None, "*"])
def test_unknown_action_is_never_allowed(collection: str | None) -> None:
    p = make(EVERYTHING)
    d = evaluate(p, ident("admin"), [op(A.UNKNOWN, collection, detail="POST /v1/tokenize")],
                 ctx())
    assert d.outcome == "deny"
    assert d.reasons == ["unclassified (unknown) operations are never allowed: "
                         "POST /v1/tokenize"]
    assert d.matched_rules == []


def test_one_unknown_operation_denies_the_whole_request() -> None:
    p = make(EVERYTHING)
    d = evaluate(p, ident(), [op(A.SEARCH), op(A.UNKNOWN)], ctx())
    assert d.outcome == "deny"
    assert [v.outcome for v in d.per_operation] == ["allow", "deny"]
    assert d.reasons == ["operation 1 (unknown docs): unclassified (unknown) operations are "
                         "never allowed"]


@pytest.mark.parametrize(
    ("collections", "no_collection", "collection", "allowed"),
    [
        (["*"], False, None, False),       # globs never match "no collection"
        (["*"], True, None, True),
        ([], True, None, True),
        ([], True, "docs", False),
        (["*"], False, "*", True),         # all collections: only the glob "*"
        (["do*"], False, "*", False),      # (an allow rule; a deny rule matches it)
        (["?ocs"], False, "*", False),
        (["docs"], False, "docs", True),
        (["docs"], False, "docs2", False),
        (["team-[ab]"], False, "team-a", True),
        (["team-[!ab]"], False, "team-a", False),
        (["team-[!ab]"], False, "team-c", True),
        (["idx/*"], False, "idx/ns1", True),
        (["*"], False, "idx/ns1", True),
        (["Doc"], False, "doc", False),    # case-sensitive
    ],
)
def test_collection_matching(collections: list[str], no_collection: bool,
                             collection: str | None, allowed: bool) -> None:
    p = make(f"""\
        - id: r
          effect: allow
          subjects: {{groups: [g]}}
          actions: [read]
          collections: {json.dumps(collections)}
          no_collection: {str(no_collection).lower()}
        """)
    assert evaluate(p, ident("g"), [op(A.READ, collection, ids=["1"])], ctx()).allowed is allowed


def test_databases_restrict_and_need_a_database() -> None:
    p = make("""\
        - id: prod-only
          effect: allow
          subjects: {groups: [g]}
          actions: [read]
          collections: ["*"]
          databases: [prod]
        """)
    assert evaluate(p, ident("g"), [op(A.READ, database="prod")], ctx()).allowed
    assert not evaluate(p, ident("g"), [op(A.READ, database="dev")], ctx()).allowed
    assert not evaluate(p, ident("g"), [op(A.READ)], ctx()).allowed


@pytest.mark.parametrize(
    ("subjects", "identity", "matches"),
    [
        ("{groups: [a, b]}", ident("b"), True),
        ("{groups: [a]}", ident("A"), False),
        ("{users: [alice]}", ident(sub="alice"), True),
        ("{users: [alice]}", ident(sub="mallory"), False),
        ("{service_accounts: [etl-bot]}", ident(sub="etl-bot"), True),
        ("{service_accounts: [etl-bot]}", ident(sub="x", client_id="etl-bot"), False),
        ("{authenticated: true}", ident(), True),
        ("{groups: [a], issuer: 'https://idp.test'}", ident("a"), True),
        ("{groups: [a], issuer: 'https://other'}", ident("a"), False),
    ],
)
def test_subject_matching(subjects: str, identity: Identity, matches: bool) -> None:
    p = make(f"""\
        - id: r
          effect: allow
          subjects: {subjects}
          actions: [read]
          collections: ["*"]
        """)
    assert evaluate(p, identity, [op(A.READ, ids=["1"])], ctx()).allowed is matches


# ----------------------------------------------------------------- conditions

def cond(conditions: str, actions: str = "[search, read, write, delete]") -> Policy:
    return make(f"""\
        - id: c
          effect: allow
          subjects: {{groups: [g]}}
          actions: {actions}
          collections: ["*"]
          conditions: {conditions}
        """)


def berlin(day: int, hh: int, mm: int = 0) -> datetime:
    from zoneinfo import ZoneInfo

    return datetime(2025, 1, 6 + day, hh, mm, tzinfo=ZoneInfo("Europe/Berlin"))


CONDITIONS = [
    # max_ids: summed over the operations the rule matches
    ("{max_ids: 3}", [op(A.WRITE, ids=["1", "2", "3"])], {}, {}, None),
    ("{max_ids: 3}", [op(A.WRITE, ids=["1", "2", "3", "4"])], {}, {},
     "the request touches 4 ids; rule c allows at most 3"),
    ("{max_ids: 3}", [op(A.WRITE, ids=["1", "2"]), op(A.DELETE, ids=["3", "4"])], {}, {},
     "the request touches 4 ids; rule c allows at most 3"),
    ("{max_ids: 3}", [op(A.WRITE, ids=[], vector_count=5)], {}, {},
     "the request touches 5 ids"),
    ("{max_ids: 3}", [op(A.DELETE, ids_known=False, filter_present=True)], {}, {},
     "the request selects by filter (ids unknown); rule c allows at most 3 ids per request"),
    ("{max_ids: 3}", [op(A.WRITE, ids_known=False, bulk=True)], {}, {},
     "the request is a bulk import (ids unknown)"),
    # change ticket
    ("{require_change_ticket: true}", [op(A.WRITE)], {"change_ticket": "CHG-1"}, {}, None),
    ("{require_change_ticket: true}", [op(A.WRITE)], {}, {},
     "rule c needs an X-Change-Ticket header"),
    ("{require_change_ticket: true}", [op(A.WRITE)], {"change_ticket": "   "}, {},
     "rule c needs an X-Change-Ticket header"),
    ("{require_change_ticket: true}", [op(A.WRITE)], {"change_ticket": "C" * 300}, {},
     "longer than 256 characters"),
    ("{change_ticket_pattern: '^CHG-[0-9]+$'}", [op(A.WRITE)], {"change_ticket": "CHG-12"},
     {}, None),
    ("{change_ticket_pattern: '^CHG-[0-9]+$'}", [op(A.WRITE)], {"change_ticket": "CHG-12x"},
     {}, "X-Change-Ticket 'CHG-12x' does not match ^CHG-[0-9]+$ (rule c)"),
    # time window, Europe/Berlin office hours
    ("{time_window: {days: [mon, tue, wed, thu, fri], start: '08:00', end: '18:00', "
     "timezone: Europe/Berlin}}", [op(A.WRITE)], {"now": berlin(0, 17, 59)}, {}, None),
    ("{time_window: {days: [mon, tue, wed, thu, fri], start: '08:00', end: '18:00', "
     "timezone: Europe/Berlin}}", [op(A.WRITE)], {"now": berlin(0, 18, 0)}, {},
     "rule c allows this only mon,tue,wed,thu,fri 08:00–18:00 Europe/Berlin; it is mon "
     "18:00 there"),
    ("{time_window: {days: [mon, tue, wed, thu, fri], start: '08:00', end: '18:00', "
     "timezone: Europe/Berlin}}", [op(A.WRITE)], {"now": berlin(5, 10)}, {}, "it is sat 10:00"),
    # the UTC instant 07:30 is 08:30 in Berlin
    ("{time_window: {start: '08:00', end: '18:00', timezone: Europe/Berlin}}", [op(A.WRITE)],
     {"now": datetime(2025, 1, 6, 7, 30, tzinfo=UTC)}, {}, None),
    ("{time_window: {start: '08:00', end: '18:00'}}", [op(A.WRITE)],
     {"now": datetime(2025, 1, 6, 7, 30, tzinfo=UTC)}, {}, "it is mon 07:30 there"),
    # across midnight: Friday 22:00 to Saturday 06:00 belongs to Friday
    ("{time_window: {days: [fri], start: '22:00', end: '06:00', timezone: Europe/Berlin}}",
     [op(A.WRITE)], {"now": berlin(4, 23)}, {}, None),
    ("{time_window: {days: [fri], start: '22:00', end: '06:00', timezone: Europe/Berlin}}",
     [op(A.WRITE)], {"now": berlin(5, 5, 59)}, {}, None),
    ("{time_window: {days: [fri], start: '22:00', end: '06:00', timezone: Europe/Berlin}}",
     [op(A.WRITE)], {"now": berlin(5, 6, 0)}, {}, "it is sat 06:00"),
    ("{time_window: {days: [fri], start: '22:00', end: '06:00', timezone: Europe/Berlin}}",
     [op(A.WRITE)], {"now": berlin(4, 5)}, {}, "it is fri 05:00"),
    ("{time_window: {days: [fri], start: '22:00', end: '06:00', timezone: Europe/Berlin}}",
     [op(A.WRITE)], {"now": berlin(5, 23)}, {}, "it is sat 23:00"),
    ("{time_window: {start: '20:00', end: '24:00'}}", [op(A.WRITE)],
     {"now": datetime(2025, 1, 6, 23, 59, 59, tzinfo=UTC)}, {}, None),
    # summer time: 08:30 in New York in July is 12:30 UTC
    ("{time_window: {start: '08:00', end: '09:00', timezone: America/New_York}}",
     [op(A.WRITE)], {"now": datetime(2025, 7, 1, 12, 30, tzinfo=UTC)}, {}, None),
    ("{time_window: {start: '08:00', end: '09:00', timezone: America/New_York}}",
     [op(A.WRITE)], {"now": datetime(2025, 1, 6, 12, 30, tzinfo=UTC)}, {}, "it is mon 07:30"),
    # token age
    ("{max_token_age: 15m}", [op(A.READ, ids=["1"])], {}, {"age": timedelta(minutes=15)}, None),
    ("{max_token_age: 15m}", [op(A.READ, ids=["1"])], {}, {"age": timedelta(minutes=-2)}, None),
    ("{max_token_age: 15m}", [op(A.READ, ids=["1"])], {},
     {"age": timedelta(minutes=15, seconds=1)},
     "token is 15m1s old; rule c allows at most 15m"),
    ("{max_token_age: 15m}", [op(A.READ, ids=["1"])], {}, {"iat": False},
     "the token has no issue time (iat); rule c needs tokens at most 15m old"),
    # token lifetime
    ("{max_token_lifetime: 15m}", [op(A.READ, ids=["1"])], {},
     {"lifetime": timedelta(minutes=15)}, None),
    ("{max_token_lifetime: 15m}", [op(A.READ, ids=["1"])], {},
     {"lifetime": timedelta(hours=1)}, "token lives 1h; rule c allows at most 15m"),
    ("{max_token_lifetime: 15m}", [op(A.READ, ids=["1"])], {}, {"lifetime": None},
     "the token lacks iat or exp"),
    # DPoP
    ("{require_dpop: true}", [op(A.READ, ids=["1"])], {"dpop_bound": True}, {}, None),
    ("{require_dpop: true}", [op(A.READ, ids=["1"])], {}, {},
     "rule c needs a DPoP-bound token; this request has a plain bearer token"),
    # max limit / top_k
    ("{max_limit: 100}", [op(A.SEARCH, limit=100)], {}, {}, None),
    ("{max_limit: 100}", [op(A.SEARCH, limit=101)], {}, {},
     "the request asks for 101 results; rule c allows at most 100"),
    ("{max_limit: 100}", [op(A.READ, ids_known=False, filter_present=True)], {}, {},
     "the request sets no limit; rule c allows at most 100 results — set limit/top_k"),
    ("{max_limit: 2}", [op(A.READ, ids=["1", "2"])], {}, {}, None),
    ("{max_limit: 2}", [op(A.READ, ids=["1", "2", "3"])], {}, {},
     "the request asks for 3 results"),
    ("{max_limit: 2}", [op(A.WRITE, ids=["1", "2", "3"])], {}, {}, None),  # not a read
    # max limit bounds every query an operation carries (limit × queries)
    ("{max_limit: 100}", [op(A.SEARCH, limit=100, vector_count=500, detail="query")],
     {"product": "chroma"}, {},
     "the request asks for 500 queries × n_results 100 = 50000 results; rule c allows at "
     "most 100"),
    ("{max_limit: 100}", [op(A.SEARCH, limit=50, vector_count=2, detail="query")],
     {"product": "chroma"}, {}, None),
    ("{max_limit: 100}", [op(A.SEARCH, limit=100, vector_count=500, detail="search")],
     {"product": "milvus"}, {}, "500 queries × limit 100 = 50000 results"),
    ("{max_limit: 100}", [op(A.SEARCH, limit=100, ids=[str(i) for i in range(3)],
                             ids_known=False, detail="search")],
     {"product": "milvus"}, {}, "3 queries × limit 100 = 300 results"),
    ("{max_limit: 100}", [op(A.SEARCH, limit=10, vector_count=20, detail="hybrid_search")],
     {"product": "milvus"}, {}, "20 queries × limit 10 = 200 results"),
    # a Qdrant search's vectors are one query (recommend examples, prefetches)
    ("{max_limit: 100}", [op(A.SEARCH, limit=100, vector_count=3, detail="recommend")],
     {"product": "qdrant"}, {}, None),
    # without a product, every query vector counts
    ("{max_limit: 100}", [op(A.SEARCH, limit=100, vector_count=3)], {}, {},
     "3 queries × limit 100 = 300 results"),
    ("{max_limit: 100}", [op(A.SEARCH, vector_count=3)], {}, {},
     "the request sets no limit"),
    # client networks
    ("{client_networks: [10.0.0.0/8, 'fd00::/8']}", [op(A.WRITE)],
     {"client_address": "10.1.2.3"}, {}, None),
    ("{client_networks: [10.0.0.0/8, 'fd00::/8']}", [op(A.WRITE)],
     {"client_address": "::ffff:10.1.2.3"}, {}, None),
    ("{client_networks: [10.0.0.0/8, 'fd00::/8']}", [op(A.WRITE)],
     {"client_address": "fd00::1"}, {}, None),
    ("{client_networks: [10.0.0.0/8]}", [op(A.WRITE)], {"client_address": "192.168.1.1"}, {},
     "client 192.168.1.1 is outside 10.0.0.0/8 (rule c)"),
    ("{client_networks: [10.0.0.0/8]}", [op(A.WRITE)], {}, {},
     "the client address None is unknown or not an IP; rule c allows only 10.0.0.0/8"),
    ("{client_networks: [10.0.0.0/8]}", [op(A.WRITE)], {"client_address": "host.example"},
     {}, "is unknown or not an IP"),
]


@pytest.mark.parametrize(("conditions", "ops", "context", "who", "failure"), CONDITIONS)
def test_each_condition_passes_and_fails(conditions: str, ops: list[Operation],
                                         context: dict[str, Any], who: dict[str, Any],
                                         failure: str | None) -> None:
    d = evaluate(cond(conditions), ident("g", **who), ops, ctx(**context))
    if failure is None:
        assert d.outcome == "allow", d.reasons
    else:
        assert d.outcome == "deny"
        assert d.per_operation[0].rule_id == "c"
        assert failure in d.per_operation[0].reason


_CHROMA_QUERY = ("/api/v2/tenants/t/databases/d/collections/"
                 "2f3b7c1e-0000-4000-8000-000000000001/query")


def _classified(product: Product, path: str, body: dict[str, Any]) -> list[Operation]:
    from capture.classify import classify
    from capture.types import HttpRequest

    cls = classify(product, HttpRequest(method="POST", path=path,
                                        body=json.dumps(body).encode()),
                   chroma_names={"2f3b7c1e-0000-4000-8000-000000000001": "docs"})
    assert cls.ok, cls.error
    return cls.operations


@pytest.mark.parametrize(
    ("product", "path", "body", "queries", "reason"),
    [
        ("chroma", _CHROMA_QUERY, {"n_results": 100}, "query_embeddings",
         "500 queries × n_results 100 = 50000 results"),
        ("milvus", "/v2/vectordb/entities/search",
         {"collectionName": "docs", "limit": 100}, "data",
         "500 queries × limit 100 = 50000 results"),
    ],
)
def test_max_limit_counts_every_query_of_a_classified_request(
    product: Product, path: str, body: dict[str, Any], queries: str, reason: str,
) -> None:
    """The audit's repro: 500 query vectors with limit 100 passed max_limit 100
    and could return 50000 results."""
    policy = cond("{max_limit: 100}")
    many = _classified(product, path, {**body, queries: [[0.1]] * 500})
    assert many[0].limit == 100 and many[0].vector_count == 500  # the event stays as sent
    d = evaluate(policy, ident("g"), many, ctx(product=product))
    assert d.outcome == "deny"
    assert reason in d.per_operation[0].reason
    one = _classified(product, path, {**body, queries: [[0.1]]})
    assert evaluate(policy, ident("g"), one, ctx(product=product)).allowed


def test_max_limit_counts_the_queries_of_each_hybrid_search_part() -> None:
    body = {"collectionName": "docs", "limit": 10,
            "search": [{"data": [[0.1]] * 20, "limit": 10}, {"data": [[0.2]] * 20}]}
    ops = _classified("milvus", "/v2/vectordb/entities/hybrid_search", body)
    d = evaluate(cond("{max_limit: 100}"), ident("g"), ops, ctx(product="milvus"))
    assert d.outcome == "deny"
    assert "20 queries × limit 10 = 200 results" in d.reasons[0]


def test_every_failing_condition_is_reported() -> None:
    p = cond("{require_change_ticket: true, require_dpop: true, max_token_age: 5m}")
    d = evaluate(p, ident("g", age=timedelta(minutes=6)), [op(A.WRITE)], ctx())
    assert d.reasons == ["rule c needs an X-Change-Ticket header; token is 6m old; rule c "
                         "allows at most 5m; rule c needs a DPoP-bound token; this request "
                         "has a plain bearer token"]


def test_custom_ticket_header_is_named() -> None:
    p = make("""\
        - id: c
          effect: allow
          subjects: {groups: [g]}
          actions: [write]
          collections: ["*"]
          conditions: {require_change_ticket: true}
        """, "change_ticket_header: Change-Request\n")
    d = evaluate(p, ident("g"), [op(A.WRITE)], ctx())
    assert d.reasons == ["rule c needs a Change-Request header"]


def test_conditions_apply_to_approval_rules() -> None:
    p = make("""\
        - id: held
          effect: require_approval
          subjects: {groups: [g]}
          actions: [write]
          collections: ["*"]
          conditions: {max_ids: 2}
        """, APPROVERS)
    assert evaluate(p, ident("g"), [op(A.WRITE, ids=["1"])], ctx()).outcome == "require_approval"
    d = evaluate(p, ident("g"), [op(A.WRITE, ids=["1", "2", "3"])], ctx())
    assert d.outcome == "deny"
    assert d.approval is None


# ---------------------------------------------------------------- obligations

def test_obligations_are_merged_strictly() -> None:
    p = make("""\
        - id: a
          effect: allow
          subjects: {groups: [g]}
          actions: [search]
          collections: ["*"]
          obligations:
            mask: {detectors: [email], fields: [ssn], mode: hmac}
        - id: b
          effect: allow
          subjects: {groups: [g]}
          actions: [search]
          collections: ["*"]
          obligations:
            mask: {detectors: [phone, email], paths: ["data[].email"]}
            strip_vectors: true
            inject_filter: {qdrant: {must: [{key: o, match: {value: "{subject}"}}]}}
        - id: c
          effect: allow
          subjects: {groups: [g]}
          actions: [read]
          collections: ["*"]
          obligations:
            inject_filter: {milvus: "owner == {subject}"}
        """)
    d = evaluate(p, ident("g"), [op(A.SEARCH, limit=1), op(A.READ, limit=1)], ctx())
    assert d.outcome == "allow"
    ob = d.obligations
    assert ob.mask is not None
    assert ob.mask.detectors == ["email", "phone"]
    assert ob.mask.fields == ["ssn"]
    assert ob.mask.paths == ["data[].email"]
    assert ob.mask.mode == "placeholder"  # reveals less than hmac
    assert ob.strip_vectors
    assert [rf.rule_id for rf in ob.row_filters] == ["b", "c"]
    events = ob.to_event()
    assert [e.kind for e in events] == ["mask", "strip_vectors", "inject_filter",
                                        "inject_filter"]
    assert json.loads(events[2].params_json) == {
        "rule_id": "b", "qdrant": {"must": [{"key": "o", "match": {"value": "{subject}"}}]}}


def test_denied_requests_carry_no_obligations() -> None:
    p = make("""\
        - id: a
          effect: allow
          subjects: {groups: [g]}
          actions: [search]
          collections: ["*"]
          obligations: {strip_vectors: true}
        """)
    d = evaluate(p, ident("g"), [op(A.SEARCH), op(A.WRITE)], ctx())
    assert d.outcome == "deny"
    assert d.obligations.to_event() == []
    assert d.to_event_fields()["obligations"] == []


ROW = """\
- id: rls
  effect: allow
  subjects: {groups: [g]}
  actions: [search, read]
  collections: ["*"]
  obligations:
    inject_filter:
      qdrant: {must: [{key: owner, match: {value: "{client_id}"}}]}
"""


@pytest.mark.parametrize(
    ("product", "path", "client_id", "outcome", "reason"),
    [
        ("qdrant", "/collections/docs/points/scroll", "nb", "allow", "allowed"),
        (None, None, "nb", "allow", "allowed"),  # unknown endpoint: the gateway checks later
        ("qdrant", "/collections/docs/points", "nb", "deny",
         "rule rls must add a row filter, but /collections/docs/points takes no row filter"),
        ("chroma", "/api/v2/x", "nb", "deny", "rule rls must add a row filter but has none for "
                                              "chroma"),
        ("qdrant", "/collections/docs/points/scroll", None, "deny",
         "the row filter needs {client_id} but the token has none"),
    ],
)
def test_row_filter_feasibility_is_checked_when_the_endpoint_is_known(
    product: str | None, path: str | None, client_id: str | None, outcome: str, reason: str,
) -> None:
    d = evaluate(make(ROW), ident("g", client_id=client_id), [op(A.READ, limit=5)],
                 ctx(product=product, path=path, method="POST"))
    assert d.outcome == outcome
    assert reason in d.reasons[0]


# ------------------------------------------------------------------ approvals

def test_approvers_are_inherited_and_overridden() -> None:
    p = make("""\
        - id: one
          effect: require_approval
          subjects: {groups: [g]}
          actions: [write]
          collections: ["*"]
        - id: two
          effect: require_approval
          subjects: {groups: [g]}
          actions: [write]
          collections: ["prod-*"]
          approvers: {groups_any_of: [sec, [lead, oncall]], min_approvals: 2, expires_after: 10m}
        """, "approvers: {groups_any_of: [[Vector-Approve]], expires_after: 1h, mode: async}\n")
    one = p.approvers_for(p.rules[0])
    two = p.approvers_for(p.rules[1])
    assert one is not None and two is not None
    assert (one.groups_any_of, one.min_approvals, one.expires_after, one.mode) == (
        [["Vector-Approve"]], 1, timedelta(hours=1), "async")
    assert (two.groups_any_of, two.min_approvals, two.expires_after, two.mode) == (
        [["sec"], ["lead", "oncall"]], 2, timedelta(minutes=10), "async")
    d = evaluate(p, ident("g"), [op(A.WRITE, "prod-x")], ctx())
    assert d.outcome == "require_approval"
    assert d.approval is not None
    # each approval must satisfy both rules
    assert d.approval.groups_any_of == [["Vector-Approve", "sec"],
                                        ["Vector-Approve", "lead", "oncall"]]
    assert d.approval.min_approvals == 2
    assert d.approval.expires_after == timedelta(minutes=10)
    assert d.approval.rule_ids == ["one", "two"]
    assert d.reasons[0].startswith("rule one requires approval by 1 of Vector-Approve; "
                                   "rule two requires approval by 2 of sec or lead+oncall")


# ------------------------------------------------------------- batch requests

def test_each_operation_is_decided_separately(example: Policy) -> None:
    ops = [op(A.WRITE, ids=["3"]), op(A.DELETE, ids=["1"]), op(A.ADMIN)]
    d = evaluate(example, ident("Vector-Write"), ops, ctx(change_ticket=TICKET))
    assert [v.outcome for v in d.per_operation] == ["allow", "allow", "deny"]
    assert d.outcome == "deny"
    assert d.reasons == ["operation 2 (admin docs): no rule allows admin on docs for u1 "
                         "(groups: Vector-Write)"]
    assert d.matched_rules == ["ops-write"]


# ------------------------------------------------------------------ the event

def test_to_event_fields_build_a_policy_decided_event(example: Policy) -> None:
    d = evaluate(example, ident("Vector-Read"), [op(A.SEARCH, limit=3), op(A.WRITE, ids=["1"])],
                 ctx())
    fields = d.to_event_fields()
    env = Envelope(event_id=uuid.uuid4(), type="PolicyDecided", occurred_at=NOW,
                   gateway_id="gw", session_id="s", seq=0, stream_seq=0, prev_hash="0" * 64)
    event = PolicyDecided(envelope=env, **fields)
    assert event.outcome == "require_approval"
    assert event.matched_rules == ["ds-search", "ds-change-needs-approval"]
    assert [(o.index, o.outcome, o.rule_id) for o in event.operation_decisions] == [
        (0, "allow", "ds-search"), (1, "require_approval", "ds-change-needs-approval")]
    assert event.policy_sha256 == example.sha256 == policy_sha256(EXAMPLE.read_text())
    assert [o.kind for o in event.obligations] == ["mask"]


def test_evaluate_fails_closed_on_internal_errors(monkeypatch: pytest.MonkeyPatch,
                                                  example: Policy) -> None:
    def boom(*args: object) -> list[str]:
        raise RuntimeError("bug")

    monkeypatch.setattr(policy_module, "_condition_failures", boom)
    d = evaluate(example, ident("Vector-Write"), [op(A.WRITE)], ctx(change_ticket="CHG-1"))
    assert d.outcome == "deny"
    assert d.reasons == ["policy evaluation failed (RuntimeError); denying"]
    assert explain(example, ident("Vector-Write"), [op(A.WRITE)], ctx()).decision.outcome == \
        "deny"


def test_request_context_needs_an_aware_clock() -> None:
    with pytest.raises(ValueError):
        RequestContext(now=datetime(2025, 1, 1))


# -------------------------------------------------------------------- explain

def test_explain_says_why_each_rule_did_or_did_not_apply(example: Policy) -> None:
    e = explain(example, ident("Vector-Pipeline", age=timedelta(minutes=20)),
                [op(A.READ, ids=["1"])], ctx())
    assert e.decision.outcome == "deny"
    trace = {r.rule_id: r for r in e.operations[0].rules}
    assert trace["pipeline-read"].matched
    assert trace["pipeline-read"].contributed == "deny"
    assert trace["pipeline-read"].failed_conditions == [
        "token is 20m old; rule pipeline-read allows at most 15m"]
    assert trace["ds-read"].why_not == "caller is not among groups Vector-Read"
    assert trace["health"].why_not == "action read is not in [health]"
    assert trace["restricted-collections"].why_not == \
        "collection 'docs' matches none of [restricted-*]"
    text = e.to_text()
    assert "decision DENY (HTTP 403, policy_denied)" in text
    assert "[x] pipeline-read (allow) matched -> deny" in text
    assert json.loads(e.model_dump_json())["decision"]["outcome"] == "deny"


# --------------------------------------------------------- loading and errors

def marked(text: str) -> tuple[str, int]:
    """The policy text and the line holding the ``# <-`` marker."""
    text = textwrap.dedent(text)
    for number, line in enumerate(text.splitlines(), start=1):
        if "# <-" in line:
            return text, number
    raise AssertionError("no marker")


BROKEN = [
    ("wrong type", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [write]
            collections: ["*"]
            conditions:
              max_ids: ten  # <-
        """, "rules[0].conditions.max_ids: expected a whole number, got 'ten'"),
    ("unknown key in a rule", """\
        version: 1
        rules:
          - id: a
            efect: allow  # <-
            subjects: {groups: [g]}
            actions: [write]
            collections: ["*"]
        """, "unknown key 'efect' — did you mean 'effect'?"),
    ("unknown top-level key", """\
        version: 1
        rule:  # <-
          - id: a
        rules: []
        """, "unknown key 'rule' — did you mean 'rules'?"),
    ("unknown condition", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [write]
            collections: ["*"]
            conditions:
              require_ticket: true  # <-
        """, "did you mean 'require_change_ticket'?"),
    ("bad glob", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [read]
            collections:
              - docs
              - "team-[ab"  # <-
        """, "rules[0].collections[1]: glob 'team-[ab' has an unclosed '['"),
    ("double-star glob", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [read]
            collections: ["docs/**"]  # <-
        """, "has '**'"),
    ("bad effect", """\
        version: 1
        rules:
          - id: a
            effect: permit  # <-
            subjects: {groups: [g]}
            actions: [read]
            collections: ["*"]
        """, "rules[0].effect: 'permit' is not allowed here — use 'allow', 'deny' or "
             "'require_approval'"),
    ("duplicate rule id", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [read]
            collections: ["*"]
          - id: a  # <-
            effect: deny
            subjects: {groups: [g]}
            actions: [read]
            collections: ["*"]
        """, "duplicate rule id 'a' (first used by rules[0])"),
    ("bad duration", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [read]
            collections: ["*"]
            conditions: {max_token_age: 15 minutes}  # <-
        """, "'15 minutes' is not a duration — write it like 15m"),
    ("number as duration", """\
        version: 1
        approvers:
          groups_any_of: [[x]]
          expires_after: 900  # <-
        rules: []
        """, "approvers.expires_after: 900 is not a duration"),
    ("YAML syntax error", """\
        version: 1
        rules:
          - id: a
            actions: [read, write  # <-
            effect: allow
        """, "this [ list is not closed"),
    ("unclosed quote", """\
        version: 1
        rules:
          - id: "a  # <-
            effect: allow
        """, "this quoted text is not closed"),
    ("bad indentation", """\
        version: 1
        rules:
          - id: a
            actions: [read]
             effect: allow  # <-
        """, "YAML syntax error: expected <block end>"),
    ("duplicate YAML key", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            effect: deny  # <-
            actions: [read]
            collections: ["*"]
        """, "duplicate key"),
    ("missing effect", """\
        version: 1
        rules:
          - id: a  # <-
            subjects: {groups: [g]}
            actions: [read]
            collections: ["*"]
        """, "rules[0].effect: missing required key 'effect'"),
    ("unknown action", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions:
              - read
              - upsert  # <-
            collections: ["*"]
        """, "'upsert' is not an action"),
    ("unknown is never allowed", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [read, unknown]  # <-
            collections: ["*"]
        """, "'unknown' cannot be named"),
    ("time window start after 23:59", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [read]
            collections: ["*"]
            conditions:
              time_window:
                start: "25:00"  # <-
                end: "06:00"
        """, "'25:00' is not a time of day"),
    ("empty time window", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [read]
            collections: ["*"]
            conditions:
              time_window: {start: "08:00", end: "08:00"}  # <-
        """, "start and end are both 08:00"),
    ("unknown time zone", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [read]
            collections: ["*"]
            conditions:
              time_window:
                start: "08:00"
                end: "18:00"
                timezone: Mars/Olympus  # <-
        """, "unknown time zone 'Mars/Olympus'"),
    ("deny with conditions", """\
        version: 1
        rules:
          - id: a
            effect: deny
            subjects: {groups: [g]}
            actions: [read]
            collections: ["*"]
            conditions: {require_dpop: true}  # <-
        """, "a deny rule always applies and takes no conditions"),
    ("approval without approvers", """\
        version: 1
        rules:
          - id: a
            effect: require_approval  # <-
            subjects: {groups: [g]}
            actions: [write]
            collections: ["*"]
        """, "require_approval needs approvers"),
    ("row filter on writes", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [search, write]
            collections: ["*"]
            obligations:
              inject_filter:  # <-
                chroma: {owner: "{subject}"}
        """, "also allows write"),
    ("bad filter template", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [search]
            collections: ["*"]
            obligations:
              inject_filter:
                milvus: "owner == {user}"  # <-
        """, "unknown placeholder {user}"),
    ("bad network", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [read]
            collections: ["*"]
            conditions:
              client_networks: [10.0.0.1/8]  # <-
        """, "'10.0.0.1/8' is not a network"),
    ("bad ticket pattern", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [write]
            collections: ["*"]
            conditions:
              change_ticket_pattern: "CHG-[0-9"  # <-
        """, "is not a valid regular expression"),
    ("bad detector", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [read]
            collections: ["*"]
            obligations:
              mask:
                detectors: [email, ssn]  # <-
        """, "'ssn' is not allowed here — use 'email', 'phone', 'card' or 'national_id'"),
    ("string for a boolean", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {groups: [g]}
            actions: [read]
            collections: ["*"]
            conditions: {require_dpop: "true"}  # <-
        """, "expected true or false, got 'true'"),
    ("no subjects", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: {}  # <-
            actions: [read]
            collections: ["*"]
        """, "names nobody"),
    ("no collections", """\
        version: 1
        rules:
          - id: a  # <-
            effect: allow
            subjects: {groups: [g]}
            actions: [read]
        """, "matches no collection"),
    ("wrong version", """\
        version: 2  # <-
        rules: []
        """, "version: 2 is not allowed here — use 1"),
    ("missing rules", """\
        version: 1  # <-
        description: nothing
        """, "missing required key 'rules'"),
    ("a list instead of a mapping", """\
        version: 1
        rules:
          - id: a
            effect: allow
            subjects: [g]  # <-
            actions: [read]
            collections: ["*"]
        """, "expected a mapping, got a list"),
    ("a date", """\
        version: 1
        description: 2024-01-01  # <-
        rules: []
        """, "unsupported YAML value"),
    ("bad rule id", """\
        version: 1
        rules:
          - id: "has spaces"  # <-
            effect: allow
            subjects: {groups: [g]}
            actions: [read]
            collections: ["*"]
        """, "'has spaces' is not a valid rule id"),
]


@pytest.mark.parametrize(("name", "text", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_errors_name_file_line_and_fix(name: str, text: str, message: str) -> None:
    body, line = marked(text)
    with pytest.raises(PolicyError) as info:
        parse_policy(body, "bad.yaml")
    first = str(info.value).splitlines()[0]
    assert first.startswith(f"bad.yaml:{line}: "), str(info.value)
    assert message in first
    assert " — " in first  # what is wrong — what to do
    assert info.value.issues[0].line == line


def test_all_problems_are_reported_in_line_order() -> None:
    text = textwrap.dedent("""\
        version: 1
        rules:
          - id: a
            effect: maybe
            subjects: {groups: [g]}
            actions: [fly]
            collections: ["*"]
        """)
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    assert [i.line for i in info.value.issues] == [4, 6]


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "the policy is empty"), ("# only a comment\n", "the policy is empty"),
     ("- a\n- b\n", "must be a mapping"), ("just text\n", "must be a mapping")],
)
def test_empty_or_non_mapping_files(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as info:
        parse_policy(text, "p.yaml")
    assert str(info.value).startswith("p.yaml:1: ")


def test_load_policy_reports_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"version: 1\ndescription: caf\xe9\nrules: []\n")
    with pytest.raises(PolicyError, match=r"latin1.yaml:2: the file is not UTF-8"):
        load_policy(bad)


def test_parsed_policy_knows_its_source_and_hash() -> None:
    text = "version: 1\nrules: []\n"
    p = parse_policy(text, "here.yaml")
    assert p.source == "here.yaml"
    assert p.sha256 == policy_sha256(text)
    assert len(p.sha256) == 64


def test_example_policy_is_valid(example: Policy) -> None:
    assert [r.id for r in example.rules] == [
        "health", "ds-search", "ds-read", "ds-change-needs-approval", "ops-write",
        "ops-inspect", "pipeline-read", "pipeline-write-held", "admin", "admin-inspect",
        "restricted-collections"]


# ----------------------------------------------------------- hashes and diffs

def test_policy_diff_and_hash() -> None:
    old = "version: 1\nrules: []\n"
    new = "version: 1\ndescription: x\nrules: []\n"
    diff = policy_diff(old, new)
    assert diff.startswith("--- a/policy.yaml\n+++ b/policy.yaml\n")
    assert "+description: x\n" in diff
    assert policy_diff(old, old) == ""
    assert "+version: 1" in policy_diff(None, old)
    assert "\\ No newline at end of file" in policy_diff(old, "version: 1")
    assert policy_sha256(old) != policy_sha256(new)
    assert policy_sha256("é") == hashlib.sha256("é".encode()).hexdigest()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("1d2h3m4s", 93784)],
)
def test_durations_round_trip(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize("text", ["", "15", "15 m", "m", "1m1h", "0s", "-5m", "1.5h", 15])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# ----------------------------------------------------------------- properties

_actions = st.sampled_from(list(ActionClass))
_ops = st.builds(
    Operation,
    action=_actions,
    collection=st.one_of(st.none(), st.sampled_from(["docs", "restricted-hr", "*", "", "a/b"])),
    database=st.one_of(st.none(), st.sampled_from(["prod", "default"])),
    ids=st.lists(st.text(max_size=4), max_size=5),
    ids_known=st.booleans(),
    vector_count=st.integers(min_value=0, max_value=10_000),
    filter_present=st.booleans(),
    limit=st.one_of(st.none(), st.integers(min_value=-5, max_value=10_000)),
    bulk=st.booleans(),
)
_groups = st.frozensets(st.sampled_from(["Vector-Read", "Vector-Write", "Vector-Pipeline",
                                         "Vector-Admin", "Vector-Approve", "x"]), max_size=3)
_identities = st.builds(
    Identity, subject=st.text(min_size=1, max_size=8), issuer=st.just("i"), groups=_groups,
    issued_at=st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
    expires_at=st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
)
_contexts = st.builds(
    RequestContext, now=st.datetimes(timezones=st.just(UTC)),
    change_ticket=st.one_of(st.none(), st.text(max_size=300)), dpop_bound=st.booleans(),
    client_address=st.one_of(st.none(), st.text(max_size=10), st.ip_addresses().map(str)),
    product=st.one_of(st.none(), st.sampled_from(["qdrant", "chroma", "milvus"])),
    path=st.one_of(st.none(), st.sampled_from(["/collections/docs/points/scroll", "/x"])),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(identity=_identities, ops=st.lists(_ops, max_size=4), context=_contexts)
def test_property_evaluate_never_raises_and_fails_closed(
    example: Policy, identity: Identity, ops: list[Operation], context: RequestContext,
) -> None:
    d = evaluate(example, identity, ops, context)
    assert isinstance(d, Decision)
    assert not any("evaluation failed" in r for r in d.reasons)  # no hidden bugs
    assert len(d.per_operation) == len(ops)
    if not ops or any(o.action == ActionClass.UNKNOWN for o in ops):
        assert d.outcome == "deny"
    if not ops:
        return
    for o, v in zip(ops, d.per_operation, strict=True):
        if o.collection and o.collection.startswith("restricted-") and \
                identity.groups & {"Vector-Read", "Vector-Write", "Vector-Pipeline"}:
            assert v.outcome == "deny"
    if d.outcome != "allow":
        assert d.status == 403
    assert d.outcome == ("deny" if any(v.outcome == "deny" for v in d.per_operation) else
                         "require_approval" if any(v.outcome == "require_approval"
                                                   for v in d.per_operation) else "allow")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(identity=_identities, ops=st.lists(_ops, max_size=4), context=_contexts)
def test_property_remembered_rule_matches_decide_like_the_full_trace(
    example: Policy, identity: Identity, ops: list[Operation], context: RequestContext,
) -> None:
    """evaluate() remembers which rules match (per caller and operation target);
    explain() works every rule out afresh. Both must decide alike, first time
    and from the memory."""
    traced = explain(example, identity, ops, context).decision
    assert evaluate(example, identity, ops, context) == traced
    assert evaluate(example, identity, ops, context) == traced


# ------------------------------------------------------------------------ CLI

@pytest.fixture
def cli() -> typer.Typer:
    from capture.policy_cli import policy_app

    app = typer.Typer()
    app.add_typer(policy_app, name="policy")
    return app


runner = CliRunner()


def test_cli_check_ok(cli: typer.Typer) -> None:
    r = runner.invoke(cli, ["policy", "check", str(EXAMPLE)])
    assert r.exit_code == 0, r.output
    assert "11 rules" in r.output
    r = runner.invoke(cli, ["policy", "check", str(EXAMPLE), "--json"])
    data = json.loads(r.stdout)
    assert data["ok"] is True
    assert data["sha256"] == policy_sha256(EXAMPLE.read_text())


def test_cli_check_reports_lines(cli: typer.Typer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - id: a\n    effect: permit\n"
                   "    subjects: {groups: [g]}\n    actions: [read]\n    collections: [d]\n")
    r = runner.invoke(cli, ["policy", "check", str(bad)])
    assert r.exit_code == 1
    assert f"{bad}:4: rules[0].effect: 'permit' is not allowed here" in r.output
    r = runner.invoke(cli, ["policy", "check", str(bad), "--json"])
    assert r.exit_code == 1
    errors = json.loads(r.stdout)["errors"]
    assert {"file": str(bad), "line": 4, "where": "rules[0].effect"}.items() <= \
        errors[0].items()


def test_cli_explain_operations(cli: typer.Typer) -> None:
    r = runner.invoke(cli, ["policy", "explain", str(EXAMPLE), "--sub", "pipe", "--groups",
                            "Vector-Pipeline", "--op", "read:docs:1,2", "--token-age", "20m",
                            "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["decision"]["outcome"] == "deny"
    assert data["decision"]["matched_rules"] == ["pipeline-read"]
    assert data["decision"]["reasons"] == [
        "token is 20m old; rule pipeline-read allows at most 15m"]
    r = runner.invoke(cli, ["policy", "explain", str(EXAMPLE), "--sub", "op", "--groups",
                            "Vector-Write,Other", "--op", "write:docs", "--ticket", TICKET])
    assert r.exit_code == 0, r.output
    assert "decision ALLOW (HTTP 200)" in r.output
    assert "operation 0: write docs -> allow by ops-write" in r.output


def test_cli_explain_prints_names_as_typed(cli: typer.Typer) -> None:
    """Emoji codes in a collection name are printed as typed, not as emoji."""
    r = runner.invoke(cli, ["policy", "explain", str(EXAMPLE), "--sub", "op", "--groups",
                            "Vector-Read", "--method", "GET", "--path",
                            "/collections/docs-:skull:-x/points/1"])
    assert r.exit_code == 0, r.output
    assert "docs-:skull:-x" in r.output and "\N{SKULL}" not in r.output


def test_cli_explain_classifies_a_request(cli: typer.Typer, tmp_path: Path) -> None:
    pytest.importorskip("capture.classify", reason="the classifier is not installed yet")
    body = tmp_path / "upsert.json"
    body.write_text(json.dumps({"points": [{"id": 1, "vector": [0.1, 0.2],
                                            "payload": {"email": "a@x.io"}}]}))
    r = runner.invoke(cli, ["policy", "explain", str(EXAMPLE), "--sub", "dana", "--groups",
                            "Vector-Read", "--method", "PUT", "--path",
                            "/collections/docs/points?wait=true", "--body", str(body),
                            "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["product"] == "qdrant"
    assert data["operations"][0]["operation"]["action"] == "write"
    assert data["decision"]["outcome"] == "require_approval"
    assert data["decision"]["per_operation"][0]["rule_id"] == "ds-change-needs-approval"


def test_cli_explain_shows_the_gateway_refusing_a_filter_on_a_masked_field(
    cli: typer.Typer, tmp_path: Path
) -> None:
    """The example masks e-mail for data scientists: the policy allows their
    scroll, and the gateway then refuses one that filters on an e-mail."""
    body = tmp_path / "scroll.json"
    body.write_text(json.dumps({"filter": {"must": [
        {"key": "owner", "match": {"value": "alice@corp.io"}}]}}))
    args = ["policy", "explain", str(EXAMPLE), "--sub", "dana", "--groups", "Vector-Read",
            "--method", "POST", "--path", "/collections/docs/points/scroll", "--body",
            str(body)]
    r = runner.invoke(cli, [*args, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["decision"]["outcome"] == "allow"
    assert data["refused"]["error"] == "masked_field_filter"
    assert "remove that condition" in data["refused"]["reason"]
    text = runner.invoke(cli, args)
    assert "then refused by the gateway: 403 masked_field_filter" in text.output
    body.write_text(json.dumps({"filter": {"must": [
        {"key": "team", "match": {"value": "search"}}]}}))
    assert json.loads(runner.invoke(cli, [*args, "--json"]).stdout)["refused"] is None


def test_cli_explain_needs_a_request_or_operations(cli: typer.Typer) -> None:
    r = runner.invoke(cli, ["policy", "explain", str(EXAMPLE), "--sub", "x"])
    assert r.exit_code == 2
    r = runner.invoke(cli, ["policy", "explain", str(EXAMPLE), "--sub", "x", "--op", "fly:docs"])
    assert r.exit_code == 2


# ------------------------------------------------- verified tickets and grants
# The gateway checks the ticket with the approvals service and passes the
# verdict in; evaluate stays pure (see capture/enforcer.py).

def test_ticket_verdicts(example: Policy) -> None:
    from capture.policy import TicketCheck

    who, ops = ident("Vector-Write"), [op(A.WRITE, ids=["1"])]
    unverified = evaluate(example, who, ops, ctx(change_ticket=TICKET, verify_tickets=True))
    assert unverified.outcome == "deny"
    assert unverified.reasons == [f"change ticket {TICKET!r} could not be verified "
                                  "(rule ops-write)"]
    refused = evaluate(example, who, ops, ctx(
        change_ticket=TICKET, verify_tickets=True,
        ticket=TicketCheck(ticket_id=TICKET, valid=False, error="ticket_exhausted",
                           reason="change ticket x allows 2 operation(s) and 2 were used")))
    assert refused.outcome == "deny" and refused.ticket_id is None
    assert refused.reasons == [f"change ticket {TICKET!r} is refused: change ticket x allows "
                               "2 operation(s) and 2 were used (rule ops-write)"]
    # a verdict on another ticket than the header names does not count
    other = evaluate(example, who, ops, ctx(
        change_ticket=TICKET, verify_tickets=True,
        ticket=TicketCheck(ticket_id="0192f0c0-0000-7000-8000-000000000000", valid=True)))
    assert other.outcome == "deny"
    valid = evaluate(example, who, ops, ctx(
        change_ticket=TICKET, verify_tickets=True,
        ticket=TicketCheck(ticket_id=TICKET, valid=True)))
    assert valid.outcome == "allow" and valid.ticket_id == TICKET
    assert valid.to_event_fields()["ticket_id"] == TICKET
    # the format check still comes first
    junk = evaluate(example, who, ops, ctx(change_ticket="CHG-1", verify_tickets=True,
                                           ticket=TicketCheck(ticket_id="CHG-1", valid=True)))
    assert junk.outcome == "deny" and "does not match" in junk.reason
    # a valid ticket on a request no ticket rule relies on is not recorded as used
    read = evaluate(example, ident("Vector-Write"), [op(A.READ, ids=["1"])], ctx(
        change_ticket=TICKET, verify_tickets=True,
        ticket=TicketCheck(ticket_id=TICKET, valid=True)))
    assert read.outcome == "allow" and read.ticket_id is None


def grant(actions: list[str], collections: list[str], *, gid: str = "g-1",
          start: timedelta = timedelta(minutes=-5), end: timedelta = timedelta(hours=1)) -> Any:
    from capture.policy import GrantScope

    return GrantScope(grant_id=gid, actions=actions, collections=collections,
                      valid_from=NOW + start, valid_until=NOW + end, issued_by="bob")


@pytest.mark.parametrize(
    ("group", "operation", "grants", "outcome", "grant_id"),
    [
        # require_approval is lifted by a grant that covers the operation
        ("Vector-Read", op(A.WRITE, ids=["1"]), [grant(["write"], ["do*"])], "allow", "g-1"),
        # ... and so is the default deny
        ("Marketing", op(A.DELETE, ids=["1"]), [grant(["delete"], ["docs"])], "allow", "g-1"),
        # not outside its actions, collections or window
        ("Vector-Read", op(A.WRITE, ids=["1"]), [grant(["delete"], ["docs"])],
         "require_approval", None),
        ("Vector-Read", op(A.WRITE, ids=["1"]), [grant(["write"], ["other-*"])],
         "require_approval", None),
        ("Vector-Read", op(A.WRITE, ids=["1"]),
         [grant(["write"], ["docs"], start=timedelta(hours=-2), end=timedelta(hours=-1))],
         "require_approval", None),
        ("Vector-Read", op(A.WRITE, ids=["1"]),
         [grant(["write"], ["docs"], start=timedelta(minutes=5))], "require_approval", None),
        ("Marketing", op(A.WRITE, collection=None), [grant(["write"], ["*"])], "deny", None),
        # never a deny rule or a failing condition
        ("Vector-Read", op(A.WRITE, "restricted-hr", ids=["1"]), [grant(["write"], ["*"])],
         "deny", None),
        ("Vector-Write", op(A.WRITE, ids=["1"]), [grant(["write"], ["*"])], "deny", None),
        ("Vector-Read", op(A.UNKNOWN), [grant(["write"], ["*"])], "deny", None),
    ],
)
def test_grants(example: Policy, group: str, operation: Operation, grants: list[Any],
                outcome: str, grant_id: str | None) -> None:
    d = evaluate(example, ident(group), [operation], ctx(grants=grants))
    assert d.outcome == outcome, d.reasons
    assert d.grant_id == grant_id
    if grant_id:
        assert d.approval is None and d.status == 200
        assert d.per_operation[0].reason.startswith("allowed by grant g-1 (jit: ")
        assert d.to_event_fields()["grant_id"] == grant_id


def test_a_grant_for_part_of_a_batch(example: Policy) -> None:
    ops = [op(A.WRITE, ids=["1"]), op(A.WRITE, "notes", ids=["2"])]
    d = evaluate(example, ident("Vector-Read"), ops, ctx(grants=[grant(["write"], ["docs"])]))
    assert [v.outcome for v in d.per_operation] == ["allow", "require_approval"]
    assert d.outcome == "require_approval" and d.approval is not None
    assert d.grant_id == "g-1"


def test_explain_shows_grants_and_the_verified_ticket(example: Policy) -> None:
    from capture.policy import TicketCheck

    text = explain(example, ident("Vector-Read"), [op(A.WRITE, ids=["1"])],
                   ctx(grants=[grant(["write"], ["docs"])])).to_text()
    assert "grant    grant g-1 (jit: write on docs until" in text and "(used)" in text
    text = explain(example, ident("Vector-Write"), [op(A.WRITE, ids=["1"])], ctx(
        change_ticket=TICKET, verify_tickets=True,
        ticket=TicketCheck(ticket_id=TICKET, valid=True))).to_text()
    assert f"ticket   {TICKET} (verified)" in text


def test_cli_explain_with_a_grant(cli: typer.Typer) -> None:
    args = ["policy", "explain", str(EXAMPLE), "--sub", "dana", "--groups", "Vector-Read",
            "--op", "write:docs:1"]
    r = runner.invoke(cli, [*args, "--grant", "write,delete:docs", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["decision"]["outcome"] == "allow"
    assert data["decision"]["grant_id"] == "cli-grant-1"
    assert data["grants"][0]["actions"] == ["write", "delete"]
    r = runner.invoke(cli, [*args, "--grant", "write:docs-*"])
    assert r.exit_code == 0, r.output
    assert "decision REQUIRE_APPROVAL" in r.output and "grant    grant cli-grant-1" in r.output
    r = runner.invoke(cli, [*args, "--grant", "write"])
    assert r.exit_code != 0 and "ACTIONS:GLOBS" in r.output



# -- restrictive rules over every collection, case, and limits (found in review) ----

STAR_DENY = """\
- id: team
  effect: allow
  subjects: {groups: [g]}
  actions: [search, read, write, delete]
  collections: ["*"]
  conditions: {max_limit: 100}
- id: restricted
  effect: deny
  subjects: {groups: [g]}
  actions: ["*"]
  collections: ["Restricted*"]
"""


@pytest.mark.parametrize("action", [A.READ, A.DELETE, A.SEARCH])
def test_a_deny_rule_matches_an_operation_over_every_collection(action: ActionClass) -> None:
    """An operation on "*" (Weaviate objects without a class, Explore, a
    snapshot recovery) reaches the collections a deny rule protects: before,
    only an allow rule on "*" matched it, and the deny never did."""
    p = make(STAR_DENY)
    d = evaluate(p, ident("g"), [op(action, "*", ids=["1"], limit=10)], ctx())
    assert d.outcome == "deny" and d.matched_rules == ["team", "restricted"], d.reasons
    # a named collection outside the deny glob is still allowed
    assert evaluate(p, ident("g"), [op(action, "docs", ids=["1"], limit=10)], ctx()).allowed


def test_a_require_approval_rule_holds_an_operation_over_every_collection() -> None:
    p = make(STAR_DENY.replace("effect: deny", "effect: require_approval"),
             head="approvers: {groups_any_of: [[approvers]]}\n")
    d = evaluate(p, ident("g"), [op(A.WRITE, "*", ids=["1"])], ctx())
    assert d.outcome == "require_approval"


@pytest.mark.parametrize(("glob", "collection"), [
    ("restricted*", "RestrictedHr"), ("Restricted*", "restrictedHr"), ("HR", "hr")])
def test_restrictive_rules_match_names_ignoring_case(glob: str, collection: str) -> None:
    """Weaviate capitalises class names: a deny on "restricted*" never matched
    the class the client wrote as "restrictedHr". Deny and require_approval
    rules ignore case (refusing more); allow rules stay exact."""
    p = make(STAR_DENY.replace('"Restricted*"', json.dumps(glob)))
    assert evaluate(p, ident("g"), [op(A.READ, collection, ids=["1"])], ctx()).outcome == "deny"
    allow_only = make(f"""\
        - id: team
          effect: allow
          subjects: {{groups: [g]}}
          actions: [read]
          collections: [{json.dumps(glob)}]
        """)
    assert not evaluate(allow_only, ident("g"), [op(A.READ, collection, ids=["1"])],
                        ctx()).allowed


def test_weaviate_requests_over_every_class_meet_the_deny_rule(tmp_path: Path) -> None:
    from capture.classify import classify
    from capture.types import HttpRequest

    p = make(STAR_DENY)
    for method, path, query in [
        ("GET", "/v1/objects/5c56c793-69f3-4fbf-87e6-c4bf54c28c26", ()),
        ("DELETE", "/v1/objects/5c56c793-69f3-4fbf-87e6-c4bf54c28c26", ()),
        ("GET", "/v1/objects", (("limit", "10"),)),
        ("GET", "/v1/objects/restrictedHr/5c56c793-69f3-4fbf-87e6-c4bf54c28c26", ()),
    ]:
        c = classify("weaviate", HttpRequest(method=method, path=path, host="", body=b"",
                                             query=query, headers={}))
        assert c.ok, c.error
        d = evaluate(p, ident("g"), c.operations, ctx(product="weaviate"))
        assert d.outcome == "deny", (method, path, d.reasons)


@pytest.mark.parametrize(("limit", "allowed"), [(0, False), (-1, False), (1, True), (100, True)])
def test_max_limit_refuses_a_limit_databases_read_as_none(limit: int, allowed: bool) -> None:
    """Milvus reads limit 0 (or less) as no limit: it passed max_limit."""
    p = make(STAR_DENY)
    d = evaluate(p, ident("g"), [op(A.SEARCH, "docs", ids_known=False, limit=limit)],
                 ctx(product="milvus"))
    assert d.allowed is allowed, d.reasons
    if not allowed:
        assert "positive limit" in d.reasons[0]


def test_nested_yaml_aliases_are_refused_fast() -> None:
    """A few hundred bytes of aliases of aliases expand tenfold per level: six
    levels took 24 s to reject, on the event loop of a reloading gateway
    (found in review). The expansion is bounded."""
    import time

    levels = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 8):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    text = "version: 1\n" + "\n".join(levels) + "\nrules: []\n"
    start = time.monotonic()
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "laughs.yaml")
    assert time.monotonic() - start < 5
    assert "more than 100,000 values" in str(info.value)
