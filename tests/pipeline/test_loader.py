"""pipeline/loader.py: SQLite log → Delta lake (read back through chDB), in process.

Everything is real: the SQLite event log, the lake warehouse (deltalake + chDB).
Fault injection wraps the real warehouse (it fails some calls, then delegates).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.loader import (
    BatchPolicy,
    Loader,
    LoaderConfig,
    LoaderError,
    LoadSummary,
    dead_letter_count,
)
from pipeline.loader_status import RateMeter, read_statuses, scrub
from pipeline.transport import AppendRecord, open_log
from pipeline.transport.kafka import KafkaEventLog
from pipeline.transport.sqlite import SqliteEventLog
from pipeline.warehouse import LoadBatch, WarehouseError, WarehouseUnavailable, WriteResult
from pipeline.warehouse.base import PreparedBatch
from pipeline.warehouse.lake import LakeWarehouse
from schemas.chain import verify_chains
from schemas.codec import FIXTURES_DIR
from tests.pipeline.loader_helpers import (
    append_records,
    chained_records,
    decode_raw,
    read_records,
    write_dead_letters_twice,
)

FAST = {"min_flush_interval": 0.05, "max_flush_interval": 0.3, "retry_initial": 0.05}


def config(tmp_path: Path, **kwargs: Any) -> LoaderConfig:
    settings: dict[str, Any] = {**FAST, "status_dir": tmp_path / "status"}
    settings.update(kwargs)
    return LoaderConfig(**settings)


async def load_once(
    log_url: str, warehouse: LakeWarehouse, cfg: LoaderConfig
) -> tuple[LoadSummary, str]:
    async with open_log(log_url) as lg:
        loader = Loader(lg, warehouse, cfg)
        summary = await loader.run(once=True)
        return summary, lg.source_id


def event_rows(warehouse: LakeWarehouse) -> list[dict[str, Any]]:
    return warehouse.query(
        "SELECT event_id, session_id, seq, src_offset, hex(raw) AS raw FROM {events} "
        "ORDER BY src_offset",
        {},
    )


def assert_exactly_once(warehouse: LakeWarehouse, expected: int) -> None:
    rows = event_rows(warehouse)
    ids = Counter(r["event_id"] for r in rows)
    assert len(rows) == expected, f"{len(rows)} rows for {expected} events"
    assert len(ids) == expected, [i for i, n in ids.items() if n > 1][:5]
    by_session: dict[str, list[int]] = {}
    for r in rows:
        by_session.setdefault(r["session_id"], []).append(int(r["seq"]))
    for sid, seqs in by_session.items():
        assert sorted(seqs) == list(range(len(seqs))), f"session {sid} has gaps"
    assert verify_chains(decode_raw(r["raw"]) for r in rows) == []


@pytest.fixture
def lake(tmp_path: Path) -> LakeWarehouse:
    wh = LakeWarehouse(tmp_path / "lake")
    yield wh  # type: ignore[misc]
    wh.close()


# --------------------------------------------------------------------------- policy


def test_batch_policy_grows_under_backlog_and_shrinks_when_idle() -> None:
    cfg = LoaderConfig(
        min_batch=100,
        initial_batch=1_000,
        max_batch=10_000,
        min_flush_interval=0.1,
        max_flush_interval=2.0,
    )
    policy = BatchPolicy(cfg)
    start_interval = policy.flush_interval
    for _ in range(10):
        policy.on_flush("size", policy.batch_size)
    assert policy.batch_size == 10_000  # capped
    assert policy.flush_interval == cfg.max_flush_interval
    assert policy.flush_interval > start_interval
    policy.on_flush("time", 5_000)  # half full on time: keep
    assert policy.batch_size == 10_000
    for _ in range(20):
        policy.on_flush("time", 1)
    assert policy.batch_size == 100
    assert policy.flush_interval == cfg.min_flush_interval
    policy.on_flush("drain", 0)
    assert policy.batch_size == 100


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"min_batch": 0}, "min_batch"),
        ({"initial_batch": 20_000}, "initial_batch"),
        ({"min_flush_interval": 0}, "flush"),
        ({"retry_initial": 0}, "retr"),
        ({"group": ""}, "group"),
        ({"give_up_after": 0}, "give_up_after"),
        ({"give_up_after": -1.0}, "give_up_after"),
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        LoaderConfig(**kwargs)


def test_rate_meter_counts_the_last_window_only() -> None:
    meter = RateMeter(window_s=60)
    start = meter._started
    meter.add(600, now=start + 1)
    assert meter.rate(now=start + 60) == pytest.approx(10.0)
    meter.add(120, now=start + 100)
    assert meter.rate(now=start + 120) == pytest.approx(2.0)  # the 600 fell out


@pytest.mark.parametrize(
    "message",
    [
        "cannot reach clickhouse://loader:s3cr3t-pw@10.0.0.1:8123/db",
        "bad dsn https://u:s3cr3t-pw@host/x?password=s3cr3t-pw",
        "auth failed: password=s3cr3t-pw&user=x",
    ],
)
def test_scrub_removes_credentials(message: str) -> None:
    assert "s3cr3t-pw" not in scrub(message)


# --------------------------------------------------------------------------- source ids


async def test_sqlite_source_id_is_stable_and_per_log(tmp_path: Path) -> None:
    async with SqliteEventLog(tmp_path / "a.db") as a:
        first = a.source_id
    assert first.startswith("sqlite:") and len(first) == len("sqlite:") + 36
    moved = tmp_path / "moved.db"
    os.rename(tmp_path / "a.db", moved)
    async with SqliteEventLog(moved) as a:
        assert a.source_id == first  # the id lives in the file, not the path
    async with SqliteEventLog(tmp_path / "b.db") as b:
        assert b.source_id != first
    with pytest.raises(RuntimeError, match="not started"):
        _ = SqliteEventLog(tmp_path / "c.db").source_id


async def test_a_log_made_before_source_ids_gets_one_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    async with SqliteEventLog(path) as lg:
        await lg.append([AppendRecord(b"k", b"v")])
    with sqlite3.connect(path) as conn:  # what a log of the first release looked like
        conn.execute("DELETE FROM meta WHERE key = 'log_id'")
    async with SqliteEventLog(path) as lg:
        assigned = lg.source_id
    async with SqliteEventLog(path) as lg:
        assert lg.source_id == assigned


def test_kafka_source_id_is_the_topic() -> None:
    assert KafkaEventLog("127.0.0.1:9", topic="audit.events").source_id == "kafka:audit.events"


# --------------------------------------------------------------------------- loading


async def test_loads_every_event_once_and_again_loads_nothing(
    tmp_path: Path, lake: LakeWarehouse
) -> None:
    url = f"sqlite:{tmp_path / 'events.db'}"
    await append_records(url, list(chained_records(3_000, sessions=12)))
    summary, source = await load_once(url, lake, config(tmp_path, initial_batch=500))
    assert summary.events == 3_000 and summary.dead_letters == 0
    assert summary.batches >= 2  # batches really are batches
    assert lake.loaded_positions(source) == {0: 3_000}
    assert_exactly_once(lake, 3_000)

    again, _ = await load_once(url, lake, config(tmp_path))
    assert (again.events, again.batches) == (0, 0)

    await append_records(url, list(chained_records(700, sessions=3, seed=8)))
    more, _ = await load_once(url, lake, config(tmp_path))
    assert more.events == 700
    assert lake.loaded_positions(source) == {0: 3_700}
    assert len(event_rows(lake)) == 3_700


async def test_the_warehouse_not_the_committed_offset_decides_where_to_start(
    tmp_path: Path, lake: LakeWarehouse
) -> None:
    url = f"sqlite:{tmp_path / 'events.db'}"
    await append_records(url, list(chained_records(1_000, sessions=5)))
    async with open_log(url) as lg:
        async with lg.reader("embedguard-loader") as reader:
            await reader.commit({0: 1_000})  # a group that claims to be done
    summary, _ = await load_once(url, lake, config(tmp_path))
    assert summary.events == 1_000  # a fresh warehouse still gets everything

    async with open_log(url) as lg:
        async with lg.reader("embedguard-loader") as reader:
            await reader.commit({0: 0})  # a group that claims to know nothing
    again, _ = await load_once(url, lake, config(tmp_path))
    assert again.events == 0
    assert_exactly_once(lake, 1_000)


async def test_a_reader_positioned_past_the_warehouse_seeks_back(
    tmp_path: Path, lake: LakeWarehouse
) -> None:
    """The reader starts ahead (its anchor was skipped); records in between are
    not lost: the loader notices the gap and seeks back."""
    url = f"sqlite:{tmp_path / 'events.db'}"
    await append_records(url, list(chained_records(400, sessions=4)))
    async with open_log(url) as lg:
        loader = Loader(lg, lake, config(tmp_path))
        loader._expected[0] = 0  # anchored at 0 ...
        original = loader._anchor_initial

        async def anchor_then_jump(reader: Any, stop: asyncio.Event) -> None:
            await original(reader, stop)
            reader.seek(0, 250)  # ... but the reader jumps ahead

        loader._anchor_initial = anchor_then_jump  # type: ignore[method-assign]
        summary = await loader.run(once=True)
    assert summary.events == 400
    assert summary.skipped_records > 0
    assert_exactly_once(lake, 400)


async def test_a_poison_record_is_dead_lettered_and_loading_goes_on(
    tmp_path: Path, lake: LakeWarehouse
) -> None:
    url = f"sqlite:{tmp_path / 'events.db'}"
    good = list(chained_records(300, sessions=3))
    poison = os.urandom(64)
    await append_records(url, [*good[:150], AppendRecord(b"s-x", poison), *good[150:]])
    summary, source = await load_once(url, lake, config(tmp_path))
    assert (summary.events, summary.dead_letters) == (300, 1)
    dead = lake.query("SELECT *, hex(raw) AS raw_hex FROM {dead_letters}", {})
    assert len(dead) == 1
    row = dead[0]
    assert row["src_offset"] == 150 and row["source"] == source
    assert row["error"]
    assert bytes.fromhex(row["raw_hex"]) == poison
    # the events after the poison record are there, and the chains still verify
    assert_exactly_once(lake, 300)
    # `loader status` counts the warehouse's dead letters
    [(status, _)] = read_statuses(tmp_path / "status")
    assert status.dead_letters_total == 1


async def test_events_of_an_older_schema_version_still_load(
    tmp_path: Path, lake: LakeWarehouse
) -> None:
    fixtures = sorted((FIXTURES_DIR / "v1").glob("*.avro"))
    assert len(fixtures) >= 10
    url = f"sqlite:{tmp_path / 'events.db'}"
    await append_records(url, [AppendRecord(b"sample-session", f.read_bytes()) for f in fixtures])
    summary, _ = await load_once(url, lake, config(tmp_path))
    assert (summary.events, summary.dead_letters) == (len(fixtures), 0)
    rows = lake.query("SELECT type, writer_version FROM {events}", {})
    assert sorted(r["type"] for r in rows) == sorted(f.stem for f in fixtures)
    assert "v1" in {r["writer_version"] for r in rows}  # decoded with the old writer schema


# --------------------------------------------------------------------------- faults


class FlakyLake(LakeWarehouse):
    """The real lake, whose first ``failures`` writes raise (after writing, when
    ``after_write``: the crash-after-commit case)."""

    def __init__(self, root: Path, failures: int, *, after_write: bool = False) -> None:
        super().__init__(root)
        self.failures = failures
        self.after_write = after_write
        self.tokens: list[str] = []

    def write_batch(self, batch: LoadBatch) -> WriteResult:
        return self._flaky(batch, lambda: super(FlakyLake, self).write_batch(batch))

    def write_prepared(self, prepared: PreparedBatch) -> WriteResult:
        # the loader's path: batches projected ahead, then written
        return self._flaky(prepared.batch, lambda: super(FlakyLake, self).write_prepared(prepared))

    def _flaky(self, batch: LoadBatch, write: Callable[[], WriteResult]) -> WriteResult:
        self.tokens.append(batch.token)
        if self.failures > 0:
            self.failures -= 1
            if self.after_write:
                write()
            raise WarehouseUnavailable("lake busy (injected)", retry_after=0.01)
        return write()


async def test_unavailable_warehouse_is_retried_with_the_same_batch(tmp_path: Path) -> None:
    url = f"sqlite:{tmp_path / 'events.db'}"
    await append_records(url, list(chained_records(500, sessions=4)))
    lake = FlakyLake(tmp_path / "lake", failures=3, after_write=True)
    summary, _ = await load_once(url, lake, config(tmp_path))
    assert summary.retries >= 3
    # the retried batch carried the same dedup token each time
    assert lake.tokens[0] == lake.tokens[1] == lake.tokens[2] == lake.tokens[3]
    assert_exactly_once(lake, 500)


class DownLake(LakeWarehouse):
    """A lake that is never available: it cannot even be migrated."""

    def migrate(self) -> list[str]:
        raise WarehouseUnavailable(f"{self.url}: disk not mounted (injected)", retry_after=0.05)


@pytest.mark.parametrize("down", ["at start", "while writing"])
async def test_a_run_that_should_end_gives_up_on_an_unavailable_warehouse(
    tmp_path: Path, down: str
) -> None:
    """With give_up_after (``loader --once``, a rebuild) the loader stops with an
    error naming the warehouse instead of retrying forever; the status says so."""
    import time

    url = f"sqlite:{tmp_path / 'events.db'}"
    await append_records(url, list(chained_records(50, sessions=2)))
    if down == "at start":
        lake: LakeWarehouse = DownLake(tmp_path / "lake")
    else:
        lake = FlakyLake(tmp_path / "lake", failures=1_000_000)
    started = time.monotonic()
    with pytest.raises(LoaderError) as caught:
        await load_once(url, lake, config(tmp_path, give_up_after=0.5))
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert message.startswith("gave up after ")
    assert f"the warehouse {lake.url} is unavailable" in message
    assert "(injected)" in message and "run the loader again" in message
    (status, running), *_ = read_statuses(tmp_path / "status")
    assert not running and status.state == "failed"
    assert status.last_error is not None and "gave up after" in status.last_error


async def test_the_dead_letter_total_counts_each_once_before_a_merge(tmp_path: Path) -> None:
    """A batch written again after a kill -9 with other boundaries leaves rows
    twice in a MergeTree table until a merge: the status's dead letter total
    counts each record once (count() said 8 for 4)."""
    from pipeline.warehouse.clickhouse import ChdbWarehouse
    from tests.pipeline.warehouse.scenario import shared_chdb_dir, unique_database

    url = f"sqlite:{tmp_path / 'events.db'}"
    records = list(chained_records(40, sessions=2))
    for at in (3, 11, 19, 30):
        records.insert(at, AppendRecord(b"s-x", b"\x00 poison %d" % at))
    await append_records(url, records)
    source, read = await read_records(url)
    database = unique_database()
    crashing = ChdbWarehouse(str(shared_chdb_dir()), database=database)
    crashing.migrate()
    # no background merge may fold the duplicates before they are counted
    crashing._command(f"SYSTEM STOP MERGES {crashing.db}.dead_letters")
    restarted = ChdbWarehouse(str(shared_chdb_dir()), database=database)
    write_dead_letters_twice(crashing, restarted, source, read)
    assert restarted.query("SELECT count() AS n FROM {dead_letters}", {}) == [{"n": 8}]
    assert dead_letter_count(restarted) == 4

    summary, _ = await load_once(url, restarted, config(tmp_path))  # type: ignore[arg-type]
    assert summary.records == 0  # all loaded already
    ((status, _),) = read_statuses(tmp_path / "status")
    assert status.dead_letters_total == 4


class BrokenLake(LakeWarehouse):
    def write_batch(self, batch: LoadBatch) -> WriteResult:
        raise WarehouseError("table events has an incompatible schema (injected)")

    def write_prepared(self, prepared: PreparedBatch) -> WriteResult:
        return self.write_batch(prepared.batch)


async def test_a_permanent_warehouse_error_stops_the_loader_with_a_clear_error(
    tmp_path: Path,
) -> None:
    url = f"sqlite:{tmp_path / 'events.db'}"
    await append_records(url, list(chained_records(50, sessions=2)))
    with pytest.raises(LoaderError, match=r"refused batch sqlite:.*incompatible schema.*restart"):
        await load_once(url, BrokenLake(tmp_path / "lake"), config(tmp_path))
    (status, running), *_ = read_statuses(tmp_path / "status")
    assert not running and status.state == "failed"
    assert status.last_error and "incompatible schema" in status.last_error
    async with open_log(url) as lg:  # nothing committed: the next run starts at 0
        async with lg.reader("embedguard-loader") as reader:
            assert await reader.committed() == {0: 0}


# --------------------------------------------------------------------------- continuous


async def test_continuous_loader_follows_appends_and_stops_cleanly(
    tmp_path: Path, lake: LakeWarehouse
) -> None:
    url = f"sqlite:{tmp_path / 'events.db'}"
    records = list(chained_records(2_000, sessions=6))
    async with open_log(url) as lg:
        await lg.append(records[:500])
        stop = asyncio.Event()
        loader = Loader(lg, lake, config(tmp_path, status_interval=0.1, lag_interval=0.1))
        task = asyncio.create_task(loader.run(stop=stop))
        for i in range(500, 2_000, 250):
            await lg.append(records[i : i + 250])
            await asyncio.sleep(0.05)
        source = lg.source_id
        # Event-driven waits with generous deadlines (a loaded 2-core CI machine can
        # stall the loader's thread for seconds); a missed deadline fails loudly here
        # rather than as a confusing assertion below.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 180  # well under pytest-timeout's 300 s

        def loaded() -> int | str:
            try:
                return lake.loaded_positions(source).get(0, 0)
            except WarehouseError as err:  # the loader has not created its tables yet
                return str(err)

        while (now_loaded := loaded()) != 2_000:
            if task.done() or loop.time() > deadline:
                stop.set()
                await asyncio.wait_for(task, 60)  # re-raises the loader's error, if any
                pytest.fail(f"not all loaded: {now_loaded}")
            await asyncio.sleep(0.1)
        # The warehouse commit is visible before the loader records it, and the
        # status's end offset is refreshed on its own timer: wait for a status that
        # has seen every append AND recorded every load, not merely "lag 0" (a
        # stale end offset also reads as lag 0).
        caught_up = {"loaded": 2_000, "end": 2_000, "lag": 0}
        statuses = read_statuses(tmp_path / "status")
        while not (
            statuses
            and statuses[0][0].partitions.get("0") == caught_up
            and statuses[0][0].events_loaded == 2_000
        ):
            if task.done() or loop.time() > deadline:
                stop.set()
                await asyncio.wait_for(task, 60)
                # (a status stuck at "starting" means the loader's status loop died)
                pytest.fail(f"the loader's status never caught up: {statuses[:1]}")
            await asyncio.sleep(0.1)
            statuses = read_statuses(tmp_path / "status")
        stop.set()
        summary = await asyncio.wait_for(task, 120)
    assert summary.events == 2_000
    (status, running), *_ = statuses
    assert running and status.state == "running"
    assert status.partitions["0"]["lag"] == 0
    assert status.events_loaded == 2_000
    assert status.events_per_s_1m > 0
    (final, running), *_ = read_statuses(tmp_path / "status")
    assert not running and final.state == "stopped"
    assert_exactly_once(lake, 2_000)


async def test_background_compaction_runs_between_batches(
    tmp_path: Path, lake: LakeWarehouse
) -> None:
    url = f"sqlite:{tmp_path / 'events.db'}"
    records = list(chained_records(1_500, sessions=5))
    async with open_log(url) as lg:
        stop = asyncio.Event()
        cfg = config(tmp_path, compact_interval=0.3, status_interval=0.1, initial_batch=100)
        task = asyncio.create_task(Loader(lg, lake, cfg).run(stop=stop))
        for i in range(0, 1_500, 100):  # many small commits: something to compact
            await lg.append(records[i : i + 100])
            await asyncio.sleep(0.05)
        compacted = None
        for _ in range(600):
            statuses = read_statuses(tmp_path / "status")
            compacted = statuses[0][0].last_compaction_at if statuses else None
            if compacted and lake.loaded_positions(lg.source_id).get(0) == 1_500:
                break
            await asyncio.sleep(0.1)
        stop.set()
        summary = await asyncio.wait_for(task, 60)
    assert compacted is not None
    assert summary.events == 1_500
    assert_exactly_once(lake, 1_500)


CLICKHOUSE_URL = os.environ.get("EMBEDGUARD_TEST_CLICKHOUSE_URL", "")


@pytest.mark.clickhouse
@pytest.mark.skipif(
    not CLICKHOUSE_URL,
    reason="set EMBEDGUARD_TEST_CLICKHOUSE_URL=clickhouse://user:pass@host:8123/db to load "
    "into a real ClickHouse server",
)
async def test_loads_into_a_clickhouse_server_exactly_once(tmp_path: Path) -> None:
    from urllib.parse import urlsplit, urlunsplit

    from pipeline.warehouse import open_warehouse

    parts = urlsplit(CLICKHOUSE_URL)
    server = open_warehouse(urlunsplit(parts._replace(path=f"/eg_loader_{uuid.uuid4().hex[:10]}")))
    url = f"sqlite:{tmp_path / 'events.db'}"
    await append_records(url, list(chained_records(2_000, sessions=6)))
    try:
        first, source = await load_once(url, server, config(tmp_path))  # type: ignore[arg-type]
        again, _ = await load_once(url, server, config(tmp_path))  # type: ignore[arg-type]
        assert (first.events, again.events) == (2_000, 0)
        assert server.loaded_positions(source) == {0: 2_000}
        rows = server.query(
            "SELECT count() AS n, uniqExact(event_id) AS u FROM {events} "
            "WHERE source = {source:String}",
            {"source": source},
        )
        assert rows == [{"n": 2_000, "u": 2_000}]
    finally:
        server._command(f"DROP DATABASE IF EXISTS {server.db}")  # type: ignore[attr-defined]
        server.close()


async def test_status_shows_the_log_end_when_the_reader_was_slow_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status loop ticks while the reader is still starting: it must not ask
    the reader then (it used to raise 'not started', which killed the status
    loop for good: `loader status` kept saying 'starting' while it loaded)."""
    import time

    from pipeline.transport.sqlite import SqliteLogReader

    url = f"sqlite:{tmp_path / 'events.db'}"
    await append_records(url, list(chained_records(40, sessions=2)))
    real_start = SqliteLogReader.start

    async def slow_start(self: SqliteLogReader) -> None:
        await asyncio.sleep(0.3)  # several status ticks
        await real_start(self)

    monkeypatch.setattr(SqliteLogReader, "start", slow_start)

    class WaitsForStatus(LakeWarehouse):
        def write_batch(self, batch: LoadBatch) -> WriteResult:
            deadline = time.monotonic() + 60  # liveness bound only
            while time.monotonic() < deadline:
                statuses = read_statuses(tmp_path / "status")
                if statuses and (statuses[0][0].partitions.get("0") or {}).get("end") == 40:
                    return super().write_batch(batch)
                time.sleep(0.02)
            raise WarehouseError("the loader's status never showed the log's end")

        def write_prepared(self, prepared: PreparedBatch) -> WriteResult:
            return self.write_batch(prepared.batch)

    cfg = config(tmp_path, status_interval=0.02, lag_interval=0)
    summary, _ = await load_once(url, WaitsForStatus(tmp_path / "lake"), cfg)
    assert summary.records == 40
