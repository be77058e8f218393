"""replay/diff.py (pure rules) and `embedguard diff` on recorded requests and sessions."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from embedguard.cli import app
from pipeline import queries
from pipeline.warehouse import open_warehouse
from replay.diff import diff_bodies
from tests.replay.conftest import Scenario

runner = CliRunner()

CHROMA_THEN = {
    "ids": [["a", "b", "c"]],
    "documents": [["x", "y", "z"]],
    "distances": [[0.1, 0.2, 0.3]],
    "include": ["documents", "distances"],
}


@pytest.mark.parametrize(
    ("now", "added", "removed", "moved", "changed"),
    [
        (CHROMA_THEN, [], [], [], []),
        ({**CHROMA_THEN, "distances": [[0.10001, 0.2, 0.3]]}, [], [], [], []),
        ({**CHROMA_THEN, "distances": [[0.15, 0.2, 0.3]]}, [], [], [], ["a"]),
        ({**CHROMA_THEN, "documents": [["x", "Y", "z"]]}, [], [], [], ["b"]),
        (
            {
                "ids": [["b", "a", "d"]],
                "documents": [["y", "x", "w"]],
                "distances": [[0.2, 0.1, 0.4]],
                "include": ["documents", "distances"],
            },
            ["d"],
            ["c"],
            ["a", "b"],
            [],
        ),
    ],
)
def test_chroma_ranked_ids(
    now: dict,
    added: list[str],
    removed: list[str],
    moved: list[str],
    changed: list[str],  # type: ignore[type-arg]
) -> None:
    d = diff_bodies(CHROMA_THEN, now, status_then=200, status_now=200)
    assert (d.added_ids, d.removed_ids, d.moved_ids, d.changed_ids) == (
        added,
        removed,
        moved,
        changed,
    )
    assert d.identical == (not (added or removed or moved or changed))


def test_qdrant_volatile_fields_and_scores() -> None:
    then = {
        "result": [{"id": 1, "score": 0.9, "payload": {"t": "a"}}, {"id": 2, "score": 0.8}],
        "status": "ok",
        "time": 0.002,
    }
    now = {
        "result": [{"id": 1, "score": 0.90004, "payload": {"t": "a"}}, {"id": 2, "score": 0.8}],
        "status": "ok",
        "time": 0.5,
    }
    assert diff_bodies(then, now).identical
    now["result"][0]["payload"] = {"t": "b"}  # type: ignore[index]
    d = diff_bodies(then, now)
    assert d.changed_ids == ["1"] and not d.identical
    points = {"result": {"points": [{"id": "u", "score": 1.0}]}, "time": 1}
    assert diff_bodies(points, {"result": {"points": [{"id": "v", "score": 1.0}]}}).added_ids == [
        "v"
    ]


def test_status_and_unstructured_bodies() -> None:
    d = diff_bodies({"error": "x"}, {"error": "y"}, status_then=200, status_now=404)
    assert not d.identical and d.structural and d.status_now == 404
    assert diff_bodies("plain", "plain", status_then=200, status_now=200).identical


def test_diff_two_sessions_side_by_side(scenario: Scenario) -> None:
    a, b = scenario.sessions["carol"], scenario.sessions["dave"]
    res = runner.invoke(app, ["diff", a, b, "--warehouse", scenario.lake_url, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["kind"] == "sessions"
    first = out["pairs"][0]
    assert first["same_request"] is True
    assert first["diff"]["changed_ids"] == ["doc-02"]  # root revised it between the two
    text = runner.invoke(app, ["diff", a, b, "--warehouse", scenario.lake_url])
    assert text.exit_code == 0 and "doc-02" in text.stdout


def test_diff_two_requests(scenario: Scenario) -> None:
    with open_warehouse(scenario.lake_url) as wh:
        ra = queries.session_requests(wh, scenario.sessions["carol"])[0]["request_id"]
        rb = queries.session_requests(wh, scenario.sessions["dave"])[0]["request_id"]
    res = runner.invoke(app, ["diff", ra, rb, "--warehouse", scenario.lake_url, "--json"])
    assert res.exit_code == 0, res.output
    (pair,) = json.loads(res.stdout)["pairs"]
    assert pair["diff"]["changed_ids"] == ["doc-02"]
    bad = runner.invoke(app, ["diff", ra, "nope", "--warehouse", scenario.lake_url])
    assert bad.exit_code == 1 and "'nope' is neither" in bad.stderr
