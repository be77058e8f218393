"""DPoP through a real gateway process: a rule with ``require_dpop`` admits a
DPoP-bound token with a fresh proof per request, refuses replayed proofs,
proofs for another URL or method, and plain bearer tokens; the events name the
key the token is bound to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from capture.devidp import generate_dpop_key, make_dpop_proof, mint_token
from tests.support.events import read_events
from tests.support.gateway import GatewayProcess, gateway_process
from tests.support.upstream import RecordingUpstream, recording_upstream

POLICY = """\
version: 1
rules:
  - id: bound-search
    description: Agents search only with DPoP-bound tokens
    effect: allow
    subjects: {groups: [Agents]}
    actions: [search, read]
    collections: ["*"]
    conditions: {require_dpop: true}
"""
PATH = "/collections/docs/points/query"
QUERY = {"query": [0.1, 0.2], "limit": 3}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as up:
        yield up


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, dev_idp: str, upstream: RecordingUpstream
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("gw-dpop")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    with gateway_process(
        tmp, upstream=upstream.url, kind="qdrant", policy=policy, issuer=dev_idp
    ) as g:
        yield g


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("dpop") / "agent.pem"
    return path, generate_dpop_key(path)


@pytest.fixture(scope="module")
def bound_token(dev_idp: str, key: tuple[Path, str]) -> str:
    return mint_token(dev_idp, "agent-7", ["Agents"], dpop_key_file=key[0])


def _post(
    gw: GatewayProcess, token: str, proof: str | None, *, scheme: str = "DPoP", path: str = PATH
) -> httpx.Response:
    headers = {"authorization": f"{scheme} {token}"}
    if proof is not None:
        headers["dpop"] = proof
    return httpx.post(f"{gw.url}{path}", json=QUERY, headers=headers, timeout=30)


def _refused(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert code in body["reason"], body
    assert body["request_id"] == r.headers["x-embedguard-request-id"]
    return body


def test_bound_token_with_fresh_proofs_is_allowed(
    gw: GatewayProcess, key: tuple[Path, str], bound_token: str, upstream: RecordingUpstream
) -> None:
    before = len(upstream.requests)
    for _ in range(2):  # a fresh proof for each request
        proof = make_dpop_proof(key[0], "POST", f"{gw.url}{PATH}", bound_token)
        r = _post(gw, bound_token, proof)
        assert r.status_code == 200, r.text
    reached = upstream.requests[before:]
    assert len(reached) == 2
    for rec in reached:
        assert "dpop" not in rec.headers and "authorization" not in rec.headers

    evs = read_events(gw.log_url)
    resolved = [
        e.event
        for e in evs
        if e.event.avro_name == "IdentityResolved" and e.event.subject == "agent-7"
    ]
    assert resolved, [e.event.avro_name for e in evs]
    assert all(ev.auth_method == "dpop" and ev.dpop_jkt == key[1] for ev in resolved)
    started = [
        e.event
        for e in evs
        if e.event.avro_name == "SessionStarted" and e.event.subject == "agent-7"
    ]
    assert started and started[0].dpop_jkt == key[1]
    decided = [
        e.event for e in evs if e.event.avro_name == "PolicyDecided" and e.event.outcome == "allow"
    ]
    assert len(decided) >= 2
    raw = b"".join(e.canonical for e in evs)
    assert bound_token.encode() not in raw


def test_replayed_proof_is_refused(
    gw: GatewayProcess, key: tuple[Path, str], bound_token: str, upstream: RecordingUpstream
) -> None:
    proof = make_dpop_proof(key[0], "POST", f"{gw.url}{PATH}", bound_token)
    assert _post(gw, bound_token, proof).status_code == 200
    before = len(upstream.requests)
    r = _post(gw, bound_token, proof)
    _refused(r, 401, "dpop_replayed")
    assert r.headers["www-authenticate"].startswith("DPoP ")
    assert len(upstream.requests) == before


@pytest.mark.parametrize("case", ["other-path", "other-method", "other-port", "other-key",
                                  "other-host"])
def test_proof_for_another_request_is_refused(
    case: str,
    gw: GatewayProcess,
    key: tuple[Path, str],
    bound_token: str,
    upstream: RecordingUpstream,
    tmp_path: Path,
) -> None:
    url, method, signer, code = f"{gw.url}{PATH}", "POST", key[0], "dpop_htu_mismatch"
    if case == "other-path":
        url = f"{gw.url}/collections/secret/points/query"
    elif case == "other-method":
        method, code = "GET", "dpop_htm_mismatch"
    elif case == "other-port":
        url = f"http://127.0.0.1:{gw.port + 1}{PATH}"
    elif case == "other-host":
        # a proof made for another server, sent with that server's Host:
        # the gateway checks the proof against its own address, not the Host
        url = f"http://vectors.other-team.example{PATH}"
    else:
        signer = tmp_path / "thief.pem"
        generate_dpop_key(signer)
        code = "dpop_key_mismatch"
    before = len(upstream.requests)
    proof = make_dpop_proof(signer, method, url, bound_token)
    if case == "other-host":
        r = httpx.post(f"{gw.url}{PATH}", json=QUERY, timeout=30, headers={
            "authorization": f"DPoP {bound_token}", "dpop": proof,
            "host": "vectors.other-team.example"})
    else:
        r = _post(gw, bound_token, proof)
    _refused(r, 401, code)
    assert len(upstream.requests) == before


def test_a_public_url_is_what_proofs_are_made_for(
    tmp_path: Path, dev_idp: str, key: tuple[Path, str], bound_token: str,
    upstream: RecordingUpstream,
) -> None:
    """Behind a load balancer clients reach the gateway by a name: with
    --public-url, proofs for that URL pass, and proofs for the listen address
    (or any Host the client sends) do not."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    public = "https://vectors.example.com"
    with gateway_process(tmp_path, upstream=upstream.url, kind="qdrant", policy=policy,
                         issuer=dev_idp, extra_args=["--public-url", public]) as g:
        ok = make_dpop_proof(key[0], "POST", f"{public}{PATH}", bound_token)
        assert _post(g, bound_token, ok).status_code == 200
        own = make_dpop_proof(key[0], "POST", f"{g.url}{PATH}", bound_token)
        _refused(_post(g, bound_token, own), 401, "dpop_htu_mismatch")


def test_bearer_tokens_do_not_satisfy_require_dpop(
    gw: GatewayProcess, dev_idp: str, bound_token: str, upstream: RecordingUpstream
) -> None:
    before = len(upstream.requests)
    plain = mint_token(dev_idp, "agent-8", ["Agents"])
    body = _refused(_post(gw, plain, None, scheme="Bearer"), 403, "DPoP")
    assert body["error"] == "policy_denied"
    assert "bound-search" in body["reason"]
    # a DPoP-bound token presented as a bearer token is not an identity at all
    _refused(_post(gw, bound_token, None, scheme="Bearer"), 401, "dpop_required")
    # nor is the DPoP scheme without a proof
    _refused(_post(gw, bound_token, None), 401, "dpop_required")
    assert len(upstream.requests) == before
    blocked = [e.event for e in read_events(gw.log_url) if e.event.avro_name == "RequestBlocked"]
    assert any(b.stage == "policy" and "DPoP" in b.reason for b in blocked)
    resolved = [
        e.event
        for e in read_events(gw.log_url)
        if e.event.avro_name == "IdentityResolved" and e.event.subject == "agent-8"
    ]
    assert resolved and resolved[0].auth_method == "bearer" and resolved[0].dpop_jkt is None
