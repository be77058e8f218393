"""Move records from one event log to another, at least once.

The usual pair is the embedded SQLite log (what a gateway wrote while running
embedded, or while Kafka was down) into Kafka. The relay is written against the
``EventLog`` interface only, so any pair works.

For each batch: poll the source, append the batch to the destination, and only
after the destination acknowledged it, commit the source reader's position. A
crash or an error between the two steps leaves the batch uncommitted, so the next
run sends it again: records are never lost, and may arrive twice. Every event
carries an ``event_id``, and the loader keeps one row per id.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.transport.base import AppendRecord, EventLog, LogReader, LogRecord

__all__ = ["relay"]


async def relay(
    source: EventLog,
    dest: EventLog,
    *,
    group: str,
    batch: int = 1000,
    stop_when_idle: bool = False,
    progress: Callable[[int], object] | None = None,
    poll_timeout: float = 1.0,
) -> int:
    """Relay records from ``source`` to ``dest`` and return how many were relayed.

    ``source`` and ``dest`` must be started. ``group`` is the reader group on the
    source; its committed position is where a later relay resumes. ``batch`` caps
    the records per append. ``progress`` is called with the size of every batch
    once it is committed (e.g. to advance a rich progress bar).

    With ``stop_when_idle`` the relay returns once a poll finds nothing new and the
    group's committed positions have reached the source's end offsets, i.e. the
    group relayed everything the source held at that moment. Without it, the relay
    runs until cancelled.

    Errors from either log propagate (LogUnavailable, TruncatedLog, ...). Nothing is
    committed for a batch that the destination did not acknowledge.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    relayed = 0
    async with source.reader(group) as reader:
        while True:
            records = await reader.poll(max_records=batch, timeout=poll_timeout)
            if not records:
                if stop_when_idle and await _caught_up(reader):
                    return relayed
                continue
            await dest.append([AppendRecord(key=r.key, value=r.value) for r in records])
            await reader.commit(_next_offsets(records))
            relayed += len(records)
            if progress is not None:
                progress(len(records))


def _next_offsets(records: list[LogRecord]) -> dict[int, int]:
    """The position after the newest record of each partition in ``records``."""
    positions: dict[int, int] = {}
    for record in records:
        positions[record.partition] = max(positions.get(record.partition, 0), record.offset + 1)
    return positions


async def _caught_up(reader: LogReader) -> bool:
    """True when the group's committed position reaches the end of every partition.

    Asking the committed positions, not only "the last poll was empty", keeps a
    relay from stopping while its reader is still joining a consumer group.
    """
    ends = await reader.end_offsets()
    if not any(ends.values()):
        return True
    committed = await reader.committed()
    return all(committed.get(partition, 0) >= end for partition, end in ends.items())
