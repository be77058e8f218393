"""Overview: requests over time by decision, denials and holds, pending
approvals, top actors and collections, the loader's lag."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.text import md_literal

user = data.page_user("overview")
st.title("Overview")
hours = st.segmented_control("Window", [6, 24, 24 * 7, 24 * 30], default=24,
                             format_func=lambda h: f"{h} h" if h < 48 else f"{h // 24} days")
view = data.overview(user, hours=int(hours or 24))
stats = pd.DataFrame(view["stats"])

pending = len(view["pending"])
cols = st.columns(5)
total = int(stats["requests"].sum()) if not stats.empty else 0
cols[0].metric("Requests", total)
cols[1].metric("Denied", int(stats["denied"].sum()) if not stats.empty else 0)
cols[2].metric("Held for approval",
               int(stats["approval_required"].sum()) if not stats.empty else 0)
cols[3].metric("Answered by the gateway", int(stats["blocked"].sum()) if not stats.empty else 0)
cols[4].metric("Pending approvals", pending)

st.subheader("Requests over time by decision")
if stats.empty:
    st.info("No requests recorded in this window.")
else:
    stats["allowed"] = (stats["requests"] - stats["denied"] - stats["approval_required"]
                        ).clip(lower=0)
    # allowed + held + denied partition the requests; "blocked" (answered by the
    # gateway itself) overlaps them, so it is a metric above, not a stacked colour
    long = stats.melt(id_vars=["bucket"], value_vars=["allowed", "approval_required", "denied"],
                      var_name="decision", value_name="count")
    long["bucket"] = pd.to_datetime(long["bucket"])
    chart = alt.Chart(long).mark_bar().encode(
        x=alt.X("bucket:T", title="time (UTC)"),
        y=alt.Y("count:Q", title="requests", axis=alt.Axis(tickMinStep=1, format="d")),
        color=alt.Color("decision:N", scale=alt.Scale(
            domain=["allowed", "approval_required", "denied"],
            range=["#4c9a2a", "#e0a800", "#c0392b"])),
        tooltip=["bucket:T", "decision:N", "count:Q"],
    )
    st.altair_chart(chart, width="stretch")

left, right = st.columns(2)
with left:
    st.subheader("Top actors")
    actors = pd.DataFrame(view["top_actors"])
    if actors.empty:
        st.caption("No actors in this window.")
    else:
        st.altair_chart(alt.Chart(actors).mark_bar().encode(
            x=alt.X("requests:Q", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("subject:N", sort="-x", title=None),
            tooltip=["subject", "requests", "denied"]), width="stretch")
with right:
    st.subheader("Top collections")
    colls = pd.DataFrame(view["top_collections"])
    if colls.empty:
        st.caption("No collections in this window.")
    else:
        st.altair_chart(alt.Chart(colls).mark_bar().encode(
            x=alt.X("requests:Q", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("collection:N", sort="-x", title=None),
            tooltip=["collection", "requests", "writes"]), width="stretch")


@st.fragment(run_every=10)
def loader_panel() -> None:
    st.subheader("Loader")
    report = data.loader_lag(user)
    c = st.columns(4)
    c[0].metric("Lag (events)", report.get("lag_total", 0))
    c[1].metric("Loaders running", report.get("running", 0))
    c[2].metric("Events/s (1 min)", report.get("events_per_s_1m", 0))
    c[3].metric("Dead letters", report.get("dead_letters", 0))
    parts = pd.DataFrame([{"partition": k, **v} for k, v in report.get("partitions", {}).items()])
    if not parts.empty and "lag" in parts:
        st.altair_chart(alt.Chart(parts).mark_bar().encode(
            x=alt.X("partition:N"), y=alt.Y("lag:Q", title="events not yet loaded",
                    axis=alt.Axis(tickMinStep=1, format="d")),
            tooltip=["partition", "loaded", "end", "lag"]), width="stretch")
    for problem in report.get("problems", []):
        st.caption(md_literal(problem))
    if report.get("last_error"):
        st.warning(f"Last loader error ({md_literal(report.get('last_error_at'))}): "
                   f"{md_literal(report['last_error'])}")


loader_panel()
