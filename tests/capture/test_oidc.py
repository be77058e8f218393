"""OIDC token verification (capture/oidc.py) against the real dev issuer over HTTP."""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from capture.devidp import DevIdpServer, make_dpop_proof, mint_token, serve
from capture.dpop import AuthError
from capture.oidc import OidcVerifier, extract_groups, parse_authorization

AUD = "embedguard"
GATEWAY_URL = "https://gateway.example.com/collections/docs/points/search"


def now() -> datetime:
    return datetime.now(UTC)


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevIdpServer]:
    """One real dev issuer for the module; tests that rotate keys start their own."""
    with serve("127.0.0.1", 0, tmp_path_factory.mktemp("idp")) as server:
        yield server


class FetchCounter:
    """Counts the requests the verifier makes, by path (an httpx event hook)."""

    def __init__(self) -> None:
        self.paths: collections.Counter[str] = collections.Counter()

    async def __call__(self, request: httpx.Request) -> None:
        self.paths[request.url.path] += 1

    @property
    def jwks(self) -> int:
        return self.paths["/jwks"]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def counter() -> FetchCounter:
    return FetchCounter()


@pytest.fixture
async def http(counter: FetchCounter) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(event_hooks={"request": [counter]}) as client:
        yield client


@pytest.fixture
async def verifier(idp: DevIdpServer, http: httpx.AsyncClient) -> AsyncIterator[OidcVerifier]:
    async with OidcVerifier(idp.issuer_url, AUD, http=http) as v:
        yield v


def base_claims(issuer: str, **overrides: Any) -> dict[str, Any]:
    ts = int(now().timestamp())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": "alice",
        "aud": AUD,
        "iat": ts,
        "exp": ts + 600,
        "jti": str(uuid.uuid4()),
        "groups": ["Vector-Read"],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(key: RSAKey | ECKey, claims: dict[str, Any], *, alg: str = "RS256", **header: Any) -> str:
    hdr: dict[str, Any] = {"alg": alg, "typ": "at+jwt"}
    if key.kid is not None:
        hdr["kid"] = key.kid
    hdr.update(header)
    hdr = {k: v for k, v in hdr.items() if v is not None}
    return jwt.encode(hdr, claims, key, algorithms=[alg])


def sign_raw(key: RSAKey, payload: bytes, **header: Any) -> str:
    """RS256 over exactly these bytes and this header, whatever joserfc would think of them."""
    from joserfc import jws

    signing_input = f"{b64({'alg': 'RS256', 'kid': key.kid, **header})}.{b64(payload)}"
    signature = jws.JWSRegistry.algorithms["RS256"].sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(signature)}"


