"""Where the gateway's time goes, per request, without sockets.

Drives the real addons (``capture.build_addons``) through their hooks with
real mitmproxy flows (``mitmproxy.test.tflow``): the dev OIDC issuer signs
alice's token, ``examples/policy.yaml`` decides, the masker masks the e-mail
in a Qdrant-style response and the recorder appends to a real SQLite log
(WAL, ``synchronous=FULL``, group commit) in a temporary directory. What it
leaves out is mitmproxy's own work (parsing, connections, the upstream), which
``bench/gateway.py`` measures end to end.

It prints, for one request at a time (c=1) and for N concurrent flows:
wall time and CPU time per request of each stage (ratios against the checks
alone, measured in the same run), and optionally a cProfile of the whole
chain:

    .venv/bin/python bench/gateway_profile.py [--requests 3000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import inspect
import io
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway import BODY  # noqa: E402
from pipeline.events import EventPublisher  # noqa: E402
from pipeline.transport.base import (  # noqa: E402
    AppendRecord,
    EventLog,
    LogReader,
    Position,
)

PATH = "/collections/docs/points/1"


def _flow(token: str, port: int) -> Any:
    from mitmproxy import http
    from mitmproxy.test import tflow

    f = tflow.tflow()
    f.request = http.Request.make(
        "GET",
        f"http://127.0.0.1:{port}{PATH}",
        b"",
        {
            "host": f"127.0.0.1:{port}",
            "authorization": f"Bearer {token}",
            "user-agent": "wrk",
            "accept": "*/*",
        },
    )
    return f


def _response() -> Any:
    from mitmproxy import http

    return http.Response.make(200, BODY.encode(), {"content-type": "application/json"})


class DiscardingLog(EventLog):
    """Accepts every append at once and keeps nothing: measures what the
    recorder costs without the log."""

    url = "discard:"

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def append(self, records: Sequence[AppendRecord]) -> list[Position]:
        return [Position(0, 0) for _ in records]

    def reader(self, group: str, *, from_beginning: bool = True) -> LogReader:
        raise NotImplementedError("a discarding log has nothing to read")


async def _call(hook: Callable[[Any], Any] | None, flow: Any) -> None:
    if hook is None:
        return
    r = hook(flow)
    if inspect.isawaitable(r):
        await r


class Chain:
    """The addons' hooks in mitmproxy's order, split into stages."""

    def __init__(self, addons: list[object]) -> None:
        self.addons = addons
        self.recorder = addons[-1]

    async def _request_checks(self, flow: Any) -> None:
        for a in self.addons[:-1]:
            await _call(getattr(a, "requestheaders", None), flow)
        for a in self.addons[:-1]:
            await _call(getattr(a, "request", None), flow)

    async def _response_checks(self, flow: Any) -> None:
        for a in self.addons:
            await _call(getattr(a, "responseheaders", None), flow)
        for a in self.addons[:-1]:
            await _call(getattr(a, "response", None), flow)

    async def checks(self, flow: Any) -> None:
        """Every addon but the recorder: intake, identity, classification,
        policy, credentials; then the response's masking. No events."""
        from capture.state import state_of

        await self._request_checks(flow)
        st = state_of(flow)
        assert st is not None and st.blocked is None, st and st.blocked
        st.forwarded = True
        flow.response = _response()
        await self._response_checks(flow)
        assert b"bob@example.org" not in flow.response.content, "masking did not run"

    async def events_only(self, flow: Any) -> None:
        """The whole chain, but appends go to a log that stores nothing: the
        events are built, chained and encoded, and not made durable."""
        rec: Any = self.recorder
        durable, rec.publisher = rec.publisher, EventPublisher(DiscardingLog())
        try:
            await self.full(flow)
        finally:
            rec.publisher = durable

    async def full(self, flow: Any) -> None:
        """The whole chain, the recorder's durable appends included."""
        await self._request_checks(flow)
        await _call(self.recorder.requestheaders, flow)  # type: ignore[attr-defined]
        await _call(self.recorder.request, flow)  # type: ignore[attr-defined]
        assert flow.response is None, flow.response and flow.response.content
        flow.response = _response()
        for a in self.addons:
            await _call(getattr(a, "responseheaders", None), flow)
        for a in self.addons:
            await _call(getattr(a, "response", None), flow)
        assert b"bob@example.org" not in flow.response.content, "masking did not run"


