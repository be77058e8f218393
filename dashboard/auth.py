"""Who is signed in, and which dashboard roles they hold.

Sign-in is OIDC through ``st.login`` (Authlib) against the configured issuer;
``embedguard dashboard`` writes the ``[auth]`` section of the app's
``.streamlit/secrets.toml`` (client, issuer metadata, ``expose_tokens =
["access"]``). The ID token's ``groups`` claim maps to roles:

* ``auditor``  sees recordings, lineage, evidence and the policy;
* ``approver`` sees the approvals console and the policy;
* ``admin``    sees everything and may replay.

The mapping is configurable: ``EMBEDGUARD_DASHBOARD_ROLES`` holds JSON such as
``{"auditor": ["Vector-Audit"], "approver": ["Vector-Approve"], "admin":
["Vector-Admin"]}`` (the default).

A sign-in lasts as long as its ID token: Streamlit keeps ``st.user`` in a
signed cookie for 30 days, but the groups (the roles) in it are only as fresh
as the token, so once its ``exp`` has passed the user is signed out (someone
removed from a group at the IdP loses the role when the token expires, not a
month later).

The access token from ``st.user.tokens["access"]`` is what the approvals page
sends to the gateway's control API, so the gateway decides who may approve.

Test seam (documented, off by default): when the process environment has
``EMBEDGUARD_DASHBOARD_TEST_SEAM=1``, a ``dict`` in
``st.session_state["embedguard_test_user"]`` with ``subject``, ``issuer``,
``groups`` and ``access_token`` stands for the signed-in user. AppTest sets it
(with a real token from the dev issuer); a browser cannot, because Streamlit
only lets widgets write session state and no widget has that key; and a
production process never sets the variable.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "ROLES",
    "ROLE_GROUPS_ENV",
    "TEST_SEAM_ENV",
    "TEST_USER_KEY",
    "AccessDenied",
    "Role",
    "User",
    "current_user",
    "role_groups",
    "roles_for",
]

Role = Literal["auditor", "approver", "admin"]
ROLES: tuple[Role, ...] = ("auditor", "approver", "admin")
ROLE_GROUPS_ENV = "EMBEDGUARD_DASHBOARD_ROLES"
TEST_SEAM_ENV = "EMBEDGUARD_DASHBOARD_TEST_SEAM"
TEST_USER_KEY = "embedguard_test_user"

DEFAULT_ROLE_GROUPS: dict[Role, tuple[str, ...]] = {
    "auditor": ("Vector-Audit",),
    "approver": ("Vector-Approve",),
    "admin": ("Vector-Admin",),
}


class AccessDenied(PermissionError):
    """A data function was called for a user whose roles do not allow it."""

    def __init__(self, subject: str, needed: Iterable[Role], what: str) -> None:
        self.needed = tuple(needed)
        super().__init__(
            f"{subject} may not {what}: it needs the role "
            + " or ".join(self.needed)
            + " (granted through IdP groups; see EMBEDGUARD_DASHBOARD_ROLES)"
        )


@dataclass(frozen=True)
class User:
    subject: str
    issuer: str | None
    groups: frozenset[str]
    roles: frozenset[Role]
    name: str | None = None
    #: the OIDC access token, sent to the gateway's control API; never shown or logged
    access_token: str | None = field(default=None, repr=False)

    def has(self, *roles: Role) -> bool:
        return bool(self.roles & set(roles))

    def require(self, roles: Iterable[Role], what: str) -> None:
        roles = tuple(roles)
        if not self.has(*roles):
            raise AccessDenied(self.subject, roles, what)


def role_groups(env: Mapping[str, str] | None = None) -> dict[Role, tuple[str, ...]]:
    """The role → IdP groups mapping (``EMBEDGUARD_DASHBOARD_ROLES`` or the default)."""
    raw = (env if env is not None else os.environ).get(ROLE_GROUPS_ENV, "").strip()
    if not raw:
        return dict(DEFAULT_ROLE_GROUPS)
    try:
        data = json.loads(raw)
    except ValueError:
        raise ValueError(
            f"{ROLE_GROUPS_ENV} is not JSON; write e.g. "
            '{"auditor": ["Vector-Audit"], "approver": ["Vector-Approve"], '
            '"admin": ["Vector-Admin"]}'
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(g, str) for g in v) for v in data.values()
    ):
        raise ValueError(f"{ROLE_GROUPS_ENV} must map role names to lists of group names")
    unknown = set(data) - set(ROLES)
    if unknown:
        raise ValueError(
            f"{ROLE_GROUPS_ENV}: unknown role(s) {', '.join(sorted(unknown))}; "
            f"roles are {', '.join(ROLES)}"
        )
    mapping: dict[Role, tuple[str, ...]] = {role: () for role in ROLES}
    for role in ROLES:
        mapping[role] = tuple(data.get(role, ()))
    return mapping


def roles_for(groups: Iterable[str], mapping: Mapping[Role, Iterable[str]] | None = None) -> (
    frozenset[Role]
):
    mapping = mapping if mapping is not None else role_groups()
    have = set(groups)
    return frozenset(role for role, needed in mapping.items() if have & set(needed))


def _groups(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(g.strip() for g in value.split(",") if g.strip())
    if isinstance(value, list | tuple):
        return frozenset(str(g) for g in value)
    return frozenset()


#: clock skew allowed on the ID token's ``exp``
EXP_SKEW_S = 30


def sign_in_expired(claims: Mapping[str, Any], now: float) -> str | None:
    """Why the sign-in in ``claims`` (the ID token's, as ``st.user`` holds them)
    no longer counts, or None if it does: its ``exp`` passed (beyond
    :data:`EXP_SKEW_S`) or is missing (an ID token must carry one)."""
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return "your sign-in carries no expiry; sign in again"
    if exp + EXP_SKEW_S <= now:
        at = datetime.fromtimestamp(exp, UTC).strftime("%Y-%m-%d %H:%M UTC")
        return f"your sign-in expired at {at}; sign in again"
    return None


def current_user() -> User | None:
    """The signed-in user, or None (then the app shows the sign-in page)."""
    import streamlit as st

    if os.environ.get(TEST_SEAM_ENV) == "1":
        seeded = st.session_state.get(TEST_USER_KEY)
        if isinstance(seeded, dict):
            groups = _groups(seeded.get("groups", ()))
            return User(
                subject=str(seeded["subject"]),
                issuer=seeded.get("issuer"),
                groups=groups,
                roles=roles_for(groups),
                name=seeded.get("name"),
                access_token=seeded.get("access_token"),
            )
    if not st.user.get("is_logged_in", False):
        return None
    claims = dict(st.user.to_dict())
    if sign_in_expired(claims, time.time()) is not None:
        # Streamlit keeps st.user in a signed cookie for 30 days, whatever the
        # ID token says: the groups it carries (the roles) are only as fresh
        # as the token, so the sign-in ends when the ID token does
        return None
    groups = _groups(claims.get("groups", ()))
    token: str | None = None
    try:
        token = st.user.tokens["access"]
    except (KeyError, AttributeError):
        token = None
    return User(
        subject=str(claims.get("sub") or claims.get("email") or "unknown"),
        issuer=str(claims["iss"]) if claims.get("iss") else None,
        groups=groups,
        roles=roles_for(groups),
        name=str(claims["name"]) if claims.get("name") else None,
        access_token=token,
    )
