"""``embedguard dev-idp`` and ``embedguard token``: the command functions.

They are plain functions with typer annotations; ``embedguard/cli.py``
registers them. Both are thin: parse options, call :mod:`capture.devidp`,
print.
"""

from __future__ import annotations

import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from capture.devidp import DEFAULT_AUDIENCE, DEFAULT_PORT, DevIdpError
from embedguard.console import plain_console, visible

__all__ = ["dev_idp_command", "parse_duration", "token_command"]

_err = plain_console(stderr=True)
_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_duration(text: str, *, option: str = "duration") -> timedelta:
    """``30s``, ``15m``, ``2h``, ``1d`` or a sum like ``1h30m``; ValueError otherwise."""
    value = text.strip().lower()
    if not value or _DURATION.sub("", value):
        raise ValueError(f"{option} {text!r} is not a duration like 30s, 15m, 2h, 1d or 1h30m")
    return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION.findall(value)))


def _fail(message: str) -> typer.Exit:
    _err.print(Text.assemble(("error:", "bold red"), visible(f" {message}")))
    return typer.Exit(2)


def dev_idp_command(
    port: Annotated[
        int,
        typer.Option("--port", help="Port to listen on; 0 picks a free one", min=0, max=65535),
    ] = DEFAULT_PORT,
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            envvar="EMBEDGUARD_DATA_DIR",
            help="Data directory; keys and users.yaml live in DATA/idp",
        ),
    ] = Path("data"),
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; loopback unless --allow-remote")
    ] = "127.0.0.1",
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Allow a non-loopback address (this also switches off token minting)",
        ),
    ] = False,
    rotate: Annotated[
        bool,
        typer.Option("--rotate", help="Add a new signing key first; old keys stay in the JWKS"),
    ] = False,
    public_url: Annotated[
        str | None,
        typer.Option("--public-url", help="Issuer URL clients use, when it differs from HOST:PORT"),
    ] = None,
) -> None:
    """Serve a local OIDC issuer for demos and tests (not for production).

    Prints the issuer URL on the first line of stdout, then serves until Ctrl-C.
    """
    from capture.devidp import KeyStore, serve

    try:
        if rotate:
            keys = KeyStore(data)
            keys.ensure()
            _err.print(f"new signing key {keys.rotate()}")
        server = serve(host, port, data, allow_remote=allow_remote, issuer_url=public_url)
    except DevIdpError as exc:
        raise _fail(str(exc)) from None
    print(server.issuer_url, flush=True)
    _err.print(
        f"dev issuer on {server.issuer_url} - users and clients: "
        f"{server.users_file}; keys: {server.keys.key_dir}"
    )
    _err.print(Text("for demos and tests only; Ctrl-C stops it", style="yellow"))
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


def token_command(
    issuer: Annotated[
        str,
        typer.Option("--issuer", envvar="EMBEDGUARD_ISSUER", help="URL of a running dev issuer"),
    ],
    sub: Annotated[str, typer.Option("--sub", help="Subject (user or service account)")],
    groups: Annotated[
        str,
        typer.Option("--groups", help="Comma-separated groups, e.g. Vector-Read,Vector-Approve"),
    ] = "",
    ttl: Annotated[str, typer.Option("--ttl", help="Lifetime: 30s, 15m, 2h, 1d")] = "15m",
    issued_ago: Annotated[
        str,
        typer.Option("--issued-ago", help="Backdate iat by this much, to test token-age limits"),
    ] = "0s",
    audience: Annotated[
        str, typer.Option("--audience", envvar="EMBEDGUARD_AUDIENCE", help="The aud claim")
    ] = DEFAULT_AUDIENCE,
    dpop_key: Annotated[
        Path | None,
        typer.Option(
            "--dpop-key",
            help="Bind the token to this DPoP key (PEM); created if the file does not exist",
        ),
    ] = None,
) -> None:
    """Print one access token from the dev issuer on stdout."""
    from capture.devidp import generate_dpop_key, mint_token

    try:
        lifetime = parse_duration(ttl, option="--ttl")
        backdate = parse_duration(issued_ago, option="--issued-ago")
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if lifetime <= timedelta(0):
        raise _fail("--ttl must be longer than 0s")
    group_list = [g.strip() for g in groups.split(",") if g.strip()]
    try:
        if dpop_key is not None and not dpop_key.exists():
            jkt = generate_dpop_key(dpop_key)
            _err.print(f"created DPoP key {dpop_key} (jkt {jkt})")
        token = mint_token(issuer, sub, group_list, lifetime, backdate, audience, dpop_key)
    except DevIdpError as exc:
        raise _fail(str(exc)) from None
    sys.stdout.write(token + "\n")
