"""Diff: two recorded requests (or two sessions) side by side, with the
replay module's structured diff; added, removed, moved and changed ids."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard import data
from dashboard.text import md_literal, visible, visible_data

user = data.page_user("diff")
st.title("Diff")


def show_diff(diff: dict[str, Any]) -> None:
    if diff["identical"]:
        st.success("Identical (by the replay rules: volatile fields ignored, scores within "
                   "tolerance).")
        return
    c = st.columns(4)
    for col, key, label in zip(c, ["added_ids", "removed_ids", "moved_ids", "changed_ids"],
                               ["added", "removed", "moved", "changed"], strict=True):
        col.metric(f"ids {label}", len(diff[key]))
    for key, colour in (("added_ids", "green"), ("removed_ids", "red"), ("moved_ids", "orange"),
                        ("changed_ids", "violet")):
        if diff[key]:
            st.markdown(f"**{key.split('_')[0]}:** "
                        + " ".join(f":{colour}-background[{md_literal(i)}]"
                                   for i in diff[key]))
    if diff["status_then"] != diff["status_now"]:
        st.warning(f"status {md_literal(diff['status_then'])} → "
                   f"{md_literal(diff['status_now'])}")
    if diff["structural"]:
        with st.expander("Structural differences"):
            st.json(visible_data(diff["structural"]))
    if diff.get("note"):
        st.caption(md_literal(diff["note"]))


# Links from the Sessions page (two selected sessions) and Session detail (a request)
# arrive as query parameters; they only pre-fill the forms.
for param, key in (("then_request", "diff_a"), ("now_request", "diff_b"),
                   ("then_session", "diff_sa"), ("now_session", "diff_sb")):
    if param in st.query_params and key not in st.session_state:
        st.session_state[key] = st.query_params[param]
if "then_session" in st.query_params:
    st.info("Comparing the two sessions chosen on the Sessions page: see the "
            "**Two sessions** tab.")

by_request, by_session = st.tabs(["Two requests", "Two sessions"])
with by_request:
    with st.form("diff_requests"):
        c = st.columns(2)
        a = c[0].text_input("Request id (then)", key="diff_a")
        b = c[1].text_input("Request id (now)", key="diff_b")
        st.form_submit_button("Compare")
    if a and b:
        try:
            out = data.diff_requests(user, a.strip(), b.strip())
        except LookupError as exc:
            st.error(md_literal(exc))
        else:
            show_diff(out["diff"])
            left, right = st.columns(2)
            for col, side in ((left, "then"), (right, "now")):
                with col:
                    req = out[side]["request"]
                    st.markdown(f"**{side}** · {md_literal(req['received_at'])} · "
                                f"{md_literal(req['method'])} {md_literal(req['path'])} · "
                                f"status {md_literal(req.get('status'))}")
                    body = out[side]["body"]
                    if isinstance(body, dict | list):
                        st.json(visible_data(body))
                    else:
                        st.code(visible(body) if body is not None else "(no body stored)")
with by_session:
    with st.form("diff_sessions"):
        c = st.columns(2)
        sa = c[0].text_input("Session id (then)", key="diff_sa")
        sb = c[1].text_input("Session id (now)", key="diff_sb")
        st.form_submit_button("Compare")
    if sa and sb:
        try:
            pairs = data.diff_sessions(user, sa.strip(), sb.strip())
        except LookupError as exc:
            st.error(md_literal(exc))
        else:
            for p in pairs:
                then, now = p["then"], p["now"]
                label = (f"#{p['index']} "
                         + (md_literal(f"{then['method']} {then['path']}") if then else "(none)")
                         + " ↔ "
                         + (md_literal(f"{now['method']} {now['path']}") if now else "(none)"))
                diff = p.get("diff")
                icon = (":material/check:" if diff and diff["identical"]
                        else ":material/difference:")
                with st.expander(label, icon=icon):
                    if diff is None:
                        st.warning("only one side has a request at this position")
                    else:
                        show_diff(diff)
