"""capture/classify/chroma.py: every v2 route, the legacy v1 table, UUID
resolution and malformed bodies."""

from __future__ import annotations

import pytest

from capture.classify import chroma_collection_refs
from capture.classify.chroma import ROUTES, V1_ROUTES, classify_chroma
from capture.types import HttpRequest
from tests.capture.classify.table import E, Row, assert_routes_covered, params, run_rows

U = "2f3b7c1e-0000-4000-8000-000000000001"
U2 = "2f3b7c1e-0000-4000-8000-000000000002"
NAMES = {"names": {U: "docs"}}
T = "/api/v2/tenants/acme/databases/prod"
DB = "acme/prod"
CU = f"{T}/collections/{U}"


def R(*args: object, **kw: object) -> Row:
    kw.setdefault("kwargs", NAMES)
    return Row(*args, **kw)  # type: ignore[arg-type]


V2 = [
    *[
        R(f"health {p}", "GET", p, expect=[E("health", None)])
        for p in (
            "/api/v2",
            "/api/v2/heartbeat",
            "/api/v2/healthcheck",
            "/api/v2/version",
            "/api/v2/pre-flight-checks",
            "/api/v2/auth/identity",
            "/docs",
            "/openapi.json",
        )
    ],
    R("reset", "POST", "/api/v2/reset", expect=[E("admin", "*", ids_known=False)]),
    R("list tenants", "GET", "/api/v2/tenants", expect=[E("schema")]),
    R("create tenant", "POST", "/api/v2/tenants", body={"name": "t"}, expect=[E("admin")]),
    R("get tenant", "GET", "/api/v2/tenants/acme", expect=[E("schema")]),
    R("update tenant", "PATCH", "/api/v2/tenants/acme", body={}, expect=[E("admin")]),
    R("list databases", "GET", "/api/v2/tenants/acme/databases", expect=[E("schema")]),
    R(
        "create database",
        "POST",
        "/api/v2/tenants/acme/databases",
        body={"name": "p"},
        expect=[E("admin")],
    ),
    R("get database", "GET", T, expect=[E("schema", database=DB)]),
    R("delete database", "DELETE", T, expect=[E("admin", "*", database=DB)]),
    R(
        "list collections",
        "GET",
        T + "/collections",
        query=[("limit", "10")],
        expect=[E("schema", "*", database=DB)],
        user_data=["[].metadata"],
    ),
    R("count collections", "GET", T + "/collections_count", expect=[E("schema", "*")]),
    R(
        "create collection",
        "POST",
        T + "/collections",
        body={"name": "new"},
        expect=[E("admin", "new", database=DB)],
        user_data=["metadata"],
    ),
    R("get by id", "GET", f"{T}/collections/by-id/{U}", expect=[E("schema", "docs")]),
    R(
        "get by crn",
        "GET",
        "/api/v2/collections/acme:prod:docs",
        expect=[E("schema", "docs", database=DB)],
    ),
    R(
        "get by name",
        "GET",
        T + "/collections/docs",
        expect=[E("schema", "docs")],
        user_data=["metadata"],
    ),
    R("delete by name", "DELETE", T + "/collections/docs", expect=[E("admin", "docs")]),
    R(
        "modify + rename",
        "PUT",
        CU,
        body={"new_name": "docs2", "new_metadata": {}},
        expect=[
            E("admin", "docs", detail="modify_collection"),
            E("admin", "docs2", detail="modify_collection:new_name"),
        ],
    ),
    R(
        "modify metadata only",
        "PUT",
        CU,
        body={"new_metadata": {"a": 1}},
        expect=[E("admin", "docs")],
    ),
    R(
        "fork",
        "POST",
        CU + "/fork",
        body={"new_name": "copy"},
        # a fork copies every record: a bulk read of the source (found in review)
        expect=[E("admin", "docs"), E("read", "docs", bulk=True, ids_known=False),
                E("admin", "copy")],
    ),
    R("fork count", "GET", CU + "/fork_count", expect=[E("schema", "docs")]),
    R("record count", "GET", CU + "/count", expect=[E("read", "docs", ids_known=False)]),
    R("indexing status", "GET", CU + "/indexing_status", expect=[E("schema", "docs")]),
    R(
        "upsert base64",
        "POST",
        CU + "/upsert",
        body={"ids": ["a"], "embeddings": ["AAAA"]},
        expect=[E("write", "docs", ids=["a"], vector_count=1, detail="upsert")],
    ),
    R(
        "update without vectors",
        "POST",
        CU + "/update",
        body={"ids": ["a"], "embeddings": None, "documents": ["x"]},
        expect=[E("write", "docs", ids=["a"], vector_count=0, detail="update")],
    ),
    R(
        "delete ids + where",
        "POST",
        CU + "/delete",
        body={"ids": ["a"], "where": {"k": 1}, "where_document": {"$contains": "x"}, "limit": 5},
        expect=[E("delete", "docs", ids=["a"], ids_known=False, filter_present=True, limit=5)],
    ),
    R(
        "delete ids, empty where",
        "POST",
        CU + "/delete",
        body={"ids": ["a"], "where": {}},
        expect=[E("delete", "docs", ids=["a"], ids_known=True, filter_present=False)],
    ),
    R(
        "get everything with embeddings",
        "POST",
        CU + "/get",
        body={"limit": 10, "offset": 5, "include": ["embeddings"]},
        expect=[E("read", "docs", ids=[], ids_known=False, limit=10, with_vectors=True)],
        response_ids=["ids[]"],
        user_data=["documents[]", "metadatas[]", "uris[]"],
        vectors=["embeddings[]"],
    ),
    R(
        "conditional get",
        "POST",
        CU + "/conditional/get",
        body={"ids": ["a"], "read_token": "t"},
        expect=[E("read", "docs", ids=["a"], detail="conditional_get")],
    ),
    R(
        "query restricted to ids",
        "POST",
        CU + "/query",
        body={"query_embeddings": [[0.1], [0.2]], "ids": ["a", "b"], "where": {"k": 1}},
        expect=[E("search", "docs", ids=["a", "b"], vector_count=2, filter_present=True)],
        user_data=["documents[][]", "metadatas[][]", "uris[][]", "distances[][]"],
        vectors=["embeddings[][]"],
    ),
    R(
        "search two searches",
        "POST",
        CU + "/search",
        body={
            "searches": [
                {
                    "filter": {"#id": {"$in": ["x", "y"]}},
                    "rank": {"$knn": {"query": [0.1]}},
                    "limit": {"limit": 5, "offset": 0},
                    "select": {"keys": ["#document", "#embedding"]},
                },
                {
                    "rank": {
                        "$sum": [
                            {"$knn": {"query": "text"}},
                            {"$knn": {"query": {"indices": [1], "values": [0.5]}}},
                        ]
                    },
                    "limit": 3,
                },
            ]
        },
        expect=[
            E(
                "search",
                "docs",
                ids=["x", "y"],
                vector_count=1,
                filter_present=True,
                limit=5,
                with_vectors=True,
            ),
            E("search", "docs", ids=[], vector_count=1, limit=3, with_vectors=False),
        ],
        response_ids=["ids[][]"],
    ),
    R(
        "search structured filter",
        "POST",
        CU + "/search",
        body={"searches": [{"filter": {"query_ids": ["q"], "where_clause": {"a": 1}}}]},
        expect=[E("search", "docs", ids=["q"], filter_present=True)],
    ),
    R(
        "commit with read ids",
        "POST",
        CU + "/conditional/commit",
        body={
            "operations": [
                {"operation": "add", "payload": {"ids": ["n"], "embeddings": [[1]]}},
                {"operation": "update", "payload": {"ids": ["m"]}},
                {"operation": "delete", "payload": {"where": {"k": 1}}},
            ],
            "read_ids": ["r1"],
        },
        expect=[
            E("write", "docs", ids=["n"], detail="add"),
            E("write", "docs", ids=["m"], detail="update"),
            E("delete", "docs", ids_known=False, filter_present=True),
            E("read", "docs", ids=["r1"], detail="conditional_read"),
        ],
    ),
    R(
        "attach function",
        "POST",
        CU + "/functions/attach",
        body={"name": "f", "function_id": "x", "output_collection": "out"},
        expect=[E("admin", "docs"), E("admin", "out", detail="attach_function:output_collection")],
    ),
    R("get function", "GET", CU + "/functions/f", expect=[E("schema", "docs")]),
    R(
        "add input",
        "POST",
        CU + "/attached_functions/f/add_input",
        body={},
        expect=[E("admin", "docs")],
    ),
    R("detach", "POST", CU + "/attached_functions/f/detach", body={}, expect=[E("admin", "docs")]),
    R(
        "unresolved uuid stays",
        "POST",
        f"{T}/collections/{U2.upper()}/add",
        body={"ids": ["a"]},
        expect=[E("write", U2)],
    ),
]

