"""capture/classify/pinecone.py: data plane (index from Host), control plane,
admin API, host mapping and malformed bodies."""

from __future__ import annotations

import pytest

from capture.classify.pinecone import ROUTES, classify_pinecone, index_from_host
from tests.capture.classify.table import E, Row, assert_routes_covered, params, run_rows

H = "my-index-abc123.svc.aped-4627-b74a.pinecone.io"
CP = "api.pinecone.io"


def D(*args: object, **kw: object) -> Row:
    kw.setdefault("host", H)
    return Row(*args, **kw)  # type: ignore[arg-type]


def CPR(*args: object, **kw: object) -> Row:
    kw.setdefault("host", CP)
    return Row(*args, **kw)  # type: ignore[arg-type]


DATA = [
    D(
        "upsert default namespace",
        "POST",
        "/vectors/upsert",
        body={
            "vectors": [
                {"id": "a", "values": [0.1]},
                {"id": "b", "sparseValues": {"indices": [1], "values": [0.2]}},
            ]
        },
        expect=[E("write", "my-index", database="", ids=["a", "b"], vector_count=2)],
    ),
    D(
        "update by id",
        "POST",
        "/vectors/update",
        body={"id": "a", "values": [0.1], "setMetadata": {"k": 1}, "namespace": "n"},
        expect=[E("write", "my-index", database="n", ids=["a"], vector_count=1, detail="update")],
    ),
    D(
        "update by filter dry run",
        "POST",
        "/vectors/update",
        body={"filter": {"k": {"$eq": 1}}, "setMetadata": {"k": 2}, "dryRun": True},
        expect=[
            E(
                "write",
                "my-index",
                ids=[],
                ids_known=False,
                filter_present=True,
                detail="update_by_filter",
            )
        ],
    ),
    D(
        "delete ids",
        "POST",
        "/vectors/delete",
        body={"ids": ["a", "b"], "namespace": "n"},
        expect=[E("delete", "my-index", database="n", ids=["a", "b"], ids_known=True)],
    ),
    D(
        "legacy delete ids",
        "DELETE",
        "/vectors/delete",
        query=[("ids", "a"), ("ids", "b"), ("namespace", "n")],
        expect=[E("delete", "my-index", database="n", ids=["a", "b"], ids_known=True)],
    ),
    D(
        "legacy delete all",
        "DELETE",
        "/vectors/delete",
        query=[("deleteAll", "true")],
        expect=[E("delete", "my-index", database="", ids_known=False, detail="delete_all")],
    ),
    D(
        "fetch by metadata",
        "POST",
        "/vectors/fetch_by_metadata",
        body={"filter": {"g": {"$eq": "x"}}, "namespace": "n", "limit": 50},
        expect=[
            E("read", "my-index", database="n", ids_known=False, filter_present=True, limit=50)
        ],
        response_ids=["vectors{*}.id"],
        user_data=["vectors{*}.metadata"],
        vectors=["vectors{*}.values", "vectors{*}.sparseValues"],
    ),
    D(
        "list ids",
        "GET",
        "/vectors/list",
        query=[("prefix", "doc1#"), ("limit", "100"), ("namespace", "n")],
        expect=[E("read", "my-index", database="n", ids_known=False, limit=100)],
        response_ids=["vectors[].id"],
    ),
    D(
        "query by id with values",
        "POST",
        "/query",
        body={"id": "a", "topK": 5, "includeValues": True, "filter": {"g": "x"}},
        expect=[
            E(
                "search",
                "my-index",
                ids=["a"],
                vector_count=0,
                limit=5,
                with_vectors=True,
                filter_present=True,
            )
        ],
        vectors=["matches[].values", "matches[].sparseValues"],
    ),
    D(
        "query deprecated queries[]",
        "POST",
        "/query",
        body={
            "queries": [{"values": [0.1]}, {"values": [0.2], "namespace": "other"}],
            "topK": 2,
            "namespace": "n",
        },
        expect=[
            E("search", "my-index", database="n", vector_count=1, limit=2),
            E("search", "my-index", database="other", vector_count=1, limit=2),
        ],
        response_ids=["results[].matches[].id"],
        user_data=["results[].matches[].metadata"],
    ),
    D(
        "describe stats POST",
        "POST",
        "/describe_index_stats",
        body={"filter": {"a": 1}},
        expect=[E("schema", "my-index", filter_present=True)],
    ),
    D("describe stats GET", "GET", "/describe_index_stats", expect=[E("schema", "my-index")]),
    D("list namespaces", "GET", "/namespaces", expect=[E("schema", "my-index")]),
    D(
        "create namespace",
        "POST",
        "/namespaces",
        body={"name": "n2"},
        expect=[E("admin", "my-index", database="n2")],
    ),
    D("describe namespace", "GET", "/namespaces/n", expect=[E("schema", "my-index", database="n")]),
    D(
        "delete namespace",
        "DELETE",
        "/namespaces/n",
        expect=[E("admin", "my-index", database="n", ids_known=False)],
    ),
    D(
        "records upsert ndjson",
        "POST",
        "/records/namespaces/n/upsert",
        headers={"Content-Type": "application/x-ndjson"},
        body=b'{"_id": "r1", "chunk_text": "hi"}\n{"id": "r2", "chunk_text": "yo"}\n\n',
        expect=[E("write", "my-index", database="n", ids=["r1", "r2"], ids_known=True)],
    ),
    D(
        "records search by vector and id",
        "POST",
        "/records/namespaces/n/search",
        body={"query": {"top_k": 2, "vector": {"values": [0.1]}, "id": "r1", "filter": {"g": "x"}}},
        expect=[E("search", "my-index", ids=["r1"], vector_count=1, filter_present=True)],
    ),
    D("list imports", "GET", "/bulk/imports", expect=[E("admin", "my-index")]),
    D("describe import", "GET", "/bulk/imports/101", expect=[E("admin", "my-index")]),
    D("cancel import", "DELETE", "/bulk/imports/101", expect=[E("admin", "my-index")]),
    D(
        "bulk import",
        "POST",
        "/bulk/imports",
        body={"uri": "s3://b/p/"},
        expect=[E("write", "my-index", bulk=True, ids_known=False)],
        response_ids=["id"],
    ),
    D(
        "fetch with port in host",
        "GET",
        "/vectors/fetch",
        host=H + ":443",
        query=[("ids", "a")],
        expect=[E("read", "my-index", ids=["a"])],
    ),
    D(
        "fetch through mapped gateway host",
        "GET",
        "/vectors/fetch",
        host="gw.internal:8443",
        query=[("ids", "a")],
        kwargs={"index_hosts": {"gw.internal": "mapped"}},
        expect=[E("read", "mapped", ids=["a"])],
    ),
]

