"""Profile and time ``Warehouse.write_batch`` end to end on the gateway's event mix.

The records come from tests/pipeline/warehouse/scenario.py (sessions, identity,
requests with bodies and operations, policy decisions, forwarded/recorded
responses with bodies, a blocked request, a four-eyes approval, a grant and a
checkpoint), repeated under fresh session ids until ``--events`` is reached.

Throughput cells (each in its own process: a chDB data directory is locked to
one process) write all records with ``write_batch`` in batches of 1k and 10k:

* ``before``: the warehouse code of ``--before REV`` (pipeline/ and schemas/
  exported with ``git archive`` into a temporary directory and imported first),
  by default the last commit before the load-throughput work of issue 5's
  second round (``d0f9a43``; the first round compared against ``a5b31b3``);
* ``model``: today's writer with the model projection
  (``projection.project_tables_reference``: pydantic models, row dicts, Arrow),
  in this process only;
* ``serial``: today's warehouse with ``EMBEDGUARD_PROJECT_WORKERS=0`` (the
  projection in the writing process only);
* ``now``: what the warehouse runs now (``ParallelProjector``: large batches are
  projected on every core, see pipeline/warehouse/parallel.py).

All run in the same invocation, one process per cell, in alternating order, so
the printed ratios do not depend on how loaded the machine is.

    .venv/bin/python bench/pipeline_profile.py [--events 20000] [--before REV]
    .venv/bin/python bench/pipeline_profile.py --profile   # cProfile the projection
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
#: HEAD when the second round of load-throughput work started
BEFORE = "d0f9a43"
MODES = ("before", "model", "serial", "now")


def records(events: int) -> list[Any]:
    from tests.pipeline.warehouse.scenario import build_scenario, renumber

    out: list[Any] = []
    gw = 0
    while len(out) < events:
        out.extend(build_scenario(sessions=20, gateway=f"gw-{gw}").records())
        gw += 1
    return renumber(out[:events])


def _before_first() -> None:
    """In a 'before' cell, import pipeline/ and schemas/ from the exported tree."""
    import os

    before = os.environ.get("EMBEDGUARD_BENCH_BEFORE")
    if before:
        sys.path.insert(0, before)


def _warehouse(kind: str, path: Path, mode: str) -> Any:
    from pipeline.warehouse import projection
    from pipeline.warehouse.clickhouse import ChdbWarehouse
    from pipeline.warehouse.lake import LakeWarehouse

    wh: Any = LakeWarehouse(path) if kind == "lake" else ChdbWarehouse(str(path))
    if mode == "model":
        wh._project = projection.project_tables_reference  # the model path, same writer
    return wh


def _is_before_code(module: Any) -> bool:
    import os

    before = os.environ.get("EMBEDGUARD_BENCH_BEFORE")
    return bool(before) and str(module.__file__).startswith(str(before))


def cell(kind: str, mode: str, batch: int, events: int) -> dict[str, Any]:
    _before_first()
    import pipeline.warehouse.projection as projection
    from pipeline.warehouse.base import LoadBatch

    if _is_before_code(projection) != (mode == "before"):
        raise SystemExit(f"{mode} cell imported the wrong code: {projection.__file__}")

    recs = records(events)
    # chDB may still merge parts in the background while the directory goes
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        wh = _warehouse(kind, Path(tmp) / "wh", mode)
        wh.migrate()
        # One-time costs (pyarrow's time zone database, chDB/Delta first writes,
        # starting projection workers) are paid before the clock starts, on
        # another source.
        wh.write_batch(LoadBatch("sqlite:warmup", 0, records(2_500)))
        batches = [
            LoadBatch("sqlite:bench", 0, recs[i : i + batch]) for i in range(0, len(recs), batch)
        ]
        cpu0, start = _cpu_seconds(), time.perf_counter()
        written = sum(wh.write_batch(b).events for b in batches)
        elapsed = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu0
        n = int(
            wh.query("SELECT count() AS n FROM {events} WHERE source = 'sqlite:bench'", {})[0]["n"]
        )
        wh.close()
        if kind == "chdb":
            from pipeline.warehouse._chdb import engine

            engine().close()
    if written != events or n != events:
        raise SystemExit(f"{kind}/{mode}: wrote {written}, counted {n}, expected {events}")
    return {
        "events": events,
        "seconds": elapsed,
        "eps": events / elapsed,
        "cpu_us_per_event": cpu / events * 1e6,
    }


def _cpu_seconds() -> float:
    """CPU time of this process (every thread: chDB's, delta-rs's) plus its
    projection workers: unlike wall time, it barely depends on what else the
    machine runs."""
    import os

    total = time.process_time()
    try:
        from pipeline.warehouse import parallel
    except ImportError:  # the 'before' code has no workers
        return total
    tick = os.sysconf("SC_CLK_TCK")
    for worker in parallel._POOL._idle:
        try:
            fields = Path(f"/proc/{worker.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def profile(events: int) -> None:
    from pipeline.warehouse import projection
    from pipeline.warehouse.base import LoadBatch
    from schemas.codec import default_codec

    batch = LoadBatch("sqlite:bench", 0, records(events))
    codec = default_codec()
    at = datetime.now(UTC)
    for name in ("project_tables_reference", "project_batch_columnar"):
        fn = getattr(projection, name)
        fn(batch, codec, at)  # warm caches
        prof = cProfile.Profile()
        start = time.perf_counter()
        prof.enable()
        fn(batch, codec, at)
        prof.disable()
        print(f"== {name}: {events / (time.perf_counter() - start):,.0f} events/s (profiled)")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(18)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--profile", action="store_true", help="cProfile the projection only")
    ap.add_argument("--kinds", default="lake,chdb")
    ap.add_argument("--batches", default="1000,10000")
    ap.add_argument("--before", default=BEFORE, help="git revision of the 'before' code")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell (best is kept)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--cell", nargs=3, metavar=("KIND", "MODE", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        kind, mode, batch = args.cell
        print(json.dumps(cell(kind, mode, int(batch), args.events)))
        return
    if args.profile:
        profile(args.events)
        return
    with tempfile.TemporaryDirectory() as before_dir:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.before, "pipeline", "schemas"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", before_dir], input=archive, check=True)
        results = run_all(args, Path(before_dir))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def run_all(args: argparse.Namespace, before_dir: Path) -> list[dict[str, Any]]:
    print(
        f"write_batch, {args.events} events of the gateway mix, one process per cell; "
        f"before = {args.before}"
    )
    head = f"{'warehouse':10} {'batch':>6}" + "".join(f" {m + ' ev/s':>12}" for m in MODES)
    head += f" {'now/before':>11} {'now/serial':>11}  CPU µs/event: "
    print(head + " ".join(f"{m:>7}" for m in MODES) + f" {'before/now':>11}")
    out = []
    for kind in args.kinds.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            res: dict[str, float] = {}
            cpu: dict[str, float] = {}
            for _ in range(args.repeat):
                for mode in MODES:
                    import os

                    env = {**os.environ}
                    env.pop("EMBEDGUARD_BENCH_BEFORE", None)
                    if mode == "before":
                        env["EMBEDGUARD_BENCH_BEFORE"] = str(before_dir)
                    if mode in ("model", "serial"):
                        env["EMBEDGUARD_PROJECT_WORKERS"] = "0"
                    done = subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--events",
                            str(args.events),
                            "--cell",
                            kind,
                            mode,
                            str(batch),
                        ],
                        capture_output=True,
                        text=True,
                        check=False,
                        env=env,
                    )
                    if done.returncode:
                        raise SystemExit(done.stderr[-3000:])
                    got = json.loads(done.stdout.strip().splitlines()[-1])
                    res[mode] = max(res.get(mode, 0.0), got["eps"])
                    cpu[mode] = min(cpu.get(mode, float("inf")), got["cpu_us_per_event"])
            print(
                f"{kind:10} {batch:>6}"
                + "".join(f" {res[m]:>12,.0f}" for m in MODES)
                + f" {res['now'] / res['before']:>10.2f}x {res['now'] / res['serial']:>10.2f}x"
                + "                "
                + " ".join(f"{cpu[m]:>7.0f}" for m in MODES)
                + f" {cpu['before'] / cpu['now']:>10.2f}x"
            )
            out.append(
                {
                    "warehouse": kind,
                    "batch": batch,
                    **res,
                    **{f"cpu_us_{m}": round(v, 1) for m, v in cpu.items()},
                }
            )
    return out


if __name__ == "__main__":
    main()
