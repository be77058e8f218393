"""One recorded scenario shared by the replay tests (session-scoped, so the
suite records it once): a real `embedguard gateway` process in front of a real
Chroma server, real tokens from the dev issuer, a real SQLite log, loaded into
a Delta warehouse by the real loader.

Phases (Chroma's ids are read directly from Chroma after each, with the time):

1. ``ingest-job`` imports 20 documents (one request: the bulk import);
2. ``alice`` upserts a1, a2 (held until ``bob`` approves); ``root`` deletes doc-03;
3. ``oscar`` upserts o1 under a change ticket ``bob`` approved;
4. ``carol`` searches and gets (the session the replay tests replay); ``root``
   changes doc-02's document; ``dave`` runs carol's search again;
5. ``root`` fills kb-filter and deletes by filter (ids unknown to the gateway).
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from capture.devidp import mint_token
from capture.signing_keys import load_signing_key
from tests.support.approval_e2e import CHROMA_T, api, approval_requested, decide
from tests.support.gateway import gateway_process
from tests.support.services import chroma_server

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
    effect: allow
    subjects: {groups: [Vector-Admin]}
    actions: [admin, schema, read, write, delete, search]
    collections: ["*"]
    no_collection: true
  - id: readers
    effect: allow
    subjects: {groups: [Vector-Read, Vector-Write, Vector-Ingest]}
    actions: [search, read, schema]
    collections: ["*"]
    no_collection: true
  - id: ingest
    effect: allow
    subjects: {groups: [Vector-Ingest]}
    actions: [write]
    collections: ["kb*"]
  - id: ds-change
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write, delete]
    collections: ["kb*"]
  - id: ops-write
    effect: allow
    subjects: {groups: [Vector-Write]}
    actions: [write, delete]
    collections: ["*"]
    conditions: {require_change_ticket: true}
"""

COLLECTION = "kb-main"
FILTER_COLLECTION = "kb-filter"
N_DOCS = 20


def emb(i: int) -> list[float]:
    return [float(i), float(i % 3), 1.0]


@dataclass
class Scenario:
    gateway_url: str
    chroma_url: str
    issuer: str
    log_url: str
    lake_url: str
    gateway_vkey: str
    tmp: Path
    cid: str
    #: (time just after the phase, ids Chroma held then)
    states: list[tuple[datetime, list[str]]] = field(default_factory=list)
    approval_id: str = ""
    ticket_id: str = ""
    sessions: dict[str, str] = field(default_factory=dict)
    query_body: dict[str, Any] = field(default_factory=dict)
    filter_cid: str = ""
    filter_ids_after: list[str] = field(default_factory=list)


def chroma_ids(chroma_url: str, cid: str) -> list[str]:
    r = httpx.post(
        f"{chroma_url}{CHROMA_T}/collections/{cid}/get", json={"include": []}, trust_env=False
    )
    r.raise_for_status()
    return sorted(r.json()["ids"])


def chroma_update_document(chroma_url: str, cid: str, pid: str, document: str) -> None:
    r = httpx.post(
        f"{chroma_url}{CHROMA_T}/collections/{cid}/update",
        json={"ids": [pid], "documents": [document]},
        trust_env=False,
    )
    r.raise_for_status()


@pytest.fixture(scope="session")
def replay_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from capture.devidp import serve

    server = serve("127.0.0.1", 0, tmp_path_factory.mktemp("replay-idp"))
    try:
        yield server.issuer_url
    finally:
        server.shutdown()


@pytest.fixture(scope="session")
def replay_chroma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with chroma_server(tmp_path_factory.mktemp("replay-chroma") / "data") as url:
        yield url


def _ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json() if r.content else {}
    return body


def _session_of(lake_url: str, subject: str) -> str:
    from pipeline import queries
    from pipeline.warehouse import open_warehouse

    with open_warehouse(lake_url) as wh:
        rows = queries.sessions_list(wh, queries.SessionFilter(actor=subject))
    assert len(rows) == 1, rows
    return str(rows[0]["session_id"])


