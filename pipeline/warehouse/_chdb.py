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

import json
import os
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
