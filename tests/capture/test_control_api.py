"""The /_embedguard/ control API of real gateway processes: verified callers,
JSON answers, nothing forwarded upstream, and two gateways sharing one log."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from capture.devidp import generate_dpop_key, make_dpop_proof, mint_token
from schemas.chain import verify_chains
from schemas.models import ApprovalDecided, GatewayStarted, RequestReceived
from tests.support.events import read_events
from tests.support.gateway import GatewayProcess, gateway_process
from tests.support.upstream import RecordingUpstream, recording_upstream

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "examples" / "policy.yaml"
HOOK_SECRET = "/hooks/T01/B02/hook-secret-9d8c"


class _Hook:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def wait_for(self, pred: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self.bodies), timeout), self.bodies
            return list(self.bodies)


@pytest.fixture(scope="module")
def hook() -> Iterator[tuple[str, _Hook]]:
    state = _Hook()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with state.cond:
                state.bodies.append(json.loads(body))
                state.cond.notify_all()
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{HOOK_SECRET}", state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as up:
        yield up


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, dev_idp: str, upstream: RecordingUpstream,
    hook: tuple[str, _Hook],
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two gateway processes on one SQLite log; A notifies the webhook."""
    tmp = tmp_path_factory.mktemp("ctl")
    log_url = f"sqlite:{tmp / 'shared.db'}"
    with gateway_process(tmp, upstream=upstream.url, kind="qdrant", policy=POLICY,
                         issuer=dev_idp, log_url=log_url,
                         env={"EMBEDGUARD_APPROVAL_WEBHOOK": hook[0]}) as a, \
            gateway_process(tmp, upstream=upstream.url, kind="qdrant", policy=POLICY,
                            issuer=dev_idp, log_url=log_url) as b:
        yield a, b


def call(gw: GatewayProcess, method: str, path: str, token: str | None = None,
         body: Any = None, **headers: str) -> httpx.Response:
    h = dict(headers)
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    return httpx.request(method, f"{gw.url}/_embedguard/{path}", json=body, headers=h,
                         timeout=30)


