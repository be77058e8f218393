"""pipeline/retention.py: evidence holds (EvidenceHeld events, chunked) and the
hold-aware body purge, on the Delta lake and on chDB MergeTree.

Age is simulated, never slept: the scenario's bodies were recorded at T0
(March 2026) and the purge runs with an explicit clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.retention import (
    HOLD_PART_ITEMS,
    HoldRequest,
    RetentionError,
    configured_hold_days,
    hold_event_bodies,
    holds,
    parse_days,
    purge_bodies,
    retention_report,
)
from pipeline.transport.base import LogRecord
from pipeline.warehouse import LoadBatch, Warehouse, open_warehouse
from schemas.chain import EventStamper
from schemas.codec import default_codec
from schemas.models import EvidenceHeld
from tests.pipeline.warehouse.scenario import T0, build_scenario, chdb_warehouse

SRC = "sqlite:retention-test"
RETENTION = 30


def _hex(i: int) -> str:
    return f"{i:064x}"


@pytest.fixture(params=["lake", "chdb"])
def wh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    w: Warehouse
    if request.param == "lake":
        w = open_warehouse(f"lake:{tmp_path / 'lake'}?body_retention_days={RETENTION}")
    else:
        w = chdb_warehouse()
        w.body_retention_days = RETENTION  # type: ignore[attr-defined]
    w.migrate()
    try:
        yield w
    finally:
        w.close()


def _hold_records(
    req: HoldRequest, start: int, part_items: int = HOLD_PART_ITEMS
) -> list[LogRecord]:
    st = EventStamper("embedguard-cli/test")
    out = []
    for i, body in enumerate(hold_event_bodies(req, part_items)):
        ev = st.stamp(EvidenceHeld, session_id=f"hold-{req.hold_id}", **body)
        out.append(LogRecord(0, start + i, b"k", ev.wire, 0))
    return out


def _body_shas(wh: Warehouse) -> list[str]:
    return [
        r["sha256"] for r in wh.query("SELECT DISTINCT sha256 FROM {bodies} ORDER BY sha256", {})
    ]


def _req(shas: list[str], until: datetime, sessions: list[str] | None = None) -> HoldRequest:
    return HoldRequest(
        hold_id=str(uuid.uuid4()),
        bundle_sha256=_hex(42),
        bundle_name="evidence.zip",
        held_by="auditor-ann",
        held_until=until,
        body_sha256s=shas,
        session_ids=sessions or ["s-alice-0"],
        event_count=12,
    )


def _load_with_hold(wh: Warehouse, held: int, until: datetime) -> tuple[list[LogRecord], list[str]]:
    recs = build_scenario(sessions=2).records()
    wh.write_batch(LoadBatch(SRC, 0, recs))
    shas = _body_shas(wh)
    assert len(shas) >= held + 2
    hold = _hold_records(_req(shas[:held], until), len(recs))
    wh.write_batch(LoadBatch(SRC, 0, hold))
    return recs + hold, shas


def _events(wh: Warehouse) -> int:
    return int(wh.query("SELECT count() AS n FROM {events}", {})[0]["n"])


def test_held_bodies_survive_the_purge_until_the_hold_ends(wh: Warehouse) -> None:
    until = T0 + timedelta(days=100)
    records, shas = _load_with_hold(wh, 2, until)
    held, unheld = shas[:2], shas[2:]
    events = _events(wh)

    # 50 days later: every body is past the 30-day retention; two are held
    now = T0 + timedelta(days=50)
    plan = retention_report(wh, now=now)
    assert plan.body_retention_days == RETENTION
    assert (plan.delete_bodies, plan.keep_held_bodies, plan.keep_young_bodies) == (
        len(unheld),
        2,
        0,
    )
    assert plan.delete_bytes > 0
    [h] = plan.holds
    assert h.active and h.held_by == "auditor-ann" and h.body_count == 2 and h.complete
    done = purge_bodies(wh, now=now)
    assert done.deleted_rows and done.deleted_rows >= len(unheld)
    assert _body_shas(wh) == held  # held kept, the unheld of the same age gone
    assert _events(wh) == events  # events are the evidence: never purged
    again = purge_bodies(wh, now=now)
    assert again.deleted_rows == 0

    # the hold ended: the next purge lets its bodies go
    later = until + timedelta(seconds=1)
    plan = retention_report(wh, now=later)
    assert plan.delete_bodies == 2 and plan.keep_held_bodies == 0
    assert not plan.holds[0].active
    purge_bodies(wh, now=later)
    assert _body_shas(wh) == []
    assert _events(wh) == events
    # the hold itself stays (it is the record that the bundle existed)
    assert len(holds(wh, now=later)) == 1 and holds(wh, now=later, active_only=True) == []


def test_young_bodies_are_kept_and_no_retention_keeps_everything(
    wh: Warehouse, tmp_path: Path
) -> None:
    _load_with_hold(wh, 1, T0 + timedelta(days=100))
    n = len(_body_shas(wh))
    plan = retention_report(wh, now=T0 + timedelta(days=RETENTION - 1))
    assert (plan.delete_bodies, plan.keep_young_bodies) == (0, n)
    assert purge_bodies(wh, now=T0 + timedelta(days=RETENTION - 1)).deleted_rows == 0
    wh.body_retention_days = None  # type: ignore[attr-defined]
    plan = retention_report(wh, now=T0 + timedelta(days=3650))
    assert plan.cutoff is None and plan.delete_bodies == 0
    assert purge_bodies(wh, now=T0 + timedelta(days=3650)).deleted_rows == 0
    assert len(_body_shas(wh)) == n


def test_a_large_hold_comes_in_parts_and_projects_whole(wh: Warehouse) -> None:
    recs = build_scenario(sessions=1).records()
    wh.write_batch(LoadBatch(SRC, 0, recs))
    real = _body_shas(wh)
    shas = real + [_hex(i) for i in range(1, 10)]
    req = _req(shas, T0 + timedelta(days=400), sessions=["s-a", "s-b"])
    parts = hold_event_bodies(req, part_items=4)
    assert len(parts) == -(-(len(shas) + 2) // 4)
    assert sorted(s for p in parts for s in p["body_sha256s"]) == sorted(shas)
    assert {p["parts"] for p in parts} == {len(parts)}
    # load the parts in two batches, the last one later: a partial hold holds what it has
    hold = _hold_records(req, len(recs), part_items=4)
    wh.write_batch(LoadBatch(SRC, 0, hold[:-1]))
    [h] = holds(wh, now=T0)
    assert h.parts == len(parts) and h.parts_loaded == len(parts) - 1 and not h.complete
    wh.write_batch(LoadBatch(SRC, 0, hold[-1:]))
    [h] = holds(wh, now=T0)
    assert h.complete and h.bodies_loaded == h.body_count == len(shas)
    assert h.session_count == 2
    purge_bodies(wh, now=T0 + timedelta(days=100))
    assert _body_shas(wh) == real


def test_a_rebuilt_warehouse_has_the_same_holds(wh: Warehouse, tmp_path: Path) -> None:
    records, _ = _load_with_hold(wh, 2, T0 + timedelta(days=100))
    other = open_warehouse(f"lake:{tmp_path / 'rebuilt'}?body_retention_days={RETENTION}")
    other.migrate()
    # the same log, loaded in other batch boundaries
    for i in range(0, len(records), 7):
        other.write_batch(LoadBatch(SRC, 0, records[i : i + 7]))
    now = T0 + timedelta(days=50)
    assert holds(other, now=now) == holds(wh, now=now)
    a, b = retention_report(other, now=now), retention_report(wh, now=now)
    assert (a.delete_bodies, a.keep_held_bodies) == (b.delete_bodies, b.keep_held_bodies)
    other.close()


def test_a_hold_in_a_duplicate_batch_counts_once(wh: Warehouse) -> None:
    records, _ = _load_with_hold(wh, 2, T0 + timedelta(days=100))
    assert wh.write_batch(LoadBatch(SRC, 0, records)).duplicate
    [h] = holds(wh, now=T0)
    assert h.bodies_loaded == 2 and h.parts_loaded == 1


def test_hold_events_stay_small() -> None:
    """100k held bodies: no giant event. Measures the encoded size of each part."""
    req = _req([_hex(i) for i in range(100_000)], T0, sessions=[f"s-{i}" for i in range(500)])
    st = EventStamper("embedguard-cli/size")
    sizes = [
        len(st.stamp(EvidenceHeld, session_id="hold-x", **b).wire) for b in hold_event_bodies(req)
    ]
    assert len(sizes) == -(-100_500 // HOLD_PART_ITEMS)
    # under Kafka's default 1 MB message limit, with room for the envelope
    assert max(sizes) < 512 * 1024
    decoded = default_codec().decode(
        st.stamp(EvidenceHeld, session_id="hold-x", **hold_event_bodies(req)[0]).wire
    )
    assert isinstance(decoded.event, EvidenceHeld) and len(decoded.event.body_sha256s) == (
        HOLD_PART_ITEMS
    )


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("365", 365),
        ("1", 1),
        (7, 7),
        ("0", None),
        ("-3", None),
        ("1.5", None),
        ("x", None),
        ("99999", None),
    ],
)
def test_day_values(value: str | int, ok: int | None) -> None:
    if ok is None:
        with pytest.raises(RetentionError, match="whole number of days"):
            parse_days(value, "--hold-days")
    else:
        assert parse_days(value, "--hold-days") == ok


def test_configured_hold_days() -> None:
    assert configured_hold_days({}) == 365
    assert configured_hold_days({"EMBEDGUARD_EVIDENCE_HOLD_DAYS": "30"}) == 30
    with pytest.raises(RetentionError, match="EMBEDGUARD_EVIDENCE_HOLD_DAYS"):
        configured_hold_days({"EMBEDGUARD_EVIDENCE_HOLD_DAYS": "forever"})


def test_compact_applies_the_hold_aware_purge(wh: Warehouse) -> None:
    """The loader's maintenance (``compact``) purges with the real clock: the
    scenario's March 2026 bodies are past 30 days, the held one is held till 2100."""
    _, shas = _load_with_hold(wh, 1, datetime(2100, 1, 1, tzinfo=UTC))
    wh.compact()
    assert _body_shas(wh) == shas[:1]


