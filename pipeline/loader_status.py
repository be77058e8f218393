"""The loader's status, shared between processes through small JSON files.

Each loader process writes ``<status_dir>/<group>.<host>.<pid>.json`` about once a
second, atomically (write a temporary file, fsync, rename), so a reader in another
process (``embedguard loader status``, the dashboard) never sees half a file. One
file per process, because several loaders of one consumer group may run at once.

Nothing secret goes in: warehouse and log URLs never carry passwords, and every
error message passes through ``scrub`` before it is stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "STALE_AFTER_S",
    "LoaderStatus",
    "RateMeter",
    "read_statuses",
    "scrub",
    "status_path",
    "write_status",
]

#: A running loader rewrites its file every second or so; one not updated for this
#: long is reported as not running even if its pid exists (another host, a hang).
STALE_AFTER_S = 30.0

_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s:]*:[^/@\s]*@")
_PASSWORD_PARAM = re.compile(r"(?i)\b(password|passwd|pwd|secret|token)=([^&\s'\"]+)")


def scrub(message: str) -> str:
    """Remove credentials from a message: ``scheme://user:pass@`` and
    ``password=...`` style parameters."""
    message = _URL_CREDENTIALS.sub(r"\1***@", message)
    return _PASSWORD_PARAM.sub(r"\1=***", message)


class RateMeter:
    """Events per second over a sliding window (default: the last minute)."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._started = time.monotonic()
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, count: int, now: float | None = None) -> None:
        self._samples.append((time.monotonic() if now is None else now, count))

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()
        span = min(self.window_s, max(now - self._started, 1e-3))
        return sum(count for _, count in self._samples) / span


@dataclass
class LoaderStatus:
    group: str
    source: str
    log: str
    warehouse: str
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    #: starting, running, retrying, stopped or failed
    state: str = "starting"
    #: partition → {"loaded": next offset in the warehouse, "end": log end, "lag": end - loaded}
    partitions: dict[str, dict[str, int | None]] = field(default_factory=dict)
    assigned: list[int] = field(default_factory=list)
    events_loaded: int = 0
    dead_letters_loaded: int = 0
    duplicate_batches: int = 0
    events_per_s_1m: float = 0.0
    batch_size: int = 0
    flush_interval_s: float = 0.0
    #: total rows in the warehouse's dead_letters table (all loaders, all time)
    dead_letters_total: int | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_compaction_at: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoaderStatus:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def status_path(
    status_dir: Path, group: str, *, host: str | None = None, pid: int | None = None
) -> Path:
    host = host or socket.gethostname()
    pid = os.getpid() if pid is None else pid
    return status_dir / f"{_safe(group)}.{_safe(host)}.{pid}.json"


def write_status(path: Path, status: LoaderStatus) -> None:
    """Replace ``path`` atomically with ``status``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(status.to_json(), fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_statuses(status_dir: Path, group: str | None = None) -> list[tuple[LoaderStatus, bool]]:
    """Every status file in ``status_dir`` (of ``group`` if given), newest first, with
    whether that loader is running now (same host: its pid lives and the file is
    fresh; another host: the file is fresh)."""
    if not status_dir.is_dir():
        return []
    found: list[tuple[LoaderStatus, bool]] = []
    now = time.time()
    here = socket.gethostname()
    for path in status_dir.glob("*.json"):
        try:
            status = LoaderStatus.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue  # removed meanwhile, or not one of ours
        if group is not None and status.group != group:
            continue
        fresh = now - status.updated_at < STALE_AFTER_S
        running = status.state not in ("stopped", "failed") and fresh
        if running and status.host == here:
            running = _pid_alive(status.pid)
        found.append((status, running))
    found.sort(key=lambda item: item[0].updated_at, reverse=True)
    return found
