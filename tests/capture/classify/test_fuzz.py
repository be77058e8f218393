"""Hypothesis: no input makes a classifier raise, and whatever it cannot place
is a single unknown operation with an error (default deny)."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture.classify import chroma, classify, detect_product, milvus, pinecone, qdrant, weaviate
from capture.classify._common import Route
from capture.types import PRODUCTS, ActionClass, Classification, HttpRequest, Product

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Field names the classifiers read, so generated bodies reach deep code paths.
KEYS = [
    "points",
    "ids",
    "id",
    "filter",
    "query",
    "vector",
    "vectors",
    "searches",
    "operations",
    "upsert",
    "delete",
    "set_payload",
    "batch",
    "prefetch",
    "lookup_from",
    "with_lookup",
    "nearest",
    "recommend",
    "discover",
    "context",
    "positive",
    "negative",
    "target",
    "has_id",
    "must",
    "limit",
    "group_size",
    "sample",
    "with_vector",
    "actions",
    "create_alias",
    "collection_name",
    "alias_name",
    "update_filter",
    "payload",
    "where",
    "where_document",
    "embeddings",
    "query_embeddings",
    "n_results",
    "include",
    "rank",
    "$knn",
    "select",
    "keys",
    "#id",
    "$in",
    "read_ids",
    "operation",
    "new_name",
    "namespace",
    "topK",
    "queries",
    "values",
    "deleteAll",
    "uri",
    "name",
    "source",
    "class",
    "objects",
    "match",
    "tenant",
    "beacon",
    "from",
    "to",
    "variables",
    "operationName",
    "method",
    "params",
    "arguments",
    "collectionName",
    "dbName",
    "data",
    "search",
    "outputFields",
    "annsField",
    "aliasName",
    "newCollectionName",
    "top_k",
    "inputs",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(
        [
            "id in [1,2]",
            "weaviate://localhost/Doc/x",
            "{ Get { Doc { t } } }",
            "mutation { x }",
            "tools/call",
            "6b1b5c3e-6f0e-4b6a-9a57-3f3c8f0b2a11",
        ]
    ),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=5),
    ),
    max_leaves=30,
)


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


nasty_bodies = st.one_of(
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=1, max_value=3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(min_value=1, max_value=6000).map(lambda n: b'{"limit": ' + b"9" * n + b"}"),
    st.sampled_from(
        [
            b'{"query": [1e999]}',
            b"NaN",
            b'{"a": Infinity}',
            b"\xef\xbb\xbf{}",
            b'{"a": 1, "a": 2}',
            b"null",
            b'"text"',
            b"{}",
            b"[]",
            b"\n\n",
        ]
    ),
)
bodies = st.one_of(json_values.map(_encode), nasty_bodies)

SEGMENTS = [
    "collections",
    "docs",
    "points",
    "query",
    "batch",
    "search",
    "api",
    "v2",
    "v1",
    "tenants",
    "databases",
    "default_tenant",
    "2f3b7c1e-0000-4000-8000-000000000001",
    "objects",
    "Doc",
    "graphql",
    "schema",
    "vectordb",
    "entities",
    "vectors",
    "records",
    "namespaces",
    "indexes",
    "bulk",
    "imports",
    "snapshots",
    "shards",
    "%2F",
    "%64ocs",
    "..",
    ".",
    "%00",
    "%ff",
    "",
    "get",
    "add",
    "delete",
    "upsert",
    "mcp",
    "aliases",
    "vector",
]
paths = st.one_of(
    st.lists(st.sampled_from(SEGMENTS), max_size=8).map(lambda s: "/" + "/".join(s)),
    st.text(max_size=40),
    st.text(max_size=40).map(lambda t: "/" + t),
)
methods = st.one_of(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "get", ""]),
    st.text(max_size=8),
)
headers = st.dictionaries(
    st.one_of(
        st.sampled_from(["host", "db-name", "api-key", "x-pinecone-api-version", "content-type"]),
        st.text(max_size=10),
    ),
    st.text(max_size=30),
    max_size=4,
)
hosts = st.one_of(
    st.sampled_from(["docs-abc.svc.x.pinecone.io", "api.pinecone.io", "", "localhost:6333"]),
    st.text(max_size=30),
)
queries = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "ids",
                "namespace",
                "limit",
                "class",
                "include",
                "deleteAll",
                "tenant",
                "collectionName",
            ]
        ),
        st.text(max_size=10),
    ),
    max_size=4,
)


def assert_well_formed(c: Classification, product: Product) -> None:
    assert isinstance(c, Classification)
    assert c.product == product
    assert c.operations, "a classification always has at least one operation"
    has_unknown = any(o.action == ActionClass.UNKNOWN for o in c.operations)
    assert (c.error is not None) == has_unknown, (c.error, c.operations)
    if c.error is not None:
        assert len(c.operations) == 1
        assert c.error.strip()
        # Fail-closed either way, but an internal error means a code path
        # met input it was not written for: make those visible.
        assert "internal classifier error" not in c.error, c.error
        assert not c.ok
    for o in c.operations:
        assert all(isinstance(i, str) for i in o.ids)
        assert o.vector_count >= 0
        assert o.limit is None or -(2**63) <= o.limit < 2**63
        assert o.filter_present == (o.filter_sha256 is not None)
        if o.filter_sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", o.filter_sha256)


@SETTINGS
@given(
    product=st.sampled_from(PRODUCTS),
    method=methods,
    path=paths,
    body=bodies,
    headers=headers,
    host=hosts,
    query=queries,
    names=st.dictionaries(st.text(max_size=40), st.text(max_size=10), max_size=2),
)
def test_arbitrary_requests_never_raise(
    product: Product,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    host: str,
    query: list[tuple[str, str]],
    names: dict[str, str],
) -> None:
    req = HttpRequest(
        method=method, path=path, host=host, query=tuple(query), headers=headers, body=body
    )
    assert_well_formed(classify(product, req, chroma_names=names), product)
    detect_product(req)
    chroma.chroma_collection_refs(req)


TABLES: list[tuple[Product, Route[Any]]] = [
    *[("qdrant", r) for r in qdrant.ROUTES],
    *[("chroma", r) for r in chroma.ROUTES + chroma.V1_ROUTES],
    *[("pinecone", r) for r in pinecone.ROUTES],
    *[("weaviate", r) for r in weaviate.ROUTES],
    *[("milvus", r) for r in milvus.ROUTES],
]
_PARAM = re.compile(r"\{(\w+)\}")
segment_values = st.one_of(
    st.sampled_from(SEGMENTS[:14] + ["acme:prod:docs", "s3"]),
    st.text(
        alphabet=st.characters(blacklist_characters="/?#%\\", blacklist_categories=["Cc", "Cs"]),
        min_size=1,
        max_size=12,
    ),
)


@SETTINGS
@given(
    data=st.data(),
    body=bodies,
    headers=headers,
    query=queries,
    host=st.sampled_from(["docs-abc.svc.x.pinecone.io", "api.pinecone.io"]),
)
def test_every_route_with_arbitrary_bodies(
    data: st.DataObject,
    body: bytes,
    headers: dict[str, str],
    query: list[tuple[str, str]],
    host: str,
) -> None:
    """Real endpoints, hostile bodies: handlers are reached and still never raise."""
    product, route = data.draw(st.sampled_from(TABLES))
    method = data.draw(st.sampled_from(sorted(route.methods)))
    path = _PARAM.sub(lambda _m: data.draw(segment_values), route.template)
    req = HttpRequest(
        method=method, path=path, host=host, query=tuple(query), headers=headers, body=body
    )
    c = classify(product, req, chroma_legacy_v1=True)
    assert_well_formed(c, product)


@SETTINGS
@given(query=st.text(max_size=300), variables=json_values)
def test_graphql_text_never_raises(query: str, variables: Any) -> None:
    body = _encode({"query": query, "variables": variables})
    c = classify("weaviate", HttpRequest(method="POST", path="/v1/graphql", body=body))
    assert_well_formed(c, "weaviate")


def test_deep_graphql_does_not_crash() -> None:
    query = "{ Get { Doc(where:" + "{operands:[" * 2000 + "]}" * 2000 + ") { t } } }"
    c = classify(
        "weaviate", HttpRequest(method="POST", path="/v1/graphql", body=_encode({"query": query}))
    )
    assert_well_formed(c, "weaviate")
    assert c.error is not None


def test_unsupported_product_is_unknown() -> None:
    c = classify("redis", HttpRequest(method="GET", path="/"))  # type: ignore[arg-type]
    assert c.error is not None and "unsupported product 'redis'" in c.error
    assert c.operations[0].action == ActionClass.UNKNOWN
