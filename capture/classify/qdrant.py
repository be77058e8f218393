"""Qdrant REST (port 6333): method + path template → operations.

Reference: shared/vector-db-apis.md §2 (routes), §7 (batches), §8 (filter
writes). Query-style bodies (``query``, ``search``, ``recommend``,
``discover`` and their batch/groups variants) are read by
:mod:`capture.classify._qdrant_query`.

A facet answers the faceted payload field's values (``result.hits[].value``)
and a scroll ordered by a payload field answers each point's value of it
(``result.points[].order_value``): both locations are listed in
``field_aliases`` with the field's names, so masking that field by name
masks them (see _qdrant_query's docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from capture.classify._common import (
    BadRequest,
    Result,
    Route,
    alias_target_ops,
    as_list,
    as_obj,
    as_str,
    id_strs,
    op,
    parse_json,
    route,
    run,
    static,
)
from capture.classify._qdrant_query import (
    SEARCH_KINDS,
    has_id_ids,
    key_names,
    limit_of,
    order_by_names,
    search_ops,
    with_vectors_of,
)
from capture.types import ActionClass, Classification, HttpRequest, Operation

__all__ = ["ROUTES", "classify_qdrant"]

A = ActionClass
C = "/collections/{collection}"
_Build = Callable[[Mapping[str, object], str, str], list[Operation]]
_Handler = Callable[[HttpRequest, Mapping[str, str]], Result]
#: (body key naming a payload field, response path holding its values, the
#: field names the body key's value goes through)
_Located = tuple[str, str, Callable[[object, str], tuple[str, ...]]]


def classify_qdrant(req: HttpRequest) -> Classification:
    """Classify one Qdrant REST request; never raises."""
    return run("qdrant", ROUTES, req, req)


def _body(req: HttpRequest) -> dict[str, object]:
    return as_obj(parse_json(req.body), "body")


# --------------------------------------------------------------------------- selectors


def _selector(body: Mapping[str, object], where: str) -> tuple[list[str], list[object], bool]:
    """``points`` / ``filter`` of a PointsSelector-like body.

    Returns (ids, filters, ids_known). Ids named by ``has_id`` conditions in
    the filter are included, but a filter always leaves the set unknown.
    """
    ids: list[str] = []
    filters: list[object] = []
    points = body.get("points")
    if points is not None:
        ids = id_strs(points, f"{where}.points")
    flt = body.get("filter")
    if flt is not None:
        as_obj(flt, f"{where}.filter")
        filters.append(flt)
        ids.extend(has_id_ids(flt, f"{where}.filter"))
    return ids, filters, points is not None


def _point_list(value: object, where: str) -> tuple[list[str], int]:
    """``points[]`` of an upsert/update_vectors: (ids, vectors carried)."""
    ids: list[str] = []
    count = 0
    for i, item in enumerate(as_list(value, where)):
        point = as_obj(item, f"{where}[{i}]")
        if "id" not in point:
            raise BadRequest(f"{where}[{i}].id is missing")
        ids.extend(id_strs([point["id"]], f"{where}[{i}].id"))
        if point.get("vector") is not None:
            count += 1
    return ids, count


def _upsert(body: Mapping[str, object], where: str, collection: str) -> list[Operation]:
    if body.get("points") is not None and body.get("batch") is not None:
        # Qdrant reads "batch" and ignores "points" then: the two would name
        # different writes
        raise BadRequest(f"{where} has both 'points' and 'batch'; send one of them")
    filters: list[object] = []
    if body.get("update_filter") is not None:
        filters.append(as_obj(body["update_filter"], f"{where}.update_filter"))
    if body.get("points") is not None:
        ids, count = _point_list(body["points"], f"{where}.points")
    elif body.get("batch") is not None:
        batch = as_obj(body["batch"], f"{where}.batch")
        ids = id_strs(batch.get("ids"), f"{where}.batch.ids")
        count = len(ids) if batch.get("vectors") is not None else 0
    else:
        raise BadRequest(f"{where} has neither 'points' nor 'batch'")
    return [
        op(
            A.WRITE,
            collection=collection,
            ids=ids,
            vector_count=count,
            filters=filters,
            detail="upsert",
        )
    ]


def _update_vectors(body: Mapping[str, object], where: str, collection: str) -> list[Operation]:
    filters: list[object] = []
    if body.get("update_filter") is not None:
        filters.append(as_obj(body["update_filter"], f"{where}.update_filter"))
    ids, count = _point_list(body.get("points"), f"{where}.points")
    return [
        op(
            A.WRITE,
            collection=collection,
            ids=ids,
            vector_count=count,
            filters=filters,
            detail="update_vectors",
        )
    ]


def _selected(action: ActionClass, detail: str) -> _Build:
    def build(body: Mapping[str, object], where: str, collection: str) -> list[Operation]:
        ids, filters, named = _selector(body, where)
        return [
            op(
                action,
                collection=collection,
                ids=ids,
                ids_known=named,
                filters=filters,
                detail=detail,
            )
        ]

    return build


_BATCH_OPS: dict[str, _Build] = {
    "upsert": _upsert,
    "update_vectors": _update_vectors,
    "delete": _selected(A.DELETE, "delete"),
    "delete_vectors": _selected(A.DELETE, "delete_vectors"),
    "set_payload": _selected(A.WRITE, "set_payload"),
    "overwrite_payload": _selected(A.WRITE, "overwrite_payload"),
    "delete_payload": _selected(A.WRITE, "delete_payload"),
    "clear_payload": _selected(A.WRITE, "clear_payload"),
}


def _body_handler(kind: str) -> _Handler:
    build = _BATCH_OPS[kind]

    def handler(req: HttpRequest, p: Mapping[str, str]) -> Result:
        return Result(build(_body(req), "body", p["collection"]))

    return handler


def _batch(req: HttpRequest, p: Mapping[str, str]) -> Result:
    body = _body(req)
    ops: list[Operation] = []
    items = as_list(body.get("operations"), "body.operations")
    if not items:
        raise BadRequest("body.operations is empty")
    for i, item in enumerate(items):
        where = f"body.operations[{i}]"
        entry = as_obj(item, where)
        if len(entry) != 1:
            raise BadRequest(f"{where} must have exactly one key, got {sorted(entry)[:5]}")
        ((kind, inner),) = entry.items()
        build = _BATCH_OPS.get(kind)
        if build is None:
            raise BadRequest(f"{where} has unrecognised operation {kind[:60]!r}")
        ops.extend(build(as_obj(inner, f"{where}.{kind}"), f"{where}.{kind}", p["collection"]))
    return Result(ops)


# --------------------------------------------------------------------------- reads


def _retrieve(req: HttpRequest, p: Mapping[str, str]) -> Result:
    body = _body(req)
    ids = id_strs(body.get("ids"), "body.ids")
    return Result(
        [
            op(
                A.READ,
                collection=p["collection"],
                ids=ids,
                with_vectors=with_vectors_of(body),
                detail="retrieve",
            )
        ],
        response_ids=("result[].id",),
        user_data_paths=("result[].payload",),
        vector_paths=("result[].vector",),
    )


def _get_point(req: HttpRequest, p: Mapping[str, str]) -> Result:
    return Result(
        [
            op(
                A.READ,
                collection=p["collection"],
                ids=[p["id"]],
                with_vectors=True,
                detail="get_point",
            )
        ],
        response_ids=("result.id",),
        user_data_paths=("result.payload",),
        vector_paths=("result.vector",),
    )


def _filtered_read(
    detail: str,
    resp: tuple[str, ...],
    data: tuple[str, ...],
    vectors: tuple[str, ...],
    located: _Located | None = None,
) -> _Handler:
    def handler(req: HttpRequest, p: Mapping[str, str]) -> Result:
        body = _body(req)
        filters: list[object] = []
        ids: list[str] = []
        if body.get("filter") is not None:
            filters.append(as_obj(body["filter"], "body.filter"))
            ids = has_id_ids(body["filter"], "body.filter")
        values: tuple[tuple[str, str], ...] = ()
        if located is not None and body.get(located[0]) is not None:
            key, path, names = located
            values = tuple((path, name) for name in names(body[key], f"body.{key}"))
        return Result(
            [
                op(
                    A.READ,
                    collection=p["collection"],
                    ids=ids,
                    ids_known=False,
                    filters=filters,
                    limit=limit_of(body, "limit"),
                    with_vectors=with_vectors_of(body) if vectors else None,
                    detail=detail,
                )
            ],
            response_ids=resp,
            user_data_paths=data,
            vector_paths=vectors,
            field_aliases=values,
        )

    return handler


_ORDERED_POINTS: _Located = ("order_by", "result.points[].order_value", order_by_names)
_FACET_VALUES: _Located = ("key", "result.hits[].value", key_names)


def _search(kind: str) -> _Handler:
    def handler(req: HttpRequest, p: Mapping[str, str]) -> Result:
        return search_ops(kind, _body(req), p["collection"])

    return handler


# --------------------------------------------------------------------------- aliases


def _aliases(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    body = _body(req)
    actions = as_list(body.get("actions"), "body.actions")
    if not actions:
        raise BadRequest("body.actions is empty")
    ops: list[Operation] = []
    for i, item in enumerate(actions):
        where = f"body.actions[{i}]"
        entry = as_obj(item, where)
        if len(entry) != 1:
            raise BadRequest(f"{where} must have exactly one key")
        ((kind, inner),) = entry.items()
        spec = as_obj(inner, f"{where}.{kind}")
        # An alias is a name clients query by, so creating or renaming one
        # acts on both names: each must be allowed separately.
        if kind == "create_alias":
            names = [
                as_str(spec.get("collection_name"), f"{where}.{kind}.collection_name"),
                as_str(spec.get("alias_name"), f"{where}.{kind}.alias_name"),
            ]
        elif kind == "delete_alias":
            names = [as_str(spec.get("alias_name"), f"{where}.{kind}.alias_name")]
        elif kind == "rename_alias":
            names = [
                as_str(spec.get("old_alias_name"), f"{where}.{kind}.old_alias_name"),
                as_str(spec.get("new_alias_name"), f"{where}.{kind}.new_alias_name"),
            ]
        else:
            raise BadRequest(f"{where} has unrecognised alias action {kind[:60]!r}")
        ops.extend(op(A.ADMIN, collection=n, detail=kind) for n in names)
        if kind == "create_alias":
            ops.extend(alias_target_ops(names[0], kind))
    return Result(ops)


# --------------------------------------------------------------------------- table

def _create_collection(req: HttpRequest, p: Mapping[str, str]) -> Result:
    """Admin on the collection; ``init_from`` copies every point of another
    collection into it, so it is also a bulk read of that collection,
    decided separately (the copy is as good as a scroll of it)."""
    ops = [op(A.ADMIN, collection=p["collection"], detail="create_collection")]
    if req.body.strip():
        init = _body(req).get("init_from")
        if init is not None:
            source = as_str(
                as_obj(init, "body.init_from").get("collection"), "body.init_from.collection"
            )
            ops.append(
                op(
                    A.READ,
                    collection=source,
                    ids_known=False,
                    bulk=True,
                    detail="create_collection:init_from",
                )
            )
    return Result(ops)


def _recover(detail: str) -> _Handler:
    """Admin on the collection; a ``location`` is a URL or file the server
    loads a snapshot from, which may hold any collection's points (another
    collection's snapshot file, a URL that redirects to one). Which
    collection cannot be told from the request, so it is also a bulk read of
    ``*``: only a rule whose collection glob covers the literal ``*`` allows
    it."""

    def handler(req: HttpRequest, p: Mapping[str, str]) -> Result:
        ops = [op(A.ADMIN, collection=p["collection"], detail=detail)]
        body = _body(req) if req.body.strip() else {}
        if body.get("location") is not None:
            as_str(body["location"], "body.location")
            ops.append(
                op(A.READ, collection="*", ids_known=False, bulk=True, detail=f"{detail}:location")
            )
        return Result(ops)

    return handler


_h = static
_SNAP = "{snapshot}"

ROUTES: list[Route[HttpRequest]] = [
    # service
    route("GET", "/", _h(A.HEALTH, "root")),
    route("GET", "/healthz", _h(A.HEALTH, "healthz")),
    route("GET", "/livez", _h(A.HEALTH, "livez")),
    route("GET", "/readyz", _h(A.HEALTH, "readyz")),
    route("GET", "/metrics", _h(A.HEALTH, "metrics")),
    route("GET", "/telemetry", _h(A.HEALTH, "telemetry")),
    route("GET", "/cluster", _h(A.HEALTH, "cluster_status")),
    route("GET", "/cluster/telemetry", _h(A.HEALTH, "cluster_telemetry")),
    route("GET", "/issues", _h(A.HEALTH, "issues")),
    route("GET", "/quotas", _h(A.HEALTH, "quotas")),
    route("POST", "/cluster/recover", _h(A.ADMIN, "recover_current_peer")),
    route("DELETE", "/cluster/peer/{peer_id}", _h(A.ADMIN, "remove_peer")),
    route("DELETE", "/issues", _h(A.ADMIN, "clear_issues")),
    route("POST|PUT|DELETE", "/quotas", _h(A.ADMIN, "quotas_update")),
    route("GET", "/cluster/metadata/keys", _h(A.ADMIN, "cluster_metadata_keys")),
    route("GET", "/cluster/metadata/keys/{key}", _h(A.ADMIN, "cluster_metadata_get")),
    route("PUT|POST|DELETE", "/cluster/metadata/keys/{key}", _h(A.ADMIN, "cluster_metadata_set")),
    route("GET|POST|PATCH", "/audit/logs", _h(A.ADMIN, "audit_logs")),
    route("GET|POST|PATCH", "/profiler/slow_requests", _h(A.ADMIN, "slow_requests")),
    route("GET|POST|PATCH", "/debugger", _h(A.ADMIN, "debugger")),
    route("GET|POST|PATCH", "/logger", _h(A.ADMIN, "logger")),
    route("GET|POST|PATCH", "/stacktrace", _h(A.ADMIN, "stacktrace")),
    # full-storage snapshots cover every collection
    route("GET", "/snapshots", _h(A.ADMIN, "list_full_snapshots", collection="=*")),
    route("POST", "/snapshots", _h(A.ADMIN, "create_full_snapshot", collection="=*")),
    route(
        "GET",
        f"/snapshots/{_SNAP}",
        _h(A.ADMIN, "download_full_snapshot", collection="=*", ids_known=False),
    ),
    route("DELETE", f"/snapshots/{_SNAP}", _h(A.ADMIN, "delete_full_snapshot", collection="=*")),
    # collections and aliases
    route("GET", "/collections", _h(A.SCHEMA, "list_collections")),
    route("GET", "/aliases", _h(A.SCHEMA, "list_aliases")),
    route("POST", "/collections/aliases", _aliases),
    route(
        "GET",
        C,
        _h(
            A.SCHEMA,
            "get_collection",
            collection="collection",
            user_data=("result.payload_schema",),
        ),
    ),
    route("PUT", C, _create_collection),
    route("PATCH", C, _h(A.ADMIN, "update_collection", collection="collection")),
    route("DELETE", C, _h(A.ADMIN, "delete_collection", collection="collection", ids_known=False)),
    route("GET", f"{C}/aliases", _h(A.SCHEMA, "collection_aliases", collection="collection")),
    route("GET", f"{C}/exists", _h(A.SCHEMA, "collection_exists", collection="collection")),
    route("GET", f"{C}/cluster", _h(A.SCHEMA, "collection_cluster", collection="collection")),
    route(
        "POST", f"{C}/cluster", _h(A.ADMIN, "update_collection_cluster", collection="collection")
    ),
    route("GET", f"{C}/optimizations", _h(A.SCHEMA, "optimizations", collection="collection")),
    route("GET", f"{C}/shards", _h(A.SCHEMA, "list_shard_keys", collection="collection")),
    route("PUT", f"{C}/shards", _h(A.ADMIN, "create_shard_key", collection="collection")),
    route("POST", f"{C}/shards/delete", _h(A.ADMIN, "delete_shard_key", collection="collection")),
    route("GET", f"{C}/memory", _h(A.SCHEMA, "collection_memory", collection="collection")),
    route("PUT", f"{C}/index", _h(A.ADMIN, "create_field_index", collection="collection")),
    route(
        "PUT|DELETE",
        f"{C}/index/{{field_name}}",
        _h(A.ADMIN, "field_index", collection="collection"),
    ),
    route(
        "PUT|DELETE",
        f"{C}/vectors/{{vector_name}}",
        _h(A.ADMIN, "vector_config", collection="collection"),
    ),
    route("GET|POST|PATCH", f"{C}/debug", _h(A.ADMIN, "debug", collection="collection")),
    route(
        "POST",
        f"{C}/truncate_unapplied_wal",
        _h(A.ADMIN, "truncate_unapplied_wal", collection="collection"),
    ),
    route(
        "POST",
        f"{C}/shards/{{shard}}/cleanup",
        _h(A.ADMIN, "shard_cleanup", collection="collection"),
    ),
    # snapshots (GET of one snapshot downloads the whole collection)
    route("GET", f"{C}/snapshots", _h(A.ADMIN, "list_snapshots", collection="collection")),
    route("POST", f"{C}/snapshots", _h(A.ADMIN, "create_snapshot", collection="collection")),
    route("PUT", f"{C}/snapshots/recover", _recover("recover_snapshot")),
    route("POST", f"{C}/snapshots/upload", _h(A.ADMIN, "upload_snapshot", collection="collection")),
    route(
        "GET",
        f"{C}/snapshots/{_SNAP}",
        _h(A.ADMIN, "download_snapshot", collection="collection", ids_known=False),
    ),
    route(
        "DELETE", f"{C}/snapshots/{_SNAP}", _h(A.ADMIN, "delete_snapshot", collection="collection")
    ),
    route(
        "GET",
        f"{C}/shards/{{shard}}/snapshots",
        _h(A.ADMIN, "list_shard_snapshots", collection="collection"),
    ),
    route(
        "POST",
        f"{C}/shards/{{shard}}/snapshots",
        _h(A.ADMIN, "create_shard_snapshot", collection="collection"),
    ),
    route(
        "PUT",
        f"{C}/shards/{{shard}}/snapshots/recover",
        _recover("recover_shard_snapshot"),
    ),
    route(
        "POST",
        f"{C}/shards/{{shard}}/snapshots/upload",
        _h(A.ADMIN, "upload_shard_snapshot", collection="collection"),
    ),
    route(
        "GET",
        f"{C}/shards/{{shard}}/snapshots/{_SNAP}",
        _h(A.ADMIN, "download_shard_snapshot", collection="collection", ids_known=False),
    ),
    route(
        "DELETE",
        f"{C}/shards/{{shard}}/snapshots/{_SNAP}",
        _h(A.ADMIN, "delete_shard_snapshot", collection="collection"),
    ),
    route(
        "GET",
        f"{C}/shards/{{shard}}/snapshot",
        _h(A.ADMIN, "stream_shard_snapshot", collection="collection", ids_known=False),
    ),
    # points: reads
    route("GET", f"{C}/points/{{id}}", _get_point),
    route("POST", f"{C}/points", _retrieve),
    route(
        "POST",
        f"{C}/points/scroll",
        _filtered_read(
            "scroll",
            ("result.points[].id", "result.next_page_offset"),
            ("result.points[].payload",),
            ("result.points[].vector",),
            _ORDERED_POINTS,
        ),
    ),
    route("POST", f"{C}/points/count", _filtered_read("count", (), (), ())),
    route(
        "POST",
        f"{C}/facet",
        _filtered_read("facet", (), ("result.hits[].value",), (), _FACET_VALUES),
    ),
    route("POST", f"{C}/shards/{{shard}}/points", _retrieve),
    route(
        "POST",
        f"{C}/shards/{{shard}}/points/scroll",
        _filtered_read(
            "shard_scroll",
            ("result.points[].id", "result.next_page_offset"),
            ("result.points[].payload",),
            ("result.points[].vector",),
            _ORDERED_POINTS,
        ),
    ),
    route("POST", f"{C}/shards/{{shard}}/points/count", _filtered_read("shard_count", (), (), ())),
    # points: search
    *[route("POST", f"{C}/points/{kind}", _search(kind)) for kind in SEARCH_KINDS],
    # points: writes and deletes
    route("PUT", f"{C}/points", _body_handler("upsert")),
    route("PUT", f"{C}/points/vectors", _body_handler("update_vectors")),
    route("POST", f"{C}/points/payload", _body_handler("set_payload")),
    route("PUT", f"{C}/points/payload", _body_handler("overwrite_payload")),
    route("POST", f"{C}/points/payload/delete", _body_handler("delete_payload")),
    route("POST", f"{C}/points/payload/clear", _body_handler("clear_payload")),
    route("POST", f"{C}/points/delete", _body_handler("delete")),
    route("POST", f"{C}/points/vectors/delete", _body_handler("delete_vectors")),
    route("POST", f"{C}/points/batch", _batch),
]
