"""Offline verification of recorded events against signed checkpoints.

Two modes share one report type:

* :func:`verify_log` takes *every* event of some gateway streams (a log, a
  warehouse, a bundle that holds whole streams): it checks every session's
  hash chain, that each stream numbers its events 0, 1, 2, ... in order, that
  the Merkle root of each stream's first ``n`` events equals the root each
  signed checkpoint of size ``n`` names, and that consecutive checkpoints are
  consistent.
* :func:`verify_proofs` takes a *selection* of events with an inclusion proof
  for each (against a signed checkpoint) and consistency proofs between the
  checkpoints: what an evidence bundle carries. :func:`build_proofs` makes
  those proofs from the full streams.

Checkpoint notes are trusted only through the pinned verifier keys. Every
finding names what is wrong and where: the event id, its stream and
stream_seq, its session and seq, and the file or row it came from.
What is verified is each event's bytes as recorded (``DecodedEvent.canonical``).
Events name large bodies by sha256 and the warehouse keeps bodies in their own
table, so a body that expired or was redacted there never affects these
checks; a reader must never rewrite an event's own bytes to redact it (that
is indistinguishable from tampering, and is reported as such).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from schemas.chain import verify_chains
from schemas.codec import DecodedEvent, DecodeError, EventCodec, default_codec
from schemas.merkle import MerkleTree, ProofError, verify_consistency, verify_inclusion
from schemas.models import Checkpoint
from schemas.note import CheckpointBody, NoteError, Verifier, checkpoint_origin

__all__ = [
    "ConsistencyProof",
    "Finding",
    "InclusionProof",
    "SignedCheckpoint",
    "StreamSummary",
    "VerifyReport",
    "build_proofs",
    "chain_findings",
    "decode_events",
    "Run",
    "leaf_hash",
    "load_verifiers",
    "open_checkpoints",
    "open_saved_checkpoint",
    "split_runs",
    "verify_log",
    "verify_proofs",
]

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    kind: str
    detail: str
    severity: Severity = "error"
    event_id: str | None = None
    stream: str | None = None
    stream_seq: int | None = None
    session_id: str | None = None
    seq: int | None = None
    where: str | None = None

    def __str__(self) -> str:
        parts = [self.severity.upper()]
        if self.where:
            parts.append(self.where)
        if self.event_id:
            parts.append(f"event {self.event_id}")
        if self.stream is not None:
            loc = f"stream {self.stream}"
            if self.stream_seq is not None:
                loc += f" stream_seq {self.stream_seq}"
            parts.append(loc)
        if self.session_id:
            loc = f"session {self.session_id}"
            if self.seq is not None:
                loc += f" seq {self.seq}"
            parts.append(loc)
        return ": ".join([", ".join(parts), self.kind, self.detail])

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class StreamSummary:
    stream: str
    events: int = 0
    checkpoints: int = 0
    #: the largest tree size whose signed root the events (or proofs) matched
    verified_size: int = 0


@dataclass
class VerifyReport:
    findings: list[Finding] = field(default_factory=list)
    streams: dict[str, StreamSummary] = field(default_factory=dict)
    events: int = 0
    sessions: int = 0
    #: bundles: sessions shipped whole (from SessionStarted to SessionEnded,
    #: chain intact) and sessions without their SessionEnded (see
    #: :func:`replay.verify._check_session_ends`)
    sessions_whole: int = 0
    sessions_open: int = 0
    checkpoints_verified: int = 0
    inclusion_verified: int = 0
    consistency_verified: int = 0
    #: one entry per checkpoint saved earlier and given to :func:`verify_log`
    saved_checkpoints: list[dict[str, Any]] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "sessions": self.sessions,
            "sessions_whole": self.sessions_whole,
            "sessions_open": self.sessions_open,
            "checkpoints_verified": self.checkpoints_verified,
            "inclusion_verified": self.inclusion_verified,
            "consistency_verified": self.consistency_verified,
            "streams": {k: asdict(v) for k, v in sorted(self.streams.items())},
            "findings": [f.to_json() for f in self.findings],
            **({"saved_checkpoints": self.saved_checkpoints} if self.saved_checkpoints else {}),
        }


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint whose note verified with a pinned key."""

    body: CheckpointBody
    note: str
    key_ids: tuple[str, ...]
    #: the Checkpoint event that carried it, or the file it came from
    source: str

    @property
    def origin(self) -> str:
        return self.body.origin

    @property
    def tree_size(self) -> int:
        return self.body.tree_size


