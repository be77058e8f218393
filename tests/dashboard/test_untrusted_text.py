"""The pages show what clients chose (subjects, session ids, collections, paths,
point ids, rule names, reasons, search terms, ids typed or linked) as typed:
Streamlit's Markdown in text, captions, alerts and labels must not style them,
link them, load images for them or turn them into emoji, icons or LaTeX.

A lake holds sessions whose stored values are Markdown (tests/embedguard/
hostile.py's recorder, with Markdown values added); the pages run under
AppTest and every Markdown source they send is checked with test_text's
rules. The approvals console is checked against the real gateway of the
recorded scenario (conftest.py): a requester whose name and request are
Markdown."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import data
from schemas.chain import EventStamper
from tests.dashboard.conftest import APP, Seeded, load
from tests.dashboard.test_text import html_of, shown, streamlit_problems
from tests.embedguard import hostile
from tests.support.approval_e2e import CHROMA_T, api

SUBJECT = "**APPROVED by security team** :skull: $x^2$"
COLLECTION = "![x](http://attacker.test/pixel)"
SESSION = "s-:green[verified]-<b>x</b>"
OTHER_SUBJECT = ":streamlit: -> :material/check_circle: _signed_ [ok](http://attacker.test)"
SEARCH = "![b](http://attacker.test/b) :skull:"
MISSING_POINT = ":red[gone] `p`"
USER_NAME = "**root** :crown:"
AUDITOR = {"subject": "audrey", "issuer": "https://idp.test", "groups": ["Vector-Audit"],
           "name": USER_NAME}
T0 = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
#: shown as "aliceexe.jpg" and "docs" unless the override and the zero-width
#: space are made visible
BIDI_SUBJECT = "alice\u202egpj.exe"
BIDI_COLLECTION = "do\u200bcs"
BIDI_SESSION = "s-bidi\u2066"


def markdown_lake(root: Path) -> str:
    """Three sessions: SUBJECT writes to COLLECTION in SESSION (request r-md),
    hostile.py's styled subject writes to its collection (r-evil), and
    OTHER_SUBJECT writes to "docs" (r-other). Each writes point hostile.POINT."""
    stamper = EventStamper("gw-markdown")
    stamped = hostile.write_request(stamper, SESSION, "r-md", SUBJECT, COLLECTION, T0)
    stamped += hostile.write_request(stamper, hostile.SESSION, "r-evil", hostile.STYLED_SUBJECT,
                              hostile.COLLECTION, T0 + timedelta(seconds=1))
    stamped += hostile.write_request(stamper, "s-other", "r-other", OTHER_SUBJECT, "docs",
                              T0 + timedelta(seconds=2))
    stamped += hostile.write_request(stamper, BIDI_SESSION, "r-bidi", BIDI_SUBJECT,
                                     BIDI_COLLECTION, T0 + timedelta(seconds=3))
    return hostile.lake_of(root, stamped, "sqlite:markdown-test")


@pytest.fixture(scope="module")
def lake_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return markdown_lake(tmp_path_factory.mktemp("markdown") / "lake")


@pytest.fixture
def lake_env(lake_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in {
        "EMBEDGUARD_WAREHOUSE": lake_url,
        "EMBEDGUARD_LOG": f"sqlite:{tmp_path / 'events.db'}",
        "EMBEDGUARD_DATA_DIR": str(tmp_path),
        "EMBEDGUARD_DASHBOARD_TEST_SEAM": "1",
        "EMBEDGUARD_GATEWAY_VKEYS": "",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("EMBEDGUARD_GATEWAY_URL", "EMBEDGUARD_POLICY", "EMBEDGUARD_TARGETS",
                 "EMBEDGUARD_DASHBOARD_ROLES"):
        monkeypatch.delenv(name, raising=False)
    data.config.clear()  # a cache_resource: other tests' environment otherwise
    yield lake_url
    data.config.clear()


def sources(at: AppTest) -> list[str]:
    """Every Markdown source the run sent: text, captions, alerts and labels."""
    out: list[str] = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success"):
        out += [str(el.value) for el in getattr(at, kind)]
    for kind in ("expander", "tabs", "toggle", "metric", "button", "page_link", "checkbox"):
        out += [str(el.label) for el in getattr(at, kind)]
    return out


def check(at: AppTest, *expected: str) -> list[str]:
    """No source is read by Streamlit as more than Markdown, none links or loads
    anything, and each expected value is shown as typed; the texts shown."""
    assert not at.exception, [e.message for e in at.exception]
    found = sources(at)
    for source in found:
        assert streamlit_problems(source) == [], source
        rendered = html_of(source)
        assert "<a " not in rendered and "<img" not in rendered, source
    texts = [shown(s) for s in found]
    for value in expected:
        assert any(value in t for t in texts), (value, texts)
    return texts


def run(page: str | None = None, **state: Any) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["embedguard_test_user"] = AUDITOR
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page is not None:
        at.switch_page(page)
        at.run()
    return at


def test_overview_and_the_signed_in_name(lake_env: str) -> None:
    check(run(), USER_NAME)


def test_sessions_search_term(lake_env: str) -> None:
    at = run("pages/sessions.py")
    check(at)
    assert set(at.dataframe[0].value["subject"]) >= {SUBJECT, OTHER_SUBJECT}  # cells: plain
    at.text_input(key="f_body").input(SEARCH)
    at.button[0].click()  # "Apply filters"
    at.run()
    check(at, repr(SEARCH))
    at.toggle(key="show_bodies").set_value(True).run()
    check(at, f"Show the recorded bodies containing {SEARCH!r}",
          f"No recorded body contains {SEARCH!r}.")


@pytest.mark.parametrize(("session", "subject", "collection"), [
    (SESSION, SUBJECT, COLLECTION),
    (hostile.SESSION, hostile.STYLED_SUBJECT, hostile.COLLECTION),
    ("s-other", OTHER_SUBJECT, "docs"),
])
def test_session_detail(lake_env: str, session: str, subject: str, collection: str) -> None:
    at = run("pages/session.py", session_id=session)
    texts = check(at, subject, f"/collections/{collection}/points",
                  f"Lineage of {hostile.POINT} in {collection}", "[b]writers[/b]", "[/]")
    assert any(f"PUT /collections/{collection}/points · write {collection}" in t
               for t in texts)


def test_direction_overrides_and_zero_width_characters_are_shown(lake_env: str) -> None:
    at = run("pages/sessions.py")
    check(at)
    subjects = set(at.dataframe[0].value["subject"])
    assert "alice⟨U+202E⟩gpj.exe" in subjects and BIDI_SUBJECT not in subjects
    assert "s-bidi⟨U+2066⟩" in set(at.dataframe[0].value["session_id"])
    at = run("pages/session.py", session_id=BIDI_SESSION)  # looked up as stored
    texts = check(at, "alice⟨U+202E⟩gpj.exe", "/collections/do⟨U+200B⟩cs/points")
    assert not any(c in t for t in texts for c in "\u202e\u200b\u2066")
    assert all(c not in str(cell) for df in at.dataframe for col in df.value
               for cell in df.value[col] for c in "\u202e\u200b\u2066")


def test_an_unknown_session_id_typed_or_linked(lake_env: str) -> None:
    check(run("pages/session.py", session_id=MISSING_POINT),
          f"No session {MISSING_POINT} in the warehouse")


def test_lineage(lake_env: str) -> None:
    at = run("pages/lineage.py")
    at.text_input(key="lin_collection").input(COLLECTION)
    at.text_input(key="lin_point").input(hostile.POINT)
    at.button[0].click()
    at.run()
    check(at)
    assert set(at.dataframe[0].value["subject"]) == {SUBJECT}
    at.text_input(key="lin_point").input(MISSING_POINT)
    at.button[0].click()
    at.run()
    check(at, f"No recorded write or delete of {MISSING_POINT} in {COLLECTION}.")
    at.text_input(key="lin_approval").input(SESSION)
    at.button[1].click()
    at.run()
    check(at, f"No approval {SESSION} in the warehouse.")


def test_diff_of_two_requests_and_two_sessions(lake_env: str) -> None:
    at = run("pages/diff.py")
    at.text_input(key="diff_a").input("r-md")
    at.text_input(key="diff_b").input("r-evil")
    at.button[0].click()
    at.run()
    check(at, f"PUT /collections/{COLLECTION}/points",
          f"PUT /collections/{hostile.COLLECTION}/points")
    at.text_input(key="diff_sa").input(SESSION)
    at.text_input(key="diff_sb").input(hostile.SESSION)
    at.button[1].click()
    at.run()
    check(at, f"PUT /collections/{COLLECTION}/points ↔ PUT /collections/"
              f"{hostile.COLLECTION}/points")
    at.text_input(key="diff_sb").input(MISSING_POINT)
    at.button[1].click()
    at.run()
    check(at, MISSING_POINT)


# -- the approvals console, with the recorded scenario's real gateway ---------------------

REQUESTER = "**eve** :white_check_mark: [trusted](http://attacker.test)"
#: the approval's reason names the target, query included
QUERY = "note=**APPROVED**![p](http://attacker.test/p):green[ok]"


def test_approvals_console(dash_env: Seeded) -> None:
    s = dash_env
    token = s.token(REQUESTER, ["Vector-Read"])
    r = api(s.gateway.url, "POST",
            f"{CHROMA_T}/collections/{s.collection_id}/upsert?{QUERY}", token,
            {"ids": ["md-1"], "embeddings": [[0.1, 0.2, 0.3]]})
    assert r.status_code == 202, r.text
    approval_id = r.json()["approval_id"]
    load(s.log_url, s.warehouse_url, s.data_dir)
    data.config.clear()
    try:
        at = AppTest.from_file(APP, default_timeout=120)
        at.session_state["embedguard_test_user"] = s.user("bob", ["Vector-Approve"])
        at.run()
        at.switch_page("pages/approvals.py")
        at.run()
        texts = check(at, f"request by {REQUESTER} · write {s.collection}",
                      f"{REQUESTER}'s recent sessions", f"approval {approval_id} ·")
        assert any(t.startswith("Requester's reason: ") and QUERY in t for t in texts), texts
    finally:
        data.config.clear()