def test_the_loaders_maintenance_defers_the_purge_while_holds_are_unloaded(
    wh: Warehouse, tmp_path: Path
) -> None:
    """A real SQLite log: the scenario is loaded, then a hold is appended but not
    loaded. The maintenance check (run by the loader before compact) defers the
    purge; once the loader has loaded the hold, compact purges around it."""
    import asyncio

    from pipeline.loader import Loader, LoaderConfig
    from pipeline.retention import gate_purge, pending_holds
    from pipeline.transport import AppendRecord, open_log

    url = f"sqlite:{tmp_path / 'events.db'}"
    scenario = build_scenario(sessions=2)

    async def append(records: list[AppendRecord]) -> None:
        async with open_log(url) as lg:
            await lg.append(records)

    async def load() -> None:
        async with open_log(url) as lg:
            await Loader(lg, wh, LoaderConfig(compact_interval=None)).run(once=True)

    async def gate() -> str | None:
        async with open_log(url) as lg:
            return await gate_purge(lg, wh)

    asyncio.run(append([AppendRecord(b"k", ev.wire) for ev in scenario.events]))
    asyncio.run(load())
    shas = _body_shas(wh)
    req = _req(shas[:1], datetime(2100, 1, 1, tzinfo=UTC))
    st = EventStamper("embedguard-cli/test")
    holds_ev = [st.stamp(EvidenceHeld, session_id="hold-1", **b) for b in hold_event_bodies(req)]
    asyncio.run(append([AppendRecord(b"hold-1", e.wire) for e in holds_ev]))
    assert asyncio.run(pending_holds(url, wh)) == (1, 1)
    reason = asyncio.run(gate())
    assert reason and "not loaded yet" in reason
    wh.compact()
    assert _body_shas(wh) == shas  # deferred: nothing purged
    asyncio.run(load())
    assert asyncio.run(gate()) is None
    wh.compact()
    assert _body_shas(wh) == shas[:1]


