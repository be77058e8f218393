"""pipeline/loader.py, the write pipeline: batch N+1 is read, decoded and
projected (``LakeWarehouse.prepare_batch``) while batch N is written
(``write_prepared``). Writes stay in offset order, a revocation voids what is in
flight, a failure stops what follows; the warehouse holds every event once.

Real SQLite log and real lake; the lake subclasses below only watch or hold
calls (threading events) and then delegate to the real methods.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from pipeline.loader import Loader, LoaderConfig, LoaderError
from pipeline.transport import open_log
from pipeline.warehouse import LoadBatch, WarehouseError, WriteResult
from pipeline.warehouse.base import PreparedBatch
from pipeline.warehouse.lake import LakeWarehouse
from tests.pipeline.loader_helpers import append_records, chained_records
from tests.pipeline.test_loader import assert_exactly_once

#: a liveness bound for the waits below; they end on events, not on time
PATIENCE = 60.0


def small_batches(tmp_path: Path, **kwargs: Any) -> LoaderConfig:
    settings: dict[str, Any] = {
        "min_batch": 100,
        "initial_batch": 100,
        "max_batch": 100,
        "min_flush_interval": 0.05,
        "max_flush_interval": 0.3,
        "retry_initial": 0.05,
        "compact_interval": None,
        "status_dir": tmp_path / "status",
    }
    settings.update(kwargs)
    return LoaderConfig(**settings)


class WatchedLake(LakeWarehouse):
    """The real lake; records every prepare and write (first offsets), and can
    hold the write of the batch that starts at ``hold_at`` until released."""

    def __init__(self, root: Path, *, hold_at: int | None = None) -> None:
        super().__init__(root)
        self.hold_at = hold_at
        self.held = threading.Event()
        self.release = threading.Event()
        self.prepared: list[int] = []
        self.written: list[int] = []
        self.prepared_batches: list[PreparedBatch] = []
        self.written_batches: list[PreparedBatch] = []
        self.calls: list[tuple[str, int]] = []
        self._seen = threading.Condition()

    def prepare_batch(self, batch: LoadBatch) -> PreparedBatch:
        self.calls.append(("prepare", batch.first_offset))
        prepared = super().prepare_batch(batch)
        with self._seen:
            self.prepared.append(batch.first_offset)
            self.prepared_batches.append(prepared)
            self._seen.notify_all()
        return prepared

    def write_prepared(self, prepared: PreparedBatch) -> WriteResult:
        first = prepared.batch.first_offset
        self.calls.append(("write", first))
        if first == self.hold_at and not self.release.is_set():
            self.held.set()
            if not self.release.wait(PATIENCE):
                raise WarehouseError("the test never released the held write")
        result = super().write_prepared(prepared)
        self.written.append(first)
        self.written_batches.append(prepared)
        return result

    def wait_prepared(self, first_offset: int) -> bool:
        with self._seen:
            return self._seen.wait_for(lambda: first_offset in self.prepared, PATIENCE)


async def wait_until(predicate: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + PATIENCE
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_the_next_batch_is_prepared_while_one_is_written(tmp_path: Path) -> None:
    """The write of batch 0..99 is held until batch 100..199 was prepared: with a
    strictly serial loader (pipeline_depth=1) that never happens and the held
    write fails."""
    url = f"sqlite:{tmp_path / 'events.db'}"
    await append_records(url, list(chained_records(1_000, sessions=6)))
    lake = WatchedLake(tmp_path / "lake", hold_at=0)

    def release_once_the_next_is_prepared() -> None:
        if lake.held.wait(PATIENCE) and lake.wait_prepared(100):
            lake.release.set()

    helper = threading.Thread(target=release_once_the_next_is_prepared, daemon=True)
    helper.start()
    try:
        async with open_log(url) as lg:
            summary = await Loader(lg, lake, small_batches(tmp_path)).run(once=True)
        helper.join(PATIENCE)
        assert summary.events == 1_000
        assert lake.calls.index(("prepare", 100)) < lake.calls.index(("write", 100))
        assert lake.written == list(range(0, 1_000, 100))  # in offset order, once each
        assert summary.duplicate_batches == 0
        assert_exactly_once(lake, 1_000)
    finally:
        lake.release.set()
        lake.close()


async def test_serial_loading_never_prepares_ahead(tmp_path: Path) -> None:
    url = f"sqlite:{tmp_path / 'events.db'}"
    await append_records(url, list(chained_records(500, sessions=4)))
    lake = WatchedLake(tmp_path / "lake")
    try:
        async with open_log(url) as lg:
            summary = await Loader(lg, lake, small_batches(tmp_path, pipeline_depth=1)).run(
                once=True
            )
        assert summary.events == 500
        expected = [(kind, first) for first in range(0, 500, 100) for kind in ("prepare", "write")]
        assert lake.calls == expected
        assert_exactly_once(lake, 500)
    finally:
        lake.close()


async def test_a_revocation_voids_the_batches_in_flight(tmp_path: Path) -> None:
    """A rebalance takes the partition while batch 0..99 is being written and
    100..199 waits in the pipeline: the revocation waits for the write, the
    waiting batch is never written, and once the partition is assigned again the
    loader starts where the warehouse ends. Every event lands once."""
    url = f"sqlite:{tmp_path / 'events.db'}"
    await append_records(url, list(chained_records(1_000, sessions=6)))
    lake = WatchedLake(tmp_path / "lake", hold_at=0)
    stop = asyncio.Event()
    try:
        async with open_log(url) as lg:
            loader = Loader(lg, lake, small_batches(tmp_path))
            run = asyncio.create_task(loader.run(stop=stop))
            await wait_until(lake.held.is_set, "the first write to start")
            await asyncio.to_thread(lake.wait_prepared, 100)
            assert 100 not in lake.written
            in_flight = list(lake.prepared_batches[1:])
            assert [p.batch.first_offset for p in in_flight][:1] == [100]
            revoked = asyncio.create_task(loader._on_revoked(frozenset({0})))
            await asyncio.sleep(0.05)
            assert not revoked.done(), "the revocation must wait for the write in progress"
            lake.release.set()
            await asyncio.wait_for(revoked, PATIENCE)
            assert lake.written == [0]
            assert 0 not in loader._expected  # the partition is no longer this loader's
            await loader._on_assigned(frozenset({0}))

            def all_loaded() -> bool:
                return loader._expected.get(0) == 1_000 and not loader._flights

            await wait_until(all_loaded, "the loader to load the rest")
            stop.set()
            summary = await asyncio.wait_for(run, PATIENCE)
        # what was prepared before the revocation was never written; the new
        # assignment started at the warehouse's position (100): once, in order
        assert not any(w is p for w in lake.written_batches for p in in_flight)
        assert lake.written == sorted(lake.written)
        assert lake.written[:2] == [0, 100]
        assert summary.duplicate_batches == 0
        assert_exactly_once(lake, 1_000)
    finally:
        lake.release.set()
        lake.close()


class FailsAt(WatchedLake):
    """The real lake, whose write of the batch starting at ``fail_at`` is refused
    permanently."""

    def __init__(self, root: Path, fail_at: int) -> None:
        super().__init__(root)
        self.fail_at = fail_at

    def write_prepared(self, prepared: PreparedBatch) -> WriteResult:
        if prepared.batch.first_offset == self.fail_at:
            # let the batch after it into the pipeline first
            if not self.wait_prepared(self.fail_at + 100):
                raise AssertionError("the next batch was never prepared")
            raise WarehouseError("table requests has an incompatible schema (injected)")
        return super().write_prepared(prepared)


async def test_a_failed_write_stops_the_batches_behind_it(tmp_path: Path) -> None:
    url = f"sqlite:{tmp_path / 'events.db'}"
    await append_records(url, list(chained_records(800, sessions=5)))
    lake = FailsAt(tmp_path / "lake", fail_at=200)
    try:
        async with open_log(url) as lg:
            with pytest.raises(LoaderError, match="incompatible schema"):
                await Loader(lg, lake, small_batches(tmp_path)).run(once=True)
        assert 300 in lake.prepared  # it was in the pipeline ...
        assert lake.written == [0, 100]  # ... and nothing after the failure was written
        assert lake.loaded_positions((await _source(url))) == {0: 200}
    finally:
        lake.close()
    # a restart resumes at the failed batch
    again = LakeWarehouse(tmp_path / "lake")
    try:
        async with open_log(url) as lg:
            summary = await Loader(lg, again, small_batches(tmp_path)).run(once=True)
        assert summary.events == 600
        assert_exactly_once(again, 800)
    finally:
        again.close()


async def _source(url: str) -> str:
    async with open_log(url) as lg:
        return lg.source_id
