"""Row-level security for vector search: AND a policy filter into a request body.

Pure: a parsed JSON body in, a new body out. The input is never modified (the
output shares unmodified sub-objects with it). Anything that cannot be filtered
safely raises :class:`FilterInjectionError`; the caller must then refuse the
request, never forward it unfiltered.

Where the filter goes (``shared/vector-db-apis.md`` section 8)
--------------------------------------------------------------
- **qdrant** -- ``C/points/{query,search,recommend,discover}``, their ``/batch``
  (each ``searches[]``) and ``/groups``, ``C/points/scroll``, ``C/points/count``,
  ``C/facet``, ``C/points/search/matrix/{pairs,offsets}`` and the shard-local
  scroll and count. Field ``filter`` and every ``prefetch[].filter`` (nested
  prefetches too), combined as ``{"must": [old, new]}``.
- **chroma** -- ``.../collections/{id}/{query,get}`` and ``.../conditional/get``
  (field ``where``); ``.../search`` (each ``searches[].filter``). Combined as
  ``{"$and": [old, new]}``.
- **pinecone** -- ``/query`` and ``/vectors/fetch_by_metadata`` (field ``filter``);
  ``/records/namespaces/{ns}/search`` (``query.filter``). ``{"$and": [old, new]}``.
- **weaviate** -- ``/v1/search/{class}/{kind}`` and ``/v1/aggregate/{class}``
  (field ``where``), combined as ``{"operator": "And", "operands": [old, new]}``.
- **milvus** -- ``/v2/vectordb/entities/{search,query}`` (field ``filter``, a
  string); ``hybrid_search``/``advanced_search`` (each ``search[].filter``).
  Combined as ``(old) and (new)``.

An absent, null or empty filter is replaced by the policy filter.

Everything else raises: reads by id (Qdrant retrieve, Pinecone fetch, Milvus
``get``) take no filter, Weaviate GraphQL would need a query rewrite, Qdrant
``with_lookup`` returns payloads from a second, unfiltered collection, and
deletes/updates are never rewritten (a Milvus delete with both ``id`` and
``filter`` deletes by filter, which would widen it). Qdrant ``lookup_from`` is
allowed: it only supplies query vectors for the ids the request names.

Templates
---------
A policy filter may name the caller: ``{subject}``, ``{issuer}``,
``{client_id}`` and ``{groups}``; ``{{`` and ``}}`` are literal braces.

* In JSON filters (every product but Milvus) a string that is exactly
  ``"{groups}"`` becomes the list of the caller's groups (sorted); a string that
  is exactly one placeholder becomes that value; placeholders inside a longer
  string are substituted as text (``{groups}`` may not be embedded). Keys are
  not templated. Values are JSON data, so no value can change the filter's
  structure.
* In Milvus expressions each placeholder expands to a complete, escaped literal:
  ``{subject}`` to ``"alice"`` and ``{groups}`` to ``["a", "b"]``. Write them
  unquoted: ``owner == {subject} or team in {groups}``. Values that contain
  braces or control characters are refused (Milvus reads ``{name}`` as its own
  template syntax).

A missing identity value (no ``client_id``) raises rather than matching on an
empty string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias

from capture.types import Identity, Product

__all__ = [
    "TEMPLATE_NAMES",
    "FilterInjectionError",
    "JsonFilter",
    "ProductFilters",
    "check_template",
    "filter_target",
    "inject_filter",
    "inject_filters",
    "render_filter",
]

#: A product's filter: a JSON object (Qdrant, Chroma, Pinecone, Weaviate) or a
#: Milvus boolean expression.
JsonFilter: TypeAlias = dict[str, Any] | str
TEMPLATE_NAMES: Final = ("subject", "issuer", "client_id", "groups")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MILVUS_UNSAFE = re.compile(r"[{}\x00-\x1f\x7f]")
MAX_TEMPLATE_DEPTH: Final = 32


class FilterInjectionError(ValueError):
    """The filter cannot be added; the request must be refused."""


class ProductFilters(Protocol):
    """A policy's per-product row filter (``capture.policy.RowFilter``)."""

    def for_product(self, product: Product) -> JsonFilter | None: ...


# ------------------------------------------------------------------- templates


