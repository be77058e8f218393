"""The requests the official qdrant-client actually sends, classified.

``fixtures/qdrant_client_requests.json`` is recorded by
``record_qdrant_client.py`` from a real qdrant-client against a recording
HTTP server on loopback. Each recorded call has an expected classification
here; a call recorded but not listed fails the test, so re-recording with a
newer client surfaces new traffic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from capture.classify import classify, detect_product
from tests.capture.classify.table import E, Row, check

FIXTURE = Path(__file__).with_name("fixtures") / "qdrant_client_requests.json"
RECORDED: list[dict[str, Any]] = json.loads(FIXTURE.read_text())["requests"]
UID = "6b1b5c3e-6f0e-4b6a-9a57-3f3c8f0b2a11"

EXPECTED: dict[str, list[dict[str, Any]]] = {
    "info": [E("health", None)],
    "create_collection": [E("admin", "docs", detail="create_collection")],
    "collection_exists": [E("schema", "docs")],
    "get_collections": [E("schema", None)],
    "upsert_points": [E("write", "docs", ids=["1", UID], ids_known=True, vector_count=2)],
    "upsert_batch": [E("write", "docs", ids=["2", "3"], vector_count=2)],
    "query_points": [
        E("search", "docs", ids=[], ids_known=False, vector_count=1, limit=3, with_vectors=False)
    ],
    "query_points_recommend": [
        E("search", "docs", ids=["7"], limit=5),
        E("read", "archive", ids=["7"], detail="lookup_from"),
    ],
    "query_points_prefetch": [E("search", "docs", vector_count=1, filter_present=True, limit=4)],
    "query_batch_points": [
        E("search", "docs", vector_count=1, limit=2),
        E("search", "docs", ids=["9"], limit=2),
    ],
    "query_points_groups": [
        E("search", "docs", limit=6),
        E("read", "archive", ids_known=False, detail="with_lookup"),
    ],
    "retrieve": [E("read", "docs", ids=["1", "2"], ids_known=True, with_vectors=True)],
    "scroll": [E("read", "docs", ids_known=False, filter_present=True, limit=10)],
    "count": [E("read", "docs", ids=["4", "5"], ids_known=False, filter_present=True)],
    "facet": [E("read", "docs", limit=10)],
    "search_matrix_pairs": [E("search", "docs", limit=20)],
    "delete_by_filter": [E("delete", "docs", ids=[], ids_known=False, filter_present=True)],
    "delete_by_ids": [E("delete", "docs", ids=["1", "2"], ids_known=True)],
    "set_payload": [E("write", "docs", ids=["1"], detail="set_payload")],
    "overwrite_payload": [E("write", "docs", ids=["1"], detail="overwrite_payload")],
    "delete_payload": [E("write", "docs", ids=["1"], detail="delete_payload")],
    "clear_payload": [E("write", "docs", ids=["1"], detail="clear_payload")],
    "update_vectors": [E("write", "docs", ids=["1"], vector_count=1, detail="update_vectors")],
    "delete_vectors": [E("delete", "docs", ids=["1"], detail="delete_vectors")],
    "batch_update_points": [
        E("write", "docs", ids=["3"], vector_count=1),
        E("delete", "docs", ids=["1"]),
    ],
    "create_payload_index": [E("admin", "docs", detail="create_field_index")],
    "delete_payload_index": [E("admin", "docs", detail="field_index")],
    "update_collection_aliases": [
        E("admin", "docs", detail="create_alias"),
        E("admin", "current", detail="create_alias"),
        E("read", "docs", bulk=True, ids_known=False, detail="create_alias:target"),
        E("write", "docs", bulk=True, ids_known=False, detail="create_alias:target"),
    ],
    "create_snapshot": [E("admin", "docs", detail="create_snapshot")],
    "list_snapshots": [E("admin", "docs", detail="list_snapshots")],
    "delete_collection": [E("admin", "docs", detail="delete_collection")],
}


def _row(rec: dict[str, Any]) -> Row:
    body = rec["body"]
    return Row(
        rec["call"],
        rec["method"],
        rec["path"],
        body=json.dumps(body).encode() if body is not None else None,
        query=[tuple(q) for q in rec["query"]],
        expect=EXPECTED.get(rec["call"], []),
    )


@pytest.mark.parametrize(
    "rec", [pytest.param(r, id=f"{r['call']}:{r['method']} {r['path']}") for r in RECORDED]
)
def test_recorded_request(rec: dict[str, Any]) -> None:
    assert rec["call"] in EXPECTED, f"no expectation for recorded call {rec['call']}"
    row = _row(rec)
    check(classify("qdrant", row.request()), row, "qdrant")
    assert detect_product(row.request()) == "qdrant"


def test_every_expectation_was_recorded() -> None:
    assert {r["call"] for r in RECORDED} == set(EXPECTED)