def test_checking_a_log_never_creates_one_nor_accepts_a_foreign_one(
    wh: Warehouse, tmp_path: Path
) -> None:
    """The purge's check must name the warehouse's own log: a missing file is
    not created (an empty new log would hide the real one's holds) and a log the
    warehouse loaded nothing from is refused; either way the purge is deferred."""
    import asyncio

    from pipeline.retention import gate_purge_url, pending_holds
    from pipeline.transport import AppendRecord, open_log

    _load_with_hold(wh, 1, T0 + timedelta(days=100))
    missing = tmp_path / "no-log.db"
    with pytest.raises(FileNotFoundError):
        asyncio.run(pending_holds(f"sqlite:{missing}", wh))
    assert not missing.exists()
    reason = asyncio.run(gate_purge_url(f"sqlite:{missing}", wh))
    assert reason and "no event log" in reason and not missing.exists()
    n = len(_body_shas(wh))
    wh.compact()
    assert len(_body_shas(wh)) == n  # deferred

    other = f"sqlite:{tmp_path / 'other.db'}"

    async def make_other() -> None:
        async with open_log(other) as lg:
            await lg.append([AppendRecord(b"k", build_scenario(sessions=1).events[0].wire)])

    asyncio.run(make_other())
    with pytest.raises(LookupError, match="holds nothing loaded from this log"):
        asyncio.run(pending_holds(other, wh))
