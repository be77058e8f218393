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
        assert "remove that condition" in problem  # type: ignore[operator]


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
