"""The loader's fast path (schemas/codec.py ``decode_raw`` +
pipeline/warehouse/projection.py ``project_batch_columnar``) against the model
path (``decode`` + ``project_batch`` + ``to_arrow``): the same Arrow tables for
every event type, for stored v1 fixtures, and the same dead letters for
poison, including records that decode as Avro but break a model constraint."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import fastavro
import pyarrow as pa
import pytest
from pydantic import BaseModel, Field

from pipeline.transport.base import LogRecord
from pipeline.warehouse.base import LoadBatch
from pipeline.warehouse.projection import (
    TABLES,
    project_batch_columnar,
    project_tables_reference,
    rows_after,
)
from schemas.codec import (
    FIXTURES_DIR,
    SINGLE_OBJECT_MAGIC,
    DecodeError,
    _model_check,
    default_codec,
)
from schemas.models import EVENT_TYPES, Event
from schemas.samples import sample_event, sample_events
from tests.pipeline.warehouse.scenario import build_scenario, renumber

LOADED = datetime(2026, 3, 2, 12, 30, 0, 123456, tzinfo=UTC)


def _records(values: list[bytes]) -> list[LogRecord]:
    return [
        LogRecord(0, i, f"k{i}".encode(), v, 1_700_000_000_000 + i) for i, v in enumerate(values)
    ]


def _both(values: list[bytes]) -> tuple[dict[str, pa.Table], dict[str, pa.Table]]:
    batch = LoadBatch("sqlite:fast", 3, renumber(_records(values), partition=3, start=40))
    codec = default_codec()
    return (
        project_tables_reference(batch, codec, LOADED),
        project_batch_columnar(batch, codec, LOADED),
    )


def _assert_same(ref: dict[str, pa.Table], fast: dict[str, pa.Table]) -> None:
    assert set(ref) == set(fast) == set(TABLES) - {"loads"}
    for table in ref:
        assert fast[table].schema == ref[table].schema, table
        assert fast[table].to_pylist() == ref[table].to_pylist(), table


def _minimal(cls: type[Event]) -> Event:
    """The sample with every optional field at its default (None / [])."""
    full = sample_event(cls).model_dump()
    for name, field in cls.model_fields.items():
        if not field.is_required():
            full[name] = field.get_default(call_default_factory=True)
    return cls.model_validate(full)


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
def test_every_event_type_projects_the_same_rows(type_name: str) -> None:
    cls = EVENT_TYPES[type_name]
    codec = default_codec()
    events = [sample_event(cls), _minimal(cls)]
    ref, fast = _both([codec.encode(e) for e in events])
    _assert_same(ref, fast)
    assert fast["events"].num_rows == 2
    assert fast["dead_letters"].num_rows == 0
    for ev in events:
        raw = codec.decode_raw(codec.encode(ev))
        assert raw.to_decoded() == codec.decode(codec.encode(ev))


def test_the_gateway_mix_projects_the_same_rows() -> None:
    values = [r.value for r in build_scenario(sessions=3).records()]
    ref, fast = _both(values)
    _assert_same(ref, fast)
    # the scenario exercises every derived table
    for table in ("bodies", "vector_lineage", "requests", "sessions", "approvals", "checkpoints"):
        assert fast[table].num_rows > 0, table


def test_v1_fixtures_resolve_the_same_way() -> None:
    files = sorted((FIXTURES_DIR / "v1").glob("*.avro"))
    assert len(files) == len(list((FIXTURES_DIR / "v1").glob("*.avsc")))
    assert {f.stem for f in files} <= set(EVENT_TYPES)
    values = [f.read_bytes() for f in files]
    ref, fast = _both(values)
    _assert_same(ref, fast)
    assert fast["dead_letters"].num_rows == 0
    versions = set(fast["events"].column("writer_version").to_pylist())
    assert "v1" in versions
    codec = default_codec()
    for v in values:
        raw = codec.decode_raw(v)
        assert raw.to_decoded() == codec.decode(v)


def _encode_record(type_name: str, mutate: Any) -> bytes:
    """Wire bytes for a record that Avro accepts but the model may not."""
    es = default_codec().schemas.current[type_name]
    datum = sample_event(EVENT_TYPES[type_name]).model_dump(mode="python")
    mutate(datum)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, es.parsed, datum)
    return SINGLE_OBJECT_MAGIC + es.fingerprint + buf.getvalue()


def _set(path: str, value: Any) -> Any:
    def mutate(datum: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = datum
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        target[last] = value

    return mutate


INVALID = [
    ("SessionStarted", "envelope.prev_hash", "not-hex"),
    ("SessionStarted", "envelope.session_id", ""),
    ("SessionStarted", "envelope.gateway_id", ""),
    ("SessionStarted", "envelope.seq", -1),
    ("SessionStarted", "envelope.stream_seq", -5),
    ("SessionStarted", "envelope.type", "SessionEnded"),
    ("SessionStarted", "envelope.event_id", "not-a-uuid"),
    ("PolicyDecided", "outcome", "maybe"),
    ("RequestReceived", "body_sha256", "AB" * 32),
    ("RequestReceived", "body_size", -1),
    ("RequestReceived", "operations.0.vector_count", -3),
    ("ApprovalRequested", "min_approvals", 0),
    ("ApprovalRequested", "kind", "other"),
    ("ApprovalRequested", "mode", "later"),
    ("ResponseRecorded", "original_body_sha256", "x"),
    ("RequestBlocked", "stage", "nowhere"),
    ("Checkpoint", "tree_size", -1),
]


@pytest.mark.parametrize(("type_name", "path", "value"), INVALID, ids=[p for _, p, _ in INVALID])
def test_a_record_that_breaks_its_model_is_a_dead_letter_on_both_paths(
    type_name: str, path: str, value: Any
) -> None:
    bad = _encode_record(type_name, _set(path, value))
    codec = default_codec()
    with pytest.raises(DecodeError) as model_err:
        codec.decode(bad)
    with pytest.raises(DecodeError) as raw_err:
        codec.decode_raw(bad)
    assert str(raw_err.value) == str(model_err.value)
    good = [codec.encode(e) for e in sample_events()[:3]]
    ref, fast = _both([*good, bad, *good])
    _assert_same(ref, fast)
    [dead] = fast["dead_letters"].to_pylist()
    assert dead["src_offset"] == 43 and dead["raw"] == bad
    assert fast["events"].num_rows == 6


@pytest.mark.parametrize(
    "form",
    [str.upper, lambda u: "{" + u + "}", lambda u: "urn:uuid:" + u, lambda u: u.replace("-", "")],
    ids=["upper", "braces", "urn", "hex"],
)
def test_an_event_id_not_in_canonical_form_is_read_as_its_uuid(form: Any) -> None:
    """decode_raw reads the envelope's event_id as a plain string; a string
    fastavro's UUID would have accepted in another form projects the same
    canonical id as the model path."""
    codec = default_codec()
    event = sample_event(EVENT_TYPES["RequestReceived"])
    odd = _encode_record(
        "RequestReceived", _set("envelope.event_id", form(str(event.envelope.event_id)))
    )
    assert codec.decode_raw(odd).record["envelope"]["event_id"] == str(event.envelope.event_id)
    ref, fast = _both([odd, codec.encode(event)])
    _assert_same(ref, fast)
    assert fast["events"].column("event_id").to_pylist() == [str(event.envelope.event_id)] * 2


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"garbage",
        b"\xc3\x01" + b"\x00" * 8 + b"x",
        b"\x00\x00\x00\x00\x07abc",
        "truncated",
        "trailing",
    ],
    ids=["empty", "not-avro", "unknown-fingerprint", "confluent", "truncated", "trailing"],
)
def test_undecodable_bytes_are_the_same_dead_letters(value: bytes | str) -> None:
    good = default_codec().encode(sample_events()[3])
    if value == "truncated":
        value = good[:-7]
    elif value == "trailing":
        value = good + b"\x00\x01"
    assert isinstance(value, bytes)
    ref, fast = _both([good, value, good])
    _assert_same(ref, fast)
    assert fast["dead_letters"].num_rows == 1
    assert "DecodeError" in fast["dead_letters"].column("error")[0].as_py()


def test_record_check_refuses_a_constraint_it_cannot_check() -> None:
    class Capped(BaseModel):
        name: str = Field(max_length=3)

    with pytest.raises(TypeError, match="max_length"):
        _model_check(Capped)


def test_rows_after_keeps_only_later_offsets() -> None:
    values = [default_codec().encode(e) for e in sample_events()[:5]]
    _, fast = _both(values)
    events = fast["events"]
    assert rows_after(events, None).num_rows == 5
    assert rows_after(events, 42).column("src_offset").to_pylist() == [43, 44]
    assert rows_after(events, 99).num_rows == 0


TRICKY = [
    "plain",
    "".join(chr(c) for c in range(0x80)),  # every ASCII character, controls and DEL
    "caf\u00e9 \u2028 \U0001f600 \u00a0",
    "\x7f",
    'quote " backslash \\ slash /',
    "",
]


@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_operations_json_is_json_dumps_byte_for_byte(text: str) -> None:
    import json

    from pipeline.warehouse.projection import _ops_json_raw

    ops = [
        {"action": "write", "collection": text, "ids": [text, "a"], "vector_count": 2},
        {"action": "delete", "collection": None, "ids": [], "filter_present": True},
    ]
    assert _ops_json_raw(ops) == json.dumps(ops, separators=(",", ":"))


def test_tricky_ids_project_the_same_rows_on_both_paths() -> None:
    from schemas.models import ActionClass, Operation, RequestReceived

    codec = default_codec()
    base = sample_event(RequestReceived)
    events = [
        base.model_copy(
            update={
                "operations": [
                    Operation(action=ActionClass.WRITE, collection=text or None, ids=[text, "x"])
                ]
            }
        )
        for text in TRICKY
    ]
    ref, fast = _both([codec.encode(e) for e in events])
    _assert_same(ref, fast)
    assert fast["dead_letters"].num_rows == 0
