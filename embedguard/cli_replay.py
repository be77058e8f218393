"""``embedguard replay | diff | lineage | export | export-key | verify``.

Thin: parse options, call :mod:`replay`, print (rich tables and progress on a
terminal, or ``--json``). Registered from ``embedguard/cli.py`` by
``register(app)``.

Exit codes: 0 done (verify: the evidence holds); 1 a check failed, the thing
asked for does not exist, or the warehouse failed; 2 bad options or a refused
request (writes against production).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from embedguard.cli_warehouse import JsonOpt, WarehouseOpt, _reject_empty, _warehouse
from embedguard.console import plain_console, visible
from embedguard.settings import Settings
from pipeline import queries
from pipeline.loader_status import scrub

__all__ = ["register"]

_out = plain_console(wide=True)
_err = plain_console(stderr=True)

VkeyOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--vkey",
        help="Pinned gateway checkpoint key (`embedguard keys show`); repeat for several",
    ),
]
VkeyFileOpt = Annotated[
    Path | None, typer.Option("--vkey-file", help="File with pinned gateway vkeys, one a line")
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    _err.print(Text.assemble(("error:", "bold red"), " ", visible(scrub(message))))
    return typer.Exit(code)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise _fail(f"configuration: {exc.errors()[0]['msg']}", 2) from None


def _print_json(data: Any) -> None:
    _out.print_json(json.dumps(data, default=str), highlight=False)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}", markup=False),  # it names the session
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_err,
        transient=True,
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return visible(", ".join(str(v) for v in value))
    return visible(value)


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    # Text, not str: recorded values and arguments are never parsed as markup
    table = Table(title=Text(visible(title), style="table.title"))
    for c in columns:
        # ids stay on one line: people copy them
        ids = c.endswith("_id") or c in ("point_id", "#") or c.endswith("_at")
        table.add_column(c, no_wrap=ids, overflow="fold", min_width=min(len(c), 10))
    for r in rows:
        table.add_row(*(Text(_cell(r.get(c))) for c in columns))
    return table


# -- replay ----------------------------------------------------------------------------------
def replay_command(
    session_id: Annotated[str, typer.Argument(help="The recorded session to replay")],
    target: Annotated[
        str,
        typer.Option(
            "--target",
            help="A target named in embedguard.toml [[targets]], or a URL (an unconfigured "
            "URL is treated as production: read-only)",
        ),
    ],
    as_recorded_identity: Annotated[
        bool,
        typer.Option(
            "--as-recorded-identity",
            help="Send each request with a token for its recorded subject and groups, minted "
            "by the target's dev_issuer (staging gateways only)",
        ),
    ] = False,
    token: Annotated[
        str | None, typer.Option("--token", help="Bearer token to send (e.g. through a gateway)")
    ] = None,
    include_writes: Annotated[
        bool,
        typer.Option(
            "--include-writes",
            help="Also replay writes and deletes (refused against a production target)",
        ),
    ] = False,
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="Scores/distances within this are equal")
    ] = 1e-4,
    warehouse: WarehouseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-execute a recorded session against a target; per request, status then and now
    and a structured diff of the bodies."""
    from replay.replayer import ReplayError, ReplayRefused, replay_session, resolve_target
    from replay.sessions import SessionNotFound, load_session

    settings = _settings()
    try:
        tgt = resolve_target(target, settings.targets)
    except ReplayError as exc:
        raise _fail(str(exc), 2) from None
    if include_writes and tgt.production:
        raise _fail(
            f"--include-writes refused: target {tgt.name!r} is production (or not configured "
            "with production = false); writes and deletes are never replayed against it",
            2,
        )
    with _warehouse(warehouse) as wh:
        try:
            session = load_session(wh, session_id)
        except SessionNotFound as exc:
            raise _fail(str(exc)) from None
    for issue in session.chain_issues:
        _err.print(Text.assemble(("warning:", "yellow"), visible(f" session chain: {issue}")))
    with _progress() as progress:
        task = progress.add_task(f"replaying {session_id}", total=len(session.steps))
        try:
            report = replay_session(
                session,
                tgt,
                include_writes=include_writes,
                token=token,
                as_recorded_identity=as_recorded_identity,
                tolerance=tolerance,
                on_step=lambda _r: progress.advance(task),
            )
        except ReplayRefused as exc:
            raise _fail(str(exc), 2) from None
        except ReplayError as exc:
            raise _fail(str(exc), 2) from None
    if as_json:
        _print_json(report.to_json())
        return
    rows = []
    for s in report.steps:
        d = s.diff
        rows.append(
            {
                "#": s.index,
                "request_id": s.request_id,
                "method": s.method,
                "path": s.path,
                "then": s.status_then,
                "now": s.status_now,
                "result": (
                    f"skipped: {s.skipped_reason}"
                    if not s.replayed
                    else s.error or ("same" if d and d.identical else "different")
                ),
                "changed": d.changed_ids if d else None,
                "added": d.added_ids if d else None,
                "removed": d.removed_ids if d else None,
                "moved": d.moved_ids if d else None,
                "note": s.note
                or (f"sent to {s.path_sent} (target's collection UUID)" if s.path_sent else None),
            }
        )
    _out.print(
        _table(
            f"replay of {session_id} against {tgt.name}",
            rows,
            [
                "#",
                "request_id",
                "method",
                "path",
                "then",
                "now",
                "result",
                "changed",
                "added",
                "removed",
                "moved",
                "note",
            ],
        )
    )
    _out.print(" ".join(f"{k}={v}" for k, v in report.summary.items()))


