"""Review context: what an approver is asked to approve, and how much it touches.

An approver must see the operations, the collections, the ids and, for a
delete or update *by filter*, how many points the filter selects. The ids of
such a request are unknown until it runs, so the gateway asks the upstream
first, with a read-only count call made with the gateway's own credential:

========  =============================================  ===================================
product   request held                                   count call
========  =============================================  ===================================
qdrant    ``C/points/delete``, ``vectors/delete``,       ``POST C/points/count {filter,
          ``payload/delete``, ``payload/clear``,         exact: true}`` → ``result.count``
          ``POST|PUT C/points/payload`` with a filter
chroma    ``.../collections/{id}/delete`` with           ``POST .../collections/{id}/get
          ``where`` / ``where_document``                 {where, where_document, ids,
                                                         include: []}`` → ``len(ids)``
pinecone  ``/vectors/delete`` with ``filter`` or         ``POST /describe_index_stats
          ``deleteAll``                                  {filter}`` → the namespace's
                                                         ``vectorCount``
weaviate  ``DELETE /v1/batch/objects``                   the same request with
                                                         ``dryRun: true`` → ``results.matches``
milvus    ``/v2/vectordb/entities/delete`` with          ``POST /v2/vectordb/entities/query
          ``filter``                                     {filter, outputFields:[count(*)]}``
========  =============================================  ===================================

:func:`count_request` is pure: it maps the held request to the count call (or
None). :func:`blast_radius` makes the calls and records each one as events in
the gateway's own session (``RequestReceived``, ``PolicyDecided``,
``RequestForwarded``, ``ResponseRecorded``, request id ``<id>.review``), made
durable before the call goes upstream, like every other request. The result is
stored in ``ApprovalRequested.blast_radius``: the ids a request names plus what
the count calls found. A count races with concurrent writers; it is a best
effort, and ``None`` when a count was not possible (the reason is returned).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from capture.config import CREDENTIAL_HEADERS, GatewayConfig, Route
from capture.types import Product
from schemas.models import (
    ActionClass,
    Event,
    Operation,
    PolicyDecided,
    RequestForwarded,
    RequestReceived,
    ResponseRecorded,
)

__all__ = [
    "CountRequest",
    "Record",
    "Review",
    "blast_radius",
    "count_request",
    "known_ids",
]

log = logging.getLogger("embedguard.review")

#: Appends events durably (raises EventLogError); given (type, body) pairs.
Record = Callable[[list[tuple[type[Event], dict[str, Any]]]], Awaitable[None]]

_COUNT_TIMEOUT_S = 10.0
_MAX_RESPONSE = 16 * 1024 * 1024


@dataclass(frozen=True)
class CountRequest:
    """A read-only request whose answer says how many points a filter selects."""

    method: str
    path: str
    body: bytes
    collection: str | None
    parse: Callable[[Any], int]
    #: the most the held request can touch (Chroma's delete ``limit``)
    cap: int | None = None

    @property
    def body_sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class Review:
    """The review context stored with an approval request."""

    #: points the request touches: named ids plus what the count calls found
    blast_radius: int | None
    #: why the number is missing or partial ("" when complete)
    note: str = ""
    counts: tuple[int, ...] = ()


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return None


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _qdrant_count(doc: Any) -> int:
    return _int(doc["result"]["count"])


def _chroma_count(doc: Any) -> int:
    ids = doc["ids"]
    if not isinstance(ids, list):
        raise ValueError("ids is not a list")
    return len(ids)


def _weaviate_count(doc: Any) -> int:
    return _int(doc["results"]["matches"])


def _milvus_count(doc: Any) -> int:
    if doc.get("code", 0) not in (0, 200):
        raise ValueError(f"milvus error {doc.get('code')}: {doc.get('message', '')}")
    data = doc["data"]
    return _int(data[0]["count(*)"]) if data else 0


def _pinecone_count(namespace: str) -> Callable[[Any], int]:
    def parse(doc: Any) -> int:
        ns = doc.get("namespaces") or {}
        entry = ns.get(namespace) or ns.get("__default__" if namespace == "" else namespace)
        return _int(entry.get("vectorCount", 0)) if entry else 0

    return parse


_QDRANT_FILTER_WRITE = re.compile(
    r"^(?P<c>/collections/[^/]+)/points/(delete|vectors/delete|payload/delete|payload/clear|payload)$"
)
_CHROMA_DELETE = re.compile(r"^(?P<c>/api/v[12]/.*collections/[^/]+)/delete$")


def count_request(
    product: Product, method: str, path: str, body: bytes, op: Operation
) -> CountRequest | None:
    """The count call for a filter-based write or delete, or None when the
    operation names its ids (or the product has no count for it)."""
    if op.action not in (ActionClass.DELETE, ActionClass.WRITE) or op.ids_known:
        return None
    doc = _json_body(body)
    if not isinstance(doc, dict):
        return None
    method = method.upper()
    if product == "qdrant":
        m = _QDRANT_FILTER_WRITE.match(path)
        if m and method in ("POST", "PUT") and isinstance(doc.get("filter"), dict):
            return CountRequest("POST", f"{m['c']}/points/count",
                                _dump({"filter": doc["filter"], "exact": True}),
                                op.collection, _qdrant_count)
        return None
    if product == "chroma":
        m = _CHROMA_DELETE.match(path)
        if not m or method != "POST":
            return None
        query: dict[str, Any] = {"include": []}
        for key in ("ids", "where", "where_document"):
            if doc.get(key) is not None:
                query[key] = doc[key]
        if len(query) == 1:
            return None
        limit = doc.get("limit")
        return CountRequest("POST", f"{m['c']}/get", _dump(query), op.collection, _chroma_count,
                            cap=limit if isinstance(limit, int) and limit >= 0 else None)
    if product == "pinecone":
        if path.rstrip("/") != "/vectors/delete" or method != "POST":
            return None
        namespace = doc.get("namespace") or ""
        if not isinstance(namespace, str):
            return None
        if doc.get("deleteAll") is True:
            stats: dict[str, Any] = {}
        elif isinstance(doc.get("filter"), dict):
            stats = {"filter": doc["filter"]}
        else:
            return None
        return CountRequest("POST", "/describe_index_stats", _dump(stats), op.collection,
                            _pinecone_count(namespace))
    if product == "weaviate":
        if path.rstrip("/") != "/v1/batch/objects" or method != "DELETE":
            return None
        if not isinstance(doc.get("match"), dict):
            return None
        dry = {**doc, "dryRun": True, "output": "minimal"}
        return CountRequest("DELETE", "/v1/batch/objects", _dump(dry), op.collection,
                            _weaviate_count)
    if product == "milvus":
        if not path.rstrip("/").endswith("/entities/delete") or method != "POST":
            return None
        flt = doc.get("filter")
        if not isinstance(flt, str) or not flt.strip():
            return None
        q: dict[str, Any] = {"collectionName": doc.get("collectionName"), "filter": flt,
                             "outputFields": ["count(*)"]}
        for key in ("dbName", "partitionNames"):
            if doc.get(key) is not None:
                q[key] = doc[key]
        return CountRequest("POST", path.rstrip("/")[: -len("/delete")] + "/query", _dump(q),
                            op.collection, _milvus_count)
    return None


def known_ids(operations: Sequence[Operation]) -> int:
    """Points the operations name themselves (ids or vectors sent)."""
    return sum(max(len(op.ids), op.vector_count) for op in operations if op.ids_known)


def _verify(config: GatewayConfig) -> bool | str:
    if config.upstream_insecure:
        return False
    return str(config.upstream_ca) if config.upstream_ca else True


async def blast_radius(
    *,
    config: GatewayConfig,
    route: Route,
    product: Product,
    method: str,
    path: str,
    body: bytes,
    operations: Sequence[Operation],
    request_id: str,
    record: Record,
    policy_sha256: str,
) -> Review:
    """Count what the request would touch; record every count call.

    Raises EventLogError when a count call cannot be recorded (then it is not
    made and the request must not go on either).
    """
    total = known_ids(operations)
    counts: list[int] = []
    notes: list[str] = []
    seen: set[tuple[str, str, bytes]] = set()
    for index, op in enumerate(operations):
        req = count_request(product, method, path, body, op)
        if req is None:
            if not op.ids_known and op.action in (ActionClass.DELETE, ActionClass.WRITE):
                notes.append(f"operation {index} selects by filter and {product} has no count "
                             "for this request")
            continue
        key = (req.method, req.path, req.body)
        if key in seen:  # a batch of the same filter counts once
            continue
        seen.add(key)
        n, note = await _count(config, route, product, req, f"{request_id}.review{len(seen)}",
                               request_id, record, policy_sha256)
        if n is None:
            notes.append(f"operation {index}: {note}")
        else:
            counts.append(n)
    missing = any(not op.ids_known and op.action in (ActionClass.DELETE, ActionClass.WRITE)
                  for op in operations) and not counts
    if missing or (notes and not counts):
        return Review(None, "; ".join(notes), tuple(counts))
    return Review(total + sum(counts), "; ".join(notes), tuple(counts))


async def _count(
    config: GatewayConfig, route: Route, product: Product, req: CountRequest, review_id: str,
    request_id: str, record: Record, policy_sha256: str,
) -> tuple[int | None, str]:
    op = Operation(action=ActionClass.READ, collection=req.collection, ids_known=False,
                   filter_present=True, detail=f"review count for request {request_id}")
    host = route.upstream_hostport
    await record([
        (RequestReceived, dict(
            request_id=review_id, method=req.method,
            scheme="https" if route.upstream.startswith("https") else "http", host=host,
            path=req.path, query="", headers=[], body=req.body, body_sha256=req.body_sha256,
            body_size=len(req.body), content_type="application/json", product=product,
            operations=[op])),
        (PolicyDecided, dict(
            request_id=review_id, outcome="allow", matched_rules=[],
            reasons=[f"the gateway counts what request {request_id} would touch, for its "
                     "approvers (read-only, with the gateway's credential)"],
            policy_sha256=policy_sha256)),
        (RequestForwarded, dict(request_id=review_id, upstream=route.upstream,
                                credential_ref=route.credential_ref)),
    ])
    headers = {"content-type": "application/json", "accept": "application/json"}
    if route.credential is not None:
        name, fmt = CREDENTIAL_HEADERS.get(product, ("authorization", "Bearer {secret}"))
        headers[name] = fmt.format(secret=route.credential.get_secret_value())
    started = time.perf_counter_ns()
    status, content, error = 502, b"", None
    try:
        async with httpx.AsyncClient(base_url=route.upstream, verify=_verify(config),
                                     timeout=_COUNT_TIMEOUT_S, trust_env=False) as client:
            resp = await client.request(req.method, req.path, content=req.body,
                                        headers=headers)
            status, content = resp.status_code, resp.content[:_MAX_RESPONSE]
    except httpx.HTTPError as exc:
        # never the exception text: it could name the upstream's address
        error = f"count call failed ({type(exc).__name__})"
    n: int | None = None
    note = error or ""
    if error is None:
        if status >= 400:
            note = f"the upstream answered the count call with {status}"
        else:
            try:
                n = req.parse(json.loads(content))
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                note = f"the count call's answer is not understood ({type(exc).__name__})"
            if n is not None and req.cap is not None:
                n = min(n, req.cap)
    digest = hashlib.sha256(content).hexdigest()
    limit = config.record_body_limit
    await record([
        (ResponseRecorded, dict(
            request_id=review_id, status=status, headers=[],
            body=content if len(content) <= limit else None, body_sha256=digest,
            body_size=len(content), original_body_sha256=digest, upstream_error=error,
            latency_us=(time.perf_counter_ns() - started) // 1000)),
    ])
    if n is None:
        log.warning("review count for %s: %s", request_id, note)
    return n, note
