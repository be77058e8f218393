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

Regressions of the fourth audit: a field's value answered away from the
field's key escaped masking by that field's name:
(D) Qdrant point groups: a group's id is the ``group_by`` field's value (and
    so is the id of the point ``with_lookup`` finds for it); likewise a facet
    hit's value and an ``order_by`` query's ``order_value``;
(E) Weaviate aggregates (``topOccurrences``, ``minimum``, ``mean``, ...) of a
    property, and ``groupedBy.value`` of a ``groupBy`` on it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest

from capture.classify import classify
from capture.masker import Masker, MaskPlan, aliased_fields, field_plan
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
    out, masked, _ = deliver_ids(cls, answer, detectors=detectors, fields=fields,
                                 field_paths=field_paths, strip_vectors=strip_vectors)
    return out, masked


def deliver_ids(cls: Classification, answer: Any, *, detectors: tuple[str, ...] = (),
                fields: tuple[str, ...] = (), field_paths: tuple[str, ...] = (),
                strip_vectors: bool = False, mode: Literal["placeholder", "hmac"] = "placeholder",
                ) -> tuple[Any, list[MaskedField], list[str]]:
    """:func:`deliver`, in either mask mode, and the result ids recorded."""
    plan = MaskPlan(detectors=detectors, fields=fields, field_paths=field_paths, mode=mode,
                    strip_vectors=strip_vectors, user_data_paths=cls.user_data_paths)
    body = json.dumps(answer).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    fast = _run(Masker(HMAC_KEY), body, headers, cls, plan)
    reference = _run(Masker(HMAC_KEY, reference=True), body, headers, cls, plan)
    assert fast == reference
    status, raw, _, masked, ids, *_ = fast
    assert status == 200
    return json.loads(raw), list(masked or []), list(ids)


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


#: dynamic fields, as Milvus answers ``outputFields: ["$meta"]``: flattened into
#: each row under their own keys (no "$meta" key in the answer)
DYNAMIC_ROW = {"id": "bob@example.org", "distance": 0.5, "title": "x",
               "email": "bob@example.org", "salary": "120000 EUR", "phone": "+44 20 7946 0958"}


@pytest.mark.parametrize("output_fields", [["$meta"], ["title", "$meta"], ["title"], []])
@pytest.mark.parametrize("endpoint", ["/query", "/search", "/hybrid_search"])
def test_milvus_dynamic_fields_of_meta_are_masked(endpoint: str,
                                                  output_fields: list[str]) -> None:
    """``$meta`` rows carry the dynamic fields under their own keys: naming
    only the listed output fields masked nothing (found in review: an email,
    a masked field and a phone reached the client and the log)."""
    body: dict[str, Any] = {"collectionName": "people", "outputFields": output_fields}
    if endpoint == "/query":
        body["filter"] = "id > 0"
    elif endpoint == "/search":
        body |= {"data": [[0.1, 0.2]], "annsField": "vec"}
    else:
        body["search"] = [{"data": [[0.1, 0.2]], "annsField": "vec", "limit": 3}]
    cls = classified("milvus", "POST", V2 + endpoint, body)
    # search rows may come nested per query vector; query rows are flat
    data = [DYNAMIC_ROW, [DYNAMIC_ROW]] if "search" in endpoint else [DYNAMIC_ROW, DYNAMIC_ROW]
    out, masked = deliver(cls, {"code": 0, "data": data},
                          detectors=("email", "phone"), fields=("salary",))
    second = out["data"][1][0] if "search" in endpoint else out["data"][1]
    for row in (out["data"][0], second):
        assert row["email"] == "[MASKED:email]" and row["phone"] == "[MASKED:phone]"
        assert row["salary"] == "[MASKED:field]" and row["title"] == "x"
        assert row["id"] == "bob@example.org"  # a record id keeps its value
    assert {f.path for f in masked} >= {"data[0].email", "data[0].salary", "data[0].phone"}


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


# -------------------------------- (D) Qdrant: group ids, facets, order values

GROUPS = "/collections/docs/points/{}/groups"
ALICE, BOB = "Alice@x.io", "bob@y.io"


def _groups(*, lookup: bool = False, key: str = "email",
            values: tuple[Any, Any] = (ALICE, BOB)) -> dict[str, Any]:
    def group(gid: Any, pid: int) -> dict[str, Any]:
        g: dict[str, Any] = {"id": gid, "hits": [{"id": pid, "score": 0.9,
                                                  "payload": {key: gid, "t": "x"}}]}
        if lookup:
            g["lookup"] = {"id": gid, "payload": {"title": "a doc"}}
        return g

    return {"result": {"groups": [group(values[0], 1), group(values[1], 2)]}, "status": "ok"}


