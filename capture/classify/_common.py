"""Shared machinery of the per-product classifiers.

Route tables, strict JSON body parsing, path normalisation, id and filter
helpers. Everything here is pure: bytes and strings in, values or a
:class:`BadRequest` out. :func:`run` turns a route table plus a request into a
:class:`~capture.types.Classification` and is the single place where any
exception becomes an error classification, so a classifier never raises on
client input.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import unquote

from capture.types import ActionClass, Classification, HttpRequest, Operation, Product

__all__ = [
    "MAX_JSON_DEPTH",
    "BadRequest",
    "GoObject",
    "Handler",
    "Result",
    "Route",
    "RouteMatch",
    "as_bool",
    "as_int_limit",
    "as_list",
    "as_obj",
    "as_str",
    "canonical_json",
    "dedupe",
    "filter_digest",
    "header_lookup",
    "id_str",
    "id_strs",
    "is_uuid",
    "match_route",
    "normalize_path",
    "op",
    "go_fold",
    "parse_json",
    "query_limit",
    "query_one",
    "route",
    "run",
    "static",
    "unknown",
    "walk",
]

#: Deepest JSON nesting accepted in a body. Real filters nest a handful of
#: levels; anything deeper is refused rather than walked.
MAX_JSON_DEPTH = 64
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BadRequest(Exception):
    """The request cannot be classified; the message says exactly why."""


@dataclass
class Result:
    """What a route handler produced."""

    operations: list[Operation]
    response_ids: tuple[str, ...] = ()
    user_data_paths: tuple[str, ...] = ()
    vector_paths: tuple[str, ...] = ()
    vector_scan_paths: tuple[str, ...] = ()
    #: (response key or response path, field name): a GraphQL alias, or a
    #: location holding a field's value outside its own key (see
    #: capture.types.Classification)
    field_aliases: tuple[tuple[str, str], ...] = ()
    #: Set when the endpoint is recognised but deliberately unclassified
    #: (inference, validation, utility endpoints): the operation is unknown
    #: and this says why.
    error: str | None = None


C = TypeVar("C")
Handler = Callable[[C, Mapping[str, str]], Result]


@dataclass(frozen=True)
class Route(Generic[C]):
    methods: frozenset[str]
    template: str
    pattern: re.Pattern[str]
    handler: Handler[C]
    #: Path parameter naming the collection, used to label the unknown
    #: operation when the body of a recognised endpoint is malformed.
    collection_param: str | None = None


_PARAM = re.compile(r"\{(\w+)\}")


def route(
    methods: str, template: str, handler: Handler[C], *, collection_param: str | None = None
) -> Route[C]:
    """A route from ``"GET|HEAD"`` and ``"/collections/{collection}/points"``."""
    parts = _PARAM.split(template)
    regex = []
    for i, part in enumerate(parts):
        regex.append(re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)")
    if collection_param is None and "{collection}" in template:
        collection_param = "collection"
    return Route(
        methods=frozenset(methods.split("|")),
        template=template,
        pattern=re.compile("".join(regex)),
        handler=handler,
        collection_param=collection_param,
    )


@dataclass
class RouteMatch(Generic[C]):
    route: Route[C] | None = None
    params: dict[str, str] = field(default_factory=dict)
    allowed: set[str] = field(default_factory=set)


#: per route table (by id, the table kept alive with its index): its routes by
#: the number of "/" in their template, in table order
_BY_DEPTH: dict[int, tuple[Sequence[Any], dict[int, list[Any]]]] = {}


def _candidates(routes: Sequence[Route[C]], path: str) -> Sequence[Route[C]]:
    """The routes of ``routes`` that can match ``path``, in table order.

    A template's parameters match ``[^/]+``, so a route matches only paths
    with as many slashes as its template: the rest of the table need not be
    tried (a Qdrant request tried ~70 patterns before; now a handful)."""
    entry = _BY_DEPTH.get(id(routes))
    if entry is None or entry[0] is not routes:
        index: dict[int, list[Any]] = {}
        for r in routes:
            index.setdefault(r.template.count("/"), []).append(r)
        if len(_BY_DEPTH) >= 64:  # the tables are module constants; never grow unbounded
            _BY_DEPTH.clear()
        entry = _BY_DEPTH[id(routes)] = (routes, index)
    return entry[1].get(path.count("/"), ())


def match_route(routes: Sequence[Route[C]], method: str, path: str) -> RouteMatch[C]:
    found: RouteMatch[C] = RouteMatch()
    for r in _candidates(routes, path):
        m = r.pattern.fullmatch(path)
        if m is None:
            continue
        if method in r.methods:
            return RouteMatch(route=r, params=m.groupdict())
        found.allowed |= r.methods
    return found


def normalize_path(raw: str) -> str:
    """Percent-decode each segment and refuse ambiguous paths.

    Servers decode ``%64ocs`` to ``docs``; matching on the raw text would let
    an encoded name slip past a policy glob. Encoded slashes, dot segments,
    empty segments and control characters have no legitimate use in these
    APIs and are refused rather than guessed at. One trailing slash is
    dropped.
    """
    if not raw.startswith("/"):
        raise BadRequest(f"path {raw[:200]!r} does not start with '/'")
    if "?" in raw or "#" in raw:
        raise BadRequest(f"path {raw[:200]!r} contains a query string or fragment")
    if raw == "/":
        return "/"
    segments = raw[1:].split("/")
    if segments[-1] == "":
        segments.pop()
    out = []
    for seg in segments:
        if seg == "":
            raise BadRequest(f"path {raw[:200]!r} has an empty segment")
        try:
            dec = unquote(seg, errors="strict")
        except UnicodeDecodeError:
            raise BadRequest(
                f"path segment {seg[:80]!r} is not valid percent-encoded UTF-8"
            ) from None
        if "/" in dec or "\\" in dec:
            raise BadRequest(f"path segment {seg[:80]!r} encodes a slash")
        if dec in (".", ".."):
            raise BadRequest(f"path {raw[:200]!r} has a dot segment")
        if _CONTROL.search(dec):
            raise BadRequest(f"path segment {seg[:80]!r} contains a control character")
        out.append(dec)
    return "/" + "/".join(out)


def unknown(
    product: Product, error: str, *, collection: str | None = None, detail: str | None = None
) -> Classification:
    return Classification(
        product=product,
        operations=[
            Operation(
                action=ActionClass.UNKNOWN, collection=collection, ids_known=False, detail=detail
            )
        ],
        error=error,
    )


_PRODUCT_NAMES: dict[str, str] = {
    "qdrant": "Qdrant",
    "chroma": "Chroma",
    "pinecone": "Pinecone",
    "weaviate": "Weaviate",
    "milvus": "Milvus",
}


def run(product: Product, routes: Sequence[Route[C]], ctx: C, req: HttpRequest) -> Classification:
    """Match ``req`` against ``routes`` and run the handler; never raises."""
    name = _PRODUCT_NAMES.get(product, product)
    try:
        return _run(product, name, routes, ctx, req)
    except RecursionError:
        return unknown(product, f"{name}: request is nested too deeply to classify")
    except Exception as exc:  # noqa: BLE001 - the gateway must never crash on input
        return unknown(
            product,
            f"{name}: internal classifier error ({type(exc).__name__}) "
            f"on {_safe(req.method)} {_safe(req.path)}",
        )


def _safe(text: str, limit: int = 200) -> str:
    text = _CONTROL.sub("?", text)
    return text if len(text) <= limit else text[:limit] + "…"


def _run(
    product: Product, name: str, routes: Sequence[Route[C]], ctx: C, req: HttpRequest
) -> Classification:
    method = req.method
    try:
        path = normalize_path(req.path)
    except BadRequest as exc:
        return unknown(product, f"{name}: {exc}")
    m = match_route(routes, method, path)
    if m.route is None:
        where = f"{_safe(method)} {_safe(req.path)}"
        if m.allowed:
            allowed = ", ".join(sorted(m.allowed))
            return unknown(
                product,
                f"{name}: method {_safe(method)} is not recognised on "
                f"{_safe(req.path)} (known methods: {allowed})",
            )
        return unknown(product, f"{name}: unrecognised endpoint {where}")
    r = m.route
    collected: list[object] = []
    token = _FILTERS.set(collected)
    try:
        result = r.handler(ctx, m.params)
    except BadRequest as exc:
        coll = m.params.get(r.collection_param) if r.collection_param else None
        return unknown(
            product, f"{name}: {method} {r.template}: {exc}", collection=coll, detail=r.template
        )
    finally:
        _FILTERS.reset(token)
    if not result.operations:
        return unknown(
            product, f"{name}: {method} {r.template} yielded no operation", detail=r.template
        )
    error = result.error
    if error is None and any(o.action == ActionClass.UNKNOWN for o in result.operations):
        error = f"{name}: {method} {r.template} is not a classified operation"
    elif error is not None:
        error = f"{name}: {error}"
    return Classification(
        product=product,
        operations=result.operations,
        error=error,
        response_ids=result.response_ids,
        user_data_paths=result.user_data_paths,
        vector_paths=result.vector_paths,
        vector_scan_paths=result.vector_scan_paths,
        field_aliases=result.field_aliases,
        filters=tuple(collected),
    )


# --------------------------------------------------------------------------- JSON


def _reject_constant(name: str) -> object:
    raise BadRequest(f"body is not valid JSON: {name} is not a JSON number")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"body is not valid JSON: number {text[:40]} is out of range")
    return value


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            # Parsers disagree on which duplicate wins; the server might see
            # a different value from the one classified here.
            raise BadRequest(f"body has duplicate key {key[:80]!r} in one JSON object")
        out[key] = value
    return out


#: Non-ASCII letters that Go's case-insensitive key matching folds onto an
#: ASCII letter (Kelvin sign, long s; dotted/dotless i kept for safety).
_GO_FOLDS = {"\u212a": "k", "\u017f": "s", "\u0131": "i", "\u0130": "i"}


def go_fold(key: str) -> str:
    """``key`` as Go's encoding/json compares keys with struct fields."""
    return "".join(_GO_FOLDS.get(ch, ch.lower() if ch.isascii() else ch) for ch in key)


