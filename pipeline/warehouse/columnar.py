"""The load path's projection: decoded records in, Arrow tables out, by row shape.

``project_raw`` (projection.py) builds every derived row as a dict holding all
of its table's columns (the requests table has 45, and a partial row sets a
dozen), then ``to_arrow_columns`` transposes the dicts and converts every
value, the nulls included. Most of that is padding: the columns a row sets
are fixed by its event type.

Here each (table, event type) pair is a *shape*: the columns its rows carry,
in a fixed order, and the value every other column has for it (null, ``[]``,
the type name, the batch's source). A row is one tuple of just its shape's
columns; at the end every shape's tuples are transposed once, its constant
columns are ``pa.repeat`` of one scalar, and ``day`` is cast from
``occurred_at`` in Arrow. Tables fed by several shapes (requests, sessions,
approvals: at most one row per event each) are put back in source-offset
order. An event's rows are all built before any is kept, so an event that
fails half-way leaves nothing behind (it becomes a dead letter).

The tables are equal, row for row, to the model path's (``decode`` +
``project_event`` + ``to_arrow``): tests/pipeline/warehouse/test_fast_decode.py
compares them for every event type, the gateway mix, old writer schemas and
poison. The rare tables (checkpoints, evidence holds, dead letters) keep the
dict rows of projection.py.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pydantic_core

from pipeline.warehouse.base import LoadBatch
from pipeline.warehouse.projection import (
    PROJECTION_ERRORS,
    TABLES,
    _micros,
    _ops_fields_raw,
    _ops_json_raw,
    evidence_hold_rows,
    failed_record_row,
    to_arrow_columns,
)
from schemas.codec import EventCodec

__all__ = ["project_shapes"]

#: An event's contribution to a table: (shape key, row tuple).
_Row = tuple[Any, ...]

_TAIL = ("schema_fingerprint", "src_offset")

#: Per table, per shape: the columns a row tuple carries (in order), and the
#: constant value of the columns it does not carry (``None`` otherwise). The
#: per-batch constants (source, src_partition, loaded_at) and ``day`` (from
#: ``occurred_at``) are filled in for every shape.
_REQ_HEAD = (
    "request_id",
    "event_id",
    "occurred_at",
    "session_id",
    "gateway_id",
    *_TAIL,
)
_SESS_HEAD = (
    "session_id",
    "event_id",
    "occurred_at",
    "gateway_id",
    "request_id",
    *_TAIL,
)
_APPR_HEAD = (
    "approval_id",
    "event_id",
    "occurred_at",
    "session_id",
    "request_id",
    *_TAIL,
)
_REQ_LISTS = ("actions", "collections", "matched_rules", "reasons", "masked_fields")
_SESS_LISTS = ("actions", "collections")

SHAPES: dict[str, dict[str, tuple[tuple[str, ...], dict[str, Any]]]] = {
    "requests": {
        "IdentityResolved": (("subject",), {}),
        "RequestReceived": (
            (
                "method",
                "host",
                "path",
                "query",
                "product",
                "actions",
                "collections",
                "operations_json",
                "op_count",
                "id_count",
                "vector_count",
                "request_body_sha256",
                "request_body_size",
            ),
            {},
        ),
        "PolicyDecided": (
            ("outcome", "matched_rules", "reasons", "policy_sha256", "grant_id", "ticket_id"),
            {},
        ),
        "RequestForwarded": (("upstream", "approval_id", "grant_id"), {"forwarded": True}),
        "ResponseRecorded": (
            (
                "status",
                "response_body_sha256",
                "response_body_size",
                "original_body_sha256",
                "masked_fields",
                "result_count",
                "upstream_error",
                "latency_us",
            ),
            {},
        ),
        "RequestBlocked": (
            ("status", "blocked_error", "blocked_reason", "blocked_stage"),
            {"forwarded": False},
        ),
        "ApprovalRequested": (("approval_id",), {}),
    },
    "sessions": {
        "SessionStarted": (
            (
                "subject",
                "issuer",
                "client_address",
                "token_id",
                "client_session_name",
                "user_agent",
            ),
            {},
        ),
        "SessionEnded": (("ended_reason",), {}),
        "IdentityResolved": (("subject", "issuer", "client_address"), {}),
        "RequestReceived": (("actions", "collections"), {}),
        "PolicyDecided": (("outcome",), {}),
        "ResponseRecorded": (("status",), {}),
        "RequestBlocked": (("status",), {"outcome": "blocked"}),
    },
    "approvals": {
        "ApprovalRequested": (
            (
                "kind",
                "requester_subject",
                "request_sha256",
                "min_approvals",
                "expires_at",
                "mode",
                "reason",
                "blast_radius",
                "actions",
                "collections",
                "operations_json",
                "requester_issuer",
            ),
            {},
        ),
        "ApprovalDecided": (
            ("decision", "approver_subject", "decision_reason", "approver_issuer"),
            {},
        ),
        "ApprovalExpired": (("expired_at",), {"decision": "expired"}),
        "GrantIssued": (("grant_id",), {}),
    },
}
_HEADS = {"requests": _REQ_HEAD, "sessions": _SESS_HEAD, "approvals": _APPR_HEAD}
_LISTS = {"requests": _REQ_LISTS, "sessions": _SESS_LISTS, "approvals": _SESS_LISTS}

_EVENTS_COLUMNS = (
    "event_id",
    "type",
    "occurred_at",
    "gateway_id",
    "session_id",
    "seq",
    "stream_seq",
    "prev_hash",
    "request_id",
    "subject",
    "collections",
    "actions",
    "outcome",
    "status",
    "approval_id",
    "body_sha256",
    "payload_json",
    "raw",
    "schema_fingerprint",
    "writer_version",
    "src_offset",
)
_BODY_COLUMNS = (
    "sha256",
    "kind",
    "event_id",
    "request_id",
    "occurred_at",
    "content_type",
    "size",
    "body",
    "src_offset",
)
_LINEAGE_COLUMNS = (
    "collection",
    "point_id",
    "event_id",
    "op_index",
    "action",
    "occurred_at",
    "session_id",
    "request_id",
    "product",
    "ids_known",
    "id_count",
    "vector_count",
    "filter_present",
    "filter_sha256",
    "bulk",
    *_TAIL,
)
_LINEAGE_ACTIONS = frozenset({"write", "delete"})


@functools.cache
def _shape_columns() -> dict[str, dict[str, tuple[tuple[str, ...], dict[str, Any]]]]:
    """Every multi-shape table's shapes as (tuple columns, constants), heads and
    list defaults included; checked against the DDL once."""
    from pipeline.warehouse.ddl import table_schemas

    schemas = table_schemas()
    out: dict[str, dict[str, tuple[tuple[str, ...], dict[str, Any]]]] = {}
    for table, shapes in SHAPES.items():
        names = set(schemas[table].names)
        out[table] = {}
        for type_name, (columns, const) in shapes.items():
            cols = (*_HEADS[table], *columns)
            consts: dict[str, Any] = {c: [] for c in _LISTS[table] if c not in cols}
            consts.update(const)
            consts["type"] = type_name
            unknown = (set(cols) | set(consts)) - names
            if unknown:  # a DDL change that this module did not follow
                raise RuntimeError(f"{table}.{type_name}: no such columns {sorted(unknown)}")
            out[table][type_name] = (cols, consts)
    return out


def project_shapes(batch: LoadBatch, codec: EventCodec, loaded_at: datetime) -> dict[str, pa.Table]:
    """``project_batch_columnar``'s tables (every table but ``loads``)."""
    from pipeline.warehouse.ddl import table_schemas

    schemas = table_schemas()
    source, partition = batch.source, batch.partition
    loaded_us = _micros(loaded_at)
    # table -> shape -> row tuples; the single-shape tables as plain lists
    parts: dict[str, dict[str, list[_Row]]] = {t: {} for t in SHAPES}
    events: list[_Row] = []
    bodies: list[_Row] = []
    lineage: list[_Row] = []
    rare: dict[str, list[dict[str, Any]]] = {
        "checkpoints": [],
        "evidence_holds": [],
        "dead_letters": [],
    }
    decode = codec.decode_raw
    to_json = pydantic_core.to_json
    ops_json = _ops_json_raw
    utc = UTC

    for rec in batch.records:
        offset = rec.offset
        try:
            raw = decode(rec.value)
            ev = raw.record
            env = ev["envelope"]
            t = raw.type_name
            at = _micros(env["occurred_at"].astimezone(utc))
            event_id = str(env["event_id"])
            session_id = env["session_id"]
            gateway_id = env["gateway_id"]
            request_id = env["request_id"]
            fp = raw.fingerprint
            actions: list[str] = []
            collections: list[str] = []
            subject: str | None = None
            outcome: str | None = None
            status: int | None = None
            approval_id: str | None = None
            body_sha: str | None = None
            req: _Row | None = None
            sess: _Row | None = None
            appr: _Row | None = None
            body: _Row | None = None
            lin: list[_Row] | None = None
            extra: tuple[str, list[dict[str, Any]]] | None = None

            if t == "RequestReceived":
                ops = ev["operations"]
                actions, collections = _ops_fields_raw(ops)
                body_sha = ev["body_sha256"]
                product = ev["product"]
                sess = (session_id, event_id, at, gateway_id, request_id, fp, offset,
                        actions, collections)  # fmt: skip
                req = (
                    request_id, event_id, at, session_id, gateway_id, fp, offset,
                    ev["method"], ev["host"], ev["path"], ev["query"], product,
                    actions, collections, ops_json(ops), len(ops),
                    sum(len(op["ids"]) for op in ops), sum(op["vector_count"] for op in ops),
                    body_sha, ev["body_size"],
                )  # fmt: skip
                if ev["body"] is not None:
                    body = (body_sha, "request", event_id, request_id, at, ev["content_type"],
                            len(ev["body"]), ev["body"], offset)  # fmt: skip
                for i, op in enumerate(ops):
                    if op["action"] not in _LINEAGE_ACTIONS:
                        continue
                    head = (op["collection"] or "",)
                    rest = (
                        event_id, i, op["action"], at, session_id, request_id or "", product,
                        op["ids_known"], len(op["ids"]), op["vector_count"],
                        op["filter_present"], op["filter_sha256"], op["bulk"], fp, offset,
                    )  # fmt: skip
                    if lin is None:
                        lin = []
                    if op["ids_known"] and op["ids"]:
                        lin.extend((*head, pid, *rest) for pid in dict.fromkeys(op["ids"]))
                    else:
                        lin.append((*head, "", *rest))
            elif t == "PolicyDecided":
                outcome = ev["outcome"]
                sess = (session_id, event_id, at, gateway_id, request_id, fp, offset, outcome)
                req = (
                    request_id, event_id, at, session_id, gateway_id, fp, offset,
                    outcome, list(ev["matched_rules"]), list(ev["reasons"]),
                    ev["policy_sha256"], ev["grant_id"], ev["ticket_id"],
                )  # fmt: skip
            elif t == "RequestForwarded":
                approval_id = ev["approval_id"]
                req = (request_id, event_id, at, session_id, gateway_id, fp, offset,
                       ev["upstream"], approval_id, ev["grant_id"])  # fmt: skip
            elif t == "ResponseRecorded":
                status = ev["status"]
                body_sha = ev["body_sha256"]
                sess = (session_id, event_id, at, gateway_id, request_id, fp, offset, status)
                req = (
                    request_id, event_id, at, session_id, gateway_id, fp, offset,
                    status, body_sha, ev["body_size"], ev["original_body_sha256"],
                    [f["path"] for f in ev["masked_fields"]], len(ev["result_ids"]),
                    ev["upstream_error"], ev["latency_us"],
                )  # fmt: skip
                if ev["body"] is not None:
                    ctype = next(
                        (h["value"] for h in ev["headers"] if h["name"].lower() == "content-type"),
                        None,
                    )
                    body = (body_sha, "response", event_id, request_id, at, ctype,
                            len(ev["body"]), ev["body"], offset)  # fmt: skip
            elif t == "SessionStarted":
                subject = ev["subject"]
                sess = (
                    session_id, event_id, at, gateway_id, request_id, fp, offset,
                    subject, ev["issuer"], ev["client_address"], ev["token_id"],
                    ev["client_session_name"], ev["user_agent"],
                )  # fmt: skip
            elif t == "SessionEnded":
                sess = (session_id, event_id, at, gateway_id, request_id, fp, offset,
                        ev["reason"])  # fmt: skip
            elif t == "IdentityResolved":
                subject = ev["subject"]
                sess = (session_id, event_id, at, gateway_id, request_id, fp, offset,
                        subject, ev["issuer"], ev["client_address"])  # fmt: skip
                if request_id:
                    req = (request_id, event_id, at, session_id, gateway_id, fp, offset, subject)
            elif t == "RequestBlocked":
                status = ev["status"]
                sess = (session_id, event_id, at, gateway_id, request_id, fp, offset, status)
                req = (request_id, event_id, at, session_id, gateway_id, fp, offset,
                       status, ev["error"], ev["reason"], ev["stage"])  # fmt: skip
            elif t == "ApprovalRequested":
                approval_id = ev["approval_id"]
                subject = ev["requester_subject"]
                ops = ev["operations"]
                actions, collections = _ops_fields_raw(ops)
                appr = (
                    approval_id, event_id, at, session_id, request_id, fp, offset,
                    ev["kind"], subject, ev["request_sha256"], ev["min_approvals"],
                    _micros(ev["expires_at"]), ev["mode"], ev["reason"], ev["blast_radius"],
                    actions, collections, ops_json(ops), ev["requester_issuer"],
                )  # fmt: skip
                if request_id:
                    req = (request_id, event_id, at, session_id, gateway_id, fp, offset,
                           approval_id)  # fmt: skip
            elif t == "ApprovalDecided":
                approval_id = ev["approval_id"]
                subject = ev["approver_subject"]
                outcome = ev["decision"]
                appr = (approval_id, event_id, at, session_id, request_id, fp, offset,
                        outcome, subject, ev["reason"], ev["approver_issuer"])  # fmt: skip
            elif t == "ApprovalExpired":
                approval_id = ev["approval_id"]
                outcome = "expired"
                appr = (approval_id, event_id, at, session_id, request_id, fp, offset,
                        _micros(ev["expired_at"]))  # fmt: skip
            elif t == "ApprovalClaimed":
                approval_id = ev["approval_id"]
                outcome = "released" if ev["released"] else "claimed"
            elif t == "GrantIssued":
                approval_id = ev["approval_id"]
                subject = ev["subject"]
                collections = list(ev["collections"])
                actions = list(ev["actions"])
                if approval_id:
                    appr = (approval_id, event_id, at, session_id, request_id, fp, offset,
                            ev["grant_id"])  # fmt: skip
            elif t == "Checkpoint":
                extra = ("checkpoints", [{
                    "origin": ev["origin"],
                    "tree_size": ev["tree_size"],
                    "event_id": event_id,
                    "occurred_at": at,
                    "day": env["occurred_at"].astimezone(utc).date(),
                    "gateway_id": gateway_id,
                    "session_id": session_id,
                    "root_hash": ev["root_hash"],
                    "signed_note": ev["signed_note"],
                    "key_id": ev["key_id"],
                    "schema_fingerprint": fp,
                    "source": source,
                    "src_partition": partition,
                    "src_offset": offset,
                }])  # fmt: skip
            elif t == "AuditViewed":
                subject = ev["viewer_subject"]
            elif t == "EvidenceHeld":
                subject = ev["held_by"]
                tail = {
                    "schema_fingerprint": fp,
                    "source": source,
                    "src_partition": partition,
                    "src_offset": offset,
                }
                extra = (
                    "evidence_holds",
                    evidence_hold_rows(ev, event_id, at, _micros(ev["held_until"]), tail),
                )

            payload = {k: v for k, v in ev.items() if k != "body"} if "body" in ev else ev
            event = (
                event_id, t, at, gateway_id, session_id, env["seq"], env["stream_seq"],
                env["prev_hash"], request_id, subject, collections, actions, outcome,
                status, approval_id, body_sha,
                # the same JSON as the model's model_dump_json (same serializer)
                to_json(payload, bytes_mode="base64").decode(),
                raw.canonical, fp, raw.writer_version, offset,
            )  # fmt: skip
        except PROJECTION_ERRORS as exc:
            rare["dead_letters"].append(failed_record_row(source, partition, rec, exc, loaded_at))
            continue
        # every row of the event is built: keep them all
        if sess is not None:
            parts["sessions"].setdefault(t, []).append(sess)
        if req is not None and request_id:
            parts["requests"].setdefault(t, []).append(req)
        if appr is not None:
            parts["approvals"].setdefault(t, []).append(appr)
        if body is not None:
            bodies.append(body)
        if lin is not None:
            lineage.extend(lin)
        if extra is not None:
            rare[extra[0]].extend(extra[1])
        events.append(event)

    batch_consts: dict[str, Any] = {
        "source": source,
        "src_partition": partition,
        "loaded_at": loaded_us,
    }
    shapes = _shape_columns()
    out: dict[str, pa.Table] = {}
    for table in TABLES:
        if table == "loads":
            continue
        schema = schemas[table]
        if table in SHAPES:
            pieces = [
                _build(schema, shapes[table][t], rows, batch_consts)
                for t, rows in parts[table].items()
            ]
            out[table] = _ordered(schema, pieces)
        elif table == "events":
            out[table] = _build(schema, (_EVENTS_COLUMNS, {}), events, batch_consts)
        elif table == "bodies":
            out[table] = _build(schema, (_BODY_COLUMNS, {}), bodies, batch_consts)
        elif table == "vector_lineage":
            out[table] = _build(schema, (_LINEAGE_COLUMNS, {}), lineage, batch_consts)
        else:
            out[table] = to_arrow_columns(rare[table], schema)
    return out


