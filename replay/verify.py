"""``embedguard verify``: check an evidence bundle offline, or the live warehouse.

A bundle (see :mod:`replay.export`) is checked with pinned public keys only:

1. the manifest's Ed25519 signature (export key) and every file's sha256;
2. the event index (``index.json``) against ``events.parquet``: an event that
   is missing, unlisted, altered or out of order is named, and a whole missing
   session too;
3. every session's hash chain over the events' bytes as written;
4. the gateways' checkpoint notes (gateway keys), an RFC 6962 inclusion proof
   per event and consistency proofs between consecutive checkpoints;
5. every body in ``bodies.parquet`` against its sha256. A body the manifest
   lists as unavailable (it expired or was redacted before the export) is a
   notice, never tampering; a referenced body neither shipped nor listed so is
   an error;
6. the convenience tables against the events' bytes: every typed column of
   ``events.parquet`` against the loader's projection of ``raw``, and the
   subject, session, stream, event, actions, collections and point id of each
   ``requests``, ``lineage`` and ``approvals`` row against its request's
   verified events; the derived columns too (a request's decision, state,
   approval/ticket/grant; a lineage row's took_effect); every ``approvals``
   column against the approval as the gateways settle it from its verified
   events, whose votes from other sessions ship in ``approval_events.parquet``
   (proven one by one, not chained: their sessions are not exported whole).

An event that no inclusion proof ties to a signed checkpoint is an error
(NOT PROVEN) unless the caller allows unproven events.

Each finding names the file, the event id and what is wrong
(:class:`replay.verify_core.Finding`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline import queries
from pipeline.warehouse.base import Warehouse
from replay.bundle_sign import bundle_dir, verify_manifest
from replay.export import APPROVAL_EVENTS
from replay.verify_core import (
    ConsistencyProof,
    Finding,
    InclusionProof,
    VerifyReport,
    chain_findings,
    decode_events,
    leaf_hash,
    split_runs,
    verify_log,
    verify_proofs,
)
from schemas.codec import DecodedEvent, default_codec
from schemas.note import Verifier

__all__ = ["verify_bundle", "verify_warehouse"]

EVENTS = "events.parquet"
BODIES = "bodies.parquet"


#: an altered Parquet file is still read, to name what changed, but not if it
#: declares more uncompressed data than this many times its size (a bomb)
_MAX_EXPANSION = 64
_MIN_DECLARED_CAP = 16 * 1024 * 1024


def _read_parquet(
    root: Path, name: str, columns: list[str] | None, report: VerifyReport, suspect: set[str]
) -> Any:
    """``name``'s ``columns`` as a pyarrow Table, or None with a finding if it
    cannot be read. A file that failed its sha256 (``suspect``) is read only if
    it declares a plausible uncompressed size."""
    path = root / name
    try:
        if name in suspect:
            meta = pq.ParquetFile(path).metadata
            declared = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
            cap = max(_MIN_DECLARED_CAP, _MAX_EXPANSION * path.stat().st_size)
            if declared > cap:
                report.findings.append(Finding(
                    "file_malformed",
                    f"declares {declared} bytes uncompressed from {path.stat().st_size}; not read",
                    where=name))
                return None
        return pq.read_table(path, columns=columns)
    except Exception as exc:  # noqa: BLE001 - any reader error on hostile bytes is a finding
        report.findings.append(
            Finding("file_malformed", f"not a readable Parquet file with columns "
                    f"{', '.join(columns or ['(all)'])}: {type(exc).__name__}: {exc}",
                    where=name))
        return None


def _json_list_of_objects(
    root: Path, name: str, report: VerifyReport, required: tuple[str, ...]
) -> list[dict[str, Any]] | None:
    """A JSON file that must be a list of objects, each with string ``required``
    keys; None, with a finding, otherwise."""
    doc = _json_file(root, name, report)
    if doc is None:
        return None
    if not isinstance(doc, list) or not all(
        isinstance(e, dict) and all(isinstance(e.get(k), str) for k in required) for e in doc
    ):
        report.findings.append(Finding(
            "file_malformed",
            f"not a list of objects with string {', '.join(required)}", where=name))
        return None
    return doc


def _json_file(root: Path, name: str, report: VerifyReport) -> Any:
    path = root / name
    if not path.is_file():
        report.findings.append(Finding("file_missing", "the bundle has no such file", where=name))
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        report.findings.append(Finding("file_malformed", f"not JSON: {exc}", where=name))
        return None


def verify_bundle(
    path: Path,
    vkeys: Iterable[str | Verifier],
    export_vkeys: Iterable[str | Verifier],
    *,
    allow_unproven: bool = False,
) -> VerifyReport:
    """Verify the bundle at ``path`` (a directory or a zip); see the module doc.
    ``allow_unproven``: an event no inclusion proof covers is a warning, not an
    error (see :func:`replay.verify_core.verify_proofs`)."""
    from pipeline.warehouse.projection import gc_paused

    # the decoded events stay alive to the end: the cyclic collector would walk
    # them again every few hundred allocations (about a fifth of the time)
    with bundle_dir(path) as root, gc_paused():
        return _verify_root(root, list(vkeys), list(export_vkeys), allow_unproven)


def _verify_root(
    root: Path,
    vkeys: list[str | Verifier],
    export_vkeys: list[str | Verifier],
    allow_unproven: bool = False,
) -> VerifyReport:
    manifest, findings = verify_manifest(root, export_vkeys)
    report = VerifyReport()
    report.findings.extend(findings)
    if manifest is None:
        return report  # nothing in an unsigned bundle can be trusted

    if not (root / EVENTS).is_file():
        report.findings.append(Finding("file_missing", "the bundle has no events", where=EVENTS))
        return report
    suspect = {f.where for f in findings if f.kind in ("file_altered", "unexpected_file")
               and f.where}
    read = _read_events_file(root, EVENTS, report, suspect)
    if read is None:
        return report
    events, wheres = read

    # the votes, expiries and grants behind the approvals, from sessions not
    # exported whole: proven one by one, not chained (their sessions' other
    # events are not in the bundle)
    extra, extra_wheres = _read_approval_events(root, report, suspect)

    _check_index(root, manifest, events, wheres, report, extra, extra_wheres)
    _check_order(events, wheres, report)

    notes_json = _json_list_of_objects(root, "checkpoints.json", report, ("note",)) or []
    inclusion_json = _json_file(root, "proofs/inclusion.json", report) or []
    consistency_json = _json_file(root, "proofs/consistency.json", report) or []
    try:
        inclusion = [InclusionProof.from_json(p) for p in inclusion_json]
        consistency = [ConsistencyProof.from_json(p) for p in consistency_json]
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        report.findings.append(
            Finding("proofs_malformed", f"a proof does not parse: {exc}", where="proofs/")
        )
        inclusion, consistency = [], []
    # The file order was checked above; chains are checked in seq order, so a
    # reordering is reported once, as such, and not also as a gap.
    order = sorted(
        range(len(events)),
        key=lambda i: (events[i].event.envelope.session_id, events[i].event.envelope.seq),
    )
    events = [events[i] for i in order]
    wheres = [wheres[i] for i in order]
    report.findings.extend(chain_findings(events, wheres))
    _check_session_ends(events, wheres, report)
    proofs = verify_proofs(
        [*events, *extra],
        vkeys,
        inclusion=inclusion,
        consistency=consistency,
        notes=[(f"checkpoints.json[{i}]", n["note"]) for i, n in enumerate(notes_json)],
        wheres=[*wheres, *extra_wheres],
        check_chains=False,
        allow_unproven=allow_unproven,
    )
    report.findings.extend(proofs.findings)
    report.streams = proofs.streams
    report.events = proofs.events
    report.sessions = len({d.event.envelope.session_id for d in events})
    report.checkpoints_verified = proofs.checkpoints_verified
    report.inclusion_verified = proofs.inclusion_verified
    report.consistency_verified = proofs.consistency_verified

    _check_bodies(root, manifest, events, wheres, report, suspect)
    _check_projections(root, [*events, *extra], [*wheres, *extra_wheres], report, suspect)
    return report


def _check_session_ends(
    events: list[DecodedEvent], wheres: list[str], report: VerifyReport
) -> None:
    """Is each session shipped whole? A session the gateway's tracker opened
    (SessionStarted at seq 0) ends with its SessionEnded, the last event of
    its chain; with it, an intact chain from seq 0 to it proves that no event
    of the session was left out. Without it, the session was still open when
    exported, or its tail was left out: a warning, since the bundle cannot tell
    which. An event after the SessionEnded is an error. ``events`` are in
    (session, seq) order; the chains were checked already (a session whose
    chain is broken is not counted whole)."""
    run_of = {i: r.label for r in split_runs(events) for i in r.idxs}
    by_session: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, d in enumerate(events):
        by_session[(run_of[i], d.event.envelope.session_id)].append(i)
    broken = {f.session_id for f in report.findings
              if f.severity == "error" and f.kind.startswith("chain_")}
    for (_, sid), idxs in by_session.items():
        first = events[idxs[0]].event
        if first.envelope.seq != 0 or first.avro_name != "SessionStarted":
            continue  # a gateway's own session, or a chain not shipped from its start
        ends = [i for i in idxs if events[i].event.avro_name == "SessionEnded"]
        if not ends:
            report.sessions_open += 1
            last = idxs[-1]
            report.findings.append(_at(
                events[last], wheres[last], "session_open",
                "the session has no SessionEnded: it was still open when exported, or "
                "the events after this one (its last in the bundle) were left out, and "
                "the bundle cannot show which; export it again once it has ended (the "
                "gateway closes it after its idle gap) to prove it whole",
                severity="warning"))
            continue
        end = events[ends[0]].event.envelope
        after = [i for i in idxs if events[i].event.envelope.seq > end.seq]
        for i in after:
            report.findings.append(_at(
                events[i], wheres[i], "session_after_end",
                f"recorded after the session's SessionEnded (seq {end.seq}, "
                f"{end.event_id}): a session's end is the last event of its chain"))
        if not after and sid not in broken:
            report.sessions_whole += 1


#: the event types that settle an approval (what approval_events.parquet may hold)
_SETTLING = frozenset({"ApprovalRequested", "ApprovalDecided", "ApprovalExpired", "GrantIssued"})


def _read_events_file(
    root: Path, name: str, report: VerifyReport, suspect: set[str]
) -> tuple[list[DecodedEvent], list[str]] | None:
    """The decoded events of an events file and where each came from (None if
    it cannot be read); an undecodable row, or one whose ``event_id`` is not
    its bytes' event, is a finding."""
    table = _read_parquet(root, name, ["event_id", "raw"], report, suspect)
    if table is None:
        return None
    ids = table.column("event_id").to_pylist()
    events, wheres, undecodable = decode_events(
        (f"{name} row {i}", bytes(raw or b""))
        for i, raw in enumerate(table.column("raw").to_pylist())
    )
    report.findings.extend(undecodable)
    for dec, where in zip(events, wheres, strict=True):
        row_id = ids[int(where.rsplit(" ", 1)[1])]
        if str(dec.event.envelope.event_id) != row_id:
            report.findings.append(_at(
                dec, where, "row_mismatch",
                f"the row says event {row_id} but its bytes are event "
                f"{dec.event.envelope.event_id}"))
    return events, wheres