@pytest.mark.parametrize("kind", ["query", "search", "recommend"])
def test_qdrant_group_ids_are_scanned_by_the_detectors(kind: str) -> None:
    body = {"query": [0.1], "vector": [0.1], "positive": [7], "group_by": "email"}
    cls = classified("qdrant", "POST", GROUPS.format(kind), body)
    out, masked, ids = deliver_ids(cls, _groups(), detectors=("email",))
    groups = out["result"]["groups"]
    assert [g["id"] for g in groups] == ["[MASKED:email]"] * 2
    assert [g["hits"][0]["id"] for g in groups] == [1, 2]  # record ids are kept
    assert ALICE not in json.dumps(out) and BOB not in json.dumps(out)
    assert MaskedField(path="result.groups[0].id", kind="email") in masked
    assert ids == ["1", "2"]


def test_qdrant_group_ids_of_a_masked_field_get_its_hmac_token() -> None:
    """Grouped by a field masked by name: each group id is masked as the
    field itself is, so HMAC tokens still join a group to its hits."""
    cls = classified("qdrant", "POST", GROUPS.format("query"),
                     {"query": [0.1], "group_by": "email", "limit": 2})
    out, masked, _ = deliver_ids(cls, _groups(), fields=("EMAIL",), mode="hmac")
    for g in out["result"]["groups"]:
        token = g["hits"][0]["payload"]["email"]
        assert token.startswith("[HMAC:field:") and g["id"] == token
    assert out["result"]["groups"][0]["id"] != out["result"]["groups"][1]["id"]
    assert {f.path for f in masked} == {
        "result.groups[0].id", "result.groups[1].id",
        "result.groups[0].hits[0].payload.email", "result.groups[1].hits[0].payload.email",
    }


@pytest.mark.parametrize(
    ("group_by", "fields"),
    [("email", ("email",)), ("meta.email", ("email",)), ("meta.email", ("meta",)),
     ("emails[]", ("emails",)), ('"contact.email"', ("contact.email",))],
)
def test_qdrant_group_by_through_a_masked_field_masks_group_ids(
    group_by: str, fields: tuple[str, ...]
) -> None:
    cls = classified("qdrant", "POST", GROUPS.format("search"),
                     {"vector": [0.1], "group_by": group_by})
    out, _, _ = deliver_ids(cls, _groups(), fields=fields)
    assert [g["id"] for g in out["result"]["groups"]] == ["[MASKED:field]"] * 2


def test_qdrant_group_ids_of_other_fields_are_kept() -> None:
    cls = classified("qdrant", "POST", GROUPS.format("query"),
                     {"query": [0.1], "group_by": "doc_id", "with_lookup": "docs_meta"})
    answer = _groups(lookup=True, key="doc_id", values=(11, REF))
    out, masked, ids = deliver_ids(cls, answer, fields=("email", "title"),
                                   detectors=("email", "card"))
    assert [g["id"] for g in out["result"]["groups"]] == [11, REF]
    assert [g["lookup"]["id"] for g in out["result"]["groups"]] == [11, REF]
    assert {f.path for f in masked} == {"result.groups[0].lookup.payload.title",
                                        "result.groups[1].lookup.payload.title"}
    assert ids == ["1", "2", "11", REF]


def test_qdrant_lookup_ids_of_a_masked_group_by_field_are_masked_and_not_recorded() -> None:
    """with_lookup finds the point whose id is the group id: under a mask of
    the group_by field that id is the masked value, so it is masked (with the
    same token) and kept out of the recorded result ids."""
    cls = classified("qdrant", "POST", GROUPS.format("query"),
                     {"query": [0.1], "group_by": "doc_id",
                      "with_lookup": {"collection": "docs_meta", "with_payload": True}})
    answer = _groups(lookup=True, key="doc_id", values=(11, REF))
    out, _, ids = deliver_ids(cls, answer, fields=("doc_id",), mode="hmac")
    for g in out["result"]["groups"]:
        assert g["lookup"]["id"] == g["id"] == g["hits"][0]["payload"]["doc_id"]
        assert g["id"].startswith("[HMAC:field:")
        assert g["lookup"]["payload"] == {"title": "a doc"}
    assert ids == ["1", "2"]
    assert REF not in json.dumps(out)