@dataclass(frozen=True)
class InclusionProof:
    """``hashes`` prove that event ``event_id`` is leaf ``leaf_index`` (its
    stream_seq) of the tree of size ``tree_size`` that checkpoints of
    ``origin`` sign."""

    event_id: str
    origin: str
    leaf_index: int
    tree_size: int
    hashes: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "origin": self.origin,
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "hashes": [h.hex() for h in self.hashes],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> InclusionProof:
        return cls(
            str(obj["event_id"]),
            str(obj["origin"]),
            int(obj["leaf_index"]),
            int(obj["tree_size"]),
            tuple(bytes.fromhex(h) for h in obj["hashes"]),
        )


@dataclass(frozen=True)
class ConsistencyProof:
    origin: str
    size1: int
    size2: int
    hashes: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "size1": self.size1,
            "size2": self.size2,
            "hashes": [h.hex() for h in self.hashes],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ConsistencyProof:
        return cls(
            str(obj["origin"]),
            int(obj["size1"]),
            int(obj["size2"]),
            tuple(bytes.fromhex(h) for h in obj["hashes"]),
        )


@dataclass
class Run:
    """One run of a gateway stream: the events from a stream_seq 0 on. A
    gateway restarted with the same --gateway-id starts a new run."""

    stream: str
    #: event id of stream_seq 0 (None: the run's start is not here)
    first_event_id: str | None
    #: indices into the event list, in stream order
    idxs: list[int] = field(default_factory=list)

    @property
    def origin(self) -> str | None:
        if self.first_event_id is None:
            return None
        return checkpoint_origin(self.stream, self.first_event_id)

    @property
    def label(self) -> str:
        return f"{self.stream}/{self.first_event_id or '?'}"


def split_runs(events: Sequence[DecodedEvent]) -> list[Run]:
    """Each stream's events, in the order given, split into runs: a run starts
    at every event with stream_seq 0."""
    by_key: dict[tuple[str, str | None], Run] = {}
    current: dict[str, Run] = {}
    out: list[Run] = []
    for i, d in enumerate(events):
        env = d.event.envelope
        stream = env.gateway_id
        if env.stream_seq == 0 or stream not in current:
            first = str(env.event_id) if env.stream_seq == 0 else None
            run = by_key.get((stream, first))
            if run is None:
                run = by_key[(stream, first)] = Run(stream, first)
                out.append(run)
            current[stream] = run
        current[stream].idxs.append(i)
    return out


def leaf_hash(event: DecodedEvent) -> bytes:
    """The RFC 6962 leaf hash of an event: over its single-object bytes as written."""
    return hashlib.sha256(b"\x00" + event.canonical).digest()


def load_verifiers(vkeys: Iterable[str | Verifier]) -> list[Verifier]:
    """Parse pinned vkeys; NoteError names the one that is malformed."""
    out = []
    for k in vkeys:
        if isinstance(k, Verifier):
            out.append(k)
            continue
        try:
            out.append(Verifier.from_vkey(k))
        except NoteError as exc:
            raise NoteError(f"pinned key {k.split('+', 1)[0]!r}: {exc}") from None
    return out


def decode_events(
    rows: Iterable[tuple[str, bytes]], codec: EventCodec | None = None
) -> tuple[list[DecodedEvent], list[str], list[Finding]]:
    """Decode ``(where, bytes)`` rows; undecodable ones become findings."""
    codec = codec or default_codec()
    events: list[DecodedEvent] = []
    wheres: list[str] = []
    findings: list[Finding] = []
    for where, data in rows:
        try:
            events.append(codec.decode(data))
            wheres.append(where)
        except DecodeError as exc:
            findings.append(
                Finding("undecodable", f"the stored event does not decode: {exc}", where=where)
            )
    return events, wheres, findings


def _locate(dec: DecodedEvent, where: str | None, kind: str, detail: str, **kw: Any) -> Finding:
    env = dec.event.envelope
    return Finding(
        kind,
        detail,
        event_id=str(env.event_id),
        stream=env.gateway_id,
        stream_seq=env.stream_seq,
        session_id=env.session_id,
        seq=env.seq,
        where=where,
        **kw,
    )


