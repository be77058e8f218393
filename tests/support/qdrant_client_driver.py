"""Drive the official qdrant-client over REST (run with the peers venv's python).

Usage: ``qdrant_client_driver.py URL`` with a JSON list of step names on stdin
(see ``CALLS``); prints one JSON line per step:
``{"step": ..., "ok": true, "result": ...}`` or
``{"step": ..., "ok": false, "status": N, "error": "..."}``.

The caller's OIDC token comes from ``EG_TOKEN`` and reaches the client through
``auth_token_provider``, which qdrant-client sends as ``Authorization: Bearer``.
``EG_HEADERS`` (JSON) adds headers to every request (a change ticket, a session
name); ``EG_API_KEY`` sets the client's own ``api-key`` header, which the
gateway must strip. The arguments mirror
``tests/capture/classify/record_qdrant_client.py``, so the classifier corpus's
expectations apply to what is sent here.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

UID = "6b1b5c3e-6f0e-4b6a-9a57-3f3c8f0b2a11"


def _calls(client: QdrantClient) -> dict[str, Callable[[], Any]]:
    m = models
    flt = m.Filter(must=[m.FieldCondition(key="tenant", match=m.MatchValue(value="t1"))])
    return {
        "info": lambda: client.info(),
        "create_collection": lambda: client.create_collection(
            "docs", vectors_config=m.VectorParams(size=2, distance=m.Distance.COSINE)
        ),
        "collection_exists": lambda: client.collection_exists("docs"),
        "get_collections": lambda: client.get_collections(),
        "upsert_points": lambda: client.upsert(
            "docs",
            points=[
                m.PointStruct(id=1, vector=[0.1, 0.2], payload={"email": "a@x.io"}),
                m.PointStruct(id=UID, vector=[0.3, 0.4]),
            ],
        ),
        "query_points": lambda: client.query_points(
            "docs", query=[0.1, 0.2], limit=3, with_payload=True
        ),
        "retrieve": lambda: client.retrieve("docs", ids=[1, 2], with_vectors=True),
        "scroll": lambda: client.scroll("docs", scroll_filter=flt, limit=10),
        "count": lambda: client.count(
            "docs", count_filter=m.Filter(must=[m.HasIdCondition(has_id=[4, 5])])
        ),
        "set_payload": lambda: client.set_payload("docs", payload={"a": 1}, points=[1]),
        "delete_by_filter": lambda: client.delete(
            "docs", points_selector=m.FilterSelector(filter=flt)
        ),
        "delete_collection": lambda: client.delete_collection("docs"),
    }


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def main() -> None:
    url = sys.argv[1]
    token = os.environ.get("EG_TOKEN")
    headers = json.loads(os.environ.get("EG_HEADERS", "{}"))
    steps = json.loads(sys.stdin.read())
    with warnings.catch_warnings():
        # "Api key / auth token provider is used with an insecure connection":
        # the gateway listens on loopback http in these tests.
        warnings.simplefilter("ignore", UserWarning)
        client = QdrantClient(
            url=url,
            prefer_grpc=False,
            check_compatibility=False,
            timeout=30,
            headers=headers,
            api_key=os.environ.get("EG_API_KEY") or None,
            auth_token_provider=(lambda: token) if token else None,
        )
    calls = _calls(client)
    for step in steps:
        try:
            result = _jsonable(calls[step]())
            out: dict[str, Any] = {"step": step, "ok": True, "result": result}
        except UnexpectedResponse as exc:
            out = {
                "step": step,
                "ok": False,
                "status": exc.status_code,
                "error": exc.content.decode(errors="replace"),
            }
        except Exception as exc:  # noqa: BLE001 - report to the test
            out = {
                "step": step,
                "ok": False,
                "status": None,
                "error": f"{type(exc).__name__}: {exc}",
            }
        print(json.dumps(out), flush=True)
    client.close()


if __name__ == "__main__":
    main()
