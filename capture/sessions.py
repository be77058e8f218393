"""Sessions: one principal's run of requests from one client.

The key is (subject, token id or DPoP key, client address); a client may name
its session with the ``X-Embedguard-Session`` header, which joins the key. A
session closes after ``idle_s`` without requests. Pure: the clock is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from uuid_utils import uuid7  # native: str() of it is 5x cheaper than of a uuid.UUID

__all__ = ["SESSION_HEADER", "Session", "SessionKey", "SessionTracker"]

SESSION_HEADER = "x-embedguard-session"

SessionKey = tuple[str, str, str, str]  # subject, token id / jkt, client address, client name


@dataclass
class Session:
    session_id: str
    key: SessionKey
    started_at: datetime
    last_seen: datetime
    request_count: int = 0


class SessionTracker:
    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._by_key: dict[SessionKey, Session] = {}

    @staticmethod
    def key(
        subject: str | None, token_ref: str | None, client_address: str, client_name: str | None
    ) -> SessionKey:
        return (subject or "-", token_ref or "-", client_address, (client_name or "")[:128])

    def touch(self, key: SessionKey, now: datetime) -> tuple[Session, bool, Session | None]:
        """The session for ``key``: (session, started now?, the idle one it replaced)."""
        ended: Session | None = None
        s = self._by_key.get(key)
        if s is not None and (now - s.last_seen).total_seconds() > self.idle_s:
            ended = self._by_key.pop(key)
            s = None
        started = s is None
        if s is None:
            s = Session(str(uuid7()), key, now, now)
            self._by_key[key] = s
        s.last_seen = now
        s.request_count += 1
        return s, started, ended

    def expire(self, now: datetime) -> list[Session]:
        """Remove and return every session idle for longer than ``idle_s``."""
        idle = [
            k for k, s in self._by_key.items() if (now - s.last_seen).total_seconds() > self.idle_s
        ]
        return [self._by_key.pop(k) for k in idle]

    def close_all(self) -> list[Session]:
        out = list(self._by_key.values())
        self._by_key.clear()
        return out
