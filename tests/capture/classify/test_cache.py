"""The Classifier's cache of body-less requests (capture/classifier.py
ClassificationCache) gives exactly what classifying again gives.

Classification is a pure function of the request; the cache keys it by the
route, method, path and query, the client's Host and the headers the
classifiers read (capture.classify.HEADERS_READ, HEADERS_PRESENT). The first
test holds every classifier to those headers over every table row; the
hypothesis test drives the real addon with mitmproxy flows and compares each
cached classification with an uncached one of the same flow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy.test import tflow

from capture.classifier import ClassificationCache, Classifier, classification_key
from capture.classify import (
    HEADERS_PRESENT,
    HEADERS_READ,
    classify_chroma,
    classify_milvus,
    classify_pinecone,
    classify_qdrant,
    classify_weaviate,
    detect_product,
)
from capture.config import GatewayConfig, Route
from capture.state import KEY, FlowState
from capture.types import PRODUCTS, HttpRequest
from tests.capture.classify import (
    test_chroma,
    test_milvus,
    test_pinecone,
    test_qdrant,
    test_weaviate,
)
from tests.capture.classify.table import Row

CLASSIFIERS: dict[str, Any] = {
    "qdrant": classify_qdrant,
    "chroma": classify_chroma,
    "pinecone": classify_pinecone,
    "weaviate": classify_weaviate,
    "milvus": classify_milvus,
}
TABLES: dict[str, list[Row]] = {
    "qdrant": test_qdrant.ALL,
    "chroma": test_chroma.ALL,
    "pinecone": test_pinecone.ALL,
    "weaviate": test_weaviate.ALL,
    "milvus": test_milvus.ALL,
}


class RecordingHeaders(Mapping[str, str]):
    """Headers that remember every name looked up."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._h = dict(headers)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return self._h[name]

    def get(self, name: str, default: Any = None) -> Any:
        self.read.add(name)
        return self._h.get(name, default)

    def __contains__(self, name: object) -> bool:
        self.read.add(str(name))
        return name in self._h

    def __iter__(self) -> Iterator[str]:
        # header_lookup's case-insensitive fallback walks the names for the
        # one it was asked (and recorded) already
        return iter(self._h)

    def items(self) -> Any:
        return self._h.items()  # the same walk; not a read of each value

    def __len__(self) -> int:
        return len(self._h)


EXTRA = {"authorization": "Bearer x", "x-other": "1", "user-agent": "t", "api-key": "k",
         "x-pinecone-api-version": "2025-04", "db-name": "d", "host": "h"}


@pytest.mark.parametrize("product", sorted(TABLES))
def test_classifiers_read_only_the_declared_headers(product: str) -> None:
    allowed = HEADERS_READ | HEADERS_PRESENT
    for row in TABLES[product]:
        base = row.request()
        for extra in ({}, EXTRA):
            headers = RecordingHeaders({**extra, **base.headers})
            req = HttpRequest(method=base.method, path=base.path, host=base.host,
                              query=base.query, headers=headers, body=base.body)
            detect_product(req)
            CLASSIFIERS[product](req, **row.kwargs)
            assert headers.read <= allowed, (row.id, headers.read - allowed)


# -- the addon, cached and not ------------------------------------------------

ROUTES = [
    Route(kind=kind, upstream=upstream, listen_port=1)
    for kind, upstream in [
        ("qdrant", "http://127.0.0.1:1"),
        ("chroma", "http://127.0.0.1:1"),
        ("pinecone", "https://prod-abc123.svc.aped-4627-b74a.pinecone.io"),
        ("pinecone", "http://127.0.0.1:1"),
        ("weaviate", "http://127.0.0.1:1"),
        ("milvus", "http://127.0.0.1:1"),
        ("auto", "http://127.0.0.1:1"),
    ]
]
CONFIG = GatewayConfig(
    routes=ROUTES, policy_path=Path("unused.yaml"), log_url="sqlite:x",
    issuer="https://issuer.invalid", audience="a", gateway_id="g",
)
#: method and path of every table row (queries and hosts vary on their own)
ENDPOINTS = sorted({(r.method, r.path) for rows in TABLES.values() for r in rows})
QUERIES = ["", "?wait=true", "?ids=a&ids=b", "?ids=c", "?dbName=x", "?collectionName=c",
           "?collectionName=c&dbName=x", "?collectionName=d", "?limit=5&with_payload=true",
           "?consistency=majority", "?a=%zz&&b"]
