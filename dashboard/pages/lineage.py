"""Lineage: who wrote a point (or what an approval released), when, and under
which approval, ticket or grant."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.text import md_literal, visible_data

user = data.page_user("lineage")
st.title("Lineage")
# Links from Session detail arrive as query parameters; they pre-fill the forms.
for param, key in (("collection", "lin_collection"), ("point", "lin_point"),
                   ("approval", "lin_approval")):
    if param in st.query_params and key not in st.session_state:
        st.session_state[key] = st.query_params[param]
if "approval" in st.query_params:
    st.info("The approval you followed is under the **Approval** tab.")
by_point, by_approval = st.tabs(["Point id", "Approval"])
COLUMNS = ["occurred_at", "action", "subject", "decision", "state", "status", "approval_id",
           "ticket_id", "grant_id", "session_id", "request_id", "ids_known", "id_count"]
with by_point:
    with st.form("lineage_point"):
        c = st.columns(2)
        collection = c[0].text_input("Collection", key="lin_collection")
        point_id = c[1].text_input("Point id", key="lin_point")
        st.form_submit_button("Look up")
    if collection and point_id:
        rows = data.lineage_by_point(user, collection.strip(), point_id.strip())
        if rows:
            frame = pd.DataFrame(rows)
            st.dataframe(visible_data(frame[[c for c in COLUMNS if c in frame]]), hide_index=True,
                         width="stretch")
            unknown = sum(1 for r in rows if not r.get("ids_known"))
            if unknown:
                st.caption(f"{unknown} operation(s) named no ids (e.g. delete by filter) and "
                           "may have touched this point.")
        else:
            st.info(f"No recorded write or delete of {md_literal(point_id)} in "
                    f"{md_literal(collection)}.")
with by_approval:
    with st.form("lineage_approval"):
        approval_id = st.text_input("Approval id", key="lin_approval")
        st.form_submit_button("Look up")
    if approval_id:
        found = data.lineage_by_approval(user, approval_id.strip())
        if found["approval"] is None:
            st.info(f"No approval {md_literal(approval_id)} in the warehouse.")
        else:
            a = found["approval"]
            st.markdown(f"**{md_literal(a['status'])}** · requested by "
                        f"{md_literal(a['requester_subject'])} at "
                        f"{md_literal(a['requested_at'])} · approvers: "
                        f"{md_literal(', '.join(a['approvers']) or '-')}"
                        f" · deniers: {md_literal(', '.join(a['deniers']) or '-')}")
            if found["writes"]:
                frame = pd.DataFrame(found["writes"])
                st.dataframe(visible_data(frame[[c for c in [
                    "received_at", "subject", "method", "path", "actions", "collections",
                    "decision", "state", "status", "request_id", "session_id"] if c in frame]]),
                             hide_index=True, width="stretch")