async def per_hook(
    chain: Chain, make: Callable[[], Any], n: int, stat: str = "mean"
) -> dict[str, float]:
    """CPU µs per request of each addon's hook, over the whole chain (c=1).

    ``stat`` "mean" is the average; "median" and "p10" are taken over the
    requests, per hook: on a loaded machine, other processes inflate some
    requests' CPU time (cache and core sharing), and a low quantile is far
    steadier from run to run than the mean."""
    import statistics

    samples: dict[str, list[float]] = {}
    addons = chain.addons

    async def timed(addon: Any, hook: str, flow: Any, acc: dict[str, float]) -> None:
        fn = getattr(addon, hook, None)
        if fn is None:
            return
        t = time.thread_time()
        await _call(fn, flow)
        key = f"{type(addon).__name__}.{hook}"
        acc[key] = acc.get(key, 0.0) + time.thread_time() - t

    for _ in range(n):
        flow = make()
        acc: dict[str, float] = {}
        for hook in ("requestheaders", "request"):
            for a in addons:
                await timed(a, hook, flow, acc)
        flow.response = _response()
        for hook in ("responseheaders", "response"):
            for a in addons:
                await timed(a, hook, flow, acc)
        for key, value in acc.items():
            samples.setdefault(key, []).append(value)

    def pick(values: list[float]) -> float:
        if stat == "median":
            return statistics.median(values)
        if stat == "p10":
            return statistics.quantiles(values, n=10)[0]
        return statistics.fmean(values)

    costs = {k: pick(v) * 1e6 for k, v in samples.items()}
    return dict(sorted(costs.items(), key=lambda kv: -kv[1]))


async def floors(n: int) -> list[tuple[str, float, float]]:
    """What one durable append costs at least, piece by piece: (what, wall µs,
    CPU µs) per operation, medians of ``n``. The CPU column covers every
    thread of this process."""
    import os
    import queue
    import statistics
    import threading

    from pipeline.transport.sqlite import SqliteEventLog, _open_log

    out: list[tuple[str, float, float]] = []

    def timed(name: str, fn: Callable[[], None]) -> None:
        walls, cpus = [], []
        for _ in range(n):
            c, w = time.process_time(), time.perf_counter()
            fn()
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
        out.append((name, statistics.median(walls) * 1e6, statistics.mean(cpus) * 1e6))

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        fd = os.open(tmp / "probe", os.O_WRONLY | os.O_CREAT, 0o600)
        timed("write 1.4 kB + fsync", lambda: (os.write(fd, b"x" * 1400), os.fsync(fd)) and None)
        os.close(fd)
        rows = [(b"s", b"x" * 330)] * 4
        for sync in ("FULL", "NORMAL"):
            conn = _open_log(tmp / f"{sync}.db", create=True, busy_timeout=5.0)
            conn.execute(f"PRAGMA synchronous = {sync}")

            def commit(conn: Any = conn) -> None:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT INTO records (key, value, timestamp_ms) VALUES (?, ?, 0)", rows
                )
                conn.execute("COMMIT")

            timed(f"SQLite commit of 4 events, synchronous={sync}"
                  + (" (not durable, reference only)" if sync == "NORMAL" else ""), commit)
            conn.close()

        loop = asyncio.get_running_loop()
        jobs: queue.SimpleQueue[asyncio.Future[None] | None] = queue.SimpleQueue()

        def serve() -> None:
            while (fut := jobs.get()) is not None:
                loop.call_soon_threadsafe(fut.set_result, None)

        thread = threading.Thread(target=serve)
        thread.start()

        async def round_trip() -> None:
            fut = loop.create_future()
            jobs.put(fut)
            await fut

        async def append(log: SqliteEventLog) -> None:
            await log.append([AppendRecord(k, v) for k, v in rows])

        for name, make in (
            ("event loop -> thread -> event loop, nothing done", round_trip),
        ):
            walls, cpus = [], []
            for _ in range(n):
                c, w = time.process_time(), time.perf_counter()
                await make()
                walls.append(time.perf_counter() - w)
                cpus.append(time.process_time() - c)
            out.append((name, statistics.median(walls) * 1e6, statistics.mean(cpus) * 1e6))
        jobs.put(None)
        thread.join()
        async with SqliteEventLog(tmp / "log.db") as log:
            walls, cpus = [], []
            for _ in range(n):
                c, w = time.process_time(), time.perf_counter()
                await append(log)
                walls.append(time.perf_counter() - w)
                cpus.append(time.process_time() - c)
            out.append(("SqliteEventLog.append of 4 events (durable)",
                        statistics.median(walls) * 1e6, statistics.mean(cpus) * 1e6))
    return out


