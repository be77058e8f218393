"""Body retention that honours evidence holds.

Bodies (the ``bodies`` table, keyed by sha256) may expire: a warehouse URL's
``?body_retention_days=N`` lets the purge delete body rows older than N days.
Events, their hashes and every derived table are never deleted by retention:
they are the evidence, and hash proofs never need a body (architecture.md,
invariant 4).

What was exported as evidence is held: every export path (``embedguard
export``, the dashboard's Evidence page) records an ``EvidenceHeld`` event in the
log, durably, before the bundle is handed out (``record_hold``). It names the
bundle (hold id, sha256 of its signed manifest, file name), who exported, until
when it is held, and which bodies (sha256) and sessions it covers. A large hold
is split into parts of at most ``HOLD_PART_ITEMS`` sha256s/session ids, so no
event gets big (100k bodies: 25 events of about 270 kB). The loader projects the
parts into ``evidence_holds`` (ddl/0003), so a rebuilt warehouse has the same
holds.

The purge (``purge_bodies``; the loader runs it through ``Warehouse.compact``)
deletes body rows older than the retention whose sha256 is not held by a hold
with ``held_until`` after the purge's clock. Once a hold expires, its bodies go at
the next purge. The purge is explicit on every backend, so it is right before
merges: ClickHouse and chDB run one lightweight ``DELETE ... NOT IN (held)``
(a TTL cannot consult the holds, so the bodies table has none); the lake
rewrites only the day partitions that hold a deletable row, keeping the held
ones. ``retention_report`` shows what the next purge would delete and keep.

A purge must not run ahead of a hold that is in the log but not yet loaded:
before compacting, the loader scans the log's unloaded tail (``gate_purge``) and
defers the purge while it holds an EvidenceHeld event; ``warehouse purge`` and
``warehouse compact`` run the same check (``pending_holds``, ``gate_purge_url``).

Every query here is ClickHouse SQL run through ``Warehouse.query``, so the same
text runs on chDB over Delta, chDB MergeTree and ClickHouse server.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pipeline.transport.base import EventLog
    from pipeline.warehouse.base import Warehouse
    from pipeline.warehouse.lake import LakeWarehouse

__all__ = [
    "DEFAULT_HOLD_DAYS",
    "EvidenceHold",
    "HOLD_DAYS_ENV",
    "HOLD_PART_ITEMS",
    "HoldNotRecorded",
    "HoldRequest",
    "HoldSummary",
    "RetentionError",
    "RetentionReport",
    "configured_hold_days",
    "hold_event_bodies",
    "holds",
    "gate_purge",
    "gate_purge_url",
    "parse_days",
    "pending_holds",
    "unloaded_holds",
    "purge_bodies",
    "purge_lake_bodies",
    "record_hold",
    "retention_report",
]

#: How long an exported bundle's bodies are held when nothing else is said.
DEFAULT_HOLD_DAYS = 365
#: The environment variable that sets the default hold (days).
HOLD_DAYS_ENV = "EMBEDGUARD_EVIDENCE_HOLD_DAYS"
MAX_DAYS = 36_500
#: sha256s plus session ids per EvidenceHeld event (one part).
HOLD_PART_ITEMS = 4_096

log = logging.getLogger("embedguard.retention")
_TS = "%Y-%m-%d %H:%M:%S.%f"
_HELD = (
    "SELECT item FROM {evidence_holds} WHERE item_kind = 'body' "
    "AND held_until > parseDateTime64BestEffort({now:String}, 6, 'UTC')"
)
_OLD = "occurred_at < parseDateTime64BestEffort({cutoff:String}, 6, 'UTC')"


class RetentionError(ValueError):
    """A retention or hold value is wrong; the message names it and what to use."""


class HoldNotRecorded(RuntimeError):
    """The log did not take the EvidenceHeld event(s): the bundle must not be
    handed out."""


def parse_days(value: str | int, what: str) -> int:
    """A whole number of days, 1..36500, or a RetentionError naming ``what``."""
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_DAYS:
        raise RetentionError(
            f"{what} must be a whole number of days from 1 to {MAX_DAYS}, not {value!r}"
        )
    return int(text)


def configured_hold_days(env: Mapping[str, str] | None = None) -> int:
    """``EMBEDGUARD_EVIDENCE_HOLD_DAYS`` or ``DEFAULT_HOLD_DAYS`` (365)."""
    raw = (os.environ if env is None else env).get(HOLD_DAYS_ENV)
    if raw is None or raw == "":
        return DEFAULT_HOLD_DAYS
    return parse_days(raw, HOLD_DAYS_ENV)


def _ts(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime(_TS)


# -- holds: recorded as events --------------------------------------------------------


@dataclass(frozen=True)
class HoldRequest:
    """What one export holds."""

    hold_id: str
    bundle_sha256: str
    bundle_name: str
    held_by: str
    held_until: datetime
    body_sha256s: Sequence[str]
    session_ids: Sequence[str]
    event_count: int = 0
    held_by_issuer: str | None = None
    reason: str | None = None


def hold_event_bodies(req: HoldRequest, part_items: int = HOLD_PART_ITEMS) -> list[dict[str, Any]]:
    """The EvidenceHeld bodies (keyword arguments for ``EventStamper.stamp``) of
    ``req``: the sha256s, then the session ids, cut into parts of at most
    ``part_items`` items; always at least one part."""
    if part_items < 1:
        raise ValueError("part_items must be at least 1")
    bodies = sorted(set(req.body_sha256s))
    sessions = sorted(set(req.session_ids))
    items: list[tuple[str, str]] = [("b", s) for s in bodies] + [("s", s) for s in sessions]
    chunks = [items[i : i + part_items] for i in range(0, len(items), part_items)] or [[]]
    common = {
        "hold_id": req.hold_id,
        "bundle_sha256": req.bundle_sha256,
        "bundle_name": req.bundle_name,
        "held_by": req.held_by,
        "held_by_issuer": req.held_by_issuer,
        "held_until": req.held_until,
        "reason": req.reason,
        "parts": len(chunks),
        "body_count": len(bodies),
        "session_count": len(sessions),
        "event_count": req.event_count,
    }
    return [
        {
            **common,
            "part": i,
            "body_sha256s": [v for k, v in chunk if k == "b"],
            "session_ids": [v for k, v in chunk if k == "s"],
        }
        for i, chunk in enumerate(chunks)
    ]


def record_hold(
    log_url: str, req: HoldRequest, *, stream: str, part_items: int = HOLD_PART_ITEMS
) -> list[str]:
    """Append the hold's EvidenceHeld events durably, in one append (all parts or
    none), as the session ``hold-<hold_id>`` of ``stream``; return their event
    ids. Raises HoldNotRecorded (with a message safe to show) if the log refuses."""
    from pipeline.events import EventPublisher
    from pipeline.loader_status import scrub
    from pipeline.transport import open_log
    from schemas.chain import EventStamper
    from schemas.models import EvidenceHeld

    stamper = EventStamper(stream)
    session = f"hold-{req.hold_id}"
    stamped = [
        stamper.stamp(EvidenceHeld, session_id=session, **body)
        for body in hold_event_bodies(req, part_items)
    ]

    async def go() -> None:
        async with open_log(log_url) as lg:
            await EventPublisher(lg).publish(stamped)

    try:
        asyncio.run(go())
    except Exception as exc:  # noqa: BLE001 - whatever the log's failure, no hold
        raise HoldNotRecorded(
            f"the event log did not record the evidence hold ({type(exc).__name__}: "
            f"{scrub(str(exc))}); nothing was exported. Check that the log is reachable "
            "and writable, then export again."
        ) from None
    return [str(s.event.envelope.event_id) for s in stamped]


class _Contents(Protocol):
    """What replay.export.BundleContents offers (pipeline does not import replay)."""

    @property
    def name(self) -> str: ...
    @property
    def manifest_sha256(self) -> str: ...
    @property
    def body_sha256s(self) -> tuple[str, ...]: ...
    @property
    def session_ids(self) -> tuple[str, ...]: ...
    @property
    def event_count(self) -> int: ...


class EvidenceHold:
    """The hold of one export: its id and end are fixed first (they go in the
    signed manifest, ``manifest_fields``); called with the signed bundle's
    contents (``export_bundle(before_handout=...)``) it records the hold in the
    log, durably, before the bundle is handed out.

    Its events form their own stream, ``<stream>/<hold id>`` (numbered from 0),
    so holds from one process never share a stream's numbering."""

    def __init__(
        self,
        log_url: str,
        *,
        held_by: str,
        hold_days: int,
        stream: str,
        held_by_issuer: str | None = None,
        reason: str | None = None,
        now: datetime | None = None,
    ) -> None:
        from uuid_utils import uuid7

        parse_days(hold_days, "the evidence hold")
        self.log_url = log_url
        self.hold_id = str(uuid7())
        self.held_by = held_by
        self.held_by_issuer = held_by_issuer
        self.reason = reason
        self.stream = f"{stream}/{self.hold_id}"
        self.hold_days = hold_days
        self.held_until = (now or datetime.now(UTC)) + timedelta(days=hold_days)
        self.event_ids: list[str] = []
        self.body_count = 0

    def manifest_fields(self) -> dict[str, Any]:
        return {
            "evidence_hold": {
                "hold_id": self.hold_id,
                "held_until": self.held_until.astimezone(UTC).isoformat(),
                "held_by": self.held_by,
            }
        }

    def __call__(self, contents: _Contents) -> None:
        self.body_count = len(set(contents.body_sha256s))
        self.event_ids = record_hold(
            self.log_url,
            HoldRequest(
                hold_id=self.hold_id,
                bundle_sha256=contents.manifest_sha256,
                bundle_name=contents.name,
                held_by=self.held_by,
                held_until=self.held_until,
                body_sha256s=contents.body_sha256s,
                session_ids=contents.session_ids,
                event_count=contents.event_count,
                held_by_issuer=self.held_by_issuer,
                reason=self.reason,
            ),
            stream=self.stream,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "hold_id": self.hold_id,
            "held_until": self.held_until.astimezone(UTC).isoformat(),
            "hold_days": self.hold_days,
            "bodies": self.body_count,
            "events": len(self.event_ids),
        }