def hs256(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Forge an HMAC token by hand (joserfc refuses a PEM as an HMAC key, rightly)."""
    signing_input = f"{b64(header)}.{b64(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def assert_no_token_leak(err: AuthError, token: str) -> None:
    text = f"{err} {err.message} {err.www_authenticate()}"
    assert token not in text
    for segment in token.split("."):
        if len(segment) >= 16:
            assert segment not in text


# --- the happy path ----------------------------------------------------------------


async def test_valid_token_gives_identity(idp: DevIdpServer, verifier: OidcVerifier) -> None:
    token = mint_token(idp.issuer_url, "alice", ["Vector-Read", "Vector-Approve"], client_id="cli")
    identity = await verifier.verify(token, now=now())
    assert identity.subject == "alice"
    assert identity.issuer == idp.issuer_url
    assert identity.groups == {"Vector-Read", "Vector-Approve"}
    assert identity.auth_method == "bearer" and identity.dpop_jkt is None
    assert identity.client_id == "cli"
    assert identity.token_id
    assert identity.issued_at is not None and identity.expires_at is not None
    assert identity.expires_at - identity.issued_at == timedelta(minutes=15)
    assert abs((identity.issued_at - now()).total_seconds()) < 5


async def test_issued_ago_shows_in_issued_at(idp: DevIdpServer, verifier: OidcVerifier) -> None:
    token = mint_token(
        idp.issuer_url,
        "pipeline-bot",
        ["Vector-Pipeline"],
        timedelta(hours=1),
        timedelta(minutes=20),
    )
    identity = await verifier.verify(token, now=now())
    assert identity.issued_at is not None
    assert timedelta(minutes=19) < now() - identity.issued_at < timedelta(minutes=21)


async def test_leeway_accepts_small_skew(idp: DevIdpServer, verifier: OidcVerifier) -> None:
    key = idp.keys.signing_key()
    ts = int(now().timestamp())
    just_expired = sign(key, base_claims(idp.issuer_url, exp=ts - 10))
    early = sign(key, base_claims(idp.issuer_url, iat=ts + 10, nbf=ts + 10))
    await verifier.verify(just_expired, now=now())
    await verifier.verify(early, now=now())
    with pytest.raises(AuthError) as err:
        await verifier.verify(sign(key, base_claims(idp.issuer_url, exp=ts - 31)), now=now())
    assert err.value.code == "token_expired"


# --- the forged-token suite --------------------------------------------------------


def forged_tokens(idp: DevIdpServer) -> dict[str, tuple[str, str]]:
    """name -> (token, expected code). Signed by the real issuer key unless said."""
    real = idp.keys.signing_key()
    iss = idp.issuer_url
    assert real.kid is not None
    attacker = RSAKey.generate_key(2048, private=True, parameters={"kid": real.kid})
    attacker_kid = RSAKey.generate_key(2048, private=True, parameters={"kid": "attacker"})
    good = sign(real, base_claims(iss))
    header, payload, signature = good.split(".")
    public_pem = real.as_pem(private=False)
    minted = {
        "expired": mint_token(
            iss, "alice", ["Vector-Read"], timedelta(minutes=15), timedelta(minutes=20)
        ),
        "wrong audience": mint_token(iss, "alice", ["Vector-Read"], audience="another-service"),
    }
    return {
        "alg none": (
            f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': real.kid})}.{payload}.",
            "alg_not_allowed",
        ),
        "alg None": (
            f"{b64({'alg': 'None', 'kid': real.kid})}.{payload}.{signature}",
            "alg_not_allowed",
        ),
        "wrong key, same kid": (sign(attacker, base_claims(iss)), "bad_signature"),
        "tampered payload": (
            f"{header}.{b64(base_claims(iss, groups=['Vector-Write']))}.{signature}",
            "bad_signature",
        ),
        "expired": (minted["expired"], "token_expired"),
        "not yet valid": (
            sign(real, base_claims(iss, nbf=int(now().timestamp()) + 600)),
            "token_not_yet_valid",
        ),
        "issued in the future": (
            sign(real, base_claims(iss, iat=int(now().timestamp()) + 600)),
            "token_not_yet_valid",
        ),
        "wrong audience": (minted["wrong audience"], "bad_audience"),
        "no audience": (sign(real, base_claims(iss, aud=None)), "bad_audience"),
        "wrong issuer": (sign(real, base_claims("https://evil.example")), "issuer_mismatch"),
        "kid path traversal": (
            sign(attacker_kid, base_claims(iss), kid="../../etc/passwd"),
            "unknown_kid",
        ),
        "kid not in JWKS": (sign(attacker_kid, base_claims(iss)), "unknown_kid"),
        "kid with jku to attacker JWKS": (
            sign(attacker_kid, base_claims(iss), jku="https://evil.example/jwks.json"),
            "untrusted_key_header",
        ),
        "embedded jwk": (
            sign(attacker_kid, base_claims(iss), jwk=attacker_kid.as_dict(private=False)),
            "untrusted_key_header",
        ),
        "x5u": (
            sign(attacker_kid, base_claims(iss), x5u="https://evil.example/cert.pem"),
            "untrusted_key_header",
        ),
        "HS256 with the RSA public key as secret": (
            hs256(public_pem, {"alg": "HS256", "typ": "JWT", "kid": real.kid}, base_claims(iss)),
            "alg_not_allowed",
        ),
        "HS256 without kid": (
            hs256(public_pem, {"alg": "HS256", "typ": "JWT"}, base_claims(iss)),
            "alg_not_allowed",
        ),
        "ES256 with the RSA kid": (
            sign(
                ECKey.generate_key("P-256", private=True),
                base_claims(iss),
                alg="ES256",
                kid=real.kid,
            ),
            "unknown_kid",
        ),
        "typ dpop+jwt": (sign(real, base_claims(iss), typ="dpop+jwt"), "bad_token_type"),
        "crit header": (
            sign_raw(real, json.dumps(base_claims(iss)).encode(), crit=["x-ext"], **{"x-ext": 1}),
            "malformed_token",
        ),
        "no subject": (sign(real, base_claims(iss, sub=None)), "missing_claim"),
        "no expiry": (sign(real, base_claims(iss, exp=None)), "missing_claim"),
        "infinite expiry": (sign(real, base_claims(iss, exp=float("inf"))), "missing_claim"),
        "duplicate claims": (sign_raw(real, b'{"sub":"alice","sub":"admin"}'), "malformed_token"),
        "JWE": ("a.b.c.d.e", "malformed_token"),
        "two segments": (f"{header}.{payload}", "malformed_token"),
        "not base64": (f"{header}.{payload}!.{signature}", "malformed_token"),
        "oversized": (f"{header}.{'A' * 20_000}.{signature}", "malformed_token"),
    }


@pytest.fixture(scope="module")
def forged(idp: DevIdpServer) -> dict[str, tuple[str, str]]:
    return forged_tokens(idp)


FORGED_NAMES = [
    "alg none",
    "alg None",
    "wrong key, same kid",
    "tampered payload",
    "expired",
    "not yet valid",
    "issued in the future",
    "wrong audience",
    "no audience",
    "wrong issuer",
    "kid path traversal",
    "kid not in JWKS",
    "kid with jku to attacker JWKS",
    "embedded jwk",
    "x5u",
    "HS256 with the RSA public key as secret",
    "HS256 without kid",
    "ES256 with the RSA kid",
    "typ dpop+jwt",
    "crit header",
    "no subject",
    "no expiry",
    "infinite expiry",
    "duplicate claims",
    "JWE",
    "two segments",
    "not base64",
    "oversized",
]


def test_forged_names_cover_the_suite(forged: dict[str, tuple[str, str]]) -> None:
    assert sorted(FORGED_NAMES) == sorted(forged)


@pytest.mark.parametrize("name", FORGED_NAMES)
async def test_forged_token_is_refused(
    forged: dict[str, tuple[str, str]], verifier: OidcVerifier, name: str
) -> None:
    token, code = forged[name]
    with pytest.raises(AuthError) as err:
        await verifier.verify(token, now=now())
    assert err.value.code == code, err.value.message
    assert err.value.status == 401
    assert_no_token_leak(err.value, token)


async def test_the_same_tokens_fail_through_authenticate(
    forged: dict[str, tuple[str, str]], verifier: OidcVerifier
) -> None:
    for token, code in forged.values():
        with pytest.raises(AuthError) as err:
            await verifier.authenticate(
                authorization=f"Bearer {token}",
                dpop_proof=None,
                method="GET",
                url=GATEWAY_URL,
                now=now(),
            )
        assert err.value.code == code
        assert_no_token_leak(err.value, token)


# --- keys: discovery, cache, rotation, rate limit ---------------------------------


async def test_unknown_kid_refreshes_after_rotation(
    tmp_path: Path, counter: FetchCounter, http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    with serve("127.0.0.1", 0, tmp_path) as idp:
        verifier = OidcVerifier(idp.issuer_url, AUD, http=http, clock=clock, jwks_min_refresh_s=30)
        old = mint_token(idp.issuer_url, "alice", ["Vector-Read"])
        await verifier.verify(old, now=now())
        assert counter.jwks == 1 and counter.paths["/.well-known/openid-configuration"] == 1

        new_kid = idp.rotate_key()
        new = mint_token(idp.issuer_url, "alice", ["Vector-Read"])
        assert json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "==")).get("kid") == new_kid
        clock.t += 31
        identity = await verifier.verify(new, now=now())
        assert identity.subject == "alice"
        assert counter.jwks == 2
        assert counter.paths["/.well-known/openid-configuration"] == 1  # jwks_uri is cached

        await verifier.verify(old, now=now())  # the old key stays published
        assert counter.jwks == 2


async def test_rotation_right_after_a_fetch_waits_for_the_rate_limit(
    tmp_path: Path, counter: FetchCounter, http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    with serve("127.0.0.1", 0, tmp_path) as idp:
        verifier = OidcVerifier(idp.issuer_url, AUD, http=http, clock=clock, jwks_min_refresh_s=30)
        await verifier.verify(mint_token(idp.issuer_url, "alice", []), now=now())
        idp.rotate_key()
        new = mint_token(idp.issuer_url, "alice", [])
        with pytest.raises(AuthError) as err:
            await verifier.verify(new, now=now())
        assert err.value.code == "unknown_kid"
        clock.t += 30
        await verifier.verify(new, now=now())
        assert counter.jwks == 2


async def test_kid_spraying_cannot_hammer_the_issuer(
    idp: DevIdpServer, counter: FetchCounter, http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    verifier = OidcVerifier(idp.issuer_url, AUD, http=http, clock=clock, jwks_min_refresh_s=30)
    await verifier.verify(mint_token(idp.issuer_url, "alice", []), now=now())
    assert counter.jwks == 1
    attacker = RSAKey.generate_key(2048, private=True)

    async def spray(n: int) -> None:
        for _ in range(n):
            token = sign(attacker, base_claims(idp.issuer_url), kid=uuid.uuid4().hex)
            with pytest.raises(AuthError) as err:
                await verifier.verify(token, now=now())
            assert err.value.code == "unknown_kid"

    await spray(50)
    assert counter.jwks == 1
    clock.t += 31
    await spray(50)
    assert counter.jwks == 2  # one refresh per interval, however many unknown kids


async def test_concurrent_first_requests_fetch_once(
    idp: DevIdpServer, counter: FetchCounter, http: httpx.AsyncClient
) -> None:
    verifier = OidcVerifier(idp.issuer_url, AUD, http=http)
    token = mint_token(idp.issuer_url, "alice", [])
    results = await asyncio.gather(*(verifier.verify(token, now=now()) for _ in range(20)))
    assert {r.subject for r in results} == {"alice"}
    assert counter.jwks == 1
    assert counter.paths["/.well-known/openid-configuration"] == 1


async def test_token_without_kid_needs_a_single_key(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    with serve("127.0.0.1", 0, tmp_path) as idp:
        verifier = OidcVerifier(idp.issuer_url, AUD, http=http, clock=clock)
        key = idp.keys.signing_key()
        no_kid = sign(key, base_claims(idp.issuer_url), kid=None)
        assert "kid" not in json.loads(base64.urlsafe_b64decode(no_kid.split(".")[0] + "=="))
        assert (await verifier.verify(no_kid, now=now())).subject == "alice"

        idp.rotate_key()
        clock.t += 1000  # past jwks_max_age_s: the next verify reloads the key set
        with pytest.raises(AuthError) as err:
            await verifier.verify(no_kid, now=now())
        assert err.value.code == "unknown_kid"
        assert "several keys" in err.value.message


async def test_cached_keys_outlive_an_issuer_outage(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    with serve("127.0.0.1", 0, tmp_path) as idp:
        verifier = OidcVerifier(idp.issuer_url, AUD, http=http, clock=clock)
        token = mint_token(idp.issuer_url, "alice", [])
        await verifier.verify(token, now=now())
    clock.t += 10_000  # the key set is stale and the issuer is gone
    assert (await verifier.verify(token, now=now())).subject == "alice"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_issuer_is_503_and_rate_limited(
    counter: FetchCounter, http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    issuer = f"http://127.0.0.1:{free_port()}"
    verifier = OidcVerifier(issuer, AUD, http=http, clock=clock, timeout_s=1)
    token = sign(RSAKey.generate_key(2048, private=True), base_claims(issuer))
    for _ in range(5):
        with pytest.raises(AuthError) as err:
            await verifier.verify(token, now=now())
        assert err.value.code == "jwks_unavailable"
        assert err.value.status == 503
        assert_no_token_leak(err.value, token)
    assert counter.paths["/.well-known/openid-configuration"] == 1
    clock.t += 6
    with pytest.raises(AuthError):
        await verifier.verify(token, now=now())
    assert counter.paths["/.well-known/openid-configuration"] == 2


async def test_discovery_must_name_the_configured_issuer(
    idp: DevIdpServer, http: httpx.AsyncClient
) -> None:
    other_spelling = idp.issuer_url.replace("127.0.0.1", "localhost")
    verifier = OidcVerifier(other_spelling, AUD, http=http)
    with pytest.raises(AuthError) as err:
        await verifier.verify(mint_token(idp.issuer_url, "alice", []), now=now())
    assert err.value.code == "discovery_invalid"
    assert idp.issuer_url in err.value.message or "names another issuer" in err.value.message


async def test_load_fails_early(http: httpx.AsyncClient) -> None:
    verifier = OidcVerifier(f"http://127.0.0.1:{free_port()}", AUD, http=http, timeout_s=1)
    with pytest.raises(AuthError) as err:
        await verifier.load()
    assert err.value.code == "jwks_unavailable"


# --- groups ------------------------------------------------------------------------


async def test_groups_from_a_nested_claim(idp: DevIdpServer, http: httpx.AsyncClient) -> None:
    token = mint_token(
        idp.issuer_url,
        "oscar",
        [],
        claims={
            "realm_access": {"roles": ["Vector-Write", "offline_access"]},
            "https://embedguard.dev/groups": ["Vector-Read"],
        },
    )
    nested = OidcVerifier(idp.issuer_url, AUD, http=http, groups_claim="realm_access.roles")
    assert (await nested.verify(token, now=now())).groups == {"Vector-Write", "offline_access"}
    dotted = OidcVerifier(
        idp.issuer_url, AUD, http=http, groups_claim="https://embedguard.dev/groups"
    )
    assert (await dotted.verify(token, now=now())).groups == {"Vector-Read"}
    missing = OidcVerifier(idp.issuer_url, AUD, http=http, groups_claim="resource_access.x.roles")
    assert (await missing.verify(token, now=now())).groups == frozenset()


@pytest.mark.parametrize(
    ("claims", "groups"),
    [
        ({"groups": "solo"}, {"solo"}),
        ({"groups": []}, set()),
        ({"groups": None}, set()),
        ({}, set()),
        ({"a": {"b": {"c": ["x", "y"]}}}, {"x", "y"}),
    ],
)
def test_extract_groups(claims: dict[str, Any], groups: set[str]) -> None:
    path = "a.b.c" if "a" in claims else "groups"
    assert extract_groups(claims, path) == groups


@pytest.mark.parametrize("value", [[1, 2], {"x": 1}, ["ok", None], 7, [""]])
def test_malformed_groups_are_refused_not_dropped(value: object) -> None:
    with pytest.raises(AuthError) as err:
        extract_groups({"groups": value}, "groups")
    assert err.value.code == "bad_groups_claim"


# --- DPoP-bound tokens -------------------------------------------------------------


@pytest.fixture(scope="module")
def dpop_key() -> ECKey:
    return ECKey.generate_key("P-256", private=True)


@pytest.fixture
def dpop_token(idp: DevIdpServer, dpop_key: ECKey, tmp_path: Path) -> str:
    # Through the key-file path the CLI uses: write the key, bind the token to it.
    path = tmp_path / "dpop.pem"
    path.write_bytes(dpop_key.as_pem(private=True))
    path.chmod(0o600)
    token = mint_token(idp.issuer_url, "alice", ["Vector-Read"], dpop_key_file=path)
    return token


async def authenticate(
    verifier: OidcVerifier,
    token: str,
    proof: str | None,
    *,
    scheme: str = "DPoP",
    method: str = "POST",
    url: str = GATEWAY_URL,
) -> Any:
    return await verifier.authenticate(
        authorization=f"{scheme} {token}", dpop_proof=proof, method=method, url=url, now=now()
    )


async def test_dpop_bound_token_with_proof(
    verifier: OidcVerifier, dpop_token: str, dpop_key: ECKey
) -> None:
    proof = make_dpop_proof(dpop_key, "POST", GATEWAY_URL + "?wait=true", access_token=dpop_token)
    identity = await authenticate(verifier, dpop_token, proof, url=GATEWAY_URL + "?wait=true")
    assert identity.auth_method == "dpop"
    assert identity.dpop_jkt == dpop_key.thumbprint()


async def test_dpop_replayed_proof(
    verifier: OidcVerifier, dpop_token: str, dpop_key: ECKey
) -> None:
    proof = make_dpop_proof(dpop_key, "POST", GATEWAY_URL, access_token=dpop_token)
    await authenticate(verifier, dpop_token, proof)
    with pytest.raises(AuthError) as err:
        await authenticate(verifier, dpop_token, proof)
    assert err.value.code == "dpop_replayed"
    assert_no_token_leak(err.value, dpop_token)
    assert_no_token_leak(err.value, proof)


DpopCase = Callable[[str, ECKey], tuple[str | None, dict[str, str]]]


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("proof for another URL", "dpop_htu_mismatch"),
        ("proof for another method", "dpop_htm_mismatch"),
        ("proof by another key", "dpop_key_mismatch"),
        ("stale proof", "dpop_stale"),
        ("proof for another token", "dpop_ath_mismatch"),
        ("no proof", "dpop_required"),
        ("bearer scheme", "dpop_required"),
    ],
)
async def test_dpop_refusals(
    verifier: OidcVerifier, dpop_token: str, dpop_key: ECKey, case: str, code: str
) -> None:
    other_key = ECKey.generate_key("P-256", private=True)
    proofs: dict[str, tuple[str | None, dict[str, str]]] = {
        "proof for another URL": (
            make_dpop_proof(
                dpop_key,
                "POST",
                "https://gateway.example.com/collections/other/points",
                access_token=dpop_token,
            ),
            {},
        ),
        "proof for another method": (
            make_dpop_proof(dpop_key, "GET", GATEWAY_URL, access_token=dpop_token),
            {},
        ),
        "proof by another key": (
            make_dpop_proof(other_key, "POST", GATEWAY_URL, access_token=dpop_token),
            {},
        ),
        "stale proof": (
            make_dpop_proof(
                dpop_key,
                "POST",
                GATEWAY_URL,
                access_token=dpop_token,
                now=now() - timedelta(minutes=5),
            ),
            {},
        ),
        "proof for another token": (
            make_dpop_proof(dpop_key, "POST", GATEWAY_URL, access_token="other"),
            {},
        ),
        "no proof": (None, {}),
        "bearer scheme": (
            make_dpop_proof(dpop_key, "POST", GATEWAY_URL, access_token=dpop_token),
            {"scheme": "Bearer"},
        ),
    }
    proof, kwargs = proofs[case]
    with pytest.raises(AuthError) as err:
        await authenticate(verifier, dpop_token, proof, **kwargs)
    assert err.value.code == code
    assert_no_token_leak(err.value, dpop_token)
    if code != "dpop_required":
        assert err.value.www_authenticate().startswith("DPoP ")


async def test_dpop_scheme_with_unbound_token(
    idp: DevIdpServer, verifier: OidcVerifier, dpop_key: ECKey
) -> None:
    token = mint_token(idp.issuer_url, "alice", ["Vector-Read"])
    proof = make_dpop_proof(dpop_key, "POST", GATEWAY_URL, access_token=token)
    with pytest.raises(AuthError) as err:
        await authenticate(verifier, token, proof)
    assert err.value.code == "dpop_token_not_bound"
    identity = await authenticate(verifier, token, proof, scheme="Bearer")
    assert identity.auth_method == "bearer"


async def test_token_bound_to_a_certificate_is_refused(
    idp: DevIdpServer, verifier: OidcVerifier
) -> None:
    token = sign(idp.keys.signing_key(), base_claims(idp.issuer_url, cnf={"x5t#S256": "abc"}))
    with pytest.raises(AuthError) as err:
        await verifier.verify(token, now=now())
    assert err.value.code == "unsupported_binding"


# --- odds and ends -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_token"),
        ("", "missing_token"),
        ("Basic YWxpY2U6cHc=", "bad_authorization_scheme"),
        ("Bearer", "malformed_token"),
        ("Bearer a b", "malformed_token"),
    ],
)
def test_parse_authorization_refuses(header: str | None, code: str) -> None:
    with pytest.raises(AuthError) as err:
        parse_authorization(header)
    assert err.value.code == code


def test_parse_authorization() -> None:
    assert parse_authorization("bearer  abc.def.ghi ") == ("bearer", "abc.def.ghi")
    assert parse_authorization("DPoP abc") == ("dpop", "abc")


@pytest.mark.parametrize("algs", [("RS256", "HS256"), ("none",), ("RS256", "XX999")])
def test_verifier_refuses_unsafe_algorithms(algs: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        OidcVerifier("https://idp.example.com", AUD, algorithms=algs)


def test_verifier_refuses_plain_http_off_loopback() -> None:
    with pytest.raises(ValueError, match="https"):
        OidcVerifier("http://idp.example.com", AUD)
    OidcVerifier("http://idp.example.com", AUD, allow_http=True)
    OidcVerifier("http://localhost:9400", AUD)


async def test_naive_now_is_a_programming_error(idp: DevIdpServer, verifier: OidcVerifier) -> None:
    with pytest.raises(ValueError, match="timezone"):
        await verifier.verify(mint_token(idp.issuer_url, "alice", []), now=datetime.now())
