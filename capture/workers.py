"""``embedguard gateway --workers N``: several gateway processes share each listen port.

mitmproxy runs one event loop, so one gateway process uses one core. With
``--workers N`` a supervisor (the ``embedguard gateway`` process) starts N
worker processes (``python -m capture.workers``). Each is a full gateway that
binds the same listen addresses with SO_REUSEPORT, so clients see one endpoint
and the Linux kernel spreads their connections over the workers.

What each worker has of its own, and what the workers share:

- **Its own event stream.** Worker k records as ``<gateway id>/w<k>``: its own
  stream numbering, hash chains, Merkle checkpoints (signed with the same
  key) and sessions, exactly as one gateway. All workers append to the same
  log URL (the SQLite log takes several writer processes; Kafka too). A
  restarted worker starts a new run of its stream, as a restarted gateway does.
- **The control API** (``/_embedguard/``) is served by every worker on every
  listener: its state (approvals, tickets, grants, claims) comes from the log,
  so any worker answers it, and a decision taken through one worker releases a
  flow held by another, as between separate gateway replicas.
- **One DPoP replay cache.** A proof's ``jti`` must be refused on a second
  use whichever worker the second connection reaches, so the workers share a
  SQLite replay cache in a private (0700) directory of the supervisor.
- Policy reloads, the identity key cache and the session tracker are per worker.
  The supervisor follows the policy file too, and keeps the last version that
  loaded: what the running workers enforce, since each keeps its policy when
  the file becomes invalid. A worker restarted while the file does not load
  starts from that version (and says so in its log) rather than failing to
  start, which after a few tries would stop every worker; it follows the
  file's reloads from there. A gateway whose policy never loaded still does
  not start.

The supervisor forwards SIGTERM/SIGINT to the workers and waits for their clean
shutdown (each flushes its log and records its final checkpoint). A worker that
dies is restarted with backoff, and the supervisor logs why. A worker that
cannot start (a port in use, an unreachable log) is retried a few times; then
the supervisor stops the others and exits with an error that names the cause.

Worker protocol: the supervisor writes one JSON line (the worker's
configuration, secrets included, never on a command line) to the worker's
stdin and keeps stdin open; EOF means the supervisor is gone and the worker
shuts down. The worker reports ``ready`` or ``error <message>`` lines on a pipe
whose descriptor is in ``EMBEDGUARD_WORKER_STATUS_FD``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr

from capture.config import GatewayConfig

__all__ = [
    "SqliteReplayCache",
    "Supervisor",
    "WorkersFailed",
    "run_supervisor",
    "worker_gateway_id",
    "worker_main",
]

log = logging.getLogger("embedguard.workers")

STATUS_FD_ENV = "EMBEDGUARD_WORKER_STATUS_FD"
#: consecutive failed starts of one worker before the supervisor gives up
MAX_START_FAILURES = 3
#: first restart delay; doubled for each crash soon after the previous start
BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
#: a worker that served this long before dying restarts after BACKOFF_S again
STABLE_S = 10.0
#: how long workers get to shut down cleanly before they are killed
SHUTDOWN_GRACE_S = 60.0
#: a worker not serving this long after its start counts as a failed start
START_TIMEOUT_S = 120.0
#: how often the supervisor looks at the policy file (as a worker's reload does)
POLICY_CHECK_S = 1.0


class WorkersFailed(RuntimeError):
    """The workers could not be started or did not stop cleanly; the message says why."""


def worker_gateway_id(base: str, index: int) -> str:
    """The stream name of worker ``index`` of the gateway ``base``."""
    return f"{base}/w{index}"


# -- the shared DPoP replay cache ------------------------------------------------


class SqliteReplayCache:
    """A DPoP :class:`~capture.dpop.ReplayCache` shared by the processes that
    open the same file: a ``jti`` is ``"new"`` exactly once across all of them.

    One statement decides: an insert that takes the key only if it is absent
    or expired, so two workers racing on one proof cannot both see it new.
    Entries expire with the proof's acceptance window, as in the in-memory
    cache, and a cache full of live entries answers ``"full"`` (fail closed).
    The file is scratch state (no fsync): it matters only while proofs live.
    """

    def __init__(self, path: Path, *, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.path = path
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jti (key TEXT PRIMARY KEY, expires_at REAL NOT NULL)"
        )
        self._next_purge = 0.0
        self._full = False

    def remember(
        self, key: str, *, expires_at: float, now: float
    ) -> Literal["new", "replayed", "full"]:
        with self._lock:
            if now >= self._next_purge:
                self._purge(now)
            if self._full:
                seen = self._db.execute(
                    "SELECT 1 FROM jti WHERE key = ? AND expires_at > ?", (key, now)
                ).fetchone()
                return "replayed" if seen else "full"
            cur = self._db.execute(
                "INSERT INTO jti (key, expires_at) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at "
                "WHERE jti.expires_at <= ?",
                (key, expires_at, now),
            )
            return "new" if cur.rowcount == 1 else "replayed"

    def _purge(self, now: float) -> None:
        self._db.execute("DELETE FROM jti WHERE expires_at <= ?", (now,))
        (live,) = self._db.execute("SELECT count(*) FROM jti").fetchone()
        self._full = live >= self.max_entries
        self._next_purge = now + (0.2 if self._full else 1.0)

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- the worker process -------------------------------------------------------------


def _revealed(value: Any) -> Any:
    """``model_dump()`` output with secrets as plain strings and paths as text."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return _revealed(value.model_dump())
    if isinstance(value, dict):
        return {k: _revealed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_revealed(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def worker_spec(
    config: GatewayConfig, index: int, replay_db: Path, last_valid_policy: str | None = None
) -> bytes:
    """The line the supervisor writes to worker ``index``'s stdin;
    ``last_valid_policy`` is the policy text to enforce if the file does not load."""
    cfg = config.model_copy(update={"gateway_id": worker_gateway_id(config.gateway_id, index)})
    spec = {"index": index, "replay_db": str(replay_db), "config": _revealed(cfg),
            "last_valid_policy": last_valid_policy}
    return json.dumps(spec).encode() + b"\n"


def worker_main() -> int:
    """The worker process: read the spec from stdin, serve until told to stop."""
    import asyncio

    from capture import build_addons
    from capture.config import ConfigError
    from capture.enforcer import start_from_if_invalid
    from capture.gateway import run_gateway
    from capture.identity import IdentityCheck
    from pipeline.transport.errors import EventLogError

    # Told to stop before the gateway's own handlers are in place: stop at once.
    early_stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: early_stop.set())
    status = os.fdopen(int(os.environ.pop(STATUS_FD_ENV)), "w", buffering=1)

    def report(line: str) -> None:
        with contextlib.suppress(OSError):
            status.write(line.replace("\n", " ") + "\n")

    line = sys.stdin.readline()
    if not line:  # the supervisor went away before it said what to serve
        return 2
    spec = json.loads(line)
    index = int(spec["index"])
    logging.basicConfig(  # the CLI's format, with the worker's index
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s %(name)s [w{index}]: %(message)s",
    )
    config = GatewayConfig.model_validate(spec["config"])
    start_from_if_invalid(config.policy_path, spec.get("last_valid_policy"))
    try:
        addons = build_addons(config)
    except (ConfigError, ValueError) as exc:
        report(f"error {exc}")
        return 2
    try:
        cache = SqliteReplayCache(Path(spec["replay_db"]))
    except sqlite3.Error as exc:
        report(f"error cannot open the workers' shared DPoP replay cache: {exc}")
        return 2
    for addon in addons:
        if isinstance(addon, IdentityCheck) and addon.verifier.dpop is not None:
            addon.verifier.dpop.replay_cache = cache
    failed: list[str] = []

    def listen_error(message: str) -> None:
        failed.append(message)
        report(f"error {message}")

    def ready() -> None:
        log.info("worker %d ready: stream %s, pid %d", index, config.gateway_id, os.getpid())
        report("ready")

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # run_gateway replaces these
            loop.add_signal_handler(sig, stop.set)
        if early_stop.is_set():
            stop.set()
        stdin = sys.stdin.fileno()

        def lifeline() -> None:
            try:
                data = os.read(stdin, 4096)
            except OSError:
                data = b""
            if not data:  # the supervisor is gone: do not serve unsupervised
                loop.remove_reader(stdin)
                if not stop.is_set():
                    log.warning("worker %d: supervisor gone, shutting down", index)
                stop.set()

        loop.add_reader(stdin, lifeline)
        await run_gateway(
            config, addons, on_ready=ready, stop=stop, reuse_port=True,
            on_listen_error=listen_error,
        )

    try:
        asyncio.run(serve())
    except EventLogError as exc:
        report(f"error {exc}")
        return 2
    finally:
        cache.close()
    return 2 if failed else 0


# -- the supervisor ---------------------------------------------------------------


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    status: Any = None  # the read end of the worker's status pipe (a file)
    buffer: bytes = b""
    ready: bool = False
    started_at: float = 0.0
    ready_at: float = 0.0
    start_failures: int = 0
    crash_streak: int = 0
    restart_at: float | None = None
    last_error: str | None = None
    restarts: int = 0
    notes: list[str] = field(default_factory=list)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Start ``workers`` gateway worker processes and keep them running."""

    def __init__(
        self,
        config: GatewayConfig,
        workers: int,
        *,
        on_ready: Callable[[], None] | None = None,
        python: str = sys.executable,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.config = config
        self.workers = workers
        self.on_ready = on_ready
        self.python = python
        self.slots = [_Slot(k) for k in range(workers)]
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._signals = 0
        self._stopping = False
        self._announced = False
        self._scratch = Path(tempfile.mkdtemp(prefix="embedguard-workers-"))
        self.replay_db = self._scratch / "dpop-replay.db"
        #: the last policy text that loaded (None: it never did), the file's
        #: mtime when last read, why the file does not load now (None: it does)
        self.last_valid_policy: str | None = None
        self._policy_mtime: int | None = None
        self._policy_problem: str | None = None
        self._policy_checked = 0.0
        self._check_policy()

    # -- the policy ---------------------------------------------------------------
    def _check_policy(self) -> None:
        """Read the policy file if it changed; keep its text if it loads."""
        from capture.policy import PolicyError, parse_policy

        self._policy_checked = time.monotonic()
        path = self.config.policy_path
        try:
            mtime = path.stat().st_mtime_ns
            if mtime == self._policy_mtime:
                return
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self._policy_mtime, self._policy_problem = None, f"cannot read it ({exc})"
            return
        self._policy_mtime = mtime
        try:
            parse_policy(text, str(path))
        except PolicyError as exc:
            self._policy_problem = str(exc)
            return
        self.last_valid_policy, self._policy_problem = text, None

    # -- processes ----------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        self._check_policy()
        if self._policy_problem is not None and self.last_valid_policy is not None:
            from capture.policy import policy_sha256

            log.error(
                "policy %s does not load; worker %d (%s) starts from the last version that "
                "loaded (%s), which the running workers enforce, and follows the file once "
                "it loads again. Fix the file: %s",
                self.config.policy_path, slot.index,
                worker_gateway_id(self.config.gateway_id, slot.index),
                policy_sha256(self.last_valid_policy)[:12], self._policy_problem,
            )
        r, w = os.pipe()
        env = {**os.environ, STATUS_FD_ENV: str(w)}
        try:
            proc = subprocess.Popen(
                [self.python, "-m", "capture.workers"],
                stdin=subprocess.PIPE,
                pass_fds=(w,),
                env=env,
                # Its own process group: a terminal's Ctrl-C reaches the
                # supervisor only, which stops the workers in order.
                process_group=0,
            )
        finally:
            os.close(w)
        assert proc.stdin is not None
        try:
            proc.stdin.write(
                worker_spec(self.config, slot.index, self.replay_db, self.last_valid_policy)
            )
            proc.stdin.flush()
        except OSError:
            pass  # it died at once; its exit is handled like any other
        slot.proc, slot.ready, slot.buffer, slot.last_error = proc, False, b"", None
        slot.started_at, slot.restart_at = time.monotonic(), None
        slot.status = os.fdopen(r, "rb", buffering=0)
        os.set_blocking(r, False)
        self.sel.register(slot.status, selectors.EVENT_READ, slot)

    def _read_status(self, slot: _Slot) -> bool:
        """Read what the worker reported; False when nothing was there to read."""
        if slot.status is None:
            return False
        try:
            data = slot.status.read(65536)
        except BlockingIOError:
            return False
        if data is None:
            return False
        if not data:
            self.sel.unregister(slot.status)
            slot.status.close()
            slot.status = None
            return True
        slot.buffer += data
        while b"\n" in slot.buffer:
            line, slot.buffer = slot.buffer.split(b"\n", 1)
            text = line.decode(errors="replace").strip()
            if text == "ready":
                self._worker_ready(slot)
            elif text.startswith("error "):
                slot.last_error = text[len("error "):]
        return True

    def _worker_ready(self, slot: _Slot) -> None:
        slot.ready, slot.ready_at, slot.start_failures = True, time.monotonic(), 0
        assert slot.proc is not None
        if slot.restarts:
            log.info(
                "worker %d (%s) restarted as pid %d and is serving again", slot.index,
                worker_gateway_id(self.config.gateway_id, slot.index), slot.proc.pid,
            )
        if not self._announced and all(s.ready for s in self.slots):
            self._announced = True
            log.info(
                "%d workers serving (streams %s, pids %s)", self.workers,
                ", ".join(worker_gateway_id(self.config.gateway_id, s.index) for s in self.slots),
                ", ".join(str(s.proc.pid) for s in self.slots if s.proc is not None),
            )
            if self.on_ready is not None:
                self.on_ready()

    def _reap(self, slot: _Slot) -> int | None:
        """The worker's exit code if it has exited (its status pipe drained)."""
        if slot.proc is None:
            return None
        code = slot.proc.poll()
        if code is None:
            return None
        while self._read_status(slot):  # its last words (an error line)
            pass
        if slot.status is not None:
            self.sel.unregister(slot.status)
            slot.status.close()
            slot.status = None
        if slot.proc.stdin is not None:
            with contextlib.suppress(OSError):
                slot.proc.stdin.close()
        slot.proc = None
        return code

    def _worker_exited(self, slot: _Slot, code: int) -> None:
        name = worker_gateway_id(self.config.gateway_id, slot.index)
        why = slot.last_error or _exit_text(code)
        now = time.monotonic()
        if not slot.ready:
            slot.start_failures += 1
            if slot.start_failures >= MAX_START_FAILURES:
                raise WorkersFailed(
                    f"gateway worker {slot.index} could not start "
                    f"({slot.start_failures} attempts): {why}"
                )
            delay = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (slot.start_failures - 1))
            log.error(
                "worker %d (%s) failed to start: %s; retrying in %.1fs",
                slot.index, name, why, delay,
            )
        else:
            slot.crash_streak = slot.crash_streak + 1 if now - slot.ready_at < STABLE_S else 0
            delay = min(MAX_BACKOFF_S, BACKOFF_S * 2**slot.crash_streak)
            log.error(
                "worker %d (%s) exited unexpectedly (%s); restarting it in %.1fs",
                slot.index, name, _exit_text(code), delay,
            )
        slot.ready = False
        slot.restarts += 1
        slot.restart_at = now + delay

    # -- signals ------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals += 1
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- main loop ----------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit code (0: every worker stopped cleanly).
        Raises :class:`WorkersFailed` when workers cannot start."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            for slot in self.slots:
                self._spawn(slot)
            while not self._signals:
                self._tick()
            return self._shutdown()
        except WorkersFailed:
            self._shutdown()  # the workers that did start stop cleanly
            raise
        except BaseException:
            self._kill_all()
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.sel.close()
            self._wake_r.close()
            self._wake_w.close()
            shutil.rmtree(self._scratch, ignore_errors=True)

    def _tick(self, timeout: float = 0.25) -> None:
        for key, _ in self.sel.select(timeout):
            if key.data is None:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(64)
            else:
                self._read_status(key.data)
        now = time.monotonic()
        if now - self._policy_checked >= POLICY_CHECK_S:
            self._check_policy()
        for slot in self.slots:
            if (slot.proc is not None and not slot.ready and not self._stopping
                    and now - slot.started_at > START_TIMEOUT_S
                    and slot.proc.poll() is None):
                slot.last_error = f"not serving {START_TIMEOUT_S:.0f}s after its start"
                slot.proc.kill()
                slot.proc.wait()
            code = self._reap(slot)
            # (a signal may have reached the workers too, e.g. systemd's stop)
            if code is not None and not (self._stopping or self._signals):
                self._worker_exited(slot, code)
            elif code is not None and code != 0:
                slot.notes.append(
                    f"worker {slot.index} stopped with {_exit_text(code)}"
                    + (f" ({slot.last_error})" if slot.last_error else "")
                )
            if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                if not self._stopping:
                    self._spawn(slot)

    def _shutdown(self) -> int:
        self._stopping = True
        live = [s for s in self.slots if s.proc is not None]
        log.info("stopping %d worker(s)", len(live))
        for slot in live:
            assert slot.proc is not None
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(signal.SIGTERM)
        seen = self._signals
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        bad: list[str] = []
        pending = list(live)
        while pending:
            if self._signals > seen or time.monotonic() > deadline:
                why = "a second signal" if self._signals > seen else (
                    f"still running after {SHUTDOWN_GRACE_S:.0f}s")
                for slot in pending:
                    assert slot.proc is not None
                    log.error("worker %d: %s, killing it", slot.index, why)
                    bad.append(f"worker {slot.index} was killed ({why})")
                self._kill_all()
                break
            self._tick(0.1)
            pending = [slot for slot in pending if slot.proc is not None]
        for slot in self.slots:
            bad.extend(slot.notes)
        if bad:
            log.error("workers did not all stop cleanly: %s", "; ".join(bad))
            return 1
        log.info("all workers stopped")
        return 0

    def _kill_all(self) -> None:
        for slot in self.slots:
            if slot.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.kill()
                slot.proc.wait()
                self._reap(slot)


def run_supervisor(
    config: GatewayConfig, workers: int, *, on_ready: Callable[[], None] | None = None
) -> int:
    """Run ``workers`` gateway workers until SIGTERM/SIGINT; the exit code.
    Raises :class:`WorkersFailed` (a clear message) when they cannot start."""
    return Supervisor(config, workers, on_ready=on_ready).run()


if __name__ == "__main__":
    sys.exit(worker_main())
