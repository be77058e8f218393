"""replay.verify_core on streams built with the real stamper and codec, signed
with real Ed25519 keys: clean logs verify; every kind of tampering is named."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from replay.verify_core import (
    ConsistencyProof,
    InclusionProof,
    build_proofs,
    decode_events,
    leaf_hash,
    open_checkpoints,
    verify_log,
    verify_proofs,
)
from schemas.chain import EventStamper
from schemas.codec import DecodedEvent, default_codec
from schemas.merkle import root_of
from schemas.models import Checkpoint, PolicyChanged
from schemas.note import CheckpointBody, Signer, checkpoint_origin

SIGNER = Signer.generate("embedguard-gateway-test")
VKEY = SIGNER.verifier.vkey


def _stamp_checkpoint(
    stamper: EventStamper, origin_stream: str, leaves: Sequence[DecodedEvent], signer: Signer
) -> DecodedEvent:
    first = next(
        d
        for d in leaves
        if d.event.envelope.gateway_id == origin_stream and d.event.envelope.stream_seq == 0
    )
    origin = checkpoint_origin(origin_stream, str(first.event.envelope.event_id))
    body = CheckpointBody(origin, len(leaves), root_of([leaf_hash(d) for d in leaves]))
    st = stamper.stamp(
        Checkpoint,
        session_id=f"gateway:{stamper.gateway_id.split('#')[0]}",
        origin=body.origin,
        tree_size=body.tree_size,
        root_hash=body.root_hash.hex(),
        signed_note=body.sign(signer),
        key_id=signer.verifier.id_text,
    )
    return default_codec().decode(st.wire)


def _log(
    n: int = 20,
    *,
    sessions: int = 3,
    every: int = 6,
    stream: str = "gw-t",
    final: bool = True,
    signer: Signer = SIGNER,
) -> list[DecodedEvent]:
    stamper = EventStamper(stream)
    out: list[DecodedEvent] = []
    for i in range(n):
        st = stamper.stamp(
            PolicyChanged,
            session_id=f"s{i % sessions}",
            old_sha256=None,
            new_sha256=f"{i:064x}",
            source="test",
            diff=f"change {i}",
        )
        out.append(default_codec().decode(st.wire))
        if (i + 1) % every == 0:
            out.append(_stamp_checkpoint(stamper, stream, out, signer))
    if final:
        out.append(_stamp_checkpoint(stamper, stream, out, signer))
    return out


def _text(findings: Sequence[object]) -> str:
    return "\n".join(str(f) for f in findings)


def _id(d: DecodedEvent) -> str:
    return str(d.event.envelope.event_id)


def test_a_clean_log_verifies() -> None:
    events = _log()
    report = verify_log(events, [VKEY], require_checkpoint=True)
    assert report.ok and not report.findings, _text(report.findings)
    assert report.checkpoints_verified == 4  # 3 periodic + final
    assert report.consistency_verified == 3
    assert report.streams[f"gw-t/{_id(events[0])}"].verified_size == len(events) - 1
    assert report.to_json()["ok"] is True


def test_the_tail_after_the_last_checkpoint_is_reported() -> None:
    events = _log(final=False, n=20, every=6)
    report = verify_log(events, [VKEY])
    assert report.ok
    [tail] = report.findings
    assert tail.kind == "not_checkpointed" and tail.severity == "warning"
    assert "2 event(s)" in tail.detail  # events 19 and 20 after the checkpoint at 18(+3)
    strict = verify_log(events, [VKEY], require_checkpoint=True)
    assert not strict.ok


def test_an_altered_event_is_named_through_the_chain_and_the_root() -> None:
    events = _log()
    i = 4
    raw = bytearray(events[i].canonical)
    raw[raw.index(b"change 4")] ^= 0x01
    events[i] = default_codec().decode(bytes(raw))
    report = verify_log(
        events, [VKEY], wheres=[f"part-0.parquet row {n}" for n in range(len(events))]
    )
    altered = [f for f in report.errors if f.kind == "chain_altered"]
    assert len(altered) == 1 and _id(events[i]) in altered[0].detail
    assert "part-0.parquet row 4" in altered[0].detail
    roots = [f for f in report.errors if f.kind == "root_mismatch"]
    assert roots and "between stream_seq 0 and 5" in roots[0].detail


def test_the_last_event_of_a_session_altered_is_still_caught_by_the_root() -> None:
    events = _log(n=6, sessions=6, every=100)  # every session has one event
    raw = bytearray(events[2].canonical)
    raw[raw.index(b"change 2")] ^= 0x01
    events[2] = default_codec().decode(bytes(raw))
    report = verify_log(events, [VKEY])
    assert [f.kind for f in report.errors] == ["root_mismatch"]


def test_a_whole_session_dropped() -> None:
    events = _log(n=12, sessions=3, every=100)
    kept = [d for d in events if d.event.envelope.session_id != "s1"]
    report = verify_log(kept, [VKEY])
    [gap] = [f for f in report.errors if f.kind == "stream_gap"]
    assert gap.stream_seq == 2 and "expected stream_seq 1" in gap.detail
    # the final checkpoint signed 12 events; 8 are left
    assert any(f.kind == "events_missing" for f in report.errors)


def test_a_truncated_log_is_missing_signed_events() -> None:
    events = _log(n=12, every=100)
    cut = events[:5] + [events[-1]]  # the final checkpoint still says 12
    report = verify_log(cut, [VKEY])
    kinds = {f.kind for f in report.errors}
    assert {"stream_gap", "events_missing"} <= kinds
    short = verify_log(events[:5], [VKEY], notes=[("checkpoints.txt", _note(events[-1]))])
    [missing] = [f for f in short.errors if f.kind == "events_missing"]
    assert missing.event_id == _id(events[4]) and "7 missing" in missing.detail


def _note(d: DecodedEvent) -> str:
    assert isinstance(d.event, Checkpoint)
    return d.event.signed_note


def test_a_whole_stream_dropped_is_reported_from_its_checkpoint() -> None:
    gone = _log(n=5, stream="gw-gone")
    report = verify_log(_log(n=3, stream="gw-kept"), [VKEY], notes=[("cp", _note(gone[-1]))])
    [f] = report.errors
    assert f.kind == "stream_missing" and "embedguard/gw-gone" in f.detail


def test_streams_after_rotation_restart_their_sessions() -> None:
    # the system session keeps its id in the new stream and starts at seq 0
    first, second = _log(n=4, stream="gw-r", sessions=1), _log(n=4, stream="gw-r#1", sessions=1)
    report = verify_log(first + second, [VKEY])
    assert report.ok and not report.findings, _text(report.findings)


def test_wrong_key_fork_and_mismatching_event_fields() -> None:
    events = _log(n=6, every=100)
    other = Signer.generate("embedguard-gateway-test")
    report = verify_log(events, [other.verifier.vkey])
    [sig] = [f for f in report.errors if f.kind == "checkpoint_signature"]
    assert sig.event_id == _id(events[-1]) and "no signature by a pinned key" in sig.detail
    # a second checkpoint of the same size with another root: a rewritten log
    forked = CheckpointBody(checkpoint_origin("gw-t", _id(events[0])), 6, bytes(32)).sign(SIGNER)
    fork = verify_log(events, [VKEY], notes=[("old-checkpoint.txt", forked)])
    assert {"checkpoint_fork", "root_mismatch"} <= {f.kind for f in fork.errors}
    # an event whose fields differ from its note
    cp = events[-1].event
    assert isinstance(cp, Checkpoint)
    stamper = EventStamper("gw-x")
    bad = default_codec().decode(
        stamper.stamp(
            Checkpoint,
            session_id="gateway:gw-x",
            origin=cp.origin,
            tree_size=cp.tree_size + 1,
            root_hash=cp.root_hash,
            signed_note=cp.signed_note,
            key_id=cp.key_id,
        ).wire
    )
    _, problems = open_checkpoints([bad], [SIGNER.verifier])
    assert [p.kind for p in problems] == ["checkpoint_mismatch"] and "tree_size" in problems[
        0
    ].detail


def test_undecodable_rows_are_named() -> None:
    events = _log(n=3, every=100)
    rows = [(f"events.parquet row {i}", d.canonical) for i, d in enumerate(events)]
    rows[1] = (rows[1][0], b"\xc3\x01" + b"\xff" * 12)
    decoded, wheres, problems = decode_events(rows)
    assert len(decoded) == 3 and wheres[1] == "events.parquet row 2"
    [p] = problems
    assert p.kind == "undecodable" and p.where == "events.parquet row 1"


# -- proofs (evidence bundles) ---------------------------------------------------------


def _proofs(
    events: list[DecodedEvent], chosen: list[DecodedEvent]
) -> tuple[list[InclusionProof], list[ConsistencyProof], list[tuple[str, str]]]:
    cps, _ = open_checkpoints(events, [SIGNER.verifier])
    inc, con = build_proofs(events, cps, {_id(d) for d in chosen})
    return inc, con, [(c.source, c.note) for c in cps]


def test_inclusion_and_consistency_proofs_verify_for_a_selection() -> None:
    events = _log(n=30, every=7)
    chosen = [d for d in events if d.event.envelope.session_id == "s2"]
    inc, con, notes = _proofs(events, chosen)
    report = verify_proofs(chosen, [VKEY], inclusion=inc, consistency=con, notes=notes)
    assert report.ok and not report.findings, _text(report.findings)
    assert report.inclusion_verified == len(chosen) and report.consistency_verified == 4
    # proofs survive a JSON round trip
    inc2 = [InclusionProof.from_json(p.to_json()) for p in inc]
    con2 = [ConsistencyProof.from_json(p.to_json()) for p in con]
    assert verify_proofs(chosen, [VKEY], inclusion=inc2, consistency=con2, notes=notes).ok


def test_proof_tampering_is_named() -> None:
    events = _log(n=30, every=7)
    chosen = [d for d in events if d.event.envelope.session_id == "s0"]
    inc, con, notes = _proofs(events, chosen)
    # an event moved to another stream_seq's proof
    swapped = [dataclasses.replace(p, hashes=inc[1].hashes) if p is inc[0] else p for p in inc]
    r = verify_proofs(chosen, [VKEY], inclusion=swapped, consistency=con, notes=notes)
    [f] = r.errors
    assert f.kind == "inclusion" and f.event_id == _id(chosen[0])
    # a consistency proof with a changed hash
    broken = [
        dataclasses.replace(c, hashes=(bytes(32), *c.hashes[1:])) if i == 1 else c
        for i, c in enumerate(con)
    ]
    r = verify_proofs(chosen, [VKEY], inclusion=inc, consistency=broken, notes=notes)
    assert [f.kind for f in r.errors] == ["consistency"]
    # a missing consistency proof
    r = verify_proofs(chosen, [VKEY], inclusion=inc, consistency=con[1:], notes=notes)
    assert [f.kind for f in r.errors] == ["consistency"] and "no consistency proof" in r.errors[
        0
    ].detail
    # checkpoints signed by another key
    other = Signer.generate("x")
    r = verify_proofs(chosen, [other.verifier.vkey], inclusion=inc, consistency=con, notes=notes)
    assert {f.kind for f in r.errors} >= {"checkpoint_signature", "inclusion"}


def test_an_event_after_the_last_checkpoint_is_not_proven() -> None:
    """Nothing signed vouches for an event no inclusion proof covers: an error,
    unless the reader allows unproven events, when it is a warning."""
    events = _log(n=10, every=4, final=False)
    inc, con, notes = _proofs(events, events)
    r = verify_proofs(events, [VKEY], inclusion=inc, consistency=con, notes=notes)
    assert not r.ok
    assert [(f.kind, f.stream_seq) for f in r.errors] == [("not_proven", 10), ("not_proven", 11)]
    assert "NOT PROVEN" in r.errors[0].detail
    r = verify_proofs(events, [VKEY], inclusion=inc, consistency=con, notes=notes,
                      allow_unproven=True)
    assert r.ok
    warned = [f for f in r.findings if f.kind == "not_proven"]
    assert [f.stream_seq for f in warned] == [10, 11]
    assert {f.severity for f in warned} == {"warning"}


def test_events_recorded_again_without_any_checkpoint_are_not_proven() -> None:
    """Anyone who can write the log can re-record a history with no Checkpoint
    event: every chain is consistent, and with no proof it must not pass."""
    events = [d for d in _log(n=6, every=100, final=False)
              if not isinstance(d.event, Checkpoint)]
    r = verify_proofs(events, [VKEY], inclusion=[], consistency=[], notes=[])
    assert not r.ok and {f.kind for f in r.errors} == {"not_proven"}
    assert len(r.errors) == len(events)


@pytest.mark.parametrize("bad", ["not a key", "x+0000000+AAAA"])
def test_a_malformed_pinned_key_is_refused_by_name(bad: str) -> None:
    from schemas.note import NoteError

    with pytest.raises(NoteError, match="pinned key"):
        verify_log(_log(n=2), [bad])


def test_storage_order_does_not_matter_in_stream_seq_mode() -> None:
    events = _log(n=12, every=5)
    shuffled = events[::-1]
    assert not verify_log(shuffled, [VKEY]).ok  # in log order: reordered
    report = verify_log(shuffled, [VKEY], order="stream_seq")
    assert report.ok and not report.findings, _text(report.findings)
    # a duplicate row and a missing one are still named
    dup = verify_log([*events, events[3]], [VKEY], order="stream_seq")
    assert any(f.kind == "stream_duplicate" and f.event_id == _id(events[3]) for f in dup.errors)
    gap = verify_log(events[:3] + events[4:], [VKEY], order="stream_seq")
    assert any(f.kind == "stream_gap" and f.event_id == _id(events[4]) for f in gap.errors)


def test_a_gateway_restarted_with_the_same_id_starts_a_new_run() -> None:
    """Two runs of stream gw-same (both from stream_seq 0, the system session
    from seq 0): each has its own tree and origin; nothing is reported."""
    first, second = _log(n=7, every=3), _log(n=5, every=3)
    assert first[0].event.envelope.gateway_id == second[0].event.envelope.gateway_id
    both = first + second
    for order in ("given", "stream_seq"):
        given = both if order == "given" else both[::-1]
        report = verify_log(given, [VKEY], order=order)  # type: ignore[arg-type]
        assert report.ok and not report.findings, (order, _text(report.findings))
        assert len(report.streams) == 2 and report.checkpoints_verified == 3 + 2
    # proofs name the run they belong to, whatever the storage order (here
    # sorted by stream_seq, which interleaves the two runs)
    interleaved = sorted(both, key=lambda d: d.event.envelope.stream_seq)
    inc, con, notes = _proofs(interleaved, second)
    assert len(inc) == len(second) - 1  # the final checkpoint is not covered
    assert {p.origin for p in inc} == {checkpoint_origin("gw-t", _id(second[0]))}
    assert verify_proofs(second, [VKEY], inclusion=inc, consistency=con, notes=notes).ok
    # a proof moved onto another event of the same stream is refused
    moved = [dataclasses.replace(inc[0], event_id=_id(second[1]))]
    r = verify_proofs(second[1:2], [VKEY], inclusion=moved, consistency=con, notes=notes)
    assert [f.kind for f in r.errors] == ["inclusion"] and "not for this event" in r.errors[
        0
    ].detail
