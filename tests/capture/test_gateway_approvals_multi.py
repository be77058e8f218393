"""Two gateway processes on one SQLite log: a flow held by gateway A is released
by a decision taken through gateway B's control API, which reaches A only
through the log; an async approval used through A cannot be replayed through B;
a maximum hold time ends in 403 and ApprovalExpired."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import pytest

from capture.devidp import mint_token
from schemas.chain import verify_chains
from tests.support.approval_e2e import (
    CHROMA_T,
    api,
    approval_requested,
    collection,
    decide,
    events_of,
)
from tests.support.events import read_events
from tests.support.gateway import UPSTREAM_SECRET, GatewayProcess, gateway_process
from tests.support.services import run_chroma_client

POLICY = """\
version: 1
approvers:
  groups_any_of: [[Vector-Approve]]
  expires_after: 30m
rules:
  - id: setup
    effect: allow
    subjects: {groups: [Vector-Admin]}
    actions: [admin, schema, read, write]
    collections: ["*"]
    no_collection: true
  - id: readers
    effect: allow
    subjects: {groups: [Vector-Read]}
    actions: [search, read, schema, health]
    collections: ["*"]
    no_collection: true
  - id: ds-change
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write, delete]
    collections: ["multi-*"]
"""

EMB = [[0.1, 0.2, 0.3], [0.3, 0.4, 0.5]]
WAIT = 120.0


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, dev_idp: str, chroma_url: str
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    tmp = tmp_path_factory.mktemp("gw-approvals-multi")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    log_url = f"sqlite:{tmp / 'shared.db'}"
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    with (
        gateway_process(tmp / "a", upstream=chroma_url, kind="chroma", policy=policy,
                        issuer=dev_idp, log_url=log_url) as a,
        gateway_process(tmp / "b", upstream=chroma_url, kind="chroma", policy=policy,
                        issuer=dev_idp, log_url=log_url) as b,
    ):
        yield a, b


def ids_in(gw: GatewayProcess, issuer: str, cid: str) -> list[str]:
    admin = mint_token(issuer, "root", ["Vector-Admin"])
    r = api(gw.url, "POST", f"{CHROMA_T}/collections/{cid}/get", admin, {"include": []})
    assert r.status_code == 200, r.text
    return sorted(r.json()["ids"])


def test_gateway_a_holds_and_a_decision_through_gateway_b_releases_it(
    pair: tuple[GatewayProcess, GatewayProcess], dev_idp: str
) -> None:
    a, b = pair
    cid = collection(a, dev_idp, "multi-hold")
    alice = mint_token(dev_idp, "alice", ["Vector-Read"])
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        held = ex.submit(
            run_chroma_client, "127.0.0.1", a.port,
            [{"op": "upsert", "collection": "multi-hold", "ids": ["m1"],
              "embeddings": [EMB[0]], "documents": ["held by A"]}],
            alice, None, WAIT + 60)
        req = approval_requested(a.log_url, subject="alice", collection="multi-hold",
                                 client=held)
        assert req.envelope.gateway_id == f"gw-test-{a.port}"
        # B sees A's pending approval (it only shares the log with A)
        listed = api(b.url, "GET", "/_embedguard/approvals?status=pending",
                     mint_token(dev_idp, "bob", ["Vector-Approve"]))
        assert req.approval_id in [x["approval_id"] for x in listed.json()["approvals"]]
        # self-approval through B is refused as well
        r = decide(b.url, mint_token(dev_idp, "alice", ["Vector-Approve"]), req.approval_id,
                   "approve", "mine")
        assert r.status_code == 403 and r.json()["error"] == "self_approval"
        r = decide(b.url, mint_token(dev_idp, "bob", ["Vector-Approve"]), req.approval_id,
                   "approve", "approved through the other gateway")
        assert r.status_code == 200, r.text
        res: list[dict[str, Any]] = held.result(timeout=WAIT)
    assert res[0]["ok"], res
    assert ids_in(b, dev_idp, cid) == ["m1"]
    evs = events_of(a.log_url)
    [decided] = [e for e in evs if e.envelope.type == "ApprovalDecided"
                 and e.approval_id == req.approval_id]
    assert decided.envelope.gateway_id == f"gw-test-{b.port}"
    [fwd] = [e for e in evs if e.envelope.type == "RequestForwarded"
             and e.approval_id == req.approval_id]
    assert fwd.envelope.gateway_id == f"gw-test-{a.port}"
    assert fwd.envelope.request_id == req.envelope.request_id


def test_async_approval_used_through_a_is_refused_through_b(
    pair: tuple[GatewayProcess, GatewayProcess], dev_idp: str
) -> None:
    a, b = pair
    cid = collection(a, dev_idp, "multi-async")
    alice = mint_token(dev_idp, "alice", ["Vector-Read"])
    path = f"{CHROMA_T}/collections/{cid}/upsert"
    body = {"ids": ["r1"], "embeddings": [EMB[1]]}
    r = api(a.url, "POST", path, alice, body, headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    aid = r.json()["approval_id"]
    assert r.json()["status_url"] == f"{a.url}/_embedguard/approvals/{aid}"
    assert decide(b.url, mint_token(dev_idp, "carol", ["Vector-Approve"]), aid, "approve",
                  "ok").status_code == 200
    used = api(a.url, "POST", path, alice, body, headers={"X-Embedguard-Approval": aid})
    assert used.status_code == 200, used.text
    replay = api(b.url, "POST", path, alice, body, headers={"X-Embedguard-Approval": aid})
    assert replay.status_code == 409 and replay.json()["error"] == "already_used", replay.text
    again = api(a.url, "POST", path, alice, body, headers={"X-Embedguard-Approval": aid})
    assert again.status_code == 409
    fwd = [e for e in events_of(a.log_url, "RequestForwarded") if e.approval_id == aid]
    assert len(fwd) == 1


def test_max_hold_time_ends_in_403_and_expires_the_approval(
    tmp_path_factory: pytest.TempPathFactory, dev_idp: str, chroma_url: str
) -> None:
    tmp = tmp_path_factory.mktemp("gw-max-hold")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    with gateway_process(tmp, upstream=chroma_url, kind="chroma", policy=policy,
                         issuer=dev_idp, extra_args=["--max-hold", "2s"]) as gw:
        cid = collection(gw, dev_idp, "multi-maxhold")
        alice = mint_token(dev_idp, "alice", ["Vector-Read"])
        r = api(gw.url, "POST", f"{CHROMA_T}/collections/{cid}/upsert", alice,
                {"ids": ["h1"], "embeddings": [EMB[0]]})
        assert r.status_code == 403, r.text
        err = r.json()
        assert err["error"] == "approval_expired"
        assert "maximum hold time" in err["reason"]
        aid = err["approval_id"]
        [expired] = [e for e in events_of(gw.log_url, "ApprovalExpired")
                     if e.approval_id == aid]
        # the approval (30m) expired early, at the hold limit: a late approval is refused
        late = decide(gw.url, mint_token(dev_idp, "bob", ["Vector-Approve"]), aid, "approve",
                      "late")
        assert late.status_code in (409, 410), late.text
        assert ids_in(gw, dev_idp, cid) == []
        assert verify_chains(read_events(gw.log_url)) == []
        assert UPSTREAM_SECRET not in gw.stderr()
        assert expired.expired_at is not None
