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
    check_template,
    filter_target,
    inject_filter,
    inject_filters,
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
        ("qdrant", "/collections/docs/points/recommend/groups/", {"positive": [1],
                                                                  "group_by": "doc"},
         Q_MINE, {"positive": [1], "group_by": "doc", "filter": Q_MINE_ALICE}),
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