# -- reading holds and planning the purge -------------------------------------------------


@dataclass(frozen=True)
class HoldSummary:
    hold_id: str
    bundle_name: str
    bundle_sha256: str
    held_by: str
    held_at: str
    held_until: str
    active: bool
    parts: int
    parts_loaded: int
    body_count: int
    bodies_loaded: int
    session_count: int
    event_count: int

    @property
    def complete(self) -> bool:
        return self.parts_loaded >= self.parts


@dataclass
class RetentionReport:
    warehouse: str
    body_retention_days: int | None
    now: str
    cutoff: str | None
    holds: list[HoldSummary] = field(default_factory=list)
    #: distinct body sha256s in the warehouse
    bodies: int = 0
    #: older than the retention, not held: the next purge deletes them
    delete_bodies: int = 0
    delete_bytes: int = 0
    #: older than the retention but held by an active hold: kept
    keep_held_bodies: int = 0
    #: younger than the retention: kept
    keep_young_bodies: int = 0
    #: rows the purge deleted (purge only)
    deleted_rows: int | None = None
    #: why the purge did not run (the loader's maintenance check, ``gate_purge``)
    deferred: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["holds"] = [{**asdict(h), "complete": h.complete} for h in self.holds]
        out["active_holds"] = sum(1 for h in self.holds if h.active)
        return out