CONTROL = [
    CPR("list indexes", "GET", "/indexes", expect=[E("schema", None)]),
    CPR(
        "create index",
        "POST",
        "/indexes",
        body={"name": "docs", "dimension": 2},
        expect=[E("admin", "docs")],
    ),
    CPR(
        "create pod index from a collection",
        "POST",
        "/indexes",
        body={"name": "sandbox", "dimension": 2,
              "spec": {"pod": {"environment": "us-east1-gcp", "source_collection": "hr-snap"}}},
        expect=[
            E("admin", "sandbox"),
            E("read", "hr-snap", bulk=True, ids_known=False,
              detail="create_index:source_collection"),
        ],
    ),
    CPR(
        "create serverless index",
        "POST",
        "/indexes",
        body={"name": "docs", "spec": {"serverless": {"cloud": "aws", "region": "us-east-1"}}},
        expect=[E("admin", "docs")],
    ),
    CPR(
        "create for model",
        "POST",
        "/indexes/create-for-model",
        body={"name": "docs"},
        expect=[E("admin", "docs", detail="create_index_for_model")],
    ),
    CPR("describe index", "GET", "/indexes/docs", expect=[E("schema", "docs")]),
    CPR(
        "configure index",
        "PATCH",
        "/indexes/docs",
        body={"deletion_protection": "disabled"},
        expect=[E("admin", "docs")],
    ),
    CPR("delete index", "DELETE", "/indexes/docs", expect=[E("admin", "docs", ids_known=False)]),
    CPR("index backups", "GET", "/indexes/docs/backups", expect=[E("admin", "docs")]),
    CPR("create backup", "POST", "/indexes/docs/backups", body={}, expect=[E("admin", "docs")]),
    CPR("list backups", "GET", "/backups", expect=[E("admin")]),
    CPR("describe backup", "GET", "/backups/b1", expect=[E("admin")]),
    CPR("delete backup", "DELETE", "/backups/b1", expect=[E("admin")]),
    CPR(
        "restore backup",
        "POST",
        "/backups/b1/create-index",
        body={"name": "restored"},
        # the backup may be of any index: a copy of its records is a read of "*"
        expect=[
            E("admin", "restored"),
            E("read", "*", bulk=True, ids_known=False, detail="create_index_from_backup:backup"),
        ],
    ),
    CPR("restore jobs", "GET", "/restore-jobs", expect=[E("admin")]),
    CPR("restore job", "GET", "/restore-jobs/j1", expect=[E("admin")]),
    CPR("list collections", "GET", "/collections", expect=[E("admin")]),
    CPR(
        "create collection",
        "POST",
        "/collections",
        body={"name": "snap", "source": "docs"},
        expect=[E("admin", "snap"), E("admin", "docs", detail="create_collection:source")],
    ),
    CPR("describe collection", "GET", "/collections/snap", expect=[E("admin", "snap")]),
    CPR("delete collection", "DELETE", "/collections/snap", expect=[E("admin", "snap")]),
    CPR(
        "embed",
        "POST",
        "/embed",
        body={"model": "m", "inputs": [{"text": "x"}]},
        error="inference endpoint",
    ),
    CPR("rerank", "POST", "/rerank", body={"model": "m"}, error="inference endpoint"),
    CPR("models", "GET", "/models", expect=[E("health")]),
    CPR("model", "GET", "/models/m", expect=[E("health")]),
    *[
        CPR(f"admin {p}", m, p, expect=[E("admin", detail="admin_api")])
        for m, p in [
            ("GET", "/admin/projects"),
            ("PATCH", "/admin/projects/p1"),
            ("POST", "/admin/projects/p1/api-keys"),
            ("GET", "/admin/organizations"),
            ("DELETE", "/admin/organizations/o1"),
            ("GET", "/admin/organizations/o1/projects"),
            ("DELETE", "/admin/api-keys/k1"),
        ]
    ],
]

