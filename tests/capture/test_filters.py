"""capture/filters.py: row filters are ANDed into every filter of a search or
read, per product; anything that cannot be filtered is refused."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.filters import (
    FilterInjectionError,
    MalformedFilterError,
    check_template,
    filter_target,
    inject_filter,
    inject_filters,
    milvus_expression_problem,
    render_filter,
)
from capture.policy import RowFilter
from capture.types import Identity, Product

ALICE = Identity(subject="alice", issuer="https://idp", groups=frozenset({"team-b", "team-a"}),
                 client_id="notebook")
Q_MINE = {"must": [{"key": "owner", "match": {"value": "{subject}"}}]}
Q_MINE_ALICE = {"must": [{"key": "owner", "match": {"value": "alice"}}]}
Q_OLD = {"must": [{"key": "lang", "match": {"value": "en"}}]}
T = "/api/v2/tenants/default_tenant/databases/default_database/collections/" \
    "2f3b7c1e-0000-4000-8000-000000000001"


@pytest.mark.parametrize(
    ("product", "path", "body", "spec", "expected"),
    [
        # --- qdrant: filter ANDed with must; absent/null/empty filters replaced
        ("qdrant", "/collections/docs/points/query", {"query": [0.1], "limit": 3},
         Q_MINE, {"query": [0.1], "limit": 3, "filter": Q_MINE_ALICE}),
        ("qdrant", "/collections/docs/points/query", {"query": [0.1], "filter": None},
         Q_MINE, {"query": [0.1], "filter": Q_MINE_ALICE}),
        ("qdrant", "/collections/docs/points/search", {"vector": [0.1], "filter": {}},
         Q_MINE, {"vector": [0.1], "filter": Q_MINE_ALICE}),
        ("qdrant", "/collections/docs/points/scroll", {"filter": Q_OLD, "limit": 10},
         Q_MINE, {"filter": {"must": [Q_OLD, Q_MINE_ALICE]}, "limit": 10}),
        ("qdrant", "/collections/docs/points/count", {"exact": True},
         Q_MINE, {"exact": True, "filter": Q_MINE_ALICE}),
        ("qdrant", "/collections/docs/facet", {"key": "city", "filter": Q_OLD},
         Q_MINE, {"key": "city", "filter": {"must": [Q_OLD, Q_MINE_ALICE]}}),
        ("qdrant", "/collections/docs/points/recommend/groups/", {"positive": [[0.1, 0.2]],
                                                                  "group_by": "doc"},
         Q_MINE, {"positive": [[0.1, 0.2]], "group_by": "doc", "filter": Q_MINE_ALICE}),
        ("qdrant", "/collections/docs/points/search/matrix/pairs", {"sample": 10},
         Q_MINE, {"sample": 10, "filter": Q_MINE_ALICE}),
        ("qdrant", "/collections/docs/shards/3/points/scroll", {},
         Q_MINE, {"filter": Q_MINE_ALICE}),
        # --- chroma: where with $and
        ("chroma", T + "/query", {"query_embeddings": [[0.1]], "where": {"u": "1"}},
         {"owner": "{subject}"},
         {"query_embeddings": [[0.1]], "where": {"$and": [{"u": "1"}, {"owner": "alice"}]}}),
        ("chroma", T + "/get", {"ids": ["a"]}, {"team": {"$in": "{groups}"}},
         {"ids": ["a"], "where": {"team": {"$in": ["team-a", "team-b"]}}}),
        ("chroma", T + "/search",
         {"searches": [{"filter": {"k": 1}}, {"rank": {}}]}, {"owner": "{subject}"},
         {"searches": [{"filter": {"$and": [{"k": 1}, {"owner": "alice"}]}},
                       {"rank": {}, "filter": {"owner": "alice"}}]}),
        # --- pinecone: filter with $and
        ("pinecone", "/query", {"vector": [0.1], "topK": 3, "filter": {"genre": {"$eq": "x"}}},
         {"owner": {"$eq": "{subject}"}},
         {"vector": [0.1], "topK": 3,
          "filter": {"$and": [{"genre": {"$eq": "x"}}, {"owner": {"$eq": "alice"}}]}}),
        ("pinecone", "/vectors/fetch_by_metadata", {"namespace": "ns"},
         {"owner": "{subject}"}, {"namespace": "ns", "filter": {"owner": "alice"}}),
        ("pinecone", "/records/namespaces/ns1/search",
         {"query": {"top_k": 3, "inputs": {"text": "hi"}}}, {"owner": "{subject}"},
         {"query": {"top_k": 3, "inputs": {"text": "hi"}, "filter": {"owner": "alice"}}}),
        # --- weaviate REST: where with And operands
        ("weaviate", "/v1/search/Doc/near-text",
         {"query": "q", "where": {"path": ["lang"], "operator": "Equal", "valueText": "en"}},
         {"path": ["owner"], "operator": "Equal", "valueText": "{subject}"},
         {"query": "q", "where": {"operator": "And", "operands": [
             {"path": ["lang"], "operator": "Equal", "valueText": "en"},
             {"path": ["owner"], "operator": "Equal", "valueText": "alice"}]}}),
        ("weaviate", "/v1/aggregate/Doc", {},
         {"path": ["team"], "operator": "ContainsAny", "valueTextArray": "{groups}"},
         {"where": {"path": ["team"], "operator": "ContainsAny",
                    "valueTextArray": ["team-a", "team-b"]}}),
        # --- milvus: expressions joined with and; literals quoted
        ("milvus", "/v2/vectordb/entities/search", {"collectionName": "docs", "data": [[0.1]],
                                                    "filter": "age > 30"},
         "owner == {subject}",
         {"collectionName": "docs", "data": [[0.1]],
          "filter": '(age > 30) and (owner == "alice")'}),
        ("milvus", "/v2/vectordb/entities/query", {"collectionName": "docs", "filter": ""},
         "team in {groups}", {"collectionName": "docs", "filter": 'team in ["team-a", "team-b"]'}),
        ("milvus", "/v2/vectordb/entities/hybrid_search",
         {"search": [{"data": [[0.1]], "filter": "a == 1"}, {"data": [[0.2]]}]},
         "owner == {subject}",
         {"search": [{"data": [[0.1]], "filter": '(a == 1) and (owner == "alice")'},
                     {"data": [[0.2]], "filter": 'owner == "alice"'}]}),
    ],
)
def test_inject_ands_the_filter_and_keeps_the_existing_one(
    product: Product, path: str, body: dict[str, Any], spec: Any, expected: dict[str, Any],
) -> None:
    before = copy.deepcopy(body)
    out = inject_filter(product, path, body, spec, ALICE)
    assert out == expected
    assert body == before  # the input is not modified


def test_qdrant_prefetch_is_filtered_at_every_level() -> None:
    body: dict[str, Any] = {"query": {"fusion": "rrf"}, "filter": Q_OLD,
            "prefetch": [{"query": [0.1], "prefetch": {"query": [0.2], "filter": Q_OLD}},
                         {"query": [0.3]}]}
    out = inject_filter("qdrant", "/collections/docs/points/query", body, Q_MINE, ALICE)
    assert out["filter"] == {"must": [Q_OLD, Q_MINE_ALICE]}
    assert out["prefetch"][0]["filter"] == Q_MINE_ALICE
    assert out["prefetch"][0]["prefetch"]["filter"] == {"must": [Q_OLD, Q_MINE_ALICE]}
    assert out["prefetch"][1]["filter"] == Q_MINE_ALICE
    assert "filter" not in body["prefetch"][1]  # untouched input


def test_qdrant_batch_filters_every_search() -> None:
    body = {"searches": [{"query": [0.1], "filter": Q_OLD},
                         {"query": [0.2], "prefetch": {"query": [0.3]}}]}
    out = inject_filter("qdrant", "/collections/docs/points/query/batch", body, Q_MINE, ALICE)
    assert out["searches"][0]["filter"] == {"must": [Q_OLD, Q_MINE_ALICE]}
    assert out["searches"][1]["filter"] == Q_MINE_ALICE
    assert out["searches"][1]["prefetch"]["filter"] == Q_MINE_ALICE


def test_rendered_filters_are_not_shared_objects() -> None:
    body: dict[str, Any] = {"searches": [{}, {}]}
    out = inject_filter("qdrant", "/collections/d/points/search/batch", body, Q_MINE, ALICE)
    assert out["searches"][0]["filter"] is not out["searches"][1]["filter"]


@pytest.mark.parametrize(
    ("product", "path", "body"),
    [
        ("qdrant", "/collections/docs/points", {"ids": [1, 2]}),  # retrieve by id
        ("qdrant", "/collections/docs/points/5", {}),
        ("qdrant", "/collections/docs/points/delete", {"filter": {}}),  # never deletes
        ("qdrant", "/collections/docs/points/query/groups",
         {"group_by": "d", "with_lookup": {"collection": "other"}}),
        ("chroma", T + "/delete", {"where": {"a": 1}}),
        ("chroma", T + "/count", {}),
        ("pinecone", "/vectors/fetch", {}),
        ("pinecone", "/vectors/delete", {"filter": {"a": 1}}),
        ("weaviate", "/v1/graphql", {"query": "{ Get { Doc { t } } }"}),
        ("weaviate", "/v1/objects/Doc/6b1b5c3e-6f0e-4b6a-9a57-3f3c8f0b2a11", {}),
        ("milvus", "/v2/vectordb/entities/get", {"id": [1]}),
        ("milvus", "/v2/vectordb/entities/delete", {"id": [1]}),
        ("qdrant", "/collections/docs/points/query", {"filter": "owner = 1"}),  # malformed
        ("milvus", "/v2/vectordb/entities/search", {"filter": {"a": 1}}),
        ("chroma", T + "/search", {"searches": {"filter": {}}}),
        ("pinecone", "/records/namespaces/ns/search", {"fields": ["a"]}),  # no query object
        ("qdrant", "/collections/docs/points/query", {"prefetch": [1]}),
    ],
)
def test_unfilterable_requests_are_refused(product: Product, path: str, body: Any) -> None:
    spec: Any = "owner == {subject}" if product == "milvus" else {"owner": "{subject}"}
    if product == "qdrant":
        spec = Q_MINE
    with pytest.raises(FilterInjectionError):
        inject_filter(product, path, body, spec, ALICE)


def test_filter_target_reports_why() -> None:
    assert filter_target("qdrant", "/collections/docs/points/scroll") is None
    assert "takes no row filter" in (filter_target("qdrant", "/collections/docs/points") or "")
    assert "product" in (filter_target("pgvector", "/x") or "")


def test_row_filter_model_picks_the_product() -> None:
    rf = RowFilter(qdrant=Q_MINE, milvus="owner == {subject}")
    out = inject_filter("milvus", "/v2/vectordb/entities/query", {"filter": "x > 1"}, rf, ALICE)
    assert out["filter"] == '(x > 1) and (owner == "alice")'
    with pytest.raises(FilterInjectionError, match="no chroma form"):
        inject_filter("chroma", T + "/query", {}, rf, ALICE)


@pytest.mark.parametrize("body", [[1, 2], "text", None, 3])
def test_non_object_bodies_are_refused(body: Any) -> None:
    with pytest.raises(FilterInjectionError, match="not a JSON object"):
        inject_filters("qdrant", "/collections/d/points/scroll", body, [Q_MINE], ALICE)
    with pytest.raises(FilterInjectionError, match="not a JSON object"):
        inject_filter("qdrant", "/collections/d/points/scroll", body, Q_MINE, ALICE)


def test_several_filters_are_all_anded() -> None:
    out = inject_filters("chroma", T + "/query", {"where": {"a": 1}},
                         [{"owner": "{subject}"}, {"team": {"$in": "{groups}"}}], ALICE)
    assert out["where"] == {"$and": [{"$and": [{"a": 1}, {"owner": "alice"}]},
                                     {"team": {"$in": ["team-a", "team-b"]}}]}


# ---------------------------------------------------------------- templates

def test_json_templates_are_values_not_structure() -> None:
    evil = Identity(subject='x"}, {"$or": [{}]', issuer="i", groups=frozenset({"g"}))
    out = render_filter({"owner": "{subject}", "tag": "user:{subject}:{{literal}}"},
                        evil, "chroma")
    assert out == {"owner": 'x"}, {"$or": [{}]', "tag": 'user:x"}, {"$or": [{}]:{literal}'}


@pytest.mark.parametrize(
    "subject",
    ['bob" or 1 == 1 or owner == "', "back\\slash", 'quote"', "ünïcode"],
)
def test_milvus_literals_are_escaped(subject: str) -> None:
    who = Identity(subject=subject, issuer="i")
    out = render_filter("owner == {subject}", who, "milvus")
    assert isinstance(out, str)
    literal = out.removeprefix("owner == ")
    assert json.loads(literal) == subject  # one complete string literal


@pytest.mark.parametrize("subject", ["a{b}", "tab\there", "nl\n"])
def test_milvus_refuses_unsafe_values(subject: str) -> None:
    with pytest.raises(FilterInjectionError):
        render_filter("owner == {subject}", Identity(subject=subject, issuer="i"), "milvus")


def test_missing_identity_value_refuses() -> None:
    with pytest.raises(FilterInjectionError, match="client_id"):
        render_filter({"c": "{client_id}"}, Identity(subject="s", issuer="i"), "qdrant")


def test_empty_groups_match_nothing_rather_than_everything() -> None:
    out = render_filter({"team": {"$in": "{groups}"}}, Identity(subject="s", issuer="i"),
                        "chroma")
    assert out == {"team": {"$in": []}}


@pytest.mark.parametrize(
    ("spec", "product", "problem"),
    [
        ({"owner": "{user}"}, "qdrant", "unknown placeholder {user}"),
        ({"owner": "team-{groups}"}, "chroma", "whole value"),
        ("owner == '{subject}'", "milvus", "without quotes"),
        ("owner == {nope}", "milvus", "unknown placeholder"),
        ({}, "qdrant", "non-empty mapping"),
        ("", "milvus", "non-empty expression"),
        ({"a": "x"}, "milvus", "expression string"),
    ],
)
def test_check_template_problems(spec: Any, product: Product, problem: str) -> None:
    assert any(problem in p for p in check_template(spec, product))


# ---------------------------------------------------------------- properties

_json_filter = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=12,
)


@settings(max_examples=200)
@given(existing=st.dictionaries(st.text(min_size=1, max_size=5), _json_filter, min_size=1,
                                max_size=3),
       product=st.sampled_from(["qdrant", "chroma", "pinecone", "weaviate"]))
def test_property_existing_filter_is_kept_verbatim(existing: dict[str, Any],
                                                   product: Product) -> None:
    path = {"qdrant": "/collections/c/points/scroll", "chroma": T + "/get",
            "pinecone": "/query", "weaviate": "/v1/aggregate/C"}[product]
    field = {"qdrant": "filter", "chroma": "where", "pinecone": "filter",
             "weaviate": "where"}[product]
    mine = {"owner": "{subject}"}
    out = inject_filter(product, path, {field: existing}, mine, ALICE)
    combined = out[field]
    parts = combined.get("must") or combined.get("$and") or combined.get("operands")
    assert parts == [existing, {"owner": "alice"}]


# ------------------------------------------------- the client's filter cannot escape

MILVUS_PATHS = {
    "search": "/v2/vectordb/entities/search",
    "query": "/v2/vectordb/entities/query",
    "hybrid": "/v2/vectordb/entities/hybrid_search",
    "advanced": "/v2/vectordb/entities/advanced_search",
}
TEAM = "team in {groups}"
TEAM_A = Identity(subject="alice", issuer="i", groups=frozenset({"team-a"}))


def _milvus_body(kind: str, flt: Any) -> tuple[str, dict[str, Any], str]:
    """A Milvus body whose (only, or second sub-request's) filter is ``flt``, and
    where that filter sits."""
    if kind in ("hybrid", "advanced"):
        body = {"collectionName": "docs",
                "search": [{"data": [[0.1]], "filter": "a == 1"}, {"data": [[0.2]], "filter": flt}]}
        return MILVUS_PATHS[kind], body, "body.search[1].filter"
    return MILVUS_PATHS[kind], {"collectionName": "docs", "filter": flt}, "body.filter"


@pytest.mark.parametrize("kind", list(MILVUS_PATHS))
@pytest.mark.parametrize(
    ("flt", "problem"),
    [
        # the audit's repro: "and" binds tighter than "or" in Milvus
        ('team == "team-b") or (1 == 1', "')' at character 17 closes nothing"),
        ("1 == 1) or (1 == 1", "')' at character 7 closes nothing"),
        ("(team == 'a'", "'(' at character 1 is never closed"),
        ('team in ["a", "b"', "'[' at character 9 is never closed"),
        ("a in [1, 2)", "')' at character 11 does not close the '['"),
        ('team == "a) or (1 == 1', 'literal opened by " at character 9 is never closed'),
        ("team == 'a\\' or 1 == 1", "literal opened by ' at character 9 is never closed"),
        ('x == "a\n") or ("', "runs into a line break at character 8"),
        ('x == "a\\', 'literal opened by " at character 6 is never closed'),
        ("{t}) or (1 == 1", "')' at character 4 closes nothing"),
    ],
)
def test_milvus_client_filter_must_be_one_expression(kind: str, flt: str, problem: str) -> None:
    path, body, where = _milvus_body(kind, flt)
    with pytest.raises(MalformedFilterError) as err:
        inject_filter("milvus", path, body, TEAM, TEAM_A)
    assert str(err.value).startswith(f"{where} is not one self-contained Milvus expression")
    assert problem in str(err.value)
    assert "send a single expression" in str(err.value)


@pytest.mark.parametrize("kind", list(MILVUS_PATHS))
@pytest.mark.parametrize(
    "flt",
    [
        'team == "team-b) or (1 == 1"',          # brackets inside a literal are text
        "name == 'it\\'s (here'",
        'tag == "\\"])"',
        'meta["k)"] == r"\\d+(" and n in [1, (2)]',
        "age > {min} and id in {ids}",            # template values come from exprParams
        '"中文)" == name',
        "a == 1\nand b == 2",                     # a line break outside literals is space
    ],
)
def test_milvus_well_formed_filters_are_wrapped_whole(kind: str, flt: str) -> None:
    path, body, where = _milvus_body(kind, flt)
    out = inject_filter("milvus", path, body, TEAM, TEAM_A)
    got = out["search"][1]["filter"] if where.startswith("body.search") else out["filter"]
    assert got == f'({flt}) and (team in ["team-a"])'


def _lex_depths(expr: str) -> list[int]:
    """An independent model of Milvus' lexer (Plan.g4): the bracket depth at
    each character outside string literals (-1 inside one), or raise ValueError
    when it cannot lex the text (an unterminated literal)."""
    depths: list[int] = []
    depth, i = 0, 0
    while i < len(expr):
        ch = expr[i]
        if ch in "\"'":
            j = i + 1
            while j < len(expr) and expr[j] != ch:
                if expr[j] in "\r\n":
                    raise ValueError("line break in a literal")
                j += 2 if expr[j] == "\\" else 1
            if j >= len(expr):
                raise ValueError("unterminated literal")
            depths.extend([-1] * (j + 1 - i))
            i = j + 1
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        depths.append(depth)
        i += 1
    return depths


_expr_text = st.text(alphabet="()[]{}\"'\\ aor=1\n", max_size=24)


@settings(max_examples=600)
@given(existing=_expr_text)
def test_property_no_milvus_filter_reaches_the_row_filter(existing: str) -> None:
    """Whatever the client sends: either it is refused, or the combined
    expression is ``(existing)`` as one operand, then ``and``, then the row
    filter at depth 0 (nothing the client wrote is open around it)."""
    try:
        out = inject_filter("milvus", MILVUS_PATHS["query"], {"filter": existing}, TEAM, TEAM_A)
    except MalformedFilterError:
        return
    combined = out["filter"]
    if not existing.strip():
        assert combined == 'team in ["team-a"]'
        return
    depths = _lex_depths(combined)
    close = len(existing) + 1  # the ')' that ends the client's operand
    assert combined[close] == ")" and depths[close] == 0 and depths[0] == 1
    assert min(depths[1:close] or [1]) >= -1
    assert all(d >= 1 or d == -1 for d in depths[1:close])
    assert combined[close:].startswith(") and (team in ")
    assert depths[close + 6] == 1 and depths[-1] == 0


def test_milvus_expression_problem_names_the_place() -> None:
    assert milvus_expression_problem('a == "x"') is None
    assert milvus_expression_problem("a == {v}") is None
    assert milvus_expression_problem("a == {v}", templates=False) == (
        "'{' at character 6 starts a Milvus template variable, whose value the request's "
        "exprParams would choose")
    assert milvus_expression_problem("(a") == "the '(' at character 1 is never closed"


@pytest.mark.parametrize(
    ("product", "path", "body", "key"),
    [
        # Go's encoding/json matches keys case-insensitively and the last one wins
        ("milvus", MILVUS_PATHS["query"], {"filter": "a == 1", "FILTER": "1 == 1"}, "'FILTER'"),
        ("milvus", MILVUS_PATHS["query"], {"Filter": "1 == 1"}, "'Filter'"),
        ("milvus", MILVUS_PATHS["hybrid"],
         {"search": [], "\u017fearch": [{"data": [[0.1]], "filter": "1 == 1"}]}, "'\u017fearch'"),
        ("milvus", MILVUS_PATHS["hybrid"],
         {"search": [{"data": [[0.1]], "f\u0131lter": "1 == 1"}]}, "'f\u0131lter'"),
        ("weaviate", "/v1/search/Doc/near-text", {"query": "q", "where": {}, "WHERE": {}},
         "'WHERE'"),
        ("weaviate", "/v1/aggregate/Doc", {"Where": {"path": ["a"]}}, "'Where'"),
        ("qdrant", "/collections/d/points/query",
         {"prefetch": {"query": [0.1], "Filter": {}}}, "'Filter'"),
        ("qdrant", "/collections/d/points/query", {"query": [0.1], "PREFETCH": {}}, "'PREFETCH'"),
        ("chroma", T + "/search", {"searches": [], "Searches": [{}]}, "'Searches'"),
        ("pinecone", "/query", {"vector": [0.1], "queries": [{"FILTER": {}}]}, "'FILTER'"),
    ],
)
def test_keys_that_fold_onto_the_filter_field_are_refused(
    product: Product, path: str, body: dict[str, Any], key: str,
) -> None:
    spec: Any = {"milvus": TEAM, "qdrant": Q_MINE, "weaviate": {"path": ["o"]}}.get(
        product, {"owner": "{subject}"})
    with pytest.raises(MalformedFilterError, match=f"has the key {key}"):
        inject_filter(product, path, body, spec, ALICE)


def test_pinecone_queries_each_get_the_row_filter() -> None:
    """A ``queries[]`` item's own filter replaces the request-level one."""
    body: dict[str, Any] = {"filter": {"a": 1}, "topK": 3,
            "queries": [{"values": [0.1]}, {"values": [0.2], "filter": {}},
                        {"values": [0.3], "filter": {"b": 2}}]}
    out = inject_filter("pinecone", "/query", body, {"owner": "{subject}"}, ALICE)
    mine = {"owner": "alice"}
    assert out["filter"] == {"$and": [{"a": 1}, mine]}
    assert [q["filter"] for q in out["queries"]] == [
        {"$and": [{"a": 1}, mine]}, mine, {"$and": [{"b": 2}, mine]}]
    assert "filter" not in body["queries"][0]  # the input is not modified
    with pytest.raises(MalformedFilterError, match=r"body.queries\[0\] must be an object"):
        inject_filter("pinecone", "/query", {"queries": [1]}, {"o": "{subject}"}, ALICE)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("owner == {subject}) or (1 == 1", "')' at character 19 closes nothing"),
        ("(team in {groups}", "'(' at character 1 is never closed"),
        ('owner == "x', "never closed"),
        ("owner == {{who}}", "starts a Milvus template variable"),
    ],
)
def test_milvus_policy_filter_must_be_one_expression(spec: str, problem: str) -> None:
    problems = check_template(spec, "milvus")
    assert any("one self-contained expression" in p and problem in p for p in problems), problems



