"""The embedded event log: one SQLite file in WAL mode, shared by every process.

Why SQLite: the gateway, loader, dashboard and CLI are separate processes on one
machine, and SQLite's file locking lets all of them append and tail one file
without a server. ``synchronous=FULL`` fsyncs the WAL on every commit, which is
what invariant 1 (no unaudited access) needs: ``append`` returns only after that
fsync, so the gateway never forwards a request whose events could still be lost.

fsync is slow, so a process funnels every append through one writer thread that
commits all queued batches in one transaction (group commit): N concurrent
requests cost one fsync, not N, and the event loop never waits on the disk.

Layout (format version 1)::

    meta(key, value)                          format marker and version; log_id, the
                                              log's uuid (its warehouse source_id)
    records(id, key, value, timestamp_ms)     offset = id - 1; AUTOINCREMENT, so
                                              retention never lets an id be reused
    reader_groups(name, next_offset, ...)     each consumer group's committed position

Offsets are gap-free: writers hold SQLite's write lock while they number their
records, and retention only ever removes a prefix. A reader that finds a gap in
the middle therefore reports tampering (LogCorrupt) instead of skipping it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import os
import queue
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from pipeline.transport.base import AppendRecord, EventLog, LogReader, LogRecord, Position
from pipeline.transport.errors import (
    EventLogError,
    LogCorrupt,
    LogFull,
    LogUnavailable,
    TruncatedLog,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "AppendFence",
    "SqliteEventLog",
    "SqliteLogReader",
    "SqliteLogStats",
]

FORMAT_NAME = "embedguard-event-log"
FORMAT_VERSION = 1
PARTITION = 0

_T = TypeVar("_T")

# Primary SQLite result codes (sqlite3.Error.sqlite_errorcode may carry extended bits).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE records ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " key BLOB NOT NULL,"
    " value BLOB NOT NULL,"
    " timestamp_ms INTEGER NOT NULL)",
    "CREATE TABLE reader_groups ("
    " name TEXT PRIMARY KEY,"
    " next_offset INTEGER NOT NULL,"
    " updated_ms INTEGER NOT NULL)",
)
_TABLES = frozenset({"meta", "records", "reader_groups"})
# Bounds the WAL file after a burst; SQLite reuses it in place otherwise.
_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


@dataclass
class SqliteLogStats:
    """Counters for this process's writer. Tests and the group-commit benchmark
    read them; ``commits`` is the number of fsync'd append transactions."""

    appends: int = 0
    records: int = 0
    commits: int = 0
    failed_commits: int = 0
    #: of ``commits``, those made on the caller's thread (commit_inline_when_idle)
    inline_commits: int = 0


class AppendFence:
    """One series of appends whose stored part must be a prefix of it: a
    gateway stream, whose events are numbered contiguously and hash-chained
    per session as they are stamped, before they are appended.

    Once an append of the series fails, every later one fails too, without
    being stored, including those already queued behind it. Otherwise an
    append stamped before the failure was known could commit after it, and
    the stream and its chains would go on over the hole (a false tamper
    alarm, and a tail no checkpoint covers). ``failed`` is the first failure.
    The SQLite log checks the fence on its writer, just before each commit
    (appends commit in queue order there). ``EventPublisher`` checks it
    around the append of any other log, whose appends may complete out of
    order: there ``issue`` numbers each append, ``failed_at`` is the lowest
    number that failed, and ``settled`` holds the future of the latest
    append's outcome, so that each append is acknowledged only after every
    earlier one of the series (in order, as the SQLite log does).
    """

    __slots__ = ("_issued", "failed", "failed_at", "settled")

    def __init__(self) -> None:
        self.failed: EventLogError | None = None
        self.failed_at: int | None = None
        self._issued = 0
        #: resolved once the latest append issued, and every one before it, is
        #: settled (stored, failed or abandoned); EventPublisher keeps it
        self.settled: asyncio.Future[None] | None = None

    def issue(self) -> int:
        """The number of the next append of the series (in the order sent)."""
        n = self._issued
        self._issued = n + 1
        return n

    def fail(self, error: EventLogError, number: int | None = None) -> None:
        if self.failed is None:
            self.failed = error
        if number is not None and (self.failed_at is None or number < self.failed_at):
            self.failed_at = number

    def refusal(self, *, stored: bool = False) -> LogUnavailable:
        """The error of an append refused because an earlier one failed."""
        what = (
            "its records were stored, but after the hole the failure left, so they are "
            "not acknowledged" if stored else "nothing of it was stored"
        )
        err = LogUnavailable(
            "an earlier append of the same stream failed, so this one was refused "
            f"({what}); the earlier failure: {self.failed}"
        )
        err.__cause__ = self.failed
        return err


