"""Replay: send a recorded session to a configured target, read-only or with
its writes (never against production), and see the per-request diff report."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.text import md_literal, visible_data

user = data.page_user("replay")
st.title("Replay")
targets = data.replay_targets(user)
if not targets:
    st.info("No replay target is configured: add [[targets]] (name, url, production) to "
            "embedguard.toml, or set EMBEDGUARD_TARGETS.")
    st.stop()

with st.form("replay"):
    session_id = st.text_input("Session id", value=st.session_state.get("session_id", ""),
                               key="replay_session")
    target = st.selectbox(
        "Target", [t["name"] for t in targets], key="replay_target",
        format_func=lambda n: next(f"{t['name']} · {t['url']}"
                                   + (" · production" if t["production"] else "")
                                   for t in targets if t["name"] == n))
    mode = st.radio("Mode", ["read-only", "include writes"], horizontal=True, key="replay_mode",
                    help="Writes and deletes are never replayed against a production target.")
    run = st.form_submit_button("Replay", type="primary")

if run and session_id.strip():
    from replay.replayer import ReplayError
    from replay.sessions import SessionNotFound

    bar = st.progress(0.0, text="starting")

    def on_step(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"{done} of {total} request(s)")

    try:
        report = data.replay(user, session_id.strip(), target,
                             include_writes=mode == "include writes", on_step=on_step)
    except (ReplayError, SessionNotFound) as exc:
        bar.empty()
        st.error(f"Refused: {md_literal(exc)}")
    else:
        bar.progress(1.0, text="done")
        s = report["summary"]
        c = st.columns(5)
        for col, key in zip(c, ["replayed", "skipped", "identical", "different", "errors"],
                            strict=True):
            col.metric(key, s[key])
        if not report["chain_ok"]:
            st.warning("The recorded session's hash chain does not verify; compare with care.")
        rows = [{
            "#": step["index"], "method": step["method"], "path": step["path"],
            "actions": ", ".join(step["actions"]),
            "result": (step["skipped_reason"] and f"skipped: {step['skipped_reason']}")
            or step["error"]
            or ("identical" if step["diff"] and step["diff"]["identical"] else "different"),
            "status then → now": f"{step['status_then']} → {step['status_now']}",
            "ids changed": ", ".join((step["diff"] or {}).get("changed_ids", [])),
            "ids added": ", ".join((step["diff"] or {}).get("added_ids", [])),
            "ids removed": ", ".join((step["diff"] or {}).get("removed_ids", [])),
            "note": step.get("note") or (f"sent to {step['path_sent']} (the target's "
                                         "collection UUID)" if step.get("path_sent") else ""),
        } for step in report["steps"]]
        st.dataframe(visible_data(pd.DataFrame(rows)), hide_index=True, width="stretch")
