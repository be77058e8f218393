"""A warehouse seeded by a REAL recorded scenario, for the dashboard tests.

Once per session: a real Chroma server, the dev OIDC issuer, a real
``embedguard gateway`` process recording to a SQLite log, traffic with real
tokens (an administrator fills a collection, alice searches and reads with
e-mail masked, alice's writes wait for approval in async mode, carol denies
one of them through the control API, mallory is denied), then ``embedguard
loader --once`` loads the log into a lake warehouse.

The dashboard runs in process under ``streamlit.testing.v1.AppTest``; the
signed-in user is simulated through the auth module's documented seam
(``EMBEDGUARD_DASHBOARD_TEST_SEAM=1`` + ``st.session_state["embedguard_test_user"]``)
with real access tokens from the dev issuer, so the gateway checks them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from capture.devidp import mint_token
from capture.signing_keys import load_signing_key
from tests.support.approval_e2e import CHROMA_T, api, decide
from tests.support.gateway import GatewayProcess, gateway_process
from tests.support.services import chroma_server

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "dashboard" / "app.py")

POLICY = """\
version: 1
change_ticket_header: X-Change-Ticket
approvers:
  groups_any_of: [[Vector-Approve]]
  min_approvals: 1
  expires_after: 2h
  mode: async
rules:
  - id: health
    effect: allow
    subjects: {authenticated: true}
    actions: [health]
    collections: ["*"]
    no_collection: true
  - id: setup
    description: the administrator creates and fills collections
    effect: allow
    subjects: {groups: [Vector-Admin]}
    actions: [admin, schema, read, write, search]
    collections: ["*"]
    no_collection: true
  - id: ds-search
    description: data scientists search and read, e-mail masked
    effect: allow
    subjects: {groups: [Vector-Read]}
    actions: [search, read, schema]
    collections: ["*"]
    no_collection: true
    obligations:
      mask: {detectors: [email], fields: [email], mode: placeholder}
  - id: ds-change
    description: data scientists' writes wait for a Vector-Approve peer
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write, delete]
    collections: ["*"]
"""

EMB = [[0.1, 0.2, 0.3], [0.3, 0.4, 0.5], [0.5, 0.6, 0.7]]
SECRET_EMAIL = "ceo.private@example.com"


@dataclass
class Seeded:
    issuer: str
    gateway: GatewayProcess
    log_url: str
    warehouse_url: str
    policy: Path
    data_dir: Path
    #: approval ids still pending, by purpose
    pending: dict[str, str] = field(default_factory=dict)
    denied: str = ""
    collection: str = "docs-main"
    collection_id: str = ""
    alice_session: str = ""

    def token(self, sub: str, groups: list[str]) -> str:
        return mint_token(self.issuer, sub, groups)

    def user(self, sub: str, groups: list[str]) -> dict[str, Any]:
        return {"subject": sub, "issuer": self.issuer, "groups": groups,
                "access_token": self.token(sub, groups)}


def _ok(r: Any, *codes: int) -> Any:
    assert r.status_code in (codes or (200,)), r.text
    return r.json()


def _record(s: Seeded) -> None:
    gw = s.gateway.url
    root = s.token("root", ["Vector-Admin"])
    alice = s.token("alice", ["Vector-Read"])
    mallory = s.token("mallory", [])
    ids = {}
    for name in (s.collection, "batch-a", "batch-b", "batch-c"):
        ids[name] = _ok(api(gw, "POST", f"{CHROMA_T}/collections", root,
                            {"name": name, "get_or_create": True}))["id"]
    s.collection_id = ids[s.collection]
    _ok(api(gw, "POST", f"{CHROMA_T}/collections/{s.collection_id}/upsert", root, {
        "ids": ["p-1", "p-2", "p-3"], "embeddings": EMB,
        "documents": ["alpha quarterly report", "beta roadmap", "gamma contract"],
        "metadatas": [{"email": SECRET_EMAIL}, {"team": "x"}, {"team": "y"}],
    }), 200, 201)
    # alice searches and reads: allowed, e-mail masked in what she gets
    found = _ok(api(gw, "POST", f"{CHROMA_T}/collections/{s.collection_id}/query", alice, {
        "query_embeddings": [EMB[0]], "n_results": 3,
        "include": ["documents", "metadatas", "distances"]}))
    assert SECRET_EMAIL not in str(found)
    _ok(api(gw, "POST", f"{CHROMA_T}/collections/{s.collection_id}/get", alice,
            {"ids": ["p-1", "p-2"], "include": ["documents", "metadatas"]}))
    # alice's writes are held for approval (async: 202 with the approval id)
    for purpose, name in (("approve", "batch-a"), ("deny", "batch-b"), ("other", "batch-c")):
        held = _ok(api(gw, "POST", f"{CHROMA_T}/collections/{ids[name]}/upsert", alice,
                       {"ids": [f"{name}-1", f"{name}-2"], "embeddings": EMB[:2]}), 202)
        s.pending[purpose] = held["approval_id"]
    # carol denies one now, so the console shows a decided approval
    carol = s.token("carol", ["Vector-Approve"])
    s.denied = s.pending.pop("other")
    r = decide(gw, carol, s.denied, "deny", "not during the freeze")
    assert r.status_code == 200, r.text
    # mallory has no groups: denied
    r = api(gw, "POST", f"{CHROMA_T}/collections/{s.collection_id}/query", mallory,
            {"query_embeddings": [EMB[0]], "n_results": 1})
    assert r.status_code == 403, r.text


def load(log_url: str, warehouse_url: str, data_dir: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "embedguard.cli", "loader", "--once", "--log", log_url,
         "--warehouse", warehouse_url, "--status-dir", str(data_dir / "loader")],
        check=True, cwd=ROOT, timeout=300, capture_output=True)


@pytest.fixture(scope="session")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    from capture.devidp import serve

    tmp = tmp_path_factory.mktemp("dashboard")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    idp = serve("127.0.0.1", 0, tmp / "idp-data")
    try:
        with chroma_server(tmp / "chroma") as chroma_url, gateway_process(
            tmp, upstream=chroma_url, kind="chroma", policy=policy, issuer=idp.issuer_url,
        ) as gw:
            s = Seeded(issuer=idp.issuer_url, gateway=gw, log_url=gw.log_url,
                       warehouse_url=f"lake:{tmp / 'lake'}", policy=policy, data_dir=tmp)
            _record(s)
            load(s.log_url, s.warehouse_url, tmp)
            yield s
    finally:
        idp.shutdown()


@pytest.fixture
def dash_env(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> Seeded:
    """The environment `embedguard dashboard` gives the app, plus the test seam."""
    for name, value in {
        "EMBEDGUARD_WAREHOUSE": seeded.warehouse_url,
        "EMBEDGUARD_LOG": seeded.log_url,
        "EMBEDGUARD_DATA_DIR": str(seeded.data_dir),
        "EMBEDGUARD_GATEWAY_URL": seeded.gateway.url,
        "EMBEDGUARD_POLICY": str(seeded.policy),
        "EMBEDGUARD_DASHBOARD_TEST_SEAM": "1",
        "EMBEDGUARD_TARGETS": json.dumps([
            {"name": "staging", "url": seeded.gateway.url, "production": False},
            {"name": "prod", "url": seeded.gateway.url, "production": True},
        ]),
        "EMBEDGUARD_GATEWAY_VKEYS": load_signing_key(
            seeded.data_dir / "gateway.key").verifier.vkey,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("EMBEDGUARD_DASHBOARD_ROLES", raising=False)
    assert os.environ["EMBEDGUARD_DASHBOARD_TEST_SEAM"] == "1"
    return seeded