# --- errors -----------------------------------------------------------------------


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _is_busy(exc: BaseException) -> bool:
    return _primary_code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED)


def _translate(exc: BaseException, path: Path, doing: str) -> BaseException:
    """Map a sqlite3/OS failure onto the transport's exception tree, with a message
    that names the file and what to do. Anything else (a bug) passes through."""
    if isinstance(exc, EventLogError) or not isinstance(exc, sqlite3.Error | OSError):
        return exc
    code = _primary_code(exc)
    if code == _SQLITE_FULL or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
        err: EventLogError = LogFull(
            f"cannot {doing} the event log {path}: the disk or the log's size limit "
            f"(max_bytes) is full ({exc}). Free disk space, apply retention or raise "
            "max_bytes, then retry; nothing from this operation was stored."
        )
    elif code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        err = LogCorrupt(
            f"the event log {path} is damaged or is not an SQLite database ({exc}). "
            "Stop every process that uses it, keep the file as evidence, move it aside "
            "and start on a new log path."
        )
    elif code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        err = LogUnavailable(
            f"cannot {doing} the event log {path}: another connection held its lock "
            f"longer than busy_timeout ({exc}). Retry later, or find the process that "
            "keeps a write transaction open."
        )
    else:
        err = LogUnavailable(
            f"cannot {doing} the event log {path}: {exc}. Check that the file and its "
            "directory exist, are writable and are on a local disk, then retry."
        )
    err.__cause__ = exc
    return err


# --- connection helpers (run on worker threads, never on the event loop) ----------


def _retry_busy(fn: Callable[[], _T], deadline: float) -> _T:
    """SQLite's busy handler already waits up to busy_timeout; this loop covers the
    cases where SQLite returns BUSY without calling it (e.g. during WAL recovery)."""
    delay = 0.001
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    # The original error is the one worth reporting; a failed rollback leaves the
    # connection to be discarded by the caller.
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _write_transaction(
    conn: sqlite3.Connection, busy_timeout: float, body: Callable[[sqlite3.Connection], _T]
) -> _T:
    """Run ``body`` in BEGIN IMMEDIATE ... COMMIT. IMMEDIATE takes the write lock up
    front, so two processes never both read the next offset and then collide."""
    _retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"), time.monotonic() + busy_timeout)
    try:
        result = body(conn)
        conn.execute("COMMIT")
    except BaseException:
        _rollback_quietly(conn)
        raise
    return result


def _begin_without_waiting(conn: sqlite3.Connection, busy_timeout: float) -> bool:
    """BEGIN IMMEDIATE if the write lock is free now; False if another
    connection holds it (nothing begun)."""
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if _is_busy(exc):
            return False
        raise
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000):d}")
    return True


def _end_offset(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
    return 0 if row is None else int(row[0])


def _oldest_offset(conn: sqlite3.Connection) -> int:
    """The offset of the oldest record still stored, or the end offset if none is."""
    row = conn.execute("SELECT MIN(id) FROM records").fetchone()
    return _end_offset(conn) if row[0] is None else int(row[0]) - 1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_format(conn: sqlite3.Connection, path: Path) -> bool:
    """Raise LogCorrupt unless ``conn`` is an embedguard log; return True if the
    database is empty (new). Reads only, so a foreign database is never modified."""
    tables = {
        str(row[0])
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if not str(row[0]).startswith("sqlite_")
    }
    if not tables:
        return True
    if not _TABLES <= tables:
        shown = ", ".join(sorted(tables)[:5])
        raise LogCorrupt(
            f"{path} is an SQLite database but not an embedguard event log (its tables: "
            f"{shown}). embedguard will not write to it: point the log at a new path."
        )
    meta = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    if meta.get("format") != FORMAT_NAME:
        raise LogCorrupt(
            f"{path} is not an embedguard event log (meta.format is "
            f"{meta.get('format')!r}, expected {FORMAT_NAME!r}). Point the log at a new path."
        )
    try:
        version = int(meta.get("version", ""))
    except ValueError:
        raise LogCorrupt(
            f"{path} has an unreadable format version {meta.get('version')!r}; the file is "
            "damaged. Keep it as evidence and start on a new log path."
        ) from None
    if version > FORMAT_VERSION:
        raise LogCorrupt(
            f"{path} uses event-log format {version}, but this embedguard reads up to "
            f"format {FORMAT_VERSION}. Upgrade embedguard to open it."
        )
    return False


def _init_schema(conn: sqlite3.Connection, path: Path) -> None:
    # Another process may have initialised the file while we waited for the lock.
    if not _check_format(conn, path):
        return
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [
            ("format", FORMAT_NAME),
            ("version", str(FORMAT_VERSION)),
            ("created_ms", str(_now_ms())),
            ("log_id", str(uuid.uuid4())),
        ],
    )


