"""DPoP proof verification (capture/dpop.py), RFC 9449."""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OKPKey, RSAKey

from capture.devidp import make_dpop_proof
from capture.dpop import (
    AuthError,
    DpopVerifier,
    MemoryReplayCache,
    access_token_hash,
    asymmetric_registry,
    normalize_htu,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
URL = "https://gateway.example.com/collections/docs/points/search"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


@pytest.fixture(scope="module")
def key() -> ECKey:
    return ECKey.generate_key("P-256", private=True)


@pytest.fixture
def verifier() -> DpopVerifier:
    return DpopVerifier(max_age_s=60, leeway_s=5)


def b64(data: dict[str, object] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed(key: Any, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A proof with a header of our choosing, signed by ``key``."""
    alg = str(header.get("alg", "ES256"))
    registry = asymmetric_registry([alg], max_header_bytes=4096)
    return jws.serialize_compact(header, json.dumps(claims).encode(), key, registry=registry)


def claims(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "jti": "j-1",
        "htm": "POST",
        "htu": URL,
        "iat": int(NOW.timestamp()),
        "ath": access_token_hash(TOKEN),
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_valid_proof_returns_the_key_thumbprint(key: ECKey, verifier: DpopVerifier) -> None:
    proof = make_dpop_proof(key, "POST", URL + "?wait=true", access_token=TOKEN, now=NOW)
    jkt = verifier.verify(
        proof,
        method="POST",
        url=URL + "?wait=true",
        now=NOW,
        access_token=TOKEN,
        expected_jkt=key.thumbprint(),
    )
    assert jkt == key.thumbprint()


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: RSAKey.generate_key(2048, private=True),
        lambda: OKPKey.generate_key("Ed25519", private=True),
        lambda: ECKey.generate_key("P-384", private=True),
    ],
    ids=["RS256", "EdDSA", "ES384"],
)
def test_other_key_types(make_key: object, verifier: DpopVerifier) -> None:
    k = make_key()  # type: ignore[operator]
    proof = make_dpop_proof(k, "GET", URL, now=NOW)
    assert verifier.verify(proof, method="GET", url=URL, now=NOW) == k.thumbprint()


def test_replayed_proof_is_refused(key: ECKey, verifier: DpopVerifier) -> None:
    proof = make_dpop_proof(key, "POST", URL, access_token=TOKEN, now=NOW)
    verifier.verify(proof, method="POST", url=URL, now=NOW, access_token=TOKEN)
    with pytest.raises(AuthError) as err:
        verifier.verify(
            proof, method="POST", url=URL, now=NOW + timedelta(seconds=1), access_token=TOKEN
        )
    assert err.value.code == "dpop_replayed"


def test_same_jti_from_another_key_is_not_a_replay(key: ECKey, verifier: DpopVerifier) -> None:
    other = ECKey.generate_key("P-256", private=True)
    verifier.verify(
        make_dpop_proof(key, "GET", URL, now=NOW, jti="x"), method="GET", url=URL, now=NOW
    )
    verifier.verify(
        make_dpop_proof(other, "GET", URL, now=NOW, jti="x"), method="GET", url=URL, now=NOW
    )


@pytest.mark.parametrize(
    ("proof_url", "request_url", "ok"),
    [
        (URL, "https://gateway.example.com/collections/other/points/search", False),
        (URL, "https://evil.example.com/collections/docs/points/search", False),
        (URL, "http://gateway.example.com/collections/docs/points/search", False),
        (URL, "https://gateway.example.com:8443/collections/docs/points/search", False),
        ("HTTPS://Gateway.Example.COM:443/collections/docs/points/search", URL, True),
        ("https://gateway.example.com/collections/./docs/x/../points/search", URL, True),
        ("https://gateway.example.com/collections/%64ocs/points/search", URL, True),
        (URL + "#frag", URL + "?q=1", True),
    ],
)
def test_htu_binding(key: ECKey, proof_url: str, request_url: str, ok: bool) -> None:
    verifier = DpopVerifier()
    proof = signed(
        key,
        {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)},
        claims(htu=proof_url, htm="GET", ath=None),
    )
    if ok:
        verifier.verify(proof, method="GET", url=request_url, now=NOW)
    else:
        with pytest.raises(AuthError) as err:
            verifier.verify(proof, method="GET", url=request_url, now=NOW)
        assert err.value.code == "dpop_htu_mismatch"


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("https://EXAMPLE.com", "https://example.com/"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("https://example.com:8443/a?b#c", "https://example.com:8443/a"),
        ("https://example.com/a/b/../../c/./d", "https://example.com/c/d"),
        ("https://example.com/%7euser/%2f", "https://example.com/~user/%2F"),
        ("https://[::1]:8080/x", "https://[::1]:8080/x"),
    ],
)
def test_normalize_htu(url: str, normal: str) -> None:
    assert normalize_htu(url) == normal


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "https://user:pw@example.com/", "/relative", "https://:99/"]
)
def test_normalize_htu_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        normalize_htu(url)


def test_proof_for_another_method_is_refused(key: ECKey, verifier: DpopVerifier) -> None:
    proof = make_dpop_proof(key, "GET", URL, access_token=TOKEN, now=NOW)
    with pytest.raises(AuthError) as err:
        verifier.verify(proof, method="DELETE", url=URL, now=NOW, access_token=TOKEN)
    assert err.value.code == "dpop_htm_mismatch"


def test_key_not_matching_cnf_jkt_is_refused(key: ECKey, verifier: DpopVerifier) -> None:
    other = ECKey.generate_key("P-256", private=True)
    proof = make_dpop_proof(other, "POST", URL, access_token=TOKEN, now=NOW)
    with pytest.raises(AuthError) as err:
        verifier.verify(
            proof,
            method="POST",
            url=URL,
            now=NOW,
            access_token=TOKEN,
            expected_jkt=key.thumbprint(),
        )
    assert err.value.code == "dpop_key_mismatch"


@pytest.mark.parametrize(
    ("age_s", "code"),
    [(61, "dpop_stale"), (3600, "dpop_stale"), (-6, "dpop_future"), (-600, "dpop_future")],
)
def test_iat_window(key: ECKey, verifier: DpopVerifier, age_s: int, code: str) -> None:
    proof = make_dpop_proof(key, "POST", URL, now=NOW - timedelta(seconds=age_s))
    with pytest.raises(AuthError) as err:
        verifier.verify(proof, method="POST", url=URL, now=NOW)
    assert err.value.code == code


@pytest.mark.parametrize("age_s", [60, 0, -5])
def test_iat_window_edges_are_accepted(key: ECKey, verifier: DpopVerifier, age_s: int) -> None:
    proof = make_dpop_proof(key, "POST", URL, now=NOW - timedelta(seconds=age_s))
    verifier.verify(proof, method="POST", url=URL, now=NOW)


def test_ath_must_match_the_access_token(key: ECKey, verifier: DpopVerifier) -> None:
    proof = make_dpop_proof(key, "POST", URL, access_token="another-token", now=NOW)
    with pytest.raises(AuthError) as err:
        verifier.verify(proof, method="POST", url=URL, now=NOW, access_token=TOKEN)
    assert err.value.code == "dpop_ath_mismatch"
    proof = make_dpop_proof(key, "POST", URL, now=NOW)
    with pytest.raises(AuthError) as err:
        verifier.verify(proof, method="POST", url=URL, now=NOW, access_token=TOKEN)
    assert err.value.code == "dpop_ath_missing"


def forged_proofs(key: ECKey) -> dict[str, tuple[str, str]]:
    """name -> (proof, expected code)."""
    public = key.as_dict(private=False)
    good_header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public}
    good = signed(key, good_header, claims())
    h, p, s = good.split(".")
    other = ECKey.generate_key("P-256", private=True)
    return {
        "alg none": (
            f"{b64({'typ': 'dpop+jwt', 'alg': 'none', 'jwk': public})}.{p}.",
            "dpop_alg_not_allowed",
        ),
        "HS256": (
            f"{b64({'typ': 'dpop+jwt', 'alg': 'HS256', 'jwk': public})}.{p}.{s}",
            "dpop_alg_not_allowed",
        ),
        "typ JWT": (signed(key, {**good_header, "typ": "JWT"}, claims()), "dpop_bad_typ"),
        "no typ": (signed(key, {"alg": "ES256", "jwk": public}, claims()), "dpop_bad_typ"),
        "no jwk": (signed(key, {"typ": "dpop+jwt", "alg": "ES256"}, claims()), "dpop_missing_jwk"),
        "private jwk": (
            signed(key, {**good_header, "jwk": key.as_dict(private=True)}, claims()),
            "dpop_private_key",
        ),
        "oct jwk": (
            signed(key, {**good_header, "jwk": {"kty": "oct", "k": "c2VjcmV0"}}, claims()),
            "dpop_private_key",
        ),
        "jku header": (
            signed(key, {**good_header, "jku": "https://evil.example/jwks"}, claims()),
            "dpop_malformed",
        ),
        "signed by another key": (
            signed(other, good_header, claims()),
            "dpop_bad_signature",
        ),
        "tampered payload": (
            f"{h}.{b64(claims(htm='DELETE'))}.{s}",
            "dpop_bad_signature",
        ),
        "RSA jwk with ES256": (
            signed(
                key,
                {
                    **good_header,
                    "jwk": RSAKey.generate_key(2048, private=True).as_dict(private=False),
                },
                claims(),
            ),
            "dpop_bad_jwk",
        ),
        "no jti": (signed(key, good_header, claims(jti=None)), "dpop_malformed"),
        "iat string": (signed(key, good_header, claims(iat="now")), "dpop_malformed"),
        "payload not object": (
            jws.serialize_compact(
                good_header,
                b"[1]",
                key,
                registry=asymmetric_registry(["ES256"], max_header_bytes=4096),
            ),
            "dpop_malformed",
        ),
        "two proofs": (f"{good},{good}", "dpop_malformed"),
        "garbage": ("not-a-jwt", "dpop_malformed"),
    }


@pytest.fixture(scope="module")
def forged(key: ECKey) -> dict[str, tuple[str, str]]:
    return forged_proofs(key)


@pytest.mark.parametrize("name", list(forged_proofs(ECKey.generate_key("P-256", private=True))))
def test_forged_proofs_are_refused(
    forged: dict[str, tuple[str, str]], verifier: DpopVerifier, name: str
) -> None:
    proof, code = forged[name]
    with pytest.raises(AuthError) as err:
        verifier.verify(proof, method="POST", url=URL, now=NOW, access_token=TOKEN)
    assert err.value.code == code
    assert proof not in str(err.value) and TOKEN not in str(err.value)
    assert err.value.status == 401
    assert err.value.www_authenticate().startswith('DPoP error="invalid_dpop_proof"')


def test_weak_rsa_key_is_refused(verifier: DpopVerifier) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers()
    )
    jwk = {
        "kty": "RSA",
        "n": b64(numbers.n.to_bytes(128, "big")),
        "e": b64(numbers.e.to_bytes(3, "big")),
    }
    proof = f"{b64({'typ': 'dpop+jwt', 'alg': 'RS256', 'jwk': jwk})}.{b64(claims())}.c2ln"
    with pytest.raises(AuthError) as err:
        verifier.verify(proof, method="POST", url=URL, now=NOW)
    assert err.value.code == "dpop_bad_jwk"
    assert "2048" in err.value.message


def test_verifier_refuses_symmetric_algorithms() -> None:
    with pytest.raises(ValueError, match="asymmetric"):
        DpopVerifier(algorithms=("ES256", "HS256"))
    with pytest.raises(ValueError, match="asymmetric"):
        DpopVerifier(algorithms=("none",))


def test_naive_now_is_a_programming_error(key: ECKey, verifier: DpopVerifier) -> None:
    proof = make_dpop_proof(key, "GET", URL, now=NOW)
    with pytest.raises(ValueError, match="timezone"):
        verifier.verify(proof, method="GET", url=URL, now=NOW.replace(tzinfo=None))


# --- the replay cache --------------------------------------------------------------


def test_replay_cache_forgets_after_expiry() -> None:
    cache = MemoryReplayCache()
    assert cache.remember("a", expires_at=100.0, now=50.0) == "new"
    assert cache.remember("a", expires_at=100.0, now=99.0) == "replayed"
    assert cache.remember("b", expires_at=200.0, now=100.0) == "new"
    assert len(cache) == 1  # "a" expired at 100
    assert cache.remember("a", expires_at=300.0, now=100.0) == "new"


def test_replay_cache_full_fails_closed() -> None:
    cache = MemoryReplayCache(max_entries=2)
    assert cache.remember("a", expires_at=100.0, now=0.0) == "new"
    assert cache.remember("b", expires_at=100.0, now=0.0) == "new"
    assert cache.remember("c", expires_at=100.0, now=0.0) == "full"
    assert cache.remember("a", expires_at=100.0, now=0.0) == "replayed"
    assert cache.remember("c", expires_at=200.0, now=100.0) == "new"  # room again


def test_full_replay_cache_refuses_proofs(key: ECKey) -> None:
    verifier = DpopVerifier(replay_cache=MemoryReplayCache(max_entries=1))
    verifier.verify(make_dpop_proof(key, "GET", URL, now=NOW), method="GET", url=URL, now=NOW)
    with pytest.raises(AuthError) as err:
        verifier.verify(make_dpop_proof(key, "GET", URL, now=NOW), method="GET", url=URL, now=NOW)
    assert err.value.code == "dpop_replay_cache_full"


def test_replay_cache_is_thread_safe(key: ECKey) -> None:
    verifier = DpopVerifier()
    proof = make_dpop_proof(key, "GET", URL, now=NOW)
    outcomes: list[str] = []
    barrier = threading.Barrier(16)

    def attempt() -> None:
        barrier.wait()
        try:
            verifier.verify(proof, method="GET", url=URL, now=NOW)
            outcomes.append("ok")
        except AuthError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["dpop_replayed"] * 15 + ["ok"]
