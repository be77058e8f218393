"""Sessions: filter, search, page through recorded sessions (server-side)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.text import md_literal, visible_data

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
    t = st.columns(3)
    since = t[0].text_input("From (UTC, ISO 8601)", key="f_since", placeholder="2026-03-01")
    until = t[1].text_input("Until (UTC, ISO 8601)", key="f_until",
                            placeholder="2026-03-02T09:00:00Z")
    body = t[2].text_input("Body contains", key="f_body",
                           help="Sessions with a request whose request or response body, as "
                                "recorded (masked), contains this text")
    applied = st.form_submit_button("Apply filters")
if applied:
    st.session_state["sessions_page"] = 0

filters = {"actor": actor, "group": group, "collection": collection, "action": action,
           "decision": decision, "since": since, "until": until, "body": body}
page = int(st.session_state.get("sessions_page", 0))
try:
    rows, more = data.sessions_page(user, filters, page=page, page_size=PAGE_SIZE)
except ValueError as exc:  # a time that is not ISO 8601
    st.error(md_literal(exc))
    st.stop()

first = page * PAGE_SIZE
shown = f"sessions {first + 1}–{first + len(rows)}" if rows else "no sessions"
nav = st.columns([1, 1, 2, 4])
if nav[0].button("Previous", disabled=page == 0):
    st.session_state["sessions_page"] = page - 1
    st.rerun()
if nav[1].button("Next", disabled=not more):
    st.session_state["sessions_page"] = page + 1
    st.rerun()
if nav[2].button("Count matches", help="Counts every matching session (slower on big "
                                       "warehouses)"):
    st.session_state["sessions_total"] = data.sessions_total(user, filters)
    st.session_state["sessions_total_for"] = filters
total = (st.session_state.get("sessions_total")
         if st.session_state.get("sessions_total_for") == filters else None)
nav[3].caption(f"Page {page + 1}: {shown}, newest first"
               + (f" of {total} matching" if total is not None else "")
               + ("" if more else " (last page)"))

if rows:
    table = pd.DataFrame(rows)[["session_id", "subject", "started_at", "request_count",
                                "actions", "collections", "decisions", "denied_count",
                                "blocked_count", "client_session_name"]]
    picked = st.dataframe(visible_data(table), hide_index=True, width="stretch",
                          on_select="rerun", selection_mode="multi-row", key="sessions_table")
    chosen = picked.selection.rows if picked is not None else []
    st.caption("Select a session to open it, or two to compare them.")
    if len(chosen) == 1:
        sid = str(table.iloc[chosen[0]]["session_id"])
        st.session_state["session_id"] = sid
        st.page_link("pages/session.py", label=f"Open session {md_literal(sid)}",
                     icon=":material/timeline:",
                     query_params={"session": sid})
    elif len(chosen) == 2:
        # the older one is "then": rows are newest first
        now_sid, then_sid = (str(table.iloc[i]["session_id"]) for i in sorted(chosen))
        st.page_link("pages/diff.py", label=f"Compare {md_literal(then_sid)} (then) with "
                                             f"{md_literal(now_sid)} (now)",
                     icon=":material/difference:",
                     query_params={"then_session": then_sid, "now_session": now_sid})
    elif len(chosen) > 2:
        st.warning(f"{len(chosen)} sessions selected: select one to open it, or two to compare.")
else:
    st.info("No session matches these filters.")

# The matching bodies are a second full scan of the bodies: shown on request only.
if body and st.toggle(f"Show the recorded bodies containing {md_literal(repr(body))}",
                      key="show_bodies"):
    hits = data.body_search(user, body)
    if hits:
        st.dataframe(visible_data(pd.DataFrame(hits)), hide_index=True, width="stretch",
                     key="body_hits")
    else:
        st.info(f"No recorded body contains {md_literal(repr(body))}.")
