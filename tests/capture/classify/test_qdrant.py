"""capture/classify/qdrant.py: every route of the Qdrant table, plus the
query-body grammar and malformed bodies."""

from __future__ import annotations

import json

import pytest

from capture.classify.qdrant import ROUTES, classify_qdrant
from tests.capture.classify.table import E, Row, assert_routes_covered, params, run_rows

C = "/collections/docs"
FLT = {"must": [{"key": "tenant", "match": {"value": "t1"}}]}
UID = "6b1b5c3e-6f0e-4b6a-9a57-3f3c8f0b2a11"

SERVICE = [
    Row(f"health {p}", "GET", p, expect=[E("health", None)])
    for p in (
        "/",
        "/healthz",
        "/livez",
        "/readyz",
        "/metrics",
        "/telemetry",
        "/cluster",
        "/cluster/telemetry",
        "/issues",
        "/quotas",
    )
] + [
    Row("recover peer", "POST", "/cluster/recover", expect=[E("admin")]),
    Row("remove peer", "DELETE", "/cluster/peer/42", expect=[E("admin")]),
    Row("clear issues", "DELETE", "/issues", expect=[E("admin")]),
    Row("set quotas", "PUT", "/quotas", body={}, expect=[E("admin")]),
    Row("metadata keys", "GET", "/cluster/metadata/keys", expect=[E("admin")]),
    Row("metadata key", "GET", "/cluster/metadata/keys/k1", expect=[E("admin")]),
    Row("metadata put", "PUT", "/cluster/metadata/keys/k1", body={"v": 1}, expect=[E("admin")]),
    Row("audit logs", "POST", "/audit/logs", expect=[E("admin")]),
    Row("slow requests", "GET", "/profiler/slow_requests", expect=[E("admin")]),
    Row("debugger", "PATCH", "/debugger", expect=[E("admin")]),
    Row("logger", "POST", "/logger", expect=[E("admin")]),
    Row("stacktrace", "GET", "/stacktrace", expect=[E("admin")]),
]