def refused(r: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["error"] == error, body
    assert body["reason"] and body["request_id"] == r.headers["x-embedguard-request-id"]
    assert "Traceback" not in r.text
    return body


TICKET = {"actions": ["upsert"], "collections": ["docs-*"], "window": "1h",
          "max_operations": 2, "reason": "CHG-100"}


def test_callers_must_be_verified_and_nothing_goes_upstream(
    pair: tuple[GatewayProcess, GatewayProcess], dev_idp: str, upstream: RecordingUpstream
) -> None:
    a, _ = pair
    before = len(upstream.requests)
    r = call(a, "GET", "approvals")
    refused(r, 401, "unauthenticated")
    assert r.headers["www-authenticate"].lower().startswith("bearer")
    refused(call(a, "GET", "approvals", "forged.token.here"), 401, "unauthenticated")
    tok = mint_token(dev_idp, "ann", ["Vector-Approve"])
    refused(call(a, "GET", "nothing-here", tok), 404, "not_found")
    refused(call(a, "DELETE", "approvals", tok), 405, "method_not_allowed")
    refused(call(a, "GET", "approvals/..%2F..%2Fetc", tok), 404, "not_found")
    refused(call(a, "GET", "approvals?status=weird", tok), 400, "bad_request")
    r = httpx.post(f"{a.url}/_embedguard/tickets", content=b"{not json",
                   headers={"authorization": f"Bearer {tok}"}, timeout=30)
    refused(r, 400, "bad_request")
    refused(call(a, "POST", "tickets", tok, {**TICKET, "window": "forever"}), 400, "bad_request")
    refused(call(a, "POST", "tickets", tok, {**TICKET, "reason": ""}), 400, "bad_request")
    refused(call(a, "POST", "tickets", tok, {**TICKET, "max_operations": "2"}), 400,
            "bad_request")
    assert len(upstream.requests) == before
    # control calls are not data requests: no RequestReceived for them
    events = [d.event for d in read_events(a.log_url)]
    assert not any(isinstance(e, RequestReceived) and e.path.startswith("/_embedguard")
                   for e in events)


def test_ticket_opened_on_one_gateway_decided_on_the_other(
    pair: tuple[GatewayProcess, GatewayProcess], dev_idp: str, hook: tuple[str, _Hook],
) -> None:
    a, b = pair
    oscar = mint_token(dev_idp, "oscar", ["Vector-Write"])
    ann = mint_token(dev_idp, "ann", ["Vector-Approve"])
    eve = mint_token(dev_idp, "eve", ["Vector-Read"])
    r = call(a, "POST", "tickets", oscar, TICKET)
    assert r.status_code == 201, r.text
    tid = r.json()["approval_id"]
    assert r.json()["scope"]["max_operations"] == 2 and r.json()["grant"] is None

    # B has never seen it, yet answers from the shared log
    listed = call(b, "GET", "approvals?status=pending", ann).json()["approvals"]
    assert tid in [x["approval_id"] for x in listed]
    assert tid not in [x["approval_id"] for x in call(b, "GET", "approvals", eve)
                       .json()["approvals"]]
    refused(call(b, "GET", f"approvals/{tid}", eve), 404, "not_found")
    refused(call(b, "POST", f"approvals/{tid}/decision", oscar,
                 {"decision": "approve", "reason": "mine"}), 403, "self_approval")
    refused(call(b, "POST", f"approvals/{tid}/decision", eve,
                 {"decision": "approve", "reason": "sure"}), 403, "not_an_approver")
    refused(call(b, "POST", f"approvals/{tid}/decision", ann,
                 {"decision": "perhaps", "reason": "?"}), 400, "bad_request")
    r = call(b, "POST", f"approvals/{tid}/decision", ann,
             {"decision": "approve", "reason": "CHG-100 is on the calendar"})
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text

    # A (the status_url's gateway) answers with B's decision
    t = call(a, "GET", f"tickets/{tid}", oscar).json()
    assert t["status"] == "approved" and t["grant"]["issued_by"] == "ann"
    assert t["used_operations"] == 0
    assert call(a, "GET", f"approvals/{tid}", oscar).json()["approvals"][0]["subject"] == "ann"
    refused(call(a, "POST", f"approvals/{tid}/decision", ann,
                 {"decision": "deny", "reason": "again"}), 409, "already_decided")

    # A notified the webhook of the request (B has no webhook: one notification each)
    bodies = hook[1].wait_for(lambda bs: any(x["approval_id"] == tid for x in bs))
    mine = [x for x in bodies if x["approval_id"] == tid]
    assert mine[0]["event"] == "approval.requested" and "oscar" in mine[0]["text"]

    events = read_events(a.log_url)
    assert verify_chains(events) == []
    dec = [d.event for d in events if isinstance(d.event, ApprovalDecided)
           and d.event.approval_id == tid]
    assert len(dec) == 1 and dec[0].envelope.gateway_id != a.stderr_path.name
    started = [d.event for d in events if isinstance(d.event, GatewayStarted)]
    assert len({e.envelope.gateway_id for e in started}) == 2
    raw = Path(a.log_url.removeprefix("sqlite:")).read_bytes()
    for secret in (HOOK_SECRET.encode(), oscar.encode(), ann.encode()):
        assert secret not in raw
    assert HOOK_SECRET not in a.stderr() and HOOK_SECRET not in b.stderr()


def test_jit_grants_over_the_api(pair: tuple[GatewayProcess, GatewayProcess],
                                 dev_idp: str) -> None:
    a, b = pair
    ann = mint_token(dev_idp, "ann", ["Vector-Approve"])
    dana = mint_token(dev_idp, "dana", ["Vector-Read"])
    grant = {"subject": "dana", "actions": "upsert,delete", "collections": ["scratch"],
             "window": "30m", "reason": "incident 12"}
    r = call(a, "POST", "grants", ann, grant)
    assert r.status_code == 201, r.text
    gid = r.json()["grant_id"]
    assert r.json()["actions"] == ["delete", "write"]
    assert gid in [g["grant_id"] for g in call(b, "GET", "grants", dana).json()["grants"]]
    refused(call(a, "POST", "grants", dana, {**grant, "subject": "eve"}), 403, "not_an_approver")
    refused(call(a, "POST", "grants", ann, {**grant, "subject": "ann"}), 403, "grant_self")
    eve = mint_token(dev_idp, "eve", ["Vector-Read"])
    assert gid not in [g["grant_id"] for g in call(b, "GET", "grants", eve).json()["grants"]]


def test_dpop_bound_callers(pair: tuple[GatewayProcess, GatewayProcess], dev_idp: str,
                            tmp_path: Path) -> None:
    a, _ = pair
    key = tmp_path / "agent.pem"
    generate_dpop_key(key)
    token = mint_token(dev_idp, "agent-7", ["Vector-Write"], dpop_key_file=key)
    url = f"{a.url}/_embedguard/tickets"
    proof = make_dpop_proof(key, "POST", url, token)
    h = {"authorization": f"DPoP {token}", "dpop": proof}
    r = httpx.post(url, json=TICKET, headers=h, timeout=30)
    assert r.status_code == 201, r.text
    refused(httpx.post(url, json=TICKET, headers=h, timeout=30), 401, "unauthenticated")
    refused(httpx.post(url, json=TICKET, headers={"authorization": f"Bearer {token}"},
                       timeout=30), 401, "unauthenticated")


@pytest.mark.parametrize("case", ["own-url", "other-host", "other-port"])
def test_dpop_proofs_are_checked_against_the_gateways_own_url(
        pair: tuple[GatewayProcess, GatewayProcess], dev_idp: str, tmp_path: Path,
        case: str) -> None:
    """As on the data path (tests/capture/test_gateway_dpop.py): a proof made for
    another server does not pass with that server's Host header."""
    a, _ = pair
    key = tmp_path / "approver.pem"
    generate_dpop_key(key)
    token = mint_token(dev_idp, "bob", ["Vector-Approve"], dpop_key_file=key)
    path = "/_embedguard/approvals"
    made_for = {"own-url": f"{a.url}{path}",
                "other-host": f"http://vectors.other-team.example{path}",
                "other-port": f"http://127.0.0.1:{a.port + 1}{path}"}[case]
    headers = {"authorization": f"DPoP {token}",
               "dpop": make_dpop_proof(key, "GET", made_for, token)}
    if case != "own-url":
        headers["host"] = urllib.parse.urlsplit(made_for).netloc
    r = httpx.get(f"{a.url}{path}", headers=headers, timeout=30)
    if case == "own-url":
        assert r.status_code == 200 and "approvals" in r.json(), r.text
        return
    body = refused(r, 401, "unauthenticated")
    assert body["reason"].startswith("dpop_htu_mismatch"), body
    assert r.headers["www-authenticate"].startswith("DPoP ")


def test_approvals_list_limit_gives_the_newest_first(
    pair: tuple[GatewayProcess, GatewayProcess], dev_idp: str,
) -> None:
    a, _ = pair
    oscar = mint_token(dev_idp, "oscar", ["Vector-Write"])
    ann = mint_token(dev_idp, "ann", ["Vector-Approve"])
    opened = []
    for _ in range(3):
        r = call(a, "POST", "tickets", oscar, TICKET)
        assert r.status_code == 201, r.text
        opened.append(r.json()["approval_id"])
    every = [x["approval_id"] for x in call(a, "GET", "approvals", ann).json()["approvals"]]
    assert every[-3:] == opened  # oldest first without a limit, as before
    newest = [x["approval_id"]
              for x in call(a, "GET", "approvals?limit=2", ann).json()["approvals"]]
    assert newest == opened[::-1][:2]
    for bad in ("0", "1001", "two", "-1"):
        refused(call(a, "GET", f"approvals?limit={bad}", ann), 400, "bad_request")
