"""capture/classify/milvus.py: every RESTful v2 and legacy v1 route, database
resolution, primary-key filter parsing, malformed bodies and where response
rows' vectors are looked for."""

from __future__ import annotations

import json

import pytest

from capture.classify.milvus import (
    _ADMIN_CATEGORIES,
    _COLLECTION_ADMIN,
    _COLLECTION_SCHEMA,
    ROUTES,
    classify_milvus,
    pk_ids,
)
from capture.types import HttpRequest
from tests.capture.classify.table import E, Row, assert_routes_covered, params, run_rows

V = "/v2/vectordb"
B = {"collectionName": "docs"}


def P(name: str, path: str, body: object = None, **kw: object) -> Row:
    return Row(name, "POST", V + path, body=B if body is None else body, **kw)  # type: ignore[arg-type]


ENTITIES = [
    P(
        "search by pk with star fields",
        "/entities/search",
        {
            "collectionName": "docs",
            "data": [[0.1], [0.2]],
            "annsField": "vec",
            "ids": [5],
            "filter": "age > 1",
            "outputFields": ["*"],
            "dbName": "prod",
        },
        expect=[
            E(
                "search",
                "docs",
                database="prod",
                ids=["5"],
                ids_known=False,
                vector_count=2,
                filter_present=True,
                with_vectors=True,
            )
        ],
        user_data=["data[]"],
    ),
    P(
        "search text (BM25)",
        "/entities/search",
        {"collectionName": "docs", "data": ["what is milvus"], "annsField": "sparse"},
        expect=[E("search", "docs", vector_count=1, with_vectors=False)],
        user_data=[],
    ),
    P(
        "hybrid search",
        "/entities/hybrid_search",
        {
            "collectionName": "docs",
            "search": [{"data": [[0.1]], "limit": 2}, {"data": [[0.2]], "filter": "x == 1"}],
            "limit": 5,
            "outputFields": ["title"],
        },
        expect=[
            E("search", "docs", limit=2, vector_count=1),
            E("search", "docs", limit=5, filter_present=True),
        ],
        response_ids=["data[].id", "data[][].id"],
        user_data=["data[]"],  # every key of every row (nested search rows too)
        vectors=[],
    ),
    P(
        "advanced search",
        "/entities/advanced_search",
        {"collectionName": "docs", "search": [{"data": [[0.1]]}]},
        expect=[E("search", "docs")],
    ),
    P(
        "query by pk list",
        "/entities/query",
        {"collectionName": "docs", "filter": "id in [\"a\", 'b']", "outputFields": ["title"]},
        expect=[
            E(
                "read",
                "docs",
                ids=["a", "b"],
                ids_known=True,
                filter_present=True,
                with_vectors=False,
            )
        ],
        user_data=["data[]"],
    ),
    P(
        "get scalar id",
        "/entities/get",
        {"collectionName": "docs", "id": 7},
        expect=[E("read", "docs", ids=["7"], with_vectors=True)],
        user_data=["data[]"],
    ),
    P(
        "upsert rows without pk",
        "/entities/upsert",
        {"collectionName": "docs", "data": [{"vec": [0.1]}, {"id": 2, "vec": [0.2]}]},
        expect=[E("write", "docs", ids=["2"], ids_known=False, vector_count=2, detail="upsert")],
        response_ids=["data.upsertIds[]"],
    ),
    P(
        "insert single row object",
        "/entities/insert",
        {"collectionName": "docs", "data": {"id": 1, "vec": [0.1]}},
        expect=[E("write", "docs", ids=["1"], vector_count=1)],
    ),
    P(
        "delete by id",
        "/entities/delete",
        {"collectionName": "docs", "id": [1, 2]},
        expect=[E("delete", "docs", ids=["1", "2"], ids_known=True, filter_present=False)],
    ),
    P(
        "delete pk equality",
        "/entities/delete",
        {"collectionName": "docs", "filter": "id == 3"},
        expect=[E("delete", "docs", ids=["3"], ids_known=True, filter_present=True)],
    ),
    P(
        "delete non-pk field named like pk",
        "/entities/delete",
        {"collectionName": "docs", "filter": "doc_id in [1]"},
        expect=[E("delete", "docs", ids=[], ids_known=False)],
    ),
    P(
        "header db",
        "/entities/query",
        {"collectionName": "docs", "filter": "a > 1"},
        headers={"DB-Name": "analytics"},
        expect=[E("read", "docs", database="analytics")],
    ),
    P(
        "body db wins over header",
        "/entities/query",
        {"collectionName": "docs", "dbName": "prod", "filter": "a > 1"},
        headers={"DB-Name": "analytics"},
        expect=[E("read", "docs", database="prod")],
    ),
]