COLLECTIONS = [
    Row("list collections", "GET", "/collections", expect=[E("schema", None)]),
    Row("list aliases", "GET", "/aliases", expect=[E("schema", None)]),
    Row(
        "get collection",
        "GET",
        C,
        expect=[E("schema", "docs")],
        user_data=["result.payload_schema"],
    ),
    Row(
        "create collection",
        "PUT",
        C,
        body={"vectors": {"size": 2, "distance": "Cosine"}},
        expect=[E("admin", "docs", detail="create_collection")],
    ),
    Row("update collection", "PATCH", C, body={}, expect=[E("admin", "docs")]),
    Row("delete collection", "DELETE", C, expect=[E("admin", "docs", detail="delete_collection")]),
    Row("collection aliases", "GET", C + "/aliases", expect=[E("schema", "docs")]),
    Row("exists", "GET", C + "/exists", expect=[E("schema", "docs")]),
    Row("cluster info", "GET", C + "/cluster", expect=[E("schema", "docs")]),
    Row("cluster update", "POST", C + "/cluster", body={}, expect=[E("admin", "docs")]),
    Row("optimizations", "GET", C + "/optimizations", expect=[E("schema", "docs")]),
    Row("shard keys", "GET", C + "/shards", expect=[E("schema", "docs")]),
    Row("create shard key", "PUT", C + "/shards", body={}, expect=[E("admin", "docs")]),
    Row("delete shard key", "POST", C + "/shards/delete", body={}, expect=[E("admin", "docs")]),
    Row("memory", "GET", C + "/memory", expect=[E("schema", "docs")]),
    Row("create index", "PUT", C + "/index", body={"field_name": "t"}, expect=[E("admin", "docs")]),
    Row("delete index", "DELETE", C + "/index/t", expect=[E("admin", "docs")]),
    Row("create vector", "PUT", C + "/vectors/img", body={}, expect=[E("admin", "docs")]),
    Row("debug", "GET", C + "/debug", expect=[E("admin", "docs")]),
    Row("truncate wal", "POST", C + "/truncate_unapplied_wal", expect=[E("admin", "docs")]),
    Row("shard cleanup", "POST", C + "/shards/0/cleanup", expect=[E("admin", "docs")]),
    Row(
        "aliases: create + delete + rename",
        "POST",
        "/collections/aliases",
        body={
            "actions": [
                {"create_alias": {"collection_name": "docs", "alias_name": "current"}},
                {"delete_alias": {"alias_name": "old"}},
                {"rename_alias": {"old_alias_name": "a", "new_alias_name": "b"}},
            ]
        },
        expect=[
            E("admin", "docs", detail="create_alias"),
            E("admin", "current", detail="create_alias"),
            # everything through the alias reaches docs (found in review)
            E("read", "docs", bulk=True, ids_known=False, detail="create_alias:target"),
            E("write", "docs", bulk=True, ids_known=False, detail="create_alias:target"),
            E("admin", "old", detail="delete_alias"),
            E("admin", "a", detail="rename_alias"),
            E("admin", "b", detail="rename_alias"),
        ],
    ),
    Row("full snapshots list", "GET", "/snapshots", expect=[E("admin", "*")]),
    Row("full snapshot create", "POST", "/snapshots", expect=[E("admin", "*")]),
    Row(
        "full snapshot download",
        "GET",
        "/snapshots/s1",
        expect=[E("admin", "*", ids_known=False, detail="download_full_snapshot")],
    ),
    Row("full snapshot delete", "DELETE", "/snapshots/s1", expect=[E("admin", "*")]),
    Row("snapshots list", "GET", C + "/snapshots", expect=[E("admin", "docs")]),
    Row("snapshot create", "POST", C + "/snapshots", expect=[E("admin", "docs")]),
    Row(
        "snapshot recover",
        "PUT",
        C + "/snapshots/recover",
        body={"location": "file:///etc/passwd"},
        # a snapshot from anywhere may hold any collection's points
        expect=[
            E("admin", "docs", detail="recover_snapshot"),
            E("read", "*", bulk=True, ids_known=False, detail="recover_snapshot:location"),
        ],
    ),
    Row(
        "snapshot recover from a URL",
        "PUT",
        C + "/snapshots/recover",
        body={"location": "http://qdrant:6333/collections/restricted-hr/snapshots/s.snapshot"},
        expect=[E("admin", "docs"), E("read", "*", bulk=True)],
    ),
    Row(
        "create collection",
        "PUT",
        C,
        body={"vectors": {"size": 4, "distance": "Dot"}},
        expect=[E("admin", "docs", detail="create_collection")],
    ),
    Row(
        "create collection init_from another collection",
        "PUT",
        C,
        body={"vectors": {"size": 4}, "init_from": {"collection": "restricted-hr"}},
        # the copy is a bulk read of the source, decided separately
        expect=[
            E("admin", "docs", detail="create_collection"),
            E("read", "restricted-hr", bulk=True, ids_known=False,
              detail="create_collection:init_from"),
        ],
    ),
    Row(
        "create collection init_from null",
        "PUT",
        C,
        body={"vectors": {"size": 4, "distance": "Dot"}, "init_from": None},
        expect=[E("admin", "docs")],
    ),
    Row(
        "create collection init_from without a collection",
        "PUT",
        C,
        body={"init_from": {}},
        error="body.init_from.collection must be a string",
    ),
    Row(
        "snapshot upload",
        "POST",
        C + "/snapshots/upload",
        body=b"\x00binary",
        expect=[E("admin", "docs")],
    ),
    Row(
        "snapshot download",
        "GET",
        C + "/snapshots/s1.snapshot",
        expect=[E("admin", "docs", ids_known=False, detail="download_snapshot")],
    ),
    Row("snapshot delete", "DELETE", C + "/snapshots/s1", expect=[E("admin", "docs")]),
    Row("shard snapshots", "GET", C + "/shards/0/snapshots", expect=[E("admin", "docs")]),
    Row("shard snapshot create", "POST", C + "/shards/0/snapshots", expect=[E("admin", "docs")]),
    Row(
        "shard snapshot recover",
        "PUT",
        C + "/shards/0/snapshots/recover",
        body={},
        expect=[E("admin", "docs")],
    ),
    Row(
        "shard snapshot recover from a location",
        "PUT",
        C + "/shards/0/snapshots/recover",
        body={"location": "file:///qdrant/snapshots/restricted-hr/s.snapshot"},
        expect=[
            E("admin", "docs"),
            E("read", "*", bulk=True, detail="recover_shard_snapshot:location"),
        ],
    ),
    Row(
        "shard snapshot upload",
        "POST",
        C + "/shards/0/snapshots/upload",
        expect=[E("admin", "docs")],
    ),
    Row(
        "shard snapshot download",
        "GET",
        C + "/shards/0/snapshots/s1",
        expect=[E("admin", "docs", ids_known=False)],
    ),
    Row(
        "shard snapshot delete", "DELETE", C + "/shards/0/snapshots/s1", expect=[E("admin", "docs")]
    ),
    Row(
        "shard snapshot stream",
        "GET",
        C + "/shards/0/snapshot",
        expect=[E("admin", "docs", ids_known=False)],
    ),
]

