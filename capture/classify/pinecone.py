"""Pinecone data plane (per-index host) and control plane (api.pinecone.io).

Reference: shared/vector-db-apis.md §4, §7, §8. The index name is not in a
data-plane path: it comes from the Host header, ``{index}-{project}.svc.…
.pinecone.io`` → ``{index}``, or from ``index_hosts`` (host → index, built
from the control plane's ``host`` field) when the gateway sits in front under
another name. ``Operation.collection`` is the index and ``database`` the
namespace (``""`` for the default namespace).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from capture.classify._common import (
    BadRequest,
    Result,
    Route,
    as_bool,
    as_int_limit,
    as_list,
    as_obj,
    as_str,
    id_str,
    id_strs,
    op,
    parse_json,
    query_limit,
    query_one,
    route,
    run,
    static,
)
from capture.types import ActionClass, Classification, HttpRequest, Operation

__all__ = ["CONTROL_ROUTES", "DATA_ROUTES", "ROUTES", "classify_pinecone", "index_from_host"]

A = ActionClass
_DATA_HOST = re.compile(r"^(?P<index>[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)-[a-z0-9]+\.svc\.[^:]+$")


@dataclass(frozen=True)
class _Ctx:
    req: HttpRequest
    index_hosts: Mapping[str, str] = field(default_factory=dict)


_Handler = Callable[[_Ctx, Mapping[str, str]], Result]


def classify_pinecone(
    req: HttpRequest, *, index_hosts: Mapping[str, str] | None = None
) -> Classification:
    """Classify one Pinecone REST request; never raises."""
    return run("pinecone", ROUTES, _Ctx(req, index_hosts or {}), req)


def index_from_host(host: str, index_hosts: Mapping[str, str] | None = None) -> str | None:
    """The index a data-plane Host header addresses, or None."""
    h = host.strip().lower()
    name, sep, port = h.rpartition(":")
    if sep and port.isdigit():
        h = name
    h = h.rstrip(".")
    if index_hosts:
        mapped = index_hosts.get(h) or index_hosts.get(host)
        if mapped:
            return mapped
    m = _DATA_HOST.match(h)
    if m is None or not h.endswith(".pinecone.io"):
        return None
    return m.group("index")


def _index(ctx: _Ctx) -> str:
    host = ctx.req.host or ctx.req.header("host") or ""
    index = index_from_host(host, ctx.index_hosts)
    if index is None:
        raise BadRequest(
            f"cannot tell the index from Host {host[:120]!r}; expected "
            "{index}-{project}.svc.<env>.pinecone.io or a configured index host"
        )
    return index


def _body(ctx: _Ctx) -> dict[str, object]:
    return as_obj(parse_json(ctx.req.body), "body")


def _ns(value: object, where: str) -> str:
    return "" if value is None else as_str(value, where)


def _query_ns(ctx: _Ctx) -> str:
    return query_one(ctx.req, "namespace") or ""


def _filters(body: Mapping[str, object], key: str, where: str) -> list[object]:
    value = body.get(key)
    if value is None:
        return []
    return [value] if as_obj(value, f"{where}.{key}") else []


# --------------------------------------------------------------------------- data plane


def _upsert(ctx: _Ctx, _p: Mapping[str, str]) -> Result:
    body = _body(ctx)
    ids: list[str] = []
    vectors = as_list(body.get("vectors"), "body.vectors")
    for i, item in enumerate(vectors):
        v = as_obj(item, f"body.vectors[{i}]")
        ids.append(id_str(v.get("id"), f"body.vectors[{i}].id", allow_int=False))
    return Result(
        [
            op(
                A.WRITE,
                collection=_index(ctx),
                database=_ns(body.get("namespace"), "body.namespace"),
                ids=ids,
                vector_count=len(vectors),
                detail="upsert",
            )
        ]
    )


def _update(ctx: _Ctx, _p: Mapping[str, str]) -> Result:
    body = _body(ctx)
    filters = _filters(body, "filter", "body")
    ids = [] if body.get("id") is None else [id_str(body["id"], "body.id", allow_int=False)]
    if not ids and not filters:
        raise BadRequest("body has neither 'id' nor 'filter'")
    carried = int(body.get("values") is not None or body.get("sparseValues") is not None)
    return Result(
        [
            op(
                A.WRITE,
                collection=_index(ctx),
                database=_ns(body.get("namespace"), "body.namespace"),
                ids=ids,
                vector_count=carried,
                filters=filters,
                detail="update_by_filter" if filters else "update",
            )
        ]
    )


def _delete_op(
    index: str, ns: str, ids: list[str] | None, filters: list[object], delete_all: bool
) -> Operation:
    if delete_all:
        return op(
            A.DELETE,
            collection=index,
            database=ns,
            ids_known=False,
            filters=filters,
            detail="delete_all",
        )
    if ids is None and not filters:
        raise BadRequest("delete names no 'ids', 'filter' or 'deleteAll'")
    return op(
        A.DELETE,
        collection=index,
        database=ns,
        ids=ids or [],
        ids_known=ids is not None,
        filters=filters,
        detail="delete",
    )


def _delete(ctx: _Ctx, _p: Mapping[str, str]) -> Result:
    body = _body(ctx)
    ids = None if body.get("ids") is None else id_strs(body["ids"], "body.ids", allow_int=False)
    delete_all = body.get("deleteAll") is not None and as_bool(body["deleteAll"], "body.deleteAll")
    return Result(
        [
            _delete_op(
                _index(ctx),
                _ns(body.get("namespace"), "body.namespace"),
                ids,
                _filters(body, "filter", "body"),
                delete_all,
            )
        ]
    )


def _delete_legacy(ctx: _Ctx, _p: Mapping[str, str]) -> Result:
    ids = ctx.req.query_values("ids") or None
    flag = (query_one(ctx.req, "deleteAll") or "false").lower()
    if flag not in ("true", "false"):
        raise BadRequest(f"query deleteAll must be true or false, got {flag[:20]!r}")
    return Result([_delete_op(_index(ctx), _query_ns(ctx), ids, [], flag == "true")])


def _fetched(operation: Operation) -> Result:
    return Result(
        [operation],
        response_ids=("vectors{*}.id",),
        user_data_paths=("vectors{*}.metadata",),
        vector_paths=("vectors{*}.values", "vectors{*}.sparseValues"),
    )


def _fetch(ctx: _Ctx, _p: Mapping[str, str]) -> Result:
    ids = ctx.req.query_values("ids")
    if not ids:
        raise BadRequest("query parameter 'ids' is required")
    return _fetched(
        op(
            A.READ,
            collection=_index(ctx),
            database=_query_ns(ctx),
            ids=ids,
            with_vectors=True,
            detail="fetch",
        )
    )


def _fetch_by_metadata(ctx: _Ctx, _p: Mapping[str, str]) -> Result:
    body = _body(ctx)
    return _fetched(
        op(
            A.READ,
            collection=_index(ctx),
            database=_ns(body.get("namespace"), "body.namespace"),
            ids_known=False,
            filters=_filters(body, "filter", "body"),
            limit=as_int_limit(body.get("limit"), "body.limit"),
            with_vectors=True,
            detail="fetch_by_metadata",
        )
    )


def _list(ctx: _Ctx, _p: Mapping[str, str]) -> Result:
    limit = query_limit(query_one(ctx.req, "limit"), "query limit")
    return Result(
        [
            op(
                A.READ,
                collection=_index(ctx),
                database=_query_ns(ctx),
                ids_known=False,
                limit=limit,
                detail="list",
            )
        ],
        response_ids=("vectors[].id",),
    )


def _query_one(
    q: Mapping[str, object], where: str, index: str, ns: str, top: Mapping[str, object]
) -> Operation:
    ids = [] if q.get("id") is None else [id_str(q["id"], f"{where}.id", allow_int=False)]
    carried = sum(
        1 for k in ("vector", "values", "sparseVector", "sparseValues") if q.get(k) is not None
    )
    filters = _filters(q, "filter", where) or _filters(top, "filter", "body")
    limit = as_int_limit(q.get("topK", top.get("topK")), f"{where}.topK")
    with_vectors = top.get("includeValues")
    return op(
        A.SEARCH,
        collection=index,
        database=ns,
        ids=ids,
        ids_known=False,
        vector_count=1 if carried else 0,
        filters=filters,
        limit=limit,
        with_vectors=bool(with_vectors),
        detail="query",
    )


def _query(ctx: _Ctx, _p: Mapping[str, str]) -> Result:
    body = _body(ctx)
    index = _index(ctx)
    ns = _ns(body.get("namespace"), "body.namespace")
    if body.get("includeValues") is not None:
        as_bool(body["includeValues"], "body.includeValues")
    queries = body.get("queries")
    if queries is not None:
        items = as_list(queries, "body.queries")
        if not items:
            raise BadRequest("body.queries is empty")
        ops = []
        for i, item in enumerate(items):
            q = as_obj(item, f"body.queries[{i}]")
            q_ns = _ns(q.get("namespace"), f"body.queries[{i}].namespace") or ns
            ops.append(_query_one(q, f"body.queries[{i}]", index, q_ns, body))
        roots: tuple[str, ...] = ("results[].matches[]",)
    else:
        ops = [_query_one(body, "body", index, ns, body)]
        roots = ("matches[]",)
    return Result(
        ops,
        response_ids=tuple(f"{r}.id" for r in roots),
        user_data_paths=tuple(f"{r}.metadata" for r in roots),
        vector_paths=tuple(f"{r}.{k}" for r in roots for k in ("values", "sparseValues")),
    )


def _describe_stats(ctx: _Ctx, _p: Mapping[str, str]) -> Result:
    filters: list[object] = []
    if ctx.req.method == "POST" and ctx.req.body.strip():
        filters = _filters(_body(ctx), "filter", "body")
    return Result(
        [op(A.SCHEMA, collection=_index(ctx), filters=filters, detail="describe_index_stats")]
    )


def _namespace_op(action: ActionClass, detail: str, *, ids_known: bool = True) -> _Handler:
    def handler(ctx: _Ctx, p: Mapping[str, str]) -> Result:
        ns = p.get("namespace")
        if ns is None and ctx.req.method == "POST":
            ns = as_str(_body(ctx).get("name"), "body.name")
        return Result(
            [op(action, collection=_index(ctx), database=ns, ids_known=ids_known, detail=detail)]
        )

    return handler


def _records_upsert(ctx: _Ctx, p: Mapping[str, str]) -> Result:
    ids: list[str] = []
    try:
        text = ctx.req.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not valid UTF-8 (byte {exc.start})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise BadRequest("body is empty; expected NDJSON records, one per line")
    for n, line in lines:
        rec = as_obj(parse_json(line.encode("utf-8"), what=f"NDJSON line {n}"), f"line {n}")
        rid = rec.get("_id", rec.get("id"))
        ids.append(id_str(rid, f"line {n}._id", allow_int=False))
    return Result(
        [
            op(
                A.WRITE,
                collection=_index(ctx),
                database=p["namespace"],
                ids=ids,
                detail="upsert_records",
            )
        ]
    )


def _records_search(ctx: _Ctx, p: Mapping[str, str]) -> Result:
    body = _body(ctx)
    query = as_obj(body.get("query"), "body.query")
    ids = [] if query.get("id") is None else [id_str(query["id"], "body.query.id", allow_int=False)]
    carried = 1 if query.get("vector") is not None else 0
    return Result(
        [
            op(
                A.SEARCH,
                collection=_index(ctx),
                database=p["namespace"],
                ids=ids,
                ids_known=False,
                vector_count=carried,
                filters=_filters(query, "filter", "body.query"),
                limit=as_int_limit(query.get("top_k"), "body.query.top_k"),
                detail="search_records",
            )
        ],
        response_ids=("result.hits[]._id",),
        user_data_paths=("result.hits[].fields",),
    )


def _bulk_import(ctx: _Ctx, _p: Mapping[str, str]) -> Result:
    body = _body(ctx)
    as_str(body.get("uri"), "body.uri")
    # The job id in the response is the lineage handle for the whole import.
    return Result(
        [op(A.WRITE, collection=_index(ctx), bulk=True, ids_known=False, detail="start_import")],
        response_ids=("id",),
    )


def _data(action: ActionClass, detail: str, *, ids_known: bool = True) -> _Handler:
    def handler(ctx: _Ctx, _p: Mapping[str, str]) -> Result:
        return Result([op(action, collection=_index(ctx), ids_known=ids_known, detail=detail)])

    return handler


DATA_ROUTES: list[Route[_Ctx]] = [
    route("POST", "/vectors/upsert", _upsert),
    route("POST", "/vectors/update", _update),
    route("POST", "/vectors/delete", _delete),
    route("DELETE", "/vectors/delete", _delete_legacy),
    route("GET", "/vectors/fetch", _fetch),
    route("POST", "/vectors/fetch_by_metadata", _fetch_by_metadata),
    route("GET", "/vectors/list", _list),
    route("POST", "/query", _query),
    route("POST|GET", "/describe_index_stats", _describe_stats),
    route("GET", "/namespaces", _data(A.SCHEMA, "list_namespaces")),
    route("POST", "/namespaces", _namespace_op(A.ADMIN, "create_namespace")),
    route("GET", "/namespaces/{namespace}", _namespace_op(A.SCHEMA, "describe_namespace")),
    route(
        "DELETE",
        "/namespaces/{namespace}",
        _namespace_op(A.ADMIN, "delete_namespace", ids_known=False),
    ),
    route("POST", "/records/namespaces/{namespace}/upsert", _records_upsert),
    route("POST", "/records/namespaces/{namespace}/search", _records_search),
    route("POST", "/bulk/imports", _bulk_import),
    route("GET", "/bulk/imports", _data(A.ADMIN, "list_imports")),
    route("GET", "/bulk/imports/{import_id}", _data(A.ADMIN, "describe_import")),
    route("DELETE", "/bulk/imports/{import_id}", _data(A.ADMIN, "cancel_import")),
]

# --------------------------------------------------------------------------- control plane


def _copy_of(source: str, detail: str) -> Operation:
    """The bulk read of ``source`` that a copy of its records into a new
    index amounts to, decided separately."""
    return op(A.READ, collection=source, ids_known=False, bulk=True, detail=detail)


def _create_index(ctx: _Ctx, _p: Mapping[str, str]) -> Result:
    """Admin on the new index; a pod index created from a collection
    (``spec.pod.source_collection``) gets that collection's records, so it is
    also a bulk read of it."""
    body = _body(ctx)
    ops = [op(A.ADMIN, collection=as_str(body.get("name"), "body.name"), detail="create_index")]
    spec = body.get("spec")
    pod = as_obj(spec, "body.spec").get("pod") if spec is not None else None
    if pod is not None and as_obj(pod, "body.spec.pod").get("source_collection") is not None:
        source = as_str(as_obj(pod, "body.spec.pod")["source_collection"],
                        "body.spec.pod.source_collection")
        ops.append(_copy_of(source, "create_index:source_collection"))
    return Result(ops)


def _named(
    action: ActionClass, detail: str, *, source: bool = False, copies_any: bool = False
) -> _Handler:
    """Create from ``body:name``; ``source`` adds an op on the source index;
    ``copies_any``: the new index gets the records of a backup, whose index
    the request does not name, so it is also a bulk read of ``*`` (only a
    rule whose collection glob covers the literal ``*`` allows it)."""

    def handler(ctx: _Ctx, _p: Mapping[str, str]) -> Result:
        body = _body(ctx)
        ops = [op(action, collection=as_str(body.get("name"), "body.name"), detail=detail)]
        if copies_any:
            ops.append(_copy_of("*", f"{detail}:backup"))
        if source:
            ops.append(
                op(
                    action,
                    collection=as_str(body.get("source"), "body.source"),
                    detail=f"{detail}:source",
                )
            )
        return Result(ops)

    return handler


def _inference(name: str) -> _Handler:
    def handler(ctx: _Ctx, _p: Mapping[str, str]) -> Result:
        return Result(
            [op(A.UNKNOWN, ids_known=False, detail=name)],
            error=f"{ctx.req.method} /{name} is a Pinecone inference endpoint, not a "
            "vector-database operation; it is not classified (denied by "
            "default)",
        )

    return handler


_h = static
CONTROL_ROUTES: list[Route[_Ctx]] = [
    route("GET", "/indexes", _h(A.SCHEMA, "list_indexes")),
    route("POST", "/indexes", _create_index),
    route("POST", "/indexes/create-for-model", _named(A.ADMIN, "create_index_for_model")),
    route("GET", "/indexes/{index}", _h(A.SCHEMA, "describe_index", collection="index")),
    route("PATCH", "/indexes/{index}", _h(A.ADMIN, "configure_index", collection="index")),
    route(
        "DELETE",
        "/indexes/{index}",
        _h(A.ADMIN, "delete_index", collection="index", ids_known=False),
    ),
    route("GET", "/indexes/{index}/backups", _h(A.ADMIN, "list_index_backups", collection="index")),
    route("POST", "/indexes/{index}/backups", _h(A.ADMIN, "create_backup", collection="index")),
    route("GET", "/backups", _h(A.ADMIN, "list_backups")),
    route("GET", "/backups/{backup_id}", _h(A.ADMIN, "describe_backup")),
    route("DELETE", "/backups/{backup_id}", _h(A.ADMIN, "delete_backup")),
    route(
        "POST",
        "/backups/{backup_id}/create-index",
        _named(A.ADMIN, "create_index_from_backup", copies_any=True),
    ),
    route("GET", "/restore-jobs", _h(A.ADMIN, "list_restore_jobs")),
    route("GET", "/restore-jobs/{job_id}", _h(A.ADMIN, "describe_restore_job")),
    route("GET", "/collections", _h(A.ADMIN, "list_collections")),
    route("POST", "/collections", _named(A.ADMIN, "create_collection", source=True)),
    route(
        "GET",
        "/collections/{collection}",
        _h(A.ADMIN, "describe_collection", collection="collection"),
    ),
    route(
        "DELETE",
        "/collections/{collection}",
        _h(A.ADMIN, "delete_collection", collection="collection"),
    ),
    route("POST", "/embed", _inference("embed")),
    route("POST", "/rerank", _inference("rerank")),
    route("GET", "/models", _h(A.HEALTH, "list_models")),
    route("GET", "/models/{model}", _h(A.HEALTH, "describe_model")),
]


def _admin_api(_ctx: _Ctx, _p: Mapping[str, str]) -> Result:
    return Result([op(A.ADMIN, detail="admin_api")])


ADMIN_ROUTES: list[Route[_Ctx]] = [
    route(m, t, _admin_api)
    for m in ("GET|POST|PATCH|PUT|DELETE",)
    for t in (
        "/admin/projects",
        "/admin/projects/{project_id}",
        "/admin/projects/{project_id}/{sub}",
        "/admin/organizations",
        "/admin/organizations/{organization_id}",
        "/admin/organizations/{organization_id}/{sub}",
        "/admin/api-keys/{api_key_id}",
    )
]

ROUTES: list[Route[_Ctx]] = [*DATA_ROUTES, *CONTROL_ROUTES, *ADMIN_ROUTES]
