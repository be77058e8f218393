"""Masker (capture/masker.py) behind each product's real classification: the
request is classified by capture.classify, the obligation is a MaskPlan as the
enforcer builds it, and the upstream's answer goes through the Masker addon,
both its fast path and its reference path. What reaches the client, and what
is recorded as masked, is checked.

Regressions of the third audit:
(A) ``strip_vectors`` did nothing for Milvus (its rows' vector fields are
    named by the collection schema, which the classifier never saw);
(B) a Weaviate GraphQL alias renamed a field out of reach of masking by name;
(C) keys named ``id``, ``_id`` or ``ids`` anywhere in user data were skipped,
    with everything under them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from capture.classify import classify
from capture.masker import Masker, MaskPlan, aliased_fields
from capture.types import Classification, HttpRequest, Product
from schemas.models import MaskedField
from tests.capture.test_masker import HMAC_KEY, _run

T = "/api/v2/tenants/default_tenant/databases/default_database"
U = "2f3b7c1e-0000-4000-8000-000000000001"
PINECONE_HOST = "docs-abc123.svc.aped-4627-b74a.pinecone.io"
OID = "6b1b5c3e-6f0e-4b6a-9a57-3f3c8f0b2a11"
REF = "7c2c6d4f-7f1f-4c7b-8b68-4f4d9f1c3b22"


def classified(product: Product, method: str, path: str, body: Any = None,
               query: tuple[tuple[str, str], ...] = ()) -> Classification:
    req = HttpRequest(
        method=method,
        path=path,
        host=PINECONE_HOST if product == "pinecone" else "",
        query=query,
        headers={"host": PINECONE_HOST} if product == "pinecone" else {},
        body=b"" if body is None else json.dumps(body).encode(),
    )
    cls = classify(product, req, chroma_names={U: "docs"})
    assert cls.ok, cls.error
    return cls


def deliver(cls: Classification, answer: Any, *, detectors: tuple[str, ...] = (),
            fields: tuple[str, ...] = (), field_paths: tuple[str, ...] = (),
            strip_vectors: bool = False) -> tuple[Any, list[MaskedField]]:
    """The body the client receives and the fields recorded as masked; the
    fast and the reference Masker must agree on both."""
    plan = MaskPlan(detectors=detectors, fields=fields, field_paths=field_paths,
                    strip_vectors=strip_vectors, user_data_paths=cls.user_data_paths)
    body = json.dumps(answer).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    fast = _run(Masker(HMAC_KEY), body, headers, cls, plan)
    reference = _run(Masker(HMAC_KEY, reference=True), body, headers, cls, plan)
    assert fast == reference
    status, raw, _, masked, *_ = fast
    assert status == 200
    return json.loads(raw), list(masked or [])


# ------------------------------------------------------------ (A) Milvus vectors

V2 = "/v2/vectordb/entities"
MILVUS_REQUESTS = [
    (V2 + "/query", {"collectionName": "docs", "filter": "id > 0", "limit": 3}),
    (V2 + "/get", {"collectionName": "docs", "id": [1]}),
    (V2 + "/search", {"collectionName": "docs", "data": [[0.1, 0.2, 0.3]], "limit": 3,
                      "outputFields": ["*"]}),
    (V2 + "/search", {"collectionName": "docs", "data": [[0.1, 0.2, 0.3]], "limit": 3,
                      "annsField": "embedding", "outputFields": ["title", "embedding"]}),
    (V2 + "/hybrid_search", {
        "collectionName": "docs", "outputFields": ["*"], "limit": 3,
        "rerank": {"strategy": "rrf", "params": {"k": 10}},
        "search": [{"data": [[0.1, 0.2, 0.3]], "annsField": "embedding", "limit": 3},
                   {"data": [{"3": 0.5}], "annsField": "sparse", "limit": 3}]}),
    (V2 + "/advanced_search", {
        "collectionName": "docs", "outputFields": ["*"],
        "search": [{"data": [[0.1, 0.2, 0.3]], "annsField": "embedding", "limit": 3}]}),
    ("/v1/vector/query", {"collectionName": "docs", "filter": "id in [1]"}),
    ("/v1/vector/search", {"collectionName": "docs", "vector": [0.1, 0.2, 0.3]}),
]
#: every vector encoding of Milvus' REST rows, and the scalars beside them
MILVUS_ROW = {
    "id": 1, "distance": 0.91, "title": "a note", "year": 2024, "owner": "carol@x.io",
    "embedding": [0.11, 0.22, 0.33],  # FloatVector
    "int8": [12, -7, 3],  # Int8Vector
    "bin": "AAECAw==",  # BinaryVector / Float16Vector / BFloat16Vector ([]byte, base64)
    "sparse": {"3": 0.5, "1024": 0.25},  # SparseFloatVector
    "chunks": [{"text": "first part", "emb": [0.4, 0.5]}],  # struct array with a vector
}
MILVUS_VECTORS = ["bin", "chunks[0].emb", "embedding", "int8", "sparse"]


@pytest.mark.parametrize(("path", "body"), MILVUS_REQUESTS, ids=lambda v: str(v)[:60])
def test_milvus_strip_vectors_reaches_every_row_and_is_recorded(
    path: str, body: dict[str, Any]
) -> None:
    cls = classified("milvus", "POST", path, body)
    answer = {"code": 0, "cost": 0, "data": [MILVUS_ROW, {**MILVUS_ROW, "id": 2}]}
    out, masked = deliver(cls, answer, strip_vectors=True)
    for i, row in enumerate(out["data"]):
        assert row["id"] == i + 1
        assert [row["embedding"], row["int8"], row["bin"], row["sparse"],
                row["chunks"][0]["emb"]] == [None] * 5
        assert row["chunks"][0]["text"] == "first part"
        assert (row["title"], row["year"], row["distance"]) == ("a note", 2024, 0.91)
    assert sorted((f.path, f.kind) for f in masked) == sorted(
        (f"data[{i}].{v}", "vector") for i in (0, 1) for v in MILVUS_VECTORS
    )
    assert b"0.11" not in json.dumps(out).encode()


def test_milvus_strip_vectors_with_masking_and_nested_rows() -> None:
    """Search rows nested per query vector, masking beside the stripping, and
    a primary key that looks like base64 kept at its position."""
    cls = classified("milvus", "POST", V2 + "/search",
                     {"collectionName": "docs", "data": [[0.1], [0.2]], "outputFields": ["*"]})
    row = {**MILVUS_ROW, "id": "doc1"}
    out, masked = deliver(cls, {"code": 0, "data": [row, [row]]}, detectors=("email",),
                          fields=("title",), strip_vectors=True)
    flat, nested = out["data"][0], out["data"][1][0]
    assert flat["id"] == "doc1" and flat["embedding"] is None and flat["bin"] is None
    assert flat["owner"] == "[MASKED:email]" and flat["title"] == "[MASKED:field]"
    assert nested["embedding"] is None and nested["sparse"] is None
    assert MaskedField(path="data[1][0].embedding", kind="vector") in masked


def test_milvus_without_strip_vectors_keeps_vectors() -> None:
    cls = classified("milvus", "POST", V2 + "/query", {"collectionName": "docs", "filter": "x"})
    out, masked = deliver(cls, {"code": 0, "data": [MILVUS_ROW]}, detectors=("email",))
    assert out["data"][0]["embedding"] == [0.11, 0.22, 0.33]
    assert [(f.path, f.kind) for f in masked] == [("data[0].owner", "email")]


# ------------------------------------------------------- (B) Weaviate aliases


def graphql(query: str, answer: Any, **plan: Any) -> tuple[Any, list[MaskedField]]:
    cls = classified("weaviate", "POST", "/v1/graphql", {"query": query})
    return deliver(cls, answer, **plan)


SALARY = "120000 EUR"


@pytest.mark.parametrize(
    ("query", "answer", "where"),
    [
        ("{ Get { Doc { salary } } }",  # the field itself, for comparison
         {"Get": {"Doc": [{"salary": SALARY}]}}, "Get.Doc[0].salary"),
        ("{ Get { Doc { s: salary } } }",
         {"Get": {"Doc": [{"s": SALARY}]}}, "Get.Doc[0].s"),
        ("{ Get { Doc { id: salary } } }",  # the object's id is _additional.id
         {"Get": {"Doc": [{"id": SALARY}]}}, "Get.Doc[0].id"),
        ("{ g: Get { d: Doc(limit: 1) { s: salary } } }",
         {"g": {"d": [{"s": SALARY}]}}, "g.d[0].s"),
        ("{ Get { Doc { profile { pay: salary } } } }",  # a nested object property
         {"Get": {"Doc": [{"profile": {"pay": SALARY}}]}}, "Get.Doc[0].profile.pay"),
        ("{ Get { Doc { author { ... on Person { p: salary } } } } }",  # a cross-reference
         {"Get": {"Doc": [{"author": [{"p": SALARY}]}]}}, "Get.Doc[0].author[0].p"),
        ("{ Get { Doc { ...F } } } fragment F on Doc { s: salary }",
         {"Get": {"Doc": [{"s": SALARY}]}}, "Get.Doc[0].s"),
        ("{ Get { Doc { ... on Doc { s: salary } } } }",
         {"Get": {"Doc": [{"s": SALARY}]}}, "Get.Doc[0].s"),
        ("{ Get { Doc(groupBy: {path: [\"t\"], groups: 1, objectsPerGroup: 1}) "
         "{ _additional { group { hits { s: salary } } } } } }",
         {"Get": {"Doc": [{"_additional": {"group": {"hits": [{"s": SALARY}]}}}]}},
         "Get.Doc[0]._additional.group.hits[0].s"),
    ],
)
def test_weaviate_alias_is_masked_as_the_field(query: str, answer: Any, where: str) -> None:
    out, masked = graphql(query, {"data": answer}, fields=("salary",))
    assert SALARY not in json.dumps(out)
    assert masked == [MaskedField(path=f"data.{where}", kind="field")]


def test_weaviate_alias_of_a_policy_path_is_masked() -> None:
    out, masked = graphql("{ g: Get { D: Doc { s: salary title } } }",
                          {"data": {"g": {"D": [{"s": SALARY, "title": "t"}]}}},
                          field_paths=("data.Get.Doc[].salary",))
    assert out["data"]["g"]["D"][0] == {"s": "[MASKED:field]", "title": "t"}
    assert masked == [MaskedField(path="data.g.D[0].s", kind="field")]


def test_weaviate_aliased_additional_and_topoccurrences() -> None:
    # vectors under a renamed _additional are stripped, a renamed id is kept
    out, masked = graphql(
        "{ Get { Doc { a: _additional { i: id v: vector } "
        "author { ... on Person { x: _additional { vector } } } } } }",
        {"data": {"Get": {"Doc": [{"a": {"i": OID, "v": [0.1, 0.2]},
                                   "author": [{"x": {"vector": [0.3]}}]}]}}},
        strip_vectors=True)
    doc = out["data"]["Get"]["Doc"][0]
    assert doc == {"a": {"i": OID, "v": None}, "author": [{"x": {"vector": None}}]}
    assert {f.kind for f in masked} == {"vector"}
    # an aggregate's renamed value is still scanned by the detectors
    out, _ = graphql("{ Aggregate { Doc { owner { t: topOccurrences { v: value } } } } }",
                     {"data": {"Aggregate": {"Doc": [{"owner": {"t": [{"v": "a@x.io"}]}}]}}},
                     detectors=("email",))
    assert out["data"]["Aggregate"]["Doc"][0]["owner"]["t"][0]["v"] == "[MASKED:email]"


def test_aliased_fields_widens_names_and_paths() -> None:
    aliases = (("g", "Get"), ("D", "Doc"), ("d", "Doc"), ("s", "salary"), ("t", "title"))
    fields, paths = aliased_fields(("Salary", "email"), ("data.Get.Doc[].salary",), aliases)
    assert fields == ("Salary", "email", "s")
    assert set(paths) == {
        f"data.{g}.{d}[].{s}"
        for g in ("Get", "g") for d in ("Doc", "D", "d") for s in ("salary", "s")
    }
    assert aliased_fields(("a",), ("x.y",), ()) == (("a",), ("x.y",))
    # too many spellings: each renamed step is widened to {*} instead
    many = tuple((f"a{i}", "salary") for i in range(70))
    _, paths = aliased_fields((), ("data.Get.Doc[].salary",), many)
    assert paths == ("data.Get.Doc[].salary", "data.Get.Doc[].{*}")


# ------------------------------------------ (C) keys named id inside user data

PII = {"id": "alice@x.io", "_id": "dave@x.io", "ids": {"contact": "bob@x.io"}}
PII_MASKED = {"id": "[MASKED:email]", "_id": "[MASKED:email]",
              "ids": {"contact": "[MASKED:email]"}}

ID_CASES = [
    pytest.param(
        ("qdrant", "POST", "/collections/docs/points/query",
         {"query": [0.1, 0.2], "limit": 3, "with_payload": True}),
        {"result": {"points": [{"id": 1, "score": 0.9, "payload": PII}]}, "status": "ok"},
        {"result": {"points": [{"id": 1, "score": 0.9, "payload": PII_MASKED}]},
         "status": "ok"},
        id="qdrant point id vs payload"),
    pytest.param(
        ("qdrant", "POST", "/collections/docs/points/query/groups",
         {"query": [0.1], "group_by": "team", "with_lookup": "people"}),
        {"result": {"groups": [{"id": "t", "hits": [{"id": 2, "payload": PII}],
                                "lookup": {"id": 3, "payload": PII}}]}},
        {"result": {"groups": [{"id": "t", "hits": [{"id": 2, "payload": PII_MASKED}],
                                "lookup": {"id": 3, "payload": PII_MASKED}}]}},
        id="qdrant group hits and lookup"),
    pytest.param(
        ("chroma", "POST", f"{T}/collections/{U}/get",
         {"ids": ["a@x.io"], "include": ["documents", "metadatas"]}),
        {"ids": ["a@x.io"], "documents": ["doc"], "metadatas": [PII]},
        {"ids": ["a@x.io"], "documents": ["doc"], "metadatas": [PII_MASKED]},
        id="chroma ids vs metadata"),
    pytest.param(
        ("chroma", "POST", f"{T}/collections/{U}/query",
         {"query_embeddings": [[0.1]], "n_results": 1, "include": ["metadatas"]}),
        {"ids": [["a@x.io"]], "metadatas": [[PII]], "distances": [[0.1]]},
        {"ids": [["a@x.io"]], "metadatas": [[PII_MASKED]], "distances": [[0.1]]},
        id="chroma query"),
    pytest.param(
        ("pinecone", "POST", "/query", {"vector": [0.1], "topK": 1, "includeMetadata": True}),
        {"matches": [{"id": "v@x.io", "score": 0.5, "metadata": PII}]},
        {"matches": [{"id": "v@x.io", "score": 0.5, "metadata": PII_MASKED}]},
        id="pinecone match id vs metadata"),
    pytest.param(
        ("pinecone", "GET", "/vectors/fetch", None, (("ids", "v@x.io"),)),
        {"vectors": {"v@x.io": {"id": "v@x.io", "metadata": PII}}},
        {"vectors": {"v@x.io": {"id": "v@x.io", "metadata": PII_MASKED}}},
        id="pinecone fetch"),
    pytest.param(
        ("weaviate", "GET", f"/v1/objects/Doc/{OID}"),
        {"class": "Doc", "id": OID, "properties": {"ids": PII["ids"], "meta": PII}},
        {"class": "Doc", "id": OID, "properties": {"ids": PII_MASKED["ids"],
                                                    "meta": PII_MASKED}},
        id="weaviate object id vs properties"),
    pytest.param(
        ("weaviate", "POST", "/v1/graphql",
         {"query": "{ Get { Doc { meta author { ... on Person { _additional { id } } } "
                   "_additional { id } } } }"}),
        {"data": {"Get": {"Doc": [{"meta": PII, "author": [{"_additional": {"id": REF}}],
                                   "_additional": {"id": OID}}]}}},
        {"data": {"Get": {"Doc": [{"meta": PII_MASKED,
                                   "author": [{"_additional": {"id": REF}}],
                                   "_additional": {"id": OID}}]}}},
        id="weaviate graphql _additional.id vs properties"),
    pytest.param(
        ("milvus", "POST", "/v2/vectordb/entities/query",
         {"collectionName": "docs", "filter": "id > 0", "outputFields": ["*"]}),
        {"code": 0, "data": [{"id": "pk@x.io", "meta": PII, "ids": "e@x.io"}]},
        {"code": 0, "data": [{"id": "pk@x.io", "meta": PII_MASKED, "ids": "[MASKED:email]"}]},
        id="milvus primary key vs fields"),
]


@pytest.mark.parametrize(("request_", "answer", "want"), ID_CASES)
def test_id_keys_in_user_data_are_masked_and_record_ids_are_kept(
    request_: tuple[Any, ...], answer: Any, want: Any
) -> None:
    cls = classified(*request_)
    out, masked = deliver(cls, answer, detectors=("email",))
    assert out == want
    assert masked and all(f.kind == "email" for f in masked)


def test_id_fields_named_by_a_policy_are_masked_but_record_ids_are_kept() -> None:
    cls = classified("qdrant", "POST", "/collections/docs/points", {"ids": [1]})
    out, _ = deliver(cls, {"result": [{"id": 1, "payload": {"id": 42, "ids": [1, 2]}}]},
                     fields=("id", "ids"))
    assert out["result"][0] == {"id": 1, "payload": {"id": "[MASKED:field]",
                                                     "ids": "[MASKED:field]"}}
