"""Gateway overhead: requests/s and p50/p99 latency at concurrency 1 and 16,
in one run, against the same local upstream (nginx answering a static
Qdrant-style JSON point), for these setups:

1. direct to the upstream;
2. mitmproxy (same options) with a no-op addon: mitmproxy trimmed to the six
   addons and the options the gateway runs it with, the strict baseline;
2b. (unless --no-stock-mitmdump) mitmproxy as shipped: ``mitmdump -q`` in
   reverse mode with its default addons and a no-op script
   (bench/mitmdump_noop.py), the way mitmproxy's documentation runs an
   addon; every row gets a second ratio against it ("× mitmdump");
3. the full gateway: OIDC token check, classification, policy, masking and
   durable recording (SQLite, fsync, group commit), in its default mode: each
   response is delivered only once its ResponseRecorded is durable;
4. (unless --no-async-responses) the same gateway with the opt-in
   ``--response-durability async``: requests are still recorded before
   forwarding, but a response goes out while its record is made durable.
   It is reported on its own row and never counts towards the target.
5. (unless --workers 1) the full gateway with ``--workers 2``: two gateway
   processes share the listen port (SO_REUSEPORT), each with its own event
   stream, all on the same SQLite log. wrk's keep-alive connections are
   spread over the workers by the kernel (per connection, by hash: at
   concurrency 1 a single connection, so a single worker, serves the run).

With ``--floor``, one more row: **the durability floor**, the no-op's
mitmproxy plus only the two durable appends per request that invariant 1
requires (the gateway's SQLite log, opened as the gateway opens it, records
of the gateway's sizes), and nothing else (class ``DurableFloor``). No
gateway that keeps invariant 1 on this disk can beat it; every row gets a
third ratio against it ("× floor"), which is what the gateway's own checks
and events cost.

Every proxy row is sent the same request (the gateway's bearer token
included). With ``--workers N`` a control runs too: N no-op mitmproxy
processes sharing one port with SO_REUSEPORT, as the workers do. Besides
req/s and latency, each cell reports the proxy's CPU per request (user +
system time of its process tree over the requests served; the system share
in brackets) and how busy the whole machine was, which tells a proxy bound
by its one event loop (machine ~50 % busy) from a saturated machine.

The load comes from wrk in another process. Needs nginx and wrk from Debian
(`make bench-gateway` installs them). Targets (issue 3): the full gateway at
>= 0.8x the no-op mitmproxy's throughput and <= +2 ms at p50.

    .venv/bin/python bench/gateway.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BODY = json.dumps(
    {
        "result": {
            "id": 1,
            "payload": {
                "email": "bob@example.org",
                "team": "search",
                "text": "write to carol@example.com",
            },
            "vector": [0.12, 0.5, 0.33, 0.91],
        },
        "status": "ok",
        "time": 0.0001,
    }
)


#: the row of mitmproxy as shipped (bench/mitmdump_noop.py)
STOCK = "mitmdump as shipped, no-op script"


def free_port() -> int:
    from tests.support.services import free_port as fp

    return fp()


def wait_port(port: int, timeout: float = 30) -> None:
    from tests.support.services import wait_for_port

    wait_for_port(port, timeout=timeout)


def start_nginx(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{BODY}'; }}
  }}
}}
""")
    proc = subprocess.Popen(
        ["nginx", "-c", str(conf), "-p", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc, port


def _proxy_config(upstream: str, port: int, gateway_id: str) -> Any:
    """The mitmproxy options the gateway runs with, for one reverse route, and
    none of its addons' settings in use (the no-op and the floor rows)."""
    from capture.config import GatewayConfig, Route

    return GatewayConfig(
        routes=[Route(kind="qdrant", upstream=upstream, listen_port=port)],
        policy_path=Path("/dev/null"),
        log_url="sqlite:/dev/null",
        issuer="http://x",
        audience="x",
        gateway_id=gateway_id,
    )


def serve_noop(upstream: str, port: int, reuse_port: bool = False) -> None:
    """Child process: mitmproxy with the gateway's options and a no-op addon
    (``reuse_port``: bind with SO_REUSEPORT, as ``--workers`` does, so that
    several of them share the port: the control for the workers setup)."""
    from mitmdump_noop import NoOp  # the same no-op as the mitmdump row's script

    from capture.gateway import _install_reuse_port, run_gateway

    if reuse_port:
        _install_reuse_port()

    asyncio.run(run_gateway(_proxy_config(upstream, port, "noop"), [NoOp()]))


#: the row of the durability floor (``--floor``)
FLOOR = "no-op + invariant 1 only (two durable SQLite appends)"


class DurableFloor:
    """The least a proxy that keeps invariant 1 must do per request, and nothing
    else: the no-op mitmproxy, plus the gateway's two durable appends to an
    SQLite log opened exactly as the gateway opens it (WAL, ``synchronous=FULL``,
    group commit, inline commits while a flow is alone). Before forwarding it
    appends three records of the size of a request's RequestReceived,
    PolicyDecided and RequestForwarded; before delivering, one of the size of
    its ResponseRecorded. No token check, classification, policy, masking, hash
    chain or Avro encoding: their cost is what the gateway adds on top of this.
    (The sizes are those of the gateway's events for the bench's request, read
    back from its log.)
    """

    def __init__(self, path: Path, sizes: tuple[int, ...] = (477, 457, 268), response: int = 701):
        from pipeline.transport.sqlite import SqliteEventLog

        self._live: set[str] = set()
        self.log = SqliteEventLog(path, commit_inline_when_idle=lambda: len(self._live) <= 1)
        self.request_values = [os.urandom(n) for n in sizes]
        self.response_value = os.urandom(response)

    async def running(self) -> None:
        await self.log.start()

    def requestheaders(self, flow: object) -> None:
        self._live.add(flow.id)  # type: ignore[attr-defined]

    async def request(self, flow: object) -> None:
        from pipeline.transport.base import AppendRecord

        key = flow.id.encode()  # type: ignore[attr-defined]
        await self.log.append([AppendRecord(key, v) for v in self.request_values])

    async def response(self, flow: object) -> None:
        from pipeline.transport.base import AppendRecord

        try:
            await self.log.append(
                [AppendRecord(flow.id.encode(), self.response_value)]  # type: ignore[attr-defined]
            )
        finally:
            self._live.discard(flow.id)  # type: ignore[attr-defined]

    def error(self, flow: object) -> None:
        self._live.discard(flow.id)  # type: ignore[attr-defined]


def serve_floor(upstream: str, port: int, log_path: str) -> None:
    """Child process: the no-op's mitmproxy with DurableFloor as its addon."""
    from capture.gateway import run_gateway

    asyncio.run(run_gateway(_proxy_config(upstream, port, "floor"), [DurableFloor(Path(log_path))]))


def fsync_probe(directory: Path, n: int = 200) -> dict[str, float]:
    """p50/p99 of write(1.4 kB) + fsync on the log's disk: the floor of one
    durable append, measured in the same run as the table."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, b"x" * 1400)
            os.fsync(fd)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return {"p50_ms": times[n // 2], "p99_ms": times[min(n - 1, n * 99 // 100)]}


def tree_cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` and every descendant still alive
    (a --workers supervisor's workers included), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    user, system, todo, seen = 0.0, 0.0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return user, system


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = cpu[3] + cpu[4]  # idle + iowait
    return float(sum(cpu) - idle), float(sum(cpu))


def wrk(url: str, connections: int, seconds: float, headers: dict[str, str]) -> dict[str, float]:
    threads = 1 if connections == 1 else 2
    args = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, int(seconds))}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout

    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            raise RuntimeError(f"wrk printed no {pct}% latency:\n{out}")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise RuntimeError(f"{non2xx.group(1)} requests failed against {url}:\n{out}")
    return {"rps": rps, "p50_ms": latency("50"), "p99_ms": latency("99")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gateway.json")
    ap.add_argument(
        "--no-async-responses",
        dest="async_responses",
        action="store_false",
        help="skip the fourth setup (the gateway with --response-durability async)",
    )
    ap.add_argument(
        "--py-spy",
        type=Path,
        metavar="OUT",
        help="record the full gateway at c=16 with py-spy (pip install py-spy; not a "
        "dependency) into OUT, collapsed stacks; summarise with bench/gateway_profile.py "
        "--summarise OUT",
    )
    ap.add_argument(
        "--compare-with",
        type=Path,
        metavar="TREE",
        help="also run the gateway from another source tree (e.g. `git worktree add "
        "/tmp/base <commit>`) in the same run, as a baseline row",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every cell this many times, setups interleaved (their order rotates "
        "each round), and report each cell's median: on a shared machine the load drifts "
        "between cells, and interleaving spreads that drift over every setup",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=2,
        help="also measure the full gateway with --workers N (1: skip that setup)",
    )
    ap.add_argument(
        "--py-spy-concurrency",
        type=int,
        choices=(1, 16),
        default=16,
        help="with --py-spy: the concurrency whose cells are recorded",
    )
    ap.add_argument(
        "--noop-without-token",
        action="store_true",
        help="also measure the no-op with requests that carry no Authorization header "
        "(every proxy row is sent the gateway's bearer token, ~1 kB, by default)",
    )
    ap.add_argument(
        "--workers-only",
        action="store_true",
        help="skip the single-process gateway setups (and their baseline): measure "
        "direct, the no-op, and the gateway with --workers N (and the baseline tree's "
        "with --workers N, given --compare-with)",
    )
    ap.add_argument(
        "--no-stock-mitmdump",
        dest="stock_mitmdump",
        action="store_false",
        help="skip the row of mitmproxy as shipped: `mitmdump -q -s bench/mitmdump_noop.py` "
        "in reverse mode, with its default addons (the no-op row runs mitmproxy trimmed to "
        "the gateway's six addons and options)",
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also measure the durability floor: the no-op mitmproxy plus only the two "
        "durable SQLite appends per request that invariant 1 requires (no checks, no "
        "events built): the best any gateway that keeps invariant 1 could do here",
    )
    ap.add_argument("--serve-floor", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--serve-noop", nargs=2, metavar=("UPSTREAM", "PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--noop-reuse-port", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_floor:
        serve_floor(args.serve_floor[0], int(args.serve_floor[1]), args.serve_floor[2])
        return
    if args.serve_noop:
        serve_noop(args.serve_noop[0], int(args.serve_noop[1]), args.noop_reuse_port)
        return
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(
                f"{tool} is missing: run `make bench-gateway`, which installs nginx-light and wrk"
            )

    from rich.console import Console
    from rich.table import Table

    from capture.devidp import mint_token, serve

    console = Console(width=120)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            nginx, up_port = start_nginx(tmp)
            procs.append(nginx)
            upstream = f"http://127.0.0.1:{up_port}"
            idp = serve("127.0.0.1", 0, tmp / "idp")
            token = mint_token(
                idp.issuer_url,
                "alice",
                ["Vector-Read"],
                ttl=__import__("datetime").timedelta(hours=2),
            )

            noop_port = free_port()
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--serve-noop", upstream, str(noop_port)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_port(noop_port)
            #: setup name -> the proxy's pids, for its CPU time per request
            proxy_pids: dict[str, list[int]] = {"mitmproxy, no-op addon": [procs[-1].pid]}
            noop_n_port = None
            if args.workers > 1:
                # the control for --workers N: N no-op processes on one port
                noop_n_port = free_port()
                for _ in range(args.workers):
                    procs.append(
                        subprocess.Popen(
                            [sys.executable, __file__, "--serve-noop", upstream,
                             str(noop_n_port), "--noop-reuse-port"],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
                wait_port(noop_n_port)
                time.sleep(1.0)  # every process listening before the runs
                proxy_pids[f"mitmproxy, no-op addon, {args.workers} processes"] = [
                    p.pid for p in procs[-args.workers :]
                ]

            floor_port = None
            if args.floor:
                floor_port = free_port()
                procs.append(
                    subprocess.Popen(
                        [sys.executable, __file__, "--serve-floor", upstream, str(floor_port),
                         str(tmp / "floor.db")],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                wait_port(floor_port)
                proxy_pids[FLOOR] = [procs[-1].pid]

            stock_port = None
            if args.stock_mitmdump:
                # mitmproxy as a user runs it: mitmdump, its default addons, a no-op script
                stock_port = free_port()
                procs.append(
                    subprocess.Popen(
                        [str(Path(sys.executable).with_name("mitmdump")), "-q",
                         "--mode", f"reverse:{upstream}", "--listen-host", "127.0.0.1",
                         "-p", str(stock_port), "-s", str(ROOT / "bench" / "mitmdump_noop.py"),
                         "--set", f"confdir={tmp / 'mitmdump'}"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                wait_port(stock_port)
                proxy_pids[STOCK] = [procs[-1].pid]

            env = {**os.environ, "EG_BENCH_KEY": "bench-upstream-key"}

            def start_gateway(
                name: str, extra: list[str], source: Path = ROOT
            ) -> tuple[int, int]:
                port = free_port()
                out = tmp / f"{name}.log"
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "embedguard.cli",
                            "gateway",
                            "--upstream",
                            upstream,
                            "--listen",
                            f"127.0.0.1:{port}",
                            "--kind",
                            "qdrant",
                            "--policy",
                            str(ROOT / "examples" / "policy.yaml"),
                            "--log",
                            f"sqlite:{tmp / name}.db",
                            "--issuer",
                            idp.issuer_url,
                            "--audience",
                            "embedguard",
                            "--credential-env",
                            "EG_BENCH_KEY",
                            "--gateway-id",
                            name,
                            *extra,
                        ],
                        stdout=out.open("wb"),
                        stderr=subprocess.STDOUT,
                        env={**env, "PYTHONPATH": str(source)},
                        cwd=source,
                    )
                )
                deadline = time.time() + 60
                while f"embedguard gateway {name}" not in out.read_text(errors="replace"):
                    if time.time() > deadline:
                        sys.exit(f"gateway {name} did not start:\n{out.read_text()[-2000:]}")
                    time.sleep(0.1)
                return port, procs[-1].pid

            if args.workers_only and args.workers < 2:
                sys.exit("--workers-only needs --workers 2 or more")
            gw_port, gw_pid = (None, 0) if args.workers_only else start_gateway("bench", [])
            baseline_port, baseline_pid = (
                start_gateway("bench-baseline", [], args.compare_with)
                if args.compare_with and not args.workers_only
                else (None, 0)
            )
            gw_async_port, gw_async_pid = (
                start_gateway("bench-async", ["--response-durability", "async"])
                if args.async_responses and not args.workers_only
                else (None, 0)
            )
            baseline_workers_port, baseline_workers_pid = (
                start_gateway(
                    "bench-baseline-workers",
                    ["--workers", str(args.workers)],
                    args.compare_with,
                )
                if args.compare_with and args.workers > 1
                else (None, 0)
            )

            gw_workers_port, gw_workers_pid = (
                start_gateway("bench-workers", ["--workers", str(args.workers)])
                if args.workers > 1
                else (None, 0)
            )

            path = "/collections/docs/points/1"
            auth = {"Authorization": f"Bearer {token}"}
            setups: list[tuple[str, str, dict[str, str]]] = [("direct", f"{upstream}{path}", {})]

            def add(name: str, port: int | None, pids: list[int], headers: dict[str, str]) -> None:
                """A proxy row, if that proxy was started, and the pids its CPU is read from."""
                if port is not None:
                    setups.append((name, f"http://127.0.0.1:{port}{path}", headers))
                    proxy_pids[name] = pids

            noop_pids = proxy_pids["mitmproxy, no-op addon"]
            n = args.workers
            add("mitmproxy, no-op addon", noop_port, noop_pids, auth)
            if args.noop_without_token:
                add("mitmproxy, no-op addon, no Authorization header", noop_port, noop_pids, {})
            add(STOCK, stock_port, proxy_pids.get(STOCK, []), auth)
            add(FLOOR, floor_port, proxy_pids.get(FLOOR, []), auth)
            add(f"mitmproxy, no-op addon, {n} processes", noop_n_port,
                proxy_pids.get(f"mitmproxy, no-op addon, {n} processes", []), auth)  # fmt: skip
            base = args.compare_with.name if args.compare_with else ""
            add("embedguard gateway", gw_port, [gw_pid], auth)
            add(f"gateway @ {base} (baseline)", baseline_port, [baseline_pid], auth)
            add("gateway, async responses (opt-in)", gw_async_port, [gw_async_pid], auth)
            add(f"embedguard gateway, --workers {n}", gw_workers_port, [gw_workers_pid], auth)
            add(f"gateway @ {base}, --workers {n} (baseline)", baseline_workers_port,
                [baseline_workers_pid], auth)  # fmt: skip
            # one request first: it must be masked, proving the full path runs
            import httpx

            gateways = [x for x in setups if x[0].startswith(("embedguard", "gateway"))]
            for _name, url, headers in gateways:
                probe = httpx.get(url, headers=headers, timeout=10)
                assert probe.status_code == 200 and "bob@example.org" not in probe.text, probe.text
            results = []
            samples: dict[tuple[str, int], list[dict[str, float]]] = {}
            load_before = os.getloadavg()
            fsync_before = fsync_probe(tmp)
            # with --py-spy OUT, the no-op is recorded too, into OUT.noop
            spy_noop = args.py_spy.with_name(args.py_spy.name + ".noop") if args.py_spy else None

            def measure(name: str, url: str, headers: dict[str, str], conc: int) -> None:
                nonlocal spy_noop
                spy = None
                spied = {"embedguard gateway": args.py_spy, "mitmproxy, no-op addon": spy_noop}
                if spied.get(name) and conc == args.py_spy_concurrency:
                    spy_out = spied[name]
                    spy = subprocess.Popen(
                        [
                            str(Path(sys.executable).with_name("py-spy")),
                            "record",
                            "--pid",
                            str(proxy_pids[name][0]),
                            "--format",
                            "raw",
                            "--threads",
                            "--nonblocking",
                            "--duration",
                            str(max(1, int(args.seconds))),
                            "--output",
                            str(spy_out),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                pids = proxy_pids.get(name, [])

                def cpu() -> tuple[float, float]:
                    each = [tree_cpu_seconds(p) for p in pids]
                    return sum(u for u, _ in each), sum(s for _, s in each)

                cpu_before = cpu()
                busy_before = machine_busy()
                result = wrk(url, conc, args.seconds, headers)
                busy_after = machine_busy()
                # the proxy's CPU per request (its threads and workers), and how
                # busy the whole machine was: is the proxy or the machine the limit?
                if pids:
                    requests = result["rps"] * max(1, int(args.seconds))
                    user, system = cpu()
                    user, system = user - cpu_before[0], system - cpu_before[1]
                    result["proxy_cpu_us_per_req"] = (user + system) / requests * 1e6
                    result["proxy_sys_share_pct"] = 100 * system / max(1e-9, user + system)
                jiffies = max(1.0, busy_after[1] - busy_before[1])
                result["machine_busy_pct"] = 100 * (busy_after[0] - busy_before[0]) / jiffies
                samples.setdefault((name, conc), []).append(result)
                if spy is not None:
                    spy.wait(60)
                    served = round(samples[(name, conc)][-1]["rps"] * max(1, int(args.seconds)))
                    console.print(
                        f"[dim]py-spy profile of {name}: {spy_out} ({served} requests; "
                        "bench/gateway_profile.py --compare)[/]"
                    )
                    spied[name] = None  # one profile each is enough
                    if name == "embedguard gateway":
                        args.py_spy = None
                    else:
                        spy_noop = None

            for conc in (1, 16):
                for _name, url, headers in setups:
                    wrk(url, conc, 2, headers)  # warm-up
                for rnd in range(args.rounds):
                    shift = rnd % len(setups)
                    for name, url, headers in setups[shift:] + setups[:shift]:
                        console.print(f"[dim]{name} × {conc} for {args.seconds:.0f}s "
                                      f"(round {rnd + 1}/{args.rounds})…[/]")
                        measure(name, url, headers, conc)
                for name, _url, _headers in setups:
                    runs = samples[(name, conc)]
                    results.append(
                        {
                            "setup": name,
                            "concurrency": conc,
                            **{
                                k: statistics.median(r[k] for r in runs)
                                for k in ("rps", "p50_ms", "p99_ms", "proxy_cpu_us_per_req",
                                          "proxy_sys_share_pct", "machine_busy_pct")
                                if all(k in r for r in runs)
                            },
                            "rounds": runs,
                        }
                    )
            fsync_after = fsync_probe(tmp)
            load_after = os.getloadavg()
            idp.shutdown()
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()

    table = Table(title="gateway overhead (wrk, keep-alive, GET /collections/docs/points/1)")
    stock = {r["concurrency"]: r for r in results if r["setup"] == STOCK}
    floor = {r["concurrency"]: r for r in results if r["setup"] == FLOOR}
    for col in ("setup", "conc", "req/s", "p50 ms", "p99 ms", "× no-op req/s", "Δp50 vs no-op",
                *(("× mitmdump req/s",) if stock else ()),
                *(("× floor req/s",) if floor else ()),
                "proxy CPU µs/req (sys)", "machine busy"):
        table.add_column(col, justify="left" if col == "setup" else "right")
    for r in results:
        noop = next(
            x
            for x in results
            if x["concurrency"] == r["concurrency"] and x["setup"] == "mitmproxy, no-op addon"
        )
        table.add_row(
            str(r["setup"]),
            str(r["concurrency"]),
            f"{r['rps']:.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{float(r['rps']) / float(noop['rps']):.2f}×",
            f"{float(r['p50_ms']) - float(noop['p50_ms']):+.2f} ms",
            *((f"{float(r['rps']) / float(stock[r['concurrency']]['rps']):.2f}×",)
              if stock else ()),
            *((f"{float(r['rps']) / float(floor[r['concurrency']]['rps']):.2f}×",)
              if floor else ()),
            f"{r['proxy_cpu_us_per_req']:.0f} ({r['proxy_sys_share_pct']:.0f}%)"
            if "proxy_cpu_us_per_req" in r
            else "—",
            f"{r['machine_busy_pct']:.0f}%",
        )
    console.print(table)
    console.print(
        f"fsync (write 1.4 kB + fsync) on the log's disk: p50 {fsync_before['p50_ms']:.2f} ms, "
        f"p99 {fsync_before['p99_ms']:.2f} ms before the runs; p50 {fsync_after['p50_ms']:.2f} "
        f"ms, p99 {fsync_after['p99_ms']:.2f} ms after. In sync mode each request waits for "
        "two durable appends (request events, then its response event)."
    )
    console.print(
        f"load average (1/5/15 min): {' / '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' / '.join(f'{x:.2f}' for x in load_after)} after; "
        + (f"each cell is the median of {args.rounds} interleaved rounds of "
           f"{args.seconds:.0f} s" if args.rounds > 1 else f"one {args.seconds:.0f} s run per cell")
    )
    results.append({"setup": "fsync probe", "before": fsync_before, "after": fsync_after})
    results.append({"setup": "load average", "before": list(load_before),
                    "after": list(load_after), "rounds": args.rounds})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    console.print(f"[dim]wrote {args.out}[/]")


if __name__ == "__main__":
    main()
