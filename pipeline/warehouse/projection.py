"""Pure projection of decoded events into warehouse rows, one table at a time.

``project_batch(batch, codec, loaded_at)`` decodes every record of a
``LoadBatch`` and returns ``{table: [row, ...]}``: plain dicts keyed by the
column names of ``ddl/*.sql``. No I/O, no clock (``loaded_at`` is passed in).
It works on the pydantic models and is the reference.

``project_batch_columnar`` is what the warehouses run: the same tables, as Arrow
tables, built from the plain decoded records (``EventCodec.decode_raw``) with
no model in between, one tuple per row of only the columns its event type sets
(pipeline/warehouse/columnar.py). Both give equal Arrow tables for every event
(tests/pipeline/warehouse/test_fast_decode.py).

Derived tables get one *partial* row per contributing event (see
ddl/0001_initial.sql): a request's row from RequestReceived carries its method
and operations, the row from ResponseRecorded its status and latency, and
queries fold them per request_id. Every row keeps the schema fingerprint of the
event it came from and its source position (source, partition, offset).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pydantic_core

from pipeline.transport.base import LogRecord
from pipeline.warehouse.base import LoadBatch
from schemas.codec import DecodedEvent, DecodeError, EventCodec
from schemas.models import (
    ActionClass,
    ApprovalClaimed,
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    AuditViewed,
    Checkpoint,
    Event,
    EvidenceHeld,
    GrantIssued,
    IdentityResolved,
    Operation,
    PolicyDecided,
    RequestBlocked,
    RequestForwarded,
    RequestReceived,
    ResponseRecorded,
    SessionEnded,
    SessionStarted,
)

__all__ = [
    "PROJECTION_ERRORS",
    "TABLES",
    "Projector",
    "Row",
    "dead_letter_row",
    "evidence_hold_rows",
    "failed_record_row",
    "gc_paused",
    "project_batch",
    "project_batch_columnar",
    "project_event",
    "project_tables_reference",
    "rows_after",
    "to_arrow",
    "to_arrow_columns",
]

Row = dict[str, Any]

#: Every table a batch writes to, in write order: ``loads`` last (it marks the
#: batch as complete).
TABLES = (
    "bodies",
    "vector_lineage",
    "requests",
    "sessions",
    "approvals",
    "checkpoints",
    "evidence_holds",
    "dead_letters",
    "events",
    "loads",
)

_LINEAGE_ACTIONS = {ActionClass.WRITE, ActionClass.DELETE}


def _ops_fields(ops: Iterable[Operation]) -> tuple[list[str], list[str]]:
    actions: list[str] = []
    collections: list[str] = []
    for op in ops:
        if op.action.value not in actions:
            actions.append(op.action.value)
        if op.collection and op.collection not in collections:
            collections.append(op.collection)
    return actions, collections


def _ops_json(ops: Iterable[Operation]) -> str:
    return json.dumps([op.model_dump(mode="json") for op in ops], separators=(",", ":"))


def _payload_json(event: Event) -> str:
    """The event as JSON, bodies replaced by their hash reference (bodies live in
    the ``bodies`` table, with their own retention)."""
    fields = type(event).__pydantic_fields__
    return event.model_dump_json(exclude={"body"} if "body" in fields else None)


def _base(dec: DecodedEvent, source: str, partition: int, offset: int) -> Row:
    env = dec.event.envelope
    return {
        "event_id": str(env.event_id),
        "type": env.type,
        "occurred_at": env.occurred_at.astimezone(UTC),
        "day": env.occurred_at.astimezone(UTC).date(),
        "schema_fingerprint": dec.fingerprint,
        "source": source,
        "src_partition": partition,
        "src_offset": offset,
    }


def project_event(
    dec: DecodedEvent, source: str, partition: int, offset: int, loaded_at: datetime
) -> dict[str, list[Row]]:
    """The rows one decoded event contributes to each table."""
    ev = dec.event
    env = ev.envelope
    base = _base(dec, source, partition, offset)
    out: dict[str, list[Row]] = {}

    actions: list[str] = []
    collections: list[str] = []
    subject: str | None = None
    outcome: str | None = None
    status: int | None = None
    approval_id: str | None = None
    body_sha: str | None = None

    sess: Row | None = None
    req: Row | None = None
    appr: Row | None = None

    def session_row(**fields: Any) -> Row:
        row = {
            **{k: base[k] for k in ("event_id", "type", "occurred_at", "day")},
            "session_id": env.session_id,
            "gateway_id": env.gateway_id,
            "request_id": env.request_id,
            "actions": [],
            "collections": [],
            **{k: base[k] for k in ("schema_fingerprint", "source", "src_partition", "src_offset")},
        }
        row.update(fields)
        return row

    def request_row(**fields: Any) -> Row:
        row = {
            "request_id": env.request_id,
            **{k: base[k] for k in ("event_id", "type", "occurred_at", "day")},
            "session_id": env.session_id,
            "gateway_id": env.gateway_id,
            "actions": [],
            "collections": [],
            "matched_rules": [],
            "reasons": [],
            "masked_fields": [],
            **{k: base[k] for k in ("schema_fingerprint", "source", "src_partition", "src_offset")},
        }
        row.update(fields)
        return row

    def approval_row(aid: str, **fields: Any) -> Row:
        row = {
            "approval_id": aid,
            **{k: base[k] for k in ("event_id", "type", "occurred_at", "day")},
            "session_id": env.session_id,
            "request_id": env.request_id,
            "actions": [],
            "collections": [],
            **{k: base[k] for k in ("schema_fingerprint", "source", "src_partition", "src_offset")},
        }
        row.update(fields)
        return row

    def body_row(kind: str, sha: str, body: bytes, content_type: str | None) -> Row:
        return {
            "sha256": sha,
            "kind": kind,
            "event_id": base["event_id"],
            "request_id": env.request_id,
            "occurred_at": base["occurred_at"],
            "day": base["day"],
            "content_type": content_type,
            "size": len(body),
            "body": body,
            "source": source,
            "src_partition": partition,
            "src_offset": offset,
        }

    if isinstance(ev, SessionStarted):
        subject = ev.subject
        sess = session_row(
            subject=ev.subject,
            issuer=ev.issuer,
            client_address=ev.client_address,
            token_id=ev.token_id,
            client_session_name=ev.client_session_name,
            user_agent=ev.user_agent,
        )
    elif isinstance(ev, SessionEnded):
        sess = session_row(ended_reason=ev.reason)
    elif isinstance(ev, IdentityResolved):
        subject = ev.subject
        sess = session_row(subject=ev.subject, issuer=ev.issuer, client_address=ev.client_address)
        if env.request_id:
            req = request_row(subject=ev.subject)
    elif isinstance(ev, RequestReceived):
        actions, collections = _ops_fields(ev.operations)
        body_sha = ev.body_sha256
        sess = session_row(actions=actions, collections=collections)
        req = request_row(
            method=ev.method,
            host=ev.host,
            path=ev.path,
            query=ev.query,
            product=ev.product,
            actions=actions,
            collections=collections,
            operations_json=_ops_json(ev.operations),
            op_count=len(ev.operations),
            id_count=sum(len(op.ids) for op in ev.operations),
            vector_count=sum(op.vector_count for op in ev.operations),
            request_body_sha256=ev.body_sha256,
            request_body_size=ev.body_size,
        )
        if ev.body is not None:
            out["bodies"] = [body_row("request", ev.body_sha256, ev.body, ev.content_type)]
        lineage: list[Row] = []
        for i, op in enumerate(ev.operations):
            if op.action not in _LINEAGE_ACTIONS:
                continue
            common = {
                "collection": op.collection or "",
                "event_id": base["event_id"],
                "op_index": i,
                "action": op.action.value,
                "occurred_at": base["occurred_at"],
                "day": base["day"],
                "session_id": env.session_id,
                "request_id": env.request_id or "",
                "product": ev.product,
                "ids_known": op.ids_known,
                "id_count": len(op.ids),
                "vector_count": op.vector_count,
                "filter_present": op.filter_present,
                "filter_sha256": op.filter_sha256,
                "bulk": op.bulk,
                "schema_fingerprint": dec.fingerprint,
                "source": source,
                "src_partition": partition,
                "src_offset": offset,
            }
            if op.ids_known and op.ids:
                lineage.extend({**common, "point_id": pid} for pid in dict.fromkeys(op.ids))
            else:
                # Ids unknown (delete-by-filter, upload without ids): one row that
                # says so, with how many points the operation named.
                lineage.append({**common, "point_id": ""})
        if lineage:
            out["vector_lineage"] = lineage
    elif isinstance(ev, PolicyDecided):
        outcome = ev.outcome
        sess = session_row(outcome=ev.outcome)
        req = request_row(
            outcome=ev.outcome,
            matched_rules=list(ev.matched_rules),
            reasons=list(ev.reasons),
            policy_sha256=ev.policy_sha256,
            grant_id=ev.grant_id,
            ticket_id=ev.ticket_id,
        )
    elif isinstance(ev, RequestForwarded):
        approval_id = ev.approval_id
        req = request_row(
            forwarded=True, upstream=ev.upstream, approval_id=ev.approval_id, grant_id=ev.grant_id
        )
    elif isinstance(ev, ResponseRecorded):
        status = ev.status
        body_sha = ev.body_sha256
        sess = session_row(status=ev.status)
        req = request_row(
            status=ev.status,
            response_body_sha256=ev.body_sha256,
            response_body_size=ev.body_size,
            original_body_sha256=ev.original_body_sha256,
            masked_fields=[f.path for f in ev.masked_fields],
            result_count=len(ev.result_ids),
            upstream_error=ev.upstream_error,
            latency_us=ev.latency_us,
        )
        if ev.body is not None:
            ctype = next((h.value for h in ev.headers if h.name.lower() == "content-type"), None)
            out["bodies"] = [body_row("response", ev.body_sha256, ev.body, ctype)]
    elif isinstance(ev, RequestBlocked):
        status = ev.status
        sess = session_row(status=ev.status, outcome="blocked")
        req = request_row(
            forwarded=False,
            status=ev.status,
            blocked_error=ev.error,
            blocked_reason=ev.reason,
            blocked_stage=ev.stage,
        )
    elif isinstance(ev, ApprovalRequested):
        approval_id = ev.approval_id
        subject = ev.requester_subject
        actions, collections = _ops_fields(ev.operations)
        appr = approval_row(
            ev.approval_id,
            kind=ev.kind,
            requester_subject=ev.requester_subject,
            requester_issuer=ev.requester_issuer,
            request_sha256=ev.request_sha256,
            min_approvals=ev.min_approvals,
            expires_at=ev.expires_at.astimezone(UTC),
            mode=ev.mode,
            reason=ev.reason,
            blast_radius=ev.blast_radius,
            actions=actions,
            collections=collections,
            operations_json=_ops_json(ev.operations),
        )
        if env.request_id:
            req = request_row(approval_id=ev.approval_id)
    elif isinstance(ev, ApprovalDecided):
        approval_id = ev.approval_id
        subject = ev.approver_subject
        outcome = ev.decision
        appr = approval_row(
            ev.approval_id,
            decision=ev.decision,
            approver_subject=ev.approver_subject,
            approver_issuer=ev.approver_issuer,
            decision_reason=ev.reason,
        )
    elif isinstance(ev, ApprovalExpired):
        approval_id = ev.approval_id
        outcome = "expired"
        appr = approval_row(
            ev.approval_id, decision="expired", expired_at=ev.expired_at.astimezone(UTC)
        )
    elif isinstance(ev, ApprovalClaimed):
        # a use of an approval or ticket taken (or given back) by the request
        approval_id = ev.approval_id
        outcome = "released" if ev.released else "claimed"
    elif isinstance(ev, GrantIssued):
        approval_id = ev.approval_id
        subject = ev.subject
        collections = list(ev.collections)
        actions = list(ev.actions)
        if ev.approval_id:
            appr = approval_row(ev.approval_id, grant_id=ev.grant_id)
    elif isinstance(ev, Checkpoint):
        out["checkpoints"] = [
            {
                "origin": ev.origin,
                "tree_size": ev.tree_size,
                "event_id": base["event_id"],
                "occurred_at": base["occurred_at"],
                "day": base["day"],
                "gateway_id": env.gateway_id,
                "session_id": env.session_id,
                "root_hash": ev.root_hash,
                "signed_note": ev.signed_note,
                "key_id": ev.key_id,
                "schema_fingerprint": dec.fingerprint,
                "source": source,
                "src_partition": partition,
                "src_offset": offset,
            }
        ]
    elif isinstance(ev, AuditViewed):
        subject = ev.viewer_subject
    elif isinstance(ev, EvidenceHeld):
        subject = ev.held_by
        out["evidence_holds"] = evidence_hold_rows(
            ev.model_dump(),
            base["event_id"],
            base["occurred_at"],
            ev.held_until.astimezone(UTC),
            {k: base[k] for k in ("schema_fingerprint", "source", "src_partition", "src_offset")},
        )

    if sess is not None:
        out["sessions"] = [sess]
    if req is not None and env.request_id:
        out["requests"] = [req]
    if appr is not None:
        out["approvals"] = [appr]
    out["events"] = [
        {
            **base,
            "gateway_id": env.gateway_id,
            "session_id": env.session_id,
            "seq": env.seq,
            "stream_seq": env.stream_seq,
            "prev_hash": env.prev_hash,
            "request_id": env.request_id,
            "subject": subject,
            "collections": collections,
            "actions": actions,
            "outcome": outcome,
            "status": status,
            "approval_id": approval_id,
            "body_sha256": body_sha,
            "payload_json": _payload_json(ev),
            "raw": dec.canonical,
            "writer_version": dec.writer_version,
            "loaded_at": loaded_at,
        }
    ]
    return out


def evidence_hold_rows(
    ev: dict[str, Any], event_id: str, occurred_at: Any, held_until: Any, tail: Row
) -> list[Row]:
    """An EvidenceHeld part's rows of ``evidence_holds``: one 'part' row with the
    hold's metadata, one per held body sha256 and one per session (see
    ddl/0003_evidence_holds.sql). Timestamps are passed as the path needs them."""
    common = {
        "hold_id": ev["hold_id"],
        "part": ev["part"],
        "event_id": event_id,
        "occurred_at": occurred_at,
        "held_until": held_until,
        "held_by": ev["held_by"],
        "held_by_issuer": ev["held_by_issuer"],
        "bundle_sha256": ev["bundle_sha256"],
        "bundle_name": ev["bundle_name"],
        "reason": ev["reason"],
        "parts": ev["parts"],
        "body_count": ev["body_count"],
        "session_count": ev["session_count"],
        "event_count": ev["event_count"],
        **tail,
    }
    rows = [{**common, "item_kind": "part", "item": ""}]
    rows.extend({**common, "item_kind": "body", "item": sha} for sha in ev["body_sha256s"])
    rows.extend({**common, "item_kind": "session", "item": sid} for sid in ev["session_ids"])
    return rows


def dead_letter_row(
    source: str,
    partition: int,
    offset: int,
    key: bytes,
    raw: bytes,
    error: str,
    timestamp_ms: int,
    loaded_at: datetime,
) -> Row:
    return {
        "source": source,
        "src_partition": partition,
        "src_offset": offset,
        "record_key": key.decode("utf-8", "replace"),
        "raw": raw,
        "error": error[:4000],
        "log_timestamp": datetime.fromtimestamp(timestamp_ms / 1000, UTC),
        "loaded_at": loaded_at,
        "day": loaded_at.date(),
    }


#: What a record that does not decode or project raises: it becomes a dead letter.
PROJECTION_ERRORS = (DecodeError, ValueError, TypeError, KeyError, AttributeError)


def failed_record_row(
    source: str, partition: int, rec: LogRecord, exc: BaseException, loaded_at: datetime
) -> Row:
    """The dead letter of ``rec``, which raised ``exc`` (one of PROJECTION_ERRORS)."""
    return dead_letter_row(
        source,
        partition,
        rec.offset,
        rec.key,
        rec.value,
        f"{type(exc).__name__}: {exc}",
        rec.timestamp_ms,
        loaded_at,
    )


def to_arrow(rows: list[Row], schema: pa.Schema) -> pa.Table:
    """Rows as an Arrow table of ``schema`` (columns missing from a row are null).

    Transposes with C-level itemgetter/zip: this is the hot loop of a load."""
    names = schema.names
    if not rows:
        return schema.empty_table()
    blank = dict.fromkeys(names)
    get = itemgetter(*names)
    columns = list(zip(*[get({**blank, **r}) for r in rows], strict=True))
    return pa.Table.from_arrays(
        [pa.array(col, type=field.type) for col, field in zip(columns, schema, strict=True)],
        schema=schema,
    )


def project_batch(batch: LoadBatch, codec: EventCodec, loaded_at: datetime) -> dict[str, list[Row]]:
    """Decode and project every record of ``batch``. A record that does not
    decode (or does not project) becomes a dead letter; the batch goes on.
    ``loads`` is left to the backend (it knows which tables it wrote)."""
    out: dict[str, list[Row]] = {t: [] for t in TABLES if t != "loads"}
    for rec in batch.records:
        try:
            dec = codec.decode(rec.value)
            rows = project_event(dec, batch.source, batch.partition, rec.offset, loaded_at)
        except PROJECTION_ERRORS as exc:
            out["dead_letters"].append(
                failed_record_row(batch.source, batch.partition, rec, exc, loaded_at)
            )
            continue
        for table, table_rows in rows.items():
            out[table].extend(table_rows)
    return out


# -- the fast path: plain records in, Arrow tables out ---------------------------

Projector = Callable[[LoadBatch, EventCodec, datetime], dict[str, pa.Table]]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def _micros(when: datetime) -> int:
    return (when - _EPOCH) // _MICRO


def _ops_fields_raw(ops: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    actions: list[str] = []
    collections: list[str] = []
    for op in ops:
        if op["action"] not in actions:
            actions.append(op["action"])
        coll = op["collection"]
        if coll and coll not in collections:
            collections.append(coll)
    return actions, collections


_OPS_JSON = json.JSONEncoder(separators=(",", ":"))


def _ops_json_raw(ops: list[dict[str, Any]]) -> str:
    """``json.dumps(ops, separators=(",", ":"))``, byte for byte. pydantic-core
    writes the same compact JSON ~10x faster, except that it keeps non-ASCII
    characters and DEL as they are where ``json`` escapes them (\\uXXXX): such
    text takes the slow path, so the stored bytes never depend on which one ran."""
    text = pydantic_core.to_json(ops).decode()
    return text if text.isascii() and "\x7f" not in text else _OPS_JSON.encode(ops)


def to_arrow_columns(rows: list[Row], schema: pa.Schema) -> pa.Table:
    """``to_arrow`` for rows that may hold timestamps as integer microseconds
    (UTC): pyarrow converts aware datetimes one by one through their tzinfo,
    which costs more than the rest of a row."""
    if not rows:
        return schema.empty_table()
    names = schema.names
    n = len(names)
    blank = dict.fromkeys(names)
    get = itemgetter(*names)
    columns = list(
        zip(*[get(r) if len(r) == n else get({**blank, **r}) for r in rows], strict=True)
    )
    arrays = []
    for values, field in zip(columns, schema, strict=True):
        if pa.types.is_timestamp(field.type):
            arrays.append(_timestamps(values).cast(field.type))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _timestamps(values: Iterable[Any]) -> pa.Array:
    """Integer microseconds (or None) as int64; a column that also holds
    datetimes (dead letters, loads) is converted value by value."""
    try:
        return pa.array(values, pa.int64())
    except (pa.ArrowTypeError, pa.ArrowInvalid, TypeError):
        return pa.array(
            [v if v is None or type(v) is int else _micros(v) for v in values], pa.int64()
        )


def project_batch_columnar(
    batch: LoadBatch, codec: EventCodec, loaded_at: datetime
) -> dict[str, pa.Table]:
    """``project_batch`` as Arrow tables (every table but ``loads``), through
    ``EventCodec.decode_raw``. A record that does not decode or project becomes
    a dead letter, with the same error text as on the model path."""
    from pipeline.warehouse.columnar import project_shapes

    with gc_paused():
        return project_shapes(batch, codec, loaded_at)


@contextmanager
def gc_paused() -> Iterator[None]:
    """A batch allocates hundreds of thousands of small containers, and every
    few hundred allocations the cyclic collector walks them (and all older
    objects of the process) again: a third of the projection's time. Nothing
    here makes cycles, so reference counting frees it all; the collector runs
    again as soon as the batch is projected."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def project_tables_reference(
    batch: LoadBatch, codec: EventCodec, loaded_at: datetime
) -> dict[str, pa.Table]:
    """The model path (``project_batch`` + ``to_arrow``) in the shape of
    ``project_batch_columnar``: the reference it is compared with."""
    from pipeline.warehouse.ddl import table_schemas

    schemas = table_schemas()
    return {
        t: to_arrow(rows, schemas[t]) for t, rows in project_batch(batch, codec, loaded_at).items()
    }


def rows_after(data: pa.Table, offset: int | None) -> pa.Table:
    """The rows of ``data`` whose source offset is past ``offset``."""
    if offset is None or data.num_rows == 0:
        return data
    return data.filter(pc.greater(data["src_offset"], pa.scalar(offset, pa.int64())))
