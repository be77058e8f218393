"""capture/approval_gate.py: the content hash, the mode, and the real addon
driven with mitmproxy flows, a real Recorder and a real ApprovalService on a
real SQLite log (hold, deny, max hold, client gone, shutdown, async, re-send,
log failure)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import tflow

from capture.approval_gate import (
    APPROVAL_HEADER,
    ApprovalGate,
    RequestBinding,
    approval_mode,
    binding_of,
    request_sha256,
    status_url,
)
from capture.approvals.service import CLAIM_KEY, ApprovalService
from capture.config import GatewayConfig, Route
from capture.policy import RequestContext, evaluate, parse_policy
from capture.recorder import APPROVAL_ID, APPROVAL_STATUS, Recorder, approved_by_gate
from capture.state import KEY, FlowState
from capture.types import Classification, Identity
from pipeline.transport import open_log
from pipeline.transport.errors import EventLogError
from schemas.models import ActionClass, Event, Operation
from tests.support.events import read_events

ISS = "https://idp.example"
POLICY = """\
version: 1
approvers: {groups_any_of: [[Vector-Approve]], expires_after: 30m}
rules:
  - id: ds-change
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write]
    collections: ["docs"]
  - id: batch
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write]
    collections: ["batch"]
    approvers: {mode: async}
  - id: short
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write]
    collections: ["short"]
    approvers: {expires_after: 1s}
