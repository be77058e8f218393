from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from schemas.chain import EventStamper, hash_event, verify_chains
from schemas.codec import DecodedEvent, InvalidEvent, default_codec
from schemas.models import (
    GENESIS_HASH,
    ActionClass,
    Event,
    Header,
    MaskedField,
    Obligation,
    Operation,
    OperationDecision,
    PolicyDecided,
    RequestBlocked,
    RequestForwarded,
    RequestReceived,
    ResponseRecorded,
    SessionStarted,
)


def _blocked(stamper: EventStamper, session: str, n: int = 0):  # type: ignore[no-untyped-def]
    return stamper.stamp(
        RequestBlocked,
        session_id=session,
        request_id=f"r{n}",
        status=403,
        error="forbidden",
        reason="no rule matched",
        stage="policy",
    )


def _decode(stamped) -> list[DecodedEvent]:  # type: ignore[no-untyped-def]
    return [default_codec().decode(s.wire) for s in stamped]


def test_hash_is_sha256_of_prev_and_canonical_bytes() -> None:
    s = EventStamper("gw-1")
    first = _blocked(s, "a")
    expected = hashlib.sha256(bytes.fromhex(GENESIS_HASH) + first.wire).hexdigest()
    assert first.hash == expected
    assert hash_event(GENESIS_HASH, first.event) == expected
    second = _blocked(s, "a", 1)
    assert second.event.envelope.prev_hash == first.hash
    assert second.event.envelope.seq == 1


def test_hash_event_refuses_a_wrong_prev_hash() -> None:
    s = EventStamper("gw-1")
    first = _blocked(s, "a")
    with pytest.raises(ValueError, match="prev_hash"):
        hash_event("f" * 64, first.event)


def test_sessions_chain_independently_and_stream_is_contiguous() -> None:
    s = EventStamper("gw-1")
    out = [_blocked(s, sid, i) for i, sid in enumerate("abab")]
    assert [e.event.envelope.seq for e in out] == [0, 0, 1, 1]
    assert [e.event.envelope.stream_seq for e in out] == [0, 1, 2, 3]
    assert verify_chains(_decode(out)) == []


def test_concurrent_stamping_keeps_chains_whole() -> None:
    s = EventStamper("gw-1")
    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(lambda i: _blocked(s, f"s{i % 5}", i), range(400)))
    out.sort(key=lambda e: e.event.envelope.stream_seq)
    assert [e.event.envelope.stream_seq for e in out] == list(range(400))
    assert verify_chains(_decode(out)) == []


def test_invalid_body_leaves_no_gap() -> None:
    s = EventStamper("gw-1")
    _blocked(s, "a")
    with pytest.raises(ValueError):
        s.stamp(RequestBlocked, session_id="a", status=403, error="x", reason="y", stage="nowhere")
    assert _blocked(s, "a").event.envelope.seq == 1


@pytest.mark.parametrize("kind", ["gap", "altered", "reordered"])
def test_verify_names_the_first_bad_event(kind: str) -> None:
    s = EventStamper("gw-1")
    out = _decode([_blocked(s, "a", i) for i in range(6)])
    if kind == "gap":
        bad = out[:2] + out[3:]
        culprit = out[3]
    elif kind == "reordered":
        bad = out[:2] + [out[3], out[2]] + out[4:]
        culprit = out[3]
    else:
        other = EventStamper("gw-1")
        other.resume_session("a", next_seq=2, last_hash="e" * 64)
        forged = default_codec().decode(
            other.stamp(
                SessionStarted,
                session_id="a",
                subject="mallory",
                issuer="x",
                client_address="1.2.3.4",
            ).wire
        )
        bad = out[:2] + [forged] + out[3:]
        culprit = forged
    problems = verify_chains(bad)
    assert len(problems) == 1
    assert problems[0].kind == ("gap" if kind == "reordered" else kind)
    assert problems[0].event_id == str(culprit.event.envelope.event_id)
    assert str(culprit.event.envelope.event_id) in str(problems[0])


def test_a_flipped_byte_in_an_earlier_event_breaks_the_next_link() -> None:
    s = EventStamper("gw-1")
    out = [_blocked(s, "a", i) for i in range(3)]
    tampered = bytearray(out[1].wire)
    tampered[tampered.find(b"no rule") + 1] ^= 0x01  # inside the 'reason' string
    decoded = _decode(out)
    decoded[1] = default_codec().decode(bytes(tampered))
    problems = verify_chains(decoded)
    assert [p.kind for p in problems] == ["altered"]
    assert problems[0].seq == 2


def test_event_ids_stay_on_the_clock_and_in_order_under_load() -> None:
    """A busy gateway stamps thousands of events per second. Their UUIDv7 ids
    must stay ordered without their timestamps running ahead of the clock
    (uuid6's uuid7 adds a millisecond per id within one millisecond)."""
    import time

    s = EventStamper("gw-1")
    out = [_blocked(s, "a", i) for i in range(5000)]
    now_ms = time.time_ns() // 1_000_000
    ids = [e.event.envelope.event_id for e in out]
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False))
    assert all(u.version == 7 for u in ids)
    ahead_ms = (ids[-1].int >> 80) - now_ms
    assert ahead_ms <= 1, f"the last event id is {ahead_ms} ms ahead of the clock"


# -- stamp_record: the gateway's hot path builds plain records, no model --------

_OPS = [
    Operation(action=ActionClass.READ, collection="docs", ids=["1", "2"], limit=5),
    Operation(action=ActionClass.WRITE, collection="docs", vector_count=3, bulk=True),
]
_HEADERS = [Header(name="host", value="db:6333"), Header(name="authorization", value="[REDACTED]")]


