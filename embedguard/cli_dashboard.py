"""``embedguard dashboard``: serve the Streamlit app (``streamlit run`` as a child).

It writes the app's sign-in configuration, the ``[auth]`` section Streamlit's
``st.login`` reads, to ``<data>/dashboard/.streamlit/secrets.toml`` (mode
0600) and points Streamlit at it with ``--secrets.files``. The OIDC client
secret comes from ``--client-secret-env`` or, for the dev issuer on loopback,
from its ``<data>/idp/users.yaml``. The cookie secret is generated once and
kept in that directory. Streamlit runs headless on loopback, sends no usage
statistics and shows clients no stack traces.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from embedguard.console import plain_console, visible

__all__ = ["dashboard_command", "register", "streamlit_command", "write_auth_secrets"]

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
CLIENT_ID = "embedguard-dashboard"
# no markup, no emoji codes: messages carry paths and variable names as given
_err = plain_console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err.print(Text.assemble(("error:", "red"), " ", visible(message)))
    return typer.Exit(code)


def _toml(value: Any) -> str:
    """A TOML value (JSON string escapes are valid TOML basic-string escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


def dev_client_secret(data_dir: Path, client_id: str = CLIENT_ID) -> str | None:
    """The dashboard client's secret from the dev issuer's users.yaml, if any."""
    from capture.devidp import DevIdpError, load_directory

    path = data_dir / "idp" / "users.yaml"
    if not path.exists():
        return None
    try:
        client = load_directory(path).client(client_id)
    except DevIdpError:
        return None
    if client is None or client.client_secret is None:
        return None
    return client.client_secret.get_secret_value()


def write_auth_secrets(
    directory: Path,
    *,
    issuer: str,
    port: int,
    client_id: str,
    client_secret: str,
    host: str = "127.0.0.1",
    login_hint: str | None = None,
) -> Path:
    """Write ``directory/.streamlit/secrets.toml`` with the [auth] section (0600)."""
    conf = directory / ".streamlit"
    conf.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    cookie_file = directory / "cookie_secret"
    if not cookie_file.exists():
        fd = os.open(cookie_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    kwargs: dict[str, str] = {"scope": "openid profile email groups", "prompt": "login"}
    if login_hint:
        kwargs["login_hint"] = login_hint
    auth = {
        "redirect_uri": f"http://{host}:{port}/oauth2callback",
        "cookie_secret": cookie_file.read_text().strip(),
        "client_id": client_id,
        "client_secret": client_secret,
        "server_metadata_url": issuer.rstrip("/") + "/.well-known/openid-configuration",
        "expose_tokens": ["access"],
        "client_kwargs": kwargs,
    }
    text = "# written by `embedguard dashboard`; holds secrets (mode 0600)\n[auth]\n" + "".join(
        f"{k} = {_toml(v)}\n" for k, v in auth.items()
    )
    path = conf / "secrets.toml"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def streamlit_command(port: int, secrets_file: Path, host: str = "127.0.0.1") -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.showErrorDetails", "none",
        "--client.toolbarMode", "minimal",
        "--global.developmentMode", "false",
        "--secrets.files", str(secrets_file),
    ]


def dashboard_command(
    port: Annotated[int, typer.Option("--port", help="Port to serve on (loopback)")] = 8501,
    warehouse: Annotated[str | None, typer.Option(
        "--warehouse", help="Warehouse URL (default EMBEDGUARD_WAREHOUSE or lake:data/lake)"),
    ] = None,
    log: Annotated[str | None, typer.Option(
        "--log", help="Event log URL, where AuditViewed events go (default EMBEDGUARD_LOG)"),
    ] = None,
    gateway: Annotated[str | None, typer.Option(
        "--gateway", help="Gateway URL for the approvals console (EMBEDGUARD_GATEWAY_URL)"),
    ] = None,
    issuer: Annotated[str, typer.Option(
        "--issuer", help="OIDC issuer URL for sign-in")] = "http://127.0.0.1:9400",
    policy: Annotated[Path | None, typer.Option(
        "--policy", help="The gateway's policy file (Policy page and simulator)")] = None,
    vkey: Annotated[list[str] | None, typer.Option(
        "--vkey", help="Pinned gateway checkpoint key for verifying exports (repeatable; "
                       "default: the public key of <data>/keys/gateway.key)")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data", help="Where embedded state lives (default ./data)")] = None,
    client_id: Annotated[str, typer.Option("--client-id", help="OIDC client id")] = CLIENT_ID,
    client_secret_env: Annotated[str | None, typer.Option(
        "--client-secret-env",
        help="Environment variable holding the OIDC client secret (default: the dev issuer's "
             "users.yaml under --data, for a loopback issuer)")] = None,
    login_hint: Annotated[str | None, typer.Option(
        "--login-hint", help="Dev/demo only: the user the dev issuer signs in without asking",
        hidden=True)] = None,
) -> None:
    """Serve the dashboard (Streamlit) on 127.0.0.1; sign-in through the OIDC issuer."""
    from embedguard.settings import Settings

    s = Settings()
    if data_dir is not None:
        s = s.model_copy(update={"data_dir": data_dir})
    log_url = log or s.log_url
    warehouse_url = warehouse or s.warehouse_url
    if client_secret_env:
        secret = os.environ.get(client_secret_env, "")
        if not secret:
            raise _fail(f"--client-secret-env {client_secret_env}: that variable is empty or unset")
    else:
        found = dev_client_secret(s.data_dir, client_id) if _is_loopback(issuer) else None
        if not found:
            raise _fail(
                f"no client secret for {client_id}: pass --client-secret-env VAR, or start the "
                f"dev issuer with --data {s.data_dir} first (it writes "
                f"{s.data_dir}/idp/users.yaml)")
        secret = found
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise _fail(f"port {port} is taken; pass --port")
    secrets_file = write_auth_secrets(
        s.data_dir / "dashboard", issuer=issuer, port=port, client_id=client_id,
        client_secret=secret, login_hint=login_hint)
    env = {
        **os.environ,
        "EMBEDGUARD_WAREHOUSE": warehouse_url,
        "EMBEDGUARD_LOG": log_url,
        "EMBEDGUARD_DATA_DIR": str(s.data_dir),
        "PYTHONPATH": os.pathsep.join(
            [str(APP.parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    env.pop("EMBEDGUARD_DASHBOARD_TEST_SEAM", None)  # never in a served dashboard
    for name, value in (("EMBEDGUARD_GATEWAY_URL", gateway), ("EMBEDGUARD_POLICY", policy),
                        ("EMBEDGUARD_GATEWAY_VKEYS", "\n".join(vkey) if vkey else None)):
        if value is not None:
            env[name] = str(value)
    proc = subprocess.Popen(streamlit_command(port, secrets_file), env=env)

    def stop(signum: int, frame: object) -> None:
        proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    deadline = time.monotonic() + 120
    try:
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None:
                raise _fail(f"streamlit exited with {proc.returncode} before serving")
            if time.monotonic() > deadline:
                proc.terminate()
                raise _fail("the dashboard did not start within 120 s")
            time.sleep(0.2)
        _err.print(f"embedguard dashboard http://127.0.0.1:{port}", highlight=False)
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        code = proc.wait(30)
    if code not in (0, -signal.SIGTERM):
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("dashboard", help="Serve the dashboard (sessions, approvals, lineage, "
                                  "evidence) with OIDC sign-in.")(dashboard_command)
