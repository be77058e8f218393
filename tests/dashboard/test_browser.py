"""The running dashboard in Debian's headless chromium: a real OIDC sign-in
through the dev issuer (its user picker, clicked), then every page, each saved
as a screenshot under tests/artifacts/ and checked for tracebacks and error
boxes in its DOM.

Chromium is driven over the DevTools protocol (tests/support/browser.py says
why `--screenshot` alone is not enough for a Streamlit app)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from capture.signing_keys import load_signing_key
from embedguard.cli_dashboard import dev_client_secret
from tests.dashboard.conftest import ROOT, Seeded
from tests.support.browser import Browser, chromium_binary, headless_chromium
from tests.support.services import free_port, wait_for_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_binary() is None,
                       reason="Debian chromium is not installed (apt-get install chromium; "
                              "`make test` installs it)"),
]

ARTIFACTS = ROOT / "tests" / "artifacts"
#: url path → what the page's title says
PAGES = {
    "": "Overview",
    "sessions": "Sessions",
    "session": "Session detail",
    "diff": "Diff",
    "replay": "Replay",
    "approvals": "Approvals",
    "lineage": "Lineage",
    "evidence": "Evidence",
    "policy": "Policy",
}
ERROR_MARKERS = ('data-testid="stException"', "Traceback (most recent call last)",
                 'data-testid="stAlertContentError"')


@pytest.fixture(scope="module")
def dashboard_url(seeded: Seeded, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    idp_data = seeded.data_dir / "idp-data"
    users_file = idp_data / "idp" / "users.yaml"
    users = yaml.safe_load(users_file.read_text())
    users["users"]["root"] = {"name": "Root Admin", "email": "root@example.com",
                              "groups": ["Vector-Admin", "Vector-Approve"]}
    users_file.write_text(yaml.safe_dump(users))  # the issuer re-reads it on change
    secret = dev_client_secret(idp_data)
    assert secret
    port = free_port()
    data = tmp_path_factory.mktemp("dash-data")
    log = data / "dashboard.log"
    env = {**os.environ, "EG_TEST_DASHBOARD_SECRET": secret,
           "EMBEDGUARD_TARGETS": '[{"name": "staging", "url": "%s", "production": false}]'
           % seeded.gateway.url}
    env.pop("EMBEDGUARD_DASHBOARD_TEST_SEAM", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "embedguard.cli", "dashboard", "--port", str(port),
             "--data", str(data), "--warehouse", seeded.warehouse_url, "--log", seeded.log_url,
             "--gateway", seeded.gateway.url, "--issuer", seeded.issuer,
             "--policy", str(seeded.policy), "--client-secret-env", "EG_TEST_DASHBOARD_SECRET",
             "--vkey", load_signing_key(seeded.data_dir / "gateway.key").verifier.vkey],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=120, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert secret not in text and "Traceback" not in text, text[-3000:]


def settle(b: Browser, title: str) -> None:
    """Wait until the page's script has finished and its title shows."""
    b.wait_for(
        "(() => { const h = [...document.querySelectorAll('h1')].map(e => e.innerText);"
        f" return h.some(t => t.includes({title!r}))"
        " && !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " && !document.querySelector('[data-testid=\"stSkeleton\"]'); })()",
        what=f"the {title} page")
    time.sleep(1.0)  # charts draw after the script ends


def test_sign_in_and_every_page(dashboard_url: str, seeded: Seeded, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    from tests.dashboard.test_app import alice_session

    sid = alice_session(seeded)
    with headless_chromium(tmp_path / "profile") as b:
        # the OIDC flow for real: app → dev issuer's picker → callback → app
        b.navigate(f"{dashboard_url}/?signin")
        b.wait_for("!!document.querySelector('button[name=user][value=root]')",
                   what="the dev issuer's user picker")
        assert b.evaluate("location.href").startswith(seeded.issuer + "/authorize")
        b.screenshot(ARTIFACTS / "dashboard-0-sign-in.png")
        b.evaluate("document.querySelector('button[name=user][value=root]').click()")
        b.wait_for("document.body.innerText.includes('Signed in as')", what="signed in")
        assert b.evaluate("location.href").startswith(dashboard_url)
        problems = []
        for n, (path, title) in enumerate(PAGES.items(), start=1):
            url = f"{dashboard_url}/{path}" + (f"?session={sid}" if path == "session" else "")
            b.navigate(url)
            settle(b, title)
            if path == "":
                b.wait_for("document.querySelectorAll('.vega-embed canvas, .vega-embed svg')"
                           ".length >= 3", what="the overview charts")
            b.screenshot(ARTIFACTS / f"dashboard-{n}-{path or 'overview'}.png")
            dom = b.dom()
            found = [m for m in ERROR_MARKERS if m in dom]
            if found:
                problems.append(f"{title}: {found}: {b.text()[:800]}")
            if path == "session":
                assert "Hash chain verified" in b.text()
            if path == "approvals":
                assert seeded.pending.get("deny", "") in b.text() or "Decided" in b.text()
        assert not problems, problems
        assert "Root Admin" in b.text()
