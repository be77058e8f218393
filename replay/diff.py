"""Structured diffs of recorded and replayed responses.

One set of rules for ``embedguard replay`` and ``embedguard diff``:

* volatile fields (server timings, usage counters, operation ids the server
  assigns) are ignored;
* numbers (scores, distances) are equal within a tolerance;
* result lists of searches and reads are compared per id: ids ``added``,
  ``removed``, ``moved`` (rank then → now) and ``changed`` (same id, other
  content: document, metadata, payload, vector, score beyond the tolerance).

The body shapes understood per id are Chroma (parallel ``ids``/``documents``/
``metadatas``/``distances`` lists, flat for get, nested per query), Qdrant
(``result`` list or ``result.points``), Pinecone (``matches``) and Milvus
(``data``). Anything else is still diffed structurally with deepdiff.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from deepdiff import DeepDiff

__all__ = [
    "DEFAULT_TOLERANCE",
    "VOLATILE_KEYS",
    "BodyDiff",
    "RankedChange",
    "diff_bodies",
    "parse_body",
    "ranked_records",
]

#: Keys whose values differ run to run without meaning anything changed.
VOLATILE_KEYS = frozenset(
    {
        "time",
        "took",
        "took_ms",
        "usage",
        "elapsed",
        "elapsed_ms",
        "timestamp",
        "operation_id",
        "request_id",
        "x-request-id",
        "cost",
        "trace_id",
    }
)
DEFAULT_TOLERANCE = 1e-4

_VOLATILE_RE = re.compile(r"\['(" + "|".join(re.escape(k) for k in sorted(VOLATILE_KEYS)) + r")'\]")


@dataclass
class RankedChange:
    """One result list (one query of a batch) then versus now."""

    index: int
    then: list[str]
    now: list[str]
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    moved: list[dict[str, Any]] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.moved or self.changed)


@dataclass
class BodyDiff:
    identical: bool
    status_then: int | None = None
    status_now: int | None = None
    ranked: list[RankedChange] = field(default_factory=list)
    #: deepdiff's report (JSON-ready) of everything outside the per-id records
    structural: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    @property
    def changed_ids(self) -> list[str]:
        return sorted({i for r in self.ranked for i in r.changed})

    @property
    def added_ids(self) -> list[str]:
        return sorted({i for r in self.ranked for i in r.added})

    @property
    def removed_ids(self) -> list[str]:
        return sorted({i for r in self.ranked for i in r.removed})

    @property
    def moved_ids(self) -> list[str]:
        return sorted({m["id"] for r in self.ranked for m in r.moved})

    def to_json(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "status_then": self.status_then,
            "status_now": self.status_now,
            "added_ids": self.added_ids,
            "removed_ids": self.removed_ids,
            "moved_ids": self.moved_ids,
            "changed_ids": self.changed_ids,
            "ranked": [asdict(r) for r in self.ranked],
            "structural": self.structural,
            "note": self.note,
        }


def parse_body(body: bytes | None) -> Any:
    """JSON if the body is JSON, else its text (None stays None)."""
    if body is None:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace")


def _id(value: Any) -> str:
    return str(value)


def ranked_records(body: Any) -> tuple[list[list[tuple[str, dict[str, Any]]]], Any] | None:
    """Per result list, the ``(id, record)`` pairs in rank order, and the body
    with those lists taken out (what remains is diffed structurally); None if
    the body has no id-keyed result list."""
    if not isinstance(body, Mapping):
        return None
    rest = dict(body)
    # Chroma: parallel lists keyed by "ids" (get: flat; query: one list per query)
    if isinstance(body.get("ids"), list):
        ids = body["ids"]
        nested = bool(ids) and all(isinstance(x, list) for x in ids)
        groups = ids if nested else [ids]
        parallel = [
            k for k, v in body.items() if k != "ids" and isinstance(v, list) and len(v) == len(ids)
        ]
        out: list[list[tuple[str, dict[str, Any]]]] = []
        for g, group in enumerate(groups):
            recs = []
            for i, pid in enumerate(group):
                rec: dict[str, Any] = {}
                for k in parallel:
                    col = body[k][g] if nested else body[k]
                    if isinstance(col, list) and i < len(col):
                        rec[k] = col[i]
                recs.append((_id(pid), rec))
            out.append(recs)
        for k in ("ids", *parallel):
            rest.pop(k, None)
        return out, rest
    # Qdrant: result = [points] | [[points]] (batch) | {points: [...]}
    result = body.get("result")
    lists: list[Any] | None = None
    if isinstance(result, list) and result and all(isinstance(x, list) for x in result):
        lists = result
    elif isinstance(result, list):
        lists = [result]
    elif isinstance(result, Mapping) and isinstance(result.get("points"), list):
        lists = [result["points"]]
        rest["result"] = {k: v for k, v in result.items() if k != "points"}
    if lists is not None and all(
        isinstance(p, Mapping) and "id" in p for group in lists for p in group
    ):
        if not isinstance(result, Mapping):
            rest.pop("result", None)
        return [
            [(_id(p["id"]), {k: v for k, v in p.items() if k != "id"}) for p in group]
            for group in lists
        ], rest
    # Pinecone (matches), Milvus (data)
    for key in ("matches", "data"):
        items = body.get(key)
        if isinstance(items, list) and all(isinstance(p, Mapping) and "id" in p for p in items):
            rest.pop(key, None)
            recs = [(_id(p["id"]), {k: v for k, v in p.items() if k != "id"}) for p in items]
            return [recs], rest
    return None


def _deep(a: Any, b: Any, tolerance: float) -> dict[str, Any]:
    dd = DeepDiff(
        a,
        b,
        math_epsilon=tolerance,
        exclude_regex_paths=[_VOLATILE_RE],
        ignore_numeric_type_changes=True,
        verbose_level=2,
    )
    if not dd:
        return {}
    parsed: dict[str, Any] = json.loads(dd.to_json())
    return parsed


def _compare_lists(
    index: int,
    then: list[tuple[str, dict[str, Any]]],
    now: list[tuple[str, dict[str, Any]]],
    tolerance: float,
) -> RankedChange:
    then_ids = [i for i, _ in then]
    now_ids = [i for i, _ in now]
    rc = RankedChange(index, then_ids, now_ids)
    then_pos = {pid: n for n, pid in enumerate(then_ids)}
    now_pos = {pid: n for n, pid in enumerate(now_ids)}
    then_rec = dict(then)
    now_rec = dict(now)
    rc.added = [pid for pid in now_ids if pid not in then_pos]
    rc.removed = [pid for pid in then_ids if pid not in now_pos]
    for pid in then_ids:
        if pid not in now_pos:
            continue
        if then_pos[pid] != now_pos[pid]:
            rc.moved.append({"id": pid, "from": then_pos[pid], "to": now_pos[pid]})
        if _deep(then_rec[pid], now_rec[pid], tolerance):
            rc.changed.append(pid)
    return rc


def diff_bodies(
    then: Any,
    now: Any,
    *,
    status_then: int | None = None,
    status_now: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> BodyDiff:
    """Compare two parsed bodies (see :func:`parse_body`) by the module's rules."""
    out = BodyDiff(identical=False, status_then=status_then, status_now=status_now)
    rt, rn = ranked_records(then), ranked_records(now)
    if rt is not None and rn is not None:
        lists_then, rest_then = rt
        lists_now, rest_now = rn
        for i in range(max(len(lists_then), len(lists_now))):
            a = lists_then[i] if i < len(lists_then) else []
            b = lists_now[i] if i < len(lists_now) else []
            out.ranked.append(_compare_lists(i, a, b, tolerance))
        out.structural = _deep(rest_then, rest_now, tolerance)
    else:
        out.structural = _deep(then, now, tolerance)
    out.identical = (
        status_then == status_now and not out.structural and all(r.same for r in out.ranked)
    )
    return out