def holds(
    wh: Warehouse, *, now: datetime | None = None, active_only: bool = False, limit: int = 1000
) -> list[HoldSummary]:
    """Holds in the warehouse, the latest-ending first."""
    now = now or datetime.now(UTC)
    rows = wh.query(
        """SELECT hold_id,
       any(bundle_name) AS bundle_name,
       any(bundle_sha256) AS bundle_sha256,
       any(held_by) AS held_by,
       formatDateTime(min(occurred_at), '%Y-%m-%dT%H:%i:%S.%fZ', 'UTC') AS held_at,
       formatDateTime(max(held_until), '%Y-%m-%dT%H:%i:%S.%fZ', 'UTC') AS held_until,
       max(held_until) > parseDateTime64BestEffort({now:String}, 6, 'UTC') AS active,
       max(parts) AS parts,
       uniqExactIf(part, item_kind = 'part') AS parts_loaded,
       max(body_count) AS body_count,
       uniqExactIf(item, item_kind = 'body') AS bodies_loaded,
       max(session_count) AS session_count,
       max(event_count) AS event_count
FROM {evidence_holds}
GROUP BY hold_id
HAVING NOT {active_only:Bool} OR active
ORDER BY max(held_until) DESC, hold_id
LIMIT {limit:UInt32}""",
        {"now": _ts(now), "active_only": active_only, "limit": limit},
    )
    return [
        HoldSummary(
            hold_id=str(r["hold_id"]),
            bundle_name=str(r["bundle_name"]),
            bundle_sha256=str(r["bundle_sha256"]),
            held_by=str(r["held_by"]),
            held_at=str(r["held_at"]),
            held_until=str(r["held_until"]),
            active=bool(int(r["active"])),
            parts=int(r["parts"]),
            parts_loaded=int(r["parts_loaded"]),
            body_count=int(r["body_count"]),
            bodies_loaded=int(r["bodies_loaded"]),
            session_count=int(r["session_count"]),
            event_count=int(r["event_count"]),
        )
        for r in rows
    ]


