"""The classifier addon's route settings (capture/classifier.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from capture.classifier import ChromaNames, Classifier
from capture.config import GatewayConfig, Route
from capture.state import KEY, FlowState
from capture.types import Classification


async def _classify(route: Route, method: str, path: str) -> Classification | None:
    cfg = GatewayConfig(routes=[route], policy_path=Path("unused.yaml"), log_url="sqlite:x",
                        issuer="https://issuer.invalid", audience="a", gateway_id="g")
    classifier = Classifier(cfg)
    try:
        flow = tflow.tflow()
        flow.request.method = method
        flow.request.path = path
        st = FlowState(route=route, client_host="127.0.0.1:1")
        flow.metadata[KEY] = st
        await classifier.request(flow)
        return st.classification
    finally:
        await classifier.done()


async def test_chroma_v1_paths_are_denied_unless_the_route_serves_them() -> None:
    route = Route(kind="chroma", upstream="http://127.0.0.1:8000", listen_port=1)
    off = await _classify(route, "GET", "/api/v1/heartbeat")
    assert off is not None and not off.ok and "v1 API is deprecated" in (off.error or "")
    on = await _classify(route.model_copy(update={"chroma_v1": True}), "GET",
                         "/api/v1/heartbeat")
    assert on is not None and on.ok, on
    assert [op.action for op in on.operations] == ["health"]


def _config(route: Route) -> GatewayConfig:
    return GatewayConfig(routes=[route], policy_path=Path("unused.yaml"), log_url="sqlite:x",
                         issuer="https://issuer.invalid", audience="a", gateway_id="g")


def _flow(route: Route, method: str, path: str, body: bytes = b"",
          headers: Sequence[tuple[bytes, bytes]] = ()) -> tuple[http.HTTPFlow, FlowState]:
    flow = tflow.tflow()
    flow.request.method = method
    flow.request.path = path
    for k, v in headers:
        flow.request.headers.fields = (*flow.request.headers.fields, (k, v))
    st = FlowState(route=route, client_host="127.0.0.1:1", client_body=body)
    flow.metadata[KEY] = st
    return flow, st


@pytest.mark.parametrize(
    ("kind", "path", "headers"),
    [
        # Go's Header.Get (Milvus) reads the first DB-Name; header_dict kept the last
        ("milvus", "/v2/vectordb/collections/list",
         [(b"DB-Name", b"secret_db"), (b"DB-Name", b"public_db")]),
        ("milvus", "/v2/vectordb/collections/list",
         [(b"db-name", b"secret_db"), (b"DB-NAME", b"public_db")]),
        ("pinecone", "/query",
         [(b"X-Pinecone-Api-Version", b"2025-10"), (b"x-pinecone-api-version", b"2025-04")]),
        ("auto", "/v1/meta", [(b"Host", b"a.example"), (b"Host", b"b.example")]),
    ],
)
async def test_a_repeated_header_that_classification_reads_is_refused(
    kind: Any, path: str, headers: list[tuple[bytes, bytes]]
) -> None:
    route = Route(kind=kind, upstream="http://127.0.0.1:19530", listen_port=1)
    classifier = Classifier(_config(route))
    try:
        for _ in range(2):  # the second time would be a cache hit
            flow, st = _flow(route, "POST", path, b'{"dbName": ""}', headers)
            await classifier.request(flow)
            assert st.blocked is not None and st.blocked.status == 400, st.blocked
            assert flow.response is not None and flow.response.status_code == 400
            name = headers[0][0].decode().lower()
            assert f"header {name} is sent more than once" in st.blocked.reason
            assert st.classification is None
        assert len(classifier.cache) == 0
    finally:
        await classifier.done()


async def test_one_db_name_header_is_classified() -> None:
    route = Route(kind="milvus", upstream="http://127.0.0.1:19530", listen_port=1)
    classifier = Classifier(_config(route))
    try:
        flow, st = _flow(route, "POST", "/v2/vectordb/collections/list", b"{}",
                         [(b"DB-Name", b"public_db"), (b"X-Other", b"1"), (b"X-Other", b"2")])
        await classifier.request(flow)
        assert st.blocked is None and st.classification is not None
        assert [o.database for o in st.classification.operations] == ["public_db"]
    finally:
        await classifier.done()


async def test_a_rename_through_the_gateway_drops_the_cached_chroma_name(chroma_url: str) -> None:
    """After PUT .../collections/{id} {new_name} passes through, reads by UUID
    are classified under the new name at once, not after the cache expires."""
    base = "/api/v2/tenants/default_tenant/databases/default_database"
    async with httpx.AsyncClient(base_url=chroma_url) as up:
        created = await up.post(f"{base}/collections", json={"name": "public-rename-test"})
        cid = created.json()["id"]
        route = Route(kind="chroma", upstream=chroma_url, listen_port=1)
        classifier = Classifier(_config(route))
        try:
            async def read_by_uuid() -> str | None:
                flow, st = _flow(route, "POST", f"{base}/collections/{cid}/get", b"{}")
                await classifier.request(flow)
                assert st.classification is not None and st.classification.ok
                return st.classification.operations[0].collection

            assert await read_by_uuid() == "public-rename-test"
            body = b'{"new_name": "restricted-rename-test"}'
            flow, st = _flow(route, "PUT", f"{base}/collections/{cid}", body)
            await classifier.request(flow)
            assert st.classification is not None
            assert [o.collection for o in st.classification.operations] == [
                "public-rename-test", "restricted-rename-test"]
            # a read racing with the rename, before the upstream applied it
            assert await read_by_uuid() == "public-rename-test"
            r = await up.put(f"{base}/collections/{cid}", content=body,
                             headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            flow.response = http.Response.make(200, r.content)
            classifier.response(flow)
            assert await read_by_uuid() == "restricted-rename-test"
        finally:
            await classifier.done()


async def test_a_delete_through_the_gateway_drops_the_cached_chroma_name(chroma_url: str) -> None:
    base = "/api/v2/tenants/default_tenant/databases/default_database"
    async with httpx.AsyncClient(base_url=chroma_url) as up:
        cid = (await up.post(f"{base}/collections", json={"name": "delete-me"})).json()["id"]
        route = Route(kind="chroma", upstream=chroma_url, listen_port=1)
        classifier = Classifier(_config(route))
        try:
            flow, st = _flow(route, "POST", f"{base}/collections/{cid}/get", b"{}")
            await classifier.request(flow)
            assert st.classification is not None and st.classification.ok
            assert (await up.delete(f"{base}/collections/delete-me")).status_code == 200
            flow, st = _flow(route, "DELETE", f"{base}/collections/delete-me")
            await classifier.request(flow)
            # the UUID no longer resolves: refused, not classified under the old name
            flow, st = _flow(route, "POST", f"{base}/collections/{cid}/get", b"{}")
            await classifier.request(flow)
            assert st.blocked is not None and st.blocked.status == 403
            assert "collection_unresolved" in st.blocked.reason
        finally:
            await classifier.done()


def test_chroma_names_expire_within_seconds_for_other_gateway_processes() -> None:
    """A rename made through another worker or replica is seen once the entry
    expires; the default keeps that window short."""
    assert ChromaNames().ttl_s <= 15.0


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("weaviate", "/v1/objects?class=PublicDocs;&limit=5"),
        ("weaviate", "/v1/objects?class=PublicDocs&x=%zz"),
        ("milvus", "/v1/vector/collections/describe?collectionName=docs;"),
    ],
)
async def test_a_query_a_go_server_reads_differently_is_refused(kind: str, path: str) -> None:
    """Regression: Go's url.ParseQuery drops a pair holding ';' or a bad '%'
    escape, so Weaviate read ?class=PublicDocs; as no class filter (every
    class) while the classifier saw the class "PublicDocs;"."""
    route = Route(kind=kind, upstream="http://127.0.0.1:8080", listen_port=1)  # type: ignore[arg-type]
    classifier = Classifier(_config(route))
    try:
        flow, st = _flow(route, "GET", path)
        await classifier.request(flow)
        assert st.blocked is not None and st.blocked.status == 400, st.blocked
        assert flow.response is not None and flow.response.status_code == 400
    finally:
        await classifier.done()


async def test_routes_that_differ_in_index_or_v1_do_not_share_cached_classifications() -> None:
    base = Route(kind="pinecone", upstream="http://127.0.0.1:5081", listen_port=1)
    a = base.model_copy(update={"pinecone_index": "alpha"})
    b = base.model_copy(update={"pinecone_index": "beta"})
    cfg = GatewayConfig(routes=[a], policy_path=Path("unused.yaml"), log_url="sqlite:x",
                        issuer="https://issuer.invalid", audience="a", gateway_id="g")
    classifier = Classifier(cfg)
    try:
        seen = []
        for route in (a, b):
            flow, st = _flow(route, "GET", "/vectors/fetch?ids=v1")
            await classifier.request(flow)
            assert st.classification is not None and st.classification.ok, st.classification
            seen.append([op.collection for op in st.classification.operations])
        assert seen == [["alpha"], ["beta"]]
    finally:
        await classifier.done()
