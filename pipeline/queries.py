"""The one query module: every warehouse read of the dashboard, replay and CLI.

Each query is ClickHouse SQL written once. ``{table}`` placeholders are the
only thing a backend changes (``deltaLakeLocal('…/table')`` for the lake,
``db.table`` for chDB/ClickHouse); user input only travels as typed query
parameters (``{name:Type}``), never formatted into the text.

Derived tables hold one partial row per contributing event (ddl/0001). The
queries fold them per entity with dedup-safe aggregates: ``any``/``min``/``max``
and ``uniqExact(event_id)`` give the same answer whether a row is present once
or twice, and ``LIMIT 1 BY event_id`` keeps one copy of an event. So results
are exact before merges, with duplicates from a crashed batch, and on Delta
(which never merges) alike. Filters are applied first on the narrow partial
rows (``IN`` sub-queries using the ORDER BY keys and skipping indexes), then
the few matching entities are folded.

Every function returns JSON-ready rows (times as 'YYYY-MM-DD hh:mm:ss.ffffff'
UTC strings) that are identical on every backend.
"""

# The SQL here is composed only of this module's constant fragments; user input
# travels as typed ClickHouse parameters, so S608 (string-built SQL) does not apply.
# ruff: noqa: S608

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from pipeline.warehouse.base import Warehouse

__all__ = [
    "QUERIES",
    "Query",
    "SessionFilter",
    "approval",
    "approval_events",
    "approval_writes",
    "approvals_list",
    "altered_bodies",
    "bodies",
    "body",
    "body_search",
    "collection_lineage",
    "checkpoints",
    "collection_history",
    "dead_letters",
    "events_by_type",
    "request_by_id",
    "session",
    "session_events",
    "session_raw_events",
    "session_requests",
    "sessions_count",
    "sessions_events",
    "sessions_requests",
    "sessions_list",
    "SESSION_WINDOWS",
    "stats_over_time",
    "stream_raw_events",
    "streams",
    "top_actors",
    "top_collections",
    "ticket_writes",
    "vector_lineage",
]

MAX_LIMIT = 10_000


@dataclass(frozen=True)
class Query:
    name: str
    sql: str
    doc: str

    def run(self, wh: Warehouse, **params: Any) -> list[dict[str, Any]]:
        return wh.query(self.sql, params)


#: Fold of the partial ``requests`` rows, restricted by ``{where}`` (a fixed
#: predicate of this module, never user text) and joined to the session's
#: subject (the actor of every request of the session).
_REQUEST_FOLD = """
SELECT
    r.*,
    coalesce(r.identity_subject, s.subject) AS subject
FROM (
    SELECT
        request_id,
        any(session_id) AS session_id,
        any(gateway_id) AS gateway_id,
        min(occurred_at) AS received_at,
        max(occurred_at) AS last_event_at,
        any(subject) AS identity_subject,
        any(method) AS method,
        any(host) AS host,
        any(path) AS path,
        any(query) AS query,
        any(product) AS product,
        anyIf(actions, type = 'RequestReceived') AS actions,
        anyIf(collections, type = 'RequestReceived') AS collections,
        any(operations_json) AS operations_json,
        any(op_count) AS op_count,
        any(id_count) AS id_count,
        any(vector_count) AS vector_count,
        any(request_body_sha256) AS request_body_sha256,
        any(request_body_size) AS request_body_size,
        any(outcome) AS decision,
        anyIf(matched_rules, type = 'PolicyDecided') AS matched_rules,
        anyIf(reasons, type = 'PolicyDecided') AS reasons,
        any(policy_sha256) AS policy_sha256,
        any(grant_id) AS grant_id,
        any(ticket_id) AS ticket_id,
        any(approval_id) AS approval_id,
        any(forwarded) AS forwarded,
        any(upstream) AS upstream,
        any(status) AS status,
        any(response_body_sha256) AS response_body_sha256,
        any(response_body_size) AS response_body_size,
        any(original_body_sha256) AS original_body_sha256,
        anyIf(masked_fields, type = 'ResponseRecorded') AS masked_fields,
        any(result_count) AS result_count,
        any(upstream_error) AS upstream_error,
        any(latency_us) AS latency_us,
        any(blocked_error) AS blocked_error,
        any(blocked_reason) AS blocked_reason,
        any(blocked_stage) AS blocked_stage,
        multiIf(
            countIf(type = 'RequestBlocked') > 0, 'blocked',
            countIf(type = 'ResponseRecorded') > 0, 'completed',
            countIf(type = 'RequestForwarded') > 0, 'forwarded',
            countIf(type = 'ApprovalRequested') > 0, 'held',
            'received'
        ) AS state,
        arraySort(groupUniqArray(type)) AS event_types,
        arraySort(groupUniqArray(schema_fingerprint)) AS schema_fingerprints
    FROM {requests}
    WHERE %(where)s
    GROUP BY request_id
) AS r
LEFT JOIN (
    SELECT session_id, any(subject) AS subject
    FROM {sessions}
    WHERE session_id IN (SELECT session_id FROM {requests} WHERE %(where)s)
    GROUP BY session_id
) AS s ON r.session_id = s.session_id
"""


def _request_fold(where: str) -> str:
    return _REQUEST_FOLD % {"where": where}


