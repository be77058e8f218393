"""Query-benchmark data sets of N million events, in the lake and in chDB MergeTree.

Loading 10M events through the loader takes hours on a 2-core machine, so a data
set is built in two steps:

1. **Base**: 1M synthetic gateway events (``tests/pipeline/loader_helpers.py``:
   sessions, then RequestReceived → PolicyDecided → RequestForwarded →
   ResponseRecorded per request, with bodies, hash-chained) are written to a
   SQLite log and loaded into a lake by the real loader, once.
2. **Copies**: the base rows are multiplied inside the warehouse with SQL
   (``INSERT … SELECT`` for MergeTree; the same SELECT read by chDB as Arrow
   and appended with ``deltalake`` for the lake). Copy ``k`` rewrites every id
   (session, request, event, approval, grant, ticket, gateway stream, point id;
   body hashes are re-derived), rewrites the point ids inside the bodies, and
   moves time: the base's 250 s of traffic is stretched to ~21 h and copy ``k``
   lies on day ``k``. So N copies are N× distinct sessions, requests, events and
   points over N days (one Delta ``day`` partition each), the same mix of
   traffic per day. Copy 0 keeps the base ids (times stretched the same way).

What the copies are not: their hash chains, Avro ``raw`` bytes and
``payload_json`` still name the base ids, and a copied body's sha256 is derived
from the base hash rather than computed from the rewritten bytes. They are for
query timing, not for proof checks.

Layout under ``--data DIR`` (re-runs reuse what is there; ``_ready.json`` marks
a finished step):

    DIR/base/events.db      the 1M-event SQLite log
    DIR/base/lake           the loader's lake of it
    DIR/<N>/lake            N events, compacted (lake.compact: sorted files)
    DIR/<N>/chdb            N events in chDB MergeTree (compacted)

    .venv/bin/python bench/warehouse_data.py --data DIR --events 10000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402

console = Console(width=140, stderr=True)

BASE_EVENTS = 1_000_000
BASE_SESSIONS = 20_000
#: the base generator's first event time, in Unix microseconds (2026-03-01 12:00 UTC)
T0_US = 1_772_366_400_000_000
#: the base's 250 s of traffic becomes ~20.8 h
STRETCH = 300
DAY_US = 86_400_000_000

#: Tables that a copy multiplies (loads, dead_letters and checkpoints stay empty).
COPIED = ("events", "requests", "sessions", "approvals", "vector_lineage", "bodies")

_ID = {
    "events": ("event_id", "session_id", "request_id", "approval_id"),
    "requests": ("request_id", "event_id", "session_id", "grant_id", "ticket_id", "approval_id"),
    "sessions": ("session_id", "event_id", "request_id", "token_id"),
    "approvals": ("approval_id", "event_id", "session_id", "request_id", "grant_id"),
    "vector_lineage": ("event_id", "session_id", "request_id"),
    "bodies": ("event_id", "request_id"),
}
_SHA = {
    "events": ("body_sha256",),
    "requests": ("request_body_sha256", "response_body_sha256", "original_body_sha256"),
    "approvals": ("request_sha256",),
    "vector_lineage": ("filter_sha256",),
    "bodies": ("sha256",),
}


def _time(expr: str, k: int) -> str:
    return (
        f"fromUnixTimestamp64Micro(toInt64({T0_US} + {k} * {DAY_US} + "
        f"(toUnixTimestamp64Micro({expr}) - {T0_US}) * {STRETCH}), 'UTC')"
    )


def copy_select(table: str, columns: list[str], k: int, source: str) -> str:
    """The SELECT that produces copy ``k`` of ``table``'s rows from ``source``."""
    out: list[str] = []
    for c in columns:
        if c in _ID.get(table, ()):
            e = c if k == 0 else f"concat('c{k}-', {c})"
        elif c in _SHA.get(table, ()):
            e = c if k == 0 else f"lower(hex(SHA256(concat({c}, ':c{k}'))))"
        elif c == "gateway_id":
            e = c if k == 0 else f"concat({c}, '-c{k}')"
        elif c in ("occurred_at", "expires_at"):
            e = _time(c, k)
        elif c == "day":
            e = f"toDate({_time('occurred_at', k)})"
        elif c == "src_offset":
            e = f"{c} + {k * BASE_EVENTS}"
        elif table == "vector_lineage" and c == "point_id":
            e = c if k == 0 else f"if({c} = '', '', concat('c{k}-', {c}))"
        elif table == "bodies" and c in ("body", "size") and k:
            body = f"replaceRegexpAll(body, '\"id\":(\\\\d+)', '\"id\":\"c{k}-\\\\1\"')"
            e = body if c == "body" else f"toInt64(length({body}))"
        else:
            e = c
        out.append(f"{e} AS `{c}`")
    return f"SELECT {', '.join(out)} FROM {source}"  # noqa: S608 - bench-only, fixed names


# --------------------------------------------------------------------------- steps


def _ready(path: Path) -> dict[str, Any] | None:
    marker = path / "_ready.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def _mark(path: Path, info: dict[str, Any]) -> None:
    (path / "_ready.json").write_text(json.dumps(info, indent=1))


