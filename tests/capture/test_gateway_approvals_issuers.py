"""Two gateways that trust different identity providers share one event log
(issuer A behind gateway 1, issuer B behind gateway 2). An OIDC ``sub`` is
unique only within its issuer, so a subject of B is neither the requester of
A (self-approval through a second IdP) nor a second approver (one person
filling two seats), and a grant issued at B is not a grant for A's subject of
the same name. Before the fix all four were accepted: votes, N-of-M seats and
JIT grants crossed IdPs through the shared log."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from capture.devidp import mint_token, serve
from tests.support.approval_e2e import CHROMA_T, api, collection, decide
from tests.support.gateway import GatewayProcess, gateway_process

POLICY = """\
version: 1
approvers:
  groups_any_of: [[Vector-Approve]]
  expires_after: 30m
  mode: async
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
    collections: ["iss-*"]
    approvers: {mode: async}
  - id: ds-two
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write]
    collections: ["two-*"]
    approvers: {min_approvals: 2, mode: async}
"""
EMB = [0.1, 0.2, 0.3]


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, chroma_url: str
) -> Iterator[tuple[str, str, GatewayProcess, GatewayProcess]]:
    tmp = tmp_path_factory.mktemp("gw-approvals-issuers")
    idp_a = serve("127.0.0.1", 0, tmp / "idp-a")
    idp_b = serve("127.0.0.1", 0, tmp / "idp-b")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    log_url = f"sqlite:{tmp / 'shared.db'}"
    (tmp / "g1").mkdir()
    (tmp / "g2").mkdir()
    try:
        with (
            gateway_process(tmp / "g1", upstream=chroma_url, kind="chroma", policy=policy,
                            issuer=idp_a.issuer_url, log_url=log_url) as g1,
            gateway_process(tmp / "g2", upstream=chroma_url, kind="chroma", policy=policy,
                            issuer=idp_b.issuer_url, log_url=log_url) as g2,
        ):
            yield idp_a.issuer_url, idp_b.issuer_url, g1, g2
    finally:
        idp_a.shutdown()
        idp_b.shutdown()


def _upsert(gw: GatewayProcess, token: str, cid: str, pid: str,
            headers: dict[str, str] | None = None) -> object:
    return api(gw.url, "POST", f"{CHROMA_T}/collections/{cid}/upsert", token,
               {"ids": [pid], "embeddings": [EMB]}, headers=headers)


def _approval_id(r: object) -> str:
    assert r.status_code == 202, r.text  # type: ignore[attr-defined]
    return str(r.json()["approval_id"])  # type: ignore[attr-defined]


def _seen_by(gw: GatewayProcess, token: str, aid: str) -> None:
    """Wait until ``gw`` has read the approval from the shared log."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if api(gw.url, "GET", f"/_embedguard/approvals/{aid}", token).status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"{gw.url} never saw approval {aid}")


def test_the_requester_at_another_idp_cannot_approve_herself(
    setup: tuple[str, str, GatewayProcess, GatewayProcess],
) -> None:
    a, b, g1, g2 = setup
    cid = collection(g1, a, "iss-self")
    alice_a = mint_token(a, "alice", ["Vector-Read"])
    aid = _approval_id(_upsert(g1, alice_a, cid, "p-self"))
    alice_b = mint_token(b, "alice", ["Vector-Approve"])
    _seen_by(g2, alice_b, aid)
    d = decide(g2.url, alice_b, aid, "approve", "my own write")
    assert d.status_code == 403 and d.json()["error"] == "foreign_issuer", d.text
    assert a in d.json()["reason"] and b in d.json()["reason"]
    r = _upsert(g1, alice_a, cid, "p-self", {"X-Embedguard-Approval": aid})
    assert r.status_code == 403 and r.json()["error"] == "not_approved", r.text
    # an approver of A's own IdP may decide it
    d = decide(g1.url, mint_token(a, "bob", ["Vector-Approve"]), aid, "approve")
    assert d.status_code == 200 and d.json()["status"] == "approved", d.text


def test_one_approver_at_two_idps_fills_one_seat(
    setup: tuple[str, str, GatewayProcess, GatewayProcess],
) -> None:
    a, b, g1, g2 = setup
    cid = collection(g1, a, "two-seats")
    aid = _approval_id(_upsert(g1, mint_token(a, "alice", ["Vector-Read"]), cid, "p-two"))
    d = decide(g1.url, mint_token(a, "bob", ["Vector-Approve"]), aid, "approve")
    assert d.status_code == 200 and d.json()["status"] == "pending", d.text
    bob_b = mint_token(b, "bob", ["Vector-Approve"])
    _seen_by(g2, bob_b, aid)
    d = decide(g2.url, bob_b, aid, "approve")
    assert d.status_code == 403 and d.json()["error"] == "foreign_issuer", d.text
    got = api(g1.url, "GET", f"/_embedguard/approvals/{aid}",
              mint_token(a, "carol", ["Vector-Approve"])).json()
    assert got["status"] == "pending" and [v["subject"] for v in got["approvals"]] == ["bob"]


def test_a_grant_issued_at_another_idp_is_not_for_this_idps_subject(
    setup: tuple[str, str, GatewayProcess, GatewayProcess],
) -> None:
    a, b, g1, g2 = setup
    cid = collection(g1, a, "iss-grant")
    carol_b = mint_token(b, "carol", ["Vector-Approve"])
    g = api(g2.url, "POST", "/_embedguard/grants", carol_b,
            {"subject": "alice", "actions": ["write"], "collections": ["iss-*"],
             "window": "10m", "reason": "for alice at B"})
    assert g.status_code == 201 and g.json()["subject_issuer"] == b, g.text
    time.sleep(1.0)  # both gateways fold it from the log
    # B's alice holds the grant: her write goes through gateway 2 without approval
    r = _upsert(g2, mint_token(b, "alice", ["Vector-Read"]), cid, "p-grant-b")
    assert r.status_code == 200, r.text
    # A's alice does not: her write is still held for approval
    _approval_id(_upsert(g1, mint_token(a, "alice", ["Vector-Read"]), cid, "p-grant-a"))
