"""Weaviate GraphQL (``POST /v1/graphql`` and ``/v1/graphql/batch``).

Parsed with graphql-core (vector-db-apis.md §5, "GraphQL classification
rules"): the selected operation's top-level ``Get`` / ``Aggregate`` /
``Explore`` fields and their class fields are walked, with variables
substituted and fragments expanded. Weaviate has no mutations or
subscriptions, so those are refused. Response paths use the aliases the
query gives, since that is where the data appears in the response.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import graphql
from graphql.language import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
)
from graphql.pyutils import Undefined
from graphql.utilities import value_from_ast_untyped

from capture.classify._common import (
    BadRequest,
    Result,
    as_int_limit,
    as_obj,
    as_str,
    dedupe,
    op,
    walk,
)
from capture.types import ActionClass, Operation

__all__ = [
    "beacon_id",
    "class_name",
    "graphql_batch_result",
    "graphql_result",
    "weaviate_filter_ids",
]

_MAX_TOKENS = 50_000
_MAX_FRAGMENT_DEPTH = 16
_PARSE_KW: dict[str, object] = (
    {"max_tokens": _MAX_TOKENS}
    if "max_tokens" in inspect.signature(graphql.parse).parameters
    else {}
)
_SEARCH_ARGS = frozenset({"hybrid", "bm25", "ask", "groupBy"})
_ID_VALUE_KEYS = ("valueText", "valueString", "valueTextArray", "valueStringArray")


def class_name(name: str) -> str:
    """Weaviate capitalises class names; compare on that form."""
    return name[:1].upper() + name[1:]


def weaviate_filter_ids(where: object) -> list[str]:
    """Ids named by ``where`` conditions on ``path: ["id"]``."""
    ids: list[str] = []
    for node in walk(where):
        if not isinstance(node, dict):
            continue
        path = node.get("path")
        if path not in (["id"], ["_id"], "id"):
            continue
        for key in _ID_VALUE_KEYS:
            value = node.get(key)
            if isinstance(value, str):
                ids.append(value)
            elif isinstance(value, list):
                ids.extend(v for v in value if isinstance(v, str))
    return ids


def beacon_id(beacon: object, where: str) -> tuple[str | None, str]:
    """(class or None, uuid) of ``weaviate://localhost/[Class/]uuid[/prop]``."""
    text = as_str(beacon, where)
    if not text.startswith("weaviate://"):
        raise BadRequest(f"{where} {text[:80]!r} is not a weaviate:// beacon")
    parts = text[len("weaviate://") :].split("/")
    if len(parts) == 2:
        return None, parts[1]
    if len(parts) in (3, 4):
        return class_name(parts[1]), parts[2]
    raise BadRequest(f"{where} {text[:80]!r} is not a weaviate:// beacon")


@dataclass
class _Out:
    ops: list[Operation] = field(default_factory=list)
    response_ids: list[str] = field(default_factory=list)
    user_data: list[str] = field(default_factory=list)
    vectors: list[str] = field(default_factory=list)


def graphql_result(body: object, where: str) -> Result:
    out = _Out()
    _request(body, where, "data", out)
    return _result(out)


def graphql_batch_result(body: object, where: str) -> Result:
    items = body if isinstance(body, list) else None
    if items is None:
        raise BadRequest(f"{where} must be a JSON array of GraphQL requests")
    if not items:
        raise BadRequest(f"{where} is empty")
    out = _Out()
    for i, item in enumerate(items):
        _request(item, f"{where}[{i}]", "[].data", out)
    return _result(out)


def _result(out: _Out) -> Result:
    return Result(
        out.ops,
        response_ids=dedupe(out.response_ids),
        user_data_paths=dedupe(out.user_data),
        vector_paths=dedupe(out.vectors),
    )


