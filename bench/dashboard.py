"""The dashboard benchmark: each page's render time with N events in the lake.

Builds (or reuses, ``--lake``) an embedded warehouse of ``--events`` synthetic,
hash-chained events (default 1M, the pipeline benchmark's generator, loaded by
the real loader into Delta tables), then renders every page of the app with
``streamlit.testing.v1.AppTest`` as a signed-in admin (the auth module's test
seam), with realistic inputs: a session id for Session detail, two request ids
for Diff, a point for Lineage, a filter for Sessions.

After one warm-up render (imports, the chDB engine, the warehouse handle),
each page is timed cold (``st.cache_data`` cleared, a fresh AppTest) and warm
(a rerun that hits the result cache), ``--repeat`` times; the table shows the
median and the worst. The baseline, measured in the same run, is the sign-in
page (the router and no query), so the ratio is what the page's data costs.
The Approvals page has no gateway here: its queue shows the unreachable-gateway
error and only the warehouse part is timed. Replay and Evidence render their
forms (running a replay or an export is an action, not a render).

    .venv/bin/python bench/dashboard.py [--events 1000000] [--lake DIR | --data DIR]
        [--repeat 3] [--pages sessions,...] [--json bench/results/dashboard.json]

With ``--data DIR`` the lake is bench/warehouse_data.py's data set (e.g.
``--events 10000000``), the same one bench/pipeline.py times the queries on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console(width=140)
APP = str(ROOT / "dashboard" / "app.py")
TARGET_S = 2.0
ADMIN = {"subject": "bench-admin", "issuer": "https://idp.bench",
         "groups": ["Vector-Admin"], "access_token": "not-used-by-these-pages"}


def build(lake: Path, log: Path, events: int, sessions: int) -> dict[str, Any]:
    from bench.pipeline import _fill_sqlite, _load

    t0 = time.perf_counter()
    asyncio.run(_fill_sqlite(log, events, sessions))
    filled = time.perf_counter() - t0
    loaded = _load(f"sqlite:{log}", f"lake:{lake}", 10_000)
    return {"fill_s": round(filled, 1), "load_s": round(loaded["seconds"], 1),
            "rows": loaded["rows"]}


def inputs(warehouse_url: str) -> dict[str, dict[str, Any]]:
    """Realistic widget values per page, taken from the data."""
    from pipeline import queries
    from pipeline.warehouse import open_warehouse

    with open_warehouse(warehouse_url) as wh:
        sessions = queries.sessions_list(wh, limit=5)
        sid = str(sessions[0]["session_id"])
        actor = str(sessions[0]["subject"] or "")
        reqs = [r for r in queries.session_requests(wh, sid)][:2]
        point = wh.query(
            "SELECT collection, point_id FROM {vector_lineage} WHERE point_id != '' LIMIT 1", {})
    state: dict[str, dict[str, Any]] = {
        "sign-in": {},
        "overview": {},
        "sessions": {},
        "sessions (actor filter)": {"f_actor": actor},
        "sessions (body filter)": {"f_body": '"id":777,'},
        "session": {"session_id": sid},
        "diff": ({"diff_a": reqs[0]["request_id"], "diff_b": reqs[-1]["request_id"]}
                 if reqs else {}),
        "replay": {},
        "approvals": {},
        "lineage": ({"lin_collection": point[0]["collection"], "lin_point": point[0]["point_id"]}
                    if point else {}),
        "evidence": {},
        "policy": {},
    }
    return state


def render(label: str, state: dict[str, Any], repeat: int) -> dict[str, Any]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    page = label.split(" ")[0]  # "sessions (actor filter)" renders pages/sessions.py

    cold: list[float] = []
    warm: list[float] = []
    problems: list[str] = []
    for _ in range(repeat):
        st.cache_data.clear()
        at = AppTest.from_file(APP, default_timeout=600)
        if page != "sign-in":
            at.session_state["embedguard_test_user"] = ADMIN
        for key, value in state.items():
            at.session_state[key] = value
        if page not in ("sign-in", "overview"):
            at.run()  # the router's first run (overview) is not this page's time
            st.cache_data.clear()
            at.switch_page(f"pages/{page}.py")
        t0 = time.perf_counter()
        at.run()
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        at.run()
        warm.append(time.perf_counter() - t0)
        problems += [e.message for e in at.exception]
    return {"cold_median_s": statistics.median(cold), "cold_max_s": max(cold),
            "warm_median_s": statistics.median(warm), "problems": sorted(set(problems))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--lake", type=Path, help="reuse (or build here) a lake and its log")
    parser.add_argument("--data", type=Path,
                        help="use bench/warehouse_data.py's data set of --events events (built "
                             "once under DIR: 1M loaded by the loader, multiplied with SQL)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pages", help="comma-separated subset (the sign-in baseline always runs)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "dashboard.json")
    args = parser.parse_args()

    work = args.lake or Path(tempfile.mkdtemp(prefix="eg-bench-dash-"))
    lake, log = work / "lake", work / "events.db"
    built: dict[str, Any] = {"reused": True}
    if args.data is not None:
        from bench.warehouse_data import ensure

        # the data set's lake; the dashboard's own log (AuditViewed) is a fresh one
        lake = ensure(args.data, args.events, ("lake",)) / "lake"
        work = Path(tempfile.mkdtemp(prefix="eg-bench-dash-"))
        log = work / "events.db"
        built = {"data_set": str(lake)}
    elif not (lake / "events").exists():
        work.mkdir(parents=True, exist_ok=True)
        console.print(f"building {args.events:,} events in {work} (fill + load)...")
        built = build(lake, log, args.events, args.sessions)
        console.print(built)
    os.environ.update({
        "EMBEDGUARD_WAREHOUSE": f"lake:{lake}", "EMBEDGUARD_LOG": f"sqlite:{log}",
        "EMBEDGUARD_DATA_DIR": str(work), "EMBEDGUARD_POLICY": str(ROOT / "examples/policy.yaml"),
        "EMBEDGUARD_GATEWAY_URL": "http://127.0.0.1:9",  # nothing listens: no queue here
        "EMBEDGUARD_DASHBOARD_TEST_SEAM": "1",
    })
    from pipeline.warehouse import open_warehouse

    with open_warehouse(f"lake:{lake}") as wh:
        events = int(wh.query("SELECT count() AS n FROM {events}", {})[0]["n"])
    state = inputs(f"lake:{lake}")
    # process start-up (imports, the chDB engine, the warehouse handle) is no page's cost
    render("overview", {}, 1)
    results: dict[str, Any] = {}
    chosen = set(args.pages.split(",")) | {"sign-in"} if args.pages else set(state)
    for page, page_state in state.items():
        if page not in chosen and page.split(" ")[0] not in chosen:
            continue
        results[page] = render(page, page_state, args.repeat)
        console.print(f"{page}: {results[page]['cold_median_s']:.2f} s cold")
    base = results["sign-in"]["cold_median_s"]
    table = Table(title=f"dashboard pages, {events:,} events in the lake (AppTest, median of "
                        f"{args.repeat})")
    for col in ("page", "cold median s", "cold max s", "warm s", "× sign-in", f"< {TARGET_S} s",
                "problems"):
        table.add_column(col)
    for page, r in results.items():
        table.add_row(page, f"{r['cold_median_s']:.2f}", f"{r['cold_max_s']:.2f}",
                      f"{r['warm_median_s']:.2f}", f"{r['cold_median_s'] / base:.1f}",
                      "yes" if r["cold_max_s"] < TARGET_S else "NO",
                      "; ".join(p[:60] for p in r["problems"]))
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"events": events, "build": built, "pages": results,
                                     "baseline": "sign-in page, same run"}, indent=1))


if __name__ == "__main__":
    main()