SEEDED = [
    # (product, path, body, where the id is): a search whose query input is a
    # record id: the database reads that record without the row filter (found
    # in review: its existence and, through the scores, its vector leaked)
    ("qdrant", "/collections/docs/points/query", {"query": 42}, "body.query"),
    ("qdrant", "/collections/docs/points/query",
     {"query": "5c56c793-69f3-4fbf-87e6-c4bf54c28c26"}, "body.query"),
    ("qdrant", "/collections/docs/points/query", {"query": {"nearest": 42}},
     "body.query.nearest"),
    ("qdrant", "/collections/docs/points/query",
     {"query": {"recommend": {"positive": [[0.1, 0.2]], "negative": [43]}}},
     "body.query.recommend.negative[0]"),
    ("qdrant", "/collections/docs/points/query",
     {"query": {"discover": {"target": [0.1, 0.2], "context": [{"positive": 7,
                                                                "negative": [0.2, 0.1]}]}}},
     "body.query.discover.context[0].positive"),
    ("qdrant", "/collections/docs/points/query",
     {"query": {"context": [{"positive": [0.1], "negative": 9}]}},
     "body.query.context[0].negative"),
    ("qdrant", "/collections/docs/points/query",
     {"query": [0.1, 0.2], "prefetch": [{"query": [0.3, 0.1]}, {"query": 42}]},
     "body.prefetch[1].query"),
    ("qdrant", "/collections/docs/points/query",
     {"query": {"recommend": {"positive": [[0.1, 0.2]]}}, "lookup_from": {"collection": "hr"}},
     "body.lookup_from"),
    ("qdrant", "/collections/docs/points/query/batch",
     {"searches": [{"query": [0.1]}, {"query": 42}]}, "body.searches[1].query"),
    ("qdrant", "/collections/docs/points/recommend", {"positive": [42]}, "body.positive[0]"),
    ("qdrant", "/collections/docs/points/discover",
     {"target": 42, "context": [{"positive": [0.1], "negative": [0.2]}]}, "body.target"),
    ("pinecone", "/query", {"id": "hr-secret-1", "topK": 3}, "body.id"),
    ("pinecone", "/records/namespaces/ns/search", {"query": {"id": "hr-1", "top_k": 3}},
     "body.query.id"),
    ("weaviate", "/v1/search/Doc/near-object", {"id": "5c56c793-69f3-4fbf-87e6-c4bf54c28c26"},
     "near-object"),
    ("weaviate", "/v1/search/Doc/near-text",
     {"concepts": ["x"], "moveTo": {"objects": [{"id": "5c56c793-69f3-4fbf-87e6-c4bf54c28c26"}],
                                     "force": 0.5}}, "body.moveTo.objects"),
    ("milvus", "/v2/vectordb/entities/search", {"collectionName": "docs", "ids": [42]},
     "body.ids"),
    ("milvus", "/v2/vectordb/entities/hybrid_search",
     {"collectionName": "docs", "search": [{"data": [[0.1]]}, {"ids": [42]}]},
     "body.search[1].ids"),
]


