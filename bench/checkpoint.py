"""What checkpointing adds per event in the gateway: stamping a typical
RequestReceived (validate, Avro-encode, chain hash) is the baseline; on top
of it, feeding the event to the Checkpointer (one leaf SHA-256 plus the
amortised tree hashing) and signing one checkpoint every N events. All
ratios are against the baseline measured in the same run.

    .venv/bin/python bench/checkpoint.py [--events 20000] [--every 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from capture.checkpointer import Checkpointer  # noqa: E402
from schemas.chain import EventStamper, StampedEvent  # noqa: E402
from schemas.merkle import Frontier  # noqa: E402
from schemas.models import RequestReceived  # noqa: E402
from schemas.note import CheckpointBody, Signer, checkpoint_origin  # noqa: E402


def stamp_all(n: int) -> tuple[float, list[StampedEvent]]:
    stamper = EventStamper("bench")
    out = []
    t0 = time.perf_counter()
    for i in range(n):
        out.append(
            stamper.stamp(
                RequestReceived,
                session_id=f"session-{i % 64}",
                request_id=f"req-{i}",
                method="POST",
                host="db",
                path="/collections/docs/points/query",
                body=b'{"query":[0.1,0.2,0.3],"limit":5}',
                body_sha256="ab" * 32,
                body_size=34,
                product="qdrant",
            )
        )
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--every", type=int, default=1000)
    args = ap.parse_args()
    n = args.events
    signer = Signer.generate("bench")

    base, events = stamp_all(n)
    cp = Checkpointer(signer, every=10**9)
    t0 = time.perf_counter()
    for ev in events:  # one event per durable append: the worst case
        cp.observe([ev])
    observe = time.perf_counter() - t0

    f = Frontier()
    for ev in events:
        f.append(ev.wire)
    t0 = time.perf_counter()
    signs = n // args.every
    for _ in range(signs):
        CheckpointBody(checkpoint_origin("bench"), f.size, f.root()).sign(signer)
    sign_total = time.perf_counter() - t0

    table = Table(title=f"checkpointing cost per event ({n} events, one per append)")
    table.add_column("work")
    table.add_column("µs/event", justify="right")
    table.add_column("× baseline", justify="right")
    rows = [
        ("stamp RequestReceived (baseline)", base),
        ("Checkpointer.observe (leaf + tree)", observe),
        (f"signing, 1 per {args.every} events (amortised)", sign_total),
    ]
    for name, secs in rows:
        table.add_row(name, f"{secs / n * 1e6:.2f}", f"{secs / base:.3f}")
    Console(width=120).print(table)
    print(f"checkpoints signed: {signs}")


if __name__ == "__main__":
    main()
