"""EventPublisher over a log that may complete appends out of order (Kafka).

The broker is the real Tansu of the test session. Where an append must fail at a
chosen moment, the failure is injected in front of the real log (the record is
then never sent), while every other append is produced to, and acknowledged
by, the broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from pipeline.events import EventPublisher
from pipeline.transport.base import AppendRecord, LogRecord, Position
from pipeline.transport.errors import LogUnavailable
from pipeline.transport.kafka import KafkaEventLog
from pipeline.transport.sqlite import AppendFence
from schemas.chain import EventStamper, StampedEvent
from schemas.models import RequestBlocked
from tests.pipeline.transport.test_kafka import make_log, poll_until

pytestmark = pytest.mark.kafka


class HeldAppends(KafkaEventLog):
    """The real Kafka log, except that the appends whose number is in ``held``
    wait for their gate and then fail without being sent, as a produce to one
    partition fails after its retries while others succeed."""

    def __init__(self, *args, held: Sequence[int] = (), **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.gates = {n: asyncio.Event() for n in held}
        self.issued = 0
        self.acknowledged: list[int] = []

    async def append(self, records: Sequence[AppendRecord]) -> list[Position]:
        number, self.issued = self.issued, self.issued + 1
        gate = self.gates.get(number)
        if gate is not None:
            await gate.wait()
            raise LogUnavailable(f"injected: append {number} failed after its retries")
        positions = await super().append(records)
        self.acknowledged.append(number)
        return positions


def _events(stamper: EventStamper, n: int, session: str = "s-1") -> list[StampedEvent]:
    return [
        stamper.stamp(
            RequestBlocked, session_id=session, request_id=f"r{n}", status=403,
            error="forbidden", reason="no rule matched", stage="policy",
        )
    ]


async def _stored(log: KafkaEventLog, count: int) -> list[LogRecord]:
    async with log.reader("check", partitions=range(6)) as reader:
        return await poll_until(reader, count)


async def test_a_later_append_stored_before_an_earlier_one_fails_is_not_acknowledged(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with _held(kafka_bootstrap, kafka_topic, held=[0]) as log:
        publisher, stamper, fence = EventPublisher(log), EventStamper("gw-1"), AppendFence()
        events = [_events(stamper, n) for n in range(3)]
        first = asyncio.ensure_future(publisher.publish(events[0], fence=fence))
        second = asyncio.ensure_future(publisher.publish(events[1], fence=fence))
        # the second append reaches the broker and is acknowledged by it...
        await _until(lambda: bool(log.acknowledged))
        assert log.acknowledged == [1]
        # ...but not by the publisher while the first is still in flight
        await asyncio.sleep(0.2)
        assert not second.done()
        log.gates[0].set()  # now the first fails
        with pytest.raises(LogUnavailable, match="injected"):
            await first
        with pytest.raises(LogUnavailable, match="records were stored, but after the hole"):
            await second
        # the stream is closed: nothing more of it is sent or acknowledged
        with pytest.raises(LogUnavailable, match="nothing of it was stored"):
            await publisher.publish(events[2], fence=fence)
        assert log.issued == 2
        stored = await _stored(log, 1)
    # Kafka cannot take the second back; it is there, unacknowledged
    assert [r.value for r in stored] == [events[1][0].wire]


async def test_appends_in_flight_are_acknowledged_in_the_order_they_were_issued(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with make_log(kafka_bootstrap, kafka_topic) as log:
        publisher, stamper, fence = EventPublisher(log), EventStamper("gw-1"), AppendFence()
        done: list[int] = []

        async def one(n: int) -> list[Position]:
            # sessions spread the appends over the topic's partitions
            positions = await publisher.publish(_events(stamper, n, f"s-{n % 7}"), fence=fence)
            done.append(n)
            return positions

        results = await asyncio.gather(*(one(n) for n in range(60)))
        assert done == list(range(60))
        assert len({p for ps in results for p in ps}) == 60
        assert len(await _stored(log, 60)) == 60
        assert fence.failed is None and fence.settled is not None and fence.settled.done()


async def test_a_cancelled_caller_leaves_later_appends_waiting_for_the_earlier_ones(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with _held(kafka_bootstrap, kafka_topic, held=[0]) as log:
        publisher, stamper, fence = EventPublisher(log), EventStamper("gw-1"), AppendFence()
        first = asyncio.ensure_future(publisher.publish(_events(stamper, 0), fence=fence))
        second = asyncio.ensure_future(publisher.publish(_events(stamper, 1), fence=fence))
        third = asyncio.ensure_future(publisher.publish(_events(stamper, 2), fence=fence))
        await _until(lambda: log.acknowledged == [1, 2] or log.acknowledged == [2, 1])
        second.cancel()  # its caller gave up after the broker had it
        with pytest.raises(asyncio.CancelledError):
            await second
        await asyncio.sleep(0.2)
        assert not third.done()  # still behind the first, through the cancelled one
        log.gates[0].set()
        with pytest.raises(LogUnavailable, match="injected"):
            await first
        with pytest.raises(LogUnavailable, match="after the hole"):
            await third


def _held(bootstrap: str, topic: str, held: Sequence[int]) -> HeldAppends:
    """make_log's settings (timings that suit Tansu), with appends held."""
    return HeldAppends(
        bootstrap, topic=topic, session_timeout=2.0, heartbeat_interval=0.3,
        connect_timeout=5.0, request_timeout=5.0, append_timeout=10.0, held=held,
    )


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)
