"""The CLI as a user runs it: real processes, a real SQLite log."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas.chain import EventStamper, verify_chains
from schemas.codec import default_codec, event_from_json, event_to_json
from schemas.models import RequestBlocked

EMBEDGUARD = [sys.executable, "-m", "embedguard.cli"]


def run(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EMBEDGUARD, *args], capture_output=True, text=True, input=stdin, timeout=timeout
    )


def write_events(path: Path, gateway: str, sessions: int, per_session: int) -> list[dict]:  # type: ignore[type-arg]
    stamper = EventStamper(gateway)
    events = []
    for i in range(per_session):
        for s in range(sessions):
            ev = stamper.stamp(
                RequestBlocked,
                session_id=f"{gateway}-s{s}",
                request_id=f"r{i}",
                status=403,
                error="forbidden",
                reason=f"n{i}",
                stage="policy",
            ).event
            events.append(event_to_json(ev))
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return events


def test_append_then_tail_round_trip(tmp_path: Path) -> None:
    log = f"sqlite:{tmp_path / 'events.db'}"
    src = tmp_path / "in.jsonl"
    written = write_events(src, "gw-a", sessions=3, per_session=4)
    res = run("events", "append", "--log", log, "--file", str(src), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["appended"] == 12

    tail = run("events", "tail", "--log", log, "--json")
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(x) for x in tail.stdout.splitlines()]
    assert [line["offset"] for line in lines] == list(range(12))
    assert all(line["type"] == "RequestBlocked" for line in lines)
    assert [line["event"] for line in lines] == written
    decoded = [
        default_codec().decode(default_codec().encode(event_from_json(line["event"])))
        for line in lines
    ]
    assert verify_chains(decoded) == []

    # tail lines can be appended again (e.g. to copy a log)
    copy = tmp_path / "copy.jsonl"
    copy.write_text(tail.stdout)
    res = run("events", "append", "--log", f"sqlite:{tmp_path / 'copy.db'}", "--file", str(copy))
    assert res.returncode == 0, res.stderr

    from_offset = run("events", "tail", "--log", log, "--from", "10", "--json")
    assert [json.loads(x)["offset"] for x in from_offset.stdout.splitlines()] == [10, 11]


def test_bad_events_are_refused_with_line_and_field_and_nothing_is_appended(tmp_path: Path) -> None:
    log = f"sqlite:{tmp_path / 'events.db'}"
    src = tmp_path / "in.jsonl"
    good = write_events(src, "gw-a", sessions=1, per_session=2)
    bad_type = dict(good[0], envelope=dict(good[0]["envelope"], type="Teleported"))
    bad_field = dict(good[1], status="four hundred")
    src.write_text(
        "\n".join([json.dumps(good[0]), json.dumps(bad_type), "{not json", json.dumps(bad_field)])
        + "\n"
    )
    res = run("events", "append", "--log", log, "--file", str(src))
    assert res.returncode == 2
    err = " ".join(res.stderr.split())
    assert f"{src}:2: field envelope.type: unknown event type 'Teleported'" in err
    assert f"{src}:3: not JSON" in err
    assert f"{src}:4: RequestBlocked: field status" in err
    assert "nothing was appended" in err
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "events.db").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["events", "tail", "--log", "mysql://x"], "is not sqlite:PATH or kafka://"),
        (["events", "tail", "--log", "sqlite:/nonexistent/events.db"], "no event log at"),
        (
            ["events", "append", "--log", "sqlite:/tmp/x.db", "--file", "/nonexistent.jsonl"],
            "cannot read",
        ),
    ],
)
def test_bad_arguments_give_clear_errors(args: list[str], needle: str) -> None:
    res = run(*args)
    assert res.returncode == 2
    assert needle in " ".join(res.stderr.split())
    assert "Traceback" not in res.stderr


def test_corrupt_log_gives_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    db.write_bytes(b"this is not a database" * 100)
    res = run("events", "tail", "--log", f"sqlite:{db}")
    assert res.returncode == 2
    assert str(db) in " ".join(res.stderr.split())
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_two_appenders_and_a_follower_see_every_event_once_in_session_order(tmp_path: Path) -> None:
    log = f"sqlite:{tmp_path / 'events.db'}"
    files = []
    expected = 0
    for gw in ("gw-a", "gw-b"):
        f = tmp_path / f"{gw}.jsonl"
        expected += len(write_events(f, gw, sessions=5, per_session=40))
        files.append(f)
    # create the log first so the follower can open it
    assert run("events", "append", "--log", log, "--file", "/dev/null").returncode == 0
    follower = subprocess.Popen(
        [
            *EMBEDGUARD,
            "events",
            "tail",
            "--log",
            log,
            "--follow",
            "--json",
            "--limit",
            str(expected),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    appenders = [
        subprocess.Popen(
            [*EMBEDGUARD, "events", "append", "--log", log, "--file", str(f)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in files
    ]
    for p in appenders:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == expected
    ids = [line["event"]["envelope"]["event_id"] for line in lines]
    assert len(set(ids)) == expected  # exactly once
    seqs: dict[str, list[int]] = {}
    for line in lines:
        env = line["event"]["envelope"]
        seqs.setdefault(env["session_id"], []).append(env["seq"])
    assert len(seqs) == 10
    assert all(v == list(range(len(v))) for v in seqs.values())  # per-session order


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--session-idle", "1x"], "--session-idle '1x' is not a duration"),
        (["--upstream", "ftp://x", "--listen", "127.0.0.1:1"], "must be http(s)://host"),
        (["--policy", "/etc/hostname"], "the policy does not load"),
        (["--credential-env", "EG_SURELY_UNSET_VAR"], "EG_SURELY_UNSET_VAR is empty or unset"),
        (["--listen", "nonsense"], "must be HOST:PORT"),
        (["--public-url", "https://vectors.example.com/api"], "must be http(s)://host[:port]"),
        (["--pinecone-index", "Not_An_Index"], "pinecone_index"),
        (["--public-url", "-", "--public-url", "http://a"], "go once per --upstream"),
    ],
)
def test_gateway_bad_options_fail_at_start_with_a_clear_error(
    extra: list[str], needle: str
) -> None:
    base = {
        "--upstream": "http://127.0.0.1:1",
        "--listen": "127.0.0.1:0",
        "--policy": "examples/policy.yaml",
        "--issuer": "http://127.0.0.1:1",
        "--audience": "x",
    }
    args = ["gateway"]
    for k, v in base.items():
        if k not in extra:
            args += [k, v]
    res = run(*args, *extra)
    assert res.returncode == 2, res.stderr
    assert needle in " ".join(res.stderr.split())
    assert "Traceback" not in res.stderr


def test_events_verify_names_the_altered_event(tmp_path: Path) -> None:
    log = f"sqlite:{tmp_path / 'events.db'}"
    src = tmp_path / "in.jsonl"
    events = write_events(src, "gw-a", sessions=2, per_session=3)
    assert run("events", "append", "--log", log, "--file", str(src)).returncode == 0
    ok = run("events", "verify", "--log", log, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"events": 6, "ok": True, "problems": [], "undecodable": []}
    # read by a person, the verdict says what it does not prove and what to do
    shown = run("events", "verify", "--log", log)
    assert shown.returncode == 0 and "every session's hash chain verifies" in shown.stdout
    assert "--vkey" in shown.stderr and "re-chain" in " ".join(shown.stderr.split())

    # a forged event claiming to continue session gw-a-s0 after seq 2
    forged = json.loads(json.dumps(events[-2]))
    forged["envelope"]["seq"] = 3
    forged["envelope"]["event_id"] = "01a22900-0000-7000-8000-000000000001"
    forged["reason"] = "forged"
    bad = tmp_path / "forged.jsonl"
    bad.write_text(json.dumps(forged) + "\n")
    assert run("events", "append", "--log", log, "--file", str(bad)).returncode == 0
    res = run("events", "verify", "--log", log)
    assert res.returncode == 1
    text = " ".join(res.stderr.split())
    assert "01a22900-0000-7000-8000-000000000001" in text and "altered" in text


def test_markup_in_an_error_message_is_shown_as_typed(tmp_path: Path) -> None:
    """A path holding rich markup or an emoji code is printed as it is, not
    parsed (it raised MarkupError, a traceback, or printed a skull)."""
    import os

    for missing in (tmp_path / "[/x]" / "events.db", tmp_path / "[bold]:skull:[/].db"):
        res = subprocess.run(
            [*EMBEDGUARD, "events", "tail", "--log", f"sqlite:{missing}"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "400"},
        )
        assert res.returncode == 2, res.stderr
        assert f"error: no event log at {missing};" in res.stderr
        assert "Traceback" not in res.stderr and "💀" not in res.stderr


def test_client_chosen_text_is_printed_as_is_never_as_markup(tmp_path: Path) -> None:
    """Regression: events tail/verify printed session ids (a client may name
    its session) through rich markup: "[/x]" crashed the command with a
    MarkupError traceback, and "[bold]...[/]" or ":skull:" were rendered."""
    log = f"sqlite:{tmp_path / 'events.db'}"
    src = tmp_path / "in.jsonl"
    write_events(src, "[/x] :skull: [bold]gw[/]", sessions=1, per_session=2)
    assert run("events", "append", "--log", log, "--file", str(src)).returncode == 0
    tail = run("events", "tail", "--log", log)
    assert tail.returncode == 0 and "Traceback" not in tail.stderr, tail.stderr
    assert "session=[/x] :skull: [bold]gw[/]-s0" in tail.stdout, tail.stdout
    verify = run("events", "verify", "--log", log)
    assert verify.returncode == 0 and "Traceback" not in verify.stderr, verify.stderr