#: (route, method, path) whose classification turns on the query, a header,
#: the Host or the route: drawn often, so variants of them are compared
SENSITIVE = [
    (ROUTES[5], "GET", "/v1/vector/collections/describe"),  # dbName, db-name
    (ROUTES[2], "GET", "/vectors/fetch"),  # ids; the index is the upstream's
    (ROUTES[3], "GET", "/vectors/fetch"),  # ids; the index is the Host's
    (ROUTES[6], "GET", "/collections"),  # auto: api-key, x-pinecone-api-version, Host
    (ROUTES[6], "GET", "/describe_index_stats"),
    (ROUTES[1], "GET", "/api/v2/tenants/t/databases/d/collections/docs"),
]
HEADER_NAMES = ["host", "Host", "api-key", "API-Key", "x-pinecone-api-version", "db-name",
                "DB-Name", "authorization", "user-agent", "x-chroma-token", "accept"]
HEADER_VALUES = ["", "1", "docs", "prod-abc123.svc.aped-4627-b74a.pinecone.io",
                 "scratch-abc123.svc.aped-4627-b74a.pinecone.io", "127.0.0.1:6333",
                 "2025-04", "Bearer t", "caf\u00e9"]
CLIENT_HOSTS = ["127.0.0.1:1", "prod-abc123.svc.aped-4627-b74a.pinecone.io",
                "scratch-abc123.svc.aped-4627-b74a.pinecone.io", ""]


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        route, method, path = draw(st.sampled_from(SENSITIVE))
    else:
        route = draw(st.sampled_from(ROUTES))
        method, path = draw(st.sampled_from(ENDPOINTS))
        if draw(st.booleans()):
            method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "get"]))
        if draw(st.integers(0, 4)) == 0:
            path = path.rstrip("/") + "/" + draw(st.sampled_from(["x", "%64ocs", "..", "", "a b"]))
    return {
        "route": route,
        "method": method,
        "path": path + draw(st.sampled_from(QUERIES)),
        "host": draw(st.sampled_from(CLIENT_HOSTS)),
        "headers": draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES),
                                           st.sampled_from(HEADER_VALUES)), max_size=5)),
        "body": draw(st.sampled_from([b"", b"", b"", b"{}", b'{"ids": ["a"]}'])),
    }


def _flow(r: dict[str, Any]) -> tuple[Any, FlowState]:
    flow = tflow.tflow()
    flow.request.method = r["method"]
    flow.request.path = r["path"]
    flow.request.headers.clear()
    for name, value in r["headers"]:
        flow.request.headers.add(name, value)
    state = FlowState(route=r["route"], client_host=r["host"], client_body=r["body"])
    flow.metadata[KEY] = state
    return flow, state


def _outcome(state: FlowState) -> tuple[Any, ...]:
    b = state.blocked
    return (state.classification, b and (b.status, b.error, b.reason, b.stage))


@st.composite
def neighbours(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A request and variants of it that each change one input: a key that
    left an input out would hand a variant the first one's classification."""
    base = draw(requests())
    other = draw(requests())
    out = [base]
    for _ in range(draw(st.integers(1, 6))):
        field = draw(st.sampled_from(["route", "method", "host", "headers", "body", "query",
                                      "header_value"]))
        variant = dict(base)
        if field == "query":
            variant["path"] = base["path"].partition("?")[0] + draw(st.sampled_from(QUERIES))
        elif field == "header_value":
            variant["headers"] = [
                (name, draw(st.sampled_from(HEADER_VALUES))) for name, _ in base["headers"]
            ] or [(draw(st.sampled_from(HEADER_NAMES)), draw(st.sampled_from(HEADER_VALUES)))]
        else:
            variant[field] = other[field]
        out.append(variant)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(neighbours(), min_size=1, max_size=3).map(lambda g: [r for x in g for r in x]))
