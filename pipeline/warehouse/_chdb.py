"""The one chDB engine of this process.

chDB embeds a ClickHouse server that is initialised once per process with one
data path. The lake backend only needs *an* engine (it reads Delta tables with
``deltaLakeLocal``); the chdb backend needs one with its own path. This module
hands out a shared, lock-protected engine: a lake reader uses whatever engine
exists (a temporary one if none), and a chdb warehouse reopens a temporary
engine on its path. Two chdb warehouses on different paths in one process are
refused with a clear error.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
from chdb import session as chdb_session

from pipeline.warehouse.errors import WarehouseError, WarehouseUnavailable

__all__ = ["ChdbEngine", "engine"]

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
        self._spool_dir: Path | None = None
        self._spool_on_disk = False
        atexit.register(self._remove_spool)

    def _remove_spool(self) -> None:
        if self._spool_dir is not None:
            shutil.rmtree(self._spool_dir, ignore_errors=True)
            self._spool_dir = None

    def _open(self, path: str | None) -> None:
        try:
            # deltaLakeLocal() only reads under user_files_path; the lake may live
            # anywhere, and only this module's own query text ever runs here.
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
        ``deltaLakeLocal`` paths of the query lie in (see ``_user_files``)."""
        with self.lock:
            self.acquire(path)
            with _user_files(reads_under):
                res = self._run(sql, params, "JSON", extra)
            text = res.data() if res is not None else ""
        if not text.strip():
            return []
        data: list[dict[str, Any]] = json.loads(text)["data"]
        return data

    def _run(
        self,
        sql: str,
        params: Mapping[str, Any] | None,
        fmt: str,
        extra: Mapping[str, Any] | None = None,
    ) -> Any:
        try:
            if extra:
                return self._session.query(sql, fmt, params=dict(params or {}), **extra)
            return self._session.query(sql, fmt, params=dict(params or {}))
        except RuntimeError as exc:
            raise WarehouseError(f"chDB query failed: {_first_line(str(exc))}") from None

    def insert_arrow(self, table_ref: str, columns: list[str], data: pa.Table, token: str) -> None:
        """INSERT the Arrow table ``data`` into ``table_ref`` (deduplicated by token).

        The table travels as an Arrow IPC file in a private spool directory
        (in memory where /dev/shm exists), read with ``file(..., Arrow)``:
        chDB's ``Python()`` table function costs ~10 ms per query whatever the
        size, which was half of a small batch's time."""
        cols = ", ".join(f"`{c}`" for c in columns)
        with self.lock:
            path = self._spool_file(data)
            try:
                sql = (
                    f"INSERT INTO {table_ref} ({cols}) "  # noqa: S608 - names from the DDL
                    f"SETTINGS insert_deduplicate = 1, insert_deduplication_token = {{tok:String}} "
                    f"SELECT {cols} FROM file({_quote(str(path))}, 'Arrow')"
                )
                self._run(sql, {"tok": token}, "CSV")
            finally:
                with suppress(OSError):
                    path.unlink(missing_ok=True)

    def _spool_file(self, data: pa.Table) -> Path:
        """Write ``data`` to the spool. /dev/shm can be small (64 MB in many
        containers): when it is full, the spool moves to the temporary
        directory on disk for good."""
        for _attempt in range(2):
            path = self._spool() / "insert.arrow"
            try:
                with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, data.schema) as w:
                    w.write_table(data)
                return path
            except OSError as exc:
                with suppress(OSError):
                    path.unlink(missing_ok=True)
                if self._spool_on_disk:
                    raise WarehouseUnavailable(
                        f"chDB insert spool {path.parent} is not writable: {exc}; free space "
                        "there or set TMPDIR to a larger directory",
                        retry_after=5.0,
                    ) from None
                self._remove_spool()
                self._spool_on_disk = True
        raise AssertionError("unreachable")  # pragma: no cover

    def _spool(self) -> Path:
        if self._spool_dir is None or not self._spool_dir.is_dir():
            shm = Path("/dev/shm")  # noqa: S108 - a private mkdtemp directory inside it
            in_memory = shm.is_dir() and os.access(shm, os.W_OK) and not self._spool_on_disk
            self._spool_on_disk = not in_memory
            self._spool_dir = Path(
                tempfile.mkdtemp(prefix="embedguard-chdb-", dir=shm if in_memory else None)
            )
        return self._spool_dir

    def close(self) -> None:
        with self.lock:
            if self._session is not None:
                self._session.close()
                self._session = None
                self.path = None
            if self._spool_dir is not None:
                shutil.rmtree(self._spool_dir, ignore_errors=True)
                self._spool_dir = None


@contextmanager
def _user_files(directory: Path | None) -> Iterator[None]:
    """chDB (ClickHouse >= 26.6) only lets ``deltaLakeLocal`` read under its
    user_files_path, which embedded chDB sets to the *current directory* and
    offers no way to change. When the lake lies outside the current directory,
    the query runs with the current directory at the filesystem root, and the
    previous one is restored right after. Callers hold the engine lock, and
    embedguard's own file paths are absolute, so nothing else depends on the
    current directory meanwhile."""
    if directory is None:
        yield
        return
    cwd = os.getcwd()
    if directory.is_relative_to(cwd):
        yield
        return
    os.chdir(directory.anchor or "/")
    try:
        yield
    finally:
        os.chdir(cwd)


def _quote(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return line[:2000]


_ENGINE = ChdbEngine()


def engine() -> ChdbEngine:
    return _ENGINE
