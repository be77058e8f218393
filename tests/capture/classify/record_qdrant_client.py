"""Record the HTTP requests the official ``qdrant-client`` package sends.

Regenerates ``fixtures/qdrant_client_requests.json``, which
``test_qdrant_client_requests.py`` classifies. qdrant-client is not a
project dependency, so run this with an interpreter that has it, for
example a throwaway venv::

    python3.11 -m venv /tmp/qc-venv && /tmp/qc-venv/bin/pip install qdrant-client
    /tmp/qc-venv/bin/python tests/capture/classify/record_qdrant_client.py

A tiny HTTP server on 127.0.0.1 records each request and answers with the
``{"result": ..., "status": "ok", "time": 0}`` envelope, shaped so the
client's response models parse. No Qdrant server is needed.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

FIXTURE = Path(__file__).with_name("fixtures") / "qdrant_client_requests.json"
UPDATE = {"operation_id": 0, "status": "completed"}

RECORDED: list[dict[str, object]] = []
CURRENT_CALL = {"name": ""}


def _result_for(method: str, path: str, body: object) -> object:
    """A response ``result`` the client's models accept for this endpoint."""
    if path == "/":
        return None  # answered without the envelope, see _Handler
    rules: list[tuple[str, str, object]] = [
        ("GET", r"/collections", {"collections": []}),
        ("GET", r"/collections/[^/]+/exists", {"exists": True}),
        ("GET", r"/aliases", {"aliases": []}),
        ("GET", r"/collections/[^/]+/aliases", {"aliases": []}),
        ("POST", r"/collections/aliases", True),
        ("PUT|DELETE|PATCH", r"/collections/[^/]+", True),
        ("POST", r"/collections/[^/]+/points/query", {"points": []}),
        ("POST", r"/collections/[^/]+/points/query/groups", {"groups": []}),
        ("POST", r"/collections/[^/]+/points/scroll", {"points": [], "next_page_offset": None}),
        ("POST", r"/collections/[^/]+/points/count", {"count": 0}),
        ("POST", r"/collections/[^/]+/points", []),
        ("POST", r"/collections/[^/]+/facet", {"hits": []}),
        ("POST", r"/collections/[^/]+/points/search/matrix/pairs", {"pairs": []}),
        (
            "POST",
            r"/collections/[^/]+/points/search/matrix/offsets",
            {"offsets_row": [], "offsets_col": [], "scores": [], "ids": []},
        ),
        (
            "POST",
            r"/collections/[^/]+/snapshots",
            {"name": "s.snapshot", "creation_time": None, "size": 0},
        ),
        ("GET", r"/collections/[^/]+/snapshots", []),
    ]
    for methods, pattern, result in rules:
        if method in methods.split("|") and re.fullmatch(pattern, path):
            return result
    if path.endswith("/points/query/batch") and isinstance(body, dict):
        return [{"points": []} for _ in body.get("searches", [])]
    if path.endswith("/points/batch") and isinstance(body, dict):
        return [UPDATE for _ in body.get("operations", [])]
    return UPDATE


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        RECORDED.append(
            {
                "call": CURRENT_CALL["name"],
                "method": self.command,
                "path": url.path,
                "query": parse_qsl(url.query, keep_blank_values=True),
                "content_type": self.headers.get("content-type"),
                "body": body,
            }
        )
        if url.path == "/":
            payload: object = {
                "title": "qdrant - vector search engine",
                "version": "1.19.0",
                "commit": "0" * 40,
            }
        else:
            payload = {
                "result": _result_for(self.command, url.path, body),
                "status": "ok",
                "time": 0,
            }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return


