"""dashboard/auth.py through Streamlit's real ``st.user`` (no test seam): the
sign-in lasts as long as its ID token. Streamlit keeps ``st.user`` in a signed
cookie for 30 days; before the fix a user whose ID token had expired weeks ago
(and who may have been removed from a group since) kept every role."""

from __future__ import annotations

import time
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.auth import EXP_SKEW_S, TEST_SEAM_ENV, sign_in_expired


def _script() -> None:
    import streamlit as st

    from dashboard.auth import current_user

    u = current_user()
    st.write("USER " + ("-" if u is None else u.subject))
    if u is not None:
        st.write("ROLES " + ",".join(sorted(u.roles)))


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"is_logged_in": True, "sub": "erin", "iss": "http://127.0.0.1:9400",
            "aud": "embedguard-dashboard", "groups": ["Vector-Audit", "Vector-Admin"],
            "iat": now, "exp": now + 900, **over}


def _who(monkeypatch: pytest.MonkeyPatch, claims: dict[str, Any]) -> str:
    monkeypatch.delenv(TEST_SEAM_ENV, raising=False)
    at = AppTest.from_function(_script)
    at.user = claims
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return " | ".join(str(m.value) for m in at.markdown)


def test_a_current_id_token_signs_in_with_its_roles(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _who(monkeypatch, _claims()) == "USER erin | ROLES admin,auditor"


@pytest.mark.parametrize("claims", [
    _claims(iat=int(time.time()) - 29 * 86400, exp=int(time.time()) - 29 * 86400 + 900),
    _claims(exp=int(time.time()) - EXP_SKEW_S - 5),
    {k: v for k, v in _claims().items() if k != "exp"},
    _claims(exp="tomorrow"),
], ids=["expired-29-days-ago", "just-expired", "no-exp", "exp-not-a-number"])
def test_an_expired_or_unbounded_sign_in_is_signed_out(
    monkeypatch: pytest.MonkeyPatch, claims: dict[str, Any]
) -> None:
    assert _who(monkeypatch, claims) == "USER -"


def test_the_skew_allowance() -> None:
    now = time.time()
    assert sign_in_expired({"exp": now - EXP_SKEW_S + 5}, now) is None
    why = sign_in_expired({"exp": 1_796_000_000}, now)
    assert why is not None and "expired at 2026-" in why and "sign in again" in why
    assert sign_in_expired({"exp": True}, now) is not None
