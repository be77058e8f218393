"""Weaviate REST and GraphQL (port 8080, base path ``/v1``).

Reference: shared/vector-db-apis.md §5, §7, §8. A class is a collection;
names are compared in Weaviate's capitalised form. ``Operation.database`` is
the tenant (``query:tenant`` or ``body:tenant``) when one is named. GraphQL
is handled by :mod:`capture.classify._weaviate_graphql`. Note that
weaviate-client v4 sends queries and batches over gRPC (port 50051), which
this HTTP classifier never sees (§9).
"""

from __future__ import annotations

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
    guard_terms,
    header_lookup,
    id_str,
    is_uuid,
    op,
    parse_json,
    query_limit,
    query_one,
    route,
    run,
    static,
    unknown,
)
from capture.classify._weaviate_graphql import (
    beacon_id,
    class_name,
    graphql_batch_result,
    graphql_result,
    ranking_terms,
    weaviate_filter_ids,
)
from capture.types import ActionClass, Classification, HttpRequest, Operation

__all__ = ["ROUTES", "classify_weaviate"]

A = ActionClass
_Handler = Callable[[HttpRequest, Mapping[str, str]], Result]


def classify_weaviate(req: HttpRequest) -> Classification:
    """Classify one Weaviate REST/GraphQL request; never raises."""
    media = (header_lookup(req.headers, "content-type") or "").split(";", 1)[0].strip().lower()
    if req.body.strip() and media not in ("", "application/json"):
        # Weaviate also reads YAML bodies (go-swagger's YAML consumer), where
        # keys match fields by their exact lower-case names: "Variables" would
        # be ignored and a GraphQL variable's default used, while the gateway
        # read the body as JSON. Only a body both read the same way goes on.
        return unknown("weaviate", (
            f"Weaviate: a request body of type {media[:60]!r} is not read as the gateway "
            "reads it; send it as JSON (Content-Type: application/json)"))
    return run("weaviate", ROUTES, req, req)


def _body(req: HttpRequest) -> dict[str, object]:
    return as_obj(parse_json(req.body, go=True), "body")


#: go-swagger binds a repeated query parameter to its last value; _q refuses
#: repeats instead (query_one), so no reading of them is guessed
_q = query_one


def _tenant(req: HttpRequest, body: Mapping[str, object] | None = None) -> str | None:
    """The tenant; an empty one is no tenant, as Weaviate reads it."""
    if body is not None and body.get("tenant") is not None:
        return as_str(body["tenant"], "body.tenant") or None
    return _q(req, "tenant") or None


def _uuid(text: str, where: str) -> str:
    if not is_uuid(text):
        raise BadRequest(f"{where} {text[:80]!r} is not a UUID")
    return text


def _vectors(obj: Mapping[str, object], where: str) -> int:
    count = 0
    if obj.get("vector") is not None:
        as_list(obj["vector"], f"{where}.vector")
        count += 1
    if obj.get("vectors") is not None:
        count += len(as_obj(obj["vectors"], f"{where}.vectors"))
    return count


def _class_of(obj: Mapping[str, object], where: str) -> str:
    return class_name(as_str(obj.get("class"), f"{where}.class"))


# --------------------------------------------------------------------------- objects


def _object_result(operation: Operation) -> Result:
    return Result(
        [operation],
        response_ids=("id",),
        user_data_paths=("properties",),
        vector_paths=("vector", "vectors{*}"),
    )


