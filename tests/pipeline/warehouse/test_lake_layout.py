"""pipeline/warehouse/lake.py, read side: compaction sorts each day partition
on its table's lookup key (disjoint key ranges per file, so chDB can skip every
file but one for a lookup), and no row is lost, added or changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from pipeline.warehouse import LoadBatch, open_warehouse
from pipeline.warehouse.lake import SORT_KEYS, LakeWarehouse
from tests.pipeline.warehouse.scenario import build_scenario, renumber

SRC = "sqlite:lake-layout-test"


def _loaded(tmp_path: Path, sessions: int = 12, batch: int = 7) -> LakeWarehouse:
    wh = open_warehouse(f"lake:{tmp_path / 'lake'}")
    assert isinstance(wh, LakeWarehouse)
    wh.migrate()
    recs = renumber(build_scenario(sessions=sessions).records())
    # small batches interleave sessions: every file spans most of the key range
    for lo in range(0, len(recs), batch):
        wh.write_batch(LoadBatch(SRC, 0, recs[lo : lo + batch]))
    return wh


def _ranges(wh: LakeWarehouse, table: str) -> dict[str, list[tuple[str, str]]]:
    key = SORT_KEYS[table]
    actions = pa.table(DeltaTable(str(wh.table_path(table))).get_add_actions(flatten=True))
    out: dict[str, list[tuple[str, str]]] = {}
    for row in actions.to_pylist():
        out.setdefault(str(row["partition.day"]), []).append(
            (row[f"min.{key}"], row[f"max.{key}"])
        )
    return {day: sorted(r) for day, r in out.items()}


def _overlap(ranges: list[tuple[str, str]]) -> bool:
    return any(a[1] >= b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def _snapshot(wh: LakeWarehouse, table: str) -> list[Any]:
    rows = wh.query(f"SELECT * FROM {{{table}}} ORDER BY ALL", {})  # noqa: S608
    return rows


def test_compaction_sorts_partitions_on_the_lookup_key_and_keeps_every_row(
    tmp_path: Path,
) -> None:
    wh = _loaded(tmp_path, sessions=6)
    before = {t: _snapshot(wh, t) for t in SORT_KEYS}
    assert any(_overlap(r) for r in _ranges(wh, "events").values())
    wh.compact()
    for table in SORT_KEYS:
        assert _snapshot(wh, table) == before[table], table
        for day, ranges in _ranges(wh, table).items():
            assert not _overlap(ranges), (table, day, ranges)
    hint = json.loads((wh.root / "_sorted.json").read_text())
    assert set(hint) == set(SORT_KEYS) and all(hint[t] for t in ("events", "sessions"))


def test_only_partitions_with_new_files_are_sorted_again(tmp_path: Path) -> None:
    wh = _loaded(tmp_path, sessions=4)
    wh.compact()
    events_before = int(wh.query("SELECT count() AS n FROM {events}", {})[0]["n"])
    events = DeltaTable(str(wh.table_path("events")))
    files = set(events.file_uris())
    wh.compact()  # nothing new: no partition is rewritten
    events.update_incremental()
    assert set(events.file_uris()) == files
    # new appends overlap the sorted files: the next compaction sorts again
    more = renumber(build_scenario(sessions=3, gateway="gw-2").records(), start=10_000)
    for lo in range(0, len(more), 5):
        wh.write_batch(LoadBatch(SRC, 0, more[lo : lo + 5]))
    events.update_incremental()
    assert any(_overlap(r) for r in _ranges(wh, "events").values())
    wh.compact()
    assert not any(_overlap(r) for r in _ranges(wh, "events").values())
    events_after = int(wh.query("SELECT count() AS n FROM {events}", {})[0]["n"])
    assert events_after == events_before + len(more)


def test_the_open_day_is_sorted_again_only_once_enough_is_unsorted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today's partition is still being loaded; sorting it rewrites all of it,
    so a compaction sorts it again only when its unsorted files hold a quarter
    of its rows (or are many). A closed day is sorted whenever it changed."""
    wh = _loaded(tmp_path, sessions=8)
    monkeypatch.setattr(wh, "_today", lambda: "2026-03-01")  # the scenario's day is open
    wh.compact()  # all of it unsorted: sorted
    assert not any(_overlap(r) for r in _ranges(wh, "events").values())
    rows = int(wh.query("SELECT count() AS n FROM {events}", {})[0]["n"])
    events = DeltaTable(str(wh.table_path("events")))
    sorted_files = set(events.file_uris())

    # a little more (one session, in one batch): left unsorted, the sorted files stay
    little = renumber(build_scenario(sessions=1, gateway="gw-2").records(), start=10_000)
    wh.write_batch(LoadBatch(SRC, 0, little))
    wh.compact()
    events.update_incremental()
    assert sorted_files < set(events.file_uris())
    assert any(_overlap(r) for r in _ranges(wh, "events").values())
    assert int(wh.query("SELECT count() AS n FROM {events}", {})[0]["n"]) == rows + len(little)

    # past a quarter of the day's rows unsorted: sorted again
    more = renumber(build_scenario(sessions=3, gateway="gw-3").records(), start=20_000)
    for lo in range(0, len(more), 50):
        wh.write_batch(LoadBatch(SRC, 0, more[lo : lo + 50]))
    wh.compact()
    assert not any(_overlap(r) for r in _ranges(wh, "events").values())
    total = rows + len(little) + len(more)
    assert int(wh.query("SELECT count() AS n FROM {events}", {})[0]["n"]) == total

    # once the day is closed, any change is sorted at the next compaction
    monkeypatch.setattr(wh, "_today", lambda: "2026-03-02")
    late = renumber(build_scenario(sessions=1, gateway="gw-4").records(), start=30_000)
    wh.write_batch(LoadBatch(SRC, 0, late))
    assert any(_overlap(r) for r in _ranges(wh, "events").values())
    wh.compact()
    assert not any(_overlap(r) for r in _ranges(wh, "events").values())


