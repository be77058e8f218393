"""Uses of approvals and change tickets are claims ordered by the log
(ApprovalClaimed), so they hold across gateway processes:

* the same approved async re-send, sent to two gateways at once, goes upstream
  exactly once (SQLite log, and Kafka/Tansu with several partitions);
* two gateways racing for a change ticket's last operations never forward more
  than its ``max_operations``;
* a request refused after its claim (a gateway error before forwarding) gives the
  claim back, so only operations that reached the database use a ticket up.

Real gateway processes (or a real in-process gateway), real dev-issuer tokens, a
recording upstream that counts what reached the database.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mitmproxy import http

from capture.devidp import mint_token
from capture.state import fail_closed
from schemas.chain import verify_chains
from tests.support.approval_e2e import decide, events_of, wait_for
from tests.support.events import read_events
from tests.support.gateway import (
    UPSTREAM_SECRET,
    GatewayProcess,
    gateway_in_process,
    gateway_process,
)
from tests.support.upstream import RecordingUpstream, recording_upstream

POLICY = """\
version: 1
change_ticket_header: X-Change-Ticket
approvers:
  groups_any_of: [[Vector-Approve]]
  expires_after: 30m
rules:
  - id: batch-change
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write]
    collections: ["claims-*"]
    approvers: {mode: async}
  - id: ops-write
    effect: allow
    subjects: {groups: [Vector-Write]}
    actions: [write]
    collections: ["tick-*"]
    conditions: {require_change_ticket: true}
