"""Qdrant query-style bodies: ``points/query``, ``search``, ``recommend``,
``discover``, their ``batch``/``groups`` variants and the distance matrix.

Ids named by the request (point ids used as query vectors, recommend
examples, discovery targets and contexts, ``has_id`` filter conditions) are
collected in request order; the ids a search touches only come back in the
response, so search operations are always ``ids_known=False``.
``lookup_from`` / ``with_lookup`` read a second collection and add a read
operation on it (vector-db-apis.md §7).

Some responses carry a payload field's value outside the payload, where
masking that field by name would not find it: a group's id
(``result.groups[].id``) is the value of the ``group_by`` field, and so is the
id of the point ``with_lookup`` found for it (``result.groups[].lookup.id``);
a point's ``order_value`` is the value of the ``order_by`` field. Those
locations are listed in ``field_aliases`` with each field name the key goes
through (:func:`key_names`), so the masker masks them whole, with the field's
token, when that field is masked. Group ids are also user data, scanned by the
detectors; a lookup id stays a record id unless its field is masked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from capture.classify._common import (
    BadRequest,
    Result,
    as_int_limit,
    as_list,
    as_obj,
    as_str,
    dedupe,
    id_str,
    id_strs,
    op,
    walk,
)
from capture.types import ActionClass, Operation

__all__ = [
    "SEARCH_KINDS",
    "has_id_ids",
    "key_names",
    "limit_of",
    "order_by_names",
    "search_ops",
    "with_vectors_of",
]

SEARCH_KINDS = (
    "query",
    "query/batch",
    "query/groups",
    "search",
    "search/batch",
    "search/groups",
    "recommend",
    "recommend/batch",
    "recommend/groups",
    "discover",
    "discover/batch",
    "search/matrix/pairs",
    "search/matrix/offsets",
)

_MAX_PREFETCH_DEPTH = 16


def has_id_ids(flt: object, where: str) -> list[str]:
    """Ids named by ``has_id`` conditions anywhere inside a filter."""
    ids: list[str] = []
    for node in walk(flt):
        if isinstance(node, dict) and "has_id" in node:
            ids.extend(id_strs(node["has_id"], f"{where} has_id"))
    return ids


_QUOTED = re.compile(r'"([^"]*)"')
_INDEX = re.compile(r"\[\d*\]")


def key_names(key: object, where: str) -> tuple[str, ...]:
    """The payload field names a Qdrant key goes through: ``meta.email`` ->
    (``meta``, ``email``); array steps (``tags[]``, ``a[0].b``) and quotes
    (``"a.b"``, a key with a dot) are understood, and a quoted key is also
    split at its dots, which can only name more fields."""
    text = as_str(key, where)
    names = list(_QUOTED.findall(text))
    names.extend(re.split(r'[."]+', _INDEX.sub(".", text)))
    out = tuple(dict.fromkeys(n for n in names if n))
    if not out:
        raise BadRequest(f"{where} names no payload field")
    return out


def order_by_names(value: object, where: str) -> tuple[str, ...]:
    """The field names of an ``order_by`` (a key, or ``{"key": ...}``)."""
    if isinstance(value, dict):
        return key_names(value.get("key"), f"{where}.key")
    return key_names(value, where)


#: Qdrant's defaults: points per group of a groups request, and points sampled
#: by a distance matrix (``QueryGroupsRequest.group_size``, ``SearchMatrixRequest.sample``)
_GROUP_SIZE = 3
_MATRIX_SAMPLE = 10


def limit_of(body: Mapping[str, object], key: str, where: str = "body") -> int | None:
    return as_int_limit(body.get(key), f"{where}.{key}")


def with_vectors_of(body: Mapping[str, object], where: str = "body") -> bool:
    # The server accepts ``with_vectors`` as an alias of ``with_vector``.
    value = body.get("with_vector", body.get("with_vectors"))
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, list):
        return bool(value)
    if isinstance(value, dict):
        return True
    raise BadRequest(f"{where}.with_vector must be a boolean, a list of names or an object")


@dataclass
class _Acc:
    ids: list[str] = field(default_factory=list)
    vectors: int = 0
    filters: list[object] = field(default_factory=list)
    #: (collection, ids looked up there, ids_known)
    lookups: list[tuple[str, list[str], bool]] = field(default_factory=list)
    #: field names of every order_by query (the points' order_value)
    order_by: list[str] = field(default_factory=list)


#: the ids that are the group_by field's value: a group's, and that of the
#: point with_lookup found for it
_GROUP_IDS = ("result.groups[].id", "result.groups[].lookup.id")


@dataclass
class _Fields:
    """Payload fields whose values a response carries outside the payload."""

    group_by: list[str] = field(default_factory=list)
    order_by: list[str] = field(default_factory=list)

    def locations(self, roots: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        """(response path, field name) pairs, for points at ``roots``."""
        pairs = [(g, name) for name in self.group_by for g in _GROUP_IDS]
        pairs.extend((f"{r}.order_value", name) for name in self.order_by for r in roots)
        return tuple(dict.fromkeys(pairs))


def _vector_input(value: object, where: str, acc: _Acc) -> None:
    """A VectorInput: a point id, a dense/multi/sparse vector, or a document."""
    if isinstance(value, bool) or value is None:
        raise BadRequest(f"{where} is not a vector, a point id or a document")
    if isinstance(value, int | str):
        acc.ids.append(id_str(value, where))
        return
    if isinstance(value, list):
        if all(isinstance(x, int | float) and not isinstance(x, bool) for x in value) or all(
            isinstance(x, list) for x in value
        ):
            acc.vectors += 1
            return
        raise BadRequest(f"{where} must be a list of numbers or a list of vectors")
    if isinstance(value, dict):
        if "indices" in value and "values" in value:
            acc.vectors += 1
            return
        if "text" in value or "image" in value or "object" in value:
            return  # embedded server-side from the text/image/object (user data)
        # Named vector forms of the legacy search API: {"name":..., "vector":...}
        if "vector" in value:
            _vector_input(value["vector"], f"{where}.vector", acc)
            return
    raise BadRequest(f"{where} is not a vector, a point id or a document")


def _examples(value: object, where: str, acc: _Acc) -> None:
    if value is None:
        return
    for i, item in enumerate(as_list(value, where)):
        _vector_input(item, f"{where}[{i}]", acc)


def _context_pairs(value: object, where: str, acc: _Acc) -> None:
    if value is None:
        return
    pairs = value if isinstance(value, list) else [value]
    for i, pair in enumerate(pairs):
        pw = f"{where}[{i}]"
        p = as_obj(pair, pw)
        for side in ("positive", "negative"):
            if p.get(side) is not None:
                _vector_input(p[side], f"{pw}.{side}", acc)


_NO_INPUT_QUERIES = ("order_by", "fusion", "rrf", "formula", "sample")


def _query(value: object, where: str, acc: _Acc) -> None:
    """The ``query`` of a QueryRequest or Prefetch (any Query variant)."""
    if not isinstance(value, dict):
        _vector_input(value, where, acc)
        return
    if "nearest" in value:
        _vector_input(value["nearest"], f"{where}.nearest", acc)
    elif "recommend" in value:
        rec = as_obj(value["recommend"], f"{where}.recommend")
        _examples(rec.get("positive"), f"{where}.recommend.positive", acc)
        _examples(rec.get("negative"), f"{where}.recommend.negative", acc)
    elif "discover" in value:
        disc = as_obj(value["discover"], f"{where}.discover")
        if disc.get("target") is not None:
            _vector_input(disc["target"], f"{where}.discover.target", acc)
        _context_pairs(disc.get("context"), f"{where}.discover.context", acc)
    elif "context" in value:
        _context_pairs(value["context"], f"{where}.context", acc)
    elif any(k in value for k in _NO_INPUT_QUERIES):
        if "order_by" in value:
            acc.order_by.extend(order_by_names(value["order_by"], f"{where}.order_by"))
        if "formula" in value:
            acc.ids.extend(has_id_ids(value["formula"], f"{where}.formula"))
    else:
        _vector_input(value, where, acc)


def _filter(body: Mapping[str, object], where: str, acc: _Acc) -> None:
    flt = body.get("filter")
    if flt is not None:
        as_obj(flt, f"{where}.filter")
        acc.filters.append(flt)
        acc.ids.extend(has_id_ids(flt, f"{where}.filter"))


def _lookup_from(body: Mapping[str, object], where: str, acc: _Acc, input_ids: list[str]) -> None:
    lf = body.get("lookup_from")
    if lf is None:
        return
    spec = as_obj(lf, f"{where}.lookup_from")
    coll = as_str(spec.get("collection"), f"{where}.lookup_from.collection")
    acc.lookups.append((coll, input_ids, True))


def _with_lookup(body: Mapping[str, object], where: str, acc: _Acc) -> None:
    wl = body.get("with_lookup")
    if wl is None:
        return
    if isinstance(wl, str):
        coll = wl
    else:
        coll = as_str(
            as_obj(wl, f"{where}.with_lookup").get("collection"), f"{where}.with_lookup.collection"
        )
    # The looked-up points are the group ids, known only from the response.
    acc.lookups.append((coll, [], False))


def _prefetch(value: object, where: str, acc: _Acc, depth: int) -> None:
    if value is None:
        return
    if depth > _MAX_PREFETCH_DEPTH:
        raise BadRequest(f"{where} nests prefetch deeper than {_MAX_PREFETCH_DEPTH} levels")
    items = value if isinstance(value, list) else [value]
    for i, item in enumerate(items):
        pw = f"{where}[{i}]"
        _query_like(as_obj(item, pw), pw, acc, depth + 1)


def _query_like(body: Mapping[str, object], where: str, acc: _Acc, depth: int) -> None:
    before = len(acc.ids)
    if body.get("query") is not None:
        _query(body["query"], f"{where}.query", acc)
    input_ids = acc.ids[before:]
    _lookup_from(body, where, acc, list(input_ids))
    _filter(body, where, acc)
    _prefetch(body.get("prefetch"), f"{where}.prefetch", acc, depth)


def _one(
    base: str,
    grouped: bool,
    body: Mapping[str, object],
    where: str,
    collection: str,
    detail: str,
    fields: _Fields | None = None,
) -> list[Operation]:
    """The operations of one search; ``fields`` gets the payload fields whose
    values the response carries outside the payload (see the module
    docstring)."""
    acc = _Acc()
    if base == "query":
        _query_like(body, where, acc, 0)
    elif base == "search":
        if "vector" not in body:
            raise BadRequest(f"{where}.vector is missing")
        _vector_input(body["vector"], f"{where}.vector", acc)
        _filter(body, where, acc)
    elif base == "recommend":
        _examples(body.get("positive"), f"{where}.positive", acc)
        _examples(body.get("negative"), f"{where}.negative", acc)
        _lookup_from(body, where, acc, list(acc.ids))
        _filter(body, where, acc)
    elif base == "discover":
        if body.get("target") is not None:
            _vector_input(body["target"], f"{where}.target", acc)
        _context_pairs(body.get("context"), f"{where}.context", acc)
        _lookup_from(body, where, acc, list(acc.ids))
        _filter(body, where, acc)
    elif base == "matrix":
        _filter(body, where, acc)
    if grouped:
        _with_lookup(body, where, acc)
        if fields is not None and body.get("group_by") is not None:
            fields.group_by.extend(key_names(body["group_by"], f"{where}.group_by"))
    if fields is not None:
        fields.order_by.extend(acc.order_by)
    # limit is the most points the operation can return: groups × group_size
    # and samples × neighbours, with Qdrant's defaults for an absent factor
    limit = limit_of(body, "limit", where)
    if grouped:
        size = limit_of(body, "group_size", where)
        if limit is not None:
            limit = as_int_limit(limit * (_GROUP_SIZE if size is None else size),
                                 f"{where}.limit")
    elif base == "matrix":
        sample = limit_of(body, "sample", where)
        if limit is not None:
            limit = as_int_limit(limit * (_MATRIX_SAMPLE if sample is None else sample),
                                 f"{where}.limit")
    ops = [
        op(
            ActionClass.SEARCH,
            collection=collection,
            ids=dedupe(acc.ids),
            ids_known=False,
            vector_count=acc.vectors,
            filters=acc.filters,
            limit=limit,
            with_vectors=with_vectors_of(body, where),
            detail=detail,
        )
    ]
    for coll, ids, known in acc.lookups:
        ops.append(
            op(
                ActionClass.READ,
                collection=coll,
                ids=dedupe(ids),
                ids_known=known,
                detail="lookup_from" if known else "with_lookup",
            )
        )
    return ops


_PATHS: dict[str, tuple[str, ...]] = {
    "single": ("result[]",),
    "query": ("result.points[]",),
    "query_batch": ("result[].points[]",),
    "batch": ("result[][]",),
    "groups": ("result.groups[].hits[]", "result.groups[].lookup"),
}


def search_ops(kind: str, body: Mapping[str, object], collection: str) -> Result:
    base, _, variant = kind.partition("/")
    if variant.startswith("matrix"):
        ops = _one("matrix", False, body, "body", collection, kind)
        if variant.endswith("pairs"):
            resp: tuple[str, ...] = ("result.pairs[].a", "result.pairs[].b")
        else:
            resp = ("result.ids[]",)
        return Result(ops, response_ids=resp)
    fields = _Fields()
    if variant == "batch":
        searches = as_list(body.get("searches"), "body.searches")
        if not searches:
            raise BadRequest("body.searches is empty")
        ops = []
        for i, item in enumerate(searches):
            w = f"body.searches[{i}]"
            ops.extend(_one(base, False, as_obj(item, w), w, collection, kind, fields))
        key = "query_batch" if base == "query" else "batch"
    else:
        grouped = variant == "groups"
        ops = _one(base, grouped, body, "body", collection, kind, fields)
        key = "groups" if grouped else ("query" if base == "query" else "single")
    roots = _PATHS[key]
    # a group id is a payload value (not a record id): the detectors scan it
    group_ids = ("result.groups[].id",) if key == "groups" else ()
    return Result(
        ops,
        response_ids=tuple(f"{r}.id" for r in roots),
        user_data_paths=(*(f"{r}.payload" for r in roots), *group_ids),
        vector_paths=tuple(f"{r}.vector" for r in roots),
        field_aliases=fields.locations(roots),
    )