#: A session's summary: the fold of its partial ``sessions`` rows (restricted
#: by ``{rows}``, e.g. to a time window) and its number of events, which only
#: ``events`` knows (``sessions`` has no rows for RequestForwarded, approvals,
#: grants and the like). Both tables are read in one UNION ALL under one
#: ``{where}`` naming the sessions: ClickHouse pushes that filter into both
#: branches, evaluating an ``IN`` sub-query (a sessions-list page) once, and
#: ``events`` is ordered (in the lake: sorted) by session_id, so only these
#: sessions' rows are read. uniqExactIf(event_id) counts an event loaded twice
#: once; the other aggregates only see the ``sessions`` rows, as before (the
#: ``events`` branch reads no other column, and a session needs a row there).
_SESSION_FOLD = """
SELECT
    session_id,
    anyIf(gateway_id, in_sessions) AS gateway_id,
    any(subject) AS subject,
    any(issuer) AS issuer,
    any(client_address) AS client_address,
    any(token_id) AS token_id,
    any(client_session_name) AS client_session_name,
    any(user_agent) AS user_agent,
    minIf(occurred_at, in_sessions) AS started_at,
    maxIf(occurred_at, in_sessions) AS last_event_at,
    any(ended_reason) AS ended_reason,
    uniqExactIf(event_id, NOT in_sessions) AS event_count,
    uniqExactIf(request_id, type = 'RequestReceived') AS request_count,
    arraySort(groupUniqArrayArray(actions)) AS actions,
    arraySort(groupUniqArrayArray(collections)) AS collections,
    arraySort(groupUniqArrayIf(outcome, outcome IS NOT NULL AND outcome != 'blocked'))
        AS decisions,
    uniqExactIf(request_id, type = 'PolicyDecided' AND outcome = 'deny') AS denied_count,
    uniqExactIf(request_id, type = 'RequestBlocked') AS blocked_count
FROM (
    SELECT
        session_id, gateway_id, subject, issuer, client_address, token_id,
        client_session_name, user_agent, occurred_at, ended_reason, event_id, request_id,
        type, actions, collections, outcome, true AS in_sessions
    FROM {sessions}
    WHERE %(rows)s
    UNION ALL
    SELECT
        session_id, '', NULL, NULL, NULL, NULL,
        NULL, NULL, toDateTime64(0, 6, 'UTC'), NULL, event_id, NULL,
        '', [], [], NULL, false
    FROM {events}
)
WHERE %(where)s
GROUP BY session_id
HAVING countIf(in_sessions) > 0
"""

#: The sessions-list filters; an empty string means "no filter". Each guard is
#: repeated inside its sub-query, so an unused filter's sub-query is constant
#: false and reads nothing (ClickHouse runs IN sub-queries before the outer
#: WHERE, whatever the OR around them).
#:
#: ``{window}`` (a time, or '' for none) restricts everything to the sessions
#: whose rows all lie at or after it (see ``sessions_list``): every filter then
#: only needs rows at or after the window too (a session with an older row is
#: excluded anyway), so every sub-query skips the older files/partitions. The
#: bodies sub-query is the exception: a body is stored once, at its first
#: sending, which may be older than the session that sent it again.
_W = "parseDateTime64BestEffortOrNull({window:String}, 6, 'UTC')"
_IN_WINDOW = "({window:String} = '' OR occurred_at >= " + _W + ")"
#: One guarded fragment per filter (see above), in this order.
_FILTERS: dict[str, str] = {
    "actor": """({actor:String} = '' OR session_id IN (
        SELECT session_id FROM {sessions}
        WHERE {actor:String} != '' AND subject = {actor:String} AND %(w)s))""",
    "group": """({group:String} = '' OR session_id IN (
        SELECT session_id FROM {events}
        WHERE {group:String} != '' AND type = 'IdentityResolved' AND %(w)s
        AND has(JSONExtract(coalesce(payload_json, '{}'), 'groups', 'Array(String)'),
                {group:String})))""",
    "collection": """({collection:String} = '' OR session_id IN (
        SELECT session_id FROM {sessions}
        WHERE {collection:String} != '' AND has(collections, {collection:String}) AND %(w)s))""",
    "action": """({action:String} = '' OR session_id IN (
        SELECT session_id FROM {sessions}
        WHERE {action:String} != '' AND has(actions, {action:String}) AND %(w)s))""",
    "decision": """({decision:String} = '' OR session_id IN (
        SELECT session_id FROM {sessions}
        WHERE {decision:String} != '' AND outcome = {decision:String} AND %(w)s))""",
    "since": """({since:String} = '' OR session_id IN (
        SELECT session_id FROM {sessions}
        WHERE {since:String} != '' AND %(w)s
          AND occurred_at >= parseDateTime64BestEffortOrNull({since:String}, 6, 'UTC')))""",
    "until": """({until:String} = '' OR session_id IN (
        SELECT session_id FROM {sessions}
        WHERE {until:String} != '' AND %(w)s
          AND occurred_at < parseDateTime64BestEffortOrNull({until:String}, 6, 'UTC')))""",
    "body": """({body:String} = '' OR session_id IN (
        SELECT session_id FROM {requests}
        WHERE {body:String} != '' AND type IN ('RequestReceived', 'ResponseRecorded') AND %(w)s
          AND coalesce(request_body_sha256, response_body_sha256) IN (
            SELECT sha256 FROM {bodies}
            WHERE {body:String} != '' AND position(body, {body:String}) > 0)))""",
}
#: Only sessions lying wholly at or after the window (none has an older row).
_WINDOW_ONLY = (
    """({window:String} = '' OR session_id NOT IN (
        SELECT session_id FROM {sessions}
        WHERE {window:String} != '' AND occurred_at < """
    + _W
    + """
          AND session_id IN (
            SELECT session_id FROM {sessions}
            WHERE {window:String} != '' AND occurred_at >= """
    + _W
    + """)))"""
)


def _session_filter(used: frozenset[str] | None = None, windowed: bool = True) -> str:
    """The sessions-list predicate: every filter's fragment (``used=None``, the
    generic text in ``QUERIES``), or only those of ``used``, and the window
    exclusion only when ``windowed``. An unused fragment is constant true, but
    each of its table references still costs the lake a Delta snapshot (~13 ms
    of CPU each at 10M events), so ``sessions_list`` runs the trimmed text; a
    test checks that it answers exactly like the generic one."""
    parts = [f for name, f in _FILTERS.items() if used is None or name in used]
    parts.append("%(w)s")
    if windowed:
        parts.append(_WINDOW_ONLY)
    return ("\n    AND ".join(parts)) % {"w": _IN_WINDOW}


def _sessions_list_sql(where: str) -> str:
    #: The page's session ids: only session_id and occurred_at are read (on
    #: MergeTree without a window, from the sessions table's per-session
    #: projection, migration 0002), newest first.
    page = (
        """session_id IN (
    SELECT session_id FROM (
        SELECT session_id, min(occurred_at) AS first_at
        FROM {sessions}
        WHERE """
        + where
        + """
        GROUP BY session_id
        ORDER BY first_at DESC, session_id
        LIMIT {limit:UInt32} OFFSET {offset:UInt32}
    )
)"""
    )
    fold = _SESSION_FOLD % {"rows": _IN_WINDOW, "where": page}
    return "SELECT * FROM (" + fold + ") ORDER BY started_at DESC, session_id"