V1 = "/api/v1"
LEGACY = {"names": {U: "docs"}, "legacy_v1": True}
V1_ROWS = [
    Row(f"v1 {name}", method, path, body=body, query=query, expect=expect, kwargs=LEGACY)
    for name, method, path, body, query, expect in [
        ("heartbeat", "GET", V1 + "/heartbeat", None, (), [E("health")]),
        ("version", "GET", V1 + "/version", None, (), [E("health")]),
        ("reset", "POST", V1 + "/reset", None, (), [E("admin", "*")]),
        ("create tenant", "POST", V1 + "/tenants", {"name": "t"}, (), [E("admin")]),
        ("get tenant", "GET", V1 + "/tenants/t", None, (), [E("schema")]),
        ("create database", "POST", V1 + "/databases", {"name": "d"}, (), [E("admin")]),
        ("get database", "GET", V1 + "/databases/d", None, (), [E("schema")]),
        (
            "list",
            "GET",
            V1 + "/collections",
            None,
            (),
            [E("schema", "*", database="default_tenant/default_database")],
        ),
        (
            "create",
            "POST",
            V1 + "/collections",
            {"name": "n"},
            (("tenant", "acme"), ("database", "prod")),
            [E("admin", "n", database=DB)],
        ),
        ("count", "GET", f"{V1}/collections/{U}/count", None, (), [E("read", "docs")]),
        (
            "add",
            "POST",
            f"{V1}/collections/{U}/add",
            {"ids": ["a"]},
            (),
            [E("write", "docs", ids=["a"])],
        ),
        (
            "upsert",
            "POST",
            f"{V1}/collections/{U}/upsert",
            {"ids": ["a"]},
            (),
            [E("write", "docs")],
        ),
        (
            "update",
            "POST",
            f"{V1}/collections/{U}/update",
            {"ids": ["a"]},
            (),
            [E("write", "docs")],
        ),
        (
            "delete",
            "POST",
            f"{V1}/collections/{U}/delete",
            {"ids": ["a"]},
            (),
            [E("delete", "docs", ids=["a"])],
        ),
        ("get", "POST", f"{V1}/collections/{U}/get", {"ids": ["a"]}, (), [E("read", "docs")]),
        (
            "query",
            "POST",
            f"{V1}/collections/{U}/query",
            {"query_embeddings": [[1]]},
            (),
            [E("search", "docs", vector_count=1)],
        ),
        ("get by name", "GET", V1 + "/collections/docs", None, (), [E("schema", "docs")]),
        ("delete by name", "DELETE", V1 + "/collections/docs", None, (), [E("admin", "docs")]),
        (
            "modify",
            "PUT",
            f"{V1}/collections/{U}",
            {"new_name": "d2"},
            (),
            [E("admin", "docs"), E("admin", "d2")],
        ),
    ]
]