def _calls(client, m):  # type: ignore[no-untyped-def]
    flt = m.Filter(must=[m.FieldCondition(key="tenant", match=m.MatchValue(value="t1"))])
    return [
        ("info", lambda: client.info()),
        (
            "create_collection",
            lambda: client.create_collection(
                "docs", vectors_config=m.VectorParams(size=2, distance=m.Distance.COSINE)
            ),
        ),
        ("collection_exists", lambda: client.collection_exists("docs")),
        ("get_collections", lambda: client.get_collections()),
        (
            "upsert_points",
            lambda: client.upsert(
                "docs",
                points=[
                    m.PointStruct(id=1, vector=[0.1, 0.2], payload={"email": "a@x.io"}),
                    m.PointStruct(id="6b1b5c3e-6f0e-4b6a-9a57-3f3c8f0b2a11", vector=[0.3, 0.4]),
                ],
            ),
        ),
        (
            "upsert_batch",
            lambda: client.upsert(
                "docs", points=m.Batch(ids=[2, 3], vectors=[[0.1, 0.2], [0.3, 0.4]])
            ),
        ),
        (
            "query_points",
            lambda: client.query_points("docs", query=[0.1, 0.2], limit=3, with_payload=True),
        ),
        (
            "query_points_recommend",
            lambda: client.query_points(
                "docs",
                query=m.RecommendQuery(recommend=m.RecommendInput(positive=[7])),
                limit=5,
                lookup_from=m.LookupLocation(collection="archive"),
            ),
        ),
        (
            "query_points_prefetch",
            lambda: client.query_points(
                "docs",
                prefetch=[m.Prefetch(query=[0.1, 0.2], filter=flt, limit=20)],
                query=m.FusionQuery(fusion=m.Fusion.RRF),
                limit=4,
            ),
        ),
        (
            "query_batch_points",
            lambda: client.query_batch_points(
                "docs",
                requests=[
                    m.QueryRequest(query=[0.1, 0.2], limit=2),
                    m.QueryRequest(query=9, limit=2),
                ],
            ),
        ),
        (
            "query_points_groups",
            lambda: client.query_points_groups(
                "docs",
                group_by="doc_id",
                query=[0.1, 0.2],
                limit=2,
                group_size=3,
                with_lookup="archive",
            ),
        ),
        ("retrieve", lambda: client.retrieve("docs", ids=[1, 2], with_vectors=True)),
        ("scroll", lambda: client.scroll("docs", scroll_filter=flt, limit=10)),
        (
            "count",
            lambda: client.count(
                "docs", count_filter=m.Filter(must=[m.HasIdCondition(has_id=[4, 5])])
            ),
        ),
        ("facet", lambda: client.facet("docs", key="tenant")),
        ("search_matrix_pairs", lambda: client.search_matrix_pairs("docs", sample=10, limit=2)),
        (
            "delete_by_filter",
            lambda: client.delete("docs", points_selector=m.FilterSelector(filter=flt)),
        ),
        (
            "delete_by_ids",
            lambda: client.delete("docs", points_selector=m.PointIdsList(points=[1, 2])),
        ),
        ("set_payload", lambda: client.set_payload("docs", payload={"a": 1}, points=[1])),
        (
            "overwrite_payload",
            lambda: client.overwrite_payload("docs", payload={"a": 1}, points=[1]),
        ),
        ("delete_payload", lambda: client.delete_payload("docs", keys=["a"], points=[1])),
        ("clear_payload", lambda: client.clear_payload("docs", points_selector=[1])),
        (
            "update_vectors",
            lambda: client.update_vectors("docs", points=[m.PointVectors(id=1, vector=[0.5, 0.6])]),
        ),
        ("delete_vectors", lambda: client.delete_vectors("docs", vectors=[""], points=[1])),
        (
            "batch_update_points",
            lambda: client.batch_update_points(
                "docs",
                update_operations=[
                    m.UpsertOperation(
                        upsert=m.PointsList(points=[m.PointStruct(id=3, vector=[0.3, 0.4])])
                    ),
                    m.DeleteOperation(delete=m.PointIdsList(points=[1])),
                ],
            ),
        ),
        (
            "create_payload_index",
            lambda: client.create_payload_index(
                "docs", field_name="tenant", field_schema=m.PayloadSchemaType.KEYWORD
            ),
        ),
        ("delete_payload_index", lambda: client.delete_payload_index("docs", "tenant")),
        (
            "update_collection_aliases",
            lambda: client.update_collection_aliases(
                change_aliases_operations=[
                    m.CreateAliasOperation(
                        create_alias=m.CreateAlias(collection_name="docs", alias_name="current")
                    )
                ]
            ),
        ),
        ("create_snapshot", lambda: client.create_snapshot("docs")),
        ("list_snapshots", lambda: client.list_snapshots("docs")),
        ("delete_collection", lambda: client.delete_collection("docs")),
    ]


def main() -> int:
    try:
        from qdrant_client import QdrantClient, models
    except ImportError:
        print(
            "qdrant-client is not installed in this interpreter; see the docstring", file=sys.stderr
        )
        return 2
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        client = QdrantClient(url=f"http://127.0.0.1:{port}", check_compatibility=False, timeout=5)
        for name, call in _calls(client, models):
            CURRENT_CALL["name"] = name
            call()
        client.close()
    finally:
        server.shutdown()
        server.server_close()
    try:
        from importlib.metadata import version

        client_version = version("qdrant-client")
    except Exception:  # noqa: BLE001
        client_version = "unknown"
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(
        json.dumps({"qdrant_client_version": client_version, "requests": RECORDED}, indent=1) + "\n"
    )
    print(f"recorded {len(RECORDED)} requests from qdrant-client {client_version} into {FIXTURE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