# -- diff ------------------------------------------------------------------------------------
def diff_command(
    a: Annotated[str, typer.Argument(help="A request id or a session id")],
    b: Annotated[str, typer.Argument(help="Another request id, or another session id")],
    tolerance: Annotated[float, typer.Option("--tolerance")] = 1e-4,
    warehouse: WarehouseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Side-by-side structured diff of two recorded requests or two sessions: "why does
    this query return different results today?"."""
    from replay.diff import diff_bodies, parse_body
    from replay.sessions import load_session

    with _warehouse(warehouse) as wh:
        ra, rb = queries.request_by_id(wh, a), queries.request_by_id(wh, b)
        if ra is not None and rb is not None:
            pairs = [(ra, rb)]
            kind = "requests"
        elif queries.session(wh, a) is not None and queries.session(wh, b) is not None:
            sa, sb = load_session(wh, a, bodies=False), load_session(wh, b, bodies=False)
            ra_rows = [queries.request_by_id(wh, s.request_id) for s in sa.steps]
            rb_rows = [queries.request_by_id(wh, s.request_id) for s in sb.steps]
            pairs = [
                (x or {}, y or {})
                for x, y in zip(
                    ra_rows + [None] * (len(rb_rows) - len(ra_rows)),
                    rb_rows + [None] * (len(ra_rows) - len(rb_rows)),
                    strict=True,
                )
            ]
            kind = "sessions"
        else:
            missing = a if ra is None and queries.session(wh, a) is None else b
            raise _fail(
                f"{missing!r} is neither a request id nor a session id in {wh.url} (give two "
                "request ids or two session ids)"
            )
        results: list[dict[str, Any]] = []
        for x, y in pairs:
            bx = (
                queries.body(wh, x["response_body_sha256"])
                if x.get("response_body_sha256")
                else None
            )
            by = (
                queries.body(wh, y["response_body_sha256"])
                if y.get("response_body_sha256")
                else None
            )
            d = diff_bodies(
                parse_body(bx),
                parse_body(by),
                status_then=x.get("status"),
                status_now=y.get("status"),
                tolerance=tolerance,
            )
            results.append(
                {
                    "a": {k: x.get(k) for k in ("request_id", "method", "path", "received_at")},
                    "b": {k: y.get(k) for k in ("request_id", "method", "path", "received_at")},
                    "same_request": (x.get("method"), x.get("path"), x.get("request_body_sha256"))
                    == (y.get("method"), y.get("path"), y.get("request_body_sha256")),
                    "diff": d.to_json(),
                }
            )
    if as_json:
        _print_json({"kind": kind, "a": a, "b": b, "pairs": results})
        return
    table = Table(title=Text(visible(f"diff of {kind} {a} | {b}"), style="table.title"))
    table.add_column("", style="bold")
    table.add_column(Text(visible(a)), overflow="fold")
    table.add_column(Text(visible(b)), overflow="fold")

    def row(label: str, then: str, now: str) -> None:
        # Text, not str: recorded ids and paths are never parsed as markup
        table.add_row(Text(visible(label)), Text(visible(then)), Text(visible(now)))

    for n, r in enumerate(results):
        dj: dict[str, Any] = r["diff"]
        row(f"#{n}", _cell(r["a"]["request_id"]), _cell(r["b"]["request_id"]))
        row(
            "request",
            f"{r['a']['method']} {r['a']['path']}",
            f"{r['b']['method']} {r['b']['path']}",
        )
        row("status", _cell(dj["status_then"]), _cell(dj["status_now"]))
        for rk in dj["ranked"]:
            row(f"ids[{rk['index']}]", _cell(rk["then"]), _cell(rk["now"]))
        row(
            "changes",
            "same" if dj["identical"] else "",
            "; ".join(
                f"{k}: {_cell(dj[k])}"
                for k in ("added_ids", "removed_ids", "moved_ids", "changed_ids")
                if dj[k]
            )
            + (f"; other: {', '.join(dj['structural'])}" if dj["structural"] else ""),
        )
    _out.print(table)


# -- lineage ---------------------------------------------------------------------------------
def lineage_command(
    collection: Annotated[
        str | None, typer.Option("--collection", help="The collection (or index)")
    ] = None,
    point_id: Annotated[
        str | None, typer.Option("--id", help="History of one point / vector id")
    ] = None,
    at: Annotated[
        str | None,
        typer.Option("--at", help="The collection's points at this time (ISO 8601; 'now')"),
    ] = None,
    approval: Annotated[
        str | None,
        typer.Option("--approval", help="Everything written under one approval or ticket"),
    ] = None,
    unknown: Annotated[
        bool,
        typer.Option(
            "--unknown/--no-unknown",
            help="With --id: also the collection's writes/deletes whose ids are unknown "
            "(delete by filter), which may have touched the point",
        ),
    ] = True,
    warehouse: WarehouseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Who added, changed or deleted vectors: one point's history (--id), a collection's
    state at a time with the writer of each point (--at), or an approval's writes."""
    from replay.lineage import approval_lineage, point_history, state_at

    _reject_empty(
        ("--collection", collection, "the collection's name"),
        ("--id", point_id, "a point id"),
        ("--at", at, "an ISO 8601 time or 'now'"),
        ("--approval", approval, "an approval or ticket id"),
    )
    modes = [m for m in (point_id, at, approval) if m is not None]
    if len(modes) != 1:
        raise _fail("give exactly one of --id, --at or --approval", 2)
    if (point_id is not None or at is not None) and not collection:
        raise _fail("--id and --at need --collection", 2)
    with _warehouse(warehouse) as wh:
        if approval is not None:
            found = approval_lineage(wh, approval)
            if found is None:
                raise _fail(f"no approval or ticket {approval!r} in {wh.url}")
            if as_json:
                _print_json(found)
                return
            rows = [
                {
                    **r,
                    "ids": [i for op in r["operations"] for i in (op["ids"] or ["(by filter)"])],
                }
                for r in found["requests"]
            ]
            status = (found["approval"] or {}).get("status")
            _out.print(
                _table(
                    f"writes under {approval} ({status})",
                    rows,
                    ["received_at", "subject", "method", "path", "ids", "state", "status"],
                )
            )
            return
        assert collection is not None
        if point_id is not None:
            if not unknown:
                rows = [r for r in point_history(wh, collection, point_id) if r["ids_known"]]
            else:
                rows = point_history(wh, collection, point_id)
            if as_json:
                _print_json({"collection": collection, "id": point_id, "lineage": rows})
                return
            if not rows:
                _out.print(f"no write or delete of {point_id!r} in {collection!r} was recorded")
                return
            _out.print(
                _table(
                    f"lineage of {point_id} in {collection}",
                    rows,
                    [
                        "occurred_at",
                        "action",
                        "subject",
                        "ids_known",
                        "took_effect",
                        "decision",
                        "status",
                        "request_id",
                        "approval_id",
                        "ticket_id",
                        "grant_id",
                    ],
                )
            )
            return
        when = None if at in (None, "now") else at
        state = state_at(wh, collection, when)
    if as_json:
        _print_json(state.to_json())
        return
    points = [
        {
            **p.__dict__,
            "maybe_affected_by": p.maybe_affected_by or None,
        }
        for p in state.points.values()
    ]
    _out.print(
        _table(
            f"{collection} at {state.at or 'now'}: {len(points)} point(s)"
            + ("" if state.exact else " (not exact: deletes by filter, see below)"),
            sorted(points, key=lambda p: p["point_id"]),
            [
                "point_id",
                "added_by",
                "writer",
                "written_at",
                "approval_id",
                "ticket_id",
                "grant_id",
                "request_id",
                "maybe_affected_by",
            ],
        )
    )
    if state.unknown_ops:
        _out.print(
            _table(
                "operations whose ids are unknown",
                [u.__dict__ for u in state.unknown_ops],
                [
                    "occurred_at",
                    "action",
                    "subject",
                    "took_effect",
                    "filter_present",
                    "id_count",
                    "recorded_result_count",
                    "event_id",
                ],
            )
        )


# -- export ----------------------------------------------------------------------------------
def _export_key_path(path: Path | None) -> Path:
    return path or _settings().data_dir / "keys" / "export.key"


ExportKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--export-key", help="Ed25519 export key file (default: <data dir>/keys/export.key)"
    ),
]


