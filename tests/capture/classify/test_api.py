"""capture/classify/__init__.py: dispatch, options and product detection."""

from __future__ import annotations

import pytest

from capture.classify import classify, detect_product
from capture.types import HttpRequest, Product

U = "2f3b7c1e-0000-4000-8000-000000000001"


@pytest.mark.parametrize(
    ("method", "path", "headers", "host", "product"),
    [
        ("GET", "/", {}, "", "qdrant"),
        ("POST", "/collections/docs/points/query", {"api-key": "k"}, "", "qdrant"),
        ("GET", "/collections", {}, "", "qdrant"),
        ("GET", "/snapshots", {}, "", "qdrant"),
        ("GET", "/api/v2/heartbeat", {}, "", "chroma"),
        ("GET", "/api/v2", {}, "", "chroma"),
        ("GET", "/api/v1/collections", {}, "", "chroma"),
        ("POST", "/v2/vectordb/entities/search", {}, "", "milvus"),
        ("POST", "/v1/vector/search", {}, "", "milvus"),
        ("GET", "/v1/meta", {}, "", "weaviate"),
        ("GET", "/v1", {}, "", "weaviate"),
        ("POST", "/query", {"x-pinecone-api-version": "2025-10"}, "", "pinecone"),
        ("GET", "/collections", {"x-pinecone-api-version": "2025-10"}, "", "pinecone"),
        ("POST", "/query", {}, "docs-abc.svc.env.pinecone.io", "pinecone"),
        ("POST", "/vectors/upsert", {"api-key": "k"}, "gw.local", "pinecone"),
        ("POST", "/query", {}, "gw.local", None),
        ("GET", "/favicon.ico", {}, "", None),
        ("GET", "/collectionsX", {}, "", None),
    ],
)
def test_detect_product(
    method: str, path: str, headers: dict[str, str], host: str, product: Product | None
) -> None:
    assert (
        detect_product(HttpRequest(method=method, path=path, headers=headers, host=host)) == product
    )


def test_chroma_options_are_passed_through() -> None:
    req = HttpRequest(method="POST", path=f"/api/v1/collections/{U}/get", body=b"{}")
    assert classify("chroma", req).error is not None
    c = classify("chroma", req, chroma_legacy_v1=True, chroma_names={U: "docs"})
    assert c.ok and c.operations[0].collection == "docs"


def test_pinecone_hosts_are_passed_through() -> None:
    req = HttpRequest(method="GET", path="/vectors/fetch", host="gw:9000", query=(("ids", "a"),))
    assert classify("pinecone", req).error is not None
    c = classify("pinecone", req, pinecone_hosts={"gw": "docs"})
    assert c.ok and c.operations[0].collection == "docs"


def test_ok_is_false_for_unknown() -> None:
    c = classify("qdrant", HttpRequest(method="GET", path="/nope"))
    assert not c.ok
    assert c.error == "Qdrant: unrecognised endpoint GET /nope"


def test_error_messages_do_not_echo_control_characters() -> None:
    c = classify("qdrant", HttpRequest(method="GET\x1b[31m", path="/healthz"))
    assert c.error is not None and "\x1b" not in c.error


def _linear_match(routes, method, path):  # type: ignore[no-untyped-def]
    """match_route as it was: every pattern of the table, in order."""
    allowed: set[str] = set()
    for r in routes:
        m = r.pattern.fullmatch(path)
        if m is None:
            continue
        if method in r.methods:
            return r, m.groupdict(), set()
        allowed |= r.methods
    return None, {}, allowed


