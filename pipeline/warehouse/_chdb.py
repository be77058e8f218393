"""The one chDB engine of this process.

chDB embeds a ClickHouse server that is initialised once per process with one
data path. The lake backend only needs *an* engine (it reads Delta tables with
``deltaLakeLocal``); the chdb backend needs one with its own path. This module
hands out a shared, lock-protected engine: a lake reader uses whatever engine
exists (a temporary one if none), and a chdb warehouse reopens a temporary
engine on its path. Two chdb warehouses on different paths in one process are
refused with a clear error. Lake reads run on a thread of their own (see
``ChdbEngine._lake_reader``), and query parameters are bound as ClickHouse
server gets them from clickhouse-connect (``_bind``).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC
from pathlib import Path
from typing import Any

import pyarrow as pa
from chdb import session as chdb_session

from pipeline.warehouse.errors import WarehouseError, WarehouseUnavailable

__all__ = ["ChdbEngine", "engine"]

log = logging.getLogger(__name__)

#: Output settings shared by every backend so results compare equal.
OUTPUT_SETTINGS = {
    "output_format_json_quote_64bit_integers": 0,
    "output_format_json_quote_decimals": 0,
    "output_format_json_named_tuples_as_objects": 1,
    "session_timezone": "UTC",
    # A fold names its outputs after the columns it aggregates (any(status) AS
    # status); inside the same SELECT the column, not the aggregate, is meant.
    "prefer_column_name_to_alias": 1,
}


class ChdbEngine:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._session: Any = None
        self.path: str | None = None
        #: the thread that runs lake reads (see ``_lake_reader``); None until
        #: the first one, False where a thread cannot have its own directory
        self._reader: ThreadPoolExecutor | bool | None = None

    def _open(self, path: str | None) -> None:
        try:
            # deltaLakeLocal() only reads under user_files_path, and the lake may
            # live anywhere. chDB 4.4 ignores this setting (see _lake_reader); it
            # stays for a chDB that honours it. Only this module's own query
            # text ever runs here.
            conn = f"file:{path}?user_files_path=/" if path else ":memory:?user_files_path=/"
            self._session = chdb_session.Session(conn)  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            raise WarehouseUnavailable(
                f"chDB cannot open {path or 'a temporary engine'}: {exc}. A chDB data "
                "directory is locked to one process; use lake:DIR for shared access",
                retry_after=5.0,
            ) from None
        self.path = path
        for k, v in OUTPUT_SETTINGS.items():
            self._session.query(f"SET {k} = {v!r}" if isinstance(v, str) else f"SET {k} = {v}")

    def acquire(self, path: str | None) -> None:
        """Make sure the engine runs, on ``path`` if one is given."""
        with self.lock:
            if self._session is None:
                self._open(path)
            elif path is not None and self.path != path:
                if self.path is not None:
                    raise WarehouseError(
                        f"this process already runs chDB on {self.path}; chDB allows one "
                        f"data directory per process, so chdb:{path} cannot open here"
                    )
                self._session.close()
                self._session = None
                self._open(path)

    def execute(
        self, sql: str, params: Mapping[str, Any] | None = None, *, path: str | None = None
    ) -> None:
        with self.lock:
            self.acquire(path)
            self._run(sql, params, "CSV")

    def query_json(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        path: str | None = None,
        reads_under: Path | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Run ``sql`` and return its rows. ``reads_under``: the directory that
        ``deltaLakeLocal`` paths of the query lie in (see ``_lake_reader``)."""
        with self.lock:
            self.acquire(path)
            if reads_under is None:
                res = self._run(sql, params, "JSON", extra)
            elif isinstance(reader := self._lake_reader(), ThreadPoolExecutor):
                res = reader.submit(self._run, sql, params, "JSON", extra).result()
            else:
                with _process_cwd_at_root(reads_under):
                    res = self._run(sql, params, "JSON", extra)
            text = res.data() if res is not None else ""
        if not text.strip():
            return []
        data: list[dict[str, Any]] = json.loads(text)["data"]
        return data

    def _lake_reader(self) -> ThreadPoolExecutor | bool:
        """The one thread that runs queries reading Delta tables.

        chDB (ClickHouse >= 26.6) only lets ``deltaLakeLocal`` read under its
        user_files_path, which embedded chDB sets to the *current directory*
        whatever the configuration says (``user_files_path`` and disks for
        table engines are ignored). The check runs in the thread that calls
        the query, so that thread gets a current directory of its own, the
        filesystem root (``unshare(CLONE_FS)``), and every lake read runs on
        it: the process's current directory, which every other thread uses
        for relative paths, never changes. The threads chDB starts from it
        share its directory; embedguard only gives chDB absolute paths.

        False where a thread cannot have its own directory (not Linux, or a
        seccomp profile that refuses unshare, as Docker's default does without
        CAP_SYS_ADMIN); see ``_process_cwd_at_root``. Callers hold the lock."""
        if self._reader is None:
            pool = ThreadPoolExecutor(1, thread_name_prefix="embedguard-lake-reader")
            if pool.submit(_own_cwd_at_root).result():
                self._reader = pool
            else:
                pool.shutdown()
                self._reader = False
                log.warning(
                    "this platform gives threads no current directory of their own; "
                    "lake reads outside the current directory move the whole process "
                    "to / while they run"
                )
        return self._reader

    def _run(
        self,
        sql: str,
        params: Mapping[str, Any] | None,
        fmt: str,
        extra: Mapping[str, Any] | None = None,
    ) -> Any:
        sql, bound = _bind(sql, params)
        try:
            if extra:
                return self._session.query(sql, fmt, params=bound, **extra)
            return self._session.query(sql, fmt, params=bound)
        except RuntimeError as exc:
            raise WarehouseError(f"chDB query failed: {_first_line(str(exc))}") from None

    def insert_arrow(
        self,
        table_ref: str,
        columns: list[str],
        data: pa.Table,
        token: str,
        *,
        path: str | None = None,
    ) -> None:
        """INSERT the Arrow table ``data`` into ``table_ref`` (deduplicated by token).

        The table goes to chDB's streaming insert as an Arrow IPC stream
        (``INSERT ... FORMAT ArrowStream``): no file, no table function, no
        schema inference. Spooling an IPC file and reading it with ``file()``
        cost 5-20 % more CPU per batch (more for small ones), and chDB's
        ``Python()`` table function ~10 ms per query.

        ``optimize_on_insert = 0``: a ReplacingMergeTree insert otherwise
        collapses duplicate keys within the block, as a merge would, which was
        ~30 % of an insert's CPU. A batch holds a key twice only when the log
        holds an event twice (a producer retry), which is no different from a
        duplicate across batches: merges drop it, and every query of
        pipeline/queries.py is dedup-safe before any merge."""
        cols = ", ".join(f"`{c}`" for c in columns)
        sql = (
            f"INSERT INTO {table_ref} ({cols}) "  # noqa: S608 - names from the DDL
            "SETTINGS insert_deduplicate = 1, "
            f"insert_deduplication_token = {_quote(token)}, optimize_on_insert = 0"
        )
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, data.schema) as writer:
            writer.write_table(data)
        payload = sink.getvalue().to_pybytes()
        with self.lock:
            self.acquire(path)
            try:
                inserter = self._session.send_insert(sql, "ArrowStream")
            except RuntimeError as exc:
                raise WarehouseError(f"chDB insert failed: {_first_line(str(exc))}") from None
            try:
                inserter.append(payload)
                inserter.finish()
            except RuntimeError as exc:
                with suppress(RuntimeError):
                    inserter.cancel()
                raise WarehouseError(f"chDB insert failed: {_first_line(str(exc))}") from None

    def close(self) -> None:
        with self.lock:
            if self._session is not None:
                self._session.close()
                self._session = None
                self.path = None


