"""Warehouse backends: ``open_warehouse(url)`` picks one by URL scheme."""

from __future__ import annotations

from pipeline.warehouse.base import LoadBatch, Warehouse, WriteResult
from pipeline.warehouse.errors import MigrationError, WarehouseError, WarehouseUnavailable

__all__ = [
    "LoadBatch",
    "MigrationError",
    "Warehouse",
    "WarehouseError",
    "WarehouseUnavailable",
    "WriteResult",
    "open_warehouse",
]


def open_warehouse(url: str) -> Warehouse:
    """``lake:DIR`` (Delta + chDB reads), ``chdb:DIR[?database=NAME]`` (MergeTree
    in this process's chDB engine) or ``clickhouse://user:pass@host:8123/db``
    (ClickHouse server)."""
    if url.startswith("lake:"):
        from pipeline.warehouse.lake import LakeWarehouse

        return LakeWarehouse(url[len("lake:") :])
    if url.startswith("chdb:"):
        from pipeline.warehouse.clickhouse import ChdbWarehouse

        path, _, query = url[len("chdb:") :].partition("?")
        database = query.removeprefix("database=") if query.startswith("database=") else None
        if query and database is None:
            raise WarehouseError(f"chdb: URLs take only ?database=NAME, not {query!r}")
        return ChdbWarehouse(path, database=database or "embedguard")
    if url.startswith(("clickhouse://", "clickhouses://", "http://", "https://")):
        from pipeline.warehouse.clickhouse import ClickHouseWarehouse

        return ClickHouseWarehouse.from_url(url)
    raise WarehouseError(
        f"unknown warehouse URL {url.split('@')[-1]!r}: use lake:DIR, chdb:DIR or "
        "clickhouse://user:pass@host:8123/db"
    )