def _build(
    schema: pa.Schema,
    shape: tuple[tuple[str, ...], dict[str, Any]],
    rows: Sequence[_Row],
    batch_consts: dict[str, Any],
) -> pa.Table:
    """One shape's rows as a table of ``schema``."""
    if not rows:
        return schema.empty_table()
    names, consts = shape
    n = len(rows)
    columns = dict(zip(names, zip(*rows, strict=True), strict=True))
    arrays: list[pa.Array] = []
    for field in schema:
        name = field.name
        if name == "day":
            continue  # from occurred_at, below
        values = columns.get(name)
        if values is not None:
            if pa.types.is_timestamp(field.type):
                arrays.append(pa.array(values, pa.int64()).cast(field.type))
            else:
                arrays.append(pa.array(values, type=field.type))
            continue
        value = consts.get(name, batch_consts.get(name))
        if value is not None and pa.types.is_timestamp(field.type):
            value = pa.scalar(value, pa.int64()).cast(field.type)
        arrays.append(pa.repeat(pa.scalar(value, type=field.type), n))
    names_out = [f.name for f in schema if f.name != "day"]
    if "day" in schema.names:
        day = pc.cast(arrays[names_out.index("occurred_at")], pa.date32())
        arrays.insert(schema.get_field_index("day"), day)
    return pa.Table.from_arrays(arrays, schema=schema)


def _ordered(schema: pa.Schema, pieces: list[pa.Table]) -> pa.Table:
    """Several shapes' tables as one, in source-offset order (each event gives
    a multi-shape table at most one row)."""
    if not pieces:
        return schema.empty_table()
    if len(pieces) == 1:
        return pieces[0]
    table = pa.concat_tables(pieces)
    return table.take(pc.sort_indices(table["src_offset"]))
