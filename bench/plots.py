"""Charts of the benchmark results, for docs/benchmarks.md.

Reads the JSON the benchmarks write and draws the trends that a table hides:

* ``queries.png``: each main query's median latency against the number of
  events (1M → 10M), lake and MergeTree side by side, with the issue's targets
  (timeline < 100 ms, filtered sessions list < 1 s) as lines;
* ``dashboard.png``: each dashboard page's cold render time at every size
  measured, with the 2 s target;
* ``gateway.png``: each proxy setup's throughput as a multiple of the no-op
  mitmproxy's and its p50 over the no-op's, at concurrency 1 and 16, with
  issue 3's targets (>= 0.8x, <= +2 ms) and the spread of the rounds, and,
  for results that have it, each proxy's CPU µs per request. Each
  ``--gateway`` file gives one chart named after it (``gateway_cpu.json`` ->
  ``gateway_cpu.png``).

    .venv/bin/python bench/plots.py [--pipeline bench/results/pipeline.json]
        [--dashboard bench/results/dashboard.json ...]
        [--gateway bench/results/gateway.json ...] [--out docs/img]

``make bench-plots`` installs matplotlib (the ``bench`` extra) first; the test
suite never needs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: The queries with a target in issue 5, and the target in ms.
TARGETS_MS = {"session timeline": 100.0, "sessions list (actor filter)": 1000.0}


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "matplotlib is missing: run `make bench-plots` (it installs the bench extra)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_queries(pipeline_json: Path, out: Path) -> Path:
    plt = _matplotlib()
    results = json.loads(pipeline_json.read_text())["queries"]
    backends = {"lake": "lake (Delta via chDB)", "chdb": "MergeTree (chDB)"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, (backend, title) in zip(axes, backends.items(), strict=True):
        cells = sorted(
            ((int(key.split("@")[1]), cell) for key, cell in results.items()
             if key.split("@")[0] == backend),
            key=lambda kv: kv[0],
        )  # fmt: skip
        if not cells:
            ax.set_title(f"{title}: not measured")
            continue
        sizes = [size for size, _ in cells]
        names = [n for n in cells[0][1]["timings"] if not n.startswith("baseline")]
        for name in names:
            ys = [cell["timings"][name]["median_ms"] for _, cell in cells]
            style = "-o" if name in TARGETS_MS else "--."
            ax.plot(sizes, ys, style, label=name, linewidth=2 if name in TARGETS_MS else 1)
        for name, target in TARGETS_MS.items():
            ax.axhline(target, color="grey", linestyle=":", linewidth=1)
            ax.annotate(
                f"target: {name} < {target:g} ms",
                (sizes[0], target),
                textcoords="offset points",
                xytext=(2, 3),
                fontsize=7,
                color="grey",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [f"{s / 1e6:g}M" for s in sizes])
        ax.set_xlabel("events in the warehouse")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.2)
    axes[0].set_ylabel("median latency, ms (log)")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Warehouse queries (pipeline/queries.py) against data size")
    fig.tight_layout()
    path = out / "queries.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_dashboard(dashboard_jsons: list[Path], out: Path, target_s: float = 2.0) -> Path:
    plt = _matplotlib()
    runs = sorted(
        (json.loads(p.read_text()) for p in dashboard_jsons), key=lambda r: int(r["events"])
    )
    pages = [p for p in runs[0]["pages"] if p != "sign-in"]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(pages) + 1.5))
    height = 0.8 / len(runs)
    for i, run in enumerate(runs):
        ys = [k + i * height for k in range(len(pages))]
        xs = [run["pages"].get(p, {}).get("cold_median_s", 0.0) for p in pages]
        errs = [
            max(0.0, run["pages"].get(p, {}).get("cold_max_s", 0.0) - x)
            for p, x in zip(pages, xs, strict=True)
        ]
        ax.barh(ys, xs, height=height, xerr=[[0] * len(xs), errs], capsize=2,
                label=f"{int(run['events']) / 1e6:g}M events (median, whisker: max)")  # fmt: skip
    ax.axvline(target_s, color="red", linestyle=":", label=f"target {target_s:g} s")
    ax.set_yticks([k + height * (len(runs) - 1) / 2 for k in range(len(pages))], pages)
    ax.invert_yaxis()
    ax.set_xlabel("cold render, s (AppTest, result cache cleared)")
    ax.set_title("Dashboard pages on the embedded lake")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, axis="x", alpha=0.2)
    fig.tight_layout()
    path = out / "dashboard.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_gateway(gateway_json: Path, out: Path) -> Path:
    from gateway import STOCK  # bench/gateway.py's row of mitmproxy as shipped

    plt = _matplotlib()
    rows = [r for r in json.loads(gateway_json.read_text()) if "concurrency" in r]
    noop_name = "mitmproxy, no-op addon"
    noop = {r["concurrency"]: r for r in rows if r["setup"] == noop_name}
    setups = [s for s in dict.fromkeys(r["setup"] for r in rows)
              if s not in ("direct", noop_name)]  # fmt: skip
    concs = sorted(noop)
    with_cpu = any("proxy_cpu_us_per_req" in r for r in rows)
    fig, axes = plt.subplots(1, 3 if with_cpu else 2, figsize=(17 if with_cpu else 12, 4.8))
    ax_rps, ax_p50 = axes[0], axes[1]
    width = 0.8 / max(1, len(setups))
    for i, setup in enumerate(setups):
        xs, ratios, lo, hi, deltas = [], [], [], [], []
        for k, conc in enumerate(concs):
            cell = next((r for r in rows if r["setup"] == setup and r["concurrency"] == conc), None)
            if cell is None:
                continue
            base = noop[conc]["rps"]
            per_round = [r["rps"] / base for r in cell.get("rounds", [])] or [cell["rps"] / base]
            xs.append(k + i * width)
            ratios.append(cell["rps"] / base)
            lo.append(ratios[-1] - min(per_round))
            hi.append(max(per_round) - ratios[-1])
            deltas.append(cell["p50_ms"] - noop[conc]["p50_ms"])
        ax_rps.bar(xs, ratios, width, yerr=[lo, hi], capsize=2, label=setup)
        bars = ax_p50.bar(xs, deltas, width, label=setup)
        ax_p50.bar_label(bars, fmt="%+.1f", fontsize=7)
    ticks = [k + width * (len(setups) - 1) / 2 for k in range(len(concs))]
    if with_cpu:
        # CPU per request of every proxy (its process tree): what bounds req/s
        # when the proxy's one event loop is the bottleneck
        ax_cpu = axes[2]
        proxies = [noop_name, *setups]
        cpu_width = 0.8 / len(proxies)
        for i, setup in enumerate(proxies):
            xs, cpu = [], []
            for k, conc in enumerate(concs):
                cell = next(
                    (r for r in rows if r["setup"] == setup and r["concurrency"] == conc), None
                )
                if cell is not None and "proxy_cpu_us_per_req" in cell:
                    xs.append(k + i * cpu_width)
                    cpu.append(cell["proxy_cpu_us_per_req"])
            bars = ax_cpu.bar(xs, cpu, cpu_width, label=setup, color=f"C{(i - 1) % 10}"
                              if i else "grey")  # fmt: skip
            ax_cpu.bar_label(bars, fmt="%.0f", fontsize=7)
        ax_cpu.set_xticks(
            [k + cpu_width * (len(proxies) - 1) / 2 for k in range(len(concs))],
            [f"concurrency {c}" for c in concs],
        )
        ax_cpu.set_ylabel("proxy CPU µs per request (all its threads/processes)")
        ax_cpu.grid(True, axis="y", alpha=0.2)
    for ax in (ax_rps, ax_p50):
        ax.set_xticks(ticks, [f"concurrency {c}" for c in concs])
        ax.grid(True, axis="y", alpha=0.2)
    ax_rps.axhline(0.8, color="red", linestyle=":", label="target >= 0.8x")
    stock = {r["concurrency"]: r for r in rows if r["setup"] == STOCK}
    for k, conc in enumerate(concs):
        # the same target read against mitmproxy as shipped (mitmdump, default addons)
        if conc in stock:
            level = 0.8 * stock[conc]["rps"] / noop[conc]["rps"]
            ax_rps.hlines(level, k - width / 2, k + width * (len(setups) - 0.5),
                          color="purple", linestyle="--",
                          label="0.8x mitmdump as shipped" if k == 0 else None)
    ax_rps.set_ylabel("req/s as a multiple of the no-op mitmproxy (whiskers: rounds)")
    ax_p50.axhline(2.0, color="red", linestyle=":", label="target <= +2 ms")
    ax_p50.set_ylabel("p50 minus the no-op's p50, ms")
    (axes[-1]).legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    lines = [h for h in ax_rps.get_legend_handles_labels()[0] if not hasattr(h, "patches")]
    ax_rps.legend(handles=lines, fontsize=7, loc="upper left")  # the target lines only
    fig.suptitle("Gateway overhead against mitmproxy with a no-op addon (bench/gateway.py)")
    fig.tight_layout()
    path = out / f"{gateway_json.stem}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_verify(verify_jsons: list[Path], out: Path) -> Path:
    """Export and verify time against bundle size (bench/verify_bundle.py runs)."""
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(8, 5))
    series = (("export s", "export", "-o"), ("verify s", "verify", "-s"),
              ("verify, proofs only s", "verify without the table checks", "--."))  # fmt: skip
    for path in verify_jsons:
        rows = sorted(json.loads(path.read_text()), key=lambda r: r["events"])
        xs = [r["events"] for r in rows]
        for key, label, style in series:
            ax.plot(xs, [r[key] for r in rows], style, label=f"{label} ({path.stem})")
        old = [(r["events"], r["export before s"]) for r in rows if "export before s" in r]
        if old:
            ax.plot([x for x, _ in old], [y for _, y in old], "rx", markersize=9,
                    label=f"export before batching ({path.stem})")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events in the bundle")
    ax.set_ylabel("median seconds (log)")
    ax.set_title("Evidence bundles: export and offline verify against size")
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(fontsize=7)
    fig.tight_layout()
    target = out / "verify.png"
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", type=Path, default=ROOT / "bench/results/pipeline.json")
    parser.add_argument("--dashboard", type=Path, nargs="+",
                        default=[ROOT / "bench/results/dashboard.json"])  # fmt: skip
    parser.add_argument("--gateway", type=Path, nargs="+",
                        default=[ROOT / "bench/results/gateway.json",
                                 ROOT / "bench/results/gateway_cpu.json"])  # fmt: skip
    parser.add_argument("--verify", type=Path, nargs="+",
                        default=[ROOT / "bench/results/verify.json"])  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    made = []
    if args.pipeline.exists() and json.loads(args.pipeline.read_text()).get("queries"):
        made.append(plot_queries(args.pipeline, args.out))
    else:
        print(f"{args.pipeline}: no query timings; run bench/pipeline.py first", file=sys.stderr)
    present = [p for p in args.dashboard if p.exists()]
    if present:
        made.append(plot_dashboard(present, args.out))
    else:
        print("no dashboard results; run bench/dashboard.py first", file=sys.stderr)
    for gateway in args.gateway:
        if gateway.exists():
            made.append(plot_gateway(gateway, args.out))
        else:
            print(f"{gateway}: missing; run bench/gateway.py first", file=sys.stderr)
    present = [p for p in args.verify if p.exists()]
    if present:
        made.append(plot_verify(present, args.out))
    else:
        print("no verify results; run bench/verify_bundle.py first", file=sys.stderr)
    for path in made:
        print(f"wrote {path}")
    if not made:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
