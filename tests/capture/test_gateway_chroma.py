"""End to end: the official chromadb HttpClient → the gateway (a real
`embedguard gateway` process) → a real Chroma server, with real tokens from the
dev issuer and a real SQLite event log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from capture.devidp import mint_token
from schemas.chain import verify_chains
from tests.support.approval_e2e import approved_ticket
from tests.support.events import read_events
from tests.support.gateway import UPSTREAM_SECRET, GatewayProcess, gateway_process
from tests.support.services import run_chroma_client

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "examples" / "policy.yaml"
EMB = [[0.1, 0.2, 0.3], [0.3, 0.4, 0.5]]


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, dev_idp: str, chroma_url: str
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("gw")
    with gateway_process(
        tmp, upstream=chroma_url, kind="chroma", policy=POLICY, issuer=dev_idp,
        # a data scientist's write waits for an approval that never comes here
        extra_args=["--max-hold", "2s"],
    ) as g:
        yield g


def token(issuer: str, sub: str, groups: list[str], **kw: Any) -> str:
    return mint_token(issuer, sub, groups, **kw)


def client(
    gw: GatewayProcess,
    steps: list[dict[str, Any]],
    tok: str | None,
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    return run_chroma_client("127.0.0.1", gw.port, steps, token=tok, headers=headers)


@pytest.fixture(scope="module")
def seeded(gw: GatewayProcess, dev_idp: str) -> str:
    """An ops engineer creates and fills the collection with a change ticket."""
    ops = token(dev_idp, "oscar", ["Vector-Write", "Vector-Admin"])
    ticket = approved_ticket(gw.url, ops, token(dev_idp, "bob", ["Vector-Approve"]),
                             actions=["admin", "write"], collections=["docs"])
    res = client(
        gw,
        [
            {"op": "get_or_create_collection", "name": "docs"},
            {
                "op": "add",
                "collection": "docs",
                "ids": ["a", "b"],
                "embeddings": EMB,
                "documents": ["mail alice@example.com now", "plain text"],
                "metadatas": [{"email": "alice@example.com", "team": "x"}, {"team": "y"}],
            },
        ],
        ops,
        headers={"X-Change-Ticket": ticket},
    )
    assert all(r["ok"] for r in res), res
    return ops


def test_data_scientist_can_query_and_email_is_masked(
    gw: GatewayProcess, dev_idp: str, seeded: str
) -> None:
    alice = token(dev_idp, "alice", ["Vector-Read"])
    res = client(
        gw,
        [
            {
                "op": "query",
                "collection": "docs",
                "query_embeddings": [EMB[0]],
                "n_results": 2,
                "include": ["documents", "metadatas", "distances"],
            }
        ],
        alice,
    )
    assert res[0]["ok"], res
    result = res[0]["result"]
    assert set(result["ids"][0]) == {"a", "b"}
    text = json.dumps(result)
    assert "alice@example.com" not in text
    assert "[MASKED:email]" in text


def test_data_scientist_upsert_is_refused_until_approved(
    gw: GatewayProcess, dev_idp: str, seeded: str
) -> None:
    alice = token(dev_idp, "alice", ["Vector-Read"])
    res = client(
        gw, [{"op": "upsert", "collection": "docs", "ids": ["c"], "embeddings": [EMB[0]]}], alice
    )
    assert not res[0]["ok"]
    # held for approval; nobody decides within the gateway's 2s maximum hold
    assert "approval_expired" in res[0]["error"]
    check = client(gw, [{"op": "get", "collection": "docs", "ids": ["c"]}], alice)
    assert check[0]["ok"] and check[0]["result"]["ids"] == []


def test_ops_without_ticket_is_denied_with_ticket_allowed(
    gw: GatewayProcess, dev_idp: str, seeded: str
) -> None:
    ops = token(dev_idp, "oscar", ["Vector-Write"])
    denied = client(
        gw, [{"op": "upsert", "collection": "docs", "ids": ["d"], "embeddings": [EMB[1]]}], ops
    )
    assert not denied[0]["ok"]
    assert "X-Change-Ticket" in denied[0]["error"]
    allowed = client(
        gw,
        [
            {"op": "upsert", "collection": "docs", "ids": ["d"], "embeddings": [EMB[1]]},
            {"op": "get", "collection": "docs", "ids": ["d"]},
        ],
        ops,
        headers={"X-Change-Ticket": approved_ticket(
            gw.url, ops, token(dev_idp, "bob", ["Vector-Approve"]), actions=["upsert"],
            collections=["docs"])},
    )
    assert allowed[0]["ok"], allowed
    assert allowed[1]["result"]["ids"] == ["d"]


def test_pipeline_token_older_than_15_minutes_is_refused(
    gw: GatewayProcess, dev_idp: str, seeded: str
) -> None:
    fresh = token(dev_idp, "pipeline-bot", ["Vector-Pipeline"], ttl=timedelta(hours=1))
    old = token(
        dev_idp,
        "pipeline-bot",
        ["Vector-Pipeline"],
        ttl=timedelta(hours=1),
        issued_ago=timedelta(minutes=20),
    )
    ok = client(gw, [{"op": "get", "collection": "docs", "ids": ["a"]}], fresh)
    assert ok[0]["ok"], ok
    refused = client(gw, [{"op": "get", "collection": "docs", "ids": ["a"]}], old)
    assert not refused[0]["ok"]
    # chromadb reports the refusal of its first call generically; the gateway's
    # reason is in the record.
    blocked = [e.event for e in read_events(gw.log_url) if e.event.avro_name == "RequestBlocked"]
    assert any("pipeline-read" in b.reason and "15m" in b.reason for b in blocked), [
        b.reason for b in blocked
    ]


def test_no_token_is_401_and_nothing_is_forwarded(gw: GatewayProcess, seeded: str) -> None:
    res = client(gw, [{"op": "get", "collection": "docs", "ids": ["a"]}], None)
    assert not res[0]["ok"]


def test_every_request_leaves_chained_events_and_no_secret(
    gw: GatewayProcess, dev_idp: str, seeded: str
) -> None:
    evs = read_events(gw.log_url)
    assert verify_chains(evs) == []
    types = {e.event.avro_name for e in evs}
    assert {
        "GatewayStarted",
        "PolicyChanged",
        "SessionStarted",
        "IdentityResolved",
        "RequestReceived",
        "PolicyDecided",
        "RequestForwarded",
        "ResponseRecorded",
        "RequestBlocked",
    } <= types
    by_request: dict[str, set[str]] = {}
    for e in evs:
        rid = e.event.envelope.request_id
        if rid:
            by_request.setdefault(rid, set()).add(e.event.avro_name)
    for rid, kinds in by_request.items():
        assert "RequestReceived" in kinds, rid
        assert ("RequestForwarded" in kinds) != ("RequestBlocked" in kinds), (rid, kinds)
        if "RequestForwarded" in kinds:
            assert "ResponseRecorded" in kinds, rid
    raw = b"".join(e.canonical for e in evs)
    assert UPSTREAM_SECRET.encode() not in raw
    assert b"Bearer ey" not in raw
    assert UPSTREAM_SECRET not in gw.stderr()
    # the masked body is what was recorded as delivered
    delivered = [
        e.event for e in evs if e.event.avro_name == "ResponseRecorded" and e.event.masked_fields
    ]
    assert delivered and all(b"alice@example.com" not in (ev.body or b"") for ev in delivered)


def test_a_collection_uuid_under_another_tenant_is_refused_not_let_through(
    gw: GatewayProcess, dev_idp: str, chroma_url: str
) -> None:
    """Regression: Chroma's record endpoints ignore the path's tenant, while the
    gateway looked the UUID's name up under it; the failed lookup left the UUID
    as the "name", which ``collections: ["*"]`` matched and the restricted-*
    deny rule did not, and the miss was cached for everyone."""
    import httpx

    base = "/api/v2/tenants/default_tenant/databases/default_database"
    made = httpx.post(f"{chroma_url}{base}/collections",
                      json={"name": "restricted-hr", "get_or_create": True},
                      headers={"x-chroma-token": UPSTREAM_SECRET}, timeout=30)
    assert made.status_code == 200, made.text
    uid = made.json()["id"]
    httpx.post(f"{chroma_url}{base}/collections/{uid}/add",
               json={"ids": ["e1"], "embeddings": [[0.1, 0.2, 0.3]],
                     "documents": ["salary of bob: 1M"]},
               headers={"x-chroma-token": UPSTREAM_SECRET}, timeout=30).raise_for_status()
    alice = {"authorization": f"Bearer {token(dev_idp, 'alice', ['Vector-Read'])}"}
    forged = httpx.post(
        f"{gw.url}/api/v2/tenants/other/databases/other/collections/{uid}/get",
        json={"ids": ["e1"]}, headers=alice, timeout=30)
    assert forged.status_code == 403, forged.text
    assert "collection_unresolved" in forged.json()["reason"]
    assert "salary" not in forged.text
    honest = httpx.post(f"{gw.url}{base}/collections/{uid}/get", json={"ids": ["e1"]},
                        headers=alice, timeout=30)
    assert honest.status_code == 403 and "salary" not in honest.text, honest.text
    assert "collection_unresolved" not in honest.json()["reason"]
