"""The minimal test corpus of shared/vector-db-apis.md §10, row by row,
through the public :func:`capture.classify.classify` entry point."""

from __future__ import annotations

import pytest

from capture.classify import classify, detect_product
from capture.types import Product
from tests.capture.classify.table import E, Row, check, params

U = "2f3b7c1e-0000-4000-8000-000000000001"
T = "/api/v2/tenants/default_tenant/databases/default_database"
DB = "default_tenant/default_database"
H = "docs-abc123.svc.aped-4627-b74a.pinecone.io"
PC = {"X-Pinecone-Api-Version": "2025-10", "Api-Key": "k"}
W_ID = "6b1b5c3e-6f0e-4b6a-9a57-3f3c8f0b2a11"

QDRANT = [
    Row(
        "Q1",
        "PUT",
        "/collections/docs/points",
        query=[("wait", "true")],
        body={"points": [{"id": 1, "vector": [0.1, 0.2], "payload": {"email": "a@x.io"}}]},
        expect=[
            E("write", "docs", ids=["1"], ids_known=True, vector_count=1, filter_present=False)
        ],
    ),
    Row(
        "Q2",
        "POST",
        "/collections/docs/points",
        body={"ids": [1, 2], "with_payload": True},
        expect=[E("read", "docs", ids=["1", "2"], ids_known=True, filter_present=False)],
        response_ids=["result[].id"],
        user_data=["result[].payload"],
    ),
    Row(
        "Q3",
        "POST",
        "/collections/docs/points/query",
        body={"query": [0.1, 0.2], "limit": 3, "with_payload": True},
        expect=[
            E(
                "search",
                "docs",
                ids=[],
                ids_known=False,
                vector_count=1,
                limit=3,
                filter_present=False,
            )
        ],
        response_ids=["result.points[].id"],
        user_data=["result.points[].payload"],
        vectors=["result.points[].vector"],
    ),
    Row(
        "Q4",
        "POST",
        "/collections/docs/points/query",
        body={
            "query": {"recommend": {"positive": [7]}},
            "limit": 5,
            "lookup_from": {"collection": "archive"},
        },
        expect=[
            E("search", "docs", ids=["7"], ids_known=False, limit=5),
            E("read", "archive", ids=["7"], detail="lookup_from"),
        ],
    ),
    Row(
        "Q5",
        "POST",
        "/collections/docs/points/delete",
        body={"filter": {"must": [{"key": "tenant", "match": {"value": "t1"}}]}},
        expect=[E("delete", "docs", ids=[], ids_known=False, filter_present=True)],
    ),
    Row(
        "Q6",
        "POST",
        "/collections/docs/points/batch",
        body={
            "operations": [
                {"upsert": {"points": [{"id": 3, "vector": [0.3, 0.4]}]}},
                {"delete": {"points": [1]}},
            ]
        },
        expect=[
            E("write", "docs", ids=["3"], vector_count=1, detail="upsert"),
            E("delete", "docs", ids=["1"], ids_known=True, detail="delete"),
        ],
    ),
    Row("Q7", "DELETE", "/collections/docs", expect=[E("admin", "docs")]),
    Row("Q8a", "GET", "/collections/docs", expect=[E("schema", "docs")]),
    Row("Q8b", "GET", "/healthz", expect=[E("health", None)]),
]

CHROMA = [
    Row(
        "C1",
        "POST",
        T + "/collections",
        body={"name": "docs", "get_or_create": True, "metadata": {"team": "a"}},
        expect=[E("admin", "docs", database=DB)],
    ),
    Row(
        "C2",
        "POST",
        f"{T}/collections/{U}/add",
        body={
            "ids": ["a", "b"],
            "embeddings": [[0.1, 0.2], [0.3, 0.4]],
            "documents": ["hi", "yo"],
            "metadatas": [{"u": "1"}, None],
        },
        expect=[
            E(
                "write",
                "docs",
                database=DB,
                ids=["a", "b"],
                ids_known=True,
                vector_count=2,
                filter_present=False,
            )
        ],
    ),
    Row(
        "C3",
        "POST",
        f"{T}/collections/{U}/query",
        body={
            "query_embeddings": [[0.1, 0.2]],
            "n_results": 2,
            "include": ["documents", "metadatas", "distances"],
        },
        expect=[
            E(
                "search",
                "docs",
                ids=[],
                ids_known=False,
                vector_count=1,
                limit=2,
                filter_present=False,
                with_vectors=False,
            )
        ],
        response_ids=["ids[][]"],
    ),
    Row(
        "C4",
        "POST",
        f"{T}/collections/{U}/get",
        body={"ids": ["a"], "include": ["documents", "metadatas"]},
        expect=[E("read", "docs", ids=["a"], ids_known=True, filter_present=False)],
    ),
    Row(
        "C5",
        "POST",
        f"{T}/collections/{U}/delete",
        body={"where": {"u": "1"}},
        expect=[E("delete", "docs", ids=[], ids_known=False, filter_present=True)],
    ),
    Row("C6", "GET", T + "/collections/docs", expect=[E("schema", "docs", database=DB)]),
    Row(
        "C7",
        "POST",
        f"{T}/collections/{U}/conditional/commit",
        body={
            "operations": [
                {"operation": "upsert", "payload": {"ids": ["c"], "embeddings": [[0.5, 0.6]]}},
                {"operation": "delete", "payload": {"ids": ["a"]}},
            ]
        },
        expect=[
            E("write", "docs", ids=["c"], vector_count=1),
            E("delete", "docs", ids=["a"], ids_known=True),
        ],
    ),
    Row("C8", "GET", "/api/v1/collections", error="v1 API is deprecated"),
]