def _retention_days(wh: Warehouse) -> int | None:
    days = getattr(wh, "body_retention_days", None)
    return int(days) if days is not None else None


def _cutoff(wh: Warehouse, now: datetime) -> datetime | None:
    days = _retention_days(wh)
    return None if days is None else now - timedelta(days=days)


def retention_report(wh: Warehouse, *, now: datetime | None = None) -> RetentionReport:
    """The configured retention, the holds, and what a purge at ``now`` would
    delete and keep."""
    now = now or datetime.now(UTC)
    cutoff = _cutoff(wh, now)
    report = RetentionReport(
        warehouse=wh.url,
        body_retention_days=_retention_days(wh),
        now=now.astimezone(UTC).isoformat(),
        cutoff=cutoff.astimezone(UTC).isoformat() if cutoff else None,
        holds=holds(wh, now=now),
    )
    # Without a retention nothing is old: the cutoff is the epoch.
    params = {"now": _ts(now), "cutoff": _ts(cutoff or datetime(1970, 1, 1, tzinfo=UTC))}
    rows = wh.query(
        f"""SELECT uniqExact(sha256) AS bodies,
       uniqExactIf(sha256, {_OLD} AND sha256 NOT IN ({_HELD})) AS delete_bodies,
       sumIf(size, {_OLD} AND sha256 NOT IN ({_HELD})) AS delete_bytes,
       uniqExactIf(sha256, {_OLD} AND sha256 IN ({_HELD})) AS keep_held_bodies,
       uniqExactIf(sha256, NOT ({_OLD})) AS keep_young_bodies
FROM {{bodies}}""",  # noqa: S608 - constants only; values travel as parameters
        params,
    )
    if rows:
        r = rows[0]
        report.bodies = int(r["bodies"])
        report.delete_bodies = int(r["delete_bodies"])
        report.delete_bytes = int(r["delete_bytes"] or 0)
        report.keep_held_bodies = int(r["keep_held_bodies"])
        report.keep_young_bodies = int(r["keep_young_bodies"])
    return report


# -- the purge -----------------------------------------------------------------------------


def purge_bodies(wh: Warehouse, *, now: datetime | None = None) -> RetentionReport:
    """Delete the body rows older than the retention that no active hold holds;
    return the report of before the purge with ``deleted_rows`` set. Without a
    retention nothing is deleted. Events and derived tables are never touched."""
    from pipeline.warehouse.clickhouse import MergeTreeWarehouse
    from pipeline.warehouse.lake import LakeWarehouse

    now = now or datetime.now(UTC)
    report = retention_report(wh, now=now)
    cutoff = _cutoff(wh, now)
    if cutoff is None:
        report.deleted_rows = 0
        return report
    deferred = getattr(wh, "_embedguard_purge_deferred", None)
    if deferred:
        report.deleted_rows = 0
        report.deferred = deferred
        log.warning("body retention on %s deferred: %s", wh.url, deferred)
        return report
    if isinstance(wh, LakeWarehouse):
        report.deleted_rows = purge_lake_bodies(wh, now=now)
    elif isinstance(wh, MergeTreeWarehouse):
        report.deleted_rows = _purge_merge_tree(wh, now, cutoff)
    else:
        raise RetentionError(f"{wh.url}: this warehouse kind has no body purge")
    log.info(
        "body retention (%d days) on %s: deleted %d row(s) of %d body(ies), %d bytes; kept %d "
        "held by %d active evidence hold(s) and %d younger than the retention",
        report.body_retention_days,
        wh.url,
        report.deleted_rows,
        report.delete_bodies,
        report.delete_bytes,
        report.keep_held_bodies,
        sum(1 for h in report.holds if h.active),
        report.keep_young_bodies,
    )
    return report


