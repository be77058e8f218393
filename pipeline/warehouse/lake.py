"""The embedded warehouse: Delta Lake tables written with ``deltalake`` and
read with chDB ``deltaLakeLocal(...)``.

Layout: ``DIR/<table>/`` is one Delta table per DDL table (same column names and
types as ClickHouse, see ddl.py); ``DIR/_migrations.json`` records the applied
migrations. The big tables are partitioned by ``day``.

Exactly once: every commit of a batch carries a Delta *app transaction*
(``app_id = "<source>:<partition>"``, ``version = last offset``). Before writing
table T the backend reads T's transaction version v and writes only the rows
whose source offset is > v. So a retried batch, or a batch whose boundaries
moved after a crash, never writes a row twice in any table, and a crash between
the tables of one batch is finished by the retry. ``loads`` is committed last:
its row marks the batch complete and feeds ``loaded_positions``.

Concurrency: Delta appends are atomic; readers (chDB) see whole commits only.
Several loader processes may append at once (delta-rs retries conflicting
appends). The gateway, loader, dashboard and CLI can all run at the same time;
nothing here holds a lock across processes except ``migrate`` (a file lock).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import (
    CommitProperties,
    DeltaTable,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from pipeline.warehouse._chdb import engine
from pipeline.warehouse.base import (
    LoadBatch,
    PreparedBatch,
    Warehouse,
    WriteResult,
    stats_summary,
)
from pipeline.warehouse.ddl import (
    AddColumn,
    ClickHouseOnly,
    CreateTable,
    load_migrations,
    parse_statement,
    table_schemas,
)
from pipeline.warehouse.errors import MigrationError, WarehouseError, WarehouseUnavailable
from pipeline.warehouse.parallel import ParallelProjector
from pipeline.warehouse.projection import (
    TABLES,
    Projector,
    rows_after,
    to_arrow,
)
from schemas.codec import EventCodec, default_codec

__all__ = ["LakeWarehouse"]

#: Tables partitioned by day (the ones that grow with traffic).
DAY_PARTITIONED = {"events", "requests", "sessions", "vector_lineage", "bodies"}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
#: The column each big table is looked up by (pipeline/queries.py): compaction
#: sorts a day partition's files on it.
SORT_KEYS = {
    "events": "session_id",
    "sessions": "session_id",
    "requests": "request_id",
    "vector_lineage": "point_id",
    "bodies": "sha256",
}
#: Row groups of 16k rows made of pages of 1k rows, with page statistics: a key
#: lookup in a sorted file decodes about one page per column (chDB skips pages
#: by the column index, input_format_parquet_page_filter_push_down), not whole
#: row groups of large columns (payload_json, raw). Measured on 1M events: a
#: session timeline costs ~0.6x the CPU of 16k-row pages.
_WRITER = WriterProperties(
    max_row_group_size=16_384,
    data_page_row_count_limit=1_024,
    write_batch_size=1_024,
    compression="ZSTD",
    compression_level=1,
)


class LakeWarehouse(Warehouse):
    compacts_beside_writes = True  # see compact()
    #: Today's (and any later) day partition is still being loaded: sorting it
    #: rewrites the whole partition, so doing that at every compaction would
    #: cost more each time as the day fills (a day of 100M events re-sorted
    #: every 10 minutes). It is re-sorted only once its unsorted files hold this
    #: share of its rows, or are this many; so each row is rewritten a bounded
    #: number of times (a geometric series: ~1/share). A closed day is sorted
    #: whenever it has unsorted files, which after midnight is once.
    open_day_resort_share = 0.25
    open_day_resort_files = 64

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        codec: EventCodec | None = None,
        vacuum_retention_hours: int = 1,
        body_retention_days: int | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.url = f"lake:{self.root}"
        self.codec = codec or default_codec()
        self.vacuum_retention_hours = vacuum_retention_hours
        self.body_retention_days = body_retention_days
        self._schemas = table_schemas()
        self._tables: dict[str, DeltaTable] = {}
        self._lock = threading.Lock()
        self._compact_lock = threading.Lock()
        self._project: Projector = ParallelProjector()
        self._executor: ThreadPoolExecutor | None = None
        #: (table, app id) → (snapshot, its version, app-transaction version)
        #: after this process's own last commit; see _write_batch
        self._known: dict[tuple[str, str], tuple[DeltaTable, int, int]] = {}

    # -- helpers -------------------------------------------------------------
    def table_path(self, table: str) -> Path:
        return self.root / table

    def _table(self, table: str) -> DeltaTable:
        dt = self._tables.get(table)
        try:
            if dt is None:
                dt = DeltaTable(str(self.table_path(table)))
                self._tables[table] = dt
            else:
                dt.update_incremental()
        except TableNotFoundError:
            raise WarehouseError(
                f"{self.url}: table {table} does not exist; run `embedguard warehouse migrate "
                f"--warehouse {self.url}`"
            ) from None
        return dt

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "_migrations.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _applied(self) -> list[str]:
        marker = self.root / "_migrations.json"
        if not marker.exists():
            return []
        try:
            data = json.loads(marker.read_text())
            return [str(m["id"]) for m in data["applied"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise MigrationError(f"{marker} is unreadable ({exc}); restore it or rebuild") from None

    # -- Warehouse -----------------------------------------------------------
    def migrate(self) -> list[str]:
        migrations = load_migrations()
        known = {m.id for m in migrations}
        with self._file_lock():
            applied = self._applied()
            unknown = [a for a in applied if a not in known]
            if unknown:
                raise MigrationError(
                    f"{self.url} has migrations this embedguard does not know: {unknown}; "
                    "upgrade embedguard"
                )
            now: list[str] = []
            for mig in migrations:
                if mig.id in applied:
                    continue
                for stmt in mig.statements:
                    self._apply(parse_statement(stmt))
                applied.append(mig.id)
                now.append(mig.id)
                marker = self.root / "_migrations.json"
                tmp = marker.with_suffix(".tmp")
                tmp.write_text(
                    json.dumps(
                        {
                            "applied": [
                                {"id": a, "at": datetime.now(UTC).isoformat()} for a in applied
                            ]
                        },
                        indent=1,
                    )
                )
                os.replace(tmp, marker)
        return now

    def _apply(self, parsed: CreateTable | AddColumn | ClickHouseOnly | None) -> None:
        if isinstance(parsed, CreateTable):
            path = self.table_path(parsed.table)
            if DeltaTable.is_deltatable(str(path)):
                return
            schema = self._schemas[parsed.table]
            DeltaTable.create(
                str(path),
                schema,
                mode="ignore",
                partition_by=["day"] if parsed.table in DAY_PARTITIONED else None,
                name=parsed.table,
            )
        elif isinstance(parsed, AddColumn):
            from deltalake import Field

            dt = DeltaTable(str(self.table_path(parsed.table)))
            if parsed.name in dt.schema().to_arrow().names:
                return
            field = self._schemas[parsed.table].field(parsed.name)
            dt.alter.add_columns([Field.from_arrow(field)])

    def start_loading(self) -> None:
        if isinstance(self._project, ParallelProjector):
            self._project.warm()

    def loaded_positions(self, source: str) -> dict[int, int]:
        rows = self.query(
            "SELECT src_partition, max(last_offset) + 1 AS next_offset FROM {loads} "
            "WHERE source = {source:String} GROUP BY src_partition",
            {"source": source},
        )
        return {int(r["src_partition"]): int(r["next_offset"]) for r in rows}

    def write_batch(self, batch: LoadBatch) -> WriteResult:
        return self._locked_write(batch, None)

    def prepare_batch(self, batch: LoadBatch) -> PreparedBatch:
        """Decode and project ``batch`` (CPU only: reads and writes nothing of
        the lake), so that a loader can project the next batch while this one
        commits. ``write_prepared`` then writes it exactly as ``write_batch``
        would (a batch the lake already holds writes nothing)."""
        loaded_at = datetime.now(UTC)
        return PreparedBatch(batch, loaded_at, self._project(batch, self.codec, loaded_at))

    def write_prepared(self, prepared: PreparedBatch) -> WriteResult:
        return self._locked_write(prepared.batch, prepared)

    def _locked_write(self, batch: LoadBatch, prepared: PreparedBatch | None) -> WriteResult:
        with self._lock:
            try:
                return self._write_batch(batch, prepared)
            except BaseException as exc:
                self._known.clear()  # after a failure, read every version afresh
                if isinstance(exc, CommitFailedError):
                    raise WarehouseUnavailable(
                        f"{self.url}: Delta commit conflict, retry the batch: {exc}",
                        retry_after=0.5,
                    ) from None
                if isinstance(exc, DeltaError | OSError) and not isinstance(exc, WarehouseError):
                    raise WarehouseUnavailable(
                        f"{self.url}: write failed: {exc}", retry_after=2.0
                    ) from None
                raise

    def _write_batch(self, batch: LoadBatch, prepared: PreparedBatch | None) -> WriteResult:
        app_id = f"{batch.source}:{batch.partition}"
        last = batch.last_offset
        # A batch that carries on right after this process's last complete
        # batch of the partition trusts the versions its own commits left
        # (``_known``) instead of reading every table's log again; any other
        # batch (the first, one after a failure or a rebalance) reads them.
        # Trust is safe: a commit made from a snapshot that misses another
        # writer's commit with the same app id fails as a concurrent
        # transaction in delta-rs, and the retry reads afresh.
        loads = self._known_version("loads", app_id)
        trust = loads is not None and loads + 1 == batch.first_offset
        if not trust:
            done = self._table("loads").transaction_version(app_id)
            if done is not None and done >= last:
                return WriteResult(events=0, dead_letters=0, duplicate=True)
        if prepared is None:
            prepared = self.prepare_batch(batch)
        loaded_at, tables = prepared.loaded_at, prepared.tables
        # The derived tables are independent (each has its own app transaction),
        # so they commit concurrently: delta-rs writes without the GIL, and a
        # commit mostly waits on the file system. events commits after all of
        # them, and loads (the batch's completion mark) last.
        derived = [t for t in TABLES if t not in ("events", "loads")]
        pool = self._pool()
        futures = {
            t: pool.submit(self._write_table, t, tables[t], app_id, last, trust) for t in derived
        }
        written = {t: f.result() for t, f in futures.items()}
        written["events"] = self._write_table("events", tables["events"], app_id, last, trust)
        marker = {
            "source": batch.source,
            "src_partition": batch.partition,
            "table_name": "*",
            "first_offset": batch.first_offset,
            "last_offset": last,
            "token": batch.token,
            "row_count": len(batch.records),
            "loaded_at": loaded_at,
        }
        dt = self._tables["loads"] if trust else self._table("loads")
        self._append(dt, "loads", to_arrow([marker], self._schemas["loads"]), app_id, last)
        self._known["loads", app_id] = (dt, dt.version(), last)
        return WriteResult(
            events=written.get("events", 0),
            dead_letters=written.get("dead_letters", 0),
            duplicate=False,
        )

    def _write_table(
        self, table: str, data: pa.Table, app_id: str, last: int, trust: bool = False
    ) -> int:
        """Append the rows of ``data`` past ``table``'s app-transaction version;
        return how many were written."""
        v = self._known_version(table, app_id) if trust else None
        if v is not None:
            dt = self._tables[table]
        else:
            dt = self._table(table)
            v = dt.transaction_version(app_id)
        if v is not None and v >= last:
            return 0
        todo = rows_after(data, v)
        # events always commits (even empty): its version is this batch's
        # progress for every table ordered before it.
        if todo.num_rows or table == "events":
            self._append(dt, table, todo, app_id, last)
            self._known[table, app_id] = (dt, dt.version(), last)
        return int(todo.num_rows)

    def _known_version(self, table: str, app_id: str) -> int | None:
        """The app-transaction version this process's own last commit to
        ``table`` left, if the table's snapshot is still that commit's (nothing
        refreshed it since, e.g. compaction)."""
        known = self._known.get((table, app_id))
        if known is None:
            return None
        dt, version, txn = known
        if self._tables.get(table) is not dt or dt.version() != version:
            return None
        return txn

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lake-commit")
        return self._executor

    def _append(
        self, dt: DeltaTable, table: str, data: pa.Table, app_id: str, version: int
    ) -> None:
        write_deltalake(
            dt,
            data,
            mode="append",
            commit_properties=CommitProperties(
                app_transactions=[Transaction(app_id=app_id, version=version)]
            ),
        )

    def render(self, sql: str) -> str:
        """Replace ``{table}`` placeholders by ``deltaLakeLocal('DIR/table')``;
        ``{name:Type}`` query parameters stay as they are."""

        def table_ref(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in self._schemas:
                raise WarehouseError(f"query names unknown table {{{name}}}")
            path = str(self.table_path(name)).replace("\\", "\\\\").replace("'", "\\'")
            return f"deltaLakeLocal('{path}')"

        return _PLACEHOLDER.sub(table_ref, sql)

    def query(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return engine().query_json(self.render(sql), params, reads_under=self.root)

    def compact(self) -> None:
        """Compact small files, drop expired bodies, vacuum and checkpoint.

        It runs beside ``write_batch`` without taking the write lock, on its own
        snapshots: OPTIMIZE (bin-packing, the sorting Z-order), the body purge,
        vacuum and checkpoints are Delta commits that concurrent appends do not
        conflict with (an append made from a snapshot older than a compaction
        commit still commits; tests/pipeline/warehouse/test_lake_layout.py). So
        loading goes on while a day partition is sorted, which takes about a
        minute for a million events. Compactions of one process run one at a
        time (``_sorted.json`` is theirs)."""
        with self._compact_lock:
            for table in TABLES:
                try:
                    dt = DeltaTable(str(self.table_path(table)))
                except TableNotFoundError:
                    raise WarehouseError(
                        f"{self.url}: table {table} does not exist; run `embedguard warehouse "
                        f"migrate --warehouse {self.url}`"
                    ) from None
                try:
                    if table == "bodies" and self.body_retention_days is not None:
                        from pipeline.retention import purge_lake_bodies

                        # hold-aware: bodies an evidence hold keeps stay
                        purge_lake_bodies(self)
                        dt.update_incremental()
                    self._optimize(table, dt)
                    dt.vacuum(
                        retention_hours=self.vacuum_retention_hours,
                        dry_run=False,
                        enforce_retention_duration=False,
                    )
                    dt.create_checkpoint()
                    dt.cleanup_metadata()
                except CommitFailedError:
                    continue  # a concurrent writer won; the next compaction catches up

    def _optimize(self, table: str, dt: DeltaTable) -> None:
        """Bin-pack small files; in the big tables, rewrite every day partition
        that holds files not written by a sort so that its files are sorted on
        the table's lookup key (``SORT_KEYS``) and hold disjoint key ranges.
        Delta's per-file min/max statistics then let chDB skip every file but
        one for a key lookup (``delta_lake_enable_engine_predicate``), and the
        small row groups let it skip inside the file (parquet filter push-down).
        Both are Delta OPTIMIZE commits (no data change), safe against
        concurrent appends. ``_sorted.json`` remembers which files a sort wrote;
        it is only a hint (lost, the partitions are sorted once more)."""
        key = SORT_KEYS.get(table)
        if key is None:
            dt.optimize.compact(writer_properties=_WRITER)
            return
        hint = self.root / "_sorted.json"
        try:
            sorted_files: dict[str, list[str]] = json.loads(hint.read_text())
        except (OSError, ValueError):
            sorted_files = {}
        known = set(sorted_files.get(table, []))
        start = dt.version()
        today = self._today()
        for day, files in sorted(_files_by_day(dt).items()):
            unsorted = {p: n for p, n in files.items() if p not in known}
            if not unsorted:
                continue
            if day >= today and not self._open_day_due(files, unsorted):
                continue
            dt.optimize.z_order(
                [key], partition_filters=[("day", "=", day)], writer_properties=_WRITER
            )
        dt.update_incremental()
        # the files that the sorts wrote (not appends that committed meanwhile)
        known |= _sorted_adds(self.table_path(table), start + 1, dt.version())
        current = {p for files in _files_by_day(dt).values() for p in files}
        sorted_files[table] = sorted(known & current)
        tmp = hint.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted_files))
        os.replace(tmp, hint)

    def _today(self) -> str:
        """The first day partition still open (being loaded): today, UTC."""
        return datetime.now(UTC).date().isoformat()

    def _open_day_due(self, files: dict[str, int], unsorted: dict[str, int]) -> bool:
        """Is an open day partition due for a sort (see open_day_resort_share)?"""
        if len(unsorted) == len(files) or len(unsorted) >= self.open_day_resort_files:
            return True
        total = sum(files.values())
        return total > 0 and sum(unsorted.values()) >= self.open_day_resort_share * total

    def stats(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for table in TABLES:
            rows = self.query(f"SELECT count() AS n FROM {{{table}}}", {})  # noqa: S608
            counts[table] = int(rows[0]["n"]) if rows else 0
        last = self.query("SELECT max(loaded_at) AS t FROM {loads}", {})
        distinct = self.query("SELECT uniqExact(event_id) AS n FROM {events}", {})
        return stats_summary(self.url, counts, last, distinct)

    def close(self) -> None:
        self._tables.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _files_by_day(dt: DeltaTable) -> dict[str, dict[str, int]]:
    """day -> {file path: rows} of the table's current files."""
    actions = pa.table(dt.get_add_actions(flatten=True))
    out: dict[str, dict[str, int]] = {}
    if actions.num_rows == 0:
        return out
    for row in actions.select(["partition.day", "path", "num_records"]).to_pylist():
        out.setdefault(str(row["partition.day"]), {})[str(row["path"])] = int(
            row["num_records"] or 0
        )
    return out


def _sorted_adds(path: Path, first: int, last: int) -> set[str]:
    """The files added by the Z-order OPTIMIZE commits among versions
    ``first..last`` of the Delta table at ``path`` (read from its log)."""
    out: set[str] = set()
    for version in range(first, last + 1):
        try:
            lines = (path / "_delta_log" / f"{version:020d}.json").read_text().splitlines()
        except OSError:
            continue
        actions = [json.loads(line) for line in lines if line.strip()]
        info: dict[str, Any] = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
        metrics = info.get("operationMetrics") or {}
        if info.get("operation") == "OPTIMIZE" and metrics.get("plannerStrategy") == "zOrder":
            out |= {a["add"]["path"] for a in actions if "add" in a}
    return out
