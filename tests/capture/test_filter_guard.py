"""capture/filter_guard.py: a filter may not name a masked field, nor compare
with a value of a masked kind. Requests are classified by the real classifiers,
so each product's filter arrives in the shape the gateway sees."""

from __future__ import annotations

import json
from typing import Any

import pytest

from capture.classify import classify
from capture.filter_guard import masked_filter_problem
from capture.types import HttpRequest

U = "0b5c8a1e-2f3d-4c5b-9a6e-7d8f9a0b1c2d"
CH = f"/api/v2/tenants/t/databases/d/collections/{U}"
GQL_EMAIL = ('{ Get { Doc(where: {path: ["email"], operator: Equal, valueText: "x"}) '
             "{ title } } }")
GQL_TITLE = ('{ Get { Doc(where: {path: ["title"], operator: Equal, '
             'valueText: "alice@corp.io"}) { title } } }')


def _filters(product: str, path: str, body: Any, host: str = "") -> tuple[Any, ...]:
    req = HttpRequest(method="POST", path=path, host=host, body=json.dumps(body).encode(),
                      headers={"content-type": "application/json"})
    c = classify(product, req, chroma_names={U: "docs"})  # type: ignore[arg-type]
    assert c.ok, c.error
    return c.filters


CASES = [
    # (id, product, path, body, masked field names, detectors, refused?)
    ("qdrant key", "qdrant", "/collections/docs/points/scroll",
     {"filter": {"must": [{"key": "meta.email", "match": {"value": "x"}}]}},
     ["email"], [], True),
    ("qdrant other key", "qdrant", "/collections/docs/points/scroll",
     {"filter": {"must": [{"key": "team", "match": {"value": "b"}}]}}, ["email"], [], False),
    ("qdrant email value", "qdrant", "/collections/docs/points/count",
     {"filter": {"must": [{"key": "owner", "match": {"value": "alice@corp.io"}}]}},
     [], ["email"], True),
    ("qdrant prefetch", "qdrant", "/collections/docs/points/query",
     {"query": [0.1, 0.2], "prefetch": {"query": [0.1, 0.2],
                                        "filter": {"must": [{"key": "Email", "match": {
                                            "value": "x"}}]}}},
     ["email"], [], True),
    ("chroma where key", "chroma", f"{CH}/get", {"where": {"email": {"$eq": "x"}}},
     ["email"], [], True),
    ("chroma operator is not a key", "chroma", f"{CH}/get",
     {"where": {"$and": [{"team": "b"}, {"year": {"$gt": 2020}}]}}, ["eq", "and"], [], False),
    ("chroma document text", "chroma", f"{CH}/query",
     {"query_embeddings": [[0.1]], "where_document": {"$contains": "bob@corp.io"}},
     [], ["email"], True),
    ("pinecone metadata key", "pinecone", "/query",
     {"vector": [0.1], "topK": 3, "filter": {"ssn": {"$eq": "123-45-6789"}}},
     ["ssn"], [], True),
    ("pinecone phone value", "pinecone", "/query",
     {"vector": [0.1], "topK": 3, "filter": {"contact": {"$eq": "+1 415 555 0100"}}},
     [], ["phone"], True),
    ("weaviate rest path", "weaviate", "/v1/aggregate/Doc",
     {"where": {"path": ["author", "Person", "email"], "operator": "Equal",
                "valueText": "x"}}, ["email"], [], True),
    ("weaviate graphql path", "weaviate", "/v1/graphql", {"query": GQL_EMAIL},
     ["email"], [], True),
    ("weaviate graphql value", "weaviate", "/v1/graphql", {"query": GQL_TITLE},
     [], ["email"], True),
    ("weaviate graphql other", "weaviate", "/v1/graphql", {"query": GQL_TITLE},
     ["email"], [], False),
    ("milvus field name", "milvus", "/v2/vectordb/entities/query",
     {"collectionName": "docs", "filter": 'email like "a%"'}, ["email"], [], True),
    ("milvus json subscript", "milvus", "/v2/vectordb/entities/query",
     {"collectionName": "docs", "filter": 'meta["email"] == "x"'}, ["email"], [], True),
    ("milvus literal", "milvus", "/v2/vectordb/entities/query",
     {"collectionName": "docs", "filter": 'owner == "alice@corp.io"'}, [], ["email"], True),
    ("milvus literal is not a key", "milvus", "/v2/vectordb/entities/query",
     {"collectionName": "docs", "filter": 'kind == "email"'}, ["email"], [], False),
    ("milvus card number", "milvus", "/v2/vectordb/entities/query",
     {"collectionName": "docs", "filter": "card == 4111111111111111"}, [], ["card"], True),
]