def _sessions_count_sql(where: str) -> str:
    return (
        """SELECT count() AS total FROM (
        SELECT session_id FROM {sessions} WHERE """
        + where
        + """
        GROUP BY session_id)"""
    )


_LIST_DOC = (
    "Sessions matching the filters, newest first, one page; with a window, only among "
    "the sessions that lie entirely at or after it."
)
_COUNT_DOC = "How many sessions match the filters (for pagination)."
SESSIONS_LIST = Query("sessions_list", _sessions_list_sql(_session_filter()), _LIST_DOC)
SESSIONS_COUNT = Query("sessions_count", _sessions_count_sql(_session_filter()), _COUNT_DOC)


@lru_cache(maxsize=512)
def _trimmed(kind: str, used: frozenset[str], windowed: bool) -> Query:
    """SESSIONS_LIST or SESSIONS_COUNT with only the fragments in use."""
    where = _session_filter(used, windowed)
    if kind == "sessions_list":
        return Query(kind, _sessions_list_sql(where), _LIST_DOC)
    return Query(kind, _sessions_count_sql(where), _COUNT_DOC)


def _used(params: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(name for name in _FILTERS if params.get(name))


SESSIONS_LATEST = Query(
    "sessions_latest",
    "SELECT toString(min(occurred_at)) AS earliest, toString(max(occurred_at)) AS latest "
    "FROM {sessions}",
    "The times of the oldest and newest session rows (the sessions list's windows).",
)
SESSION = Query(
    "session",
    _SESSION_FOLD % {"rows": "1", "where": "session_id = {session_id:String}"},
    "One session's summary.",
)

_EVENT_COLUMNS = """
    event_id, type, occurred_at, gateway_id, session_id, seq, stream_seq, prev_hash,
    request_id, subject, actions, collections, outcome, status, approval_id, body_sha256,
    schema_fingerprint, writer_version, payload_json
"""

SESSION_EVENTS = Query(
    "session_events",
    "SELECT"
    + _EVENT_COLUMNS
    + """FROM {events}
    WHERE session_id = {session_id:String}
    ORDER BY seq, event_id
    LIMIT 1 BY event_id
    LIMIT {limit:UInt32} OFFSET {offset:UInt32}""",
    "A session's events in chain order (the timeline).",
)
SESSION_RAW_EVENTS = Query(
    "session_raw_events",
    """SELECT event_id, seq, prev_hash, base64Encode(raw) AS raw_b64
    FROM {events}
    WHERE session_id = {session_id:String}
    ORDER BY seq, event_id
    LIMIT 1 BY event_id""",
    "A session's events as written (canonical Avro, base64): what the hash chain covers.",
)
#: several sessions at once, named by a JSON array of ids (any text is safe in it)
_SESSION_IDS = (
    "session_id IN (SELECT arrayJoin(JSONExtract({session_ids:String}, 'Array(String)')))"
)
SESSIONS_EVENTS = Query(
    "sessions_events",
    "SELECT"
    + _EVENT_COLUMNS
    + ", base64Encode(raw) AS raw_b64 FROM {events} WHERE "
    + _SESSION_IDS
    + """
    ORDER BY session_id, seq, event_id
    LIMIT 1 BY event_id""",
    "Several sessions' events in chain order, every one, with the bytes as written (an "
    "evidence export: one query per batch of sessions, no page limit).",
)
SESSIONS_REQUESTS = Query(
    "sessions_requests",
    "SELECT * FROM ("
    + _request_fold(
        "request_id IN (SELECT request_id FROM {requests} WHERE " + _SESSION_IDS + ")"
    )
    + ") ORDER BY session_id, received_at, request_id",
    "Several sessions' requests, one row each, in order within each session.",
)
SESSION_REQUESTS = Query(
    "session_requests",
    "SELECT * FROM ("
    + _request_fold(
        "request_id IN (SELECT request_id FROM {requests} WHERE session_id = {session_id:String})"
    )
    + ") ORDER BY received_at, request_id",
    "A session's requests in order, one row each.",
)
REQUEST_BY_ID = Query(
    "request_by_id",
    _request_fold("request_id = {request_id:String}"),
    "One request: identity, operations, decision, approval, status, latency, body hashes.",
)
_BODY_MATCH = """({kind:String} = '' OR kind = {kind:String})
      AND multiSearchAny(body, [{needle:String}])"""
BODY_SEARCH = Query(
    "body_search",
    """SELECT
        b.sha256 AS sha256, b.kind AS kind, b.size AS size, b.content_type AS content_type,
        r.first_seen AS first_seen, r.request_ids AS request_ids, b.snippet AS snippet
    FROM (
        SELECT
            sha256,
            kind,
            any(size) AS size,
            any(content_type) AS content_type,
            any(substring(body, greatest(1, toInt64(position(body, {needle:String})) - 60), 200))
                AS snippet
        FROM {bodies}
        WHERE """
    + _BODY_MATCH
    + """
        GROUP BY sha256, kind
    ) AS b
    LEFT JOIN (
        SELECT
            sha,
            min(occurred_at) AS first_seen,
            arraySort(groupUniqArray(request_id)) AS request_ids
        FROM (
            SELECT request_id, occurred_at,
                coalesce(request_body_sha256, response_body_sha256) AS sha
            FROM {requests}
            WHERE type IN ('RequestReceived', 'ResponseRecorded')
        )
        WHERE sha IN (SELECT sha256 FROM {bodies} WHERE """
    + _BODY_MATCH
    + """)
        GROUP BY sha
    ) AS r ON b.sha256 = r.sha
    ORDER BY first_seen DESC, sha256, kind
    LIMIT {limit:UInt32}""",
    "Bodies (request or response, masked as recorded) that contain a substring, with the "
    "requests that sent or received them. A body is stored once per sha256.",
)
VECTOR_LINEAGE = Query(
    "vector_lineage",
    """SELECT
        l.event_id AS event_id, l.op_index AS op_index, l.action AS action,
        l.occurred_at AS occurred_at, l.session_id AS session_id, l.request_id AS request_id,
        l.product AS product, l.ids_known AS ids_known, l.id_count AS id_count,
        l.vector_count AS vector_count, l.filter_present AS filter_present,
        l.filter_sha256 AS filter_sha256, l.bulk AS bulk,
        r.subject AS subject, r.decision AS decision, r.state AS state, r.status AS status,
        r.approval_id AS approval_id, r.ticket_id AS ticket_id, r.grant_id AS grant_id
    FROM (
        SELECT * FROM {vector_lineage}
        WHERE collection = {collection:String}
          AND (point_id = {point_id:String} OR (point_id = '' AND {include_unknown:Bool}))
        ORDER BY occurred_at, event_id, op_index
        LIMIT 1 BY event_id, op_index
    ) AS l
    LEFT JOIN ("""
    + _request_fold(
        """request_id IN (SELECT request_id FROM {vector_lineage}
        WHERE collection = {collection:String}
          AND (point_id = {point_id:String} OR (point_id = '' AND {include_unknown:Bool})))"""
    )
    + """) AS r ON l.request_id = r.request_id
    ORDER BY occurred_at, event_id, op_index""",
    "Every write or delete that named a point id (who, when, session, request, decision, "
    "approval, ticket, grant); with include_unknown, also the collection's operations whose "
    "ids are unknown (delete by filter) and so may have touched it.",
)
COLLECTION_HISTORY = Query(
    "collection_history",
    "SELECT * FROM ("
    + _request_fold(
        """request_id IN (SELECT request_id FROM {requests}
        WHERE type = 'RequestReceived' AND has(collections, {collection:String})
          AND ({action:String} = '' OR has(actions, {action:String}))
          AND ({since:String} = ''
               OR occurred_at >= parseDateTime64BestEffortOrNull({since:String}, 6, 'UTC'))
          AND ({until:String} = ''
               OR occurred_at < parseDateTime64BestEffortOrNull({until:String}, 6, 'UTC')))"""
    )
    + ") ORDER BY received_at, request_id LIMIT {limit:UInt32} OFFSET {offset:UInt32}",
    "Every request that touched a collection, oldest first (optionally one action).",
)
#: One approval's status as the gateways settle it (capture.approvals.state
#: ``_settle``, the fold every gateway and the approvals service act on), not a
#: simpler count: votes are taken in time order (then event id) until a deny or
#: the min_approvals-th approver; a vote by the requester (same issuer and
#: subject), a vote signed in at another issuer than the requester's, a second
#: vote by one approver, and votes at or after the deadline (expires_at, or an
#: earlier forced ApprovalExpired's expired_at) never count.
#: ``approvers``/``deniers`` are the votes that counted; ``decided_at`` is the
#: settling vote's time, or the first expiry's. The issuers and expired_at are
#: columns since migration 0005; rows loaded before it have NULL there, and the
#: fold then reads them from the events' payloads, by (session_id, event_id),
#: the events table's key, and only for the approvals that need them: one with
#: a vote or an expiry (every vote's issuer matters). For the others (pending,
#: no vote) nothing read there changes the answer (reading payload_json made
#: the list ~10x slower; `warehouse rebuild` fills the columns).
#: Restricted by ``{where}`` (a fixed predicate of this module).
_APPROVAL_FOLD = """
SELECT
    approval_id, session_id, request_id, kind, requester_subject, request_sha256,
    min_approvals, expires_at, mode, reason, blast_radius, actions, collections,
    operations_json, requested_at, grant_id,
    multiIf(denied, 'denied', settle > 0, 'approved', has_expiry, 'expired', 'pending')
        AS status,
    arraySort(arrayMap(v -> v.5, arrayFilter(v -> v.3 = 'approve', counted))) AS approvers,
    arraySort(arrayMap(v -> v.5, arrayFilter(v -> v.3 = 'deny', counted))) AS deniers,
    multiIf(settle > 0, kept[settle].1, has_expiry, first_expiry, NULL) AS decided_at
FROM (SELECT *, if(settle > 0, arraySlice(kept, 1, settle), kept) AS counted
FROM (SELECT *, if(denied, i_deny, i_enough) AS settle
FROM (SELECT *, i_deny > 0 AND (i_enough = 0 OR i_deny < i_enough) AS denied
FROM (SELECT *,
    indexOf(arrayMap(v -> v.3, kept), 'deny') AS i_deny,
    arrayFirstIndex(
        c -> c >= ifNull(min_approvals, 1),
        arrayCumSum(arrayMap(v -> toUInt32(v.3 = 'approve'), kept))) AS i_enough
FROM (SELECT *,
    arrayFilter(
        (v, n) -> n = 1, on_time, arrayEnumerateUniq(arrayMap(v -> (v.4, v.5), on_time)))
        AS kept
FROM (SELECT *,
    arrayFilter(
        v -> (v.4, v.5) != (requester_issuer, ifNull(requester_subject, ''))
            AND v.4 = requester_issuer
            AND v.1 < if(has_expiry, least(deadline_at, first_expiry), deadline_at),
        votes) AS on_time
FROM (
    SELECT
        a.approval_id AS approval_id,
        anyIf(a.session_id, a.type = 'ApprovalRequested') AS session_id,
        anyIf(a.request_id, a.type = 'ApprovalRequested') AS request_id,
        any(a.kind) AS kind,
        any(a.requester_subject) AS requester_subject,
        anyIf(ifNull(a.requester_issuer,
                     JSONExtractString(e.payload_json, 'requester_issuer')),
              a.type = 'ApprovalRequested') AS requester_issuer,
        any(a.request_sha256) AS request_sha256,
        any(a.min_approvals) AS min_approvals,
        any(a.expires_at) AS expires_at,
        ifNull(any(a.expires_at), toDateTime64('2299-12-31 00:00:00', 6, 'UTC'))
            AS deadline_at,
        any(a.mode) AS mode,
        any(a.reason) AS reason,
        any(a.blast_radius) AS blast_radius,
        anyIf(a.actions, a.type = 'ApprovalRequested') AS actions,
        anyIf(a.collections, a.type = 'ApprovalRequested') AS collections,
        any(a.operations_json) AS operations_json,
        minIf(a.occurred_at, a.type = 'ApprovalRequested') AS requested_at,
        any(a.grant_id) AS grant_id,
        countIf(a.type = 'ApprovalExpired') > 0 AS has_expiry,
        minIf(ifNull(a.expired_at, parseDateTime64BestEffortOrNull(
                  JSONExtractString(e.payload_json, 'expired_at'), 6, 'UTC')),
              a.type = 'ApprovalExpired') AS first_expiry,
        arraySort(
            v -> (v.1, v.2),
            groupArrayIf(
                (a.occurred_at, a.event_id, ifNull(a.decision, ''),
                 ifNull(a.approver_issuer,
                        JSONExtractString(e.payload_json, 'approver_issuer')),
                 ifNull(a.approver_subject, '')),
                a.type = 'ApprovalDecided')) AS votes
    FROM (SELECT * FROM {approvals} WHERE %(where)s) AS a
    LEFT JOIN (
        SELECT event_id, any(payload_json) AS payload_json
        FROM {events}
        WHERE (session_id, event_id) IN (
            SELECT session_id, event_id FROM {approvals}
            WHERE approval_id IN (
                SELECT approval_id FROM {approvals}
                WHERE %(where)s
                GROUP BY approval_id
                HAVING countIf(type IN ('ApprovalExpired', 'ApprovalDecided')) > 0
                   AND countIf(
                        (type = 'ApprovalRequested' AND requester_issuer IS NULL)
                        OR (type = 'ApprovalDecided' AND approver_issuer IS NULL)
                        OR (type = 'ApprovalExpired' AND expired_at IS NULL)) > 0)
              AND type IN ('ApprovalRequested', 'ApprovalDecided',
                           'ApprovalExpired'))
        GROUP BY event_id
    ) AS e ON a.event_id = e.event_id
    GROUP BY a.approval_id
)))))))
"""
#: the fold without the payload fallback: for a warehouse whose approvals rows
#: all carry the 0005 columns (``_legacy_approval_rows`` is false), where the
#: fallback could find nothing to read and only costs planning
_JOIN_START = _APPROVAL_FOLD.index("    LEFT JOIN (")
_JOIN_END = _APPROVAL_FOLD.index(") AS e ON a.event_id = e.event_id") + len(
    ") AS e ON a.event_id = e.event_id\n"
)
_APPROVAL_FOLD_COLUMNS = (
    _APPROVAL_FOLD[:_JOIN_START] + _APPROVAL_FOLD[_JOIN_END:]
).replace("e.payload_json", "''")

APPROVAL = Query(
    "approval",
    _APPROVAL_FOLD % {"where": "approval_id = {approval_id:String}"},
    "One approval, settled as the gateways settle it (votes in time order until a deny or "
    "the N-th approver; the requester's own, repeated and late votes do not count).",
)
APPROVAL_EVENTS = Query(
    "approval_events",
    "SELECT"
    + _EVENT_COLUMNS
    + """, base64Encode(raw) AS raw_b64
    FROM {events}
    WHERE session_id IN (
            SELECT session_id FROM {approvals} WHERE approval_id = {approval_id:String})
      AND event_id IN (
            SELECT event_id FROM {approvals} WHERE approval_id = {approval_id:String})
    ORDER BY occurred_at, event_id
    LIMIT 1 BY event_id""",
    "The events that settle one approval, as written: its request, the votes, expiries and "
    "the grant it issued (an evidence bundle ships them with their proofs).",
)
def _approvals_page(fold: str) -> str:
    """A page of approvals folded by ``fold``, newest first, of one status or all."""
    return (
        "SELECT * FROM ("
        + fold % {"where": "1"}
        + """) WHERE {status:String} = '' OR status = {status:String}
    ORDER BY requested_at DESC, approval_id LIMIT {limit:UInt32} OFFSET {offset:UInt32}"""
    )


APPROVALS_LIST = Query(
    "approvals_list",
    _approvals_page(_APPROVAL_FOLD),
    "Approvals, newest first, optionally of one status (pending, approved, denied, expired).",
)
APPROVAL_FROM_COLUMNS = Query(
    "approval_from_columns",
    _APPROVAL_FOLD_COLUMNS % {"where": "approval_id = {approval_id:String}"},
    "``approval`` for a warehouse whose approvals rows all carry the issuers and "
    "expired_at (migration 0005): the same answer, without the payload fallback.",
)
APPROVALS_LIST_FROM_COLUMNS = Query(
    "approvals_list_from_columns",
    _approvals_page(_APPROVAL_FOLD_COLUMNS),
    "``approvals_list`` without the payload fallback (see approval_from_columns).",
)
LEGACY_APPROVAL_ROWS = Query(
    "legacy_approval_rows",
    """SELECT count() AS n FROM {approvals}
    WHERE (type = 'ApprovalRequested' AND requester_issuer IS NULL)
       OR (type = 'ApprovalDecided' AND approver_issuer IS NULL)
       OR (type = 'ApprovalExpired' AND expired_at IS NULL)""",
    "Approvals rows loaded before migration 0005 (without the issuers or expired_at).",
)
APPROVAL_WRITES = Query(
    "approval_writes",
    "SELECT * FROM ("
    + _request_fold(
        """request_id IN (
            SELECT request_id FROM {requests} WHERE approval_id = {approval_id:String})"""
    )
    + ") ORDER BY received_at, request_id",
    "The requests an approval released or held, with what they did.",
)
STATS_OVER_TIME = Query(
    "stats_over_time",
    """SELECT
        toStartOfInterval(occurred_at, toIntervalSecond({bucket_s:UInt32})) AS bucket,
        uniqExact(event_id) AS events,
        uniqExactIf(request_id, type = 'RequestReceived') AS requests,
        uniqExactIf(request_id, type = 'PolicyDecided' AND outcome = 'deny') AS denied,
        uniqExactIf(request_id, type = 'PolicyDecided' AND outcome = 'require_approval')
            AS approval_required,
        uniqExactIf(request_id, type = 'RequestBlocked') AS blocked,
        uniqExact(session_id) AS sessions,
        uniqExactIf(subject, subject IS NOT NULL) AS subjects
    FROM {events}
    WHERE ({since:String} = ''
           OR occurred_at >= parseDateTime64BestEffortOrNull({since:String}, 6, 'UTC'))
      AND ({until:String} = ''
           OR occurred_at < parseDateTime64BestEffortOrNull({until:String}, 6, 'UTC'))
    GROUP BY bucket
    ORDER BY bucket""",
    "Events, requests, denials, blocks, sessions and subjects per time bucket.",
)
DEAD_LETTERS = Query(
    "dead_letters",
    """SELECT source, src_partition, src_offset, any(record_key) AS record_key,
        any(error) AS error, any(length(raw)) AS size, min(loaded_at) AS loaded_at
    FROM {dead_letters}
    GROUP BY source, src_partition, src_offset
    ORDER BY source, src_partition, src_offset
    LIMIT {limit:UInt32} OFFSET {offset:UInt32}""",
    "Records that did not decode, with their source position and the error.",
)
CHECKPOINTS = Query(
    "checkpoints",
    """SELECT origin, tree_size, event_id, any(occurred_at) AS occurred_at,
        any(gateway_id) AS gateway_id, any(root_hash) AS root_hash,
        any(signed_note) AS signed_note, any(key_id) AS key_id
    FROM {checkpoints}
    WHERE {origin:String} = '' OR origin = {origin:String}
    GROUP BY origin, tree_size, event_id
    ORDER BY origin, tree_size, event_id""",
    "The gateways' signed Merkle checkpoints.",
)

BODY = Query(
    "body",
    """SELECT sha256, kind, any(size) AS size, any(content_type) AS content_type,
        base64Encode(any(body)) AS body_b64
    FROM {bodies}
    WHERE sha256 = {sha256:String}
    GROUP BY sha256, kind
    ORDER BY kind""",
    "A stored body by its sha256 (absent once it expired or was redacted).",
)
BODIES = Query(
    "bodies",
    """SELECT sha256, any(kind) AS kind, any(size) AS size, any(content_type) AS content_type,
        base64Encode(any(body)) AS body_b64
    FROM {bodies}
    WHERE sha256 IN (SELECT arrayJoin(splitByChar(',', {sha256s:String})))
    GROUP BY sha256
    ORDER BY sha256""",
    "Several stored bodies at once (a session's timeline), by comma-separated sha256s.",
)
COLLECTION_LINEAGE = Query(
    "collection_lineage",
    """SELECT
        l.point_id AS point_id, l.event_id AS event_id, l.op_index AS op_index,
        l.action AS action, l.occurred_at AS occurred_at, l.session_id AS session_id,
        l.request_id AS request_id, l.product AS product, l.ids_known AS ids_known,
        l.id_count AS id_count, l.vector_count AS vector_count,
        l.filter_present AS filter_present, l.filter_sha256 AS filter_sha256, l.bulk AS bulk,
        r.subject AS subject, r.decision AS decision, r.state AS state, r.status AS status,
        r.approval_id AS approval_id, r.ticket_id AS ticket_id, r.grant_id AS grant_id,
        r.result_count AS result_count, r.method AS method, r.path AS path
    FROM (
        SELECT * FROM {vector_lineage}
        WHERE collection = {collection:String}
          AND ({until:String} = ''
               OR occurred_at < parseDateTime64BestEffortOrNull({until:String}, 6, 'UTC'))
        ORDER BY occurred_at, event_id, op_index, point_id
        LIMIT 1 BY event_id, op_index, point_id
    ) AS l
    LEFT JOIN ("""
    + _request_fold(
        """request_id IN (SELECT request_id FROM {vector_lineage}
        WHERE collection = {collection:String})"""
    )
    + """) AS r ON l.request_id = r.request_id
    ORDER BY occurred_at, event_id, op_index, point_id""",
    "Every write or delete of a collection before a time (all ids, and the operations "
    "whose ids are unknown), with who, decision, status, approval, ticket and grant: the "
    "input of the state-at-a-time reconstruction.",
)
ALTERED_BODIES = Query(
    "altered_bodies",
    """SELECT sha256, kind, event_id, request_id, lower(hex(SHA256(body))) AS actual_sha256
    FROM {bodies}
    WHERE lower(hex(SHA256(body))) != sha256
    ORDER BY sha256, kind, event_id
    LIMIT 1 BY sha256, kind, event_id""",
    "Stored bodies whose bytes no longer hash to their sha256 (tampering or corruption).",
)
TICKET_WRITES = Query(
    "ticket_writes",
    "SELECT * FROM ("
    + _request_fold(
        """request_id IN (
            SELECT request_id FROM {requests} WHERE ticket_id = {ticket_id:String})"""
    )
    + ") ORDER BY received_at, request_id",
    "The requests a change ticket (an approval of kind ticket) allowed, with what they did.",
)
STREAMS = Query(
    "streams",
    """SELECT gateway_id AS stream, uniqExact(event_id) AS events,
        min(stream_seq) AS first_stream_seq, max(stream_seq) AS last_stream_seq
    FROM {events}
    GROUP BY gateway_id
    ORDER BY gateway_id""",
    "Every gateway stream in the warehouse with its event count.",
)
STREAM_RAW_EVENTS = Query(
    "stream_raw_events",
    """SELECT event_id, stream_seq, session_id, seq, base64Encode(raw) AS raw_b64
    FROM {events}
    WHERE gateway_id = {stream:String}
    ORDER BY stream_seq, event_id
    LIMIT 1 BY event_id""",
    "One gateway stream's events as written, in stream_seq order (Merkle leaves).",
)

TOP_ACTORS = Query(
    "top_actors",
    """SELECT subject, sum(n_requests) AS requests, sum(n_denied) AS denied,
        sum(n_held) AS held, uniqExact(session_id) AS sessions
    FROM (
        SELECT session_id, any(subject) AS subject,
            uniqExactIf(request_id, type = 'RequestReceived') AS n_requests,
            uniqExactIf(request_id, type = 'PolicyDecided' AND outcome = 'deny') AS n_denied,
            uniqExactIf(request_id, type = 'PolicyDecided' AND outcome = 'require_approval')
                AS n_held
        FROM {sessions}
        WHERE session_id IN (
            SELECT session_id FROM {sessions}
            WHERE {since:String} = ''
               OR occurred_at >= parseDateTime64BestEffortOrNull({since:String}, 6, 'UTC'))
        GROUP BY session_id
    )
    WHERE subject IS NOT NULL AND n_requests > 0
    GROUP BY subject
    ORDER BY requests DESC, subject
    LIMIT {limit:UInt32}""",
    "The subjects with the most requests (sessions active since a time), with their "
    "denials and held requests.",
)
TOP_COLLECTIONS = Query(
    "top_collections",
    """SELECT collection, uniqExact(request_id) AS requests,
        uniqExactIf(request_id, has(actions, 'write') OR has(actions, 'delete')) AS writes
    FROM {requests}
    ARRAY JOIN collections AS collection
    WHERE type = 'RequestReceived'
      AND ({since:String} = ''
           OR occurred_at >= parseDateTime64BestEffortOrNull({since:String}, 6, 'UTC'))
    GROUP BY collection
    ORDER BY requests DESC, collection
    LIMIT {limit:UInt32}""",
    "The collections with the most requests since a time, and how many of them wrote.",
)
EVENTS_BY_TYPE = Query(
    "events_by_type",
    "SELECT"
    + _EVENT_COLUMNS
    + """FROM {events}
    WHERE type = {type:String}
    ORDER BY occurred_at DESC, event_id
    LIMIT 1 BY event_id
    LIMIT {limit:UInt32}""",
    "The newest events of one type (e.g. PolicyChanged for the policy history).",
)

#: Every query by name (the CLI, dashboard and the backend-equality test use it).
QUERIES: dict[str, Query] = {
    q.name: q
    for q in (
        SESSIONS_LIST,
        SESSIONS_COUNT,
        SESSIONS_LATEST,
        SESSION,
        SESSION_EVENTS,
        SESSION_RAW_EVENTS,
        SESSION_REQUESTS,
        SESSIONS_EVENTS,
        SESSIONS_REQUESTS,
        REQUEST_BY_ID,
        BODY_SEARCH,
        VECTOR_LINEAGE,
        COLLECTION_HISTORY,
        APPROVAL,
        APPROVAL_EVENTS,
        APPROVALS_LIST,
        APPROVAL_FROM_COLUMNS,
        APPROVALS_LIST_FROM_COLUMNS,
        LEGACY_APPROVAL_ROWS,
        APPROVAL_WRITES,
        STATS_OVER_TIME,
        DEAD_LETTERS,
        CHECKPOINTS,
        BODY,
        COLLECTION_LINEAGE,
        ALTERED_BODIES,
        TICKET_WRITES,
        STREAMS,
        STREAM_RAW_EVENTS,
        TOP_ACTORS,
        TOP_COLLECTIONS,
        EVENTS_BY_TYPE,
        BODIES,
    )
}


# -- typed entry points ------------------------------------------------------------------
def _time(value: datetime | str | None) -> str:
    """A time parameter as ISO 8601 UTC; '' for none. Naive times are UTC."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"time {value!r} is not ISO 8601; use e.g. 2026-03-01 or 2026-03-01T09:00:00Z"
            ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _limit(limit: int) -> int:
    if not 0 < limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    return limit


def _offset(offset: int) -> int:
    if offset < 0:
        raise ValueError(f"offset must be 0 or more, not {offset}")
    return offset


@dataclass(frozen=True)
class SessionFilter:
    actor: str | None = None
    collection: str | None = None
    #: an IdP group the session's caller held (IdentityResolved)
    group: str | None = None
    action: str | None = None
    decision: str | None = None
    since: datetime | str | None = None
    until: datetime | str | None = None
    #: a substring of a masked request or response body of one of its requests
    body: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def params(self) -> dict[str, Any]:
        return {
            "actor": self.actor or "",
            "group": self.group or "",
            "collection": self.collection or "",
            "action": self.action or "",
            "decision": self.decision or "",
            "since": _time(self.since),
            "until": _time(self.until),
            "body": self.body or "",
        }


#: The windows ``sessions_list`` tries, back from the newest session row.
SESSION_WINDOWS = (timedelta(days=1), timedelta(days=7), timedelta(days=31))


def sessions_list(
    wh: Warehouse, filters: SessionFilter | None = None, *, limit: int = 50, offset: int = 0
) -> list[dict[str, Any]]:
    """One page of the sessions matching ``filters``, newest first (by their
    first event).

    The page is searched in windows back from the newest session row (1 day,
    7 days, 31 days, then everything): within a window W only the
    sessions whose rows all lie at or after W's start are candidates, and only
    W's rows are read. That is exact, not an estimate: if the window holds at
    least ``offset + limit`` matching sessions, every session outside it
    started earlier than all of them, so the page is the same as over
    everything. Otherwise the next, wider window is tried. A window that
    reaches back past the oldest row, or a body filter, means one plain pass."""
    params = (filters or SessionFilter()).params()
    used = _used(params)
    limit, offset = _limit(limit), _offset(offset)
    # The body filter scans every stored body whatever the window (a body is
    # stored at its first sending), so repeating it per window costs more
    # than one pass over everything.
    if not params["body"]:
        span_rows = SESSIONS_LATEST.run(wh)
        # an empty table answers the epoch (ClickHouse's default for min/max)
        if span_rows and not str(span_rows[0]["latest"]).startswith("1970"):
            start = _parse_time(str(span_rows[0]["earliest"]))
            end = _parse_time(str(span_rows[0]["latest"]))
            if params["until"]:
                end = min(end, _parse_time(params["until"]))
            for span in SESSION_WINDOWS:
                if end - span <= start:
                    break  # this window holds everything: one plain pass
                rows = _trimmed("sessions_list", used, True).run(
                    wh, **params, window=_time(end - span), limit=limit, offset=offset
                )
                if len(rows) >= limit:
                    return rows
    return _trimmed("sessions_list", used, False).run(
        wh, **params, window="", limit=limit, offset=offset
    )


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def sessions_count(wh: Warehouse, filters: SessionFilter | None = None) -> int:
    params = (filters or SessionFilter()).params()
    rows = _trimmed("sessions_count", _used(params), False).run(wh, **params, window="")
    return int(rows[0]["total"]) if rows else 0


def session(wh: Warehouse, session_id: str) -> dict[str, Any] | None:
    rows = SESSION.run(wh, session_id=session_id)
    return rows[0] if rows else None


def session_events(
    wh: Warehouse, session_id: str, *, limit: int = MAX_LIMIT, offset: int = 0
) -> list[dict[str, Any]]:
    return SESSION_EVENTS.run(
        wh, session_id=session_id, limit=_limit(limit), offset=_offset(offset)
    )


def session_raw_events(wh: Warehouse, session_id: str) -> list[dict[str, Any]]:
    return SESSION_RAW_EVENTS.run(wh, session_id=session_id)


def session_requests(wh: Warehouse, session_id: str) -> list[dict[str, Any]]:
    return SESSION_REQUESTS.run(wh, session_id=session_id)


def sessions_events(wh: Warehouse, session_ids: list[str]) -> list[dict[str, Any]]:
    """Every event of ``session_ids`` (ordered by session, then seq), with ``raw_b64``."""
    import json

    return SESSIONS_EVENTS.run(wh, session_ids=json.dumps(list(session_ids)))


def sessions_requests(wh: Warehouse, session_ids: list[str]) -> list[dict[str, Any]]:
    import json

    return SESSIONS_REQUESTS.run(wh, session_ids=json.dumps(list(session_ids)))


def request_by_id(wh: Warehouse, request_id: str) -> dict[str, Any] | None:
    rows = REQUEST_BY_ID.run(wh, request_id=request_id)
    return rows[0] if rows else None


def body_search(
    wh: Warehouse, needle: str, *, kind: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    if not needle:
        raise ValueError("search text is empty; give the substring to look for")
    if kind not in (None, "request", "response"):
        raise ValueError(f"kind must be request or response, not {kind!r}")
    return BODY_SEARCH.run(wh, needle=needle, kind=kind or "", limit=_limit(limit))


def vector_lineage(
    wh: Warehouse, collection: str, point_id: str, *, include_unknown: bool = True
) -> list[dict[str, Any]]:
    if not point_id:
        raise ValueError("point id is empty")
    return VECTOR_LINEAGE.run(
        wh, collection=collection, point_id=point_id, include_unknown=include_unknown
    )


def collection_history(
    wh: Warehouse,
    collection: str,
    *,
    action: str | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> list[dict[str, Any]]:
    return COLLECTION_HISTORY.run(
        wh,
        collection=collection,
        action=action or "",
        since=_time(since),
        until=_time(until),
        limit=_limit(limit),
        offset=_offset(offset),
    )


#: warehouses seen to hold no approvals row from before migration 0005, and
#: when (monotonic s). Every load since fills the columns; the check is renewed
#: after a minute anyway, in case a loader of an older version still writes
#: (a rolling upgrade).
_NO_LEGACY_ROWS: weakref.WeakKeyDictionary[Warehouse, float] = weakref.WeakKeyDictionary()
_LEGACY_RECHECK_S = 60.0


def _legacy_approval_rows(wh: Warehouse) -> bool:
    seen = _NO_LEGACY_ROWS.get(wh)
    if seen is not None and time.monotonic() - seen < _LEGACY_RECHECK_S:
        return False
    rows = LEGACY_APPROVAL_ROWS.run(wh)
    if rows and int(rows[0]["n"]) > 0:
        _NO_LEGACY_ROWS.pop(wh, None)
        return True
    _NO_LEGACY_ROWS[wh] = time.monotonic()
    return False


def approval(wh: Warehouse, approval_id: str) -> dict[str, Any] | None:
    query = APPROVAL if _legacy_approval_rows(wh) else APPROVAL_FROM_COLUMNS
    rows = query.run(wh, approval_id=approval_id)
    return rows[0] if rows else None


def approval_events(wh: Warehouse, approval_id: str) -> list[dict[str, Any]]:
    return APPROVAL_EVENTS.run(wh, approval_id=approval_id)


def approvals_list(
    wh: Warehouse, *, status: str | None = None, limit: int = 100, offset: int = 0
) -> list[dict[str, Any]]:
    query = APPROVALS_LIST if _legacy_approval_rows(wh) else APPROVALS_LIST_FROM_COLUMNS
    return query.run(wh, status=status or "", limit=_limit(limit), offset=_offset(offset))


def approval_writes(wh: Warehouse, approval_id: str) -> list[dict[str, Any]]:
    return APPROVAL_WRITES.run(wh, approval_id=approval_id)


def stats_over_time(
    wh: Warehouse,
    *,
    bucket_s: int = 3600,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> list[dict[str, Any]]:
    if bucket_s <= 0:
        raise ValueError("bucket_s must be positive")
    return STATS_OVER_TIME.run(wh, bucket_s=bucket_s, since=_time(since), until=_time(until))


def dead_letters(wh: Warehouse, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    return DEAD_LETTERS.run(wh, limit=_limit(limit), offset=_offset(offset))


def checkpoints(wh: Warehouse, *, origin: str | None = None) -> list[dict[str, Any]]:
    return CHECKPOINTS.run(wh, origin=origin or "")


def body(wh: Warehouse, sha256: str) -> bytes | None:
    """A stored body by sha256, or None once it expired or was redacted."""
    import base64

    rows = BODY.run(wh, sha256=sha256)
    return base64.b64decode(rows[0]["body_b64"]) if rows else None


def collection_lineage(
    wh: Warehouse, collection: str, *, until: datetime | str | None = None
) -> list[dict[str, Any]]:
    return COLLECTION_LINEAGE.run(wh, collection=collection, until=_time(until))


def streams(wh: Warehouse) -> list[dict[str, Any]]:
    return STREAMS.run(wh)


def stream_raw_events(wh: Warehouse, stream: str) -> list[dict[str, Any]]:
    return STREAM_RAW_EVENTS.run(wh, stream=stream)


def ticket_writes(wh: Warehouse, ticket_id: str) -> list[dict[str, Any]]:
    return TICKET_WRITES.run(wh, ticket_id=ticket_id)


def top_actors(
    wh: Warehouse, *, since: datetime | str | None = None, limit: int = 10
) -> list[dict[str, Any]]:
    return TOP_ACTORS.run(wh, since=_time(since), limit=_limit(limit))


def top_collections(
    wh: Warehouse, *, since: datetime | str | None = None, limit: int = 10
) -> list[dict[str, Any]]:
    return TOP_COLLECTIONS.run(wh, since=_time(since), limit=_limit(limit))


def events_by_type(wh: Warehouse, event_type: str, *, limit: int = 100) -> list[dict[str, Any]]:
    return EVENTS_BY_TYPE.run(wh, type=event_type, limit=_limit(limit))


def altered_bodies(wh: Warehouse) -> list[dict[str, Any]]:
    return ALTERED_BODIES.run(wh)


def bodies(wh: Warehouse, sha256s: list[str]) -> dict[str, bytes]:
    """sha256 → body for those of ``sha256s`` still stored (one query)."""
    import base64

    wanted = sorted(set(sha256s))
    if not wanted:
        return {}
    if len(wanted) > MAX_LIMIT:
        raise ValueError(f"at most {MAX_LIMIT} bodies at once, not {len(wanted)}")
    if any(not c.isalnum() for sha in wanted for c in sha):
        raise ValueError("a sha256 is hex digits only")
    return {
        r["sha256"]: base64.b64decode(r["body_b64"])
        for r in BODIES.run(wh, sha256s=",".join(wanted))
    }
