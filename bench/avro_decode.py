"""Decoding the loader's events: the Python path against native Avro readers
(a benchmark, not a test).

The Kafka -> chDB load spends ~14-20 µs of CPU per event decoding Avro
(``EventCodec.decode_raw``, fastavro's ``schemaless_reader`` per record, plus
the model's checks), of a 40 µs budget for 50,000 events/s on two cores
(docs/benchmarks.md). Could a reader in C++ do it for much less? The records
of one writer schema are framed, unchanged, as an Avro object container file
(one header with the schema and a sync marker, one block holding every
record's bytes), which any Avro reader can decode in bulk:

* ``decode_raw``: what the loader runs today, record by record;
* ``fastavro OCF``: fastavro's container reader over that file (its block
  loop in Cython; no checks beyond the schema);
* ``chDB Avro``: ClickHouse's own Avro input format (``file(path, 'Avro')``,
  C++), read into an Arrow table.

The same synthetic gateway records (tests/pipeline/loader_helpers.py) go
through each way, alternating, ``--rounds`` times; reported: the median CPU
µs per event of each way and its ratio to ``decode_raw``, per event type and
overall. The framing (grouping and concatenation) is counted in both
container ways.

    .venv/bin/python bench/avro_decode.py [--events 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import collections
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _zigzag(n: int) -> bytes:
    """An Avro long (zig-zag varint)."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def container(schema: dict[str, Any], payloads: list[bytes]) -> bytes:
    """An Avro object container file holding ``payloads`` (bodies written with
    ``schema``) in one uncompressed block."""
    import fastavro

    head = io.BytesIO()
    fastavro.writer(head, fastavro.parse_schema(schema), [], codec="null")
    header = head.getvalue()
    sync = header[-16:]  # an empty file is its header, which ends with the sync marker
    body = b"".join(payloads)
    return header + _zigzag(len(payloads)) + _zigzag(len(body)) + body + sync


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import chdb
    import fastavro
    from rich.console import Console
    from rich.table import Table

    from schemas.codec import SINGLE_OBJECT_MAGIC, default_codec
    from tests.pipeline.loader_helpers import chained_records

    codec = default_codec()
    values = [r.value for r in chained_records(args.events, sessions=200, seed=1)]
    assert all(v[:2] == SINGLE_OBJECT_MAGIC for v in values)
    by_fp: dict[bytes, list[bytes]] = collections.defaultdict(list)
    for v in values:
        by_fp[v[2:10]].append(v[10:])
    writers = {fp: codec.decode_raw(SINGLE_OBJECT_MAGIC + fp + p[0]) for fp, p in by_fp.items()}
    names = {fp: raw.type_name for fp, raw in writers.items()}
    schemas = {fp: codec.schemas.current[names[fp]].schema for fp in by_fp}
    tmp = Path(tempfile.mkdtemp(prefix="eg-avro-", dir="/dev/shm"))
    chdb.query("SELECT 1")  # the engine's start is not a decode

    def way_decode_raw(fp: bytes, payloads: list[bytes]) -> int:
        for p in payloads:
            codec.decode_raw(SINGLE_OBJECT_MAGIC + fp + p)
        return len(payloads)

    def way_fastavro(fp: bytes, payloads: list[bytes]) -> int:
        return sum(1 for _ in fastavro.reader(io.BytesIO(container(schemas[fp], payloads))))

    def way_chdb(fp: bytes, payloads: list[bytes]) -> int:
        path = tmp / f"{fp.hex()}.avro"
        path.write_bytes(container(schemas[fp], payloads))
        return int(chdb.query(f"SELECT * FROM file('{path}', 'Avro')", "ArrowTable").num_rows)

    ways: dict[str, Callable[[bytes, list[bytes]], int]] = {
        "decode_raw (today)": way_decode_raw,
        "fastavro OCF": way_fastavro,
        "chDB Avro (C++)": way_chdb,
    }
    cpu: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    console = Console(width=110)
    for rnd in range(args.rounds):
        order = list(ways.items())
        order = order[rnd % len(order) :] + order[: rnd % len(order)]
        for name, way in order:
            total_cpu = 0.0
            for fp, payloads in by_fp.items():
                started = time.process_time()
                assert way(fp, payloads) == len(payloads)
                took = time.process_time() - started
                cpu[(name, names[fp])].append(took / len(payloads) * 1e6)
                total_cpu += took
            cpu[(name, "all")].append(total_cpu / len(values) * 1e6)
        console.print(f"[dim]round {rnd + 1}/{args.rounds} done[/]")

    table = Table(title=f"Avro decode, CPU µs per event (median of {args.rounds} rounds)")
    kinds = [
        "all",
        *sorted(
            {names[fp] for fp in by_fp},
            key=lambda n: -len(next(p for fp, p in by_fp.items() if names[fp] == n)),
        ),
    ]
    table.add_column("way")
    for kind in kinds:
        count = (
            len(values)
            if kind == "all"
            else sum(len(p) for fp, p in by_fp.items() if names[fp] == kind)
        )
        table.add_column(f"{kind} ({count:,})", justify="right")
    base = {k: statistics.median(cpu[("decode_raw (today)", k)]) for k in kinds}
    for name in ways:
        cells = []
        for kind in kinds:
            m = statistics.median(cpu[(name, kind)])
            cells.append(f"{m:.1f} ({m / base[kind]:.2f}×)")
        table.add_row(name, *cells)
    console.print(table)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    main()