def _ensure_log_id(conn: sqlite3.Connection, busy_timeout: float) -> str:
    """The log's uuid; a log created before log_ids existed gets one now (format 1
    ignores unknown meta keys, so this needs no format change)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
    if row is not None:
        return str(row[0])

    def body(c: sqlite3.Connection) -> str:
        # OR IGNORE: another process may have added one while we waited for the lock.
        c.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('log_id', ?)", (str(uuid.uuid4()),)
        )
        return str(c.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()[0])

    return _write_transaction(conn, busy_timeout, body)


def _fsync_dir(directory: Path) -> None:
    """SQLite syncs the directory for new WAL files but not for a new main file;
    without this a power cut right after creation could lose the whole log."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_log(
    path: Path, *, create: bool, busy_timeout: float, max_bytes: int | None = None
) -> sqlite3.Connection:
    """Open, validate and configure a connection. Only ``start()`` may create the
    file; every later open uses mode=rw, so a log deleted underneath us is reported
    instead of being silently replaced by an empty one that restarts at offset 0."""
    try:
        existed = path.exists()
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not existed:
            raise LogUnavailable(
                f"the event log {path} does not exist. Start the gateway (it creates the "
                "log) or pass the right --log path."
            )
        uri = f"file:{urllib.parse.quote(str(path))}?mode={'rwc' if create else 'rw'}"
        conn = sqlite3.connect(
            uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except (sqlite3.Error, OSError) as exc:
        raise _translate(exc, path, "open") from exc
    try:
        deadline = time.monotonic() + busy_timeout
        empty = _retry_busy(lambda: _check_format(conn, path), deadline)
        while empty and not create and time.monotonic() < deadline:
            # The creating process may not have committed the schema yet.
            time.sleep(0.05)
            empty = _retry_busy(lambda: _check_format(conn, path), deadline)
        if empty and not create:
            raise LogCorrupt(
                f"{path} is empty, so it is not an initialised embedguard event log (was it "
                "truncated or replaced?). Keep it as evidence and restore the log."
            )
        mode = _retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone(), deadline)
        if str(mode[0]).lower() != "wal":
            raise LogUnavailable(
                f"cannot put the event log {path} in WAL mode (SQLite answered {mode[0]!r}). "
                "Keep the log on a local filesystem that supports shared memory (not NFS)."
            )
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT:d}")
        if empty:
            _write_transaction(conn, busy_timeout, lambda c: _init_schema(c, path))
            if not existed:
                _fsync_dir(path.parent)
        if max_bytes is not None:
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            conn.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page_size):d}")
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error | OSError):
            raise _translate(exc, path, "open") from exc
        raise
    return conn


# --- the writer thread --------------------------------------------------------------


@dataclass(slots=True)
class _AppendJob:
    rows: list[tuple[bytes, bytes]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Position]]
    fence: AppendFence | None = None


@dataclass(slots=True)
class _CallJob:
    fn: Callable[[sqlite3.Connection], Any]
    doing: str
    future: concurrent.futures.Future[Any]


@dataclass(slots=True)
class _Stop:
    pass


_Job = _AppendJob | _CallJob | _Stop


_Outcome = tuple[_AppendJob, list[Position] | None, BaseException | None]


def _settle_on_loop(outcomes: list[_Outcome]) -> None:
    for job, result, error in outcomes:
        if job.future.done():  # the caller was cancelled; nobody awaits this
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result if result is not None else [])