def open_checkpoints(
    events: Sequence[DecodedEvent],
    verifiers: Sequence[Verifier],
    *,
    notes: Iterable[tuple[str, str]] = (),
    wheres: Sequence[str] | None = None,
) -> tuple[list[SignedCheckpoint], list[Finding]]:
    """Every checkpoint carried by a Checkpoint event, plus ``notes`` given as
    ``(source, note text)``, verified with the pinned keys."""
    found: list[SignedCheckpoint] = []
    findings: list[Finding] = []
    seen: set[str] = set()

    def one(note: str, source: str, dec: DecodedEvent | None, where: str | None) -> None:
        try:
            body, good = CheckpointBody.open(note, verifiers)
        except NoteError as exc:
            detail = f"checkpoint note does not verify: {exc}"
            findings.append(
                _locate(dec, where, "checkpoint_signature", detail)
                if dec
                else Finding("checkpoint_signature", detail, where=source)
            )
            return
        if dec is not None:
            ev = dec.event
            assert isinstance(ev, Checkpoint)
            mismatch = [
                name
                for name, ok in (
                    ("origin", ev.origin == body.origin),
                    ("tree_size", ev.tree_size == body.tree_size),
                    ("root_hash", ev.root_hash == body.root_hash.hex()),
                )
                if not ok
            ]
            if mismatch:
                findings.append(
                    _locate(
                        dec,
                        where,
                        "checkpoint_mismatch",
                        f"the event's {', '.join(mismatch)} differ from its signed note",
                    )
                )
                return
        if note in seen:
            return
        seen.add(note)
        found.append(SignedCheckpoint(body, note, tuple(v.id_text for v in good), source))

    for i, dec in enumerate(events):
        if isinstance(dec.event, Checkpoint):
            where = wheres[i] if wheres else None
            one(dec.event.signed_note, f"event {dec.event.envelope.event_id}", dec, where)
    for source, note in notes:
        one(note, source, None, None)
    return found, findings


def _by_origin(
    checkpoints: Sequence[SignedCheckpoint], origins: Iterable[str]
) -> tuple[dict[str, list[SignedCheckpoint]], list[SignedCheckpoint]]:
    known = set(origins)
    out: dict[str, list[SignedCheckpoint]] = defaultdict(list)
    orphans = []
    for cp in checkpoints:
        if cp.origin in known:
            out[cp.origin].append(cp)
        else:
            orphans.append(cp)
    for cps in out.values():
        cps.sort(key=lambda c: c.tree_size)
    return out, orphans


def _forks(stream: str, cps: Sequence[SignedCheckpoint]) -> list[Finding]:
    out = []
    for a, b in zip(cps, cps[1:], strict=False):
        if a.tree_size == b.tree_size and a.body.root_hash != b.body.root_hash:
            out.append(
                Finding(
                    "checkpoint_fork",
                    f"two signed checkpoints of size {a.tree_size} name different roots "
                    f"({a.source}, {b.source}): the log was rewritten after signing",
                    stream=stream,
                )
            )
    return out


def chain_findings(events: Sequence[DecodedEvent], wheres: Sequence[str] | None) -> list[Finding]:
    run_of = {i: r.label for r in split_runs(events) for i in r.idxs}
    index = {
        (run_of[i], d.event.envelope.session_id, d.event.envelope.seq): i
        for i, d in enumerate(events)
    }
    by_id = {str(d.event.envelope.event_id): i for i, d in enumerate(events)}
    # A session's chain lives in one run of one stream: after a failed append
    # the recorder starts a new stream, and a restarted gateway a new run,
    # whose sessions (the system session keeps its id) begin again at seq 0.
    problems = [
        p for run in split_runs(events) for p in verify_chains([events[i] for i in run.idxs])
    ]
    out = []
    for p in problems:
        i = by_id.get(p.event_id or "")
        if i is None:
            out.append(Finding(f"chain_{p.kind}", p.detail, session_id=p.session_id))
            continue
        detail = p.detail
        if p.kind == "altered" and p.seq:
            j = index.get((run_of[i], p.session_id, p.seq - 1))
            if j is not None:
                prev = events[j].event.envelope
                detail = (
                    f"the event before it, {prev.event_id} (seq {prev.seq}, stream "
                    f"{prev.gateway_id} stream_seq {prev.stream_seq}"
                    f"{', ' + wheres[j] if wheres else ''}), was changed or replaced: "
                    "its hash is not this event's prev_hash"
                )
        out.append(_locate(events[i], wheres[i] if wheres else None, f"chain_{p.kind}", detail))
    return out


