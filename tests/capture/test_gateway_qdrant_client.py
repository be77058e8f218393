"""The requests the official qdrant-client actually sends, captured through the
gateway into a recording upstream.

qdrant-client (from the peers venv, over REST) → a real `embedguard gateway`
process (kind qdrant) → a recording upstream that answers the Qdrant JSON the
client's response models parse. Tokens come from the dev issuer; events from
the gateway's real SQLite log. Each call's classification is checked against
the classifier corpus (``tests/capture/classify/test_qdrant_client_requests.py``),
whose recorded requests use the same arguments as the driver.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from capture.devidp import mint_token
from tests.capture.classify.test_qdrant_client_requests import EXPECTED, RECORDED, UID
from tests.support.approval_e2e import approved_ticket
from tests.support.events import read_events
from tests.support.gateway import UPSTREAM_SECRET, GatewayProcess, gateway_process
from tests.support.services import PEERS_PYTHON, ROOT
from tests.support.upstream import RecordingUpstream, recording_upstream

DRIVER = ROOT / "tests" / "support" / "qdrant_client_driver.py"
CLIENT_API_KEY = "client-side-qdrant-key-51e0"

POLICY = """\
version: 1
change_ticket_header: X-Change-Ticket
approvers:
  groups_any_of: [[Vector-Approve]]
rules:
  - id: admin-all
    description: Administrators do everything to collections, with an approved change ticket
    effect: allow
    subjects: {groups: [Vector-Admin]}
    actions: ["*"]
    collections: ["*"]
    conditions: {require_change_ticket: true}
  - id: admin-cluster
    description: Administrators look at the cluster (no ticket covers it)
    effect: allow
    subjects: {groups: [Vector-Admin]}
    actions: [health, schema]
    no_collection: true
  - id: reader
    description: Readers search and read, e-mail addresses masked
    effect: allow
    subjects: {groups: [Vector-Read]}
    actions: [search, read]
    collections: ["*"]
    obligations:
      mask: {detectors: [email], fields: [email], mode: placeholder}
  - id: reader-changes-held
    description: Readers' writes wait for an approver
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write, delete]
    collections: ["*"]
"""

#: every call the driver makes for the administrator, in order
ADMIN_STEPS = [
    "info",
    "create_collection",
    "collection_exists",
    "get_collections",
    "upsert_points",
    "query_points",
    "retrieve",
    "scroll",
    "count",
    "set_payload",
    "delete_by_filter",
    "delete_collection",
]
#: the ids the upstream answers with, and so the ids the gateway must record
RESULT_IDS = {"retrieve": ["1", "2"], "query_points": ["1", UID], "scroll": ["1", UID]}
#: the method and path qdrant-client uses for each call (from the corpus)
ROUTE_OF = {r["call"]: (r["method"], r["path"]) for r in RECORDED}
UPDATE = {"operation_id": 7, "status": "completed"}


def _point(pid: int | str, **extra: Any) -> dict[str, Any]:
    return {
        "id": pid,
        "payload": {"email": "bob@example.org", "tenant": "t1"},
        "vector": [0.1, 0.2],
        **extra,
    }


def qdrant_answer(method: str, path: str, body: bytes) -> Any:
    """Plausible Qdrant answers, shaped so qdrant-client's models parse them."""
    path = path.split("?", 1)[0]
    if path == "/":
        return {"title": "qdrant - vector search engine", "version": "1.13.0", "commit": "0" * 40}
    routes: list[tuple[str, str, Any]] = [
        ("GET", r"/collections", {"collections": [{"name": "docs"}]}),
        ("GET", r"/collections/[^/]+/exists", {"exists": True}),
        ("PUT|DELETE", r"/collections/[^/]+", True),
        (
            "POST",
            r"/collections/[^/]+/points",
            [_point(i) for i in (json.loads(body or b"{}").get("ids") or [])],
        ),
        (
            "POST",
            r"/collections/[^/]+/points/query",
            {"points": [_point(1, version=3, score=0.99), _point(UID, version=3, score=0.5)]},
        ),
        (
            "POST",
            r"/collections/[^/]+/points/scroll",
            {"points": [_point(1), _point(UID)], "next_page_offset": None},
        ),
        ("POST", r"/collections/[^/]+/points/count", {"count": 2}),
    ]
    for methods, pattern, result in routes:
        if method in methods.split("|") and re.fullmatch(pattern, path):
            return {"result": result, "status": "ok", "time": 0.0001}
    return {"result": UPDATE, "status": "ok", "time": 0.0001}


