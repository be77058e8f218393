"""Evidence holds and the hold-aware body purge: what a large hold costs.

One invocation, so the ratios do not depend on how loaded the machine is. Per
backend (Delta lake, chDB MergeTree) it loads the scenario of
tests/pipeline/warehouse/scenario.py (``--sessions`` × alice/bob sessions with
request and response bodies) and then:

* ``load 1k``: loading 1,000 of those events (the baseline of the hold load);
* ``hold``: loading one hold of ``--held`` body sha256s (half of the real
  bodies plus made-up ones), i.e. ``ceil(held / 4096)`` EvidenceHeld events;
* ``report``: ``retention_report`` (what the next purge would delete and keep);
* ``purge``: ``purge_bodies`` with every body past the retention;
* ``compact``: ``compact()`` of the same warehouse without a retention (the
  baseline the purge is compared with).

It also prints the encoded size of the hold's events.

    .venv/bin/python bench/retention.py [--sessions 1500] [--held 100000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.retention import (  # noqa: E402
    HoldRequest,
    hold_event_bodies,
    purge_bodies,
    retention_report,
)
from pipeline.transport.base import LogRecord  # noqa: E402
from pipeline.warehouse import LoadBatch, Warehouse, open_warehouse  # noqa: E402
from schemas.chain import EventStamper  # noqa: E402
from schemas.models import EvidenceHeld  # noqa: E402
from tests.pipeline.warehouse.scenario import T0, build_scenario, chdb_warehouse  # noqa: E402

SRC = "sqlite:bench-retention"


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def run(wh: Warehouse, records: list[LogRecord], held: int) -> dict[str, float]:
    wh.migrate()
    out: dict[str, float] = {}
    first, rest = records[:1000], records[1000:]
    out["load 1k"] = _timed(lambda: wh.write_batch(LoadBatch(SRC, 0, first)))
    for i in range(0, len(rest), 10_000):
        wh.write_batch(LoadBatch(SRC, 0, rest[i : i + 10_000]))
    shas = [r["sha256"] for r in wh.query("SELECT DISTINCT sha256 FROM {bodies}", {})]
    chosen = shas[: len(shas) // 2] + [f"{i:064x}" for i in range(max(0, held - len(shas) // 2))]
    req = HoldRequest(
        str(uuid.uuid4()), "ab" * 32, "bench.zip", "bench", T0 + timedelta(days=400), chosen, []
    )
    st = EventStamper("bench/holds")
    events = [st.stamp(EvidenceHeld, session_id="hold", **b) for b in hold_event_bodies(req)]
    start = len(records)
    hold = [LogRecord(0, start + i, b"hold", e.wire, 0) for i, e in enumerate(events)]
    out["hold events"] = len(events)
    out["hold bytes max"] = max(len(e.wire) for e in events)
    out["hold bytes total"] = sum(len(e.wire) for e in events)
    out["hold"] = _timed(lambda: wh.write_batch(LoadBatch(SRC, 0, hold)))
    out["bodies"] = len(shas)
    wh.body_retention_days = None  # type: ignore[attr-defined]
    out["compact"] = _timed(wh.compact)
    wh.body_retention_days = 30  # type: ignore[attr-defined]
    now = T0 + timedelta(days=60)
    out["report"] = _timed(lambda: retention_report(wh, now=now))
    result: dict[str, object] = {}
    out["purge"] = _timed(lambda: result.setdefault("r", purge_bodies(wh, now=now)))
    kept = wh.query("SELECT uniqExact(sha256) AS n FROM {bodies}", {})[0]["n"]
    out["kept"] = int(kept)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=1500)
    ap.add_argument("--held", type=int, default=100_000)
    args = ap.parse_args()
    records = build_scenario(sessions=args.sessions).records()
    print(f"{len(records)} events; hold of {args.held} bodies")
    with tempfile.TemporaryDirectory(prefix="eg-bench-ret-") as tmp:
        cells = {
            "lake": open_warehouse(f"lake:{tmp}/lake"),
            "chdb MergeTree": chdb_warehouse(),
        }
        for name, wh in cells.items():
            r = run(wh, records, args.held)
            wh.close()
            print(
                f"{name}: {r['bodies']:.0f} bodies, {r['kept']:.0f} kept (held); hold = "
                f"{r['hold events']:.0f} events, max {r['hold bytes max'] / 1024:.0f} KiB, "
                f"total {r['hold bytes total'] / 1024:.0f} KiB\n"
                f"  hold load / load of 1k events: {r['hold'] / r['load 1k']:.2f}x\n"
                f"  retention report / compact:    {r['report'] / r['compact']:.2f}x\n"
                f"  purge / compact:               {r['purge'] / r['compact']:.2f}x"
            )


if __name__ == "__main__":
    main()
