"""pipeline/warehouse/ddl.py: one DDL, the same columns on Delta and MergeTree."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from pipeline.transport.base import LogRecord
from pipeline.warehouse import LoadBatch, clickhouse
from pipeline.warehouse import lake as lake_module
from pipeline.warehouse.clickhouse import ChdbWarehouse
from pipeline.warehouse.ddl import (
    AddColumn,
    ClickHouseOnly,
    CreateTable,
    arrow_type,
    load_migrations,
    parse_statement,
    split_statements,
    table_schemas,
)
from pipeline.warehouse.errors import MigrationError
from pipeline.warehouse.lake import LakeWarehouse
from tests.pipeline.warehouse.scenario import build_scenario, chdb_warehouse, renumber


def _base_type(t: str) -> str:
    """Strip what only storage cares about: Nullable, LowCardinality, the zone."""
    t = t.strip()
    while True:
        m = re.fullmatch(r"(?:Nullable|LowCardinality)\((.*)\)", t)
        if not m:
            break
        t = m.group(1)
    if t.startswith("Array("):
        return f"Array({_base_type(t[6:-1])})"
    t = re.sub(r"DateTime64\((\d)(?:, '[^']*')?\)", r"DateTime64(\1)", t)
    return {"Date32": "Date", "Int8": "Bool"}.get(t, t)


def test_delta_and_merge_tree_tables_have_the_same_columns_and_types(tmp_path: Path) -> None:
    lake = LakeWarehouse(tmp_path / "lake")
    lake.migrate()
    mt = chdb_warehouse()
    mt.migrate()
    for table in table_schemas():
        on_lake = lake.query(f"DESCRIBE TABLE {{{table}}}", {})
        on_mt = mt.query(f"DESCRIBE TABLE {{{table}}}", {})
        assert [c["name"] for c in on_lake] == [c["name"] for c in on_mt], table
        lake_types = [_base_type(c["type"]) for c in on_lake]
        mt_types = [_base_type(c["type"]) for c in on_mt]
        assert lake_types == mt_types, table


def test_every_table_keeps_fingerprint_or_source_position() -> None:
    for name, schema in table_schemas().items():
        if name in ("dead_letters", "loads"):
            assert {"source", "src_partition"} <= set(schema.names)
            continue
        assert {"source", "src_partition", "src_offset"} <= set(schema.names), name
        if name != "bodies":
            assert "schema_fingerprint" in schema.names, name


def test_migrations_are_numbered_and_parse() -> None:
    migs = load_migrations()
    assert [m.id for m in migs] == sorted(m.id for m in migs)
    for mig in migs:
        for stmt in mig.statements:
            assert parse_statement(stmt) is not None, stmt[:80]


def test_statement_parsing() -> None:
    text = """-- a comment; with a semicolon
