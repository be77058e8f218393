"""`embedguard up` (what `make up` runs) brings up the embedded stack for real:
dev issuer, Chroma, the gateway in front of it; SIGTERM stops all of it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from capture.devidp import mint_token
from tests.support.services import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_up_runs_the_stack_and_stops_it(tmp_path: Path) -> None:
    idp, chroma, gw = free_port(), free_port(), free_port()
    log = tmp_path / "up.log"
    logf = log.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embedguard.cli",
            "up",
            "--data",
            str(tmp_path / "data"),
            "--idp-port",
            str(idp),
            "--chroma-port",
            str(chroma),
            "--gateway-port",
            str(gw),
        ],
        cwd=ROOT,
        stdout=logf,
        stderr=subprocess.STDOUT,
    )
    logf.close()  # the child has its own copy
    try:
        deadline = time.time() + 90
        while "stack is up" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.2)
        token = mint_token(f"http://127.0.0.1:{idp}", "alice", ["Vector-Read"])
        r = httpx.get(
            f"http://127.0.0.1:{gw}/api/v2/heartbeat",
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert httpx.get(f"http://127.0.0.1:{gw}/api/v2/heartbeat", timeout=30).status_code == 401
        assert (tmp_path / "data" / "events.db").exists()
        # the loader started by `up` moves alice's session into the warehouse
        deadline = time.time() + 120
        while True:
            listed = subprocess.run(
                [sys.executable, "-m", "embedguard.cli", "sessions", "list", "--actor", "alice",
                 "--warehouse", f"lake:{tmp_path / 'data' / 'lake'}", "--json"],
                cwd=ROOT, capture_output=True, text=True, timeout=120,
            )
            if listed.returncode == 0 and '"alice"' in listed.stdout:
                break
            assert proc.poll() is None and time.time() < deadline, (
                listed.stdout + listed.stderr + log.read_text()
            )
            time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    for port in (idp, chroma, gw):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
