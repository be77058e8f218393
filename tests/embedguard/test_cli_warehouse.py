"""embedguard/cli_warehouse.py: warehouse migrate/compact/stats, sessions, lineage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from embedguard.cli import app
from pipeline.warehouse import LoadBatch
from pipeline.warehouse.ddl import load_migrations
from pipeline.warehouse.lake import LakeWarehouse
from tests.embedguard.hostile import (
    COLLECTION,
    EMOJI_SUBJECT,
    SESSION,
    STYLED_SUBJECT,
    hostile_lake,
)
from tests.pipeline.warehouse.scenario import build_scenario

runner = CliRunner()


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("cli") / "lake"
    wh = LakeWarehouse(root)
    wh.migrate()
    recs = build_scenario(sessions=2).records()
    for lo in range(0, len(recs), 25):
        wh.write_batch(LoadBatch("sqlite:cli-test", 0, recs[lo : lo + 25]))
    return f"lake:{root}"


def _json(args: list[str]) -> Any:
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    url = f"lake:{tmp_path / 'new'}"
    every = [m.id for m in load_migrations()]
    assert _json(["warehouse", "migrate", "--warehouse", url])["applied"] == every
    assert _json(["warehouse", "migrate", "--warehouse", url])["applied"] == []


def test_sessions_list_filters_and_pages(lake: str) -> None:
    out = _json(["sessions", "list", "--warehouse", lake])
    assert out["total"] == 5 and len(out["sessions"]) == 5
    bob = _json(["sessions", "list", "--actor", "bob", "--warehouse", lake])
    assert {s["subject"] for s in bob["sessions"]} == {"bob"} and bob["total"] == 2
    denied = _json(
        ["sessions", "list", "--action", "delete", "--decision", "deny", "--warehouse", lake]
    )
    assert denied["total"] == 2
    prod = _json(["sessions", "list", "--collection", "prod", "--warehouse", lake])
    assert [s["subject"] for s in prod["sessions"]] == ["dave"]
    page = _json(["sessions", "list", "--limit", "2", "--offset", "4", "--warehouse", lake])
    assert len(page["sessions"]) == 1 and page["total"] == 5
    later = _json(["sessions", "list", "--since", "2026-03-01T09:00:00.150Z", "--warehouse", lake])
    early = _json(["sessions", "list", "--until", "2026-03-01T09:00:00.010Z", "--warehouse", lake])
    assert 0 < later["total"] < 5 and early["total"] == 1


def test_sessions_list_by_body_substring(lake: str) -> None:
    """--body keeps the sessions one of whose request or response bodies holds the
    text: alice's writes carry "needle-alice", bob's "needle-bob"."""
    alice = _json(["sessions", "list", "--body", "needle-alice", "--warehouse", lake])
    assert {s["session_id"] for s in alice["sessions"]} == {"s-alice-0", "s-alice-1"}
    assert alice["total"] == 2
    second = _json(["sessions", "list", "--body", '"id":"p-1-1"', "--warehouse", lake])
    assert {s["session_id"] for s in second["sessions"]} == {"s-alice-1", "s-bob-1"}
    unfiltered = _json(["sessions", "list", "--warehouse", lake])["sessions"]
    by_id = {s["session_id"]: s for s in unfiltered}
    assert all(s == by_id[s["session_id"]] for s in alice["sessions"])  # same rows, fewer
    both = _json(
        ["sessions", "list", "--body", "needle-alice", "--actor", "bob", "--warehouse", lake]
    )
    assert both == {"total": 0, "limit": 50, "offset": 0, "sessions": []}
    for absent in ("NEEDLE-ALICE", "%_' OR 1=1 --"):
        assert _json(["sessions", "list", "--body", absent, "--warehouse", lake])["total"] == 0
    table = runner.invoke(app, ["sessions", "list", "--body", "needle-bob", "--warehouse", lake])
    assert table.exit_code == 0, table.output
    assert "2 of 2 sessions" in table.stdout
    assert "s-bob-0" in table.stdout and "s-bob-1" in table.stdout
    assert "s-alice" not in table.stdout and "s-dave" not in table.stdout


def test_sessions_show(lake: str) -> None:
    out = _json(["sessions", "show", "s-bob-0", "--warehouse", lake])
    assert out["session"]["subject"] == "bob"
    assert [r["state"] for r in out["requests"]] == ["completed", "completed", "blocked"]
    assert [e["seq"] for e in out["events"]] == list(range(len(out["events"])))
    text = runner.invoke(app, ["sessions", "show", "s-bob-0", "--warehouse", lake])
    assert text.exit_code == 0 and "r-bob-0-c" in text.stdout


def test_lineage(lake: str) -> None:
    out = _json(["lineage", "--collection", "docs", "--id", "p-0-1", "--warehouse", lake])
    known = [r for r in out["lineage"] if r["ids_known"]]
    assert [(r["subject"], r["action"]) for r in known] == [("alice", "write"), ("bob", "write")]
    assert any(not r["ids_known"] and r["action"] == "delete" for r in out["lineage"])
    only = _json(
        ["lineage", "--collection", "docs", "--id", "p-0-1", "--no-unknown", "--warehouse", lake]
    )
    assert all(r["ids_known"] for r in only["lineage"])
    text = runner.invoke(
        app, ["lineage", "--collection", "docs", "--id", "zzz", "--no-unknown", "--warehouse", lake]
    )
    assert text.exit_code == 0 and "no write or delete" in text.stdout


def test_stats_and_compact(lake: str) -> None:
    before = _json(["warehouse", "stats", "--warehouse", lake])
    after = _json(["warehouse", "compact", "--warehouse", lake])
    assert after["tables"] == before["tables"] and before["tables"]["events"] > 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["sessions", "show", "nope"], 1, "no session 'nope'"),
        (["sessions", "list", "--action", "fly"], 2, "--action 'fly' is not one of"),
        (["sessions", "list", "--decision", "maybe"], 2, "--decision 'maybe'"),
        (["sessions", "list", "--since", "yesterday"], 2, "ISO 8601"),
        (["sessions", "list", "--body", ""], 2, "--body is empty"),
        (["sessions", "list", "--actor", ""], 2, "--actor is empty"),
    ],
)
def test_bad_input_gets_a_clear_message(
    lake: str, args: list[str], code: int, message: str
) -> None:
    res = runner.invoke(app, [*args, "--warehouse", lake])
    assert res.exit_code == code
    assert message in res.stderr and "Traceback" not in res.output + res.stderr


def test_missing_lake_names_what_to_run(tmp_path: Path) -> None:
    res = runner.invoke(app, ["sessions", "list", "--warehouse", f"lake:{tmp_path / 'none'}"])
    assert res.exit_code == 1
    assert "embedguard warehouse migrate" in res.stderr
    assert not (tmp_path / "none").exists()


def test_password_never_printed() -> None:
    res = runner.invoke(
        app, ["sessions", "list", "--warehouse", "clickhouse://eg:hunter2@127.0.0.1:1/db"]
    )
    assert res.exit_code == 1
    assert "hunter2" not in res.output + res.stderr
    assert "eg@127.0.0.1:1" in res.stderr or "eg:***@" in res.stderr


def test_real_entry_point(lake: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "embedguard.cli", "sessions", "list", "--json", "--warehouse", lake],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["total"] == 5


# -- hostile text: markup and emoji codes in arguments and in recorded data ------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> str:
    return hostile_lake(tmp_path_factory.mktemp("hostile") / "lake")


def _shown(res: Any, code: int) -> str:
    """What the command printed; it exited with ``code`` and raised nothing."""
    text: str = res.stdout + res.stderr
    assert res.exit_code == code, text
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in text and "MarkupError" not in text
    return text


@pytest.mark.parametrize(
    ("args", "code", "literal"),
    [
        (["sessions", "show", "[/x]"], 1, "no session '[/x]' in lake:"),
        (["sessions", "list", "--action", "[/x]"], 2, "--action '[/x]' is not one of"),
        (["sessions", "list", "--decision", "[bold]deny[/]"], 2, "'[bold]deny[/]'"),
        (["sessions", "list", "--since", ":skull:[/]"], 2, ":skull:[/]"),
        (["sessions", "list", "--actor", "[/nobody]"], 0, "0 of 0 sessions"),
    ],
)
def test_markup_in_arguments_is_shown_as_typed(
    hostile: str, args: list[str], code: int, literal: str
) -> None:
    assert literal in _shown(runner.invoke(app, [*args, "--warehouse", hostile]), code)


def test_markup_in_a_warehouse_path_is_shown_as_typed(tmp_path: Path) -> None:
    missing = tmp_path / "[/x]" / ":skull:"
    res = runner.invoke(app, ["sessions", "list", "--warehouse", f"lake:{missing}"])
    assert f"no warehouse at {missing}" in _shown(res, 1)


def test_recorded_markup_and_emoji_codes_are_shown_as_recorded(hostile: str) -> None:
    """A client that names its collection "x[/]" must not stop auditors listing
    sessions, and one whose subject is "[bold]rich[/]" must not appear as "rich"."""
    listed = _shown(runner.invoke(app, ["sessions", "list", "--warehouse", hostile]), 0)
    for recorded in (SESSION, STYLED_SUBJECT, COLLECTION, EMOJI_SUBJECT):
        assert recorded in listed
    assert "💀" not in listed

    shown = _shown(runner.invoke(app, ["sessions", "show", SESSION, "--warehouse", hostile]), 0)
    for recorded in (f"session {SESSION}", STYLED_SUBJECT, f"/collections/{COLLECTION}/points"):
        assert recorded in shown
    filtered = runner.invoke(
        app, ["sessions", "list", "--collection", COLLECTION, "--warehouse", hostile, "--json"]
    )
    assert [s["subject"] for s in json.loads(_shown(filtered, 0))["sessions"]] == [STYLED_SUBJECT]


@pytest.mark.parametrize("flag", ["--actor", "--collection", "--action", "--decision",
                                  "--since", "--until", "--body"])  # fmt: skip
def test_an_empty_filter_is_refused_not_ignored(lake: str, flag: str) -> None:
    """An empty value would list every session as if it had matched."""
    res = runner.invoke(app, ["sessions", "list", flag, "", "--warehouse", lake])
    assert f"{flag} is empty" in _shown(res, 2)
    assert f"or leave {flag} out" in res.stderr


BIDI_SUBJECT = "alice\u202egpj.exe"  # prints as "aliceexe.jpg" on a terminal
BIDI_COLLECTION = "do\u200bcs"  # prints exactly like "docs"
BIDI_SESSION = "s-bidi\u2066"


@pytest.fixture(scope="module")
def bidi(tmp_path_factory: pytest.TempPathFactory) -> str:
    from datetime import UTC, datetime

    from schemas.chain import EventStamper
    from tests.embedguard.hostile import lake_of, write_request

    stamped = write_request(EventStamper("gw-bidi"), BIDI_SESSION, "r-bidi", BIDI_SUBJECT,
                            BIDI_COLLECTION, datetime(2026, 3, 3, 9, 0, tzinfo=UTC))
    return lake_of(tmp_path_factory.mktemp("bidi") / "lake", stamped, "sqlite:bidi-test")


def test_direction_overrides_and_zero_width_characters_are_shown_as_markers(bidi: str) -> None:
    listed = _shown(runner.invoke(app, ["sessions", "list", "--warehouse", bidi]), 0)
    shown = _shown(runner.invoke(app, ["sessions", "show", BIDI_SESSION, "--warehouse", bidi]), 0)
    lineage = _shown(runner.invoke(app, ["lineage", "--collection", BIDI_COLLECTION, "--id",
                                         "[/x]", "--warehouse", bidi]), 0)
    for text in (listed, shown, lineage):
        assert not any(c in text for c in "\u202e\u200b\u2066"), text
    assert "alice⟨U+202E⟩gpj.exe" in listed and "s-bidi⟨U+2066⟩" in listed
    assert "alice⟨U+202E⟩gpj.exe" in shown and "/collections/do⟨U+200B⟩cs/points" in shown
    assert "alice⟨U+202E⟩gpj.exe" in lineage
    # --json keeps the values exact, for programs
    sessions = _json(["sessions", "list", "--warehouse", bidi])["sessions"]
    assert [(s["session_id"], s["subject"]) for s in sessions] == [(BIDI_SESSION, BIDI_SUBJECT)]
