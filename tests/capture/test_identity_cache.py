"""The verified-token cache never outlives a token, and never holds DPoP tokens."""

from __future__ import annotations

from datetime import UTC, datetime

from capture.identity import VerifiedTokenCache
from capture.types import Identity

NOW = 1_800_000_000.0


def ident(exp_in: float | None, jkt: str | None = None) -> Identity:
    exp = datetime.fromtimestamp(NOW + exp_in, UTC) if exp_in is not None else None
    return Identity(subject="alice", issuer="i", expires_at=exp, dpop_jkt=jkt)


def test_hit_until_ttl_then_miss() -> None:
    c = VerifiedTokenCache(ttl_s=60)
    k = c.key("Bearer abc")
    c.put(k, ident(3600), NOW)
    assert c.get(k, NOW + 59) is not None
    assert c.get(k, NOW + 61) is None


def test_never_past_token_expiry() -> None:
    c = VerifiedTokenCache(ttl_s=60)
    k = c.key("Bearer abc")
    c.put(k, ident(10), NOW)
    assert c.get(k, NOW + 9) is not None
    assert c.get(k, NOW + 10) is None


def test_expired_or_dpop_tokens_are_not_cached() -> None:
    c = VerifiedTokenCache(ttl_s=60)
    c.put(c.key("a"), ident(-1), NOW)
    c.put(c.key("b"), ident(600, jkt="thumb"), NOW)
    assert c.get(c.key("a"), NOW) is None
    assert c.get(c.key("b"), NOW) is None


def test_bounded_lru() -> None:
    c = VerifiedTokenCache(ttl_s=60, max_entries=3)
    for i in range(5):
        c.put(c.key(str(i)), ident(600), NOW)
    assert c.get(c.key("0"), NOW) is None and c.get(c.key("4"), NOW) is not None


def test_distinct_tokens_distinct_keys() -> None:
    assert VerifiedTokenCache.key("Bearer a") != VerifiedTokenCache.key("Bearer b")
