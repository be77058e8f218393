"""The write path's caches (pipeline/warehouse/lake.py ``_known``,
pipeline/warehouse/clickhouse.py ``_known_marks``): a batch that carries on from
this process's own last batch skips re-reading the warehouse's progress, and a
writer whose cache went stale (another process loaded the same partition
meanwhile) still writes nothing twice."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.transport.base import LogRecord
from pipeline.warehouse import LoadBatch, WarehouseError, WarehouseUnavailable
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


def _spooled() -> set[Path]:
    """What an insert could leave behind in the temporary directories."""
    found: set[Path] = set()
    for directory in (Path("/dev/shm"), Path(tempfile.gettempdir())):  # noqa: S108
        if directory.is_dir():
            found |= {p for p in directory.iterdir() if "chdb" in p.name and "insert" in p.name}
            found |= set(directory.glob("embedguard-chdb-*/*.arrow"))
    return found


def test_chdb_inserts_stream_the_bytes_intact_and_write_no_files() -> None:
    """Tables go to chDB as an Arrow stream (no spool file): every byte of
    every event arrives as it was in the log."""
    db = unique_database()
    wh = _chdb(db)
    before = _spooled()
    try:
        recs = renumber(_records())
        _write(wh, recs, 0, len(recs))
        assert _spooled() <= before
        rows = wh.query("SELECT src_offset, hex(raw) AS raw FROM {events} ORDER BY src_offset", {})
        assert [(int(r["src_offset"]), r["raw"]) for r in rows] == [
            (r.offset, r.value.hex().upper()) for r in recs
        ]
        [body] = wh.query("SELECT hex(body) AS b FROM {bodies} ORDER BY src_offset LIMIT 1", {})
        assert json.loads(bytes.fromhex(body["b"]))
        _assert_once(wh, len(recs))
    finally:
        wh._command(f"DROP DATABASE IF EXISTS {db}")


def test_a_refused_chdb_insert_is_a_clear_error_and_the_engine_goes_on() -> None:
    """An insert chDB refuses (data that does not fit the table, a missing
    table) is a WarehouseError naming chDB's reason; the aborted insert
    stream leaves the engine usable for the next batch."""
    db = unique_database()
    wh = _chdb(db)
    try:
        eng = engine()
        wrong = pa.table({"src_partition": pa.array(["not a number"])})
        with pytest.raises(WarehouseError, match="chDB insert failed"):
            eng.insert_arrow(f"{db}.loads", wrong.column_names, wrong, "t1", path=wh.path)
        with pytest.raises(WarehouseError, match="chDB insert failed.*nope"):
            eng.insert_arrow(f"{db}.nope", wrong.column_names, wrong, "t2", path=wh.path)
        recs = _records()
        assert not _write(wh, recs, 0, len(recs))
        _assert_once(wh, len(recs))
    finally:
        wh._command(f"DROP DATABASE IF EXISTS {db}")