def ensure_base(data: Path) -> dict[str, Any]:
    """The 1M-event log and the loader's lake of it (built once)."""
    base = data / "base"
    done = _ready(base)
    if done:
        return done
    from bench.pipeline import _fill_sqlite, _load

    base.mkdir(parents=True, exist_ok=True)
    log = base / "events.db"
    for stale in (log, base / "events.db-wal", base / "events.db-shm"):
        stale.unlink(missing_ok=True)
    with console.status(f"generating {BASE_EVENTS:,} chained events into {log} …"):
        t0 = time.perf_counter()
        asyncio.run(_fill_sqlite(log, BASE_EVENTS, BASE_SESSIONS))
        fill_s = time.perf_counter() - t0
    with console.status("loading them into a lake with the loader (batches of 10k) …"):
        load = _load(f"sqlite:{log}", f"lake:{base / 'lake'}", 10_000)
    info = {"events": load["rows"], "fill_s": round(fill_s, 1), "load_s": round(load["seconds"], 1)}
    _mark(base, info)
    return info


def step_lake(data: Path, events: int) -> dict[str, Any]:
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    from pipeline.warehouse._chdb import engine
    from pipeline.warehouse.lake import LakeWarehouse

    target = data / str(events) / "lake"
    copies = events // BASE_EVENTS
    wh = LakeWarehouse(target)
    wh.migrate()
    schemas = wh._schemas
    base = (data / "base" / "lake").resolve()
    os.chdir("/")  # deltaLakeLocal reads under the current directory (see _chdb.py)
    eng = engine()
    eng.acquire(None)
    t0 = time.perf_counter()
    with Progress(console=console) as progress:
        task = progress.add_task("lake: writing copies", total=copies * len(COPIED))
        for k in range(copies):
            for table in COPIED:
                schema: pa.Schema = schemas[table]
                sql = copy_select(table, schema.names, k, f"deltaLakeLocal('{base / table}')")
                with eng.lock:
                    arrow = eng._session.query(sql, "ArrowTable")
                if arrow.num_rows:
                    write_deltalake(
                        DeltaTable(str(target / table)), arrow.cast(schema), mode="append"
                    )
                progress.advance(task)
    return _finish(wh, "lake: compacting (sorted files, checkpoints)", target, events, copies, t0)


def _finish(
    wh: Any, label: str, target: Path, events: int, copies: int, t0: float
) -> dict[str, Any]:
    """Compact the copied data set, record its timings next to it, close it."""
    written = time.perf_counter() - t0
    with console.status(f"{label} …"):
        t1 = time.perf_counter()
        wh.compact()
        compact_s = time.perf_counter() - t1
    info = {"events": events, "copies": copies, "write_s": round(written, 1),
            "compact_s": round(compact_s, 1)}
    wh.close()
    _mark(target, info)
    return info


def step_chdb(data: Path, events: int) -> dict[str, Any]:
    from pipeline.warehouse.clickhouse import ChdbWarehouse

    target = data / str(events) / "chdb"
    copies = events // BASE_EVENTS
    target.mkdir(parents=True, exist_ok=True)
    wh = ChdbWarehouse(str(target))
    wh.migrate()
    base = (data / "base" / "lake").resolve()
    os.chdir("/")
    t0 = time.perf_counter()
    with Progress(console=console) as progress:
        task = progress.add_task("chdb: inserting copies", total=copies * len(COPIED))
        for k in range(copies):
            for table in COPIED:
                names = wh._schemas[table].names
                sql = copy_select(table, names, k, f"deltaLakeLocal('{base / table}')")
                cols = ", ".join(f"`{c}`" for c in names)
                wh._command(f"INSERT INTO {wh.db}.{table} ({cols}) {sql}")
                progress.advance(task)
    return _finish(wh, "chdb: compacting (OPTIMIZE)", target, events, copies, t0)


def ensure(data: Path, events: int, backends: tuple[str, ...] = ("lake", "chdb")) -> Path:
    """Build (or reuse) the ``events`` data set under ``data``; return its directory."""
    if events % BASE_EVENTS:
        raise SystemExit(f"--events must be a multiple of {BASE_EVENTS:,}, not {events:,}")
    data = data.resolve()
    console.print(f"base: {ensure_base(data)}")
    for backend in backends:
        path = data / str(events) / backend
        done = _ready(path)
        if done is None:
            # each step in its own process: a chDB data directory is locked to one process
            proc = subprocess.run(
                [sys.executable, __file__, "--data", str(data), "--events", str(events),
                 "--step", backend],
                check=False,
            )
            if proc.returncode:
                raise SystemExit(f"building the {backend} data set of {events:,} failed")
            done = _ready(path)
        console.print(f"{backend} {events:,}: {done}")
    return data / str(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="cache directory")
    parser.add_argument("--events", type=int, default=10 * BASE_EVENTS)
    parser.add_argument("--backends", default="lake,chdb")
    parser.add_argument("--step", choices=["lake", "chdb"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = args.data.resolve()
    if args.step == "lake":
        step_lake(data, args.events)
    elif args.step == "chdb":
        step_chdb(data, args.events)
    else:
        ensure(data, args.events, tuple(args.backends.split(",")))


if __name__ == "__main__":
    main()