class GoObject(dict[str, object]):
    """A JSON object as a Go server (Milvus, Weaviate: encoding/json) reads it
    into a struct: a field takes the key spelled exactly like it or, failing
    that, one equal to it ignoring case. ``get``, ``[]`` and ``in`` look keys
    up the same way, so ``{"CollectionName": "x"}`` is classified as naming
    collection x, as the server will read it. Keys equal ignoring case are
    refused when parsed (the server would let the last one win)."""

    __slots__ = ("_folded",)

    def __init__(self, pairs: list[tuple[str, object]]) -> None:
        super().__init__(pairs)
        self._folded = {go_fold(k): k for k in self}

    def _key(self, key: object) -> str | None:
        if dict.__contains__(self, key):
            return key  # type: ignore[return-value]
        return self._folded.get(go_fold(key)) if isinstance(key, str) else None

    def __getitem__(self, key: str) -> object:
        k = self._key(key)
        if k is None:
            raise KeyError(key)
        return dict.__getitem__(self, k)

    def __contains__(self, key: object) -> bool:
        return self._key(key) is not None

    def get(self, key: str, default: object = None) -> object:
        k = self._key(key)
        return default if k is None else dict.__getitem__(self, k)


def _go_object(pairs: list[tuple[str, object]]) -> GoObject:
    seen: dict[str, str] = {}
    for key, _ in pairs:
        folded = go_fold(key)
        first = seen.get(folded)
        if first is None:
            seen[folded] = key
        else:
            if first == key:
                raise BadRequest(f"body has duplicate key {key[:80]!r} in one JSON object")
            raise BadRequest(
                f"body has keys {first[:80]!r} and {key[:80]!r} in one JSON object; the "
                "server matches keys ignoring case and would read only the last: send one"
            )
    return GoObject(pairs)