def verify_log(
    events: Sequence[DecodedEvent],
    vkeys: Iterable[str | Verifier],
    *,
    notes: Iterable[tuple[str, str]] = (),
    wheres: Sequence[str] | None = None,
    require_checkpoint: bool = False,
    order: Literal["given", "stream_seq"] = "given",
    saved: Sequence[SignedCheckpoint] = (),
) -> VerifyReport:
    """Verify whole streams (see the module docstring).

    ``order="given"``: the events are in the log's order, which must be each
    stream's stream_seq order; a reordering is reported. ``"stream_seq"``: the
    storage has no meaningful order (Kafka partitions, warehouse rows), so each
    stream is sorted by stream_seq first; gaps, duplicates and altered bytes
    are still found (an event's place is part of its signed bytes).

    ``wheres[i]`` says where ``events[i]`` came from (file and row). A stream
    tail after its last checkpoint is reported as a warning (not yet covered),
    or as an error with ``require_checkpoint``.

    ``saved`` are checkpoints an auditor kept from earlier (already verified
    with a pinned key, see :func:`open_saved_checkpoint`): the log must still
    hold at least ``tree_size`` leaves of the note's stream, and its first
    ``tree_size`` leaves must hash to the note's root. Only this detects a log
    whose last events, its last Checkpoint events included, were dropped.
    """
    if order == "stream_seq":
        # Within a run, event ids (UUIDv7, monotonic per process) follow
        # stream_seq; across runs of one gateway id, time separates the runs.
        perm = sorted(
            range(len(events)),
            key=lambda i: (events[i].event.envelope.gateway_id, events[i].event.envelope.event_id),
        )
        events = [events[i] for i in perm]
        wheres = [wheres[i] for i in perm] if wheres else None
    verifiers = load_verifiers(vkeys)
    report = VerifyReport(events=len(events))
    report.sessions = len({d.event.envelope.session_id for d in events})
    report.findings.extend(chain_findings(events, wheres))

    runs = split_runs(events)
    if order == "stream_seq":
        for run in runs:
            run.idxs.sort(key=lambda i: events[i].event.envelope.stream_seq)
    checkpoints, cp_findings = open_checkpoints(events, verifiers, notes=notes, wheres=wheres)
    report.findings.extend(cp_findings)
    by_origin, orphans = _by_origin(checkpoints, (r.origin for r in runs if r.origin))
    for cp in orphans:
        if cp.tree_size > 0:
            report.findings.append(
                Finding(
                    "stream_missing",
                    f"checkpoint {cp.origin} (from {cp.source}) covers {cp.tree_size} event(s) "
                    "of a stream none of whose events are here",
                )
            )

    def where(i: int) -> str | None:
        return wheres[i] if wheres else None

    for run in runs:
        stream, idxs = run.stream, run.idxs
        summary = report.streams[run.label] = StreamSummary(run.label, events=len(idxs))
        cps = by_origin.get(run.origin or "", [])
        summary.checkpoints = len(cps)
        report.findings.extend(_forks(stream, cps))
        tree = MerkleTree(leaf_hash(events[i]) for i in idxs)
        seqs = [events[i].event.envelope.stream_seq for i in idxs]
        at: dict[int, int] = {}
        for pos, q in enumerate(seqs):
            at.setdefault(q, pos)
        # Only the first misplaced event is reported: after it, positions and
        # stream_seqs no longer line up, as after a gap in a session's chain.
        bad = next((pos for pos, q in enumerate(seqs) if q != pos), None)
        if bad is not None:
            got, dec = seqs[bad], events[idxs[bad]]
            if got < bad:
                kind = "stream_duplicate" if at[got] < bad else "stream_reordered"
                detail = f"stream_seq {got} comes again at position {bad}"
            elif bad in at:
                other = events[idxs[at[bad]]].event.envelope
                kind = "stream_reordered"
                detail = (
                    f"stream_seq {got} comes at position {bad}, before stream_seq {bad} "
                    f"(event {other.event_id}); the events were reordered"
                )
            else:
                kind = "stream_gap"
                detail = (
                    f"expected stream_seq {bad}; {got - bad} event(s) of the stream are missing "
                    "before this one"
                )
            report.findings.append(_locate(dec, where(idxs[bad]), kind, detail))

        verified_cp: SignedCheckpoint | None = None
        for cp in cps:
            if cp.tree_size == 0:
                continue
            if cp.tree_size > tree.size:
                report.findings.append(
                    _locate(
                        events[idxs[-1]],
                        where(idxs[-1]),
                        "events_missing",
                        f"checkpoint ({cp.source}) signs {cp.tree_size} events of the stream but "
                        f"only {tree.size} are here: {cp.tree_size - tree.size} missing after "
                        "this event",
                    )
                )
                continue
            if tree.root(cp.tree_size) != cp.body.root_hash:
                lo = verified_cp.tree_size if verified_cp else 0
                report.findings.append(
                    _locate(
                        events[idxs[lo]],
                        where(idxs[lo]),
                        "root_mismatch",
                        f"stream_seq 0..{cp.tree_size - 1} do not hash to the root signed in "
                        f"checkpoint ({cp.source}); an event between stream_seq {lo} and "
                        f"{cp.tree_size - 1} was changed, dropped, added or reordered",
                    )
                )
                continue
            if verified_cp is not None and verified_cp.tree_size < cp.tree_size:
                try:
                    verify_consistency(
                        verified_cp.tree_size,
                        cp.tree_size,
                        tree.consistency_proof(verified_cp.tree_size, cp.tree_size),
                        verified_cp.body.root_hash,
                        cp.body.root_hash,
                    )
                    report.consistency_verified += 1
                except ProofError as exc:  # pragma: no cover - roots matched above
                    report.findings.append(Finding("consistency", str(exc), stream=stream))
            verified_cp = cp
            report.checkpoints_verified += 1
        summary.verified_size = verified_cp.tree_size if verified_cp else 0

        tail = [
            i for i in idxs[summary.verified_size :] if not isinstance(events[i].event, Checkpoint)
        ]
        if tail:
            report.findings.append(
                _locate(
                    events[tail[0]],
                    where(tail[0]),
                    "not_checkpointed",
                    f"{len(tail)} event(s) from here on are not covered by a signed checkpoint "
                    f"(the stream's last verified checkpoint has size {summary.verified_size})",
                    severity="error" if require_checkpoint else "warning",
                )
            )
    report.findings.extend(_check_saved(events, runs, saved, wheres, report))
    return report


