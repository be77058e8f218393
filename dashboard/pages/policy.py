"""Policy: the active policy, its history (PolicyChanged) and a simulator."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.text import md_literal, visible, visible_data

user = data.page_user("policy")
st.title("Policy")
view = data.policy_view(user)
if "error" in view:
    st.error(md_literal(view["error"]))
else:
    st.caption(f"{md_literal(view['path'])} · sha256 `{view['sha256'][:16]}…`")
    st.dataframe(visible_data(pd.DataFrame(view["rules"])), hide_index=True, width="stretch")
    with st.expander("Policy file"):
        st.code(visible(view["text"]), language="yaml")

st.subheader("History")
history = data.policy_history(user)
if not history:
    st.caption("No PolicyChanged event recorded yet.")
for change in history:
    with st.expander(f"{md_literal(change['occurred_at'])} · {md_literal(change['gateway_id'])}"
                     f" · {md_literal((change['old_sha256'] or 'none')[:12])} → "
                     f"{md_literal(change['new_sha256'][:12])}"):
        st.code(visible(change["diff"] or "(no diff recorded)"), language="diff")

st.subheader("Simulator")
with st.form("simulate"):
    c = st.columns(2)
    subject = c[0].text_input("Subject", value="alice", key="sim_subject")
    groups = c[1].text_input("Groups (comma-separated)", value="Vector-Read", key="sim_groups")
    ops = st.text_area("Operations, one per line: action, action:collection or "
                       "action:collection:id,id",
                       value="write:docs:doc-1", key="sim_ops")
    d = st.columns(3)
    ticket = d[0].text_input("Change ticket", key="sim_ticket")
    age = d[1].number_input("Token age (minutes)", min_value=0, value=0, key="sim_age")
    dpop = d[2].checkbox("DPoP-bound token", key="sim_dpop")
    run = st.form_submit_button("Simulate")
if run:
    try:
        result = data.simulate_policy(user, subject=subject, groups=groups.split(","),
                                      operations=ops.splitlines(), ticket=ticket or None,
                                      dpop=dpop, token_age_min=int(age))
    except ValueError as exc:
        st.error(md_literal(exc))
    else:
        (st.success if result["outcome"] == "allow" else st.warning)(
            f"Decision: {md_literal(result['outcome'])}")
        st.code(visible(result["text"]))