async def _nothing(flow: Any) -> None:
    flow.response = _response()


async def _measure(
    fn: Callable[[Any], Awaitable[None]], make: Callable[[], Any], n: int, conc: int
) -> dict[str, float]:
    # Flows are made as they are needed and dropped after, as in a gateway:
    # keeping thousands alive would make every garbage collection dearer.
    it = iter(range(n))

    async def worker() -> None:
        for _ in it:
            await fn(make())

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"req_s": n / wall, "wall_us": wall / n * 1e6, "cpu_us": cpu / n * 1e6}


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from pydantic import SecretStr

    from capture import build_addons
    from capture.config import GatewayConfig, Route
    from capture.devidp import mint_token, serve

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        idp = serve("127.0.0.1", 0, tmp / "idp")
        try:
            token = mint_token(idp.issuer_url, "alice", ["Vector-Read"], ttl=timedelta(hours=2))
            port = 6333
            extra: dict[str, Any] = {}
            if not args.no_checkpoints:
                # as `embedguard gateway` runs by default: signed Merkle checkpoints
                extra["signing_key"] = tmp / "signing.key"
            if args.response_durability != "sync":
                extra["response_durability"] = args.response_durability
            cfg = GatewayConfig(
                routes=[
                    Route(
                        kind="qdrant",
                        upstream="http://127.0.0.1:6333",
                        listen_port=port,
                        credential=SecretStr("bench-key"),
                        credential_ref="env:EG_BENCH_KEY",
                    )
                ],
                policy_path=ROOT / "examples" / "policy.yaml",
                log_url=f"sqlite:{tmp / 'events.db'}",
                issuer=idp.issuer_url,
                audience="embedguard",
                gateway_id="profile",
                **extra,
            )
            addons = build_addons(cfg)
            for a in addons:
                running = getattr(a, "running", None)
                if running is not None:
                    result = running()
                    if inspect.isawaitable(result):
                        await result
            chain = Chain(addons)

            def make() -> Any:
                return _flow(token, port)

            await chain.full(make())  # verifies the token once; the rest hit the cache
            stages: list[tuple[str, Callable[[Any], Awaitable[None]]]] = [
                ("flow objects only (harness)", _nothing),
                ("checks (no events)", chain.checks),
                ("+ events built and encoded", chain.events_only),
                ("+ durable appends (full chain)", chain.full),
            ]
            results: list[dict[str, Any]] = []
            for conc in () if args.hooks_only else (1, 16):
                for name, fn in stages:
                    await _measure(fn, make, max(50, args.requests // 10), conc)  # warm-up
                    r = await _measure(fn, make, args.requests, conc)
                    results.append({"stage": name, "concurrency": conc, **r})
            if args.per_hook:
                await per_hook(chain, make, max(50, args.requests // 10))  # warm-up
                costs = await per_hook(chain, make, args.requests, args.stat)
                print(f"CPU µs per request, by hook ({args.stat} over the requests; main "
                      "thread; the log's writer thread not included):")
                total = sum(costs.values())
                for key, us in costs.items():
                    print(f"  {us:8.1f}  {us / total:6.1%}  {key}")
                print(f"  {total:8.1f}  total")
            if args.profile:
                # the main thread's CPU clock: time spent waiting (for the writer
                # thread, the disk, the event loop's poll) does not count
                prof = cProfile.Profile(time.thread_time)
                flows = [make() for _ in range(args.requests)]
                prof.enable()
                for f in flows:
                    await chain.full(f)
                prof.disable()
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
                print(out.getvalue())
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.top)
                print(out.getvalue())
                if args.callers:
                    out = io.StringIO()
                    pstats.Stats(prof, stream=out).print_callers(args.callers)
                    print(out.getvalue())
                if args.callees:
                    out = io.StringIO()
                    pstats.Stats(prof, stream=out).print_callees(args.callees)
                    print(out.getvalue())
            for a in reversed(addons):
                done = getattr(a, "done", None)
                if done is not None:
                    result = done()
                    if inspect.isawaitable(result):
                        await result
            return results
        finally:
            idp.shutdown()


def _frame_parts(frame: str) -> tuple[str, str]:
    """``"fn (path/to/file.py:12)"`` → (function, file)."""
    fn, _, where = frame.partition(" (")
    return fn.strip(), where.rsplit(":", 1)[0]


def _area(file: str) -> str:
    """What part of the stack a source file belongs to (py-spy prints paths
    relative to sys.path: ``capture/recorder.py``, ``mitmproxy/proxy/...``)."""
    if file.startswith(("capture/", "schemas/", "pipeline/", "embedguard/")):
        return file
    return file.split("/", 1)[0] if "/" in file else file


def _inclusive_key(frame: str) -> str:
    """A library's name, or for embedguard's own code the file and function."""
    fn, file = _frame_parts(frame)
    area = _area(file)
    return f"{area}:{fn}" if area == file and "/" in file else area


def summarise(path: Path, top: int) -> None:
    """Summarise py-spy's collapsed stacks (``bench/gateway.py --py-spy OUT``):
    the share of samples in each function (self) and under each of the
    gateway's modules and functions (inclusive), on the main thread."""
    from collections import Counter

    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    main_only = True
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[0].startswith("thread ("):  # py-spy --threads
            threads[frames[0].rsplit(": ", 1)[-1]] += count
            if main_only and not frames[0].endswith("MainThread"):
                continue
            frames = frames[1:] or ["(no frame) (?:0)"]
        total += count
        fn, file = _frame_parts(frames[-1])
        self_time[f"{fn} ({_area(file)})"] += count
        for key in {_inclusive_key(f) for f in frames}:
            inclusive[key] += count
    if threads:
        print("samples by thread: " + ", ".join(f"{k} {v}" for k, v in threads.most_common()))
        print("(below: the main thread, which runs every flow)")
    print(f"{total} samples\n\nself time, top {top}:")
    for name, n in self_time.most_common(top):
        print(f"  {n / total:6.1%}  {name}")
    print("\ninclusive, by module:")
    for name, n in inclusive.most_common(top):
        print(f"  {n / total:6.1%}  {name}")


#: frames of the process's entry point (typer, runpy, the CLI's gateway command)
_ROOT_FRAMES = ("(typer/core.py)", "(typer/main.py)", "(typer/_click/core.py)",
                "(<frozen runpy>)", "(embedguard/cli.py)")  # fmt: skip


def _per_function_us(path: Path, requests: int, rate_hz: float) -> tuple[dict[str, float], float]:
    """Main-thread samples of py-spy's collapsed stacks as µs per request,
    inclusive, per function (``name (area)``); and the main thread's total."""
    from collections import Counter

    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if frames[0].startswith("thread ("):
            if not frames[0].endswith("MainThread"):
                continue
            frames = frames[1:]
        count = int(count_text)
        total += count
        for key in {"{} ({})".format(*_frame_parts(f)) for f in frames}:
            inclusive[key] += count
    for key in [k for k in inclusive if k.endswith(_ROOT_FRAMES)]:
        del inclusive[key]  # the process's entry point: in every stack that reaches it
    scale = 1e6 / rate_hz / requests
    return {k: v * scale for k, v in inclusive.items()}, total * scale


def compare(a: Path, a_requests: int, b: Path, b_requests: int, top: int) -> None:
    """Two py-spy profiles (``bench/gateway.py --py-spy OUT`` writes the
    gateway's to OUT and the no-op's to OUT.noop, and prints how many requests
    each served while recorded) side by side: each function's inclusive
    main-thread time per request, largest differences first. py-spy samples
    at 100 Hz and misses some of the time a process runs, so read the
    differences, not the absolute µs."""
    fa, ta = _per_function_us(a, a_requests, 100.0)
    fb, tb = _per_function_us(b, b_requests, 100.0)
    print(f"main thread, sampled µs per request: {a.name} {ta:.0f}, {b.name} {tb:.0f}")
    print(f"{'A':>8} {'B':>8} {'A - B':>8}  function (inclusive)")
    for key in sorted(set(fa) | set(fb), key=lambda k: -(fa.get(k, 0) - fb.get(k, 0)))[:top]:
        va, vb = fa.get(key, 0.0), fb.get(key, 0.0)
        print(f"{va:8.0f} {vb:8.0f} {va - vb:+8.0f}  {key[:110]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the full chain")
    ap.add_argument("--top", type=int, default=35)
    ap.add_argument("--callers", metavar="REGEX", help="with --profile: who calls these functions")
    ap.add_argument("--callees", metavar="REGEX", help="with --profile: what these functions call")
    ap.add_argument("--per-hook", action="store_true", help="print CPU µs per addon hook")
    ap.add_argument(
        "--stat",
        choices=("mean", "median", "p10"),
        default="mean",
        help="with --per-hook: each hook's mean, median or 10th percentile over the requests "
        "(median/p10 are steadier on a loaded machine)",
    )
    ap.add_argument(
        "--floors",
        type=int,
        metavar="N",
        help="measure fsync, an SQLite commit, a thread hand-off and one durable append "
        "N times each, and exit",
    )
    ap.add_argument(
        "--hooks-only",
        action="store_true",
        help="with --per-hook or --profile: skip the table of stages (a quicker A/B run)",
    )
    ap.add_argument("--response-durability", choices=("sync", "async"), default="sync")
    ap.add_argument(
        "--no-checkpoints",
        action="store_true",
        help="run without a signing key (the gateway signs Merkle checkpoints by default)",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--summarise",
        type=Path,
        metavar="STACKS",
        help="summarise py-spy collapsed stacks (bench/gateway.py --py-spy) and exit",
    )
    ap.add_argument(
        "--compare",
        nargs=4,
        metavar=("STACKS_A", "REQUESTS_A", "STACKS_B", "REQUESTS_B"),
        help="compare two py-spy profiles per request (e.g. the gateway's and the no-op's "
        "from bench/gateway.py --py-spy) and exit",
    )
    args = ap.parse_args()
    if args.compare:
        a, ra, b, rb = args.compare
        compare(Path(a), int(ra), Path(b), int(rb), args.top)
        return
    if args.summarise:
        summarise(args.summarise, args.top)
        return
    if args.floors:
        print("the floor of one durable append (median wall µs, mean CPU µs, "
              f"{args.floors} each):")
        for name, wall, cpu in asyncio.run(floors(args.floors)):
            print(f"  {wall:8.1f} {cpu:8.1f}  {name}")
        return
    results = asyncio.run(run(args))
    if not results:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="gateway hooks in process, per request (real flows, real SQLite log)")
    for col in ("stage", "conc", "req/s", "wall µs", "CPU µs", "CPU × harness"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for r in results:
        base = next(
            x
            for x in results
            if x["concurrency"] == r["concurrency"] and x["stage"].startswith("flow")
        )
        table.add_row(
            r["stage"],
            str(r["concurrency"]),
            f"{r['req_s']:,.0f}",
            f"{r['wall_us']:.0f}",
            f"{r['cpu_us']:.0f}",
            f"{r['cpu_us'] / base['cpu_us']:.2f}×",
        )
    Console(width=120).print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