MANAGEMENT = [
    P("collections list", "/collections/list", {}, expect=[E("schema", None, database="default")]),
    P("collections list empty body", "/collections/list", b"", expect=[E("schema", None)]),
    *[
        P(f"collections {a}", f"/collections/{a}", expect=[E("schema", "docs")])
        for a in _COLLECTION_SCHEMA
    ],
    *[
        P(f"collections {a}", f"/collections/{a}", expect=[E("admin", "docs")])
        for a in _COLLECTION_ADMIN
    ],
    P(
        "rename",
        "/collections/rename",
        {"collectionName": "docs", "newCollectionName": "docs2", "newDbName": "archive"},
        expect=[E("admin", "docs", database="default"), E("admin", "docs2", database="archive")],
    ),
    P(
        "truncate",
        "/collections/truncate",
        expect=[E("delete", "docs", ids_known=False, detail="collections/truncate")],
    ),
    *[
        P(
            f"databases {a}",
            f"/databases/{a}",
            {"dbName": "prod"},
            expect=[E("schema", None, database="prod")],
        )
        for a in ("list", "describe")
    ],
    *[
        P(
            f"databases {a}",
            f"/databases/{a}",
            {"dbName": "prod"},
            expect=[E("admin", None, database="prod")],
        )
        for a in ("create", "drop", "alter", "alter_properties", "drop_properties")
    ],
    *[
        P(f"partitions {a}", f"/partitions/{a}", expect=[E("schema", "docs")])
        for a in ("list", "has", "get_stats")
    ],
    *[
        P(f"partitions {a}", f"/partitions/{a}", expect=[E("admin", "docs")])
        for a in ("create", "drop", "load", "release")
    ],
    *[
        P(f"indexes {a}", f"/indexes/{a}", expect=[E("schema", "docs")])
        for a in ("list", "describe")
    ],
    *[
        P(f"indexes {a}", f"/indexes/{a}", expect=[E("admin", "docs")])
        for a in ("create", "drop", "alter_properties", "drop_properties")
    ],
    P("aliases list", "/aliases/list", {}, expect=[E("schema", None)]),
    P("aliases list for collection", "/aliases/list", B, expect=[E("schema", "docs")]),
    P("aliases describe", "/aliases/describe", {"aliasName": "cur"}, expect=[E("schema", "cur")]),
    P(
        "aliases create",
        "/aliases/create",
        {"aliasName": "cur", "collectionName": "docs"},
        expect=[E("admin", "cur"), E("admin", "docs"),
                E("read", "docs", bulk=True, ids_known=False),
                E("write", "docs", bulk=True, ids_known=False)],
    ),
    P(
        "aliases alter",
        "/aliases/alter",
        {"aliasName": "cur", "collectionName": "docs2"},
        expect=[E("admin", "cur"), E("admin", "docs2"),
                E("read", "docs2", bulk=True, ids_known=False),
                E("write", "docs2", bulk=True, ids_known=False)],
    ),
    P("aliases drop", "/aliases/drop", {"aliasName": "cur"}, expect=[E("admin", "cur")]),
    *[
        P(f"import {a}", f"/jobs/import/{a}", {"jobId": "j"}, expect=[E("admin", None)])
        for a in ("list", "get_progress", "describe", "commit", "abort")
    ],
    P("import list for collection", "/jobs/import/list", B, expect=[E("admin", "docs")]),
    *[
        P(f"snapshot {a}", f"/jobs/snapshot/{a}", B, expect=[E("admin", "docs")])
        for a in ("describe", "list")
    ],
    # an export takes every row out to object storage: a bulk read too
    P(
        "snapshot export",
        "/jobs/snapshot/export",
        {"collectionName": "docs", "snapshotName": "s1", "targetS3Path": "s3://b/x",
         "dbName": "prod"},
        expect=[E("admin", "docs", database="prod", detail="jobs/snapshot/export"),
                E("read", "docs", database="prod", bulk=True, ids_known=False)],
    ),
    # a restore names its collection targetCollectionName, and loads rows into it
    P(
        "snapshot restore_external",
        "/jobs/snapshot/restore_external",
        {"targetCollectionName": "restricted-hr", "snapshotMetadataURI": "s3://b/x/meta.json"},
        expect=[E("admin", "restricted-hr"),
                E("write", "restricted-hr", bulk=True, ids_known=False)],
    ),
    P("snapshot restore_external without a target", "/jobs/snapshot/restore_external",
      {"collectionName": "docs", "snapshotMetadataURI": "s3://b/x"},
      error="targetCollectionName"),
    P("snapshot export without a collection", "/jobs/snapshot/export",
      {"snapshotName": "s1", "targetS3Path": "s3://b/x"}, error="collectionName"),
    *[
        P(f"external {a}", f"/jobs/external_collection/{a}", B, expect=[E("admin", "docs")])
        for a in ("refresh", "describe", "list")
    ],
    *[
        P(
            f"{c} admin",
            f"/{c}/create",
            {"userName": "u", "password": "secret"},
            expect=[E("admin", None)],
        )
        for c in _ADMIN_CATEGORIES
    ],
    P("grant privilege v2", "/roles/grant_privilege_v2", {}, expect=[E("admin")]),
    P("segments", "/segments/describe", {}, expect=[E("health")]),
    P("quotacenter", "/quotacenter/describe", {}, expect=[E("health")]),
    P("run analyzer", "/common/run_analyzer", {"text": ["x"]}, error="text utility"),
    Row("healthz", "GET", "/healthz", expect=[E("health")]),
    Row("metrics", "GET", "/metrics", expect=[E("health")]),
]

