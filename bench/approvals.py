"""What the approval service costs a gateway, as ratios measured in one run.

1. Fold at start: ApprovalService.start() over a log of recorded traffic (a
   few approvals among many requests and responses), against the baseline of
   decoding every record of the same log with a tail reader (what a naive fold
   would do).
2. A decision: ApprovalService.decide() (sync, rules, one durable append,
   read back), against the baseline of one Recorder.emit() of the same event
   (the durable append alone).

    .venv/bin/python bench/approvals.py [--events 20000] [--decisions 200]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from capture.approvals.service import ApprovalService, EmitRequest  # noqa: E402
from pipeline.events import EventPublisher, decode_records  # noqa: E402
from pipeline.transport.sqlite import SqliteEventLog  # noqa: E402
from schemas.chain import EventStamper  # noqa: E402
from schemas.models import ApprovalDecided, Operation, RequestReceived  # noqa: E402
from tests.support.approvals import approval_stack, requirement, who  # noqa: E402

console = Console(width=120)


async def fill(path: Path, events: int) -> None:
    stamper = EventStamper("bench-traffic")
    body = b'{"points":[' + b",".join(b'{"id":%d,"vector":[0.1,0.2,0.3]}' % i
                                     for i in range(40)) + b"]}"
    async with SqliteEventLog(path) as lg:
        pub = EventPublisher(lg)
        batch = []
        for i in range(events):
            batch.append(stamper.stamp(
                RequestReceived, session_id=f"s{i % 50}", request_id=f"r{i}", method="PUT",
                host="gw", path="/collections/docs/points", body=body, body_sha256="a" * 64,
                body_size=len(body), product="qdrant",
                operations=[Operation(action="write", collection="docs", ids=["1", "2"])]))
            if len(batch) == 500:
                await pub.publish(batch)
                batch = []
        if batch:
            await pub.publish(batch)


async def decode_all(path: Path) -> int:
    n = 0
    async with SqliteEventLog(path) as lg:
        reader = lg.tail_reader()
        async with reader:
            while True:
                recs = await reader.poll(max_records=2000, timeout=0)
                if not recs:
                    return n
                n += sum(1 for d in decode_records(recs) if d.decoded is not None)


async def main(events: int, decisions: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="eg-bench-approvals-"))
    path = tmp / "events.db"
    await fill(path, events)
    rows = []

    t0 = time.perf_counter()
    decoded = await decode_all(path)
    base = time.perf_counter() - t0
    async with SqliteEventLog(path) as lg:
        t0 = time.perf_counter()
        async with approval_stack(lg, "bench-a", f"sqlite:{path}"):
            pass
        fold = time.perf_counter() - t0
    rows.append(("fold at start", f"decode all {decoded} records", base, fold))

    ann, dana = who("ann", "Vector-Approve"), who("dana", "Vector-Read")
    async with SqliteEventLog(path) as lg, approval_stack(lg, "bench-b", f"sqlite:{path}") as (
        rec, svc,
    ):
        svc_: ApprovalService = svc
        ids = []
        for _ in range(decisions):
            a = await svc_.request_approval(
                requester=dana, operations=[Operation(action="write", collection="docs")],
                request_sha256="b" * 64, requirement=requirement(expires=timedelta(hours=1)),
                mode="hold", reason=None, blast_radius=None, session_id=None, request_id=None,
                client_address="127.0.0.1")
            ids.append(a.approval_id)
        base = dec = 0.0
        for aid in ids:  # interleaved, so both see the same disk and cache state
            t0 = time.perf_counter()
            await rec.emit(EmitRequest([(ApprovalDecided, {
                "approval_id": aid + "-x", "decision": "approve", "approver_subject": "ann",
                "approver_issuer": ann.issuer, "reason": "bench"})], identity=ann))
            t1 = time.perf_counter()
            await svc_.decide(aid, ann, "approve", "bench")
            t2 = time.perf_counter()
            base += t1 - t0
            dec += t2 - t1
        base /= decisions
        dec /= decisions
    rows.append(("decide()", "Recorder.emit of the event", base, dec))

    table = Table("measure", "baseline", "baseline s", "measured s", "ratio")
    for name, what, b, m in rows:
        table.add_row(name, what, f"{b:.4f}", f"{m:.4f}", f"{m / b:.2f}×")
    console.print(table)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--decisions", type=int, default=200)
    args = ap.parse_args()
    asyncio.run(main(args.events, args.decisions))