"""

WAIT = 120.0


def tok(issuer: str, sub: str, groups: list[str]) -> str:
    return mint_token(issuer, sub, groups)


def put_points(base: str, token: str, collection: str, ids: list[int],
               headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"points": [{"id": i, "vector": [0.1, 0.2, 0.3]} for i in ids]}
    return httpx.put(f"{base}/collections/{collection}/points", json=body, timeout=WAIT,
                     trust_env=False,
                     headers={"Authorization": f"Bearer {token}", **(headers or {})})


def upstream_writes(up: RecordingUpstream, collection: str) -> list[bytes]:
    return [r.body for r in list(up.requests)
            if r.method == "PUT" and r.path.startswith(f"/collections/{collection}/points")]


def concurrently(calls: list[Any]) -> list[httpx.Response]:
    """Run the calls at the same moment (a barrier releases every thread at once)."""
    barrier = threading.Barrier(len(calls))

    def run(call: Any) -> httpx.Response:
        barrier.wait(timeout=60)
        return call()  # type: ignore[no-any-return]

    with concurrent.futures.ThreadPoolExecutor(len(calls)) as ex:
        futures = [ex.submit(run, c) for c in calls]
        return [f.result(timeout=WAIT) for f in futures]


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as up:
        yield up


@pytest.fixture(scope="module", params=["sqlite", pytest.param("kafka", marks=[
    pytest.mark.kafka, pytest.mark.slow])])
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, dev_idp: str,
    upstream: RecordingUpstream,
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    tmp = tmp_path_factory.mktemp(f"gw-claims-{request.param}")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    if request.param == "sqlite":
        log_url = f"sqlite:{tmp / 'shared.db'}"
    else:
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        # several partitions: the two gateways' sessions land in different ones,
        # and only the claims' own key puts them in one order
        log_url = f"kafka://{bootstrap}?topic=eg.claims.{tmp.name}&partitions=3"
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    with (
        gateway_process(tmp / "a", upstream=upstream.url, kind="qdrant", policy=policy,
                        issuer=dev_idp, log_url=log_url) as a,
        gateway_process(tmp / "b", upstream=upstream.url, kind="qdrant", policy=policy,
                        issuer=dev_idp, log_url=log_url) as b,
    ):
        yield a, b


def test_an_approved_resend_sent_to_two_gateways_at_once_goes_upstream_once(
    pair: tuple[GatewayProcess, GatewayProcess], dev_idp: str, upstream: RecordingUpstream
) -> None:
    a, b = pair
    alice = tok(dev_idp, "alice", ["Vector-Read"])
    bob = tok(dev_idp, "bob", ["Vector-Approve"])
    rounds = 6
    collection = f"claims-{a.port}"
    approvals: list[str] = []
    for n in range(rounds):
        ids = [1000 + n]
        r = put_points(a.url, alice, collection, ids, {"Prefer": "respond-async"})
        assert r.status_code == 202, r.text
        aid = r.json()["approval_id"]
        approvals.append(aid)
        d = decide(b.url, bob, aid, "approve", "batch reviewed")
        assert d.status_code == 200 and d.json()["status"] == "approved", d.text
        before = len(upstream_writes(upstream, collection))
        hdr = {"X-Embedguard-Approval": aid}
        results = concurrently([
            (lambda gw=gw: put_points(gw.url, alice, collection, ids, hdr))
            for gw in (a, b, a, b, a, b)
        ])
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 409, 409, 409, 409, 409], [r.text for r in results]
        for r in results:
            if r.status_code == 409:
                err = r.json()
                assert err["error"] == "already_used" and err["request_id"], err
                assert aid in err["reason"] and "once" in err["reason"]
        # the database saw the approved request exactly once
        assert len(upstream_writes(upstream, collection)) == before + 1
    evs = events_of(a.log_url)
    for aid in approvals:
        fwd = [e for e in evs if e.envelope.type == "RequestForwarded" and e.approval_id == aid]
        assert len(fwd) == 1
        claims = [e for e in evs if e.envelope.type == "ApprovalClaimed"
                  and e.approval_id == aid and not e.released]
        # every claim is recorded; the forwarded request holds the one admitted
        assert fwd[0].envelope.request_id in {c.envelope.request_id for c in claims}
        blocked = {e.envelope.request_id for e in evs if e.envelope.type == "RequestBlocked"
                   and e.error == "already_used"}
        losers = {c.envelope.request_id for c in claims} - {fwd[0].envelope.request_id}
        assert losers <= blocked
    assert verify_chains(read_events(a.log_url)) == []
    assert UPSTREAM_SECRET not in a.stderr() + b.stderr()


def test_two_gateways_racing_for_a_ticket_never_forward_more_than_it_allows(
    pair: tuple[GatewayProcess, GatewayProcess], dev_idp: str, upstream: RecordingUpstream
) -> None:
    a, b = pair
    oscar = tok(dev_idp, "oscar", ["Vector-Write"])
    collection = f"tick-{a.port}"
    r = httpx.post(f"{a.url}/_embedguard/tickets", timeout=WAIT, trust_env=False,
                   headers={"Authorization": f"Bearer {oscar}"},
                   json={"actions": ["upsert"], "collections": ["tick-*"], "window": "1h",
                         "max_operations": 3, "reason": "CHG-9 backfill"})
    assert r.status_code == 201, r.text
    ticket = r.json()["approval_id"]
    assert decide(b.url, tok(dev_idp, "bob", ["Vector-Approve"]), ticket, "approve",
                  "ok").status_code == 200
    hdr = {"X-Change-Ticket": ticket}
    results = concurrently([
        (lambda gw=gw, i=i: put_points(gw.url, oscar, collection, [i], hdr))
        for i, gw in enumerate([a, b] * 4)
    ])
    ok = [r for r in results if r.status_code == 200]
    assert all(r.status_code in (200, 403) for r in results), [r.text for r in results]
    assert 1 <= len(ok) <= 3
    assert len(upstream_writes(upstream, collection)) == len(ok)
    refused_claims = len(results) - len(ok)

    # the refused requests give back what they claimed; then exactly the rest fits
    def settled(evs: list[Any]) -> bool:
        mine = [d.event for d in evs if d.event.envelope.type == "ApprovalClaimed"
                and d.event.approval_id == ticket]
        taken = {e.envelope.request_id for e in mine if not e.released}
        given = {e.envelope.request_id for e in mine if e.released}
        return len(taken - given) == len(ok) and len(given) <= refused_claims

    wait_for(a.log_url, settled, what="the refused requests' claims given back")
    n = len(ok)
    deadline = time.monotonic() + WAIT
    while n < 3:
        assert time.monotonic() < deadline, "the ticket's operations never came back"
        r = put_points([a, b][n % 2].url, oscar, collection, [100 + n], hdr)
        if r.status_code == 403:  # a release not folded yet by that gateway: retry
            assert "allows 3 operation" in r.json()["reason"], r.text
            time.sleep(0.2)
            continue
        assert r.status_code == 200, r.text
        n += 1
    for gw in (a, b):
        r = put_points(gw.url, oscar, collection, [999], hdr)
        assert r.status_code == 403 and "allows 3 operation(s) and 3" in r.json()["reason"]
    assert len(upstream_writes(upstream, collection)) == 3


# --------------------------------------------- a gateway error after the claim


class Bomb:
    """Raises in the request hook when armed: a gateway error after the Enforcer
    took the ticket's claim and before the Recorder forwards."""

    name = "bomb-before-recorder"

    def __init__(self) -> None:
        self.armed = False

    @fail_closed("policy")
    def request(self, flow: http.HTTPFlow) -> None:
        if self.armed:
            raise RuntimeError("boom: internal detail")