def _received_fields() -> dict[str, Any]:
    return {
        "method": "POST",
        "scheme": "https",
        "host": "db:6333",
        "path": "/collections/docs/points",
        "query": "wait=true",
        "headers": _HEADERS,
        "body": b'{"points": []}',
        "body_sha256": "a" * 64,
        "body_size": 14,
        "content_type": "application/json",
        "product": "qdrant",
        "operations": _OPS,
    }


def _as_record(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        k: [x.__dict__ for x in v] if isinstance(v, list) and v and hasattr(v[0], "__dict__")
        else v
        for k, v in fields.items()
    }


def test_stamp_record_writes_the_same_bytes_as_the_model_path() -> None:
    when = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    by_model, by_record = EventStamper("gw-1"), EventStamper("gw-1")
    cases: list[tuple[type[Event], dict[str, Any]]] = [
        (RequestReceived, _received_fields()),
        (PolicyDecided, {
            "outcome": "allow", "matched_rules": ["r1"], "reasons": ["ok"],
            "obligations": [Obligation(kind="mask", params_json='{"fields":["email"]}')],
            "operation_decisions": [OperationDecision(index=0, outcome="allow", reason="ok")],
            "policy_sha256": "b" * 64, "grant_id": None, "ticket_id": None}),
        (RequestForwarded, {"upstream": "http://db:6333", "credential_ref": "env:K",
                            "approval_id": None, "grant_id": None, "injected_filter": True}),
        (ResponseRecorded, {
            "status": 200, "headers": _HEADERS, "body": None, "body_sha256": "c" * 64,
            "body_size": 10, "original_body_sha256": "d" * 64,
            "masked_fields": [MaskedField(path="result.payload.email", kind="email")],
            "result_ids": ["1"], "upstream_error": None, "latency_us": 1234}),
    ]
    for cls, fields in cases:
        a = by_model.stamp(cls, session_id="s", request_id="r", occurred_at=when, **fields)
        b = by_record.stamp_record(
            cls, session_id="s", request_id="r", occurred_at=when, body=_as_record(fields)
        )
        # Only the event id differs (a fresh UUIDv7); with it equal, so are the bytes.
        same = by_model.codec.canonical(
            a.event.model_copy(update={"envelope": a.event.envelope.model_copy(
                update={"event_id": b.event.envelope.event_id,
                        "prev_hash": b.event.envelope.prev_hash})}))
        assert same == b.wire
        decoded = default_codec().decode(b.wire).event
        assert decoded == b.event  # the lazily built model is the event as written
        assert type(decoded).model_validate(decoded.model_dump()) == decoded
        assert (b.type_name, b.session_id, b.stream_seq, b.gateway_id) == (
            cls.avro_name, "s", a.stream_seq, "gw-1")
        assert b.event_id == str(decoded.envelope.event_id)
    assert verify_chains(_decode([*[by_record.stamp_record(RequestForwarded, session_id="t", body={
        "upstream": "u", "credential_ref": None, "approval_id": None, "grant_id": None,
        "injected_filter": False}) for _ in range(3)]])) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"body_sha256": "not-hex"}, "body_sha256"),
        ({"body_size": -1}, "body_size"),
        ({"method": 7}, "method"),
        ({"operations": [{"action": "rename"}]}, "operations"),
        ({"bodyy": b""}, "bodyy"),  # a field the schema does not have
        ({"product": None}, "product"),
    ],
)
def test_stamp_record_refuses_what_the_model_refuses_and_leaves_no_gap(
    change: dict[str, Any], names: str
) -> None:
    s = EventStamper("gw-1")
    good = _as_record(_received_fields())
    first = s.stamp_record(RequestReceived, session_id="a", body=good)
    with pytest.raises(InvalidEvent, match=names):
        s.stamp_record(RequestReceived, session_id="a", body={**good, **change})
    missing = {k: v for k, v in good.items() if k != "host"}
    with pytest.raises(InvalidEvent, match="host"):
        s.stamp_record(RequestReceived, session_id="a", body=missing)
    second = s.stamp_record(RequestReceived, session_id="a", body=good)
    assert (second.event.envelope.seq, second.stream_seq) == (1, 1)
    assert second.event.envelope.prev_hash == first.hash
    assert verify_chains(_decode([first, second])) == []


def test_stamp_record_fills_fields_left_out_that_have_defaults() -> None:
    """A field added to a gateway event later, with a default, must not make
    every request fail closed until the recorder learns of it."""
    s = EventStamper("gw-1")
    body = {"upstream": "http://db:6333"}  # every other field has a default
    st = s.stamp_record(RequestForwarded, session_id="a", body=body)
    event = default_codec().decode(st.wire).event
    assert event == RequestForwarded(envelope=event.envelope, upstream="http://db:6333")
    with pytest.raises(InvalidEvent, match="upstream"):
        s.stamp_record(RequestForwarded, session_id="a", body={"injected_filter": True})


def test_stamp_and_stamp_record_ids_are_uuids_in_order_when_interleaved() -> None:
    s = EventStamper("gw-1")
    forwarded = {"upstream": "u", "credential_ref": None, "approval_id": None,
                 "grant_id": None, "injected_filter": False}
    out = []
    for i in range(2000):
        if i % 2:
            out.append(s.stamp_record(RequestForwarded, session_id="s", body=forwarded))
        else:
            out.append(s.stamp(RequestForwarded, session_id="s", **forwarded))
    ids = [e.event_id for e in out]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for e in out[:4]:
        assert isinstance(e.event.envelope.event_id, UUID)
        assert str(e.event.envelope.event_id) == e.event_id
        assert e.event.envelope.event_id.version == 7