@pytest.mark.parametrize(("product", "path", "body", "fields", "detectors", "refused"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_filters_on_masked_fields_and_values(
    product: str, path: str, body: Any, fields: list[str], detectors: list[str], refused: bool
) -> None:
    filters = _filters(product, path, body,
                       host="docs-abc.svc.pinecone.io" if product == "pinecone" else "")
    assert filters, "the classifier passed no filter"
    problem = masked_filter_problem(product, filters, fields=fields, detectors=detectors)
    assert (problem is not None) is refused, problem
    if refused:
        assert ("remove that condition" in problem  # type: ignore[operator]
                or "use exact conditions" in problem)  # type: ignore[operator]


def test_a_masked_path_names_its_last_key() -> None:
    filters = _filters("qdrant", "/collections/docs/points/scroll",
                       {"filter": {"must": [{"key": "salary", "range": {"gte": 1}}]}})
    assert masked_filter_problem("qdrant", filters,
                                 paths=["result.points[].payload.salary"]) is not None
    assert masked_filter_problem("qdrant", filters, paths=["result.points[].payload.ssn"]) is None


def test_no_filter_no_problem_and_nothing_is_recorded() -> None:
    req = HttpRequest(method="POST", path="/collections/docs/points/scroll",
                      body=b'{"limit": 3}', headers={"content-type": "application/json"})
    c = classify("qdrant", req)
    assert c.ok and c.filters == ()
    assert masked_filter_problem("qdrant", c.filters, fields=["email"],
                                 detectors=["email"]) is None
    # the filters are not part of what is compared or recorded
    assert "filters" not in repr(c)


W = "/v1/graphql"


def _gql(query: str) -> dict[str, Any]:
    return {"query": query}


PARTIAL = [
    # (id, product, path, body): a partial-match operator on a field nobody masks
    ("qdrant text", "qdrant", "/collections/docs/points/count",
     {"filter": {"must": [{"key": "owner", "match": {"text": "bob@"}}]}}),
    ("qdrant phrase", "qdrant", "/collections/docs/points/scroll",
     {"filter": {"should": [{"key": "owner", "match": {"phrase": "bob example"}}]}}),
    ("qdrant text_any", "qdrant", "/collections/docs/points/scroll",
     {"filter": {"must_not": [{"key": "owner", "match": {"text_any": "bob org"}}]}}),
    ("chroma document contains", "chroma", f"{CH}/query",
     {"query_embeddings": [[0.1]], "where_document": {"$contains": "example.org"}}),
    ("chroma document regex", "chroma", f"{CH}/get",
     {"where_document": {"$and": [{"$regex": "bob.example"}, {"$contains": "x"}]}}),
    ("chroma metadata regex", "chroma", f"{CH}/get", {"where": {"owner": {"$regex": "^bob"}}}),
    ("weaviate Like", "weaviate", W, _gql(
        '{ Get { Doc(where: {path: ["owner"], operator: Like, valueText: "bob*example.org"})'
        " { title } } }")),
    ("milvus like", "milvus", "/v2/vectordb/entities/query",
     {"collectionName": "docs", "filter": 'owner like "bob%example.org"'}),
    ("milvus text_match", "milvus", "/v2/vectordb/entities/query",
     {"collectionName": "docs", "filter": "TEXT_MATCH(owner, 'bob')"}),
]


@pytest.mark.parametrize(("product", "path", "body"), [c[1:] for c in PARTIAL],
                         ids=[c[0] for c in PARTIAL])
def test_partial_match_operators_are_refused_while_a_detector_masks(
    product: str, path: str, body: Any
) -> None:
    """``bob@%`` or ``bob%example.org`` is no e-mail address to a detector,
    yet it confirms one piece by piece (the wildcard stands for the @): found
    in review. While a detector masks, such operators are refused outright."""
    filters = _filters(product, path, body)
    problem = masked_filter_problem(product, filters, detectors=["email"])
    assert problem is not None and "partial-match" in problem and "exact" in problem
    # with only a field masked elsewhere, nothing is refused
    assert masked_filter_problem(product, filters, fields=["salary"]) is None


@pytest.mark.parametrize(("product", "path", "body"), [
    ("milvus", "/v2/vectordb/entities/query",
     {"collectionName": "docs", "filter": 'title == "I like it"'}),  # inside a literal
    ("chroma", f"{CH}/get", {"where": {"tags": {"$contains": "b"}}}),  # a list element
    ("qdrant", "/collections/docs/points/scroll",
     {"filter": {"must": [{"key": "text", "match": {"value": "b"}}]}}),  # a key named text
])
def test_exact_conditions_are_not_partial_matches(product: str, path: str, body: Any) -> None:
    assert masked_filter_problem(product, _filters(product, path, body),
                                 detectors=["email"]) is None


@pytest.mark.parametrize(("query", "what"), [
    ('{ Get { Doc(bm25: {query: "120000", properties: ["salary^2"]}) { title } } }', "salary"),
    ('{ Get { Doc(hybrid: {query: "x", alpha: 0, properties: ["salary"]}) { title } } }',
     "salary"),
    ('{ Get { Doc(sort: [{path: ["salary"], order: asc}]) { title } } }', "salary"),
    ('{ Get { Doc(sort: {path: ["salary"]}) { title } } }', "salary"),
    ('{ Get { Doc { title _additional { generate(singleResult: {prompt: "{salary}"})'
     " { singleResult } } } } }", "generate"),
    ('{ Get { Doc { title _additional { summary(properties: ["salary"]) { result } } } } }',
     "summary"),
    ('{ Get { Doc(ask: {question: "what is the salary?"}) { title _additional '
     "{ answer { result } } } } }", "model upstream"),
])
def test_weaviate_ranking_sorting_and_models_on_a_masked_field_are_refused(
    query: str, what: str
) -> None:
    """bm25/hybrid over a masked property is a keyword oracle, a sort an
    ordering oracle, and a generative module quotes the property in text no
    field mask finds (found in review)."""
    filters = _filters("weaviate", W, _gql(query))
    problem = masked_filter_problem("weaviate", filters, fields=["salary"])
    assert problem is not None and what in problem, problem
    # other fields masked: ranking and sorting by salary are fine; a model
    # reading the properties is not, whichever field is masked
    other = masked_filter_problem("weaviate", filters, fields=["email"])
    assert (other is not None) is any(m in query for m in ("generate", "summary", "ask"))
    # detectors alone scan what a model answers: no refusal for that
    assert masked_filter_problem("weaviate", filters, detectors=["email"]) is None


def test_weaviate_rest_sort_and_keyword_properties_name_the_field() -> None:
    req = HttpRequest(method="GET", path="/v1/objects", host="", body=b"",
                      query=(("class", "Doc"), ("sort", "title,salary")), headers={})
    c = classify("weaviate", req)
    assert c.ok, c.error
    assert not c.operations[0].filter_present  # a sort is no filter on the records
    listing = c.filters
    assert masked_filter_problem("weaviate", listing, fields=["salary"]) is not None
    assert masked_filter_problem("weaviate", listing, fields=["email"]) is None
    bm25 = _filters("weaviate", "/v1/search/Doc/bm25",
                    {"query": "x", "properties": ["salary"]})
    assert masked_filter_problem("weaviate", bm25, fields=["salary"]) is not None