ERRORS = [
    R(
        "v1 without legacy",
        "POST",
        f"{V1}/collections/{U}/add",
        body={"ids": ["a"]},
        error="v1 API is deprecated",
    ),
    R(
        "name where uuid expected",
        "POST",
        T + "/collections/docs/add",
        body={"ids": ["a"]},
        error="path collection id 'docs' is not a UUID",
    ),
    R(
        "add without ids",
        "POST",
        CU + "/add",
        body={"embeddings": [[1]]},
        error="body.ids is required for add",
    ),
    R("int ids", "POST", CU + "/add", body={"ids": [1]}, error="body.ids[0] must be a string"),
    R(
        "where not object",
        "POST",
        CU + "/delete",
        body={"where": "x"},
        error="body.where must be a JSON object",
    ),
    R(
        "include not list",
        "POST",
        CU + "/get",
        body={"include": "embeddings"},
        error="body.include must be a JSON array",
    ),
    R(
        "n_results float",
        "POST",
        CU + "/query",
        body={"n_results": 2.5},
        error="body.n_results must be an integer",
    ),
    R(
        "commit bad op",
        "POST",
        CU + "/conditional/commit",
        body={"operations": [{"operation": "truncate", "payload": {}}]},
        error="is not add, update, upsert or delete",
    ),
    R(
        "commit empty",
        "POST",
        CU + "/conditional/commit",
        body={"operations": []},
        error="body.operations is empty",
    ),
    R(
        "search empty",
        "POST",
        CU + "/search",
        body={"searches": []},
        error="body.searches is empty",
    ),
    R("bad crn", "GET", "/api/v2/collections/docs", error="is not tenant:database:name"),
    R("create without name", "POST", T + "/collections", body={}, error="body.name"),
    R("unknown route", "POST", CU + "/truncate", body={}, error="unrecognised endpoint POST"),
]

ALL = V2 + V1_ROWS + ERRORS


@pytest.mark.parametrize("row", params(ALL))
def test_chroma(row: Row) -> None:
    run_rows(classify_chroma, row, "chroma")


def test_every_route_has_a_row() -> None:
    assert_routes_covered(ROUTES, V2)
    assert_routes_covered(V1_ROUTES, V1_ROWS)


@pytest.mark.parametrize(
    ("method", "path", "refs"),
    [
        ("POST", CU + "/add", [U]),
        ("POST", f"{T}/collections/{U.upper()}/query", [U]),
        ("GET", f"{T}/collections/by-id/{U}", [U]),
        ("GET", T + "/collections/docs", []),
        ("DELETE", T + "/collections/docs", []),
        ("POST", T + "/collections", []),
        ("POST", T + "/collections/not-a-uuid/add", []),
        ("GET", "/api/v2/heartbeat", []),
        ("POST", f"/api/v1/collections/{U}/get", [U]),
        ("GET", "/collections//x", []),
        ("GET", "/nope", []),
    ],
)
def test_collection_refs(method: str, path: str, refs: list[str]) -> None:
    assert chroma_collection_refs(HttpRequest(method=method, path=path)) == refs
