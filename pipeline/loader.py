"""The loader: event log → warehouse, exactly once.

Loop: poll records from a reader of the log (the SQLite reader group, or a Kafka
consumer group with manual commit), buffer them per partition, hand each
partition's run to the write pipeline as a batch, and only after its warehouse
write commit its offsets.

The write pipeline (``pipeline_depth`` batches, 2 by default): a batch is
prepared (decoded and projected: ``prepare_batch``, on a thread, for warehouses
that split their write that way, see ``PreparingWarehouse``) while the batch
before it is written, and the loop reads the next one meanwhile. Writes happen
one at a time, in flush order, under the write lock; a batch is written only if
it starts exactly where the warehouse's position for its partition is and its
partition was not revoked or sought again since it was flushed (an epoch per
partition), so pipelining changes what runs at the same time, never what is
written.

Progress lives in the warehouse, not in the log's committed offsets
(architecture.md, invariant 5). Before the first record of a partition is
buffered, and whenever Kafka assigns a partition, the loader asks
``warehouse.loaded_positions(source)`` and seeks there; the committed offset is
only a hint that makes a restart start near the right place. Every batch
therefore starts exactly where the warehouse ends, and its dedup token
(``source:partition:first-last``) is the same whenever that range is retried, so
a crash between the warehouse write and the commit, or a rebalance, writes
nothing twice. A record at an offset the warehouse already holds is skipped; one
past the warehouse's end (a reader that started too far ahead) makes the loader
seek back, so nothing is lost either.

Rebalancing: when Kafka takes partitions away, the rebalance waits (in the
reader's ``on_revoked`` hook) until the write in progress has finished and drops
what was buffered for those partitions and voids their batches still in the
pipeline; the next owner then reads the warehouse's position after that write.

Batching adapts (``BatchPolicy``): under backlog batches and the flush interval
grow (up to ``max_batch`` records of one partition), when idle they shrink
again, so a trickle is loaded within a fraction of a second and a backlog in
few, large commits.

Failures: ``WarehouseUnavailable`` and ``LogUnavailable`` are retried with
exponential backoff (the same batch, so the same token), until stopped or, with
``give_up_after`` (a run that should end: ``--once``, a rebuild), for that many
seconds; anything else stops the loader with ``LoaderError``, whose message says
what failed and what to do. A
record that does not decode is the warehouse's business: it lands in
``dead_letters`` and loading goes on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from pipeline.loader_status import LoaderStatus, RateMeter, scrub, status_path, write_status
from pipeline.retention import gate_purge
from pipeline.transport.base import EventLog, LogReader, LogRecord
from pipeline.transport.errors import EventLogError, LogUnavailable, TruncatedLog
from pipeline.warehouse.base import LoadBatch, Warehouse, WriteResult
from pipeline.warehouse.errors import WarehouseError, WarehouseUnavailable

__all__ = [
    "DEFAULT_GROUP",
    "BatchPolicy",
    "LoadSummary",
    "Loader",
    "LoaderConfig",
    "LoaderError",
    "dead_letter_count",
]

log = logging.getLogger(__name__)

DEFAULT_GROUP = "embedguard-loader"

_T = TypeVar("_T")
FlushReason = Literal["size", "time", "drain"]


@runtime_checkable
class PreparingWarehouse(Protocol):
    """A warehouse whose ``write_batch`` splits into a CPU-only part
    (``prepare_batch``: decode and project; touches no stored state) and the
    write (``write_prepared``, idempotent as ``write_batch``), so that the loader
    prepares batch N+1 while batch N is written."""

    def prepare_batch(self, batch: LoadBatch) -> Any: ...

    def write_prepared(self, prepared: Any) -> WriteResult: ...


@dataclass(eq=False)
class _Flight:
    """A batch in the write pipeline: prepared, then written, in flush order."""

    batch: LoadBatch
    epoch: int
    prepared: asyncio.Task[Any]
    written: asyncio.Task[None] = field(init=False)


class LoaderError(Exception):
    """The loader stopped on a permanent error; the message says what to do."""


#: Dead letters, counted by their key: a MergeTree table holds a record's row
#: twice until a merge when a batch was written again after a crash with other
#: boundaries (another dedup token), so ``count()`` would over-report. Cheap:
#: dead letters are few, and only three small key columns are read (about 60 ms
#: for 200,000 of them, on the lake and on chDB).
_DEAD_LETTER_COUNT_SQL = (
    "SELECT uniqExact(source, src_partition, src_offset) AS n FROM {dead_letters}"
)


def dead_letter_count(warehouse: Warehouse) -> int:
    """The dead letters in ``warehouse`` (all sources, all loaders), each once."""
    rows = warehouse.query(_DEAD_LETTER_COUNT_SQL, {})
    return int(rows[0]["n"]) if rows else 0


@dataclass(frozen=True)
class LoaderConfig:
    """How a loader reads, batches, retries and reports.

    ``commit=False`` with ``tail=True`` reads the log without a consumer group
    (``warehouse rebuild``): nothing is registered, nothing is committed, and the
    log's retention is not held back.
    """

    group: str = DEFAULT_GROUP
    tail: bool = False
    min_batch: int = 100
    max_batch: int = 10_000
    initial_batch: int = 1_000
    min_flush_interval: float = 0.1
    max_flush_interval: float = 2.0
    retry_initial: float = 0.5
    retry_max: float = 30.0
    #: stop with ``LoaderError`` once an unavailable log or warehouse has kept
    #: one operation failing this many seconds; None: retry until stopped (a
    #: long-running loader, whose status shows "retrying" meanwhile). A run that
    #: should end (``--once``, a rebuild) sets it, or it would wait forever.
    give_up_after: float | None = None
    compact_interval: float | None = 600.0
    status_dir: Path | None = None
    status_interval: float = 1.0
    #: how often the status refreshes log end offsets and warehouse totals
    lag_interval: float = 5.0
    #: batches in the write pipeline at once: 2 prepares (decodes, projects)
    #: batch N+1 while batch N is written; 1 writes strictly one after the other
    pipeline_depth: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.initial_batch <= self.max_batch:
            raise ValueError(
                "batch sizes must satisfy 1 <= min_batch <= initial_batch <= max_batch, got "
                f"{self.min_batch}, {self.initial_batch}, {self.max_batch}"
            )
        if not 0 < self.min_flush_interval <= self.max_flush_interval:
            raise ValueError(
                "flush intervals must satisfy 0 < min_flush_interval <= max_flush_interval"
            )
        if self.retry_initial <= 0 or self.retry_max < self.retry_initial:
            raise ValueError("retries need 0 < retry_initial <= retry_max")
        if self.give_up_after is not None and not self.give_up_after > 0:
            raise ValueError(
                f"give_up_after must be more than 0 seconds (or None), not {self.give_up_after}"
            )
        if not self.group:
            raise ValueError("a loader needs a non-empty consumer group name")
        if self.pipeline_depth < 1:
            raise ValueError("pipeline_depth must be at least 1")


class BatchPolicy:
    """Adaptive batch size and flush interval (pure; no clock, no I/O).

    A flush because the batch filled up means there is a backlog: double the size
    (up to ``max_batch``) and lengthen the interval, so the next commit is bigger.
    A flush because time ran out with the batch less than a quarter full means the
    load is light: halve both, so records do not wait long.
    """

    def __init__(self, config: LoaderConfig) -> None:
        self.config = config
        self.batch_size = config.initial_batch
        self.flush_interval = min(max(config.min_flush_interval, 0.5), config.max_flush_interval)

    def on_flush(self, reason: FlushReason, count: int) -> None:
        cfg = self.config
        if reason == "size":
            self.batch_size = min(cfg.max_batch, self.batch_size * 2)
            self.flush_interval = min(cfg.max_flush_interval, self.flush_interval * 1.5)
        elif reason == "time" and count < self.batch_size // 4:
            self.batch_size = max(cfg.min_batch, self.batch_size // 2)
            self.flush_interval = max(cfg.min_flush_interval, self.flush_interval / 1.5)


@dataclass
class LoadSummary:
    events: int = 0
    dead_letters: int = 0
    batches: int = 0
    duplicate_batches: int = 0
    skipped_records: int = 0
    retries: int = 0
    elapsed_s: float = 0.0
    positions: dict[int, int] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return self.events + self.dead_letters

    @property
    def events_per_s(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0


class Loader:
    """Loads ``log`` into ``warehouse``. ``run()`` until ``stop`` is set, or with
    ``once=True`` until what the log held at start is in the warehouse.

    ``on_progress(loaded, total)`` is called after every batch in ``once`` mode
    (``total``: records to load at start, as far as the log's end offsets tell).
    """

    def __init__(
        self,
        log: EventLog,
        warehouse: Warehouse,
        config: LoaderConfig | None = None,
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.log = log
        self.warehouse = warehouse
        self.config = config or LoaderConfig()
        self.policy = BatchPolicy(self.config)
        self.summary = LoadSummary()
        self.on_progress = on_progress
        self.source = ""
        self._reader: LogReader | None = None
        #: the status loop asks the reader for end offsets only once it started
        self._reader_started = False
        self._expected: dict[int, int] = {}
        self._sought: dict[int, int] = {}
        self._unloaded: set[int] = set()
        self._buffer: dict[int, list[LogRecord]] = {}
        #: partition → the offset after its last batch still in the write pipeline
        self._queued: dict[int, int] = {}
        #: partition → incremented whenever its in-flight batches become void
        #: (revoked, or sought to the warehouse's position again)
        self._epoch: dict[int, int] = {}
        self._flights: collections.deque[_Flight] = collections.deque()
        #: partition → offset to commit to the log (a hint) once the loop gets to it
        self._to_commit: dict[int, int] = {}
        self._first_buffered_at: float | None = None
        self._write_lock = asyncio.Lock()
        self._rate = RateMeter()
        self._status: LoaderStatus | None = None
        self._status_path: Path | None = None
        self._ends: dict[int, int] = {}
        self._total = 0
        self._started = 0.0

    # -- public

    async def run(self, *, once: bool = False, stop: asyncio.Event | None = None) -> LoadSummary:
        stop = stop or asyncio.Event()
        self._started = time.monotonic()
        self.source = self.log.source_id
        self._init_status()
        # Status first, so a loader stuck retrying at start shows up as such.
        tasks: list[asyncio.Task[None]] = [asyncio.create_task(self._status_loop(stop))]
        try:
            try:
                # first: the projection workers start (import, parse schemas)
                # while the migrations run and the reader joins its group
                self.warehouse.start_loading()
            except Exception as err:  # an optimisation: the first batch does it anyway
                log.warning("could not prepare loading: %s", scrub(str(err)))
            applied = await self._warehouse_call(self.warehouse.migrate, stop)
            if applied:
                log.info("warehouse %s: applied migrations %s", self.warehouse.url, applied)
            reader = self._make_reader()
            self._reader = reader  # before start: Kafka's assignment callbacks use it
            await self._retrying(reader.start, "open the log reader", stop)
            self._reader_started = True
            await self._anchor_initial(reader, stop)
            targets = await self._targets(reader, stop) if once else {}
            if self.config.compact_interval:
                tasks.append(asyncio.create_task(self._compact_loop(stop)))
            await self._loop(reader, once=once, targets=targets, stop=stop)
            await self._flush("drain", stop)
            await self._drain(reader)
        except LoaderError as err:
            self._set_state("failed", str(err))
            raise
        except BaseException:
            self._set_state("failed", "interrupted")
            raise
        else:
            self._set_state("stopped")
        finally:
            await self._abandon_flights()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._reader is not None:
                with contextlib.suppress(Exception):
                    await self._reader.close()
                self._reader = None
                self._reader_started = False
            self.summary.elapsed_s = time.monotonic() - self._started
            self.summary.positions = dict(self._expected)
            await self._refresh_totals()
            self._write_status_now()
        return self.summary

    # -- reader and anchoring

    def _make_reader(self) -> LogReader:
        cfg = self.config
        reader = self.log.tail_reader() if cfg.tail else self.log.reader(cfg.group)
        from pipeline.transport.kafka import KafkaLogReader

        if isinstance(reader, KafkaLogReader) and reader.group is not None:
            reader.on_revoked = self._on_revoked
            reader.on_assigned = self._on_assigned
        return reader

    async def _on_revoked(self, partitions: frozenset[int]) -> None:
        # Waiting here holds the rebalance until the write in progress is done, so
        # the next owner reads the warehouse's position after it.
        async with self._write_lock:
            for partition in partitions:
                dropped = len(self._buffer.pop(partition, []))
                dropped += sum(
                    len(f.batch.records)
                    for f in self._flights
                    if f.batch.partition == partition
                    and f.epoch == self._epoch.get(partition, 0)
                    and not f.written.done()
                )
                self._void(partition)
                self._to_commit.pop(partition, None)
                self._expected.pop(partition, None)
                self._sought.pop(partition, None)
                if dropped:
                    log.info(
                        "partition %d revoked; %d buffered record(s) left to its next owner",
                        partition,
                        dropped,
                    )

    def _void(self, partition: int) -> None:
        """Void the batches of ``partition`` in the write pipeline: they are
        skipped when their turn comes. Caller holds the write lock, so none of
        them is being written."""
        self._epoch[partition] = self._epoch.get(partition, 0) + 1
        self._queued.pop(partition, None)

    async def _on_assigned(self, partitions: frozenset[int]) -> None:
        try:
            positions = await asyncio.to_thread(self.warehouse.loaded_positions, self.source)
        except WarehouseError as err:
            # Anchored lazily on the first record instead (see _accept).
            log.warning("could not read loaded positions on assignment: %s", scrub(str(err)))
            return
        async with self._write_lock:
            for partition in partitions:
                self._anchor(partition, positions)

    def _anchor(self, partition: int, positions: Mapping[int, int]) -> None:
        """Seek ``partition`` to the warehouse's position. Caller holds the lock."""
        reader = self._reader
        assert reader is not None
        self._buffer.pop(partition, None)
        self._void(partition)
        self._sought.pop(partition, None)
        loaded = positions.get(partition)
        if loaded is not None:
            self._unloaded.discard(partition)
        else:
            # Nothing of this partition is in the warehouse: load it from its first
            # record, whatever the group committed (if retention already removed
            # the oldest records, _poll starts at the oldest one left).
            self._unloaded.add(partition)
            loaded = 0
        reader.seek(partition, loaded)
        self._expected[partition] = loaded

    def _is_sqlite(self) -> bool:
        return self.source.startswith("sqlite:")

    @staticmethod
    def _caught_up(reader: LogReader) -> bool:
        """Kafka: a fetch of every owned partition showed nothing past what was
        polled, which is what the quiet spell waits for (``KafkaLogReader.caught_up``)."""
        from pipeline.transport.kafka import KafkaLogReader

        return isinstance(reader, KafkaLogReader) and reader.caught_up()

    def _read_all_of(self, reader: LogReader, records: list[LogRecord]) -> list[int]:
        """The buffered partitions the reader has read to the end of: for Kafka
        those ``KafkaLogReader.caught_up_partitions`` names (everything their
        latest fetch reported was returned); for the SQLite reader, whose poll
        reads the log itself, all of them once a poll found nothing."""
        from pipeline.transport.kafka import KafkaLogReader

        if isinstance(reader, KafkaLogReader):
            caught_up = reader.caught_up_partitions()
            return sorted(p for p in self._buffer if p in caught_up)
        return [] if records else sorted(self._buffer)

    async def _anchor_initial(self, reader: LogReader, stop: asyncio.Event) -> None:
        positions = await self._warehouse_call(
            lambda: self.warehouse.loaded_positions(self.source), stop
        )
        async with self._write_lock:
            for partition in self._assignment(reader):
                self._anchor(partition, positions)

    @staticmethod
    def _assignment(reader: LogReader) -> set[int]:
        from pipeline.transport.kafka import KafkaLogReader

        if isinstance(reader, KafkaLogReader):
            return set(reader.assignment)
        return set(reader.positions())

    async def _targets(self, reader: LogReader, stop: asyncio.Event) -> dict[int, int]:
        ends = await self._retrying(reader.end_offsets, "read the log's end offsets", stop)
        loaded = await self._warehouse_call(
            lambda: self.warehouse.loaded_positions(self.source), stop
        )
        self._ends = dict(ends)
        self._total = sum(max(0, end - loaded.get(p, 0)) for p, end in ends.items())
        return dict(ends)

    # -- the loop

    async def _loop(
        self, reader: LogReader, *, once: bool, targets: dict[int, int], stop: asyncio.Event
    ) -> None:
        refreshes = 0
        last_done_check = 0.0
        idle_since: float | None = None
        # SQLite's end offsets are exact. Kafka's may lag (Tansu under-reports until
        # a partition was fetched), so there "drained" also needs a quiet spell in
        # which every owned partition was fetched and returned nothing, or the
        # reader showing that its fetches of every partition found nothing more.
        settle = 0.0 if self._is_sqlite() else 1.0
        while not stop.is_set():
            now = time.monotonic()
            buffered = sum(len(r) for r in self._buffer.values())
            if self._first_buffered_at is not None:
                wait = self._first_buffered_at + self.policy.flush_interval - now
            else:
                wait = self.policy.flush_interval
            if once and self._read_to(reader, targets):
                # everything to load was read: do not sit out a flush interval in
                # a poll that has nothing to return (Kafka still settles, below)
                wait = min(wait, 0.0 if self._is_sqlite() else 0.1)
            # The batch size is per partition (a batch is one partition's run):
            # poll no more than the fullest partition has room for.
            fullest = max((len(r) for r in self._buffer.values()), default=0)
            records = await self._poll(
                reader, max(1, self.policy.batch_size - fullest), max(wait, 0.02), stop
            )
            if records:
                await self._accept(reader, records)
            buffered = sum(len(r) for r in self._buffer.values())
            full = [p for p, r in self._buffer.items() if len(r) >= self.policy.batch_size]
            if full:
                await self._flush("size", stop, full)
            elif buffered and (
                time.monotonic() - (self._first_buffered_at or 0) >= self.policy.flush_interval
            ):
                await self._flush("time", stop)
            elif buffered and once and (ended := self._read_all_of(reader, records)):
                # --once: a partition whose reader reached the end of what the log
                # holds will get no more records to fill its batch; write it now
                # rather than wait out the flush interval. Never all partitions on
                # any empty poll: one comes back empty while a fetch is in flight,
                # and cutting every partial buffer then made small batches, each
                # paying a whole batch's fixed write costs.
                await self._flush("drain", stop, ended)
            elif not buffered and not records and not self._flights:
                self.policy.on_flush("time", 0)
            self._reap()
            await self._commit_written(reader)

            buffered = sum(len(r) for r in self._buffer.values())
            if not once or records or buffered:
                idle_since = None
                continue
            if self._flights:
                # the log gave nothing more: wait for the batches being written
                await self._drain(reader)
                continue
            idle_since = idle_since or time.monotonic()
            own = self._own_done(targets)
            if own is False or (own is None and time.monotonic() - last_done_check < 0.5):
                continue
            if time.monotonic() - idle_since < settle and not self._caught_up(reader):
                continue
            last_done_check = time.monotonic()
            if not await self._done(targets, stop):
                continue
            if not targets or refreshes >= 3:
                return
            # Look again at the end offsets now that every partition was fetched;
            # stop only if nothing was missed.
            refreshes += 1
            ends = await self._retrying(reader.end_offsets, "read end offsets", stop)
            grown = {p: e for p, e in ends.items() if e > targets.get(p, 0)}
            if not grown:
                return
            self._total += sum(e - targets.get(p, 0) for p, e in grown.items())
            targets.update(grown)
            if self._own_done(targets) is not True:
                idle_since = None
            # else: the quiet spell came after loading past the grown ends (they
            # were only under-reported at start), so it still counts

    def _read_to(self, reader: LogReader, targets: Mapping[int, int]) -> bool:
        """Whether the reader is past every target (``--once``: all was read)."""
        if not targets:
            return False
        positions = reader.positions()
        return all(positions.get(p, 0) >= t for p, t in targets.items() if t > 0)

    def _own_done(self, targets: Mapping[int, int]) -> bool | None:
        """Whether the partitions this loader has anchored reached their targets
        (None when some targets are for partitions it does not hold)."""
        if not set(targets) <= set(self._expected):
            return None
        return all(self._expected.get(p, 0) >= t for p, t in targets.items() if t > 0)

    async def _done(self, targets: Mapping[int, int], stop: asyncio.Event) -> bool:
        if self._own_done(targets):
            return True
        loaded = await self._warehouse_call(
            lambda: self.warehouse.loaded_positions(self.source), stop
        )
        return all(loaded.get(p, 0) >= t for p, t in targets.items() if t > 0)

    async def _poll(
        self, reader: LogReader, limit: int, timeout: float, stop: asyncio.Event
    ) -> list[LogRecord]:
        delay, since = self.config.retry_initial, time.monotonic()
        while not stop.is_set():
            try:
                return await reader.poll(max_records=limit, timeout=timeout)
            except TruncatedLog as err:
                partition = err.partition if err.partition is not None else 0
                if (
                    partition in self._unloaded
                    and self._expected.get(partition) == err.requested
                    and err.oldest > err.requested
                ):
                    # Nothing of this partition is in the warehouse and retention has
                    # already removed its oldest records (loaded elsewhere, e.g. into
                    # the warehouse this one replaces): start at the oldest left.
                    note = (
                        f"partition {partition}: the log no longer holds offsets "
                        f"{err.requested}..{err.oldest - 1} (retention); this warehouse "
                        f"starts at offset {err.oldest}"
                    )
                    log.warning(note)
                    if self._status is not None:
                        self._status.notes.append(note)
                    reader.seek(partition, err.oldest)
                    self._expected[partition] = err.oldest
                    self._buffer.pop(partition, None)
                    continue
                raise LoaderError(
                    f"{err} The warehouse {self.warehouse.url} has not loaded those "
                    "records, so loading on would leave a gap."
                ) from err
            except LogUnavailable as err:
                delay = await self._backoff(err, delay, stop, since)
            except EventLogError as err:
                raise LoaderError(f"reading the log {self.log.url} failed: {err}") from err
        return []

    async def _accept(self, reader: LogReader, records: list[LogRecord]) -> None:
        by_partition: dict[int, list[LogRecord]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        for partition, recs in by_partition.items():
            if partition in self._expected:
                # no await from here to the end of _take: a revocation (which
                # takes the write lock) cannot interleave, so no lock is needed,
                # and reading goes on while a batch is written
                self._take(reader, partition, recs)
                continue
            async with self._write_lock:
                if partition not in self._expected:
                    positions = await self._warehouse_call(
                        lambda: self.warehouse.loaded_positions(self.source), None
                    )
                    self._anchor(partition, positions)
                    if recs[0].offset != self._expected[partition]:
                        self.summary.skipped_records += len(recs)
                        continue  # sought to the warehouse's position: poll again
                self._take(reader, partition, recs)

    def _take(self, reader: LogReader, partition: int, recs: list[LogRecord]) -> None:
        buffer = self._buffer.setdefault(partition, [])
        if buffer:
            expected = buffer[-1].offset + 1
        else:
            expected = self._queued.get(partition, self._expected[partition])
        for index, record in enumerate(recs):
            if record.offset < expected:
                self.summary.skipped_records += 1  # already in the warehouse
                continue
            if record.offset > expected:
                if self._sought.get(partition) == expected:
                    # We sought to ``expected`` and the log still starts later: the
                    # log has a hole there (e.g. a compacted topic). Load on from
                    # here in a new batch.
                    note = (
                        f"partition {partition}: the log has no records at offsets "
                        f"{expected}..{record.offset - 1}"
                    )
                    log.warning(note)
                    if self._status is not None:
                        self._status.notes.append(note)
                    if buffer or partition in self._queued:
                        # A batch must be contiguous: park the rest for the next poll
                        # (after the batches in the write pipeline).
                        reader.seek(partition, record.offset)
                        self._sought[partition] = record.offset
                        return
                    self._expected[partition] = record.offset
                    expected = record.offset
                else:
                    # The reader is ahead of the warehouse (e.g. the committed offset
                    # was ahead of what was loaded): go back, drop the rest.
                    reader.seek(partition, expected)
                    self._sought[partition] = expected
                    self.summary.skipped_records += len(recs) - index
                    return
            buffer.append(record)
            expected += 1
        if not buffer:
            self._buffer.pop(partition, None)
        elif self._first_buffered_at is None:
            self._first_buffered_at = time.monotonic()

    async def _flush(
        self, reason: FlushReason, stop: asyncio.Event, partitions: list[int] | None = None
    ) -> None:
        """Hand buffered runs to the write pipeline as batches of at most a batch
        size: every partition's, or on "size" only the full ``partitions``' full
        batches (the rest stays buffered, so that a partition that fills while
        the others trickle does not cut theirs into small batches, each paying a
        write's fixed costs). Returns once each is in the pipeline, not written:
        the loop reads on while the pipeline prepares and writes (``_flights``)."""
        size = self.policy.batch_size
        chosen = sorted(self._buffer if partitions is None else partitions)
        self.policy.on_flush(reason, sum(len(self._buffer.get(p, ())) for p in chosen))
        for partition in chosen:
            records = self._buffer.pop(partition, None)
            if not records:
                continue
            cut = len(records) - len(records) % size if reason == "size" else len(records)
            if cut < len(records):
                self._buffer[partition] = records[cut:]
            # taken now: a revocation while we wait for room voids these batches
            epoch = self._epoch.get(partition, 0)
            for start in range(0, cut, size):
                await self._make_room(self.config.pipeline_depth - 1)
                if self._epoch.get(partition, 0) != epoch:
                    break  # revoked or sought again meanwhile: the rest is void too
                batch = LoadBatch(self.source, partition, records[start : start + size])
                self._queued[partition] = batch.last_offset + 1
                self._launch(batch, epoch, stop)
        if not self._buffer:
            self._first_buffered_at = None

    def _launch(self, batch: LoadBatch, epoch: int, stop: asyncio.Event) -> None:
        prev = self._flights[-1] if self._flights else None
        prepared = asyncio.create_task(self._prepare(batch, prev.prepared if prev else None))
        flight = _Flight(batch, epoch, prepared)
        flight.written = asyncio.create_task(
            self._write_flight(flight, prev.written if prev else None, stop)
        )
        self._flights.append(flight)

    def _reap(self) -> None:
        """Drop written batches from the head of the pipeline; re-raise the
        error that stopped one (a ``LoaderError``)."""
        while self._flights and self._flights[0].written.done():
            self._flights.popleft().written.result()

    async def _make_room(self, limit: int) -> None:
        """Wait until at most ``limit`` batches are in the write pipeline."""
        while True:
            self._reap()
            if len(self._flights) <= limit:
                return
            await asyncio.wait([self._flights[0].written])

    async def _drain(self, reader: LogReader) -> None:
        await self._make_room(0)
        await self._commit_written(reader)

    async def _abandon_flights(self) -> None:
        """Cancel the pipeline (the loader stops); collect every outcome."""
        flights, self._flights = list(self._flights), collections.deque()
        for flight in flights:
            flight.written.cancel()
            flight.prepared.cancel()
        tasks = [t for f in flights for t in (f.written, f.prepared)]
        if tasks:
            # outcomes collected (no "exception never retrieved"); a cancellation
            # of this task itself still propagates
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _prepare(self, batch: LoadBatch, prev: asyncio.Task[Any] | None) -> Any:
        """Decode and project ``batch`` on a thread, after the batch before it
        (one projection at a time: it already uses every core)."""
        if prev is not None:
            await asyncio.wait([prev])
        warehouse = self.warehouse
        if isinstance(warehouse, PreparingWarehouse):
            return await asyncio.to_thread(warehouse.prepare_batch, batch)
        return None

    async def _write_flight(
        self, flight: _Flight, prev: asyncio.Task[None] | None, stop: asyncio.Event
    ) -> None:
        if prev is not None:
            await prev  # batches are written in flush order; a failure stops the rest
        try:
            prepared = await flight.prepared
        except Exception as err:  # noqa: BLE001 - write_batch does it again and reports it
            log.debug(
                "preparing batch %s failed (%s); writing it unprepared", flight.batch.token, err
            )
            prepared = None
        result = await self._write(flight, prepared, stop)
        if result is not None and not self.config.tail:
            # committed by the loop: only a hint, the warehouse keeps the position
            self._to_commit[flight.batch.partition] = flight.batch.last_offset + 1

    async def _commit_written(self, reader: LogReader) -> None:
        if not self._to_commit:
            return
        positions, self._to_commit = self._to_commit, {}
        try:
            await reader.commit(positions)
        except LogUnavailable as err:
            # Only a hint: the warehouse already knows this position.
            log.warning("commit failed (the warehouse keeps the position): %s", err)
        except ValueError as err:
            log.warning("commit refused: %s", err)

    async def _write(
        self, flight: _Flight, prepared: Any, stop: asyncio.Event
    ) -> WriteResult | None:
        batch = flight.batch
        partition = batch.partition
        delay, since = self.config.retry_initial, 0.0
        while True:
            async with self._write_lock:
                if (
                    self._epoch.get(partition, 0) != flight.epoch
                    or self._expected.get(partition) != batch.first_offset
                ):
                    # revoked or sought again meanwhile, or a batch before it was
                    # not written (stopping): writing it would leave a gap
                    return None
                warehouse = self.warehouse
                try:
                    if prepared is not None and isinstance(warehouse, PreparingWarehouse):
                        result = await asyncio.to_thread(warehouse.write_prepared, prepared)
                    else:
                        result = await asyncio.to_thread(warehouse.write_batch, batch)
                except WarehouseUnavailable as err:
                    failure: WarehouseUnavailable = err
                except WarehouseError as err:
                    raise LoaderError(
                        f"the warehouse {self.warehouse.url} refused batch {batch.token}: "
                        f"{scrub(str(err))}. Fix the warehouse (see the message), then "
                        "restart the loader; it resumes at this batch."
                    ) from err
                except Exception as err:
                    raise LoaderError(
                        f"writing batch {batch.token} to the warehouse {self.warehouse.url} "
                        f"failed unexpectedly: {type(err).__name__}: {scrub(str(err))}. "
                        "Restart the loader; it resumes at this batch."
                    ) from err
                else:
                    self._expected[partition] = batch.last_offset + 1
                    if self._queued.get(partition) == batch.last_offset + 1:
                        del self._queued[partition]
                    self._sought.pop(partition, None)
                    self._unloaded.discard(partition)
                    self._record(batch, result)
                    return result
            if stop.is_set():
                return None
            # from the first failure: waiting for the write lock is not failing
            since = since or time.monotonic()
            delay = await self._backoff(failure, delay, stop, since)

    def _record(self, batch: LoadBatch, result: WriteResult) -> None:
        s = self.summary
        s.batches += 1
        s.events += result.events
        s.dead_letters += result.dead_letters
        if result.duplicate:
            s.duplicate_batches += 1
        self._rate.add(len(batch.records))
        if self._status is not None:
            self._status.state = "running"
        if self.on_progress is not None:
            self.on_progress(s.records + s.skipped_records, max(self._total, s.records))

    # -- retries

    async def _backoff(
        self, err: Exception, delay: float, stop: asyncio.Event | None, since: float
    ) -> float:
        """Wait before the next attempt of an operation that first failed (or
        began) at ``since`` (monotonic); the next delay. Past
        ``config.give_up_after`` raise ``LoaderError`` naming what is down."""
        retry_after = getattr(err, "retry_after", 0.0) or 0.0
        wait = max(delay, float(retry_after)) * random.uniform(0.8, 1.2)  # noqa: S311
        message = scrub(str(err))
        give_up = self.config.give_up_after
        if give_up is not None:
            elapsed = time.monotonic() - since
            if elapsed >= give_up:
                what = (
                    f"the warehouse {self.warehouse.url}"
                    if isinstance(err, WarehouseError)
                    else f"the log {self.log.url}"
                )
                raise LoaderError(
                    f"gave up after {elapsed:.0f}s of retrying: {scrub(what)} is unavailable "
                    f"({message}). Check that it is running and reachable, then run the "
                    "loader again; it resumes where the warehouse ends"
                ) from err
            wait = min(wait, give_up - elapsed)  # one last attempt at the limit
        self.summary.retries += 1
        log.warning("retrying in %.1fs: %s", wait, message)
        self._set_state("retrying", message)
        self._write_status_now()
        if stop is None:
            await asyncio.sleep(wait)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        return min(delay * 2, self.config.retry_max)

    async def _retrying(
        self, fn: Callable[[], Awaitable[_T]], doing: str, stop: asyncio.Event
    ) -> _T:
        delay, since = self.config.retry_initial, time.monotonic()
        while True:
            try:
                return await fn()
            except LogUnavailable as err:
                if stop.is_set():
                    raise LoaderError(f"stopped while trying to {doing}: {err}") from err
                delay = await self._backoff(err, delay, stop, since)
            except EventLogError as err:
                raise LoaderError(f"could not {doing} of {self.log.url}: {err}") from err

    async def _warehouse_call(self, fn: Callable[[], _T], stop: asyncio.Event | None) -> _T:
        delay, since = self.config.retry_initial, time.monotonic()
        while True:
            try:
                return await asyncio.to_thread(fn)
            except WarehouseUnavailable as err:
                if stop is not None and stop.is_set():
                    raise LoaderError(
                        f"stopped while the warehouse was unavailable: {err}"
                    ) from err
                delay = await self._backoff(err, delay, stop, since)
            except WarehouseError as err:
                raise LoaderError(
                    f"the warehouse {self.warehouse.url} failed: {scrub(str(err))}"
                ) from err
            except Exception as err:
                raise LoaderError(
                    f"the warehouse {self.warehouse.url} failed: {type(err).__name__}: "
                    f"{scrub(str(err))}. Check that its location exists and is writable."
                ) from err

    # -- background work

    async def _compact_loop(self, stop: asyncio.Event) -> None:
        interval = self.config.compact_interval or 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
                return
            # the lake compacts beside loading (sorting a day partition takes
            # about a minute per million events); other warehouses pause loading
            beside = self.warehouse.compacts_beside_writes
            async with contextlib.nullcontext() if beside else self._write_lock:
                try:
                    # compact() also purges expired bodies: not while the log holds
                    # evidence holds this warehouse has not loaded yet
                    await gate_purge(self.log, self.warehouse)
                    await asyncio.to_thread(self.warehouse.compact)
                except Exception as err:  # compaction is an optimisation: never fatal
                    log.warning("compaction failed: %s", scrub(str(err)))
                    self._set_state(None, f"compaction failed: {scrub(str(err))}")
                else:
                    if self._status is not None:
                        self._status.last_compaction_at = time.time()

    def _init_status(self) -> None:
        self._status = LoaderStatus(
            group=self.config.group if not self.config.tail else f"{self.config.group}(tail)",
            source=self.source,
            log=self.log.url,
            warehouse=self.warehouse.url,
        )
        if self.config.status_dir is not None:
            self._status_path = status_path(self.config.status_dir, self._status.group)
        self._write_status_now()

    def _set_state(self, state: str | None, error: str | None = None) -> None:
        if self._status is None:
            return
        if state is not None:
            self._status.state = state
        if error is not None:
            self._status.last_error = scrub(error)
            self._status.last_error_at = time.time()

    def _write_status_now(self) -> None:
        status, path = self._status, self._status_path
        if status is None:
            return
        status.updated_at = time.time()
        status.events_loaded = self.summary.events
        status.dead_letters_loaded = self.summary.dead_letters
        status.duplicate_batches = self.summary.duplicate_batches
        status.events_per_s_1m = round(self._rate.rate(), 1)
        status.batch_size = self.policy.batch_size
        status.flush_interval_s = round(self.policy.flush_interval, 3)
        status.notes = status.notes[-20:]
        partitions: dict[str, dict[str, int | None]] = {}
        for partition in sorted(set(self._ends) | set(self._expected)):
            loaded = self._expected.get(partition)
            end = self._ends.get(partition)
            lag = None if end is None else max(0, end - (loaded or 0))
            partitions[str(partition)] = {"loaded": loaded, "end": end, "lag": lag}
        status.partitions = partitions
        status.assigned = sorted(self._expected)
        if path is not None:
            try:
                write_status(path, status)
            except OSError as err:
                log.warning("could not write loader status %s: %s", path, err)

    async def _refresh_totals(self) -> None:
        # one count, not ``stats()`` (a count of every table: eleven queries,
        # each a Delta snapshot on the lake, competing with the load for CPU)
        with contextlib.suppress(Exception):  # only for the status; never fatal
            total = await asyncio.to_thread(dead_letter_count, self.warehouse)
            if self._status is not None:
                self._status.dead_letters_total = total

    async def _status_loop(self, stop: asyncio.Event) -> None:
        last_lag = 0.0
        while not stop.is_set():
            reader = self._reader if self._reader_started else None
            if time.monotonic() - last_lag >= self.config.lag_interval and reader is not None:
                last_lag = time.monotonic()
                try:
                    ends = await reader.end_offsets()
                except (EventLogError, TimeoutError):
                    pass  # the log is busy or down: the lag is stale, retried next time
                except Exception as err:  # noqa: BLE001 - the status must outlive it
                    # the status loop is what `loader status` reads: never let it die
                    log.warning("loader status: could not read the log's end: %s", scrub(str(err)))
                else:
                    for partition, end in ends.items():
                        self._ends[partition] = max(end, self._ends.get(partition, 0))
                await self._refresh_totals()
            self._write_status_now()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.status_interval)
