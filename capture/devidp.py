"""The dev OIDC issuer: a real, small OpenID provider for demos and tests.

It is NOT for production. It signs with real RSA keys kept under
``<data>/idp/keys`` (private files mode 0600), publishes discovery and JWKS
over HTTP, and implements the authorization-code flow with PKCE that
Streamlit's ``st.login`` (Authlib) drives: ``/authorize`` (a page to pick a
dev user, or straight through with a ``login_hint``), ``/token``,
``/userinfo`` and ``/logout``. Dev users, their groups and the OAuth clients
come from ``<data>/idp/users.yaml`` (created with sensible defaults).

``POST /dev/mint`` hands out an access token for any subject, which is what
``embedguard token`` calls. That is only acceptable because the server binds
loopback: it refuses any other address unless ``allow_remote`` is set, and
then the mint endpoint is switched off. Requests whose Host header is not the
issuer's are refused too, so a web page cannot reach it by DNS rebinding.

Client-side helpers live here as well: :func:`mint_token`,
:func:`generate_dpop_key` and :func:`make_dpop_proof`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import html
import json
import logging
import os
import secrets
import socket
import stat
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx
import uvicorn
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, KeySet, OKPKey, RSAKey
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from capture.dpop import (
    AuthError,
    DpopVerifier,
    access_token_hash,
    asymmetric_registry,
    b64url_sha256,
    parse_json_object,
)
from capture.oidc import is_loopback_host, parse_authorization

__all__ = [
    "DEFAULT_AUDIENCE",
    "DEFAULT_PORT",
    "DevClient",
    "DevDirectory",
    "DevIdpError",
    "DevIdpServer",
    "DevUser",
    "KeyStore",
    "create_app",
    "dpop_thumbprint",
    "generate_dpop_key",
    "is_loopback_host",
    "load_directory",
    "load_dpop_key",
    "make_dpop_proof",
    "mint_token",
    "serve",
]

log = logging.getLogger(__name__)

DEFAULT_AUDIENCE = "embedguard"
DEFAULT_PORT = 9400
IDP_DIR = "idp"
USERS_FILE = "users.yaml"
CODE_TTL_S = 60
MAX_TTL_S = 30 * 86_400
_MAX_BODY_BYTES = 64 * 1024
_RESERVED_CLAIMS = frozenset(
    {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "cnf", "groups", "client_id", "scope"}
)
_PKCE_VERIFIER_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)

SigningKey = RSAKey | ECKey | OKPKey


class DevIdpError(Exception):
    """The dev issuer cannot start or a client call to it failed; the message says why."""


# --- files -------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by its owner only."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_private(path: Path) -> bytes:
    """Read a private key file, refusing one that other users can read (like ssh)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DevIdpError(f"key file {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DevIdpError(
            f"key file {path} is accessible by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}"
        )
    return path.read_bytes()


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """Serialise key creation between processes sharing a data directory."""
    with open(directory / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _idp_dir(data_dir: Path) -> Path:
    directory = data_dir / IDP_DIR
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    return directory


class KeyStore:
    """The issuer's RSA signing keys under ``<data>/idp/keys``.

    ``keys.json`` lists them oldest first; the newest signs, and all of them
    are published, so tokens signed before a rotation still verify. The
    manifest is re-read when it changes, so ``embedguard dev-idp --rotate``
    (or :meth:`rotate`) takes effect in a running issuer.
    """

    def __init__(self, data_dir: Path) -> None:
        self.directory = _idp_dir(data_dir)
        self.key_dir = self.directory / "keys"
        self.manifest = self.directory / "keys.json"
        self._stamp: tuple[int, int, int] | None = None
        self._keys: list[RSAKey] = []
        self._lock = threading.Lock()

    def ensure(self) -> None:
        """Create the first key if there is none."""
        with _dir_lock(self.directory):
            if not self._entries():
                self._add_key()

    def rotate(self) -> str:
        """Add a new signing key (the old ones stay published); return its kid."""
        with _dir_lock(self.directory):
            return self._add_key()

    def keys(self) -> list[RSAKey]:
        self._reload()
        if not self._keys:
            raise DevIdpError(f"no signing keys under {self.key_dir}")
        return list(self._keys)

    def signing_key(self) -> RSAKey:
        return self.keys()[-1]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in self.keys()]}

    def _entries(self) -> list[dict[str, str]]:
        try:
            doc = json.loads(self.manifest.read_text())
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise DevIdpError(f"{self.manifest} is not valid JSON: {exc}") from None
        entries = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise DevIdpError(f"{self.manifest} has no keys list")
        return entries

    def _add_key(self) -> str:
        self.key_dir.mkdir(mode=0o700, exist_ok=True)
        key = RSAKey.generate_key(2048, private=True)
        kid = key.thumbprint()
        file = f"{kid}.pem"
        _write_private(self.key_dir / file, key.as_pem(private=True))
        entries = self._entries()
        entries.append({"kid": kid, "file": file, "created": datetime.now(UTC).isoformat()})
        _write_private(self.manifest, json.dumps({"keys": entries}, indent=2).encode())
        log.info("dev issuer: new signing key %s", kid)
        return kid

    def _reload(self) -> None:
        try:
            st = self.manifest.stat()
        except FileNotFoundError:
            raise DevIdpError(
                f"no signing keys under {self.key_dir}: run the dev issuer once"
            ) from None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp == self._stamp:
                return
            keys = []
            for entry in self._entries():
                kid, file = entry.get("kid"), entry.get("file")
                if not isinstance(kid, str) or not isinstance(file, str) or "/" in file:
                    raise DevIdpError(f"{self.manifest} has a malformed entry")
                pem = _read_private(self.key_dir / file)
                keys.append(
                    RSAKey.import_key(pem, parameters={"kid": kid, "use": "sig", "alg": "RS256"})
                )
            self._keys, self._stamp = keys, stamp


class DevUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    email: str | None = None
    groups: list[str] = Field(default_factory=list)


class DevClient(BaseModel):
    """An OAuth client. Without a secret it is public and must use PKCE."""

    model_config = ConfigDict(extra="forbid")

    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    redirect_uris: list[str] = Field(min_length=1)
    post_logout_redirect_uris: list[str] = Field(default_factory=list)


class DevDirectory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    audience: str = DEFAULT_AUDIENCE
    access_token_ttl_s: int = Field(default=900, gt=0, le=MAX_TTL_S)
    id_token_ttl_s: int = Field(default=900, gt=0, le=MAX_TTL_S)
    users: dict[str, DevUser]
    clients: list[DevClient] = Field(default_factory=list)

    def client(self, client_id: str) -> DevClient | None:
        return next((c for c in self.clients if c.client_id == client_id), None)


_DEFAULT_USERS_YAML = """\
# Dev users and OAuth clients of the embedguard dev issuer (NOT for production).
# Edit freely: the running issuer re-reads this file when it changes.
# Groups end up in the "groups" claim, which the gateway's policy matches.
audience: embedguard          # the "aud" of access tokens
access_token_ttl_s: 900
id_token_ttl_s: 900
users:
  alice:
    name: Alice Analyst
    email: alice@example.com
    groups: [Vector-Read]           # data scientist: search and read; writes need approval
  bob:
    name: Bob Approver
    email: bob@example.com
    groups: [Vector-Approve]        # approver
  carol:
    name: Carol Approver
    email: carol@example.com
    groups: [Vector-Approve]        # second approver, for N-of-M
  dave:
    name: Dave Data-Scientist
    email: dave@example.com
    groups: [Vector-Read]
  oscar:
    name: Oscar Ops
    email: oscar@example.com
    groups: [Vector-Write]          # ops: writes and deletes with a change ticket
  pipeline-bot:
    name: Ingestion Pipeline
    email: pipeline-bot@example.com
    groups: [Vector-Pipeline]       # service account: short-lived tokens, read-only
  audrey:
    name: Audrey Auditor
    email: audrey@example.com
    groups: [Vector-Audit]          # auditor: recordings and evidence
  mallory:
    name: Mallory Nogroups
    email: mallory@example.com
    groups: []                      # no groups: default deny everywhere
clients:
  - client_id: embedguard-dashboard # the Streamlit dashboard (st.login)
    client_secret: "{dashboard_secret}"
    redirect_uris:
      - http://localhost:8501/oauth2callback
      - http://127.0.0.1:8501/oauth2callback
  - client_id: embedguard-cli       # a public client: PKCE, no secret
    redirect_uris:
      - http://127.0.0.1/callback
"""