def test_loading_goes_on_while_a_compaction_sorts(tmp_path: Path) -> None:
    """compact() takes no write lock: a batch loads (and commits, from snapshots
    older than the sort's commits) while a sort is in progress, and the sort's
    commit then keeps every row of both."""
    import threading

    from pipeline.warehouse import WriteResult

    wh = _loaded(tmp_path, sessions=4)
    more = renumber(build_scenario(sessions=3, gateway="gw-2").records(), start=10_000)
    wh.write_batch(LoadBatch(SRC, 0, more[:5]))  # the writer now trusts its snapshots
    before = int(wh.query("SELECT count() AS n FROM {events}", {})[0]["n"])
    entered, written = threading.Event(), threading.Event()
    optimize = wh._optimize

    def paused(table: str, dt: DeltaTable) -> None:
        if table == "events" and not entered.is_set():
            entered.set()
            written.wait(120)  # a liveness bound only: the writer below releases it
        optimize(table, dt)

    wh._optimize = paused  # type: ignore[method-assign]
    compaction = threading.Thread(target=wh.compact)
    compaction.start()
    assert entered.wait(120), "compaction never reached the events table"
    results: list[WriteResult] = []
    writer = threading.Thread(
        target=lambda: results.append(wh.write_batch(LoadBatch(SRC, 0, more[5:])))
    )
    writer.start()
    writer.join(90)
    done_while_sorting = not writer.is_alive()
    written.set()
    writer.join()
    compaction.join()
    assert done_while_sorting, "write_batch waited for the compaction"
    [result] = results
    assert result.events + result.dead_letters == len(more) - 5 and result.events > 0
    ids = [r["event_id"] for r in wh.query("SELECT event_id FROM {events}", {})]
    assert len(ids) == len(set(ids)) == before + result.events  # every event, once
    hint = json.loads((wh.root / "_sorted.json").read_text())
    assert hint["events"]
    # the next compaction sorts the partition the batch landed in again, losing nothing
    wh._optimize = optimize  # type: ignore[method-assign]
    wh.compact()
    for day, ranges in _ranges(wh, "events").items():
        assert not _overlap(ranges), (day, ranges)
    assert int(wh.query("SELECT count() AS n FROM {events}", {})[0]["n"]) == len(ids)