def parse_json(body: bytes, *, what: str = "body", go: bool = False) -> object:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, bounded depth.

    ``go``: the server decodes with Go's encoding/json (Milvus, Weaviate), which
    matches keys to fields ignoring case; objects are then :class:`GoObject`
    and keys equal ignoring case are refused as duplicates."""
    if not body.strip():
        raise BadRequest(f"{what} is empty; a JSON body is required")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_parse_float,
            object_pairs_hook=_go_object if go else _no_duplicates,
        )
    except BadRequest:
        raise
    except RecursionError:
        raise BadRequest(f"{what} JSON is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:
        raise BadRequest(f"{what} is not valid JSON: {str(exc)[:120]}") from None
    _check_depth(value, what)
    return value


def _check_depth(value: object, what: str) -> None:
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(f"{what} JSON is nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def canonical_json(value: object) -> str:
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except ValueError:
        raise BadRequest("filter contains a number that is not finite") from None


def filter_digest(filters: Sequence[object]) -> str | None:
    """sha256 of one filter (canonical JSON, or the text of a string filter),
    or of the JSON array of several, in request order."""
    if not filters:
        return None
    if len(filters) == 1:
        only = filters[0]
        text = only if isinstance(only, str) else canonical_json(only)
    else:
        text = canonical_json(list(filters))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- fields


def as_obj(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object, got {_kind(value)}")
    return value


def as_list(value: object, where: str) -> list[object]:
    if not isinstance(value, list):
        raise BadRequest(f"{where} must be a JSON array, got {_kind(value)}")
    return value


def as_str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a string, got {_kind(value)}")
    return value


def as_bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{where} must be true or false, got {_kind(value)}")
    return value


def as_int_limit(value: object, where: str) -> int | None:
    """A limit/top_k: an integer (clamped to int64, the wire type) or absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{where} must be an integer, got {_kind(value)}")
    return max(_INT64_MIN, min(_INT64_MAX, value))


