"""Per-point lineage and the state of a collection at a time.

Rebuilt only from recorded writes and deletes (the ``vector_lineage``
projection joined to each request's identity, decision, approval, ticket and
grant). Only operations that took effect count towards the state: the request
was forwarded and answered 2xx. Denied, blocked, held-then-refused or failed
writes stay in the history but change nothing.

Operations whose ids the gateway could not know (delete by filter, bulk
imports without ids) cannot be applied exactly: they are listed in
``unknown_ops`` with the count that was recorded, and every point that existed
when one ran is flagged ``maybe_affected_by``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pipeline import queries
from pipeline.warehouse.base import Warehouse

__all__ = [
    "CollectionState",
    "PointState",
    "UnknownOp",
    "approval_lineage",
    "point_history",
    "state_at",
    "took_effect",
]


def took_effect(row: dict[str, Any]) -> bool:
    status = row.get("status")
    return row.get("state") == "completed" and status is not None and 200 <= int(status) < 300


@dataclass
class PointState:
    point_id: str
    action: str
    written_at: str
    writer: str | None
    session_id: str
    request_id: str
    event_id: str
    approval_id: str | None
    ticket_id: str | None
    grant_id: str | None
    decision: str | None
    #: who first wrote the point (since it last came into existence), and when
    added_by: str | None = None
    added_at: str | None = None
    maybe_affected_by: list[str] = field(default_factory=list)


@dataclass
class UnknownOp:
    event_id: str
    op_index: int
    action: str
    occurred_at: str
    subject: str | None
    request_id: str
    session_id: str
    took_effect: bool
    filter_present: bool
    filter_sha256: str | None
    bulk: bool
    #: how many ids the request named (0 for a filter), and how many result ids
    #: the response carried, as recorded
    id_count: int
    recorded_result_count: int | None
    approval_id: str | None
    ticket_id: str | None


@dataclass
class CollectionState:
    collection: str
    at: str | None
    points: dict[str, PointState] = field(default_factory=dict)
    unknown_ops: list[UnknownOp] = field(default_factory=list)
    operations: int = 0

    @property
    def ids(self) -> list[str]:
        return sorted(self.points)

    @property
    def exact(self) -> bool:
        """No operation with unknown ids took effect: the set is exact."""
        return not any(u.took_effect for u in self.unknown_ops)

    def to_json(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "at": self.at,
            "exact": self.exact,
            "operations": self.operations,
            "count": len(self.points),
            "points": [asdict(self.points[k]) for k in sorted(self.points)],
            "unknown_ops": [asdict(u) for u in self.unknown_ops],
        }


def _time_param(at: datetime | str | None) -> str | None:
    if at is None:
        return None
    return at.isoformat() if isinstance(at, datetime) else at


def state_at(wh: Warehouse, collection: str, at: datetime | str | None = None) -> CollectionState:
    """Which points existed in ``collection`` at ``at`` (now if None), and who
    put each one there."""
    rows = queries.collection_lineage(wh, collection, until=_time_param(at))
    state = CollectionState(collection, queries._time(at) or None)
    seen_ops: set[tuple[str, int]] = set()
    for r in rows:
        key = (r["event_id"], int(r["op_index"]))
        if key not in seen_ops:
            seen_ops.add(key)
            state.operations += 1
        effective = took_effect(r)
        if not r["ids_known"] or not r["point_id"]:
            state.unknown_ops.append(
                UnknownOp(
                    event_id=r["event_id"],
                    op_index=int(r["op_index"]),
                    action=r["action"],
                    occurred_at=r["occurred_at"],
                    subject=r.get("subject"),
                    request_id=r["request_id"],
                    session_id=r["session_id"],
                    took_effect=effective,
                    filter_present=bool(r["filter_present"]),
                    filter_sha256=r.get("filter_sha256"),
                    bulk=bool(r["bulk"]),
                    id_count=int(r["id_count"]),
                    recorded_result_count=r.get("result_count"),
                    approval_id=r.get("approval_id"),
                    ticket_id=r.get("ticket_id"),
                )
            )
            if effective and r["action"] == "delete":
                for p in state.points.values():
                    p.maybe_affected_by.append(r["event_id"])
            continue
        if not effective:
            continue
        pid = r["point_id"]
        if r["action"] == "delete":
            state.points.pop(pid, None)
            continue
        previous = state.points.get(pid)
        if previous is None and _updates_only(r):
            continue  # an update of a missing point creates nothing
        state.points[pid] = PointState(
            point_id=pid,
            action=r["action"],
            written_at=r["occurred_at"],
            writer=r.get("subject"),
            session_id=r["session_id"],
            request_id=r["request_id"],
            event_id=r["event_id"],
            approval_id=r.get("approval_id"),
            ticket_id=r.get("ticket_id"),
            grant_id=r.get("grant_id"),
            decision=r.get("decision"),
            added_by=previous.added_by if previous else r.get("subject"),
            added_at=previous.added_at if previous else r["occurred_at"],
        )
    return state


def _updates_only(row: dict[str, Any]) -> bool:
    """Writes that change existing points but never create one (Chroma's
    ``update``, Qdrant's payload and vector updates)."""
    path = (row.get("path") or "").rstrip("/")
    return path.endswith(
        ("/update", "/points/payload", "/points/vectors", "/payload/delete", "/payload/clear")
    )


def point_history(wh: Warehouse, collection: str, point_id: str) -> list[dict[str, Any]]:
    """Every write or delete that named the point, oldest first, plus the
    collection's operations with unknown ids (they may have touched it)."""
    rows = queries.vector_lineage(wh, collection, point_id, include_unknown=True)
    for r in rows:
        r["took_effect"] = took_effect(r)
        r["ids_unknown"] = not r["ids_known"]
    return rows


def approval_lineage(wh: Warehouse, approval_id: str) -> dict[str, Any] | None:
    """One approval (or change ticket) and everything written under it: each
    request with its operations and the ids they named."""
    appr = queries.approval(wh, approval_id)
    writes = queries.approval_writes(wh, approval_id)
    seen = {r["request_id"] for r in writes}
    writes += [r for r in queries.ticket_writes(wh, approval_id) if r["request_id"] not in seen]
    writes.sort(key=lambda r: (r["received_at"], r["request_id"]))
    if appr is None and not writes:
        return None
    requests = []
    for r in writes:
        ops = json.loads(r["operations_json"]) if r.get("operations_json") else []
        requests.append(
            {
                "request_id": r["request_id"],
                "session_id": r["session_id"],
                "subject": r.get("subject"),
                "received_at": r["received_at"],
                "method": r.get("method"),
                "path": r.get("path"),
                "decision": r.get("decision"),
                "state": r.get("state"),
                "status": r.get("status"),
                "took_effect": took_effect(r),
                "ticket_id": r.get("ticket_id"),
                "grant_id": r.get("grant_id"),
                "operations": [
                    {
                        "action": op.get("action"),
                        "collection": op.get("collection"),
                        "ids": op.get("ids") if op.get("ids_known", True) else None,
                        "ids_known": op.get("ids_known", True),
                        "id_count": len(op.get("ids") or []),
                        "filter_present": op.get("filter_present", False),
                    }
                    for op in ops
                    if op.get("action") in ("write", "delete")
                ],
            }
        )
    return {"approval_id": approval_id, "approval": appr, "requests": requests}