#: clone(2)'s CLONE_FS; unshare(CLONE_FS) gives the calling thread its own
#: current directory, root and umask.
_CLONE_FS = 0x200


def _own_cwd_at_root() -> bool:
    """Give the calling thread a current directory of its own, at "/", and
    leave the process's alone; False (and nothing changed) where that is
    impossible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(_CLONE_FS) != 0:
            return False
    except (OSError, AttributeError):
        return False
    os.chdir("/")
    return True


@contextmanager
def _process_cwd_at_root(directory: Path) -> Iterator[None]:
    """The fallback of ``_lake_reader``: when the lake lies outside the current
    directory, the *process* moves to the filesystem root for the query and
    back right after. Every thread sees that meanwhile; only platforms where a
    thread cannot have its own directory take this path."""
    cwd = os.getcwd()
    if directory.is_relative_to(cwd):
        yield
        return
    os.chdir(directory.anchor or "/")
    try:
        yield
    finally:
        os.chdir(cwd)


def _bind(sql: str, params: Mapping[str, Any] | None) -> tuple[str, dict[str, str]]:
    """``params`` as ClickHouse reads ``{name:Type}`` values: text in the
    "escaped" format (TabSeparated escaping: a backslash, tab or newline in a
    String is written as an escape; Array and Tuple elements as quoted
    literals), which chDB, like the server, decodes before it parses the
    value. clickhouse-connect does exactly this for ClickHouse server (pipeline/
    warehouse/clickhouse.py), so binding with its own function makes both
    backends read the same values. It is imported here, not at the top: the
    package costs ~0.1 s to import, and the lake never needs the rest of it."""
    if not params:
        return sql, {}
    from clickhouse_connect.driver.binding import bind_query

    bound_sql, bound = bind_query(sql, dict(params), UTC)
    if not isinstance(bound_sql, str):  # binary ($name$) parameters: never used here
        raise WarehouseError("chDB cannot bind binary query parameters")
    return bound_sql, {k.removeprefix("param_"): v for k, v in bound.items()}


def _quote(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return line[:2000]


_ENGINE = ChdbEngine()


def engine() -> ChdbEngine:
    return _ENGINE
