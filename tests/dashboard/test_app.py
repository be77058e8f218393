"""Every page of the dashboard under AppTest, against the warehouse of a real
recorded scenario (tests/dashboard/conftest.py): no exceptions, filters change
rows, approve and deny go through the gateway and are recorded, self-approval
shows the gateway's refusal, roles without access do not get pages or data,
and viewing recordings is itself recorded (AuditViewed)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import data
from dashboard.auth import AccessDenied, User, roles_for
from tests.dashboard.conftest import APP, SECRET_EMAIL, Seeded, load
from tests.dashboard.test_text import shown as displayed
from tests.support.approval_e2e import events_of, wait_for

AUDITOR = ("audrey", ["Vector-Audit"])
APPROVER = ("bob", ["Vector-Approve"])
ADMIN = ("root", ["Vector-Admin"])


def app(s: Seeded, who: tuple[str, list[str]], page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["embedguard_test_user"] = s.user(*who)
    at.run()
    if page is not None:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    """The page's text as displayed (recorded values in Markdown are escaped)."""
    parts: list[str] = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "title",
                 "subheader"):
        parts += [displayed(str(el.value)) for el in getattr(at, kind)]
    parts += [str(el.value) for el in at.code]
    parts += [displayed(str(e.label)) for e in at.expander]
    return "\n".join(parts)


def frame_rows(at: AppTest, index: int = 0) -> int:
    return len(at.dataframe[index].value)


def user_of(s: Seeded, who: tuple[str, list[str]]) -> User:
    sub, groups = who
    return User(sub, s.issuer, frozenset(groups), roles_for(groups))


def test_signed_out_shows_only_sign_in(dash_env: Seeded) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert [b.label for b in at.button] == ["Sign in"]
    assert [t.value for t in at.title] == ["embedguard"]
    assert not at.dataframe and not at.metric