PINECONE = [
    Row(
        "P1",
        "POST",
        "/vectors/upsert",
        host=H,
        headers=PC,
        body={
            "vectors": [{"id": "v1", "values": [0.1, 0.2], "metadata": {"email": "a@x.io"}}],
            "namespace": "ns1",
        },
        expect=[E("write", "docs", database="ns1", ids=["v1"], ids_known=True, vector_count=1)],
    ),
    Row(
        "P2",
        "POST",
        "/query",
        host=H,
        headers=PC,
        body={"vector": [0.1, 0.2], "topK": 3, "includeMetadata": True, "namespace": "ns1"},
        expect=[
            E("search", "docs", database="ns1", ids=[], ids_known=False, vector_count=1, limit=3)
        ],
        response_ids=["matches[].id"],
        user_data=["matches[].metadata"],
    ),
    Row(
        "P3",
        "GET",
        "/vectors/fetch",
        host=H,
        headers=PC,
        query=[("ids", "v1"), ("ids", "v2"), ("namespace", "ns1")],
        expect=[E("read", "docs", database="ns1", ids=["v1", "v2"], ids_known=True)],
    ),
    Row(
        "P4",
        "POST",
        "/vectors/delete",
        host=H,
        headers=PC,
        body={"filter": {"genre": {"$eq": "x"}}, "namespace": "ns1"},
        expect=[E("delete", "docs", database="ns1", ids=[], ids_known=False, filter_present=True)],
    ),
    Row(
        "P5",
        "POST",
        "/vectors/delete",
        host=H,
        headers=PC,
        body={"deleteAll": True, "namespace": "ns1"},
        expect=[E("delete", "docs", database="ns1", ids=[], ids_known=False, detail="delete_all")],
    ),
    Row(
        "P6",
        "POST",
        "/bulk/imports",
        host=H,
        headers=PC,
        body={"uri": "s3://bucket/path/", "errorMode": {"onError": "abort"}},
        expect=[E("write", "docs", bulk=True, ids=[], ids_known=False)],
    ),
    Row(
        "P7",
        "POST",
        "/records/namespaces/ns1/search",
        host=H,
        headers=PC,
        body={"query": {"top_k": 3, "inputs": {"text": "hello"}}, "fields": ["chunk_text"]},
        expect=[E("search", "docs", database="ns1", ids=[], ids_known=False, limit=3)],
        response_ids=["result.hits[]._id"],
        user_data=["result.hits[].fields"],
    ),
    Row(
        "P8",
        "DELETE",
        "/indexes/docs",
        host="api.pinecone.io",
        headers=PC,
        expect=[E("admin", "docs")],
    ),
]

WEAVIATE = [
    Row(
        "W1",
        "POST",
        "/v1/objects",
        body={"class": "Doc", "id": W_ID, "properties": {"email": "a@x.io"}, "vector": [0.1, 0.2]},
        expect=[E("write", "Doc", ids=[W_ID], ids_known=True, vector_count=1)],
    ),
    Row(
        "W2",
        "GET",
        f"/v1/objects/Doc/{W_ID}",
        query=[("include", "vector")],
        expect=[E("read", "Doc", ids=[W_ID], with_vectors=True)],
        user_data=["properties"],
        vectors=["vector", "vectors{*}"],
    ),
    Row(
        "W3",
        "DELETE",
        "/v1/batch/objects",
        body={
            "match": {
                "class": "Doc",
                "where": {"path": ["tenant"], "operator": "Equal", "valueText": "t1"},
            },
            "output": "verbose",
        },
        expect=[E("delete", "Doc", ids=[], ids_known=False, filter_present=True)],
    ),
    Row(
        "W4",
        "POST",
        "/v1/graphql",
        body={
            "query": "{ Get { Doc(nearVector:{vector:[0.1,0.2]}, limit:3) "
            "{ email _additional { id distance } } } }"
        },
        expect=[E("search", "Doc", ids=[], ids_known=False, vector_count=1, limit=3)],
        response_ids=["data.Get.Doc[]._additional.id"],
        user_data=["data.Get.Doc[].email"],
    ),
    Row(
        "W5",
        "POST",
        "/v1/graphql",
        body={"query": "{ Aggregate { Doc { meta { count } } } }"},
        expect=[E("read", "Doc", filter_present=False)],
    ),
    Row(
        "W6",
        "POST",
        "/v1/batch/objects",
        body={
            "objects": [
                {"class": "Doc", "properties": {"t": "a"}},
                {"class": "Note", "properties": {"t": "b"}},
            ]
        },
        expect=[
            E("write", "Doc", ids=[], ids_known=False),
            E("write", "Note", ids=[], ids_known=False),
        ],
        response_ids=["[].id"],
    ),
    Row("W7", "DELETE", "/v1/schema/Doc", expect=[E("admin", "Doc")]),
    Row("W8", "GET", "/v1/.well-known/ready", expect=[E("health")]),
]

