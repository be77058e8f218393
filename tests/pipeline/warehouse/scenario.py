"""A recorded-like scenario built with the real models and EventStamper: what a
gateway writes for a few sessions (writes with ids, a delete by filter, a
search, a blocked request, a held write released by a four-eyes approval, a
checkpoint). Returns log records as a transport would deliver them."""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.transport.base import LogRecord
from pipeline.warehouse.clickhouse import ChdbWarehouse
from schemas.chain import EventStamper, StampedEvent
from schemas.models import (
    ActionClass,
    ApprovalDecided,
    ApprovalRequested,
    Checkpoint,
    GrantIssued,
    Header,
    IdentityResolved,
    MaskedField,
    Operation,
    PolicyDecided,
    RequestBlocked,
    RequestForwarded,
    RequestReceived,
    ResponseRecorded,
    SessionEnded,
    SessionStarted,
)

T0 = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Scenario:
    events: list[StampedEvent]

    def records(self, partition: int = 0, start: int = 0) -> list[LogRecord]:
        return [
            LogRecord(
                partition,
                start + i,
                ev.event.envelope.session_id.encode(),
                ev.wire,
                int(ev.event.envelope.occurred_at.timestamp() * 1000),
            )
            for i, ev in enumerate(self.events)
        ]


class _Builder:
    def __init__(self, gateway: str = "gw-1") -> None:
        self.st = EventStamper(gateway)
        self.out: list[StampedEvent] = []
        self.t = T0

    def tick(self, ms: int = 5) -> datetime:
        self.t += timedelta(milliseconds=ms)
        return self.t

    def add(self, cls: type, sid: str, rid: str | None = None, **body: object) -> None:
        self.out.append(
            self.st.stamp(cls, session_id=sid, request_id=rid, occurred_at=self.tick(), **body)
        )

    def session(self, sid: str, subject: str, rid: str) -> None:
        self.add(
            SessionStarted,
            sid,
            subject=subject,
            issuer="https://idp.test",
            client_address="127.0.0.1",
            token_id=f"tok-{subject}",
            user_agent="qdrant-client/1.9",
        )
        self.add(
            IdentityResolved,
            sid,
            rid,
            subject=subject,
            issuer="https://idp.test",
            groups=["ml-writers"] if subject != "carol" else ["approvers"],
            auth_method="bearer",
            client_address="127.0.0.1",
        )

    def request(
        self,
        sid: str,
        rid: str,
        ops: list[Operation],
        body: bytes,
        *,
        outcome: str = "allow",
        response: bytes | None = b'{"status":"ok"}',
        approval_id: str | None = None,
        status: int = 200,
        path: str = "/collections/docs/points",
    ) -> None:
        self.add(
            RequestReceived,
            sid,
            rid,
            method="PUT",
            host="gw.test",
            path=path,
            headers=[Header(name="content-type", value="application/json")],
            body=body,
            body_sha256=sha(body),
            body_size=len(body),
            content_type="application/json",
            product="qdrant",
            operations=ops,
        )
        self.add(
            PolicyDecided,
            sid,
            rid,
            outcome=outcome,
            matched_rules=["writers-may-write"],
            reasons=["group ml-writers may write docs"],
            policy_sha256="ab" * 32,
            ticket_id="CHG-42" if approval_id else None,
        )
        if outcome == "deny":
            self.add(
                RequestBlocked,
                sid,
                rid,
                status=403,
                error="policy_denied",
                reason="no rule allows delete on docs",
                stage="policy",
            )
            return
        self.add(
            RequestForwarded,
            sid,
            rid,
            upstream="http://127.0.0.1:6333",
            credential_ref="qdrant-main",
            approval_id=approval_id,
        )
        if response is not None:
            self.add(
                ResponseRecorded,
                sid,
                rid,
                status=status,
                headers=[Header(name="content-type", value="application/json")],
                body=response,
                body_sha256=sha(response),
                body_size=len(response),
                original_body_sha256=sha(response + b"orig"),
                masked_fields=[MaskedField(path="result.payload.email", kind="redact")],
                result_ids=["p-1"],
                latency_us=1500,
            )


