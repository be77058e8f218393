"""`embedguard dashboard`: the sign-in configuration it writes and the clear
errors it gives. (The served app itself: tests/dashboard/test_browser.py.)"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

from capture.devidp import serve
from embedguard.cli_dashboard import dev_client_secret, streamlit_command, write_auth_secrets

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "embedguard.cli", "dashboard", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_auth_secrets_file(tmp_path: Path) -> None:
    path = write_auth_secrets(tmp_path / "dash", issuer="http://127.0.0.1:9400/", port=8599,
                              client_id="embedguard-dashboard", client_secret='s"e\\cret')
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    auth = tomllib.loads(path.read_text())["auth"]
    assert auth["client_secret"] == 's"e\\cret'
    assert auth["redirect_uri"] == "http://127.0.0.1:8599/oauth2callback"
    assert auth["server_metadata_url"] == (
        "http://127.0.0.1:9400/.well-known/openid-configuration")
    assert auth["expose_tokens"] == ["access"]
    assert "groups" in auth["client_kwargs"]["scope"].split()
    cookie = auth["cookie_secret"]
    assert len(cookie) >= 32
    again = write_auth_secrets(tmp_path / "dash", issuer="http://127.0.0.1:9400", port=8599,
                               client_id="embedguard-dashboard", client_secret="x")
    assert tomllib.loads(again.read_text())["auth"]["cookie_secret"] == cookie  # kept


def test_streamlit_runs_headless_on_loopback_without_error_details(tmp_path: Path) -> None:
    cmd = streamlit_command(8599, tmp_path / "secrets.toml")
    flags = dict(zip(cmd[5::2], cmd[6::2], strict=True))
    assert flags["--server.address"] == "127.0.0.1"
    assert flags["--client.showErrorDetails"] == "none"  # no stack traces to clients
    assert flags["--browser.gatherUsageStats"] == "false"  # nothing off loopback
    assert flags["--secrets.files"] == str(tmp_path / "secrets.toml")


def test_dev_client_secret_comes_from_the_dev_issuer(tmp_path: Path) -> None:
    with serve("127.0.0.1", 0, tmp_path):
        secret = dev_client_secret(tmp_path)
    assert secret and len(secret) >= 20
    assert dev_client_secret(tmp_path / "nowhere") is None


def test_no_client_secret_is_a_clear_error(tmp_path: Path) -> None:
    r = run("--data", str(tmp_path), "--port", "1")
    assert r.returncode == 2
    assert "no client secret for embedguard-dashboard" in r.stderr
    assert "--client-secret-env" in r.stderr and "Traceback" not in r.stderr
    r = run("--data", str(tmp_path), "--client-secret-env", "EG_NOT_SET_ANYWHERE")
    assert r.returncode == 2 and "EG_NOT_SET_ANYWHERE" in r.stderr
    assert "Traceback" not in r.stderr


def test_markup_in_an_error_message_is_shown_as_typed(tmp_path: Path) -> None:
    r = run("--data", str(tmp_path), "--client-secret-env", "[/EG]:skull:", env={"COLUMNS": "400"})
    assert r.returncode == 2, r.stderr
    assert "error: --client-secret-env [/EG]:skull:: that variable is empty" in r.stderr
    assert "Traceback" not in r.stderr