def _read_approval_events(
    root: Path, report: VerifyReport, suspect: set[str]
) -> tuple[list[DecodedEvent], list[str]]:
    if not (root / APPROVAL_EVENTS).is_file():
        return [], []  # a bundle without approvals from other sessions
    read = _read_events_file(root, APPROVAL_EVENTS, report, suspect)
    if read is None:
        return [], []
    kept: list[DecodedEvent] = []
    kept_wheres: list[str] = []
    for dec, where in zip(*read, strict=True):
        if dec.event.envelope.type not in _SETTLING:
            report.findings.append(_at(
                dec, where, "unexpected_event",
                f"a {dec.event.envelope.type} event; this file holds only the events "
                f"that settle an approval ({', '.join(sorted(_SETTLING))})"))
        else:
            kept.append(dec)
            kept_wheres.append(where)
    return kept, kept_wheres


def _state(types: set[str]) -> str:
    """A request's state from the types of its events that make request rows
    (the ``state`` of pipeline/queries.py ``_REQUEST_FOLD``)."""
    for event_type, state in (("RequestBlocked", "blocked"), ("ResponseRecorded", "completed"),
                              ("RequestForwarded", "forwarded"), ("ApprovalRequested", "held")):
        if event_type in types:
            return state
    return "received"


#: derived columns of ``requests``/``lineage`` -> the projected request column
#: each one folds (a value must be one of the request's, and None only if the
#: request's events have none)
_DERIVED = {"decision": "outcome", "approval_id": "approval_id", "ticket_id": "ticket_id",
            "grant_id": "grant_id", "result_count": "result_count"}


