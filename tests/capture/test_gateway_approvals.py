"""End to end: four-eyes approvals, change tickets and JIT grants through a real
`embedguard gateway` process, a real Chroma server (the official chromadb
client) and real tokens from the dev issuer, with a real SQLite event log."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from capture.approval_gate import RequestBinding, request_sha256
from capture.config import Route
from capture.devidp import mint_token
from schemas.chain import verify_chains
from tests.support.approval_e2e import (
    CHROMA_T,
    api,
    approval_requested,
    decide,
    events_of,
    wait_for,
)
from tests.support.events import read_events
from tests.support.gateway import UPSTREAM_SECRET, GatewayProcess, gateway_process
from tests.support.services import run_chroma_client

POLICY = """\
version: 1
change_ticket_header: X-Change-Ticket
approvers:
  groups_any_of: [[Vector-Approve]]
  min_approvals: 1
  expires_after: 30m
  mode: hold
rules:
  - id: health
    effect: allow
    subjects: {authenticated: true}
    actions: [health]
    collections: ["*"]
    no_collection: true
  - id: setup
    description: the test's administrator creates and fills collections
    effect: allow
    subjects: {groups: [Vector-Admin]}
    actions: [admin, schema, read, write, search]
    collections: ["*"]
    no_collection: true
  - id: readers
    effect: allow
    subjects: {groups: [Vector-Read, Vector-Write, Vector-Pipeline]}
    actions: [search, read, schema]
    collections: ["*"]
    no_collection: true
  - id: ds-change
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write, delete]
    collections: ["docs*", "jit-*"]
  - id: ds-two
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write]
    collections: ["two-*"]
    approvers: {min_approvals: 2}
  - id: ds-and
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write]
    collections: ["and-*"]
    approvers: {groups_any_of: [[Vector-Approve, Security], [CISO]]}
  - id: ds-short
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write]
    collections: ["short-*"]
    approvers: {expires_after: 3s}
  - id: ds-batch
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write]
    collections: ["batch-*"]
    approvers: {mode: async}
  - id: ops-write
    effect: allow
    subjects: {groups: [Vector-Write]}
    actions: [write, delete]
    collections: ["*"]
    conditions: {require_change_ticket: true}
  - id: pipeline-write-held
    effect: require_approval
    subjects: {groups: [Vector-Pipeline]}
    actions: [write, delete]
    collections: ["*"]
"""

EMB = [[0.1, 0.2, 0.3], [0.3, 0.4, 0.5], [0.5, 0.6, 0.7]]
WAIT = 120.0


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, dev_idp: str, chroma_url: str
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("gw-approvals")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    with gateway_process(
        tmp, upstream=chroma_url, kind="chroma", policy=policy, issuer=dev_idp,
        extra_args=["--max-hold", "2m"],
    ) as g:
        yield g


@pytest.fixture(scope="module")
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as ex:
        yield ex


def tok(issuer: str, sub: str, groups: list[str]) -> str:
    return mint_token(issuer, sub, groups)


def chroma(gw: GatewayProcess, steps: list[dict[str, Any]], token: str,
           headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return run_chroma_client("127.0.0.1", gw.port, steps, token=token, headers=headers,
                             timeout=WAIT + 60)


_IDS: dict[str, str] = {}


def make_collection(gw: GatewayProcess, issuer: str, name: str) -> str:
    admin = tok(issuer, "root", ["Vector-Admin"])
    r = api(gw.url, "POST", f"{CHROMA_T}/collections", admin,
            {"name": name, "get_or_create": True})
    assert r.status_code == 200, r.text
    _IDS[name] = r.json()["id"]
    return _IDS[name]


def ids_in(gw: GatewayProcess, issuer: str, name: str) -> list[str]:
    admin = tok(issuer, "root", ["Vector-Admin"])
    r = api(gw.url, "POST", f"{CHROMA_T}/collections/{_IDS[name]}/get", admin, {"include": []})
    assert r.status_code == 200, r.text
    return sorted(r.json()["ids"])


def http_upsert(gw: GatewayProcess, token: str, name: str, ids: list[str],
                headers: dict[str, str] | None = None) -> httpx.Response:
    return api(gw.url, "POST", upsert_path(_IDS[name]), token,
               {"ids": ids, "embeddings": EMB[: len(ids)]}, headers=headers)


def upsert_step(name: str, ids: list[str], **extra: Any) -> dict[str, Any]:
    return {"op": "upsert", "collection": name, "ids": ids,
            "embeddings": EMB[: len(ids)], **extra}


def upsert_path(cid: str) -> str:
    return f"{CHROMA_T}/collections/{cid}/upsert"


def by_type(events: list[Any], type_: str, **match: Any) -> list[Any]:
    return [e for e in events if e.envelope.type == type_
            and all(getattr(e, k) == v for k, v in match.items())]


def error_of(res: dict[str, Any]) -> dict[str, Any]:
    """The gateway's JSON error inside a chromadb client exception."""
    text = res["error"]
    start = text.find("{")
    assert start >= 0, text
    return dict(json.loads(text[start:text.rfind("}") + 1]))


