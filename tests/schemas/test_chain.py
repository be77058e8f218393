from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from schemas.chain import EventStamper, hash_event, verify_chains
from schemas.codec import DecodedEvent, default_codec
from schemas.models import GENESIS_HASH, RequestBlocked, SessionStarted


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