def _request(body: object, where: str, data_root: str, out: _Out) -> None:
    req = as_obj(body, where)
    text = as_str(req.get("query"), f"{where}.query")
    variables_raw = req.get("variables")
    variables = {} if variables_raw is None else as_obj(variables_raw, f"{where}.variables")
    op_name = req.get("operationName")
    if op_name is not None:
        op_name = as_str(op_name, f"{where}.operationName")
    try:
        doc = graphql.parse(text, no_location=True, **_PARSE_KW)  # type: ignore[arg-type]
    except graphql.GraphQLError as exc:
        raise BadRequest(f"{where}.query is not valid GraphQL: {exc.message[:160]}") from None
    operation, fragments = _select(doc, op_name, where)
    if operation.operation != OperationType.QUERY:
        raise BadRequest(
            f"{where}.query is a GraphQL {operation.operation.value}; Weaviate only serves queries"
        )
    walker = _Walker(fragments, variables, where)
    for top in walker.fields(operation.selection_set):
        walker.top_level(top, data_root, out)


def _select(
    doc: DocumentNode, op_name: str | None, where: str
) -> tuple[OperationDefinitionNode, dict[str, FragmentDefinitionNode]]:
    operations: list[OperationDefinitionNode] = []
    fragments: dict[str, FragmentDefinitionNode] = {}
    for d in doc.definitions:
        if isinstance(d, OperationDefinitionNode):
            operations.append(d)
        elif isinstance(d, FragmentDefinitionNode):
            fragments[d.name.value] = d
        else:
            raise BadRequest(f"{where}.query contains a type-system definition")
    if op_name is not None:
        for o in operations:
            if o.name is not None and o.name.value == op_name:
                return o, fragments
        raise BadRequest(f"{where}.operationName {op_name[:60]!r} names no operation")
    if len(operations) != 1:
        raise BadRequest(f"{where}.query has {len(operations)} operations and no operationName")
    return operations[0], fragments