READS = [
    Row(
        "get point",
        "GET",
        f"{C}/points/{UID}",
        expect=[E("read", "docs", ids=[UID])],
        response_ids=["result.id"],
        user_data=["result.payload"],
        vectors=["result.vector"],
    ),
    Row(
        "retrieve with vectors",
        "POST",
        C + "/points",
        body={"ids": [1, UID], "with_vector": True},
        expect=[E("read", "docs", ids=["1", UID], with_vectors=True)],
    ),
    Row(
        "scroll",
        "POST",
        C + "/points/scroll",
        body={"filter": FLT, "limit": 10, "offset": 5, "with_vectors": ["img"]},
        expect=[
            E(
                "read",
                "docs",
                ids=[],
                ids_known=False,
                filter_present=True,
                limit=10,
                with_vectors=True,
            )
        ],
        response_ids=["result.points[].id", "result.next_page_offset"],
        user_data=["result.points[].payload"],
    ),
    Row(
        "scroll everything",
        "POST",
        C + "/points/scroll",
        body={},
        expect=[E("read", "docs", ids_known=False, filter_present=False, limit=None)],
    ),
    Row(
        "count has_id",
        "POST",
        C + "/points/count",
        body={"filter": {"must": [{"has_id": [4, 5]}]}},
        expect=[E("read", "docs", ids=["4", "5"], ids_known=False, filter_present=True)],
    ),
    Row(
        "facet",
        "POST",
        C + "/facet",
        body={"key": "tenant", "limit": 3},
        expect=[E("read", "docs", limit=3, ids_known=False)],
        user_data=["result.hits[].value"],
    ),
    Row(
        "shard retrieve",
        "POST",
        C + "/shards/1/points",
        body={"ids": [1]},
        expect=[E("read", "docs", ids=["1"])],
    ),
    Row(
        "shard scroll",
        "POST",
        C + "/shards/1/points/scroll",
        body={"filter": FLT},
        expect=[E("read", "docs", filter_present=True)],
    ),
    Row("shard count", "POST", C + "/shards/1/points/count", body={}, expect=[E("read", "docs")]),
]

