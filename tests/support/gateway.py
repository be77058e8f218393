"""Start a real `embedguard gateway` process for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.services import free_port, wait_for_port

__all__ = ["GatewayProcess", "UPSTREAM_SECRET", "gateway_in_process", "gateway_process"]

#: The upstream API key the gateway holds. Tests grep events, logs and
#: responses for it: it must never appear.
UPSTREAM_SECRET = "eg-upstream-secret-7f3a9c1d2b"


@dataclass
class GatewayProcess:
    url: str
    port: int
    log_url: str
    stderr_path: Path
    proc: subprocess.Popen[bytes]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@contextlib.contextmanager
def gateway_process(
    tmp: Path,
    *,
    upstream: str,
    kind: str,
    policy: Path,
    issuer: str,
    log_url: str | None = None,
    audience: str = "embedguard",
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[GatewayProcess]:
    port = free_port()
    log_url = log_url or f"sqlite:{tmp / 'events.db'}"
    stderr_path = tmp / f"gateway-{port}.log"
    args = [
        sys.executable,
        "-m",
        "embedguard.cli",
        "gateway",
        "--upstream",
        upstream,
        "--listen",
        f"127.0.0.1:{port}",
        "--kind",
        kind,
        "--policy",
        str(policy),
        "--log",
        log_url,
        "--issuer",
        issuer,
        "--audience",
        audience,
        "--credential-env",
        "EG_TEST_UPSTREAM_KEY",
        "--gateway-id",
        f"gw-test-{port}",
        *(extra_args or []),
    ]
    if "--signing-key" not in args:  # never the repository's ./data/keys
        args += ["--signing-key", str(tmp / "gateway.key")]
    with open(stderr_path, "wb") as errf:
        proc = subprocess.Popen(
            args,
            stdout=errf,
            stderr=subprocess.STDOUT,
            env={**os.environ, "EG_TEST_UPSTREAM_KEY": UPSTREAM_SECRET, **(env or {})},
        )
        try:
            deadline = time.monotonic() + 60
            # ready = listening *and* the audit log is open (the CLI prints the route then)
            while f"embedguard gateway gw-test-{port}" not in stderr_path.read_text(
                errors="replace"
            ):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gateway did not start:\n{stderr_path.read_text()[-3000:]}")
                time.sleep(0.05)
            wait_for_port(port, proc=proc, timeout=10)
            yield GatewayProcess(f"http://127.0.0.1:{port}", port, log_url, stderr_path, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def gateway_in_process(cfg: Any, addons: list[Any]) -> Iterator[None]:
    """Run ``run_gateway(cfg, addons)`` on its own event loop in a thread (for
    tests that insert addons of their own); stop it on exit."""
    from capture.gateway import run_gateway

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(run_gateway(cfg, addons, on_ready=ready.set, stop=stop))
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "in-process gateway did not start"
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