"""

ALICE = Identity("alice", ISS, frozenset({"Vector-Read"}), token_id="jti-alice")
BOB = Identity("bob", ISS, frozenset({"Vector-Approve"}), token_id="jti-bob")


# ------------------------------------------------------------------ pure parts


QDRANT = Route(kind="qdrant", upstream="http://qdrant-staging:6333", listen_port=8080)
MILVUS = Route(kind="milvus", upstream="http://milvus:19530", listen_port=8081)
AUTO = Route(kind="auto", upstream="http://vectors:6333", listen_port=8082)
H = list[tuple[bytes, bytes]]


def sha(route: Route = QDRANT, method: str = "POST", target: str = "/c/points?wait=true",
        headers: H | None = None, host: str = "gw:8080", body: bytes = b'{"a":1}') -> str:
    return request_sha256(RequestBinding.of(route, method, target, headers or [], host, body))


DB = [(b"DB-Name", b"sandbox")]
#: requests that do something else upstream: each must hash differently
DIFFERENT: dict[str, str] = {
    "method": sha(method="PUT"),
    "query": sha(target="/c/points?wait=false"),
    "no query": sha(target="/c/points"),
    "body": sha(body=b'{"a":2}'),
    # moving bytes between the fields gives another hash
    "bytes moved": sha(target="/c/points?wait=true{", body=b'"a":1}'),
    "other upstream": sha(QDRANT.model_copy(update={"upstream": "http://qdrant-prod:6333"})),
    "other kind": sha(QDRANT.model_copy(update={"kind": "auto"})),
    "other credential": sha(QDRANT.model_copy(update={"credential_ref": "env:PROD_KEY"})),
    "pinecone index": sha(QDRANT.model_copy(update={"pinecone_index": "prod"})),
    "chroma v1": sha(QDRANT.model_copy(update={"chroma_v1": True})),
    "milvus db-name": sha(MILVUS, headers=DB),
    "milvus other db-name": sha(MILVUS, headers=[(b"db-name", b"production")]),
    "milvus repeated db-name": sha(MILVUS, headers=[*DB, (b"DB-Name", b"production")]),
    "milvus repeated, other order": sha(MILVUS, headers=[(b"DB-Name", b"production"), *DB]),
    "pinecone api version": sha(headers=[(b"X-Pinecone-API-Version", b"2025-04")]),
    "auto route, other Host": sha(AUTO, host="idx-abc.svc.us.pinecone.io"),
    "auto route, api-key sent": sha(AUTO, headers=[(b"Api-Key", b"k1")]),
    # the same bytes read as YAML by Weaviate (found in review): binding v3
    "content-type json": sha(headers=[(b"Content-Type", b"application/json")]),
    "content-type yaml": sha(headers=[(b"Content-Type", b"application/yaml")]),
}


def test_request_sha256_binds_route_method_target_headers_and_body() -> None:
    base = sha()
    assert base == sha(method="post") and len(base) == 64 and int(base, 16) >= 0
    hashes = [base, sha(MILVUS), sha(AUTO), *DIFFERENT.values()]
    assert len(set(hashes)) == len(hashes), DIFFERENT


@pytest.mark.parametrize(
    ("why", "same"),
    [
        # another replica (or listener) serving the same route
        ("listen address", lambda: sha(QDRANT.model_copy(update={"listen_port": 9999,
                                                                 "listen_host": "0.0.0.0"}))),
        # the client's Host is never read on a route with a product
        ("client Host", lambda: sha(host="127.0.0.1:8080")),
        ("headers classification ignores", lambda: sha(headers=[(b"User-Agent", b"curl"),
                                                                (b"Accept", b"*/*")])),
        ("header name case", lambda: sha(headers=[(b"x-pinecone-api-version", b"1")])
         == sha(headers=[(b"X-Pinecone-Api-Version", b"1")]) and sha()),
        # only that api-key was sent, never its value
        ("api-key value", lambda: sha(AUTO, headers=[(b"api-key", b"other")])
         == sha(AUTO, headers=[(b"api-key", b"k1")]) and sha()),
    ],
)
def test_request_sha256_ignores_what_does_not_change_the_request(
        why: str, same: Callable[[], str]) -> None:
    assert same() == sha(), why


def test_the_binding_description_shows_what_is_bound() -> None:
    b = RequestBinding.of(MILVUS.model_copy(update={"credential_ref": "env:MILVUS_TOKEN"}),
                          "post", "/v2/vectordb/entities/delete",
                          [(b"DB-Name", b"sandbox"), (b"DB-Name", b'x" ; y')], "gw", b"{}")
    text = b.describe()
    assert text.startswith('POST "/v2/vectordb/entities/delete" to milvus upstream '
                           "http://milvus:19530 with credential env:MILVUS_TOKEN")
    assert 'header db-name: "sandbox", "x\\" ; y"' in text
    assert "body 2 bytes, sha256 44136fa355b3678a" in text
    long = RequestBinding.of(QDRANT, "GET", "/c?" + "q" * 1000, [], "gw", b"").describe()
    assert "(1003 characters)" in long and len(long) < 600


@pytest.mark.parametrize(
    ("policy_mode", "prefer", "mode"),
    [
        ("hold", None, "hold"),
        ("hold", "respond-async", "async"),
        ("hold", "wait=10, respond-async", "async"),
        ("hold", "Respond-Async; x=1", "async"),
        ("hold", "return=minimal", "hold"),
        ("async", None, "async"),
        ("async", "wait=5", "async"),
    ],
)
def test_approval_mode(policy_mode: str, prefer: str | None, mode: str) -> None:
    assert approval_mode(policy_mode, prefer) == mode


def test_status_url() -> None:
    assert status_url("https", "gw.example:8443", "abc") == (
        "https://gw.example:8443/_embedguard/approvals/abc")


# ------------------------------------------------------------- the real addon


class Rig:
    def __init__(self, config: GatewayConfig, recorder: Recorder, service: ApprovalService,
                 gate: ApprovalGate) -> None:
        self.config = config
        self.recorder = recorder
        self.service = service
        self.gate = gate
        self.policy = parse_policy(POLICY)

    def flow(self, collection: str = "docs", body: bytes = b'{"ids":["1"]}',
             who: Identity = ALICE, headers: dict[str, str] | None = None,
             route: Route | None = None, query: str = "wait=true",
             header_fields: Sequence[tuple[bytes, bytes]] = ()) -> Any:
        f = tflow.tflow()
        f.request.method = "POST"
        f.request.path = f"/collections/{collection}/points" + (f"?{query}" if query else "")
        f.request.content = body
        f.client_conn.timestamp_tls_setup = None  # plain http to the gateway
        for k, v in (headers or {}).items():
            f.request.headers[k] = v
        f.request.headers.fields += tuple(header_fields)
        ops = [Operation(action=ActionClass.WRITE, collection=collection, ids=["1"],
                         vector_count=1)]
        st = FlowState(route=route or self.config.routes[0], client_body=body,
                       client_host="gw:1")
        st.identity = who
        st.client_address = "127.0.0.1"
        st.classification = Classification(product="qdrant", operations=ops)
        st.decision = evaluate(self.policy, who, ops, RequestContext(now=datetime.now(UTC)))
        assert st.decision.outcome == "require_approval"
        f.metadata[KEY] = st
        return f


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = await _rig(tmp_path, hold_timeout_s=60.0)
    try:
        yield rig
    finally:
        await _close(rig)


async def _rig(tmp_path: Path, **config_kw: Any) -> Rig:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    url = f"sqlite:{tmp_path / 'events.db'}"
    config = GatewayConfig(
        routes=[Route(kind="qdrant", upstream="http://127.0.0.1:9", listen_port=0)],
        policy_path=policy, log_url=url, issuer=ISS, audience="embedguard",
        gateway_id="gw-gate", **config_kw)
    log = open_log(url)
    recorder = Recorder(config, log_=log)
    await recorder.running()
    service = ApprovalService(log, recorder.emit, poll_interval_s=0.05, sweep_interval_s=0.05)
    await service.start()

    async def record_system(rid: str, events: list[tuple[type[Event], dict[str, Any]]]) -> None:
        raise AssertionError("no review call expected: the ids are named")

    gate = ApprovalGate(config, service, record_received=recorder.record_received,
                        record_system=record_system)
    return Rig(config, recorder, service, gate)


async def _close(rig: Rig) -> None:
    await rig.gate.done()
    await rig.service.close()
    await rig.recorder.done()


async def until(cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def held(rig: Rig, f: Any) -> tuple[asyncio.Task[None], str]:
    task = asyncio.create_task(rig.gate.request(f))
    await until(lambda: rig.gate.held == 1 or task.done(), "the flow to be held")
    assert not task.done() and f.intercepted
    return task, f.metadata[KEY].extra[APPROVAL_ID]


def body_of(f: Any) -> dict[str, Any]:
    return dict(json.loads(f.response.content))


async def test_hold_until_approved(rig: Rig) -> None:
    f = rig.flow()
    task, aid = await held(rig, f)
    a = rig.service.get(aid)
    assert a is not None and a.status == "pending" and a.mode == "hold"
    assert a.request_sha256 == request_sha256(RequestBinding.of(
        rig.config.routes[0], "POST", f.request.path, [], "gw:1", b'{"ids":["1"]}'))
    # the approver is shown what the hash binds
    assert a.reason is not None and a.reason.endswith(
        "approves exactly: " + binding_of(f, f.metadata[KEY]).describe())
    assert f'POST "/collections/docs/points?wait=true" to qdrant upstream ' \
        f'{rig.config.routes[0].upstream}' in a.reason
    assert a.blast_radius == 1
    await rig.service.decide(aid, BOB, "approve", "fine")
    await asyncio.wait_for(task, 30)
    st = f.metadata[KEY]
    assert f.response is None and st.blocked is None and not f.intercepted
    assert st.extra[APPROVAL_STATUS] == "approved" and approved_by_gate(st)
    assert rig.gate.held == 0
    # RequestReceived and PolicyDecided were durable before ApprovalRequested
    events = await asyncio.to_thread(read_events, rig.config.log_url)
    types = [d.event.envelope.type for d in events
             if d.event.envelope.session_id == st.session_id]
    assert types.index("RequestReceived") < types.index("PolicyDecided") \
        < types.index("ApprovalRequested")


async def test_denied(rig: Rig) -> None:
    f = rig.flow()
    task, aid = await held(rig, f)
    await rig.service.decide(aid, BOB, "deny", "not this week")
    await asyncio.wait_for(task, 30)
    assert f.response.status_code == 403
    doc = body_of(f)
    assert doc["error"] == "approval_denied" and doc["approval_id"] == aid
    assert "bob: not this week" in doc["reason"]
    assert f.metadata[KEY].blocked.stage == "approval"


async def test_max_hold_expires_the_approval(tmp_path: Path) -> None:
    rig = await _rig(tmp_path, hold_timeout_s=0.3)
    try:
        f = rig.flow()
        await asyncio.wait_for(rig.gate.request(f), 30)
        assert f.response.status_code == 403
        doc = body_of(f)
        assert doc["error"] == "approval_expired" and "maximum hold time" in doc["reason"]
        a = rig.service.get(doc["approval_id"])
        assert a is not None and a.status == "expired"
    finally:
        await _close(rig)


async def _gone(rig: Rig, end: Callable[[Any], Awaitable[None] | None], status: int,
                error: str) -> None:
    before = {t for t in asyncio.all_tasks()}
    f = rig.flow()
    task, aid = await held(rig, f)
    started = {t for t in asyncio.all_tasks()} - before - {task}
    result = end(f)
    if result is not None:
        await result
    await asyncio.wait_for(task, 30)
    assert f.response.status_code == status
    assert body_of(f)["error"] == error and body_of(f)["approval_id"] == aid
    a = rig.service.get(aid)
    assert a is not None and a.status == "expired"
    assert rig.gate.held == 0 and not f.intercepted
    # the waiter and watcher tasks of the held flow are gone
    await asyncio.sleep(0)
    assert all(t.done() for t in started)


async def test_client_disconnect_ends_the_hold_without_leaking_tasks(rig: Rig) -> None:
    await _gone(rig, lambda f: rig.gate.client_disconnected(f.client_conn), 499,
                "client_closed_request")


async def test_flow_error_ends_the_hold(rig: Rig) -> None:
    await _gone(rig, lambda f: rig.gate.error(f), 499, "client_closed_request")


async def test_shutdown_ends_the_hold(rig: Rig) -> None:
    await _gone(rig, lambda f: rig.gate.done(), 503, "gateway_stopping")


async def test_async_mode_answers_202_and_the_resend_is_accepted_once(rig: Rig) -> None:
    f = rig.flow("batch")
    await rig.gate.request(f)
    assert f.response.status_code == 202
    doc = body_of(f)
    aid = doc["approval_id"]
    assert doc["status_url"] == f"http://gw:1/_embedguard/approvals/{aid}"
    assert f.response.headers["location"] == doc["status_url"]
    assert f.metadata[KEY].blocked.status == 202
    await rig.service.decide(aid, BOB, "approve", "ok")
    again = rig.flow("batch", headers={APPROVAL_HEADER: aid})
    await rig.gate.request(again)
    st = again.metadata[KEY]
    assert again.response is None and approved_by_gate(st)
    assert APPROVAL_HEADER not in again.request.headers  # not sent upstream
    replay = rig.flow("batch", headers={APPROVAL_HEADER: aid})
    await rig.gate.request(replay)
    assert replay.response.status_code == 409 and body_of(replay)["error"] == "already_used"
    other = rig.flow("batch", body=b'{"ids":["2"]}', headers={APPROVAL_HEADER: aid})
    await rig.gate.request(other)
    assert other.response.status_code == 409


PROD = Route(kind="qdrant", upstream="http://127.0.0.1:10", listen_port=0)


@pytest.mark.parametrize(
    ("case", "resend", "accepted"),
    [
        ("the same request", {}, True),
        # another gateway replica (or listener) in front of the same upstream
        ("same route, another listener",
         {"route": Route(kind="qdrant", upstream="http://127.0.0.1:9", listen_port=7777)}, True),
        ("another upstream (the production listener)", {"route": PROD}, False),
        ("another route kind",
         {"route": Route(kind="auto", upstream="http://127.0.0.1:9", listen_port=0)}, False),
        ("another DB-Name", {"header_fields": [(b"DB-Name", b"production")]}, False),
        ("DB-Name repeated", {"header_fields": [(b"DB-Name", b"sandbox"),
                                                (b"DB-Name", b"production")]}, False),
        ("another query", {"query": "wait=false"}, False),
    ],
)
async def test_a_resend_must_match_the_approved_route_headers_and_target(
        rig: Rig, case: str, resend: dict[str, Any], accepted: bool) -> None:
    """Invariant 6: an approval binds the exact request, including where it
    goes (/tmp/audit3b t6: approved on the staging listener, sent on the
    production one; approved for DB-Name sandbox, sent for production)."""
    f = rig.flow("batch", header_fields=[(b"DB-Name", b"sandbox")])
    await rig.gate.request(f)
    assert f.response.status_code == 202
    aid = body_of(f)["approval_id"]
    await rig.service.decide(aid, BOB, "approve", "sandbox cleanup")
    kw: dict[str, Any] = {"header_fields": [(b"DB-Name", b"sandbox")], **resend}
    again = rig.flow("batch", headers={APPROVAL_HEADER: aid}, **kw)
    await rig.gate.request(again)
    if accepted:
        assert again.response is None and approved_by_gate(again.metadata[KEY]), case
        return
    assert again.response.status_code == 409, case
    assert body_of(again)["error"] == "content_mismatch"
    assert "route" in body_of(again)["reason"]
    # the approval is still unused: the exact request may still go
    exact = rig.flow("batch", headers={APPROVAL_HEADER: aid},
                     header_fields=[(b"DB-Name", b"sandbox")])
    await rig.gate.request(exact)
    assert exact.response is None and approved_by_gate(exact.metadata[KEY])


async def test_prefer_respond_async(rig: Rig) -> None:
    f = rig.flow(headers={"Prefer": "respond-async"})
    await rig.gate.request(f)
    assert f.response.status_code == 202
    assert f.response.headers["preference-applied"] == "respond-async"


async def test_nothing_is_held_when_the_log_refuses(rig: Rig) -> None:
    async def refuse(flow: Any) -> None:
        raise EventLogError("disk full")

    rig.gate.record_received = refuse
    f = rig.flow()
    await asyncio.wait_for(rig.gate.request(f), 30)
    assert f.response.status_code == 503
    assert body_of(f)["error"] == "audit_log_unavailable"
    assert rig.gate.held == 0 and rig.service.list() == []


async def test_allowed_requests_pass_untouched(rig: Rig) -> None:
    f = rig.flow(headers={APPROVAL_HEADER: "x"})
    st = f.metadata[KEY]
    st.decision = st.decision.model_copy(update={"outcome": "allow", "status": 200,
                                                 "error": None})
    await rig.gate.request(f)
    assert f.response is None and rig.gate.held == 0
    assert APPROVAL_HEADER not in f.request.headers
    assert rig.service.list() == []


async def test_the_hold_ends_when_the_approval_expires(rig: Rig) -> None:
    # the approval expires long before the gateway's 60s maximum hold
    f = rig.flow("short")
    await asyncio.wait_for(rig.gate.request(f), 30)
    assert f.response.status_code == 403
    doc = body_of(f)
    assert doc["error"] == "approval_expired" and "without a decision" in doc["reason"]
    a = rig.service.get(doc["approval_id"])
    assert a is not None and a.status == "expired"
    assert a.expires_at - a.requested_at == timedelta(seconds=1)


# ------------------------------------------------------------------------ claims


def _claims(rig: Rig, aid: str) -> list[Any]:
    return [d.event for d in read_events(rig.config.log_url)
            if d.event.envelope.type == "ApprovalClaimed" and d.event.approval_id == aid]


async def test_a_released_hold_claims_the_approval_and_gives_it_back_if_not_forwarded(
    rig: Rig,
) -> None:
    f = rig.flow()
    task, aid = await held(rig, f)
    await rig.service.decide(aid, BOB, "approve", "fine")
    await asyncio.wait_for(task, 30)
    st = f.metadata[KEY]
    assert st.extra[CLAIM_KEY] == (aid, "request") and approved_by_gate(st)
    [claim] = await asyncio.to_thread(_claims, rig, aid)
    assert claim.envelope.request_id == st.request_id and not claim.released
    assert claim.envelope.session_id == f"claims:{aid}@gw-gate"
    assert rig.service.get(aid).used  # type: ignore[union-attr]
    # the Recorder did not forward it (say the log refused): the use comes back
    st.forwarded = False
    rig.gate.response(f)
    await rig.service.flush_releases()
    await rig.service.sync()
    assert not rig.service.get(aid).used  # type: ignore[union-attr]
    claims = await asyncio.to_thread(_claims, rig, aid)
    assert [c.released for c in claims] == [False, True]
    assert "was not forwarded" in (claims[1].reason or "")
    # a forwarded request keeps its claim: nothing more is recorded
    rig.gate.response(f)
    await rig.service.flush_releases()
    assert len(await asyncio.to_thread(_claims, rig, aid)) == 2


async def test_a_hold_that_loses_the_race_for_its_approval_is_refused(rig: Rig) -> None:
    f = rig.flow()
    task, aid = await held(rig, f)
    # a re-send of the same approved request through another gateway got there first
    await rig.service.claim(aid, kind="request", request_id="req-elsewhere")
    await rig.service.decide(aid, BOB, "approve", "fine")
    await asyncio.wait_for(task, 30)
    st = f.metadata[KEY]
    assert f.response.status_code == 409 and body_of(f)["error"] == "already_used"
    assert "req-elsewhere" in body_of(f)["reason"] and not approved_by_gate(st)
    assert CLAIM_KEY not in st.extra
    await rig.service.flush_releases()
    claims = await asyncio.to_thread(_claims, rig, aid)
    mine = [c for c in claims if c.envelope.request_id == st.request_id]
    assert [c.released for c in mine] == [False, True]  # claimed, lost, given back