SEARCHES = [
    Row(
        "query by id",
        "POST",
        C + "/points/query",
        body={"query": UID},
        expect=[E("search", "docs", ids=[UID], ids_known=False, vector_count=0)],
    ),
    Row(
        "query nearest sparse + filter",
        "POST",
        C + "/points/query",
        body={
            "query": {"nearest": {"indices": [1], "values": [0.5]}},
            "using": "text",
            "filter": {"must_not": [{"has_id": [9]}]},
        },
        expect=[E("search", "docs", ids=["9"], vector_count=1, filter_present=True)],
    ),
    Row(
        "query document text",
        "POST",
        C + "/points/query",
        body={"query": {"text": "hello", "model": "m"}},
        expect=[E("search", "docs", ids=[], vector_count=0)],
    ),
    Row(
        "query discover + context + nested prefetch",
        "POST",
        C + "/points/query",
        body={
            "prefetch": {
                "prefetch": [{"query": 11, "lookup_from": {"collection": "other"}, "filter": FLT}],
                "query": {"context": [{"positive": 12, "negative": [0.1, 0.2]}]},
            },
            "query": {"discover": {"target": 13, "context": [{"positive": 14, "negative": 15}]}},
            "with_vector": True,
        },
        expect=[
            E(
                "search",
                "docs",
                ids=["13", "14", "15", "12", "11"],
                vector_count=1,
                filter_present=True,
                with_vectors=True,
            ),
            E("read", "other", ids=["11"], detail="lookup_from"),
        ],
    ),
    Row(
        "query fusion + order_by",
        "POST",
        C + "/points/query",
        body={"prefetch": [{"query": [0.1]}, {"query": [0.2]}], "query": {"fusion": "rrf"}},
        expect=[E("search", "docs", vector_count=2)],
    ),
    Row(
        "query multivector",
        "POST",
        C + "/points/query",
        body={"query": [[0.1], [0.2]]},
        expect=[E("search", "docs", vector_count=1)],
    ),
    Row(
        "query batch",
        "POST",
        C + "/points/query/batch",
        body={"searches": [{"query": [0.1], "limit": 2}, {"query": 9, "filter": FLT}]},
        expect=[
            E("search", "docs", vector_count=1, limit=2),
            E("search", "docs", ids=["9"], filter_present=True),
        ],
        response_ids=["result[].points[].id"],
        user_data=["result[].points[].payload"],
    ),
    Row(
        "query groups + with_lookup",
        "POST",
        C + "/points/query/groups",
        body={
            "query": [0.1],
            "group_by": "doc",
            "limit": 2,
            "group_size": 3,
            "with_lookup": {"collection": "docs_meta"},
        },
        expect=[
            E("search", "docs", limit=6),
            E("read", "docs_meta", ids_known=False, detail="with_lookup"),
        ],
        response_ids=["result.groups[].hits[].id", "result.groups[].lookup.id"],
        user_data=[
            "result.groups[].hits[].payload",
            "result.groups[].lookup.payload",
            "result.groups[].id",
        ],
    ),
    Row(
        "legacy search named vector",
        "POST",
        C + "/points/search",
        body={"vector": {"name": "img", "vector": [0.1, 0.2]}, "limit": 4, "filter": FLT},
        expect=[E("search", "docs", vector_count=1, limit=4, filter_present=True)],
        response_ids=["result[].id"],
        user_data=["result[].payload"],
    ),
    Row(
        "legacy search batch",
        "POST",
        C + "/points/search/batch",
        body={"searches": [{"vector": [0.1]}, {"vector": [0.2]}]},
        expect=[E("search", "docs"), E("search", "docs")],
        response_ids=["result[][].id"],
    ),
    Row(
        "legacy search groups",
        "POST",
        C + "/points/search/groups",
        body={"vector": [0.1], "group_by": "d", "with_lookup": "meta"},
        expect=[E("search", "docs"), E("read", "meta", detail="with_lookup")],
    ),
    Row(
        "recommend",
        "POST",
        C + "/points/recommend",
        body={"positive": [1, [0.1, 0.2]], "negative": [2], "lookup_from": {"collection": "x"}},
        expect=[
            E("search", "docs", ids=["1", "2"], vector_count=1),
            E("read", "x", ids=["1", "2"]),
        ],
    ),
    Row(
        "recommend batch",
        "POST",
        C + "/points/recommend/batch",
        body={"searches": [{"positive": [1]}]},
        expect=[E("search", "docs", ids=["1"])],
    ),
    Row(
        "recommend groups",
        "POST",
        C + "/points/recommend/groups",
        body={"positive": [1], "group_by": "d"},
        expect=[E("search", "docs", ids=["1"])],
    ),
    Row(
        "discover",
        "POST",
        C + "/points/discover",
        body={"target": 1, "context": [{"positive": 2, "negative": 3}]},
        expect=[E("search", "docs", ids=["1", "2", "3"])],
    ),
    Row(
        "discover batch",
        "POST",
        C + "/points/discover/batch",
        body={"searches": [{"target": [0.1], "context": []}]},
        expect=[E("search", "docs", vector_count=1)],
    ),
    Row(
        "matrix pairs",
        "POST",
        C + "/points/search/matrix/pairs",
        body={"sample": 10, "limit": 2, "filter": FLT},
        expect=[E("search", "docs", limit=20, filter_present=True)],
        response_ids=["result.pairs[].a", "result.pairs[].b"],
    ),
    Row(
        "matrix offsets",
        "POST",
        C + "/points/search/matrix/offsets",
        body={},
        expect=[E("search", "docs")],
        response_ids=["result.ids[]"],
    ),
    # limit is the most points returned; an absent factor has Qdrant's default
    Row(
        "matrix pairs, default sample of 10",
        "POST",
        C + "/points/search/matrix/pairs",
        body={"limit": 2},
        expect=[E("search", "docs", limit=20)],
        response_ids=["result.pairs[].a", "result.pairs[].b"],
    ),
    Row(
        "query groups, default group_size of 3",
        "POST",
        C + "/points/query/groups",
        body={"query": [0.1], "group_by": "doc", "limit": 5},
        expect=[E("search", "docs", vector_count=1, limit=15)],
        response_ids=["result.groups[].hits[].id", "result.groups[].lookup.id"],
        user_data=[
            "result.groups[].hits[].payload",
            "result.groups[].lookup.payload",
            "result.groups[].id",
        ],
    ),
]