def _check_derived(
    row: dict[str, Any],
    where: str,
    values: dict[str, set[str]],
    types: set[str],
    report: VerifyReport,
) -> None:
    """The columns the export derived from several of a request's events
    (decision, state, took_effect, the approval, ticket and grant that let it
    through) must be what its verified events make them."""
    rid = row.get("request_id")
    problems: list[str] = []
    for col, source in _DERIVED.items():
        if col not in row:
            continue
        known = values.get(source, set())
        value = row[col]
        if (repr(value) not in known) if known else value is not None:
            say = ", ".join(sorted(known)) if known else "none"
            problems.append(f"column {col} says {value!r}, but its verified events record {say}")
    state = _state(types)
    if "state" in row and row["state"] != state:
        problems.append(f"column state says {row['state']!r}, but its verified events make it "
                        f"{state!r}")
    if "took_effect" in row:
        status = row.get("status")
        effect = state == "completed" and isinstance(status, int) and 200 <= status < 300
        if row["took_effect"] is not effect:
            problems.append(f"column took_effect says {row['took_effect']!r}, but its verified "
                            f"events make it {effect!r} (state {state!r}, status {status!r})")
    for problem in problems:
        report.findings.append(Finding("projection_mismatch", f"request {rid}: {problem}",
                                       where=where))


