"""Exceptions raised by event-log transports.

The tree, so callers can catch at the right level::

    EventLogError
    ├── LogUnavailable        the log cannot accept or serve records right now
    │   │                     (unreachable broker, locked or full disk); retry later
    │   └── LogFull           the disk is full; free space, then retry
    ├── LogCorrupt            the log's storage is damaged or not an event log
    ├── TruncatedLog          a reader asked for offsets that no longer exist
    │                         (retention removed them, or the log was replaced)
    └── InvalidLogUrl         a ``--log`` URL that names no known transport
"""

from __future__ import annotations

__all__ = [
    "EventLogError",
    "InvalidLogUrl",
    "LogCorrupt",
    "LogFull",
    "LogUnavailable",
    "TruncatedLog",
]


class EventLogError(Exception):
    """Base class of every event-log error. The message says what to do."""


class LogUnavailable(EventLogError):
    """The log cannot durably accept records now. Nothing was acknowledged."""


class LogFull(LogUnavailable):
    """The disk under the log is full. Nothing was acknowledged."""


class LogCorrupt(EventLogError):
    """The log's storage is damaged, or the file is not an embedguard log."""


class TruncatedLog(EventLogError):
    """A reader's position points before the oldest record the log still holds."""

    def __init__(
        self, message: str, *, requested: int, oldest: int, partition: int | None = None
    ) -> None:
        super().__init__(message)
        self.requested = requested
        self.oldest = oldest
        #: the partition (None: the log's only partition, or unknown)
        self.partition = partition


class InvalidLogUrl(EventLogError, ValueError):
    """A log URL that is neither ``sqlite:PATH`` nor ``kafka://HOST:PORT[,HOST:PORT]``."""
