"""bench/gateway.py's durability floor must really do invariant 1's work: two
durable (fsync'd, committed) appends per request, to a real SQLite log opened as
the gateway opens it. A floor that did less would flatter every ratio against it."""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]


def _bench_gateway():  # bench/ is not a package: load the script as a module
    spec = importlib.util.spec_from_file_location("bench_gateway", ROOT / "bench" / "gateway.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_gateway", module)
    spec.loader.exec_module(module)
    return module


async def test_the_floor_commits_each_request_and_its_response_before_going_on(tmp_path):
    bench = _bench_gateway()
    floor = bench.DurableFloor(tmp_path / "floor.db")
    await floor.running()
    try:
        for n in range(3):
            flow = SimpleNamespace(id=f"flow-{n}")
            floor.requestheaders(flow)
            await floor.request(flow)
            # durable before the hook returned: another connection already sees it
            with sqlite3.connect(tmp_path / "floor.db") as other:
                stored = other.execute("SELECT COUNT(*) FROM records").fetchone()[0]
            assert stored == 4 * n + 3
            await floor.response(flow)
        stats = floor.log.stats
        # one transaction per append, each fsync'd (synchronous=FULL), committed on
        # the loop's thread because each flow was alone, as the gateway does at c=1
        assert stats.commits == 6 and stats.inline_commits == 6
        assert floor._live == set()
    finally:
        await floor.log.close()
    with sqlite3.connect(tmp_path / "floor.db") as conn:
        sizes = [row[0] for row in conn.execute("SELECT length(value) FROM records ORDER BY id")]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # the sizes of the gateway's own events for the bench's request
    assert sizes == [477, 457, 268, 701] * 3


async def test_the_floor_group_commits_flows_in_flight_together(tmp_path):
    import asyncio

    bench = _bench_gateway()
    floor = bench.DurableFloor(tmp_path / "floor.db")
    await floor.running()
    try:
        flows = [SimpleNamespace(id=f"flow-{n}") for n in range(16)]
        for flow in flows:
            floor.requestheaders(flow)
        await asyncio.gather(*(floor.request(f) for f in flows))
        await asyncio.gather(*(floor.response(f) for f in flows))
        assert floor.log.stats.records == 16 * 4
        # with 16 flows in flight nothing commits inline, and appends share commits
        assert floor.log.stats.inline_commits == 0
        assert floor.log.stats.commits < floor.log.stats.appends == 32
    finally:
        await floor.log.close()
