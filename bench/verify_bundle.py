"""Evidence bundles at size: `export` and `verify` time per event.

Data: ``--events`` events of one gateway stream, written as a gateway writes a
write request (SessionStarted, RequestReceived with a body, PolicyDecided,
RequestForwarded, ResponseRecorded with a body: five events per session),
covered by one signed checkpoint, loaded into a fresh lake by the warehouse
writer. The whole lake is exported (``replay.export.export_bundle``) and the
bundle verified offline (``replay.verify.verify_bundle``) with pinned keys.

In the same run, for a ratio against a baseline: ``verify`` without the checks
of the tables against the events' bytes (``_check_projections``: the typed
event columns, the request, lineage and approval rows and their derived
columns), i.e. the signatures, hashes, chains and proofs alone.

And ``--before REV``: the export of that revision (``git archive``, run in a
subprocess on the same lake), for data sets of at most ``--before-max`` events.

    .venv/bin/python bench/verify_bundle.py [--events 10000,50000] [--repeat 3]
        [--before c59b3a2~1 --before-max 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.progress import Progress  # noqa: E402


def _lake(root: Path, events: int) -> tuple[str, Any]:
    from pipeline.transport.base import LogRecord
    from pipeline.warehouse.base import LoadBatch
    from pipeline.warehouse.lake import LakeWarehouse
    from replay.verify_core import leaf_hash
    from schemas.chain import EventStamper
    from schemas.codec import default_codec
    from schemas.merkle import root_of
    from schemas.models import Checkpoint
    from schemas.note import CheckpointBody, Signer, checkpoint_origin
    from tests.embedguard.hostile import write_request

    key = Signer.generate("embedguard-gateway-gw-bench")
    st = EventStamper("gw-bench")
    t0 = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    stamped: list[Any] = []
    for i in range(max(1, events // 5)):
        stamped += write_request(st, f"s-{i:06d}", f"r-{i:06d}", f"user-{i % 50}",
                                 f"kb{i % 4}", t0 + timedelta(milliseconds=10 * i))
    codec = default_codec()
    leaves = [leaf_hash(codec.decode(s.wire)) for s in stamped]
    first = str(stamped[0].event.envelope.event_id)
    body = CheckpointBody(checkpoint_origin("gw-bench", first), len(leaves), root_of(leaves))
    stamped.append(st.stamp(
        Checkpoint, session_id="gateway:gw-bench", origin=body.origin,
        tree_size=body.tree_size, root_hash=body.root_hash.hex(), signed_note=body.sign(key),
        key_id=key.verifier.id_text, occurred_at=t0 + timedelta(hours=2)))
    records = [LogRecord(0, n, s.event.envelope.session_id.encode(), s.wire, 0)
               for n, s in enumerate(stamped)]
    wh = LakeWarehouse(root)
    wh.migrate()
    for lo in range(0, len(records), 10_000):
        wh.write_batch(LoadBatch("sqlite:bench-verify", 0, records[lo:lo + 10_000]))
    wh.close()
    return f"lake:{root}", key


def _tree(rev: str) -> Path:
    """``rev``'s files, from ``git archive``."""
    tree = Path(tempfile.mkdtemp(prefix="eg-verify-before-"))
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                          capture_output=True).stdout
    tar = tree / "src.tar"
    tar.write_bytes(data)
    with tarfile.open(tar) as tf:
        tf.extractall(tree, filter="data")
    return tree


_EXPORT_AT = """
import sys, time
from pipeline.warehouse import open_warehouse
from replay.export import ExportFilters, export_bundle
from schemas.note import Signer
t = time.perf_counter()
with open_warehouse(sys.argv[1]) as wh:
    export_bundle(wh, __import__("pathlib").Path(sys.argv[2]), filters=ExportFilters(),
                  signer=Signer.generate("embedguard-export"), tool_version="before")
print(time.perf_counter() - t)
"""


def _export_at(tree: Path, url: str, out: Path) -> float:
    """Seconds the export of ``tree``'s code takes (in its own process; the
    clock starts after its imports)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    res = subprocess.run([sys.executable, "-c", _EXPORT_AT, url, str(out)], cwd=tree, env=env,
                         check=True, capture_output=True, text=True)
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", default="10000,50000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "verify.json")
    ap.add_argument("--before", default=None, help="also time the export of this revision")
    ap.add_argument("--before-max", type=int, default=5000)
    args = ap.parse_args()
    before_tree = _tree(args.before) if args.before else None

    import replay.verify as verify_mod
    from pipeline.warehouse import open_warehouse
    from replay.export import ExportFilters, export_bundle
    from replay.verify import verify_bundle
    from schemas.note import Signer

    results: list[dict[str, Any]] = []
    checks = verify_mod._check_projections
    for n in (int(x) for x in args.events.split(",")):
        tmp = Path(tempfile.mkdtemp(prefix="eg-verify-bench-"))
        t = time.perf_counter()
        url, gw_key = _lake(tmp / "lake", n)
        print(f"{n} events: lake built in {time.perf_counter() - t:.0f} s", flush=True)
        export_key = Signer.generate("embedguard-export")
        times: dict[str, list[float]] = {"export": [], "verify": [], "verify, proofs only": []}
        if before_tree is not None and n <= args.before_max:
            times["export before"] = []
        with Progress(transient=True) as progress:
            task = progress.add_task(f"{n} events", total=args.repeat)
            for r in range(args.repeat):
                out = tmp / f"b{r}.zip"
                t = time.perf_counter()
                with open_warehouse(url) as wh:
                    res = export_bundle(wh, out, filters=ExportFilters(), signer=export_key,
                                        tool_version="bench")
                times["export"].append(time.perf_counter() - t)
                if "export before" in times:
                    times["export before"].append(_export_at(before_tree, url, tmp / f"old{r}.zip"))
                for way in ("verify", "verify, proofs only"):
                    verify_mod._check_projections = (  # type: ignore[assignment]
                        checks if way == "verify" else (lambda *a, **k: None))
                    t = time.perf_counter()
                    report = verify_bundle(out, [gw_key.verifier.vkey],
                                           [export_key.verifier.vkey])
                    times[way].append(time.perf_counter() - t)
                    assert report.ok, [str(f) for f in report.errors[:5]]
                verify_mod._check_projections = checks
                progress.advance(task)
        events = res.row_counts["events"]
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"events": events, "bundle_bytes": out.stat().st_size,
               **{f"{k} s": round(v, 3) for k, v in med.items()},
               **{f"{k} events/s": round(events / v) for k, v in med.items()},
               "verify / proofs only": round(med["verify"] / med["verify, proofs only"], 2)}
        results.append(row)
        print(json.dumps(row, indent=1), flush=True)
    print(f"\n{'events':>8} {'export':>10} {'export before':>14} {'verify':>10} "
          f"{'proofs only':>12} {'verify/proofs':>14}")
    for row in results:
        old = row.get("export before s")
        print(f"{row['events']:>8} {row['export s']:>9.2f}s "
              + (f"{old:>9.2f}s ({old / row['export s']:.0f}x)" if old else f"{'-':>14}")
              + f" {row['verify s']:>9.2f}s {row['verify, proofs only s']:>11.2f}s "
              f"{row['verify / proofs only']:>13.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