ERRORS = [
    D(
        "unknown host",
        "POST",
        "/query",
        host="localhost:5080",
        body={"vector": [0.1]},
        error="cannot tell the index from Host 'localhost:5080'",
    ),
    D(
        "control host for data path",
        "POST",
        "/vectors/upsert",
        host=CP,
        body={"vectors": []},
        error="cannot tell the index",
    ),
    D(
        "upsert id not string",
        "POST",
        "/vectors/upsert",
        body={"vectors": [{"id": 1}]},
        error="body.vectors[0].id must be a string",
    ),
    D(
        "update without id or filter",
        "POST",
        "/vectors/update",
        body={"values": [1]},
        error="neither 'id' nor 'filter'",
    ),
    D(
        "delete nothing",
        "POST",
        "/vectors/delete",
        body={"namespace": "n"},
        error="names no 'ids', 'filter' or 'deleteAll'",
    ),
    D(
        "deleteAll not bool",
        "POST",
        "/vectors/delete",
        body={"deleteAll": "yes"},
        error="body.deleteAll must be true or false",
    ),
    D(
        "legacy deleteAll junk",
        "DELETE",
        "/vectors/delete",
        query=[("deleteAll", "maybe")],
        error="deleteAll must be true or false",
    ),
    D("fetch without ids", "GET", "/vectors/fetch", error="query parameter 'ids'"),
    D(
        "list limit junk",
        "GET",
        "/vectors/list",
        query=[("limit", "ten")],
        error="query limit must be an integer",
    ),
    D(
        "namespace not string",
        "POST",
        "/query",
        body={"vector": [1], "namespace": 5},
        error="body.namespace must be a string",
    ),
    D("empty queries", "POST", "/query", body={"queries": []}, error="body.queries is empty"),
    D(
        "ndjson bad line",
        "POST",
        "/records/namespaces/n/upsert",
        body=b'{"_id": "a"}\nnope\n',
        error="NDJSON line 2 is not valid JSON",
    ),
    D(
        "ndjson empty",
        "POST",
        "/records/namespaces/n/upsert",
        body=b"\n\n",
        error="expected NDJSON records",
    ),
    D(
        "ndjson id missing",
        "POST",
        "/records/namespaces/n/upsert",
        body=b'{"text": "a"}\n',
        error="line 1._id must be a string",
    ),
    D("import without uri", "POST", "/bulk/imports", body={}, error="body.uri"),
    D(
        "records search without query",
        "POST",
        "/records/namespaces/n/search",
        body={},
        error="body.query must be a JSON object",
    ),
    CPR("unknown control path", "GET", "/projects", error="unrecognised endpoint GET /projects"),
]

ALL = DATA + CONTROL + ERRORS


@pytest.mark.parametrize("row", params(ALL))
def test_pinecone(row: Row) -> None:
    run_rows(classify_pinecone, row, "pinecone")


def test_every_route_has_a_row() -> None:
    assert_routes_covered(ROUTES, ALL)


@pytest.mark.parametrize(
    ("host", "index"),
    [
        ("docs-abc123.svc.aped-4627-b74a.pinecone.io", "docs"),
        ("my-long-index-name-x1y2z3.svc.us-east1-gcp.pinecone.io", "my-long-index-name"),
        ("DOCS-ABC123.SVC.ENV.PINECONE.IO.", "docs"),
        ("docs-abc123.svc.env.pinecone.io:443", "docs"),
        ("api.pinecone.io", None),
        ("docs-abc123.svc.evil.example", None),
        ("pinecone.io", None),
        ("", None),
    ],
)
def test_index_from_host(host: str, index: str | None) -> None:
    assert index_from_host(host) == index
