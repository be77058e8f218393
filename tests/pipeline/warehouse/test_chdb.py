"""pipeline/warehouse/_chdb.py: the process's chDB engine, shared by the lake
(Delta read with deltaLakeLocal) and the chdb (MergeTree) backends."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline.transport.base import LogRecord
from pipeline.warehouse import LoadBatch, Warehouse
from pipeline.warehouse._chdb import engine
from pipeline.warehouse.clickhouse import ChdbWarehouse
from pipeline.warehouse.lake import LakeWarehouse
from tests.pipeline.warehouse.scenario import HOSTILE_TEXTS, build_scenario, chdb_warehouse

SRC = "sqlite:chdb-engine-test"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LakeWarehouse]:
    wh = LakeWarehouse(tmp_path_factory.mktemp("lake"))
    wh.migrate()
    wh.write_batch(LoadBatch(SRC, 0, build_scenario(sessions=1).records()))
    yield wh
    wh.close()


@pytest.fixture(scope="module")
def merge_tree() -> Iterator[ChdbWarehouse]:
    wh = chdb_warehouse()
    wh.migrate()
    yield wh
    wh._command(f"DROP DATABASE IF EXISTS {wh.db}")


@pytest.mark.parametrize("backend", ["lake", "merge_tree"])
@pytest.mark.parametrize("value", HOSTILE_TEXTS, ids=range(len(HOSTILE_TEXTS)))
def test_parameter_values_arrive_exactly_as_given(
    value: str, backend: str, request: pytest.FixtureRequest
) -> None:
    """Every parameter type the queries use (pipeline/queries.py,
    pipeline/retention.py, the backends' bookkeeping) reads back what Python
    passed: chDB decodes values like ClickHouse server does, so the engine
    escapes them the way clickhouse-connect does for the server."""
    wh: Warehouse = request.getfixturevalue(backend)
    when = datetime(2026, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)
    params: dict[str, Any] = {
        "s": value,
        "a": [value, "", "plain"],
        "n": None,
        "i": -7,
        "u": 7,
        "b": True,
        "t": when,
        "tup": (value, 5),
    }
    [row] = wh.query(
        "SELECT {s:String} AS s, length({s:String}) AS len, {a:Array(String)} AS a, "
        "{n:Nullable(String)} AS n, {i:Int32} AS i, {u:UInt32} AS u, {b:Bool} AS b, "
        "{t:DateTime64(6, 'UTC')} AS t, {tup:Tuple(String, Int64)} AS tup",
        params,
    )
    assert row == {
        "s": value,
        "len": len(value.encode()),
        "a": [value, "", "plain"],
        "n": None,
        "i": -7,
        "u": 7,
        "b": True,
        "t": "2026-03-01 09:00:00.123456",
        "tup": [value, 5],
    }
    # a value compared with stored data, not only echoed
    [hit] = wh.query("SELECT count() AS n FROM {loads} WHERE source = {s:String}", {"s": value})
    assert hit["n"] == 0


def test_lake_reads_leave_every_threads_current_directory_alone(
    lake: LakeWarehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deltaLakeLocal only reads under chDB's user files path, the current
    directory; the lake lies outside it. The reads must not move the process
    (another thread writes files at relative paths meanwhile)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("only Linux gives a thread a current directory of its own")
    here = tmp_path / "cwd"
    here.mkdir()
    (here / "marker").write_text("x")
    monkeypatch.chdir(here)
    assert not lake.root.is_relative_to(here)
    stop = threading.Event()
    seen: dict[str, int] = {"here": 0, "elsewhere": 0}

    def probe() -> None:
        while not stop.is_set():
            ok = os.getcwd() == str(here) and Path("marker").exists()
            seen["here" if ok else "elsewhere"] += 1

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        for _ in range(10):
            assert lake.query("SELECT count() AS n FROM {sessions}", {})[0]["n"] > 0
    finally:
        stop.set()
        thread.join()
    assert seen["elsewhere"] == 0 and seen["here"] > 0, seen
    assert Path.cwd() == here


def test_without_a_thread_of_its_own_a_lake_read_restores_the_directory(
    lake: LakeWarehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a thread cannot have its own directory, the read moves the whole
    process for its duration and back."""
    monkeypatch.setattr(engine(), "_reader", False)
    monkeypatch.chdir(tmp_path)
    assert lake.query("SELECT count() AS n FROM {sessions}", {})[0]["n"] > 0
    assert Path.cwd() == tmp_path


@pytest.mark.parametrize("backend", ["lake", "merge_tree"])
def test_loaded_positions_of_hostile_source_names(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """The backends' own parameterised statements (the loaded positions of a
    log source) take any source name."""
    wh: Warehouse = request.getfixturevalue(backend)
    for n, source in enumerate(HOSTILE_TEXTS):
        wh.write_batch(LoadBatch(source, 0, [LogRecord(0, n, b"k", b"poison", 0)]))
    for n, source in enumerate(HOSTILE_TEXTS):
        assert wh.loaded_positions(source) == {0: n + 1}, source
