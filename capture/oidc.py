"""OIDC bearer-token verification: who is calling.

:class:`OidcVerifier` turns an access token (a JWS-signed JWT) into an
:class:`~capture.types.Identity`, or refuses it with an :class:`AuthError`.

Keys come from the issuer's discovery document (``/.well-known/openid-
configuration``) and its ``jwks_uri``. They are cached; a token whose ``kid``
is not in the cache triggers one refresh, at most once per
``jwks_min_refresh_s``, so a caller spraying random key ids cannot make the
gateway hammer the issuer. Keys come only from that key set: headers that
carry or point to a key (``jwk``, ``jku``, ``x5u``, ``x5c``) are refused, as
are ``alg=none`` and every HMAC algorithm (so an RSA public key can never be
used as an HMAC secret), and a key is used only with an algorithm of its type.

The checks after the signature: ``iss`` is the configured issuer, ``aud``
contains the configured audience, ``exp``/``nbf``/``iat`` hold at ``now`` with
a small leeway, ``typ`` (if present) is ``JWT`` or ``at+jwt``, and ``sub`` is
present. Groups come from a configurable claim, which may be a dotted path
(``realm_access.roles``). A token bound to a DPoP key (``cnf.jkt``) is
accepted only with a valid proof by that key (:mod:`capture.dpop`).

The clock is passed in, so everything except the key fetch is deterministic.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

import httpx
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.registry import Header

from capture.dpop import (
    AuthError,
    DpopRequest,
    DpopVerifier,
    asymmetric_registry,
    describe_alg,
    import_public_jwk,
    is_numeric_date,
    key_type_for,
    parse_json_object,
)
from capture.types import Identity

__all__ = [
    "ACCEPTED_TOKEN_TYPES",
    "DEFAULT_ALGORITHMS",
    "AuthError",
    "DpopRequest",
    "OidcVerifier",
    "check_claims",
    "extract_groups",
    "is_loopback_host",
    "parse_authorization",
]

log = logging.getLogger(__name__)

DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")
#: ``typ`` header values accepted for an access token (RFC 7519 §5.1, RFC 9068 §2.1).
ACCEPTED_TOKEN_TYPES = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})

_UNTRUSTED_KEY_HEADERS = ("jwk", "jku", "x5u", "x5c")
_MAX_DOCUMENT_BYTES = 1 << 20
_MAX_KEYS = 64
_MAX_KID_CHARS = 256
_MAX_SUBJECT_CHARS = 1024
_MAX_GROUPS = 1024
_MAX_GROUP_CHARS = 512
_INITIAL_RETRY_S = 5.0

VerificationKey = RSAKey | ECKey | OKPKey


@dataclass(frozen=True)
class _IssuerKey:
    kid: str | None
    key: VerificationKey


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_fetch_url(url: str, what: str, allow_http: bool) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if (
        parts.scheme == "http"
        and parts.hostname
        and (allow_http or is_loopback_host(parts.hostname))
    ):
        return
    raise ValueError(
        f"the {what} {url!r} must be an https URL (plain http is accepted on loopback only)"
    )


def _timestamp(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def parse_authorization(value: str | None) -> tuple[Literal["bearer", "dpop"], str]:
    """Split an ``Authorization`` header into its scheme and token.

    Only the Bearer (RFC 6750) and DPoP (RFC 9449) schemes are accepted; the
    scheme name is case-insensitive. Raises :class:`AuthError`.
    """
    if value is None or not value.strip():
        raise AuthError(
            "missing_token",
            "The request has no Authorization header; send 'Authorization: Bearer <token>'.",
        )
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    lowered = scheme.lower()
    if lowered not in ("bearer", "dpop"):
        raise AuthError(
            "bad_authorization_scheme",
            "The Authorization header must use the Bearer or DPoP scheme.",
        )
    if not token or any(c.isspace() for c in token):
        raise AuthError("malformed_token", "The Authorization header must carry exactly one token.")
    return ("bearer" if lowered == "bearer" else "dpop"), token


def extract_groups(claims: Mapping[str, Any], claim: str) -> frozenset[str]:
    """The caller's groups from ``claim`` of verified ``claims``.

    ``claim`` is a top-level claim name (which may itself contain dots, like
    ``https://example.com/groups``) or else a dotted path into nested objects
    (``realm_access.roles``). A missing claim means no groups; a string is one
    group; a list must hold only strings. Anything else is refused rather than
    partly read, since a deny rule may hang on a group we would drop.
    """
    value: Any
    if claim in claims:
        value = claims[claim]
    else:
        value = claims
        for part in claim.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return frozenset()
            value = value[part]
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or len(value) > _MAX_GROUPS
        or not all(isinstance(g, str) and 0 < len(g) <= _MAX_GROUP_CHARS for g in value)
    ):
        raise AuthError(
            "bad_groups_claim", f"The token's {claim} claim must be a list of group names."
        )
    return frozenset(value)


def check_claims(
    claims: Mapping[str, Any], *, issuer: str, audience: str, now: datetime, leeway_s: float
) -> None:
    """Check the registered claims of a token whose signature already verified."""
    if claims.get("iss") != issuer:
        raise AuthError("issuer_mismatch", f"The token was not issued by {issuer}.")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise AuthError(
            "bad_audience", f"The token has no valid audience (aud); expected {audience}."
        )
    if audience not in audiences:
        raise AuthError(
            "bad_audience",
            f"The token is not meant for this service; expected audience {audience}.",
        )
    ts = now.timestamp()
    exp = claims.get("exp")
    if not is_numeric_date(exp):
        raise AuthError("missing_claim", "The token has no valid expiry (exp).")
    assert isinstance(exp, int | float)
    if ts >= exp + leeway_s:
        raise AuthError("token_expired", f"The token expired at {_timestamp(exp).isoformat()}.")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if not is_numeric_date(value):
            raise AuthError("malformed_token", f"The token's {name} claim is not a date.")
        if value > ts + leeway_s:
            when = "is not valid before" if name == "nbf" else "claims to be issued at"
            raise AuthError(
                "token_not_yet_valid",
                f"The token {when} {_timestamp(value).isoformat()}, which is in the future.",
            )
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= _MAX_SUBJECT_CHARS:
        raise AuthError("missing_claim", "The token has no subject (sub).")
    jti = claims.get("jti")
    if jti is not None and not isinstance(jti, str):
        raise AuthError("malformed_token", "The token's jti claim is not a string.")


def _cnf_jkt(claims: Mapping[str, Any]) -> str | None:
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    if not isinstance(cnf, Mapping) or not cnf:
        raise AuthError("malformed_token", "The token's cnf claim is not a confirmation object.")
    jkt = cnf.get("jkt")
    if jkt is None:
        # Bound to something we cannot check (an mTLS certificate, say):
        # accepting it as a plain bearer token would drop the binding.
        raise AuthError(
            "unsupported_binding",
            "The token is bound to a proof of possession this gateway cannot check; "
            "only DPoP (cnf.jkt) is supported.",
        )
    if not isinstance(jkt, str) or not jkt:
        raise AuthError("malformed_token", "The token's cnf.jkt is not a key thumbprint.")
    return jkt


class OidcVerifier:
    """Verifies access tokens from one issuer for one audience.

    ``http`` is used for discovery and the key set; without one the verifier
    makes (and :meth:`aclose` closes) its own. ``clock`` is the monotonic clock
    behind the key-refresh rate limit. Plain-http issuers are accepted on
    loopback (the dev issuer) or with ``allow_http``.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        groups_claim: str = "groups",
        leeway_s: float = 30.0,
        http: httpx.AsyncClient | None = None,
        jwks_min_refresh_s: float = 30.0,
        jwks_max_age_s: float = 900.0,
        dpop: DpopVerifier | None = None,
        allow_http: bool = False,
        max_token_bytes: int = 16_384,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("both an issuer URL and an audience are needed")
        _check_fetch_url(issuer, "issuer", allow_http)
        if not groups_claim:
            raise ValueError("groups_claim must name a claim")
        if leeway_s < 0 or jwks_min_refresh_s < 0 or jwks_max_age_s <= 0:
            raise ValueError(
                "leeway_s and jwks_min_refresh_s must not be negative, "
                "jwks_max_age_s must be positive"
            )
        self.issuer = issuer
        self.audience = audience
        self.algorithms = tuple(algorithms)
        self._registry = asymmetric_registry(
            self.algorithms, max_header_bytes=2048, max_payload_bytes=max_token_bytes
        )
        self.groups_claim = groups_claim
        self.leeway_s = leeway_s
        self.jwks_min_refresh_s = jwks_min_refresh_s
        self.jwks_max_age_s = jwks_max_age_s
        self.dpop = dpop if dpop is not None else DpopVerifier()
        self.allow_http = allow_http
        self.max_token_bytes = max_token_bytes
        self.timeout_s = timeout_s
        self._http = http
        self._owns_http = http is None
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: list[_IssuerKey] | None = None
        self._jwks_uri: str | None = None
        self._fetched_at = 0.0
        self._last_attempt: float | None = None
        self._last_error: AuthError | None = None
        self._generation = 0

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    async def __aenter__(self) -> OidcVerifier:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    async def load(self) -> None:
        """Fetch discovery and keys now (at start-up, to fail early)."""
        async with self._lock:
            await self._refresh()

    # --- the public checks ---

    async def authenticate(
        self,
        *,
        authorization: str | None,
        dpop_proof: str | None,
        method: str,
        url: str,
        now: datetime,
    ) -> Identity:
        """Verify a request's ``Authorization`` and ``DPoP`` headers.

        ``url`` is the URL the client used (see :class:`DpopRequest`). With the
        DPoP scheme a proof is required; with the Bearer scheme a DPoP-bound
        token is refused (RFC 9449 §7.1), and a DPoP header is not needed.
        ``dpop_proof`` must be None when the header is absent; a request that
        repeats the header should be refused before this call.
        """
        scheme, token = parse_authorization(authorization)
        if scheme == "bearer":
            return await self.verify(token, now=now)
        if dpop_proof is None:
            raise AuthError(
                "dpop_required", "The DPoP authorization scheme needs a DPoP header with a proof."
            )
        return await self.verify(token, now=now, dpop=DpopRequest(dpop_proof, method, url))

    async def verify(
        self, token: str, *, now: datetime, dpop: DpopRequest | None = None
    ) -> Identity:
        """Verify ``token`` at ``now``; with ``dpop``, also the request's proof.

        A token bound to a DPoP key needs ``dpop``; a proof with an unbound
        token is refused, since the caller asked for a binding it lacks.
        """
        claims = await self.decode(token, now=now)
        jkt = _cnf_jkt(claims)
        auth_method: Literal["bearer", "dpop"] = "bearer"
        if jkt is not None:
            if dpop is None:
                raise AuthError(
                    "dpop_required",
                    "This access token is bound to a DPoP key; use the DPoP authorization "
                    "scheme and send a DPoP proof with every request.",
                )
            self.dpop.verify(
                dpop.proof,
                method=dpop.method,
                url=dpop.url,
                now=now,
                access_token=token,
                expected_jkt=jkt,
            )
            auth_method = "dpop"
        elif dpop is not None:
            raise AuthError(
                "dpop_token_not_bound",
                "The request uses DPoP but the access token is not bound to a DPoP key.",
            )
        client_id = claims.get("azp", claims.get("client_id"))
        iat = claims.get("iat")
        return Identity(
            subject=claims["sub"],
            issuer=claims["iss"],
            groups=extract_groups(claims, self.groups_claim),
            token_id=claims.get("jti"),
            issued_at=_timestamp(iat) if iat is not None else None,
            expires_at=_timestamp(claims["exp"]),
            auth_method=auth_method,
            dpop_jkt=jkt,
            client_id=client_id if isinstance(client_id, str) else None,
        )

    async def decode(self, token: str, *, now: datetime) -> dict[str, Any]:
        """The claims of ``token`` after every check but the DPoP binding.

        Useful on its own for ID tokens (build the verifier with the client id
        as audience, then compare ``nonce``).
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        obj, header = self._parse(token)
        key = await self._resolve_key(header)
        try:
            valid = jws.validate_compact(
                obj, key, algorithms=[header["alg"]], registry=self._registry
            )
        except JoseError:
            valid = False
        if not valid:
            raise AuthError(
                "bad_signature", "The token's signature does not verify with the issuer's key."
            )
        claims = parse_json_object(obj.payload)
        if claims is None:
            raise AuthError("malformed_token", "The token's payload is not a JSON object.")
        check_claims(
            claims, issuer=self.issuer, audience=self.audience, now=now, leeway_s=self.leeway_s
        )
        return claims

    # --- parsing ---

    def _parse(self, token: str) -> tuple[Any, Header]:
        if not isinstance(token, str) or not token:
            raise AuthError("malformed_token", "The token is empty.")
        if len(token) > self.max_token_bytes:
            raise AuthError(
                "malformed_token", f"The token is longer than {self.max_token_bytes} bytes."
            )
        segments = token.split(".")
        if len(segments) == 5:
            raise AuthError("malformed_token", "Encrypted tokens (JWE) are not accepted.")
        if (
            len(segments) != 3
            or not all(s.isascii() and _is_b64url(s) for s in segments)
            or not segments[0]
            or not segments[1]
        ):
            raise AuthError(
                "malformed_token", "The token is not a compact JWS (header.payload.signature)."
            )
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=self._registry)
        except (JoseError, ValueError, TypeError) as exc:
            raise AuthError("malformed_token", "The token could not be decoded as a JWS.") from exc
        header: Header = obj.headers()
        injected = [h for h in _UNTRUSTED_KEY_HEADERS if h in header]
        if injected:
            raise AuthError(
                "untrusted_key_header",
                f"The token names its own key ({', '.join(injected)}); keys are taken only "
                f"from the issuer's key set.",
            )
        if "crit" in header or "b64" in header:
            raise AuthError(
                "malformed_token",
                "The token uses critical header extensions, which are not supported.",
            )
        typ = header.get("typ")
        if typ is not None and (
            not isinstance(typ, str) or typ.lower() not in ACCEPTED_TOKEN_TYPES
        ):
            raise AuthError(
                "bad_token_type", "The token's typ header says it is not an access token."
            )
        alg = header.get("alg")
        if isinstance(alg, str) and alg.lower() == "none":
            raise AuthError("alg_not_allowed", "Unsigned tokens (alg none) are refused.")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthError(
                "alg_not_allowed",
                f"Tokens signed with {describe_alg(alg)} are refused; "
                f"allowed: {', '.join(self.algorithms)}.",
            )
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= _MAX_KID_CHARS):
            raise AuthError("malformed_token", "The token's kid header is not a short string.")
        return obj, header

    # --- keys ---

    def _select(self, header: Header) -> VerificationKey | None:
        alg: str = header["alg"]
        kid: str | None = header.get("kid")
        assert self._keys is not None
        candidates = [k for k in self._keys if _usable_for(k.key, alg, self._registry)]
        if kid is not None:
            return next((k.key for k in candidates if k.kid == kid), None)
        if len(candidates) > 1:
            raise AuthError(
                "unknown_kid",
                "The token has no key id (kid) and the issuer publishes several keys for its "
                "algorithm.",
            )
        return candidates[0].key if candidates else None

    async def _resolve_key(self, header: Header) -> VerificationKey:
        if self._keys is None:
            if not await self._maybe_refresh():
                last = self._last_error
                # A fresh exception each time: re-raising one instance would grow its traceback.
                raise (
                    AuthError(last.code, last.message)
                    if last
                    else AuthError(
                        "jwks_unavailable",
                        "The issuer's keys are not loaded yet; try again shortly.",
                    )
                )
        elif self._clock() - self._fetched_at > self.jwks_max_age_s:
            await self._maybe_refresh()  # on failure the cached keys stay in use
        key = self._select(header)
        if key is None and await self._maybe_refresh():
            key = self._select(header)
        if key is None:
            raise AuthError(
                "unknown_kid", "The token's signing key is not in the issuer's key set."
            )
        return key

    async def _maybe_refresh(self) -> bool:
        """Refresh the keys unless that happened too recently; True if keys changed
        (here or in a concurrent call). Raises the fetch error only when no keys
        are cached at all."""
        generation = self._generation
        async with self._lock:
            if self._generation != generation:
                return True
            interval = (
                min(self.jwks_min_refresh_s, _INITIAL_RETRY_S)
                if self._keys is None
                else self.jwks_min_refresh_s
            )
            if self._last_attempt is not None and self._clock() - self._last_attempt < interval:
                return False
            try:
                await self._refresh()
            except AuthError as exc:
                if self._keys is None:
                    raise
                log.warning("keeping the cached keys of %s: %s", self.issuer, exc.message)
                return False
            return True

    async def _refresh(self) -> None:
        self._last_attempt = self._clock()
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            try:
                document = await self._fetch_json(self._jwks_uri, "key set")
            except AuthError:
                self._jwks_uri = None  # rediscover next time: the issuer may have moved it
                raise
            keys = _parse_jwks(document)
            if not keys:
                raise AuthError(
                    "jwks_unavailable", "The issuer's key set holds no usable signing key."
                )
        except AuthError as exc:
            self._last_error = AuthError(exc.code, exc.message)  # without the traceback
            raise
        self._keys = keys
        self._fetched_at = self._clock()
        self._generation += 1
        self._last_error = None

    async def _discover(self) -> str:
        document = await self._fetch_json(self.discovery_url, "discovery document")
        if document.get("issuer") != self.issuer:
            raise AuthError(
                "discovery_invalid",
                f"The discovery document at {self.discovery_url} names another issuer than "
                f"{self.issuer}; configure the issuer exactly as it names itself.",
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise AuthError("discovery_invalid", "The issuer's discovery document has no jwks_uri.")
        try:
            _check_fetch_url(jwks_uri, "jwks_uri", self.allow_http)
        except ValueError as exc:
            raise AuthError(
                "discovery_invalid", f"The issuer's discovery document is unusable: {exc}."
            ) from None
        return jwks_uri

    async def _fetch_json(self, url: str, what: str) -> dict[str, Any]:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        body = bytearray()
        try:
            async with self._http.stream(
                "GET", url, headers={"Accept": "application/json"}, timeout=self.timeout_s
            ) as response:
                if response.status_code != 200:
                    raise AuthError(
                        "jwks_unavailable",
                        f"The issuer's {what} at {url} answered HTTP {response.status_code}.",
                    )
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_DOCUMENT_BYTES:
                        raise AuthError(
                            "jwks_unavailable", f"The issuer's {what} at {url} is too large."
                        )
        except httpx.HTTPError as exc:
            raise AuthError(
                "jwks_unavailable",
                f"Cannot fetch the issuer's {what} from {url} ({type(exc).__name__}).",
            ) from None
        document = parse_json_object(bytes(body))
        if document is None:
            raise AuthError(
                "jwks_unavailable", f"The issuer's {what} at {url} is not a JSON object."
            )
        return document


def _is_b64url(segment: str) -> bool:
    return all(c.isalnum() or c in "-_" for c in segment)


def _usable_for(key: VerificationKey, alg: str, registry: jws.JWSRegistry) -> bool:
    if key.key_type != key_type_for(alg):
        return False
    try:
        registry.get_alg(alg).check_key(key)
    except JoseError:
        return False
    return True


def _parse_jwks(document: Mapping[str, Any]) -> list[_IssuerKey]:
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise AuthError("jwks_unavailable", "The issuer's key set has no keys array.")
    keys: list[_IssuerKey] = []
    for entry in entries[:_MAX_KEYS]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue  # symmetric keys never verify tokens: no HS/RS confusion
        try:
            key = import_public_jwk(entry)
        except ValueError as exc:
            log.warning("ignoring a key in the issuer's key set: %s", exc)
            continue
        kid = entry.get("kid")
        keys.append(_IssuerKey(kid if isinstance(kid, str) else None, key))
    return keys
