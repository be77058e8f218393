"""SqliteEventLog: the embedded, fsync'd event log (pipeline/transport/sqlite.py)."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.transport.base import AppendRecord, Position
from pipeline.transport.errors import LogCorrupt, LogFull, LogUnavailable, TruncatedLog
from pipeline.transport.sqlite import AppendFence, SqliteEventLog

WORKER = Path(__file__).with_name("sqlite_worker.py")


def rec(value: str, key: str = "s1") -> AppendRecord:
    return AppendRecord(key.encode(), value.encode())


def raw(path: Path) -> sqlite3.Connection:
    """A plain SQLite connection, to inspect or damage the file behind the log's back."""
    return sqlite3.connect(path, isolation_level=None)


@pytest.fixture
async def log(sqlite_log_path: Path) -> AsyncIterator[SqliteEventLog]:
    async with SqliteEventLog(sqlite_log_path) as log:
        yield log


async def fill(log: SqliteEventLog, n: int) -> None:
    for i in range(n):
        await log.append([rec(f"v{i}")])


# --- basics -----------------------------------------------------------------------


async def test_append_poll_commit_roundtrip(log: SqliteEventLog, sqlite_log_path: Path) -> None:
    assert log.url == f"sqlite:{sqlite_log_path}"
    before = time.time_ns() // 1_000_000
    positions = await log.append([rec("a"), rec("b", key="s2"), rec("c")])
    assert positions == [Position(0, 0), Position(0, 1), Position(0, 2)]
    assert await log.append([rec("d")]) == [Position(0, 3)]

    async with log.reader("loader") as reader:
        assert await reader.committed() == {0: 0}
        assert await reader.end_offsets() == {0: 4}
        records = await reader.poll(max_records=3, timeout=0)
        assert [(r.partition, r.offset, r.key, r.value) for r in records] == [
            (0, 0, b"s1", b"a"),
            (0, 1, b"s2", b"b"),
            (0, 2, b"s1", b"c"),
        ]
        assert all(before <= r.timestamp_ms <= time.time_ns() // 1_000_000 for r in records)
        assert await reader.committed() == {0: 0}, "poll alone must not commit"
        await reader.commit()
        assert await reader.committed() == {0: 3}
        assert [r.value for r in await reader.poll(timeout=0)] == [b"d"]
        assert await reader.poll(timeout=0) == []
        await reader.commit({0: 1})
        assert await reader.committed() == {0: 1}


async def test_empty_append_is_a_no_op(log: SqliteEventLog) -> None:
    assert await log.append([]) == []
    assert log.stats.commits == 0


async def test_append_rejects_non_bytes(log: SqliteEventLog) -> None:
    with pytest.raises(TypeError, match="must be bytes"):
        await log.append([AppendRecord("s1", b"v")])  # type: ignore[arg-type]


async def test_append_when_not_open_raises_log_unavailable(sqlite_log_path: Path) -> None:
    log = SqliteEventLog(sqlite_log_path)
    with pytest.raises(LogUnavailable, match="not open"):
        await log.append([rec("x")])
    await log.start()
    await log.close()
    with pytest.raises(LogUnavailable, match=str(sqlite_log_path)):
        await log.append([rec("x")])


async def test_seek(log: SqliteEventLog) -> None:
    await fill(log, 5)
    async with log.reader("g") as reader:
        reader.seek(0, 3)
        assert [r.offset for r in await reader.poll(timeout=0)] == [3, 4]
        reader.seek(0, 1)
        assert [r.offset for r in await reader.poll(max_records=2, timeout=0)] == [1, 2]
        await reader.commit()
        assert await reader.committed() == {0: 3}
        with pytest.raises(ValueError, match="only partition 0"):
            reader.seek(1, 0)
        with pytest.raises(ValueError, match="only partition 0"):
            await reader.commit({1: 0})
        with pytest.raises(ValueError, match="ends at 5"):
            await reader.commit({0: 6})


async def test_groups_are_independent(log: SqliteEventLog) -> None:
    await fill(log, 4)
    async with log.reader("a") as a, log.reader("b") as b:
        assert len(await a.poll(timeout=0)) == 4
        await a.commit()
        assert await a.committed() == {0: 4}
        assert await b.committed() == {0: 0}
        assert [r.offset for r in await b.poll(max_records=1, timeout=0)] == [0]
    async with log.reader("b") as b_again:
        assert [r.offset for r in await b_again.poll(timeout=0)] == [0, 1, 2, 3]


async def test_new_group_not_from_beginning_starts_at_the_end(log: SqliteEventLog) -> None:
    await fill(log, 3)
    async with log.reader("late", from_beginning=False) as reader:
        assert await reader.committed() == {0: 3}
        assert await reader.poll(timeout=0) == []
        await log.append([rec("new")])
        assert [(r.offset, r.value) for r in await reader.poll(timeout=1)] == [(3, b"new")]


async def test_offsets_and_committed_positions_survive_reopen(sqlite_log_path: Path) -> None:
    async with SqliteEventLog(sqlite_log_path) as log:
        await log.append([rec("a"), rec("b"), rec("c")])
        async with log.reader("g") as reader:
            await reader.poll(max_records=2, timeout=0)
            await reader.commit()
    async with SqliteEventLog(sqlite_log_path) as log:
        assert await log.append([rec("d")]) == [Position(0, 3)]
        async with log.reader("g") as reader:
            assert await reader.committed() == {0: 2}
            assert [r.value for r in await reader.poll(timeout=0)] == [b"c", b"d"]


async def test_poll_waits_without_blocking_the_event_loop(log: SqliteEventLog) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with log.reader("g") as reader:
        tick_task = asyncio.create_task(ticker())
        started = time.monotonic()
        assert await reader.poll(timeout=0.5) == []
        waited = time.monotonic() - started
        assert 0.45 <= waited < 2.0
        assert ticks >= 10, f"the event loop ran only {ticks} ticks during a 0.5 s poll"

        poll = asyncio.create_task(reader.poll(timeout=10))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await log.append([rec("late")])
        records = await poll
        assert [r.value for r in records] == [b"late"]
        assert time.monotonic() - started < 1.0
        tick_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await tick_task


# --- group commit -----------------------------------------------------------------


@pytest.mark.parametrize("group_commit", [True, False])
async def test_group_commit_batches_concurrent_appends(
    sqlite_log_path: Path, group_commit: bool
) -> None:
    async with SqliteEventLog(sqlite_log_path, group_commit=group_commit) as log:
        results = await asyncio.gather(
            *(log.append([rec(f"v{i}", key=f"s{i % 7}")]) for i in range(200))
        )
        assert sorted(p.offset for [p] in results) == list(range(200))
        assert log.stats.appends == log.stats.records == 200
        if group_commit:
            assert 1 <= log.stats.commits <= 20, log.stats
        else:
            assert log.stats.commits == 200
        async with log.reader("check") as reader:
            stored = {r.offset: r.value for r in await reader.poll(max_records=500, timeout=0)}
        assert stored == {p.offset: f"v{i}".encode() for i, [p] in enumerate(results)}


async def test_one_append_keeps_its_records_contiguous_and_in_order(log: SqliteEventLog) -> None:
    results = await asyncio.gather(
        *(log.append([rec(f"{i}.{j}", key=f"s{i}") for j in range(5)]) for i in range(20))
    )
    for positions in results:
        offsets = [p.offset for p in positions]
        assert offsets == list(range(offsets[0], offsets[0] + 5))


async def test_append_nowait_keeps_call_order_and_wakes_the_loop_once_per_commit(
    log: SqliteEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    wakeups = 0
    original = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal wakeups
        wakeups += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    # Queued synchronously, before any of them is awaited: the log must store
    # them in exactly this order (the recorder relies on it for stream order).
    futures = [log.append_nowait([rec(f"v{i}"), rec(f"w{i}")]) for i in range(100)]
    results = await asyncio.gather(*futures)
    assert [p.offset for positions in results for p in positions] == list(range(200))
    assert log.stats.appends == 100 and 1 <= log.stats.commits < 100, log.stats
    # one self-pipe wake-up per commit, however many appends it served
    assert wakeups == log.stats.commits
    async with log.reader("check") as reader:
        stored = [r.value for r in await reader.poll(max_records=500, timeout=0)]
    assert stored == [v for i in range(100) for v in (f"v{i}".encode(), f"w{i}".encode())]


async def test_append_nowait_on_a_closed_log_fails_at_once(sqlite_log_path: Path) -> None:
    log = SqliteEventLog(sqlite_log_path)
    await log.start()
    await log.close()
    with pytest.raises(LogUnavailable, match="not open"):
        log.append_nowait([rec("late")])


async def test_inline_when_idle_commits_on_the_loop_and_keeps_order(
    sqlite_log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """commit_inline_when_idle: an append to an idle writer is committed at once,
    on the caller's thread (no wake-up); appends that overlap go to the writer
    thread, and every record still lands in call order."""
    loop = asyncio.get_running_loop()
    wakeups = 0
    original = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal wakeups
        wakeups += 1
        return original(*args, **kwargs)

    async with SqliteEventLog(sqlite_log_path, commit_inline_when_idle=True) as log:
        monkeypatch.setattr(loop, "call_soon_threadsafe", counting)  # opened: count from here
        first = log.append_nowait([rec("a0"), rec("a1")])
        assert first.done(), "an idle writer: committed before append_nowait returned"
        assert first.result() == [Position(0, 0), Position(0, 1)]
        for i in range(20):  # one at a time, like a gateway at concurrency 1
            assert await log.append([rec(f"b{i}")]) == [Position(0, 2 + i)]
        assert wakeups == 0 and log.stats.commits == 21
        # A burst queued before any is awaited: the first may go inline, the rest
        # find it unfinished or queued and wait for the writer thread, in order.
        burst = [log.append_nowait([rec(f"c{i}")]) for i in range(50)]
        results = await asyncio.gather(*burst)
        assert [p.offset for [p] in results] == list(range(22, 72))
        assert await log.append([rec("d")]) == [Position(0, 72)]
        async with log.reader("check") as reader:
            stored = [r.value.decode() for r in await reader.poll(max_records=500, timeout=0)]
    assert stored == ["a0", "a1", *(f"b{i}" for i in range(20)), *(f"c{i}" for i in range(50)),
                      "d"]
    # reopened: everything acknowledged was durable
    async with SqliteEventLog(sqlite_log_path) as log, log.reader("again") as reader:
        assert len(await reader.poll(max_records=500, timeout=0)) == 73


async def test_inline_when_idle_asks_its_predicate_and_inline_false_always_hands_over(
    sqlite_log_path: Path,
) -> None:
    alone = True
    async with SqliteEventLog(sqlite_log_path, commit_inline_when_idle=lambda: alone) as log:
        assert log.append_nowait([rec("a")]).done(), "the predicate allows: inline"
        alone = False
        handed_over = log.append_nowait([rec("b")])
        assert not handed_over.done(), "the predicate refuses: the writer thread commits"
        await handed_over
        alone = True
        not_inline = log.append_nowait([rec("c")], inline=False)
        assert not not_inline.done(), "inline=False: the writer thread commits"
        await not_inline
        assert log.stats.inline_commits == 1 and log.stats.commits == 3
        async with log.reader("check") as reader:
            stored = [r.value for r in await reader.poll(max_records=10, timeout=0)]
    assert stored == [b"a", b"b", b"c"]


async def test_a_caller_woken_by_the_writer_finds_it_idle(
    sqlite_log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer counts a batch finished before it wakes the batch's callers, so
    a caller that appends again at once may commit inline (it used to race the
    writer's bookkeeping and lose about one time in four). A slow bookkeeping
    step makes the race certain to show if the order is wrong."""
    from pipeline.transport import sqlite as sqlite_module

    finished = sqlite_module._Writer._finished

    def slow_finished(self: Any, jobs: int) -> None:
        time.sleep(0.02)
        finished(self, jobs)

    monkeypatch.setattr(sqlite_module._Writer, "_finished", slow_finished)
    use_thread = True
    async with SqliteEventLog(
        sqlite_log_path, commit_inline_when_idle=lambda: not use_thread
    ) as log:
        for i in range(10):
            use_thread = True
            await log.append([rec(f"t{i}")])  # committed by the writer thread
            use_thread = False
            follow_up = log.append_nowait([rec(f"i{i}")])
            assert follow_up.done(), f"round {i}: the writer still looked busy"
            await follow_up
        assert log.stats.inline_commits == 10 and log.stats.commits == 20


async def test_inline_when_idle_never_waits_on_the_loop_for_another_process_lock(
    sqlite_log_path: Path,
) -> None:
    async with SqliteEventLog(sqlite_log_path, commit_inline_when_idle=True) as log:
        assert await log.append([rec("first")]) == [Position(0, 0)]
        blocker = raw(sqlite_log_path)  # another process's writer, mid-transaction
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        future = log.append_nowait([rec("second")])
        # handed to the writer thread at once, which waits for the lock
        assert time.monotonic() - started < 0.5 and not future.done()
        await asyncio.sleep(0.2)
        assert not future.done()
        blocker.execute("ROLLBACK")
        blocker.close()
        assert await asyncio.wait_for(future, 10) == [Position(0, 1)]
        assert await log.append([rec("third")]) == [Position(0, 2)]


async def test_inline_when_idle_failure_is_the_callers_error_and_stores_nothing(
    sqlite_log_path: Path,
) -> None:
    async with SqliteEventLog(
        sqlite_log_path, max_bytes=64 * 1024, commit_inline_when_idle=True
    ) as log:
        acknowledged: list[bytes] = []
        with pytest.raises(LogFull, match="max_bytes"):
            for i in range(100):
                batch = [rec(f"{i}-{j}-" + "y" * 3000) for j in range(3)]
                await log.append(batch)
                acknowledged += [r.value for r in batch]
        assert log.stats.failed_commits == 1
        async with log.reader("check") as reader:
            stored = [r.value for r in await reader.poll(max_records=1000, timeout=0)]
        assert stored == acknowledged


# --- failures: nothing from a failed commit is visible ------------------------------


async def test_failed_group_commit_fails_every_caller_and_stores_nothing(
    sqlite_log_path: Path,
) -> None:
    big = "x" * 40_000  # about 10 pages: one fits under the cap, five together do not
    async with SqliteEventLog(sqlite_log_path, max_bytes=40 * 4096) as log:
        assert await log.append([rec("first")]) == [Position(0, 0)]
        # Stall the writer thread on a job that needs the write lock, which another
        # connection holds, so that all five big appends are queued by the time it
        # gets to them: they become one group, which is too big for the cap.
        blocker = raw(sqlite_log_path)
        blocker.execute("BEGIN IMMEDIATE")
        stall = asyncio.create_task(log.apply_retention())
        group = [asyncio.create_task(log.append([rec(f"{i}{big}")])) for i in range(5)]
        await asyncio.sleep(0.1)
        blocker.execute("ROLLBACK")
        blocker.close()
        assert await stall == 0

        outcomes = await asyncio.gather(*group, return_exceptions=True)
        assert all(isinstance(o, LogFull) for o in outcomes), outcomes
        message = str(outcomes[0])
        assert str(sqlite_log_path) in message and "max_bytes" in message
        assert log.stats.failed_commits == 1

        # The log recovers, and the failed group consumed no offsets.
        assert await log.append([rec(f"after{big}")]) == [Position(0, 1)]
        async with log.reader("check") as reader:
            values = [r.value[:5] for r in await reader.poll(timeout=0)]
        assert values == [b"first", b"after"]


async def test_disk_full_is_log_full_and_partial_batches_never_appear(
    sqlite_log_path: Path,
) -> None:
    async with SqliteEventLog(sqlite_log_path, max_bytes=64 * 1024) as log:
        acknowledged: list[bytes] = []
        with pytest.raises(LogFull):
            for i in range(100):
                batch = [rec(f"{i}-{j}-" + "y" * 3000) for j in range(3)]
                await log.append(batch)
                acknowledged += [r.value for r in batch]
        async with log.reader("check") as reader:
            stored = [r.value for r in await reader.poll(max_records=1000, timeout=0)]
            assert stored == acknowledged
            assert await reader.end_offsets() == {0: len(acknowledged)}


async def test_lock_held_too_long_is_log_unavailable(sqlite_log_path: Path) -> None:
    async with SqliteEventLog(sqlite_log_path, busy_timeout=0.3) as log:
        blocker = raw(sqlite_log_path)
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(LogUnavailable, match="busy_timeout") as caught:
            await log.append([rec("blocked")])
        assert time.monotonic() - started < 3.0
        assert not isinstance(caught.value, LogFull)
        assert str(sqlite_log_path) in str(caught.value)
        blocker.execute("ROLLBACK")
        blocker.close()
        assert await log.append([rec("ok")]) == [Position(0, 0)]


# --- fences: what is stored of a series of appends is a prefix of it -------------


async def test_appends_queued_behind_a_failed_one_of_their_fence_are_refused(
    sqlite_log_path: Path,
) -> None:
    """The first append of a stream waits for a lock another connection holds,
    past busy_timeout; more of the stream queue behind it. The lock is free by
    the time the writer takes them up, yet none of them may commit: the stream
    would go on over the failed one. Appends of other fences, or none, do."""
    async with SqliteEventLog(sqlite_log_path, busy_timeout=0.5) as log:
        stream, other = AppendFence(), AppendFence()
        blocker = raw(sqlite_log_path)
        blocker.execute("BEGIN IMMEDIATE")
        first = asyncio.create_task(log.append([rec("s-0")], fence=stream))
        await asyncio.sleep(0.1)  # the writer holds it, waiting for the lock
        queued = [
            log.append_nowait([rec("s-1")], fence=stream),
            log.append_nowait([rec("o-0", key="s2")], fence=other),
            log.append_nowait([rec("s-2")], fence=stream),
            log.append_nowait([rec("none", key="s3")]),
        ]
        while log.stats.failed_commits == 0:
            await asyncio.sleep(0.001)
        blocker.execute("ROLLBACK")
        blocker.close()
        with pytest.raises(LogUnavailable, match="busy_timeout"):
            await first
        outcomes = await asyncio.gather(*queued, return_exceptions=True)
        assert isinstance(outcomes[0], LogUnavailable) and isinstance(outcomes[2], LogUnavailable)
        assert "earlier append of the same stream failed" in str(outcomes[0])
        assert "nothing of it was stored" in str(outcomes[2])
        assert outcomes[1] == [Position(0, 0)] and outcomes[3] == [Position(0, 1)]
        assert stream.failed is not None and other.failed is None
        assert log.stats.failed_commits == 1, "the refused ones were never tried"
        with pytest.raises(LogUnavailable, match="earlier append"):
            await log.append([rec("s-3")], fence=stream)
        async with log.reader("check") as reader:
            stored = [r.value for r in await reader.poll(timeout=0)]
        assert stored == [b"o-0", b"none"]


async def test_an_inline_failure_breaks_its_fence_before_the_caller_resumes(
    sqlite_log_path: Path,
) -> None:
    async with SqliteEventLog(
        sqlite_log_path, max_bytes=64 * 1024, commit_inline_when_idle=True
    ) as log:
        fence = AppendFence()
        with pytest.raises(LogFull):
            for i in range(100):
                future = log.append_nowait([rec(f"{i}-" + "y" * 9000)], fence=fence)
                assert future.done(), "committed (or failed) inline"
                await future
        assert isinstance(fence.failed, LogFull) and log.stats.failed_commits == 1
        later = log.append_nowait([rec("small")], fence=fence)
        with pytest.raises(LogUnavailable, match="earlier append"):
            await later
        assert log.stats.failed_commits == 1


# --- files that are not (intact) logs -----------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database \x00\xff" * 400)


def _other_sqlite_db(path: Path) -> None:
    with raw(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()


@pytest.mark.parametrize(
    ("make", "expected"),
    [(_garbage, "not an SQLite database"), (_other_sqlite_db, "not an embedguard event log")],
)
async def test_foreign_file_is_log_corrupt_and_left_untouched(
    sqlite_log_path: Path, make: Callable[[Path], None], expected: str
) -> None:
    make(sqlite_log_path)
    before = sqlite_log_path.read_bytes()
    with pytest.raises(LogCorrupt, match=expected) as caught:
        await SqliteEventLog(sqlite_log_path).start()
    assert str(sqlite_log_path) in str(caught.value)
    assert "new" in str(caught.value), "the message must say what to do"
    assert sqlite_log_path.read_bytes() == before


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("format", "something-else", "not an embedguard event log"), ("version", "99", "Upgrade")],
)
async def test_wrong_format_marker_is_log_corrupt(
    sqlite_log_path: Path, key: str, value: str, expected: str
) -> None:
    async with SqliteEventLog(sqlite_log_path):
        pass
    conn = raw(sqlite_log_path)
    conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    conn.close()
    with pytest.raises(LogCorrupt, match=expected):
        await SqliteEventLog(sqlite_log_path).start()


async def test_damaged_file_is_log_corrupt(sqlite_log_path: Path) -> None:
    async with SqliteEventLog(sqlite_log_path) as log:
        await fill(log, 10)
    assert not Path(f"{sqlite_log_path}-wal").exists(), "closing should checkpoint the WAL"
    with open(sqlite_log_path, "r+b") as f:  # overwrite the schema page after its header
        f.seek(100)
        f.write(b"\xa5" * 3000)
    with pytest.raises(LogCorrupt, match="damaged") as caught:
        await SqliteEventLog(sqlite_log_path).start()
    assert str(sqlite_log_path) in str(caught.value)


async def test_reader_of_a_missing_log_is_log_unavailable(sqlite_log_path: Path) -> None:
    with pytest.raises(LogUnavailable, match="does not exist"):
        await SqliteEventLog(sqlite_log_path).reader("g").start()
    assert not sqlite_log_path.exists(), "a reader must never create the log"


async def test_an_empty_file_is_initialised_by_start_but_never_by_a_reader(
    sqlite_log_path: Path,
) -> None:
    sqlite_log_path.touch()
    log = SqliteEventLog(sqlite_log_path, busy_timeout=0.2)
    with pytest.raises(LogCorrupt, match="is empty"):
        await log.reader("g").start()
    async with log:
        assert await log.append([rec("a")]) == [Position(0, 0)]


async def test_a_hole_in_the_middle_is_reported_as_tampering(
    log: SqliteEventLog, sqlite_log_path: Path
) -> None:
    await fill(log, 10)
    conn = raw(sqlite_log_path)
    conn.execute("DELETE FROM records WHERE id = 6")  # offset 5
    conn.close()
    async with log.reader("g") as reader:
        with pytest.raises(LogCorrupt, match="no record at offset 5"):
            await reader.poll(timeout=0)
        reader.seek(0, 5)
        with pytest.raises(LogCorrupt, match="tampered"):
            await reader.poll(timeout=0)


# --- retention ----------------------------------------------------------------------


async def test_retention_keeps_everything_until_a_group_registers(log: SqliteEventLog) -> None:
    await fill(log, 5)
    assert await log.apply_retention() == 0


async def test_retention_deletes_only_what_every_group_committed(log: SqliteEventLog) -> None:
    await fill(log, 10)
    async with log.reader("fast") as fast, log.reader("slow") as slow:
        await fast.commit({0: 6})
        await slow.commit({0: 3})
        assert await log.apply_retention() == 3
        assert await log.apply_retention() == 0
        slow.seek(0, 3)  # like Kafka, commit() stores a position but does not move the reader
        assert [r.offset for r in await slow.poll(timeout=0)] == list(range(3, 10))
        assert await slow.end_offsets() == {0: 10}

        assert await log.apply_retention(keep_min_records=8) == 0  # 3..9: only 7 remain
        await slow.commit()
        assert await log.apply_retention(keep_min_records=2) == 3  # up to fast's 6, keep 8, 9
    async with log.reader("newcomer") as newcomer:
        assert await newcomer.committed() == {0: 6}, "a new group starts at the oldest record"
        assert [r.offset for r in await newcomer.poll(timeout=0)] == [6, 7, 8, 9]


async def test_a_removed_group_no_longer_holds_back_retention(log: SqliteEventLog) -> None:
    await fill(log, 4)
    async with log.reader("loader") as loader, log.reader("abandoned"):
        await loader.poll(timeout=0)
        await loader.commit()
    assert await log.apply_retention() == 0
    assert await log.remove_reader_group("abandoned") is True
    assert await log.remove_reader_group("abandoned") is False
    assert await log.apply_retention() == 4
    assert await log.append([rec("next")]) == [Position(0, 4)], "offsets are never reused"


async def test_retention_by_age_only_removes_an_old_prefix(
    log: SqliteEventLog, sqlite_log_path: Path
) -> None:
    await fill(log, 6)
    async with log.reader("g") as reader:
        await reader.poll(timeout=0)
        await reader.commit()
    now_ms = 10_000_000
    conn = raw(sqlite_log_path)  # ages by offset: old, old, young, old, young, young
    for offset, age_s in enumerate([100, 100, 1, 100, 1, 1]):
        conn.execute(
            "UPDATE records SET timestamp_ms = ? WHERE id = ?", (now_ms - age_s * 1000, offset + 1)
        )
    conn.close()
    assert await log.apply_retention(max_age_s=3600, now_ms=now_ms) == 0
    # Offset 3 is old too, but deleting it would leave a hole after young offset 2.
    assert await log.apply_retention(max_age_s=10, now_ms=now_ms) == 2
    assert await log.apply_retention(max_age_s=0.5, now_ms=now_ms) == 4


async def test_reader_behind_retention_gets_truncated_log(log: SqliteEventLog) -> None:
    await fill(log, 10)
    async with log.reader("g") as stale, log.reader("g") as current:
        await current.poll(timeout=0)
        await current.commit()
        assert await log.apply_retention() == 10
        with pytest.raises(TruncatedLog) as caught:
            await stale.poll(timeout=0)
        assert (caught.value.requested, caught.value.oldest) == (0, 10)
        assert "seek(0, 10)" in str(caught.value)

        await fill(log, 2)
        with pytest.raises(TruncatedLog):
            await stale.poll(timeout=0)
        current.seek(0, 4)
        with pytest.raises(TruncatedLog) as caught:
            await current.poll(timeout=0)
        assert (caught.value.requested, caught.value.oldest) == (4, 10)
        stale.seek(0, 10)
        assert [r.offset for r in await stale.poll(timeout=0)] == [10, 11]


# --- processes ----------------------------------------------------------------------


def _worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode",
    [
        ["--window", "500"],
        # two in flight: appends alternate between inline commits and the writer thread
        ["--window", "2", "--inline"],
    ],
    ids=["writer-thread", "inline-when-idle"],
)
async def test_kill_9_during_appends_loses_nothing_acknowledged(
    sqlite_log_path: Path, mode: list[str]
) -> None:
    from tests.pipeline.transport.sqlite_worker import crash_value

    total, kill_after = 10_000, 3_000
    proc = _worker("append", str(sqlite_log_path), "--total", str(total), *mode)
    assert proc.stdout is not None
    acknowledged: dict[int, int] = {}

    def read_until_kill() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            offset, i = map(int, line.split())
            acknowledged[offset] = i
            if len(acknowledged) == kill_after:
                assert proc.poll() is None, "the writer finished before it could be killed"
                os.kill(proc.pid, signal.SIGKILL)
                return

    await asyncio.to_thread(read_until_kill)
    rest, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == -signal.SIGKILL
    for line in rest.splitlines():  # acknowledged before the kill, still in the pipe
        offset, i = map(int, line.split())
        acknowledged[offset] = i
    assert kill_after <= len(acknowledged) < total, "the kill must land mid-run"

    conn = raw(sqlite_log_path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    async with SqliteEventLog(sqlite_log_path) as log, log.reader("audit") as reader:
        stored: dict[int, bytes] = {}
        while batch := await reader.poll(max_records=5000, timeout=0):
            stored.update((r.offset, r.value) for r in batch)
        end = (await reader.end_offsets())[0]
        assert sorted(stored) == list(range(end)), "offsets must be gap-free from 0"
        for offset, i in acknowledged.items():
            assert stored.get(offset) == crash_value(i), f"acknowledged offset {offset} lost"
        assert len(set(stored.values())) == len(stored), "no record may be stored twice"
        assert set(stored.values()) <= {crash_value(i) for i in range(total)}
        # The log keeps working after the crash, at the next offset.
        assert await log.append([rec("after crash")]) == [Position(0, end)]


@pytest.mark.slow
async def test_two_writers_and_a_tailer_see_every_record_once_in_session_order(
    sqlite_log_path: Path,
) -> None:
    keys, per_key = 8, 150
    total = 2 * keys * per_key
    async with SqliteEventLog(sqlite_log_path):  # create the file before the tailers open it
        pass
    # The group is read by two tailer processes in turn, so the handover through the
    # committed offset is covered too.
    first_tail = _worker(
        "tail", str(sqlite_log_path), "--group", "loader", "--until", str(total // 3)
    )
    writers = [
        _worker(
            "sessions",
            str(sqlite_log_path),
            "--prefix",
            prefix,
            "--keys",
            str(keys),
            "--per-key",
            str(per_key),
        )
        for prefix in ("a", "b")
    ]
    first_out, _ = await asyncio.to_thread(first_tail.communicate, timeout=60)
    assert first_tail.returncode == 0
    second_tail = _worker("tail", str(sqlite_log_path), "--group", "loader", "--until", str(total))
    second_out, _ = await asyncio.to_thread(second_tail.communicate, timeout=60)
    assert second_tail.returncode == 0
    for writer in writers:
        out, _ = await asyncio.to_thread(writer.communicate, timeout=60)
        assert writer.returncode == 0 and out.strip() == "done"

    lines = (first_out + second_out).splitlines()
    offsets = [int(line.split()[0]) for line in lines]
    assert offsets == list(range(total)), "every offset exactly once, in order"
    seqs_by_key: dict[str, list[int]] = collections.defaultdict(list)
    for line in lines:
        _, key, value = line.split()
        value_key, seq = value.split(":")
        assert value_key == key
        seqs_by_key[key].append(int(seq))
    assert set(seqs_by_key) == {f"{p}-{k}" for p in "ab" for k in range(keys)}
    for key, seqs in seqs_by_key.items():
        assert seqs == list(range(per_key)), f"session {key} out of order or incomplete"
