"""DPoP proof verification (RFC 9449).

A DPoP proof is a JWS the client signs, per request, with a key whose public
half travels in the proof's ``jwk`` header. The access token names that key by
its RFC 7638 thumbprint in ``cnf.jkt``, so a stolen token is useless without
the private key. This module checks one proof against one request:

- header: ``typ`` is ``dpop+jwt``, ``alg`` is an allowed asymmetric algorithm,
  ``jwk`` is a public key (private members are refused), no other key source;
- the signature, by that key (joserfc does the cryptography);
- claims: ``htm`` is the request method, ``htu`` the request URL (scheme, host
  and path, normalised as RFC 9449 §4.3 asks), ``iat`` inside a window,
  ``ath`` the hash of the access token when one is bound, ``jti`` never seen
  before (a TTL- and size-bounded, thread-safe replay cache);
- the key's thumbprint equals the token's ``cnf.jkt``.

:class:`AuthError` is the one exception of the identity layer (this module and
:mod:`capture.oidc`); it lives here because this is the lower of the two.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import json
import math
import re
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey
from joserfc.registry import Header

__all__ = [
    "DEFAULT_DPOP_ALGORITHMS",
    "AuthError",
    "DpopRequest",
    "DpopVerifier",
    "MemoryReplayCache",
    "ReplayCache",
    "access_token_hash",
    "asymmetric_registry",
    "b64url_sha256",
    "describe_alg",
    "import_public_jwk",
    "is_asymmetric_algorithm",
    "is_numeric_date",
    "key_type_for",
    "normalize_htu",
    "parse_json_object",
]

#: Asymmetric algorithms accepted for proofs by default. ``Ed25519`` is the
#: fully-specified name RFC 9864 gives to what ``EdDSA`` means in practice.
DEFAULT_DPOP_ALGORITHMS: tuple[str, ...] = ("ES256", "ES384", "RS256", "PS256", "EdDSA", "Ed25519")

#: Every JWS algorithm name we know. Error messages name an algorithm only when
#: it is in this list, so attacker-chosen text never reaches a log line.
KNOWN_JWS_ALGORITHMS: frozenset[str] = frozenset(jws.JWSRegistry.algorithms) | {"none"}

_ASYMMETRIC_KEY_TYPES: dict[str, str] = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_KEY_SOURCE_HEADERS = ("jku", "x5u", "x5c")
_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_MIN_RSA_BITS = 2048
_MAX_JTI_CHARS = 256


class AuthError(Exception):
    """Authentication failed: the caller's token or proof is not acceptable.

    ``code`` is a short machine reason (``token_expired``, ``dpop_replayed``);
    ``message`` is a sentence for a human. Neither ever contains the token, the
    proof, or any other text the caller chose: they are safe to log and to send
    back in an error body.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        """The HTTP status to answer with: 503 when the issuer cannot be
        reached (the caller is not at fault), 401 otherwise."""
        return 503 if self.code in ("jwks_unavailable", "discovery_invalid") else 401

    def www_authenticate(self, dpop_algorithms: Sequence[str] = DEFAULT_DPOP_ALGORITHMS) -> str:
        """A ``WWW-Authenticate`` challenge (RFC 6750 §3, RFC 9449 §7.1)."""
        description = self.message.replace("\\", "\\\\").replace('"', '\\"')
        if self.code.startswith("dpop_"):
            error = "invalid_dpop_proof" if self.code != "dpop_required" else "invalid_token"
            algs = " ".join(dpop_algorithms)
            return f'DPoP error="{error}", error_description="{description}", algs="{algs}"'
        return f'Bearer error="invalid_token", error_description="{description}"'


@dataclass(frozen=True)
class DpopRequest:
    """The parts of a request a DPoP proof is checked against.

    ``url`` is the URL the client used to reach us (the gateway's public
    scheme, host and path), not the upstream's.
    """

    proof: str
    method: str
    url: str


class ReplayCache(Protocol):
    """Remembers proof ids until they are too old to be accepted anyway.

    ``remember`` returns ``"new"`` the first time it sees ``key``,
    ``"replayed"`` afterwards, and ``"full"`` when it cannot take another
    entry (the verifier then refuses the proof rather than forget one).
    Several gateway replicas need a shared implementation.
    """

    def remember(
        self, key: str, *, expires_at: float, now: float
    ) -> Literal["new", "replayed", "full"]: ...