async def pending_holds(log_url: str, wh: Warehouse, *, timeout: float = 60.0) -> tuple[int, int]:
    """(records of the log not yet in ``wh``, EvidenceHeld events among them).

    A purge must not run ahead of holds that are in the log but not loaded: it
    would not see them. Reads the unloaded tail with a tail reader (no group,
    nothing committed)."""
    from pipeline.transport import open_log

    _require_log(log_url)
    options: dict[str, Any] = {"create_topic": False} if log_url.startswith("kafka:") else {}
    async with open_log(log_url, **options) as event_log:
        if not await asyncio.to_thread(wh.loaded_positions, event_log.source_id):
            raise LookupError(
                f"{wh.url} holds nothing loaded from this log; name the log it is loaded "
                "from with --log"
            )
        return await unloaded_holds(event_log, wh, timeout=timeout)


def _require_log(log_url: str) -> None:
    """Checking a log must never create one (an empty new log would hide the
    real one's unloaded holds)."""
    if log_url.startswith("sqlite:"):
        path = log_url.removeprefix("sqlite:").removeprefix("//")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no event log at {path}")


async def unloaded_holds(
    event_log: EventLog, wh: Warehouse, *, timeout: float = 60.0, max_records: int | None = None
) -> tuple[int, int]:
    """``pending_holds`` on an open log. With ``max_records``, a tail longer than
    that is not read: (its length, -1)."""
    from schemas.codec import default_codec

    codec = default_codec()
    loaded = await asyncio.to_thread(wh.loaded_positions, event_log.source_id)
    async with event_log.tail_reader() as reader:
        ends = await reader.end_offsets()
        todo = {p: end for p, end in ends.items() if loaded.get(p, 0) < end}
        unloaded = sum(end - loaded.get(p, 0) for p, end in todo.items())
        if max_records is not None and unloaded > max_records:
            return unloaded, -1
        for p, end in ends.items():
            reader.seek(p, loaded.get(p, 0) if p in todo else end)
        held = 0
        deadline = asyncio.get_running_loop().time() + timeout
        while todo:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(
                    f"reading the {unloaded} unloaded record(s) of the log took over "
                    f"{timeout:.0f} s"
                )
            for rec in await reader.poll(max_records=5000, timeout=1.0):
                if rec.partition not in todo or rec.offset >= todo[rec.partition]:
                    continue
                if b"EvidenceHeld" in rec.value:
                    try:
                        if codec.decode_raw(rec.value).type_name == "EvidenceHeld":
                            held += 1
                    except ValueError:
                        pass  # a dead letter: it holds nothing
                if rec.offset + 1 >= todo[rec.partition]:
                    del todo[rec.partition]
    return unloaded, held


async def gate_purge_url(log_url: str, wh: Warehouse) -> str | None:
    """``gate_purge`` for a log given by URL (``warehouse compact``); a log that
    cannot be opened defers the purge too."""
    from pipeline.loader_status import scrub
    from pipeline.transport import open_log

    options: dict[str, Any] = {"create_topic": False} if log_url.startswith("kafka:") else {}
    try:
        _require_log(log_url)
        async with open_log(log_url, **options) as event_log:
            return await gate_purge(event_log, wh)
    except Exception as exc:  # noqa: BLE001 - cannot check: do not purge
        reason = f"could not open the log {scrub(log_url)} to check for unloaded holds: " + scrub(
            str(exc)
        )
        wh._embedguard_purge_deferred = reason  # type: ignore[attr-defined]
        return reason