def run_qdrant_client(
    url: str,
    steps: list[str],
    token: str | None,
    *,
    headers: dict[str, str] | None = None,
    api_key: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Run ``steps`` with the official client; the result of each, by step name."""
    if not PEERS_PYTHON.exists():
        raise RuntimeError(f"{PEERS_PYTHON} is missing: run `make test` (it builds .venv-peers)")
    env = {**os.environ, "EG_HEADERS": json.dumps(headers or {})}
    env.pop("EG_TOKEN", None)
    env.pop("EG_API_KEY", None)
    if token:
        env["EG_TOKEN"] = token
    if api_key:
        env["EG_API_KEY"] = api_key
    proc = subprocess.run(
        [str(PEERS_PYTHON), str(DRIVER), url],
        input=json.dumps(steps),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"qdrant-client driver failed:\n{proc.stderr[-3000:]}")
    out = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [o["step"] for o in out] == steps, proc.stderr[-3000:]
    return {o["step"]: o for o in out}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream(qdrant_answer) as up:
        yield up


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, dev_idp: str, upstream: RecordingUpstream
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("gw-qdrant-client")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    with gateway_process(
        tmp, upstream=upstream.url, kind="qdrant", policy=policy, issuer=dev_idp,
        # a reader's write waits for an approval that never comes here
        extra_args=["--max-hold", "1s"],
    ) as g:
        yield g


@pytest.fixture(scope="module")
def admin_run(
    gw: GatewayProcess, dev_idp: str, upstream: RecordingUpstream
) -> tuple[str, dict[str, dict[str, Any]], int]:
    """The administrator runs every call once; returns (token, results, first upstream index)."""
    admin = mint_token(dev_idp, "ada", ["Vector-Admin"])
    ticket = approved_ticket(
        gw.url, admin, mint_token(dev_idp, "bob", ["Vector-Approve"]),
        actions=["search", "read", "write", "delete", "admin", "schema"], collections=["*"])
    first = len(upstream.requests)
    results = run_qdrant_client(gw.url, ADMIN_STEPS, admin, headers={"X-Change-Ticket": ticket},
                                api_key=CLIENT_API_KEY)
    return admin, results, first


def _ops_match(got: list[Any], want: list[dict[str, Any]]) -> None:
    dumped = [o.model_dump(mode="json") for o in got]
    assert len(dumped) == len(want), dumped
    for g, w in zip(dumped, want, strict=True):
        for key, value in w.items():
            assert g[key] == value, (key, g, w)


def test_every_admin_call_is_classified_and_answered(
    admin_run: tuple[str, dict[str, dict[str, Any]], int],
) -> None:
    _, results, _ = admin_run
    failed = {s: r for s, r in results.items() if not r["ok"]}
    assert not failed, failed
    # the client parsed the upstream's answers as delivered by the gateway
    assert results["collection_exists"]["result"] is True
    assert results["count"]["result"] == {"count": 2}
    assert [p["id"] for p in results["retrieve"]["result"]] == [1, 2]
    assert [p["id"] for p in results["query_points"]["result"]["points"]] == [1, UID]
    assert results["upsert_points"]["result"]["status"] == "completed"


def test_each_call_reached_upstream_once_with_the_gateways_key(
    admin_run: tuple[str, dict[str, dict[str, Any]], int], upstream: RecordingUpstream
) -> None:
    admin, _, first = admin_run
    got = upstream.requests[first : first + len(ADMIN_STEPS) + 1]
    assert [(r.method, r.path.split("?", 1)[0]) for r in got] == [ROUTE_OF[s] for s in ADMIN_STEPS]
    for step, rec in zip(ADMIN_STEPS, got, strict=True):
        assert rec.headers.get("api-key") == UPSTREAM_SECRET, step
        assert "authorization" not in rec.headers, step
        assert admin not in json.dumps(rec.headers) and CLIENT_API_KEY not in json.dumps(
            rec.headers
        ), step
        assert rec.headers.get("host") == upstream.url.removeprefix("http://"), step


def test_events_match_the_classifier_corpus(
    admin_run: tuple[str, dict[str, dict[str, Any]], int], gw: GatewayProcess
) -> None:
    admin, _, _ = admin_run
    evs = read_events(gw.log_url)
    by_rid: dict[str, dict[str, Any]] = {}
    for e in evs:
        rid = e.event.envelope.request_id
        if rid:
            by_rid.setdefault(rid, {})[e.event.avro_name] = e.event
    admin_requests = [
        kinds
        for kinds in by_rid.values()
        if "RequestReceived" in kinds
        and kinds["RequestReceived"].headers
        and any(h.name == "x-change-ticket" for h in kinds["RequestReceived"].headers)
    ]
    assert len(admin_requests) == len(ADMIN_STEPS)
    for step, kinds in zip(ADMIN_STEPS, admin_requests, strict=True):
        received = kinds["RequestReceived"]
        assert (received.method, received.path) == ROUTE_OF[step]
        assert received.product == "qdrant"
        _ops_match(received.operations, EXPECTED[step])
        assert all(o.action.value != "unknown" for o in received.operations), step
        assert kinds["PolicyDecided"].outcome == "allow", step
        assert "RequestForwarded" in kinds and "RequestBlocked" not in kinds, step
        recorded = kinds["ResponseRecorded"]
        assert recorded.status == 200, step
        assert recorded.result_ids == RESULT_IDS.get(step, []), step
        # the client's credentials were recorded only as redacted headers
        headers = {h.name: h.value for h in received.headers}
        assert headers["authorization"] == headers["api-key"] == "[REDACTED]", step
    raw = b"".join(e.canonical for e in evs)
    for secret in (UPSTREAM_SECRET, admin, CLIENT_API_KEY):
        assert secret.encode() not in raw
    assert UPSTREAM_SECRET not in gw.stderr() and admin not in gw.stderr()


def test_reader_searches_masked_and_her_upsert_never_reaches_upstream(
    admin_run: tuple[str, dict[str, dict[str, Any]], int],
    gw: GatewayProcess,
    dev_idp: str,
    upstream: RecordingUpstream,
) -> None:
    reader = mint_token(dev_idp, "rita", ["Vector-Read"])
    before = len(upstream.requests)
    res = run_qdrant_client(
        gw.url,
        ["query_points", "scroll", "upsert_points", "get_collections", "delete_by_filter"],
        reader,
    )
    assert res["query_points"]["ok"] and res["scroll"]["ok"], res
    payloads = [p["payload"] for p in res["query_points"]["result"]["points"]]
    assert payloads and all(p["email"] != "bob@example.org" for p in payloads)
    assert "[MASKED:" in json.dumps(payloads)

    # held for approval; nobody decides within the gateway's 1s maximum hold
    upsert = res["upsert_points"]
    assert not upsert["ok"] and upsert["status"] == 403, upsert
    assert json.loads(upsert["error"])["error"] == "approval_expired"
    listing = res["get_collections"]
    assert not listing["ok"] and listing["status"] == 403
    assert json.loads(listing["error"])["error"] == "policy_denied"
    delete = res["delete_by_filter"]
    assert not delete["ok"] and delete["status"] == 403
    assert json.loads(delete["error"])["error"] == "approval_expired"

    # only the reads, and the gateway's own read-only count of what the delete
    # by filter would touch (for its approvers), reached the upstream
    reached = upstream.requests[before:]
    assert [(r.method, r.path.split("?", 1)[0]) for r in reached] == [
        ROUTE_OF["query_points"],
        ROUTE_OF["scroll"],
        ("POST", "/collections/docs/points/count"),
    ]
    assert reached[-1].headers.get("api-key") == UPSTREAM_SECRET
    blocked = [e.event for e in read_events(gw.log_url) if e.event.avro_name == "RequestBlocked"]
    reasons = {b.error: b for b in blocked}
    assert reasons["approval_expired"].stage == "approval"
    assert reasons["policy_denied"].stage == "policy"