def build_scenario(sessions: int = 3, gateway: str = "gw-1") -> Scenario:
    """``sessions`` × (alice, bob) sessions plus one approval flow and a checkpoint."""
    b = _Builder(gateway)
    for n in range(sessions):
        for subject in ("alice", "bob"):
            sid = f"s-{subject}-{n}"
            rid = f"r-{subject}-{n}"
            b.session(sid, subject, f"{rid}-a")
            b.request(
                sid,
                f"{rid}-a",
                [
                    Operation(
                        action=ActionClass.WRITE,
                        collection="docs",
                        ids=[f"p-{n}-1", f"p-{n}-2"],
                        vector_count=2,
                    )
                ],
                b'{"points":[{"id":"p-%d-1","payload":{"text":"needle-%s"}}]}'
                % (n, subject.encode()),
            )
            b.request(
                sid,
                f"{rid}-b",
                [Operation(action=ActionClass.SEARCH, collection="docs", limit=5)],
                b'{"vector":[0.1,0.2],"limit":5}',
                path="/collections/docs/points/search",
            )
            if subject == "bob":
                b.request(
                    sid,
                    f"{rid}-c",
                    [
                        Operation(
                            action=ActionClass.DELETE,
                            collection="docs",
                            ids_known=False,
                            filter_present=True,
                            filter_sha256="cd" * 32,
                        )
                    ],
                    b'{"filter":{"must":[{"key":"k","match":{"value":1}}]}}',
                    outcome="deny",
                    path="/collections/docs/points/delete",
                )
            b.add(SessionEnded, sid, reason="idle", request_count=2, started_at=T0)
    # a held write released by carol's approval
    sid, rid = "s-dave-0", "r-dave-held"
    b.session(sid, "dave", rid)
    write = [Operation(action=ActionClass.WRITE, collection="prod", ids=["p-x"], vector_count=1)]
    b.add(
        ApprovalRequested,
        sid,
        rid,
        approval_id="apr-1",
        kind="request",
        requester_subject="dave",
        requester_issuer="https://idp.test",
        operations=write,
        request_sha256="ef" * 32,
        approver_groups=[["approvers"]],
        expires_at=T0 + timedelta(hours=1),
        mode="hold",
        reason="prod write",
    )
    b.add(
        ApprovalDecided,
        "s-carol-0",
        None,
        approval_id="apr-1",
        decision="approve",
        approver_subject="carol",
        approver_issuer="https://idp.test",
        reason="looks right",
    )
    b.add(
        GrantIssued,
        "s-carol-0",
        None,
        grant_id="g-1",
        kind="ticket",
        approval_id="apr-1",
        subject="dave",
        actions=["write"],
        collections=["prod"],
        valid_from=T0,
        valid_until=T0 + timedelta(hours=2),
        issued_by="carol",
    )
    b.request(sid, rid, write, b'{"points":[{"id":"p-x"}]}', approval_id="apr-1")
    b.add(
        Checkpoint,
        "gw-1/system",
        origin="embedguard/gw-1",
        tree_size=len(b.out),
        root_hash="12" * 32,
        signed_note="embedguard/gw-1\n42\nroot\n\n— sig",
        key_id="k1",
    )
    return Scenario(b.out)


#: Strings that ClickHouse's "escaped" query-parameter format would decode or
#: refuse if a backend passed them on as they are: backslash sequences as text,
#: a trailing backslash, a real tab, newline, carriage return and NUL, quotes,
#: something that looks like a placeholder, and non-ASCII text.
HOSTILE_TEXTS = [
    "C:\\docs\\new.txt",
    "dom\\alice",
    "tail\\",
    "two\\\\backslashes",
    "as text: \\n \\t \\0 \\x41 \\N \\' \\\"",
    "tab\there",
    "new\nline",
    "cr\rhere",
    "nul\x00byte",
    'quote\'s "double" `back`',
    "{p:String} {x}",
    "ünïcödé ✓ 😀",
]


def hostile_body(text: str) -> bytes:
    return b"<" + text.encode() + b">"


def build_hostile_scenario() -> Scenario:
    """One session per HOSTILE_TEXTS value ``s-hostile-N``, whose subject, the
    point id it writes (collection ``files``) and its request body (in
    ``hostile_body``) are that value."""
    b = _Builder("gw-hostile")
    for n, text in enumerate(HOSTILE_TEXTS):
        sid, rid = f"s-hostile-{n}", f"r-hostile-{n}"
        b.session(sid, text, rid)
        write = Operation(action=ActionClass.WRITE, collection="files", ids=[text], vector_count=1)
        b.request(sid, rid, [write], hostile_body(text), path="/collections/files/points")
    return Scenario(b.out)


_CHDB_DIR: Path | None = None


def shared_chdb_dir() -> Path:
    """chDB allows one data directory per process, so every test of a session
    shares one; tests keep apart by database name (``unique_database``)."""
    global _CHDB_DIR
    if _CHDB_DIR is None:
        _CHDB_DIR = Path(tempfile.mkdtemp(prefix="embedguard-chdb-"))
        atexit.register(shutil.rmtree, _CHDB_DIR, True)
    return _CHDB_DIR


def unique_database() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def chdb_warehouse() -> ChdbWarehouse:
    return ChdbWarehouse(str(shared_chdb_dir()), database=unique_database())


def renumber(records: list[LogRecord], partition: int = 0, start: int = 0) -> list[LogRecord]:
    return [
        LogRecord(partition, start + i, r.key, r.value, r.timestamp_ms)
        for i, r in enumerate(records)
    ]
