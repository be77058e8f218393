"""Evidence bundles: what an auditor needs, verifiable without trusting us.

``export_bundle`` writes a directory (or a zip of one)::

    events.parquet          every event of the selected sessions, with its bytes as
                            written (``raw``): what the hash chains and Merkle leaves cover
    requests.parquet        one row per request (identity, decision, approval, status)
    approvals.parquet       the approvals and change tickets those requests used
    lineage.parquet         every write/delete per point id, with writer and approval
    bodies.parquet          the request and response bodies still held (by sha256)
    checkpoints.json        the gateways' signed checkpoint notes covering the events
    proofs/inclusion.json   an RFC 6962 inclusion proof per event (with its id)
    proofs/consistency.json consistency proofs between consecutive checkpoints
    README.md               for the auditor: how to verify, DuckDB queries
    manifest.json           filters, row counts, sessions, sha256 of every file
                            (and ``evidence_hold``: the hold id and until when)
    manifest.sig            Ed25519 signed note over manifest.json (export key)

Selection is by whole sessions: every session with an event in the window (and
matching the actor/collection filters, or named with ``sessions``) is exported
from its first event, so each hash chain verifies from its start.

The bundle is built in a temporary directory. Once it is signed, and before it
is moved to ``out`` (handed out), ``before_handout`` gets its contents (the
signed manifest's sha256, the bodies and sessions it holds): the callers record
the evidence hold there (pipeline/retention.py). If that raises, nothing is
written to ``out``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import queries
from pipeline.warehouse.base import Warehouse
from replay.bundle_sign import build_manifest, sign_manifest
from replay.verify_core import SignedCheckpoint, build_proofs
from schemas.codec import DecodedEvent, default_codec
from schemas.note import CheckpointBody, NoteError, Signer, parse_note

#: the events that settle the exported requests' approvals, from sessions not
#: exported whole (the approvers'), each with its inclusion proof
APPROVAL_EVENTS = "approval_events.parquet"
#: sessions and bodies read per warehouse query
_SESSION_BATCH = 200
_BODY_BATCH = 500

__all__ = [
    "APPROVAL_EVENTS",
    "BundleContents",
    "ExportFilters",
    "ExportResult",
    "README_QUERIES",
    "export_bundle",
]

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ExportFilters:
    since: str | None = None
    until: str | None = None
    actor: str | None = None
    collection: str | None = None
    sessions: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "actor": self.actor,
            "collection": self.collection,
            "sessions": list(self.sessions),
        }


@dataclass(frozen=True)
class BundleContents:
    """What a signed bundle holds, for the evidence hold recorded before it is
    handed out."""

    name: str
    manifest_sha256: str
    body_sha256s: tuple[str, ...]
    session_ids: tuple[str, ...]
    event_count: int


@dataclass
class ExportResult:
    path: Path
    row_counts: dict[str, int]
    sessions: list[str]
    manifest: dict[str, Any]
    bodies_unavailable: list[str] = field(default_factory=list)
    #: exported events (Checkpoint events aside) that no inclusion proof ties to
    #: a signed checkpoint yet: `embedguard verify` fails them unless told
    #: --allow-unproven
    unproven: int = 0


#: The auditor's three questions, answered from the bundle alone with DuckDB.
#: Each query is run by the test suite against a real bundle.
README_QUERIES: dict[str, str] = {
    "who_added_vector": """SELECT subject, occurred_at, action, collection, session_id,
       request_id, approval_id, ticket_id
FROM read_parquet('lineage.parquet')
WHERE collection = 'COLLECTION' AND point_id = 'POINT_ID'
  AND action = 'write' AND took_effect
ORDER BY occurred_at
LIMIT 1;""",
    "who_altered_collection": """SELECT subject, count(*) AS requests,
       min(received_at) AS first_change, max(received_at) AS last_change,
       list(DISTINCT a ORDER BY a) AS actions
FROM (SELECT *, unnest(actions) AS a FROM read_parquet('requests.parquet'))
WHERE list_contains(collections, 'COLLECTION')
  AND a IN ('write', 'delete', 'admin')
  AND state = 'completed' AND status BETWEEN 200 AND 299