# ------------------------------------------------------------------------ hold


def test_seed_scenario_upsert_held_until_another_person_approves(
    gw: GatewayProcess, dev_idp: str, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    make_collection(gw, dev_idp, "docs-seed")
    alice = tok(dev_idp, "alice", ["Vector-Read"])
    held = pool.submit(chroma, gw, [upsert_step("docs-seed", ["s1", "s2"],
                                                documents=["first", "second"])], alice)
    req = approval_requested(gw.log_url, subject="alice", collection="docs-seed",
                             client=held)
    aid = req.approval_id
    assert req.mode == "hold" and req.kind == "request"
    assert req.blast_radius == 2  # the ids the upsert names
    assert req.approver_groups == [["Vector-Approve"]] and req.min_approvals == 1
    # the client is still waiting and nothing reached Chroma
    time.sleep(0.5)
    assert not held.done()
    assert ids_in(gw, dev_idp, "docs-seed") == []
    # the requester cannot approve her own request, not even with a fresh token
    for token in (alice, tok(dev_idp, "alice", ["Vector-Read", "Vector-Approve"])):
        r = decide(gw.url, token, aid, "approve", "looks fine to me")
        assert r.status_code == 403 and r.json()["error"] == "self_approval", r.text
    bob = tok(dev_idp, "bob", ["Vector-Approve"])
    r = decide(gw.url, bob, aid, "approve", "checked the two documents")
    assert r.status_code == 200, r.text
    res = held.result(timeout=WAIT)
    assert res[0]["ok"], res
    assert ids_in(gw, dev_idp, "docs-seed") == ["s1", "s2"]
    # a second decision on a decided approval is refused, clearly
    r = decide(gw.url, tok(dev_idp, "carol", ["Vector-Approve"]), aid, "deny", "late")
    assert r.status_code == 409 and r.json()["error"] == "already_decided", r.text

    evs = events_of(gw.log_url)
    rid = req.envelope.request_id
    received = next(e for e in evs if e.envelope.type == "RequestReceived"
                    and e.envelope.request_id == rid)
    session = received.envelope.session_id
    ident = next(e for e in evs if e.envelope.type == "IdentityResolved"
                 and e.envelope.session_id == session)
    assert ident.subject == "alice"
    assert json.loads(received.body)["ids"] == ["s1", "s2"]  # the payload
    [decided] = by_type(evs, "ApprovalDecided", approval_id=aid)
    assert (decided.approver_subject, decided.decision) == ("bob", "approve")
    assert decided.reason == "checked the two documents"
    [forwarded] = [e for e in evs if e.envelope.type == "RequestForwarded"
                   and e.envelope.request_id == rid]
    assert forwarded.approval_id == aid
    # the hash binds the route it went to, the request as received and its body
    route = Route(kind="chroma", upstream=forwarded.upstream,
                  credential_ref=forwarded.credential_ref, listen_port=0)
    target = received.path + (f"?{received.query}" if received.query else "")
    fields = [(h.name.encode(), h.value.encode()) for h in received.headers]
    assert req.request_sha256 == request_sha256(RequestBinding.of(
        route, received.method, target, fields, received.host, received.body))
    assert f'POST "{target}" to chroma upstream {forwarded.upstream}' in req.reason
    # the session reads RequestReceived, PolicyDecided, ApprovalRequested, RequestForwarded
    chain = [e.envelope.type for e in sorted(
        (e for e in evs if e.envelope.session_id == session and e.envelope.request_id == rid),
        key=lambda e: e.envelope.seq)]
    assert chain[:4] == ["RequestReceived", "PolicyDecided", "ApprovalRequested",
                         "RequestForwarded"], chain
    assert req.envelope.session_id == session
    [decided_policy] = [e for e in evs if e.envelope.type == "PolicyDecided"
                        and e.envelope.request_id == rid]
    assert decided_policy.outcome == "require_approval"
    assert UPSTREAM_SECRET not in gw.stderr()


def test_two_of_three_approvers(
    gw: GatewayProcess, dev_idp: str, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    make_collection(gw, dev_idp, "two-col")
    alice = tok(dev_idp, "alice", ["Vector-Read"])
    held = pool.submit(http_upsert, gw, alice, "two-col", ["t1"])
    req = approval_requested(gw.log_url, subject="alice", collection="two-col")
    assert req.min_approvals == 2
    bob = tok(dev_idp, "bob", ["Vector-Approve"])
    r = decide(gw.url, bob, req.approval_id, "approve", "ok by me")
    assert r.status_code == 200 and r.json()["status"] == "pending", r.text
    # the same approver twice (another token) does not count twice
    r = decide(gw.url, tok(dev_idp, "bob", ["Vector-Approve"]), req.approval_id, "approve",
               "again")
    assert r.status_code == 409 and r.json()["error"] == "already_voted", r.text
    # someone outside the approver groups cannot vote
    r = decide(gw.url, tok(dev_idp, "mallory", ["Vector-Read"]), req.approval_id, "approve",
               "me too")
    assert r.status_code == 403 and r.json()["error"] == "not_an_approver", r.text
    time.sleep(0.5)
    assert not held.done()
    r = decide(gw.url, tok(dev_idp, "carol", ["Vector-Approve"]), req.approval_id, "approve",
               "second pair of eyes")
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    assert held.result(timeout=WAIT).status_code == 200
    assert ids_in(gw, dev_idp, "two-col") == ["t1"]


def test_and_of_groups(
    gw: GatewayProcess, dev_idp: str, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    make_collection(gw, dev_idp, "and-col")
    alice = tok(dev_idp, "alice", ["Vector-Read"])
    held = pool.submit(http_upsert, gw, alice, "and-col", ["a1"])
    req = approval_requested(gw.log_url, subject="alice", collection="and-col")
    # Vector-Approve alone is not enough: the rule wants Vector-Approve AND Security, or CISO
    r = decide(gw.url, tok(dev_idp, "bob", ["Vector-Approve"]), req.approval_id, "approve", "x")
    assert r.status_code == 403 and r.json()["error"] == "not_an_approver", r.text
    r = decide(gw.url, tok(dev_idp, "sam", ["Vector-Approve", "Security"]), req.approval_id,
               "approve", "both groups")
    assert r.status_code == 200, r.text
    assert held.result(timeout=WAIT).status_code == 200


def test_pipeline_write_is_held_and_deny_wins(
    gw: GatewayProcess, dev_idp: str, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    make_collection(gw, dev_idp, "docs-pipe")
    job = tok(dev_idp, "svc-ingest", ["Vector-Pipeline"])
    held = pool.submit(chroma, gw, [upsert_step("docs-pipe", ["p1", "p2", "p3"])], job)
    req = approval_requested(gw.log_url, subject="svc-ingest", collection="docs-pipe")
    r = decide(gw.url, tok(dev_idp, "carol", ["Vector-Approve"]), req.approval_id, "deny",
               "this import was not announced")
    assert r.status_code == 200 and r.json()["status"] == "denied", r.text
    res = held.result(timeout=WAIT)
    assert not res[0]["ok"]
    err = error_of(res[0])
    assert err["error"] == "approval_denied"
    assert err["approval_id"] == req.approval_id
    assert "this import was not announced" in err["reason"]
    assert ids_in(gw, dev_idp, "docs-pipe") == []
    r = decide(gw.url, tok(dev_idp, "bob", ["Vector-Approve"]), req.approval_id, "approve", "x")
    assert r.status_code == 409 and r.json()["error"] == "already_decided"
    [blocked] = [e for e in events_of(gw.log_url, "RequestBlocked")
                 if e.envelope.request_id == req.envelope.request_id]
    assert (blocked.status, blocked.error, blocked.stage) == (403, "approval_denied", "approval")


def test_expiry_answers_403_and_records_approval_expired(
    gw: GatewayProcess, dev_idp: str
) -> None:
    make_collection(gw, dev_idp, "short-col")
    alice = tok(dev_idp, "alice", ["Vector-Read"])
    r = http_upsert(gw, alice, "short-col", ["x1"])
    assert r.status_code == 403, r.text
    err = r.json()
    assert err["error"] == "approval_expired"
    aid = err["approval_id"]
    assert ids_in(gw, dev_idp, "short-col") == []
    assert [e for e in events_of(gw.log_url, "ApprovalExpired") if e.approval_id == aid]
    r = decide(gw.url, tok(dev_idp, "bob", ["Vector-Approve"]), aid, "approve", "too late")
    assert r.status_code in (409, 410), r.text
    assert r.json()["error"] in ("expired", "already_decided")


def test_client_that_leaves_while_held_is_recorded_and_its_approval_expires(
    gw: GatewayProcess, dev_idp: str
) -> None:
    cid = make_collection(gw, dev_idp, "docs-leave")
    alice = tok(dev_idp, "alice", ["Vector-Read"])
    body = json.dumps({"ids": ["l1"], "embeddings": [EMB[0]]}).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(
            f"POST {upsert_path(cid)} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
            f"Authorization: Bearer {alice}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        req = approval_requested(gw.log_url, subject="alice", collection="docs-leave")
    # the socket is closed: the held flow ends, the approval expires, nothing goes upstream
    rid = req.envelope.request_id

    def blocked(evs: list[Any]) -> Any:
        return [d.event for d in evs if d.event.envelope.type == "RequestBlocked"
                and d.event.envelope.request_id == rid]

    [b] = wait_for(gw.log_url, blocked, timeout=WAIT, what="RequestBlocked of the left client")
    assert (b.status, b.error) == (499, "client_closed_request")
    assert [e for e in events_of(gw.log_url, "ApprovalExpired")
            if e.approval_id == req.approval_id]
    r = decide(gw.url, tok(dev_idp, "bob", ["Vector-Approve"]), req.approval_id, "approve",
               "x")
    assert r.status_code in (409, 410)
    assert ids_in(gw, dev_idp, "docs-leave") == []


# ----------------------------------------------------------------------- async


def test_async_mode_content_hash_and_single_use(gw: GatewayProcess, dev_idp: str) -> None:
    cid = make_collection(gw, dev_idp, "batch-col")
    alice = tok(dev_idp, "alice", ["Vector-Read"])
    body = {"ids": ["b1", "b2"], "embeddings": EMB[:2], "documents": ["one", "two"]}
    r = api(gw.url, "POST", upsert_path(cid), alice, body)
    assert r.status_code == 202, r.text
    doc = r.json()
    aid = doc["approval_id"]
    assert doc["status_url"] == f"{gw.url}/_embedguard/approvals/{aid}"
    assert r.headers["location"] == doc["status_url"]
    status = httpx.get(doc["status_url"], headers={"Authorization": f"Bearer {alice}"},
                       trust_env=False, timeout=30)
    assert status.status_code == 200 and status.json()["status"] == "pending"
    # re-sent before approval: refused
    again = api(gw.url, "POST", upsert_path(cid), alice, body,
                headers={"X-Embedguard-Approval": aid})
    assert again.status_code == 403 and again.json()["error"] == "not_approved", again.text
    bob = tok(dev_idp, "bob", ["Vector-Approve"])
    assert decide(gw.url, bob, aid, "approve", "batch looks right").status_code == 200
    # other content under the same approval: refused
    other = {**body, "documents": ["one", "CHANGED"]}
    r = api(gw.url, "POST", upsert_path(cid), alice, other,
            headers={"X-Embedguard-Approval": aid})
    assert r.status_code == 409 and r.json()["error"] == "content_mismatch", r.text
    # another person with the same content: refused
    dan = tok(dev_idp, "dan", ["Vector-Read"])
    r = api(gw.url, "POST", upsert_path(cid), dan, body, headers={"X-Embedguard-Approval": aid})
    assert r.status_code == 403 and r.json()["error"] == "wrong_requester", r.text
    assert ids_in(gw, dev_idp, "batch-col") == []
    # the approved request, once
    r = api(gw.url, "POST", upsert_path(cid), alice, body, headers={"X-Embedguard-Approval": aid})
    assert r.status_code == 200, r.text
    assert ids_in(gw, dev_idp, "batch-col") == ["b1", "b2"]
    # replayed: refused
    r = api(gw.url, "POST", upsert_path(cid), alice, body, headers={"X-Embedguard-Approval": aid})
    assert r.status_code == 409 and r.json()["error"] == "already_used", r.text
    rid = r.headers["x-embedguard-request-id"]
    fwd = [e for e in events_of(gw.log_url, "RequestForwarded") if e.approval_id == aid]
    assert len(fwd) == 1 and fwd[0].envelope.request_id != rid


def test_prefer_respond_async_on_a_hold_rule(gw: GatewayProcess, dev_idp: str) -> None:
    cid = make_collection(gw, dev_idp, "docs-prefer")
    alice = tok(dev_idp, "alice", ["Vector-Read"])
    body = {"ids": ["q1"], "embeddings": [EMB[0]]}
    r = api(gw.url, "POST", upsert_path(cid), alice, body,
            headers={"Prefer": "respond-async, wait=5"})
    assert r.status_code == 202, r.text
    assert r.headers.get("preference-applied") == "respond-async"
    [req] = [e for e in events_of(gw.log_url, "ApprovalRequested")
             if e.approval_id == r.json()["approval_id"]]
    assert req.mode == "async"


def test_unknown_approval_header_is_refused(gw: GatewayProcess, dev_idp: str) -> None:
    cid = make_collection(gw, dev_idp, "docs-unknown")
    alice = tok(dev_idp, "alice", ["Vector-Read"])
    r = api(gw.url, "POST", upsert_path(cid), alice, {"ids": ["u"], "embeddings": [EMB[0]]},
            headers={"X-Embedguard-Approval": "0192f0c0-0000-7000-8000-000000000000"})
    assert r.status_code == 404 and r.json()["error"] == "not_found", r.text
    assert "request_id" in r.json()


# ---------------------------------------------------------------- filter review


def test_delete_by_filter_shows_its_blast_radius(
    gw: GatewayProcess, dev_idp: str, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    make_collection(gw, dev_idp, "docs-filter")
    admin = tok(dev_idp, "root", ["Vector-Admin"])
    r = api(gw.url, "POST", upsert_path(_IDS["docs-filter"]), admin,
            {"ids": ["f1", "f2", "f3"], "embeddings": EMB,
             "metadatas": [{"team": "x"}, {"team": "x"}, {"team": "y"}]})
    assert r.status_code == 200, r.text
    alice = tok(dev_idp, "alice", ["Vector-Read"])
    held = pool.submit(chroma, gw, [{"op": "delete", "collection": "docs-filter",
                                     "where": {"team": "x"}}], alice)
    req = approval_requested(gw.log_url, subject="alice", collection="docs-filter")
    assert req.blast_radius == 2
    # the count call went upstream with the gateway's credential and is recorded
    rid = req.envelope.request_id
    review = [e for e in events_of(gw.log_url) if (e.envelope.request_id or "")
              .startswith(f"{rid}.review")]
    assert [e.envelope.type for e in review] == ["RequestReceived", "PolicyDecided",
                                                 "RequestForwarded", "ResponseRecorded"]
    assert review[-1].status == 200
    assert decide(gw.url, tok(dev_idp, "bob", ["Vector-Approve"]), req.approval_id, "deny",
                  "two points is two too many").status_code == 200
    assert not held.result(timeout=WAIT)[0]["ok"]
    assert ids_in(gw, dev_idp, "docs-filter") == ["f1", "f2", "f3"]


# --------------------------------------------------------------------- tickets


def open_ticket(gw: GatewayProcess, token: str, **body: Any) -> httpx.Response:
    return api(gw.url, "POST", "/_embedguard/tickets", token,
               {"reason": "planned change", "window": "1h", **body})


def test_ticket_flow(gw: GatewayProcess, dev_idp: str) -> None:
    make_collection(gw, dev_idp, "tick-a")
    make_collection(gw, dev_idp, "other-b")
    oscar = tok(dev_idp, "oscar", ["Vector-Write"])
    r = open_ticket(gw, oscar, actions=["upsert"], collections=["tick-*"], max_operations=2)
    assert r.status_code == 201, r.text
    ticket = r.json()["approval_id"]
    header = {"X-Change-Ticket": ticket}

    def write(token: str, coll: str, ids: list[str], hdr: dict[str, str] | None = header
              ) -> httpx.Response:
        return http_upsert(gw, token, coll, ids, hdr)

    def refused(r: httpx.Response, why: str) -> bool:
        return r.status_code == 403 and why in r.json()["reason"]

    # no ticket, or a made-up one
    assert refused(write(oscar, "tick-a", ["n0"], None), "X-Change-Ticket")
    assert refused(write(oscar, "tick-a", ["n0"], {"X-Change-Ticket": "CHG-1234"}),
                   "no change ticket")
    # not approved yet
    assert refused(write(oscar, "tick-a", ["n1"]), "approved")
    # self-approval refused, also with a second token
    for token in (oscar, tok(dev_idp, "oscar", ["Vector-Write", "Vector-Approve"])):
        d = decide(gw.url, token, ticket, "approve", "mine")
        assert d.status_code == 403 and d.json()["error"] == "self_approval"
    assert decide(gw.url, tok(dev_idp, "bob", ["Vector-Approve"]), ticket, "approve",
                  "change reviewed").status_code == 200
    # in scope: two operations, the second through the official client
    assert write(oscar, "tick-a", ["k1"]).status_code == 200
    assert chroma(gw, [upsert_step("tick-a", ["k2"])], oscar, headers=header)[0]["ok"]
    # out of scope (collection) and someone else's use: refused with the reason
    assert refused(write(oscar, "other-b", ["k3"]), "covers")
    olga = tok(dev_idp, "olga", ["Vector-Write"])
    assert refused(write(olga, "tick-a", ["k4"]), "belongs to oscar")
    # used up
    assert refused(write(oscar, "tick-a", ["k5"]), "allows 2 operation")
    assert ids_in(gw, dev_idp, "tick-a") == ["k1", "k2"]
    decided = [e for e in events_of(gw.log_url, "PolicyDecided") if e.ticket_id == ticket]
    assert len(decided) == 2 and all(e.outcome == "allow" for e in decided)


def test_expired_ticket_is_refused(gw: GatewayProcess, dev_idp: str) -> None:
    make_collection(gw, dev_idp, "tick-exp")
    oscar = tok(dev_idp, "oscar", ["Vector-Write"])
    r = open_ticket(gw, oscar, actions=["write"], collections=["tick-exp"], window="3s")
    assert r.status_code == 201, r.text
    ticket = r.json()["approval_id"]
    assert decide(gw.url, tok(dev_idp, "bob", ["Vector-Approve"]), ticket, "approve",
                  "ok").status_code == 200
    time.sleep(3.5)
    r = http_upsert(gw, oscar, "tick-exp", ["e1"], {"X-Change-Ticket": ticket})
    assert r.status_code == 403 and "valid from" in r.json()["reason"], r.text
    assert ids_in(gw, dev_idp, "tick-exp") == []


# ---------------------------------------------------------------------- grants


def test_jit_grant_raises_rights_for_its_window_and_is_recorded(
    gw: GatewayProcess, dev_idp: str
) -> None:
    make_collection(gw, dev_idp, "jit-col")
    alice = tok(dev_idp, "alice", ["Vector-Read"])
    # alice cannot grant herself anything
    r = api(gw.url, "POST", "/_embedguard/grants", tok(dev_idp, "alice", ["Vector-Approve"]),
            {"subject": "alice", "actions": ["write"], "collections": ["jit-*"],
             "window": "1h", "reason": "me"})
    assert r.status_code == 403, r.text
    r = api(gw.url, "POST", "/_embedguard/grants", tok(dev_idp, "bob", ["Vector-Approve"]),
            {"subject": "alice", "actions": ["write"], "collections": ["jit-*"],
             "window": "1h", "reason": "incident 42: alice re-embeds the jit collection"})
    assert r.status_code == 201, r.text
    grant = r.json()["grant_id"]

    def granted(evs: list[Any]) -> bool:
        return any(d.event.envelope.type == "GrantIssued" and d.event.grant_id == grant
                   for d in evs)

    wait_for(gw.log_url, granted, what="GrantIssued")
    res = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the gateway folds the grant within a poll
        res = http_upsert(gw, alice, "jit-col", ["g1"])
        if res.status_code == 200:
            break
        time.sleep(0.5)
    assert res is not None and res.status_code == 200, res.text
    assert ids_in(gw, dev_idp, "jit-col") == ["g1"]
    evs = events_of(gw.log_url)
    pd = [e for e in evs if e.envelope.type == "PolicyDecided" and e.grant_id == grant]
    fw = [e for e in evs if e.envelope.type == "RequestForwarded" and e.grant_id == grant]
    assert pd and fw and pd[-1].envelope.request_id == fw[-1].envelope.request_id


def test_log_is_a_valid_hash_chain_and_holds_no_secret(gw: GatewayProcess) -> None:
    decoded = read_events(gw.log_url)
    assert verify_chains(decoded) == []
    blob = Path(gw.log_url.removeprefix("sqlite:")).read_bytes()
    assert UPSTREAM_SECRET.encode() not in blob
    assert UPSTREAM_SECRET not in gw.stderr()


def test_concurrent_requests_cannot_overuse_a_ticket(
    gw: GatewayProcess, dev_idp: str, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    make_collection(gw, dev_idp, "tick-race")
    oscar = tok(dev_idp, "oscar", ["Vector-Write"])
    r = open_ticket(gw, oscar, actions=["write"], collections=["tick-race"], max_operations=2)
    ticket = r.json()["approval_id"]
    assert decide(gw.url, tok(dev_idp, "bob", ["Vector-Approve"]), ticket, "approve",
                  "ok").status_code == 200
    futures = [pool.submit(http_upsert, gw, oscar, "tick-race", [f"r{i}"],
                           {"X-Change-Ticket": ticket}) for i in range(4)]
    statuses = sorted(f.result(timeout=WAIT).status_code for f in futures)
    assert statuses == [200, 200, 403, 403]
    assert len(ids_in(gw, dev_idp, "tick-race")) == 2