def load_directory(path: Path) -> DevDirectory:
    """Read and validate ``users.yaml`` (JSON works too); errors name the field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DevIdpError(f"{path} does not exist") from None
    except yaml.YAMLError as exc:
        raise DevIdpError(f"{path} is not valid YAML: {exc}") from None
    try:
        return DevDirectory.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise DevIdpError(f"{path}: {where}: {first['msg']}") from None


class _DirectoryFile:
    """``users.yaml``, created with defaults and re-read when it changes."""

    def __init__(self, data_dir: Path) -> None:
        directory = _idp_dir(data_dir)
        self.path = directory / USERS_FILE
        with _dir_lock(directory):
            if not self.path.exists():
                text = _DEFAULT_USERS_YAML.format(dashboard_secret=secrets.token_urlsafe(24))
                _write_private(self.path, text.encode())
        self._stamp = self._file_stamp()
        self._value = load_directory(self.path)  # an invalid file stops the start

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def get(self) -> DevDirectory:
        stamp = self._file_stamp()
        if stamp is not None and stamp != self._stamp:
            self._stamp = stamp
            try:
                self._value = load_directory(self.path)
            except DevIdpError as exc:
                log.warning("keeping the previous dev users: %s", exc)
        return self._value


# --- the OpenID provider -----------------------------------------------------------


@dataclass(frozen=True)
class _Grant:
    client_id: str
    redirect_uri: str
    username: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    auth_time: int
    expires_at: float


class _OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


def _redirect_uri_allowed(candidate: str, registered: Sequence[str]) -> bool:
    """Exact match, or (RFC 8252 §7.3) a registered loopback URI on another port."""
    if candidate in registered:
        return True
    c = urllib.parse.urlsplit(candidate)
    if c.scheme != "http" or not c.hostname or not is_loopback_host(c.hostname) or c.fragment:
        return False
    for uri in registered:
        r = urllib.parse.urlsplit(uri)
        if (
            r.scheme == "http"
            and r.hostname == c.hostname
            and r.path == c.path
            and r.query == c.query
        ):
            return True
    return False


def _with_params(uri: str, params: Mapping[str, str | None]) -> str:
    parts = urllib.parse.urlsplit(uri)
    extra = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def _single(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """OAuth parameters; a repeated one is an error (RFC 6749 §3.1)."""
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise _OAuthError("invalid_request", f"parameter {key} is repeated")
        params[key] = value
    return params


async def _form(request: Request) -> dict[str, str]:
    if (
        request.headers.get("content-type", "").split(";")[0].strip()
        != "application/x-www-form-urlencoded"
    ):
        raise _OAuthError(
            "invalid_request", "send the parameters as application/x-www-form-urlencoded"
        )
    body = await request.body()
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=64
        )
    except (UnicodeDecodeError, ValueError):
        raise _OAuthError("invalid_request", "the form body cannot be parsed") from None
    return _single(pairs)


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;color:#222}"
    "button{display:block;width:100%;text-align:left;margin:.4rem 0;padding:.6rem .8rem;"
    "border:1px solid #bbb;border-radius:6px;background:#fafafa;cursor:pointer;"
    "font-size:1rem}"
    "button:hover{background:#eef}small{color:#666}.warn{color:#a40}"
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(doc, status_code=status, headers=_PAGE_HEADERS)


class _DevIdp:
    def __init__(self, data_dir: Path, issuer: str, *, allow_mint: bool) -> None:
        self.issuer = issuer.rstrip("/")
        self.keys = KeyStore(data_dir)
        self.keys.ensure()
        self.keys.keys()  # load now: a bad key file stops the start, not the first request
        self.directory = _DirectoryFile(data_dir)
        self.allow_mint = allow_mint
        self.dpop = DpopVerifier()
        self._codes: dict[str, _Grant] = {}
        self._codes_lock = threading.Lock()

    # discovery and keys

    def metadata(self) -> dict[str, Any]:
        i = self.issuer
        return {
            "issuer": i,
            "authorization_endpoint": f"{i}/authorize",
            "token_endpoint": f"{i}/token",
            "userinfo_endpoint": f"{i}/userinfo",
            "end_session_endpoint": f"{i}/logout",
            "jwks_uri": f"{i}/jwks",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile", "email", "groups"],
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "name",
                "email",
                "email_verified",
                "preferred_username",
                "groups",
            ],
            "dpop_signing_alg_values_supported": list(self.dpop.algorithms),
            "authorization_response_iss_parameter_supported": True,
        }

    def sign(self, claims: Mapping[str, Any], *, typ: str = "JWT") -> str:
        key = self.keys.signing_key()
        return jwt.encode(
            {"alg": "RS256", "kid": key.kid, "typ": typ}, dict(claims), key, algorithms=["RS256"]
        )

    def access_token(
        self,
        *,
        sub: str,
        groups: Sequence[str],
        audience: str,
        client_id: str,
        ttl_s: int,
        issued_at: int,
        scope: str | None = None,
        cnf_jkt: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        claims: dict[str, Any] = dict(extra or {})
        claims.update(
            {
                "iss": self.issuer,
                "sub": sub,
                "aud": audience,
                "client_id": client_id,
                "groups": list(groups),
                "jti": str(uuid.uuid4()),
                "iat": issued_at,
                "nbf": issued_at,
                "exp": issued_at + ttl_s,
            }
        )
        if scope is not None:
            claims["scope"] = scope
        if cnf_jkt is not None:
            claims["cnf"] = {"jkt": cnf_jkt}
        return self.sign(claims, typ="at+jwt")

    def verify_own(self, token: str, *, allow_expired: bool = False) -> dict[str, Any]:
        """Claims of a token this issuer signed (userinfo, id_token_hint)."""
        try:
            decoded = jwt.decode(token, KeySet(list(self.keys.keys())), algorithms=["RS256"])
        except (JoseError, ValueError, TypeError):
            raise _OAuthError(
                "invalid_token", "the token was not signed by this issuer", 401
            ) from None
        claims = decoded.claims
        exp = claims.get("exp")
        if claims.get("iss") != self.issuer or not isinstance(exp, int | float):
            raise _OAuthError("invalid_token", "the token was not issued by this issuer", 401)
        if not allow_expired and exp <= time.time():
            raise _OAuthError("invalid_token", "the token has expired", 401)
        return claims

    # authorization codes

    def _store_code(self, grant: _Grant) -> str:
        code = secrets.token_urlsafe(32)
        now = time.time()
        with self._codes_lock:
            for stale in [c for c, g in self._codes.items() if g.expires_at <= now]:
                del self._codes[stale]
            self._codes[code] = grant
        return code

    def _take_code(self, code: str) -> _Grant | None:
        with self._codes_lock:
            grant = self._codes.pop(code, None)  # single use
        if grant is None or grant.expires_at <= time.time():
            return None
        return grant

    # endpoints

    async def discovery(self, request: Request) -> Response:
        return JSONResponse(self.metadata())

    async def jwks_endpoint(self, request: Request) -> Response:
        return JSONResponse(self.keys.jwks(), headers={"Cache-Control": "max-age=60"})

    async def authorize(self, request: Request) -> Response:
        try:
            if request.method == "GET":
                params = _single(request.query_params.multi_items())
            else:
                params = await _form(request)
        except _OAuthError as exc:
            return _page("Sign-in request refused", f"<p>{html.escape(exc.description)}</p>", 400)
        directory = self.directory.get()
        client = directory.client(params.get("client_id", ""))
        redirect_uri = params.get("redirect_uri", "")
        if client is None:
            return _page(
                "Unknown client",
                "<p>The client_id is not registered with this dev issuer "
                f"(see {html.escape(str(self.directory.path))}).</p>",
                400,
            )
        if not _redirect_uri_allowed(redirect_uri, client.redirect_uris):
            # Never redirect to an unregistered URI (RFC 6749 §4.1.2.1).
            return _page(
                "Redirect URI not registered",
                f"<p>{html.escape(redirect_uri)} is not a redirect URI of "
                f"{html.escape(client.client_id)}.</p>",
                400,
            )
        state = params.get("state")
        try:
            username = self._check_authorize(params, client, directory)
        except _OAuthError as exc:
            return RedirectResponse(
                _with_params(
                    redirect_uri,
                    {
                        "error": exc.error,
                        "error_description": exc.description,
                        "state": state,
                        "iss": self.issuer,
                    },
                ),
                status_code=302,
            )
        if username is None:
            return self._picker(params, directory)
        code = self._store_code(
            _Grant(
                client_id=client.client_id,
                redirect_uri=redirect_uri,
                username=username,
                scope=params.get("scope", "openid"),
                nonce=params.get("nonce"),
                code_challenge=params.get("code_challenge"),
                auth_time=int(time.time()),
                expires_at=time.time() + CODE_TTL_S,
            )
        )
        target = _with_params(redirect_uri, {"code": code, "state": state, "iss": self.issuer})
        return RedirectResponse(target, status_code=302 if request.method == "GET" else 303)

    def _check_authorize(
        self, params: Mapping[str, str], client: DevClient, directory: DevDirectory
    ) -> str | None:
        """Validate an authorization request; the chosen user, or None to ask."""
        if params.get("response_type") != "code":
            raise _OAuthError("unsupported_response_type", "only response_type=code is supported")
        if params.get("response_mode", "query") != "query":
            raise _OAuthError("invalid_request", "only response_mode=query is supported")
        if "openid" not in params.get("scope", "").split():
            raise _OAuthError("invalid_scope", "the scope must include openid")
        challenge = params.get("code_challenge")
        method = params.get("code_challenge_method")
        if challenge is None:
            if client.client_secret is None:
                raise _OAuthError(
                    "invalid_request", "public clients must use PKCE (code_challenge)"
                )
            if method is not None:
                raise _OAuthError("invalid_request", "code_challenge_method without code_challenge")
        else:
            if method != "S256":
                raise _OAuthError("invalid_request", "code_challenge_method must be S256")
            if not 43 <= len(challenge) <= 128 or not set(challenge) <= _PKCE_VERIFIER_CHARS:
                raise _OAuthError("invalid_request", "code_challenge is malformed")
        chosen = params.get("user")
        if chosen is not None:
            if chosen not in directory.users:
                raise _OAuthError("access_denied", "no such dev user")
            return chosen
        if params.get("prompt") == "none":
            raise _OAuthError(
                "login_required", "the dev issuer keeps no session; sign in interactively"
            )
        hint = params.get("login_hint")
        if hint is not None and hint in directory.users:
            return hint
        return None

    def _picker(self, params: Mapping[str, str], directory: DevDirectory) -> Response:
        hidden = "".join(
            f'<input type=hidden name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
            if k != "user"
        )
        buttons = "".join(
            f'<button name=user value="{html.escape(name)}">'
            f"<b>{html.escape(user.name or name)}</b> <small>{html.escape(name)} &middot; "
            f"{html.escape(', '.join(user.groups) or 'no groups')}</small></button>"
            for name, user in directory.users.items()
        )
        body = (
            f"<p>Sign in to <b>{html.escape(params.get('client_id', ''))}</b> as:</p>"
            f'<form method=post action="{html.escape(self.issuer)}/authorize">'
            f"{hidden}{buttons}</form>"
            "<p class=warn><small>embedguard dev issuer: for demos and tests only.</small></p>"
        )
        return _page("Choose a dev user", body)

    def _client_auth(
        self, request: Request, form: dict[str, str], directory: DevDirectory
    ) -> DevClient:
        header = request.headers.get("authorization")
        client_id: str | None
        secret: str | None
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "basic" or "client_secret" in form:
                raise _OAuthError("invalid_client", "use one client authentication method", 401)
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise _OAuthError("invalid_client", "malformed Basic credentials", 401) from None
            raw_id, sep, raw_secret = decoded.partition(":")
            if not sep:
                raise _OAuthError("invalid_client", "malformed Basic credentials", 401)
            client_id, secret = (
                urllib.parse.unquote_plus(raw_id),
                urllib.parse.unquote_plus(raw_secret),
            )
            if form.get("client_id", client_id) != client_id:
                raise _OAuthError(
                    "invalid_client", "client_id differs from the authenticated client", 401
                )
        else:
            client_id, secret = form.get("client_id"), form.get("client_secret")
        client = directory.client(client_id or "")
        if client is None:
            raise _OAuthError("invalid_client", "unknown client", 401)
        expected = client.client_secret
        if expected is None:
            if secret:
                raise _OAuthError("invalid_client", "this public client has no secret", 401)
        elif secret is None or not hmac.compare_digest(
            secret.encode(), expected.get_secret_value().encode()
        ):
            raise _OAuthError("invalid_client", "wrong client secret", 401)
        return client

    async def token(self, request: Request) -> Response:
        try:
            form = await _form(request)
            directory = self.directory.get()
            client = self._client_auth(request, form, directory)
            if form.get("grant_type") != "authorization_code":
                raise _OAuthError("unsupported_grant_type", "only authorization_code is supported")
            grant = self._take_code(form.get("code", ""))
            if grant is None or grant.client_id != client.client_id:
                raise _OAuthError("invalid_grant", "the code is unknown, used or expired")
            if form.get("redirect_uri") != grant.redirect_uri:
                raise _OAuthError(
                    "invalid_grant", "redirect_uri differs from the authorization request"
                )
            verifier = form.get("code_verifier")
            if grant.code_challenge is None:
                if verifier is not None:
                    raise _OAuthError(
                        "invalid_grant", "code_verifier sent but no code_challenge was"
                    )
            elif (
                verifier is None
                or not 43 <= len(verifier) <= 128
                or not set(verifier) <= _PKCE_VERIFIER_CHARS
                or not hmac.compare_digest(b64url_sha256(verifier), grant.code_challenge)
            ):
                raise _OAuthError("invalid_grant", "the PKCE code_verifier does not match")
            user = directory.users.get(grant.username)
            if user is None:
                raise _OAuthError("invalid_grant", "the user no longer exists")
            jkt = self._token_dpop(request)
        except _OAuthError as exc:
            headers = (
                {"WWW-Authenticate": 'Basic realm="embedguard-dev-idp"'}
                if exc.status == 401
                else None
            )
            return _no_store(
                JSONResponse(
                    {"error": exc.error, "error_description": exc.description},
                    status_code=exc.status,
                    headers=headers,
                )
            )
        now = int(time.time())
        access = self.access_token(
            sub=grant.username,
            groups=user.groups,
            audience=directory.audience,
            client_id=client.client_id,
            ttl_s=directory.access_token_ttl_s,
            issued_at=now,
            scope=grant.scope,
            cnf_jkt=jkt,
        )
        id_claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": grant.username,
            "aud": client.client_id,
            "azp": client.client_id,
            "iat": now,
            "exp": now + directory.id_token_ttl_s,
            "auth_time": grant.auth_time,
            "at_hash": _at_hash(access),
            **_profile(grant.username, user),
        }
        if grant.nonce is not None:
            id_claims["nonce"] = grant.nonce
        return _no_store(
            JSONResponse(
                {
                    "access_token": access,
                    "token_type": "DPoP" if jkt else "Bearer",
                    "expires_in": directory.access_token_ttl_s,
                    "id_token": self.sign(id_claims),
                    "scope": grant.scope,
                }
            )
        )

    def _token_dpop(self, request: Request) -> str | None:
        proofs = request.headers.getlist("dpop")
        if not proofs:
            return None
        if len(proofs) > 1:
            raise _OAuthError("invalid_dpop_proof", "send one DPoP header")
        try:
            return self.dpop.verify(
                proofs[0], method="POST", url=f"{self.issuer}/token", now=datetime.now(UTC)
            )
        except AuthError as exc:
            raise _OAuthError("invalid_dpop_proof", exc.message) from None

    async def userinfo(self, request: Request) -> Response:
        try:
            try:
                scheme, token = parse_authorization(request.headers.get("authorization"))
            except AuthError as exc:
                raise _OAuthError("invalid_token", exc.message, 401) from None
            claims = self.verify_own(token)
            cnf = claims.get("cnf")
            jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
            if jkt is not None:
                proof = request.headers.get("dpop")
                if scheme != "dpop" or proof is None:
                    raise _OAuthError(
                        "invalid_token", "this token is DPoP-bound: send a DPoP proof", 401
                    )
                try:
                    self.dpop.verify(
                        proof,
                        method=request.method,
                        url=f"{self.issuer}/userinfo",
                        now=datetime.now(UTC),
                        access_token=token,
                        expected_jkt=jkt,
                    )
                except AuthError as exc:
                    raise _OAuthError("invalid_dpop_proof", exc.message, 401) from None
            user = self.directory.get().users.get(claims["sub"])
        except _OAuthError as exc:
            return _no_store(
                JSONResponse(
                    {"error": exc.error, "error_description": exc.description},
                    status_code=exc.status,
                    headers={"WWW-Authenticate": f'Bearer error="{exc.error}"'},
                )
            )
        info: dict[str, Any] = {"sub": claims["sub"]}
        if user is not None:
            info.update(_profile(claims["sub"], user))
        else:
            info["groups"] = claims.get("groups", [])
        return _no_store(JSONResponse(info))

    async def logout(self, request: Request) -> Response:
        try:
            if request.method == "GET":
                params = _single(request.query_params.multi_items())
            else:
                params = await _form(request)
            client_id = params.get("client_id")
            hint = params.get("id_token_hint")
            if hint:
                aud = self.verify_own(hint, allow_expired=True).get("aud")
                hinted = aud if isinstance(aud, str) else None
                if client_id is not None and hinted != client_id:
                    raise _OAuthError("invalid_request", "id_token_hint is for another client")
                client_id = hinted
        except _OAuthError as exc:
            return _page("Sign-out request refused", f"<p>{html.escape(exc.description)}</p>", 400)
        target = params.get("post_logout_redirect_uri")
        client = self.directory.get().client(client_id or "")
        if target:
            allowed = (client.post_logout_redirect_uris + client.redirect_uris) if client else []
            if not _redirect_uri_allowed(target, allowed):
                return _page(
                    "Sign-out redirect refused",
                    "<p>post_logout_redirect_uri is not registered for this client.</p>",
                    400,
                )
            return RedirectResponse(
                _with_params(target, {"state": params.get("state")}), status_code=302
            )
        return _page("Signed out", "<p>You are signed out of the embedguard dev issuer.</p>")

    async def mint(self, request: Request) -> Response:
        client = request.client
        if not self.allow_mint or client is None or not is_loopback_host(client.host):
            return JSONResponse(
                {
                    "error": "forbidden",
                    "error_description": "minting is disabled (it is only served on loopback)",
                },
                status_code=403,
            )
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse(
                {"error": "invalid_request", "error_description": "send JSON"}, status_code=415
            )
        body = parse_json_object(await request.body())
        try:
            req = _MintRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return JSONResponse(
                {"error": "invalid_request", "error_description": f"{where}: {first['msg']}"},
                status_code=400,
            )
        reserved = sorted(_RESERVED_CLAIMS & req.claims.keys())
        if reserved:
            return JSONResponse(
                {
                    "error": "invalid_request",
                    "error_description": f"claims may not set {', '.join(reserved)}; "
                    "use the dedicated fields",
                },
                status_code=400,
            )
        directory = self.directory.get()
        issued_at = int(time.time()) - req.issued_ago_s
        token = self.access_token(
            sub=req.sub,
            groups=req.groups,
            audience=req.audience or directory.audience,
            client_id=req.client_id,
            ttl_s=req.ttl_s,
            issued_at=issued_at,
            scope=req.scope,
            cnf_jkt=req.cnf_jkt,
            extra=req.claims,
        )
        return _no_store(
            JSONResponse(
                {
                    "access_token": token,
                    "token_type": "DPoP" if req.cnf_jkt else "Bearer",
                    "expires_in": max(0, issued_at + req.ttl_s - int(time.time())),
                }
            )
        )


class _MintRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sub: str = Field(min_length=1, max_length=1024)
    groups: list[str] = Field(default_factory=list)
    ttl_s: int = Field(default=900, gt=0, le=MAX_TTL_S)
    issued_ago_s: int = Field(default=0, ge=0, le=365 * 86_400)
    audience: str | None = Field(default=None, min_length=1)
    client_id: str = Field(default="embedguard-cli", min_length=1)
    scope: str | None = None
    cnf_jkt: str | None = Field(default=None, min_length=43, max_length=43)
    claims: dict[str, Any] = Field(default_factory=dict)


def _at_hash(access_token: str) -> str:
    # OIDC Core §3.1.3.6: the left half of the SHA-256 of the token, base64url.
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")


def _profile(username: str, user: DevUser) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "preferred_username": username,
        "name": user.name or username,
        "groups": list(user.groups),
    }
    if user.email:
        profile.update(email=user.email, email_verified=True)
    return profile


class _HostGuard:
    """Refuses requests whose Host is not one of ours (DNS-rebinding defence)."""

    def __init__(self, app: ASGIApp, allowed: set[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and Headers(scope=scope).get("host", "").lower() not in self.allowed
        ):
            response = PlainTextResponse(
                "Misdirected request: wrong Host for the dev issuer.\n", 421
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(
    data_dir: Path, issuer: str, *, allow_mint: bool = True, allowed_hosts: set[str] | None = None
) -> ASGIApp:
    """The issuer as an ASGI app (for embedding); :func:`serve` runs it.

    With ``allowed_hosts`` (``host:port`` values), other Host headers get 421.
    """
    return _build(data_dir, issuer, allow_mint=allow_mint, allowed_hosts=allowed_hosts)[0]


def _build(
    data_dir: Path, issuer: str, *, allow_mint: bool, allowed_hosts: set[str] | None
) -> tuple[ASGIApp, _DevIdp]:
    idp = _DevIdp(data_dir, issuer, allow_mint=allow_mint)
    app = Starlette(
        routes=[
            Route("/.well-known/openid-configuration", idp.discovery, methods=["GET"]),
            Route("/jwks", idp.jwks_endpoint, methods=["GET"]),
            Route("/authorize", idp.authorize, methods=["GET", "POST"]),
            Route("/token", idp.token, methods=["POST"]),
            Route("/userinfo", idp.userinfo, methods=["GET", "POST"]),
            Route("/logout", idp.logout, methods=["GET", "POST"]),
            Route("/dev/mint", idp.mint, methods=["POST"]),
        ],
        max_body_size=_MAX_BODY_BYTES,
    )
    if allowed_hosts is not None:
        return _HostGuard(app, {h.lower() for h in allowed_hosts}), idp
    return app, idp


# --- running it ---------------------------------------------------------------------


class DevIdpServer:
    """A running dev issuer. Use as a context manager, or call :meth:`shutdown`."""

    def __init__(
        self,
        server: uvicorn.Server,
        thread: threading.Thread,
        issuer_url: str,
        data_dir: Path,
        keys: KeyStore,
        users_file: Path,
    ) -> None:
        self._server, self._thread = server, thread
        self.issuer_url = issuer_url
        self.data_dir = data_dir
        self.keys = keys
        self.users_file = users_file

    def rotate_key(self) -> str:
        """Add a signing key; the old ones stay in the JWKS. Returns the new kid."""
        return self.keys.rotate()

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C raises KeyboardInterrupt here)."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout_s)

    def __enter__(self) -> DevIdpServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DevIdpError(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise DevIdpError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    return sock


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    data_dir: Path = Path("data"),
    *,
    allow_remote: bool = False,
    issuer_url: str | None = None,
) -> DevIdpServer:
    """Start the dev issuer in a background thread and return once it answers.

    ``port`` 0 picks a free port. Any address but loopback is refused unless
    ``allow_remote``; then the mint endpoint is off and the Host check too
    (give ``issuer_url``, the URL clients will use, when binding a wildcard).
    """
    if not allow_remote:
        if not is_loopback_host(host):
            raise DevIdpError(
                f"refusing to listen on {host}: the dev issuer hands out tokens, so it binds "
                "loopback only (127.0.0.1, ::1, localhost). Pass --allow-remote to override."
            )
        with contextlib.suppress(socket.gaierror):
            resolved = {info[4][0] for info in socket.getaddrinfo(host, None)}
            if not all(is_loopback_host(str(a)) for a in resolved):
                raise DevIdpError(f"{host} resolves to a non-loopback address; use 127.0.0.1")
    if issuer_url is None and host in ("0.0.0.0", "::", ""):  # noqa: S104 - refusing them
        raise DevIdpError(
            "binding a wildcard address needs --public-url, the issuer URL clients will use"
        )
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    host_part = f"[{host}]" if ":" in host else host
    issuer = (issuer_url or f"http://{host_part}:{bound_port}").rstrip("/")
    try:
        allowed = (
            None
            if allow_remote
            else {
                f"{h}:{bound_port}" for h in ("127.0.0.1", "localhost", "[::1]", host_part.lower())
            }
            | {urllib.parse.urlsplit(issuer).netloc.lower()}
        )
        app, idp = _build(data_dir, issuer, allow_mint=not allow_remote, allowed_hosts=allowed)
    except BaseException:
        sock.close()
        raise
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        ws="none",
        http="h11",
        log_level="warning",
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="embedguard-dev-idp", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 15.0
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise DevIdpError(f"the dev issuer did not start on {host}:{bound_port}")
        time.sleep(0.01)
    return DevIdpServer(server, thread, issuer, data_dir, idp.keys, idp.directory.path)


# --- client helpers -------------------------------------------------------------------


def generate_dpop_key(path: Path, *, kind: Literal["EC", "RSA", "OKP"] = "EC") -> str:
    """Create a DPoP key pair in ``path`` (PEM, mode 0600); return its thumbprint.

    Refuses to overwrite an existing file.
    """
    key: SigningKey
    if kind == "EC":
        key = ECKey.generate_key("P-256", private=True)
    elif kind == "RSA":
        key = RSAKey.generate_key(2048, private=True)
    else:
        key = OKPKey.generate_key("Ed25519", private=True)
    if path.exists():
        raise DevIdpError(f"{path} already exists; not overwriting a key")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.as_pem(private=True))
    return key.thumbprint()


def load_dpop_key(path: Path) -> SigningKey:
    """A private key from a PEM file or a JWK JSON file."""
    data = _read_private(path)
    if data.lstrip().startswith(b"{"):
        try:
            key = JWKRegistry.import_key(json.loads(data))
        except (ValueError, JoseError) as exc:
            raise DevIdpError(f"{path} is not a JWK: {exc}") from None
        if not isinstance(key, RSAKey | ECKey | OKPKey) or not key.is_private:
            raise DevIdpError(f"{path} must hold an RSA, EC or OKP private key")
        return key
    try:
        native = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise DevIdpError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if isinstance(native, rsa.RSAPrivateKey):
        return RSAKey.import_key(data)
    if isinstance(native, ec.EllipticCurvePrivateKey):
        return ECKey.import_key(data)
    if isinstance(native, ed25519.Ed25519PrivateKey):
        return OKPKey.import_key(data)
    raise DevIdpError(f"{path} must hold an RSA, EC (P-256/P-384) or Ed25519 private key")


def dpop_thumbprint(key: Path | SigningKey) -> str:
    """The RFC 7638 thumbprint that goes into ``cnf.jkt``."""
    return (load_dpop_key(key) if isinstance(key, Path) else key).thumbprint()


def _dpop_alg(key: SigningKey) -> str:
    if isinstance(key, RSAKey):
        return "RS256"
    if isinstance(key, ECKey):
        algs = {"P-256": "ES256", "P-384": "ES384"}
        if key.curve_name not in algs:
            raise DevIdpError(f"EC curve {key.curve_name} is not supported for DPoP; use P-256")
        return algs[key.curve_name]
    return "EdDSA"


def make_dpop_proof(
    key_file: Path | SigningKey,
    method: str,
    url: str,
    access_token: str | None = None,
    now: datetime | None = None,
    *,
    jti: str | None = None,
) -> str:
    """A DPoP proof for one request (RFC 9449 §4.2): ``htu`` is ``url`` without
    query and fragment; with ``access_token`` it carries ``ath``."""
    key = load_dpop_key(key_file) if isinstance(key_file, Path) else key_file
    alg = _dpop_alg(key)
    parts = urllib.parse.urlsplit(url)
    claims: dict[str, Any] = {
        "jti": jti or secrets.token_urlsafe(16),
        "htm": method,
        "htu": urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
        "iat": int((now or datetime.now(UTC)).timestamp()),
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}
    payload = json.dumps(claims, separators=(",", ":")).encode()
    return jws.serialize_compact(
        header, payload, key, registry=asymmetric_registry([alg], max_header_bytes=2048)
    )


def mint_token(
    issuer_url: str,
    sub: str,
    groups: Sequence[str],
    ttl: timedelta = timedelta(minutes=15),
    issued_ago: timedelta = timedelta(0),
    audience: str | None = DEFAULT_AUDIENCE,
    dpop_key_file: Path | None = None,
    *,
    claims: Mapping[str, Any] | None = None,
    client_id: str | None = None,
    scope: str | None = None,
    timeout_s: float = 5.0,
) -> str:
    """Ask a running dev issuer for an access token (``POST /dev/mint``).

    With ``dpop_key_file`` the token is bound to that key (``cnf.jkt``).
    """
    body: dict[str, Any] = {
        "sub": sub,
        "groups": list(groups),
        "ttl_s": int(ttl.total_seconds()),
        "issued_ago_s": int(issued_ago.total_seconds()),
        "claims": dict(claims or {}),
    }
    if audience is not None:
        body["audience"] = audience
    if client_id is not None:
        body["client_id"] = client_id
    if scope is not None:
        body["scope"] = scope
    if dpop_key_file is not None:
        body["cnf_jkt"] = dpop_thumbprint(dpop_key_file)
    url = issuer_url.rstrip("/") + "/dev/mint"
    try:
        response = httpx.post(url, json=body, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise DevIdpError(
            f"cannot reach the dev issuer at {issuer_url} ({type(exc).__name__}); "
            "is `embedguard dev-idp` running?"
        ) from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code != 200 or not isinstance(answer.get("access_token"), str):
        reason = answer.get("error_description") or f"HTTP {response.status_code}"
        raise DevIdpError(f"the dev issuer at {issuer_url} refused to mint a token: {reason}")
    token: str = answer["access_token"]
    return token