def test_qdrant_facet_values_of_a_masked_field_are_masked() -> None:
    cls = classified("qdrant", "POST", "/collections/docs/facet", {"key": "email"})
    answer = {"result": {"hits": [{"value": ALICE, "count": 3}, {"value": 42, "count": 1}]}}
    out, _, _ = deliver_ids(cls, answer, fields=("email",))
    assert out["result"]["hits"] == [{"value": "[MASKED:field]", "count": 3},
                                     {"value": "[MASKED:field]", "count": 1}]
    kept, _, _ = deliver_ids(cls, answer, fields=("salary",))
    assert kept == answer


@pytest.mark.parametrize(
    ("path", "body", "points"),
    [
        ("/collections/docs/points/scroll", {"order_by": "salary"}, "result.points"),
        ("/collections/docs/points/scroll", {"order_by": {"key": "salary"}}, "result.points"),
        ("/collections/docs/points/query", {"query": {"order_by": "salary"}}, "result.points"),
        ("/collections/docs/points/query",
         {"prefetch": [{"query": {"order_by": {"key": "salary", "direction": "desc"}}}],
          "query": {"fusion": "rrf"}}, "result.points"),
    ],
)
def test_qdrant_order_values_of_a_masked_field_are_masked(
    path: str, body: dict[str, Any], points: str
) -> None:
    cls = classified("qdrant", "POST", path, body)
    answer = {"result": {"points": [{"id": 1, "payload": {"salary": 120000},
                                     "order_value": 120000}]}}
    out, _, ids = deliver_ids(cls, answer, fields=("salary",), mode="hmac")
    point = out["result"]["points"][0]
    assert point["order_value"] == point["payload"]["salary"] != 120000
    assert ids == ["1"]


@pytest.mark.parametrize("mode", ["placeholder", "hmac"])
def test_a_path_rule_masks_its_field_in_facets_group_ids_and_order_values(mode: str) -> None:
    """A policy that masks a field by absolute path (``paths:``) hides it
    wherever a facet, a group id or an order value would carry its values."""
    path_rule = ("result.points[].payload.email", "result.groups[].hits[].payload.email")
    facet = classified("qdrant", "POST", "/collections/docs/facet", {"key": "email"})
    answer = {"result": {"hits": [{"value": ALICE, "count": 3}]}}
    out, _, _ = deliver_ids(facet, answer, field_paths=path_rule, mode=mode)  # type: ignore[arg-type]
    assert ALICE not in json.dumps(out)
    assert out["result"]["hits"][0]["count"] == 3
    kept, _, _ = deliver_ids(facet, answer, field_paths=("result.points[].payload.salary",))
    assert kept == answer  # a path rule of another field leaves the facet alone

    groups = classified("qdrant", "POST", GROUPS.format("query"),
                        {"query": [0.1], "group_by": "email", "limit": 2})
    out, _, _ = deliver_ids(groups, _groups(), field_paths=path_rule, mode=mode)  # type: ignore[arg-type]
    assert ALICE not in json.dumps(out) and BOB not in json.dumps(out)
    if mode == "hmac":  # the group id still joins its hits
        for g in out["result"]["groups"]:
            assert g["id"] == g["hits"][0]["payload"]["email"]

    order = classified("qdrant", "POST", "/collections/docs/points/scroll",
                       {"order_by": "salary"})
    out, _, _ = deliver_ids(order, {"result": {"points": [
        {"id": 1, "payload": {"salary": 120000}, "order_value": 120000}]}},
        field_paths=("result.points[].payload.salary",))
    assert out["result"]["points"][0]["order_value"] != 120000


# ----------------------------------------------- (E) Weaviate aggregates

SALARIES = {"count": 3, "type": "int", "minimum": 50000, "maximum": 120000, "mean": 85000.0,
            "median": 85000, "mode": 50000, "sum": 255000}
FLAGS = {"count": 2, "type": "boolean", "totalTrue": 1, "totalFalse": 1,
         "percentageTrue": 0.5, "percentageFalse": 0.5}


def _aggregate_answer(**classes: Any) -> dict[str, Any]:
    return {"data": {"Aggregate": classes}}


def test_weaviate_aggregate_top_occurrences_of_a_masked_property_are_masked() -> None:
    query = "{ Aggregate { Doc { salary { count type topOccurrences { value occurs } } } } }"
    answer = _aggregate_answer(Doc=[{"salary": {
        "count": 2, "type": "text",
        "topOccurrences": [{"value": SALARY, "occurs": 2}, {"value": "90000 EUR", "occurs": 1}],
    }}])
    out, masked = graphql(query, answer, fields=("salary",))
    salary = out["data"]["Aggregate"]["Doc"][0]["salary"]
    assert salary == {"count": 2, "type": "text", "topOccurrences": [
        {"value": "[MASKED:field]", "occurs": 2}, {"value": "[MASKED:field]", "occurs": 1}]}
    assert [f.path for f in masked] == [
        "data.Aggregate.Doc[0].salary.topOccurrences[0].value",
        "data.Aggregate.Doc[0].salary.topOccurrences[1].value",
    ]
    # another property's aggregate is left alone
    kept, none = graphql(query, answer, fields=("title",))
    assert kept == answer and none == []