def _list_objects(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    cls = _q(req, "class")
    include = (_q(req, "include") or "").split(",")
    # ?sort=a,b orders by those properties' values: the masked-filter check reads them
    guard_terms({"path": [p.strip()]} for p in (_q(req, "sort") or "").split(",") if p.strip())
    return Result(
        [
            op(
                A.READ,
                collection=class_name(cls) if cls else "*",
                database=_tenant(req),
                ids_known=False,
                limit=query_limit(_q(req, "limit"), "query limit"),
                with_vectors="vector" in include,
                detail="list_objects",
            )
        ],
        response_ids=("objects[].id",),
        user_data_paths=("objects[].properties",),
        vector_paths=("objects[].vector", "objects[].vectors{*}"),
    )


def _create_object(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    body = _body(req)
    ids = [] if body.get("id") is None else [id_str(body["id"], "body.id", allow_int=False)]
    return _object_result(
        op(
            A.WRITE,
            collection=_class_of(body, "body"),
            database=_tenant(req, body),
            ids=ids,
            ids_known=bool(ids),
            vector_count=_vectors(body, "body"),
            detail="create_object",
        )
    )


_BY_METHOD = {
    "GET": (A.READ, "get_object"),
    "HEAD": (A.READ, "object_exists"),
    "PUT": (A.WRITE, "replace_object"),
    "PATCH": (A.WRITE, "update_object"),
    "DELETE": (A.DELETE, "delete_object"),
}


def _object(req: HttpRequest, p: Mapping[str, str]) -> Result:
    action, detail = _BY_METHOD[req.method]
    oid = _uuid(p["id"], "path id")
    body: dict[str, object] | None = None
    vectors = 0
    if req.method in ("PUT", "PATCH"):
        body = _body(req)
        vectors = _vectors(body, "body")
    if "className" in p:
        cls = class_name(p["className"])
        if body is not None and body.get("class") is not None:
            if _class_of(body, "body") != cls:
                raise BadRequest(f"body.class does not match the path class {cls[:60]!r}")
    else:  # deprecated /v1/objects/{id}: the class is optional, absent = any class
        # an empty class is no class: Weaviate then looks in every class
        named = body.get("class") if body is not None else _q(req, "class")
        cls = class_name(as_str(named, "class")) if named not in (None, "") else "*"
        detail += "_deprecated"
    with_vectors = "vector" in (_q(req, "include") or "").split(",") if action == A.READ else None
    return _object_result(
        op(
            action,
            collection=cls,
            database=_tenant(req, body),
            ids=[oid],
            vector_count=vectors,
            with_vectors=with_vectors,
            detail=detail,
        )
    )


def _reference(req: HttpRequest, p: Mapping[str, str]) -> Result:
    oid = _uuid(p["id"], "path id")
    cls = (
        class_name(p["className"])
        if "className" in p
        else (class_name(q) if (q := _q(req, "class")) else "*")
    )
    parsed = parse_json(req.body, go=True)
    refs = parsed if isinstance(parsed, list) else [parsed]
    ids = [oid]
    for i, ref in enumerate(refs):
        ids.append(beacon_id(as_obj(ref, f"body[{i}]").get("beacon"), f"body[{i}].beacon")[1])
    detail = {"POST": "add_reference", "PUT": "replace_references", "DELETE": "delete_reference"}[
        req.method
    ]
    return Result([op(A.WRITE, collection=cls, database=_tenant(req), ids=ids, detail=detail)])


def _validate(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    return Result(
        [op(A.UNKNOWN, ids_known=False, detail="validate_object")],
        error="POST /v1/objects/validate only validates an object; it is not "
        "classified (denied by default)",
    )


# --------------------------------------------------------------------------- batches


def _batch_objects(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    body = _body(req)
    objects = as_list(body.get("objects"), "body.objects")
    if not objects:
        raise BadRequest("body.objects is empty")
    groups: dict[tuple[str, str | None], list[tuple[str | None, int]]] = {}
    for i, item in enumerate(objects):
        where = f"body.objects[{i}]"
        obj = as_obj(item, where)
        tenant = None if obj.get("tenant") is None else as_str(obj["tenant"], f"{where}.tenant")
        oid = None if obj.get("id") is None else id_str(obj["id"], f"{where}.id", allow_int=False)
        groups.setdefault((_class_of(obj, where), tenant), []).append((oid, _vectors(obj, where)))
    ops = []
    for (cls, tenant), members in groups.items():
        ids = [oid for oid, _ in members if oid is not None]
        ops.append(
            op(
                A.WRITE,
                collection=cls,
                database=tenant or _q(req, "tenant"),
                ids=ids,
                ids_known=len(ids) == len(members),
                vector_count=sum(v for _, v in members),
                detail="batch_objects",
            )
        )
    return Result(
        ops,
        response_ids=("[].id",),
        user_data_paths=("[].properties",),
        vector_paths=("[].vector", "[].vectors{*}"),
    )


def _batch_delete(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    body = _body(req)
    match = as_obj(body.get("match"), "body.match")
    where = match.get("where")
    filters = [as_obj(where, "body.match.where")] if where is not None else []
    dry = body.get("dryRun") is True
    return Result(
        [
            op(
                A.DELETE,
                collection=_class_of(match, "body.match"),
                database=_tenant(req, body),
                ids=weaviate_filter_ids(where) if where is not None else [],
                ids_known=False,
                filters=filters,
                detail="batch_delete_dry_run" if dry else "batch_delete",
            )
        ],
        response_ids=("results.objects[].id",),
    )


def _batch_references(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    refs = as_list(parse_json(req.body, go=True), "body")
    if not refs:
        raise BadRequest("body is empty")
    groups: dict[tuple[str, str | None], list[str]] = {}
    for i, item in enumerate(refs):
        where = f"body[{i}]"
        ref = as_obj(item, where)
        cls, src = beacon_id(ref.get("from"), f"{where}.from")
        if cls is None:
            raise BadRequest(f"{where}.from must name the source class")
        _, dst = beacon_id(ref.get("to"), f"{where}.to")
        tenant = None if ref.get("tenant") is None else as_str(ref["tenant"], f"{where}.tenant")
        groups.setdefault((cls, tenant), []).extend((src, dst))
    return Result(
        [
            op(
                A.WRITE,
                collection=cls,
                database=tenant or _q(req, "tenant"),
                ids=list(dict.fromkeys(ids)),
                detail="batch_references",
            )
            for (cls, tenant), ids in groups.items()
        ]
    )


# --------------------------------------------------------------------------- queries


def _graphql(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    return graphql_result(parse_json(req.body, go=True), "body")


def _graphql_batch(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    return graphql_batch_result(parse_json(req.body, go=True), "body")


def _rest_search(req: HttpRequest, p: Mapping[str, str]) -> Result:
    body = _body(req)
    ids: list[str] = []
    if p["kind"] == "near-object":
        ids.append(id_str(body.get("id"), "body.id", allow_int=False))
    elif p["kind"] not in ("near-text", "bm25", "hybrid"):
        raise BadRequest(f"unrecognised search kind {p['kind'][:40]!r}")
    filters: list[object] = []
    if body.get("where") is not None:
        filters.append(as_obj(body["where"], "body.where"))
        ids.extend(weaviate_filter_ids(body["where"]))
    guard_terms(ranking_terms(body.get("properties")))  # bm25 / hybrid ranks by them
    return Result(
        [
            op(
                A.SEARCH,
                collection=class_name(p["collection"]),
                database=_tenant(req, body),
                ids=ids,
                ids_known=False,
                vector_count=_vectors(body, "body"),
                filters=filters,
                limit=as_int_limit(body.get("limit"), "body.limit"),
                detail=p["kind"],
            )
        ],
        response_ids=("results[].id",),
        user_data_paths=("results[].properties", "results[].references"),
    )


def _rest_aggregate(req: HttpRequest, p: Mapping[str, str]) -> Result:
    """``groups[].groupedBy.value`` is the ``groupBy`` property's value, so it
    is listed with that property for masking by name. A ``returnMetrics``
    entry ``property:statistic`` is reserved (servers answer 422); as its
    answer's shape is not defined, naming a property there lists the whole
    response with it (masks everything if that property is masked)."""
    body = _body(req) if req.body.strip() else {}
    filters = [as_obj(body["where"], "body.where")] if body.get("where") is not None else []
    values: list[tuple[str, str]] = []
    if body.get("groupBy") is not None:
        group = as_str(body["groupBy"], "body.groupBy")
        if group:
            values.append(("groups[].groupedBy.value", group))
    metrics = body.get("returnMetrics")
    if metrics is not None:
        for i, metric in enumerate(as_list(metrics, "body.returnMetrics")):
            name, sep, _ = as_str(metric, f"body.returnMetrics[{i}]").partition(":")
            if sep and name:
                values.append(("{*}", name))
    return Result(
        [
            op(
                A.READ,
                collection=class_name(p["collection"]),
                database=_tenant(req, body),
                ids_known=False,
                filters=filters,
                detail="aggregate",
            )
        ],
        user_data_paths=("groups[]",),
        field_aliases=tuple(dict.fromkeys(values)),
    )


# --------------------------------------------------------------------------- schema & admin


def _schema_class(action: ActionClass, detail: str, *, ids_known: bool = True) -> _Handler:
    def handler(req: HttpRequest, p: Mapping[str, str]) -> Result:
        return Result(
            [op(action, collection=class_name(p["className"]), ids_known=ids_known, detail=detail)]
        )

    return handler


def _create_class(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    return Result([op(A.ADMIN, collection=_class_of(_body(req), "body"), detail="create_class")])


def _alias(req: HttpRequest, p: Mapping[str, str]) -> Result:
    """Aliases: admin on the alias and on the class it points to."""
    names: list[str] = []
    if req.method == "GET":
        cls = _q(req, "class")
        target = p.get("aliasName") or (class_name(cls) if cls else None)
        return Result([op(A.SCHEMA, collection=target, detail="get_aliases")])
    if "aliasName" in p:
        names.append(p["aliasName"])
    if req.method in ("POST", "PUT"):
        body = _body(req)
        if req.method == "POST":
            names.append(as_str(body.get("alias"), "body.alias"))
        names.append(_class_of(body, "body"))
    detail = {"POST": "create_alias", "PUT": "update_alias", "DELETE": "delete_alias"}[req.method]
    ops = [op(A.ADMIN, collection=n, detail=detail) for n in names]
    if req.method in ("POST", "PUT"):
        ops += alias_target_ops(names[-1], detail)
    return Result(ops)


def _backup(detail: str) -> _Handler:
    """Backups and exports: one admin op per included class, ``*`` when the
    body includes everything (export is bulk data out)."""

    def handler(req: HttpRequest, _p: Mapping[str, str]) -> Result:
        if req.method not in ("POST", "PUT") or not req.body.strip():
            return Result([op(A.ADMIN, detail=detail)])
        body = _body(req)
        include = body.get("include")
        classes = (
            [class_name(as_str(c, "body.include[]")) for c in as_list(include, "body.include")]
            if include
            else []
        )
        if not classes or body.get("exclude"):
            classes = ["*"]
        return Result([op(A.ADMIN, collection=c, ids_known=False, detail=detail) for c in classes])

    return handler


def _classification(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    body = _body(req)
    return Result(
        [
            op(
                A.WRITE,
                collection=_class_of(body, "body"),
                ids_known=False,
                bulk=False,
                detail="classification",
            )
        ]
    )


def _utility(name: str) -> _Handler:
    def handler(req: HttpRequest, _p: Mapping[str, str]) -> Result:
        return Result(
            [op(A.UNKNOWN, ids_known=False, detail=name)],
            error=f"{req.method} {name} is a text utility endpoint; it is not "
            "classified (denied by default)",
        )

    return handler


# --------------------------------------------------------------------------- MCP

_MCP_TOOLS = {
    "weaviate-query-hybrid": (A.SEARCH, True),
    "weaviate-objects-upsert": (A.WRITE, True),
    "weaviate-collections-get-config": (A.SCHEMA, False),
    "weaviate-tenants-list": (A.SCHEMA, True),
}
#: Protocol handshake and discovery carry no user data.
_MCP_HEALTH = ("tools/list", "initialize", "ping", "notifications/initialized")


def _mcp_message(msg: object, where: str) -> Operation:
    m = as_obj(msg, where)
    method = as_str(m.get("method"), f"{where}.method")
    if method in _MCP_HEALTH:
        return op(A.HEALTH, detail=f"mcp:{method}")
    if method != "tools/call":
        raise BadRequest(f"{where}.method {method[:60]!r} is not a recognised MCP method")
    params = as_obj(m.get("params"), f"{where}.params")
    tool = as_str(params.get("name"), f"{where}.params.name")
    known = _MCP_TOOLS.get(tool)
    if known is None:
        raise BadRequest(f"MCP tool {tool[:60]!r} is not classified")
    action, needs_collection = known
    args = as_obj(params.get("arguments") or {}, f"{where}.params.arguments")
    coll = args.get("collection_name")
    if coll is None and needs_collection:
        raise BadRequest(f"{where}.params.arguments.collection_name is required for {tool}")
    collection = class_name(as_str(coll, "collection_name")) if coll is not None else "*"
    tenant = args.get("tenant_name")
    database = as_str(tenant, "tenant_name") if tenant is not None else None
    if action == A.WRITE:
        objects = as_list(args.get("objects"), f"{where}.params.arguments.objects")
        ids = [
            as_str(o.get("uuid"), "uuid")
            for o in objects
            if isinstance(o, dict) and o.get("uuid") is not None
        ]
        return op(
            action,
            collection=collection,
            database=database,
            ids=ids,
            ids_known=len(ids) == len(objects),
            detail=f"mcp:{tool}",
        )
    return op(
        action,
        collection=collection,
        database=database,
        ids_known=action != A.SEARCH,
        detail=f"mcp:{tool}",
    )


def _mcp(req: HttpRequest, _p: Mapping[str, str]) -> Result:
    if req.method != "POST":
        raise BadRequest(f"{req.method} /v1/mcp (stream or session control) is not classified")
    body = parse_json(req.body, go=True)
    msgs = body if isinstance(body, list) else [body]
    if not msgs:
        raise BadRequest("body is an empty JSON-RPC batch")
    return Result(
        [
            _mcp_message(m, f"body[{i}]" if isinstance(body, list) else "body")
            for i, m in enumerate(msgs)
        ],
        user_data_paths=("result.content[].text", "result.structuredContent"),
    )


# --------------------------------------------------------------------------- table


def _prefix(
    methods: str, prefix: str, handler: _Handler, depth: int = 4
) -> list[Route[HttpRequest]]:
    """``prefix`` and up to ``depth`` further segments."""
    out = [route(methods, prefix, handler)]
    tmpl = prefix
    for i in range(depth):
        tmpl += f"/{{p{i}}}"
        out.append(route(methods, tmpl, handler))
    return out


_h = static
V = "/v1"
_ANY = "GET|POST|PUT|PATCH|DELETE|HEAD"
_OBJ = V + "/objects/{className}/{id}"
_SC = V + "/schema/{className}"

ROUTES: list[Route[HttpRequest]] = [
    route("GET", V, _h(A.HEALTH, "root")),
    route("GET", V + "/.well-known/live", _h(A.HEALTH, "live")),
    route("GET", V + "/.well-known/ready", _h(A.HEALTH, "ready")),
    route("GET", V + "/.well-known/openid-configuration", _h(A.HEALTH, "openid")),
    route("GET", V + "/meta", _h(A.HEALTH, "meta")),
    route("GET", V + "/nodes", _h(A.HEALTH, "nodes")),
    route("GET", V + "/nodes/{className}", _h(A.HEALTH, "nodes_class")),
    route("GET", V + "/cluster/statistics", _h(A.HEALTH, "cluster_statistics")),
    route("GET", V + "/tasks", _h(A.HEALTH, "tasks")),
    route("GET", V + "/users/own-info", _h(A.HEALTH, "own_info")),
    # objects
    route("GET", V + "/objects", _list_objects),
    route("POST", V + "/objects", _create_object),
    route("POST", V + "/objects/validate", _validate),
    route("GET|HEAD|PUT|PATCH|DELETE", _OBJ, _object),
    route("GET|HEAD|PUT|PATCH|DELETE", V + "/objects/{id}", _object),
    route("POST|PUT|DELETE", _OBJ + "/references/{propertyName}", _reference),
    route("POST|PUT|DELETE", V + "/objects/{id}/references/{propertyName}", _reference),
    # batches
    route("POST", V + "/batch/objects", _batch_objects),
    route("DELETE", V + "/batch/objects", _batch_delete),
    route("POST", V + "/batch/references", _batch_references),
    # queries
    route("POST", V + "/graphql", _graphql),
    route("POST", V + "/graphql/batch", _graphql_batch),
    route("POST", V + "/search/{collection}/{kind}", _rest_search),
    route("POST", V + "/aggregate/{collection}", _rest_aggregate),
    # schema
    route("GET", V + "/schema", _h(A.SCHEMA, "get_schema", collection="=*")),
    route("POST", V + "/schema", _create_class),
    route("GET", _SC, _schema_class(A.SCHEMA, "get_class")),
    route("PUT", _SC, _schema_class(A.ADMIN, "update_class")),
    route("DELETE", _SC, _schema_class(A.ADMIN, "delete_class", ids_known=False)),
    route("POST", _SC + "/properties", _schema_class(A.ADMIN, "add_property")),
    route("POST", _SC + "/properties/{propertyName}/tokenize", _utility("property_tokenize")),
    route("GET", _SC + "/indexes", _schema_class(A.SCHEMA, "get_indexes")),
    route("GET", _SC + "/shards", _schema_class(A.SCHEMA, "get_shards")),
    route("PUT", _SC + "/shards/{shardName}", _schema_class(A.ADMIN, "update_shard")),
    route("GET", _SC + "/tenants", _schema_class(A.SCHEMA, "get_tenants")),
    route("POST|PUT", _SC + "/tenants", _schema_class(A.ADMIN, "tenants")),
    route("DELETE", _SC + "/tenants", _schema_class(A.ADMIN, "delete_tenants", ids_known=False)),
    route("GET|HEAD", _SC + "/tenants/{tenantName}", _schema_class(A.SCHEMA, "get_tenant")),
    route(
        "PUT|DELETE|POST",
        _SC + "/properties/{propertyName}/index/{indexName}",
        _schema_class(A.ADMIN, "property_index"),
    ),
    route(
        "POST",
        _SC + "/properties/{propertyName}/index/{indexName}/rebuild",
        _schema_class(A.ADMIN, "property_index_rebuild"),
    ),
    route(
        "POST",
        _SC + "/properties/{propertyName}/index/{indexName}/cancel",
        _schema_class(A.ADMIN, "property_index_cancel"),
    ),
    route(
        "PUT|DELETE|POST",
        _SC + "/vectors/{vectorIndexName}/index",
        _schema_class(A.ADMIN, "vector_index"),
    ),
    # aliases
    route("GET|POST", V + "/aliases", _alias),
    route("GET|PUT|DELETE", V + "/aliases/{aliasName}", _alias),
    # classifications and utilities
    route("POST", V + "/classifications", _classification),
    route("GET", V + "/classifications/{id}", _h(A.ADMIN, "get_classification")),
    route("POST", V + "/tokenize", _utility("tokenize")),
    route("POST|GET|DELETE", V + "/mcp", _mcp),
    # backups, exports and cluster/user administration
    *_prefix(_ANY, V + "/backups/{backend}", _backup("backup"), depth=3),
    *_prefix(_ANY, V + "/export/{backend}", _backup("export"), depth=3),
    *_prefix(_ANY, V + "/replication", _h(A.ADMIN, "replication")),
    *_prefix(_ANY, V + "/users/db", _h(A.ADMIN, "users")),
    *_prefix(_ANY, V + "/authz", _h(A.ADMIN, "authz")),
    *_prefix(_ANY, V + "/namespaces", _h(A.ADMIN, "namespaces")),
]