def _check_approvals(
    root: Path,
    events: Sequence[DecodedEvent],
    tables: dict[str, dict[str, list[dict[str, Any]]]],
    report: VerifyReport,
    suspect: set[str],
) -> None:
    """Every column of ``approvals.parquet`` against the approval as the
    gateways settle it from the verified events (capture.approvals.state)."""
    from capture.approvals.state import ApprovalBook

    name = "approvals.parquet"
    if not (root / name).is_file():
        return
    table = _read_parquet(root, name, None, report, suspect)
    if table is None:
        return
    book = ApprovalBook()
    for dec in events:
        book.apply(dec.event)
    voted = {str(getattr(d.event, "approval_id", "")) for d in events
             if d.event.envelope.type == "ApprovalDecided"}
    requested: dict[str, dict[str, Any]] = {}
    for rows in tables.values():
        for part in rows.get("approvals", []):
            if part["type"] == "ApprovalRequested":
                requested.setdefault(part["approval_id"], part)

    def at(value: Any) -> str | None:
        return value.astimezone(UTC).strftime(_TIME) if value is not None else None

    for i, row in enumerate(table.to_pylist()):
        where = f"{name} row {i}"
        aid = row.get("approval_id")
        a = book.get(str(aid))
        req_part = requested.get(str(aid))
        if a is None or req_part is None:
            report.findings.append(Finding(
                "projection_unbacked",
                f"approval {aid}: no verified ApprovalRequested in the bundle backs this row",
                where=where))
            continue
        want: dict[str, Any] = {
            "kind": a.kind,
            "session_id": a.session_id,
            "request_id": a.request_id,
            "requester_subject": a.requester_subject,
            "request_sha256": a.request_sha256,
            "reason": a.reason,
            "status": a.status,
            "min_approvals": a.min_approvals,
            "approvers": sorted(v.subject for v in a.approvals),
            "deniers": sorted(v.subject for v in a.denials),
            "requested_at": at(a.requested_at),
            "decided_at": at(a.decided_at),
            "collections": list(req_part["collections"]),
            "actions": list(req_part["actions"]),
        }
        for col, value in row.items():
            if col == "approval_id":
                continue
            if col not in want:
                report.findings.append(Finding(
                    "projection_mismatch", f"column {col!r} is not one the export writes",
                    where=where))
                continue
            shown = list(value) if isinstance(value, list | tuple) else value
            if shown != want[col]:
                hint = ""
                if not (a.approvals or a.denials) and str(aid) not in voted:
                    hint = (" (no vote on it is in the bundle: bundles exported before "
                            f"{APPROVAL_EVENTS} existed did not ship the approvers' votes; "
                            "export the sessions again)")
                report.findings.append(Finding(
                    "projection_mismatch",
                    f"approval {aid}: column {col} says {shown!r}, but its verified events "
                    f"settle it as {want[col]!r}{hint}",
                    where=where))


