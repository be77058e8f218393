"""How fast a decision releases a held request, as ratios measured in one run.

Two real `embedguard gateway` processes share one SQLite log in front of the
recording upstream (tests/support/upstream.py), with tokens from the dev issuer.

* baseline: one allowed write through gateway A (client round trip);
* release, same gateway: a held write on A, decided through A's control API;
  time from the decision's answer to the held client's answer;
* release, across gateways: the same, decided through B's control API, so the
  decision reaches A only through the log (A's tail polls every 0.2 s).

    .venv/bin/python bench/approval_hold.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from capture.devidp import mint_token, serve  # noqa: E402
from tests.support.approval_e2e import decide, wait_for  # noqa: E402
from tests.support.gateway import gateway_process  # noqa: E402
from tests.support.upstream import recording_upstream  # noqa: E402

POLICY = """\
version: 1
approvers: {groups_any_of: [[Vector-Approve]], expires_after: 30m}
rules:
  - id: admin
    effect: allow
    subjects: {groups: [Vector-Admin]}
    actions: [write]
    collections: ["*"]
  - id: ds-change
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write]
    collections: ["*"]
"""
PATH = "/collections/docs/points?wait=true"


def next_approval(log_url: str, seen: set[str], held: concurrent.futures.Future[Any]) -> str:
    def pick(evs: list[Any]) -> str | None:
        for d in evs:
            e = d.event
            if e.envelope.type == "ApprovalRequested" and e.approval_id not in seen:
                return str(e.approval_id)
        return None

    aid: str = wait_for(log_url, pick, client=held, what="ApprovalRequested")
    seen.add(aid)
    return aid


def write(url: str, token: str, i: int) -> tuple[int, float]:
    body = {"points": [{"id": i, "vector": [0.1, 0.2], "payload": {"n": i}}]}
    r = httpx.put(f"{url}{PATH}", json=body, headers={"Authorization": f"Bearer {token}"},
                  timeout=120, trust_env=False)
    return r.status_code, time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        idp = serve("127.0.0.1", 0, tmp / "idp")
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY)
        log_url = f"sqlite:{tmp / 'shared.db'}"
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        try:
            with (
                recording_upstream() as up,
                gateway_process(tmp / "a", upstream=up.url, kind="qdrant", policy=policy,
                                issuer=idp.issuer_url, log_url=log_url) as a,
                gateway_process(tmp / "b", upstream=up.url, kind="qdrant", policy=policy,
                                issuer=idp.issuer_url, log_url=log_url) as b,
                concurrent.futures.ThreadPoolExecutor(2) as pool,
            ):
                admin = mint_token(idp.issuer_url, "root", ["Vector-Admin"])
                alice = mint_token(idp.issuer_url, "alice", ["Vector-Read"])
                bob = mint_token(idp.issuer_url, "bob", ["Vector-Approve"])
                write(a.url, admin, 0)  # warm up
                base = []
                for i in range(args.rounds):
                    t0 = time.perf_counter()
                    status, t1 = write(a.url, admin, i)
                    assert status == 200, status
                    base.append(t1 - t0)
                results: dict[str, list[float]] = {"same gateway": [], "across gateways": []}
                n = 1000
                seen: set[str] = set()
                for label, via in (("same gateway", a), ("across gateways", b)):
                    for _ in range(args.rounds):
                        n += 1
                        held = pool.submit(write, a.url, alice, n)
                        aid = next_approval(a.log_url, seen, held)
                        r = decide(via.url, bob, aid, "approve", "bench")
                        decided = time.perf_counter()
                        assert r.status_code == 200, r.text
                        status, done = held.result(timeout=120)
                        assert status == 200, status
                        results[label].append(done - decided)
        finally:
            idp.shutdown()
    baseline = statistics.median(base)
    table = Table(title=f"held write released by a decision ({args.rounds} rounds)")
    for col in ("setup", "p50 ms", "max ms", "p50 / allowed write"):
        table.add_column(col)
    table.add_row("allowed write (baseline)", f"{baseline * 1000:.1f}",
                  f"{max(base) * 1000:.1f}", "1.0x")
    for label, values in results.items():
        p50 = statistics.median(values)
        table.add_row(f"release, {label}", f"{p50 * 1000:.1f}", f"{max(values) * 1000:.1f}",
                      f"{p50 / baseline:.1f}x")
    console.print(table)


if __name__ == "__main__":
    main()