def test_a_cached_classification_equals_classifying_again(reqs: list[dict[str, Any]]) -> None:
    async def go() -> None:
        cached, fresh = Classifier(CONFIG), Classifier(CONFIG)
        fresh.cache = ClassificationCache(max_entries=0)
        try:
            # each request twice (the second is a hit if it was cacheable),
            # and a twin differing only in headers classification ignores
            for r in [x for r in reqs for x in (r, r, {**r, "headers": [
                    *r["headers"], ("authorization", "Bearer other"), ("user-agent", "z")]})]:
                f1, s1 = _flow(r)
                f2, s2 = _flow(r)
                await cached.request(f1)
                await fresh.request(f2)
                assert _outcome(s1) == _outcome(s2), r
                if s1.classification is not None and s2.classification is not None:
                    assert s1.classification.operations is not s2.classification.operations
        finally:
            await cached.done()
            await fresh.done()

    asyncio.run(go())


HEADER_VARIANTS: list[list[tuple[str, str]]] = [
    [], [("db-name", "a")], [("db-name", "b")], [("DB-Name", "b"), ("db-name", "c")],
    [("api-key", "k")], [("x-pinecone-api-version", "2025-04")],
    [("host", "prod-abc123.svc.aped-4627-b74a.pinecone.io")],
    [("host", "scratch-abc123.svc.aped-4627-b74a.pinecone.io")],
]


def test_every_input_of_the_sensitive_endpoints_is_in_the_key() -> None:
    """Exhaustively: the endpoints whose classification turns on the query, a
    header, the Host or the route, through every route, in one cache; every
    variant twice over, so each is classified after all the others were
    cached."""
    queries = {"/v1/vector/collections/describe": ["", "?collectionName=c",
                                                   "?collectionName=c&dbName=x"],
               "/vectors/fetch": ["?ids=a&ids=b", "?ids=c"]}

    async def go() -> None:
        cached, fresh = Classifier(CONFIG), Classifier(CONFIG)
        fresh.cache = ClassificationCache(max_entries=0)
        try:
            for _, method, path in SENSITIVE:
                for route in ROUTES:
                    for query in queries.get(path, [""]):
                        for _ in range(2):
                            for headers in HEADER_VARIANTS:
                                for host in CLIENT_HOSTS:
                                    r = {"route": route, "method": method,
                                         "path": path + query, "host": host,
                                         "headers": headers, "body": b""}
                                    f1, s1 = _flow(r)
                                    f2, s2 = _flow(r)
                                    await cached.request(f1)
                                    await fresh.request(f2)
                                    assert _outcome(s1) == _outcome(s2), r
            assert len(cached.cache) > 100
        finally:
            await cached.done()
            await fresh.done()

    asyncio.run(go())


def test_hits_are_counted_once_and_bodies_bypass_the_cache() -> None:
    async def go() -> None:
        c = Classifier(CONFIG)
        route = ROUTES[0]
        r = {"route": route, "method": "GET", "path": "/collections/docs/points/1",
             "host": "127.0.0.1:1", "headers": [("authorization", "Bearer a")], "body": b""}
        f1, s1 = _flow(r)
        await c.request(f1)
        assert len(c.cache) == 1
        f2, s2 = _flow({**r, "headers": [("authorization", "Bearer b")]})
        await c.request(f2)
        assert len(c.cache) == 1 and s2.classification == s1.classification
        assert s2.classification is not None and s1.classification is not None
        assert s2.classification.operations is not s1.classification.operations
        f3, _ = _flow({**r, "method": "POST", "path": "/collections/docs/points",
                       "body": b'{"ids": [1]}'})
        await c.request(f3)
        assert len(c.cache) == 1  # a body: classified, not kept
        f4, s4 = _flow({**r, "path": "/collections/" + "d" * 3000 + "/points/1"})
        await c.request(f4)
        assert len(c.cache) == 1 and s4.classification is not None  # too long to keep
        assert s4.classification.operations[0].collection == "d" * 3000
        await c.done()

    asyncio.run(go())


def test_the_key_keeps_credentials_out() -> None:
    flow, state = _flow({"route": ROUTES[3], "method": "GET", "path": "/describe_index_stats",
                         "host": "h", "headers": [("Api-Key", "secret-value"),
                                                  ("Authorization", "Bearer secret-token"),
                                                  ("Host", "h")], "body": b""})
    key = classification_key(state.route, flow.request.method, flow.request.path,
                             state.client_host, flow.request.headers)
    assert "secret" not in repr(key)
    assert ("api-key", None) in key[-1] and ("host", b"h") in key[-1]
    assert all(p in PRODUCTS or p == "auto" for p in [key[0]])