@pytest.fixture(scope="session")
def scenario(
    tmp_path_factory: pytest.TempPathFactory, replay_idp: str, replay_chroma: str
) -> Scenario:
    tmp = tmp_path_factory.mktemp("replay-scenario")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    issuer = replay_idp

    def tok(sub: str, groups: list[str]) -> str:
        return mint_token(issuer, sub, groups)

    with (
        gateway_process(
            tmp,
            upstream=replay_chroma,
            kind="chroma",
            policy=policy,
            issuer=issuer,
            extra_args=["--max-hold", "2m", "--checkpoint-every", "16"],
        ) as gw,
        concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool,
    ):
        root = tok("root", ["Vector-Admin"])
        cid = _ok(api(gw.url, "POST", f"{CHROMA_T}/collections", root, {"name": COLLECTION}))["id"]
        coll = f"{CHROMA_T}/collections/{cid}"
        sc = Scenario(
            gw.url, replay_chroma, issuer, gw.log_url, f"lake:{tmp / 'lake'}", "", tmp, cid
        )

        # 1. the bulk import
        ids = [f"doc-{i:02d}" for i in range(N_DOCS)]
        _ok(
            api(
                gw.url,
                "POST",
                f"{coll}/upsert",
                tok("ingest-job", ["Vector-Ingest"]),
                {
                    "ids": ids,
                    "embeddings": [emb(i) for i in range(N_DOCS)],
                    "documents": [f"document {i}" for i in range(N_DOCS)],
                    "metadatas": [{"group": "a" if i % 2 else "b"} for i in range(N_DOCS)],
                },
            )
        )
        sc.states.append((datetime.now(UTC), chroma_ids(replay_chroma, cid)))

        # 2. alice's upsert, held until bob approves; root deletes doc-03
        alice = tok("alice", ["Vector-Read"])
        held = pool.submit(
            api,
            gw.url,
            "POST",
            f"{coll}/upsert",
            alice,
            {"ids": ["a1", "a2"], "embeddings": [emb(101), emb(102)], "documents": ["x", "y"]},
        )
        req = approval_requested(gw.log_url, subject="alice", collection=COLLECTION)
        sc.approval_id = req.approval_id
        bob = tok("bob", ["Vector-Approve"])
        assert decide(gw.url, bob, req.approval_id, "approve").status_code == 200
        _ok(held.result(timeout=120))
        _ok(api(gw.url, "POST", f"{coll}/delete", root, {"ids": ["doc-03"]}))
        sc.states.append((datetime.now(UTC), chroma_ids(replay_chroma, cid)))

        # 3. oscar writes under a change ticket
        oscar = tok("oscar", ["Vector-Write"])
        r = api(
            gw.url,
            "POST",
            "/_embedguard/tickets",
            oscar,
            {
                "reason": "planned change",
                "window": "1h",
                "actions": ["write"],
                "collections": ["kb*"],
                "max_operations": 2,
            },
        )
        assert r.status_code == 201, r.text
        sc.ticket_id = r.json()["approval_id"]
        assert decide(gw.url, bob, sc.ticket_id, "approve").status_code == 200
        _ok(
            api(
                gw.url,
                "POST",
                f"{coll}/upsert",
                oscar,
                {"ids": ["o1"], "embeddings": [emb(201)], "documents": ["ticketed"]},
                headers={"X-Change-Ticket": sc.ticket_id},
            )
        )
        sc.states.append((datetime.now(UTC), chroma_ids(replay_chroma, cid)))

        # 4. carol's read session, a change, dave's identical search, a delete by filter
        sc.query_body = {
            "query_embeddings": [emb(1)],
            "n_results": 5,
            "include": ["documents", "metadatas", "distances"],
        }
        carol = tok("carol", ["Vector-Read"])
        _ok(api(gw.url, "POST", f"{coll}/query", carol, sc.query_body))
        _ok(
            api(
                gw.url,
                "POST",
                f"{coll}/get",
                carol,
                {"ids": ["doc-01", "doc-02", "doc-05"], "include": ["documents"]},
            )
        )
        _ok(
            api(
                gw.url,
                "POST",
                f"{coll}/update",
                root,
                {"ids": ["doc-02"], "documents": ["document 2, revised"]},
            )
        )
        _ok(api(gw.url, "POST", f"{coll}/query", tok("dave", ["Vector-Read"]), sc.query_body))
        # a delete by filter, in a collection of its own (ids unknown to the gateway)
        fid = _ok(
            api(gw.url, "POST", f"{CHROMA_T}/collections", root, {"name": FILTER_COLLECTION})
        )["id"]
        _ok(
            api(
                gw.url,
                "POST",
                f"{CHROMA_T}/collections/{fid}/upsert",
                root,
                {
                    "ids": ["f1", "f2", "f3", "f4"],
                    "embeddings": [emb(i) for i in range(4)],
                    "metadatas": [{"group": g} for g in "abab"],
                },
            )
        )
        _ok(
            api(
                gw.url,
                "POST",
                f"{CHROMA_T}/collections/{fid}/delete",
                root,
                {"where": {"group": "b"}},
            )
        )
        sc.filter_cid = fid
        sc.filter_ids_after = chroma_ids(replay_chroma, fid)
    # the gateway stopped cleanly: its last checkpoint covers everything
    sc.gateway_vkey = load_signing_key(tmp / "gateway.key").verifier.vkey
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedguard.cli",
            "loader",
            "--once",
            "--log",
            sc.log_url,
            "--warehouse",
            sc.lake_url,
            "--status-dir",
            str(tmp / "status"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for who in ("carol", "dave", "alice", "oscar", "ingest-job"):
        sc.sessions[who] = _session_of(sc.lake_url, who)
    return sc


@dataclass
class Bundle:
    path: Path
    export_vkey: str
    export_key: Path
    summary: dict[str, Any]


@pytest.fixture(scope="session")
def bundle(scenario: Scenario) -> Bundle:
    """The scenario exported once with `embedguard export` (tests copy it to tamper)."""
    import json

    from typer.testing import CliRunner

    from embedguard.cli import app

    key = scenario.tmp / "keys" / "export.key"
    out = scenario.tmp / "bundle"
    res = CliRunner().invoke(
        app,
        [
            "export",
            "--out",
            str(out),
            "--export-key",
            str(key),
            "--viewer",
            "auditor-ann",
            "--log",
            scenario.log_url,
            "--bulk-threshold",
            "10",
            "--warehouse",
            scenario.lake_url,
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    return Bundle(out, summary["export_vkey"], key, summary)
