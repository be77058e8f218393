"""``embedguard loader`` (run, status) and ``embedguard warehouse rebuild``.

Thin: parse options, call :mod:`pipeline.loader`, print. Registered in
``embedguard/cli.py`` by ``register(app)``.

Exit codes: 0 done; 1 the loader stopped on an error (the message says what to
do); 2 bad options or configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from embedguard.console import plain_console, visible
from embedguard.settings import Settings
from pipeline.loader import (
    DEFAULT_GROUP,
    LoaderConfig,
    LoaderError,
    LoadSummary,
    dead_letter_count,
)
from pipeline.loader_status import read_statuses, scrub

__all__ = ["loader_app", "register", "rebuild_command"]

loader_app = typer.Typer(
    help="Load the event log into the warehouse (exactly once), and show how far it is.",
    invoke_without_command=True,
    no_args_is_help=False,
)
# No markup, no emoji codes: URLs, paths, group names and error messages are
# printed as they are ("[/x]" in a path is text, not a closing tag).
_out = plain_console()
_err = plain_console(stderr=True)

LogOpt = Annotated[
    str | None,
    typer.Option(
        "--log",
        help="Event log URL: sqlite:PATH or kafka://HOST:PORT?topic=T "
        "(default: EMBEDGUARD_LOG, else sqlite:data/events.db)",
    ),
]
WarehouseOpt = Annotated[
    str | None,
    typer.Option(
        "--warehouse",
        help="Warehouse URL: lake:DIR, chdb:DIR or clickhouse://user:pass@host:8123/db "
        "(default: EMBEDGUARD_WAREHOUSE, else lake:data/lake)",
    ),
]
GroupOpt = Annotated[
    str,
    typer.Option("--group", help="Consumer group; loaders of one group share the partitions"),
]
StatusDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--status-dir", help="Where loaders write their status (default: DATA_DIR/loader)"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text")]
#: how long a run that should end (--once, rebuild) retries an unreachable log or
#: warehouse before it exits 1 naming it
ONCE_GIVE_UP_AFTER_S = 60.0
GiveUpOpt = Annotated[
    float | None,
    typer.Option(
        "--give-up-after",
        min=0.1,
        help="Seconds to keep retrying an unreachable log or warehouse before exiting "
        f"with an error (default: {ONCE_GIVE_UP_AFTER_S:.0f} with --once and for a rebuild; "
        "a loader without --once retries until stopped, and `loader status` shows it "
        "retrying)",
    ),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err.print(Text.assemble(("error:", "bold red"), " ", visible(scrub(message))))
    return typer.Exit(code)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise _fail(f"configuration: {exc.errors()[0]['msg']}") from None


def _urls(log: str | None, warehouse: str | None) -> tuple[str, str]:
    settings = _settings()
    return log or settings.log_url, warehouse or settings.warehouse_url


def _status_dir(status_dir: Path | None) -> Path:
    return status_dir if status_dir is not None else _settings().data_dir / "loader"


def _require_existing_log(url: str) -> None:
    if url.startswith("sqlite:"):
        path = Path(url.removeprefix("sqlite:").removeprefix("//"))
        if not path.exists():
            raise _fail(
                f"no event log at {path}; check --log / EMBEDGUARD_LOG (nothing was created)"
            )


def _open(log_url: str, warehouse_url: str) -> tuple[Any, Any]:
    from pipeline.transport import EventLogError, open_log
    from pipeline.warehouse import WarehouseError, open_warehouse

    _require_existing_log(log_url)
    try:
        event_log = open_log(log_url)
    except (EventLogError, ValueError) as exc:
        raise _fail(str(exc)) from None
    try:
        warehouse = open_warehouse(warehouse_url)
    except WarehouseError as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:  # a driver that refuses the URL: name it, never a traceback
        raise _fail(f"cannot open warehouse {warehouse_url}: {type(exc).__name__}: {exc}") from None
    return event_log, warehouse


@contextlib.contextmanager
def _progress(enabled: bool, label: str) -> Iterator[Any]:
    """A rich progress bar on stderr, or nothing."""
    if not enabled:
        yield None
        return
    progress = Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_err,
        transient=False,
    )
    with progress:
        task = progress.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=max(total, done))

        yield update


def _run_loader(
    log_url: str,
    warehouse_url: str,
    config: LoaderConfig,
    *,
    once: bool,
    show_progress: bool,
    label: str,
) -> LoadSummary:
    from pipeline.loader import Loader
    from pipeline.transport import EventLogError

    event_log, warehouse = _open(log_url, warehouse_url)

    async def main() -> LoadSummary:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        async with event_log:
            with _progress(show_progress, label) as update:
                loader = Loader(event_log, warehouse, config, on_progress=update)
                return await loader.run(once=once, stop=stop)

    try:
        return asyncio.run(main())
    except LoaderError as exc:
        raise _fail(str(exc), 1) from None
    except EventLogError as exc:
        raise _fail(str(exc), 1) from None
    finally:
        with contextlib.suppress(Exception):
            warehouse.close()


def _summary_text(summary: LoadSummary) -> str:
    positions = ", ".join(f"{p}→{o}" for p, o in sorted(summary.positions.items())) or "none"
    return (
        f"loaded {summary.events} event(s) and {summary.dead_letters} dead letter(s) in "
        f"{summary.batches} batch(es) in {summary.elapsed_s:.1f}s "
        f"({summary.events_per_s:,.0f} records/s); skipped {summary.skipped_records} record(s) "
        f"already in the warehouse, {summary.duplicate_batches} duplicate batch(es), "
        f"{summary.retries} retry(ies); next offsets: {positions}"
    )


def _summary_json(summary: LoadSummary) -> dict[str, Any]:
    return {
        "events": summary.events,
        "dead_letters": summary.dead_letters,
        "batches": summary.batches,
        "duplicate_batches": summary.duplicate_batches,
        "skipped_records": summary.skipped_records,
        "retries": summary.retries,
        "elapsed_s": round(summary.elapsed_s, 3),
        "records_per_s": round(summary.events_per_s, 1),
        "positions": {str(p): o for p, o in sorted(summary.positions.items())},
    }


@loader_app.callback()
def loader_command(
    ctx: typer.Context,
    log: LogOpt = None,
    warehouse: WarehouseOpt = None,
    once: Annotated[
        bool, typer.Option("--once", help="Load what the log holds now, then exit")
    ] = False,
    group: GroupOpt = DEFAULT_GROUP,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="Largest batch written at once")
    ] = 10_000,
    compact_every: Annotated[
        float,
        typer.Option("--compact-every", min=0, help="Seconds between compactions (0: never)"),
    ] = 600.0,
    pipeline_depth: Annotated[
        int,
        typer.Option(
            "--pipeline-depth",
            min=1,
            max=16,
            help="Batches in the write pipeline at once: 2 decodes and "
            "projects the next batch while one is written; 1 writes strictly one after "
            "the other; more holds more prepared batches in memory. Writes stay one at a "
            "time, in order, exactly once either way",
        ),
    ] = 2,
    status_dir: StatusDirOpt = None,
    give_up_after: GiveUpOpt = None,
    as_json: JsonOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each retry")] = False,
) -> None:
    """Run the loader: read the log, write the warehouse, then commit offsets."""
    if ctx.invoked_subcommand is not None:
        return
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log_url, warehouse_url = _urls(log, warehouse)
    try:
        config = LoaderConfig(
            group=group,
            max_batch=max_batch,
            initial_batch=min(1_000, max_batch),
            min_batch=min(100, max_batch),
            compact_interval=compact_every or None,
            status_dir=_status_dir(status_dir),
            pipeline_depth=pipeline_depth,
            give_up_after=give_up_after or (ONCE_GIVE_UP_AFTER_S if once else None),
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    summary = _run_loader(
        log_url,
        warehouse_url,
        config,
        once=once,
        show_progress=once,
        label="loading",
    )
    if as_json:
        print(json.dumps(_summary_json(summary), sort_keys=True))
    else:
        _err.print(_summary_text(summary))


# -- status


async def _live_lag(
    log_url: str, warehouse_url: str
) -> tuple[str, dict[int, int], dict[int, int], int]:
    """(source, log end offsets, warehouse positions, dead letters), read now."""
    from pipeline.transport import open_log
    from pipeline.warehouse import open_warehouse

    # Reading the status must not create a Kafka topic as a side effect.
    options: dict[str, Any] = {"create_topic": False} if log_url.startswith("kafka:") else {}
    async with open_log(log_url, **options) as event_log:
        source = event_log.source_id
        async with event_log.tail_reader() as reader:
            ends = await reader.end_offsets()
    warehouse = open_warehouse(warehouse_url)
    try:
        loaded = await asyncio.to_thread(warehouse.loaded_positions, source)
        dead = await asyncio.to_thread(dead_letter_count, warehouse)
    finally:
        warehouse.close()
    return source, ends, loaded, dead


def status_report(log_url: str, warehouse_url: str, group: str, status_dir: Path) -> dict[str, Any]:
    """The status of the loaders of ``group``: lag per partition, rate, dead
    letters and the last error (live where the log and warehouse can be read,
    else from the loaders' status files)."""

    statuses = read_statuses(status_dir, group)
    report: dict[str, Any] = {
        "group": group,
        "log": scrub(log_url),
        "warehouse": scrub(warehouse_url),
        "live": False,
        "problems": [],
    }
    partitions: dict[str, dict[str, int | None]] = {}
    source: str | None
    try:
        if log_url.startswith("sqlite:"):
            path = Path(log_url.removeprefix("sqlite:").removeprefix("//"))
            if not path.exists():
                raise FileNotFoundError(f"no event log at {path}")
        source, ends, loaded, dead_letters = asyncio.run(_live_lag(log_url, warehouse_url))
    except Exception as exc:  # a report: say what could not be read, show the rest
        report["problems"].append(f"live lag unavailable: {type(exc).__name__}: {scrub(str(exc))}")
        source = statuses[0][0].source if statuses else None
        for status, _ in reversed(statuses):  # newest last wins
            partitions.update(status.partitions)
    else:
        report["live"] = True
        report["dead_letters"] = dead_letters
        for partition in sorted(set(ends) | set(loaded)):
            end, done = ends.get(partition), loaded.get(partition, 0)
            partitions[str(partition)] = {
                "end": end,
                "loaded": done,
                "lag": None if end is None else max(0, end - done),
            }
    report["source"] = source
    report["partitions"] = partitions
    lags = [p["lag"] for p in partitions.values() if p.get("lag") is not None]
    report["lag_total"] = sum(int(lag) for lag in lags if lag is not None)
    running = [s for s, alive in statuses if alive]
    report["running"] = len(running)
    report["events_per_s_1m"] = round(sum(s.events_per_s_1m for s in running), 1)
    totals = [s.dead_letters_total for s, _ in statuses if s.dead_letters_total is not None]
    if "dead_letters" not in report:
        report["dead_letters"] = (
            totals[0] if totals else sum(s.dead_letters_loaded for s, _ in statuses)
        )
    errors = [s for s, _ in statuses if s.last_error]
    newest_error = max(errors, key=lambda s: s.last_error_at or 0, default=None)
    report["last_error"] = newest_error.last_error if newest_error else None
    report["last_error_at"] = (
        _iso(newest_error.last_error_at) if newest_error and newest_error.last_error_at else None
    )
    report["loaders"] = [
        {
            "host": s.host,
            "pid": s.pid,
            "running": alive,
            "state": s.state if alive or s.state in ("stopped", "failed") else "gone",
            "assigned": s.assigned,
            "events_loaded": s.events_loaded,
            "events_per_s_1m": s.events_per_s_1m,
            "dead_letters_loaded": s.dead_letters_loaded,
            "batch_size": s.batch_size,
            "last_error": s.last_error,
            "updated_at": _iso(s.updated_at),
            "started_at": _iso(s.started_at),
        }
        for s, alive in statuses
    ]
    return report


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@loader_app.command("status")
def loader_status_command(
    log: LogOpt = None,
    warehouse: WarehouseOpt = None,
    group: GroupOpt = DEFAULT_GROUP,
    status_dir: StatusDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Lag per partition (log end vs warehouse), events/s over the last minute,
    dead letters and the last error."""
    log_url, warehouse_url = _urls(log, warehouse)
    report = status_report(log_url, warehouse_url, group, _status_dir(status_dir))
    if as_json:
        print(json.dumps(report, sort_keys=True))
        return
    from rich.table import Table

    _out.print(
        f"loader group {report['group']}: {report['running']} running, "
        f"{report['events_per_s_1m']} events/s (last minute), lag {report['lag_total']}, "
        f"dead letters {report['dead_letters']}"
    )
    table = Table("partition", "log end", "loaded", "lag")
    for partition, row in report["partitions"].items():
        table.add_row(
            *(Text(visible(v))
              for v in (partition, row.get("end"), row.get("loaded"), row.get("lag")))
        )
    _out.print(table)
    for loader in report["loaders"]:
        if loader["running"]:  # e.g. "retrying": the warehouse or log is down
            _out.print(f"loader {loader['host']} pid {loader['pid']}: {loader['state']}")
    if report["last_error"]:
        _out.print(f"last error ({report['last_error_at']}): {report['last_error']}")
    for problem in report["problems"]:
        _out.print(f"note: {problem}")


# -- warehouse rebuild


def rebuild_command(
    log: LogOpt = None,
    warehouse: WarehouseOpt = None,
    into: Annotated[
        str | None,
        typer.Option(
            "--into",
            help="Build into this fresh warehouse URL and leave the live one alone "
            "(default for lake: a new directory that then replaces the live one)",
        ),
    ] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1)] = 10_000,
    status_dir: StatusDirOpt = None,
    give_up_after: GiveUpOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay the whole log into a fresh warehouse (every table is a projection)."""
    log_url, live_url = _urls(log, warehouse)
    swap: tuple[Path, Path] | None = None
    options = ""
    if into is None:
        if not live_url.startswith("lake:"):
            raise _fail(
                f"rebuilding {scrub(live_url)} in place is only done for lake: warehouses; "
                "pass --into with a fresh (empty) warehouse URL"
            )
        live_dir, options = _lake_dir(live_url)
        running = [s for s, alive in read_statuses(_status_dir(status_dir)) if alive]
        busy = [
            s
            for s in running
            if s.warehouse.startswith("lake:")
            and _lake_dir(s.warehouse)[0].resolve() == live_dir.resolve()
        ]
        if busy:
            raise _fail(
                f"{len(busy)} loader(s) are writing {live_url} (pid "
                f"{', '.join(str(s.pid) for s in busy)}); stop them first, or pass --into"
            )
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target_dir = live_dir.with_name(f"{live_dir.name}.rebuild-{stamp}")
        swap = (live_dir, target_dir)
        # the live URL's options (?body_retention_days=N) hold for the rebuilt lake
        into = f"lake:{target_dir}{options}"
    _check_fresh(log_url, into)
    config = LoaderConfig(
        group=DEFAULT_GROUP,
        tail=True,
        max_batch=max_batch,
        initial_batch=max_batch,
        min_batch=min(100, max_batch),
        compact_interval=None,
        status_dir=None,
        give_up_after=give_up_after or ONCE_GIVE_UP_AFTER_S,
    )
    summary = _run_loader(log_url, into, config, once=True, show_progress=True, label="rebuilding")
    _compact(into)
    moved_to = None
    if swap is not None:
        live_dir, target_dir = swap
        if live_dir.exists():
            moved_to = live_dir.with_name(f"{live_dir.name}.before-rebuild-{int(time.time())}")
            live_dir.rename(moved_to)
        target_dir.rename(live_dir)
        into = f"lake:{live_dir}{options}"
    if as_json:
        result = _summary_json(summary)
        result["warehouse"] = scrub(into)
        result["previous"] = str(moved_to) if moved_to else None
        print(json.dumps(result, sort_keys=True))
    else:
        _err.print(_summary_text(summary))
        _err.print(f"rebuilt warehouse: {scrub(into)}")
        if moved_to is not None:
            _err.print(f"the previous warehouse is kept at {moved_to}; delete it when done")


def _lake_dir(url: str) -> tuple[Path, str]:
    """A ``lake:DIR?OPTIONS`` URL's directory, and its options ("" or "?...")."""
    path, sep, query = url.removeprefix("lake:").partition("?")
    return Path(path), sep + query


def _check_fresh(log_url: str, warehouse_url: str) -> None:
    """Refuse to 'rebuild' into a warehouse that already holds this log."""
    from pipeline.transport import EventLogError, open_log
    from pipeline.warehouse import WarehouseError, open_warehouse

    if warehouse_url.startswith(("lake:", "chdb:")):
        path = Path(warehouse_url.split(":", 1)[1].partition("?")[0])
        if path.exists() and any(path.iterdir()):
            raise _fail(
                f"{path} is not empty; rebuild into a new path (--into lake:NEW_DIR) "
                "so that nothing is loaded twice"
            )
        return

    _require_existing_log(log_url)

    async def source() -> str:
        async with open_log(log_url) as event_log:
            return event_log.source_id

    try:
        wh = open_warehouse(warehouse_url)
        try:
            loaded = wh.loaded_positions(asyncio.run(source()))
        finally:
            wh.close()
    except (EventLogError, WarehouseError) as exc:
        raise _fail(str(exc)) from None
    if loaded:
        raise _fail(
            f"{scrub(warehouse_url)} already holds records of this log; rebuild into a "
            "fresh database"
        )


def _compact(warehouse_url: str) -> None:
    from pipeline.warehouse import open_warehouse

    wh = open_warehouse(warehouse_url)
    try:
        wh.compact()
    except Exception as exc:  # an optimisation; the rebuild itself is complete
        _err.print(f"note: compaction after the rebuild failed: {scrub(str(exc))}")
    finally:
        wh.close()


def register(app: typer.Typer) -> None:
    """Add ``loader`` and ``warehouse rebuild`` to the ``embedguard`` app. The
    rebuild command joins an existing ``warehouse`` group, or starts one."""
    app.add_typer(loader_app, name="loader")
    for group in app.registered_groups:
        if group.name == "warehouse" and group.typer_instance is not None:
            group.typer_instance.command("rebuild")(rebuild_command)
            return
    warehouse_app = typer.Typer(help="The warehouse (a projection of the log).")
    warehouse_app.command("rebuild")(rebuild_command)
    app.add_typer(warehouse_app, name="warehouse")
