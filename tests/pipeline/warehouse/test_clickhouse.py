"""pipeline/warehouse/clickhouse.py: MergeTree tables on chDB (always) and on a
ClickHouse server (when EMBEDGUARD_TEST_CLICKHOUSE_URL is set)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from pipeline import queries
from pipeline.transport.base import LogRecord
from pipeline.warehouse import LoadBatch, open_warehouse
from pipeline.warehouse.clickhouse import ChdbWarehouse, ClickHouseWarehouse, MergeTreeWarehouse
from pipeline.warehouse.ddl import load_migrations
from pipeline.warehouse.errors import WarehouseError, WarehouseUnavailable
from tests.pipeline.warehouse.scenario import (
    build_scenario,
    chdb_warehouse,
    renumber,
    shared_chdb_dir,
)

SRC = "kafka:embedguard.events"
CLICKHOUSE_URL = os.environ.get("EMBEDGUARD_TEST_CLICKHOUSE_URL", "")


def _server() -> ClickHouseWarehouse:
    """A fresh database per test on the configured server."""
    parts = urlsplit(CLICKHOUSE_URL)
    wh = open_warehouse(urlunsplit(parts._replace(path=f"/eg_test_{uuid.uuid4().hex[:10]}")))
    assert isinstance(wh, ClickHouseWarehouse)
    return wh


@pytest.fixture(
    params=[
        "chdb",
        pytest.param(
            "server",
            marks=[
                pytest.mark.clickhouse,
                pytest.mark.skipif(
                    not CLICKHOUSE_URL,
                    reason="set EMBEDGUARD_TEST_CLICKHOUSE_URL=clickhouse://user:pass@host:8123/db "
                    "to run the warehouse tests against a real ClickHouse server",
                ),
            ],
        ),
    ]
)
def wh(request: pytest.FixtureRequest) -> Iterator[MergeTreeWarehouse]:
    w: MergeTreeWarehouse = chdb_warehouse() if request.param == "chdb" else _server()
    w.migrate()
    try:
        yield w
    finally:
        try:
            w._command(f"DROP DATABASE IF EXISTS {w.db}")
        finally:
            w.close()


def _count(w: MergeTreeWarehouse, table: str, key: str = "") -> dict[str, Any]:
    expr = f", uniqExact({key}) AS u" if key else ""
    return w.query(f"SELECT count() AS n{expr} FROM {{{table}}}", {})[0]


def test_migrate_is_idempotent(wh: MergeTreeWarehouse) -> None:
    assert wh.migrate() == []
    rows = wh.query("SELECT id FROM {schema_migrations}", {})
    assert sorted(r["id"] for r in rows) == [m.id for m in load_migrations()]


def test_same_batch_twice_writes_one_row(wh: MergeTreeWarehouse) -> None:
    recs = build_scenario(sessions=1).records()
    assert wh.write_batch(LoadBatch(SRC, 0, recs)).events == len(recs)
    assert wh.write_batch(LoadBatch(SRC, 0, recs)).duplicate
    assert _count(wh, "events")["n"] == len(recs)
    assert wh.loaded_positions(SRC) == {0: len(recs)}


def test_insert_token_drops_a_retried_insert(wh: MergeTreeWarehouse) -> None:
    """Even when the load marks were lost (a crash between the table inserts and
    the marks), the server drops the identical retried block by its token."""
    recs = build_scenario(sessions=1).records()
    batch = LoadBatch(SRC, 0, recs)
    wh.write_batch(batch)
    wh._command(f"TRUNCATE TABLE {wh.db}.loads")
    assert wh.write_batch(batch).duplicate is False
    got = _count(wh, "events", "event_id")
    assert got["n"] == got["u"] == len(recs)


def test_moved_boundaries_after_a_crash_write_nothing_twice(
    wh: MergeTreeWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    recs = build_scenario(sessions=2).records()
    n = len(recs)
    real = wh._insert
    seen: list[str] = []

    def crash_on_events(table: str, *a: Any) -> None:
        seen.append(table)
        if table == "events":
            raise WarehouseUnavailable("simulated crash", retry_after=0)
        real(table, *a)

    monkeypatch.setattr(wh, "_insert", crash_on_events)
    with pytest.raises(WarehouseUnavailable):
        wh.write_batch(LoadBatch(SRC, 0, recs[: 2 * n // 3]))
    monkeypatch.undo()
    assert "requests" in seen and wh.loaded_positions(SRC) == {}
    for lo, hi in ((0, n // 4), (n // 4, 3 * n // 4), (3 * n // 4, n)):
        wh.write_batch(LoadBatch(SRC, 0, recs[lo:hi]))
    assert wh.loaded_positions(SRC) == {0: n}
    ev = _count(wh, "events", "event_id")
    assert ev["n"] == ev["u"] == n
    # derived rows of the crashed attempt may be present twice until a merge;
    # the queries fold them, so nothing is double-counted
    assert queries.sessions_count(wh) == 5
    [req] = [r for r in queries.session_requests(wh, "s-alice-0") if r["request_id"].endswith("-a")]
    assert req["state"] == "completed" and req["subject"] == "alice"
    stats = queries.stats_over_time(wh, bucket_s=3600)
    assert sum(b["events"] for b in stats) == n


def test_poison_and_old_schema(wh: MergeTreeWarehouse) -> None:
    from schemas.codec import FIXTURES_DIR

    files = sorted((FIXTURES_DIR / "v1").glob("*.avro"))
    recs = [LogRecord(0, i, b"k", f.read_bytes(), 0) for i, f in enumerate(files)]
    recs = renumber([*recs, LogRecord(0, 0, b"k", b"\x00\x00\x00\x00\x01zz", 0)])
    res = wh.write_batch(LoadBatch(SRC, 0, recs))
    assert (res.events, res.dead_letters) == (len(files), 1)
    [dead] = queries.dead_letters(wh)
    assert dead["src_offset"] == len(files) and "registry" in dead["error"]


def test_compact_and_stats(wh: MergeTreeWarehouse) -> None:
    recs = build_scenario(sessions=1).records()
    wh.write_batch(LoadBatch(SRC, 0, recs[:10]))
    wh.write_batch(LoadBatch(SRC, 0, recs[10:]))
    wh.compact()
    stats = wh.stats()
    assert stats["tables"]["events"] == len(recs) and stats["last_load_at"]
    assert (stats["distinct_events"], stats["duplicate_event_rows"]) == (len(recs), 0)


def test_second_chdb_directory_in_one_process_is_refused(tmp_path: Any) -> None:
    shared_chdb_dir()
    chdb_warehouse()  # the process's engine now runs on the shared directory
    with pytest.raises(WarehouseError, match="one data directory per process"):
        ChdbWarehouse(str(tmp_path / "other"))


def test_unknown_table_placeholder_is_refused() -> None:
    w = chdb_warehouse()
    with pytest.raises(WarehouseError, match="unknown table"):
        w.query("SELECT * FROM {nope}", {})


def test_server_url_never_shows_the_password() -> None:
    w = ClickHouseWarehouse.from_url("clickhouse://eg:s3cr%21t@127.0.0.1:1/audit")
    assert "s3cr" not in w.url and w.url == "clickhouse://eg@127.0.0.1:1/audit"
    with pytest.raises(WarehouseUnavailable) as exc:
        w.migrate()  # nothing listens on port 1
    assert "s3cr" not in str(exc.value)
    assert exc.value.retry_after > 0


def test_bad_database_name_is_refused() -> None:
    with pytest.raises(WarehouseError, match="plain identifier"):
        ClickHouseWarehouse.from_url("clickhouse://u:p@127.0.0.1:8123/x;DROP")


def test_body_retention_drops_bodies_not_events(wh: MergeTreeWarehouse) -> None:
    recs = build_scenario(sessions=1).records()
    wh.body_retention_days = 1  # the scenario's bodies are from March 2026
    wh.migrate()
    wh.write_batch(LoadBatch(SRC, 0, recs))
    wh.compact()
    assert _count(wh, "bodies")["n"] == 0
    assert _count(wh, "events")["n"] == len(recs)
    assert queries.request_by_id(wh, "r-alice-0-a")["request_body_sha256"]  # type: ignore[index]


def _table_counts(w: MergeTreeWarehouse) -> dict[str, int]:
    return {t: int(_count(w, t)["n"]) for t in ("events", "requests", "vector_lineage", "loads")}


def test_a_prepared_batch_writes_what_write_batch_writes(wh: MergeTreeWarehouse) -> None:
    """The split (prepare: project only; write_prepared: marks and inserts)
    stores the same rows as one write_batch, and preparing touches nothing."""
    recs = build_scenario(sessions=2).records()
    prepared = wh.prepare_batch(LoadBatch(SRC, 0, recs))
    assert _table_counts(wh) == dict.fromkeys(("events", "requests", "vector_lineage", "loads"), 0)
    assert wh.loaded_positions(SRC) == {}
    res = wh.write_prepared(prepared)
    assert (res.events, res.duplicate) == (len(recs), False)
    other = chdb_warehouse() if isinstance(wh, ChdbWarehouse) else _server()
    try:
        other.migrate()
        other.write_batch(LoadBatch(SRC, 0, recs))
        assert _table_counts(wh) == _table_counts(other)
    finally:
        other._command(f"DROP DATABASE IF EXISTS {other.db}")
        other.close()


def test_a_prepared_batch_written_after_its_partition_was_loaded_writes_nothing_twice(
    wh: MergeTreeWarehouse,
) -> None:
    """A batch prepared ahead, while another writer (a loader that held the
    partition before a rebalance, or a retry) loaded the same offsets: the
    marks are read at write time, under the write lock, so the stale prepared
    batch writes nothing (all loaded) or only the rows past the marks (part
    loaded), never a row twice."""
    recs = build_scenario(sessions=2).records()
    n = len(recs)
    whole = wh.prepare_batch(LoadBatch(SRC, 0, recs))
    tail = wh.prepare_batch(LoadBatch(SRC, 0, recs[n // 2 :]))

    # all of it loaded meanwhile: nothing
    wh.write_batch(LoadBatch(SRC, 0, recs))
    before = _table_counts(wh)
    res = wh.write_prepared(whole)
    assert (res.events, res.dead_letters, res.duplicate) == (0, 0, True)
    assert wh.write_prepared(tail).duplicate
    assert _table_counts(wh) == before

    # a fresh database, the first half loaded meanwhile: only the rest
    fresh = chdb_warehouse() if isinstance(wh, ChdbWarehouse) else _server()
    try:
        fresh.migrate()
        fresh.write_batch(LoadBatch(SRC, 0, recs[: n // 2]))
        res = fresh.write_prepared(whole)
        assert (res.events, res.duplicate) == (n - n // 2, False)
        assert fresh.write_prepared(tail).duplicate
        assert fresh.loaded_positions(SRC) == {0: n}
        ev = _count(fresh, "events", "event_id")
        assert ev["n"] == ev["u"] == n
        # the derived tables hold what one load of the whole batch gives
        assert _table_counts(fresh) | {"loads": 0} == before | {"loads": 0}
    finally:
        fresh._command(f"DROP DATABASE IF EXISTS {fresh.db}")
        fresh.close()