def export_key_command(export_key: ExportKeyOpt = None) -> None:
    """Print the export key's public vkey (created on first use): auditors pin it."""
    from capture.signing_keys import SigningKeyError, load_or_create_signing_key

    try:
        signer = load_or_create_signing_key(_export_key_path(export_key), name="embedguard-export")
    except SigningKeyError as exc:
        raise _fail(str(exc), 2) from None
    print(signer.verifier.vkey)


def _emit_audit_viewed(log_url: str, viewer: str, target: str, filters: dict[str, Any]) -> None:
    """Record who looked at recordings, durably, before they are exported."""
    from uuid_utils import uuid7

    from pipeline.events import EventPublisher
    from pipeline.transport import open_log
    from schemas.chain import EventStamper
    from schemas.models import AuditViewed

    stamper = EventStamper(f"embedguard-cli/{uuid7()}")
    stamped = stamper.stamp(
        AuditViewed,
        session_id=f"audit-{uuid7()}",
        viewer_subject=viewer,
        what="evidence_export",
        target=target,
        filters_json=json.dumps(filters, sort_keys=True),
    )

    async def go() -> None:
        async with open_log(log_url) as lg:
            await EventPublisher(lg).publish([stamped])

    asyncio.run(go())


def export_command(
    out: Annotated[Path, typer.Option("--out", help="New directory, or a path ending in .zip")],
    since: Annotated[str | None, typer.Option("--since", help="ISO 8601 (UTC if no zone)")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO 8601, exclusive")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Only this subject")] = None,
    collection: Annotated[
        str | None, typer.Option("--collection", help="Only sessions touching it")
    ] = None,
    session: Annotated[
        list[str] | None, typer.Option("--session", help="Only these sessions (repeat)")
    ] = None,
    export_key: ExportKeyOpt = None,
    viewer: Annotated[
        str | None,
        typer.Option("--viewer", help="Who exports (recorded as AuditViewed; default: $USER)"),
    ] = None,
    log: Annotated[
        str | None,
        typer.Option("--log", help="Event log for the AuditViewed event (default: EMBEDGUARD_LOG)"),
    ] = None,
    bulk_threshold: Annotated[
        int,
        typer.Option(
            "--bulk-threshold",
            min=1,
            help="Points per request that make a bulk import in the README query",
        ),
    ] = 100,
    hold_days: Annotated[
        str | None,
        typer.Option(
            "--hold-days",
            help="Keep the bundle's bodies in the warehouse this many days, whatever the "
            "body retention (recorded as EvidenceHeld before the bundle is written; "
            "default: EMBEDGUARD_EVIDENCE_HOLD_DAYS, else 365)",
        ),
    ] = None,
    warehouse: WarehouseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a signed evidence bundle of the selected sessions (Parquet, signed
    checkpoints, inclusion and consistency proofs, manifest, auditor README).

    Its bodies are held: an EvidenceHeld event, recorded durably before the bundle
    is written, keeps them from body retention for --hold-days."""
    from capture.signing_keys import SigningKeyError, load_or_create_signing_key
    from embedguard import __version__
    from pipeline.retention import (
        EvidenceHold,
        HoldNotRecorded,
        RetentionError,
        configured_hold_days,
        parse_days,
    )
    from replay.export import ExportFilters, export_bundle

    _reject_empty(
        ("--since", since, "an ISO 8601 time"),
        ("--until", until, "an ISO 8601 time"),
        ("--actor", actor, "a subject"),
        ("--collection", collection, "a collection name"),
        *(("--session", s, "a session id") for s in session or ()),
    )
    try:
        days = parse_days(hold_days, "--hold-days") if hold_days else configured_hold_days()
    except RetentionError as exc:
        raise _fail(str(exc), 2) from None
    settings = _settings()
    filters = ExportFilters(since, until, actor, collection, tuple(session or ()))
    for name, value in (("--since", since), ("--until", until)):
        if value is not None:
            try:
                queries._time(value)
            except ValueError as exc:
                raise _fail(f"{name}: {exc}", 2) from None
    if out.exists() and (out.suffix.lower() == ".zip" or any(out.iterdir())):
        raise _fail(f"{out} exists; give a new path (bundles are never overwritten)", 2)
    try:
        signer = load_or_create_signing_key(_export_key_path(export_key), name="embedguard-export")
    except SigningKeyError as exc:
        raise _fail(str(exc), 2) from None
    who = viewer or os.environ.get("EMBEDGUARD_VIEWER") or getpass.getuser()
    hold = EvidenceHold(
        log or settings.log_url, held_by=who, hold_days=days, stream="embedguard-cli"
    )
    try:
        _emit_audit_viewed(log or settings.log_url, who, str(out), filters.to_json())
    except Exception as exc:  # noqa: BLE001 - any log failure refuses the export
        raise _fail(
            f"could not record the AuditViewed event in the log ({type(exc).__name__}: {exc}); "
            "nothing was exported"
        ) from None
    with _warehouse(warehouse) as wh, _progress() as progress:
        tasks: dict[str, Any] = {}

        def on(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        try:
            result = export_bundle(
                wh,
                out,
                filters=filters,
                signer=signer,
                tool_version=__version__,
                exported_at=datetime.now(UTC),
                bulk_threshold=bulk_threshold,
                progress=on,
                manifest_extra=hold.manifest_fields(),
                before_handout=hold,
            )
        except (LookupError, FileExistsError, HoldNotRecorded) as exc:
            raise _fail(str(exc)) from None
    summary = {
        "out": str(result.path),
        "sessions": len(result.sessions),
        "row_counts": result.row_counts,
        "bodies_unavailable": len(result.bodies_unavailable),
        "unproven_events": result.unproven,
        "export_vkey": signer.verifier.vkey,
        "hold": hold.to_json(),
    }
    if as_json:
        _print_json(summary)
    else:
        _out.print(
            f"wrote {result.path}: {len(result.sessions)} session(s), "
            + ", ".join(f"{k} {v}" for k, v in result.row_counts.items())
            + f"; verify with the export key {signer.verifier.vkey}; its "
            + f"{hold.body_count} bodies are held until {hold.held_until:%Y-%m-%d} "
            + f"(hold {hold.hold_id})"
        )
        if result.unproven:
            _err.print(Text(
                f"warning: {result.unproven} exported event(s) are not covered by a signed "
                "checkpoint yet (recorded after the gateway's last one), so `embedguard verify` "
                "reports them as NOT PROVEN errors. Export again after the gateway's next "
                "checkpoint, or have the auditor pass --allow-unproven.", style="yellow"))


# -- verify ----------------------------------------------------------------------------------
def _vkeys(vkey: list[str] | None, vkey_file: Path | None) -> list[str]:
    keys = list(vkey or [])
    if vkey_file is not None:
        try:
            text = vkey_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise _fail(f"--vkey-file {vkey_file}: {exc.strerror}", 2) from None
        keys += [k.strip() for k in text.splitlines() if k.strip() and not k.startswith("#")]
    return keys


def verify_command(
    bundle: Annotated[
        Path | None, typer.Argument(help="Bundle directory or zip (omit with --warehouse)")
    ] = None,
    vkey: VkeyOpt = None,
    vkey_file: VkeyFileOpt = None,
    export_vkey: Annotated[
        list[str] | None,
        typer.Option("--export-vkey", help="Pinned export key (`embedguard export-key`)"),
    ] = None,
    warehouse: Annotated[
        str | None,
        typer.Option("--warehouse", help="Verify the live warehouse at this URL instead"),
    ] = None,
    require_checkpoint: Annotated[
        bool, typer.Option(help="Warehouse: events not yet checkpointed are an error")
    ] = False,
    allow_unproven: Annotated[
        bool,
        typer.Option(
            help="Bundle: an event that no inclusion proof ties to a signed checkpoint is a "
            "warning (NOT PROVEN), not an error. Nothing signed vouches for such events."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify an evidence bundle offline (manifest signature, file hashes, chains,
    checkpoints, inclusion/consistency proofs, bodies) or the live warehouse."""
    from replay.bundle_sign import BundleError
    from replay.verify import verify_bundle, verify_warehouse
    from schemas.note import NoteError

    keys = _vkeys(vkey, vkey_file)
    if (bundle is None) == (warehouse is None):
        raise _fail("give a BUNDLE or --warehouse URL (one of them)", 2)
    if not keys:
        raise _fail("pin the gateway key(s) with --vkey or --vkey-file", 2)
    try:
        if bundle is not None:
            if not export_vkey:
                raise _fail("pin the export key with --export-vkey (`embedguard export-key`)", 2)
            if not bundle.exists():
                raise _fail(f"no bundle at {bundle}", 2)
            report = verify_bundle(bundle, keys, export_vkey, allow_unproven=allow_unproven)
            what = str(bundle)
        else:
            with _warehouse(warehouse) as wh:
                report = verify_warehouse(wh, keys, require_checkpoint=require_checkpoint)
                what = wh.url
    except (NoteError, BundleError) as exc:
        raise _fail(str(exc), 2) from None
    if as_json:
        _print_json({"target": what, **report.to_json()})
    else:
        for f in report.findings:
            _out.print(Text(visible(f), style="red" if f.severity == "error" else "yellow"))
        unproven = sum(1 for f in report.findings if f.kind == "not_proven")
        verdict = "OK" if report.ok else f"FAILED ({len(report.errors)} error(s))"
        if report.ok and unproven:
            verdict = f"OK, but {unproven} event(s) NOT PROVEN by a signed checkpoint"
        whole = (
            f" ({report.sessions_whole} whole, {report.sessions_open} without their end)"
            if bundle is not None and (report.sessions_whole or report.sessions_open)
            else ""
        )
        _out.print(
            f"{what}: {verdict}: {report.events} events, {report.sessions} sessions{whole}, "
            f"{report.checkpoints_verified} checkpoints, {report.inclusion_verified} inclusion "
            f"and {report.consistency_verified} consistency proofs verified"
        )
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add replay, diff, lineage (the canonical one), export, export-key and verify."""
    app.command("replay")(replay_command)
    app.command("diff")(diff_command)
    app.command("lineage")(lineage_command)
    app.command("export")(export_command)
    app.command("export-key")(export_key_command)
    app.command("verify")(verify_command)
