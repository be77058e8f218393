"""pipeline/warehouse/projection.py: events → rows, without I/O.

Every test runs on both paths: ``project_batch_columnar`` (what the warehouses
run) and the model path ``project_batch`` (the reference that
test_fast_decode.py compares it with)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from pipeline.transport.base import LogRecord
from pipeline.warehouse.base import LoadBatch
from pipeline.warehouse.ddl import table_schemas
from pipeline.warehouse.projection import TABLES, project_batch, project_batch_columnar
from schemas.codec import FIXTURES_DIR, default_codec, load_fixture_schemas
from tests.pipeline.warehouse.scenario import Scenario, build_scenario, renumber, sha

LOADED = datetime(2026, 3, 2, tzinfo=UTC)

Rows = dict[str, list[dict[str, object]]]


def _columnar(batch: LoadBatch) -> Rows:
    return {
        t: table.to_pylist()
        for t, table in project_batch_columnar(batch, default_codec(), LOADED).items()
    }


def _model(batch: LoadBatch) -> Rows:
    return project_batch(batch, default_codec(), LOADED)


@pytest.fixture(scope="module", params=[_columnar, _model], ids=["production", "model"])
def project(request: pytest.FixtureRequest) -> Callable[[LoadBatch], Rows]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build_scenario(sessions=2)


@pytest.fixture(scope="module")
def rows(scenario: Scenario, project: Callable[[LoadBatch], Rows]) -> Rows:
    return project(LoadBatch("sqlite:test", 0, scenario.records()))


def test_every_row_fits_its_table_schema(rows: dict[str, list[dict[str, object]]]) -> None:
    schemas = table_schemas()
    assert set(rows) == set(TABLES) - {"loads"}
    for table, table_rows in rows.items():
        names = set(schemas[table].names)
        for row in table_rows:
            assert set(row) <= names, (table, set(row) - names)


def test_events_keep_position_fingerprint_and_canonical_bytes(
    rows: dict[str, list[dict[str, object]]], scenario: Scenario
) -> None:
    events = rows["events"]
    assert [e["src_offset"] for e in events] == list(range(len(scenario.events)))
    fp = default_codec().schemas.current["RequestReceived"].fingerprint_hex
    received = [e for e in events if e["type"] == "RequestReceived"]
    assert received and all(e["schema_fingerprint"] == fp for e in received)
    for stamped, row in zip(scenario.events, events, strict=True):
        assert row["event_id"] == str(stamped.event.envelope.event_id)
        assert row["raw"] == default_codec().canonical(stamped.event)
        assert row["source"] == "sqlite:test" and row["src_partition"] == 0


def test_bodies_live_apart_from_the_event_payload(
    rows: dict[str, list[dict[str, object]]],
) -> None:
    bodies = {b["sha256"]: b for b in rows["bodies"]}
    for ev in rows["events"]:
        payload = json.loads(str(ev["payload_json"]))
        assert "body" not in payload
        if ev["type"] in ("RequestReceived", "ResponseRecorded"):
            assert payload["body_sha256"] == ev["body_sha256"]
            body = bodies[str(ev["body_sha256"])]["body"]
            assert isinstance(body, bytes) and sha(body) == ev["body_sha256"]


def test_lineage_one_row_per_point_and_unknown_ids_flagged(
    rows: dict[str, list[dict[str, object]]],
) -> None:
    lineage = rows["vector_lineage"]
    writes = [r for r in lineage if r["action"] == "write" and r["collection"] == "docs"]
    # two sessions × alice/bob × one write of two ids
    assert sorted(str(r["point_id"]) for r in writes) == sorted(
        f"p-{n}-{k}" for n in range(2) for k in (1, 2) for _ in ("alice", "bob")
    )
    deletes = [r for r in lineage if r["action"] == "delete"]
    assert deletes and all(r["point_id"] == "" and r["ids_known"] is False for r in deletes)
    assert all(r["filter_present"] for r in deletes)
    # searches are not lineage
    assert all(r["action"] in ("write", "delete") for r in lineage)


def test_request_partials_carry_their_event_part(
    rows: dict[str, list[dict[str, object]]],
) -> None:
    parts = [r for r in rows["requests"] if r["request_id"] == "r-bob-0-c"]
    by_type = {r["type"]: r for r in parts}
    assert set(by_type) == {"RequestReceived", "PolicyDecided", "RequestBlocked"}
    assert by_type["RequestReceived"]["actions"] == ["delete"]
    assert by_type["PolicyDecided"]["outcome"] == "deny"
    assert by_type["RequestBlocked"]["blocked_stage"] == "policy"
    assert by_type["RequestBlocked"]["forwarded"] is False


@pytest.mark.parametrize(
    "value",
    [b"", b"garbage", b"\xc3\x01" + b"\x00" * 8 + b"x", b"\x00\x00\x00\x00\x07abc"],
    ids=["empty", "not-avro", "unknown-fingerprint", "confluent-without-registry"],
)
def test_poison_record_becomes_a_dead_letter_and_the_batch_goes_on(
    value: bytes, project: Callable[[LoadBatch], Rows]
) -> None:
    good = build_scenario(sessions=1).records()
    recs = renumber([*good[:3], LogRecord(0, 0, b"k", value, 1_700_000_000_000), *good[3:]])
    out = project(LoadBatch("kafka:t", 0, recs))
    assert len(out["events"]) == len(good)
    [dead] = out["dead_letters"]
    assert dead["src_offset"] == 3 and dead["raw"] == value and dead["record_key"] == "k"
    assert "DecodeError" in str(dead["error"])


def test_old_schema_version_fixtures_project(project: Callable[[LoadBatch], Rows]) -> None:
    files = sorted((FIXTURES_DIR / "v1").glob("*.avro"))
    assert files
    recs = [LogRecord(0, i, b"k", f.read_bytes(), 0) for i, f in enumerate(files)]
    out = project(LoadBatch("sqlite:old", 0, recs))
    assert out["dead_letters"] == []
    assert len(out["events"]) == len(files)
    versions = {e["type"]: e["writer_version"] for e in out["events"]}
    # types whose schema grew since v1 resolve from the frozen v1 writer schema
    assert "v1" in versions.values(), versions
    v1_fps = {es.fingerprint_hex for es in load_fixture_schemas()}
    assert {e["schema_fingerprint"] for e in out["events"]} <= v1_fps


def test_approval_claims_show_in_events_as_claimed_or_released(
    project: Callable[[LoadBatch], Rows],
) -> None:
    from schemas.chain import EventStamper
    from schemas.models import ApprovalClaimed

    stamper = EventStamper("gw-claims")
    records = [
        LogRecord(0, i, b"claims:T1", stamper.stamp(
            ApprovalClaimed, session_id="claims:T1@gw-claims", request_id=f"r{i}",
            approval_id="T1", kind="ticket", operations=2, released=released,
            reason="not forwarded" if released else None).wire, 0)
        for i, released in enumerate([False, True])
    ]
    got = project(LoadBatch("sqlite:test", 0, records))["events"]
    assert [(e["type"], e["approval_id"], e["outcome"], e["request_id"]) for e in got] == [
        ("ApprovalClaimed", "T1", "claimed", "r0"),
        ("ApprovalClaimed", "T1", "released", "r1"),
    ]
