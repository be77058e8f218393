"""Weaviate GraphQL (``POST /v1/graphql`` and ``/v1/graphql/batch``).

Parsed with graphql-core (vector-db-apis.md §5, "GraphQL classification
rules"): the selected operation's top-level ``Get`` / ``Aggregate`` /
``Explore`` fields and their class fields are walked, with variables
substituted and fragments expanded. Weaviate has no mutations or
subscriptions, so those are refused. Response paths use the aliases the
query gives, since that is where the data appears in the response.

Aliases also rename the keys that masking by field name looks for
(``{ s: salary }`` answers ``{"s": ...}``), so every alias in the query is
listed in ``field_aliases`` as (response key, field name), at any depth and
through fragments; the masker masks a renamed key as the field it selects.
Two renames are refused because they would pass user data off as an object's
metadata: a field aliased ``_additional``, and a field other than ``id``
aliased ``id`` inside ``_additional`` (``_additional.id`` is a record id,
which masking leaves alone).

Inside a class, ``_additional`` holds the object's id (a response id), its
vectors, and everything else Weaviate adds (generated text, answers, group
hits, ...), which is user data. Cross-references are lists of objects that
carry their own ``_additional``: their ids and vectors are listed as well, so
that they are kept and stripped as the top-level object's are.

Aggregates and groups answer a property's values under other keys than the
property's own, where masking it by name would not look: ``Aggregate { Doc {
salary { minimum topOccurrences { value } } } }`` answers
``{"salary": {"minimum": ..., "topOccurrences": [{"value": ...}]}}``, and a
``groupBy`` answers the grouped property's value as ``groupedBy.value``. Each
such location is listed in ``field_aliases`` as (response path, property
name), under whatever aliases the query gives, so that masking the property
by name masks it too (see capture/types.py). What an aggregate of a masked
property may still show is chosen so as to reveal no value of it:

* ``count`` (how many objects have the property) and ``type`` (its data
  type), and ``occurs`` in ``topOccurrences`` (how many objects share a value
  that is itself masked). These say no more than a ``Get`` does, which masks
  a value but leaves a missing one ``null``.
* Everything else is masked: ``topOccurrences.value``, ``minimum``,
  ``maximum``, ``median`` and ``mode`` (each is some object's value), ``mean``
  and ``sum`` (an object's value, when a ``where`` leaves one object),
  ``totalTrue``/``totalFalse``/``percentageTrue``/``percentageFalse`` (the same
  for booleans), ``pointingTo``, and any field Weaviate adds later.

A ``groupBy`` on a path through a masked property masks ``groupedBy.value``
(``path`` only echoes the request). A ``where`` filter on a masked property
could still confirm a guessed value through counts; masking responses cannot
prevent that, so the gateway refuses such filters (capture/filter_guard.py).
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
    guard_terms,
    op,
    walk,
)
from capture.types import ActionClass, ModelRead, Operation

__all__ = [
    "beacon_id",
    "class_name",
    "graphql_batch_result",
    "graphql_result",
    "property_terms",
    "ranking_terms",
    "weaviate_filter_ids",
]

_MAX_TOKENS = 50_000
_MAX_FRAGMENT_DEPTH = 16
#: fields visited per request (fragments expand, so a small query can name many)
_MAX_FIELDS = 20_000
_PARSE_KW: dict[str, object] = (
    {"max_tokens": _MAX_TOKENS}
    if "max_tokens" in inspect.signature(graphql.parse).parameters
    else {}
)
_SEARCH_ARGS = frozenset({"hybrid", "bm25", "ask", "groupBy"})
#: ``_additional`` fields a model upstream computes from the stored properties
_MODEL_ADDITIONAL = frozenset({"generate", "summary", "answer", "rerank"})
#: ``_additional`` fields that hold only numbers Weaviate computes; the others
#: (generate, answer, summary, group, rerank, explainScore, ...) carry user
#: data, modules add more, so any other is treated as user data
_ADDITIONAL_SCALARS = frozenset(
    {"distance", "certainty", "score", "creationTimeUnix", "lastUpdateTimeUnix", "isConsistent"}
)
_ID_VALUE_KEYS = ("valueText", "valueString", "valueTextArray", "valueStringArray")
#: aggregate fields of a property that reveal none of its values (see the
#: module docstring); every other one is masked with the property
_AGGREGATE_SAFE = frozenset({"count", "type", "__typename"})
_OCCURRENCE_SAFE = frozenset({"occurs", "__typename"})


def ranking_terms(props: object) -> list[dict[str, list[str]]]:
    """A keyword search's ``properties`` as ``{"path": [...]}`` filter terms
    (a ``^2`` boost dropped)."""
    if not isinstance(props, list):
        return []
    return [{"path": [p.split("^", 1)[0]]} for p in props if isinstance(p, str)]


def property_terms(args: Mapping[str, object]) -> list[dict[str, list[str]]]:
    """The properties a search ranks or orders by, as ``{"path": [...]}``
    filter terms (what the masked-filter check reads): ``bm25``/``hybrid``/
    ``ask`` ``properties`` (a ``^2`` boost dropped) and ``sort`` paths."""
    out: list[dict[str, list[str]]] = []
    for arg in ("bm25", "hybrid", "ask"):
        spec = args.get(arg)
        if isinstance(spec, Mapping):
            out += ranking_terms(spec.get("properties"))
    sort = args.get("sort")
    for s in sort if isinstance(sort, list) else [sort] if sort is not None else []:
        path = s.get("path") if isinstance(s, Mapping) else None
        if isinstance(path, list):
            out.append({"path": [p for p in path if isinstance(p, str)]})
        elif isinstance(path, str):
            out.append({"path": [path]})
    return out


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
    aliases: list[tuple[str, str]] = field(default_factory=list)
    #: (response path, property name): where a property's values appear
    #: outside its own key (aggregates, groupedBy)
    values: list[tuple[str, str]] = field(default_factory=list)
    visited: int = 0


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
        field_aliases=tuple(dict.fromkeys((*out.aliases, *out.values))),
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

    def key(self, f: FieldNode, out: _Out) -> str:
        """The response key of ``f``; its alias, if any, is recorded."""
        out.visited += 1
        if out.visited > _MAX_FIELDS:
            raise BadRequest(f"{self.where}.query selects more than {_MAX_FIELDS} fields")
        name = f.name.value
        if f.alias is None or f.alias.value == name:
            return name
        alias = f.alias.value
        if alias == "_additional":
            raise BadRequest(
                f"{self.where}.query aliases {name[:60]!r} as _additional, which "
                "Weaviate reserves for object metadata"
            )
        out.aliases.append((alias, name))
        return alias

    def top_level(self, f: FieldNode, root: str, out: _Out) -> None:
        name = f.name.value
        key = self.key(f, out)
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
            for sub in self.fields(f.selection_set):
                skey = self.key(sub, out)
                if sub.name.value == "beacon" and skey != "beacon":
                    out.response_ids.append(f"{root}.{key}[].{skey}")
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
        objects = f"{root}.{self.key(c, out)}"
        base = f"{objects}[]"
        args = self.args(c)
        ids, vectors = _near_inputs(args)
        filters: list[object] = []
        where_arg = args.get("where")
        if where_arg is not None:
            filters.append(where_arg)
            ids.extend(weaviate_filter_ids(where_arg))
        # keyword search and sorting on a property also answer by its values
        guard_terms(property_terms(args))
        tenant = args.get("tenant")
        database = tenant if isinstance(tenant, str) else None
        lw = f"{kind}.{cls}"
        limit = as_int_limit(args.get("limit", args.get("objectLimit")), f"{lw}.limit")
        grouped_on = (
            _group_names(args["groupBy"], f"{self.where}: {lw} groupBy")
            if args.get("groupBy") is not None
            else ()
        )
        with_vectors = False
        models: set[str] = set()
        for prop in self.fields(c.selection_set):
            name = prop.name.value
            pkey = self.key(prop, out)
            if name == "_additional":
                v, m = self.additional(prop, base, pkey, out, top=True, grouped_on=grouped_on)
                with_vectors = with_vectors or v
                models |= m
            elif name.startswith("__"):
                continue
            elif kind == "Get":
                # a property (Weaviate property names may start with one _)
                out.user_data.append(f"{base}.{pkey}")
                self.nested(prop.selection_set, f"{base}.{pkey}", out)
            elif name == "groupedBy":
                self.grouped_by(prop, f"{base}.{pkey}", grouped_on, out, scan=True)
            else:
                self.aggregate(prop, f"{base}.{pkey}", out)
        if kind == "Get":
            search = any(k.startswith("near") or k in _SEARCH_ARGS for k in args)
            action = ActionClass.SEARCH if search else ActionClass.READ
            # where the id is when _additional { id } is selected unrenamed (no
            # other field may take that key, see key())
            out.response_ids.append(f"{base}._additional.id")
        else:
            action = ActionClass.READ
        guard_terms(ModelRead(m) for m in sorted(models | ({"ask"} if "ask" in args else set())))
        detail = f"graphql.{kind}" + (".generate" if "generate" in models else "")
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

    def aggregate(self, prop: FieldNode, at: str, out: _Out) -> None:
        """The aggregate of a property (``meta`` too: its ``count`` is safe),
        answered at ``at``: each field that reveals values is listed with the
        property (see the module docstring)."""
        name = prop.name.value
        if prop.selection_set is None:
            out.values.append((at, name))
        for sub in self.fields(prop.selection_set):
            skey = self.key(sub, out)
            here = f"{at}.{skey}"
            if sub.name.value == "topOccurrences":
                out.user_data.append(f"{here}[].value")
                out.values.append((f"{here}[].value", name))
                for occ in self.fields(sub.selection_set):
                    okey = self.key(occ, out)
                    if occ.name.value == "value" and okey != "value":
                        out.user_data.append(f"{here}[].{okey}")
                    if occ.name.value not in _OCCURRENCE_SAFE:
                        out.values.append((f"{here}[].{okey}", name))
            elif sub.name.value not in _AGGREGATE_SAFE:
                out.values.append((here, name))
                self.nested(sub.selection_set, here, out)

    def grouped_by(
        self, f: FieldNode, at: str, grouped_on: tuple[str, ...], out: _Out, *, scan: bool
    ) -> None:
        """``groupedBy { value path }`` at ``at``: ``value`` is the value of
        the grouped property, listed with each name on the groupBy path (and
        as user data when ``scan``, i.e. not already under user data)."""
        for sub in self.fields(f.selection_set):
            skey = self.key(sub, out)
            if sub.name.value == "value":
                here = f"{at}.{skey}"
                if scan:
                    out.user_data.append(here)
                out.values.extend((here, n) for n in grouped_on)

    def additional(
        self,
        f: FieldNode,
        base: str,
        akey: str,
        out: _Out,
        *,
        top: bool,
        grouped_on: tuple[str, ...] = (),
    ) -> tuple[bool, set[str]]:
        """``_additional`` of the objects at ``base`` (a path ending in ``[]``):
        the id, the vectors, and, at the top level (below, the property that
        holds the reference is user data already), everything else as user
        data. Returns (vectors selected, the model modules selected)."""
        with_vectors = False
        models: set[str] = set()
        for extra in self.fields(f.selection_set):
            ename = extra.name.value
            ekey = self.key(extra, out)
            here = f"{base}.{akey}.{ekey}"
            if ekey == "id" and ename != "id":
                raise BadRequest(
                    f"{self.where}.query aliases _additional {ename[:60]!r} as id, "
                    "which is the object's id"
                )
            if ename == "id":
                out.response_ids.append(here)
            elif ename in ("vector", "vectors"):
                with_vectors = True
                out.vectors.append(here)
            elif ename.startswith("__") or ename in _ADDITIONAL_SCALARS:
                continue
            else:
                if ename in _MODEL_ADDITIONAL:
                    models.add(ename)
                if top:
                    out.user_data.append(here)
                if ename == "group":
                    # groupBy: the group's hits are objects with properties and
                    # their own _additional; groupedBy holds the grouped value
                    for sub in self.fields(extra.selection_set):
                        skey = self.key(sub, out)
                        if sub.name.value == "groupedBy":
                            self.grouped_by(sub, f"{here}.{skey}", grouped_on, out, scan=False)
                        else:
                            self.nested(sub.selection_set, f"{here}.{skey}", out)
                else:
                    self.nested(extra.selection_set, here, out)
        return with_vectors, models

    def nested(self, sel: SelectionSetNode | None, objects: str, out: _Out) -> None:
        """The selection of a property: nested object properties, or
        cross-references (``objects`` is then a list of objects, each with
        its own ``_additional``). Records aliases at every depth."""
        for f in self.fields(sel):
            key = self.key(f, out)
            if f.name.value == "_additional":
                self.additional(f, f"{objects}[]", key, out, top=False)
            else:
                self.nested(f.selection_set, f"{objects}[].{key}", out)


def _group_names(value: object, where: str) -> tuple[str, ...]:
    """The names on a ``groupBy`` path: ``["cat"]`` or ``"cat"`` (Aggregate),
    ``{path: ["cat"], ...}`` (Get); a reference path names the reference,
    the class and the property, each treated as a field name."""
    if isinstance(value, dict):
        return _group_names(value.get("path"), f"{where}.path")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(
        isinstance(v, str) and v for v in value
    ):
        raise BadRequest(f"{where} must be a property name or a list of them")
    return tuple(dict.fromkeys(value))


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