def open_saved_checkpoint(
    note: str, verifiers: Sequence[Verifier], source: str
) -> SignedCheckpoint:
    """A checkpoint note saved earlier (``embedguard events checkpoint``),
    verified with the pinned keys; NoteError says why it is refused."""
    if not verifiers:
        raise NoteError("a saved checkpoint is trusted only through a pinned key (--vkey)")
    body, good = CheckpointBody.open(note, verifiers)
    return SignedCheckpoint(body, note, tuple(v.id_text for v in good), source)


def _check_saved(
    events: Sequence[DecodedEvent],
    runs: Sequence[Run],
    saved: Sequence[SignedCheckpoint],
    wheres: Sequence[str] | None,
    report: VerifyReport,
) -> list[Finding]:
    out: list[Finding] = []
    by_origin = {r.origin: r for r in runs if r.origin}
    for cp in saved:
        run = by_origin.get(cp.origin)
        held = len(run.idxs) if run else 0
        status: dict[str, Any] = {
            "source": cp.source,
            "origin": cp.origin,
            "tree_size": cp.tree_size,
            "root_hash": cp.body.root_hash.hex(),
            "log_leaves": held,
            "ok": False,
        }
        report.saved_checkpoints.append(status)
        if run is None:
            if cp.tree_size == 0:
                status["ok"] = True
                continue
            out.append(
                Finding(
                    "log_truncated",
                    f"the saved checkpoint ({cp.source}) of {cp.origin} signs {cp.tree_size} "
                    "event(s) but the log holds no event of that stream: it was removed",
                )
            )
            continue
        last = run.idxs[-1]
        where = wheres[last] if wheres else None
        if held < cp.tree_size:
            out.append(
                _locate(
                    events[last],
                    where,
                    "log_truncated",
                    f"the saved checkpoint ({cp.source}) signs tree size {cp.tree_size} of "
                    f"stream {run.stream} ({cp.origin}) but the log holds only {held} leaves: "
                    f"the log was truncated, at least {cp.tree_size - held} event(s) after "
                    "this one were removed",
                )
            )
            continue
        tree = MerkleTree(leaf_hash(events[i]) for i in run.idxs[: cp.tree_size])
        if tree.root() != cp.body.root_hash:
            out.append(
                Finding(
                    "root_mismatch",
                    f"the first {cp.tree_size} leaves of stream {run.stream} ({cp.origin}) hash "
                    f"to {tree.root().hex()}, not to the root {cp.body.root_hash.hex()} of the "
                    f"saved checkpoint ({cp.source}): an event before stream_seq "
                    f"{cp.tree_size} was changed, dropped, added or reordered",
                    stream=run.stream,
                )
            )
            continue
        status["ok"] = True
    return out