def check_template(spec: object, product: Product) -> list[str]:
    """Problems with a policy filter for ``product`` (empty when it is fine)."""
    problems: list[str] = []
    if product == "milvus":
        if not isinstance(spec, str) or not spec.strip():
            return ["the milvus filter must be a non-empty expression string"]
        for name in _names(spec, problems):
            if re.search(r"[\"']\{" + name + r"\}[\"']", spec):
                problems.append(
                    f"write {{{name}}} without quotes; it expands to a quoted literal"
                )
        return problems
    if not isinstance(spec, dict) or not spec:
        return [f"the {product} filter must be a non-empty mapping"]
    stack: list[tuple[object, int]] = [(spec, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_TEMPLATE_DEPTH:
            problems.append(f"the filter nests deeper than {MAX_TEMPLATE_DEPTH} levels")
            break
        if isinstance(value, dict):
            for key, child in value.items():
                if not isinstance(key, str):
                    problems.append(f"filter key {key!r} is not a string")
                stack.append((child, depth + 1))
        elif isinstance(value, list):
            stack.extend((child, depth + 1) for child in value)
        elif isinstance(value, str):
            names = _names(value, problems)
            if "groups" in names and value != "{groups}":
                problems.append(
                    "{groups} must be a whole value (it becomes a list), "
                    f"not part of {value!r}"
                )
        elif value is not None and not isinstance(value, bool | int | float):
            problems.append(f"filter value {value!r} is not JSON")
    return problems


def _names(template: str, problems: list[str]) -> list[str]:
    names: list[str] = []
    for m in _PLACEHOLDER.finditer(template):
        name = m.group(1)
        if name is None:
            continue
        if name not in TEMPLATE_NAMES:
            problems.append(
                f"unknown placeholder {{{name}}} — use one of "
                + ", ".join("{" + n + "}" for n in TEMPLATE_NAMES)
                + " (write {{ and }} for literal braces)"
            )
        else:
            names.append(name)
    return names


def _identity_value(identity: Identity, name: str) -> str | list[str]:
    if name == "groups":
        return sorted(identity.groups)
    value = {"subject": identity.subject, "issuer": identity.issuer,
             "client_id": identity.client_id}.get(name)
    if value is None or value == "":
        raise FilterInjectionError(
            f"the row filter needs {{{name}}} but the token has none; refusing the request"
        )
    return value


def _substitute(template: str, render: Callable[[str], str]) -> str:
    def repl(m: re.Match[str]) -> str:
        whole = m.group(0)
        if whole in ("{{", "}}"):
            return whole[0]
        name = m.group(1)
        if name not in TEMPLATE_NAMES:
            raise FilterInjectionError(f"unknown placeholder {whole} in the row filter")
        return render(name)

    return _PLACEHOLDER.sub(repl, template)


def _milvus_literal(value: str | list[str]) -> str:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if _MILVUS_UNSAFE.search(item):
            raise FilterInjectionError(
                "an identity value contains braces or control characters, which a Milvus "
                "filter cannot carry safely; refusing the request"
            )
    quoted = [json.dumps(item, ensure_ascii=False) for item in items]
    return "[" + ", ".join(quoted) + "]" if isinstance(value, list) else quoted[0]


def render_filter(spec: JsonFilter, identity: Identity, product: Product) -> JsonFilter:
    """The policy filter with the caller's values filled in."""
    problems = check_template(spec, product)
    if problems:
        raise FilterInjectionError("bad row filter: " + "; ".join(problems))
    if isinstance(spec, str):
        return _substitute(spec, lambda name: _milvus_literal(_identity_value(identity, name)))
    return _render_json(spec, identity)  # type: ignore[no-any-return]


def _render_json(spec: Any, identity: Identity) -> Any:
    def text(name: str) -> str:
        value = _identity_value(identity, name)
        assert isinstance(value, str)
        return value

    def leaf(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        whole = _PLACEHOLDER.fullmatch(value)
        if whole is not None and whole.group(1) is not None:
            return _identity_value(identity, whole.group(1))
        return _substitute(value, text)

    # iterative copy: the spec is policy data, small, but never trust depth
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(spec, root, 0)]
    while stack:
        value, parent, key = stack.pop()
        if isinstance(value, dict):
            new_d: dict[str, Any] = dict.fromkeys(value)  # keeps the key order
            parent[key] = new_d
            stack.extend((child, new_d, k) for k, child in value.items())
        elif isinstance(value, list):
            new_l: list[Any] = [None] * len(value)
            parent[key] = new_l
            stack.extend((child, new_l, i) for i, child in enumerate(value))
        else:
            parent[key] = leaf(value)
    return root[0]


# ----------------------------------------------------------------- where to put it


@dataclass(frozen=True)
class _Target:
    """Where a product keeps the filter in one endpoint's body."""

    #: dotted keys to the objects holding the filter; ``[]`` = each element
    holders: tuple[tuple[str, ...], ...]
    field: str
    #: Qdrant: also every (nested) ``prefetch`` of each holder
    prefetch: bool = False
    #: body keys whose presence makes the request unfilterable, with why
    forbidden: tuple[tuple[str, str], ...] = ()


_TOP: Final = ((),)
_QDRANT_C = r"/collections/[^/]+"
_CHROMA_C = r"/api/v2/tenants/[^/]+/databases/[^/]+/collections/[^/]+"
_NO_LOOKUP = (("with_lookup", "with_lookup returns payloads from another collection unfiltered"),)

_TABLES: Final[dict[str, list[tuple[re.Pattern[str], _Target]]]] = {
    "qdrant": [
        (re.compile(_QDRANT_C + r"/points/(query|search|recommend|discover)"),
         _Target(_TOP, "filter", prefetch=True)),
        (re.compile(_QDRANT_C + r"/points/(query|search|recommend|discover)/batch"),
         _Target((("searches", "[]"),), "filter", prefetch=True)),
        (re.compile(_QDRANT_C + r"/points/(query|search|recommend)/groups"),
         _Target(_TOP, "filter", prefetch=True, forbidden=_NO_LOOKUP)),
        (re.compile(_QDRANT_C + r"(/shards/[^/]+)?/points/(scroll|count)"),
         _Target(_TOP, "filter")),
        (re.compile(_QDRANT_C + r"/facet"), _Target(_TOP, "filter")),
        (re.compile(_QDRANT_C + r"/points/search/matrix/(pairs|offsets)"),
         _Target(_TOP, "filter")),
    ],
    "chroma": [
        (re.compile(_CHROMA_C + r"/(query|get|conditional/get)"), _Target(_TOP, "where")),
        (re.compile(_CHROMA_C + r"/search"), _Target((("searches", "[]"),), "filter")),
    ],
    "pinecone": [
        (re.compile(r"/query"), _Target(_TOP, "filter")),
        (re.compile(r"/vectors/fetch_by_metadata"), _Target(_TOP, "filter")),
        (re.compile(r"/records/namespaces/[^/]+/search"), _Target((("query",),), "filter")),
    ],
    "weaviate": [
        (re.compile(r"/v1/search/[^/]+/[^/]+"), _Target(_TOP, "where")),
        (re.compile(r"/v1/aggregate/[^/]+"), _Target(_TOP, "where")),
    ],
    "milvus": [
        (re.compile(r"/v2/vectordb/entities/(search|query)"), _Target(_TOP, "filter")),
        (re.compile(r"/v2/vectordb/entities/(hybrid_search|advanced_search)"),
         _Target((("search", "[]"),), "filter")),
    ],
}


def _find_target(product: str, path: str) -> _Target | None:
    norm = "/" + path.split("?", 1)[0].strip("/")
    for pattern, target in _TABLES.get(product, []):
        if pattern.fullmatch(norm):
            return target
    return None


def filter_target(product: str, path: str) -> str | None:
    """Why a row filter cannot go into ``path`` for ``product``, or None if it can.

    Used by policy evaluation to deny early with a clear reason; the body may
    still make injection fail (see :func:`inject_filter`)."""
    if product not in _TABLES:
        return f"no row filter support for product {product!r}"
    if _find_target(product, path) is None:
        return f"{path} takes no row filter (reads by id, GraphQL and writes cannot be filtered)"
    return None


# --------------------------------------------------------------------- combining


def _and(product: str, existing: Any, new: JsonFilter) -> JsonFilter:
    if product == "milvus":
        assert isinstance(new, str)
        if existing is None or (isinstance(existing, str) and not existing.strip()):
            return new
        if not isinstance(existing, str):
            raise FilterInjectionError("the request's filter is not a string")
        return f"({existing}) and ({new})"
    if existing is None or existing == {}:
        return new
    if not isinstance(existing, dict):
        raise FilterInjectionError("the request's filter is not an object")
    if product == "qdrant":
        return {"must": [existing, new]}
    if product == "weaviate":
        return {"operator": "And", "operands": [existing, new]}
    return {"$and": [existing, new]}  # chroma, pinecone


def _holders(root: list[Any], keys: tuple[str, ...]) -> list[tuple[Any, Any]]:
    """(parent, key) of each object that holds a filter, copying every container
    on the way so the caller can replace the holder without touching the
    original. ``root`` is a one-element list holding the body."""
    current: list[tuple[Any, Any]] = [(root, 0)]
    for key in keys:
        nxt: list[tuple[Any, Any]] = []
        for parent, pkey in current:
            value = parent[pkey]
            if key == "[]":
                if not isinstance(value, list):
                    raise FilterInjectionError("expected an array in the request body")
                copy_l = list(value)
                parent[pkey] = copy_l
                nxt.extend((copy_l, i) for i in range(len(copy_l)))
            else:
                if not isinstance(value, dict):
                    raise FilterInjectionError("expected an object in the request body")
                if value.get(key) is None:
                    raise FilterInjectionError(f"the request has no {key!r} to filter")
                copy_d = dict(value)
                parent[pkey] = copy_d
                nxt.append((copy_d, key))
        current = nxt
    return current


def inject_filter(
    product: Product,
    path: str,
    body: Mapping[str, Any],
    filter_spec: ProductFilters | JsonFilter,
    identity: Identity,
) -> dict[str, Any]:
    """``body`` with the policy's row filter ANDed into every filter it has.

    ``filter_spec`` is either the product's filter (a JSON object, or a Milvus
    expression) or a policy ``RowFilter`` that holds one per product. Raises
    :class:`FilterInjectionError` when the endpoint or body cannot be filtered,
    when the policy has no filter for ``product``, or when a placeholder has no
    value.
    """
    if isinstance(filter_spec, dict | str):
        spec: JsonFilter | None = filter_spec
    else:
        spec = filter_spec.for_product(product)
    if spec is None:
        raise FilterInjectionError(f"the policy's row filter has no {product} form")
    target = _find_target(product, path)
    if target is None:
        raise FilterInjectionError(
            filter_target(product, path) or f"{path} takes no row filter"
        )
    if not isinstance(body, Mapping):
        raise FilterInjectionError("the request body is not a JSON object")
    for key, why in target.forbidden:
        if body.get(key) is not None:
            raise FilterInjectionError(f"{why}; refusing the request")
    render_filter(spec, identity, product)  # fail before copying anything

    def new() -> JsonFilter:
        # a fresh copy per place, so no two parts of the body share an object
        return render_filter(spec, identity, product)

    root: list[Any] = [dict(body)]
    holders: list[tuple[Any, Any]] = []
    for keys in target.holders:
        holders.extend(_holders(root, keys))
    for parent, key in holders:
        holder = parent[key]
        if not isinstance(holder, dict):
            raise FilterInjectionError("expected an object in the request body")
        holder = dict(holder)
        parent[key] = holder
        if target.prefetch:
            _qdrant_prefetch(holder, product, new)
        holder[target.field] = _and(product, holder.get(target.field), new())
    out: dict[str, Any] = root[0]
    return out


def _qdrant_prefetch(
    holder: dict[str, Any], product: str, new: Callable[[], JsonFilter]
) -> None:
    stack = [holder]
    while stack:
        node = stack.pop()
        prefetch = node.get("prefetch")
        if prefetch is None:
            continue
        items = prefetch if isinstance(prefetch, list) else [prefetch]
        copies: list[dict[str, Any]] = []
        for item in items:
            if not isinstance(item, dict):
                raise FilterInjectionError("prefetch must be an object or a list of objects")
            copy = dict(item)
            copy["filter"] = _and(product, copy.get("filter"), new())
            copies.append(copy)
            stack.append(copy)
        node["prefetch"] = copies if isinstance(prefetch, list) else copies[0]


def inject_filters(
    product: Product,
    path: str,
    body: Mapping[str, Any],
    filter_specs: Iterable[ProductFilters | JsonFilter],
    identity: Identity,
) -> dict[str, Any]:
    """Apply several row filters (one per policy rule); each one is ANDed in."""
    if not isinstance(body, Mapping):
        raise FilterInjectionError("the request body is not a JSON object")
    out = dict(body)
    for spec in filter_specs:
        out = inject_filter(product, path, out, spec, identity)
    return out