GROUP BY subject
ORDER BY first_change;""",
    "which_job_bulk_import": """SELECT subject, session_id, request_id, collection,
       count(DISTINCT point_id) AS points, min(occurred_at) AS first_at
FROM read_parquet('lineage.parquet')
WHERE action = 'write' AND took_effect
GROUP BY subject, session_id, request_id, collection
HAVING bool_or(bulk) OR count(DISTINCT point_id) >= BULK_THRESHOLD
ORDER BY points DESC, first_at;""",
}

_README = """# embedguard evidence bundle

Exported {exported_at} by embedguard {version}.
Filters: `{filters}`. Sessions: {n_sessions}. Events: {n_events}.

## Verify first

```sh
embedguard verify {name} --vkey "$(cat gateway.vkey)" --export-vkey "$(cat export.vkey)"
```

Use public keys you obtained independently of this bundle (pin them). The
verifier checks, offline: the Ed25519 signature of `manifest.json` (export
key), the sha256 of every file, every session's hash chain over the events'
bytes as written (`events.parquet`, column `raw`), an RFC 6962 inclusion proof
per event against the gateways' signed checkpoints (`checkpoints.json`,
`proofs/`), the consistency of consecutive checkpoints, and that every body in
`bodies.parquet` hashes to its sha256. Bodies that expired or were redacted
before the export are listed in the manifest (`bodies_unavailable`); they are
reported as such, never as tampering.

An event that no inclusion proof ties to a signed checkpoint is **NOT PROVEN**
and fails verification: nothing signed vouches for it (the hash chain has no
key, so whoever can write the log can add or re-record such events). Events
recorded after the gateway's last checkpoint are in that state until its next
one; ask for a new export, or pass `--allow-unproven` to read them knowingly.

Whether a session ships whole: each session's chain is checked from its
first event, and every shipped event is proven, but a Merkle proof says
nothing about the stream's other leaves. A session that ended before the
export ends with its `SessionEnded` event, the last of its chain (the gateway
never ends a session while one of its requests is in flight), so a chain
intact from `SessionStarted` to `SessionEnded` shows the whole session;
verify counts such sessions as whole. A session without its `SessionEnded`
is named in a `session_open` warning: it was still open at export, or the
events after the last one shipped were left out, and the bundle cannot show
which (ask for the session again once it has ended, or compare `index.json`
with another export of it).

What the signatures prove is the `raw` column of `events.parquet` (and the
bodies). The other tables are projections the export copied from the
warehouse, for convenient queries, and the verifier holds them to `raw`:
every other column of `events.parquet` must equal the loader's projection of
its row's bytes, and each row of `requests.parquet`, `lineage.parquet` and
`approvals.parquet` must belong to a request with verified events, naming the
subject, session, stream, event, actions, collections and point id those
events record; a `requests` row's method, host, path, operations, rules,
reasons, status, latency and body hashes too, and a `lineage` row's
operation (action, collection, id flags, point id) and status.

The derived columns are recomputed from the verified events and must match:
a request's `decision` (its PolicyDecided), `state` (blocked, completed,
forwarded, held or received, from which of its events exist), and its
approval, ticket and grant ids; a lineage row's decision, approval, ticket,
grant and `took_effect`; and every column of `approvals.parquet` (status,
approvers, deniers, decided_at...), settled from the approval's own events
exactly as the gateways settle it (votes in time order until a deny or the
N-th approver; the requester's own vote, a second vote, and votes after the
deadline never count). Those events (the request, every vote, an expiry,
the grant) ship in `approval_events.parquet` when they belong to sessions
not exported whole, such as the approvers' own, each with its inclusion
proof; their sessions' other events are not in the bundle.

## Files

| file | rows | what |
|---|---|---|
| events.parquet | {n_events} | every event; `raw` = its Avro bytes as written |
| requests.parquet | {n_requests} | one row per request: who, what, decision, approval, status |
| approvals.parquet | {n_approvals} | approvals and change tickets: requester, approvers, status |
| lineage.parquet | {n_lineage} | writes/deletes per point id ('' = ids unknown: by filter) |
| approval_events.parquet | {n_approval_events} | votes and grants behind `approvals` |
| bodies.parquet | {n_bodies} | request/response bodies as delivered (masked), by sha256 |

## The three questions (DuckDB)

Run `duckdb` in this directory. Replace the UPPER-CASE placeholders.