def test_weaviate_aggregate_of_a_property_masked_by_path_is_masked() -> None:
    query = "{ Aggregate { Doc { salary { count topOccurrences { value occurs } } } } }"
    cls = classified("weaviate", "POST", "/v1/graphql", {"query": query})
    answer = _aggregate_answer(Doc=[{"salary": {
        "count": 2, "topOccurrences": [{"value": SALARY, "occurs": 2}]}}])
    out, _ = deliver(cls, answer, field_paths=("data.Get.Doc[].salary",))
    assert SALARY not in json.dumps(out)
    kept, _ = deliver(cls, answer, field_paths=("data.Get.Doc[].title",))
    assert kept == answer


def test_weaviate_aggregate_value_keeps_the_fields_hmac_token() -> None:
    cls = classified("weaviate", "POST", "/v1/graphql", {"query": (
        "{ Get { Doc { salary } } "
        "Aggregate { Doc { salary { topOccurrences { value } } } } }")})
    answer = {"data": {"Get": {"Doc": [{"salary": SALARY}]},
                       "Aggregate": {"Doc": [{"salary": {"topOccurrences": [{"value": SALARY}]}}]}}}
    out, _, _ = deliver_ids(cls, answer, fields=("salary",), mode="hmac")
    token = out["data"]["Get"]["Doc"][0]["salary"]
    assert token.startswith("[HMAC:field:")
    assert out["data"]["Aggregate"]["Doc"][0]["salary"]["topOccurrences"][0]["value"] == token


def test_weaviate_numeric_and_boolean_aggregates_of_a_masked_property_are_masked() -> None:
    stats = " ".join(SALARIES)
    flags = " ".join(FLAGS)
    query = f"{{ Aggregate {{ Doc {{ salary {{ {stats} }} manager {{ {flags} }} " \
            "meta { count } } } }"
    answer = _aggregate_answer(Doc=[{"salary": SALARIES, "manager": FLAGS,
                                     "meta": {"count": 3}}])
    out, masked = graphql(query, answer, fields=("salary", "manager"))
    doc = out["data"]["Aggregate"]["Doc"][0]
    # count and type reveal no value; every statistic does (see _weaviate_graphql)
    assert doc["salary"] == {k: v if k in ("count", "type") else "[MASKED:field]"
                             for k, v in SALARIES.items()}
    assert doc["manager"] == {k: v if k in ("count", "type") else "[MASKED:field]"
                              for k, v in FLAGS.items()}
    assert doc["meta"] == {"count": 3}
    assert len(masked) == len(SALARIES) - 2 + len(FLAGS) - 2


@pytest.mark.parametrize(
    ("query", "answer", "where"),
    [
        ("{ Aggregate { Doc { s: salary { t: topOccurrences { v: value o: occurs } } } } }",
         {"Aggregate": {"Doc": [{"s": {"t": [{"v": SALARY, "o": 1}]}}]}},
         "Aggregate.Doc[0].s.t[0].v"),
        ("{ a: Aggregate { d: Doc { s: salary { hi: maximum } } } }",
         {"a": {"d": [{"s": {"hi": 120000}}]}}, "a.d[0].s.hi"),
        ("{ Aggregate { Doc { ...F } } } fragment F on AggregateDoc { pay: salary { mean } }",
         {"Aggregate": {"Doc": [{"pay": {"mean": 85000.0}}]}}, "Aggregate.Doc[0].pay.mean"),
        ("{ Aggregate { Doc(nearVector: {vector: [0.1]}, objectLimit: 1) "
         "{ salary { ... on AggregateDocsalaryNumeric { median } } } } }",
         {"Aggregate": {"Doc": [{"salary": {"median": 120000}}]}},
         "Aggregate.Doc[0].salary.median"),
    ],
)
def test_weaviate_aggregate_under_aliases_and_fragments_is_masked(
    query: str, answer: Any, where: str
) -> None:
    out, masked = graphql(query, {"data": answer}, fields=("salary",))
    assert masked == [MaskedField(path=f"data.{where}", kind="field")]
    assert "120000" not in json.dumps(out) and SALARY not in json.dumps(out)


