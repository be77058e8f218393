"""Approvals console: the pending queue with its review context, approve or
deny with a required reason (the gateway decides whether you may), and the
decided and expired approvals."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from capture.approvals.client import ControlApiError
from dashboard import data
from dashboard.text import md_literal, visible_data

user = data.page_user("approvals")
st.title("Approvals")

outcome = st.session_state.pop("approval_outcome", None)
if outcome is not None:
    kind, text = outcome
    (st.success if kind == "ok" else st.error)(text)  # built below from escaped values

st.subheader("Pending")
try:
    pending = data.approvals_pending(user)
except ControlApiError as exc:
    st.error(f"The gateway did not list the approvals: {md_literal(exc.reason)}"
             + (f" (request {md_literal(exc.request_id)})" if exc.request_id else ""))
    pending = []
try:
    decided = data.approvals_decided(user)
except ControlApiError as exc:
    st.error(f"The gateway did not list the decided approvals: {md_literal(exc.reason)}")
    decided = {s: [] for s in ("pending", "approved", "denied", "expired")}
if not pending:
    st.info("Nothing waits for a decision that you may take.")
    if user.has("admin") and decided["pending"]:
        st.caption(f"{len(decided['pending'])} approval(s) are pending in the warehouse: the "
                   "gateway lists only those whose approver groups you are in (and your own "
                   "requests).")
for a in pending:
    requester = (a.get("requester") or {}).get("subject", "?")
    ops = a.get("operations") or []
    title = (f"{md_literal(a.get('kind', 'request'))} by {md_literal(requester)} · "
             + md_literal(", ".join(f"{o.get('action')} {o.get('collection') or ''}".strip()
                                    for o in ops))
             + f" · expires {md_literal(a.get('expires_at'))}")
    with st.expander(title, expanded=len(pending) == 1):
        st.caption(f"approval {md_literal(a['approval_id'])} · request "
                   f"{md_literal(a.get('request_id'))} · "
                   f"needs {md_literal(a.get('min_approvals'))} approval(s) from "
                   + md_literal(" or ".join("+".join(g) for g in a.get("approver_groups") or []))
                   + f" · content sha256 {md_literal((a.get('request_sha256') or '')[:16])}…")
        if a.get("reason"):
            st.markdown(f"**Requester's reason:** {md_literal(a['reason'])}")
        st.markdown("**Operations**")
        st.dataframe(visible_data(pd.DataFrame([{
            "action": o.get("action"), "collection": o.get("collection"),
            "ids": ", ".join(map(str, o.get("ids") or [])) or "-",
            "vectors": o.get("vector_count", 0), "filter": o.get("filter_present", False),
        } for o in ops])), hide_index=True, width="stretch")
        if a.get("blast_radius") is not None:
            # a count of points (ids named plus what a filter matches upstream)
            st.metric("Blast radius: points this request would touch", a["blast_radius"])
        if a.get("approvals"):
            st.caption("approved so far by "
                       + md_literal(", ".join(v["subject"] for v in a["approvals"])))
        context = data.approval_context(user, a)
        st.markdown(f"**{md_literal(requester)}'s recent sessions**")
        if context["recent_sessions"]:
            st.dataframe(visible_data(pd.DataFrame(context["recent_sessions"])[
                ["session_id", "started_at", "request_count", "actions", "collections",
                 "decisions", "denied_count"]]), hide_index=True, width="stretch")
        else:
            st.caption("none recorded")
        with st.form(f"decide-{a['approval_id']}"):
            reason = st.text_input("Reason (required, recorded)", key=f"reason-{a['approval_id']}")
            b = st.columns(2)
            approve = b[0].form_submit_button("Approve", type="primary",
                                              key=f"approve-{a['approval_id']}")
            deny = b[1].form_submit_button("Deny", key=f"deny-{a['approval_id']}")
        if approve or deny:
            decision = "approve" if approve else "deny"
            if not reason.strip():
                st.error("Give a reason: say what you checked.")
            else:
                try:
                    result = data.decide_approval(user, a["approval_id"], decision, reason)
                except ControlApiError as exc:
                    st.session_state["approval_outcome"] = (
                        "error", f"The gateway refused: {md_literal(exc.code)}: "
                        f"{md_literal(exc.reason)}"
                        + (f" (request {md_literal(exc.request_id)})" if exc.request_id else ""))
                else:
                    st.session_state["approval_outcome"] = (
                        "ok", f"Recorded: {decision} on {md_literal(a['approval_id'])}; "
                        f"status now {md_literal(result.get('status', '?'))}.")
                st.rerun()

st.subheader("Decided and expired")
done = {k: v for k, v in decided.items() if k != "pending"}
tabs = st.tabs([f"{s.capitalize()} ({len(rows)})" for s, rows in done.items()])
for tab, (status, rows) in zip(tabs, done.items(), strict=True):
    with tab:
        if rows:
            st.dataframe(visible_data(pd.DataFrame(rows)[
                ["approval_id", "kind", "requester_subject", "actions", "collections",
                 "approvers", "deniers", "requested_at", "decided_at", "reason"]]),
                hide_index=True, width="stretch")
        else:
            st.caption(f"no {status} approvals")
