"""A small lake whose recorded values look like rich markup and emoji codes:
what any client of the gateway can make it record (its subject, collection
names, point ids, paths, a session name sent as a header). The CLI must show
them as they are, never style them, eat them or crash on them."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.transport.base import LogRecord
from pipeline.warehouse import LoadBatch
from pipeline.warehouse.lake import LakeWarehouse
from schemas.chain import EventStamper
from schemas.models import (
    ActionClass,
    Operation,
    PolicyDecided,
    RequestForwarded,
    RequestReceived,
    ResponseRecorded,
    SessionStarted,
)

__all__ = [
    "COLLECTION",
    "EMOJI_SUBJECT",
    "POINT",
    "SESSION",
    "STYLED_SUBJECT",
    "hostile_lake",
]

#: "[/]" closes nothing: rich raises MarkupError on it
COLLECTION = "x[/]"
#: rich would print it as a bold "rich": display spoofing
STYLED_SUBJECT = "[bold]rich[/]"
#: rich would print a skull instead
EMOJI_SUBJECT = ":skull: mallory"
POINT = "[/x]"
SESSION = "s-[red]evil[/]"

_T0 = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)


def write_request(
    stamper: EventStamper, sid: str, rid: str, subject: str, collection: str, at: datetime
) -> list[Any]:
    body = b'{"points":[{"id":"[/x]","vector":[0.1]}]}'
    ok = b'{"status":"ok"}'
    common: dict[str, Any] = {"session_id": sid}
    out = [
        stamper.stamp(
            SessionStarted,
            subject=subject,
            issuer="https://idp.test",
            client_address="127.0.0.1",
            occurred_at=at,
            **common,
        )
    ]
    steps: list[tuple[type, dict[str, Any]]] = [
        (
            RequestReceived,
            {
                "method": "PUT",
                "host": "q",
                "path": f"/collections/{collection}/points",
                "body": body,
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_size": len(body),
                "product": "qdrant",
                "operations": [
                    Operation(
                        action=ActionClass.WRITE,
                        collection=collection,
                        ids=[POINT],
                        vector_count=1,
                    )
                ],
            },
        ),
        (
            PolicyDecided,
            {
                "outcome": "allow",
                "matched_rules": ["[b]writers[/b]"],
                "reasons": ["[/]"],
                "policy_sha256": "a" * 64,
            },
        ),
        (RequestForwarded, {"upstream": "http://127.0.0.1:6333"}),
        (
            ResponseRecorded,
            {
                "status": 200,
                "body": ok,
                "body_sha256": hashlib.sha256(ok).hexdigest(),
                "body_size": len(ok),
                "original_body_sha256": hashlib.sha256(ok).hexdigest(),
                "latency_us": 900,
            },
        ),
    ]
    for n, (cls, fields) in enumerate(steps, 1):
        out.append(
            stamper.stamp(
                cls,
                request_id=rid,
                occurred_at=at + timedelta(milliseconds=n),
                **fields,
                **common,
            )
        )
    return out


def hostile_lake(root: Path) -> str:
    """Load two sessions with hostile values into a new lake at ``root``: its URL.

    ``SESSION``: ``STYLED_SUBJECT`` writes ``POINT`` to ``COLLECTION``
    (request ``r-evil``); ``s-emoji``: ``EMOJI_SUBJECT`` writes ``POINT`` to
    ``docs`` (request ``r-emoji``)."""
    stamper = EventStamper("gw-hostile")
    stamped = write_request(stamper, SESSION, "r-evil", STYLED_SUBJECT, COLLECTION, _T0)
    stamped += write_request(
        stamper, "s-emoji", "r-emoji", EMOJI_SUBJECT, "docs", _T0 + timedelta(seconds=1)
    )
    return lake_of(root, stamped, "sqlite:hostile-test")


def lake_of(root: Path, stamped: list[Any], source: str) -> str:
    """A new lake at ``root`` holding ``stamped`` (one log partition, in order),
    loaded by the real warehouse writer: its URL."""
    records = [
        LogRecord(
            0,
            offset,
            s.event.envelope.session_id.encode(),
            s.wire,
            int(s.event.envelope.occurred_at.timestamp() * 1000),
        )
        for offset, s in enumerate(stamped)
    ]
    wh = LakeWarehouse(root)
    try:
        wh.migrate()
        wh.write_batch(LoadBatch(source, 0, records))
    finally:
        wh.close()
    return f"lake:{root}"