def _check_lineage_operation(
    row: dict[str, Any],
    where: str,
    projected: dict[str, tuple[DecodedEvent, str, dict[str, Any]]],
    statuses: set[int],
    report: VerifyReport,
) -> None:
    """A lineage row names an event and the index of an operation in it: that
    operation must have the row's action, collection, id flags, and point id,
    and the row's status must be one the request's responses recorded."""
    got = projected.get(str(row.get("event_id")))
    ops = getattr(got[0].event, "operations", None) if got else None
    index = row.get("op_index")
    problems: list[str] = []
    if ops and isinstance(index, int):
        if not 0 <= index < len(ops):
            problems.append(f"op_index {index} is not an operation of event {row['event_id']}")
        else:
            op = ops[index]
            want = {"action": str(getattr(op.action, "value", op.action)),
                    "collection": op.collection, "ids_known": op.ids_known, "bulk": op.bulk,
                    "filter_present": op.filter_present}
            problems += [f"{k} says {row[k]!r}, the operation {v!r}"
                         for k, v in want.items() if k in row and row[k] != v]
            if row.get("ids_known") and row.get("point_id") and op.ids_known and (
                    str(row["point_id"]) not in {str(x) for x in op.ids}):
                problems.append(f"point_id {row['point_id']!r} is not an id of the operation")
    if statuses and row.get("status") is not None and row["status"] not in statuses:
        problems.append(f"status says {row['status']!r}, the responses {sorted(statuses)!r}")
    for problem in problems:
        report.findings.append(Finding(
            "projection_mismatch", f"request {row.get('request_id')}: {problem}", where=where))


def _payload_difference(shown: str, projected: Any) -> str | None:
    """How the exported ``payload_json`` differs from the projection of the
    event's bytes (None: every key it shows has the projected value)."""
    try:
        have = json.loads(shown)
        want = json.loads(projected) if isinstance(projected, str) else None
    except ValueError:
        return "is not JSON"
    if not isinstance(have, dict) or not isinstance(want, dict):
        return "is not a JSON object"
    for key, value in have.items():
        if key not in want:
            return f"has a key {key!r} the event does not"
        if value != want[key]:
            return f"says {key}={value!r}, the event {want[key]!r}"
    return None


#: columns of the derived tables checked against the verified events of their request
_BY_REQUEST = {
    "requests.parquet": ("request_id", "subject", "session_id", "stream"),
    "lineage.parquet": ("request_id", "subject", "session_id", "event_id"),
    "approvals.parquet": ("request_id", "requester_subject", "session_id"),
}


def _check_event_columns(
    file: str,
    rows: list[dict[str, Any]],
    projected: dict[str, tuple[DecodedEvent, str, dict[str, Any]]],
    report: VerifyReport,
) -> None:
    """Every typed column of an events file against the loader's projection of
    its row's ``raw`` bytes."""
    for i, row in enumerate(rows):
        got = projected.get(str(row.get("event_id")))
        if got is None:
            continue  # an undecodable or unlisted row is reported elsewhere
        dec, _where, want = got
        for col, value in row.items():
            if col == "raw":
                continue
            if col == "stream":
                expected: Any = want["gateway_id"]
            elif col == "occurred_at":
                expected = want["occurred_at"].strftime(_TIME)
            elif col in want:
                expected = want[col]
            else:
                report.findings.append(Finding(
                    "projection_mismatch", f"column {col!r} is not one the export writes",
                    where=f"{file} row {i}"))
                continue
            if col == "payload_json" and isinstance(value, str):
                # compared as JSON, key by key: a verifier of another version may
                # know fields the exporter's did not (they are then left out)
                bad = _payload_difference(value, expected)
                if bad is not None:
                    report.findings.append(_at(
                        dec, f"{file} row {i}", "projection_mismatch",
                        f"column payload_json {bad}, unlike the event's signed bytes"))
                continue
            if value != expected:
                report.findings.append(_at(
                    dec, f"{file} row {i}", "projection_mismatch",
                    f"column {col} says {value!r}, but the event's signed bytes say "
                    f"{expected!r}"))


#: how the warehouse answers a time, and so how the bundle's tables show one
_TIME = "%Y-%m-%d %H:%M:%S.%f"


