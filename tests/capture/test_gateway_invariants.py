"""Invariants through a real gateway process: no unaudited access (log down →
503, nothing forwarded), default deny, credentials stay inside, forged tokens
refused, policy reload recorded."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from capture.devidp import mint_token
from tests.support.events import read_events
from tests.support.gateway import UPSTREAM_SECRET, GatewayProcess, gateway_process
from tests.support.services import tansu_broker
from tests.support.upstream import RecordingUpstream, recording_upstream

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "examples" / "policy.yaml"


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as up:
        yield up


def test_log_down_means_503_and_nothing_forwarded(
    tmp_path: Path, dev_idp: str, upstream: RecordingUpstream
) -> None:
    alice = mint_token(dev_idp, "alice", ["Vector-Read"])
    with (
        tansu_broker(tmp_path / "tansu") as bootstrap,
        gateway_process(
            tmp_path,
            upstream=upstream.url,
            kind="qdrant",
            policy=POLICY,
            issuer=dev_idp,
            log_url=f"kafka://{bootstrap}?topic=eg.logdown",
        ) as gw,
    ):
        ok = httpx.post(
            f"{gw.url}/collections/docs/points/query",
            json={"query": [0.1, 0.2], "limit": 3},
            headers={"authorization": f"Bearer {alice}"},
            timeout=30,
        )
        assert ok.status_code == 200, ok.text
        assert len(upstream.requests) == 1
    # the broker is gone now; start a gateway against a dead broker port
    with tansu_broker(tmp_path / "tansu2") as bootstrap2:
        ctx = gateway_process(
            tmp_path / "g2" if (tmp_path / "g2").mkdir() is None else tmp_path,
            upstream=upstream.url,
            kind="qdrant",
            policy=POLICY,
            issuer=dev_idp,
            log_url=f"kafka://{bootstrap2}?topic=eg.logdown2&append_timeout=3&request_timeout=3",
        )
        with ctx as gw2:
            before = len(upstream.requests)
            # stop the broker under the running gateway
            _stop_broker(bootstrap2)
            r = httpx.post(
                f"{gw2.url}/collections/docs/points/query",
                json={"query": [0.1, 0.2], "limit": 3},
                headers={"authorization": f"Bearer {alice}"},
                timeout=60,
            )
            assert r.status_code == 503, (r.text, gw2.stderr()[-3000:])
            body = r.json()
            assert body["error"] == "audit_log_unavailable"
            assert body["request_id"]
            assert len(upstream.requests) == before  # nothing reached the database
            assert "Traceback" not in r.text


def _stop_broker(bootstrap: str) -> None:
    import os
    import signal
    import subprocess

    port = bootstrap.rsplit(":", 1)[1]
    out = subprocess.run(["pgrep", "-f", f"tcp://127.0.0.1:{port}"], capture_output=True, text=True)
    for pid in out.stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.5)


@pytest.fixture
def gw(tmp_path: Path, dev_idp: str, upstream: RecordingUpstream) -> Iterator[GatewayProcess]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.read_text())
    with gateway_process(
        tmp_path, upstream=upstream.url, kind="qdrant", policy=policy, issuer=dev_idp
    ) as g:
        yield g


def _forge(header: dict[str, Any], claims: dict[str, Any], sig: bytes = b"") -> str:
    def b64(d: bytes) -> str:
        return base64.urlsafe_b64encode(d).rstrip(b"=").decode()

    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(sig)}"


def test_forged_and_bad_tokens_never_reach_upstream(
    gw: GatewayProcess, dev_idp: str, upstream: RecordingUpstream
) -> None:
    now = int(time.time())
    claims = {
        "iss": dev_idp,
        "aud": "embedguard",
        "sub": "mallory",
        "groups": ["Vector-Admin"],
        "iat": now,
        "exp": now + 600,
    }
    expired = mint_token(
        dev_idp, "alice", ["Vector-Read"], ttl=timedelta(seconds=1), issued_ago=timedelta(minutes=5)
    )
    wrong_aud = mint_token(dev_idp, "alice", ["Vector-Read"], audience="another-service")
    cases = {
        "none": f"Bearer {_forge({'alg': 'none', 'typ': 'JWT'}, claims)}",
        "hs256": f"Bearer {_forge({'alg': 'HS256', 'typ': 'JWT'}, claims, b'x' * 32)}",
        "kid-injection": "Bearer "
        + _forge(
            {"alg": "RS256", "kid": "../../etc/passwd", "jku": "http://evil"}, claims, b"x" * 256
        ),
        "expired": f"Bearer {expired}",
        "wrong-audience": f"Bearer {wrong_aud}",
        "garbage": "Bearer not-a-token",
        "basic": "Basic YWxpY2U6cGFzcw==",
    }
    for name, auth in cases.items():
        r = httpx.get(f"{gw.url}/collections/docs", headers={"authorization": auth}, timeout=30)
        assert r.status_code == 401, (name, r.text)
        body = r.json()
        assert body["error"] == "unauthenticated" and body["request_id"], name
        assert auth.split(" ", 1)[1][:20] not in r.text, name  # the token is never echoed
    r = httpx.get(f"{gw.url}/collections/docs", timeout=30)
    assert r.status_code == 401
    assert upstream.requests == []


def test_default_deny_and_credentials(
    gw: GatewayProcess, dev_idp: str, upstream: RecordingUpstream
) -> None:
    alice = mint_token(dev_idp, "alice", ["Vector-Read"])
    auth = {
        "authorization": f"Bearer {alice}",
        "api-key": "client-side-key",
        "x-openai-api-key": "sk-client",
    }
    unknown = httpx.post(f"{gw.url}/teleport/docs", json={}, headers=auth, timeout=30)
    assert unknown.status_code == 403 and "unclassifiable" in unknown.json()["reason"]
    bad_body = httpx.post(
        f"{gw.url}/collections/docs/points/query",
        content=b"{not json",
        headers={**auth, "content-type": "application/json"},
        timeout=30,
    )
    assert bad_body.status_code == 403
    nobody = mint_token(dev_idp, "mallory", [])
    no_rule = httpx.post(
        f"{gw.url}/collections/docs/points/query",
        json={"query": [0.1], "limit": 3},
        headers={"authorization": f"Bearer {nobody}"},
        timeout=30,
    )
    assert no_rule.status_code == 403 and "no rule allows" in no_rule.json()["reason"]
    assert upstream.requests == []

    ok = httpx.post(
        f"{gw.url}/collections/docs/points/query",
        json={"query": [0.1, 0.2], "limit": 3},
        headers=auth,
        timeout=30,
    )
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-embedguard-request-id"]
    got = upstream.requests[-1]
    assert got.headers["api-key"] == UPSTREAM_SECRET  # the gateway's credential, not the client's
    assert "authorization" not in got.headers and "x-openai-api-key" not in got.headers
    assert alice not in json.dumps(got.headers)
    # masked on the way out (Vector-Read masks e-mail addresses)
    assert "bob@example.org" not in ok.text and "[MASKED:" in ok.text
    assert int(ok.headers["content-length"]) == len(ok.content)

    evs = read_events(gw.log_url)
    raw = b"".join(e.canonical for e in evs)
    for secret in (UPSTREAM_SECRET.encode(), alice.encode(), b"client-side-key", b"sk-client"):
        assert secret not in raw
    assert UPSTREAM_SECRET not in gw.stderr() and alice not in gw.stderr()
    recorded = [e.event for e in evs if e.event.avro_name == "ResponseRecorded"][-1]
    assert recorded.masked_fields and b"bob@example.org" not in (recorded.body or b"")
    assert recorded.body_sha256 != recorded.original_body_sha256
    assert recorded.result_ids == ["1"]


def test_policy_reload_is_recorded_and_bad_policy_keeps_old(
    gw: GatewayProcess, dev_idp: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    alice = mint_token(dev_idp, "alice", ["Vector-Read"])
    h = {"authorization": f"Bearer {alice}"}
    q = {"query": [0.1, 0.2], "limit": 3}
    assert (
        httpx.post(
            f"{gw.url}/collections/docs/points/query", json=q, headers=h, timeout=30
        ).status_code
        == 200
    )
    # an invalid file: the old policy stays
    policy.write_text(POLICY.read_text() + "\n  - id: broken\n    effect: maybe\n")
    time.sleep(2.5)
    assert (
        httpx.post(
            f"{gw.url}/collections/docs/points/query", json=q, headers=h, timeout=30
        ).status_code
        == 200
    )
    assert "invalid" in gw.stderr()
    # a valid change that removes data scientists' search
    policy.write_text(POLICY.read_text().replace("actions: [search]", "actions: [read]", 1))
    deadline = time.time() + 10
    while time.time() < deadline:
        r = httpx.post(f"{gw.url}/collections/docs/points/query", json=q, headers=h, timeout=30)
        if r.status_code == 403:
            break
        time.sleep(0.3)
    assert r.status_code == 403
    changes = [e.event for e in read_events(gw.log_url) if e.event.avro_name == "PolicyChanged"]
    assert len(changes) == 2  # the policy at start, then the reload
    assert changes[0].old_sha256 is None
    assert changes[1].old_sha256 == changes[0].new_sha256
    assert "-    actions: [search]" in changes[1].diff and "+    actions: [read]" in changes[1].diff


def test_unreachable_upstream_is_a_json_502_without_topology(tmp_path: Path, dev_idp: str) -> None:
    from tests.support.services import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with gateway_process(
        tmp_path, upstream=dead, kind="qdrant", policy=POLICY, issuer=dev_idp
    ) as gw:
        alice = mint_token(dev_idp, "alice", ["Vector-Read"])
        r = httpx.get(
            f"{gw.url}/collections/docs/points/1",
            headers={"authorization": f"Bearer {alice}"},
            timeout=30,
        )
        assert r.status_code == 502
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"] == "upstream_error"
        assert dead.rsplit(":", 1)[1] not in r.text and "html" not in r.text.lower()
        recorded = [
            e.event for e in read_events(gw.log_url) if e.event.avro_name == "ResponseRecorded"
        ]
        assert recorded and recorded[-1].status == 502 and recorded[-1].upstream_error
        # the client can name the recorded request to whoever runs the gateway
        rid = recorded[-1].envelope.request_id
        assert rid and r.json()["request_id"] == rid
        assert r.headers["x-embedguard-request-id"] == rid


def test_credentials_in_bodies_and_module_headers_are_never_recorded(
    tmp_path: Path, dev_idp: str, upstream: RecordingUpstream
) -> None:
    """Regression: Milvus passwords (users/create, update_password) and an
    import's keys were recorded in RequestReceived.body as sent, allowed or
    not; X-AWS-Access-Key (Weaviate's AWS modules) was forwarded and recorded.
    Such a body is recorded by its hash and size only, as an oversized one."""
    import hashlib

    secrets = ["Sup3rSecretPw-111", "N3wSecretPw-222", "ImportSecretKey-333", "AKIAIMPORT9",
               "AKIAHEADER77", "SnapshotKeyValue-444"]
    bodies = {
        "/v2/vectordb/users/create": {"userName": "svc", "password": secrets[0]},
        "/v2/vectordb/users/update_password": {"userName": "svc", "password": secrets[0],
                                               "newPassword": secrets[1]},
        "/v2/vectordb/jobs/import/create": {"collectionName": "docs", "files": [["a.parquet"]],
                                            "accessKey": secrets[3], "secretKey": secrets[2]},
        # externalSpec is a JSON *string*; its extfs carries the bucket's keys
        "/v2/vectordb/jobs/snapshot/restore_external": {
            "targetCollectionName": "docs", "snapshotMetadataURI": "s3://b/snap/meta.json",
            "externalSpec": json.dumps({"extfs": {"access_key_id": "AKIASNAP",
                                                  "access_key_value": secrets[5]}})},
    }
    ops = mint_token(dev_idp, "oscar", ["Vector-Write", "Vector-Admin"])
    with gateway_process(tmp_path, upstream=upstream.url, kind="milvus", policy=POLICY,
                         issuer=dev_idp) as gw:
        sent = {}
        for path, doc in bodies.items():
            raw = json.dumps(doc).encode()
            sent[path] = raw
            r = httpx.post(f"{gw.url}{path}", content=raw, timeout=30, headers={
                "authorization": f"Bearer {ops}", "content-type": "application/json"})
            assert r.status_code in (200, 202, 403), r.text  # denied: no change ticket
        alice = mint_token(dev_idp, "alice", ["Vector-Read"])
        r = httpx.post(f"{gw.url}/v2/vectordb/entities/search", timeout=30,
                       json={"collectionName": "docs", "data": [[0.1, 0.2]], "limit": 3},
                       headers={"authorization": f"Bearer {alice}",
                                "x-aws-access-key": secrets[4]})
        assert r.status_code == 200 and len(upstream.requests) == 1, r.text
        events = read_events(gw.log_url)
    raw_log = b"".join(e.canonical for e in events)
    for s in secrets:
        assert s.encode() not in raw_log, s
    for rec in upstream.requests:
        assert "x-aws-access-key" not in rec.headers
    received = {e.event.path: e.event for e in events if e.event.avro_name == "RequestReceived"}
    for path, raw in sent.items():
        ev = received[path]
        assert ev.body is None
        assert ev.body_sha256 == hashlib.sha256(raw).hexdigest() and ev.body_size == len(raw)


def test_an_upstream_echoing_its_key_and_a_query_credential_stay_inside(
    gw: GatewayProcess, dev_idp: str, upstream: RecordingUpstream
) -> None:
    """The upstream echoes the key the gateway sent it (an error message):
    the client and the record get ``[REDACTED:credential]``. A client's own
    ``?api-key=`` never goes upstream and is recorded redacted. Both reached
    the client, the upstream or the log before (found in review)."""
    upstream.answer = lambda method, path, body: (
        403, {"status": {"error": f"forbidden: api-key {UPSTREAM_SECRET} lacks access"}})
    alice = mint_token(dev_idp, "alice", ["Vector-Read"])
    r = httpx.post(f"{gw.url}/collections/docs/points/query?api-key=client-own-key&timeout=5",
                   json={"query": [0.1, 0.2], "limit": 3},
                   headers={"authorization": f"Bearer {alice}"}, timeout=30)
    assert r.status_code == 403
    assert UPSTREAM_SECRET not in r.text and "[REDACTED:credential]" in r.text
    got = upstream.requests[-1]
    assert got.path == "/collections/docs/points/query?timeout=5"
    assert got.headers["api-key"] == UPSTREAM_SECRET
    evs = read_events(gw.log_url)
    raw = b"".join(e.canonical for e in evs)
    assert UPSTREAM_SECRET.encode() not in raw and b"client-own-key" not in raw
    received = [e.event for e in evs if e.event.avro_name == "RequestReceived"][-1]
    assert received.query == "api-key=[REDACTED]&timeout=5"
    recorded = [e.event for e in evs if e.event.avro_name == "ResponseRecorded"][-1]
    assert ("body", "credential") in [(m.path, m.kind) for m in recorded.masked_fields]
    assert UPSTREAM_SECRET not in gw.stderr()