def test_an_expired_sign_in_gets_the_sign_in_page_and_why(
    dash_env: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streamlit's cookie still says signed in; the ID token in it expired."""
    import time

    from dashboard.auth import TEST_SEAM_ENV

    monkeypatch.delenv(TEST_SEAM_ENV, raising=False)
    at = AppTest.from_file(APP, default_timeout=60)
    old = int(time.time()) - 86400
    at.user = {"is_logged_in": True, "sub": "root", "iss": dash_env.issuer,
               "groups": ["Vector-Admin"], "iat": old, "exp": old + 900}
    at.run()
    assert not at.exception
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.dataframe and not at.metric
    assert any("expired at" in str(i.value) for i in at.info), [i.value for i in at.info]


@pytest.mark.parametrize(("who", "pages"), [
    (AUDITOR, ["overview", "sessions", "session", "diff", "lineage", "evidence", "policy"]),
    (APPROVER, ["overview", "approvals", "policy"]),
    (ADMIN, list(data.PAGE_ROLES)),
    (("mallory", []), []),
])
def test_roles_decide_the_pages(dash_env: Seeded, who: tuple[str, list[str]],
                                pages: list[str]) -> None:
    assert data.pages_for(user_of(dash_env, who)) == pages


def test_overview_renders_charts(dash_env: Seeded) -> None:
    at = app(dash_env, AUDITOR)
    assert at.title[0].value == "Overview"
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Requests"]) > 0
    assert int(metrics["Pending approvals"]) >= 1
    assert int(metrics["Denied"]) >= 1  # mallory
    assert len(at.get("vega_lite_chart")) >= 3  # over time, actors, collections


def test_sessions_filters_change_rows_and_are_audited(dash_env: Seeded) -> None:
    at = app(dash_env, AUDITOR, "pages/sessions.py")
    everything = frame_rows(at)
    assert everything >= 3
    at.text_input(key="f_actor").input("alice")
    at.button[0].click()  # "Apply filters" (the form's submit button)
    at.run()
    assert not at.exception
    alice_only = frame_rows(at)
    assert 0 < alice_only < everything
    at.text_input(key="f_actor").input("")
    at.text_input(key="f_group").input("Vector-Approve")  # carol decided through the API
    at.button[0].click()
    at.run()
    assert not at.exception
    approvers = at.dataframe[0].value
    assert 0 < len(approvers) < everything and set(approvers["subject"]) <= {"carol", "bob"}
    at.text_input(key="f_group").input("")
    at.text_input(key="f_actor").input("nobody-at-all")
    at.button[0].click()
    at.run()
    assert "No session matches" in texts(at)
    viewed = events_of(dash_env.log_url, "AuditViewed")
    assert any(e.viewer_subject == "audrey" and e.what == "sessions"
               and '"actor": "alice"' in e.filters_json for e in viewed)
    assert all(e.envelope.gateway_id.startswith("dashboard:") for e in viewed)


def test_sessions_filter_by_body_substring(dash_env: Seeded) -> None:
    at = app(dash_env, AUDITOR, "pages/sessions.py")
    everything = frame_rows(at)
    at.text_input(key="f_body").input("beta roadmap")
    at.button[0].click()  # "Apply filters"
    at.run()
    assert not at.exception
    matching = at.dataframe[0].value
    assert 0 < len(matching) < everything
    # the matching bodies, as recorded, are listed under the table on request
    assert len(at.dataframe) == 1
    at.toggle(key="show_bodies").set_value(True).run()
    assert not at.exception
    assert len(at.dataframe) == 2 and frame_rows(at, -1) >= 1
    # the response bodies are stored masked: the secret is not found in them
    at.text_input(key="f_body").input(SECRET_EMAIL)
    at.button[0].click()
    at.run()
    assert not at.exception
    hits = at.dataframe[-1].value if "No recorded body" not in texts(at) else []
    assert all("response" != k for k in getattr(hits, "kind", []))
    at.text_input(key="f_body").input("no body contains this 7f3a")
    at.button[0].click()
    at.run()
    assert "No session matches" in texts(at)
    viewed = events_of(dash_env.log_url, "AuditViewed")
    assert any(e.what == "sessions" and '"body": "beta roadmap"' in e.filters_json
               for e in viewed)


def test_sessions_pages_and_counts_on_demand(dash_env: Seeded) -> None:
    auditor = user_of(dash_env, AUDITOR)
    total = data.sessions_total(auditor, {})
    rows, more = data.sessions_page(auditor, {}, page=0, page_size=2)
    assert len(rows) == 2 and more == (total > 2)
    seen = [r["session_id"] for r in rows]
    page = 1
    while more:
        rows, more = data.sessions_page(auditor, {}, page=page, page_size=2)
        seen += [r["session_id"] for r in rows]
        page += 1
    assert len(seen) == len(set(seen)) == total
    at = app(dash_env, AUDITOR, "pages/sessions.py")
    [count] = [b for b in at.button if b.label == "Count matches"]
    count.click()
    at.run()
    assert not at.exception
    assert f"of {total} matching" in texts(at)


def alice_session(s: Seeded) -> str:
    wh = data._warehouse(s.warehouse_url)
    from pipeline import queries

    rows = wh.run(queries.sessions_list, queries.SessionFilter(actor="alice"), limit=10)
    assert rows
    # the session of the recorded scenario: searches, reads and held writes
    return str(max(rows, key=lambda r: r["request_count"])["session_id"])


def test_session_detail_timeline_bodies_and_chain_badge(dash_env: Seeded) -> None:
    sid = alice_session(dash_env)
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["embedguard_test_user"] = dash_env.user(*AUDITOR)
    at.session_state["session_id"] = sid
    at.run()
    at.switch_page("pages/session.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("Hash chain verified" in s.value for s in at.success)
    labels = [displayed(e.label) for e in at.expander]
    assert any("/query" in label and "completed" in label for label in labels)
    assert any("/upsert" in label and "require_approval" in label and "held 202" in label
               for label in labels)
    shown = "\n".join(str(j.value) for j in at.json)
    assert "quarterly report" in shown or "roadmap" in shown
    assert SECRET_EMAIL not in shown  # the response as delivered: masked
    at.toggle(key="session_all_events").set_value(True)
    at.run()
    assert not at.exception
    types = list(at.dataframe[-1].value["type"])
    assert "RequestReceived" in types and "PolicyDecided" in types
    viewed = [e for e in events_of(dash_env.log_url, "AuditViewed")
              if e.what == "session" and e.target == sid and e.viewer_subject == "audrey"]
    assert len(viewed) == 1  # one look, one record, however many reruns and parts


def test_diff_of_two_requests(dash_env: Seeded) -> None:
    sid = alice_session(dash_env)
    wh = data._warehouse(dash_env.warehouse_url)
    from pipeline import queries

    reqs = [r for r in wh.run(queries.session_requests, sid) if r["status"] == 200]
    assert len(reqs) >= 2
    at = app(dash_env, AUDITOR, "pages/diff.py")
    at.text_input(key="diff_a").input(reqs[0]["request_id"])
    at.text_input(key="diff_b").input(reqs[1]["request_id"])
    at.button[0].click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert {m.label for m in at.metric} >= {"ids added", "ids removed", "ids changed"}
    # the same request against itself is identical
    at.text_input(key="diff_b").input(reqs[0]["request_id"])
    at.button[0].click()
    at.run()
    assert any("Identical" in s.value for s in at.success)


def test_two_sessions_chosen_on_the_sessions_page_open_in_diff(dash_env: Seeded) -> None:
    """Selecting two sessions links to Diff with both ids; the link's query
    parameters pre-fill the form and the comparison shows at once."""
    wh = data._warehouse(dash_env.warehouse_url)
    from pipeline import queries

    rows = [r for r in wh.run(queries.sessions_list, queries.SessionFilter(), limit=50)
            if r["request_count"]]
    assert len(rows) >= 2
    now_sid, then_sid = str(rows[0]["session_id"]), str(rows[1]["session_id"])
    at = app(dash_env, AUDITOR)
    at.query_params["then_session"] = then_sid
    at.query_params["now_session"] = now_sid
    at.switch_page("pages/diff.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.text_input(key="diff_sa").value == then_sid
    assert at.text_input(key="diff_sb").value == now_sid
    labels = [displayed(e.label) for e in at.expander]
    assert any(label.startswith("#0 ") for label in labels), (labels, texts(at))


def pending_ids(at: AppTest) -> str:
    return "\n".join(displayed(e.label) for e in at.expander) + texts(at)


def test_approve_and_deny_through_the_gateway(dash_env: Seeded) -> None:
    s = dash_env
    approve_id, deny_id = s.pending["approve"], s.pending["deny"]
    at = app(s, APPROVER, "pages/approvals.py")
    page = texts(at)
    assert approve_id in page and deny_id in page  # the pending queue, from the gateway
    assert "alice" in page
    # the blast radius is a count, shown as a metric (st.json of a number breaks
    # the browser's JSON viewer: "src property must be a valid json object")
    radius = [m for m in at.metric if m.label.startswith("Blast radius")]
    assert radius and all(int(m.value) >= 1 for m in radius), [m.label for m in at.metric]
    assert s.denied in "\n".join(str(df.value) for df in at.dataframe)  # decided: denied
    # a decision needs a reason
    at.button(key=f"approve-{approve_id}").click()
    at.run()
    assert any("Give a reason" in e.value for e in at.error)
    at.text_input(key=f"reason-{approve_id}").input("checked the two ids")
    at.button(key=f"approve-{approve_id}").click()
    at.run()
    assert not at.exception
    at.text_input(key=f"reason-{deny_id}").input("wrong collection")
    at.button(key=f"deny-{deny_id}").click()
    at.run()
    assert not at.exception
    decided = wait_for(s.log_url, lambda evs: {
        e.event.approval_id: e.event for e in evs
        if e.event.envelope.type == "ApprovalDecided"
        and e.event.approval_id in (approve_id, deny_id)} if sum(
            1 for e in evs if e.event.envelope.type == "ApprovalDecided"
            and e.event.approval_id in (approve_id, deny_id)) >= 2 else None,
        what="both decisions")
    assert decided[approve_id].decision == "approve"
    assert decided[approve_id].approver_subject == "bob"
    assert decided[deny_id].decision == "deny"
    assert decided[deny_id].reason == "wrong collection"


def test_an_approver_sees_only_approvals_the_gateway_shows_them(
    dash_env: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decided tabs come from the gateway (its may_see rule) for anyone but
    an admin: an approver of another team does not see the requester,
    collections and reasons of approvals that are not theirs to decide (before
    the fix they came from the warehouse, every approval to every approver)."""
    s = dash_env
    monkeypatch.setenv("EMBEDGUARD_DASHBOARD_ROLES", json.dumps({
        "auditor": ["Vector-Audit"], "approver": ["Vector-Approve", "Team-B-Approve"],
        "admin": ["Vector-Admin"]}))
    at = app(s, ("zoe", ["Team-B-Approve"]), "pages/approvals.py")
    shown = texts(at) + "\n".join(str(df.value) for df in at.dataframe)
    assert s.denied not in shown and "alice" not in shown
    assert "Nothing waits for a decision that you may take." in shown
    assert "pending in the warehouse" not in shown  # not even a count of others' approvals
    # the admin still sees every approval, from the warehouse
    at = app(s, ADMIN, "pages/approvals.py")
    assert s.denied in "\n".join(str(df.value) for df in at.dataframe)


def test_the_requesters_recent_sessions_shown_to_an_approver_are_audited(
    dash_env: Seeded,
) -> None:
    s = dash_env
    app(s, APPROVER, "pages/approvals.py")
    seen = wait_for(s.log_url, lambda evs: [
        e.event for e in evs if e.event.envelope.type == "AuditViewed"
        and e.event.what == "approval_context" and e.event.viewer_subject == "bob"] or None,
        what="AuditViewed approval_context")
    assert {e.target for e in seen} == {"alice"}


def test_self_approval_shows_the_gateways_refusal(dash_env: Seeded) -> None:
    s = dash_env
    # alice is also an approver here, yet she requested these writes
    alice = ("alice", ["Vector-Read", "Vector-Approve"])
    at = app(s, alice, "pages/approvals.py")
    target = next(iter(s.pending.values()))
    pending_now = pending_ids(at)
    if target not in pending_now:  # decided by the test above: ask for a new one
        from tests.support.approval_e2e import CHROMA_T, api

        ids = api(s.gateway.url, "POST", f"{CHROMA_T}/collections", s.token("root", [
            "Vector-Admin"]), {"name": "batch-self", "get_or_create": True}).json()["id"]
        r = api(s.gateway.url, "POST", f"{CHROMA_T}/collections/{ids}/upsert",
                s.token("alice", ["Vector-Read"]), {"ids": ["x"], "embeddings": [[0.1, 0.2, 0.3]]})
        assert r.status_code == 202, r.text
        target = r.json()["approval_id"]
        at = app(s, alice, "pages/approvals.py")
    at.text_input(key=f"reason-{target}").input("looks fine to me")
    at.button(key=f"approve-{target}").click()
    at.run()
    assert not at.exception
    refusal = [displayed(e.value) for e in at.error]
    assert any(r.startswith("The gateway refused:") for r in refusal), refusal
    assert not any(e.event.envelope.type == "ApprovalDecided" and e.event.approval_id == target
                   and e.event.approver_subject == "alice"
                   for e in __import__("tests.support.events", fromlist=["x"]).read_events(
                       s.log_url))


def test_lineage_by_point_and_by_approval(dash_env: Seeded) -> None:
    at = app(dash_env, AUDITOR, "pages/lineage.py")
    at.text_input(key="lin_collection").input(dash_env.collection)
    at.text_input(key="lin_point").input("p-1")
    at.button[0].click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    rows = at.dataframe[0].value
    assert list(rows["subject"]) == ["root"] and list(rows["action"]) == ["write"]
    at.text_input(key="lin_approval").input(dash_env.denied)
    at.button[1].click()
    at.run()
    assert any("denied" in displayed(m.value) for m in at.markdown)


def test_session_detail_links_written_points_to_lineage(dash_env: Seeded) -> None:
    """A write in Session detail links each point it named to Lineage; the
    link's query parameters pre-fill Lineage, which shows who wrote it."""
    wh = data._warehouse(dash_env.warehouse_url)
    from pipeline import queries

    sids = [r["session_id"] for r in wh.run(queries.sessions_list,
                                             queries.SessionFilter(actor="root"), limit=20)]
    at = None
    wanted = f"Lineage of p-1 in {dash_env.collection}"
    for sid in sids:
        at = app(dash_env, AUDITOR)
        at.query_params["session"] = sid
        at.switch_page("pages/session.py")
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        labels = [displayed(el.proto.label) for el in at.get("page_link")]
        if wanted in labels:
            break
    else:
        raise AssertionError(f"no session of root links {wanted!r}")
    at = app(dash_env, AUDITOR)
    at.query_params["collection"] = dash_env.collection
    at.query_params["point"] = "p-1"
    at.switch_page("pages/lineage.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    rows = at.dataframe[0].value
    assert list(rows["subject"]) == ["root"] and list(rows["action"]) == ["write"]


def test_policy_page_and_simulator(dash_env: Seeded) -> None:
    at = app(dash_env, APPROVER, "pages/policy.py")
    assert "ds-change" in "\n".join(str(df.value) for df in at.dataframe)
    at.text_input(key="sim_subject").input("dave")
    at.text_input(key="sim_groups").input("Vector-Read")
    at.text_area(key="sim_ops").input("write:docs-main:p-9")
    at.button[0].click()
    at.run()
    assert not at.exception
    assert any("require_approval" in displayed(w.value) for w in at.warning)
    assert any("ds-change" in c.value for c in at.code)


@pytest.mark.parametrize(("who", "page"), [
    (APPROVER, "pages/sessions.py"),
    (APPROVER, "pages/session.py"),
    (AUDITOR, "pages/approvals.py"),
    (AUDITOR, "pages/replay.py"),
])
def test_a_role_without_access_gets_no_page(dash_env: Seeded, who: tuple[str, list[str]],
                                            page: str) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["embedguard_test_user"] = dash_env.user(*who)
    at.run()
    try:
        at.switch_page(page)
        at.run()
    except Exception:  # noqa: BLE001 - a page outside the navigation may not resolve
        pass
    assert not at.exception
    # whatever Streamlit shows instead, it is not that page's content
    assert at.title[0].value != {"pages/sessions.py": "Sessions",
                                 "pages/session.py": "Session detail",
                                 "pages/approvals.py": "Approvals",
                                 "pages/replay.py": "Replay"}[page] or at.error


@pytest.mark.parametrize(("call", "args"), [
    (data.sessions_page, ({},)),
    (data.session_detail, ("s",)),
    (data.body_search, ("x",)),
    (data.sessions_total, ({},)),
    (data.lineage_by_point, ("c", "p")),
    (data.diff_requests, ("a", "b")),
])
def test_data_functions_refuse_an_approver(call: Any, args: tuple[Any, ...],
                                           dash_env: Seeded) -> None:
    with pytest.raises(AccessDenied, match="needs the role auditor or admin"):
        call(user_of(dash_env, APPROVER), *args)


def test_approval_functions_refuse_an_auditor(dash_env: Seeded) -> None:
    auditor = user_of(dash_env, AUDITOR)
    with pytest.raises(AccessDenied):
        data.decide_approval(auditor, "x", "approve", "r")
    with pytest.raises(AccessDenied):
        data.approvals_pending(auditor)
    with pytest.raises(AccessDenied):
        data.simulate_policy(user_of(dash_env, ("mallory", [])), subject="a", groups=[],
                             operations=["read:x"])


def test_audit_views_load_into_the_warehouse(dash_env: Seeded) -> None:
    """AuditViewed events are ordinary, chained events: the loader projects them."""
    app(dash_env, AUDITOR, "pages/sessions.py")
    load(dash_env.log_url, dash_env.warehouse_url, dash_env.data_dir)
    from pipeline import queries
    from pipeline.warehouse import open_warehouse

    with open_warehouse(dash_env.warehouse_url) as wh:
        rows = queries.events_by_type(wh, "AuditViewed", limit=100)
    assert rows and all(r["session_id"].startswith("dashboard:") for r in rows)


def test_replay_read_only_and_refused_writes_against_production(dash_env: Seeded) -> None:
    sid = alice_session(dash_env)
    at = app(dash_env, ADMIN, "pages/replay.py")
    at.text_input(key="replay_session").input(sid)
    at.selectbox(key="replay_target").select("staging")
    at.radio(key="replay_mode").set_value("read-only")
    at.button[0].click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    metrics = {m.label: int(m.value) for m in at.metric}
    assert metrics["replayed"] >= 2 and metrics["skipped"] >= 1  # the held upserts
    steps = at.dataframe[0].value
    assert any(str(r).startswith("skipped") for r in steps["result"])
    assert any(r in ("identical", "different") for r in steps["result"])
    # writes against production are refused by the replayer
    at.selectbox(key="replay_target").select("prod")
    at.radio(key="replay_mode").set_value("include writes")
    at.button[0].click()
    at.run()
    assert not at.exception
    assert any(displayed(e.value).startswith("Refused:") and "production" in displayed(e.value)
               for e in at.error)


def test_evidence_export_download_and_verification(dash_env: Seeded) -> None:
    at = app(dash_env, AUDITOR, "pages/evidence.py")
    at.text_input(key="ev_actor").input("alice")
    at.button[0].click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    result = at.session_state["evidence_result"]
    assert result["sessions"] >= 1 and result["name"].endswith(".zip")
    assert result["verification"]["ok"], result["verification"]["findings"]
    assert at.get("download_button")
    bundle = (dash_env.data_dir / "exports" / result["name"]).read_bytes()
    assert bundle[:2] == b"PK" and SECRET_EMAIL.encode() not in bundle
    viewed = events_of(dash_env.log_url, "AuditViewed")
    assert any(e.what == "evidence_export" and e.target == result["name"]
               and e.viewer_subject == "audrey" and '"actor": "alice"' in e.filters_json
               for e in viewed)


def test_an_unreadable_warehouse_is_a_clear_message(dash_env: Seeded, tmp_path: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDGUARD_WAREHOUSE", f"lake:{tmp_path / 'no-lake-here'}")
    data.config.clear()
    try:
        at = app(dash_env, AUDITOR)  # no exception box, no traceback
        assert any("The warehouse cannot be read" in displayed(e.value)
                   and "embedguard loader" in displayed(e.value) for e in at.error)
    finally:
        data.config.clear()
