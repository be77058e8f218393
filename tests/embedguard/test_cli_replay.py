"""embedguard/cli_replay.py: what lineage, diff, replay and export print when the
arguments or the recorded values look like rich markup or emoji codes, and
empty filters. (The commands' behaviour itself: tests/replay/.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from embedguard.cli import app
from tests.embedguard.hostile import (
    COLLECTION,
    EMOJI_SUBJECT,
    POINT,
    SESSION,
    STYLED_SUBJECT,
    hostile_lake,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> str:
    return hostile_lake(tmp_path_factory.mktemp("hostile") / "lake")


def shown(args: list[str], code: int) -> str:
    """Run ``embedguard ARGS``: it exits with ``code``, raises nothing; its output."""
    res = runner.invoke(app, args)
    text: str = res.stdout + res.stderr
    assert res.exit_code == code, text
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in text and "MarkupError" not in text
    return text


def test_lineage_shows_recorded_markup_as_recorded(hostile: str) -> None:
    """A client that wrote to collection "x[/]" must not make lineage crash, and a
    subject "[bold]rich[/]" must not show as a bold "rich"."""
    history = shown(
        ["lineage", "--collection", COLLECTION, "--id", POINT, "--warehouse", hostile], 0
    )
    assert f"lineage of {POINT} in {COLLECTION}" in history
    assert STYLED_SUBJECT in history and "r-evil" in history
    state = shown(["lineage", "--collection", COLLECTION, "--at", "now", "--warehouse", hostile], 0)
    assert f"{COLLECTION} at now: 1 point(s)" in state
    assert POINT in state and STYLED_SUBJECT in state
    emoji = shown(["lineage", "--collection", "docs", "--at", "now", "--warehouse", hostile], 0)
    assert EMOJI_SUBJECT in emoji and "💀" not in emoji


@pytest.mark.parametrize(
    ("args", "code", "literal"),
    [
        (
            ["lineage", "--collection", "c", "--id", "[/x]"],
            0,
            "no write or delete of '[/x]' in 'c'",
        ),
        (["lineage", "--collection", "[b]c", "--id", ":skull:"], 0, "':skull:' in '[b]c'"),
        (["lineage", "--approval", "[/x]"], 1, "no approval or ticket '[/x]'"),
        (["diff", "[/a]", "[bold]b[/]"], 1, "'[/a]' is neither a request id"),
        (["sessions", "show", "[/x]"], 1, "no session '[/x]'"),
    ],
)
def test_markup_in_arguments_is_shown_as_typed(
    hostile: str, args: list[str], code: int, literal: str
) -> None:
    assert literal in shown([*args, "--warehouse", hostile], code)


def test_diff_and_replay_show_recorded_markup_as_recorded(hostile: str) -> None:
    diffed = shown(["diff", "r-evil", "r-emoji", "--warehouse", hostile], 0)
    assert f"PUT /collections/{COLLECTION}/points" in diffed
    # an unconfigured URL is production: the recorded write is skipped, nothing is sent
    replayed = shown(
        ["replay", SESSION, "--target", "http://127.0.0.1:9", "--warehouse", hostile], 0
    )
    assert f"replay of {SESSION} against" in replayed
    assert f"/collections/{COLLECTION}/points" in replayed
    as_json = shown(
        ["replay", SESSION, "--target", "http://127.0.0.1:9", "--warehouse", hostile, "--json"], 0
    )
    assert COLLECTION in as_json


@pytest.mark.parametrize(
    "args",
    [
        ["lineage", "--collection", "", "--at", "now"],
        ["lineage", "--collection", "docs", "--id", ""],
        ["lineage", "--collection", "docs", "--at", ""],
        ["lineage", "--approval", ""],
    ],
)
def test_an_empty_lineage_value_is_refused(hostile: str, args: list[str]) -> None:
    flag = next(a for a, v in zip(args, args[1:], strict=False) if v == "")
    assert f"{flag} is empty" in shown([*args, "--warehouse", hostile], 2)


@pytest.mark.parametrize("flag", ["--actor", "--collection", "--since", "--until", "--session"])
def test_an_empty_export_filter_is_refused_before_anything_is_recorded(
    tmp_path: Path, hostile: str, flag: str
) -> None:
    """An empty filter would export every session, as if they all matched."""
    log = tmp_path / "events.db"
    out = shown(
        ["export", "--out", str(tmp_path / "bundle"), flag, "", "--log", f"sqlite:{log}",
         "--export-key", str(tmp_path / "export.key"), "--warehouse", hostile],
        2,
    )  # fmt: skip
    assert f"{flag} is empty" in out
    assert not log.exists() and not (tmp_path / "bundle").exists()


def _json(args: list[str]) -> Any:
    return json.loads(shown([*args, "--json"], 0))


def test_json_output_carries_the_recorded_values_unchanged(hostile: str) -> None:
    found = _json(["lineage", "--collection", COLLECTION, "--id", POINT, "--warehouse", hostile])
    assert {r["subject"] for r in found["lineage"]} == {STYLED_SUBJECT}
