"""pipeline/queries.py: the same query text over Delta (lake:) and MergeTree
(chdb:) gives the same answers, and the answers are the right ones."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import queries as q
from pipeline.transport.base import LogRecord
from pipeline.warehouse import LoadBatch, Warehouse
from pipeline.warehouse.clickhouse import ChdbWarehouse
from pipeline.warehouse.lake import LakeWarehouse
from tests.pipeline.warehouse.scenario import (
    HOSTILE_TEXTS,
    Scenario,
    build_hostile_scenario,
    build_scenario,
    chdb_warehouse,
    hostile_body,
    renumber,
)

SRC = "sqlite:queries-test"

#: Parameters for every query of the module (the equality test covers them all).
PARAMS: dict[str, list[dict[str, Any]]] = {
    "sessions_list": [
        dict(
            actor="",
            group="",
            collection="",
            action="",
            decision="",
            since="",
            until="",
            body="",
            window="",
            limit=100,
            offset=0,
        ),
        dict(
            actor="bob",
            group="",
            collection="docs",
            action="delete",
            decision="deny",
            since="",
            until="",
            body="",
            window="",
            limit=2,
            offset=1,
        ),
        dict(
            actor="",
            group="",
            collection="",
            action="",
            decision="",
            since="2026-03-01 09:00:00.100000",
            until="2026-03-01 09:00:00.300000",
            body="",
            window="",
            limit=100,
            offset=0,
        ),
        dict(
            actor="",
            group="",
            collection="",
            action="",
            decision="",
            since="",
            until="",
            body="needle-alice",
            window="",
            limit=100,
            offset=0,
        ),
        dict(
            actor="",
            group="",
            collection="",
            action="",
            decision="",
            since="",
            until="",
            body="",
            window="2026-03-01 09:00:00.200000",
            limit=100,
            offset=0,
        ),
    ],
    "sessions_count": [
        dict(
            actor="",
            group="ml-writers",
            collection="",
            action="",
            decision="",
            since="",
            until="",
            body="",
            window="",
        ),
        dict(
            actor="",
            group="",
            collection="",
            action="",
            decision="",
            since="",
            until="",
            body="",
            window="",
        ),
        dict(
            actor="alice",
            group="",
            collection="prod",
            action="",
            decision="",
            since="",
            until="",
            body="",
            window="",
        ),
        dict(
            actor="",
            group="",
            collection="",
            action="",
            decision="",
            since="",
            until="",
            body='"status":"ok"',
            window="",
        ),
    ],
    "sessions_latest": [dict()],
    "session": [dict(session_id="s-bob-1"), dict(session_id="nope")],
    "session_events": [
        dict(session_id="s-alice-2", limit=100, offset=0),
        dict(session_id="s-alice-2", limit=3, offset=2),
    ],
    "session_raw_events": [dict(session_id="s-dave-0")],
    "session_requests": [dict(session_id="s-bob-0")],
    "sessions_events": [dict(session_ids='["s-dave-0", "s-bob-0", "nope", "a\\"b,c"]')],
    "sessions_requests": [dict(session_ids='["s-bob-0", "s-alice-2"]')],
    "request_by_id": [dict(request_id="r-dave-held"), dict(request_id="r-bob-0-c")],
    "body_search": [
        dict(needle="needle-alice", kind="", limit=10),
        dict(needle='"status":"ok"', kind="response", limit=10),
        dict(needle="%_' OR 1=1 --", kind="", limit=10),
    ],
    "vector_lineage": [
        dict(collection="docs", point_id="p-1-2", include_unknown=True),
        dict(collection="docs", point_id="p-1-2", include_unknown=False),
        dict(collection="prod", point_id="p-x", include_unknown=True),
    ],
    "collection_history": [
        dict(collection="docs", action="", since="", until="", limit=100, offset=0),
        dict(collection="docs", action="delete", since="", until="", limit=100, offset=0),
    ],
    "approval": [dict(approval_id="apr-1")],
    "approval_events": [dict(approval_id="apr-1")],
    "approval_from_columns": [dict(approval_id="apr-1")],
    "approvals_list_from_columns": [dict(status="", limit=100, offset=0),
                                    dict(status="approved", limit=100, offset=0)],
    "legacy_approval_rows": [dict()],
    "approvals_list": [
        dict(status="", limit=10, offset=0),
        dict(status="pending", limit=10, offset=0),
    ],
    "approval_writes": [dict(approval_id="apr-1")],
    "stats_over_time": [
        dict(bucket_s=1, since="", until=""),
        dict(bucket_s=3600, since="2026-03-01 09:00:00.200000", until=""),
    ],
    "dead_letters": [dict(limit=10, offset=0)],
    "checkpoints": [dict(origin=""), dict(origin="embedguard/gw-1")],
    "body": [
        dict(sha256="2c5adc49a11eb3662e9d393df18343b9c4f47085ee3c1559f878699f70eb5362"),
        dict(sha256="0" * 64),
    ],
    "collection_lineage": [
        dict(collection="docs", until=""),
        dict(collection="docs", until="2026-03-01 09:00:00.200000"),
        dict(collection="prod", until=""),
    ],
    "streams": [dict()],
    "altered_bodies": [dict()],
    "ticket_writes": [dict(ticket_id="apr-1"), dict(ticket_id="none")],
    "stream_raw_events": [dict(stream="gw-1"), dict(stream="gw-none")],
    "top_actors": [dict(since="", limit=10), dict(since="2026-03-01 09:00:00.200000", limit=2)],
    "top_collections": [
        dict(since="", limit=10),
        dict(since="2026-03-01 09:00:00.200000", limit=1),
    ],
    "bodies": [
        dict(
            sha256s="2c5adc49a11eb3662e9d393df18343b9c4f47085ee3c1559f878699f70eb5362," + "0" * 64
        ),
        dict(sha256s=""),
    ],
    "events_by_type": [
        dict(type="RequestReceived", limit=5),
        dict(type="PolicyChanged", limit=5),
    ],
}


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build_scenario(sessions=3)


def _records(scenario: Scenario) -> list[LogRecord]:
    recs = scenario.records()
    return renumber([*recs[:7], LogRecord(0, 0, b"k", b"poison", 0), *recs[7:]])


def _load(wh: Warehouse, recs: list[LogRecord], size: int) -> None:
    wh.migrate()
    for lo in range(0, len(recs), size):
        wh.write_batch(LoadBatch(SRC, 0, recs[lo : lo + size]))


@pytest.fixture(scope="module")
def lake(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    wh = LakeWarehouse(tmp_path_factory.mktemp("lake"))
    _load(wh, _records(scenario), 31)
    yield wh
    wh.close()


@pytest.fixture(scope="module")
def merge_tree(scenario: Scenario) -> Iterator[ChdbWarehouse]:
    wh = chdb_warehouse()
    _load(wh, _records(scenario), 13)  # other batch boundaries on purpose
    yield wh
    wh._command(f"DROP DATABASE IF EXISTS {wh.db}")


def test_every_query_is_compared() -> None:
    assert set(PARAMS) == set(q.QUERIES)


@pytest.mark.parametrize(
    ("name", "params"),
    [(name, p) for name, plist in PARAMS.items() for p in plist],
    ids=[f"{name}-{i}" for name, plist in PARAMS.items() for i in range(len(plist))],
)
def test_same_text_same_results_on_delta_and_merge_tree(
    name: str, params: dict[str, Any], lake: Warehouse, merge_tree: Warehouse
) -> None:
    query = q.QUERIES[name]
    on_lake = query.run(lake, **params)
    on_mt = query.run(merge_tree, **params)
    for row in (*on_lake, *on_mt):
        row.pop("loaded_at", None)  # when each backend loaded it
    assert on_lake == on_mt
    if (
        name not in ("session", "approvals_list", "dead_letters")
        or params.get("status") != "pending"
    ):
        pass


def test_results_are_not_empty_where_data_exists(lake: Warehouse) -> None:
    for name in PARAMS:
        if name in (
            "session",
            "approvals_list",
            "body_search",
            "checkpoints",
            "ticket_writes",
            "altered_bodies",
        ):
            continue
        assert q.QUERIES[name].run(lake, **PARAMS[name][0]), name


# -- what the answers say ---------------------------------------------------------------
def test_who_added_this_vector(lake: Warehouse) -> None:
    rows = q.vector_lineage(lake, "docs", "p-1-2", include_unknown=False)
    assert [(r["subject"], r["action"], r["state"]) for r in rows] == [
        ("alice", "write", "completed"),
        ("bob", "write", "completed"),
    ]
    assert rows[0]["request_id"] == "r-alice-1-a" and rows[0]["session_id"] == "s-alice-1"
    with_unknown = q.vector_lineage(lake, "docs", "p-1-2")
    unknown = [r for r in with_unknown if not r["ids_known"]]
    assert len(unknown) == 3 and {r["action"] for r in unknown} == {"delete"}
    assert {r["decision"] for r in unknown} == {"deny"}


def test_lineage_names_approval_ticket_and_grant(lake: Warehouse) -> None:
    [row] = q.vector_lineage(lake, "prod", "p-x")
    assert row["subject"] == "dave" and row["approval_id"] == "apr-1"
    assert row["ticket_id"] == "CHG-42"
    appr = q.approval(lake, "apr-1")
    assert appr is not None
    assert appr["status"] == "approved" and appr["approvers"] == ["carol"]
    assert appr["requester_subject"] == "dave" and appr["grant_id"] == "g-1"
    [write] = q.approval_writes(lake, "apr-1")
    assert write["request_id"] == "r-dave-held" and write["collections"] == ["prod"]


def test_sessions_list_filters_and_pages(lake: Warehouse) -> None:
    everyone = q.sessions_list(lake, limit=100)
    assert len(everyone) == q.sessions_count(lake) == 7
    assert [r["started_at"] for r in everyone] == sorted(
        (r["started_at"] for r in everyone), reverse=True
    )
    bob = q.SessionFilter(actor="bob")
    assert {r["subject"] for r in q.sessions_list(lake, bob)} == {"bob"}
    assert q.sessions_count(lake, q.SessionFilter(action="delete", decision="deny")) == 3
    assert q.sessions_count(lake, q.SessionFilter(collection="prod")) == 1
    page1 = q.sessions_list(lake, limit=3, offset=0)
    page2 = q.sessions_list(lake, limit=3, offset=3)
    assert not {r["session_id"] for r in page1} & {r["session_id"] for r in page2}
    s = q.session(lake, "s-bob-0")
    assert s is not None
    assert s["request_count"] == 3 and s["denied_count"] == 1 and s["blocked_count"] == 1
    assert s["actions"] == ["delete", "search", "write"] and s["ended_reason"] == "idle"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["lake", "merge_tree"])
def test_windowed_pages_are_exactly_the_unwindowed_pages(
    backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sessions_list searches a page in time windows back from the newest row;
    with windows that cut through sessions, every page (and every filter) is
    still the page computed over all sessions."""
    from datetime import timedelta

    wh: Warehouse = request.getfixturevalue(backend)
    latest = q.SESSIONS_LATEST.run(wh)[0]["latest"]
    first = wh.query("SELECT toString(min(occurred_at)) AS t FROM {sessions}", {})[0]["t"]
    span = q._parse_time(latest) - q._parse_time(first)
    monkeypatch.setattr(q, "SESSION_WINDOWS", tuple(span * f for f in (0.05, 0.2, 0.5)))
    assert span > timedelta(0)
    windows_used = 0
    real_run = q.Query.run

    def counting_run(self: q.Query, w: Warehouse, **params: Any) -> list[dict[str, Any]]:
        nonlocal windows_used
        if self.name == "sessions_list" and params.get("window"):
            windows_used += 1
        return real_run(self, w, **params)

    monkeypatch.setattr(q.Query, "run", counting_run)
    for f in (q.SessionFilter(), q.SessionFilter(action="search"), q.SessionFilter(until=latest)):
        everything = real_run(q.SESSIONS_LIST, wh, **f.params(), window="", limit=100, offset=0)
        assert len(everything) == q.sessions_count(wh, f)
        for limit, offset in ((1, 0), (3, 1), (2, len(everything) - 1)):
            page = q.sessions_list(wh, f, limit=limit, offset=offset)
            assert page == everything[offset : offset + limit], (f, limit, offset)
    assert windows_used > 0


