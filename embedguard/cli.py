"""The ``embedguard`` command. Subcommands are thin: they parse options, call
the library, and print. Every command that prints data accepts ``--json``."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.text import Text

from embedguard import __version__
from embedguard.console import plain_console, visible
from embedguard.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    name="embedguard",
    help="Segregation-of-duties gateway for vector databases, with an event-sourced audit trail.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
schemas_app = typer.Typer(help="The Avro event contract.", no_args_is_help=True)
events_app = typer.Typer(help="Append to and read the event log.", no_args_is_help=True)
app.add_typer(schemas_app, name="schemas")
app.add_typer(events_app, name="events")

# No markup or emoji codes: printed text carries session ids, subjects, paths
# and reasons that clients choose; styling goes through rich.text.Text.
out = plain_console()
err = plain_console(stderr=True)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Plain text with some styled pieces: ("✓", "green")."""
    return Text.assemble(
        *((visible(p[0]), p[1]) if isinstance(p, tuple) else visible(p) for p in parts)
    )

LogOpt = Annotated[
    str | None,
    typer.Option(
        "--log",
        help="Event log URL: sqlite:PATH or kafka://HOST:PORT "
        "(default: EMBEDGUARD_LOG, else sqlite:data/events.db)",
    ),
]
WarehouseOpt = Annotated[
    str | None,
    typer.Option(
        "--warehouse",
        help="Warehouse URL: lake:DIR or clickhouse://... "
        "(default: EMBEDGUARD_WAREHOUSE, else lake:data/lake)",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def fail(message: str, code: int = 2) -> typer.Exit:
    # Text, not markup: messages carry paths, URLs and ids that may hold "[...]"
    err.print(Text.assemble(("error:", "bold red"), " ", visible(message)))
    return typer.Exit(code)


def settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise fail(f"configuration: {first['msg']}") from None


def log_url(log: str | None) -> str:
    return log or settings().log_url


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run an async command; event-log errors become a clean message and exit 2."""
    from pipeline.transport.errors import EventLogError

    async def _main() -> T:
        return await coro_fn()

    try:
        return asyncio.run(_main())
    except EventLogError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def version(as_json: JsonOpt = False) -> None:
    """Print the version."""
    if as_json:
        print(json.dumps({"version": __version__}))
    else:
        out.print(f"embedguard {__version__}")


# -- schemas -----------------------------------------------------------------


@schemas_app.command("check")
def schemas_check(as_json: JsonOpt = False) -> None:
    """Fail if a schema does not parse, a model disagrees with its schema, or a
    change is not backward- and forward-compatible with every frozen version."""
    from schemas.check import check_schemas

    report = check_schemas()
    if as_json:
        print(json.dumps({"ok": report.ok, "errors": report.errors, "notes": report.notes}))
    else:
        for note in report.notes:
            out.print(styled(("note:", "yellow"), f" {note}"), highlight=False)
        for e in report.errors:
            err.print(styled(("✗", "red"), f" {e}"), highlight=False)
        if report.ok:
            out.print(styled(("✓", "green"), " schemas, models and every frozen version agree"))
    if not report.ok:
        raise typer.Exit(1)


@schemas_app.command("freeze")
def schemas_freeze(version: Annotated[str, typer.Argument(help="Version name, e.g. v2")]) -> None:
    """Freeze the current schemas and samples under schemas/fixtures/VERSION."""
    from schemas.check import check_schemas, freeze

    report = check_schemas()
    if not report.ok:
        for e in report.errors:
            err.print(styled(("✗", "red"), f" {e}"), highlight=False)
        raise fail("fix the errors above before freezing", 1)
    try:
        path = freeze(version)
    except (FileExistsError, ValueError) as exc:
        raise fail(str(exc)) from None
    out.print(f"froze the current schemas in {path}")


# -- events ----------------------------------------------------------------


def _read_jsonl(path: Path) -> list[Any]:
    from schemas.codec import InvalidEvent, event_from_json

    if str(path) == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise fail(f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise fail(f"{path} is not UTF-8 text; write one JSON event per line") from None
    events, problems = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{n}: not JSON ({exc.msg} at column {exc.colno})")
            continue
        if isinstance(obj, dict) and "event" in obj and "envelope" not in obj:
            obj = obj["event"]  # a line printed by `events tail --json`
        try:
            events.append(event_from_json(obj))
        except InvalidEvent as exc:
            problems.append(f"{path}:{n}: {exc}")
    if problems:
        for p in problems[:20]:
            err.print(styled(("✗", "red"), f" {p}"), highlight=False)
        if len(problems) > 20:
            err.print(f"… and {len(problems) - 20} more")
        raise fail(
            f"{len(problems)} invalid event(s); nothing was appended. Fix them and run again."
        )
    return events


@events_app.command("append")
def events_append(
    file: Annotated[
        Path, typer.Option("--file", "-f", help="JSON lines, one event each ('-' for stdin)")
    ],
    log: LogOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate every event in FILE, then append them all durably (all or nothing)."""
    from pipeline.events import EventPublisher
    from pipeline.transport import open_log

    events = _read_jsonl(file)
    url = log_url(log)

    async def go() -> list[Any]:
        async with open_log(url) as lg:
            return await EventPublisher(lg).publish(events)

    positions = run(go)
    if as_json:
        print(
            json.dumps(
                {
                    "appended": len(positions),
                    "positions": [
                        {"partition": p.partition, "offset": p.offset} for p in positions
                    ],
                }
            )
        )
    else:
        out.print(f"appended {len(positions)} event(s) to {url}", highlight=False)


@events_app.command("tail")
def events_tail(
    log: LogOpt = None,
    from_offset: Annotated[
        int | None, typer.Option("--from", help="Start at this offset (default: the oldest)")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-F", help="Keep waiting for new events")
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Stop after this many events")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print events from the log, oldest first: one JSON line each with --json."""
    from pipeline.events import decode_records
    from pipeline.transport import open_log
    from schemas.codec import event_to_json

    url = log_url(log)
    _require_existing_log(url)
    if from_offset is not None and from_offset < 0:
        raise fail("--from must be 0 or more")

    async def go() -> int:
        shown = 0
        async with open_log(url) as lg:
            reader = lg.tail_reader()
            async with reader:
                if from_offset is not None:
                    for partition in await reader.end_offsets():
                        reader.seek(partition, from_offset)
                while True:
                    end = await reader.end_offsets()
                    batch = await reader.poll(max_records=1000, timeout=1.0 if follow else 0.2)
                    for item in decode_records(batch):
                        rec = item.record
                        line: dict[str, Any]
                        if item.decoded is None:
                            line = {
                                "partition": rec.partition,
                                "offset": rec.offset,
                                "type": None,
                                "error": str(item.error),
                            }
                        else:
                            ev = item.decoded.event
                            line = {
                                "partition": rec.partition,
                                "offset": rec.offset,
                                "type": ev.avro_name,
                                "fingerprint": item.decoded.fingerprint,
                                "event": event_to_json(ev),
                            }
                        _print_event(line, as_json)
                        shown += 1
                        if limit is not None and shown >= limit:
                            return shown
                    if not follow and not batch:
                        positions = reader.positions()
                        if all(positions.get(p, 0) >= o for p, o in end.items()):
                            return shown
        return shown

    n = run(go)
    if not as_json:
        err.print(f"{n} event(s)")


@events_app.command("verify")
def events_verify(
    log: LogOpt = None,
    as_json: JsonOpt = False,
    vkey: Annotated[
        list[str] | None,
        typer.Option(
            "--vkey",
            help="Pinned gateway key (`embedguard keys show`); with it, every stream's "
            "signed Merkle checkpoints are checked too. Repeat for several gateways.",
        ),
    ] = None,
    vkey_file: Annotated[
        Path | None, typer.Option(help="File with pinned vkeys, one a line")
    ] = None,
    require_checkpoint: Annotated[
        bool, typer.Option(help="Events not yet covered by a checkpoint are an error")
    ] = False,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint",
            help="A signed checkpoint note saved earlier (`embedguard events checkpoint`); "
            "the log must still hold its stream's first tree-size events, with its root. "
            "Needs --vkey. Repeatable.",
        ),
    ] = None,
) -> None:
    """Check every session's hash chain in the log, in log order; name the first
    missing, altered or reordered event of each broken session. With --vkey, also
    check each gateway stream against its signed checkpoints (RFC 6962 roots,
    consistency), and with --checkpoint that the log was not truncated since a
    checkpoint was saved. Exit 1 if anything is wrong."""
    from schemas.chain import verify_chains

    url = log_url(log)
    _require_existing_log(url)
    keys = list(vkey or [])
    if vkey_file is not None:
        try:
            keys += [k.strip() for k in vkey_file.read_text().splitlines() if k.strip()]
        except OSError as exc:
            raise fail(f"cannot read --vkey-file {vkey_file}: {exc.strerror}") from None
    if vkey_file is not None and not keys:
        raise fail(f"--vkey-file {vkey_file} holds no key")
    saved = _read_saved_checkpoints(checkpoint or [], keys)
    wheres: list[str] = []

    async def go() -> tuple[int, list[Any], list[str], Any]:
        decoded, undecodable = [], []
        for item in await _whole_log(url):
            r = item.record
            if item.decoded is None:
                undecodable.append(f"{r.partition}:{r.offset}: {item.error}")
            else:
                decoded.append(item.decoded)
                wheres.append(f"{url} {r.partition}:{r.offset}")
        # A session's chain lives in one run of one stream: a rotated stream or
        # a gateway restarted with the same id starts its sessions again.
        from replay.verify_core import split_runs

        problems = [
            p for run in split_runs(decoded) for p in verify_chains([decoded[i] for i in run.idxs])
        ]
        if keys:
            from replay.verify_core import verify_log
            from schemas.note import NoteError

            try:
                # Kafka partitions interleave streams; each stream's order is its
                # stream_seq, which is part of every event's signed bytes.
                report = verify_log(
                    decoded,
                    keys,
                    wheres=wheres,
                    require_checkpoint=require_checkpoint,
                    order="stream_seq",
                    saved=saved,
                )
            except NoteError as exc:
                raise fail(f"--vkey: {exc}") from None
            # the report repeats the chain problems, with more detail
            return len(decoded), problems, undecodable, report
        return len(decoded), problems, undecodable, None

    count, problems, undecodable, report = run(go)
    if report is not None:
        ok = report.ok and not undecodable
        if as_json:
            print(json.dumps({**report.to_json(), "ok": ok, "undecodable": undecodable}))
        else:
            for line in undecodable:
                err.print(styled(("✗", "red"), f" undecodable record {line}"), highlight=False)
            for f in report.findings:
                mark = ("✗", "red") if f.severity == "error" else ("!", "yellow")
                err.print(styled(mark, f" {f}"), highlight=False)
            if ok:
                out.print(
                    styled(("✓", "green"), f" {count} events; every session's hash chain "
                           f"verifies; {report.checkpoints_verified} signed checkpoint(s) match "
                           "their streams"
                           + (f"; the log still holds the {len(saved)} saved checkpoint(s)"
                              if saved else "")),
                    highlight=False,
                )
                if not saved and report.checkpoints_verified:
                    err.print(
                        "note: a log cut back to an earlier checkpoint would pass too. Save "
                        f"today's checkpoints off this host (embedguard events checkpoint "
                        f"--log {url} > notes.txt) and pass them next time (--checkpoint "
                        "notes.txt).",
                        highlight=False,
                    )
        if not ok:
            raise typer.Exit(1)
        return
    if as_json:
        print(
            json.dumps(
                {
                    "events": count,
                    "ok": not problems and not undecodable,
                    "problems": [str(p) for p in problems],
                    "undecodable": undecodable,
                }
            )
        )
    else:
        for line in undecodable:
            err.print(styled(("✗", "red"), f" undecodable record {line}"), highlight=False)
        for problem in problems:
            err.print(styled(("✗", "red"), f" {problem}"), highlight=False)
        if not problems and not undecodable:
            out.print(styled(("✓", "green"),
                             f" {count} events; every session's hash chain verifies"))
            err.print(
                "note: without --vkey this proves each chain is consistent, not who wrote it: "
                "anyone who can write the log can re-chain a session. Pin the gateway's key "
                "(embedguard keys show) and pass it with --vkey to check the signed checkpoints.",
                highlight=False,
            )
    if problems or undecodable:
        raise typer.Exit(1)


def _split_notes(text: str) -> list[str]:
    """The signed notes in ``text``: one, or several separated by a blank line
    (as `events checkpoint` prints them). A checkpoint's text has no blank
    line, so the blocks alternate: note text, signature lines."""
    blocks = text.rstrip("\n").split("\n\n")
    if len(blocks) < 2 or len(blocks) % 2:
        # not pairs of blocks: let the strict parser say what is wrong
        return [text]
    return [f"{blocks[i]}\n\n{blocks[i + 1]}\n" for i in range(0, len(blocks), 2)]


def _read_saved_checkpoints(paths: list[Path], keys: list[str]) -> list[Any]:
    """Each --checkpoint file's notes, verified with the pinned keys."""
    if not paths:
        return []
    from replay.verify_core import load_verifiers, open_saved_checkpoint
    from schemas.note import NoteError

    if not keys:
        raise fail("--checkpoint needs --vkey: a saved checkpoint is trusted only through the "
                   "pinned key of the gateway that signed it")
    try:
        verifiers = load_verifiers(keys)
    except NoteError as exc:
        raise fail(f"--vkey: {exc}") from None
    saved = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise fail(f"cannot read --checkpoint {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise fail(f"--checkpoint {path} is not UTF-8 text") from None
        notes = _split_notes(text)
        for n, note in enumerate(notes, 1):
            source = f"--checkpoint {path}" + (f" note {n}" if len(notes) > 1 else "")
            try:
                saved.append(open_saved_checkpoint(note, verifiers, source))
            except NoteError as exc:
                raise fail(f"{source} is refused: {exc}") from None
    return saved


@events_app.command("checkpoint")
def events_checkpoint(
    log: LogOpt = None,
    origin: Annotated[
        str | None, typer.Option(help="Only this stream's checkpoint (its note origin)")
    ] = None,
) -> None:
    """Print the latest signed checkpoint note of each stream in the log, as
    recorded by the gateway, to save and later pass to `events verify
    --checkpoint`: a log truncated after that is then detected. Several notes
    are separated by a blank line."""
    from schemas.models import Checkpoint

    url = log_url(log)
    _require_existing_log(url)

    async def go() -> dict[str, Checkpoint]:
        latest: dict[str, Checkpoint] = {}
        for item in await _whole_log(url):
            ev = item.decoded.event if item.decoded is not None else None
            if not isinstance(ev, Checkpoint) or origin not in (None, ev.origin):
                continue
            seen = latest.get(ev.origin)
            if seen is None or ev.tree_size >= seen.tree_size:
                latest[ev.origin] = ev
        return latest

    latest = run(go)
    if not latest:
        raise fail(f"no signed checkpoint {'of ' + origin + ' ' if origin else ''}in {url}", 1)
    sys.stdout.write("\n".join(latest[o].signed_note for o in sorted(latest)))
    for o in sorted(latest):
        err.print(f"{o}: tree size {latest[o].tree_size}", highlight=False)


async def _whole_log(url: str) -> list[Any]:
    """Every record of the log at ``url``, decoded (``pipeline.events.decode_records``
    items: ``.record``, and ``.decoded`` or ``.error``), oldest first."""
    from pipeline.events import decode_records
    from pipeline.transport import open_log

    items: list[Any] = []
    async with open_log(url) as lg:
        reader = lg.tail_reader()
        async with reader:
            while batch := await reader.poll(max_records=5000, timeout=0.2):
                items.extend(decode_records(batch))
    return items


def _require_existing_log(url: str) -> None:
    if url.startswith("sqlite:"):
        path = Path(url.removeprefix("sqlite:"))
        if not path.exists():
            raise fail(
                f"no event log at {path}; check --log / EMBEDGUARD_LOG (nothing was created)"
            )


def _print_event(line: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(line, separators=(",", ":")), flush=True)
        return
    if line.get("event") is None:
        out.print(
            styled(f"{line['partition']}:{line['offset']} ", ("undecodable", "red"),
                   f" {line['error']}"),
            highlight=False,
        )
        return
    env = line["event"]["envelope"]
    out.print(
        styled(f"{line['partition']}:{line['offset']:>8} {env['occurred_at']} ",
               (f"{line['type']:<18}", "bold"),
               f" session={env['session_id']} seq={env['seq']} "
               f"request={env.get('request_id') or '-'}"),
        highlight=False,
    )


@app.command()
def relay(
    source: Annotated[str, typer.Option("--from", help="Source log URL (usually sqlite:...)")],
    dest: Annotated[str, typer.Option("--to", help="Destination log URL (usually kafka://...)")],
    group: Annotated[
        str,
        typer.Option(
            help="Reader group on the source; its position is committed "
            "after each acknowledged batch"
        ),
    ] = "relay",
    once: Annotated[bool, typer.Option("--once", help="Stop when the source is drained")] = False,
) -> None:
    """Move events from one log to another (SQLite → Kafka), at least once."""
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from pipeline.transport import open_log
    from pipeline.transport.relay import relay as do_relay

    async def go() -> int:
        async with open_log(source) as src, open_log(dest) as dst:
            with Progress(
                SpinnerColumn(), TextColumn("{task.description}"), console=err
            ) as progress:
                task = progress.add_task(f"relaying {source} → {dest}", total=None)

                def on_batch(n: int) -> None:
                    progress.update(
                        task,
                        advance=n,
                        description=f"relayed {progress.tasks[0].completed + n:.0f} events",
                    )

                return await do_relay(src, dst, group=group, stop_when_idle=once, progress=on_batch)

    n = run(go)
    err.print(f"relayed {n} event(s)")


@app.command()
def up(
    data_dir: Annotated[
        Path | None, typer.Option("--data", help="Where embedded state lives (default ./data)")
    ] = None,
    idp_port: Annotated[int, typer.Option(help="Dev OIDC issuer port")] = 9400,
    chroma_port: Annotated[int, typer.Option(help="Demo Chroma server port")] = 8000,
    gateway_port: Annotated[int, typer.Option(help="Gateway port (in front of Chroma)")] = 8080,
    dashboard_port: Annotated[
        int | None, typer.Option(help="Dashboard port (default 8501, or a free one if taken)")
    ] = None,
    policy: Annotated[Path, typer.Option(help="Policy file")] = Path("examples/policy.yaml"),
    check_only: Annotated[
        bool, typer.Option("--check", help="Prepare and check, start nothing, then exit")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the embedded stack: dev OIDC issuer, a demo Chroma server, the
    gateway in front of it, the loader (log → Delta warehouse) and the
    dashboard, all state under ./data. Ctrl-C stops everything."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from pipeline.transport import open_log
    from schemas.check import check_schemas

    s = settings()
    if data_dir is not None:
        s = s.model_copy(update={"data_dir": data_dir})
    s.data_dir.mkdir(parents=True, exist_ok=True)
    if not check_schemas().ok:
        raise fail("the event schemas do not check: run `embedguard schemas check`")
    url = s.log_url

    async def go() -> dict[int, int]:
        async with open_log(url) as lg:
            reader = lg.tail_reader()
            async with reader:
                return await reader.end_offsets()

    ends = run(go)
    if dashboard_port is None:  # the default, unless something else serves it already
        with socket.socket() as probe:
            taken = probe.connect_ex(("127.0.0.1", 8501)) == 0
        if taken:
            with socket.socket() as free:
                free.bind(("127.0.0.1", 0))
                dashboard_port = int(free.getsockname()[1])
        else:
            dashboard_port = 8501
    chroma_bin = Path(".venv-peers/bin/chroma")
    info: dict[str, Any] = {
        "data_dir": str(s.data_dir.resolve()),
        "log": url,
        "log_events": sum(ends.values()),
        "warehouse": s.warehouse_url,
        "issuer": f"http://127.0.0.1:{idp_port}",
        "chroma": f"http://127.0.0.1:{chroma_port}",
        "gateway": f"http://127.0.0.1:{gateway_port}",
        "dashboard": f"http://127.0.0.1:{dashboard_port}",
        "policy": str(policy),
        "loader_status": str(s.data_dir / "loader"),
    }
    if check_only:
        print(json.dumps(info)) if as_json else out.print_json(data=info)
        return
    if not policy.exists():
        raise fail(f"policy file {policy} does not exist")
    if not chroma_bin.exists():
        raise fail(f"{chroma_bin} is missing; run `make up` (it builds .venv-peers)")
    for name, port in (("issuer", idp_port), ("chroma", chroma_port), ("gateway", gateway_port),
                       ("dashboard", dashboard_port)):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                raise fail(
                    f"port {port} for the {name} is taken; "
                    f"pass --{name.replace('issuer', 'idp')}-port"
                )
    logs = s.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    me = [sys.executable, "-m", "embedguard.cli"]
    specs = [
        ("issuer", [*me, "dev-idp", "--port", str(idp_port), "--data", str(s.data_dir)], idp_port),
        (
            "chroma",
            [
                str(chroma_bin),
                "run",
                "--path",
                str(s.data_dir / "chroma"),
                "--host",
                "127.0.0.1",
                "--port",
                str(chroma_port),
            ],
            chroma_port,
        ),
        (
            "gateway",
            [
                *me,
                "gateway",
                "--kind",
                "chroma",
                "--upstream",
                info["chroma"],
                "--listen",
                f"127.0.0.1:{gateway_port}",
                "--policy",
                str(policy),
                "--log",
                url,
                "--issuer",
                info["issuer"],
                "--audience",
                "embedguard",
                "--gateway-id",
                f"{socket.gethostname()}-embedded",
                "--signing-key",
                str(s.data_dir / "keys" / "gateway.key"),
            ],
            gateway_port,
        ),
        (
            "dashboard",
            [
                *me,
                "dashboard",
                "--port",
                str(dashboard_port),
                "--data",
                str(s.data_dir),
                "--log",
                url,
                "--warehouse",
                s.warehouse_url,
                "--gateway",
                info["gateway"],
                "--issuer",
                info["issuer"],
                "--policy",
                str(policy),
            ],
            dashboard_port,
        ),
        (
            "loader",
            [
                *me,
                "loader",
                "--log",
                url,
                "--warehouse",
                s.warehouse_url,
                "--status-dir",
                str(s.data_dir / "loader"),
            ],
            None,  # no port: ready once it has written its status file
        ),
    ]
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def stop_all() -> None:
        for _, p in reversed(procs):
            p.terminate()
        for _, p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)  # stop the children on SIGTERM too
    try:
        for name, cmd, ready_port in specs:
            log_path = logs / f"{name}.log"
            start_at = log_path.stat().st_size if log_path.exists() else 0
            logf = open(log_path, "ab")  # noqa: SIM115 - owned by the child
            procs.append(
                (name, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env))
            )
            deadline = time.monotonic() + 60
            while True:
                if ready_port is None:
                    pid = procs[-1][1].pid
                    listening = any((s.data_dir / "loader").glob(f"*.{pid}.json"))
                else:
                    with socket.socket() as probe:
                        listening = probe.connect_ex(("127.0.0.1", ready_port)) == 0
                # The gateway listens before its audit log is open (it answers 503
                # meanwhile); it is ready when it prints its route.
                if listening and (
                    name != "gateway" or b"embedguard gateway " in log_path.read_bytes()[start_at:]
                ):
                    break
                if procs[-1][1].poll() is not None or time.monotonic() > deadline:
                    stop_all()
                    raise fail(f"the {name} did not start; see {logs / (name + '.log')}")
                time.sleep(0.2)
        if as_json:
            print(json.dumps(info), flush=True)
        else:
            out.print(styled(("embedguard embedded stack is up", "bold")))
            for k in ("gateway", "dashboard", "chroma", "issuer", "log", "warehouse", "policy",
                      "data_dir"):
                out.print(f"  {k:<10} {info[k]}", highlight=False)
            out.print(f"  logs       {logs}", highlight=False)
            out.print("  loader     log → warehouse, `embedguard loader status`", highlight=False)
            out.print(
                "\n  try:  TOKEN=$(.venv/bin/embedguard token --issuer "
                f"{info['issuer']} --sub alice --groups Vector-Read)",
                highlight=False,
            )
            out.print(
                f'        curl -H "Authorization: Bearer $TOKEN" {info["gateway"]}'
                "/api/v2/heartbeat",
                highlight=False,
            )
            out.print("        .venv/bin/embedguard events tail --follow", highlight=False)
            out.print("  Ctrl-C stops everything.")
        while all(p.poll() is None for _, p in procs):
            time.sleep(0.5)
        dead = [n for n, p in procs if p.poll() is not None]
        stop_all()
        raise fail(f"{', '.join(dead)} stopped; see {logs}")
    except KeyboardInterrupt:
        stop_all()
        err.print("stopped")


# -- identity (dev issuer, tokens) and the gateway --------------------------------


def _register_identity_commands() -> None:
    from capture.identity_cli import dev_idp_command, token_command

    app.command("dev-idp", help="Serve a local OIDC issuer for demos and tests (loopback only).")(
        dev_idp_command
    )
    app.command("token", help="Print one access token from the dev issuer.")(token_command)


_register_identity_commands()


def _register_policy_commands() -> None:
    from capture.policy_cli import policy_app

    app.add_typer(policy_app, name="policy", help="Check and explain policy files.")


_register_policy_commands()


def _register_approval_commands() -> None:
    from embedguard.cli_approvals import register

    register(app)


_register_approval_commands()


def _register_keys_commands() -> None:
    from capture.signing_keys import keys_app

    app.add_typer(keys_app, name="keys", help="The gateway's checkpoint-signing key.")


_register_keys_commands()


def _register_warehouse_commands() -> None:
    # Before the loader's: it adds ``warehouse rebuild`` to this ``warehouse`` group.
    from embedguard.cli_warehouse import register

    register(app)


_register_warehouse_commands()


def _register_loader_commands() -> None:
    # After any other ``warehouse`` group: ``warehouse rebuild`` joins it.
    from embedguard.cli_loader import register

    register(app)


_register_loader_commands()


def _register_replay_commands() -> None:
    # After the warehouse commands: its ``lineage`` is the canonical one.
    from embedguard.cli_replay import register

    register(app)


_register_replay_commands()


def _register_dashboard_commands() -> None:
    from embedguard.cli_dashboard import register

    register(app)


_register_dashboard_commands()


def _approval_webhook(url: str | None) -> Any:
    """The webhook URL as a secret (ValueError, without the URL, if it is not one)."""
    if not url:
        return None
    from pydantic import SecretStr

    from capture.approvals.webhook import check_webhook_url

    return SecretStr(check_webhook_url(url))


def _default_signing_key() -> Path:
    from capture.signing_keys import default_key_path

    return default_key_path(settings().data_dir)


def _max_hold_s(text: str) -> float:
    from capture.identity_cli import parse_duration

    seconds = parse_duration(text, option="--max-hold").total_seconds()
    if seconds <= 0:
        raise fail(f"--max-hold {text!r} must be longer than 0, e.g. 90s or 5m")
    return seconds


@app.command()
def gateway(
    upstream: Annotated[
        list[str], typer.Option("--upstream", help="Upstream URL; repeat for several routes")
    ],
    listen: Annotated[
        list[str], typer.Option("--listen", help="HOST:PORT per upstream, in the same order")
    ],
    policy: Annotated[Path, typer.Option("--policy", help="Policy YAML file")],
    log: LogOpt = None,
    kind: Annotated[
        list[str] | None,
        typer.Option("--kind", help="qdrant|chroma|pinecone|weaviate|milvus|auto per upstream"),
    ] = None,
    issuer: Annotated[
        str | None, typer.Option("--issuer", envvar="EMBEDGUARD_ISSUER", help="OIDC issuer URL")
    ] = None,
    audience: Annotated[
        str | None,
        typer.Option("--audience", envvar="EMBEDGUARD_AUDIENCE", help="Expected token audience"),
    ] = None,
    groups_claim: Annotated[
        str, typer.Option(help="Claim that lists the caller's groups")
    ] = "groups",
    credential_env: Annotated[
        list[str] | None,
        typer.Option("--credential-env", help="Env var holding the upstream API key, per upstream"),
    ] = None,
    credential_file: Annotated[
        list[Path] | None,
        typer.Option("--credential-file", help="File holding the upstream API key, per upstream"),
    ] = None,
    public_url: Annotated[
        list[str] | None,
        typer.Option(
            "--public-url",
            help="URL clients reach the listener by (http(s)://host[:port]), per upstream in "
            "order ('-' for none): DPoP proofs must be made for it. Default: the address "
            "the connection arrived on",
        ),
    ] = None,
    pinecone_index: Annotated[
        list[str] | None,
        typer.Option(
            "--pinecone-index",
            help="Pinecone: the index a route's upstream serves, per upstream in order "
            "('-' for none); needed when the upstream is not the index's own "
            "*.svc.*.pinecone.io host (Pinecone Local)",
        ),
    ] = None,
    chroma_v1: Annotated[
        bool,
        typer.Option(
            "--chroma-v1",
            help="Chroma: classify the deprecated /api/v1 paths a legacy server still serves "
            "(denied otherwise)",
        ),
    ] = False,
    gateway_id: Annotated[str | None, typer.Option(help="Name of this gateway's stream")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate for client TLS")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key for client TLS")] = None,
    upstream_ca: Annotated[Path | None, typer.Option(help="CA bundle to verify upstreams")] = None,
    upstream_insecure: Annotated[
        bool, typer.Option(help="Do not verify upstream TLS (tests only)")
    ] = False,
    session_idle: Annotated[str, typer.Option(help="Idle gap that closes a session")] = "15m",
    record_body_limit: Annotated[
        int, typer.Option(help="Bodies up to this size are recorded")
    ] = 65536,
    mask_hmac_key_env: Annotated[
        str | None, typer.Option(help="Env var with the key for HMAC masking tokens")
    ] = None,
    max_hold: Annotated[
        str,
        typer.Option(
            "--max-hold",
            help="Longest a request held for approval waits (then 403 approval_expired); "
            "e.g. 90s, 5m",
        ),
    ] = "5m",
    response_durability: Annotated[
        str,
        typer.Option(
            help="sync (default): deliver a response only once its record is durable. "
            "async (opt-in): deliver it while the record is being made durable; a crash "
            "in that window can lose the record of a delivered response. Requests are "
            "always recorded before forwarding."
        ),
    ] = "sync",
    checkpoint_every: Annotated[
        int, typer.Option(help="Sign a Merkle checkpoint every N events", min=1)
    ] = 1000,
    checkpoint_interval: Annotated[
        str, typer.Option(help="...or after this long, if anything was recorded")
    ] = "10s",
    signing_key: Annotated[
        Path | None,
        typer.Option(
            help="Ed25519 checkpoint-signing key, created 0600 if missing "
            "(default: <data dir>/keys/gateway.key)"
        ),
    ] = None,
    approval_webhook: Annotated[
        str | None,
        typer.Option(
            "--approval-webhook",
            envvar="EMBEDGUARD_APPROVAL_WEBHOOK",
            show_default=False,
            help="POST approval notifications (JSON, Slack-compatible text) to this URL; "
            "treated as a secret, never logged",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Gateway processes sharing each --listen port (SO_REUSEPORT, Linux); each "
            "records its own stream <gateway-id>/w<k>. 1: one process, as before",
        ),
    ] = 1,
) -> None:
    """Run the gateway: a mitmproxy reverse proxy with embedguard's addons."""
    import logging

    from pydantic import SecretStr, ValidationError

    from capture import build_addons
    from capture.config import ConfigError, GatewayConfig, Route, load_credential
    from capture.gateway import run_gateway
    from capture.identity_cli import parse_duration
    from capture.recorder import default_gateway_id

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not issuer or not audience:
        raise fail("the gateway needs --issuer and --audience (or EMBEDGUARD_ISSUER/_AUDIENCE)")
    if len(listen) != len(upstream):
        raise fail(
            f"give one --listen per --upstream ({len(upstream)} upstreams, {len(listen)} listens)"
        )
    if workers < 1:
        raise fail(f"--workers {workers}: give 1 or more gateway processes (1 runs one process)")
    kinds = kind or ["auto"] * len(upstream)
    envs = credential_env or []
    files = credential_file or []
    publics = [None if u == "-" else u for u in public_url or []]
    indexes = [None if x == "-" else x for x in pinecone_index or []]
    if (len(kinds) != len(upstream) or len(envs) > len(upstream) or len(files) > len(upstream)
            or len(publics) > len(upstream) or len(indexes) > len(upstream)):
        raise fail(
            "--kind, --credential-env, --credential-file, --public-url and --pinecone-index "
            "go once per --upstream, in order"
        )
    if not policy.exists():
        raise fail(f"policy file {policy} does not exist")
    routes = []
    try:
        for i, (up, addr) in enumerate(zip(upstream, listen, strict=True)):
            host, sep, port = addr.rpartition(":")
            if not sep or not port.isdigit():
                raise fail(f"--listen {addr!r} must be HOST:PORT")
            cred, ref = load_credential(
                envs[i] if i < len(envs) else None, files[i] if i < len(files) else None
            )
            routes.append(
                Route(
                    kind=kinds[i],  # type: ignore[arg-type]  # validated by pydantic
                    upstream=up,
                    listen_host=host or "127.0.0.1",
                    listen_port=int(port),
                    credential=cred,
                    credential_ref=ref,
                    public_url=publics[i] if i < len(publics) else None,
                    pinecone_index=indexes[i] if i < len(indexes) else None,
                    chroma_v1=chroma_v1,
                )
            )
        hmac_key = None
        if mask_hmac_key_env:
            import os

            value = os.environ.get(mask_hmac_key_env)
            if not value:
                raise fail(f"environment variable {mask_hmac_key_env} is empty or unset")
            hmac_key = SecretStr(value)
        config = GatewayConfig(
            routes=routes,
            policy_path=policy,
            log_url=log_url(log),
            issuer=issuer,
            audience=audience,
            groups_claim=groups_claim,
            gateway_id=gateway_id or default_gateway_id(),
            session_idle_s=parse_duration(session_idle, option="--session-idle").total_seconds(),
            hold_timeout_s=_max_hold_s(max_hold),
            record_body_limit=record_body_limit,
            mask_hmac_key=hmac_key,
            tls_cert=tls_cert,
            tls_key=tls_key,
            upstream_ca=upstream_ca,
            upstream_insecure=upstream_insecure,
            response_durability=response_durability,  # type: ignore[arg-type]  # pydantic checks
            signing_key=signing_key or _default_signing_key(),
            approval_webhook_url=_approval_webhook(approval_webhook),
            checkpoint_every=checkpoint_every,
            checkpoint_interval_s=parse_duration(
                checkpoint_interval, option="--checkpoint-interval"
            ).total_seconds(),
        )
    except (ConfigError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise fail(f"{loc}: {first['msg']}") from None
        raise fail(str(exc)) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise fail(f"{loc}: {first['msg']}") from None

    def ready() -> None:
        for r in config.routes:
            err.print(
                f"embedguard gateway {config.gateway_id}: http://{r.listen_host}:{r.listen_port}"
                f" → {r.upstream} ({r.kind})",
                highlight=False,
            )

    try:
        addons = build_addons(config)  # with --workers, checks the configuration once
    except (ConfigError, ValueError) as exc:
        raise fail(str(exc)) from None
    if workers > 1:
        from capture.workers import WorkersFailed, run_supervisor

        if any(r.listen_port == 0 for r in config.routes):
            raise fail("--workers shares fixed ports: give --listen HOST:PORT with a port, not 0")
        try:
            code = run_supervisor(config, workers, on_ready=ready)
        except WorkersFailed as exc:
            raise fail(str(exc), 1) from None
        if code:
            raise fail("the gateway workers did not all stop cleanly (see the log above)", code)
        return
    listen_failures: list[str] = []
    run(lambda: run_gateway(config, addons, on_ready=ready,
                            on_listen_error=listen_failures.append))
    if listen_failures:
        raise fail(f"{listen_failures[0]}: is another process using the "
                   "port? Choose another with --listen HOST:PORT", 1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