MV = "/v2/vectordb"
MILVUS = [
    Row(
        "M1",
        "POST",
        MV + "/entities/insert",
        body={
            "collectionName": "docs",
            "data": [{"id": 1, "vector": [0.1, 0.2], "email": "a@x.io"}],
        },
        expect=[E("write", "docs", database="default", ids=["1"], ids_known=True)],
        response_ids=["data.insertIds[]"],
    ),
    Row(
        "M2",
        "POST",
        MV + "/entities/search",
        body={
            "collectionName": "docs",
            "data": [[0.1, 0.2]],
            "annsField": "vector",
            "limit": 3,
            "outputFields": ["email"],
        },
        expect=[
            E(
                "search",
                "docs",
                database="default",
                ids=[],
                ids_known=False,
                vector_count=1,
                limit=3,
            )
        ],
        # and the same in the per-query-vector lists some versions nest rows in
        response_ids=["data[].id", "data[][].id"],
        user_data=["data[]"],
        vectors=["data[].vector", "data[][].vector"],
    ),
    Row(
        "M3",
        "POST",
        MV + "/entities/get",
        headers={"DB-Name": "prod"},
        body={"collectionName": "docs", "id": [1, 2], "outputFields": ["*"]},
        expect=[E("read", "docs", database="prod", ids=["1", "2"], ids_known=True)],
    ),
    Row(
        "M4",
        "POST",
        MV + "/entities/query",
        body={"collectionName": "docs", "filter": "age > 30", "limit": 10},
        expect=[
            E(
                "read",
                "docs",
                database="default",
                ids=[],
                ids_known=False,
                filter_present=True,
                limit=10,
            )
        ],
    ),
    Row(
        "M5",
        "POST",
        MV + "/entities/delete",
        body={"collectionName": "docs", "filter": "id in [1,2]"},
        expect=[E("delete", "docs", database="default", ids=["1", "2"], ids_known=True)],
    ),
    Row(
        "M6",
        "POST",
        MV + "/entities/delete",
        body={"dbName": "prod", "collectionName": "docs", "filter": 'email like "%@x.io"'},
        expect=[E("delete", "docs", database="prod", ids=[], ids_known=False, filter_present=True)],
    ),
    Row(
        "M7",
        "POST",
        MV + "/collections/drop",
        body={"collectionName": "docs"},
        expect=[E("admin", "docs", database="default")],
    ),
    Row(
        "M8",
        "POST",
        MV + "/jobs/import/create",
        body={"collectionName": "docs", "files": [["s3://b/1.parquet"]]},
        expect=[E("write", "docs", database="default", bulk=True, ids=[], ids_known=False)],
    ),
]

CORPUS: list[tuple[Product, Row]] = [
    *[("qdrant", r) for r in QDRANT],
    *[("chroma", r) for r in CHROMA],
    *[("pinecone", r) for r in PINECONE],
    *[("weaviate", r) for r in WEAVIATE],
    *[("milvus", r) for r in MILVUS],
]


@pytest.mark.parametrize(("product", "row"), [pytest.param(p, r, id=r.id) for p, r in CORPUS])
def test_corpus_row(product: Product, row: Row) -> None:
    c = classify(product, row.request(), chroma_names={U: "docs"})
    check(c, row, product)


@pytest.mark.parametrize(("product", "row"), [pytest.param(p, r, id=r.id) for p, r in CORPUS])
def test_corpus_product_is_detected(product: Product, row: Row) -> None:
    assert detect_product(row.request()) == product


@pytest.mark.parametrize("row", params(r for r in CHROMA if r.id in ("C2", "C3", "C4", "C5")))
def test_unresolved_chroma_uuid_is_the_collection(row: Row) -> None:
    """Without a name map the UUID stays the collection, so name globs fail closed."""
    c = classify("chroma", row.request())
    assert c.error is None
    assert {o.collection for o in c.operations} == {U}


def test_corpus_covers_every_row_of_section_10() -> None:
    ids = {r.id.rstrip("ab") for _, r in CORPUS}
    assert ids == {f"{p}{n}" for p in "QCPWM" for n in range(1, 9)}