def _check_projections(
    root: Path,
    events: list[DecodedEvent],
    wheres: list[str],
    report: VerifyReport,
    suspect: set[str],
) -> None:
    """The convenience columns auditors query must say what the signed bytes say.

    Every typed column of ``events.parquet`` is compared with the loader's own
    projection of the row's ``raw`` bytes. In ``requests``, ``lineage`` and
    ``approvals``, each row's request must have verified events in the bundle,
    and its subject, session, stream, event, actions, collections and point id
    must be the ones those events record. (Any column not named here is not
    compared: see the bundle README.)"""
    from pipeline.warehouse.projection import project_event

    now = datetime.now(UTC)
    tables = {str(d.event.envelope.event_id): project_event(d, "", 0, 0, now) for d in events}
    projected = {
        str(d.event.envelope.event_id): (d, w, tables[str(d.event.envelope.event_id)]["events"][0])
        for d, w in zip(events, wheres, strict=True)
    }
    for file in (EVENTS, APPROVAL_EVENTS):
        if file != EVENTS and not (root / file).is_file():
            continue
        table = _read_parquet(root, file, None, report, suspect)
        if table is None:
            if file == EVENTS:
                return
            continue
        _check_event_columns(file, table.to_pylist(), projected, report)

    # the request columns the events' own projection fills in (method, path,
    # operations, rules, status, bodies...), each value they take per request
    request_values: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for rows in tables.values():
        for part in rows.get("requests", []):
            into = request_values[part["request_id"]]
            for key, value in part.items():
                if value not in (None, [], "") and not isinstance(value, datetime):
                    into[key].add(repr(value))

    # what each request's verified events record
    subjects: dict[str, set[str]] = defaultdict(set)
    sessions: dict[str, set[str]] = defaultdict(set)
    streams: dict[str, set[str]] = defaultdict(set)
    actions: dict[str, set[str]] = defaultdict(set)
    collections: dict[str, set[str]] = defaultdict(set)
    ids: dict[str, set[str]] = defaultdict(set)
    event_ids: dict[str, set[str]] = defaultdict(set)
    statuses: dict[str, set[int]] = defaultdict(set)
    session_subjects: dict[str, set[str]] = defaultdict(set)
    for dec, _where, want in projected.values():
        if want.get("subject"):
            session_subjects[dec.event.envelope.session_id].add(want["subject"])
    for dec, _where, want in projected.values():
        rid = dec.event.envelope.request_id
        if not rid:
            continue
        event_ids[rid].add(str(dec.event.envelope.event_id))
        sessions[rid].add(dec.event.envelope.session_id)
        streams[rid].add(dec.event.envelope.gateway_id)
        if want.get("subject"):
            subjects[rid].add(want["subject"])
        actions[rid].update(want.get("actions") or [])
        collections[rid].update(want.get("collections") or [])
        for op in getattr(dec.event, "operations", None) or []:
            ids[rid].update(str(x) for x in op.ids)
        status = getattr(dec.event, "status", None)
        if isinstance(status, int) and dec.event.envelope.type == "ResponseRecorded":
            statuses[rid].add(status)
    for rid, sids in sessions.items():  # a request's events may not name the caller:
        if not subjects[rid]:  # its session's do (SessionStarted)
            subjects[rid] = set().union(*(session_subjects[sid] for sid in sids))
    # the request-row types each request's events make (what its state folds)
    row_types: dict[str, set[str]] = defaultdict(set)
    for rows in tables.values():
        for part in rows.get("requests", []):
            row_types[part["request_id"]].add(part["type"])
    for name, cols in _BY_REQUEST.items():
        if not (root / name).is_file():
            continue
        derived = _read_parquet(root, name, None, report, suspect)
        if derived is None:
            continue
        for i, row in enumerate(derived.to_pylist()):
            rid = row.get("request_id")
            if not rid:
                continue
            where = f"{name} row {i}"
            if rid not in event_ids:
                report.findings.append(Finding(
                    "projection_unbacked",
                    f"request {rid} has no verified event in the bundle", where=where))
                continue
            checks: list[tuple[str, Any, set[str]]] = [
                (c, row.get(c), {"subject": subjects, "requester_subject": subjects,
                                 "session_id": sessions, "stream": streams,
                                 "event_id": event_ids}[c][rid])
                for c in cols[1:]
            ]
            if name != "approvals.parquet":
                checks += [(c, v, known[rid]) for c, known in
                           (("actions", actions), ("collections", collections))
                           for v in ([row.get(c)] if isinstance(row.get(c), str)
                                     else row.get(c) or [])]
                checks += [(c, row.get(c), known[rid]) for c, known in
                           (("action", actions), ("collection", collections)) if c in row]
            if name == "lineage.parquet" and row.get("ids_known") and row.get("point_id"):
                checks.append(("point_id", row["point_id"], ids[rid]))
            if name == "lineage.parquet":
                _check_lineage_operation(row, where, projected, statuses[rid], report)
            if name != "approvals.parquet":
                _check_derived(row, where, request_values[rid], row_types[rid], report)
            if name == "requests.parquet":
                for col, known_reprs in request_values[rid].items():
                    value = row.get(col)
                    if col in row and value not in (None, [], "") and col not in (
                        "event_id", "type", "day", "schema_fingerprint", "source",
                        "src_partition", "src_offset", "gateway_id",
                    ) and repr(value) not in known_reprs:
                        report.findings.append(Finding(
                            "projection_mismatch",
                            f"request {rid}: column {col} says {value!r}, but its verified "
                            f"events record {', '.join(sorted(known_reprs))}",
                            where=where))
            for col, value, known in checks:
                if value is None or not known:
                    continue
                if value not in known:
                    report.findings.append(Finding(
                        "projection_mismatch",
                        f"request {rid}: column {col} says {value!r}, but its verified "
                        f"events record {sorted(known)!r}",
                        where=where))
    _check_approvals(root, events, tables, report, suspect)


