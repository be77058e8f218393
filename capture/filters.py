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
  Each item of the deprecated ``/query`` ``queries[]`` may carry a ``filter`` that
  *replaces* the request-level one, so every item gets its own (or else the
  request-level) filter ANDed with the policy filter.
- **weaviate** -- ``/v1/search/{class}/{kind}`` and ``/v1/aggregate/{class}``
  (field ``where``), combined as ``{"operator": "And", "operands": [old, new]}``.
- **milvus** -- ``/v2/vectordb/entities/{search,query}`` (field ``filter``, a
  string); ``hybrid_search``/``advanced_search`` (each ``search[].filter``).
  Combined as ``(old) and (new)``.

An absent, null or empty filter is replaced by the policy filter.

The client's own filter must not be able to change what the combination means
(:class:`MalformedFilterError`, which the gateway answers with 400):

* A Milvus filter is text, so ``(old) and (new)`` holds only if ``old`` is one
  self-contained expression. Milvus' grammar binds ``and`` tighter than ``or``:
  ``team == "b") or (1 == 1`` would turn the result into ``(...) or ((1 == 1)
  and (new))``. :func:`milvus_expression_problem` scans it the way Milvus' lexer
  does (``Plan.g4``: string literals in single or double quotes, a backslash
  keeps the next character inside the literal, no line break inside one) and
  requires ``()``, ``[]`` and ``{}`` to nest and close, and every literal to end.
  The policy's own Milvus filter is held to the same rule, and may not contain a
  ``{name}`` template variable (the client's ``exprParams`` would set it).
* Milvus and Weaviate decode JSON with Go's ``encoding/json``, which matches keys
  to fields case-insensitively and lets the last one win: a body with ``filter``
  and ``FILTER`` would be filtered here and read unfiltered there. A key that
  folds onto the filter field, or onto a key on the way to it (``search``,
  ``searches``, ``query``, ``queries``, ``prefetch``), but is not it is refused,
  for every product.
* JSON filters (Qdrant, Chroma, Pinecone, Weaviate REST) are combined as data:
  the client's filter becomes one operand, so no value in it can reach the
  policy's operand. Weaviate GraphQL, where ``where:`` is text, is never
  rewritten (see below).

Everything else raises: reads by id (Qdrant retrieve, Pinecone fetch, Milvus
``get``) take no filter, Weaviate GraphQL would need a query rewrite, Qdrant
``with_lookup`` returns payloads from a second, unfiltered collection, and
deletes/updates are never rewritten (a Milvus delete with both ``id`` and
``filter`` deletes by filter, which would widen it).

A search **seeded by a record id** is refused too (:func:`seed_problem`): Qdrant
``query``/``nearest``/recommend/discover/context examples given as point ids
(in prefetch and batches too) and any ``lookup_from``, Pinecone query by
``id``, Weaviate ``near-object`` and ``moveTo``/``moveAwayFrom`` objects, Milvus
search by ``ids``. The database reads the seed record before it searches, and
the row filter only limits what comes back: the seed's existence (found or
not), and its vector through the scores, would leak from outside the filter.
Ids that only narrow the results (a ``has_id`` condition, Chroma ``ids``) are
ANDed with the filter and stay allowed.

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

from capture.classify._common import go_fold
from capture.types import Identity, Product

__all__ = [
    "TEMPLATE_NAMES",
    "FilterInjectionError",
    "JsonFilter",
    "MalformedFilterError",
    "ProductFilters",
    "check_template",
    "filter_target",
    "inject_filter",
    "inject_filters",
    "milvus_expression_problem",
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


class MalformedFilterError(FilterInjectionError):
    """The request's own filter, or the body around it, is such that ANDing a
    row filter into it could not be trusted to restrict it; the client must fix
    the request (the gateway answers 400)."""


# ------------------------------------------------------------ milvus expressions

_CLOSES: Final = {")": "(", "]": "[", "}": "{"}
#: what Milvus' lexer reads as a whole string literal (Plan.g4 StringLiteral and
#: RawStringLiteral: a backslash keeps any next character but a line break in
#: the literal), a quote that starts no complete literal, or a bracket
_MILVUS_TOKEN = re.compile(
    r""""(?:[^"\\\r\n]|\\[^\r\n])*"|'(?:[^'\\\r\n]|\\[^\r\n])*'|["'(){}\[\]]"""
)


def milvus_expression_problem(expr: str, *, templates: bool = True) -> str | None:
    """Why ``expr`` is not one self-contained Milvus expression, or None.

    Self-contained: outside string literals, every ``(``, ``[`` and ``{`` is
    closed, in order, and nothing is closed that was not opened; every string
    literal ends, on the line it starts. Then ``(expr)`` is a single operand
    whatever the expression says. ``templates=False`` also refuses ``{name}``
    template variables (their values come from the request's ``exprParams``).
    Positions are 1-based characters.
    """
    stack: list[tuple[str, int]] = []
    for m in _MILVUS_TOKEN.finditer(expr):
        tok, at = m.group(), m.start()
        if len(tok) > 1:
            continue  # a complete string literal
        if tok in "\"'":
            return _unterminated(expr, at)
        if tok in "([{":
            if tok == "{" and not templates:
                return (f"'{{' at character {at + 1} starts a Milvus template variable, "
                        "whose value the request's exprParams would choose")
            stack.append((tok, at))
            continue
        if not stack:
            return f"'{tok}' at character {at + 1} closes nothing that was opened"
        opener, opened_at = stack.pop()
        if opener != _CLOSES[tok]:
            return (f"'{tok}' at character {at + 1} does not close the '{opener}' "
                    f"at character {opened_at + 1}")
    if stack:
        opener, opened_at = stack[-1]
        return f"the '{opener}' at character {opened_at + 1} is never closed"
    return None


def _unterminated(expr: str, start: int) -> str:
    quote, i = expr[start], start + 1
    while i < len(expr):
        ch = expr[i]
        if ch in "\r\n" or (ch == "\\" and expr[i + 1 : i + 2] in ("\r", "\n")):
            return (f"the string literal at character {start + 1} runs into a line break "
                    f"at character {i + 1}; write it as \\n")
        i += 2 if ch == "\\" else 1
    return f"the string literal opened by {quote} at character {start + 1} is never closed"


def _check_client_expression(expr: str, where: str) -> None:
    problem = milvus_expression_problem(expr)
    if problem is not None:
        raise MalformedFilterError(
            f"{where} is not one self-contained Milvus expression: {problem}. The gateway "
            "must AND a row filter with it; send a single expression whose parentheses, "
            "brackets, braces and string literals all close"
        )


# ------------------------------------------------------------ JSON keys

def _check_keys(obj: Mapping[str, Any], name: str, where: str) -> None:
    """Refuse keys that a case-insensitive decoder would read as ``name``."""
    folded = go_fold(name)
    for key in obj:
        if isinstance(key, str) and key != name and go_fold(key) == folded:
            raise MalformedFilterError(
                f"{where} has the key {key!r}, which a case-insensitive JSON decoder "
                f"(Milvus and Weaviate use one) reads as {name!r}, past the row filter; "
                f"send it only as {name!r}"
            )


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
        # each placeholder becomes one literal: check the shape with a stand-in
        # of the same length, so that positions are the template's
        shape = _PLACEHOLDER.sub(_stand_in, spec)
        problem = milvus_expression_problem(shape, templates=False)
        if problem is not None:
            problems.append(f"the milvus filter must be one self-contained expression: {problem}")
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


def _stand_in(m: re.Match[str]) -> str:
    whole = m.group(0)
    if whole == "{{":
        return "{ "
    if whole == "}}":
        return " }"
    return '"' + "x" * (len(whole) - 2) + '"'


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
        out = _substitute(spec, lambda name: _milvus_literal(_identity_value(identity, name)))
        problem = milvus_expression_problem(out, templates=False)
        if problem is not None:  # check_template rules this out; never send it regardless
            raise FilterInjectionError(f"the rendered milvus row filter is malformed: {problem}")
        return out
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
    #: a top-level list whose items may carry a ``field`` that replaces the
    #: top-level one (Pinecone's deprecated ``queries[]``)
    overrides: str | None = None


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
        (re.compile(r"/query"), _Target(_TOP, "filter", overrides="queries")),
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


def _and(product: str, existing: Any, new: JsonFilter, where: str) -> JsonFilter:
    if product == "milvus":
        assert isinstance(new, str)
        if existing is None or (isinstance(existing, str) and not existing.strip()):
            return new
        if not isinstance(existing, str):
            raise MalformedFilterError(f"{where} must be a Milvus expression string")
        _check_client_expression(existing, where)
        return f"({existing}) and ({new})"
    if existing is None or existing == {}:
        return new
    if not isinstance(existing, dict):
        raise MalformedFilterError(f"{where} must be a JSON object")
    if product == "qdrant":
        return {"must": [existing, new]}
    if product == "weaviate":
        return {"operator": "And", "operands": [existing, new]}
    return {"$and": [existing, new]}  # chroma, pinecone


def _holders(root: list[Any], keys: tuple[str, ...]) -> list[tuple[Any, Any, str]]:
    """(parent, key, where) of each object that holds a filter, copying every
    container on the way so the caller can replace the holder without touching
    the original. ``root`` is a one-element list holding the body; ``where``
    names the holder in the body (``body.search[1]``)."""
    current: list[tuple[Any, Any, str]] = [(root, 0, "body")]
    for key in keys:
        nxt: list[tuple[Any, Any, str]] = []
        for parent, pkey, where in current:
            value = parent[pkey]
            if key == "[]":
                if not isinstance(value, list):
                    raise FilterInjectionError(f"{where} must be an array")
                copy_l = list(value)
                parent[pkey] = copy_l
                nxt.extend((copy_l, i, f"{where}[{i}]") for i in range(len(copy_l)))
            else:
                if not isinstance(value, dict):
                    raise FilterInjectionError(f"{where} must be an object")
                _check_keys(value, key, where)
                if value.get(key) is None:
                    raise FilterInjectionError(f"the request has no {key!r} to filter")
                copy_d = dict(value)
                parent[pkey] = copy_d
                nxt.append((copy_d, key, f"{where}.{key}"))
        current = nxt
    return current


def _is_id(value: Any) -> bool:
    """A record id where a query vector may stand: an integer or a string (a
    vector is a list, a sparse or named vector or a model input an object)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _qdrant_examples(value: Any, at: str) -> str | None:
    """Where a Qdrant query input (``query``, ``nearest``, examples) is an id."""
    if _is_id(value):
        return at
    if isinstance(value, list):
        for i, item in enumerate(value):
            if _is_id(item):
                return f"{at}[{i}]"
        return None
    if not isinstance(value, dict):
        return None
    # an example (nearest, target, a context pair's side) or a list of them
    # (recommend's positive/negative): an id, a vector, or a list of either
    for key in ("nearest", "target", "positive", "negative"):
        if key in value and (hit := _qdrant_examples(value[key], f"{at}.{key}")):
            return hit
    for key in ("recommend", "discover"):
        inner = value.get(key)
        if isinstance(inner, dict) and (hit := _qdrant_examples(inner, f"{at}.{key}")):
            return hit
    context = value.get("context")
    for i, pair in enumerate(context if isinstance(context, list) else [context]):
        if isinstance(pair, dict) and (hit := _qdrant_examples(pair, f"{at}.context[{i}]")):
            return hit
    return None


def _qdrant_seed(body: Mapping[str, Any], path: str) -> str | None:
    searches = body.get("searches")
    nodes: list[tuple[Any, str]] = (
        [(x, f"body.searches[{i}]") for i, x in enumerate(searches)]
        if isinstance(searches, list) else [(body, "body")])
    while nodes:
        node, at = nodes.pop()
        if not isinstance(node, Mapping):
            continue
        if node.get("lookup_from") is not None:
            return f"{at}.lookup_from"
        if "query" in node and (hit := _qdrant_examples(node["query"], f"{at}.query")):
            return hit
        if re.search(r"/points/(recommend|discover)", path):
            for key in ("positive", "negative", "target", "context"):
                if key in node and (hit := _qdrant_examples({key: node[key]}, at)):
                    return hit
        prefetch = node.get("prefetch")
        for i, item in enumerate(prefetch if isinstance(prefetch, list) else [prefetch]):
            if item is not None:
                nodes.append((item, f"{at}.prefetch[{i}]"))
    return None


def seed_problem(product: str, path: str, body: Mapping[str, Any]) -> str | None:
    """Where a search names a record id as its query input (see the module
    doc), or None."""
    if product == "qdrant":
        return _qdrant_seed(body, path)
    if product == "pinecone":
        if body.get("id") is not None:
            return "body.id"
        query = body.get("query")
        if isinstance(query, Mapping) and query.get("id") is not None:
            return "body.query.id"
        return None
    if product == "weaviate":
        if path.rstrip("/").endswith("/near-object"):
            return "body.id (near-object)"
        for move in ("moveTo", "moveAwayFrom"):
            spec = body.get(move)
            if isinstance(spec, Mapping) and spec.get("objects"):
                return f"body.{move}.objects"
        return None
    if product == "milvus":
        subs = body.get("search")
        for at, node in [("body", body), *((f"body.search[{i}]", x) for i, x in enumerate(
                subs if isinstance(subs, list) else []))]:
            if isinstance(node, Mapping) and node.get("ids") is not None:
                return f"{at}.ids"
    return None


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
    seed = seed_problem(product, path, body)
    if seed is not None:
        raise FilterInjectionError(
            f"the search is seeded by a record id ({seed}): the database reads that record "
            "before it searches, without the row filter, so its existence and its vector "
            "would show through the answer; send a query vector instead")
    render_filter(spec, identity, product)  # fail before copying anything

    def new() -> JsonFilter:
        # a fresh copy per place, so no two parts of the body share an object
        return render_filter(spec, identity, product)

    root: list[Any] = [dict(body)]
    holders: list[tuple[Any, Any, str]] = []
    for keys in target.holders:
        holders.extend(_holders(root, keys))
    for parent, key, where in holders:
        holder = parent[key]
        if not isinstance(holder, dict):
            raise FilterInjectionError(f"{where} must be an object")
        holder = dict(holder)
        parent[key] = holder
        if target.prefetch:
            _qdrant_prefetch(holder, product, new, where)
        _check_keys(holder, target.field, where)
        existing = holder.get(target.field)
        combined = _and(product, existing, new(), f"{where}.{target.field}")
        if target.overrides is not None:
            _overrides(holder, target, product, existing, new, where)
        holder[target.field] = combined
    out: dict[str, Any] = root[0]
    return out


def _overrides(holder: dict[str, Any], target: _Target, product: str, existing: Any,
               new: Callable[[], JsonFilter], where: str) -> None:
    """Filter each item of ``holder[target.overrides]``: an item's own filter
    replaces the holder's upstream, so each item gets its own filter, or else
    the holder's, ANDed with the row filter."""
    name = target.overrides
    assert name is not None
    _check_keys(holder, name, where)
    items = holder.get(name)
    if items is None:
        return
    if not isinstance(items, list):
        raise MalformedFilterError(f"{where}.{name} must be an array")
    copies: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        at = f"{where}.{name}[{i}]"
        if not isinstance(item, dict):
            raise MalformedFilterError(f"{at} must be an object")
        _check_keys(item, target.field, at)
        copy = dict(item)
        own = copy.get(target.field)
        copy[target.field] = _and(product, existing if own is None else own, new(),
                                  f"{at}.{target.field}")
        copies.append(copy)
    holder[name] = copies


def _qdrant_prefetch(
    holder: dict[str, Any], product: str, new: Callable[[], JsonFilter], where: str
) -> None:
    stack = [(holder, where)]
    while stack:
        node, at = stack.pop()
        _check_keys(node, "prefetch", at)
        prefetch = node.get("prefetch")
        if prefetch is None:
            continue
        items = prefetch if isinstance(prefetch, list) else [prefetch]
        copies: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            item_at = f"{at}.prefetch" + (f"[{i}]" if isinstance(prefetch, list) else "")
            if not isinstance(item, dict):
                raise FilterInjectionError("prefetch must be an object or a list of objects")
            _check_keys(item, "filter", item_at)
            copy = dict(item)
            copy["filter"] = _and(product, copy.get("filter"), new(), f"{item_at}.filter")
            copies.append(copy)
            stack.append((copy, item_at))
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