def query_one(req: HttpRequest, key: str) -> str | None:
    """The one value of query parameter ``key``, or None when absent.

    Servers disagree on which of repeated values counts: Weaviate's
    go-swagger binders take the last, Gin's ``c.Query`` (Milvus) the first,
    Starlette (legacy Chroma) the last. A parameter the classifier reads is
    therefore refused when it appears more than once, rather than classified
    as one value while the server acts on another."""
    values = req.query_values(key)
    if len(values) > 1:
        raise BadRequest(
            f"query parameter {key[:40]!r} appears {len(values)} times; servers differ on "
            "which value counts, so it must appear once"
        )
    return values[0] if values else None


def query_limit(text: str | None, where: str) -> int | None:
    if text is None:
        return None
    if not re.fullmatch(r"[+-]?\d{1,30}", text.strip()):
        raise BadRequest(f"{where} must be an integer, got {text[:40]!r}")
    return as_int_limit(int(text), where)


def id_str(value: object, where: str, *, allow_int: bool = True) -> str:
    """A point id as a string: an integer (not a boolean) or a string."""
    if isinstance(value, str):
        return value
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    expected = "an integer or a string" if allow_int else "a string"
    raise BadRequest(f"{where} must be {expected}, got {_kind(value)}")


def id_strs(value: object, where: str, *, allow_int: bool = True) -> list[str]:
    return [
        id_str(v, f"{where}[{i}]", allow_int=allow_int) for i, v in enumerate(as_list(value, where))
    ]


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def walk(value: object) -> Iterator[object]:
    """Every value inside ``value`` (depth-first, iterative)."""
    stack = [value]
    while stack:
        item = stack.pop()
        yield item
        if isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))


#: the filters ``op`` saw while one request is classified (``_run`` sets it)
_FILTERS: ContextVar[list[object] | None] = ContextVar("embedguard_filters", default=None)


def alias_target_ops(
    target: str, detail: str, *, database: str | None = None
) -> list[Operation]:
    """An alias is a second name for ``target``: every later search, read and
    write through the alias name reaches it, and policy globs would match the
    alias's name, not the target's. Pointing an alias at a collection is
    therefore also a bulk read and a bulk write of it, decided separately (as
    copying a collection is a bulk read of its source)."""
    return [
        op(action, collection=target, database=database, ids_known=False, bulk=True,
           detail=f"{detail}:target")
        for action in (ActionClass.READ, ActionClass.WRITE)
    ]


def guard_terms(terms: Iterable[object]) -> None:
    """Hand the masked-filter check more than the filters: what else makes the
    upstream answer by stored values (a keyword search's or a sort's
    properties, a model reading them, :class:`capture.types.ModelRead`). The
    operation is unchanged (no filter is present because of them)."""
    sink = _FILTERS.get()
    if sink is not None:
        sink.extend(terms)


def op(
    action: ActionClass,
    *,
    collection: str | None = None,
    database: str | None = None,
    ids: Iterable[str] = (),
    ids_known: bool = True,
    vector_count: int = 0,
    filters: Sequence[object] = (),
    limit: int | None = None,
    with_vectors: bool | None = None,
    bulk: bool = False,
    detail: str | None = None,
    filter_is_id_list: bool = False,
) -> Operation:
    """An Operation. A filter makes the affected ids unknown, unless the
    caller has proved the filter is exactly a primary-key list
    (``filter_is_id_list``)."""
    id_list = list(ids)
    if filters:
        sink = _FILTERS.get()
        if sink is not None:
            sink.extend(filters)
    return Operation(
        action=action,
        collection=collection,
        database=database,
        ids=id_list,
        ids_known=ids_known and (filter_is_id_list or not filters) and not bulk,
        vector_count=vector_count,
        filter_present=bool(filters),
        filter_sha256=filter_digest(filters),
        limit=limit,
        with_vectors=with_vectors,
        bulk=bulk,
        detail=detail,
    )


def static(
    action: ActionClass,
    detail: str,
    *,
    collection: str | None = None,
    ids_known: bool = True,
    user_data: tuple[str, ...] = (),
) -> Handler[object]:
    """A handler for an endpoint whose class does not depend on the body.

    ``collection`` names the path parameter holding the collection, or is a
    literal when it starts with ``=`` (``"=*"`` for "every collection").
    """

    def handler(_ctx: object, params: Mapping[str, str]) -> Result:
        coll: str | None = None
        if collection is not None:
            coll = collection[1:] if collection.startswith("=") else params[collection]
        return Result(
            [op(action, collection=coll, ids_known=ids_known, detail=detail)],
            user_data_paths=user_data,
        )

    return handler


def dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def header_lookup(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup (HttpRequest stores lower-case names,
    but be tolerant of callers that do not)."""
    value = headers.get(name.lower())
    if value is not None:
        return value
    lname = name.lower()
    for k, v in headers.items():
        if k.lower() == lname:
            return v
    return None