WRITES = [
    Row(
        "upsert batch form",
        "PUT",
        C + "/points",
        body={"batch": {"ids": [1, 2], "vectors": [[0.1], [0.2]]}},
        expect=[E("write", "docs", ids=["1", "2"], vector_count=2)],
    ),
    Row(
        "conditional upsert",
        "PUT",
        C + "/points",
        body={"points": [{"id": 1, "vector": [0.1]}], "update_filter": FLT},
        expect=[E("write", "docs", ids=["1"], ids_known=False, filter_present=True)],
    ),
    Row(
        "update vectors",
        "PUT",
        C + "/points/vectors",
        body={"points": [{"id": 1, "vector": {"img": [0.1]}}]},
        expect=[E("write", "docs", ids=["1"], vector_count=1, detail="update_vectors")],
    ),
    Row(
        "set payload by filter",
        "POST",
        C + "/points/payload",
        body={"payload": {"a": 1}, "filter": FLT},
        expect=[
            E("write", "docs", ids=[], ids_known=False, filter_present=True, detail="set_payload")
        ],
    ),
    Row(
        "overwrite payload",
        "PUT",
        C + "/points/payload",
        body={"payload": {}, "points": [1]},
        expect=[E("write", "docs", ids=["1"], detail="overwrite_payload")],
    ),
    Row(
        "delete payload keys",
        "POST",
        C + "/points/payload/delete",
        body={"keys": ["a"], "points": [1, 2]},
        expect=[E("write", "docs", ids=["1", "2"], detail="delete_payload")],
    ),
    Row(
        "clear payload",
        "POST",
        C + "/points/payload/clear",
        body={"filter": FLT},
        expect=[E("write", "docs", filter_present=True, detail="clear_payload")],
    ),
    Row(
        "delete points by id",
        "POST",
        C + "/points/delete",
        body={"points": [1, UID]},
        expect=[E("delete", "docs", ids=["1", UID], ids_known=True)],
    ),
    Row(
        "delete vectors",
        "POST",
        C + "/points/vectors/delete",
        body={"points": [1], "vector": ["img"]},
        expect=[E("delete", "docs", ids=["1"], detail="delete_vectors")],
    ),
    Row(
        "batch: every operation kind",
        "POST",
        C + "/points/batch",
        body={
            "operations": [
                {"upsert": {"batch": {"ids": [1], "vectors": [[0.1]]}}},
                {"update_vectors": {"points": [{"id": 2, "vector": [0.2]}]}},
                {"delete_vectors": {"filter": FLT, "vector": ["x"]}},
                {"set_payload": {"payload": {}, "points": [3]}},
                {"overwrite_payload": {"payload": {}, "points": [4]}},
                {"delete_payload": {"keys": ["a"], "filter": {"must": [{"has_id": [5]}]}}},
                {"clear_payload": {"points": [6]}},
                {"delete": {"filter": FLT}},
            ]
        },
        expect=[
            E("write", "docs", ids=["1"], vector_count=1, detail="upsert"),
            E("write", "docs", ids=["2"], vector_count=1, detail="update_vectors"),
            E("delete", "docs", ids_known=False, filter_present=True, detail="delete_vectors"),
            E("write", "docs", ids=["3"], detail="set_payload"),
            E("write", "docs", ids=["4"], detail="overwrite_payload"),
            E("write", "docs", ids=["5"], ids_known=False, detail="delete_payload"),
            E("write", "docs", ids=["6"], detail="clear_payload"),
            E("delete", "docs", filter_present=True, detail="delete"),
        ],
    ),
]