def test_route_index_matches_like_trying_every_route() -> None:
    """match_route only tries the routes with as many slashes as the path; it
    must find what trying every route in order finds, for every template of
    every product (filled in, one segment more or less, or unknown)."""
    from capture.classify import _common, chroma, milvus, pinecone, qdrant, weaviate

    tables = [qdrant.ROUTES, chroma.ROUTES, chroma.V1_ROUTES, milvus.ROUTES, pinecone.ROUTES,
              weaviate.ROUTES]
    checked = 0
    for table in tables:
        paths = {"/", "/x", "/collections/docs/points/1/extra"}
        for r in table:
            filled = _common._PARAM.sub("p1", r.template)
            paths |= {filled, filled + "/more", filled.rsplit("/", 1)[0] or "/"}
        methods = {m for r in table for m in r.methods} | {"PATCH", "TRACE"}
        for path in paths:
            for method in methods:
                got = _common.match_route(table, method, path)
                route, params, allowed = _linear_match(table, method, path)
                assert (got.route, got.params) == (route, params), (method, path)
                if route is None:
                    assert got.allowed == allowed, (method, path)
                checked += 1
    assert checked > 1000


_PINECONE_HOST = "docs-abc123.svc.aped-4627-b74a.pinecone.io"
_OID = "6b1b5c3e-6f0e-4b6a-9a57-3f3c8f0b2a11"


@pytest.mark.parametrize(
    ("product", "method", "path", "query", "kwargs"),
    [
        # go-swagger binds the last value; the first was classified
        ("weaviate", "GET", "/v1/objects", [("class", "PublicDocs"), ("class", "Secret")], {}),
        ("weaviate", "GET", "/v1/objects", [("class", "PublicDocs"), ("class", "")], {}),
        ("weaviate", "GET", "/v1/objects", [("limit", "5"), ("limit", "100000")], {}),
        ("weaviate", "GET", "/v1/objects", [("tenant", "t1"), ("tenant", "t2")], {}),
        ("weaviate", "GET", "/v1/objects", [("include", "x"), ("include", "vector")], {}),
        ("weaviate", "GET", f"/v1/objects/{_OID}", [("class", "Pub"), ("class", "Secret")], {}),
        ("weaviate", "GET", f"/v1/objects/Pub/{_OID}", [("tenant", "a"), ("tenant", "b")], {}),
        ("weaviate", "GET", "/v1/aliases", [("class", "Pub"), ("class", "Secret")], {}),
        ("pinecone", "GET", "/vectors/fetch", [("ids", "a"), ("namespace", "p"),
                                               ("namespace", "s")], {}),
        ("pinecone", "GET", "/vectors/list", [("limit", "1"), ("limit", "99999")], {}),
        ("pinecone", "DELETE", "/vectors/delete", [("deleteAll", "false"),
                                                   ("deleteAll", "true")], {}),
        ("milvus", "GET", "/v1/vector/collections/describe",
         [("collectionName", "pub"), ("collectionName", "secret")], {}),
        ("milvus", "GET", "/v1/vector/collections/describe",
         [("collectionName", "pub"), ("dbName", "a"), ("dbName", "b")], {}),
        ("chroma", "GET", "/api/v1/collections", [("tenant", "a"), ("tenant", "b")],
         {"chroma_legacy_v1": True}),
        ("chroma", "GET", "/api/v1/collections", [("database", "a"), ("database", "b")],
         {"chroma_legacy_v1": True}),
    ],
)
def test_a_repeated_query_parameter_that_is_read_is_refused(
    product: Product, method: str, path: str, query: list[tuple[str, str]],
    kwargs: dict[str, object],
) -> None:
    """Servers differ on which copy counts (first or last), so no copy is
    guessed: the request is refused, naming the parameter."""
    req = HttpRequest(method=method, path=path, query=tuple(query), host=_PINECONE_HOST)
    c = classify(product, req, **kwargs)  # type: ignore[arg-type]
    assert not c.ok
    assert c.error is not None and "appears 2 times" in c.error, c.error
    assert repr(query[-1][0]) in c.error


def test_repeated_pinecone_ids_are_still_a_list() -> None:
    req = HttpRequest(method="GET", path="/vectors/fetch", host=_PINECONE_HOST,
                      query=(("ids", "a"), ("ids", "b")))
    c = classify("pinecone", req)
    assert c.ok and c.operations[0].ids == ["a", "b"]
