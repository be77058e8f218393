"""The event-log interface shared by every transport.

A transport moves opaque, already-encoded records. Encoding and validation of
events happen above it (``pipeline.transport.events``), so a malformed event
never reaches a transport at all.

Positions: a record lives at ``(partition, offset)``. The SQLite log has a single
partition 0 with a global, gap-free offset. Kafka has one offset sequence per
partition. A reader's committed position for a partition is the offset of the
*next* record it wants (Kafka's convention).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["AppendRecord", "EventLog", "LogReader", "LogRecord", "Position"]


@dataclass(frozen=True, slots=True)
class AppendRecord:
    """One record to append. ``key`` is the session id: it decides the partition
    and keeps a session's events in order."""

    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Position:
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class LogRecord:
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp_ms: int


class EventLog(abc.ABC):
    """A durable, append-only, multi-reader log of encoded events."""

    #: A URL that names this log without any credential, for messages and events.
    url: str

    @property
    def source_id(self) -> str:
        """A stable id of the records in this log, independent of how it is reached
        (path, broker address): the warehouse keys loaded positions by it
        (``kafka:<topic>`` or ``sqlite:<uuid of the log file>``)."""
        raise NotImplementedError(f"{type(self).__name__} has no source_id")

    @abc.abstractmethod
    async def start(self) -> None:
        """Open connections/files. Raises LogUnavailable or LogCorrupt."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def append(self, records: Sequence[AppendRecord]) -> list[Position]:
        """Append records and return their positions, in the same order.

        Returns only once every record is durable: fsync'd for SQLite, acknowledged
        by all in-sync replicas (acks=all) for Kafka. On any failure it raises
        and the caller must treat *none* of the records as written.
        """

    @abc.abstractmethod
    def reader(self, group: str, *, from_beginning: bool = True) -> LogReader:
        """A reader that belongs to consumer group ``group``.

        Readers of the same group share one committed position per partition.
        A group with no committed position starts at the oldest record when
        ``from_beginning`` is true, and at the end of the log otherwise.
        """

    def tail_reader(self, *, from_beginning: bool = True) -> LogReader:
        """A reader that belongs to no group: it commits nothing and registers
        nothing, so it never holds back retention (``events tail``, dashboards)."""
        raise NotImplementedError(f"{type(self).__name__} has no tail reader")

    async def __aenter__(self) -> EventLog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class LogReader(abc.ABC):
    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def poll(self, max_records: int = 1000, timeout: float = 1.0) -> list[LogRecord]:
        """Return up to ``max_records`` new records, waiting up to ``timeout``
        seconds for the first. Records of one partition come in offset order.
        Raises TruncatedLog if the reader's position was removed by retention."""

    @abc.abstractmethod
    def seek(self, partition: int, offset: int) -> None:
        """Make the next poll of ``partition`` start at ``offset``."""

    @abc.abstractmethod
    async def commit(self, positions: Mapping[int, int] | None = None) -> None:
        """Durably store this group's next offset per partition. Without an
        argument, commit everything returned by poll so far."""

    @abc.abstractmethod
    async def committed(self) -> dict[int, int]:
        """The group's committed next offset per partition."""

    @abc.abstractmethod
    def positions(self) -> dict[int, int]:
        """The offset the next poll starts at, per partition this reader reads."""

    @abc.abstractmethod
    async def end_offsets(self) -> dict[int, int]:
        """The offset after the newest record, per partition (for lag)."""

    async def __aenter__(self) -> LogReader:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
