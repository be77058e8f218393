"""Versioned warehouse DDL: ``ddl/NNNN_name.sql`` files, applied in order.

The files are ClickHouse SQL. ClickHouse server and chDB run them as written
(``{db}`` is replaced by the database name). The lake backend reads the same
files and maps each ``CREATE TABLE`` to a Delta table with the same column
names and types, and each ``ALTER TABLE ... ADD COLUMN`` to a Delta schema
change, so one DDL defines every backend. Indexes, engines, codecs and
settings only matter to ClickHouse and are ignored for Delta.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.warehouse.errors import MigrationError

__all__ = [
    "DDL_DIR",
    "AddColumn",
    "ClickHouseOnly",
    "CreateTable",
    "Migration",
    "arrow_type",
    "load_migrations",
    "parse_statement",
    "split_statements",
    "table_schemas",
]

DDL_DIR = Path(__file__).parent / "ddl"
_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_CREATE = re.compile(
    r"^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?\{db\}\.(\w+)\s*\((.*)\)\s*ENGINE\b",
    re.S | re.I,
)
#: ALTERs that only concern ClickHouse's physical layout (projections, skipping
#: indexes, table settings); the lake has nothing to change for them.
_CLICKHOUSE_ONLY = re.compile(
    r"^\s*ALTER\s+TABLE\s+\{db\}\.(\w+)\s+("
    r"MODIFY\s+SETTING|ADD\s+PROJECTION|MATERIALIZE\s+PROJECTION|DROP\s+PROJECTION|"
    r"ADD\s+INDEX|MATERIALIZE\s+INDEX|DROP\s+INDEX)\b",
    re.S | re.I,
)
#: A codec-only column change (``MODIFY COLUMN c CODEC(...)``, no type): how
#: ClickHouse compresses the column, nothing the lake stores.
_MODIFY_CODEC = re.compile(
    r"^\s*ALTER\s+TABLE\s+\{db\}\.(\w+)\s+MODIFY\s+COLUMN\s+(?:IF\s+EXISTS\s+)?(\w+)\s+"
    r"CODEC\s*\(.*\)\s*$",
    re.S | re.I,
)
_ALTER_ADD = re.compile(
    r"^\s*ALTER\s+TABLE\s+\{db\}\.(\w+)\s+ADD\s+COLUMN\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s+(.+?)\s*$",
    re.S | re.I,
)


@dataclass(frozen=True)
class Migration:
    id: str
    path: Path
    statements: tuple[str, ...]


@dataclass(frozen=True)
class CreateTable:
    table: str
    columns: tuple[tuple[str, str], ...]  # (name, ClickHouse type)


@dataclass(frozen=True)
class ClickHouseOnly:
    """A statement about ClickHouse's physical layout (projection, index,
    setting, a column's codec); the lake skips it."""

    table: str
    action: str


@dataclass(frozen=True)
class AddColumn:
    table: str
    name: str
    type: str


def split_statements(text: str) -> list[str]:
    """Statements are separated by a line holding only ';'. Comment lines go."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
    out: list[str] = []
    for chunk in "\n".join(lines).split("\n;"):
        stmt = chunk.strip().rstrip(";").strip()
        if stmt:
            out.append(stmt)
    return out


def load_migrations(ddl_dir: Path = DDL_DIR) -> list[Migration]:
    out: list[Migration] = []
    for path in sorted(ddl_dir.glob("*.sql")):
        if not _FILE.match(path.name):
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
        out.append(Migration(path.stem, path, tuple(split_statements(path.read_text()))))
    ids = [m.id[:4] for m in out]
    if len(set(ids)) != len(ids):
        raise MigrationError(f"{ddl_dir}: two migrations share a number: {ids}")
    return out


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses or quotes."""
    parts: list[str] = []
    depth, quote = 0, False
    cur: list[str] = []
    for ch in text:
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _column_type(spec: str) -> str:
    """The type of a column spec without its CODEC/DEFAULT/COMMENT clauses."""
    depth = 0
    for i, ch in enumerate(spec):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == " " and depth == 0:
            return spec[:i]
    return spec


