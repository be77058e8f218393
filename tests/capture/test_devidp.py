"""The dev OIDC issuer (capture/devidp.py) and its commands (capture/identity_cli.py).

Everything runs against a real issuer on 127.0.0.1 over HTTP, and the login
test drives the authorization-code + PKCE flow the way st.login (Authlib) does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
import yaml
from joserfc.jwk import ECKey
from typer.testing import CliRunner

from capture.devidp import (
    DevIdpError,
    DevIdpServer,
    KeyStore,
    dpop_thumbprint,
    generate_dpop_key,
    load_directory,
    make_dpop_proof,
    mint_token,
    serve,
)
from capture.identity_cli import dev_idp_command, parse_duration, token_command
from capture.oidc import OidcVerifier

DASHBOARD = "embedguard-dashboard"
CALLBACK = "http://localhost:8501/oauth2callback"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevIdpServer]:
    with serve("127.0.0.1", 0, tmp_path_factory.mktemp("idp")) as server:
        yield server


@pytest.fixture
def browser() -> Iterator[httpx.Client]:
    with httpx.Client(follow_redirects=False, timeout=5) as client:
        yield client


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, b64url(hashlib.sha256(verifier.encode()).digest())


def dashboard_secret(idp: DevIdpServer) -> str:
    client = load_directory(idp.users_file).client(DASHBOARD)
    assert client is not None and client.client_secret is not None
    return client.client_secret.get_secret_value()


def authorize_params(**overrides: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": DASHBOARD,
        "redirect_uri": CALLBACK,
        "scope": "openid email profile",
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
        "prompt": "select_account",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def query_of(location: str) -> dict[str, str]:
    parts = urllib.parse.urlsplit(location)
    return dict(urllib.parse.parse_qsl(parts.query))


def now() -> datetime:
    return datetime.now(UTC)


# --- keys on disk ------------------------------------------------------------------


def test_keys_are_private_and_survive_restarts(tmp_path: Path) -> None:
    with serve("127.0.0.1", 0, tmp_path) as first:
        jwks_before = httpx.get(first.issuer_url + "/jwks").json()
    idp_dir = tmp_path / "idp"
    assert stat.S_IMODE(idp_dir.stat().st_mode) == 0o700
    pems = list((idp_dir / "keys").glob("*.pem"))
    assert len(pems) == 1
    assert stat.S_IMODE(pems[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((idp_dir / "users.yaml").stat().st_mode) == 0o600
    assert "PRIVATE KEY" in pems[0].read_text()
    with serve("127.0.0.1", 0, tmp_path) as second:
        jwks_after = httpx.get(second.issuer_url + "/jwks").json()
    assert jwks_before == jwks_after
    (key,) = jwks_after["keys"]
    assert key["kty"] == "RSA" and key["use"] == "sig" and key["alg"] == "RS256"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys()


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    KeyStore(tmp_path).ensure()
    pem = next((tmp_path / "idp" / "keys").glob("*.pem"))
    pem.chmod(0o644)
    with pytest.raises(DevIdpError, match="chmod 600"):
        serve("127.0.0.1", 0, tmp_path)


async def test_rotation_by_another_process_reaches_the_running_issuer(tmp_path: Path) -> None:
    with serve("127.0.0.1", 0, tmp_path) as idp:
        old = mint_token(idp.issuer_url, "alice", ["Vector-Read"])
        new_kid = KeyStore(tmp_path).rotate()  # as `embedguard dev-idp --rotate` would
        kids = [k["kid"] for k in httpx.get(idp.issuer_url + "/jwks").json()["keys"]]
        assert len(kids) == 2 and kids[-1] == new_kid
        new = mint_token(idp.issuer_url, "alice", ["Vector-Read"])
        header = json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "=="))
        assert header["kid"] == new_kid and header["typ"] == "at+jwt"
        async with OidcVerifier(idp.issuer_url, "embedguard") as verifier:
            for token in (old, new):
                assert (await verifier.verify(token, now=now())).subject == "alice"


# --- binding and guards ------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.com"])
def test_refuses_non_loopback_without_allow_remote(tmp_path: Path, host: str) -> None:
    with pytest.raises(DevIdpError, match="allow-remote"):
        serve(host, 0, tmp_path)


def test_allow_remote_switches_minting_off(tmp_path: Path) -> None:
    with serve("127.0.0.1", 0, tmp_path, allow_remote=True) as idp:
        response = httpx.post(idp.issuer_url + "/dev/mint", json={"sub": "alice"})
        assert response.status_code == 403
        with pytest.raises(DevIdpError, match="refused to mint"):
            mint_token(idp.issuer_url, "alice", [])
        assert httpx.get(idp.issuer_url + "/jwks").status_code == 200


def test_foreign_host_header_is_refused(idp: DevIdpServer) -> None:
    """A page on evil.example rebinding its name to 127.0.0.1 gets nothing."""
    port = urllib.parse.urlsplit(idp.issuer_url).port
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}"):  # type: ignore[operator]
        response = httpx.post(
            idp.issuer_url + "/dev/mint", json={"sub": "x"}, headers={"Host": host}
        )
        assert response.status_code == 421
    response = httpx.get(f"http://localhost:{port}/jwks")
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type", "status", "needle"),
    [
        ({"sub": "alice", "claims": {"iss": "https://evil"}}, "application/json", 400, "iss"),
        ({"sub": "alice", "claims": {"cnf": {"jkt": "x"}}}, "application/json", 400, "cnf"),
        ({"sub": ""}, "application/json", 400, "sub"),
        ({"sub": "alice", "ttl_s": 0}, "application/json", 400, "ttl_s"),
        ({"sub": "alice", "admin": True}, "application/json", 400, "admin"),
        ({"sub": "alice"}, "text/plain", 415, "JSON"),
    ],
)
def test_mint_validates_its_input(
    idp: DevIdpServer, body: dict[str, Any], content_type: str, status: int, needle: str
) -> None:
    response = httpx.post(
        idp.issuer_url + "/dev/mint",
        content=json.dumps(body),
        headers={"Content-Type": content_type},
    )
    assert response.status_code == status
    assert needle in response.json()["error_description"]


def test_mint_token_names_an_unreachable_issuer() -> None:
    with pytest.raises(DevIdpError, match="is `embedguard dev-idp` running"):
        mint_token("http://127.0.0.1:9", "alice", [], timeout_s=1)


# --- discovery and the st.login flow -----------------------------------------------


def test_discovery_document(idp: DevIdpServer) -> None:
    doc = httpx.get(idp.issuer_url + "/.well-known/openid-configuration").json()
    assert doc["issuer"] == idp.issuer_url
    for name, path in [
        ("authorization_endpoint", "/authorize"),
        ("token_endpoint", "/token"),
        ("userinfo_endpoint", "/userinfo"),
        ("end_session_endpoint", "/logout"),
        ("jwks_uri", "/jwks"),
    ]:
        assert doc[name] == idp.issuer_url + path
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert "client_secret_basic" in doc["token_endpoint_auth_methods_supported"]


def test_default_users(idp: DevIdpServer) -> None:
    directory = load_directory(idp.users_file)
    groups = {name: set(user.groups) for name, user in directory.users.items()}
    assert groups["alice"] == {"Vector-Read"}
    assert groups["bob"] == groups["carol"] == {"Vector-Approve"}
    assert groups["oscar"] == {"Vector-Write"}
    assert groups["pipeline-bot"] == {"Vector-Pipeline"}
    assert groups["audrey"] == {"Vector-Audit"}
    assert directory.audience == "embedguard"
    assert yaml.safe_load(idp.users_file.read_text())["clients"][0]["client_id"] == DASHBOARD


def test_invalid_users_file_stops_the_start_and_a_bad_edit_keeps_the_old(tmp_path: Path) -> None:
    users = tmp_path / "idp" / "users.yaml"
    users.parent.mkdir(parents=True)
    users.write_text("users:\n  alice:\n    groups: Vector-Read\n")
    with pytest.raises(DevIdpError, match=r"users\.yaml: users\.alice\.groups: Input should be"):
        serve("127.0.0.1", 0, tmp_path)
    users.write_text(
        "users:\n  alice: {groups: [Vector-Read]}\n"
        "clients:\n  - {client_id: app, client_secret: s, redirect_uris: ['http://127.0.0.1/cb']}\n"
    )
    with serve("127.0.0.1", 0, tmp_path) as idp, httpx.Client() as client:
        users.write_text("users: [this is not a mapping]\n")
        params = authorize_params(client_id="app", redirect_uri="http://127.0.0.1/cb")
        page = client.get(idp.issuer_url + "/authorize", params=params)
        assert page.status_code == 200 and 'value="alice"' in page.text


async def test_st_login_flow(idp: DevIdpServer, browser: httpx.Client) -> None:
    """authorize (login_hint) -> code -> token (Basic auth + PKCE) -> verified id_token."""
    verifier_str, challenge = pkce()
    params = authorize_params(
        login_hint="alice", code_challenge=challenge, code_challenge_method="S256"
    )
    response = browser.get(idp.issuer_url + "/authorize", params=params)
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(CALLBACK + "?")
    answer = query_of(location)
    assert answer["state"] == params["state"]
    assert answer["iss"] == idp.issuer_url

    response = browser.post(
        idp.issuer_url + "/token",
        data={
            "grant_type": "authorization_code",
            "code": answer["code"],
            "redirect_uri": CALLBACK,
            "code_verifier": verifier_str,
        },
        auth=(DASHBOARD, dashboard_secret(idp)),
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    tokens = response.json()
    assert tokens["token_type"] == "Bearer"

    async with OidcVerifier(idp.issuer_url, DASHBOARD) as id_verifier:
        id_claims = await id_verifier.decode(tokens["id_token"], now=now())
    assert id_claims["nonce"] == params["nonce"]
    assert id_claims["sub"] == "alice"
    assert id_claims["azp"] == DASHBOARD
    assert id_claims["groups"] == ["Vector-Read"]
    assert id_claims["email"] == "alice@example.com"
    digest = hashlib.sha256(tokens["access_token"].encode()).digest()
    assert id_claims["at_hash"] == b64url(digest[:16])

    async with OidcVerifier(idp.issuer_url, "embedguard") as access_verifier:
        identity = await access_verifier.verify(tokens["access_token"], now=now())
    assert identity.subject == "alice" and identity.groups == {"Vector-Read"}
    assert identity.client_id == DASHBOARD

    info = browser.get(
        idp.issuer_url + "/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert info.status_code == 200
    assert info.json()["groups"] == ["Vector-Read"]
    assert info.json()["preferred_username"] == "alice"

    logout = browser.get(
        idp.issuer_url + "/logout",
        params={
            "client_id": DASHBOARD,
            "post_logout_redirect_uri": CALLBACK,
            "id_token_hint": tokens["id_token"],
            "state": "bye",
        },
    )
    assert logout.status_code == 302
    assert logout.headers["location"] == CALLBACK + "?state=bye"


def test_user_picker_page(idp: DevIdpServer, browser: httpx.Client) -> None:
    idp.users_file.write_text(
        idp.users_file.read_text().replace(
            "users:\n",
            'users:\n  zoe:\n    name: "<script>alert(1)</script>"\n    groups: [Vector-Read]\n',
            1,
        )
    )
    params = authorize_params()
    page = browser.get(idp.issuer_url + "/authorize", params=params)
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for user in ("alice", "bob", "carol", "oscar", "pipeline-bot", "audrey", "zoe"):
        assert f'value="{user}"' in page.text
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text

    chosen = browser.post(idp.issuer_url + "/authorize", data={**params, "user": "bob"})
    assert chosen.status_code == 303
    answer = query_of(chosen.headers["location"])
    assert answer["state"] == params["state"]
    tokens = browser.post(
        idp.issuer_url + "/token",
        data={
            "grant_type": "authorization_code",
            "code": answer["code"],
            "redirect_uri": CALLBACK,
            "client_id": DASHBOARD,
            "client_secret": dashboard_secret(idp),
        },
    ).json()
    id_claims = json.loads(base64.urlsafe_b64decode(tokens["id_token"].split(".")[1] + "=="))
    assert id_claims["sub"] == "bob" and id_claims["nonce"] == params["nonce"]


def obtain_code(idp: DevIdpServer, browser: httpx.Client, **overrides: str | None) -> str:
    response = browser.get(
        idp.issuer_url + "/authorize", params=authorize_params(login_hint="alice", **overrides)
    )
    assert response.status_code == 302, response.text
    return query_of(response.headers["location"])["code"]


def exchange(idp: DevIdpServer, browser: httpx.Client, code: str, **form: str) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, **form}
    return browser.post(
        idp.issuer_url + "/token", data=data, auth=(DASHBOARD, dashboard_secret(idp))
    )


def test_code_is_single_use(idp: DevIdpServer, browser: httpx.Client) -> None:
    code = obtain_code(idp, browser)
    assert exchange(idp, browser, code).status_code == 200
    second = exchange(idp, browser, code)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"


def test_pkce_verifier_must_match(idp: DevIdpServer, browser: httpx.Client) -> None:
    _, challenge = pkce()
    code = obtain_code(idp, browser, code_challenge=challenge, code_challenge_method="S256")
    wrong, _ = pkce()
    response = exchange(idp, browser, code, code_verifier=wrong)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    code = obtain_code(idp, browser, code_challenge=challenge, code_challenge_method="S256")
    assert exchange(idp, browser, code).json()["error"] == "invalid_grant"  # verifier missing


def test_pkce_plain_is_refused(idp: DevIdpServer, browser: httpx.Client) -> None:
    params = authorize_params(
        login_hint="alice", code_challenge="x" * 43, code_challenge_method="plain"
    )
    response = browser.get(idp.issuer_url + "/authorize", params=params)
    answer = query_of(response.headers["location"])
    assert answer["error"] == "invalid_request" and answer["state"] == params["state"]


def test_redirect_uri_must_match(idp: DevIdpServer, browser: httpx.Client) -> None:
    evil = browser.get(
        idp.issuer_url + "/authorize",
        params=authorize_params(login_hint="alice", redirect_uri="https://evil.example/cb"),
    )
    assert evil.status_code == 400 and "location" not in evil.headers
    # RFC 8252: a registered loopback redirect URI on another port is fine.
    other_port = "http://localhost:8502/oauth2callback"
    moved = browser.get(
        idp.issuer_url + "/authorize",
        params=authorize_params(login_hint="alice", redirect_uri=other_port),
    )
    assert moved.headers["location"].startswith(other_port + "?")
    code = query_of(moved.headers["location"])["code"]
    assert exchange(idp, browser, code).json()["error"] == "invalid_grant"  # redirect_uri differs


def test_wrong_client_secret(idp: DevIdpServer, browser: httpx.Client) -> None:
    code = obtain_code(idp, browser)
    response = browser.post(
        idp.issuer_url + "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK},
        auth=(DASHBOARD, "guess"),
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_public_client_needs_pkce(idp: DevIdpServer, browser: httpx.Client) -> None:
    redirect = "http://127.0.0.1:5555/callback"
    response = browser.get(
        idp.issuer_url + "/authorize",
        params=authorize_params(
            client_id="embedguard-cli", redirect_uri=redirect, login_hint="alice"
        ),
    )
    assert query_of(response.headers["location"])["error"] == "invalid_request"
    verifier_str, challenge = pkce()
    response = browser.get(
        idp.issuer_url + "/authorize",
        params=authorize_params(
            client_id="embedguard-cli",
            redirect_uri=redirect,
            login_hint="alice",
            code_challenge=challenge,
            code_challenge_method="S256",
        ),
    )
    code = query_of(response.headers["location"])["code"]
    tokens = browser.post(
        idp.issuer_url + "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "client_id": "embedguard-cli",
            "code_verifier": verifier_str,
        },
    )
    assert tokens.status_code == 200 and "id_token" in tokens.json()


def test_repeated_parameter_is_refused(idp: DevIdpServer, browser: httpx.Client) -> None:
    query = urllib.parse.urlencode(authorize_params(login_hint="alice")) + "&state=again"
    response = browser.get(f"{idp.issuer_url}/authorize?{query}")
    assert response.status_code == 400 and "repeated" in response.text


def test_dpop_bound_tokens_from_the_token_endpoint(
    idp: DevIdpServer, browser: httpx.Client
) -> None:
    key = ECKey.generate_key("P-256", private=True)
    code = obtain_code(idp, browser)
    proof = make_dpop_proof(key, "POST", idp.issuer_url + "/token")
    response = browser.post(
        idp.issuer_url + "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK},
        auth=(DASHBOARD, dashboard_secret(idp)),
        headers={"DPoP": proof},
    )
    tokens = response.json()
    assert tokens["token_type"] == "DPoP"
    access = tokens["access_token"]
    claims = json.loads(base64.urlsafe_b64decode(access.split(".")[1] + "=="))
    assert claims["cnf"] == {"jkt": key.thumbprint()}

    userinfo = idp.issuer_url + "/userinfo"
    assert browser.get(userinfo, headers={"Authorization": f"Bearer {access}"}).status_code == 401
    ok = browser.get(
        userinfo,
        headers={
            "Authorization": f"DPoP {access}",
            "DPoP": make_dpop_proof(key, "GET", userinfo, access_token=access),
        },
    )
    assert ok.status_code == 200 and ok.json()["sub"] == "alice"


# --- client helpers ----------------------------------------------------------------


def test_dpop_key_files(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "alice.pem"
    jkt = generate_dpop_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert dpop_thumbprint(path) == jkt
    with pytest.raises(DevIdpError, match="already exists"):
        generate_dpop_key(path)
    path.chmod(0o640)
    with pytest.raises(DevIdpError, match="chmod 600"):
        make_dpop_proof(path, "GET", "https://x.example/")
    rsa_path = tmp_path / "rsa.pem"
    generate_dpop_key(rsa_path, kind="RSA")
    proof = make_dpop_proof(rsa_path, "GET", "https://x.example/a?b=c#d")
    header = json.loads(base64.urlsafe_b64decode(proof.split(".")[0] + "=="))
    claims = json.loads(base64.urlsafe_b64decode(proof.split(".")[1] + "=="))
    assert header["typ"] == "dpop+jwt" and header["alg"] == "RS256" and "d" not in header["jwk"]
    assert claims["htu"] == "https://x.example/a" and claims["htm"] == "GET"


# --- the commands ------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("dev-idp")(dev_idp_command)
    app.command("token")(token_command)
    return app


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("0s", 0)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "15", "-5m", "15 minutes", "1.5h", "m"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="30s, 15m"):
        parse_duration(text)


async def test_token_command(idp: DevIdpServer, tmp_path: Path) -> None:
    key = tmp_path / "alice-dpop.pem"
    result = CliRunner().invoke(
        cli(),
        [
            "token",
            "--issuer",
            idp.issuer_url,
            "--sub",
            "alice",
            "--groups",
            "Vector-Read, Vector-Approve",
            "--ttl",
            "2h",
            "--issued-ago",
            "20m",
            "--dpop-key",
            str(key),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert "created DPoP key" in result.stderr
    async with OidcVerifier(idp.issuer_url, "embedguard") as verifier:
        claims = await verifier.decode(lines[0], now=now())
    assert claims["sub"] == "alice" and set(claims["groups"]) == {"Vector-Read", "Vector-Approve"}
    assert claims["exp"] - claims["iat"] == 7200
    assert 1190 <= now().timestamp() - claims["iat"] <= 1210
    assert claims["cnf"]["jkt"] == dpop_thumbprint(key)


def test_token_command_uses_the_environment(idp: DevIdpServer) -> None:
    result = CliRunner().invoke(
        cli(),
        ["token", "--sub", "bob"],
        env={"EMBEDGUARD_ISSUER": idp.issuer_url, "EMBEDGUARD_AUDIENCE": "other-aud"},
    )
    assert result.exit_code == 0, result.output
    claims = json.loads(base64.urlsafe_b64decode(result.stdout.split(".")[1] + "=="))
    assert claims["aud"] == "other-aud" and claims["groups"] == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ttl", "15"], "--ttl '15' is not a duration"),
        (["--issued-ago", "yesterday"], "--issued-ago"),
        (["--ttl", "0s"], "longer than 0s"),
    ],
)
def test_token_command_errors(idp: DevIdpServer, args: list[str], needle: str) -> None:
    result = CliRunner().invoke(cli(), ["token", "--issuer", idp.issuer_url, "--sub", "a", *args])
    assert result.exit_code == 2
    assert needle in result.stderr
    assert result.stdout == ""


def test_token_command_without_issuer_running() -> None:
    result = CliRunner().invoke(cli(), ["token", "--issuer", "http://127.0.0.1:9", "--sub", "a"])
    assert result.exit_code == 2
    assert "is `embedguard dev-idp` running" in result.stderr


def test_dev_idp_command_refuses_remote_bind(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli(), ["dev-idp", "--host", "0.0.0.0", "--data", str(tmp_path)])
    assert result.exit_code == 2
    assert "--allow-remote" in result.stderr


def test_dev_idp_command_serves_until_ctrl_c(tmp_path: Path) -> None:
    script = (
        "import typer\n"
        "from capture.identity_cli import dev_idp_command\n"
        "app = typer.Typer()\n"
        "app.command()(dev_idp_command)\n"
        "app()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "--port", "0", "--data", str(tmp_path), "--rotate"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        issuer = proc.stdout.readline().strip()
        assert issuer.startswith("http://127.0.0.1:")
        doc = httpx.get(issuer + "/.well-known/openid-configuration").json()
        assert doc["issuer"] == issuer
        assert len(httpx.get(issuer + "/jwks").json()["keys"]) == 2  # --rotate added one
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "for demos and tests only" in stderr
