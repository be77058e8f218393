"""Checkpoints end to end: a real gateway process records concurrent traffic
on a real SQLite log; its signed Checkpoint events verify offline against the
key `embedguard keys show` prints; one flipped byte, one dropped event, two
reordered events, a wrong pinned key are each reported naming the event."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from capture.devidp import mint_token
from replay.verify_core import build_proofs, open_checkpoints, verify_log, verify_proofs
from schemas.codec import DecodedEvent, default_codec
from schemas.models import Checkpoint, RequestReceived
from schemas.note import CheckpointBody, Signer, Verifier
from tests.support.events import read_events
from tests.support.gateway import UPSTREAM_SECRET, gateway_process
from tests.support.upstream import recording_upstream

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "examples" / "policy.yaml"
QUERY_PATH = "/collections/docs/points/query"


@dataclass
class Recorded:
    events: list[DecodedEvent]
    vkey: str
    key_file: Path
    stderr: str
    db: Path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, dev_idp: str) -> Iterator[Recorded]:
    tmp = tmp_path_factory.mktemp("gwcp")
    key = tmp / "keys" / "gw.key"
    tokens = [mint_token(dev_idp, f"reader-{i}", ["Vector-Read"]) for i in range(3)]
    with (
        recording_upstream() as up,
        gateway_process(
            tmp,
            upstream=up.url,
            kind="qdrant",
            policy=POLICY,
            issuer=dev_idp,
            extra_args=[
                "--signing-key",
                str(key),
                "--checkpoint-every",
                "7",
                "--checkpoint-interval",
                "1h",
            ],
        ) as gw,
    ):

        def client(token: str) -> None:
            with httpx.Client(timeout=60) as c:
                for _ in range(6):
                    r = c.post(
                        gw.url + QUERY_PATH,
                        json={"query": [0.1, 0.2], "limit": 3},
                        headers={"authorization": f"Bearer {token}"},
                    )
                    assert r.status_code == 200, r.text

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(client, tokens))
        log_url = gw.log_url
    # the gateway has stopped (SIGTERM): its final checkpoint is in the log
    shown = subprocess.run(
        [sys.executable, "-m", "embedguard.cli", "keys", "show", "--signing-key", str(key)],
        capture_output=True,
        text=True,
        check=True,
    )
    yield Recorded(read_events(log_url), shown.stdout.strip(), key, gw.stderr(), tmp / "events.db")


def _ids(findings: Sequence[object]) -> str:
    return "\n".join(str(f) for f in findings)


def test_checkpoints_verify_against_the_pinned_key(recorded: Recorded) -> None:
    events = recorded.events
    cps = [d.event for d in events if isinstance(d.event, Checkpoint)]
    assert len(cps) >= 3, [c.tree_size for c in cps]
    assert Verifier.from_vkey(recorded.vkey).id_text == cps[0].key_id
    # the final checkpoint, at shutdown, covers every event but itself
    assert cps[-1].tree_size == len(events) - 1
    report = verify_log(events, [recorded.vkey], require_checkpoint=True)
    assert report.ok and not report.findings, _ids(report.findings)
    assert report.checkpoints_verified == len(cps)
    assert report.consistency_verified == len(cps) - 1
    # the private key is in no event and no log line
    secret = Signer.from_skey(recorded.key_file.read_text()).skey().split("+", 4)[4]
    assert secret not in recorded.stderr
    assert f"(pin: {recorded.vkey})" in recorded.stderr  # the public key is logged at start
    seed = base64.b64decode(secret)[1:]
    assert not any(secret.encode() in d.canonical or seed in d.canonical for d in events)
    assert UPSTREAM_SECRET not in recorded.stderr


def _first_request(events: list[DecodedEvent]) -> int:
    return next(i for i, d in enumerate(events) if isinstance(d.event, RequestReceived))


def test_one_flipped_byte_is_named(recorded: Recorded) -> None:
    events = list(recorded.events)
    i = _first_request(events)
    raw = bytearray(events[i].canonical)
    at = bytes(raw).index(b"points/query")
    raw[at] ^= 0x02  # 'p' -> 'r': still a valid event, one byte changed
    events[i] = default_codec().decode(bytes(raw))
    changed = events[i].event
    assert isinstance(changed, RequestReceived) and changed.path != QUERY_PATH
    wheres = [f"events.db row {n}" for n in range(len(events))]
    report = verify_log(events, [recorded.vkey], wheres=wheres)
    assert not report.ok
    tampered = str(events[i].event.envelope.event_id)
    text = _ids(report.errors)
    assert tampered in text  # named by the chain check (as the changed predecessor)
    kinds = {f.kind for f in report.errors}
    assert {"chain_altered", "root_mismatch"} <= kinds, text
    assert f"events.db row {i}" in text


def test_one_dropped_event_is_named(recorded: Recorded) -> None:
    events = list(recorded.events)
    i = _first_request(events) + 1
    dropped = events.pop(i)
    report = verify_log(events, [recorded.vkey])
    gap = [f for f in report.errors if f.kind == "stream_gap"]
    assert len(gap) == 1, _ids(report.findings)
    assert gap[0].stream_seq == dropped.event.envelope.stream_seq + 1
    assert f"expected stream_seq {dropped.event.envelope.stream_seq}" in gap[0].detail
    assert any(f.kind == "chain_gap" for f in report.errors)
    assert any(f.kind == "root_mismatch" for f in report.errors)


def test_two_reordered_events_are_named(recorded: Recorded) -> None:
    events = list(recorded.events)
    i = _first_request(events)
    events[i], events[i + 1] = events[i + 1], events[i]
    report = verify_log(events, [recorded.vkey])
    moved = [f for f in report.errors if f.kind == "stream_reordered"]
    assert moved, _ids(report.findings)
    named = {str(events[i].event.envelope.event_id), str(events[i + 1].event.envelope.event_id)}
    assert moved[0].event_id in named
    assert any(n in moved[0].detail for n in named)
    assert any(f.kind == "root_mismatch" for f in report.errors)


def test_a_key_other_than_the_pinned_one_is_refused(recorded: Recorded) -> None:
    other = Signer.generate(Verifier.from_vkey(recorded.vkey).name)
    report = verify_log(recorded.events, [other.verifier.vkey])
    sig = [f for f in report.errors if f.kind == "checkpoint_signature"]
    cp_ids = {
        str(d.event.envelope.event_id) for d in recorded.events if isinstance(d.event, Checkpoint)
    }
    assert {f.event_id for f in sig} == cp_ids
    assert report.checkpoints_verified == 0


def test_inclusion_proofs_for_one_session(recorded: Recorded) -> None:
    events = recorded.events
    cps, problems = open_checkpoints(events, [Verifier.from_vkey(recorded.vkey)])
    assert not problems
    session = next(
        d.event.envelope.session_id for d in events if isinstance(d.event, RequestReceived)
    )
    chosen = [d for d in events if d.event.envelope.session_id == session]
    inclusion, consistency = build_proofs(
        events, cps, {str(d.event.envelope.event_id) for d in chosen}
    )
    report = verify_proofs(
        chosen,
        [recorded.vkey],
        inclusion=inclusion,
        consistency=consistency,
        notes=[(f"checkpoint {n}", c.note) for n, c in enumerate(cps)],
    )
    assert report.ok and report.inclusion_verified == len(chosen), _ids(report.findings)
    assert report.consistency_verified == len(cps) - 1
    # the same event with one byte changed no longer proves
    k = next(n for n, d in enumerate(chosen) if isinstance(d.event, RequestReceived))
    raw = bytearray(chosen[k].canonical)
    raw[bytes(raw).index(b"points/query")] ^= 0x02
    forged = default_codec().decode(bytes(raw))
    bad = verify_proofs(
        [*chosen[:k], forged, *chosen[k + 1 :]],
        [recorded.vkey],
        inclusion=inclusion,
        consistency=consistency,
        notes=[(f"checkpoint {n}", c.note) for n, c in enumerate(cps)],
        check_chains=False,
    )
    named = [f for f in bad.errors if f.kind == "inclusion"]
    assert [f.event_id for f in named] == [str(forged.event.envelope.event_id)]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "embedguard.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_events_verify_with_the_pinned_key_and_a_byte_flipped_on_disk(
    recorded: Recorded, tmp_path: Path
) -> None:
    log = f"sqlite:{recorded.db}"
    ok = _cli("events", "verify", "--log", log, "--vkey", recorded.vkey, "--json")
    assert ok.returncode == 0, ok.stderr
    body = json.loads(ok.stdout)
    assert body["ok"] and body["checkpoints_verified"] >= 3 and body["findings"] == []
    wrong = _cli("events", "verify", "--log", log, "--vkey", Signer.generate("x").verifier.vkey)
    assert wrong.returncode == 1 and "checkpoint_signature" in wrong.stderr
    bad_key = _cli("events", "verify", "--log", log, "--vkey", "not-a-key")
    assert bad_key.returncode == 2 and "--vkey" in bad_key.stderr
    assert "Traceback" not in bad_key.stderr

    # flip one byte of one stored event in a copy of the SQLite file
    copy = tmp_path / "copy.db"
    with sqlite3.connect(recorded.db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    with sqlite3.connect(copy) as c:
        c.execute("PRAGMA journal_mode=DELETE")
    raw = bytearray(copy.read_bytes())
    at = bytes(raw).index(b"points/query")
    raw[at] ^= 0x02
    copy.write_bytes(bytes(raw))
    after = read_events(f"sqlite:{copy}")
    changed = [
        str(a.event.envelope.event_id)
        for a, b in zip(after, recorded.events, strict=True)
        if a.canonical != b.canonical
    ]
    assert len(changed) == 1
    res = _cli("events", "verify", "--log", f"sqlite:{copy}", "--vkey", recorded.vkey)
    assert res.returncode == 1
    text = " ".join(res.stderr.split())
    assert changed[0] in text and "root_mismatch" in text, text[-3000:]


def test_async_response_durability_is_checkpointed_too(tmp_path: Path, dev_idp: str) -> None:
    """--response-durability async: ResponseRecorded becomes durable after the
    response went out; it still joins the tree, and the final checkpoint
    covers every event."""
    key = tmp_path / "gw.key"
    tokens = [mint_token(dev_idp, f"async-{i}", ["Vector-Read"]) for i in range(2)]
    with (
        recording_upstream() as up,
        gateway_process(
            tmp_path,
            upstream=up.url,
            kind="qdrant",
            policy=POLICY,
            issuer=dev_idp,
            extra_args=[
                "--signing-key",
                str(key),
                "--checkpoint-every",
                "5",
                "--response-durability",
                "async",
            ],
        ) as gw,
    ):

        def client(token: str) -> None:
            with httpx.Client(timeout=60) as c:
                for _ in range(5):
                    r = c.post(
                        gw.url + QUERY_PATH,
                        json={"query": [0.1], "limit": 1},
                        headers={"authorization": f"Bearer {token}"},
                    )
                    assert r.status_code == 200, r.text

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(client, tokens))
        log_url = gw.log_url
    events = read_events(log_url)
    vkey = Signer.from_skey(key.read_text()).verifier.vkey
    report = verify_log(events, [vkey], require_checkpoint=True, order="stream_seq")
    assert report.ok and not report.findings, _ids(report.findings)
    assert report.checkpoints_verified >= 3


def _copy_log(src: Path, dst: Path) -> Path:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


def test_a_saved_checkpoint_detects_a_truncated_log(recorded: Recorded, tmp_path: Path) -> None:
    """Dropping a log's last events, its last Checkpoint events included,
    leaves a log that verifies on its own; a checkpoint saved earlier (and
    passed with --checkpoint) is what shows it was truncated."""
    log = f"sqlite:{recorded.db}"
    last = [d.event for d in recorded.events if isinstance(d.event, Checkpoint)][-1]
    note = tmp_path / "checkpoint.note"
    note.write_text(last.signed_note, encoding="utf-8")
    body = CheckpointBody.open(last.signed_note, [Verifier.from_vkey(recorded.vkey)])[0]
    assert body.tree_size == len(recorded.events) - 1  # the final checkpoint

    ok = _cli("events", "verify", "--log", log, "--vkey", recorded.vkey, "--checkpoint", str(note))
    assert ok.returncode == 0, ok.stderr
    assert "note:" not in ok.stderr  # nothing left to advise

    # drop everything after the second-to-last Checkpoint event, in a copy
    copy = _copy_log(recorded.db, tmp_path / "truncated.db")
    codec = default_codec()
    with sqlite3.connect(copy) as c:
        rows = c.execute("select id, value from records order by id").fetchall()
        cps = [i for i, v in rows if isinstance(codec.decode(v).event, Checkpoint)]
        c.execute("delete from records where id > ?", (cps[-2],))
        held = c.execute("select count(*) from records").fetchone()[0]
    truncated = f"sqlite:{copy}"
    alone = _cli("events", "verify", "--log", truncated, "--vkey", recorded.vkey)
    assert alone.returncode == 0, alone.stderr  # the gap: on its own it still verifies
    # ...and says so, with the command that closes it
    said = " ".join(alone.stderr.split())
    assert "cut back to an earlier checkpoint would pass too" in said
    assert f"embedguard events checkpoint --log {truncated}" in said

    res = _cli(
        "events", "verify", "--log", truncated, "--vkey", recorded.vkey,
        "--checkpoint", str(note),
    )  # fmt: skip
    assert res.returncode == 1, res.stdout
    text = " ".join(res.stderr.split())
    assert "log_truncated" in text, text
    stream = recorded.events[0].event.envelope.gateway_id
    assert f"tree size {body.tree_size} of stream {stream}" in text
    assert f"holds only {held} leaves" in text

    as_json = _cli(
        "events", "verify", "--log", truncated, "--vkey", recorded.vkey,
        "--checkpoint", str(note), "--json",
    )  # fmt: skip
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert not report["ok"]
    assert [f["kind"] for f in report["findings"] if f["severity"] == "error"] == ["log_truncated"]
    assert report["saved_checkpoints"] == [
        {
            "source": f"--checkpoint {note}",
            "origin": body.origin,
            "tree_size": body.tree_size,
            "root_hash": body.root_hash.hex(),
            "log_leaves": held,
            "ok": False,
        }
    ]


def test_a_saved_checkpoint_must_be_signed_by_the_pinned_key_and_match(
    recorded: Recorded, tmp_path: Path
) -> None:
    log = f"sqlite:{recorded.db}"
    printed = _cli("events", "checkpoint", "--log", log)
    assert printed.returncode == 0, printed.stderr
    saved = printed.stdout
    last = [d.event for d in recorded.events if isinstance(d.event, Checkpoint)][-1]
    assert saved == last.signed_note  # the latest note of the (only) stream
    pinned = Verifier.from_vkey(recorded.vkey)
    body = CheckpointBody.open(saved, [pinned])[0]

    def verify(text: str, *extra: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "note"
        path.write_text(text, encoding="utf-8")
        return _cli("events", "verify", "--log", log, *extra, "--checkpoint", str(path))

    no_key = verify(saved)
    assert no_key.returncode == 2 and "needs --vkey" in no_key.stderr

    other = CheckpointBody(body.origin, body.tree_size, body.root_hash).sign(Signer.generate("x"))
    refused = verify(other, "--vkey", recorded.vkey)
    assert refused.returncode == 2, refused.stderr
    assert "no signature by a pinned key" in " ".join(refused.stderr.split())

    # the root changed in the note text: its signature no longer verifies
    forged_root = base64.b64encode(bytes(32)).decode()
    lines = saved.split("\n")
    lines[2] = forged_root
    tampered = verify("\n".join(lines), "--vkey", recorded.vkey)
    assert tampered.returncode == 2, tampered.stderr
    assert "does not verify" in " ".join(tampered.stderr.split())

    # a note the gateway key did sign, over another root: the log does not match it
    signer = Signer.from_skey(recorded.key_file.read_text())
    wrong = CheckpointBody(body.origin, body.tree_size, bytes(32)).sign(signer)
    mismatch = verify(wrong, "--vkey", recorded.vkey)
    assert mismatch.returncode == 1, mismatch.stderr
    text = " ".join(mismatch.stderr.split())
    assert "root_mismatch" in text and f"first {body.tree_size} leaves" in text, text

    malformed = verify("not a note\n", "--vkey", recorded.vkey)
    assert malformed.returncode == 2 and "is refused" in " ".join(malformed.stderr.split())
    (tmp_path / "binary").write_bytes(b"\xff\xfe\n")
    binary = _cli(
        "events", "verify", "--log", log, "--vkey", recorded.vkey,
        "--checkpoint", str(tmp_path / "binary"),
    )  # fmt: skip
    assert binary.returncode == 2 and "not UTF-8" in " ".join(binary.stderr.split())
    assert "Traceback" not in malformed.stderr + binary.stderr
