"""capture.checkpointer through a real Recorder on a real SQLite event log:
every N events or T seconds a signed Checkpoint event lands in the stream and
verifies offline against the pinned key; out-of-order durability, stream
rotation and shutdown; the signing key file."""

from __future__ import annotations

import asyncio
import os
import random
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from capture.checkpointer import Checkpointer, StreamTree, canonical_bytes
from capture.config import GatewayConfig, Route
from capture.recorder import Recorder
from capture.signing_keys import SigningKeyError, load_or_create_signing_key, load_signing_key
from replay.verify_core import verify_log
from schemas.chain import EventStamper, StampedEvent
from schemas.codec import DecodedEvent, default_codec
from schemas.merkle import hash_leaf, root_of
from schemas.models import Checkpoint, GatewayStarted, PolicyChanged
from schemas.note import CheckpointBody, Signer, checkpoint_origin
from tests.support.events import read_events

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp: Path, **kw: object) -> GatewayConfig:
    return GatewayConfig(
        routes=[Route(kind="qdrant", upstream="http://127.0.0.1:9", listen_port=0)],
        policy_path=ROOT / "examples" / "policy.yaml",
        log_url=f"sqlite:{tmp / 'events.db'}",
        issuer="http://127.0.0.1:9/issuer",
        audience="embedguard",
        gateway_id="gw-cp",
        signing_key=tmp / "keys" / "gateway.key",
        **kw,  # type: ignore[arg-type]
    )


async def _record(rec: Recorder, n: int) -> None:
    for i in range(n):
        await rec.record_system(
            PolicyChanged, old_sha256=None, new_sha256=f"{i:064x}", source="test", diff=str(i)
        )


async def _until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _run(
    tmp: Path,
    body: Callable[[Recorder], Awaitable[None]],
    *,
    log_url: str | None = None,
    **kw: object,
) -> list[DecodedEvent]:
    url = log_url or f"sqlite:{tmp / 'events.db'}"

    async def main() -> None:
        rec = Recorder(_config(tmp, **kw).model_copy(update={"log_url": url}))
        await rec.running()
        try:
            await body(rec)
        finally:
            await rec.done()

    asyncio.run(main())
    return read_events(url)


def _vkey(tmp: Path) -> str:
    return load_signing_key(tmp / "keys" / "gateway.key").verifier.vkey


def _checkpoints(events: list[DecodedEvent]) -> list[Checkpoint]:
    return [d.event for d in events if isinstance(d.event, Checkpoint)]


def test_every_n_events_and_at_shutdown(tmp_path: Path) -> None:
    def checkpointed(rec: Recorder) -> int:
        assert rec.checkpointer is not None
        tree = rec.checkpointer.trees.get("gw-cp")
        return tree.checkpointed if tree else 0

    async def body(rec: Recorder) -> None:
        await _record(rec, 12)
        await _until(lambda: checkpointed(rec) >= 10, "two checkpoints of 5 events")

    events = _run(tmp_path, body, checkpoint_every=5, checkpoint_interval_s=3600)
    cps = _checkpoints(events)
    assert len(cps) >= 3  # at least two periodic ones and the final one
    signer_id = load_signing_key(tmp_path / "keys" / "gateway.key").verifier.id_text
    for cp in cps:
        assert cp.origin == checkpoint_origin("gw-cp", str(events[0].event.envelope.event_id))
        assert cp.origin.startswith("embedguard/gw-cp/")
        assert cp.key_id == signer_id
        # the system session of this run of the stream
        assert cp.envelope.session_id.startswith("gateway:gw-cp@")
        signed, _ = CheckpointBody.open(
            cp.signed_note,
            [Signer.from_skey((tmp_path / "keys" / "gateway.key").read_text()).verifier],
        )
        assert signed.tree_size == cp.tree_size and signed.root_hash.hex() == cp.root_hash
    # every root is the RFC 6962 root of the first tree_size events as stored
    leaves = [hash_leaf(d.canonical) for d in events]
    for cp in cps:
        assert root_of(leaves[: cp.tree_size]).hex() == cp.root_hash
    # the final checkpoint covers everything but itself
    assert cps[-1].tree_size == len(events) - 1
    report = verify_log(events, [_vkey(tmp_path)])
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    assert report.checkpoints_verified == len(cps)