def parse_statement(stmt: str) -> CreateTable | AddColumn | ClickHouseOnly | None:
    """Parse what the lake needs of a statement: a table, a column, or a
    layout-only ALTER it skips (projections, indexes, settings, codecs); None for a
    statement this module does not know."""
    m = _CREATE.match(stmt)
    if m:
        cols: list[tuple[str, str]] = []
        for part in _split_top(m.group(2)):
            head = part.split(None, 1)
            if head[0].upper() in {"INDEX", "PROJECTION", "CONSTRAINT"}:
                continue
            cols.append((head[0], _column_type(head[1].strip())))
        return CreateTable(m.group(1), tuple(cols))
    m = _CLICKHOUSE_ONLY.match(stmt)
    if m:
        return ClickHouseOnly(m.group(1), " ".join(m.group(2).upper().split()))
    m = _MODIFY_CODEC.match(stmt)
    if m:
        return ClickHouseOnly(m.group(1), f"MODIFY COLUMN {m.group(2)} CODEC")
    m = _ALTER_ADD.match(stmt)
    if m:
        return AddColumn(m.group(1), m.group(2), _column_type(m.group(3).strip()))
    return None


_DT64 = re.compile(r"^DateTime64\((\d)(?:\s*,\s*'([^']+)')?\)$")


def arrow_type(ch_type: str) -> pa.DataType:
    """The Arrow (Delta) type that chDB reads back as ``ch_type``'s values."""
    t = ch_type.strip()
    for wrapper in ("Nullable(", "LowCardinality("):
        if t.startswith(wrapper):
            return arrow_type(t[len(wrapper) : -1])
    if t.startswith("Array("):
        return pa.list_(arrow_type(t[len("Array(") : -1]))
    m = _DT64.match(t)
    if m:
        if m.group(1) != "6":
            # Delta timestamps are microseconds; chDB would read back DateTime64(6)
            raise MigrationError(
                f"{ch_type}: use DateTime64(6, 'UTC'), the only precision Delta stores"
            )
        return pa.timestamp("us", tz="UTC")
    simple: dict[str, pa.DataType] = {
        "String": pa.string(),
        "Int64": pa.int64(),
        "Int32": pa.int32(),
        "Int16": pa.int16(),
        "Bool": pa.bool_(),
        "Float64": pa.float64(),
        "Date": pa.date32(),
        "Date32": pa.date32(),
    }
    try:
        return simple[t]
    except KeyError:
        raise MigrationError(
            f"column type {ch_type!r} has no Delta mapping; use String, Int32/64, Bool, "
            "Float64, Date, DateTime64(6, 'UTC'), Array, Nullable or LowCardinality"
        ) from None


def _binary_columns() -> dict[str, set[str]]:
    # Columns that hold raw bytes: Delta stores them as binary (chDB reads both
    # binary and string as String).
    return {"events": {"raw"}, "bodies": {"body"}, "dead_letters": {"raw"}}


def table_schemas(migrations: list[Migration] | None = None) -> dict[str, pa.Schema]:
    """The Arrow schema of every table after all migrations."""
    tables: dict[str, list[tuple[str, pa.DataType, bool]]] = {}
    binary = _binary_columns()
    for mig in migrations if migrations is not None else load_migrations():
        for stmt in mig.statements:
            parsed = parse_statement(stmt)
            if isinstance(parsed, CreateTable):
                tables.setdefault(
                    parsed.table,
                    [
                        (
                            name,
                            pa.binary() if name in binary.get(parsed.table, ()) else arrow_type(t),
                            t.startswith("Nullable("),
                        )
                        for name, t in parsed.columns
                    ],
                )
            elif isinstance(parsed, AddColumn):
                cols = tables.get(parsed.table)
                if cols is None:
                    raise MigrationError(f"{mig.id}: ALTER of unknown table {parsed.table}")
                if all(c[0] != parsed.name for c in cols):
                    cols.append((parsed.name, arrow_type(parsed.type), True))
    return {
        name: pa.schema([pa.field(n, t, nullable=True) for n, t, _ in cols])
        for name, cols in tables.items()
    }