@pytest.mark.parametrize("backend", ["lake", "merge_tree"])
def test_trimmed_session_filters_answer_like_the_generic_text(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """sessions_list and sessions_count run the filter text with only the
    filters in use (unused ones cost the lake a snapshot each); every
    combination answers exactly like the generic text in QUERIES, with and
    without a window."""
    import itertools

    wh: Warehouse = request.getfixturevalue(backend)
    span = q.SESSIONS_LATEST.run(wh)[0]
    mid = (
        q._parse_time(span["earliest"])
        + (q._parse_time(span["latest"]) - q._parse_time(span["earliest"])) / 2
    )
    values = {
        "actor": "bob",
        "group": "Vector-Read",
        "collection": "docs",
        "action": "search",
        "decision": "allow",
        "since": q._time(mid),
        "until": span["latest"],
        "body": '"status":"ok"',
    }
    empty = q.SessionFilter().params()
    compared = nonempty = 0
    pairs = list(itertools.combinations(values, 2))
    shapes = [(), *((n,) for n in values), *pairs[::5], tuple(values)]
    for names in shapes:
        params = {**empty, **{n: values[n] for n in names}}
        used = q._used(params)
        assert used == frozenset(names)
        for window in ("", q._time(mid)):
            generic = q.SESSIONS_LIST.run(wh, **params, window=window, limit=100, offset=0)
            trimmed = q._trimmed("sessions_list", used, bool(window)).run(
                wh, **params, window=window, limit=100, offset=0
            )
            assert trimmed == generic, (names, window)
            compared += 1
            nonempty += bool(generic)
        count = q._trimmed("sessions_count", used, False).run(wh, **params, window="")
        assert count == q.SESSIONS_COUNT.run(wh, **params, window=""), names
    assert nonempty > compared // 4, (nonempty, compared)  # the filters do match


def test_sessions_filter_by_a_substring_of_their_bodies(lake: Warehouse) -> None:
    """A session matches when one of its requests sent or received (masked, as
    recorded) a body containing the text; the text is data, never SQL."""
    matched: dict[str, int] = {}
    for needle in ("needle-alice", '"status":"ok"'):
        expected = {
            str(row["session_id"])
            for hit in q.body_search(lake, needle, limit=100)
            for rid in hit["request_ids"]
            if (row := q.request_by_id(lake, rid)) is not None
        }
        assert expected, needle
        got = q.sessions_list(lake, q.SessionFilter(body=needle), limit=100)
        assert {r["session_id"] for r in got} == expected
        assert q.sessions_count(lake, q.SessionFilter(body=needle)) == len(expected)
        matched[needle] = len(expected)
    assert 0 < matched["needle-alice"] < q.sessions_count(lake)
    both = q.SessionFilter(body="needle-alice", actor="bob")
    assert q.sessions_list(lake, both) == [] and q.sessions_count(lake, both) == 0
    for hostile in ("%_' OR 1=1 --", "no such text anywhere"):
        assert q.sessions_count(lake, q.SessionFilter(body=hostile)) == 0


@pytest.mark.parametrize("backend", ["lake", "merge_tree"])
def test_event_count_is_the_number_of_the_sessions_events(
    backend: str, request: pytest.FixtureRequest, scenario: Scenario
) -> None:
    """A session's event_count counts all its events, also those that leave no
    row in the sessions table (RequestForwarded, approvals, grants)."""
    wh: Warehouse = request.getfixturevalue(backend)
    events = Counter(e.event.envelope.session_id for e in scenario.events)
    listed = {r["session_id"]: r["event_count"] for r in q.sessions_list(wh, limit=100)}
    assert listed == {sid: events[sid] for sid in listed} and len(listed) == 7
    partial = wh.query(
        "SELECT session_id, uniqExact(event_id) AS n FROM {sessions} GROUP BY session_id", {}
    )
    assert any(r["n"] < events[r["session_id"]] for r in partial)  # the case that matters
    for sid in listed:
        summary = q.session(wh, sid)
        assert summary is not None
        assert summary["event_count"] == events[sid] == len(q.session_events(wh, sid))


def test_session_timeline_is_the_chain_order(lake: Warehouse, scenario: Scenario) -> None:
    events = q.session_events(lake, "s-alice-2")
    expected = [e.event for e in scenario.events if e.event.envelope.session_id == "s-alice-2"]
    assert [r["event_id"] for r in events] == [str(e.envelope.event_id) for e in expected]
    assert [r["seq"] for r in events] == list(range(len(expected)))


def test_request_by_id_has_everything(lake: Warehouse) -> None:
    r = q.request_by_id(lake, "r-alice-0-a")
    assert r is not None
    assert (r["subject"], r["decision"], r["state"], r["status"]) == (
        "alice",
        "allow",
        "completed",
        200,
    )
    assert r["latency_us"] == 1500 and r["masked_fields"] == ["result.payload.email"]
    assert r["request_body_sha256"] and r["response_body_sha256"]
    assert q.request_by_id(lake, "no-such-request") is None


def test_body_search_is_a_substring_search_not_sql(lake: Warehouse) -> None:
    hits = q.body_search(lake, "needle-alice")
    assert len(hits) == 3 and all("needle-alice" in h["snippet"] for h in hits)
    assert q.body_search(lake, "' OR 1=1 --") == []
    assert q.body_search(lake, "needle", kind="response") == []
    with pytest.raises(ValueError, match="empty"):
        q.body_search(lake, "")


def test_collection_history_and_stats(lake: Warehouse, scenario: Scenario) -> None:
    deletes = q.collection_history(lake, "docs", action="delete")
    assert [r["state"] for r in deletes] == ["blocked"] * 3
    stats = q.stats_over_time(lake, bucket_s=86400)
    assert len(stats) == 1
    assert stats[0]["events"] == len(scenario.events)
    assert stats[0]["denied"] == 3 and stats[0]["blocked"] == 3


def test_bad_parameters_are_refused_with_the_reason(lake: Warehouse) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        q.sessions_list(lake, q.SessionFilter(since="yesterday"))
    with pytest.raises(ValueError, match="limit"):
        q.sessions_list(lake, limit=0)


def test_duplicate_rows_before_a_merge_are_not_double_counted(
    merge_tree: ChdbWarehouse, lake: Warehouse
) -> None:
    """Rows present twice (a crashed batch reloaded at other boundaries, before
    any merge) change no answer."""
    before = {name: q.QUERIES[name].run(merge_tree, **PARAMS[name][0]) for name in PARAMS}
    for table in ("events", "requests", "sessions", "approvals", "vector_lineage", "bodies"):
        merge_tree._command(
            f"INSERT INTO {merge_tree.db}.{table} SETTINGS insert_deduplicate = 0 "
            f"SELECT * FROM {merge_tree.db}.{table}"
        )
    dup = merge_tree.query("SELECT count() AS n, uniqExact(event_id) AS u FROM {events}", {})[0]
    assert dup["n"] == 2 * dup["u"]
    stats = merge_tree.stats()  # storage shows the copies; the distinct count does not move
    assert stats["distinct_events"] == stats["duplicate_event_rows"] == dup["u"]
    after = {name: q.QUERIES[name].run(merge_tree, **PARAMS[name][0]) for name in PARAMS}
    assert after == before
    assert after["sessions_list"] == q.QUERIES["sessions_list"].run(
        lake, **PARAMS["sessions_list"][0]
    )


def test_queries_never_format_user_input() -> None:
    for query in q.QUERIES.values():
        assert "%(" not in query.sql and "%s" not in query.sql, query.name


def test_lake_reads_work_from_any_current_directory(
    lake: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert q.sessions_count(lake) == 7
    assert Path.cwd() == tmp_path


@pytest.fixture(scope="module")
def hostile_lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    wh = LakeWarehouse(tmp_path_factory.mktemp("hostile-lake"))
    _load(wh, build_hostile_scenario().records(), 50)
    yield wh
    wh.close()


@pytest.fixture(scope="module")
def hostile_merge_tree() -> Iterator[ChdbWarehouse]:
    wh = chdb_warehouse()
    _load(wh, build_hostile_scenario().records(), 50)
    yield wh
    wh._command(f"DROP DATABASE IF EXISTS {wh.db}")


@pytest.mark.parametrize("backend", ["hostile_lake", "hostile_merge_tree"])
@pytest.mark.parametrize("n", range(len(HOSTILE_TEXTS)))
def test_parameter_values_match_stored_text_exactly(
    n: int, backend: str, request: pytest.FixtureRequest
) -> None:
    """A subject, point id or body text with backslashes, quotes, tabs,
    newlines, NUL, braces or non-ASCII finds exactly its rows on Delta and on
    MergeTree: parameter values reach ClickHouse unchanged."""
    wh: Warehouse = request.getfixturevalue(backend)
    text, sid, rid = HOSTILE_TEXTS[n], f"s-hostile-{n}", f"r-hostile-{n}"
    by_actor = q.SessionFilter(actor=text)
    assert [r["session_id"] for r in q.sessions_list(wh, by_actor)] == [sid]
    assert q.sessions_count(wh, by_actor) == 1
    summary = q.session(wh, sid)
    assert summary is not None and summary["subject"] == text
    [write] = q.vector_lineage(wh, "files", text, include_unknown=False)
    assert (write["session_id"], write["request_id"], write["subject"]) == (sid, rid, text)
    senders = {
        f"r-hostile-{k}"
        for k, other in enumerate(HOSTILE_TEXTS)
        if text.encode() in hostile_body(other)
    }
    hits = q.body_search(wh, text, kind="request", limit=100)
    assert {r for h in hits for r in h["request_ids"]} == senders
    assert q.sessions_count(wh, q.SessionFilter(body=text)) == len(senders)