ERRORS = [
    Row("unknown path", "GET", "/nope", error="unrecognised endpoint GET /nope"),
    Row("wrong method", "PATCH", C + "/points", error="method PATCH is not recognised"),
    Row("empty body", "PUT", C + "/points", error="body is empty"),
    Row("invalid json", "PUT", C + "/points", body=b"{not json", error="not valid JSON"),
    Row("body not object", "PUT", C + "/points", body=[1], error="body must be a JSON object"),
    Row("NaN", "POST", C + "/points/query", body=b'{"query": [NaN]}', error="NaN"),
    Row(
        "huge float", "POST", C + "/points/query", body=b'{"query": [1e999]}', error="out of range"
    ),
    Row(
        "duplicate key",
        "POST",
        C + "/points/delete",
        body=b'{"points": [1], "points": [2]}',
        error="duplicate key 'points'",
    ),
    Row(
        "bad utf8",
        "POST",
        C + "/points/delete",
        body=b'{"points": ["\xff"]}',
        error="not valid UTF-8",
    ),
    Row(
        "too deep",
        "POST",
        C + "/points/count",
        body=b'{"filter":' * 100 + b"{}" + b"}" * 100,
        error="nested deeper than 64",
    ),
    Row(
        "upsert without points", "PUT", C + "/points", body={}, error="neither 'points' nor 'batch'"
    ),
    Row(
        "point without id",
        "PUT",
        C + "/points",
        body={"points": [{"vector": [1]}]},
        error="body.points[0].id is missing",
    ),
    Row(
        "bool id",
        "POST",
        C + "/points",
        body={"ids": [True]},
        error="body.ids[0] must be an integer or a string",
    ),
    Row(
        "limit string",
        "POST",
        C + "/points/query",
        body={"query": [0.1], "limit": "3"},
        error="body.limit must be an integer",
    ),
    Row(
        "batch op two keys",
        "POST",
        C + "/points/batch",
        body={"operations": [{"upsert": {}, "delete": {}}]},
        error="exactly one key",
    ),
    Row(
        "batch unknown op",
        "POST",
        C + "/points/batch",
        body={"operations": [{"truncate": {}}]},
        error="unrecognised operation 'truncate'",
    ),
    Row(
        "batch empty",
        "POST",
        C + "/points/batch",
        body={"operations": []},
        error="body.operations is empty",
    ),
    Row(
        "unknown query variant",
        "POST",
        C + "/points/query",
        body={"query": {"warp": 1}},
        error="body.query is not a vector",
    ),
    Row(
        "query list of strings",
        "POST",
        C + "/points/query",
        body={"query": ["a"]},
        error="list of numbers",
    ),
    Row(
        "search without vector",
        "POST",
        C + "/points/search",
        body={"limit": 1},
        error="body.vector is missing",
    ),
    Row(
        "filter not object",
        "POST",
        C + "/points/delete",
        body={"filter": [1]},
        error="body.filter must be a JSON object",
    ),
    Row(
        "has_id not list",
        "POST",
        C + "/points/count",
        body={"filter": {"must": [{"has_id": 5}]}},
        error="has_id must be a JSON array",
    ),
    Row(
        "unknown alias action",
        "POST",
        "/collections/aliases",
        body={"actions": [{"drop_alias": {}}]},
        error="unrecognised alias action",
    ),
    Row("encoded slash", "GET", "/collections/do%2Fcs", error="encodes a slash"),
    Row("dot segment", "GET", "/collections/../collections", error="dot segment"),
    Row("empty segment", "GET", "/collections//docs", error="empty segment"),
    Row("control char", "GET", "/collections/do%00cs", error="control character"),
    Row("query in path", "GET", "/collections?x=1", error="query string"),
    Row("relative path", "GET", "collections", error="does not start with '/'"),
]