def build_proofs(
    events: Sequence[DecodedEvent],
    checkpoints: Sequence[SignedCheckpoint],
    selected: Iterable[str],
) -> tuple[list[InclusionProof], list[ConsistencyProof]]:
    """Inclusion proofs for the ``selected`` event ids (each against the
    smallest checkpoint of its run that covers it) and consistency proofs
    between consecutive checkpoints of every run. ``events`` holds the full
    streams, in any order; they should have passed :func:`verify_log`."""
    wanted = set(selected)
    # Storage order may interleave runs of one gateway id (a warehouse sorted
    # by stream_seq): order as verify_log(order="stream_seq") does.
    events = sorted(events, key=lambda d: (d.event.envelope.gateway_id, d.event.envelope.event_id))
    runs = split_runs(events)
    for run in runs:
        run.idxs.sort(key=lambda i: events[i].event.envelope.stream_seq)
    by_origin, _ = _by_origin(checkpoints, (r.origin for r in runs if r.origin))
    inclusion: list[InclusionProof] = []
    consistency: list[ConsistencyProof] = []
    for run in runs:
        if run.origin is None:
            continue
        tree = MerkleTree(leaf_hash(events[i]) for i in run.idxs)
        sizes = sorted(
            {cp.tree_size for cp in by_origin.get(run.origin, []) if 0 < cp.tree_size <= tree.size}
        )
        for a, b in zip(sizes, sizes[1:], strict=False):
            consistency.append(
                ConsistencyProof(run.origin, a, b, tuple(tree.consistency_proof(a, b)))
            )
        for pos, i in enumerate(run.idxs):
            env = events[i].event.envelope
            if str(env.event_id) not in wanted:
                continue
            size = next((s for s in sizes if s > pos), None)
            if size is None:
                continue  # not covered yet; verify_proofs reports it
            inclusion.append(
                InclusionProof(
                    str(env.event_id), run.origin, pos, size, tuple(tree.inclusion_proof(pos, size))
                )
            )
    return inclusion, consistency


