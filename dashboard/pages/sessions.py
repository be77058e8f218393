"""Sessions: filter, search, page through recorded sessions (server-side)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data

user = data.page_user("sessions")
st.title("Sessions")

PAGE_SIZE = 50
with st.form("filters"):
    c = st.columns(5)
    actor = c[0].text_input("Actor (subject)", key="f_actor")
    group = c[1].text_input("IdP group", key="f_group")
    collection = c[2].text_input("Collection", key="f_collection")
    action = c[3].selectbox("Action", ["", "search", "read", "write", "delete", "admin",
                                       "schema", "health", "unknown"], key="f_action")
    decision = c[4].selectbox("Decision", ["", "allow", "deny", "require_approval"],
                              key="f_decision")
    t = st.columns(2)
    since = t[0].text_input("From (UTC, ISO 8601)", key="f_since", placeholder="2026-03-01")
    until = t[1].text_input("Until (UTC, ISO 8601)", key="f_until",
                            placeholder="2026-03-02T09:00:00Z")
    applied = st.form_submit_button("Apply filters")
if applied:
    st.session_state["sessions_page"] = 0

filters = {"actor": actor, "group": group, "collection": collection, "action": action,
           "decision": decision, "since": since, "until": until}
page = int(st.session_state.get("sessions_page", 0))
try:
    rows, total = data.sessions_page(user, filters, page=page, page_size=PAGE_SIZE)
except ValueError as exc:  # a time that is not ISO 8601
    st.error(str(exc))
    st.stop()

pages = max(1, -(-total // PAGE_SIZE))
st.caption(f"{total} session(s) match; page {page + 1} of {pages}")
nav = st.columns([1, 1, 6])
if nav[0].button("Previous", disabled=page == 0):
    st.session_state["sessions_page"] = page - 1
    st.rerun()
if nav[1].button("Next", disabled=page + 1 >= pages):
    st.session_state["sessions_page"] = page + 1
    st.rerun()

if rows:
    table = pd.DataFrame(rows)[["session_id", "subject", "started_at", "request_count",
                                "actions", "collections", "decisions", "denied_count",
                                "blocked_count", "client_session_name"]]
    picked = st.dataframe(table, hide_index=True, width="stretch",
                          on_select="rerun", selection_mode="single-row", key="sessions_table")
    chosen = picked.selection.rows if picked is not None else []
    if chosen:
        sid = str(table.iloc[chosen[0]]["session_id"])
        st.session_state["session_id"] = sid
        st.page_link("pages/session.py", label=f"Open session {sid}", icon=":material/timeline:",
                     query_params={"session": sid})
else:
    st.info("No session matches these filters.")

st.subheader("Search in bodies")
with st.form("body_search"):
    needle = st.text_input("Substring (searches request and response bodies as recorded, "
                           "masked)", key="body_needle")
    kind = st.selectbox("In", ["", "request", "response"], key="body_kind",
                        format_func=lambda k: k or "both")
    searched = st.form_submit_button("Search")
if needle:
    hits = data.body_search(user, needle, kind or None)
    if hits:
        st.dataframe(pd.DataFrame(hits), hide_index=True, width="stretch")
    else:
        st.info(f"No recorded body contains {needle!r}.")
