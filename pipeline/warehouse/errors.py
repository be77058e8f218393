"""The warehouse exception tree.

- ``WarehouseError``: anything that went wrong in a warehouse backend.
  - ``WarehouseUnavailable``: the warehouse cannot be reached or is busy right
    now (server down, Delta commit conflict, chDB data dir locked). Retryable:
    ``retry_after`` says how long to wait before trying again.
  - ``MigrationError``: a migration could not be applied, or the warehouse holds
    a schema version this code does not know.
"""

from __future__ import annotations

__all__ = ["MigrationError", "WarehouseError", "WarehouseUnavailable"]


class WarehouseError(Exception):
    """Base class of warehouse errors. Messages never contain credentials."""


class WarehouseUnavailable(WarehouseError):
    """Retryable: the warehouse cannot take the call right now."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MigrationError(WarehouseError):
    """A migration failed or the stored schema version is unknown."""
