"""capture/review.py: the count call for a filter-based write, per product, and
blast_radius against a real Chroma server and the recording upstream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from capture.config import GatewayConfig, Route
from capture.review import blast_radius, count_request, known_ids
from schemas.models import ActionClass as A
from schemas.models import Event, Operation
from tests.support.services import run_chroma_client
from tests.support.upstream import recording_upstream

SECRET = "review-upstream-secret-5e1d"
T = "/api/v2/tenants/default_tenant/databases/default_database"


def by_filter(action: A = A.DELETE, collection: str = "docs") -> Operation:
    return Operation(action=action, collection=collection, ids_known=False, filter_present=True)


def dumps(v: Any) -> bytes:
    return json.dumps(v).encode()


F = {"must": [{"key": "team", "match": {"value": "x"}}]}


@pytest.mark.parametrize(
    ("product", "method", "path", "body", "want_method", "want_path", "want_body"),
    [
        ("qdrant", "POST", "/collections/docs/points/delete", {"filter": F},
         "POST", "/collections/docs/points/count", {"filter": F, "exact": True}),
        ("qdrant", "POST", "/collections/docs/points/payload/clear", {"filter": F},
         "POST", "/collections/docs/points/count", {"filter": F, "exact": True}),
        ("qdrant", "PUT", "/collections/docs/points/payload", {"payload": {"a": 1}, "filter": F},
         "POST", "/collections/docs/points/count", {"filter": F, "exact": True}),
        ("chroma", "POST", f"{T}/collections/0b1c/delete", {"where": {"team": "x"}},
         "POST", f"{T}/collections/0b1c/get", {"include": [], "where": {"team": "x"}}),
        ("chroma", "POST", f"{T}/collections/0b1c/delete",
         {"where_document": {"$contains": "a"}, "ids": ["1", "2"]},
         "POST", f"{T}/collections/0b1c/get",
         {"include": [], "ids": ["1", "2"], "where_document": {"$contains": "a"}}),
        ("pinecone", "POST", "/vectors/delete", {"filter": {"g": {"$eq": 1}}, "namespace": "n"},
         "POST", "/describe_index_stats", {"filter": {"g": {"$eq": 1}}}),
        ("pinecone", "POST", "/vectors/delete", {"deleteAll": True, "namespace": "n"},
         "POST", "/describe_index_stats", {}),
        ("weaviate", "DELETE", "/v1/batch/objects",
         {"match": {"class": "Doc", "where": {"path": ["a"], "operator": "Equal",
                                              "valueText": "x"}}},
         "DELETE", "/v1/batch/objects",
         {"match": {"class": "Doc", "where": {"path": ["a"], "operator": "Equal",
                                              "valueText": "x"}},
          "dryRun": True, "output": "minimal"}),
        ("milvus", "POST", "/v2/vectordb/entities/delete",
         {"collectionName": "docs", "filter": "team == 'x'", "dbName": "d"},
         "POST", "/v2/vectordb/entities/query",
         {"collectionName": "docs", "filter": "team == 'x'", "outputFields": ["count(*)"],
          "dbName": "d"}),
    ],
)
def test_count_request_per_product(product: Any, method: str, path: str, body: Any,
                                   want_method: str, want_path: str, want_body: Any) -> None:
    req = count_request(product, method, path, dumps(body), by_filter())
    assert req is not None
    assert (req.method, req.path) == (want_method, want_path)
    assert json.loads(req.body) == want_body


@pytest.mark.parametrize(
    ("product", "method", "path", "body", "op"),
    [
        # ids named: nothing to count
        ("qdrant", "POST", "/collections/docs/points/delete", {"points": [1, 2]},
         Operation(action=A.DELETE, collection="docs", ids=["1", "2"])),
        # not a write
        ("qdrant", "POST", "/collections/docs/points/scroll", {"filter": F}, by_filter(A.READ)),
        # a filter delete with no filter in the body
        ("qdrant", "POST", "/collections/docs/points/delete", {"points": []}, by_filter()),
        ("chroma", "POST", f"{T}/collections/x/delete", {}, by_filter()),
        ("chroma", "POST", f"{T}/collections/x/upsert", {"where": {}}, by_filter(A.WRITE)),
        ("pinecone", "POST", "/vectors/delete", {"namespace": "n"}, by_filter()),
        ("milvus", "POST", "/v2/vectordb/entities/delete", {"filter": "  "}, by_filter()),
        ("weaviate", "DELETE", "/v1/batch/objects", {"dryRun": True}, by_filter()),
        ("qdrant", "POST", "/collections/docs/points/delete", b"not json", by_filter()),
    ],
)
def test_no_count_request(product: Any, method: str, path: str, body: Any,
                          op: Operation) -> None:
    raw = body if isinstance(body, bytes) else dumps(body)
    assert count_request(product, method, path, raw, op) is None


def test_parsers_and_cap() -> None:
    q = count_request("qdrant", "POST", "/collections/c/points/delete", dumps({"filter": F}),
                      by_filter())
    assert q is not None and q.parse({"result": {"count": 7}, "status": "ok"}) == 7
    with pytest.raises(ValueError):
        q.parse({"result": {"count": -1}})
    c = count_request("chroma", "POST", f"{T}/collections/c/delete",
                      dumps({"where": {"a": 1}, "limit": 2}), by_filter())
    assert c is not None and c.parse({"ids": ["a", "b", "c"]}) == 3 and c.cap == 2
    p = count_request("pinecone", "POST", "/vectors/delete",
                      dumps({"filter": {"a": 1}, "namespace": "n"}), by_filter())
    assert p is not None
    assert p.parse({"namespaces": {"n": {"vectorCount": 4}, "m": {"vectorCount": 9}}}) == 4
    assert p.parse({"namespaces": {}}) == 0
    m = count_request("milvus", "POST", "/v2/vectordb/entities/delete",
                      dumps({"collectionName": "c", "filter": "a > 1"}), by_filter())
    assert m is not None and m.parse({"code": 0, "data": [{"count(*)": 12}]}) == 12
    with pytest.raises(ValueError):
        m.parse({"code": 1100, "message": "bad"})
    assert known_ids([Operation(action=A.WRITE, collection="c", ids=["1", "2"]),
                      Operation(action=A.WRITE, collection="c", vector_count=3),
                      by_filter()]) == 5


def _config(tmp: Path, route: Route) -> GatewayConfig:
    return GatewayConfig(routes=[route], policy_path=tmp / "p.yaml", log_url="sqlite:x",
                         issuer="http://127.0.0.1:1", audience="a", gateway_id="gw-review")


class _Sink:
    def __init__(self) -> None:
        self.batches: list[list[tuple[type[Event], dict[str, Any]]]] = []

    async def __call__(self, events: list[tuple[type[Event], dict[str, Any]]]) -> None:
        self.batches.append(events)

    def types(self) -> list[str]:
        return [cls.__name__ for batch in self.batches for cls, _ in batch]


def test_chroma_blast_radius_counts_what_a_filter_delete_would_touch(
    tmp_path: Path, chroma_url: str
) -> None:
    host, port = chroma_url.rsplit("//", 1)[1].split(":")
    res = run_chroma_client(host, int(port), [
        {"op": "get_or_create_collection", "name": "review-docs"},
        {"op": "upsert", "collection": "review-docs", "ids": ["a", "b", "c", "d"],
         "embeddings": [[0.1, 0.2], [0.2, 0.3], [0.3, 0.4], [0.4, 0.5]],
         "metadatas": [{"team": "x"}, {"team": "x"}, {"team": "y"}, {"team": "x"}]},
    ])
    assert all(r["ok"] for r in res), res
    cid = res[0]["result"]["id"]
    route = Route(kind="chroma", upstream=chroma_url, listen_port=0,
                  credential=SecretStr(SECRET), credential_ref="env:X")
    sink = _Sink()
    path = f"{T}/collections/{cid}/delete"
    review = asyncio.run(blast_radius(
        config=_config(tmp_path, route), route=route, product="chroma", method="POST",
        path=path, body=dumps({"where": {"team": "x"}}),
        operations=[by_filter(collection="review-docs")], request_id="r1", record=sink,
        policy_sha256="p" * 64))
    assert review.blast_radius == 3 and review.counts == (3,) and review.note == ""
    # recorded before it went upstream, then its answer
    assert sink.types() == ["RequestReceived", "PolicyDecided", "RequestForwarded",
                            "ResponseRecorded"]
    received = sink.batches[0][0][1]
    assert received["request_id"] == "r1.review1"
    assert received["path"] == f"{T}/collections/{cid}/get"
    assert received["operations"][0].action == A.READ
    assert sink.batches[1][0][1]["status"] == 200
    assert SECRET not in repr(sink.batches)
    # nothing was deleted: the count is read-only
    check = run_chroma_client(host, int(port), [{"op": "count", "collection": "review-docs"}])
    assert check[0]["result"] == 4


def test_qdrant_blast_radius_uses_points_count_with_the_gateway_credential(
    tmp_path: Path,
) -> None:
    with recording_upstream({"result": {"count": 42}, "status": "ok", "time": 0}) as up:
        route = Route(kind="qdrant", upstream=up.url, listen_port=0,
                      credential=SecretStr(SECRET), credential_ref="env:X")
        sink = _Sink()
        review = asyncio.run(blast_radius(
            config=_config(tmp_path, route), route=route, product="qdrant", method="POST",
            path="/collections/docs/points/delete", body=dumps({"filter": F}),
            operations=[by_filter(), Operation(action=A.DELETE, collection="docs",
                                               ids=["1"])],
            request_id="r2", record=sink, policy_sha256="p" * 64))
        assert review.blast_radius == 43  # 42 by the filter, 1 named
        [req] = up.requests
        assert (req.method, req.path) == ("POST", "/collections/docs/points/count")
        assert json.loads(req.body) == {"filter": F, "exact": True}
        assert req.headers.get("api-key") == SECRET
        assert SECRET not in repr(sink.batches)


def test_failed_count_gives_no_number_and_says_why(tmp_path: Path) -> None:
    with recording_upstream(lambda m, p, b: (500, {"status": {"error": "boom"}})) as up:
        route = Route(kind="qdrant", upstream=up.url, listen_port=0)
        sink = _Sink()
        review = asyncio.run(blast_radius(
            config=_config(tmp_path, route), route=route, product="qdrant", method="POST",
            path="/collections/docs/points/delete", body=dumps({"filter": F}),
            operations=[by_filter()], request_id="r3", record=sink, policy_sha256=""))
        assert review.blast_radius is None
        assert "500" in review.note
        assert sink.batches[-1][0][1]["status"] == 500


def test_unreachable_upstream_does_not_name_it(tmp_path: Path) -> None:
    from tests.support.services import free_port

    route = Route(kind="qdrant", upstream=f"http://127.0.0.1:{free_port()}", listen_port=0)
    sink = _Sink()
    review = asyncio.run(blast_radius(
        config=_config(tmp_path, route), route=route, product="qdrant", method="POST",
        path="/collections/docs/points/delete", body=dumps({"filter": F}),
        operations=[by_filter()], request_id="r4", record=sink, policy_sha256=""))
    assert review.blast_radius is None
    assert "count call failed (ConnectError)" in review.note
    assert "127.0.0.1" not in review.note


def test_nothing_is_sent_when_the_count_cannot_be_recorded(tmp_path: Path) -> None:
    from pipeline.transport.errors import EventLogError

    async def refuse(events: list[tuple[type[Event], dict[str, Any]]]) -> None:
        raise EventLogError("log down")

    with recording_upstream({"result": {"count": 1}}) as up:
        route = Route(kind="qdrant", upstream=up.url, listen_port=0)
        with pytest.raises(EventLogError):
            asyncio.run(blast_radius(
                config=_config(tmp_path, route), route=route, product="qdrant",
                method="POST", path="/collections/docs/points/delete",
                body=dumps({"filter": F}), operations=[by_filter()], request_id="r5",
                record=refuse, policy_sha256=""))
        assert up.requests == []


def test_ids_only_request_needs_no_call(tmp_path: Path) -> None:
    route = Route(kind="qdrant", upstream="http://127.0.0.1:9", listen_port=0)
    sink = _Sink()
    review = asyncio.run(blast_radius(
        config=_config(tmp_path, route), route=route, product="qdrant", method="PUT",
        path="/collections/docs/points", body=b"{}",
        operations=[Operation(action=A.WRITE, collection="docs", ids=["1", "2"],
                              vector_count=2)],
        request_id="r6", record=sink, policy_sha256=""))
    assert review.blast_radius == 2 and sink.batches == []