L = "/v1/vector"
LEGACY = [
    Row("v1 list", "GET", L + "/collections", expect=[E("schema")]),
    Row(
        "v1 create",
        "POST",
        L + "/collections/create",
        body={"collectionName": "docs", "dimension": 2},
        expect=[E("admin", "docs")],
    ),
    Row(
        "v1 describe",
        "GET",
        L + "/collections/describe",
        query=[("collectionName", "docs")],
        expect=[E("schema", "docs", database="default")],
    ),
    Row("v1 drop", "POST", L + "/collections/drop", body=B, expect=[E("admin", "docs")]),
    Row(
        "v1 query",
        "POST",
        L + "/query",
        body={"collectionName": "docs", "filter": "a > 1"},
        expect=[E("read", "docs", filter_present=True)],
    ),
    Row(
        "v1 get",
        "POST",
        L + "/get",
        body={"collectionName": "docs", "id": [1]},
        expect=[E("read", "docs", ids=["1"])],
    ),
    Row(
        "v1 delete",
        "POST",
        L + "/delete",
        body={"collectionName": "docs", "id": 1},
        expect=[E("delete", "docs", ids=["1"])],
    ),
    Row(
        "v1 insert",
        "POST",
        L + "/insert",
        body={"collectionName": "docs", "data": [{"id": 1}]},
        expect=[E("write", "docs", ids=["1"])],
    ),
    Row(
        "v1 upsert",
        "POST",
        L + "/upsert",
        body={"collectionName": "docs", "data": [{"id": 1}]},
        expect=[E("write", "docs", ids=["1"])],
    ),
    Row(
        "v1 search",
        "POST",
        L + "/search",
        body={"collectionName": "docs", "vector": [0.1, 0.2]},
        expect=[E("search", "docs", vector_count=1)],
    ),
]

ERRORS = [
    P(
        "missing collection",
        "/entities/search",
        {"data": [[0.1]]},
        error="body.collectionName must be a string",
    ),
    P(
        "empty collection",
        "/collections/drop",
        {"collectionName": ""},
        error="body.collectionName is empty",
    ),
    P(
        "filter not string",
        "/entities/query",
        {"collectionName": "docs", "filter": {"a": 1}},
        error="body.filter must be a string",
    ),
    P(
        "dbName not string",
        "/entities/query",
        {"collectionName": "docs", "dbName": 1},
        error="body.dbName must be a string",
    ),
    P("delete nothing", "/entities/delete", B, error="neither a filter nor an id"),
    P("get without id", "/entities/get", B, error="body.id is required"),
    P(
        "insert empty",
        "/entities/insert",
        {"collectionName": "docs", "data": []},
        error="body.data is empty",
    ),
    P(
        "insert bad row",
        "/entities/insert",
        {"collectionName": "docs", "data": [1]},
        error="body.data[0] must be a JSON object",
    ),
    P(
        "hybrid empty",
        "/entities/hybrid_search",
        {"collectionName": "docs", "search": []},
        error="body.search is empty",
    ),
    P(
        "output fields junk",
        "/entities/query",
        {"collectionName": "docs", "outputFields": [1]},
        error="body.outputFields[0]",
    ),
    P("unknown action", "/entities/truncate", B, error="unrecognised endpoint"),
    Row("GET on v2", "GET", V + "/entities/query", error="method GET is not recognised"),
    Row(
        "v1 describe without name",
        "GET",
        L + "/collections/describe",
        error="collectionName is required",
    ),
    P("rename without new name", "/collections/rename", B, error="newCollectionName"),
]

ALL = ENTITIES + MANAGEMENT + LEGACY + ERRORS


@pytest.mark.parametrize("row", params(ALL))
def test_milvus(row: Row) -> None:
    run_rows(classify_milvus, row, "milvus")


def test_every_route_has_a_row() -> None:
    from tests.capture.classify.test_corpus import MILVUS

    assert_routes_covered(ROUTES, ALL + MILVUS)


