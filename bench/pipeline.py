"""The pipeline benchmark: loader throughput and warehouse query latency.

Throughput (events/s through ``pipeline.loader.Loader``, ``--once``):
  * SQLite log → Delta lake (``lake:``), at batch sizes 1k and 10k;
  * Kafka (the Tansu broker) → chDB MergeTree tables (``chdb:``: ClickHouse-format
    inserts from the same DDL as ClickHouse server), at batch sizes 1k and 10k.
  The baseline, measured in the same run, is decoding the same records with the
  codec (``decode_raw``) and nothing else: the floor any loader pays. Ratios are
  against it. Each cell's clock includes starting the loader's projection
  workers (pipeline/warehouse/parallel.py), as a ``--once`` run pays it.

Query latency: the five main queries of pipeline/queries.py (session timeline,
sessions list with a filter, request by id, vector lineage, body substring
search), plus the dashboard's sessions list without a filter and with the body
filter, over each of ``--query-events`` (default 1M and 10M) events in the lake
and in chDB MergeTree. The data sets come from bench/warehouse_data.py (1M events
loaded by the loader once, multiplied in the warehouse with SQL; cached under
``--query-data``, so re-runs reuse them). Median and p95 wall time and median
CPU time of the process (chDB runs in it) of ``--repeat`` runs after a warm-up;
the ratio is against ``SELECT count()`` on the same tables in the same run. On a
shared machine the CPU time is the steadier figure.

Every cell runs in its own process: a chDB data directory is locked to one process,
and a fresh process keeps the cells from sharing caches.

    .venv/bin/python bench/pipeline.py [--events 50000] [--skip-kafka] [--skip-queries]
        [--query-events 1000000,10000000] [--query-data DIR] [--skip-throughput]
        [--json bench/results/pipeline.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console(width=140)

TARGETS = {"sqlite→lake": 20_000, "kafka→chdb": 50_000}
QUERY_TARGETS_MS = {"session timeline": 100.0, "sessions list (actor filter)": 1000.0}


# --------------------------------------------------------------------------- cells


def _records(events: int, sessions: int) -> list[Any]:
    from tests.pipeline.loader_helpers import chained_records

    return list(chained_records(events, sessions=sessions, seed=1))


async def _fill_sqlite(path: Path, events: int, sessions: int) -> None:
    from pipeline.transport import open_log

    records = _records(events, sessions)
    async with open_log(f"sqlite:{path}") as lg:
        for i in range(0, len(records), 10_000):
            await lg.append(records[i : i + 10_000])


def cell_decode(log_path: Path) -> dict[str, Any]:
    """Baseline: read every record of the log and decode it (``decode_raw``, the
    loader's decoder: plain records, every model constraint checked), nothing else."""
    from pipeline.transport import open_log
    from schemas.codec import default_codec

    async def run() -> dict[str, Any]:
        codec = default_codec()
        async with open_log(f"sqlite:{log_path}") as lg:
            async with lg.tail_reader() as reader:
                start = time.perf_counter()
                n = 0
                while batch := await reader.poll(max_records=10_000, timeout=0.2):
                    for record in batch:
                        codec.decode_raw(record.value)
                    n += len(batch)
                elapsed = time.perf_counter() - start
        return {"events": n, "seconds": elapsed}

    return asyncio.run(run())


def _load(log_url: str, warehouse_url: str, batch: int, **log_options: Any) -> dict[str, Any]:
    from pipeline.loader import Loader, LoaderConfig
    from pipeline.transport import open_log
    from pipeline.warehouse import open_warehouse

    async def run() -> dict[str, Any]:
        warehouse = open_warehouse(warehouse_url)
        warehouse.migrate()
        config = LoaderConfig(
            group="bench",
            min_batch=min(100, batch),
            initial_batch=batch,
            max_batch=batch,
            compact_interval=None,
        )
        async with open_log(log_url, **log_options) as lg:
            start = time.perf_counter()
            summary = await Loader(lg, warehouse, config).run(once=True)
            elapsed = time.perf_counter() - start
        rows = warehouse.query("SELECT count() AS n FROM {events}", {})
        warehouse.close()
        return {
            "events": summary.events,
            "batches": summary.batches,
            "seconds": elapsed,
            "rows": int(rows[0]["n"]),
        }

    return asyncio.run(run())


def cell_sqlite_lake(log_path: Path, lake: Path, batch: int) -> dict[str, Any]:
    return _load(f"sqlite:{log_path}", f"lake:{lake}", batch)


def cell_kafka_chdb(bootstrap: str, topic: str, chdb: Path, batch: int) -> dict[str, Any]:
    return _load(
        f"kafka://{bootstrap}?topic={topic}&session_timeout=2&heartbeat_interval=0.3",
        f"chdb:{chdb}",
        batch,
    )


def cell_queries(warehouse_url: str, repeat: int) -> dict[str, Any]:
    """Time the main queries on a built data set (bench/warehouse_data.py)."""
    from pipeline import queries
    from pipeline.warehouse import open_warehouse

    wh = open_warehouse(warehouse_url)
    pick = wh.query(
        "SELECT session_id, request_id FROM {requests} "
        "WHERE type = 'RequestReceived' AND request_id LIKE '%-5' LIMIT 1",
        {},
    )[0]
    sid, rid = pick["session_id"], pick["request_id"]
    found = queries.session(wh, sid)
    assert found is not None
    subject = found["subject"]
    point = wh.query(
        "SELECT collection, point_id FROM {vector_lineage} WHERE point_id != '' "
        "ORDER BY point_id LIMIT 1 OFFSET 777",
        {},
    )[0]
    needle = f'"id":{777},'
    cases: list[tuple[str, Any]] = [
        ("baseline: count()", lambda: wh.query("SELECT count() AS n FROM {events}", {})),
        ("session timeline", lambda: queries.session_events(wh, sid)),
        (
            "sessions list (actor filter)",
            lambda: queries.sessions_list(wh, queries.SessionFilter(actor=subject), limit=51),
        ),
        ("request by id", lambda: queries.request_by_id(wh, rid)),
        (
            "vector lineage",
            lambda: queries.vector_lineage(wh, point["collection"], point["point_id"]),
        ),
        ("body substring search", lambda: queries.body_search(wh, needle, limit=20)),
        ("sessions list (no filter)", lambda: queries.sessions_list(wh, limit=51)),
        (
            "sessions list (body filter)",
            lambda: queries.sessions_list(wh, queries.SessionFilter(body=needle), limit=51),
        ),
        (
            "sessions count (actor filter)",
            lambda: queries.sessions_count(wh, queries.SessionFilter(actor=subject)),
        ),
    ]
    timings: dict[str, dict[str, float]] = {}
    for name, fn in cases:
        result = fn()  # warm-up, and a sanity check that the query finds something
        if name != "baseline: count()" and not result:
            raise SystemExit(f"{name} found nothing on {warehouse_url}: the benchmark is broken")
        samples, cpu = [], []
        for _ in range(repeat):
            start, cpu0 = time.perf_counter(), time.process_time()
            fn()
            samples.append((time.perf_counter() - start) * 1000)
            cpu.append((time.process_time() - cpu0) * 1000)
        samples.sort()
        timings[name] = {
            "median_ms": statistics.median(samples),
            "p95_ms": samples[min(len(samples) - 1, int(len(samples) * 0.95))],
            "cpu_median_ms": statistics.median(cpu),
        }
    events = int(wh.query("SELECT count() AS n FROM {events}", {})[0]["n"])
    wh.close()
    return {"events": events, "timings": timings}


# --------------------------------------------------------------------------- driver


def run_cell(*args: str) -> dict[str, Any]:
    """Run one cell in a fresh process; it prints its result as JSON."""
    done = subprocess.run(
        [sys.executable, __file__, "--cell", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        console.print(done.stderr[-3000:])
        raise SystemExit(f"cell {args[0]} failed")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_queries(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The query cells: every data set size × backend, each in its own process."""
    from bench.warehouse_data import ensure

    for size in (int(n) for n in args.query_events.split(",")):
        backends = tuple(args.query_backends.split(","))
        data = ensure(args.query_data, size, backends)
        for backend in backends:
            url = f"{backend}:{data / backend}"
            console.print(f"timing the queries on {url} …")
            cell = run_cell("queries", url, str(args.repeat))
            results["queries"][f"{backend}@{size}"] = cell
            base_ms = cell["timings"]["baseline: count()"]["median_ms"]
            qt = Table(title=f"query latency on {backend}, {cell['events']:,} events "
                             f"(median of {args.repeat})")
            for col in ("query", "median ms", "p95 ms", "CPU ms", "× count()", "target"):
                qt.add_column(col, justify="right" if col != "query" else "left")
            for name, t in cell["timings"].items():
                target = QUERY_TARGETS_MS.get(name)
                met = target is not None and t["median_ms"] < target
                verdict = (
                    ""
                    if target is None
                    else f"<{target:g} ms at 10M; {'met' if met else 'NOT met'} here"
                )
                qt.add_row(
                    name, f"{t['median_ms']:.1f}", f"{t['p95_ms']:.1f}",
                    f"{t['cpu_median_ms']:.1f}", f"{t['median_ms'] / base_ms:.1f}×", verdict,
                )  # fmt: skip
            console.print(qt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per throughput cell")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--query-events", default="1000000,10000000",
                        help="comma-separated data set sizes (multiples of 1M)")
    parser.add_argument("--query-data", type=Path, default=Path("/tmp/embedguard-bench-queries"),
                        help="where the query data sets are built once and reused")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--skip-kafka", action="store_true")
    parser.add_argument("--skip-queries", action="store_true")
    parser.add_argument("--query-backends", default="lake,chdb")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "pipeline.json")
    parser.add_argument("--cell", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.cell:
        kind, *rest = args.cell
        if kind == "decode":
            out = cell_decode(Path(rest[0]))
        elif kind == "sqlite-lake":
            out = cell_sqlite_lake(Path(rest[0]), Path(rest[1]), int(rest[2]))
        elif kind == "kafka-chdb":
            out = cell_kafka_chdb(rest[0], rest[1], Path(rest[2]), int(rest[3]))
        elif kind == "queries":
            out = cell_queries(rest[0], int(rest[1]))
        else:
            raise SystemExit(f"unknown cell {kind}")
        print(json.dumps(out))
        return

    results: dict[str, Any] = {"events": args.events, "throughput": {}, "queries": {}}
    if args.skip_throughput:
        run_queries(args, results)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        return
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp_name:
        tmp = Path(tmp_name)
        log_path = tmp / "events.db"
        console.print(f"generating {args.events:,} chained events into {log_path} …")
        asyncio.run(_fill_sqlite(log_path, args.events, args.sessions))

        base = run_cell("decode", str(log_path))
        base_rate = base["events"] / base["seconds"]
        rows = [("baseline: read + decode only", "-", base["events"], base["seconds"], base_rate)]
        for batch in (1_000, 10_000):
            cell = run_cell("sqlite-lake", str(log_path), str(tmp / f"lake-{batch}"), str(batch))
            assert cell["rows"] == args.events, cell
            rows.append(("sqlite→lake", batch, cell["events"], cell["seconds"], None))

        if not args.skip_kafka:
            from pipeline.transport import open_log
            from tests.support.services import tansu_broker

            with tansu_broker(tmp / "tansu") as bootstrap:
                for batch in (1_000, 10_000):
                    topic = f"bench.{batch}"

                    async def produce(topic: str = topic) -> None:
                        records = _records(args.events, args.sessions)
                        url = f"kafka://{bootstrap}?topic={topic}&partitions=4"
                        async with open_log(url) as lg:
                            for i in range(0, len(records), 5_000):
                                await lg.append(records[i : i + 5_000])

                    asyncio.run(produce())
                    cell = run_cell(
                        "kafka-chdb", bootstrap, topic, str(tmp / f"chdb-{batch}"), str(batch)
                    )
                    assert cell["rows"] == args.events, cell
                    rows.append(("kafka→chdb", batch, cell["events"], cell["seconds"], None))

        table = Table(title=f"loader throughput, {args.events:,} events per cell")
        for col in ("path", "batch", "events", "seconds", "events/s", "× baseline", "target"):
            table.add_column(col, justify="right" if col != "path" else "left")
        for path, batch, n, seconds, _ in rows:
            rate = n / seconds
            target = TARGETS.get(path)
            verdict = (
                "" if target is None else f"{target:,} {'met' if rate >= target else 'NOT met'}"
            )
            table.add_row(
                path, str(batch), f"{n:,}", f"{seconds:.2f}", f"{rate:,.0f}",
                f"{rate / base_rate:.2f}×", verdict,
            )  # fmt: skip
            results["throughput"][f"{path}@{batch}"] = {
                "events": n,
                "seconds": round(seconds, 3),
                "events_per_s": round(rate),
                "ratio_to_decode": round(rate / base_rate, 3),
            }
        console.print(table)

    if not args.skip_queries:
        run_queries(args, results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    console.print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
