"""Chroma v2 REST (port 8000): method + path template → operations.

Reference: shared/vector-db-apis.md §3, §7, §8. Most record endpoints name the
collection by UUID; the gateway resolves UUIDs to names through the upstream
(:func:`chroma_collection_refs` lists the UUIDs to resolve) and passes the map
in as ``names``. An unresolved UUID stays the collection, so name-based policy
globs fail closed. ``Operation.database`` is ``"{tenant}/{database}"``.

The deprecated ``/api/v1`` API is ``unknown`` unless ``legacy_v1`` is set
(a legacy Python server is configured); each v1 path then maps to its v2
twin, with tenant and database from the query string.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from capture.classify._common import (
    BadRequest,
    Result,
    Route,
    as_int_limit,
    as_list,
    as_obj,
    as_str,
    dedupe,
    id_strs,
    match_route,
    normalize_path,
    op,
    parse_json,
    query_one,
    route,
    run,
    unknown,
    walk,
)
from capture.types import ActionClass, Classification, HttpRequest, Operation

__all__ = ["ROUTES", "V1_ROUTES", "chroma_collection_refs", "classify_chroma"]

A = ActionClass
DEFAULT_TENANT = "default_tenant"
DEFAULT_DATABASE = "default_database"


@dataclass(frozen=True)
class _Ctx:
    req: HttpRequest
    names: Mapping[str, str] = field(default_factory=dict)
    #: v1 paths carry tenant/database in the query string.
    v1: bool = False


_Handler = Callable[[_Ctx, Mapping[str, str]], Result]


def classify_chroma(
    req: HttpRequest, *, names: Mapping[str, str] | None = None, legacy_v1: bool = False
) -> Classification:
    """Classify one Chroma request; never raises.

    ``names`` maps collection UUIDs (lower-case, canonical form) to names.
    """
    ctx = _Ctx(req, names or {})
    if req.path == "/api/v1" or req.path.startswith("/api/v1/"):
        if not legacy_v1:
            return unknown(
                "chroma",
                f"Chroma: {req.method[:16]} {req.path[:200]}: the v1 API is deprecated (the "
                "Rust server answers 410 Gone); it is classified only when a legacy v1 "
                "backend is configured",
            )
        return run("chroma", V1_ROUTES, _Ctx(req, names or {}, v1=True), req)
    return run("chroma", ROUTES, ctx, req)


def chroma_collection_refs(req: HttpRequest) -> list[str]:
    """Collection UUIDs in the path of ``req`` that must be resolved to names.

    Returns canonical lower-case UUIDs; empty when the path names collections
    by name or is not a collection endpoint. Never raises.
    """
    try:
        path = normalize_path(req.path)
    except BadRequest:
        return []
    for table in (ROUTES, V1_ROUTES):
        m = match_route(table, req.method, path)
        if m.route is not None:
            raw = m.params.get("collection_id")
            if raw is None:
                return []
            try:
                return [str(uuid.UUID(raw))]
            except ValueError:
                return []
    return []


# --------------------------------------------------------------------------- helpers


def _db(ctx: _Ctx, p: Mapping[str, str]) -> str:
    if ctx.v1:
        tenant = query_one(ctx.req, "tenant")
        database = query_one(ctx.req, "database")
        tenant = DEFAULT_TENANT if tenant is None else tenant
        database = DEFAULT_DATABASE if database is None else database
        return f"{tenant}/{database}"
    return f"{p['tenant']}/{p['database']}"


def _by_id(ctx: _Ctx, raw: str) -> str:
    """Collection name for a path UUID; the canonical UUID when unresolved."""
    try:
        canonical = str(uuid.UUID(raw))
    except ValueError:
        raise BadRequest(f"path collection id {raw[:80]!r} is not a UUID") from None
    return ctx.names.get(canonical) or ctx.names.get(raw) or canonical


def _body(ctx: _Ctx) -> dict[str, object]:
    return as_obj(parse_json(ctx.req.body), "body")


def _where(body: Mapping[str, object], where: str) -> list[object]:
    """``where`` and ``where_document`` filters that are present (``{}`` is none)."""
    out: list[object] = []
    for key in ("where", "where_document"):
        value = body.get(key)
        if value is None:
            continue
        if as_obj(value, f"{where}.{key}"):
            out.append({key: value})
    return out


def _ids(body: Mapping[str, object], where: str) -> list[str] | None:
    value = body.get("ids")
    if value is None:
        return None
    return id_strs(value, f"{where}.ids", allow_int=False)


def _count_vectors(value: object, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, str):  # one base64-packed batch
        return 1
    return sum(1 for v in as_list(value, where) if v is not None)


def _include_vectors(body: Mapping[str, object], where: str) -> bool:
    inc = body.get("include")
    if inc is None:
        return False
    return "embeddings" in as_list(inc, f"{where}.include")


# --------------------------------------------------------------------------- records


def _record_op(
    kind: str, payload: Mapping[str, object], where: str, coll: str, db: str
) -> Operation:
    """One add/upsert/update/delete, from an endpoint body or a commit payload."""
    ids = _ids(payload, where)
    if kind == "delete":
        filters = _where(payload, where)
        return op(
            A.DELETE,
            collection=coll,
            database=db,
            ids=ids or [],
            ids_known=ids is not None,
            filters=filters,
            limit=as_int_limit(payload.get("limit"), f"{where}.limit"),
            detail="delete",
        )
    if ids is None:
        raise BadRequest(f"{where}.ids is required for {kind}")
    return op(
        A.WRITE,
        collection=coll,
        database=db,
        ids=ids,
        vector_count=_count_vectors(payload.get("embeddings"), f"{where}.embeddings"),
        detail=kind,
    )


def _records(kind: str) -> _Handler:
    def handler(ctx: _Ctx, p: Mapping[str, str]) -> Result:
        coll = _by_id(ctx, p["collection_id"])
        return Result([_record_op(kind, _body(ctx), "body", coll, _db(ctx, p))])

    return handler


_GET_DATA = ("documents[]", "metadatas[]", "uris[]")


def _get(detail: str) -> _Handler:
    def handler(ctx: _Ctx, p: Mapping[str, str]) -> Result:
        coll = _by_id(ctx, p["collection_id"])
        body = _body(ctx)
        ids = _ids(body, "body")
        return Result(
            [
                op(
                    A.READ,
                    collection=coll,
                    database=_db(ctx, p),
                    ids=ids or [],
                    ids_known=ids is not None,
                    filters=_where(body, "body"),
                    limit=as_int_limit(body.get("limit"), "body.limit"),
                    with_vectors=_include_vectors(body, "body"),
                    detail=detail,
                )
            ],
            response_ids=("ids[]",),
            user_data_paths=_GET_DATA,
            vector_paths=("embeddings[]",),
        )

    return handler


def _query(ctx: _Ctx, p: Mapping[str, str]) -> Result:
    coll = _by_id(ctx, p["collection_id"])
    body = _body(ctx)
    return Result(
        [
            op(
                A.SEARCH,
                collection=coll,
                database=_db(ctx, p),
                ids=_ids(body, "body") or [],
                ids_known=False,
                filters=_where(body, "body"),
                vector_count=_count_vectors(body.get("query_embeddings"), "body.query_embeddings"),
                limit=as_int_limit(body.get("n_results"), "body.n_results"),
                with_vectors=_include_vectors(body, "body"),
                detail="query",
            )
        ],
        response_ids=("ids[][]",),
        user_data_paths=("documents[][]", "metadatas[][]", "uris[][]", "distances[][]"),
        vector_paths=("embeddings[][]",),
    )


def _search_filter_ids(flt: object, where: str) -> list[str]:
    ids: list[str] = []
    for node in walk(flt):
        if not isinstance(node, dict):
            continue
        if "query_ids" in node and node["query_ids"] is not None:
            ids.extend(id_strs(node["query_ids"], f"{where}.query_ids", allow_int=False))
        cond = node.get("#id")
        if isinstance(cond, str):
            ids.append(cond)
        elif isinstance(cond, dict):
            for key in ("$in", "$eq"):
                v = cond.get(key)
                if isinstance(v, str):
                    ids.append(v)
                elif v is not None:
                    ids.extend(id_strs(v, f"{where}.#id.{key}", allow_int=False))
    return ids


def _search_one(item: object, where: str, coll: str, db: str) -> Operation:
    s = as_obj(item, where)
    filters: list[object] = []
    ids: list[str] = []
    flt = s.get("filter")
    if flt is not None and as_obj(flt, f"{where}.filter"):
        filters.append(flt)
        ids = _search_filter_ids(flt, f"{where}.filter")
    vectors = 0
    rank = s.get("rank")
    if rank is not None:
        for node in walk(rank):
            if isinstance(node, dict) and "$knn" in node:
                knn = as_obj(node["$knn"], f"{where}.rank.$knn")
                q = knn.get("query")
                if isinstance(q, list | dict):
                    vectors += 1  # dense or sparse; a string query is text
    limit_spec = s.get("limit")
    if isinstance(limit_spec, dict):
        limit = as_int_limit(limit_spec.get("limit"), f"{where}.limit.limit")
    else:
        limit = as_int_limit(limit_spec, f"{where}.limit")
    with_vectors = False
    select = s.get("select")
    if select is not None:
        keys = as_list(as_obj(select, f"{where}.select").get("keys") or [], f"{where}.select.keys")
        with_vectors = "#embedding" in keys
    return op(
        A.SEARCH,
        collection=coll,
        database=db,
        ids=dedupe(ids),
        ids_known=False,
        vector_count=vectors,
        filters=filters,
        limit=limit,
        with_vectors=with_vectors,
        detail="search",
    )


def _search(ctx: _Ctx, p: Mapping[str, str]) -> Result:
    coll = _by_id(ctx, p["collection_id"])
    searches = as_list(_body(ctx).get("searches"), "body.searches")
    if not searches:
        raise BadRequest("body.searches is empty")
    db = _db(ctx, p)
    return Result(
        [_search_one(s, f"body.searches[{i}]", coll, db) for i, s in enumerate(searches)],
        response_ids=("ids[][]",),
        user_data_paths=("documents[][]", "metadatas[][]", "scores[][]"),
        vector_paths=("embeddings[][]",),
    )


def _commit(ctx: _Ctx, p: Mapping[str, str]) -> Result:
    coll = _by_id(ctx, p["collection_id"])
    body = _body(ctx)
    db = _db(ctx, p)
    items = as_list(body.get("operations"), "body.operations")
    if not items:
        raise BadRequest("body.operations is empty")
    ops: list[Operation] = []
    for i, item in enumerate(items):
        where = f"body.operations[{i}]"
        entry = as_obj(item, where)
        kind = as_str(entry.get("operation"), f"{where}.operation")
        if kind not in ("add", "update", "upsert", "delete"):
            raise BadRequest(
                f"{where}.operation {kind[:40]!r} is not add, update, upsert or delete"
            )
        payload = as_obj(entry.get("payload"), f"{where}.payload")
        ops.append(_record_op(kind, payload, f"{where}.payload", coll, db))
    read_ids = body.get("read_ids")
    if read_ids is not None and as_list(read_ids, "body.read_ids"):
        ops.append(
            op(
                A.READ,
                collection=coll,
                database=db,
                ids=id_strs(read_ids, "body.read_ids", allow_int=False),
                detail="conditional_read",
            )
        )
    return Result(ops)


# --------------------------------------------------------------------------- collections


def _fixed(
    action: ActionClass,
    detail: str,
    *,
    coll: str | None = None,
    db: bool = True,
    user_data: tuple[str, ...] = (),
    ids_known: bool = True,
) -> _Handler:
    """``coll``: ``"id"`` (path UUID), ``"name"`` (path name), a literal
    ``"=x"``, or None."""

    def handler(ctx: _Ctx, p: Mapping[str, str]) -> Result:
        collection: str | None = None
        if coll == "id":
            collection = _by_id(ctx, p["collection_id"])
        elif coll == "name":
            collection = p["collection_name"]
        elif coll is not None:
            collection = coll[1:]
        database = _db(ctx, p) if db else None
        return Result(
            [
                op(
                    action,
                    collection=collection,
                    database=database,
                    ids_known=ids_known,
                    detail=detail,
                )
            ],
            user_data_paths=user_data,
        )

    return handler


def _create_collection(ctx: _Ctx, p: Mapping[str, str]) -> Result:
    name = as_str(_body(ctx).get("name"), "body.name")
    return Result(
        [op(A.ADMIN, collection=name, database=_db(ctx, p), detail="create_collection")],
        user_data_paths=("metadata",),
    )


def _with_new_name(detail: str, key: str) -> _Handler:
    """Modify/fork: admin on the collection and, when the body names one, on
    the new name too (each is decided separately)."""

    def handler(ctx: _Ctx, p: Mapping[str, str]) -> Result:
        db = _db(ctx, p)
        source = _by_id(ctx, p["collection_id"])
        ops = [op(A.ADMIN, collection=source, database=db, detail=detail)]
        if detail == "fork_collection":
            # a fork copies every record: a bulk read of the source, decided
            # separately (as Qdrant's init_from is)
            ops.append(op(A.READ, collection=source, database=db, ids_known=False, bulk=True,
                          detail=f"{detail}:source"))
        body = _body(ctx) if ctx.req.body.strip() else {}
        new = body.get(key)
        if new is not None:
            ops.append(
                op(
                    A.ADMIN,
                    collection=as_str(new, f"body.{key}"),
                    database=db,
                    detail=f"{detail}:{key}",
                )
            )
        return Result(ops)

    return handler


def _by_crn(_ctx: _Ctx, p: Mapping[str, str]) -> Result:
    parts = p["crn"].split(":")
    if len(parts) != 3 or not all(parts):
        raise BadRequest(f"collection CRN {p['crn'][:80]!r} is not tenant:database:name")
    tenant, database, name = parts
    return Result(
        [
            op(
                A.SCHEMA,
                collection=name,
                database=f"{tenant}/{database}",
                detail="get_collection_by_crn",
            )
        ],
        user_data_paths=("metadata",),
    )


# --------------------------------------------------------------------------- tables

_f = _fixed
V2 = "/api/v2"
T = V2 + "/tenants/{tenant}/databases/{database}"
CID = T + "/collections/{collection_id}"

ROUTES: list[Route[_Ctx]] = [
    route("GET", V2, _f(A.HEALTH, "root", db=False)),
    route("GET", V2 + "/heartbeat", _f(A.HEALTH, "heartbeat", db=False)),
    route("GET", V2 + "/healthcheck", _f(A.HEALTH, "healthcheck", db=False)),
    route("GET", V2 + "/version", _f(A.HEALTH, "version", db=False)),
    route("GET", V2 + "/pre-flight-checks", _f(A.HEALTH, "pre_flight_checks", db=False)),
    route("GET", V2 + "/auth/identity", _f(A.HEALTH, "auth_identity", db=False)),
    route("GET", "/docs", _f(A.HEALTH, "docs", db=False)),
    route("GET", "/openapi.json", _f(A.HEALTH, "openapi", db=False)),
    route("POST", V2 + "/reset", _f(A.ADMIN, "reset", coll="=*", db=False, ids_known=False)),
    route("GET", V2 + "/tenants", _f(A.SCHEMA, "list_tenants", db=False)),
    route("POST", V2 + "/tenants", _f(A.ADMIN, "create_tenant", db=False)),
    route("GET", V2 + "/tenants/{tenant_name}", _f(A.SCHEMA, "get_tenant", db=False)),
    route("PATCH", V2 + "/tenants/{tenant_name}", _f(A.ADMIN, "update_tenant", db=False)),
    route("GET", V2 + "/tenants/{tenant}/databases", _f(A.SCHEMA, "list_databases", db=False)),
    route("POST", V2 + "/tenants/{tenant}/databases", _f(A.ADMIN, "create_database", db=False)),
    route("GET", T, _f(A.SCHEMA, "get_database")),
    route("DELETE", T, _f(A.ADMIN, "delete_database", coll="=*", ids_known=False)),
    route(
        "GET",
        T + "/collections",
        _f(A.SCHEMA, "list_collections", coll="=*", user_data=("[].metadata",)),
    ),
    route("GET", T + "/collections_count", _f(A.SCHEMA, "count_collections", coll="=*")),
    route("POST", T + "/collections", _create_collection),
    route(
        "GET",
        T + "/collections/by-id/{collection_id}",
        _f(A.SCHEMA, "get_collection_by_id", coll="id", user_data=("metadata",)),
    ),
    route("GET", V2 + "/collections/{crn}", _by_crn),
    route(
        "GET",
        T + "/collections/{collection_name}",
        _f(A.SCHEMA, "get_collection", coll="name", user_data=("metadata",)),
    ),
    route(
        "DELETE",
        T + "/collections/{collection_name}",
        _f(A.ADMIN, "delete_collection", coll="name", ids_known=False),
    ),
    route("PUT", CID, _with_new_name("modify_collection", "new_name")),
    route("POST", CID + "/fork", _with_new_name("fork_collection", "new_name")),
    route("GET", CID + "/fork_count", _f(A.SCHEMA, "fork_count", coll="id")),
    route("GET", CID + "/count", _f(A.READ, "count", coll="id", ids_known=False)),
    route("GET", CID + "/indexing_status", _f(A.SCHEMA, "indexing_status", coll="id")),
    route("POST", CID + "/add", _records("add")),
    route("POST", CID + "/upsert", _records("upsert")),
    route("POST", CID + "/update", _records("update")),
    route("POST", CID + "/delete", _records("delete")),
    route("POST", CID + "/get", _get("get")),
    route("POST", CID + "/conditional/get", _get("conditional_get")),
    route("POST", CID + "/query", _query),
    route("POST", CID + "/search", _search),
    route("POST", CID + "/conditional/commit", _commit),
    route(
        "POST", CID + "/functions/attach", _with_new_name("attach_function", "output_collection")
    ),
    route("GET", CID + "/functions/{function_name}", _f(A.SCHEMA, "get_function", coll="id")),
    route(
        "POST",
        CID + "/attached_functions/{function_name}/add_input",
        _f(A.ADMIN, "attached_function_add_input", coll="id"),
    ),
    route(
        "POST",
        CID + "/attached_functions/{function_name}/detach",
        _f(A.ADMIN, "detach_function", coll="id"),
    ),
]

V1 = "/api/v1"
V1C = V1 + "/collections"
V1_ROUTES: list[Route[_Ctx]] = [
    route("GET", V1 + "/heartbeat", _f(A.HEALTH, "heartbeat", db=False)),
    route("GET", V1 + "/version", _f(A.HEALTH, "version", db=False)),
    route("POST", V1 + "/reset", _f(A.ADMIN, "reset", coll="=*", db=False, ids_known=False)),
    route("POST", V1 + "/tenants", _f(A.ADMIN, "create_tenant", db=False)),
    route("GET", V1 + "/tenants/{tenant_name}", _f(A.SCHEMA, "get_tenant", db=False)),
    route("POST", V1 + "/databases", _f(A.ADMIN, "create_database", db=False)),
    route("GET", V1 + "/databases/{database_name}", _f(A.SCHEMA, "get_database", db=False)),
    route("GET", V1C, _f(A.SCHEMA, "list_collections", coll="=*", user_data=("[].metadata",))),
    route("POST", V1C, _create_collection),
    route("GET", V1C + "/{collection_id}/count", _f(A.READ, "count", coll="id", ids_known=False)),
    route("POST", V1C + "/{collection_id}/add", _records("add")),
    route("POST", V1C + "/{collection_id}/upsert", _records("upsert")),
    route("POST", V1C + "/{collection_id}/update", _records("update")),
    route("POST", V1C + "/{collection_id}/delete", _records("delete")),
    route("POST", V1C + "/{collection_id}/get", _get("get")),
    route("POST", V1C + "/{collection_id}/query", _query),
    route(
        "GET",
        V1C + "/{collection_name}",
        _f(A.SCHEMA, "get_collection", coll="name", user_data=("metadata",)),
    ),
    route(
        "DELETE",
        V1C + "/{collection_name}",
        _f(A.ADMIN, "delete_collection", coll="name", ids_known=False),
    ),
    route("PUT", V1C + "/{collection_id}", _with_new_name("modify_collection", "new_name")),
]