@pytest.mark.parametrize(("product", "path", "body", "where"), SEEDED,
                         ids=[f"{p}:{w}" for p, _, _, w in SEEDED])
def test_a_search_seeded_by_a_record_id_is_refused(
    product: Product, path: str, body: dict[str, Any], where: str
) -> None:
    spec = "team == \"search\"" if product == "milvus" else {"team": "search"}
    with pytest.raises(FilterInjectionError) as info:
        inject_filter(product, path, body, spec, ALICE)
    assert where in str(info.value) and "seeded by a record id" in str(info.value)


@pytest.mark.parametrize(("product", "path", "body"), [
    ("qdrant", "/collections/docs/points/query", {"query": [0.1, 0.2]}),
    ("qdrant", "/collections/docs/points/query", {"query": [[0.1, 0.2], [0.2, 0.1]]}),
    ("qdrant", "/collections/docs/points/query", {"query": {"order_by": "year"}}),
    ("qdrant", "/collections/docs/points/query", {"query": {"fusion": "rrf"},
                                                  "prefetch": [{"query": [0.1]}]}),
    ("qdrant", "/collections/docs/points/query",
     {"query": {"nearest": {"text": "hello", "model": "m"}}}),
    ("qdrant", "/collections/docs/points/query",
     {"query": [0.1], "filter": {"must": [{"has_id": [42]}]}}),  # narrows: ANDed
    ("qdrant", "/collections/docs/points/recommend", {"positive": [[0.1, 0.2]]}),
    ("pinecone", "/query", {"vector": [0.1], "topK": 3}),
    ("weaviate", "/v1/search/Doc/near-text", {"concepts": ["x"]}),
    ("milvus", "/v2/vectordb/entities/search", {"collectionName": "docs", "data": [[0.1]]}),
    ("chroma", T + "/query", {"query_embeddings": [[0.1]], "ids": ["a"]}),  # narrows
])
def test_searches_by_vector_and_narrowing_ids_still_get_the_filter(
    product: Product, path: str, body: dict[str, Any]
) -> None:
    spec = "team == \"search\"" if product == "milvus" else {"team": "search"}
    out = inject_filter(product, path, body, spec, ALICE)
    assert out != body  # the filter went in