ALL = SERVICE + COLLECTIONS + READS + SEARCHES + WRITES + ERRORS


@pytest.mark.parametrize("row", params(ALL))
def test_qdrant(row: Row) -> None:
    run_rows(classify_qdrant, row, "qdrant")


def test_every_route_has_a_row() -> None:
    assert_routes_covered(ROUTES, ALL)


def test_percent_encoded_name_is_decoded() -> None:
    """``%64ocs`` is ``docs`` to the server, so it must be ``docs`` to policy."""
    c = classify_qdrant(Row("", "DELETE", "/collections/%64ocs").request())
    assert c.operations[0].collection == "docs"


def test_limit_is_clamped_to_int64() -> None:
    c = classify_qdrant(
        Row("", "POST", C + "/points/query", body={"query": [0.1], "limit": 10**30}).request()
    )
    assert c.operations[0].limit == 2**63 - 1


def test_filter_hash_is_canonical() -> None:
    a = classify_qdrant(
        Row(
            "", "POST", C + "/points/delete", body=b'{"filter": {"must": [], "should": []}}'
        ).request()
    )
    b = classify_qdrant(
        Row(
            "", "POST", C + "/points/delete", body=b'{ "filter" : {"should": [], "must": []} }'
        ).request()
    )
    assert a.operations[0].filter_sha256 == b.operations[0].filter_sha256


def test_prefetch_nesting_is_bounded() -> None:
    body: dict[str, object] = {"query": [0.1]}
    for _ in range(20):
        body = {"prefetch": body}
    c = classify_qdrant(Row("", "POST", C + "/points/query", body=body).request())
    assert c.error is not None and "prefetch deeper than 16" in c.error


# ------------------------------------------- field values outside the payload
#
# A group id is the group_by field's value (and so is its with_lookup point's
# id), a facet hit the faceted field's, an order_value the order_by field's:
# each is listed in field_aliases with the field names the key goes through,
# so that masking by field name reaches it.

_GROUP_IDS = ("result.groups[].id", "result.groups[].lookup.id")


