"""The dashboard's router: sign-in, then the pages the user's roles allow.

Run with ``embedguard dashboard`` (it writes the sign-in configuration and
starts ``streamlit run`` on this file). Pages live in ``dashboard/pages/`` and
only render; ``dashboard/data.py`` owns every query, decision and audit record.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# ``streamlit run dashboard/app.py`` puts dashboard/ first on sys.path; the app
# imports the project's packages from the repository root.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from dashboard.auth import AccessDenied, current_user, sign_in_expired  # noqa: E402
from dashboard.data import AuditUnavailable, pages_for  # noqa: E402
from dashboard.text import md_literal  # noqa: E402
from pipeline.warehouse import WarehouseError  # noqa: E402

st.set_page_config(page_title="embedguard", page_icon="🛡️", layout="wide")

_PAGES = [
    ("overview", "pages/overview.py", "Overview", ":material/monitoring:"),
    ("sessions", "pages/sessions.py", "Sessions", ":material/list:"),
    ("session", "pages/session.py", "Session detail", ":material/timeline:"),
    ("diff", "pages/diff.py", "Diff", ":material/difference:"),
    ("replay", "pages/replay.py", "Replay", ":material/replay:"),
    ("approvals", "pages/approvals.py", "Approvals", ":material/approval:"),
    ("lineage", "pages/lineage.py", "Lineage", ":material/account_tree:"),
    ("evidence", "pages/evidence.py", "Evidence", ":material/verified:"),
    ("policy", "pages/policy.py", "Policy", ":material/policy:"),
]


def _sign_in() -> None:
    st.title("embedguard")
    st.write("Sessions, approvals, lineage and evidence of the vector-database gateway.")
    if st.user.get("is_logged_in", False):  # a cookie whose ID token has expired
        why = sign_in_expired(st.user.to_dict(), time.time())
        if why:
            st.info(why[0].upper() + why[1:] + ".")
    # ``?signin`` starts the OIDC flow at once (bookmarks, the browser test)
    if st.button("Sign in", type="primary") or "signin" in st.query_params:
        st.login()


def _no_access() -> None:
    st.warning("You have no dashboard role. Roles come from IdP groups (auditor, approver, "
               "admin); ask an administrator to add you to one.")


user = current_user()
if user is None:
    pages = [st.Page(_sign_in, title="Sign in", icon=":material/login:")]
else:
    allowed = pages_for(user)
    pages = [
        st.Page(path, title=title, icon=icon, default=(key == allowed[0]))
        for key, path, title, icon in _PAGES
        if key in allowed
    ]
    with st.sidebar:
        st.caption(f"Signed in as **{md_literal(user.name or user.subject)}**")
        st.caption("Roles: " + (md_literal(", ".join(sorted(user.roles))) or "none"))
        if st.button("Sign out"):
            st.logout()
    if not pages:
        pages = [st.Page(_no_access, title="No access", icon=":material/block:")]
try:
    st.navigation(pages).run()
except (WarehouseError, AuditUnavailable, AccessDenied) as exc:
    # A clear message instead of Streamlit's generic error box; no stack trace.
    first = str(exc).splitlines()[0][:400] if str(exc) else type(exc).__name__
    if isinstance(exc, WarehouseError):
        st.error(f"The warehouse cannot be read: {md_literal(first)}. Is the loader running "
                 "(`embedguard loader`), and does --warehouse name the right place?")
    else:
        st.error(md_literal(first))
