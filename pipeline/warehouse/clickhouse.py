"""MergeTree warehouses: ClickHouse server (clickhouse-connect) and chDB.

Both run ddl/*.sql as written. Idempotency:

- each table's insert of a batch carries ``insert_deduplication_token =
  "<batch token>:<table>"`` (non-replicated tables keep a deduplication window,
  see the DDL), so a retried batch with identical rows is dropped by the server;
- ``loads`` records, per table, the last source offset written for each
  (source, partition); a batch only writes rows past that mark, so a retry
  whose boundaries moved after a crash does not write a row twice either;
- the ``'*'`` row of ``loads`` marks the batch complete and feeds
  ``loaded_positions``;
- if a crash still leaves a duplicate (a batch cut at other boundaries whose
  marks were not yet written), ReplacingMergeTree keys end in event_id and every
  query of pipeline/queries.py aggregates dedup-safely, so results never
  double-count, with or without a merge.
"""

from __future__ import annotations

import abc
import re
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa

from pipeline.warehouse._chdb import OUTPUT_SETTINGS, engine
from pipeline.warehouse.base import (
    LoadBatch,
    PreparedBatch,
    Warehouse,
    WriteResult,
    stats_summary,
)
from pipeline.warehouse.ddl import load_migrations, table_schemas
from pipeline.warehouse.errors import MigrationError, WarehouseError, WarehouseUnavailable
from pipeline.warehouse.parallel import ParallelProjector
from pipeline.warehouse.projection import (
    TABLES,
    Projector,
    rows_after,
    to_arrow,
)
from schemas.codec import EventCodec, default_codec

__all__ = ["ChdbWarehouse", "ClickHouseWarehouse", "MergeTreeWarehouse"]

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
COMPLETE = "*"


