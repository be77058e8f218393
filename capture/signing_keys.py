"""The gateway's Ed25519 checkpoint-signing key, and ``embedguard keys``.

One key per gateway, in a file under the data directory
(``<data dir>/keys/gateway.key`` unless ``--signing-key`` names another). The
file holds one line in the Go ``note`` signer format
(``PRIVATE+KEY+<name>+<key id>+<base64>``). It is created with mode 0600 on
first start and refused if others can read it. ``embedguard keys show``
prints the public verifier key (vkey) for auditors to pin. The private key
never reaches a log, an event, an error or a repr.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
from pathlib import Path
from typing import Annotated

import typer

from embedguard.console import plain_console
from schemas.note import NoteError, Signer

__all__ = [
    "SigningKeyError",
    "default_key_name",
    "default_key_path",
    "keys_app",
    "load_or_create_signing_key",
    "load_signing_key",
]


class SigningKeyError(ValueError):
    """The key file is missing, unreadable, too open or malformed."""


def default_key_path(data_dir: Path) -> Path:
    return data_dir / "keys" / "gateway.key"


def default_key_name() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "localhost"
    return f"embedguard-gateway-{host}"


def load_signing_key(path: Path) -> Signer:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SigningKeyError(
            f"no signing key at {path}; the gateway creates it on first start "
            "(or run `embedguard keys create`)"
        ) from None
    except OSError as exc:
        raise SigningKeyError(f"cannot read signing key {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SigningKeyError(f"signing key {path} is not a regular file")
    if st.st_mode & 0o077:
        raise SigningKeyError(
            f"signing key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        raise SigningKeyError(f"cannot read signing key {path}") from None
    try:
        return Signer.from_skey(text)
    except NoteError as exc:
        # The message names the format problem, never the key material.
        raise SigningKeyError(f"signing key {path} is malformed: {exc}") from None


def create_signing_key(path: Path, name: str) -> Signer:
    """Write a new key to ``path`` (0600, never over an existing file)."""
    try:
        signer = Signer.generate(name)
    except NoteError as exc:
        raise SigningKeyError(str(exc)) from None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(signer.skey() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        # link() fails if the file appeared meanwhile: two gateways starting at
        # once end up with the same key, the one written first.
        os.link(tmp, path)
    except FileExistsError:
        return load_signing_key(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return signer


def load_or_create_signing_key(path: Path, *, name: str | None = None) -> Signer:
    """The key in ``path``, created (named ``name``) if the file does not exist."""
    if not path.exists():
        return create_signing_key(path, name or default_key_name())
    signer = load_signing_key(path)
    if name is not None and signer.name != name:
        raise SigningKeyError(
            f"signing key {path} is named {signer.name!r}, not {name!r}; "
            "use another file for another name"
        )
    return signer


# -- CLI -----------------------------------------------------------------------

keys_app = typer.Typer(help="The gateway's checkpoint-signing key.", no_args_is_help=True)
_out = plain_console()
_err = plain_console(stderr=True)

KeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--signing-key",
        help="Key file (default: <data dir>/keys/gateway.key; EMBEDGUARD_DATA_DIR sets the dir)",
    ),
]


def _path(signing_key: Path | None) -> Path:
    if signing_key is not None:
        return signing_key
    from embedguard.settings import get_settings

    return default_key_path(get_settings().data_dir)


@keys_app.command("show")
def show_command(
    signing_key: KeyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Print the public verifier key (vkey) to pin when verifying checkpoints."""
    path = _path(signing_key)
    try:
        signer = load_signing_key(path)
    except SigningKeyError as exc:
        _err.print(f"error: {exc}")
        raise typer.Exit(2) from None
    if as_json:
        import json

        _out.print(
            json.dumps(
                {"vkey": signer.verifier.vkey, "key_id": signer.verifier.id_text, "file": str(path)}
            )
        )
    else:
        _out.print(signer.verifier.vkey)


@keys_app.command("create")
def create_command(
    signing_key: KeyOpt = None,
    name: Annotated[
        str | None, typer.Option(help="Key name (default: embedguard-gateway-<host>)")
    ] = None,
) -> None:
    """Create the key file (0600) if it does not exist, and print its vkey."""
    path = _path(signing_key)
    try:
        signer = load_or_create_signing_key(path, name=name)
    except SigningKeyError as exc:
        _err.print(f"error: {exc}")
        raise typer.Exit(2) from None
    _out.print(signer.verifier.vkey)
