"""Milvus RESTful v2 (``POST /v2/vectordb/{category}/{action}``) and legacy v1.

Reference: shared/vector-db-apis.md §6, §7, §8. ``Operation.database`` is
``body:dbName``, else header ``DB-Name``, else ``default``. The primary key's
name depends on the collection schema, which a request does not carry: ids
are read from the field ``id`` (the name the quick-setup schema and the
SDKs use by default). A filter counts as an id list only when it is exactly
``id in [...]`` or ``id == v``; anything else leaves the ids unknown.

Vectors in responses. Which fields of a row are vectors is in the collection
schema, which a request does not carry, so search, hybrid search, query and
get cannot name them. Their classification asks instead for every
vector-shaped value under ``data`` to be stripped (``vector_scan_paths``, see
:func:`capture.masking.is_vector_shaped`), at any depth, since struct-array
fields hold vectors inside their elements and some versions nest search rows
per query vector. The shapes are the encodings Milvus' REST API writes:

* an array of numbers: FloatVector, Int8Vector, and Float16/BFloat16Vector on
  servers that convert them to floats;
* an object of decimal index -> number: SparseFloatVector;
* a padded base64 string: BinaryVector, Float16Vector and BFloat16Vector, which
  Go writes as ``[]byte``.

Limits. Shape cannot tell a vector from a scalar that looks like one, and
those are stripped too (failing closed): an ARRAY field of numbers, a JSON or
dynamic field that holds a list of numbers or an index map, and any VARCHAR
that happens to be valid base64 (``"2024"``, ``"Oslo"``, a hex digest). The
primary key is kept only at ``data[].id`` (``PK_FIELD``, the quick-setup
name, which older servers also give every search hit); a primary key of
another name that looks like base64 is stripped, and a scalar field called
``id`` beside such a key is left unmasked, taken for the key. The searched
field (``annsField``) is also stripped by name, whatever its shape. An empty
vector, or one in an encoding none of these shapes match, would not be
recognised; none is known to exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from capture.classify._common import (
    BadRequest,
    Result,
    Route,
    alias_target_ops,
    as_int_limit,
    as_list,
    as_obj,
    as_str,
    id_str,
    op,
    parse_json,
    query_one,
    route,
    run,
    static,
)
from capture.types import ActionClass, Classification, HttpRequest, Operation

__all__ = ["ROUTES", "classify_milvus", "pk_ids"]

A = ActionClass
PK_FIELD = "id"
#: where the vectors of entity rows may be (see the module docstring)
ROW_VECTORS = ("data",)
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_Handler = Callable[[HttpRequest, Mapping[str, str]], Result]


def classify_milvus(req: HttpRequest) -> Classification:
    """Classify one Milvus REST request; never raises."""
    return run("milvus", ROUTES, req, req)


# --------------------------------------------------------------------------- helpers

_IN = re.compile(r"\s*\(?\s*(?P<f>\w+)\s+(?:in|IN)\s*\[(?P<items>[^\[\]]*)\]\s*\)?\s*")
_EQ = re.compile(r"\s*\(?\s*(?P<f>\w+)\s*==\s*(?P<items>-?\d+|\"[^\"\\]*\"|'[^'\\]*')\s*\)?\s*")
#: an id literal: a decimal integer (Milvus reads ``010`` as octal 8, so a
#: leading zero leaves the ids unknown), or a quoted string
_LIT = re.compile(r"\s*(0|-?[1-9]\d*|\"[^\"\\]*\"|'[^'\\]*')\s*")


def pk_ids(expr: str) -> list[str] | None:
    """Ids of a filter that is exactly ``id in [..]`` / ``id == v``, else None."""
    m = _IN.fullmatch(expr) or _EQ.fullmatch(expr)
    if m is None or m.group("f") != PK_FIELD:
        return None
    items = m.group("items")
    if not items.strip():
        return []
    out = []
    for part in items.split(","):
        lit = _LIT.fullmatch(part)
        if lit is None:
            return None
        text = lit.group(1)
        out.append(text[1:-1] if text[0] in "\"'" else text)
    return out


def _body(req: HttpRequest) -> dict[str, object]:
    if not req.body.strip():
        return {}
    return as_obj(parse_json(req.body, go=True), "body")


def _db(req: HttpRequest, body: Mapping[str, object]) -> str:
    if body.get("dbName") is not None:
        name = as_str(body["dbName"], "body.dbName")
        if name:
            return name
    return req.header("db-name") or "default"


def _coll(body: Mapping[str, object], key: str = "collectionName") -> str:
    value = as_str(body.get(key), f"body.{key}")
    if not value:
        raise BadRequest(f"body.{key} is empty")
    return value


def _filter(body: Mapping[str, object], where: str) -> str | None:
    value = body.get("filter")
    if value is None:
        return None
    text = as_str(value, f"{where}.filter")
    return text if text.strip() else None


def _output_fields(body: Mapping[str, object]) -> list[str] | None:
    value = body.get("outputFields")
    if value is None:
        return None
    return [
        as_str(v, f"body.outputFields[{i}]")
        for i, v in enumerate(as_list(value, "body.outputFields"))
    ]


def _row_paths(fields: list[str] | None, default_all: bool) -> tuple[str, ...]:
    """Where the answer's rows carry user data: every key of every row (nested
    search rows too), whatever ``outputFields`` names. Naming only the listed
    fields is not enough: ``$meta`` (the dynamic fields) comes back flattened
    into each row under the dynamic fields' own keys, which no listed name
    matches, so masking missed them all. The primary key keeps its value by its
    position (``response_ids``). Without ``outputFields``, a query returns every
    field (``default_all``) and a search only keys and distances."""
    if fields is None and not default_all:
        return ()
    return ("data[]",)


#: Search rows: some Milvus versions answer a search of several query vectors
#: with one list of rows per vector.
_HITS = ("data[]", "data[][]")


def _anns_paths(*anns: object) -> tuple[str, ...]:
    """The searched vector fields, by name, in each search row."""
    return tuple(
        dict.fromkeys(
            f"{r}.{a}" for a in anns if isinstance(a, str) and _FIELD_NAME.fullmatch(a)
            for r in _HITS
        )
    )


def _ids_param(value: object, where: str) -> list[str]:
    if isinstance(value, list):
        return [id_str(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return [id_str(value, where)]


def _filtered(
    action: ActionClass,
    body: Mapping[str, object],
    coll: str,
    db: str,
    detail: str,
    *,
    limit: int | None = None,
    with_vectors: bool | None = None,
) -> Operation:
    """An op selected by ``body:filter``; exact primary-key lists keep their ids."""
    flt = _filter(body, "body")
    ids = pk_ids(flt) if flt is not None else None
    return op(
        action,
        collection=coll,
        database=db,
        ids=ids or [],
        ids_known=ids is not None,
        filters=[flt] if flt else [],
        filter_is_id_list=ids is not None,
        limit=limit,
        with_vectors=with_vectors,
        detail=detail,
    )


# --------------------------------------------------------------------------- entities


def _search(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    body = _body(req)
    coll, db = _coll(body), _db(req, body)
    data = body.get("data", body.get("vector"))
    vectors = 0 if data is None else len(as_list(data, "body.data"))
    if body.get("vector") is not None and body.get("data") is None:
        vectors = 1  # legacy v1: one query vector
    ids = [] if body.get("ids") is None else _ids_param(body["ids"], "body.ids")
    flt = _filter(body, "body")
    fields = _output_fields(body)
    anns = body.get("annsField")
    with_vectors = fields is not None and (
        "*" in fields or (isinstance(anns, str) and anns in fields)
    )
    return Result(
        [
            op(
                A.SEARCH,
                collection=coll,
                database=db,
                ids=ids,
                ids_known=False,
                vector_count=vectors,
                filters=[flt] if flt else [],
                limit=as_int_limit(body.get("limit"), "body.limit"),
                with_vectors=with_vectors,
                detail="search",
            )
        ],
        response_ids=tuple(f"{r}.{PK_FIELD}" for r in _HITS),
        user_data_paths=_row_paths(fields, False),
        vector_paths=_anns_paths(anns),
        vector_scan_paths=ROW_VECTORS,
    )


def _hybrid_search(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    body = _body(req)
    coll, db = _coll(body), _db(req, body)
    searches = as_list(body.get("search"), "body.search")
    if not searches:
        raise BadRequest("body.search is empty")
    fields = _output_fields(body)
    ops = []
    anns: list[object] = []
    for i, item in enumerate(searches):
        where = f"body.search[{i}]"
        s = as_obj(item, where)
        flt = _filter(s, where)
        data = s.get("data")
        anns.append(s.get("annsField"))
        ops.append(
            op(
                A.SEARCH,
                collection=coll,
                database=db,
                ids_known=False,
                vector_count=0 if data is None else len(as_list(data, f"{where}.data")),
                filters=[flt] if flt else [],
                limit=as_int_limit(s.get("limit", body.get("limit")), f"{where}.limit"),
                with_vectors=fields is not None and "*" in fields,
                detail="hybrid_search",
            )
        )
    return Result(
        ops,
        response_ids=tuple(f"{r}.{PK_FIELD}" for r in _HITS),
        user_data_paths=_row_paths(fields, False),
        vector_paths=_anns_paths(*anns),
        vector_scan_paths=ROW_VECTORS,
    )


def _query(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    body = _body(req)
    fields = _output_fields(body)
    return Result(
        [
            _filtered(
                A.READ,
                body,
                _coll(body),
                _db(req, body),
                "query",
                limit=as_int_limit(body.get("limit"), "body.limit"),
                with_vectors=fields is None or "*" in fields,
            )
        ],
        response_ids=(f"data[].{PK_FIELD}",),
        user_data_paths=_row_paths(fields, True),
        vector_scan_paths=ROW_VECTORS,
    )


def _get(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    body = _body(req)
    if body.get("id") is None:
        raise BadRequest("body.id is required")
    fields = _output_fields(body)
    return Result(
        [
            op(
                A.READ,
                collection=_coll(body),
                database=_db(req, body),
                ids=_ids_param(body["id"], "body.id"),
                with_vectors=fields is None or "*" in fields,
                detail="get",
            )
        ],
        response_ids=(f"data[].{PK_FIELD}",),
        user_data_paths=_row_paths(fields, True),
        vector_scan_paths=ROW_VECTORS,
    )


def _rows(kind: str) -> _Handler:
    def handler(req: HttpRequest, _p: Mapping[str, str]) -> Result:
        body = _body(req)
        data = body.get("data")
        rows = [data] if isinstance(data, dict) else as_list(data, "body.data")
        if not rows:
            raise BadRequest("body.data is empty")
        ids: list[str] = []
        for i, item in enumerate(rows):
            row = as_obj(item, f"body.data[{i}]")
            if row.get(PK_FIELD) is not None:
                ids.append(id_str(row[PK_FIELD], f"body.data[{i}].{PK_FIELD}"))
        resp = "data.insertIds[]" if kind == "insert" else "data.upsertIds[]"
        return Result(
            [
                op(
                    A.WRITE,
                    collection=_coll(body),
                    database=_db(req, body),
                    ids=ids,
                    ids_known=len(ids) == len(rows),
                    vector_count=len(rows),
                    detail=kind,
                )
            ],
            response_ids=(resp,),
        )

    return handler


def _delete(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    body = _body(req)
    coll, db = _coll(body), _db(req, body)
    if _filter(body, "body") is None:
        if body.get("id") is None:
            raise BadRequest("delete has neither a filter nor an id")
        return Result(
            [
                op(
                    A.DELETE,
                    collection=coll,
                    database=db,
                    ids=_ids_param(body["id"], "body.id"),
                    detail="delete",
                )
            ]
        )
    return Result([_filtered(A.DELETE, body, coll, db, "delete")])


# --------------------------------------------------------------------------- management


def _managed(
    action: ActionClass,
    detail: str,
    *,
    coll: str | None = "required",
    ids_known: bool = True,
    bulk: bool = False,
    resp: tuple[str, ...] = (),
) -> _Handler:
    """``coll``: "required", "optional" or None (no collection)."""

    def handler(req: HttpRequest, _p: Mapping[str, str]) -> Result:
        body = _body(req)
        collection = None
        if coll == "required" or (coll == "optional" and body.get("collectionName")):
            collection = _coll(body)
        return Result(
            [
                op(
                    action,
                    collection=collection,
                    database=_db(req, body),
                    ids_known=ids_known,
                    bulk=bulk,
                    detail=detail,
                )
            ],
            response_ids=resp,
        )

    return handler


def _rename(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    body = _body(req)
    db = _db(req, body)
    new_db = db if body.get("newDbName") is None else as_str(body["newDbName"], "body.newDbName")
    return Result(
        [
            op(A.ADMIN, collection=_coll(body), database=db, detail="rename"),
            op(
                A.ADMIN,
                collection=_coll(body, "newCollectionName"),
                database=new_db,
                detail="rename:newCollectionName",
            ),
        ]
    )


def _snapshot_export(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    """An export writes a snapshot of every row of ``collectionName`` to object
    storage (``targetS3Path``): an admin act, and a bulk read of the data."""
    body = _body(req)
    db, collection = _db(req, body), _coll(body)
    return Result([
        op(A.ADMIN, collection=collection, database=db, detail="jobs/snapshot/export"),
        op(A.READ, collection=collection, database=db, ids_known=False, bulk=True,
           detail="jobs/snapshot/export:data"),
    ])


def _snapshot_restore_external(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    """A restore loads an exported snapshot (``snapshotMetadataURI``, perhaps of
    another collection or cluster) into ``targetCollectionName``: an admin act,
    and a bulk write of rows nobody named."""
    body = _body(req)
    db, target = _db(req, body), _coll(body, "targetCollectionName")
    return Result([
        op(A.ADMIN, collection=target, database=db, detail="jobs/snapshot/restore_external"),
        op(A.WRITE, collection=target, database=db, ids_known=False, bulk=True,
           detail="jobs/snapshot/restore_external:data"),
    ])


def _alias(detail: str) -> _Handler:
    """Aliases act on the alias name and, for create/alter, the collection."""

    def handler(req: HttpRequest, _p: Mapping[str, str]) -> Result:
        body = _body(req)
        db = _db(req, body)
        action = A.SCHEMA if detail in ("list", "describe") else A.ADMIN
        names: list[str] = []
        if detail != "list":
            names.append(_coll(body, "aliasName"))
        if detail in ("create", "alter") or (detail == "list" and body.get("collectionName")):
            names.append(_coll(body))
        if not names:
            return Result([op(action, database=db, detail=f"aliases/{detail}")])
        ops = [op(action, collection=n, database=db, detail=f"aliases/{detail}") for n in names]
        if detail in ("create", "alter"):
            ops += alias_target_ops(names[1], f"aliases/{detail}", database=db)
        return Result(ops)

    return handler


def _v1_describe(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    name = query_one(req, "collectionName")
    if not name:
        raise BadRequest("query parameter collectionName is required")
    db = query_one(req, "dbName") or req.header("db-name") or "default"
    return Result(
        [op(A.SCHEMA, collection=name, database=db, detail="v1/collections/describe")]
    )


def _utility(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    return Result(
        [op(A.UNKNOWN, ids_known=False, detail="run_analyzer")],
        error="POST /v2/vectordb/common/run_analyzer is a text utility; it is not "
        "classified (denied by default)",
    )


# --------------------------------------------------------------------------- table

_COLLECTION_SCHEMA = ("has", "describe", "get_stats", "get_load_state", "get_compaction_state")
_COLLECTION_ADMIN = (
    "create",
    "drop",
    "load",
    "refresh_load",
    "release",
    "alter_properties",
    "drop_properties",
    "compact",
    "flush",
    "add_function",
    "alter_function",
    "drop_function",
    "add_function_field",
    "drop_function_field",
    "fields/add",
    "fields/drop",
    "fields/alter_properties",
    "struct_fields/add",
)
_ADMIN_CATEGORIES = ("users", "roles", "privilege_groups", "resource_groups", "file_resources")
V2 = "/v2/vectordb"
V1 = "/v1/vector"
_m = _managed

ROUTES: list[Route[HttpRequest]] = [
    route("GET", "/healthz", static(A.HEALTH, "healthz")),
    route("GET", "/metrics", static(A.HEALTH, "metrics")),
    # entities
    route("POST", V2 + "/entities/search", _search),
    route("POST", V2 + "/entities/hybrid_search", _hybrid_search),
    route("POST", V2 + "/entities/advanced_search", _hybrid_search),
    route("POST", V2 + "/entities/query", _query),
    route("POST", V2 + "/entities/get", _get),
    route("POST", V2 + "/entities/insert", _rows("insert")),
    route("POST", V2 + "/entities/upsert", _rows("upsert")),
    route("POST", V2 + "/entities/delete", _delete),
    # collections
    route("POST", V2 + "/collections/list", _m(A.SCHEMA, "collections/list", coll=None)),
    *[
        route("POST", f"{V2}/collections/{a}", _m(A.SCHEMA, f"collections/{a}"))
        for a in _COLLECTION_SCHEMA
    ],
    *[
        # Dropping a collection removes every row: the ids are unknown.
        route(
            "POST", f"{V2}/collections/{a}", _m(A.ADMIN, f"collections/{a}", ids_known=a != "drop")
        )
        for a in _COLLECTION_ADMIN
    ],
    route("POST", V2 + "/collections/rename", _rename),
    route(
        "POST", V2 + "/collections/truncate", _m(A.DELETE, "collections/truncate", ids_known=False)
    ),
    # databases
    *[
        route("POST", f"{V2}/databases/{a}", _m(A.SCHEMA, f"databases/{a}", coll=None))
        for a in ("list", "describe")
    ],
    *[
        route(
            "POST",
            f"{V2}/databases/{a}",
            _m(A.ADMIN, f"databases/{a}", coll=None, ids_known=a != "drop"),
        )
        for a in ("create", "drop", "alter", "alter_properties", "drop_properties")
    ],
    # partitions and indexes
    *[
        route("POST", f"{V2}/partitions/{a}", _m(A.SCHEMA, f"partitions/{a}"))
        for a in ("list", "has", "get_stats")
    ],
    *[
        route("POST", f"{V2}/partitions/{a}", _m(A.ADMIN, f"partitions/{a}", ids_known=a != "drop"))
        for a in ("create", "drop", "load", "release")
    ],
    *[
        route("POST", f"{V2}/indexes/{a}", _m(A.SCHEMA, f"indexes/{a}"))
        for a in ("list", "describe")
    ],
    *[
        route("POST", f"{V2}/indexes/{a}", _m(A.ADMIN, f"indexes/{a}"))
        for a in ("create", "drop", "alter_properties", "drop_properties")
    ],
    # aliases
    *[
        route("POST", f"{V2}/aliases/{a}", _alias(a))
        for a in ("list", "describe", "create", "drop", "alter")
    ],
    # jobs
    route(
        "POST",
        V2 + "/jobs/import/create",
        _m(A.WRITE, "jobs/import/create", bulk=True, ids_known=False, resp=("data.jobId",)),
    ),
    *[
        route("POST", f"{V2}/jobs/import/{a}", _m(A.ADMIN, f"jobs/import/{a}", coll="optional"))
        for a in ("list", "get_progress", "describe", "commit", "abort")
    ],
    route("POST", V2 + "/jobs/snapshot/export", _snapshot_export),
    route("POST", V2 + "/jobs/snapshot/restore_external", _snapshot_restore_external),
    *[
        route("POST", f"{V2}/jobs/snapshot/{a}", _m(A.ADMIN, f"jobs/snapshot/{a}", coll="optional"))
        for a in ("describe", "list")
    ],
    *[
        route(
            "POST",
            f"{V2}/jobs/external_collection/{a}",
            _m(A.ADMIN, f"jobs/external_collection/{a}", coll="optional"),
        )
        for a in ("refresh", "describe", "list")
    ],
    # access control and cluster resources
    *[route("POST", f"{V2}/{c}/{{action}}", _m(A.ADMIN, c, coll=None)) for c in _ADMIN_CATEGORIES],
    route("POST", V2 + "/segments/describe", _m(A.HEALTH, "segments/describe", coll=None)),
    route("POST", V2 + "/quotacenter/describe", _m(A.HEALTH, "quotacenter/describe", coll=None)),
    route("POST", V2 + "/common/run_analyzer", _utility),
    # legacy v1 (Milvus 2.3+)
    route("GET", V1 + "/collections", static(A.SCHEMA, "v1/collections")),
    route("POST", V1 + "/collections/create", _m(A.ADMIN, "v1/collections/create")),
    route("GET", V1 + "/collections/describe", _v1_describe),
    route("POST", V1 + "/collections/drop", _m(A.ADMIN, "v1/collections/drop")),
    route("POST", V1 + "/query", _query),
    route("POST", V1 + "/get", _get),
    route("POST", V1 + "/delete", _delete),
    route("POST", V1 + "/insert", _rows("insert")),
    route("POST", V1 + "/upsert", _rows("upsert")),
    route("POST", V1 + "/search", _search),
]
