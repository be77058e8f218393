"""The warehouse interface shared by every backend.

A warehouse is a projection of the event log (architecture.md, invariant 5):
the loader hands it batches of raw log records, and it decodes, projects and
stores them idempotently. The warehouse itself, not the log's committed
offset, is the source of truth for how far a source has been loaded
(``loaded_positions``).

Backends: ``lake:DIR`` (Delta tables, read through chDB), ``chdb:DIR``
(MergeTree tables in an in-process chDB session) and ``clickhouse://...``
(ClickHouse server). All answer the same query text (pipeline/queries.py).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.transport.base import LogRecord

if TYPE_CHECKING:
    from datetime import datetime

    import pyarrow as pa

__all__ = ["LoadBatch", "PreparedBatch", "Warehouse", "WriteResult"]


@dataclass(frozen=True)
class LoadBatch:
    """Records of ONE partition of one source, in contiguous ascending offsets.

    ``source`` is the stable id of the log: ``kafka:<topic>`` or
    ``sqlite:<log uuid>``.
    """

    source: str
    partition: int
    records: Sequence[LogRecord]

    def __post_init__(self) -> None:
        if not self.records:
            raise ValueError("a LoadBatch needs at least one record")
        offsets = [r.offset for r in self.records]
        if any(r.partition != self.partition for r in self.records):
            raise ValueError(f"a LoadBatch holds records of partition {self.partition} only")
        if offsets != list(range(offsets[0], offsets[0] + len(offsets))):
            raise ValueError("a LoadBatch needs contiguous ascending offsets")

    @property
    def first_offset(self) -> int:
        return self.records[0].offset

    @property
    def last_offset(self) -> int:
        return self.records[-1].offset

    @property
    def token(self) -> str:
        """The deterministic deduplication token of this batch."""
        return f"{self.source}:{self.partition}:{self.first_offset}-{self.last_offset}"


@dataclass(frozen=True)
class PreparedBatch:
    """A batch decoded and projected ahead of its write (a warehouse's
    ``prepare_batch``), for its ``write_prepared``."""

    batch: LoadBatch
    loaded_at: datetime
    tables: dict[str, pa.Table]


@dataclass(frozen=True)
class WriteResult:
    events: int
    """Rows written to ``events``."""
    dead_letters: int
    duplicate: bool
    """The batch had been loaded before: nothing was written."""


class Warehouse(abc.ABC):
    """A synchronous warehouse (the loader calls it through asyncio.to_thread)."""

    #: Names the warehouse; never contains a password.
    url: str
    #: ``compact()`` may run while ``write_batch`` runs in another thread (the
    #: lake: Delta OPTIMIZE and vacuum commits do not conflict with appends), so
    #: the loader keeps loading while it compacts. Otherwise the loader pauses
    #: loading for the compaction.
    compacts_beside_writes: bool = False

    @abc.abstractmethod
    def migrate(self) -> list[str]:
        """Apply pending migrations in order; return the ids applied now.
        Idempotent: a second call returns []."""

    @abc.abstractmethod
    def loaded_positions(self, source: str) -> dict[int, int]:
        """partition → NEXT offset to load (last loaded offset + 1) for ``source``."""

    def start_loading(self) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Called by a loader once, before its first batch: start what loading
        needs ahead of time (projection workers), so that it overlaps with the
        loader joining its group. Only an optimisation: the first batch starts
        whatever is still missing."""

    @abc.abstractmethod
    def write_batch(self, batch: LoadBatch) -> WriteResult:
        """Decode, project and write one batch idempotently. Undecodable or
        invalid records go to ``dead_letters``; they never stop the batch."""

    @abc.abstractmethod
    def query(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run one parameterised query of pipeline/queries.py. ``{table}``
        placeholders are rendered to this backend's table references; user
        input only travels as ClickHouse query parameters."""

    @abc.abstractmethod
    def compact(self) -> None:
        """Compact storage (Delta: optimize + vacuum; ClickHouse: OPTIMIZE)."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Row counts per table and the last load time."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stats_summary(
    url: str, counts: dict[str, int], last: list[dict[str, Any]], distinct: list[dict[str, Any]]
) -> dict[str, Any]:
    """``stats()``: stored rows per table, and how many distinct events they
    hold, so a copy written twice (until a merge drops it, or for good on the
    lake) is visible as ``duplicate_event_rows`` instead of inflating a count."""
    events = int(distinct[0]["n"]) if distinct else 0
    return {
        "url": url,
        "tables": counts,
        "distinct_events": events,
        "duplicate_event_rows": counts.get("events", 0) - events,
        "last_load_at": last[0]["t"] if last and counts.get("loads") else None,
    }
