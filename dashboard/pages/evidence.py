"""Evidence: choose filters, export a signed bundle, download it, and see the
result of verifying it against the pinned keys."""

from __future__ import annotations

import streamlit as st

from dashboard import data
from dashboard.text import md_literal, visible_data

user = data.page_user("evidence")
st.title("Evidence")
st.caption("A bundle holds the selected sessions' events (Parquet), bodies, signed "
           "checkpoints, inclusion and consistency proofs, and a signed manifest. "
           "Exporting is recorded (AuditViewed).")
with st.form("export"):
    c = st.columns(2)
    since = c[0].text_input("From (UTC, ISO 8601)", key="ev_since")
    until = c[1].text_input("Until (UTC, ISO 8601)", key="ev_until")
    d = st.columns(2)
    actor = d[0].text_input("Actor", key="ev_actor")
    collection = d[1].text_input("Collection", key="ev_collection")
    sessions = st.text_input("Session ids (comma-separated, optional)", key="ev_sessions")
    go = st.form_submit_button("Export bundle", type="primary")

if go:
    bar = st.progress(0.0, text="selecting sessions")

    def on_progress(stage: str, done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{stage}: {done} of {total}")

    try:
        exported = data.export_evidence(
            user, since=since, until=until, actor=actor, collection=collection,
            sessions=[x.strip() for x in sessions.split(",")], on_progress=on_progress)
    except (LookupError, ValueError, FileExistsError) as exc:
        bar.empty()
        st.error(md_literal(exc))
    else:
        bar.progress(1.0, text="done")
        st.session_state["evidence_result"] = exported

shown = st.session_state.get("evidence_result")
result = shown if isinstance(shown, dict) else None
if result:
    v = result["verification"]
    st.markdown(f"**{md_literal(result['name'])}** · {result['sessions']} session(s) · "
                + md_literal(", ".join(f"{k} {n}" for k, n in result["row_counts"].items())))
    if v["ok"] and result["gateway_vkeys"]:
        st.success(f"Verified: {v['events']} events, {v['checkpoints_verified']} checkpoint(s), "
                   f"{v['inclusion_verified']} inclusion and {v['consistency_verified']} "
                   "consistency proof(s).", icon=":material/verified:")
    elif v["ok"]:
        st.warning("The bundle verifies, but no gateway key is pinned: start the dashboard with "
                   "--vkey (embedguard keys show) to check its checkpoints' signatures.")
    else:
        st.error(f"Verification FAILED: {len(v['findings'])} finding(s)")
    if v["findings"]:
        with st.expander("Findings"):
            st.json(visible_data(v["findings"]))
    st.caption(f"export key {md_literal(result['export_vkey'])}")
    st.download_button("Download bundle", data=data.evidence_bytes(user, result["name"]),
                       file_name=result["name"], mime="application/zip", key="ev_download")
