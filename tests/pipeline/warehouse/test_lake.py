"""pipeline/warehouse/lake.py: Delta tables written with deltalake, read by chDB."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from pipeline.transport.base import LogRecord
from pipeline.warehouse import LoadBatch, open_warehouse
from pipeline.warehouse.ddl import load_migrations
from pipeline.warehouse.errors import MigrationError, WarehouseError
from pipeline.warehouse.lake import LakeWarehouse
from schemas.chain import verify_chains
from schemas.codec import FIXTURES_DIR, default_codec
from tests.pipeline.warehouse.scenario import build_scenario, renumber

SRC = "sqlite:0f7b6c1e-lake-test"


def _lake(tmp_path: Path) -> LakeWarehouse:
    wh = open_warehouse(f"lake:{tmp_path / 'lake'}")
    assert isinstance(wh, LakeWarehouse)
    wh.migrate()
    return wh


def _count(wh: LakeWarehouse, table: str) -> int:
    rows = wh.query(f"SELECT count() AS n FROM {{{table}}}", {})
    return int(rows[0]["n"])


def test_migrate_is_idempotent_and_recorded(tmp_path: Path) -> None:
    wh = LakeWarehouse(tmp_path / "lake")
    assert wh.migrate() == [m.id for m in load_migrations()]
    assert wh.migrate() == []
    marker = json.loads((tmp_path / "lake" / "_migrations.json").read_text())
    assert [m["id"] for m in marker["applied"]] == [m.id for m in load_migrations()]
    assert DeltaTable(str(tmp_path / "lake" / "events")).metadata().partition_columns == ["day"]


def test_migrate_refuses_a_lake_from_a_newer_version(tmp_path: Path) -> None:
    wh = LakeWarehouse(tmp_path / "lake")
    wh.migrate()
    marker = tmp_path / "lake" / "_migrations.json"
    data = json.loads(marker.read_text())
    data["applied"].append({"id": "9999_future", "at": "2030-01-01T00:00:00+00:00"})
    marker.write_text(json.dumps(data))
    with pytest.raises(MigrationError, match="9999_future.*upgrade embedguard"):
        wh.migrate()


def test_unmigrated_lake_names_the_command_to_run(tmp_path: Path) -> None:
    wh = LakeWarehouse(tmp_path / "nothing")
    recs = build_scenario(sessions=1).records()
    with pytest.raises(WarehouseError, match="embedguard warehouse migrate"):
        wh.write_batch(LoadBatch(SRC, 0, recs))


def test_same_batch_twice_writes_one_row(tmp_path: Path) -> None:
    wh = _lake(tmp_path)
    recs = build_scenario(sessions=1).records()
    first = wh.write_batch(LoadBatch(SRC, 0, recs))
    assert first.events == len(recs) and not first.duplicate
    again = wh.write_batch(LoadBatch(SRC, 0, recs))
    assert again.duplicate and again.events == 0
    assert _count(wh, "events") == len(recs)
    assert wh.loaded_positions(SRC) == {0: len(recs)}
    assert wh.loaded_positions("sqlite:other") == {}


def test_batch_boundaries_moved_after_a_crash_write_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wh = _lake(tmp_path)
    recs = build_scenario(sessions=2).records()
    n = len(recs)
    real_append = wh._append
    calls: list[str] = []

    def crash_on_events(dt: Any, table: str, *a: Any, **kw: Any) -> None:
        calls.append(table)
        if table == "events":
            raise OSError("simulated crash before the events commit")
        real_append(dt, table, *a, **kw)

    monkeypatch.setattr(wh, "_append", crash_on_events)
    with pytest.raises(WarehouseError):
        wh.write_batch(LoadBatch(SRC, 0, recs[: 2 * n // 3]))
    assert "requests" in calls  # derived tables were committed before the crash
    monkeypatch.undo()
    assert wh.loaded_positions(SRC) == {}
    # the restarted loader cuts the log differently
    for lo, hi in ((0, n // 4), (n // 4, 3 * n // 4), (3 * n // 4, n)):
        wh.write_batch(LoadBatch(SRC, 0, recs[lo:hi]))
    assert wh.loaded_positions(SRC) == {0: n}
    for table, key in (
        ("events", "event_id"),
        ("requests", "event_id"),
        ("sessions", "event_id"),
        ("vector_lineage", "concat(event_id, point_id, toString(op_index))"),
        ("bodies", "concat(event_id, kind)"),
    ):
        rows = wh.query(f"SELECT count() AS n, uniqExact({key}) AS u FROM {{{table}}}", {})
        assert rows[0]["n"] == rows[0]["u"] > 0, table
    assert _count(wh, "events") == n


def test_poison_record_goes_to_dead_letters_and_the_stream_goes_on(tmp_path: Path) -> None:
    wh = _lake(tmp_path)
    good = build_scenario(sessions=1).records()
    recs = renumber([*good[:2], LogRecord(0, 0, b"sess", b"\xc3\x01garbage!", 42), *good[2:]])
    res = wh.write_batch(LoadBatch(SRC, 0, recs))
    assert res.dead_letters == 1 and res.events == len(good)
    [dead] = wh.query("SELECT src_offset, hex(raw) AS raw, error, source FROM {dead_letters}", {})
    assert dead["src_offset"] == 2 and dead["source"] == SRC
    assert bytes.fromhex(dead["raw"]) == b"\xc3\x01garbage!"
    assert "unknown schema fingerprint" in dead["error"] or "DecodeError" in dead["error"]
    # a batch of only a poison record still moves the position on
    tail = LogRecord(0, len(recs), b"x", b"junk", 0)
    assert wh.write_batch(LoadBatch(SRC, 0, [tail])).dead_letters == 1
    assert wh.loaded_positions(SRC) == {0: len(recs) + 1}


def test_old_schema_events_load(tmp_path: Path) -> None:
    wh = _lake(tmp_path)
    files = sorted((FIXTURES_DIR / "v1").glob("*.avro"))
    recs = [LogRecord(0, i, b"k", f.read_bytes(), 0) for i, f in enumerate(files)]
    res = wh.write_batch(LoadBatch(SRC, 0, recs))
    assert res.dead_letters == 0 and res.events == len(files)
    got = wh.query("SELECT DISTINCT writer_version AS v FROM {events} ORDER BY v", {})
    assert "v1" in [r["v"] for r in got]


def test_chains_verify_from_the_warehouse(tmp_path: Path) -> None:
    wh = _lake(tmp_path)
    recs = build_scenario(sessions=2).records()
    for lo in range(0, len(recs), 17):
        wh.write_batch(LoadBatch(SRC, 0, recs[lo : lo + 17]))
    rows = wh.query("SELECT hex(raw) AS raw FROM {events} ORDER BY session_id, seq", {})
    decoded = [default_codec().decode(bytes.fromhex(r["raw"])) for r in rows]
    assert verify_chains(decoded) == []


def test_partitions_are_tracked_separately(tmp_path: Path) -> None:
    wh = _lake(tmp_path)
    a = build_scenario(sessions=1, gateway="gw-a").records()
    b = build_scenario(sessions=1, gateway="gw-b").records()
    wh.write_batch(LoadBatch("kafka:t", 0, renumber(a, 0, 100)))
    wh.write_batch(LoadBatch("kafka:t", 3, renumber(b[:5], 3, 7)))
    assert wh.loaded_positions("kafka:t") == {0: 100 + len(a), 3: 12}


def test_reader_during_writes_sees_whole_batches(tmp_path: Path) -> None:
    wh = _lake(tmp_path)
    recs = build_scenario(sessions=6).records()
    cuts = list(range(0, len(recs), 20))
    sizes = {min(c + 20, len(recs)) for c in cuts}
    seen: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        reader = LakeWarehouse(tmp_path / "lake")
        try:
            while not done.is_set():
                seen.append(_count(reader, "events"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=read)
    t.start()
    try:
        for c in cuts:
            wh.write_batch(LoadBatch(SRC, 0, recs[c : c + 20]))
    finally:
        done.set()
        t.join(timeout=60)
    assert not errors, errors
    assert seen, "the reader never ran"
    assert set(seen) <= sizes | {0}
    assert _count(wh, "events") == len(recs)


def test_compact_keeps_every_row_and_the_positions(tmp_path: Path) -> None:
    wh = _lake(tmp_path)
    recs = build_scenario(sessions=2).records()
    for lo in range(0, len(recs), 10):
        wh.write_batch(LoadBatch(SRC, 0, recs[lo : lo + 10]))
    before = {t: _count(wh, t) for t in ("events", "requests", "vector_lineage", "loads")}
    files_before = len(DeltaTable(str(tmp_path / "lake" / "events")).file_uris())
    wh.compact()
    after = {t: _count(wh, t) for t in before}
    assert after == before
    assert len(DeltaTable(str(tmp_path / "lake" / "events")).file_uris()) < files_before
    assert wh.loaded_positions(SRC) == {0: len(recs)}
    # app transactions survive compaction: a replayed batch is still a duplicate
    assert wh.write_batch(LoadBatch(SRC, 0, recs[:10])).duplicate
    stats = wh.stats()
    assert stats["tables"]["events"] == len(recs) and stats["last_load_at"]
    assert (stats["distinct_events"], stats["duplicate_event_rows"]) == (len(recs), 0)


_WRITER = """
import sys
from pipeline.warehouse import LoadBatch
from pipeline.warehouse.lake import LakeWarehouse
from tests.pipeline.warehouse.scenario import build_scenario
wh = LakeWarehouse(sys.argv[1])
recs = build_scenario(sessions=8).records()
print(len(recs), flush=True)
for lo in range(0, len(recs), 20):
    wh.write_batch(LoadBatch("sqlite:xproc", 0, recs[lo : lo + 20]))
    if lo == 0:
        print("first", flush=True)
