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
