"""`embedguard approvals | tickets | grants` against a real gateway process, with
real tokens from the dev issuer and a real SQLite event log. The gateway
enforces the rules; the CLI only has to carry them and say them clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from capture.devidp import mint_token
from embedguard.cli import app
from schemas.chain import verify_chains
from schemas.models import (
    ApprovalDecided,
    ApprovalRequested,
    GrantIssued,
    IdentityResolved,
)
from tests.support.events import read_events
from tests.support.gateway import UPSTREAM_SECRET, GatewayProcess, gateway_process
from tests.support.upstream import RecordingUpstream, recording_upstream

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "examples" / "policy.yaml"

runner = CliRunner()


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from capture.devidp import serve

    server = serve("127.0.0.1", 0, tmp_path_factory.mktemp("idp"))
    try:
        yield server.issuer_url
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as up:
        yield up


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, idp: str, upstream: RecordingUpstream
) -> Iterator[GatewayProcess]:
    with gateway_process(
        tmp_path_factory.mktemp("gw"), upstream=upstream.url, kind="qdrant", policy=POLICY,
        issuer=idp,
    ) as g:
        yield g


def cli(gw: GatewayProcess, token: str | None, *args: str) -> Any:
    env = {"EMBEDGUARD_GATEWAY_URL": gw.url}
    if token is not None:
        env["EMBEDGUARD_TOKEN"] = token
    result = runner.invoke(app, list(args), env=env)
    if token is not None:
        assert token not in result.output
        assert token not in (result.stderr or "")
    return result


def ok_json(result: Any) -> Any:
    assert result.exit_code == 0, result.output + (result.stderr or "")
    return json.loads(result.stdout)


def open_ticket(gw: GatewayProcess, token: str, **kw: str) -> dict[str, Any]:
    args = ["tickets", "open", "--actions", kw.get("actions", "upsert,delete"),
            "--collections", kw.get("collections", "docs-*"), "--window", "2h",
            "--max-operations", "5", "--reason", kw.get("reason", "reindex docs"), "--json"]
    return ok_json(cli(gw, token, *args))  # type: ignore[no-any-return]


def test_ticket_approved_by_a_peer_refused_to_its_requester(
    gw: GatewayProcess, idp: str, upstream: RecordingUpstream
) -> None:
    # pat may approve other people's work, which makes self-approval the real risk
    pat = mint_token(idp, "pat", ["Vector-Write", "Vector-Approve"])
    pat_again = mint_token(idp, "pat", ["Vector-Write", "Vector-Approve"])
    ann = mint_token(idp, "ann", ["Vector-Approve"])
    t = open_ticket(gw, pat)
    tid = t["approval_id"]
    assert t["status"] == "pending" and t["kind"] == "ticket"
    assert t["scope"]["actions"] == ["delete", "write"]
    assert t["scope"]["collections"] == ["docs-*"] and t["scope"]["max_operations"] == 5

    pending = ok_json(cli(gw, ann, "approvals", "list", "--pending", "--json"))
    assert tid in [a["approval_id"] for a in pending]

    for token in (pat, pat_again):  # the same subject under another token is still pat
        r = cli(gw, token, "approvals", "approve", tid, "--reason", "looks fine to me")
        assert r.exit_code == 1
        assert "self_approval" in r.stderr and "pat" in r.stderr
        assert "another token for the same subject does not count" in r.stderr
        assert "request id" in r.stderr
    shown = ok_json(cli(gw, ann, "approvals", "show", tid, "--json"))
    assert shown["status"] == "pending" and shown["approvals"] == []

    r = cli(gw, ann, "approvals", "approve", tid, "--reason", "change CHG-42 reviewed")
    assert r.exit_code == 0, r.output + r.stderr
    assert "approved" in r.stdout
    ticket = ok_json(cli(gw, pat, "tickets", "show", tid, "--json"))
    assert ticket["status"] == "approved"
    assert [v["subject"] for v in ticket["approvals"]] == ["ann"]
    assert ticket["grant"]["grant_id"] == tid and ticket["grant"]["issued_by"] == "ann"

    r = cli(gw, ann, "approvals", "deny", tid, "--reason", "too late")
    assert r.exit_code == 1 and "already_decided" in r.stderr
    text = cli(gw, ann, "tickets", "show", tid)
    assert text.exit_code == 0, text.output
    for shown_line in ("requester  pat", "approvers  1 of [Vector-Approve]",
                       "scope      delete, write on docs-*", "approved   by ann"):
        assert shown_line in text.stdout
    table = cli(gw, ann, "approvals", "list")
    assert table.exit_code == 0 and tid in table.stdout  # whole, on one line

    # the log holds the request, the decision with the approver's verified
    # identity in the approver's own session, and the grant, all by ids
    events = [d.event for d in read_events(gw.log_url)]
    assert verify_chains(read_events(gw.log_url)) == []
    req = [e for e in events if isinstance(e, ApprovalRequested) and e.approval_id == tid]
    dec = [e for e in events if isinstance(e, ApprovalDecided) and e.approval_id == tid]
    grant = [e for e in events if isinstance(e, GrantIssued) and e.approval_id == tid]
    assert len(req) == 1 and len(dec) == 1 and len(grant) == 1
    assert req[0].requester_subject == "pat" and dec[0].approver_subject == "ann"
    assert dec[0].reason == "change CHG-42 reviewed" and dec[0].decision == "approve"
    who = [e for e in events if isinstance(e, IdentityResolved)
           and e.envelope.session_id == dec[0].envelope.session_id]
    assert who and who[0].subject == "ann" and "Vector-Approve" in who[0].groups
    assert grant[0].envelope.session_id == dec[0].envelope.session_id
    raw = Path(gw.log_url.removeprefix("sqlite:")).read_bytes()
    for secret in (pat.encode(), ann.encode(), UPSTREAM_SECRET.encode()):
        assert secret not in raw
    assert upstream.requests == []  # the control API never goes upstream


def test_deny_wins_and_outsiders_cannot_decide(gw: GatewayProcess, idp: str) -> None:
    oscar = mint_token(idp, "oscar", ["Vector-Write"])
    bob = mint_token(idp, "bob", ["Vector-Approve"])
    eve = mint_token(idp, "eve", ["Vector-Read"])
    tid = open_ticket(gw, oscar, collections="logs-*")["approval_id"]

    r = cli(gw, eve, "approvals", "approve", tid, "--reason", "sure")
    assert r.exit_code == 1 and "not_an_approver" in r.stderr
    assert "[Vector-Approve]" in r.stderr  # names the groups that may decide
    # eve can neither decide nor see it
    assert cli(gw, eve, "approvals", "show", tid).exit_code == 1

    r = cli(gw, bob, "approvals", "deny", tid, "--reason", "no change window today")
    assert r.exit_code == 0 and "denied" in r.stdout
    t = ok_json(cli(gw, oscar, "tickets", "show", tid, "--json"))
    assert t["status"] == "denied" and t["denials"][0]["subject"] == "bob"
    assert t["grant"] is None
    # the requester sees it among theirs; the list without --pending has it too
    mine = ok_json(cli(gw, oscar, "approvals", "list", "--json"))
    assert tid in [a["approval_id"] for a in mine]
    assert tid not in [a["approval_id"] for a in
                       ok_json(cli(gw, oscar, "approvals", "list", "--pending", "--json"))]


def test_grants_issue_and_list(gw: GatewayProcess, idp: str) -> None:
    ann = mint_token(idp, "ann", ["Vector-Approve"])
    dana = mint_token(idp, "dana", ["Vector-Read"])
    g = ok_json(cli(gw, ann, "grants", "issue", "--subject", "dana", "--actions", "upsert",
                    "--collections", "scratch-*", "--window", "1h", "--reason", "JIT", "--json"))
    assert g["kind"] == "jit" and g["subject"] == "dana" and g["actions"] == ["write"]
    assert g["issued_by"] == "ann"
    assert g["grant_id"] in [x["grant_id"] for x in
                             ok_json(cli(gw, dana, "grants", "list", "--json"))]
    r = cli(gw, ann, "grants", "issue", "--subject", "ann", "--actions", "upsert",
            "--collections", "x", "--window", "1h", "--reason", "me")
    assert r.exit_code == 1 and "grant_self" in r.stderr
    r = cli(gw, dana, "grants", "issue", "--subject", "eve", "--actions", "upsert",
            "--collections", "x", "--window", "1h", "--reason", "pal")
    assert r.exit_code == 1 and "not_an_approver" in r.stderr
    r = cli(gw, ann, "grants", "issue", "--subject", "dana", "--actions", "fly",
            "--collections", "x", "--window", "1h", "--reason", "?")
    assert r.exit_code == 1 and "'fly' is not an action" in r.stderr
    table = cli(gw, ann, "grants", "list")
    assert table.exit_code == 0 and "dana" in table.stdout


def test_clear_errors_without_token_bad_token_or_gateway(gw: GatewayProcess, idp: str) -> None:
    r = runner.invoke(app, ["approvals", "list"], env={"EMBEDGUARD_GATEWAY_URL": gw.url,
                                                       "EMBEDGUARD_TOKEN": ""})
    assert r.exit_code == 2 and "EMBEDGUARD_TOKEN" in r.stderr
    r = cli(gw, "not-a-jwt", "approvals", "list")
    assert r.exit_code == 1 and "unauthenticated" in r.stderr
    r = runner.invoke(app, ["approvals", "list", "--gateway", "http://127.0.0.1:9",
                            "--token", "x"], env={})
    assert r.exit_code == 2 and "cannot reach the gateway" in r.stderr
    r = cli(gw, mint_token(idp, "ann", ["Vector-Approve"]), "approvals", "approve",
            "0190f1b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b", "--reason", "x")
    assert r.exit_code == 1 and "not_found" in r.stderr


def test_markup_and_emoji_codes_are_shown_as_typed(gw: GatewayProcess, idp: str) -> None:
    """A requester's reason is shown to approvers as written: not styled, not
    turned into an emoji, and never a MarkupError."""
    pat = mint_token(idp, "pat", ["Vector-Write", "Vector-Approve"])
    reason = "[bold]urgent[/] :skull: [/]"
    tid = open_ticket(gw, pat, reason=reason)["approval_id"]
    shown = cli(gw, pat, "tickets", "show", tid)
    assert shown.exit_code == 0, shown.output + shown.stderr
    assert f"reason     {reason}" in shown.stdout and "💀" not in shown.stdout
    assert f"approval {tid} (ticket): pending" in shown.stdout
    listed = cli(gw, pat, "approvals", "list")
    assert listed.exit_code == 0 and f"reason: {reason}" in listed.stdout
    missing = cli(gw, pat, "approvals", "show", "[/x]:skull:")
    assert missing.exit_code == 1 and "error: " in missing.stderr
    assert "Traceback" not in missing.stderr and "💀" not in missing.stderr


def test_real_cli_process_refuses_self_approval(gw: GatewayProcess, idp: str) -> None:
    """The installed command, as a person runs it, token from the environment."""
    pat = mint_token(idp, "pat", ["Vector-Write", "Vector-Approve"])
    tid = open_ticket(gw, pat, reason="own change")["approval_id"]
    proc = subprocess.run(
        [sys.executable, "-m", "embedguard.cli", "approvals", "approve", tid,
         "--reason", "mine"],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "EMBEDGUARD_GATEWAY_URL": gw.url,
             "EMBEDGUARD_TOKEN": pat},
    )
    assert proc.returncode == 1
    assert "self_approval" in proc.stderr and "Traceback" not in proc.stderr
    assert pat not in proc.stdout + proc.stderr


def test_tls_gateway_with_its_ca_and_no_plain_http(tmp_path: Path, idp: str) -> None:
    from tests.support.pki import self_signed

    cert, key = self_signed(tmp_path / "pki")
    ann = mint_token(idp, "ann", ["Vector-Approve"])
    with recording_upstream() as up, gateway_process(
        tmp_path, upstream=up.url, kind="qdrant", policy=POLICY, issuer=idp,
        extra_args=["--tls-cert", str(cert), "--tls-key", str(key)],
    ) as g:
        https = f"https://127.0.0.1:{g.port}"
        env = {"EMBEDGUARD_GATEWAY_URL": https, "EMBEDGUARD_TOKEN": ann}
        r = runner.invoke(app, ["approvals", "list", "--json"],
                          env={**env, "EMBEDGUARD_GATEWAY_CA": str(cert)})
        assert r.exit_code == 0, r.output + r.stderr
        assert json.loads(r.stdout) == []
        # without the gateway's CA the CLI does not trust it
        r = runner.invoke(app, ["approvals", "list"], env=env)
        assert r.exit_code == 2 and "cannot reach the gateway" in r.stderr
        # a token sent in clear to a TLS listener is refused, not served
        r = runner.invoke(app, ["approvals", "list"], env={**env, "EMBEDGUARD_GATEWAY_URL": g.url})
        assert r.exit_code == 1 and "tls_required" in r.stderr
        assert up.requests == []


@pytest.mark.parametrize("url", ["http://user:hookpw@hooks.example/x", "ftp://hooks.example/x"])
def test_gateway_refuses_a_bad_webhook_at_start_without_echoing_it(
    tmp_path: Path, url: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "embedguard.cli", "gateway", "--upstream", "http://127.0.0.1:9",
         "--listen", "127.0.0.1:0", "--policy", str(POLICY), "--issuer", "http://127.0.0.1:9",
         "--audience", "embedguard", "--log", f"sqlite:{tmp_path / 'e.db'}",
         "--signing-key", str(tmp_path / "k.key")],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "EMBEDGUARD_APPROVAL_WEBHOOK": url},
    )
    assert proc.returncode == 2
    assert "approval webhook" in proc.stderr
    assert "hookpw" not in proc.stderr and url not in proc.stderr