def test_interval_checkpoint_and_no_checkpoints_while_idle(tmp_path: Path) -> None:
    def tree(rec: Recorder) -> StreamTree | None:
        assert rec.checkpointer is not None
        return rec.checkpointer.trees.get("gw-cp")

    def all_covered(rec: Recorder) -> bool:
        t = tree(rec)
        return t is not None and t.checkpointed > 0 and t.new_content == 0

    async def body(rec: Recorder) -> None:
        await _record(rec, 3)
        await _until(lambda: all_covered(rec), "checkpoints by interval covering every event")
        t = tree(rec)
        assert t is not None
        size = t.checkpointed
        await asyncio.sleep(1.0)  # five intervals with nothing new recorded
        assert t.checkpointed == size and t.size == size + 1  # only its own Checkpoint since

    events = _run(tmp_path, body, checkpoint_every=1000, checkpoint_interval_s=0.2)
    cps = _checkpoints(events)
    # every checkpoint signs something new: never two in a row, none at an
    # idle shutdown, and the last covers every event but itself
    kinds = [isinstance(d.event, Checkpoint) for d in events]
    assert not any(a and b for a, b in zip(kinds, kinds[1:], strict=False))
    assert cps[-1].tree_size == len(events) - 1
    report = verify_log(events, [_vkey(tmp_path)], require_checkpoint=True)
    assert report.ok and not report.findings


def test_a_rotated_stream_gets_a_last_checkpoint_in_the_new_one(tmp_path: Path) -> None:
    async def body(rec: Recorder) -> None:
        await _record(rec, 3)
        rec._rotate_stream()  # what a failed append does
        await _record(rec, 2)

    events = _run(tmp_path, body, checkpoint_every=1000, checkpoint_interval_s=3600)
    streams = {d.event.envelope.gateway_id for d in events}
    assert streams == {"gw-cp", "gw-cp#1"}
    cps = _checkpoints(events)
    first = {
        d.event.envelope.gateway_id: str(d.event.envelope.event_id)
        for d in events
        if d.event.envelope.stream_seq == 0
    }
    old = [c for c in cps if c.origin == checkpoint_origin("gw-cp", first["gw-cp"])]
    assert len(old) == 1 and old[0].tree_size == 4  # GatewayStarted + 3
    assert old[0].envelope.gateway_id == "gw-cp#1"  # recorded in the new stream
    new = [c for c in cps if c.origin == checkpoint_origin("gw-cp#1", first["gw-cp#1"])]
    assert new and new[-1].tree_size >= 2
    report = verify_log(events, [_vkey(tmp_path)])
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    assert report.streams[f"gw-cp/{first['gw-cp']}"].verified_size == 4


def test_a_restart_with_the_same_gateway_id_verifies(tmp_path: Path) -> None:
    """`embedguard up` keeps its --gateway-id across restarts: the stream
    starts again at stream_seq 0, in a new run with its own origin."""

    async def body(rec: Recorder) -> None:
        await _record(rec, 3)

    _run(tmp_path, body, checkpoint_every=1000, checkpoint_interval_s=3600)
    events = _run(tmp_path, body, checkpoint_every=1000, checkpoint_interval_s=3600)
    assert [d.event.envelope.stream_seq for d in events].count(0) == 2
    report = verify_log(events, [_vkey(tmp_path)], require_checkpoint=True)
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    assert len(report.streams) == 2 and report.checkpoints_verified == 2


def test_checkpoints_on_a_kafka_log(tmp_path: Path, kafka_bootstrap: str, kafka_topic: str) -> None:
    """The same on Kafka (Tansu, partitions keyed by session): partitions
    interleave the stream, so the verifier orders it by stream_seq."""

    async def session(rec: Recorder, sid: str) -> None:
        for i in range(4):
            ev = rec.stamper.stamp(
                PolicyChanged,
                session_id=sid,
                old_sha256=None,
                new_sha256=f"{i:064x}",
                source="test",
                diff=str(i),
            )
            await rec.append([ev])

    async def body(rec: Recorder) -> None:
        await asyncio.gather(*(session(rec, f"session-{k}") for k in range(6)))

    url = f"kafka://{kafka_bootstrap}?topic={kafka_topic}"
    events = _run(tmp_path, body, log_url=url, checkpoint_every=4, checkpoint_interval_s=3600)
    report = verify_log(events, [_vkey(tmp_path)], require_checkpoint=True, order="stream_seq")
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    assert report.checkpoints_verified >= 2
    # 6 client sessions and the system session, keyed to partitions by session
    assert len({d.event.envelope.session_id for d in events}) == 7