Who added vector POINT_ID to COLLECTION?

```sql
{q1}
```

Who altered collection COLLECTION (writes, deletes, admin that took effect)?

```sql
{q2}
```

Which job ran a bulk import (a bulk operation, or one request writing at least
BULK_THRESHOLD points; 100 is a reasonable start)?

```sql
{q3}
```
"""


def _events_table(rows: list[dict[str, Any]]) -> pa.Table:
    schema = pa.schema(
        [
            ("event_id", pa.string()),
            ("type", pa.string()),
            ("occurred_at", pa.string()),
            ("stream", pa.string()),
            ("stream_seq", pa.int64()),
            ("session_id", pa.string()),
            ("seq", pa.int64()),
            ("prev_hash", pa.string()),
            ("request_id", pa.string()),
            ("subject", pa.string()),
            ("actions", pa.list_(pa.string())),
            ("collections", pa.list_(pa.string())),
            ("outcome", pa.string()),
            ("status", pa.int32()),
            ("approval_id", pa.string()),
            ("body_sha256", pa.string()),
            ("payload_json", pa.string()),
            ("raw", pa.binary()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


_REQUEST_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("request_id", pa.string()),
    ("session_id", pa.string()),
    ("stream", pa.string()),
    ("received_at", pa.string()),
    ("subject", pa.string()),
    ("method", pa.string()),
    ("host", pa.string()),
    ("path", pa.string()),
    ("query", pa.string()),
    ("product", pa.string()),
    ("actions", pa.list_(pa.string())),
    ("collections", pa.list_(pa.string())),
    ("operations_json", pa.string()),
    ("id_count", pa.int64()),
    ("vector_count", pa.int64()),
    ("decision", pa.string()),
    ("matched_rules", pa.list_(pa.string())),
    ("reasons", pa.list_(pa.string())),
    ("approval_id", pa.string()),
    ("ticket_id", pa.string()),
    ("grant_id", pa.string()),
    ("state", pa.string()),
    ("status", pa.int32()),
    ("latency_us", pa.int64()),
    ("request_body_sha256", pa.string()),
    ("response_body_sha256", pa.string()),
    ("masked_fields", pa.list_(pa.string())),
]

_APPROVAL_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("approval_id", pa.string()),
    ("kind", pa.string()),
    ("session_id", pa.string()),
    ("request_id", pa.string()),
    ("requester_subject", pa.string()),
    ("request_sha256", pa.string()),
    ("reason", pa.string()),
    ("status", pa.string()),
    ("min_approvals", pa.int32()),
    ("approvers", pa.list_(pa.string())),
    ("deniers", pa.list_(pa.string())),
    ("requested_at", pa.string()),
    ("decided_at", pa.string()),
    ("collections", pa.list_(pa.string())),
    ("actions", pa.list_(pa.string())),
]

_LINEAGE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("collection", pa.string()),
    ("point_id", pa.string()),
    ("action", pa.string()),
    ("occurred_at", pa.string()),
    ("subject", pa.string()),
    ("session_id", pa.string()),
    ("request_id", pa.string()),
    ("event_id", pa.string()),
    ("op_index", pa.int32()),
    ("ids_known", pa.bool_()),
    ("id_count", pa.int64()),
    ("result_count", pa.int64()),
    ("bulk", pa.bool_()),
    ("filter_present", pa.bool_()),
    ("decision", pa.string()),
    ("status", pa.int32()),
    ("took_effect", pa.bool_()),
    ("approval_id", pa.string()),
    ("ticket_id", pa.string()),
    ("grant_id", pa.string()),
]


def _index_entry(e: dict[str, Any], proved: set[str], file: str | None = None) -> dict[str, Any]:
    """An exported event's entry in the signed ``index.json`` (``file``: the
    file that holds it, when not events.parquet)."""
    entry = {
        "event_id": e["event_id"],
        "session_id": e["session_id"],
        "seq": e["seq"],
        "stream": e["stream"],
        "stream_seq": e["stream_seq"],
        "leaf_hash": hashlib.sha256(b"\x00" + e["raw"]).hexdigest(),
        "proved": e["event_id"] in proved,
    }
    if file is not None:
        entry["file"] = file
    return entry


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, pa.DataType]]) -> pa.Table:
    schema = pa.schema(columns)
    return pa.Table.from_pylist([{c: r.get(c) for c, _ in columns} for r in rows], schema=schema)


def _write(table: pa.Table, path: Path) -> int:
    pq.write_table(table, path, compression="zstd")
    return int(table.num_rows)


def select_sessions(wh: Warehouse, filters: ExportFilters) -> list[str]:
    if filters.sessions:
        missing = [s for s in filters.sessions if queries.session(wh, s) is None]
        if missing:
            raise LookupError(f"no session {missing[0]!r} in {wh.url}")
        return sorted(set(filters.sessions))
    f = queries.SessionFilter(
        actor=filters.actor,
        collection=filters.collection,
        since=filters.since,
        until=filters.until,
    )
    out: list[str] = []
    offset = 0
    while True:
        page = queries.sessions_list(wh, f, limit=queries.MAX_LIMIT, offset=offset)
        out.extend(r["session_id"] for r in page)
        if len(page) < queries.MAX_LIMIT:
            return sorted(set(out))
        offset += len(page)


def _stream_checkpoints(
    wh: Warehouse, streams: set[str]
) -> tuple[list[dict[str, Any]], list[SignedCheckpoint]]:
    """The checkpoint notes the involved streams' gateways signed (parsed, not
    yet trusted: the verifier opens them with pinned keys)."""
    notes: list[dict[str, Any]] = []
    cps: list[SignedCheckpoint] = []
    for row in queries.checkpoints(wh):
        if row["gateway_id"] not in streams:
            continue
        try:
            body = CheckpointBody.parse(parse_note(row["signed_note"]).text)
        except NoteError:
            continue  # the verifier of the warehouse reports it; it proves nothing here
        notes.append(
            {
                "stream": row["gateway_id"],
                "origin": body.origin,
                "tree_size": body.tree_size,
                "event_id": row["event_id"],
                "note": row["signed_note"],
            }
        )
        cps.append(SignedCheckpoint(body, row["signed_note"], (), f"event {row['event_id']}"))
    return notes, cps


def export_bundle(
    wh: Warehouse,
    out: Path,
    *,
    filters: ExportFilters,
    signer: Signer,
    tool_version: str,
    exported_at: datetime | None = None,
    bulk_threshold: int = 100,
    progress: Progress | None = None,
    manifest_extra: dict[str, Any] | None = None,
    before_handout: Callable[[BundleContents], None] | None = None,
) -> ExportResult:
    """Write the bundle for ``filters`` to ``out`` (a directory, or a ``.zip``).

    ``manifest_extra`` adds fields to the signed manifest; ``before_handout`` is
    called with the signed bundle's contents before anything is written to
    ``out`` (an exception there leaves ``out`` untouched)."""
    exported_at = exported_at or datetime.now(UTC)
    as_zip = out.suffix.lower() == ".zip"
    if out.exists() and (as_zip or any(out.iterdir())):
        raise FileExistsError(f"{out} exists; give a new path (bundles are never overwritten)")
    report = progress or (lambda _stage, _done, _total: None)
    session_ids = select_sessions(wh, filters)
    if not session_ids:
        raise LookupError("no session matches the filters; nothing to export")
    codec = default_codec()

    with tempfile.TemporaryDirectory(prefix="eg-export-") as tmp:
        root = Path(tmp) / "bundle"
        (root / "proofs").mkdir(parents=True)
        event_rows: list[dict[str, Any]] = []
        request_rows: list[dict[str, Any]] = []
        sessions_index: dict[str, dict[str, Any]] = {}
        # a batch of sessions per query (one query per session made an export
        # of thousands of sessions take minutes), every event of each: no page
        # limit, so a long session is never cut short
        done = 0
        for lo in range(0, len(session_ids), _SESSION_BATCH):
            batch = session_ids[lo : lo + _SESSION_BATCH]
            evs_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for e in queries.sessions_events(wh, batch):
                evs_of[e["session_id"]].append(e)
            reqs_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in queries.sessions_requests(wh, batch):
                reqs_of[r["session_id"]].append(r)
            for sid in batch:
                evs, reqs = evs_of.get(sid, []), reqs_of.get(sid, [])
                for e in evs:
                    event_rows.append(
                        {
                            **{k: e.get(k) for k in e if k not in ("gateway_id", "raw_b64")},
                            "stream": e["gateway_id"],
                            "raw": base64.b64decode(e["raw_b64"]),
                        }
                    )
                for r in reqs:
                    request_rows.append({**r, "stream": r.get("gateway_id")})
                sessions_index[sid] = {
                    "events": len(evs),
                    "first_event": evs[0]["event_id"] if evs else None,
                    "last_event": evs[-1]["event_id"] if evs else None,
                    "requests": len(reqs),
                }
            done += len(batch)
            report("sessions", done, len(session_ids))

        # approvals and tickets the requests used
        approval_ids = sorted(
            {r[k] for r in request_rows for k in ("approval_id", "ticket_id") if r.get(k)}
        )
        # ...and the events that settle them: the request, each vote, an expiry,
        # the grant. The votes sit in the approvers' own sessions, which the
        # filters may not select; they ship in approval_events.parquet with
        # their proofs, so that "approved by bob" rests on bob's signed vote.
        approval_event_rows: list[dict[str, Any]] = []
        shipped = {e["event_id"] for e in event_rows}
        for aid in approval_ids:
            for r in queries.approval_events(wh, aid):
                if r["event_id"] in shipped:
                    continue
                shipped.add(r["event_id"])
                approval_event_rows.append(
                    {
                        **{k: r.get(k) for k in r if k not in ("gateway_id", "raw_b64")},
                        "stream": r["gateway_id"],
                        "raw": base64.b64decode(r["raw_b64"]),
                    }
                )
        # read after the events, so that no vote loaded in between is counted
        # by a row but missing from the events that back it
        approval_rows = [a for a in (queries.approval(wh, i) for i in approval_ids) if a]

        # lineage of the exported requests
        request_ids = {r["request_id"] for r in request_rows}
        collections = sorted({c for r in request_rows for c in (r.get("collections") or [])})
        lineage_rows: list[dict[str, Any]] = []
        for c in collections:
            for row in queries.collection_lineage(wh, c):
                if row["request_id"] in request_ids:
                    status = row.get("status")
                    lineage_rows.append(
                        {
                            **row,
                            "collection": c,
                            "took_effect": row.get("state") == "completed"
                            and status is not None
                            and 200 <= int(status) < 300,
                        }
                    )

        # bodies still held
        wanted: dict[str, str] = {}
        for r in request_rows:
            for col, kind in (
                ("request_body_sha256", "request"),
                ("response_body_sha256", "response"),
            ):
                size_col = col.replace("sha256", "size")
                if r.get(col) and r.get(size_col):
                    wanted.setdefault(r[col], kind)
        # ...and every body the exported events reference, read from their own
        # bytes: a derived row that lost its body columns must not drop one
        # silently (each is then shipped, or declared unavailable)
        for e in event_rows:
            if e.get("type") not in ("RequestReceived", "ResponseRecorded"):
                continue
            ev = codec.decode(e["raw"]).event
            sha, size = getattr(ev, "body_sha256", None), getattr(ev, "body_size", 0)
            if sha and size:
                wanted.setdefault(
                    sha, "request" if e["type"] == "RequestReceived" else "response"
                )
        body_rows: list[dict[str, Any]] = []
        unavailable: list[str] = []
        shas = sorted(wanted)
        for lo in range(0, len(shas), _BODY_BATCH):
            chunk = shas[lo : lo + _BODY_BATCH]
            held = queries.bodies(wh, chunk)
            for sha in chunk:
                data = held.get(sha)
                if data is None:
                    unavailable.append(sha)
                else:
                    body_rows.append(
                        {"sha256": sha, "kind": wanted[sha], "size": len(data), "body": data}
                    )
            report("bodies", lo + len(chunk), len(shas))

        # proofs against the gateways' signed checkpoints
        streams = {e["stream"] for e in (*event_rows, *approval_event_rows)}
        notes, cps = _stream_checkpoints(wh, streams)
        full: list[DecodedEvent] = []
        for n, s in enumerate(sorted(streams)):
            rows = queries.stream_raw_events(wh, s)
            full.extend(codec.decode(base64.b64decode(r["raw_b64"])) for r in rows)
            report("streams", n + 1, len(streams))
        selected = [e["event_id"] for e in (*event_rows, *approval_event_rows)]
        inclusion, consistency = build_proofs(full, cps, selected)
        by_id = {e["event_id"]: e for e in (*event_rows, *approval_event_rows)}
        inclusion_json = [
            proof.to_json() | {k: by_id[proof.event_id][k] for k in ("session_id", "seq", "stream")}
            for proof in inclusion
            if proof.event_id in by_id
        ]
        # the index of every exported event, also those not yet checkpointed
        proved = {p["event_id"] for p in inclusion_json}
        unproven = sum(
            1
            for e in (*event_rows, *approval_event_rows)
            if e["event_id"] not in proved and e.get("type") != "Checkpoint"
        )
        index = [_index_entry(e, proved) for e in event_rows] + [
            _index_entry(e, proved, APPROVAL_EVENTS) for e in approval_event_rows
        ]

        counts = {
            "events": _write(_events_table(event_rows), root / "events.parquet"),
            "requests": _write(_table(request_rows, _REQUEST_COLUMNS), root / "requests.parquet"),
            "approvals": _write(
                _table(approval_rows, _APPROVAL_COLUMNS), root / "approvals.parquet"
            ),
            "lineage": _write(_table(lineage_rows, _LINEAGE_COLUMNS), root / "lineage.parquet"),
            "approval_events": _write(
                _events_table(approval_event_rows), root / APPROVAL_EVENTS
            ),
            "bodies": _write(
                pa.Table.from_pylist(
                    body_rows,
                    schema=pa.schema(
                        [
                            ("sha256", pa.string()),
                            ("kind", pa.string()),
                            ("size", pa.int64()),
                            ("body", pa.binary()),
                        ]
                    ),
                ),
                root / "bodies.parquet",
            ),
        }
        counts["checkpoints"] = len(notes)
        _dump(root / "checkpoints.json", notes)
        _dump(root / "proofs" / "inclusion.json", inclusion_json)
        _dump(root / "proofs" / "consistency.json", [c.to_json() for c in consistency])
        _dump(root / "index.json", index)
        (root / "README.md").write_text(
            _README.format(
                exported_at=exported_at.isoformat(),
                version=tool_version,
                filters=json.dumps(filters.to_json()),
                name=out.name,
                n_sessions=len(session_ids),
                n_events=counts["events"],
                n_requests=counts["requests"],
                n_approvals=counts["approvals"],
                n_lineage=counts["lineage"],
                n_approval_events=counts["approval_events"],
                n_bodies=counts["bodies"],
                q1=README_QUERIES["who_added_vector"],
                q2=README_QUERIES["who_altered_collection"],
                q3=README_QUERIES["which_job_bulk_import"].replace(
                    "BULK_THRESHOLD", str(bulk_threshold)
                ),
            ),
            encoding="utf-8",
        )
        manifest = build_manifest(
            root,
            tool_version=tool_version,
            exported_at=exported_at,
            filters=filters.to_json(),
            row_counts=counts,
            extra={
                "sessions": sessions_index,
                "streams": sorted(streams),
                "bodies_unavailable": unavailable,
                "export_key": signer.name,
                **(manifest_extra or {}),
            },
        )
        sign_manifest(root, manifest, signer)
        report("signed", 1, 1)
        if before_handout is not None:
            before_handout(
                BundleContents(
                    name=out.name,
                    manifest_sha256=hashlib.sha256(
                        (root / "manifest.json").read_bytes()
                    ).hexdigest(),
                    body_sha256s=tuple(r["sha256"] for r in body_rows),
                    session_ids=tuple(session_ids),
                    event_count=counts["events"],
                )
            )

        if as_zip:
            out.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(out, "x", compression=zipfile.ZIP_DEFLATED) as zf:
                for p in sorted(root.rglob("*")):
                    if p.is_file():
                        zf.write(p, p.relative_to(root).as_posix())
        else:
            out.mkdir(parents=True, exist_ok=True)
            for p in sorted(root.rglob("*")):
                dest = out / p.relative_to(root)
                if p.is_dir():
                    dest.mkdir(exist_ok=True)
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(p, dest)
    return ExportResult(out, counts, session_ids, manifest, unavailable, unproven)


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


def groups_by_session(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[r["session_id"]].append(r)
    return out
