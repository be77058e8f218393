"""replay/lineage.py and `embedguard lineage`: state at a time, point history,
writes under one approval or ticket, deletes by filter."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from embedguard.cli import app
from pipeline.warehouse import open_warehouse
from replay.lineage import approval_lineage, point_history, state_at
from tests.replay.conftest import COLLECTION, FILTER_COLLECTION, N_DOCS, Scenario

runner = CliRunner()


def test_state_at_three_times_matches_what_chroma_held(scenario: Scenario) -> None:
    assert len(scenario.states) == 3
    with open_warehouse(scenario.lake_url) as wh:
        states = [state_at(wh, COLLECTION, at) for at, _ in scenario.states]
    for state, (_at, held) in zip(states, scenario.states, strict=True):
        assert state.ids == held and state.exact
    # the three moments differ, so this checks the reconstruction, not a constant
    assert len({tuple(h) for _, h in scenario.states}) == 3
    first, second, third = states
    assert len(first.ids) == N_DOCS and {p.writer for p in first.points.values()} == {"ingest-job"}
    a1 = second.points["a1"]
    assert a1.writer == "alice" and a1.approval_id == scenario.approval_id
    assert a1.decision == "require_approval" and "doc-03" not in second.points
    o1 = third.points["o1"]
    assert o1.writer == "oscar" and o1.ticket_id == scenario.ticket_id and o1.approval_id is None


def test_last_writer_and_first_writer(scenario: Scenario) -> None:
    with open_warehouse(scenario.lake_url) as wh:
        now = state_at(wh, COLLECTION)
    doc02 = now.points["doc-02"]  # root revised its document after carol's reads
    assert (doc02.writer, doc02.added_by) == ("root", "ingest-job")
    assert doc02.written_at > doc02.added_at  # type: ignore[operator]
    assert now.ids == scenario.states[-1][1]


def test_cli_state_at_json(scenario: Scenario) -> None:
    at, held = scenario.states[1]
    res = runner.invoke(
        app,
        [
            "lineage",
            "--collection",
            COLLECTION,
            "--at",
            at.isoformat(),
            "--json",
            "--warehouse",
            scenario.lake_url,
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [p["point_id"] for p in out["points"]] == held and out["exact"] is True
    assert {p["point_id"]: p["writer"] for p in out["points"]}["a2"] == "alice"


def test_point_history(scenario: Scenario) -> None:
    with open_warehouse(scenario.lake_url) as wh:
        doc03 = point_history(wh, COLLECTION, "doc-03")
    known = [(r["subject"], r["action"], r["took_effect"]) for r in doc03 if r["ids_known"]]
    assert known == [("ingest-job", "write", True), ("root", "delete", True)]
    res = runner.invoke(
        app,
        [
            "lineage",
            "--collection",
            COLLECTION,
            "--id",
            "a1",
            "--json",
            "--warehouse",
            scenario.lake_url,
        ],
    )
    rows = json.loads(res.stdout)["lineage"]
    assert [(r["subject"], r["approval_id"]) for r in rows] == [("alice", scenario.approval_id)]


def test_everything_under_one_approval_and_one_ticket(scenario: Scenario) -> None:
    with open_warehouse(scenario.lake_url) as wh:
        appr = approval_lineage(wh, scenario.approval_id)
        ticket = approval_lineage(wh, scenario.ticket_id)
        assert approval_lineage(wh, "no-such-approval") is None
    assert appr is not None and ticket is not None
    assert [op["ids"] for r in appr["requests"] for op in r["operations"]] == [["a1", "a2"]]
    assert appr["approval"]["requester_subject"] == "alice"
    assert [(r["subject"], [op["ids"] for op in r["operations"]]) for r in ticket["requests"]] == [
        ("oscar", [["o1"]])
    ]
    res = runner.invoke(
        app, ["lineage", "--approval", scenario.approval_id, "--warehouse", scenario.lake_url]
    )
    assert res.exit_code == 0 and "a1" in res.stdout and "approved" in res.stdout


def test_delete_by_filter_is_marked_with_its_recorded_count(scenario: Scenario) -> None:
    with open_warehouse(scenario.lake_url) as wh:
        state = state_at(wh, FILTER_COLLECTION)
    (op,) = state.unknown_ops
    assert op.action == "delete" and op.took_effect and op.filter_present and op.subject == "root"
    assert op.id_count == 0
    assert not state.exact
    # the gateway could not know which ids went: every earlier point is flagged
    assert state.ids == ["f1", "f2", "f3", "f4"]
    assert all(p.maybe_affected_by == [op.event_id] for p in state.points.values())
    assert set(scenario.filter_ids_after) < set(state.ids)
    res = runner.invoke(
        app,
        [
            "lineage",
            "--collection",
            FILTER_COLLECTION,
            "--at",
            "now",
            "--warehouse",
            scenario.lake_url,
        ],
    )
    assert res.exit_code == 0 and "not exact" in res.stdout and "ids are unknown" in res.stdout


def test_bad_lineage_options_get_clear_messages(scenario: Scenario) -> None:
    for args in (["--collection", COLLECTION], ["--id", "x"], ["--approval", "a", "--id", "x"]):
        res = runner.invoke(app, ["lineage", *args, "--warehouse", scenario.lake_url])
        assert res.exit_code == 2 and "error" in res.stderr and "Traceback" not in res.output
