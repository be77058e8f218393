"""``embedguard warehouse migrate|compact|stats|retention|purge`` and ``embedguard sessions
list|show`` (``embedguard lineage`` is in embedguard/cli_replay.py).

Thin: parse options, call :mod:`pipeline.warehouse` and :mod:`pipeline.queries`,
print (a table, or ``--json``). Registered in ``embedguard/cli.py`` by
``register(app)``.

Exit codes: 0 done; 1 the warehouse failed or the thing asked for does not
exist (the message says what to do); 2 bad options or configuration.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table
from rich.text import Text

from embedguard.console import plain_console, visible
from embedguard.settings import Settings
from pipeline import queries
from pipeline.loader_status import scrub
from pipeline.warehouse import Warehouse, WarehouseError, open_warehouse

__all__ = ["register", "sessions_app", "warehouse_app"]

warehouse_app = typer.Typer(
    help="The warehouse (a projection of the log): migrate, compact, stats, retention, purge.",
    no_args_is_help=True,
)
sessions_app = typer.Typer(help="Recorded sessions, from the warehouse.", no_args_is_help=True)

_out = plain_console(wide=True)
_err = plain_console(stderr=True)

WarehouseOpt = Annotated[
    str | None,
    typer.Option(
        "--warehouse",
        help="Warehouse URL: lake:DIR, chdb:DIR or clickhouse://user:pass@host:8123/db "
        "(default: EMBEDGUARD_WAREHOUSE, else lake:data/lake)",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    _err.print(Text.assemble(("error:", "bold red"), " ", visible(scrub(message))))
    return typer.Exit(code)


def _reject_empty(*options: tuple[str, str | None, str]) -> None:
    """Exit 2 on the first filter given as "": an empty value would match
    everything (an unfiltered list or export) instead of what was meant.
    Each option is (its flag, its value, what to give instead)."""
    for flag, value, what in options:
        if value == "":
            raise _fail(f"{flag} is empty; give {what}, or leave {flag} out", 2)


def _url(warehouse: str | None) -> str:
    if warehouse:
        return warehouse
    try:
        return Settings().warehouse_url
    except ValidationError as exc:
        raise _fail(f"configuration: {exc.errors()[0]['msg']}", 2) from None


@contextmanager
def _warehouse(warehouse: str | None, *, must_exist: bool = True) -> Iterator[Warehouse]:
    url = _url(warehouse)
    if must_exist and url.startswith("lake:"):
        from pathlib import Path

        root = Path(url.removeprefix("lake:").partition("?")[0])
        if not (root / "_migrations.json").exists():
            raise _fail(
                f"no warehouse at {root}; load one with `embedguard loader --once` or create "
                f"it with `embedguard warehouse migrate --warehouse {url}`"
            )
    try:
        wh = open_warehouse(url)
    except WarehouseError as exc:
        raise _fail(str(exc), 2) from None
    try:
        yield wh
    except WarehouseError as exc:
        raise _fail(f"{wh.url}: {exc}") from None
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    finally:
        wh.close()


def _print_json(data: Any) -> None:
    _out.print_json(json.dumps(data, default=str), highlight=False)


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    # Text, not str: a str cell or title is parsed as markup by a console that
    # allows it, and warehouse values are whatever clients sent
    table = Table(title=Text(visible(title), style="table.title"), show_lines=False)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*(Text(_cell(r.get(c))) for c in columns))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return visible(", ".join(str(v) for v in value))
    return visible(value)


# -- warehouse -----------------------------------------------------------------------------
@warehouse_app.command("migrate")
def migrate_command(warehouse: WarehouseOpt = None, as_json: JsonOpt = False) -> None:
    """Create the warehouse tables, or apply the migrations it lacks (idempotent)."""
    with _warehouse(warehouse, must_exist=False) as wh:
        applied = wh.migrate()
        if as_json:
            _print_json({"warehouse": wh.url, "applied": applied})
        elif applied:
            _out.print(f"{wh.url}: applied {', '.join(applied)}")
        else:
            _out.print(f"{wh.url}: up to date")


@warehouse_app.command("compact")
def compact_command(
    warehouse: WarehouseOpt = None,
    log: Annotated[
        str | None,
        typer.Option(
            "--log",
            help="The log the warehouse is loaded from: expired bodies are purged only if it "
            "holds no evidence hold not yet loaded (default: EMBEDGUARD_LOG)",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compact small files and drop unreferenced ones (Delta), or merge parts (ClickHouse),
    and purge expired bodies that no evidence hold keeps (with ?body_retention_days=N).

    Safe while the loader and readers run; the loader also does it periodically."""
    import asyncio

    from pipeline.retention import gate_purge_url

    with _warehouse(warehouse) as wh:
        deferred = None
        if getattr(wh, "body_retention_days", None) is not None:
            deferred = asyncio.run(gate_purge_url(log or _settings_log(), wh))
        wh.compact()
        stats = wh.stats()
        if deferred:
            stats["body_purge_deferred"] = deferred
        if as_json:
            _print_json(stats)
        else:
            _out.print(f"{wh.url}: compacted; {stats['tables'].get('events', 0)} events")
            if deferred:
                _out.print(f"bodies were not purged: {deferred}")