def verify_proofs(
    events: Sequence[DecodedEvent],
    vkeys: Iterable[str | Verifier],
    *,
    inclusion: Sequence[InclusionProof],
    consistency: Sequence[ConsistencyProof],
    notes: Iterable[tuple[str, str]] = (),
    wheres: Sequence[str] | None = None,
    check_chains: bool = True,
    allow_unproven: bool = False,
) -> VerifyReport:
    """Verify a selection of events through their inclusion proofs (see the
    module docstring). Every event needs a proof against a signed checkpoint
    of its own stream, at its own stream_seq; consecutive checkpoints of a run
    need a consistency proof.

    An event without a proof is an error (``not_proven``): nothing signed
    vouches for it, and anyone who can write the log or the warehouse can
    add, re-chain or re-record such events (a hash chain has no key). With
    ``allow_unproven`` (events recorded after the gateway's last checkpoint,
    read knowingly) it is a warning, and the report counts them."""
    verifiers = load_verifiers(vkeys)
    report = VerifyReport(events=len(events))
    report.sessions = len({d.event.envelope.session_id for d in events})
    if check_chains:
        report.findings.extend(chain_findings(events, wheres))
    checkpoints, cp_findings = open_checkpoints(events, verifiers, notes=notes, wheres=wheres)
    report.findings.extend(cp_findings)
    origins = {p.origin for p in inclusion} | {p.origin for p in consistency}
    by_origin, _ = _by_origin(checkpoints, origins | {c.origin for c in checkpoints})
    roots: dict[tuple[str, int], bytes] = {}
    for origin, cps in by_origin.items():
        report.findings.extend(_forks(origin, cps))
        summary = report.streams.setdefault(origin, StreamSummary(origin))
        summary.checkpoints = len(cps)
        for cp in cps:
            roots.setdefault((origin, cp.tree_size), cp.body.root_hash)
        report.checkpoints_verified += len(cps)

    proofs = {p.event_id: p for p in inclusion}
    seen: set[str] = set()
    for i, dec in enumerate(events):
        env = dec.event.envelope
        where = wheres[i] if wheres else None
        eid = str(env.event_id)
        if eid in seen:
            report.findings.append(_locate(dec, where, "duplicate", "the event appears twice"))
            continue
        seen.add(eid)
        proof = proofs.get(eid)
        if proof is None:
            if not isinstance(dec.event, Checkpoint):
                report.findings.append(
                    _locate(
                        dec,
                        where,
                        "not_proven",
                        "NOT PROVEN: no inclusion proof ties this event to a signed "
                        "checkpoint, so nothing signed vouches for it (events recorded "
                        "after the gateway's last checkpoint: export again once the next "
                        "checkpoint is signed, or verify with --allow-unproven to read "
                        "them as unproven)",
                        severity="warning" if allow_unproven else "error",
                    )
                )
            continue
        summary = report.streams.setdefault(proof.origin, StreamSummary(proof.origin))
        summary.events += 1
        own = checkpoint_origin(env.gateway_id, "")
        if not proof.origin.startswith(own) or proof.leaf_index != env.stream_seq:
            report.findings.append(
                _locate(
                    dec,
                    where,
                    "inclusion",
                    f"the proof is for leaf {proof.leaf_index} of {proof.origin}, not for this "
                    f"event's place (stream_seq {env.stream_seq} of {own}…)",
                )
            )
            continue
        root = roots.get((proof.origin, proof.tree_size))
        if root is None:
            report.findings.append(
                _locate(
                    dec,
                    where,
                    "inclusion",
                    f"the inclusion proof refers to a tree of size {proof.tree_size} of "
                    f"{proof.origin} for which no checkpoint signed by a pinned key is here",
                )
            )
            continue
        try:
            verify_inclusion(proof.leaf_index, proof.tree_size, leaf_hash(dec), proof.hashes, root)
        except ProofError as exc:
            report.findings.append(
                _locate(
                    dec,
                    where,
                    "inclusion",
                    f"the event is not the one the signed checkpoint of size {proof.tree_size} "
                    f"covers at stream_seq {proof.leaf_index} (changed, or moved): {exc}",
                )
            )
            continue
        report.inclusion_verified += 1
        summary.verified_size = max(summary.verified_size, proof.tree_size)

    cproofs = {(p.origin, p.size1, p.size2): p for p in consistency}
    for origin, cps in by_origin.items():
        sizes = sorted({cp.tree_size for cp in cps if cp.tree_size > 0})
        for a, b in zip(sizes, sizes[1:], strict=False):
            cproof = cproofs.get((origin, a, b))
            if cproof is None:
                report.findings.append(
                    Finding(
                        "consistency",
                        f"no consistency proof between the checkpoints of size {a} and {b}",
                        stream=origin,
                    )
                )
                continue
            try:
                verify_consistency(a, b, cproof.hashes, roots[(origin, a)], roots[(origin, b)])
                report.consistency_verified += 1
            except ProofError as exc:
                report.findings.append(
                    Finding(
                        "consistency",
                        f"checkpoint of size {b} does not extend the one of size {a}: {exc}",
                        stream=origin,
                    )
                )
    return report