@pytest.mark.parametrize(
    ("expr", "ids"),
    [
        ("id in [1,2]", ["1", "2"]),
        ("  id IN [ 1 , -2 ]  ", ["1", "-2"]),
        ("(id in [\"a\", 'b'])", ["a", "b"]),
        ("id in []", []),
        ("id == 5", ["5"]),
        ('id == "x"', ["x"]),
        ("id in [1,2] and age > 3", None),
        ("id in [1,2] or id in [3]", None),
        ("id not in [1]", None),
        ("pk in [1]", None),
        ("id in [a]", None),
        ('id in ["a\\"b"]', None),
        ("id > 3", None),
        ("", None),
    ],
)
def test_pk_ids(expr: str, ids: list[str] | None) -> None:
    assert pk_ids(expr) == ids


# Vectors in responses: their field names are in the collection schema, so
# rows are scanned for vector shapes (capture.masking.is_vector_shaped); the
# searched field is also named.
def _req(path: str, body: dict[str, object]) -> HttpRequest:
    return HttpRequest(method="POST", path=path, body=json.dumps(body).encode())


@pytest.mark.parametrize(
    ("path", "body", "vectors"),
    [
        ("/v2/vectordb/entities/query", {"collectionName": "c", "filter": "x"}, ()),
        ("/v2/vectordb/entities/get", {"collectionName": "c", "id": [1]}, ()),
        ("/v2/vectordb/entities/search", {"collectionName": "c", "data": [[0.1]]}, ()),
        ("/v2/vectordb/entities/search",
         {"collectionName": "c", "data": [[0.1]], "annsField": "emb"},
         ("data[].emb", "data[][].emb")),
        ("/v2/vectordb/entities/hybrid_search",
         {"collectionName": "c", "search": [{"data": [[0.1]], "annsField": "a"},
                                            {"data": [[0.2]], "annsField": "b c"}]},
         ("data[].a", "data[][].a")),
        ("/v2/vectordb/entities/advanced_search",
         {"collectionName": "c", "search": [{"data": [[0.1]]}]}, ()),
        ("/v1/vector/query", {"collectionName": "c", "filter": "x"}, ()),
        ("/v1/vector/search", {"collectionName": "c", "vector": [0.1]}, ()),
        ("/v1/vector/get", {"collectionName": "c", "id": 1}, ()),
    ],
)
def test_entity_reads_scan_their_rows_for_vectors(
    path: str, body: dict[str, object], vectors: tuple[str, ...]
) -> None:
    c = classify_milvus(_req(path, body))
    assert c.ok, c.error
    assert c.vector_scan_paths == ("data",)
    assert c.vector_paths == vectors


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/vectordb/entities/insert", {"collectionName": "c", "data": [{"id": 1}]}),
        ("/v2/vectordb/entities/delete", {"collectionName": "c", "filter": "id in [1]"}),
        ("/v2/vectordb/collections/describe", {"collectionName": "c"}),
    ],
)
def test_other_routes_have_no_rows_to_scan(path: str, body: dict[str, object]) -> None:
    c = classify_milvus(_req(path, body))
    assert c.ok, c.error
    assert c.vector_scan_paths == () and c.vector_paths == ()


def _milvus(body: bytes, path: str = "/entities/delete") -> object:
    return classify_milvus(HttpRequest(method="POST", path=V + path, host="m", body=body,
                                       headers={"content-type": "application/json"}))


def test_keys_are_read_ignoring_case_as_milvus_reads_them() -> None:
    """Regression: Milvus' Go JSON decoder matches keys to fields ignoring case
    (the last one wins); the classifier read exact keys only, so a body could
    name one collection here and another upstream."""
    cls = _milvus(b'{"CollectionName": "secret", "FILTER": "id in [1]"}')
    assert cls.ok and [op.collection for op in cls.operations] == ["secret"]  # type: ignore[attr-defined]
    for body in (b'{"collectionName": "public", "COLLECTIONNAME": "secret", "filter": "id in [1]"}',
                 b'{"collectionName": "public", "Collectionname": "x", "filter": "id in [1]"}'):
        refused = _milvus(body)
        assert not refused.ok and "ignoring case" in (refused.error or ""), body  # type: ignore[attr-defined]



@pytest.mark.parametrize("expr", ["id in [010, 011]", "id == 0100", "id in [1, 010]"])
def test_an_octal_looking_id_leaves_the_ids_unknown(expr: str) -> None:
    """Milvus reads 010 as octal 8: recording "010" named the wrong record in
    lineage and approvals (found in review)."""
    from capture.classify import classify
    from capture.types import HttpRequest

    c = classify("milvus", HttpRequest(
        method="POST", path="/v2/vectordb/entities/delete", host="",
        body=json.dumps({"collectionName": "docs", "filter": expr}).encode(),
        headers={"content-type": "application/json"}))
    assert c.ok, c.error
    (o,) = c.operations
    assert o.action.value == "delete" and not o.ids_known and o.ids == []
