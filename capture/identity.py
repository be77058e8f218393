"""Identity: verify the caller's OIDC token (and DPoP proof) before anything
else. A missing or invalid identity is refused with 401 (default deny); an
issuer we cannot reach gives 503, never a pass.

Verifying a JWT costs more than everything else the gateway does to a request,
and clients send the same bearer token for minutes, so a verified *bearer*
token is cached (by the sha256 of its header value) until it expires, but for
at most ``cache_ttl_s``: a key removed from the issuer's JWKS stops being
honoured within that time. DPoP requests are never cached: each proof is
single-use and must be verified.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime

from mitmproxy import http

from capture.config import GatewayConfig
from capture.dpop import AuthError
from capture.oidc import OidcVerifier
from capture.state import block, fail_closed, state_of
from capture.types import Identity

__all__ = ["IdentityCheck"]

log = logging.getLogger("embedguard.identity")


class VerifiedTokenCache:
    """Bounded LRU of verified bearer tokens: sha256(header) → (identity, valid until)."""

    def __init__(self, ttl_s: float = 60.0, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[Identity, float]] = OrderedDict()

    @staticmethod
    def key(authorization: str) -> bytes:
        return hashlib.sha256(authorization.encode("utf-8", "surrogateescape")).digest()

    def get(self, key: bytes, now_wall: float) -> Identity | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        identity, until = hit
        if now_wall >= until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return identity

    def put(self, key: bytes, identity: Identity, now_wall: float) -> None:
        until = now_wall + self.ttl_s
        if identity.expires_at is not None:
            until = min(until, identity.expires_at.timestamp())
        if until <= now_wall or identity.dpop_jkt is not None:
            return
        self._entries[key] = (identity, until)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class IdentityCheck:
    def __init__(
        self,
        config: GatewayConfig,
        verifier: OidcVerifier | None = None,
        *,
        cache_ttl_s: float = 60.0,
    ) -> None:
        self.config = config
        self.verifier = verifier or OidcVerifier(
            config.issuer, config.audience, groups_claim=config.groups_claim
        )
        self.cache = VerifiedTokenCache(cache_ttl_s)

    async def running(self) -> None:
        try:
            await self.verifier.load()
        except AuthError as exc:  # keep serving: each request retries and gets 503 meanwhile
            log.error("issuer %s not reachable at start: %s", self.config.issuer, exc.message)

    async def done(self) -> None:
        await self.verifier.aclose()

    @fail_closed("identity")
    async def request(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or flow.response is not None:
            return
        headers = flow.request.headers
        if len(headers.get_all("authorization")) > 1 or len(headers.get_all("dpop")) > 1:
            st.auth_error_code = "duplicate_credentials"
            block(
                flow,
                st,
                401,
                "unauthenticated",
                "send exactly one Authorization header (and at most one DPoP header)",
                "identity",
            )
            return
        authorization = headers.get("authorization")
        dpop_proof = headers.get("dpop")
        now = time.time()
        cache_key = None
        if authorization and dpop_proof is None and authorization[:7].lower() == "bearer ":
            cache_key = self.cache.key(authorization)
            cached = self.cache.get(cache_key, now)
            if cached is not None:
                st.identity = cached
                return
        url = dpop_url(flow, st.route.public_url, st.client_host)
        try:
            st.identity = await self.verifier.authenticate(
                authorization=authorization,
                dpop_proof=dpop_proof,
                method=flow.request.method,
                url=url,
                now=datetime.fromtimestamp(now, UTC),
            )
            if cache_key is not None:
                self.cache.put(cache_key, st.identity, now)
        except AuthError as exc:
            st.auth_error_code = exc.code
            error = "identity_unavailable" if exc.status == 503 else "unauthenticated"
            block(flow, st, exc.status, error, f"{exc.code}: {exc.message}", "identity")
            if flow.response is not None and exc.status == 401:
                flow.response.headers["www-authenticate"] = exc.www_authenticate()


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def dpop_url(flow: http.HTTPFlow, public_url: str | None, client_host: str) -> str:
    """The URL a DPoP proof must be made for (RFC 9449 §4.3: the request's).

    The route's public URL when configured; otherwise the address the
    connection arrived on. The client's Host header is taken only when it
    names that address (or a loopback name, on a loopback listener): a Host
    the client chose must not let a proof made for another server pass."""
    path = flow.request.path.split("?", 1)[0]
    if public_url:
        return public_url + path
    scheme = "https" if flow.client_conn.tls_established else "http"
    default_port = 443 if scheme == "https" else 80
    sock = flow.client_conn.sockname
    sock_ip, sock_port = (str(sock[0]), int(sock[1])) if sock else ("", 0)
    if client_host:
        name, port = _split_authority(client_host, default_port)
        if port == sock_port and (
            name == sock_ip.lower()
            or (_is_loopback(sock_ip) and name in _LOOPBACK_NAMES)
        ):
            return f"{scheme}://{client_host}{path}"
    host = f"[{sock_ip}]" if ":" in sock_ip else sock_ip
    authority = host if sock_port == default_port else f"{host}:{sock_port}"
    return f"{scheme}://{authority}{path}"


def _split_authority(authority: str, default_port: int) -> tuple[str, int]:
    a = authority.strip().lower()
    if a.startswith("["):
        end = a.find("]")
        name, rest = a[1:end], a[end + 1:]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = a.partition(":")
    return name, int(port) if port.isdigit() else (default_port if not port else -1)


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback
    except ValueError:
        return False