wh.compact()
print("done", flush=True)
"""


@pytest.mark.slow
def test_reader_process_while_a_loader_process_appends_and_compacts(tmp_path: Path) -> None:
    """The embedded mode: a loader process writes Delta while another process
    (dashboard, CLI) reads it through chDB; the reader sees whole batches only."""
    import subprocess
    import sys

    root = tmp_path / "lake"
    LakeWarehouse(root).migrate()
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    ) as writer:
        assert writer.stdout is not None
        total = int(writer.stdout.readline())
        assert writer.stdout.readline().strip() == "first"
        reader = LakeWarehouse(root)
        seen: list[int] = []
        while writer.poll() is None:
            seen.append(_count(reader, "events"))
        rest = writer.stdout.read()
        assert writer.wait(timeout=120) == 0 and "done" in rest
    sizes = {min(lo + 20, total) for lo in range(0, total, 20)}
    assert seen and set(seen) <= sizes
    assert seen == sorted(seen)
    assert _count(reader, "events") == total
    assert reader.loaded_positions("sqlite:xproc") == {0: total}


def test_body_retention_drops_bodies_not_events_or_proofs(tmp_path: Path) -> None:
    wh = open_warehouse(f"lake:{tmp_path / 'lake'}?body_retention_days=1")
    assert isinstance(wh, LakeWarehouse) and wh.body_retention_days == 1
    wh.migrate()
    recs = build_scenario(sessions=1).records()  # bodies from March 2026
    wh.write_batch(LoadBatch(SRC, 0, recs))
    assert _count(wh, "bodies") > 0
    wh.compact()
    assert _count(wh, "bodies") == 0 and _count(wh, "events") == len(recs)
    rows = wh.query("SELECT hex(raw) AS raw FROM {events} ORDER BY session_id, seq", {})
    assert verify_chains([default_codec().decode(bytes.fromhex(r["raw"])) for r in rows]) == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("lake:/x?body_retention_days=0", "whole number of days"),
        ("lake:/x?keep=1", "not 'keep'"),
        ("chdb:/x?database=a&color=red", "not 'color'"),
        ("s3://bucket/x", "unknown warehouse URL"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(WarehouseError, match=message):
        open_warehouse(url)
