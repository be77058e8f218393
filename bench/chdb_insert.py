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

    .venv/bin/python bench/chdb_insert.py [--batch 10000] [--rounds 9]
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
from pipeline.warehouse._chdb import _quote, engine  # noqa: E402
from pipeline.warehouse.base import LoadBatch  # noqa: E402
from pipeline.warehouse.clickhouse import ChdbWarehouse  # noqa: E402
from tests.pipeline.loader_helpers import chained_records  # noqa: E402

Insert = Callable[[str, pa.Table, str], None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=10_000, help="records in the batch")
    parser.add_argument("--rounds", type=int, default=9, help="inserts of the batch per way")
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