#: A tail longer than this is not scanned before a maintenance purge: the purge
#: waits until the loader has caught up closer.
MAINTENANCE_SCAN_LIMIT = 200_000


async def gate_purge(event_log: EventLog, wh: Warehouse) -> str | None:
    """The loader's maintenance hook, run before ``wh.compact()`` (which purges
    bodies) while no batch is being written: if the log holds EvidenceHeld events
    that ``wh`` has not loaded (or more unloaded records than can be checked, or
    the check fails), the next purge on ``wh`` is deferred, with the reason; else
    it may run. Returns the reason, or None."""
    from pipeline.loader_status import scrub

    if _retention_days(wh) is None:
        return None  # no purge to gate
    try:
        unloaded, held = await unloaded_holds(
            event_log, wh, timeout=30.0, max_records=MAINTENANCE_SCAN_LIMIT
        )
    except Exception as exc:  # noqa: BLE001 - cannot check: do not purge
        reason: str | None = (
            f"could not check the log for unloaded evidence holds: {scrub(str(exc))}"
        )
    else:
        if held < 0:
            reason = f"the loader is {unloaded} records behind (too many to check for holds)"
        elif held:
            reason = f"{held} evidence hold event(s) in the log are not loaded yet"
        else:
            reason = None
    wh._embedguard_purge_deferred = reason  # type: ignore[attr-defined]
    return reason


def _purge_merge_tree(wh: Any, now: datetime, cutoff: datetime) -> int:
    params = {"now": _ts(now), "cutoff": _ts(cutoff)}
    where = f"{_OLD} AND sha256 NOT IN ({_HELD})"
    n = wh.query(f"SELECT count() AS n FROM {{bodies}} WHERE {where}", params)  # noqa: S608
    count = int(n[0]["n"]) if n else 0
    if count:
        # A lightweight delete: rows vanish from every query at once (no merge
        # needed); the parts are rewritten by later merges.
        wh._command(wh.render(f"DELETE FROM {{bodies}} WHERE {where}"), params)  # noqa: S608
    return count


def purge_lake_bodies(wh: LakeWarehouse, *, now: datetime | None = None) -> int:
    """The lake's purge: rewrite only the ``day`` partitions that hold a
    deletable body row, keeping every other row of them (held or younger), in
    one Delta commit per purge. Appends that commit meanwhile are not touched
    (their files are not in the snapshot the rewrite replaces); a conflicting
    commit raises CommitFailedError and the next purge tries again. Returns the
    number of rows deleted. The caller may hold the lake's write lock."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable, write_deltalake

    now = now or datetime.now(UTC)
    cutoff = _cutoff(wh, now)
    if cutoff is None:
        return 0
    deferred = getattr(wh, "_embedguard_purge_deferred", None)
    if deferred:
        log.warning("body retention on %s deferred: %s", wh.url, deferred)
        return 0
    held = [str(r["item"]) for r in wh.query(_HELD, {"now": _ts(now)})]
    dt = DeltaTable(str(wh.table_path("bodies")))
    last_day = cutoff.astimezone(UTC).date()
    probe = dt.to_pyarrow_table(
        filters=pc.field("day") <= last_day, columns=["sha256", "occurred_at", "day"]
    )
    if probe.num_rows == 0:
        return 0
    cut = pa.scalar(cutoff.astimezone(UTC), pa.timestamp("us", tz="UTC"))
    held_arr = pa.array(held, pa.string())

    def deletable(t: pa.Table) -> pa.ChunkedArray:
        old = pc.less(t["occurred_at"], cut)
        return pc.and_(old, pc.invert(pc.is_in(t["sha256"], value_set=held_arr)))

    gone = probe.filter(deletable(probe))
    if gone.num_rows == 0:
        return 0
    days: list[date] = sorted(set(gone["day"].to_pylist()))
    day_list = ", ".join(f"'{d.isoformat()}'" for d in days)
    rows = dt.to_pyarrow_table(filters=pc.field("day").isin(days))
    keep = rows.filter(pc.invert(deletable(rows)))
    predicate = f"day IN ({day_list})"
    if keep.num_rows:
        write_deltalake(dt, keep, mode="overwrite", predicate=predicate)
    else:
        dt.delete(predicate)
    return int(rows.num_rows - keep.num_rows)