class MemoryReplayCache:
    """An in-process :class:`ReplayCache`: thread-safe, bounded in time and size.

    Entries expire when the proof's ``iat`` leaves the acceptance window, so
    dropping them can never let a replay through. When the cache is full of
    live entries it answers ``"full"``: failing closed beats evicting an entry
    whose proof could then be replayed.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)

    def remember(
        self, key: str, *, expires_at: float, now: float
    ) -> Literal["new", "replayed", "full"]:
        with self._lock:
            self._purge(now)
            if key in self._expiry:
                return "replayed"
            if len(self._expiry) >= self.max_entries:
                return "full"
            self._expiry[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return "new"

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            expires_at, key = heapq.heappop(self._heap)
            if self._expiry.get(key) == expires_at:
                del self._expiry[key]


class _Registry(jws.JWSRegistry):
    """A JWS registry that accepts exactly the algorithms it is given.

    joserfc's default registry warns on ``EdDSA`` (deprecated by RFC 9864 in
    favour of ``Ed25519``); we decide the allow-list ourselves, so the
    allow-list is the whole check.
    """

    def get_alg(self, name: str) -> Any:
        if name not in self.algorithms or not self.allowed or name not in self.allowed:
            raise JoseError(f"algorithm {name!r} is not allowed")
        return self.algorithms[name]


def asymmetric_registry(
    algorithms: Sequence[str], *, max_header_bytes: int = 512, max_payload_bytes: int = 8000
) -> jws.JWSRegistry:
    """A JWS registry for ``algorithms``; refuses ``none`` and every HMAC."""
    bad = [a for a in algorithms if not is_asymmetric_algorithm(a)]
    if bad:
        raise ValueError(
            f"only asymmetric signature algorithms may be allowed, not {', '.join(bad)}"
        )
    unknown = [a for a in algorithms if a not in jws.JWSRegistry.algorithms]
    if unknown:
        raise ValueError(f"unknown JWS algorithm(s): {', '.join(unknown)}")
    registry = _Registry(algorithms=list(algorithms), strict_check_header=False)
    registry.max_header_length = max_header_bytes
    registry.max_payload_length = max_payload_bytes
    return registry


def is_asymmetric_algorithm(alg: str) -> bool:
    return alg[:2] in _ASYMMETRIC_KEY_TYPES and alg in jws.JWSRegistry.algorithms


def key_type_for(alg: str) -> str | None:
    """The JWK ``kty`` an algorithm needs: RSA, EC or OKP; None if not asymmetric."""
    return _ASYMMETRIC_KEY_TYPES.get(alg[:2]) if is_asymmetric_algorithm(alg) else None


def describe_alg(alg: object) -> str:
    """Name an algorithm in a message only if it is a known one."""
    return (
        f"'{alg}'"
        if isinstance(alg, str) and alg in KNOWN_JWS_ALGORITHMS
        else "an unknown algorithm"
    )


def b64url_sha256(value: str | bytes) -> str:
    data = value.encode("ascii") if isinstance(value, str) else value
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def access_token_hash(access_token: str) -> str:
    """The ``ath`` claim: base64url(SHA-256(ASCII(access token))), RFC 9449 §4.2."""
    return b64url_sha256(access_token)


def is_numeric_date(value: object) -> bool:
    """A JSON number that can be a date: not a bool, finite, 0..year 9999."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= 253_402_300_799
    )


