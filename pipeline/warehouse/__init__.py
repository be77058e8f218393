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


def _options(query: str, allowed: set[str], url_kind: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep or key not in allowed:
            raise WarehouseError(
                f"{url_kind} URLs take {', '.join(sorted(allowed))} as options, not {key!r}"
            )
        opts[key] = value
    return opts


def _retention(opts: dict[str, str]) -> int | None:
    raw = opts.get("body_retention_days")
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise WarehouseError(
            f"body_retention_days must be a whole number of days >= 1, not {raw!r}"
        )
    return int(raw)


def open_warehouse(url: str) -> Warehouse:
    """``lake:DIR`` (Delta + chDB reads), ``chdb:DIR`` (MergeTree in this
    process's chDB engine; ``?database=NAME``) or
    ``clickhouse://user:pass@host:8123/db`` (ClickHouse server).

    Every kind takes ``?body_retention_days=N``: request/response bodies older
    than N days are dropped (they are stored apart from events, so hash proofs
    stay intact); without it, bodies are kept."""
    if url.startswith("lake:"):
        from pipeline.warehouse.lake import LakeWarehouse

        path, _, query = url[len("lake:") :].partition("?")
        opts = _options(query, {"body_retention_days"}, "lake:")
        return LakeWarehouse(path, body_retention_days=_retention(opts))
    if url.startswith("chdb:"):
        from pipeline.warehouse.clickhouse import ChdbWarehouse

        path, _, query = url[len("chdb:") :].partition("?")
        opts = _options(query, {"database", "body_retention_days"}, "chdb:")
        return ChdbWarehouse(
            path,
            database=opts.get("database") or "embedguard",
            body_retention_days=_retention(opts),
        )
    if url.startswith(("clickhouse://", "clickhouses://", "http://", "https://")):
        from urllib.parse import urlsplit, urlunsplit

        from pipeline.warehouse.clickhouse import ClickHouseWarehouse

        parts = urlsplit(url)
        opts = _options(parts.query, {"body_retention_days"}, "clickhouse://")
        return ClickHouseWarehouse.from_url(
            urlunsplit(parts._replace(query="")), body_retention_days=_retention(opts)
        )
    raise WarehouseError(
        f"unknown warehouse URL {url.split('@')[-1]!r}: use lake:DIR, chdb:DIR or "
        "clickhouse://user:pass@host:8123/db"
    )
