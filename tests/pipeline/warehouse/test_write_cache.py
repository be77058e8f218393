"""The write path's caches (pipeline/warehouse/lake.py ``_known``,
pipeline/warehouse/clickhouse.py ``_known_marks``): a batch that carries on from
this process's own last batch skips re-reading the warehouse's progress, and a
writer whose cache went stale (another process loaded the same partition
meanwhile) still writes nothing twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.transport.base import LogRecord
from pipeline.warehouse import LoadBatch, WarehouseUnavailable
from pipeline.warehouse._chdb import engine
from pipeline.warehouse.base import Warehouse
from pipeline.warehouse.clickhouse import ChdbWarehouse
from pipeline.warehouse.lake import LakeWarehouse
from pipeline.warehouse.projection import TABLES
from tests.pipeline.warehouse.scenario import (
    build_scenario,
    renumber,
    shared_chdb_dir,
    unique_database,
)

SRC = "sqlite:5d1e-cache-test"

#: every table and the expression that is unique per row of it
UNIQUE = {
    "events": "event_id",
    "requests": "event_id",
    "sessions": "event_id",
    "approvals": "event_id",
    "checkpoints": "event_id",
    "vector_lineage": "concat(event_id, point_id, toString(op_index))",
    "bodies": "concat(event_id, kind)",
}


def _records() -> list[LogRecord]:
    return build_scenario(sessions=3).records()


REFUSED: list[str] = []


def _write(wh: Warehouse, recs: list[LogRecord], lo: int, hi: int) -> bool:
    """Write records lo..hi-1 the way the loader does: retry while the
    warehouse is unavailable (each refusal is noted in ``REFUSED``). Returns
    whether the batch was a duplicate."""
    for _ in range(5):
        try:
            return wh.write_batch(LoadBatch(SRC, 0, recs[lo:hi])).duplicate
        except WarehouseUnavailable as exc:
            REFUSED.append(str(exc))
    raise AssertionError("the batch never went in")


def _assert_once(wh: Warehouse, n: int) -> None:
    for table, key in UNIQUE.items():
        [row] = wh.query(f"SELECT count() AS n, uniqExact({key}) AS u FROM {{{table}}}", {})
        assert row["n"] == row["u"], table
    [ev] = wh.query("SELECT count() AS n FROM {events}", {})
    assert ev["n"] == n
    assert wh.loaded_positions(SRC) == {0: n}


# -- lake -------------------------------------------------------------------------


def _lake(root: Path) -> LakeWarehouse:
    wh = LakeWarehouse(root)
    wh.migrate()
    return wh


def test_lake_batch_that_carries_on_reads_no_table_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wh = _lake(tmp_path / "lake")
    recs = _records()
    half = len(recs) // 2
    assert not _write(wh, recs, 0, half)
    committed = {t for (t, _app) in wh._known}
    assert {"events", "loads", "requests", "sessions"} <= committed
    reads: list[str] = []
    real = wh._table

    def counting(table: str) -> Any:
        reads.append(table)
        return real(table)

    monkeypatch.setattr(wh, "_table", counting)
    assert not _write(wh, recs, half, len(recs))
    # only tables this process had not committed to yet are read
    assert set(reads) <= set(TABLES) - committed
    # a batch that does not carry on (here: a retry of the first) reads again
    reads.clear()
    assert _write(wh, recs, 0, half)
    assert "loads" in reads
    _assert_once(wh, len(recs))


def test_lake_stale_cache_of_another_writer_writes_nothing_twice(tmp_path: Path) -> None:
    """Two writers (two loader processes) on one lake and one partition: each
    one's cache misses the other's commits, and delta-rs refuses the stale
    commits (same app id), so the retry finds the batch loaded."""
    a = _lake(tmp_path / "lake")
    b = LakeWarehouse(tmp_path / "lake")
    recs = _records()
    n = len(recs)
    cuts = [0, n // 4, n // 2, 3 * n // 4, n]
    assert not _write(a, recs, cuts[0], cuts[1])
    assert not _write(b, recs, cuts[1], cuts[2])
    REFUSED.clear()
    assert _write(a, recs, cuts[1], cuts[2])  # trusted its cache, then found it loaded
    assert len(REFUSED) == 1 and "conflict" in REFUSED[0]
    assert not _write(a, recs, cuts[2], cuts[3])
    REFUSED.clear()
    assert _write(b, recs, cuts[2], cuts[3])
    assert len(REFUSED) == 1
    assert not _write(b, recs, cuts[3], cuts[4])
    _assert_once(a, n)
    _assert_once(b, n)


def test_lake_cache_is_dropped_when_the_table_snapshot_moves(tmp_path: Path) -> None:
    wh = _lake(tmp_path / "lake")
    recs = _records()
    third = len(recs) // 3
    _write(wh, recs, 0, third)
    assert wh._known_version("events", f"{SRC}:0") == third - 1
    # compaction works on snapshots of its own (it runs beside the writer): the
    # writer's cache stays, and its next append, made from a snapshot older
    # than the compaction's commits, still commits, once
    wh.compact()
    assert wh._known_version("events", f"{SRC}:0") == third - 1
    assert not _write(wh, recs, third, 2 * third)
    assert wh._known_version("events", f"{SRC}:0") == 2 * third - 1
    # once the writer's snapshot moves past another commit, it reads afresh
    wh.compact()
    wh._table("events")
    assert wh._known_version("events", f"{SRC}:0") is None
    assert not _write(wh, recs, 2 * third, len(recs))
    _assert_once(wh, len(recs))


# -- chDB MergeTree -----------------------------------------------------------------


def _chdb(database: str) -> ChdbWarehouse:
    wh = ChdbWarehouse(str(shared_chdb_dir()), database=database)
    wh.migrate()
    return wh


def test_mergetree_batch_that_carries_on_reads_no_marks(monkeypatch: pytest.MonkeyPatch) -> None:
    db = unique_database()
    wh = _chdb(db)
    try:
        recs = _records()
        half = len(recs) // 2
        reads: list[int] = []
        real = wh._marks

        def counting(source: str, partition: int) -> dict[str, int]:
            reads.append(partition)
            return real(source, partition)

        monkeypatch.setattr(wh, "_marks", counting)
        assert not _write(wh, recs, 0, half)
        assert not _write(wh, recs, half, len(recs))
        assert reads == [0]
        assert _write(wh, recs, 0, half)  # does not carry on: reads the marks
        assert reads == [0, 0]
        _assert_once(wh, len(recs))
    finally:
        wh._command(f"DROP DATABASE IF EXISTS {db}")


def test_mergetree_stale_cache_of_another_writer_writes_nothing_twice() -> None:
    """The stale writer re-sends the batch the other one loaded, with the same
    boundaries and so the same insert tokens: the server drops every block."""
    db = unique_database()
    a, b = _chdb(db), _chdb(db)
    try:
        recs = _records()
        n = len(recs)
        cuts = [0, n // 3, 2 * n // 3, n]
        assert not _write(a, recs, cuts[0], cuts[1])
        assert not _write(b, recs, cuts[1], cuts[2])
        _write(a, recs, cuts[1], cuts[2])  # a's cache says cuts[1] is next
        assert not _write(a, recs, cuts[2], cuts[3])
        _assert_once(a, n)
        [loads] = a.query("SELECT count() AS n FROM {loads} WHERE table_name = '*'", {})
        assert loads["n"] == 3
    finally:
        a._command(f"DROP DATABASE IF EXISTS {db}")


def test_chdb_inserts_leave_no_spool_files() -> None:
    db = unique_database()
    wh = _chdb(db)
    try:
        recs = renumber(_records())
        _write(wh, recs, 0, len(recs))
        spool = engine()._spool_dir
        assert spool is not None and spool.is_dir()
        assert list(spool.iterdir()) == []
        assert oct(spool.stat().st_mode & 0o777) == oct(0o700)
        [row] = wh.query("SELECT count() AS n FROM {bodies}", {})
        assert row["n"] > 0
        # the bytes went through the spool intact
        [body] = wh.query("SELECT hex(body) AS b FROM {bodies} ORDER BY src_offset LIMIT 1", {})
        assert json.loads(bytes.fromhex(body["b"]))
    finally:
        wh._command(f"DROP DATABASE IF EXISTS {db}")


def test_chdb_spool_moves_to_disk_when_memory_is_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """/dev/shm is 64 MB in many containers: a spool write that fails there
    moves the spool to the temporary directory on disk, and the insert goes on;
    one that fails on disk too is a WarehouseUnavailable (retried), never a crash."""
    eng = engine()
    real = eng._spool
    full = Path("/dev/null")  # writing /dev/null/insert.arrow fails (not a directory)

    def spool() -> Path:
        return real() if eng._spool_on_disk else full

    db = unique_database()
    wh = _chdb(db)
    monkeypatch.setattr(eng, "_spool", spool)
    try:
        recs = _records()
        assert not _write(wh, recs, 0, len(recs) // 2)
        assert eng._spool_on_disk and eng._spool_dir is not None
        assert not str(eng._spool_dir).startswith("/dev/shm")
        monkeypatch.setattr(eng, "_spool", lambda: full)
        REFUSED.clear()
        with pytest.raises(AssertionError, match="never went in"):
            _write(wh, recs, len(recs) // 2, len(recs))
        assert REFUSED and "TMPDIR" in REFUSED[0]
        monkeypatch.setattr(eng, "_spool", real)
        assert not _write(wh, recs, len(recs) // 2, len(recs))
        _assert_once(wh, len(recs))
    finally:
        monkeypatch.undo()
        eng._remove_spool()
        eng._spool_on_disk = False
        wh._command(f"DROP DATABASE IF EXISTS {db}")
