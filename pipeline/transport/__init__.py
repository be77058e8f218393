"""Event-log transports: one interface (``base.EventLog``), two implementations.

``open_log(url)`` picks one from a log URL:

* ``sqlite:PATH``: ``SqliteEventLog``, the embedded default;
* ``kafka://HOST:PORT[,HOST:PORT...][?topic=NAME&partitions=N]``: ``KafkaEventLog``.
"""

from __future__ import annotations

import os
from typing import Any

from pipeline.transport.base import AppendRecord, EventLog, LogReader, LogRecord, Position
from pipeline.transport.errors import (
    EventLogError,
    InvalidLogUrl,
    LogCorrupt,
    LogFull,
    LogUnavailable,
    TruncatedLog,
)

__all__ = [
    "AppendRecord",
    "EventLog",
    "EventLogError",
    "InvalidLogUrl",
    "LogCorrupt",
    "LogFull",
    "LogReader",
    "LogRecord",
    "LogUnavailable",
    "Position",
    "TruncatedLog",
    "open_log",
]


def open_log(url: str, **options: Any) -> EventLog:
    """An unstarted log for ``url``; ``await log.start()`` (or ``async with``)."""
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:").removeprefix("//")
        if not path:
            raise InvalidLogUrl(
                "log URL 'sqlite:' names no file; use sqlite:PATH, e.g. sqlite:data/events.db"
            )
        from pipeline.transport.sqlite import SqliteEventLog

        return SqliteEventLog(path, **options)
    if url.startswith("kafka://"):
        from pipeline.transport.kafka import KafkaEventLog, parse_kafka_url

        bootstrap, topic, parsed = parse_kafka_url(url)
        # The password never goes in a URL (parse_kafka_url refuses it).
        password = os.environ.get("EMBEDGUARD_KAFKA_SASL_PASSWORD")
        if password and "sasl_password" not in options:
            options["sasl_password"] = password
        return KafkaEventLog(bootstrap, topic=topic, **{**parsed, **options})
    raise InvalidLogUrl(
        f"log URL {url!r} is not sqlite:PATH or kafka://HOST:PORT; "
        "set --log or EMBEDGUARD_LOG to one of those"
    )