@warehouse_app.command("stats")
def stats_command(warehouse: WarehouseOpt = None, as_json: JsonOpt = False) -> None:
    """Stored rows per table, the distinct events, and the last load time.

    Table rows are storage figures: a row written twice (a retried batch, an
    event the log holds twice) counts twice until a ClickHouse merge drops the
    copy, and for good on the lake, while every query of `sessions`, `lineage`
    and the dashboard counts it once. `distinct_events` is the number of events
    the warehouse holds; `duplicate_event_rows` the stored copies beyond one."""
    with _warehouse(warehouse) as wh:
        stats = wh.stats()
        if as_json:
            _print_json(stats)
            return
        rows = [{"table": t, "rows": n} for t, n in stats["tables"].items()]
        _out.print(_table(f"{wh.url} (last load {stats['last_load_at']})", rows, ["table", "rows"]))
        _out.print(
            f"{stats['distinct_events']} distinct events"
            + (f"; {stats['duplicate_event_rows']} stored event rows are copies (counted once "
               "by every query)" if stats["duplicate_event_rows"] else "")
        )


# -- retention and evidence holds ---------------------------------------------------------
def _at(at: str | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    try:
        return datetime.fromisoformat(queries._time(at).replace(" ", "T") + "+00:00")
    except ValueError as exc:
        raise _fail(f"--at: {exc}", 2) from None


def _print_retention(report: Any, *, purged: bool) -> None:
    days = report.body_retention_days
    _out.print(
        f"{report.warehouse}: body retention "
        + (f"{days} days (bodies before {report.cutoff})" if days else "not set: bodies are kept")
        + "; events and derived tables are never deleted by retention"
    )
    rows = [
        {
            "hold_id": h.hold_id,
            "bundle": h.bundle_name,
            "held_by": h.held_by,
            "held_at": h.held_at,
            "held_until": h.held_until,
            "state": ("active" if h.active else "expired")
            + ("" if h.complete else f" ({h.parts_loaded}/{h.parts} parts loaded)"),
            "bodies": h.bodies_loaded,
            "sessions": h.session_count,
        }
        for h in report.holds
    ]
    _out.print(
        _table(
            f"{sum(1 for h in report.holds if h.active)} active evidence hold(s)",
            rows,
            [
                "hold_id",
                "bundle",
                "held_by",
                "held_at",
                "held_until",
                "state",
                "bodies",
                "sessions",
            ],
        )
    )
    verb = "deleted" if purged else "the next purge deletes"
    line = (
        f"{verb} {report.delete_bodies} body(ies), {report.delete_bytes} bytes; keeps "
        f"{report.keep_held_bodies} held by an evidence hold and {report.keep_young_bodies} "
        f"younger than the retention (of {report.bodies})"
    )
    if purged:
        line += f"; {report.deleted_rows} row(s) deleted"
    _out.print(line)


@warehouse_app.command("retention")
def retention_command(
    at: Annotated[
        str | None,
        typer.Option("--at", help="Plan as of this ISO 8601 time (default: now)"),
    ] = None,
    warehouse: WarehouseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Body retention: the configured retention (the URL's ?body_retention_days=N),
    the evidence holds (bundle, who, until when, bodies) and what the next purge
    would delete and keep."""
    from pipeline.retention import retention_report

    now = _at(at)
    with _warehouse(warehouse) as wh:
        report = retention_report(wh, now=now)
    if as_json:
        _print_json(report.to_json())
    else:
        _print_retention(report, purged=False)


@warehouse_app.command("purge")
def purge_command(
    log: Annotated[
        str | None,
        typer.Option(
            "--log",
            help="The log the warehouse is loaded from: the purge refuses while it holds "
            "evidence holds not yet loaded (default: EMBEDGUARD_LOG)",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Purge without checking the log for unloaded holds")
    ] = False,
    warehouse: WarehouseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete the bodies past the retention that no active evidence hold keeps
    (the loader also does it when it compacts). Events are never deleted."""
    import asyncio

    from pipeline.retention import pending_holds, purge_bodies

    with _warehouse(warehouse) as wh:
        if getattr(wh, "body_retention_days", None) is None:
            raise _fail(
                f"{wh.url} has no body retention: bodies are kept. Set one with "
                "?body_retention_days=N in the warehouse URL",
                2,
            )
        if not force:
            log_url = log or _settings_log()
            try:
                unloaded, held = asyncio.run(pending_holds(log_url, wh))
            except Exception as exc:  # noqa: BLE001 - any failure: do not purge blind
                raise _fail(
                    f"could not check the log {scrub(log_url)} for evidence holds not yet "
                    f"loaded ({type(exc).__name__}: {exc}); nothing was purged. Pass --log, "
                    "or --force to purge anyway"
                ) from None
            if held:
                raise _fail(
                    f"the log has {held} evidence hold event(s) not yet loaded into {wh.url} "
                    f"({unloaded} record(s) behind); nothing was purged. Run `embedguard "
                    "loader --once` first (or pass --force)"
                )
        report = purge_bodies(wh)
    if as_json:
        _print_json(report.to_json())
    else:
        _print_retention(report, purged=True)


def _settings_log() -> str:
    try:
        return Settings().log_url
    except ValidationError as exc:
        raise _fail(f"configuration: {exc.errors()[0]['msg']}", 2) from None


# -- sessions ------------------------------------------------------------------------------
@sessions_app.command("list")
def sessions_list_command(
    actor: Annotated[str | None, typer.Option("--actor", help="Subject (user or client)")] = None,
    collection: Annotated[
        str | None, typer.Option("--collection", help="A collection the session touched")
    ] = None,
    action: Annotated[
        str | None,
        typer.Option("--action", help="search, read, write, delete, admin, schema, health"),
    ] = None,
    decision: Annotated[
        str | None, typer.Option("--decision", help="allow, deny or require_approval")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="ISO 8601 time (UTC if no zone)")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO 8601 time, exclusive")] = None,
    body: Annotated[
        str | None,
        typer.Option(
            "--body",
            help="Text that a request or response body of the session contains "
            "(as recorded, masked; case-sensitive; scans every stored body)",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=queries.MAX_LIMIT)] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    warehouse: WarehouseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Sessions matching the filters, newest first (paged with --limit/--offset)."""
    _reject_empty(
        ("--actor", actor, "a subject"),
        ("--collection", collection, "a collection name"),
        ("--action", action, "an action"),
        ("--decision", decision, "a decision"),
        ("--since", since, "an ISO 8601 time"),
        ("--until", until, "an ISO 8601 time"),
        ("--body", body, "the text to look for"),
    )
    if action is not None and action not in _ACTIONS:
        raise _fail(f"--action {action!r} is not one of {', '.join(sorted(_ACTIONS))}", 2)
    if decision is not None and decision not in _DECISIONS:
        raise _fail(f"--decision {decision!r} is not one of {', '.join(_DECISIONS)}", 2)
    filters = queries.SessionFilter(
        actor=actor,
        collection=collection,
        action=action,
        decision=decision,
        since=since,
        until=until,
        body=body,
    )
    with _warehouse(warehouse) as wh:
        rows = queries.sessions_list(wh, filters, limit=limit, offset=offset)
        total = queries.sessions_count(wh, filters)
    if as_json:
        _print_json({"total": total, "limit": limit, "offset": offset, "sessions": rows})
        return
    title = f"{len(rows)} of {total} sessions (offset {offset})"
    _out.print(
        _table(
            title,
            rows,
            [
                "session_id",
                "subject",
                "started_at",
                "last_event_at",
                "request_count",
                "actions",
                "collections",
                "decisions",
                "denied_count",
            ],
        )
    )


_ACTIONS = {"search", "read", "write", "delete", "admin", "schema", "health", "unknown"}
_DECISIONS = ("allow", "deny", "require_approval", "blocked")


@sessions_app.command("show")
def sessions_show_command(
    session_id: Annotated[str, typer.Argument(help="The session id")],
    events: Annotated[
        bool, typer.Option("--events/--no-events", help="Include the event timeline")
    ] = True,
    warehouse: WarehouseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One session: its summary, its requests in order and its event timeline."""
    with _warehouse(warehouse) as wh:
        summary = queries.session(wh, session_id)
        if summary is None:
            raise _fail(
                f"no session {session_id!r} in {wh.url}; list them with `embedguard sessions "
                "list` (a session appears once the loader has loaded it)"
            )
        requests = queries.session_requests(wh, session_id)
        timeline = queries.session_events(wh, session_id) if events else []
    if as_json:
        out: dict[str, Any] = {"session": summary, "requests": requests}
        if events:
            out["events"] = timeline
        _print_json(out)
        return
    _out.print(
        _table(
            f"session {session_id}",
            [summary],
            [
                "subject",
                "started_at",
                "last_event_at",
                "ended_reason",
                "event_count",
                "request_count",
            ],
        )
    )
    _out.print(
        _table(
            "requests",
            requests,
            [
                "request_id",
                "received_at",
                "method",
                "path",
                "actions",
                "collections",
                "decision",
                "state",
                "status",
                "approval_id",
            ],
        )
    )
    if events:
        _out.print(
            _table(
                "events",
                timeline,
                ["seq", "occurred_at", "type", "request_id", "outcome", "status"],
            )
        )


def register(app: typer.Typer) -> None:
    """Add ``warehouse`` and ``sessions`` to the ``embedguard`` app (``lineage``
    lives in embedguard/cli_replay.py)."""
    app.add_typer(warehouse_app, name="warehouse")
    app.add_typer(sessions_app, name="sessions")