CREATE TABLE IF NOT EXISTS {db}.t
(
    a String CODEC(ZSTD(1)),
    b Nullable(DateTime64(6, 'UTC')),
    c Array(LowCardinality(String)),
    INDEX ix a TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree ORDER BY a
;
ALTER TABLE {db}.t ADD COLUMN IF NOT EXISTS d Nullable(Int64) CODEC(ZSTD(1))
;
OPTIMIZE TABLE {db}.t
"""
    stmts = split_statements(text)
    assert len(stmts) == 3
    create = parse_statement(stmts[0])
    assert create == CreateTable(
        "t",
        (
            ("a", "String"),
            ("b", "Nullable(DateTime64(6, 'UTC'))"),
            ("c", "Array(LowCardinality(String))"),
        ),
    )
    assert parse_statement(stmts[1]) == AddColumn("t", "d", "Nullable(Int64)")
    assert parse_statement(stmts[2]) is None


@pytest.mark.parametrize(
    ("ch", "arrow"),
    [
        ("LowCardinality(String)", pa.string()),
        ("Nullable(Int32)", pa.int32()),
        ("DateTime64(6, 'UTC')", pa.timestamp("us", tz="UTC")),
        ("Array(String)", pa.list_(pa.string())),
        ("Date", pa.date32()),
        ("Bool", pa.bool_()),
    ],
)
def test_arrow_types(ch: str, arrow: pa.DataType) -> None:
    assert arrow_type(ch) == arrow


def test_unmapped_type_is_a_migration_error() -> None:
    with pytest.raises(MigrationError, match="UInt8.*no Delta mapping"):
        arrow_type("UInt8")
    with pytest.raises(MigrationError, match="only precision Delta stores"):
        arrow_type("DateTime64(3, 'UTC')")


@pytest.mark.parametrize(
    ("stmt", "action"),
    [
        (
            "ALTER TABLE {db}.sessions ADD PROJECTION IF NOT EXISTS p (SELECT a GROUP BY a)",
            "ADD PROJECTION",
        ),
        ("ALTER TABLE {db}.sessions MATERIALIZE PROJECTION p", "MATERIALIZE PROJECTION"),
        ("ALTER TABLE {db}.sessions MODIFY SETTING x = 'y'", "MODIFY SETTING"),
        ("alter table {db}.bodies add  index ix body TYPE minmax", "ADD INDEX"),
    ],
)
def test_layout_only_alters_are_known_to_the_lake(stmt: str, action: str) -> None:
    parsed = parse_statement(stmt)
    assert isinstance(parsed, ClickHouseOnly) and parsed.action == action


def test_the_projection_migration_changes_no_column_and_exists_on_merge_tree(
    tmp_path: Path,
) -> None:
    migs = load_migrations()
    assert table_schemas(migs) == table_schemas([m for m in migs if "projection" not in m.id])
    lake = LakeWarehouse(tmp_path / "lake")
    assert "0002_session_span_projection" in lake.migrate()
    wh = chdb_warehouse()
    try:
        wh.migrate()
        rows = wh.query(
            "SELECT name FROM system.projections WHERE database = {db:String} "
            "AND table = 'sessions'",
            {"db": wh.db},
        )
        assert [r["name"] for r in rows] == ["p_session_span"]
    finally:
        wh._command(f"DROP DATABASE IF EXISTS {wh.db}")


def test_a_codec_only_modify_column_is_layout_only() -> None:
    codec = parse_statement("ALTER TABLE {db}.events MODIFY COLUMN raw CODEC(ZSTD(1))")
    assert codec == ClickHouseOnly("events", "MODIFY COLUMN raw CODEC")
    # a type change is not layout: the lake must not skip it as one
    assert parse_statement("ALTER TABLE {db}.events MODIFY COLUMN raw Nullable(String)") is None


#: The large text columns 0004 moves from ZSTD(3) to ZSTD(1).
BLOB_COLUMNS = {
    ("events", "payload_json"),
    ("events", "raw"),
    ("requests", "operations_json"),
    ("approvals", "operations_json"),
    ("bodies", "body"),
    ("dead_letters", "raw"),
}
CODEC_MIGRATION = "0004_blob_codecs"


def _columns(wh: ChdbWarehouse) -> list[tuple[str, str, str, str]]:
    rows = wh.query(
        "SELECT table, name, type, compression_codec FROM system.columns "
        "WHERE database = {db:String} ORDER BY table, position",
        {"db": wh.db},
    )
    return [(r["table"], r["name"], r["type"], r["compression_codec"]) for r in rows]


def _contents(wh: ChdbWarehouse, final: str = "") -> dict[str, Any]:
    """Every table's rows, hashed whole, and the events' raw bytes and the bodies
    in hex; with ``final="FINAL"`` as a merge leaves them (duplicate keys folded)."""
    out: dict[str, Any] = {}
    for table in table_schemas():
        out[table] = wh.query(
            f"SELECT count() AS n, groupBitXor(cityHash64(*)) AS h FROM {{{table}}} {final}", {}
        )[0]
    out["events.raw"] = wh.query(
        f"SELECT src_offset, hex(raw) AS raw, payload_json FROM {{events}} {final} "
        "ORDER BY src_offset",
        {},
    )
    out["bodies.body"] = wh.query(
        f"SELECT sha256, kind, hex(body) AS body FROM {{bodies}} {final} ORDER BY sha256, kind",
        {},
    )
    return out


def test_the_codec_migration_ends_where_a_fresh_warehouse_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A warehouse without 0004 with data in it, migrated to 0004, has the same columns
    and codecs as one created at 0004 (read from system.columns), and its data,
    loaded under ZSTD(3), reads back the same before and after a merge rewrote
    it with ZSTD(1)."""
    every = load_migrations()
    # every migration but 0004 (the later ones add columns today's writer fills)
    before = [m for m in every if m.id != CODEC_MIGRATION]
    since = [CODEC_MIGRATION]
    records = build_scenario(sessions=2).records()
    poison = LogRecord(0, len(records), b"k", b"\xc3\x01 not an event", 0)
    old, fresh = chdb_warehouse(), chdb_warehouse()
    try:
        with monkeypatch.context() as m:
            m.setattr(clickhouse, "load_migrations", lambda: list(before))
            assert old.migrate() == [m.id for m in before]
        at_0003 = dict(((t, n), c) for t, n, _, c in _columns(old))
        assert {at_0003[c] for c in BLOB_COLUMNS} == {"CODEC(ZSTD(3))"}
        result = old.write_batch(LoadBatch("kafka:codecs", 0, [*records, poison]))
        assert (result.events, result.dead_letters) == (len(records), 1)
        loaded, merged = _contents(old), _contents(old, "FINAL")
        assert loaded["bodies"]["n"] > 0 and loaded["dead_letters"]["n"] == 1
        assert [bytes.fromhex(r["raw"]) for r in loaded["events.raw"]] == [r.value for r in records]

        assert old.migrate() == since
        assert fresh.migrate() == [m.id for m in every]
        assert _columns(old) == _columns(fresh)
        codecs = {(t, n): c for t, n, _, c in _columns(fresh)}
        assert {codecs[c] for c in BLOB_COLUMNS} == {"CODEC(ZSTD(1))"}
        assert "CODEC(ZSTD(3))" not in codecs.values()
        # the rest of each table is as the other migrations left it
        assert {k: v for k, v in codecs.items() if k not in BLOB_COLUMNS} == {
            k: v for k, v in at_0003.items() if k not in BLOB_COLUMNS
        }
        assert _contents(old) == loaded
        for table in table_schemas():
            old._command(f"OPTIMIZE TABLE {old.db}.{table} FINAL")  # rewritten as ZSTD(1)
        assert _contents(old) == _contents(old, "FINAL") == merged
        # and it goes on loading
        more = renumber(build_scenario(sessions=1, gateway="gw-2").records(), 0, len(records) + 1)
        assert old.write_batch(LoadBatch("kafka:codecs", 0, more)).events == len(more)
    finally:
        for wh in (old, fresh):
            wh._command(f"DROP DATABASE IF EXISTS {wh.db}")


def test_the_lake_takes_the_codec_migration_as_layout_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = load_migrations()
    before = [m for m in every if m.id != CODEC_MIGRATION]
    assert table_schemas(every) == table_schemas(before)
    old = LakeWarehouse(tmp_path / "old")
    with monkeypatch.context() as m:
        m.setattr(lake_module, "load_migrations", lambda: list(before))
        old.migrate()
    old.write_batch(LoadBatch("kafka:codecs", 0, build_scenario(sessions=1).records()))
    events = old.query("SELECT count() AS n FROM {events}", {})
    assert old.migrate() == [CODEC_MIGRATION]
    fresh = LakeWarehouse(tmp_path / "fresh")
    fresh.migrate()
    for table in table_schemas():
        assert (
            DeltaTable(str(old.table_path(table))).schema().to_arrow()
            == DeltaTable(str(fresh.table_path(table))).schema().to_arrow()
        ), table
    assert old.query("SELECT count() AS n FROM {events}", {}) == events
    old.close()
    fresh.close()


IDENTITY_MIGRATION = "0005_approval_identities"


def test_the_identity_migration_adds_the_same_columns_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warehouse at 0004 gets the approvals' issuers and expired_at as nullable
    columns, on chDB and on the lake, and ends like a fresh one."""
    every = load_migrations()
    before = [m for m in every if m.id < IDENTITY_MIGRATION]
    added = {"requester_issuer", "approver_issuer", "expired_at"}
    assert set(table_schemas(every)["approvals"].names) - set(
        table_schemas(before)["approvals"].names) == added
    old, fresh = chdb_warehouse(), chdb_warehouse()
    try:
        with monkeypatch.context() as m:
            m.setattr(clickhouse, "load_migrations", lambda: list(before))
            old.migrate()
        assert old.migrate() == [IDENTITY_MIGRATION]
        fresh.migrate()
        assert _columns(old) == _columns(fresh)
        types = {n: t for tb, n, t, _ in _columns(fresh) if tb == "approvals"}
        assert {types[c] for c in added} == {"Nullable(String)", "Nullable(DateTime64(6, 'UTC'))"}
    finally:
        for wh in (old, fresh):
            wh._command(f"DROP DATABASE IF EXISTS {wh.db}")
    lake_old = LakeWarehouse(tmp_path / "old")
    with monkeypatch.context() as m:
        m.setattr(lake_module, "load_migrations", lambda: list(before))
        lake_old.migrate()
    assert lake_old.migrate() == [IDENTITY_MIGRATION]
    lake_fresh = LakeWarehouse(tmp_path / "fresh")
    lake_fresh.migrate()
    assert (DeltaTable(str(lake_old.table_path("approvals"))).schema().to_arrow()
            == DeltaTable(str(lake_fresh.table_path("approvals"))).schema().to_arrow())
    # and today's writer loads into the migrated lake
    lake_old.write_batch(LoadBatch("kafka:ids", 0, build_scenario(sessions=1).records()))
    assert lake_old.query("SELECT countIf(requester_issuer IS NOT NULL) AS n FROM {approvals}",
                          {})[0]["n"] > 0
    lake_old.close()
    lake_fresh.close()