def _at(dec: DecodedEvent, where: str | None, kind: str, detail: str, **kw: Any) -> Finding:
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


def _check_index(
    root: Path,
    manifest: dict[str, Any],
    events: list[DecodedEvent],
    wheres: list[str],
    report: VerifyReport,
    extra: Sequence[DecodedEvent] = (),
    extra_wheres: Sequence[str] = (),
) -> None:
    index = _json_list_of_objects(root, "index.json", report, ("event_id", "session_id"))
    if index is None:
        return
    # approval events from other sessions: each listed one present, unaltered
    listed_extra = {e["event_id"]: e for e in index if e.get("file") == APPROVAL_EVENTS}
    index = [e for e in index if e.get("file") != APPROVAL_EVENTS]
    present_extra = {str(d.event.envelope.event_id): (d, w)
                     for d, w in zip(extra, extra_wheres, strict=True)}
    for eid, e in listed_extra.items():
        if eid not in present_extra:
            report.findings.append(Finding(
                "event_missing", f"listed in the signed index but not in {APPROVAL_EVENTS}",
                event_id=eid, stream=e.get("stream"), stream_seq=e.get("stream_seq"),
                session_id=e.get("session_id"), seq=e.get("seq"), where=APPROVAL_EVENTS))
    for eid, (dec, where) in present_extra.items():
        entry = listed_extra.get(eid)
        if entry is None:
            report.findings.append(
                _at(dec, where, "event_unlisted", "in the events but not in the signed index"))
        elif entry.get("leaf_hash") != leaf_hash(dec).hex():
            report.findings.append(_at(
                dec, where, "event_altered",
                "its bytes do not hash to the leaf hash the signed index records"))
    present = {str(d.event.envelope.event_id): (d, w) for d, w in zip(events, wheres, strict=True)}
    listed = {e["event_id"]: e for e in index}
    missing_by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in index:
        if e["event_id"] not in present:
            missing_by_session[e["session_id"]].append(e)
    sessions_present = {d.event.envelope.session_id for d in events}
    declared = manifest.get("sessions") or {}
    if not isinstance(declared, dict):
        declared = {}
    for sid in sorted(set(declared) - sessions_present - set(missing_by_session)):
        missing_by_session[sid] = []
    for sid, gone in sorted(missing_by_session.items()):
        if sid not in sessions_present:
            first = gone[0]["event_id"] if gone else (declared.get(sid) or {}).get("first_event")
            count = len(gone) or (declared.get(sid) or {}).get("events")
            report.findings.append(
                Finding(
                    "session_missing",
                    f"the whole session ({count} event(s), the first {first}) listed in the "
                    f"signed index is not in {EVENTS}",
                    event_id=first,
                    session_id=sid,
                    where=EVENTS,
                )
            )
            continue
        for e in gone:
            report.findings.append(
                Finding(
                    "event_missing",
                    f"listed in the signed index but not in {EVENTS}",
                    event_id=e["event_id"],
                    stream=e.get("stream"),
                    stream_seq=e.get("stream_seq"),
                    session_id=sid,
                    seq=e.get("seq"),
                    where=EVENTS,
                )
            )
    for eid, (dec, where) in present.items():
        entry = listed.get(eid)
        if entry is None:
            report.findings.append(
                _at(dec, where, "event_unlisted", "in the events but not in the signed index")
            )
        elif entry.get("leaf_hash") != leaf_hash(dec).hex():
            report.findings.append(
                _at(
                    dec,
                    where,
                    "event_altered",
                    "its bytes do not hash to the leaf hash the signed index records",
                )
            )