@pytest.fixture
def rig(tmp_path: Path, dev_idp: str) -> Iterator[tuple[str, Bomb, RecordingUpstream, str]]:
    from capture import build_addons
    from capture.config import GatewayConfig, Route
    from tests.support.services import free_port

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    bomb = Bomb()
    log_url = f"sqlite:{tmp_path / 'ev.db'}"
    with recording_upstream() as up:
        port = free_port()
        cfg = GatewayConfig(
            routes=[Route(kind="qdrant", upstream=up.url, listen_port=port)],
            policy_path=policy, log_url=log_url, issuer=dev_idp, audience="embedguard",
            gateway_id="gw-claims-bomb",
        )
        addons = build_addons(cfg)
        addons.insert(len(addons) - 1, bomb)  # just before the Recorder
        with gateway_in_process(cfg, addons):
            yield f"http://127.0.0.1:{port}", bomb, up, log_url


def test_a_request_refused_after_its_claim_does_not_use_up_the_ticket(
    rig: tuple[str, Bomb, RecordingUpstream, str], dev_idp: str
) -> None:
    url, bomb, up, log_url = rig
    oscar = tok(dev_idp, "oscar", ["Vector-Write"])
    r = httpx.post(f"{url}/_embedguard/tickets", timeout=WAIT, trust_env=False,
                   headers={"Authorization": f"Bearer {oscar}"},
                   json={"actions": ["upsert"], "collections": ["tick-*"], "window": "1h",
                         "max_operations": 1, "reason": "one change"})
    assert r.status_code == 201, r.text
    ticket = r.json()["approval_id"]
    assert decide(url, tok(dev_idp, "bob", ["Vector-Approve"]), ticket, "approve",
                  "ok").status_code == 200
    hdr = {"X-Change-Ticket": ticket}
    bomb.armed = True
    try:
        r = put_points(url, oscar, "tick-a", [1], hdr)
    finally:
        bomb.armed = False
    assert r.status_code == 500 and r.json()["error"] == "internal_error", r.text
    failed = r.json()["request_id"]
    assert upstream_writes(up, "tick-a") == []

    def released(evs: list[Any]) -> Any:
        return [d.event for d in evs if d.event.envelope.type == "ApprovalClaimed"
                and d.event.envelope.request_id == failed and d.event.released]

    [rel] = wait_for(log_url, released, what="the failed request's claim given back")
    assert rel.approval_id == ticket and "not forwarded" in (rel.reason or "")
    ticket_view = httpx.get(f"{url}/_embedguard/tickets/{ticket}", timeout=WAIT,
                            trust_env=False, headers={"Authorization": f"Bearer {oscar}"})
    assert ticket_view.status_code == 200, ticket_view.text
    assert ticket_view.json()["used_operations"] == 0
    # the one operation is still there, and then it is used up
    r = put_points(url, oscar, "tick-a", [2], hdr)
    assert r.status_code == 200, r.text
    r = put_points(url, oscar, "tick-a", [3], hdr)
    assert r.status_code == 403 and "allows 1 operation(s) and 1" in r.json()["reason"]
    assert len(upstream_writes(up, "tick-a")) == 1
    assert "boom" not in r.text