def test_weaviate_aggregate_group_by_a_masked_property_masks_grouped_by_value() -> None:
    query = ('{ Aggregate { Doc(groupBy: ["salary"]) { g: groupedBy { value path } '
             "meta { count } } } }")
    answer = _aggregate_answer(Doc=[
        {"g": {"value": SALARY, "path": ["salary"]}, "meta": {"count": 2}},
        {"g": {"value": "a@x.io", "path": ["salary"]}, "meta": {"count": 1}},
    ])
    out, masked = graphql(query, answer, fields=("salary",))
    assert [d["g"] for d in out["data"]["Aggregate"]["Doc"]] == [
        {"value": "[MASKED:field]", "path": ["salary"]}] * 2
    assert len(masked) == 2
    # grouped on another property: kept, but still scanned by the detectors
    other = query.replace('["salary"]', '"team"')
    out, masked = graphql(other, answer, fields=("salary",), detectors=("email",))
    assert [d["g"]["value"] for d in out["data"]["Aggregate"]["Doc"]] == [
        SALARY, "[MASKED:email]"]


def test_weaviate_get_group_by_a_masked_property_masks_grouped_by_value() -> None:
    query = ('{ Get { Doc(nearText: {concepts: ["x"]}, groupBy: {path: ["email"], groups: 2, '
             "objectsPerGroup: 1}) { _additional { group { id groupedBy { value path } "
             "hits { email _additional { id } } } } } } }")
    answer = {"data": {"Get": {"Doc": [{"_additional": {"group": {
        "id": 0, "groupedBy": {"value": "Alice", "path": ["email"]},
        "hits": [{"email": "Alice", "_additional": {"id": OID}}]}}}]}}}
    out, masked = graphql(query, answer, fields=("email",))
    group = out["data"]["Get"]["Doc"][0]["_additional"]["group"]
    assert group["groupedBy"] == {"value": "[MASKED:field]", "path": ["email"]}
    assert group["hits"] == [{"email": "[MASKED:field]", "_additional": {"id": OID}}]
    assert group["id"] == 0


def test_weaviate_graphql_batch_aggregate_is_masked() -> None:
    cls = classified("weaviate", "POST", "/v1/graphql/batch", [
        {"query": "{ Aggregate { Doc { salary { topOccurrences { value } } } } }"}])
    answer = [{"data": {"Aggregate": {"Doc": [{"salary": {"topOccurrences": [
        {"value": SALARY}]}}]}}}]
    out, masked = deliver(cls, answer, fields=("salary",))
    assert out[0]["data"]["Aggregate"]["Doc"][0]["salary"]["topOccurrences"][0] == {
        "value": "[MASKED:field]"}
    assert masked == [MaskedField(
        path="[0].data.Aggregate.Doc[0].salary.topOccurrences[0].value", kind="field")]


def test_weaviate_rest_aggregate_group_by_a_masked_property_is_masked() -> None:
    cls = classified("weaviate", "POST", "/v1/aggregate/Doc", {"groupBy": "salary"})
    answer = {"groups": [{"groupedBy": {"path": ["salary"], "value": 120000}, "count": 2}],
              "tookMs": 1}
    out, _ = deliver(cls, answer, fields=("salary",))
    assert out["groups"] == [{"groupedBy": {"path": ["salary"], "value": "[MASKED:field]"},
                              "count": 2}]
    kept, _ = deliver(cls, answer, fields=("title",))
    assert kept == answer
    # a property statistic (reserved; its answer's shape is not defined) masks it all
    cls = classified("weaviate", "POST", "/v1/aggregate/Doc",
                     {"returnMetrics": ["count", "salary:mean"]})
    out, _ = deliver(cls, {"count": 2, "salary": {"mean": 85000.0}, "tookMs": 1},
                     fields=("salary",))
    assert out == {"count": "[MASKED:field]", "salary": "[MASKED:field]",
                   "tookMs": "[MASKED:field]"}


def test_field_plan_splits_renamed_keys_from_value_paths() -> None:
    aliases = (("s", "salary"), ("result.groups[].id", "email"),
               ("result.groups[].lookup.id", "Email"), ("{*}", "title"))
    fields, paths, values = field_plan(("salary", "EMAIL"), ("x.salary",), aliases)
    assert fields == ("salary", "EMAIL", "s")
    assert values == ("result.groups[].id", "result.groups[].lookup.id")
    assert paths == ("x.salary", "x.s", *values)
    assert field_plan(("a",), (), ()) == (("a",), (), ())
    assert field_plan(("title",), (), aliases)[2] == ("{*}",)
