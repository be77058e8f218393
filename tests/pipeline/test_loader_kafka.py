"""Loaders of one consumer group sharing a Kafka topic (the real Tansu broker):
rebalancing, including a loader killed with SIGKILL mid-stream, loses and
duplicates nothing.

Tansu answers a group join only after half the session timeout, so the loaders
run with a 2 s session timeout (see tests/pipeline/transport/test_kafka.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline.loader import Loader, LoaderConfig
from pipeline.loader_status import LoaderStatus, read_statuses
from pipeline.transport import AppendRecord
from pipeline.transport.base import LogRecord
from pipeline.transport.kafka import KafkaEventLog, KafkaLogReader
from pipeline.warehouse import WriteResult
from pipeline.warehouse.base import PreparedBatch
from pipeline.warehouse.lake import LakeWarehouse
from schemas.chain import verify_chains
from tests.pipeline.loader_helpers import chained_records, decode_raw
from tests.pipeline.warehouse.scenario import chdb_warehouse

PARTITIONS = 4
#: consumer groups that notice a dead member within seconds
GROUP_TIMEOUTS: dict[str, Any] = {"session_timeout": 2.0, "heartbeat_interval": 0.3}
GROUP_TIMINGS = "session_timeout=2&heartbeat_interval=0.3&connect_timeout=10"


def kafka_url(bootstrap: str, topic: str) -> str:
    return f"kafka://{bootstrap}?topic={topic}&partitions={PARTITIONS}&{GROUP_TIMINGS}"


def start_loader(
    log_url: str, lake_dir: Path, status_dir: Path, group: str
) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("embedguard")
    return subprocess.Popen(
        [
            str(exe),
            "loader",
            "--log",
            log_url,
            "--warehouse",
            f"lake:{lake_dir}",
            "--group",
            group,
            "--status-dir",
            str(status_dir),
            "--compact-every",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def wait_for(predicate: object, what: str, within: float = 120.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def running(status_dir: Path, group: str) -> dict[int, LoaderStatus]:
    return {s.pid: s for s, alive in read_statuses(status_dir, group) if alive}


def ends_of(positions: list[tuple[int, int]]) -> dict[int, int]:
    ends: dict[int, int] = {}
    for partition, offset in positions:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


def group_log(bootstrap: str, topic: str, partitions: int) -> KafkaEventLog:
    """A log whose consumer groups notice a dead member within seconds."""
    return KafkaEventLog(bootstrap, topic=topic, partitions=partitions, **GROUP_TIMEOUTS)


def fixed_batches(group: str, size: int, flush_interval: float) -> LoaderConfig:
    """Batches of exactly ``size`` records, cut by time only after ``flush_interval``."""
    return LoaderConfig(
        group=group,
        min_batch=size,
        initial_batch=size,
        max_batch=size,
        min_flush_interval=flush_interval,
        max_flush_interval=flush_interval,
        compact_interval=None,
    )


def full_batches(counts: dict[int, int], size: int) -> dict[int, list[int]]:
    """Each partition's records as full batches of ``size`` and then the rest."""
    return {p: [size] * (n // size) + ([n % size] if n % size else []) for p, n in counts.items()}


def check_exactly_once(lake: LakeWarehouse, expected: int, sessions: int) -> None:
    counts = lake.query(
        "SELECT count() AS n, uniqExact(event_id) AS u, "
        "uniqExact(src_partition, src_offset) AS o FROM {events}",
        {},
    )[0]
    assert counts == {"n": expected, "u": expected, "o": expected}, counts
    rows = lake.query(
        "SELECT session_id, seq, hex(raw) AS raw FROM {events} ORDER BY src_partition, src_offset",
        {},
    )
    seqs: dict[str, list[int]] = {}
    for row in rows:
        seqs.setdefault(row["session_id"], []).append(int(row["seq"]))
    assert len(seqs) == sessions
    for sid, got in seqs.items():
        assert got == list(range(len(got))), f"session {sid}: gap or repeat"
    # a session lives in one partition, so per-partition offset order is its order
    assert verify_chains(decode_raw(row["raw"]) for row in rows) == []


@pytest.mark.kafka
@pytest.mark.slow
async def test_two_loaders_share_partitions_and_survive_a_kill_9(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    url = kafka_url(kafka_bootstrap, kafka_topic)
    lake_dir, status_dir, group = tmp_path / "lake", tmp_path / "status", "loaders"
    records = list(chained_records(12_000, sessions=24, seed=5))
    positions: list[tuple[int, int]] = []
    survivor: subprocess.Popen[bytes] | None = None
    victim: subprocess.Popen[bytes] | None = None
    log = group_log(kafka_bootstrap, kafka_topic, PARTITIONS)
    try:
        async with log:
            first, rest = records[:4_000], records[4_000:]
            positions += [(p.partition, p.offset) for p in await log.append(first)]
            victim = start_loader(url, lake_dir, status_dir, group)
            survivor = start_loader(url, lake_dir, status_dir, group)

            def both_loading() -> bool:
                live = running(status_dir, group)
                return (
                    len(live) == 2
                    and all(s.assigned for s in live.values())
                    and live.get(victim.pid, None) is not None
                    and live[victim.pid].events_loaded > 0
                )

            await asyncio.to_thread(wait_for, both_loading, "both loaders to hold partitions")
            shares = {pid: set(s.assigned) for pid, s in running(status_dir, group).items()}
            assert not set.intersection(*shares.values()), shares  # shared, not duplicated

            # mid-stream: appends go on while one loader dies without a goodbye
            for i in range(0, len(rest), 1_000):
                chunk: list[AppendRecord] = rest[i : i + 1_000]
                positions += [(p.partition, p.offset) for p in await log.append(chunk)]
                if i == 2_000:
                    os.kill(victim.pid, signal.SIGKILL)
                    victim.communicate(timeout=30)
                await asyncio.sleep(0.1)
    finally:
        if victim is not None and victim.poll() is None:
            victim.kill()
            victim.communicate(timeout=30)

    ends = ends_of(positions)
    assert len(ends) == PARTITIONS
    lake = LakeWarehouse(lake_dir)
    try:
        source = f"kafka:{kafka_topic}"

        def drained() -> bool:
            return lake.loaded_positions(source) == ends

        await asyncio.to_thread(wait_for, drained, "the survivor to load every partition", 180)
        assert survivor is not None
        survivor_pid = survivor.pid

        def took_over_all() -> bool:
            # the status file is rewritten on every tick; a tick during a late
            # rebalance (the group coordinator expiring the dead member) shows an
            # empty assignment for a moment, so wait for the settled one
            live = running(status_dir, group)
            return set(live) == {survivor_pid} and set(live[survivor_pid].assigned) == set(
                range(PARTITIONS)
            )

        await asyncio.to_thread(wait_for, took_over_all, "the survivor to hold every partition", 60)
        survivor.send_signal(signal.SIGTERM)
        _, err = survivor.communicate(timeout=60)
        assert survivor.returncode == 0, err.decode(errors="replace")[-2000:]
        check_exactly_once(lake, len(records), 24)
    finally:
        lake.close()
        if survivor is not None and survivor.poll() is None:
            survivor.kill()
            survivor.communicate(timeout=30)


@pytest.mark.kafka
async def test_a_restarted_loader_resumes_from_the_warehouse_not_the_group(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    """In process: load, then load again with a group that has committed nothing;
    the warehouse positions win and nothing is written twice. ``--once`` also
    finds the end despite Tansu's low end offsets."""
    log = group_log(kafka_bootstrap, kafka_topic, 3)
    records = list(chained_records(3_000, sessions=9, seed=3))
    lake = LakeWarehouse(tmp_path / "lake")
    cfg = LoaderConfig(
        group="g1", min_flush_interval=0.05, max_flush_interval=0.3, status_dir=tmp_path / "s"
    )
    try:
        async with log:
            await log.append(records)
            first = await Loader(log, lake, cfg).run(once=True)
            assert first.events == 3_000
            more = list(chained_records(300, sessions=3, seed=4))
            await log.append(more)
            # A group with no committed offsets would start at the oldest records;
            # the warehouse's positions decide instead.
            second = await Loader(log, lake, replace(cfg, group="g2")).run(once=True)
        assert second.events == 300
        # whatever the consumer fetched before the seek landed was dropped, not loaded
        assert second.batches >= 1 and second.duplicate_batches == 0
        check_exactly_once(lake, 3_300, 12)
    finally:
        lake.close()


class BatchSizes(LakeWarehouse):
    """The real lake; remembers the size of every batch the loader writes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.sizes: dict[int, list[int]] = {}

    def write_prepared(self, prepared: PreparedBatch) -> WriteResult:
        batch = prepared.batch
        self.sizes.setdefault(batch.partition, []).append(len(batch.records))
        return super().write_prepared(prepared)


@pytest.mark.kafka
async def test_the_batch_size_is_per_partition(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    """A batch is one partition's run, so the batch size counts per partition: a
    partition's records are written in full batches, not cut into small ones
    (each paying a write's fixed costs) whenever the partitions together reach
    the size. Continuous mode with long flush intervals: a batch ends only when
    it is full, or when the loader stops (the rest)."""
    log = group_log(kafka_bootstrap, kafka_topic, 3)
    records = list(chained_records(3_000, sessions=9, seed=8))
    lake = BatchSizes(tmp_path / "lake")
    # long enough that no batch is cut by time; a poll waits up to this long,
    # so a stop takes effect within it
    cfg = fixed_batches("sizes", 500, flush_interval=10.0)
    stop = asyncio.Event()
    try:
        async with log:
            # a fresh topic: each partition's end offset is its record count
            counts = ends_of([(p.partition, p.offset) for p in await log.append(records)])
            loader = Loader(log, lake, cfg)
            run = asyncio.create_task(loader.run(stop=stop))
            full = sum(n - n % 500 for n in counts.values())
            deadline = time.monotonic() + 120
            while loader.summary.events < full:
                assert time.monotonic() < deadline, f"loaded {loader.summary.events} of {full}"
                assert not run.done(), run.result()
                await asyncio.sleep(0.05)
            stop.set()
            summary = await asyncio.wait_for(run, 60)
        assert summary.events == 3_000
        assert lake.sizes == full_batches(counts, 500)
        check_exactly_once(lake, 3_000, 9)
    finally:
        lake.close()


class StutteringReader(KafkaLogReader):
    """The real reader, but every other poll comes back empty at once without
    asking the consumer, as a poll does whose timeout ends while a fetch is in
    flight (on a busy machine, often)."""

    def __init__(self, log: KafkaEventLog, group: str) -> None:
        super().__init__(log, group)
        self.polls = 0
        self.stutters_amid_a_partition = 0

    async def poll(self, max_records: int = 1000, timeout: float = 1.0) -> list[LogRecord]:
        self.polls += 1
        if self.polls % 2 == 0:
            await asyncio.sleep(0)
            if self.assignment - self.caught_up_partitions():
                self.stutters_amid_a_partition += 1
            return []
        return await super().poll(max_records, timeout)


class StutteringLog(KafkaEventLog):
    def reader(self, group: str, **kw: Any) -> KafkaLogReader:
        assert not kw
        self.last_reader = StutteringReader(self, group)
        return self.last_reader


@pytest.mark.kafka
async def test_once_writes_full_batches_despite_empty_polls(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """``--once`` writes a partition's partial batch only once the reader has read
    to its end: an empty poll while records are still to come cuts no batch, so
    the ``loads`` table shows each partition in full batches plus its rest. (It
    used to write every partition's partial buffer on any empty poll.) Flush
    intervals are long, so time cuts nothing either."""
    log = StutteringLog(kafka_bootstrap, topic=kafka_topic, partitions=3, **GROUP_TIMEOUTS)
    records = list(chained_records(3_000, sessions=9, seed=11))
    wh = chdb_warehouse()
    cfg = fixed_batches("once-sizes", 400, flush_interval=60.0)
    try:
        async with log:
            counts = ends_of([(p.partition, p.offset) for p in await log.append(records)])
            summary = await asyncio.wait_for(Loader(log, wh, cfg).run(once=True), 240)
        assert summary.events == 3_000 and summary.duplicate_batches == 0
        assert log.last_reader.stutters_amid_a_partition > 0  # the case under test happened
        rows = wh.query(
            "SELECT src_partition, first_offset, last_offset FROM {loads} "
            "WHERE table_name = '*' ORDER BY src_partition, first_offset",
            {},
        )
        sizes: dict[int, list[int]] = {}
        for row in rows:
            sizes.setdefault(int(row["src_partition"]), []).append(
                int(row["last_offset"]) - int(row["first_offset"]) + 1
            )
        assert sizes == full_batches(counts, 400)
        got = wh.query("SELECT count() AS n, uniqExact(event_id) AS u FROM {events}", {})[0]
        assert got == {"n": 3_000, "u": 3_000}
    finally:
        wh._command(f"DROP DATABASE IF EXISTS {wh.db}")