def test_leaves_join_the_tree_in_stream_order_whatever_order_appends_finish() -> None:
    stamper = EventStamper("gw-order")
    stamped = [
        stamper.stamp(
            GatewayStarted,
            session_id=f"s{i % 3}",
            config_sha256="0" * 64,
            version="t",
            listen=[],
            upstreams=[],
            policy_sha256=None,
            pid=1,
        )
        for i in range(200)
    ]
    cp = Checkpointer(Signer.generate("t"), every=10_000)
    shuffled = stamped[:]
    random.Random(7).shuffle(shuffled)
    for i in range(0, 200, 7):
        cp.observe(shuffled[i : i + 7])
    tree = cp.trees["gw-order"]
    assert tree.size == 200 and not tree.pending
    assert tree.frontier.root() == root_of([hash_leaf(s.wire) for s in stamped])


def test_a_leaf_held_back_by_a_missing_one_is_not_covered() -> None:
    t = StreamTree("s")
    t.add(0, hash_leaf(b"0"), content=True)
    t.add(2, hash_leaf(b"2"), content=True)
    assert t.size == 1 and set(t.pending) == {2}
    t.add(1, hash_leaf(b"1"), content=True)
    assert t.size == 3 and not t.pending
    t.add(1, hash_leaf(b"again"), content=True)  # a duplicate never enters the tree
    assert t.size == 3


def test_bad_options_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Checkpointer(Signer.generate("t"), every=0)
    with pytest.raises(ValueError):
        Checkpointer(Signer.generate("t"), interval_s=0)
    with pytest.raises(ValueError):
        _config(tmp_path, checkpoint_every=0)


# -- the key file ----------------------------------------------------------------


def test_key_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "k" / "gateway.key"
    first = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_signing_key(path)
    assert again.verifier.vkey == first.verifier.vkey
    assert "PRIVATE" not in repr(first)


def test_key_readable_by_others_or_malformed_is_refused_without_leaking(tmp_path: Path) -> None:
    path = tmp_path / "gateway.key"
    signer = load_or_create_signing_key(path, name="gw-test")
    secret = signer.skey().split("+", 4)[4]
    os.chmod(path, 0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_signing_key(path)
    os.chmod(path, 0o600)
    path.write_text(signer.skey()[:-6] + "\n")
    with pytest.raises(SigningKeyError) as exc:
        load_signing_key(path)
    assert secret[:20] not in str(exc.value)
    with pytest.raises(SigningKeyError, match="no signing key"):
        load_signing_key(tmp_path / "absent.key")
    # the gateway refuses to start with it, naming the option
    with pytest.raises(ValueError, match="--signing-key"):
        Recorder(_config(tmp_path).model_copy(update={"signing_key": path}))


def test_keys_show_prints_the_vkey_to_pin(tmp_path: Path) -> None:
    from embedguard.cli import app

    path = tmp_path / "gateway.key"
    runner = CliRunner()
    res = runner.invoke(app, ["keys", "show", "--signing-key", str(path)])
    assert res.exit_code == 2 and "no signing key" in res.output
    res = runner.invoke(app, ["keys", "create", "--signing-key", str(path), "--name", "gw-a"])
    assert res.exit_code == 0, res.output
    vkey = load_signing_key(path).verifier.vkey
    assert res.output.strip() == vkey
    res = runner.invoke(app, ["keys", "show", "--signing-key", str(path)])
    assert res.exit_code == 0 and res.output.strip() == vkey
    assert load_signing_key(path).skey().split("+", 4)[4] not in res.output


def test_confluent_framed_events_hash_as_their_single_object_bytes() -> None:
    """With a schema registry the wire is 0x00 + schema id + body; the leaf is
    still the single-object form that readers rebuild (DecodedEvent.canonical)."""
    codec = default_codec()
    st = EventStamper("gw-reg").stamp(
        PolicyChanged, session_id="s", old_sha256=None, new_sha256="0" * 64, source="t", diff=""
    )
    framed = StampedEvent(st.event, b"\x00" + struct.pack(">I", 42) + codec.body(st.event), st.hash)
    assert canonical_bytes(framed, codec) == codec.canonical(st.event) == st.wire
    assert canonical_bytes(st, codec) == st.wire