class _Walker:
    def __init__(
        self,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, object],
        where: str,
    ) -> None:
        self.fragments = fragments
        self.variables = dict(variables)
        self.where = where

    def fields(self, sel: SelectionSetNode | None, depth: int = 0) -> Iterator[FieldNode]:
        """Fields of a selection set with fragments expanded."""
        if sel is None:
            return
        if depth > _MAX_FRAGMENT_DEPTH:
            raise BadRequest(
                f"{self.where}.query nests fragments deeper than {_MAX_FRAGMENT_DEPTH} levels"
            )
        for s in sel.selections or ():
            if isinstance(s, FieldNode):
                yield s
            elif isinstance(s, InlineFragmentNode):
                yield from self.fields(s.selection_set, depth + 1)
            elif isinstance(s, FragmentSpreadNode):
                frag = self.fragments.get(s.name.value)
                if frag is None:
                    raise BadRequest(
                        f"{self.where}.query spreads unknown fragment {s.name.value[:60]!r}"
                    )
                yield from self.fields(frag.selection_set, depth + 1)

    def args(self, f: FieldNode) -> dict[str, object]:
        out: dict[str, object] = {}
        for a in f.arguments or ():
            value = value_from_ast_untyped(a.value, self.variables)
            for node in walk(value):
                if node is Undefined:
                    raise BadRequest(
                        f"{self.where}: argument {a.name.value!r} of "
                        f"{f.name.value!r} uses a variable that is not provided"
                    )
            out[a.name.value] = value
        return out

    def top_level(self, f: FieldNode, root: str, out: _Out) -> None:
        name = f.name.value
        key = f.alias.value if f.alias else name
        if name in ("Get", "Aggregate"):
            classes = list(self.fields(f.selection_set))
            if not classes:
                raise BadRequest(f"{self.where}: {name} selects no class")
            for c in classes:
                self.class_field(name, c, f"{root}.{key}", out)
        elif name == "Explore":
            args = self.args(f)
            ids, vectors = _near_inputs(args)
            out.ops.append(
                op(
                    ActionClass.SEARCH,
                    collection="*",
                    ids=ids,
                    ids_known=False,
                    vector_count=vectors,
                    limit=as_int_limit(args.get("limit"), "Explore.limit"),
                    detail="graphql.Explore",
                )
            )
            out.response_ids.append(f"{root}.{key}[].beacon")
        elif name in ("__schema", "__type", "__typename"):
            out.ops.append(op(ActionClass.SCHEMA, detail=f"graphql.{name}"))
        else:
            raise BadRequest(
                f"{self.where}: unrecognised top-level GraphQL field "
                f"{name[:60]!r} (expected Get, Aggregate or Explore)"
            )

    def class_field(self, kind: str, c: FieldNode, root: str, out: _Out) -> None:
        if c.name.value.startswith("__"):
            return  # __typename inside Get/Aggregate carries no data
        cls = class_name(c.name.value)
        base = f"{root}.{c.alias.value if c.alias else c.name.value}[]"
        args = self.args(c)
        ids, vectors = _near_inputs(args)
        filters: list[object] = []
        where_arg = args.get("where")
        if where_arg is not None:
            filters.append(where_arg)
            ids.extend(weaviate_filter_ids(where_arg))
        tenant = args.get("tenant")
        database = tenant if isinstance(tenant, str) else None
        lw = f"{kind}.{cls}"
        limit = as_int_limit(args.get("limit", args.get("objectLimit")), f"{lw}.limit")
        with_vectors = False
        generate = False
        for prop in self.fields(c.selection_set):
            pkey = prop.alias.value if prop.alias else prop.name.value
            if prop.name.value == "_additional":
                for extra in self.fields(prop.selection_set):
                    ename = extra.name.value
                    ekey = extra.alias.value if extra.alias else ename
                    if ename in ("vector", "vectors"):
                        with_vectors = True
                        out.vectors.append(f"{base}._additional.{ekey}")
                    elif ename == "generate":
                        generate = True
                        out.user_data.append(f"{base}._additional.{ekey}")
            elif prop.name.value.startswith("_"):
                continue
            elif kind == "Get":
                out.user_data.append(f"{base}.{pkey}")
            else:
                for sub in self.fields(prop.selection_set):
                    skey = sub.alias.value if sub.alias else sub.name.value
                    if sub.name.value == "topOccurrences":
                        out.user_data.append(f"{base}.{pkey}.{skey}[].value")
                    elif prop.name.value == "groupedBy" and sub.name.value == "value":
                        out.user_data.append(f"{base}.{pkey}.{skey}")
        if kind == "Get":
            search = any(k.startswith("near") or k in _SEARCH_ARGS for k in args)
            action = ActionClass.SEARCH if search else ActionClass.READ
            out.response_ids.append(f"{base}._additional.id")
        else:
            action = ActionClass.READ
        detail = f"graphql.{kind}" + (".generate" if generate else "")
        out.ops.append(
            op(
                action,
                collection=cls,
                database=database,
                ids=dedupe(ids),
                ids_known=False,
                vector_count=vectors,
                filters=filters,
                limit=limit,
                with_vectors=with_vectors,
                detail=detail,
            )
        )


def _near_inputs(args: Mapping[str, object]) -> tuple[list[str], int]:
    """Ids and raw vectors in near*/hybrid arguments."""
    ids: list[str] = []
    vectors = 0
    for name, value in args.items():
        if not isinstance(value, dict):
            continue
        if name == "nearObject":
            if isinstance(value.get("id"), str):
                ids.append(value["id"])
            if value.get("beacon") is not None:
                ids.append(beacon_id(value["beacon"], "nearObject.beacon")[1])
        if name == "nearText":
            for move in ("moveTo", "moveAwayFrom"):
                mv = value.get(move)
                objs = mv.get("objects") if isinstance(mv, dict) else None
                for o in objs if isinstance(objs, list) else []:
                    if isinstance(o, dict) and isinstance(o.get("id"), str):
                        ids.append(o["id"])
                    elif isinstance(o, dict) and o.get("beacon") is not None:
                        ids.append(beacon_id(o["beacon"], f"nearText.{move}.beacon")[1])
        if name == "nearVector" and (
            value.get("vector") is not None or value.get("vectorPerTarget") is not None
        ):
            vectors += 1
        if name == "hybrid":
            if value.get("vector") is not None:
                vectors += 1
            nv = value.get("searches")
            if isinstance(nv, dict) and isinstance(nv.get("nearVector"), dict):
                vectors += 1
    return ids, vectors