@pytest.mark.parametrize(
    ("path", "body", "values"),
    [
        (C + "/points/query/groups", {"query": [0.1], "group_by": "email"},
         [(p, "email") for p in _GROUP_IDS]),
        (C + "/points/search/groups", {"vector": [0.1], "group_by": "user.email"},
         [(p, n) for n in ("user", "email") for p in _GROUP_IDS]),
        (C + "/points/recommend/groups", {"positive": [1], "group_by": 'a[0]."b.c"[]'},
         [(p, n) for n in ("b.c", "a", "b", "c") for p in _GROUP_IDS]),
        (C + "/points/query/groups", {"query": [0.1]}, []),  # Qdrant refuses it
        (C + "/points/scroll", {"order_by": "salary"},
         [("result.points[].order_value", "salary")]),
        (C + "/shards/0/points/scroll", {"order_by": {"key": "pay.salary"}},
         [("result.points[].order_value", "pay"), ("result.points[].order_value", "salary")]),
        (C + "/points/query", {"query": {"order_by": "salary"}},
         [("result.points[].order_value", "salary")]),
        (C + "/points/query/batch", {"searches": [{"query": [0.1]},
                                                  {"query": {"order_by": "salary"}}]},
         [("result[].points[].order_value", "salary")]),
        (C + "/points/query/groups",
         {"prefetch": {"query": {"order_by": "at"}}, "query": {"fusion": "rrf"},
          "group_by": "email"},
         [*[(p, "email") for p in _GROUP_IDS],
          ("result.groups[].hits[].order_value", "at"),
          ("result.groups[].lookup.order_value", "at")]),
        (C + "/facet", {"key": "email"}, [("result.hits[].value", "email")]),
        (C + "/points/scroll", {"limit": 3}, []),
    ],
)
def test_field_values_outside_the_payload_are_listed(
    path: str, body: dict[str, object], values: list[tuple[str, str]]
) -> None:
    c = classify_qdrant(Row("", "POST", path, body=body).request())
    assert c.ok, c.error
    assert sorted(c.field_aliases) == sorted(values)


def test_group_ids_are_user_data_and_hit_ids_record_ids() -> None:
    c = classify_qdrant(
        Row("", "POST", C + "/points/search/groups", body={"vector": [0.1], "group_by": "e"})
        .request()
    )
    assert "result.groups[].id" in c.user_data_paths
    assert "result.groups[].id" not in c.response_ids
    assert "result.groups[].hits[].id" in c.response_ids


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        (C + "/points/query/groups", {"query": [0.1], "group_by": 5},
         "body.group_by must be a string"),
        (C + "/points/search/groups", {"vector": [0.1], "group_by": "[]"},
         "body.group_by names no payload field"),
        (C + "/points/scroll", {"order_by": {"direction": "asc"}},
         "body.order_by.key must be a string"),
        (C + "/points/query", {"query": {"order_by": ["salary"]}},
         "body.query.order_by must be a string"),
        (C + "/facet", {"key": None, "limit": 1}, None),  # no key: nothing listed
        (C + "/facet", {"key": {"k": "email"}}, "body.key must be a string"),
    ],
)
def test_unreadable_field_keys_are_refused(
    path: str, body: dict[str, object], error: str | None
) -> None:
    c = classify_qdrant(Row("", "POST", path, body=body).request())
    if error is None:
        assert c.ok and c.field_aliases == ()
    else:
        assert not c.ok and c.error is not None and error in c.error, c.error



def test_upsert_with_both_points_and_batch_is_refused() -> None:
    """Qdrant reads "batch" and ignores "points" when a body has both; the
    gateway read "points": one point recorded and checked, 5,000 written
    (found in review)."""
    from capture.classify import classify
    from capture.types import HttpRequest

    body = {"points": [{"id": 1, "vector": [0.1]}],
            "batch": {"ids": list(range(100, 5100)), "vectors": [[0.1]] * 5000}}
    for path, payload in (("/collections/docs/points", body),
                          ("/collections/docs/points/batch",
                           {"operations": [{"upsert": body}]})):
        c = classify("qdrant", HttpRequest(method="PUT" if path.endswith("points") else "POST",
                                           path=path, host="", body=json.dumps(payload).encode(),
                                           headers={"content-type": "application/json"}))
        assert not c.ok and "both 'points' and 'batch'" in (c.error or ""), c.error
