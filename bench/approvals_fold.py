"""The warehouse's approval fold: before and after it settled approvals as the
gateways do (pipeline/queries.py ``_APPROVAL_FOLD``), on chDB MergeTree and on
the lake.

Data: ``--events`` synthetic gateway events (tests/pipeline/loader_helpers.py
``chained_records``) plus approval flows from a second gateway stream: an
ApprovalRequested in the requester's session, then votes in the approvers'
sessions (approved, 1- or 2-of-N; denied; expired with an ApprovalExpired;
a duplicate vote; the requester's own vote; a deny after approval; or no vote),
all loaded into a fresh warehouse by the real loader. ``--approvals`` sets how
many flows (default 1 per 100 events, ~2 % of the events).

Ways, each query run alternately in one process, median of ``--repeat``:
- **before**: the fold at ``--before`` (default ``bc2d3a0~1``: every approve
  vote counted, any deny won; read from git, no worktree);
- **now**: today's fold as ``queries.approval``/``approvals_list`` run it on a
  warehouse whose rows all carry the issuers and expired_at (migration 0005):
  no payload fallback;
- **now, rows from before 0005**: the fold with the payload fallback, on a copy
  whose new columns are NULL, as rows loaded before the migration are (it reads
  payloads for the approvals whose settling needs them).

    .venv/bin/python bench/approvals_fold.py [--events 1000000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.progress import Progress  # noqa: E402

from pipeline.transport import AppendRecord, open_log  # noqa: E402
from schemas.chain import EventStamper  # noqa: E402
from schemas.models import (  # noqa: E402
    ActionClass,
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    Operation,
)
from tests.pipeline.loader_helpers import chained_records  # noqa: E402

ISS = "https://idp.test"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def approval_flows(count: int, seed: int = 3) -> Iterator[AppendRecord]:
    """``count`` approvals with their votes, in time order, on their own stream."""
    rng = random.Random(seed)
    st = EventStamper("gw-approvals")
    pending: list[tuple[datetime, int, type, str, str | None, dict[str, Any]]] = []
    at = T0
    for k in range(count):
        at += timedelta(milliseconds=250)
        aid, requester, rid = f"apr-{k:06d}", f"user-{k % 97:02d}", f"req-apr-{k:06d}"
        sid = f"s-{requester}-{k // 50}"
        need = 1 if rng.random() < 0.7 else 2
        expires = at + timedelta(minutes=30)
        pending.append((at, len(pending), ApprovalRequested, sid, rid, dict(
            approval_id=aid, kind="request", requester_subject=requester,
            requester_issuer=ISS,
            operations=[Operation(action=ActionClass.WRITE, collection=f"docs{k % 3}",
                                  ids=[str(k)], vector_count=1)],
            request_sha256=f"{k:064x}", approver_groups=[["Vector-Approve"]],
            min_approvals=need, expires_at=expires, mode="hold", reason="needs approval")))
        t = at
        approvers = [f"approver-{i:02d}" for i in rng.sample(range(40), 4)]

        def vote(who: str, decision: str, aid: str = aid) -> None:
            nonlocal t
            t += timedelta(seconds=rng.randint(1, 120))
            pending.append((t, len(pending), ApprovalDecided, f"s-{who}", None, dict(
                approval_id=aid, decision=decision, approver_subject=who,
                approver_issuer=ISS, reason=f"{who}: {decision}")))

        r = rng.random()
        if r < 0.55:
            if rng.random() < 0.1:
                vote(requester, "approve")  # never counts
            for who in approvers[:need]:
                vote(who, "approve")
            if rng.random() < 0.1:
                vote(approvers[3], "deny")  # after it settled: does not count
        elif r < 0.70:
            vote(approvers[1], "deny")
        elif r < 0.80:
            pending.append((expires, len(pending), ApprovalExpired, sid, rid,
                            dict(approval_id=aid, expired_at=expires)))
        elif r < 0.85:
            vote(approvers[0], "approve")
            vote(approvers[0], "approve")
    for when, _, cls, sid, rid, body in sorted(pending, key=lambda p: (p[0], p[1])):
        stamped = st.stamp(cls, session_id=sid, request_id=rid, occurred_at=when, **body)
        yield AppendRecord(sid.encode(), stamped.wire)


async def _fill(log: Path, events: int, approvals: int) -> int:
    n = 0
    async with open_log(f"sqlite:{log}") as lg:
        for source in (chained_records(events, sessions=20_000), approval_flows(approvals)):
            batch: list[AppendRecord] = []
            for rec in source:
                batch.append(rec)
                if len(batch) == 10_000:
                    await lg.append(batch)
                    n += len(batch)
                    batch = []
            if batch:
                await lg.append(batch)
                n += len(batch)
    return n


def _queries_at(rev: str) -> ModuleType:
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:pipeline/queries.py"],
                          check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="eg-fold-")) / "queries_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("queries_before", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["queries_before"] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--approvals", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--before", default="bc2d3a0~1")
    ap.add_argument("--data", type=Path, default=None, help="keep the data here (reused)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "approvals.json")
    ap.add_argument("--kind", choices=("chdb", "lake"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    approvals = args.approvals if args.approvals is not None else args.events // 100
    data = args.data or Path(tempfile.mkdtemp(prefix="eg-fold-data-"))
    if args.kind:
        _measure(args, data, approvals)
        return
    log = data / "events.db"
    if not (data / "_generated").exists():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        t = time.perf_counter()
        n = asyncio.run(_fill(log, args.events, approvals))
        print(f"generated {n} events ({approvals} approvals) in {time.perf_counter() - t:.0f} s",
              flush=True)
        (data / "_generated").write_text("")
    out: dict[str, Any] = {"events": args.events, "approvals": approvals,
                           "before": args.before, "results": {}}
    for kind in ("chdb", "lake"):  # one chDB data directory per process: one each
        subprocess.run([sys.executable, __file__, "--kind", kind, "--data", str(data),
                        "--events", str(args.events), "--approvals", str(approvals),
                        "--repeat", str(args.repeat), "--before", args.before], check=True)
        out["results"][kind] = json.loads((data / f"result-{kind}.json").read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"\nwritten {args.out}")


def _measure(args: argparse.Namespace, data: Path, approvals: int) -> None:
    from bench.pipeline import _load
    from pipeline import queries as now
    from pipeline.warehouse import open_warehouse

    kind = args.kind
    before = _queries_at(args.before)
    if not (data / f"_loaded-{kind}").exists():
        shutil.rmtree(data / kind, ignore_errors=True)
        t = time.perf_counter()
        _load(f"sqlite:{data / 'events.db'}", f"{kind}:{data / kind}", 10_000)
        print(f"loaded {kind} in {time.perf_counter() - t:.0f} s", flush=True)
        (data / f"_loaded-{kind}").write_text("")
    # "now" is what queries.approval/approvals_list pick for a warehouse whose
    # rows all carry the 0005 columns; "rows from before 0005" the fold with
    # the payload fallback, which they pick while such rows exist
    columns = type("Columns", (), {"APPROVALS_LIST": now.APPROVALS_LIST_FROM_COLUMNS,
                                   "APPROVAL": now.APPROVAL_FROM_COLUMNS})
    cases = {
        "approvals_list": lambda q: (q.APPROVALS_LIST.sql,
                                     {"status": "", "limit": 100, "offset": 0}),
        "approvals_list pending": lambda q: (q.APPROVALS_LIST.sql,
                                             {"status": "pending", "limit": 100, "offset": 0}),
        "approval(id)": lambda q: (q.APPROVAL.sql, {"approval_id": "apr-000123"}),
    }
    ways = {"before": before, "now": columns, "now, rows from before 0005": now}
    wh = open_warehouse(f"{kind}:{data / kind}")
    nulled: Any = wh
    if kind == "chdb":
        # the pre-0005 rows in a second database of the same chDB directory
        db = f"{wh.db}_nulled"  # type: ignore[attr-defined]
        wh._command(f"DROP DATABASE IF EXISTS {db}")  # type: ignore[attr-defined]
        wh._command(f"CREATE DATABASE {db}")  # type: ignore[attr-defined]
        for table in ("events", "approvals"):
            wh._command(f"CREATE TABLE {db}.{table} AS {wh.db}.{table}")  # type: ignore[attr-defined]
            wh._command(f"INSERT INTO {db}.{table} SELECT * FROM {wh.db}.{table}")  # type: ignore[attr-defined]
        wh._command(f"ALTER TABLE {db}.approvals UPDATE requester_issuer = NULL, "  # type: ignore[attr-defined]
                    "approver_issuer = NULL, expired_at = NULL WHERE 1 "
                    "SETTINGS mutations_sync = 2")
    else:
        from deltalake import DeltaTable

        copy = data / "lake-nulled"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(data / kind, copy)
        DeltaTable(str(copy / "approvals")).update(updates={
            c: "NULL" for c in ("requester_issuer", "approver_issuer", "expired_at")})
        nulled = open_warehouse(f"lake:{copy}")

    def run(way: str, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        if way != "now, rows from before 0005":
            return wh.query(sql, params)
        if kind == "chdb":
            db = f"{wh.db}_nulled"  # type: ignore[attr-defined]
            sql = sql.replace("{approvals}", f"{db}.approvals").replace("{events}",
                                                                        f"{db}.events")
        return nulled.query(sql, params)  # type: ignore[no-any-return]

    rows = {}
    for way, q in ways.items():
        sql, params = cases["approvals_list"](q)
        rows[way] = run(way, sql, {**params, "limit": 10_000})
    assert len(rows["before"]) == len(rows["now"]) == approvals, (len(rows["now"]), approvals)
    assert rows["now"] == rows["now, rows from before 0005"]
    differ = sum(a["status"] != b["status"] for a, b in zip(
        sorted(rows["before"], key=lambda r: r["approval_id"]),
        sorted(rows["now"], key=lambda r: r["approval_id"]), strict=True))
    res: dict[str, dict[str, list[float]]] = {}
    with Progress(transient=True) as progress:
        task = progress.add_task(f"{kind}: timing", total=args.repeat * len(cases))
        for _ in range(args.repeat):
            for case, make in cases.items():
                for way, q in ways.items():
                    sql, params = make(q)
                    t = time.perf_counter()
                    run(way, sql, params)
                    res.setdefault(case, {}).setdefault(way, []).append(time.perf_counter() - t)
                progress.advance(task)
    med = {c: {w: statistics.median(v) * 1000 for w, v in d.items()} for c, d in res.items()}
    print(f"\n{kind}: {approvals} approvals among {args.events} events; "
          f"{differ} settle differently now than before")
    print(f"{'query':<24}" + "".join(f"{w:>30}" for w in ways) + "   now/before")
    for case, d in med.items():
        print(f"{case:<24}" + "".join(f"{d[w]:>27.1f} ms" for w in ways)
              + f"   {d['now'] / d['before']:.2f}x")
    (data / f"result-{kind}.json").write_text(json.dumps(
        {"status_changed": differ, "median_ms": med}, indent=1))
    wh.close()
    if nulled is not wh:
        nulled.close()


if __name__ == "__main__":
    main()
