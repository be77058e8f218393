"""The chDB insert path alone: CPU per batch for the ways a projected batch can
go into the MergeTree tables (a benchmark, not a test).

One batch of synthetic gateway traffic is projected once (``prepare_batch``);
then, alternating in one process with the background merges stopped (so that
merges of earlier inserts are not counted), every table of the batch is
inserted with:

* ``spool file()``: the former path: an Arrow IPC file in /dev/shm, read with
  ``INSERT ... SELECT ... FROM file(path, 'Arrow')``;
* ``stream, optimize_on_insert=1``: ``Session.send_insert`` with
  ``FORMAT ArrowStream`` and ClickHouse's default of collapsing duplicate keys
  within the inserted block;
* ``stream (today)``: ``ChdbEngine.insert_arrow`` as the loader calls it
  (streamed, ``optimize_on_insert = 0``).

Reported: the median CPU time of the process per batch (all tables) and per
small (3-row) insert, and the ratio to the spool path, measured in the same run.

``--codecs`` compares column codecs instead: the same batch streamed (as the
loader does) into two databases of one chDB engine, one migrated up to the
migration before ``0004_blob_codecs`` (events.raw, payload_json, bodies.body,
operations_json at ZSTD(3)) and one migrated to the end (ZSTD(1)), alternating.
Reported: median CPU per batch and for the events insert alone, the stored
(compressed) bytes per 10k rows of each table, and the CPU of one
``OPTIMIZE ... FINAL`` of each database's tables at the end (the merge).

    .venv/bin/python bench/chdb_insert.py [--batch 10000] [--rounds 9] [--codecs]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from pipeline.transport.base import LogRecord  # noqa: E402
from pipeline.warehouse import clickhouse  # noqa: E402
from pipeline.warehouse._chdb import _quote, engine  # noqa: E402
from pipeline.warehouse.base import LoadBatch  # noqa: E402
from pipeline.warehouse.clickhouse import ChdbWarehouse  # noqa: E402
from pipeline.warehouse.ddl import load_migrations  # noqa: E402
from tests.pipeline.loader_helpers import chained_records  # noqa: E402

Insert = Callable[[str, pa.Table, str], None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=10_000, help="records in the batch")
    parser.add_argument("--rounds", type=int, default=9, help="inserts of the batch per way")
    parser.add_argument(
        "--codecs", action="store_true", help="compare ZSTD(3) (before 0004) with ZSTD(1)"
    )
    args = parser.parse_args()
    if args.codecs:
        compare_codecs(args.batch, args.rounds)
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench-chdb-insert-"))
    records = [
        LogRecord(0, i, r.key, r.value, 0)
        for i, r in enumerate(chained_records(args.batch, sessions=50, seed=1))
    ]
    wh = ChdbWarehouse(str(tmp / "chdb"))
    wh.migrate()
    prepared = wh.prepare_batch(LoadBatch("kafka:bench", 0, records))
    tables = {t: d for t, d in prepared.tables.items() if d.num_rows}
    small = {t: d.slice(0, 3) for t, d in tables.items()}
    eng = engine()
    session = eng._session
    session.query("SYSTEM STOP MERGES")

    def spool_file(table: str, data: pa.Table, token: str) -> None:
        cols = ", ".join(f"`{c}`" for c in data.column_names)
        path = Path(tempfile.mkdtemp(dir="/dev/shm")) / "insert.arrow"  # noqa: S108
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, data.schema) as w:
            w.write_table(data)
        session.query(
            f"INSERT INTO {wh.db}.{table} ({cols}) SETTINGS insert_deduplicate = 1, "  # noqa: S608
            f"insert_deduplication_token = {_quote(token)} "
            f"SELECT {cols} FROM file({_quote(str(path))}, 'Arrow')"
        )
        path.unlink()
        path.parent.rmdir()

    def stream_optimized(table: str, data: pa.Table, token: str) -> None:
        cols = ", ".join(f"`{c}`" for c in data.column_names)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, data.schema) as w:
            w.write_table(data)
        inserter = session.send_insert(
            f"INSERT INTO {wh.db}.{table} ({cols}) SETTINGS insert_deduplicate = 1, "
            f"insert_deduplication_token = {_quote(token)}, optimize_on_insert = 1",
            "ArrowStream",
        )
        inserter.append(sink.getvalue().to_pybytes())
        inserter.finish()

    def today(table: str, data: pa.Table, token: str) -> None:
        eng.insert_arrow(f"{wh.db}.{table}", data.column_names, data, token, path=wh.path)

    ways: dict[str, Insert] = {
        "spool file()": spool_file,
        "stream, optimize_on_insert=1": stream_optimized,
        "stream (today)": today,
    }
    batch_cpu: dict[str, list[float]] = {name: [] for name in ways}
    small_cpu: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    token = 0
    for round_ in range(args.rounds):
        k = round_ % len(names)
        for name in names[k:] + names[:k]:  # a different way goes first each round
            fn = ways[name]
            cpu0 = time.process_time()
            for table, data in tables.items():
                token += 1
                fn(table, data, f"bench:{token}")
            batch_cpu[name].append(time.process_time() - cpu0)
            cpu0 = time.process_time()
            for table, data in small.items():
                token += 1
                fn(table, data, f"bench:{token}")
            small_cpu[name].append((time.process_time() - cpu0) / len(small))

    base = statistics.median(batch_cpu["spool file()"])
    base_small = statistics.median(small_cpu["spool file()"])
    rows = ", ".join(f"{t} {d.num_rows:,}" for t, d in tables.items())
    out = Table(title=f"chDB inserts of one {args.batch:,}-record batch ({rows}); "
                      f"median of {args.rounds}, merges stopped")  # fmt: skip
    for col in ("way", "CPU ms per batch", "µs/event", "× spool", "CPU ms per 3-row insert",
                "× spool"):  # fmt: skip
        out.add_column(col, justify="left" if col == "way" else "right")
    for name in names:
        cpu = statistics.median(batch_cpu[name])
        cpu_small = statistics.median(small_cpu[name])
        out.add_row(
            name, f"{cpu * 1000:.1f}", f"{cpu / args.batch * 1e6:.1f}", f"{cpu / base:.2f}×",
            f"{cpu_small * 1000:.1f}", f"{cpu_small / base_small:.2f}×",
        )  # fmt: skip
    Console(width=140).print(out)


CODEC_MIGRATION = "0004_blob_codecs"


def compare_codecs(batch: int, rounds: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-chdb-codecs-"))
    records = [
        LogRecord(0, i, r.key, r.value, 0)
        for i, r in enumerate(chained_records(batch, sessions=50, seed=1))
    ]
    every = load_migrations()
    before = [m for m in every if m.id < CODEC_MIGRATION]
    real = clickhouse.load_migrations
    clickhouse.load_migrations = lambda *_: list(before)  # type: ignore[assignment]
    try:
        zstd3 = ChdbWarehouse(str(tmp / "chdb"), database="zstd3")
        zstd3.migrate()
    finally:
        clickhouse.load_migrations = real
    zstd1 = ChdbWarehouse(str(tmp / "chdb"), database="zstd1")
    zstd1.migrate()
    whs = {"ZSTD(3) (before 0004)": zstd3, "ZSTD(1) (0004)": zstd1}
    prepared = zstd1.prepare_batch(LoadBatch("kafka:bench", 0, records))
    tables = {t: d for t, d in prepared.tables.items() if d.num_rows}
    eng = engine()
    eng._session.query("SYSTEM STOP MERGES")
    batch_cpu: dict[str, list[float]] = {name: [] for name in whs}
    events_cpu: dict[str, list[float]] = {name: [] for name in whs}
    names = list(whs)
    token = 0
    for round_ in range(rounds):
        k = round_ % len(names)
        for name in names[k:] + names[:k]:
            wh = whs[name]
            cpu0 = time.process_time()
            for table, data in tables.items():
                token += 1
                t0 = time.process_time()
                eng.insert_arrow(
                    f"{wh.db}.{table}", data.column_names, data, f"bench:{token}", path=wh.path
                )
                if table == "events":
                    events_cpu[name].append(time.process_time() - t0)
            batch_cpu[name].append(time.process_time() - cpu0)

    def stored(wh: ChdbWarehouse) -> dict[str, float]:
        rows = wh.query(
            "SELECT table, sum(data_compressed_bytes) AS b, sum(rows) AS n FROM system.parts "
            "WHERE database = {db:String} AND active GROUP BY table",
            {"db": wh.db},
        )
        return {r["table"]: float(r["b"]) / float(r["n"]) * 10_000 for r in rows if r["n"]}

    sizes = {name: stored(wh) for name, wh in whs.items()}
    merge_cpu: dict[str, float] = {}
    # the process's first merges pay for starting the merge threads: a warm-up
    warm = ChdbWarehouse(str(tmp / "chdb"), database="warmup")
    warm.migrate()
    for copy in range(2):
        for table, data in tables.items():
            eng.insert_arrow(
                f"warmup.{table}", data.column_names, data, f"warm:{copy}:{table}", path=warm.path
            )
    for table in tables:
        eng._session.query(f"SYSTEM START MERGES warmup.{table}")
        warm._command(f"OPTIMIZE TABLE warmup.{table} FINAL")
    for name in names:
        wh = whs[name]
        cpu0 = time.process_time()
        for table in tables:
            # merges start for this table alone: the process's CPU is its merge's
            eng._session.query(f"SYSTEM START MERGES {wh.db}.{table}")
            wh._command(f"OPTIMIZE TABLE {wh.db}.{table} FINAL")
            eng._session.query(f"SYSTEM STOP MERGES {wh.db}.{table}")
        merge_cpu[name] = time.process_time() - cpu0
    merged = {name: stored(wh) for name, wh in whs.items()}

    base = names[0]
    rows = ", ".join(f"{t} {d.num_rows:,}" for t, d in tables.items())
    out = Table(title=f"chDB inserts of one {batch:,}-record batch ({rows}); "
                      f"median of {rounds}, merges stopped; then OPTIMIZE FINAL of "
                      f"{rounds} batches")  # fmt: skip
    for col in ("codecs", "CPU ms per batch", "×", "events insert CPU ms", "×",
                "merge CPU ms", "×"):  # fmt: skip
        out.add_column(col, justify="left" if col == "codecs" else "right")
    for name in names:
        cpu = statistics.median(batch_cpu[name])
        ev = statistics.median(events_cpu[name])
        out.add_row(
            name,
            f"{cpu * 1000:.1f}", f"{cpu / statistics.median(batch_cpu[base]):.2f}×",
            f"{ev * 1000:.1f}", f"{ev / statistics.median(events_cpu[base]):.2f}×",
            f"{merge_cpu[name] * 1000:.0f}", f"{merge_cpu[name] / merge_cpu[base]:.2f}×",
        )  # fmt: skip
    Console(width=160).print(out)
    size_table = Table(title="stored (compressed) bytes per 10k rows: inserted parts / merged")
    size_table.add_column("table", justify="left")
    for name in names:
        size_table.add_column(name, justify="right")
    size_table.add_column("×", justify="right")
    for table in tables:
        cells = [
            f"{sizes[n].get(table, 0) / 1e6:.3f} MB / {merged[n].get(table, 0) / 1e6:.3f} MB"
            for n in names
        ]
        ratio = sizes[names[1]].get(table, 0) / max(sizes[base].get(table, 0), 1)
        size_table.add_row(table, *cells, f"{ratio:.3f}×")
    Console(width=160).print(size_table)


if __name__ == "__main__":
    main()