def _settle_all(outcomes: list[_Outcome]) -> None:
    """Resolve each job's future on its own loop: one wake-up per loop, however
    many jobs a commit served (each call_soon_threadsafe writes to the loop's
    self-pipe, and on a busy gateway one commit serves dozens of appends)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed
            loop.call_soon_threadsafe(_settle_on_loop, batch)


def _settle(job: _AppendJob, result: list[Position] | None, error: BaseException | None) -> None:
    _settle_all([(job, result, error)])


class _Writer:
    """Owns this process's only write connection, on one thread, so that fsync never
    runs on the event loop and every append queued during a commit shares the next."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        group_commit: bool,
        busy_timeout: float,
        max_batch_records: int,
        max_bytes: int | None,
        stats: SqliteLogStats,
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._group_commit = group_commit
        self._busy_timeout = busy_timeout
        self._max_batch_records = max_batch_records
        self._max_bytes = max_bytes
        self._stats = stats
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        #: held while a transaction runs on the connection (writer thread or inline)
        self._busy = threading.Lock()
        #: jobs submitted and not yet finished; guarded by _state
        self._outstanding = 0
        self._state = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"embedguard-sqlite-writer:{path.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: _Job) -> None:
        with self._state:
            self._outstanding += 1
        self._queue.put(job)

    def _finished(self, jobs: int) -> None:
        with self._state:
            self._outstanding -= jobs

    def commit_inline(self, job: _AppendJob) -> bool:
        """Commit ``job`` on the calling thread if the writer has nothing queued
        or running; False (nothing done) otherwise. Order holds: no earlier job
        is unfinished, and a later one waits for ``_busy`` in the writer."""
        with self._state:
            if self._outstanding or not self._thread.is_alive():
                return False
            if not self._busy.acquire(blocking=False):
                return False
            self._outstanding += 1
        try:
            return self._commit_now(job)
        finally:
            self._busy.release()
            self._finished(1)

    def _commit_now(self, job: _AppendJob) -> bool:
        # Never wait on the caller's thread for anything but our own commit:
        # no reopening a dropped connection, no waiting for another process's
        # write lock (a loader committing its position, say). Either goes to
        # the writer thread, which may wait.
        conn = self._conn
        if conn is None:
            return False
        fence = job.fence
        if fence is not None and fence.failed is not None:
            _settle_on_loop([(job, None, fence.refusal())])
            return True
        try:
            if not _begin_without_waiting(conn, self._busy_timeout):
                return False
            try:
                [positions] = _insert_batch(conn, [job])
                conn.execute("COMMIT")
            except BaseException:
                _rollback_quietly(conn)
                raise
        except Exception as exc:
            self._stats.failed_commits += 1
            self._after_failure(exc)
            error = _translate(exc, self._path, "append to")
            _fail_fences([job], error)
            _settle_on_loop([(job, None, error)])
            return True
        self._stats.commits += 1
        self._stats.inline_commits += 1
        self._stats.appends += 1
        self._stats.records += len(job.rows)
        _settle_on_loop([(job, positions, None)])
        return True

    def join(self) -> None:
        self._thread.join()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._drop_connection()
            # Only reached early through a bug; fail whatever is still queued so no
            # caller waits forever (and none is told its records are stored).
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                error = LogUnavailable(f"the writer of the event log {self._path} stopped")
                if isinstance(job, _AppendJob):
                    _fail_fences([job], error)
                    _settle(job, None, error)
                elif isinstance(job, _CallJob) and job.future.set_running_or_notify_cancel():
                    job.future.set_exception(error)

    def _serve(self) -> None:
        carry: _Job | None = None
        while True:
            job = carry if carry is not None else self._queue.get()
            carry = None
            if isinstance(job, _Stop):
                self._finished(1)
                break
            if isinstance(job, _CallJob):
                with self._busy:
                    self._run_call(job)
                self._finished(1)
                continue
            batch = [job]
            if self._group_commit:
                count = len(job.rows)
                while count < self._max_batch_records:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(nxt, _AppendJob):
                        carry = nxt
                        break
                    batch.append(nxt)
                    count += len(nxt.rows)
            with self._busy:
                outcomes = self._commit(batch)
            # Counted as finished, and the connection free, before any caller
            # wakes: a caller that appends again at once finds the writer idle
            # (and may commit inline) instead of racing this thread's bookkeeping.
            self._finished(len(batch))
            _settle_all(outcomes)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = _open_log(
                self._path,
                create=False,
                busy_timeout=self._busy_timeout,
                max_bytes=self._max_bytes,
            )
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _after_failure(self, exc: BaseException) -> None:
        # A busy or full database leaves the connection healthy; after anything
        # else (I/O error, corruption) start the next transaction on a fresh one.
        if _primary_code(exc) not in (_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL):
            self._drop_connection()

    def _commit(self, batch: list[_AppendJob]) -> list[_Outcome]:
        """Commit ``batch`` in one transaction; each job's outcome, for the
        caller to settle once the writer's bookkeeping is done. A job whose
        fence an earlier failure broke is refused, not committed."""
        refused: list[_Outcome] = []
        if any(job.fence is not None and job.fence.failed is not None for job in batch):
            live: list[_AppendJob] = []
            for job in batch:
                fence = job.fence
                if fence is not None and fence.failed is not None:
                    refused.append((job, None, fence.refusal()))
                else:
                    live.append(job)
            batch = live
            if not batch:
                return refused
        try:
            conn = self._connection()
            positions = _write_transaction(
                conn, self._busy_timeout, lambda c: _insert_batch(c, batch)
            )
        except Exception as exc:
            self._stats.failed_commits += 1
            self._after_failure(exc)
            error = _translate(exc, self._path, "append to")
            _fail_fences(batch, error)
            return refused + [(job, None, error) for job in batch]
        self._stats.commits += 1
        self._stats.appends += len(batch)
        self._stats.records += sum(len(job.rows) for job in batch)
        return refused + [(job, pos, None) for job, pos in zip(batch, positions, strict=True)]

    def _run_call(self, job: _CallJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            conn = self._connection()
            result = _write_transaction(conn, self._busy_timeout, job.fn)
        except Exception as exc:
            self._after_failure(exc)
            job.future.set_exception(_translate(exc, self._path, job.doing))
        else:
            job.future.set_result(result)


def _fail_fences(jobs: Sequence[_AppendJob], error: BaseException) -> None:
    """Break the fence of every failed job, before any later job is taken up
    (on the thread that commits: the writer's, or the caller's inline)."""
    for job in jobs:
        fence = job.fence
        if fence is not None:
            fence.fail(error if isinstance(error, EventLogError) else LogUnavailable(str(error)))


def _insert_batch(conn: sqlite3.Connection, batch: list[_AppendJob]) -> list[list[Position]]:
    # Numbered explicitly under the write lock: sqlite_sequence holds the last id
    # ever used, so offsets stay gap-free and never repeat after retention.
    next_id = _end_offset(conn) + 1
    timestamp_ms = _now_ms()
    params: list[tuple[int, bytes, bytes, int]] = []
    positions: list[list[Position]] = []
    for job in batch:
        job_positions: list[Position] = []
        for key, value in job.rows:
            params.append((next_id, key, value, timestamp_ms))
            job_positions.append(Position(PARTITION, next_id - 1))
            next_id += 1
        positions.append(job_positions)
    conn.executemany(
        "INSERT INTO records (id, key, value, timestamp_ms) VALUES (?, ?, ?, ?)", params
    )
    return positions


def _apply_retention(
    conn: sqlite3.Connection, *, cutoff_ms: int | None, keep_min_records: int
) -> int:
    floor_row = conn.execute("SELECT MIN(next_offset) FROM reader_groups").fetchone()
    if floor_row[0] is None:
        # No reader has ever registered, so nothing is known to be loaded: keep all.
        return 0
    limit = min(int(floor_row[0]), _end_offset(conn) - keep_min_records)  # delete offsets < limit
    if cutoff_ms is not None and limit > 0:
        # Retention must stay a prefix (readers treat holes as tampering), so stop at
        # the first record that is too young even if older ones follow it.
        young = conn.execute(
            "SELECT id FROM records WHERE id <= ? AND timestamp_ms >= ? ORDER BY id LIMIT 1",
            (limit, cutoff_ms),
        ).fetchone()
        if young is not None:
            limit = min(limit, int(young[0]) - 1)
    if limit <= 0:
        return 0
    return int(conn.execute("DELETE FROM records WHERE id <= ?", (limit,)).rowcount)


def _remove_group(conn: sqlite3.Connection, group: str) -> bool:
    return conn.execute("DELETE FROM reader_groups WHERE name = ?", (group,)).rowcount > 0


# --- the public classes -------------------------------------------------------------


class SqliteEventLog(EventLog):
    """The embedded event log at ``path`` (see the module docstring).

    ``group_commit=False`` commits every append on its own; it exists for the
    benchmark that shows what group commit saves. ``busy_timeout`` bounds how long
    an operation waits for another process's lock before LogUnavailable.
    ``max_bytes`` caps the database file (SQLite's max_page_count), so a runaway
    client gets LogFull and a 503 before it fills the disk everything else needs.
    ``poll_interval`` is the longest sleep between a reader's checks for new records.

    ``commit_inline_when_idle``: an append that finds the writer thread with
    nothing queued or running is committed on the caller's thread instead of
    being handed over; the same transaction and fsync, in the same order, but
    without two thread wake-ups. It blocks the caller's event loop for that
    commit, so it pays off only where nothing else waits on the loop (one
    request at a time). True, or a predicate asked at each append: the
    gateway's recorder passes "is this flow the only one in flight?", because
    with several in flight an inline commit holds them all up for its fsync
    and no append would ever find a queue to group-commit with
    (bench/gateway.py, docs/benchmarks.md).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        group_commit: bool = True,
        busy_timeout: float = 5.0,
        max_batch_records: int = 10_000,
        max_bytes: int | None = None,
        poll_interval: float = 0.05,
        commit_inline_when_idle: bool | Callable[[], bool] = False,
    ) -> None:
        if busy_timeout <= 0:
            raise ValueError(f"busy_timeout must be positive, got {busy_timeout}")
        if max_batch_records < 1:
            raise ValueError(f"max_batch_records must be at least 1, got {max_batch_records}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        self.path = Path(path)
        self.url = f"sqlite:{os.fspath(path)}"
        self.group_commit = group_commit
        self.busy_timeout = busy_timeout
        self.max_batch_records = max_batch_records
        self.max_bytes = max_bytes
        self.poll_interval = poll_interval
        self.commit_inline_when_idle: bool | Callable[[], bool] = commit_inline_when_idle
        self.stats = SqliteLogStats()
        self._writer: _Writer | None = None
        self._log_id: str | None = None
        # Makes "is the writer open?" and "enqueue" one step, so no append can land
        # behind the stop marker and wait forever.
        self._submit_lock = threading.Lock()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    def __repr__(self) -> str:
        return f"SqliteEventLog({self.url!r}, group_commit={self.group_commit})"

    @property
    def source_id(self) -> str:
        """``sqlite:<uuid>``: the uuid lives in the file, so the id survives moving
        or renaming the log, and a new log at the same path gets a new one."""
        if self._log_id is None:
            raise RuntimeError(f"{self!r} is not started; call start() first")
        return f"sqlite:{self._log_id}"

    async def start(self) -> None:
        if self._writer is not None:
            return
        conn = await asyncio.to_thread(
            _open_log,
            self.path,
            create=True,
            busy_timeout=self.busy_timeout,
            max_bytes=self.max_bytes,
        )
        try:
            self._log_id = await asyncio.to_thread(_ensure_log_id, conn, self.busy_timeout)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error | OSError):
                raise _translate(exc, self.path, "open") from exc
            raise
        writer = _Writer(
            conn,
            self.path,
            group_commit=self.group_commit,
            busy_timeout=self.busy_timeout,
            max_batch_records=self.max_batch_records,
            max_bytes=self.max_bytes,
            stats=self.stats,
        )
        writer.start()
        self._writer = writer

    async def close(self) -> None:
        """Stop accepting appends, finish every append already queued, then close."""
        with self._submit_lock:
            writer, self._writer = self._writer, None
            if writer is None:
                return
            writer.submit(_Stop())
        await asyncio.to_thread(writer.join)

    def _submit(self, job: _AppendJob | _CallJob) -> None:
        with self._submit_lock:
            if self._writer is None or not self._writer.is_alive():
                raise LogUnavailable(
                    f"the event log {self.path} is not open (start() was not called or "
                    "close() already ran); nothing was stored."
                )
            self._writer.submit(job)

    async def append(
        self, records: Sequence[AppendRecord], *, fence: AppendFence | None = None
    ) -> list[Position]:
        """Durably append ``records``; see EventLog.append. ``fence``: see
        AppendFence (refused at once if an earlier append of it failed).

        If the awaiting task is cancelled, the records may still be committed: the
        log errs towards recording, never towards acknowledging what it lost.
        """
        if not records:
            return []
        future = self.append_nowait(records, fence=fence)
        if future.done():
            # Committed inline: still let other tasks run, as an append that
            # waited for the writer thread always did (a caller appending in
            # a loop would otherwise starve them, checkpoints included).
            await asyncio.sleep(0)
        return await future

    def append_nowait(
        self,
        records: Sequence[AppendRecord],
        *,
        inline: bool = True,
        fence: AppendFence | None = None,
    ) -> asyncio.Future[list[Position]]:
        """Queue ``records`` for the writer *now*, in call order, and return the
        future that resolves once they are durable (or fails with the
        EventLogError). Lets a caller go on while its records are made durable
        without letting later appends overtake them. Must run on the event loop.
        With ``commit_inline_when_idle`` the commit may already be done when
        this returns; ``inline=False`` always hands it to the writer thread.
        ``fence``: the series this append belongs to (AppendFence); checked by
        whoever commits, so an append queued behind a failed one of the same
        series fails too, and what is stored of the series stays a prefix.
        """
        rows: list[tuple[bytes, bytes]] = []
        for record in records:
            if type(record.key) is not bytes or type(record.value) is not bytes:
                raise TypeError(
                    "AppendRecord.key and .value must be bytes, got "
                    f"{type(record.key).__name__} and {type(record.value).__name__}"
                )
            rows.append((record.key, record.value))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Position]] = loop.create_future()
        if not rows:
            future.set_result([])
            return future
        job = _AppendJob(rows, loop, future, fence)
        want = self.commit_inline_when_idle
        if inline and (want() if callable(want) else want):
            with self._submit_lock:
                writer = self._writer
                if writer is not None and writer.commit_inline(job):
                    return future
        try:
            self._submit(job)
        except EventLogError as exc:
            _fail_fences([job], exc)
            raise
        return future

    async def _call_writer(self, fn: Callable[[sqlite3.Connection], _T], doing: str) -> _T:
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._submit(_CallJob(fn, doing, future))
        return await asyncio.wrap_future(future)

    def tail_reader(self, *, from_beginning: bool = True) -> SqliteLogReader:
        return SqliteLogReader(self, None, from_beginning=from_beginning)

    def reader(self, group: str, *, from_beginning: bool = True) -> SqliteLogReader:
        return SqliteLogReader(self, group, from_beginning=from_beginning)

    async def apply_retention(
        self,
        *,
        max_age_s: float | None = None,
        keep_min_records: int = 0,
        now_ms: int | None = None,
    ) -> int:
        """Delete the oldest records that every registered reader group has committed
        past and that are older than ``max_age_s`` (if given), always keeping the
        newest ``keep_min_records``. Returns how many records were deleted.

        With no registered group nothing is deleted: an unread audit event is never
        expired. ``now_ms`` (default: the clock) exists so callers can pass time in.
        """
        if keep_min_records < 0:
            raise ValueError(f"keep_min_records must be >= 0, got {keep_min_records}")
        if max_age_s is not None and max_age_s < 0:
            raise ValueError(f"max_age_s must be >= 0, got {max_age_s}")
        cutoff_ms = None
        if max_age_s is not None:
            cutoff_ms = (_now_ms() if now_ms is None else now_ms) - int(max_age_s * 1000)
        return await self._call_writer(
            lambda c: _apply_retention(c, cutoff_ms=cutoff_ms, keep_min_records=keep_min_records),
            "apply retention to",
        )

    async def remove_reader_group(self, group: str) -> bool:
        """Forget a consumer group, so that it no longer holds back retention.
        Returns False if the group was not registered."""
        return await self._call_writer(lambda c: _remove_group(c, group), "remove a group from")


class SqliteLogReader(LogReader):
    """A consumer-group reader of a SqliteEventLog, with its own connection.

    Its committed position lives in the log file itself, so it survives restarts
    and retention can see it. Every query runs on a worker thread.
    """

    def __init__(
        self, log: SqliteEventLog, group: str | None, *, from_beginning: bool = True
    ) -> None:
        if group is not None and not group:
            raise ValueError("a reader group name must not be empty")
        self.group = group
        self._log = log
        self._from_beginning = from_beginning
        self._conn: sqlite3.Connection | None = None
        self._conn_lock = threading.Lock()  # sqlite3 connections are not re-entrant
        self._position = 0

    def __repr__(self) -> str:
        return f"SqliteLogReader({self._log.url!r}, group={self.group!r})"

    async def start(self) -> None:
        if self._conn is not None:
            return
        self._conn = await asyncio.to_thread(
            _open_log, self._log.path, create=False, busy_timeout=self._log.busy_timeout
        )
        if self.group is None:  # a tail reader: registers nothing, holds back nothing
            self._position = await self._run(
                lambda c: _oldest_offset(c) if self._from_beginning else _end_offset(c), "read from"
            )
        else:
            self._position = await self._run(self._register, "register a reader group in")

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:

            def close() -> None:
                with self._conn_lock:
                    conn.close()

            await asyncio.to_thread(close)

    async def _run(self, fn: Callable[[sqlite3.Connection], _T], doing: str) -> _T:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"{self!r} is not started; call start() first")
        path = self._log.path

        def call() -> _T:
            with self._conn_lock:
                try:
                    return fn(conn)
                except (sqlite3.Error, OSError) as exc:
                    raise _translate(exc, path, doing) from exc

        return await asyncio.to_thread(call)

    def positions(self) -> dict[int, int]:
        return {PARTITION: self._position}

    def _register(self, conn: sqlite3.Connection) -> int:
        def body(c: sqlite3.Connection) -> int:
            row = c.execute(
                "SELECT next_offset FROM reader_groups WHERE name = ?", (self.group,)
            ).fetchone()
            if row is not None:
                return int(row[0])
            start = _oldest_offset(c) if self._from_beginning else _end_offset(c)
            c.execute(
                "INSERT INTO reader_groups (name, next_offset, updated_ms) VALUES (?, ?, ?)",
                (self.group, start, _now_ms()),
            )
            return start

        return _write_transaction(conn, self._log.busy_timeout, body)

    async def poll(self, max_records: int = 1000, timeout: float = 1.0) -> list[LogRecord]:
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, got {max_records}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        delay = 0.001
        while True:
            position = self._position
            records = await self._run(
                functools.partial(self._fetch, position=position, limit=max_records), "read from"
            )
            if self._position != position:
                continue  # seek() ran while we were reading: honour it
            if records:
                self._position = records[-1].offset + 1
                return records
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, self._log.poll_interval)

    def _fetch(self, conn: sqlite3.Connection, position: int, limit: int) -> list[LogRecord]:
        conn.execute("BEGIN")  # one snapshot for the rows and the truncation check
        try:
            rows = conn.execute(
                "SELECT id, key, value, timestamp_ms FROM records WHERE id > ? ORDER BY id LIMIT ?",
                (position, limit),
            ).fetchall()
            if not rows or int(rows[0][0]) != position + 1:
                oldest = _oldest_offset(conn)
                if position < oldest:
                    raise TruncatedLog(
                        f"reader group {self.group!r} of {self._log.path} asked for offset "
                        f"{position}, but retention already removed every record before "
                        f"offset {oldest}. If skipping them is acceptable, seek(0, {oldest}) "
                        "and commit; otherwise restore the missing records from a backup.",
                        requested=position,
                        oldest=oldest,
                    )
        finally:
            _rollback_quietly(conn)
        records: list[LogRecord] = []
        for expected, (row_id, key, value, timestamp_ms) in enumerate(rows, start=position + 1):
            if row_id != expected:
                raise LogCorrupt(
                    f"the event log {self._log.path} has no record at offset {expected - 1}, "
                    f"but has later ones (next is {row_id - 1}). embedguard never deletes "
                    "from the middle of the log: treat it as tampered with, keep the file "
                    "as evidence and investigate."
                )
            records.append(LogRecord(PARTITION, row_id - 1, key, value, timestamp_ms))
        return records

    def seek(self, partition: int, offset: int) -> None:
        if partition != PARTITION:
            raise ValueError(f"the SQLite event log has only partition 0, not {partition}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self._position = offset

    async def commit(self, positions: Mapping[int, int] | None = None) -> None:
        if self.group is None:
            raise RuntimeError("a tail reader belongs to no group and cannot commit")
        if positions is None:
            offset = self._position
        else:
            unknown = set(positions) - {PARTITION}
            if unknown:
                raise ValueError(f"the SQLite event log has only partition 0, not {unknown}")
            if PARTITION not in positions:
                return
            offset = positions[PARTITION]
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")

        def body(c: sqlite3.Connection) -> None:
            end = _end_offset(c)
            if offset > end:
                # Committing past the end would let retention delete records that no
                # one has read yet, as soon as they are appended.
                raise ValueError(
                    f"cannot commit offset {offset} for group {self.group!r}: the log "
                    f"{self._log.path} ends at {end}"
                )
            c.execute(
                "INSERT INTO reader_groups (name, next_offset, updated_ms) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET next_offset = excluded.next_offset, "
                "updated_ms = excluded.updated_ms",
                (self.group, offset, _now_ms()),
            )

        await self._run(
            lambda c: _write_transaction(c, self._log.busy_timeout, body), "commit offsets to"
        )

    async def committed(self) -> dict[int, int]:
        if self.group is None:
            return {}

        def query(c: sqlite3.Connection) -> dict[int, int]:
            row = c.execute(
                "SELECT next_offset FROM reader_groups WHERE name = ?", (self.group,)
            ).fetchone()
            return {} if row is None else {PARTITION: int(row[0])}

        return await self._run(query, "read committed offsets from")

    async def end_offsets(self) -> dict[int, int]:
        return await self._run(lambda c: {PARTITION: _end_offset(c)}, "read from")
