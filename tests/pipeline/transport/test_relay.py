"""relay(): at-least-once moves between event logs, against real logs only.

Kafka is the Tansu broker of the test session (see test_kafka.py for what Tansu
does and does not do). The failure test starts a second Tansu broker of its own
and stops it in the middle of a relay.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from pipeline.transport.base import AppendRecord, LogRecord
from pipeline.transport.errors import LogUnavailable
from pipeline.transport.kafka import KafkaEventLog
from pipeline.transport.relay import relay
from tests.pipeline.transport.test_kafka import make_log, poll_until, records_for
from tests.support.services import tansu_broker

kafka = pytest.mark.kafka


async def read_all(log: KafkaEventLog, count: int) -> list[LogRecord]:
    async with log.reader("check", partitions=range(log.partitions)) as reader:
        return await poll_until(reader, count)


def pairs(records: list[LogRecord] | list[AppendRecord]) -> Counter[tuple[bytes, bytes]]:
    return Counter((r.key, r.value) for r in records)


@kafka
async def test_relay_kafka_to_kafka_moves_every_record_and_commits_the_source(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    records = records_for([f"s{i}" for i in range(10)], 5)
    batches: list[int] = []
    async with make_log(kafka_bootstrap, f"{kafka_topic}.src") as source, make_log(
        kafka_bootstrap, f"{kafka_topic}.dst"
    ) as dest:
        ends: Counter[int] = Counter()
        for position in await source.append(records):
            ends[position.partition] = max(ends[position.partition], position.offset + 1)
        relayed = await relay(
            source, dest, group="relay", batch=7, stop_when_idle=True, progress=batches.append
        )
        assert relayed == len(records)
        assert sum(batches) == len(records) and max(batches) <= 7

        got = await read_all(dest, len(records))
        assert pairs(got) == pairs(records)
        # A session's events stay in order through the relay.
        per_key: dict[bytes, list[bytes]] = defaultdict(list)
        for record in sorted(got, key=lambda r: (r.partition, r.offset)):
            per_key[record.key].append(record.value)
        for key, values in per_key.items():
            assert values == [f"{key.decode()}:{i}".encode() for i in range(5)]

        async with source.reader("relay") as reader:
            assert await reader.committed() == dict(ends)
        # Caught up: a second run finds nothing to do, and new records move next time.
        assert await relay(source, dest, group="relay", stop_when_idle=True) == 0
        await source.append(records_for(["late"], 3))
        assert await relay(source, dest, group="relay", stop_when_idle=True) == 3


@kafka
async def test_relay_commits_only_batches_the_destination_acknowledged(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: str
) -> None:
    records = records_for(["s"], 25)
    # One source partition, so batches are offsets 0-9, 10-19, 20-24.
    source = make_log(kafka_bootstrap, f"{kafka_topic}.src", partitions=1)
    healthy = make_log(kafka_bootstrap, f"{kafka_topic}.dst", partitions=1)
    async with source, healthy:
        await source.append(records)
        with contextlib.ExitStack() as doomed_broker:
            doomed = make_log(
                doomed_broker.enter_context(tansu_broker(tmp_path / "tansu")),
                f"{kafka_topic}.doomed",
                partitions=1,
                request_timeout=1.5,
                append_timeout=3.0,
            )
            await doomed.start()
            try:

                def stop_broker_after_first_batch(n: int) -> None:
                    doomed_broker.close()

                with pytest.raises(LogUnavailable, match="Treat none of them as written"):
                    await relay(
                        source,
                        doomed,
                        group="relay",
                        batch=10,
                        progress=stop_broker_after_first_batch,
                    )
            finally:
                await doomed.close()

        async with source.reader("relay") as reader:
            assert await reader.committed() == {0: 10}, "only the acknowledged batch is committed"

        # The next run resumes after the acknowledged batch and re-sends the failed one.
        assert await relay(source, healthy, group="relay", batch=10, stop_when_idle=True) == 15
        got = await read_all(healthy, 15)
        assert [r.value for r in got] == [f"s:{i}".encode() for i in range(10, 25)]


@kafka
@pytest.mark.skipif(
    importlib.util.find_spec("pipeline.transport.sqlite") is None,
    reason="pipeline/transport/sqlite.py (SqliteEventLog) is not in this checkout yet",
)
async def test_relay_sqlite_to_kafka(
    sqlite_log_path: Path, kafka_bootstrap: str, kafka_topic: str
) -> None:
    from pipeline.transport.sqlite import SqliteEventLog

    records = records_for([f"s{i}" for i in range(4)], 10)
    dest = make_log(kafka_bootstrap, kafka_topic)
    async with SqliteEventLog(sqlite_log_path) as source, dest:
        await source.append(records)
        assert await relay(source, dest, group="relay", batch=16, stop_when_idle=True) == 40
        got = await read_all(dest, len(records))
        assert pairs(got) == pairs(records)
        per_key: dict[bytes, list[bytes]] = defaultdict(list)
        for record in sorted(got, key=lambda r: (r.partition, r.offset)):
            per_key[record.key].append(record.value)
        for key, values in per_key.items():
            assert values == [f"{key.decode()}:{i}".encode() for i in range(10)]
        async with source.reader("relay") as reader:
            assert await reader.committed() == await reader.end_offsets()


async def test_relay_rejects_an_empty_batch_size(kafka_topic: str) -> None:
    log = make_log("127.0.0.1:9", kafka_topic)
    with pytest.raises(ValueError, match="batch must be at least 1"):
        await relay(log, log, group="g", batch=0)
