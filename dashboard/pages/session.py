"""Session detail: the timeline of requests with identity, decision, approval
and status; each step expands to the request and response as delivered
(masked); a badge tells whether the session's hash chain verifies."""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from dashboard import data
from dashboard.text import md_literal, visible, visible_data

#: point ids linked to Lineage per request (a bulk import names thousands)
MAX_LINEAGE_LINKS = 5


def lineage_links(req: dict[str, Any]) -> None:
    """Links to Lineage for the points a write or delete named, and its approval."""
    if req.get("approval_id"):
        st.page_link("pages/lineage.py",
                     label=f"What approval {md_literal(req['approval_id'])} released",
                     icon=":material/account_tree:",
                     query_params={"approval": str(req["approval_id"])})
    if not set(req.get("actions") or []) & {"write", "delete"}:
        return
    try:
        operations = json.loads(req.get("operations_json") or "[]")
    except ValueError:
        return
    points = [(str(op.get("collection")), str(i)) for op in operations
              if isinstance(op, dict) and op.get("action") in ("write", "delete")
              and op.get("collection") for i in (op.get("ids") or [])]
    for collection, point in points[:MAX_LINEAGE_LINKS]:
        st.page_link("pages/lineage.py",
                     label=f"Lineage of {md_literal(point)} in {md_literal(collection)}",
                     icon=":material/account_tree:",
                     query_params={"collection": collection, "point": point})
    if len(points) > MAX_LINEAGE_LINKS:
        st.caption(f"… and {len(points) - MAX_LINEAGE_LINKS} more point(s): look them up "
                   "on the Lineage page.")

user = data.page_user("session")
st.title("Session detail")
default = st.query_params.get("session") or st.session_state.get("session_id", "")
session_id = st.text_input("Session id", value=default, key="session_input").strip()
if not session_id:
    st.info("Pick a session on the Sessions page, or paste its id.")
    st.stop()

detail = data.session_detail(user, session_id)
summary = detail["summary"]
if summary is None:
    st.warning(f"No session {md_literal(session_id)} in the warehouse (is the loader behind?).")
    st.stop()

chain = detail["chain"]
head = st.columns([3, 2])
head[0].markdown(f"**{md_literal(summary.get('subject') or 'unknown subject')}** from "
                 f"{md_literal(summary.get('client_address') or '?')} · started "
                 f"{md_literal(summary['started_at'])} "
                 f"· {md_literal(summary['request_count'])} request(s)")
if chain["ok"]:
    head[1].success(f"Hash chain verified ({chain['events']} events)", icon=":material/verified:")
else:
    head[1].error("Hash chain does NOT verify: " + md_literal("; ".join(chain["problems"][:3])),
                  icon=":material/gpp_bad:")

bodies = data.session_bodies(
    user, session_id,
    [sha for req in detail["requests"]
     for sha in (req.get("request_body_sha256"), req.get("response_body_sha256")) if sha])


def show_body(sha: str | None, missing: str) -> None:
    if not sha:
        st.caption(missing)
        return
    body = bodies.get(sha)
    if body is None:
        st.caption("body not stored (expired, redacted or over the size limit)")
    elif isinstance(body, dict | list):
        st.json(visible_data(body), expanded=False)
    else:
        st.code(visible(body))


STATE_ICON = {"completed": ":material/check_circle:", "blocked": ":material/block:",
              "held": ":material/hourglass_top:", "forwarded": ":material/arrow_forward:",
              "received": ":material/inbox:"}
for req in detail["requests"]:
    state = req["state"]
    if req.get("decision") == "require_approval" and state == "blocked" and req.get("approval_id"):
        state = "held"  # answered 202 by the gateway: waiting for (or released by) an approval
    label = (f"{md_literal(req['received_at'])} · {md_literal(req['method'])} "
             f"{md_literal(req['path'])} · "
             f"{md_literal(', '.join(req.get('actions') or []) or '-')} "
             f"{md_literal(', '.join(req.get('collections') or []))} · decision "
             f"{md_literal(req.get('decision') or '-')} · {md_literal(state)}"
             + (f" {md_literal(req['status'])}" if req.get("status") else ""))
    with st.expander(label, icon=STATE_ICON.get(state, ":material/help:")):
        c = st.columns(4)
        c[0].markdown(f"**identity** {md_literal(req.get('subject') or '-')}")
        c[1].markdown(f"**rules** {md_literal(', '.join(req.get('matched_rules') or []) or '-')}")
        c[2].markdown(f"**approval** {md_literal(req.get('approval_id') or '-')}"
                      + (f" · ticket {md_literal(req['ticket_id'])}" if req.get("ticket_id")
                         else "")
                      + (f" · grant {md_literal(req['grant_id'])}" if req.get("grant_id") else ""))
        c[3].markdown(f"**latency** {(req.get('latency_us') or 0) / 1000:.1f} ms"
                      f" · request id {md_literal(req['request_id'])}")
        st.page_link("pages/diff.py", label="Compare this request with another",
                     icon=":material/difference:",
                     query_params={"then_request": str(req["request_id"])})
        lineage_links(req)
        if req.get("reasons"):
            st.caption(md_literal("; ".join(req["reasons"])))
        if req.get("blocked_reason"):
            st.warning(f"Blocked at {md_literal(req.get('blocked_stage'))}: "
                       f"{md_literal(req['blocked_reason'])}")
        left, right = st.columns(2)
        with left:
            st.markdown("**Request**")
            show_body(req.get("request_body_sha256"), "no body")
        with right:
            st.markdown("**Response as delivered (masked)**")
            if req.get("masked_fields"):
                st.caption("masked: " + md_literal(", ".join(req["masked_fields"])))
            show_body(req.get("response_body_sha256"), "no response recorded")

if st.toggle("Show every event of the session (chain order)", key="session_all_events"):
    st.dataframe(visible_data(
        [{k: e[k] for k in ("seq", "type", "occurred_at", "request_id", "outcome", "status",
                            "event_id")} for e in data.session_events(user, session_id)]),
        hide_index=True, width="stretch")
