"""Synthetic, validly chained event streams for loader tests and bench/pipeline.py.

Events come from schemas.chain.EventStamper (so every session's seq/prev_hash
chain verifies) and look like gateway traffic: a session opens, then requests
flow through RequestReceived → PolicyDecided → RequestForwarded →
ResponseRecorded, interleaved across sessions as a busy gateway would write them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pipeline.transport import AppendRecord, open_log
from pipeline.transport.base import LogRecord
from pipeline.warehouse import LoadBatch, WarehouseUnavailable
from schemas.chain import EventStamper
from schemas.codec import DecodedEvent, default_codec
from schemas.models import (
    ActionClass,
    Operation,
    PolicyDecided,
    RequestForwarded,
    RequestReceived,
    ResponseRecorded,
    SessionStarted,
)

if TYPE_CHECKING:
    from pipeline.warehouse.clickhouse import MergeTreeWarehouse

__all__ = [
    "append_records",
    "chained_records",
    "decode_raw",
    "read_records",
    "write_dead_letters_twice",
]

_T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def chained_records(
    total: int, sessions: int = 20, *, gateway_id: str = "gw-test", seed: int = 7
) -> Iterator[AppendRecord]:
    """``total`` records from ``sessions`` sessions, interleaved at random."""
    rng = random.Random(seed)
    stamper = EventStamper(gateway_id)
    ids = [f"s-{seed}-{i:04d}" for i in range(sessions)]
    step: dict[str, int] = dict.fromkeys(ids, 0)
    request: dict[str, str] = {}
    when = _T0
    for n in range(total):
        sid = ids[rng.randrange(sessions)]
        k = step[sid]
        step[sid] = k + 1
        when += timedelta(microseconds=250)
        common: dict[str, Any] = {"session_id": sid, "occurred_at": when}
        if k == 0:
            stamped = stamper.stamp(
                SessionStarted,
                subject=f"user-{sid[-2:]}",
                issuer="https://idp.test",
                client_address="127.0.0.1",
                **common,
            )
        else:
            phase = (k - 1) % 4
            if phase == 0:
                request[sid] = f"req-{sid}-{k}"
            rid = request[sid]
            collection = f"docs{n % 3}"
            if phase == 0:
                body = f'{{"points":[{{"id":{n},"vector":[0.1,0.2]}}]}}'.encode()
                stamped = stamper.stamp(
                    RequestReceived,
                    request_id=rid,
                    method="PUT",
                    host="qdrant.test",
                    path=f"/collections/{collection}/points",
                    body=body,
                    body_sha256=hashlib.sha256(body).hexdigest(),
                    body_size=len(body),
                    product="qdrant",
                    operations=[
                        Operation(
                            action=ActionClass.WRITE,
                            collection=collection,
                            ids=[str(n)],
                            vector_count=1,
                        )
                    ],
                    **common,
                )
            elif phase == 1:
                stamped = stamper.stamp(
                    PolicyDecided,
                    request_id=rid,
                    outcome="allow",
                    matched_rules=["writers"],
                    reasons=["group vector-write may write docs*"],
                    policy_sha256=_sha("policy"),
                    **common,
                )
            elif phase == 2:
                stamped = stamper.stamp(
                    RequestForwarded, request_id=rid, upstream="http://qdrant.test", **common
                )
            else:
                body = b'{"status":"ok"}'
                stamped = stamper.stamp(
                    ResponseRecorded,
                    request_id=rid,
                    status=200,
                    body=body,
                    body_sha256=hashlib.sha256(body).hexdigest(),
                    body_size=len(body),
                    original_body_sha256=hashlib.sha256(body).hexdigest(),
                    latency_us=900,
                    **common,
                )
        yield AppendRecord(sid.encode(), stamped.wire)


async def append_records(log_url: str, records: list[AppendRecord], chunk: int = 5_000) -> None:
    async with open_log(log_url) as lg:
        for i in range(0, len(records), chunk):
            await lg.append(records[i : i + chunk])


def decode_raw(raw_hex: str) -> DecodedEvent:
    """Decode a warehouse ``events.raw`` value, selected as ``hex(raw)`` (JSON
    output cannot carry binary), back into the canonical bytes as written."""
    return default_codec().decode(bytes.fromhex(raw_hex))


async def read_records(log_url: str) -> tuple[str, list[LogRecord]]:
    """(the log's source id, every record it holds), as a loader reads them."""
    async with open_log(log_url) as lg:
        async with lg.tail_reader() as reader:
            ends = await reader.end_offsets()
            records: list[LogRecord] = []
            while len(records) < sum(ends.values()):
                records += await reader.poll(max_records=1_000, timeout=1.0)
            return lg.source_id, records


def write_dead_letters_twice(
    crashing: MergeTreeWarehouse,
    restarted: MergeTreeWarehouse,
    source: str,
    records: list[LogRecord],
) -> None:
    """Leave every row of ``records`` twice in the MergeTree tables until a merge,
    as a kill -9 does: ``crashing`` writes them all but dies before the batch's
    ``loads`` mark, then ``restarted`` (the same database, opened afresh) writes
    them again in batches with other boundaries, so other insert dedup tokens."""
    real = crashing._insert

    def crash_on_loads(table: str, *args: Any) -> None:
        if table == "loads":
            raise WarehouseUnavailable("simulated kill -9 before the loads mark", retry_after=0)
        real(table, *args)

    crashing._insert = crash_on_loads  # type: ignore[method-assign,assignment]
    try:
        crashing.write_batch(LoadBatch(source, 0, records))
    except WarehouseUnavailable:
        pass
    else:
        raise AssertionError("the simulated crash did not happen")
    finally:
        del crashing._insert
    half = len(records) // 2
    for part in (records[:half], records[half:]):
        restarted.write_batch(LoadBatch(source, 0, part))
