"""What the approvals service's log tail costs per record of gateway traffic,
before and after it skips PolicyDecided / RequestForwarded records that carry no
approval, ticket or grant, as ratios measured in one run (in process, no I/O).

Every request a gateway records writes RequestReceived, PolicyDecided,
RequestForwarded and ResponseRecorded; the tail of every gateway reads all of
them. Before, it skipped only types the fold ignores (from the single-object
fingerprint) and decoded every PolicyDecided and RequestForwarded in full; now it
also skips those two when their trailing optional ids are null (the last bytes
of the record), which is almost always.

* before: ``ApprovalService._apply`` with the type-only filter;
* after: ``ApprovalService._apply`` as it is;
* reference: decoding every record (what a fold without any filter costs).

Both folds must end in the same state (checked).

    .venv/bin/python bench/approvals_tail.py [--requests 20000] [--with-ids 0.02] [--rounds 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from capture.approvals.service import _FOLDED, ApprovalService  # noqa: E402
from pipeline.events import decode_records  # noqa: E402
from pipeline.transport.base import LogRecord  # noqa: E402
from pipeline.transport.sqlite import SqliteEventLog  # noqa: E402
from schemas.chain import EventStamper  # noqa: E402
from schemas.codec import SINGLE_OBJECT_MAGIC, default_codec  # noqa: E402
from schemas.models import (  # noqa: E402
    Header,
    Obligation,
    Operation,
    OperationDecision,
    PolicyDecided,
    RequestForwarded,
    RequestReceived,
    ResponseRecorded,
)

console = Console(width=120)


class TypeOnlyTail(ApprovalService):
    """The tail as it was: skip by type only."""

    def _relevant(self, value: bytes) -> bool:
        if value[:2] != SINGLE_OBJECT_MAGIC or len(value) < 10:
            return True
        writer = self._codec.schemas.by_fingerprint.get(value[2:10])
        return writer is None or writer.type_name in _FOLDED


def traffic(requests: int, with_ids: float, seed: int = 7) -> list[LogRecord]:
    rng = random.Random(seed)
    st = EventStamper("bench-tail")
    body = b'{"points":[' + b",".join(b'{"id":%d,"vector":[0.1,0.2,0.3]}' % i
                                     for i in range(20)) + b"]}"
    ops = [Operation(action="write", collection="docs", ids=[str(i) for i in range(20)],
                     vector_count=20)]
    out: list[LogRecord] = []
    for i in range(requests):
        sid, rid = f"s{i % 64}", f"r{i}"
        ids = rng.random() < with_ids
        evs = [
            st.stamp(RequestReceived, session_id=sid, request_id=rid, method="PUT", host="gw",
                     path="/collections/docs/points",
                     headers=[Header(name="content-type", value="application/json")],
                     body=body, body_sha256="a" * 64, body_size=len(body), product="qdrant",
                     operations=ops),
            st.stamp(PolicyDecided, session_id=sid, request_id=rid, outcome="allow",
                     matched_rules=["writers"], reasons=["writers may write docs"],
                     obligations=[Obligation(kind="mask", params_json='{"fields":["email"]}')],
                     operation_decisions=[OperationDecision(index=0, outcome="allow",
                                                            rule_id="writers", reason="ok")],
                     policy_sha256="p" * 64, grant_id=f"g-{i % 3}" if ids else None,
                     ticket_id=None),
            st.stamp(RequestForwarded, session_id=sid, request_id=rid,
                     upstream="http://qdrant:6333", credential_ref="env:QDRANT_KEY",
                     grant_id=f"g-{i % 3}" if ids else None, injected_filter=rng.random() < .3),
            st.stamp(ResponseRecorded, session_id=sid, request_id=rid, status=200,
                     body=b'{"status":"ok"}', body_sha256="b" * 64, body_size=15,
                     original_body_sha256="b" * 64, latency_us=900),
        ]
        for ev in evs:
            out.append(LogRecord(0, len(out), sid.encode(), ev.wire, 0))
    return out


def state(svc: ApprovalService) -> Any:
    book = svc.book
    refs = sorted(book._uses)  # noqa: SLF001 - the bench compares the whole fold
    return ([book.uses(r) for r in refs], refs, book.approvals(), book.grants())


def time_apply(cls: type[ApprovalService], records: list[LogRecord]) -> tuple[float, Any]:
    svc = cls(SqliteEventLog(Path("/nonexistent/bench.db")), _no_emit)
    t0 = time.perf_counter()
    svc._apply(records)  # noqa: SLF001
    return time.perf_counter() - t0, state(svc)


async def _no_emit(_: Any) -> None:  # pragma: no cover - never called
    raise AssertionError("the bench appends nothing")


def main(requests: int, with_ids: float, rounds: int) -> None:
    records = traffic(requests, with_ids)
    codec = default_codec()
    before: list[float] = []
    after: list[float] = []
    full: list[float] = []
    for _ in range(rounds):  # interleaved, so all three see the same machine load
        t, s_before = time_apply(TypeOnlyTail, records)
        before.append(t)
        t, s_after = time_apply(ApprovalService, records)
        after.append(t)
        t0 = time.perf_counter()
        decode_records(records, codec)
        full.append(time.perf_counter() - t0)
        assert s_before == s_after, "the two tails folded different states"
    b, a, f = (statistics.median(x) for x in (before, after, full))
    n = len(records)
    table = Table("tail over gateway traffic", "records", "µs / record", "ratio to before")
    table.add_row("decode every record (reference)", str(n), f"{f / n * 1e6:.2f}", f"{f / b:.2f}×")
    table.add_row("before: skip by type", str(n), f"{b / n * 1e6:.2f}", "1.00×")
    table.add_row("after: skip by type and trailing nulls", str(n), f"{a / n * 1e6:.2f}",
                  f"{a / b:.3f}×")
    console.print(table)
    console.print(f"{requests} requests, {with_ids:.0%} under a grant; median of {rounds} rounds; "
                  "same folded state before and after: yes")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--with-ids", type=float, default=0.02)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    main(args.requests, args.with_ids, args.rounds)