def _check_order(events: list[DecodedEvent], wheres: list[str], report: VerifyReport) -> None:
    last: dict[str, DecodedEvent] = {}
    for dec, where in zip(events, wheres, strict=True):
        env = dec.event.envelope
        prev = last.get(env.session_id)
        if prev is not None and env.seq < prev.event.envelope.seq:
            report.findings.append(
                _at(
                    dec,
                    where,
                    "reordered",
                    f"seq {env.seq} comes after seq {prev.event.envelope.seq} (event "
                    f"{prev.event.envelope.event_id}); the session's events were reordered",
                )
            )
        last[env.session_id] = dec


def _check_bodies(
    root: Path,
    manifest: dict[str, Any],
    events: list[DecodedEvent],
    wheres: list[str],
    report: VerifyReport,
    suspect: set[str],
) -> None:
    referencing: dict[str, list[tuple[DecodedEvent, str]]] = defaultdict(list)
    for dec, where in zip(events, wheres, strict=True):
        sha = getattr(dec.event, "body_sha256", None)
        if sha and getattr(dec.event, "body_size", 0):
            referencing[sha].append((dec, where))
    unavailable = set(manifest.get("bodies_unavailable") or [])
    held: set[str] = set()
    table = (_read_parquet(root, BODIES, ["sha256", "body"], report, suspect)
             if (root / BODIES).is_file() else None)
    if table is not None:
        for i, (sha, body) in enumerate(
            zip(table.column("sha256").to_pylist(), table.column("body").to_pylist(), strict=True)
        ):
            held.add(sha)
            actual = hashlib.sha256(bytes(body or b"")).hexdigest()
            if actual == sha:
                continue
            refs = referencing.get(sha) or []
            if not refs:
                report.findings.append(
                    Finding(
                        "body_altered",
                        f"body {sha} hashes to {actual}",
                        where=f"{BODIES} row {i}",
                    )
                )
            for dec, _where in refs:
                report.findings.append(
                    _at(
                        dec,
                        f"{BODIES} row {i}",
                        "body_altered",
                        f"the body this event references (sha256 {sha}) hashes to {actual}",
                    )
                )
    for sha, refs in sorted(referencing.items()):
        if sha in held:
            continue
        dec, where = refs[0]
        if sha not in unavailable:
            report.findings.append(
                _at(
                    dec,
                    where,
                    "body_missing",
                    f"the body this event references (sha256 {sha}) is neither in {BODIES} "
                    "nor declared unavailable in the signed manifest",
                )
            )
        elif sha in unavailable:
            report.findings.append(
                _at(
                    dec,
                    where,
                    "body_unavailable",
                    f"body {sha} had expired or was redacted before the export; the event "
                    "still proves its sha256 (not tampering)",
                    severity="warning",
                )
            )


def verify_warehouse(
    wh: Warehouse, vkeys: Iterable[str | Verifier], *, require_checkpoint: bool = False
) -> VerifyReport:
    """Every stream in the warehouse against its signed checkpoints, and every
    session's chain (the same checks as ``embedguard events verify --vkey``)."""
    codec = default_codec()
    rows: list[tuple[str, bytes]] = []
    for s in queries.streams(wh):
        for r in queries.stream_raw_events(wh, s["stream"]):
            rows.append(
                (
                    f"warehouse events stream {s['stream']} stream_seq {r['stream_seq']}",
                    base64.b64decode(r["raw_b64"]),
                )
            )
    events, wheres, undecodable = decode_events(rows, codec)
    notes = [
        (f"checkpoints {c['origin']} size {c['tree_size']}", c["signed_note"])
        for c in queries.checkpoints(wh)
    ]
    report = verify_log(
        events,
        vkeys,
        notes=notes,
        wheres=wheres,
        require_checkpoint=require_checkpoint,
        order="stream_seq",
    )
    report.findings[:0] = undecodable
    for b in queries.altered_bodies(wh):
        report.findings.append(
            Finding(
                "body_altered",
                f"the stored {b['kind']} body keyed {b['sha256']} hashes to {b['actual_sha256']}",
                event_id=b["event_id"],
                where=f"warehouse bodies request {b['request_id']}",
            )
        )
    return report