# --- htu normalisation (RFC 3986 §6.2.2 and §6.2.3, as RFC 9449 §4.3 asks) ---

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _normalize_pct(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else f"%{match.group(1).upper()}"


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 §5.2.4, written as a segment stack.
    output: list[str] = []
    segments = path.split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                output.append("")
        elif segment == "..":
            if len(output) > 1:
                output.pop()
            if last:
                output.append("")
        else:
            output.append(segment)
    result = "/".join(output)
    return result if result.startswith("/") else "/" + result


def normalize_htu(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url`` in normal form, for comparison.

    Query and fragment are dropped. Scheme and host are lower-cased, a default
    port is removed, percent-encodings are upper-cased (and decoded when they
    stand for an unreserved character), dot segments are removed and an empty
    path becomes ``/``. Raises ValueError for anything but an absolute
    http(s) URL without user information.
    """
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError("not an http(s) URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("URL carries user information")
    host = parts.hostname
    if not host:
        raise ValueError("URL has no host")
    port = parts.port  # raises ValueError for a bad port
    authority = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        authority = f"{authority}:{port}"
    path = _remove_dot_segments(_PCT.sub(_normalize_pct, parts.path or "/"))
    return f"{scheme}://{authority}{path}"


def import_public_jwk(value: object) -> RSAKey | ECKey | OKPKey:
    """Import a JWK that must be a public signing key; ValueError if not."""
    if not isinstance(value, dict):
        raise ValueError("the jwk header is not a JSON object")
    if _PRIVATE_JWK_MEMBERS & value.keys():
        raise ValueError("private")
    if value.get("kty") not in ("RSA", "EC", "OKP"):
        raise ValueError("the jwk header is not an RSA, EC or OKP key")
    if value["kty"] == "RSA" and _rsa_modulus_bits(value.get("n")) < _MIN_RSA_BITS:
        # Checked before import: joserfc would only warn about a short key.
        raise ValueError(f"the RSA key is shorter than {_MIN_RSA_BITS} bits")
    try:
        key = JWKRegistry.import_key(value)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ValueError("the jwk header is not a valid key") from exc
    if not isinstance(key, RSAKey | ECKey | OKPKey) or key.is_private:
        raise ValueError("private")
    return key


def _rsa_modulus_bits(n: object) -> int:
    if not isinstance(n, str) or len(n) > 2048:
        return 0
    try:
        raw = base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))
    except ValueError:
        return 0
    return int.from_bytes(raw, "big").bit_length()


class DpopVerifier:
    """Checks DPoP proofs; one instance (and so one replay cache) per gateway.

    ``max_age_s`` is how old a proof's ``iat`` may be; ``leeway_s`` how far in
    the future it may be, for clock skew. A replayed ``jti`` is refused for as
    long as its proof could otherwise be accepted.
    """

    def __init__(
        self,
        *,
        algorithms: Sequence[str] = DEFAULT_DPOP_ALGORITHMS,
        max_age_s: float = 60.0,
        leeway_s: float = 5.0,
        replay_cache: ReplayCache | None = None,
        max_proof_bytes: int = 8192,
    ) -> None:
        if max_age_s <= 0 or leeway_s < 0:
            raise ValueError("max_age_s must be positive and leeway_s not negative")
        self.algorithms = tuple(algorithms)
        self._registry = asymmetric_registry(self.algorithms, max_header_bytes=2048)
        self.max_age_s = max_age_s
        self.leeway_s = leeway_s
        self.replay_cache: ReplayCache = (
            replay_cache if replay_cache is not None else MemoryReplayCache()
        )
        self.max_proof_bytes = max_proof_bytes

    def verify(
        self,
        proof: str,
        *,
        method: str,
        url: str,
        now: datetime,
        access_token: str | None = None,
        expected_jkt: str | None = None,
    ) -> str:
        """Verify ``proof`` for a ``method`` request to ``url`` at ``now``.

        With ``access_token``, the proof must carry its hash (``ath``); with
        ``expected_jkt``, the proof's key must have that thumbprint. Returns
        the key's RFC 7638 SHA-256 thumbprint. Raises :class:`AuthError`.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        obj, header = self._parse(proof)
        alg = header["alg"]
        key = self._proof_key(header)
        try:
            valid = jws.validate_compact(obj, key, algorithms=[alg], registry=self._registry)
        except JoseError:
            valid = False
        if not valid:
            raise AuthError(
                "dpop_bad_signature", "The DPoP proof's signature does not verify with its own key."
            )
        claims = parse_json_object(obj.payload)
        if claims is None:
            raise AuthError("dpop_malformed", "The DPoP proof's payload is not a JSON object.")
        jti, iat = self._check_claims(
            claims, method=method, url=url, now=now, access_token=access_token
        )
        thumbprint = key.thumbprint()
        if expected_jkt is not None and not hmac.compare_digest(thumbprint, expected_jkt):
            raise AuthError(
                "dpop_key_mismatch",
                "The DPoP proof is signed with another key than the one the access token is "
                "bound to.",
            )
        outcome = self.replay_cache.remember(
            f"{thumbprint}:{jti}", expires_at=iat + self.max_age_s + 1.0, now=now.timestamp()
        )
        if outcome == "replayed":
            raise AuthError(
                "dpop_replayed",
                "This DPoP proof was already used; send a fresh proof per request.",
            )
        if outcome == "full":
            raise AuthError(
                "dpop_replay_cache_full",
                "Too many recent DPoP proofs to check for replay; try again shortly.",
            )
        return thumbprint

    def _parse(self, proof: str) -> tuple[Any, Header]:
        if not isinstance(proof, str) or not proof:
            raise AuthError("dpop_malformed", "The DPoP header is empty.")
        if len(proof) > self.max_proof_bytes:
            raise AuthError(
                "dpop_malformed", f"The DPoP proof is longer than {self.max_proof_bytes} bytes."
            )
        if not _COMPACT_JWS.match(proof):
            raise AuthError(
                "dpop_malformed",
                "The DPoP header is not one compact JWS (header.payload.signature).",
            )
        try:
            obj = jws.extract_compact(proof.encode("ascii"), registry=self._registry)
        except (JoseError, ValueError, TypeError) as exc:
            raise AuthError(
                "dpop_malformed", "The DPoP proof could not be decoded as a JWS."
            ) from exc
        header = obj.headers()
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() != "dpop+jwt":
            raise AuthError("dpop_bad_typ", "The DPoP proof's typ header must be dpop+jwt.")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthError(
                "dpop_alg_not_allowed",
                f"The DPoP proof uses {describe_alg(alg)}; allowed: {', '.join(self.algorithms)}.",
            )
        if "b64" in header or "crit" in header:
            raise AuthError(
                "dpop_malformed",
                "The DPoP proof uses a critical or b64 header, which is not supported.",
            )
        return obj, header

    def _proof_key(self, header: Header) -> RSAKey | ECKey | OKPKey:
        stray = [h for h in _KEY_SOURCE_HEADERS if h in header]
        if stray:
            raise AuthError(
                "dpop_malformed",
                f"The DPoP proof names its key with {', '.join(stray)}; only the jwk header "
                "is accepted.",
            )
        if "jwk" not in header:
            raise AuthError(
                "dpop_missing_jwk", "The DPoP proof has no jwk header with its public key."
            )
        try:
            key = import_public_jwk(header["jwk"])
        except ValueError as exc:
            if str(exc) == "private":
                raise AuthError(
                    "dpop_private_key",
                    "The DPoP proof's jwk header contains private key material; send only the "
                    "public key (and treat that key as compromised).",
                ) from None
            raise AuthError(
                "dpop_bad_jwk", f"The DPoP proof's jwk header is unusable: {exc}."
            ) from None
        if key.key_type != key_type_for(header["alg"]):
            raise AuthError(
                "dpop_bad_jwk", "The DPoP proof's key type does not match its algorithm."
            )
        return key

    def _check_claims(
        self,
        claims: dict[str, Any],
        *,
        method: str,
        url: str,
        now: datetime,
        access_token: str | None,
    ) -> tuple[str, float]:
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI_CHARS:
            raise AuthError(
                "dpop_malformed", f"The DPoP proof needs a jti of 1 to {_MAX_JTI_CHARS} characters."
            )
        htm, htu, iat = claims.get("htm"), claims.get("htu"), claims.get("iat")
        if not isinstance(htm, str) or not isinstance(htu, str):
            raise AuthError("dpop_malformed", "The DPoP proof needs htm and htu claims.")
        if not is_numeric_date(iat):
            raise AuthError("dpop_malformed", "The DPoP proof needs a numeric iat claim.")
        assert isinstance(iat, int | float)
        if htm != method:
            raise AuthError(
                "dpop_htm_mismatch",
                "The DPoP proof was made for another HTTP method than this request's.",
            )
        try:
            expected_url = normalize_htu(url)
        except ValueError as exc:
            raise ValueError(f"request URL for DPoP check is not absolute http(s): {exc}") from None
        try:
            matches = hmac.compare_digest(normalize_htu(htu), expected_url)
        except ValueError:
            matches = False
        if not matches:
            raise AuthError(
                "dpop_htu_mismatch", "The DPoP proof was made for another URL than this request's."
            )
        age = now.timestamp() - iat
        if age > self.max_age_s:
            raise AuthError(
                "dpop_stale",
                f"The DPoP proof was issued more than {self.max_age_s:g} s ago; make a fresh one.",
            )
        if -age > self.leeway_s:
            raise AuthError(
                "dpop_future", "The DPoP proof's iat is in the future; check the client's clock."
            )
        if access_token is not None:
            ath = claims.get("ath")
            if not isinstance(ath, str):
                raise AuthError(
                    "dpop_ath_missing",
                    "The DPoP proof must carry ath, the hash of the access token.",
                )
            if not hmac.compare_digest(ath, access_token_hash(access_token)):
                raise AuthError(
                    "dpop_ath_mismatch", "The DPoP proof was made for another access token."
                )
        return jti, float(iat)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate member")
        result[key] = value
    return result


def parse_json_object(payload: bytes | None) -> dict[str, Any] | None:
    """A JSON object with no duplicate members (RFC 7515 §5.2), or None.

    Duplicates are refused because two parsers may pick different values.
    """
    if payload is None:
        return None
    try:
        value = json.loads(payload, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