class MergeTreeWarehouse(Warehouse):
    """What ClickHouse server and chDB share; subclasses run the SQL."""

    def __init__(
        self,
        database: str,
        codec: EventCodec | None = None,
        *,
        body_retention_days: int | None = None,
    ) -> None:
        self.body_retention_days = body_retention_days
        if not _DB_NAME.match(database):
            raise WarehouseError(
                f"database name {database!r} is not a plain identifier (letters, digits, _)"
            )
        self.db = database
        self.codec = codec or default_codec()
        self._schemas = table_schemas()
        self._lock = threading.Lock()
        self._project: Projector = ParallelProjector()
        self._known_marks: dict[tuple[str, int], dict[str, int]] = {}

    # -- what subclasses provide ---------------------------------------------
    @abc.abstractmethod
    def _command(self, sql: str, params: Mapping[str, Any] | None = None) -> None: ...

    @abc.abstractmethod
    def _select(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def _insert(self, table: str, data: pa.Table, token: str) -> None: ...

    # -- Warehouse -----------------------------------------------------------
    def render(self, sql: str) -> str:
        def table_ref(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in self._schemas and name != "schema_migrations":
                raise WarehouseError(f"query names unknown table {{{name}}}")
            return f"{self.db}.{name}"

        return _PLACEHOLDER.sub(table_ref, sql)

    def query(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self._select(self.render(sql), params)

    def migrate(self) -> list[str]:
        with self._lock:
            self._command(f"CREATE DATABASE IF NOT EXISTS {self.db}")
            self._command(
                f"CREATE TABLE IF NOT EXISTS {self.db}.schema_migrations "
                "(id String, applied_at DateTime64(6, 'UTC')) "
                "ENGINE = ReplacingMergeTree ORDER BY id"
            )
            applied = {r["id"] for r in self.query("SELECT id FROM {schema_migrations}", {})}
            migrations = load_migrations()
            unknown = applied - {m.id for m in migrations}
            if unknown:
                raise MigrationError(
                    f"{self.url} has migrations this embedguard does not know: "
                    f"{sorted(unknown)}; upgrade embedguard"
                )
            now: list[str] = []
            for mig in migrations:
                if mig.id in applied:
                    continue
                for stmt in mig.statements:
                    try:
                        self._command(stmt.replace("{db}", self.db))
                    except WarehouseError as exc:
                        raise MigrationError(f"migration {mig.id} failed: {exc}") from None
                self._command(
                    self.render(
                        "INSERT INTO {schema_migrations} VALUES ({id:String}, now64(6, 'UTC'))"
                    ),
                    {"id": mig.id},
                )
                now.append(mig.id)
            self._apply_retention()
            return now

    def _apply_retention(self) -> None:
        """Bodies expire by the hold-aware purge (pipeline/retention.py, run by
        ``compact``), never by a TTL: a TTL cannot consult the evidence holds. A
        bodies TTL set by an earlier embedguard is removed. Events never expire
        here: they are the evidence."""
        rows = self._select(
            "SELECT create_table_query AS q FROM system.tables "
            "WHERE database = {db:String} AND name = 'bodies'",
            {"db": self.db},
        )
        if rows and " TTL " in str(rows[0]["q"]):
            self._command(f"ALTER TABLE {self.db}.bodies REMOVE TTL")

    def start_loading(self) -> None:
        if isinstance(self._project, ParallelProjector):
            self._project.warm()

    def loaded_positions(self, source: str) -> dict[int, int]:
        rows = self.query(
            "SELECT src_partition, max(last_offset) + 1 AS next_offset FROM {loads} "
            "WHERE source = {source:String} AND table_name = '*' GROUP BY src_partition",
            {"source": source},
        )
        return {int(r["src_partition"]): int(r["next_offset"]) for r in rows}

    def _marks(self, source: str, partition: int) -> dict[str, int]:
        rows = self.query(
            "SELECT table_name, max(last_offset) AS last FROM {loads} "
            "WHERE source = {source:String} AND src_partition = {partition:Int32} "
            "GROUP BY table_name",
            {"source": source, "partition": partition},
        )
        return {str(r["table_name"]): int(r["last"]) for r in rows}

    def write_batch(self, batch: LoadBatch) -> WriteResult:
        return self._locked_write(batch, None)

    def prepare_batch(self, batch: LoadBatch) -> PreparedBatch:
        """Decode and project ``batch`` (CPU only: reads and writes nothing of
        the warehouse), so that a loader can project the next batch while this
        one is inserted. ``write_prepared`` then writes it exactly as
        ``write_batch`` would: the marks are read and checked under the write
        lock, so a batch the warehouse already holds writes nothing, and a
        partly written one only the rows past each table's mark."""
        loaded_at = datetime.now(UTC)
        return PreparedBatch(batch, loaded_at, self._project(batch, self.codec, loaded_at))

    def write_prepared(self, prepared: PreparedBatch) -> WriteResult:
        return self._locked_write(prepared.batch, prepared)

    def _locked_write(self, batch: LoadBatch, prepared: PreparedBatch | None) -> WriteResult:
        with self._lock:
            # The marks this process wrote last for the partition stand for the
            # warehouse's only while the batch carries on right after them (the
            # loader re-anchors at loaded_positions after a rebalance or an
            # error, so a batch that starts anywhere else reads them afresh).
            # Taken out of the cache first: a failed write leaves none behind.
            key = (batch.source, batch.partition)
            marks = self._known_marks.pop(key, None)
            if marks is None or marks.get(COMPLETE, -1) + 1 != batch.first_offset:
                marks = self._marks(batch.source, batch.partition)
            last = batch.last_offset
            if marks.get(COMPLETE, -1) >= last:
                return WriteResult(events=0, dead_letters=0, duplicate=True)
            if prepared is None:
                prepared = self.prepare_batch(batch)
            loaded_at, tables = prepared.loaded_at, prepared.tables
            written: dict[str, int] = {}
            load_rows: list[dict[str, Any]] = []
            for table in TABLES:
                if table == "loads":
                    continue
                mark = marks.get(table, -1)
                if mark >= last:
                    continue
                todo = rows_after(tables[table], mark)
                written[table] = todo.num_rows
                if todo.num_rows:
                    self._insert(table, todo, f"{batch.token}:{table}")
                load_rows.append(self._load_row(batch, table, todo.num_rows, loaded_at))
            load_rows.append(self._load_row(batch, COMPLETE, len(batch.records), loaded_at))
            self._insert(
                "loads",
                to_arrow(load_rows, self._schemas["loads"]),
                f"{batch.token}:loads",
            )
            self._known_marks[key] = {t: max(marks.get(t, -1), last) for t in (*TABLES, COMPLETE)}
            return WriteResult(
                events=written.get("events", 0),
                dead_letters=written.get("dead_letters", 0),
                duplicate=False,
            )

    @staticmethod
    def _load_row(batch: LoadBatch, table: str, n: int, at: datetime) -> dict[str, Any]:
        return {
            "source": batch.source,
            "src_partition": batch.partition,
            "table_name": table,
            "first_offset": batch.first_offset,
            "last_offset": batch.last_offset,
            "token": batch.token,
            "row_count": n,
            "loaded_at": at,
        }

    def compact(self) -> None:
        """Ask for merges (they drop duplicate keys; queries never need them) and
        purge the bodies past their retention that no evidence hold keeps."""
        from pipeline.retention import purge_bodies

        for table in TABLES:
            self._command(f"OPTIMIZE TABLE {self.db}.{table}")
        if self.body_retention_days is not None:
            purge_bodies(self)

    def stats(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for table in TABLES:
            rows = self._select(f"SELECT count() AS n FROM {self.db}.{table}", {})  # noqa: S608
            counts[table] = int(rows[0]["n"]) if rows else 0
        last = self._select(
            f"SELECT max(loaded_at) AS t FROM {self.db}.loads",  # noqa: S608
            {},
        )
        distinct = self._select(
            f"SELECT uniqExact(event_id) AS n FROM {self.db}.events", {}  # noqa: S608
        )
        return stats_summary(self.url, counts, last, distinct)


class ChdbWarehouse(MergeTreeWarehouse):
    """MergeTree tables in this process's chDB engine, stored in ``path``.

    A chDB data directory is locked to one process: use it for tests and
    single-process tools, never as the shared embedded warehouse (lake:)."""

    def __init__(self, path: str, *, database: str = "embedguard", **kw: Any) -> None:
        super().__init__(database, **kw)
        self.path = str(Path(path).resolve())
        self.url = f"chdb:{self.path}"
        Path(self.path).mkdir(parents=True, exist_ok=True)
        engine().acquire(self.path)

    def _command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        engine().execute(sql, params, path=self.path)

    def _select(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return engine().query_json(sql, params, path=self.path)

    def _insert(self, table: str, data: pa.Table, token: str) -> None:
        engine().insert_arrow(f"{self.db}.{table}", data.column_names, data, token, path=self.path)

    def close(self) -> None:
        """The process's chDB engine stays open (other warehouses may share it)."""


class ClickHouseWarehouse(MergeTreeWarehouse):
    """A ClickHouse server through clickhouse-connect (HTTP)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        database: str,
        secure: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(database, **kw)
        scheme = "clickhouses" if secure else "clickhouse"
        self.url = f"{scheme}://{username}@{host}:{port}/{database}"
        self._conn: dict[str, Any] = {
            "host": host,
            "port": port,
            "username": username,
            "password": password,
            "secure": secure,
        }
        self._client: Any = None

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> ClickHouseWarehouse:
        parts = urlsplit(url)
        secure = parts.scheme in ("clickhouses", "https")
        if not parts.hostname:
            raise WarehouseError(
                "a ClickHouse URL needs a host: clickhouse://user:pass@host:8123/db"
            )
        return cls(
            host=parts.hostname,
            port=parts.port or (8443 if secure else 8123),
            username=unquote(parts.username or "default"),
            password=unquote(parts.password or ""),
            database=(parts.path or "/").strip("/") or "embedguard",
            secure=secure,
            **kw,
        )

    def _client_or_connect(self) -> Any:
        if self._client is None:
            import clickhouse_connect
            from clickhouse_connect.driver.exceptions import Error as ChError

            try:
                self._client = clickhouse_connect.get_client(
                    **self._conn, settings=dict(OUTPUT_SETTINGS)
                )
            except ChError as exc:
                raise WarehouseUnavailable(
                    f"{self.url}: cannot connect: {_scrub(str(exc), self._conn['password'])}",
                    retry_after=5.0,
                ) from None
        return self._client

    def _call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

        client = self._client_or_connect()
        try:
            return getattr(client, fn)(*args, **kwargs)
        except OperationalError as exc:
            raise WarehouseUnavailable(
                f"{self.url}: {_scrub(str(exc), self._conn['password'])}", retry_after=2.0
            ) from None
        except DatabaseError as exc:
            raise WarehouseError(
                f"{self.url}: {_scrub(str(exc), self._conn['password'])[:2000]}"
            ) from None

    def _command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._call("command", sql, parameters=dict(params or {}))

    def _select(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        import json

        raw = self._call("raw_query", sql, parameters=dict(params), fmt="JSON")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        if not text.strip():
            return []
        data: list[dict[str, Any]] = json.loads(text)["data"]
        return data

    def _insert(self, table: str, data: pa.Table, token: str) -> None:
        self._call(
            "insert_arrow",
            f"{self.db}.{table}",
            data,
            # optimize_on_insert: see ChdbEngine.insert_arrow (~30 % of an insert's CPU)
            settings={
                "insert_deduplicate": 1,
                "insert_deduplication_token": token,
                "optimize_on_insert": 0,
            },
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text
