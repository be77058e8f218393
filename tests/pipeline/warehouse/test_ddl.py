"""pipeline/warehouse/ddl.py: one DDL, the same columns on Delta and MergeTree."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

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
from tests.pipeline.warehouse.scenario import chdb_warehouse


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
        ("ALTER TABLE {db}.sessions ADD PROJECTION IF NOT EXISTS p (SELECT a GROUP BY a)",
         "ADD PROJECTION"),
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
