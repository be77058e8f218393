"""Events on a log: validate and encode before append, decode after poll.

This is the only way events reach a transport, so a malformed event (unknown
type, a field that does not fit its schema) is refused here with the field's
name and never reaches the log.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.transport.base import AppendRecord, EventLog, LogRecord, Position
from pipeline.transport.errors import EventLogError
from pipeline.transport.sqlite import AppendFence, SqliteEventLog
from schemas.chain import StampedEvent
from schemas.codec import DecodedEvent, DecodeError, EventCodec, default_codec
from schemas.models import Event

__all__ = ["DecodedRecord", "EventPublisher", "decode_records"]


def _settle(future: asyncio.Future[None], _earlier: object) -> None:
    if not future.done():
        future.set_result(None)


class EventPublisher:
    """Appends events durably. ``publish`` returns only once they are durable."""

    def __init__(self, log: EventLog, codec: EventCodec | None = None) -> None:
        self.log = log
        self.codec = codec or default_codec()

    def to_record(self, item: Event | StampedEvent) -> AppendRecord:
        if isinstance(item, StampedEvent):
            return AppendRecord(item.session_id.encode(), item.wire)
        return AppendRecord(item.envelope.session_id.encode(), self.codec.encode(item))

    async def publish(
        self,
        items: Sequence[Event | StampedEvent],
        *,
        key: bytes | None = None,
        fence: AppendFence | None = None,
    ) -> list[Position]:
        """Append ``items`` durably, keyed by their session (or by ``key``).
        ``fence``: the stream they were stamped on (AppendFence); once an
        append of it has failed, this one fails too and stores nothing. With a
        log that may complete appends out of order, such as Kafka, appends are
        acknowledged in the order they were issued, and one that was in flight
        when an earlier one failed may be stored but is never acknowledged."""
        records = [self.to_record(item) for item in items]  # encode all first: all or nothing
        if key is not None:
            records = [AppendRecord(key, r.value) for r in records]
        if fence is None:
            return await self.log.append(records)
        if isinstance(self.log, SqliteEventLog):
            return await self.log.append(records, fence=fence)  # checked by its writer
        if fence.failed is not None:
            raise fence.refusal()
        number = fence.issue()
        # Acknowledge in order. This log may store a later append before an
        # earlier one fails (a Kafka produce to another partition): such an
        # append must wait until every earlier one is settled, and must not be
        # acknowledged if one failed. Its events then follow a hole in the
        # stream, so its request must not go on (they stay stored: Kafka
        # cannot take a record back).
        earlier, mine = fence.settled, asyncio.get_running_loop().create_future()
        fence.settled = mine
        try:
            try:
                positions = await self.log.append(records)
            except EventLogError as exc:
                fence.fail(exc, number)
                raise
            if earlier is not None:
                # shield: a cancelled caller must not cancel the earlier append's
                # future that others wait on too
                await asyncio.shield(earlier)
            if fence.failed_at is not None and fence.failed_at < number:
                raise fence.refusal(stored=True)
            return positions
        finally:
            # (A cancelled caller, e.g. at shutdown, does not close the stream:
            # the log's producer still sends what was handed to it.)
            if earlier is None or earlier.done():
                mine.set_result(None)
            else:  # failed or cancelled before an earlier one settled: wait for it
                earlier.add_done_callback(functools.partial(_settle, mine))

    def publish_nowait(
        self,
        items: Sequence[Event | StampedEvent],
        *,
        inline: bool = True,
        fence: AppendFence | None = None,
    ) -> asyncio.Future[list[Position]] | None:
        """Hand ``items`` to the log now, in call order, and return the future of
        their durability; None if this log cannot queue an append synchronously
        (then only ``publish`` keeps the order of appends). ``inline=False``:
        never commit on the caller's thread, even where the log would.
        ``fence``: as for ``publish``."""
        append_nowait = getattr(self.log, "append_nowait", None)
        if append_nowait is None:
            return None
        records = [self.to_record(item) for item in items]
        future: asyncio.Future[list[Position]] = append_nowait(
            records, inline=inline, fence=fence
        )
        return future


@dataclass(frozen=True)
class DecodedRecord:
    record: LogRecord
    decoded: DecodedEvent | None
    error: DecodeError | None


def decode_records(
    records: Sequence[LogRecord], codec: EventCodec | None = None
) -> list[DecodedRecord]:
    """Decode each record; a record that does not decode carries its error
    instead of stopping the batch (poison messages go to a dead-letter path)."""
    codec = codec or default_codec()
    out: list[DecodedRecord] = []
    for rec in records:
        try:
            out.append(DecodedRecord(rec, codec.decode(rec.value), None))
        except DecodeError as exc:
            out.append(DecodedRecord(rec, None, exc))
    return out
