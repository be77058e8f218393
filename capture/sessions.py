"""Sessions: one principal's run of requests from one client.

The key is (subject, token id or DPoP key, client address); a client may name
its session with the ``X-Embedguard-Session`` header, which joins the key. A
session closes after ``idle_s`` without requests. Pure: the clock is passed in.

A session is not idle while one of its requests is still in flight (waiting
for the upstream, or held for approval): its ``SessionEnded`` must be the last
event of its chain, so the gap counts from the end of its last request. A flow
that joins a session with :meth:`SessionTracker.touch` (``flow_id``) leaves it
with :meth:`SessionTracker.release`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
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
    #: the flows of this session still in flight (their ids)
    in_flight: set[str] = field(default_factory=set)

    def idle(self, now: datetime, idle_s: float) -> bool:
        return not self.in_flight and (now - self.last_seen).total_seconds() > idle_s


class SessionTracker:
    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._by_key: dict[SessionKey, Session] = {}
        self._by_id: dict[str, Session] = {}

    @staticmethod
    def key(
        subject: str | None, token_ref: str | None, client_address: str, client_name: str | None
    ) -> SessionKey:
        return (subject or "-", token_ref or "-", client_address, (client_name or "")[:128])

    def touch(
        self, key: SessionKey, now: datetime, flow_id: str | None = None
    ) -> tuple[Session, bool, Session | None]:
        """The session for ``key``: (session, started now?, the idle one it replaced).
        ``flow_id``: the flow stays in the session until :meth:`release`."""
        ended: Session | None = None
        s = self._by_key.get(key)
        if s is not None and s.idle(now, self.idle_s):
            ended = self._pop(key)
            s = None
        started = s is None
        if s is None:
            s = Session(str(uuid7()), key, now, now)
            self._by_key[key] = s
            self._by_id[s.session_id] = s
        s.last_seen = max(s.last_seen, now)
        s.request_count += 1
        if flow_id is not None:
            s.in_flight.add(flow_id)
        return s, started, ended

    def release(self, session_id: str | None, flow_id: str, now: datetime) -> None:
        """The flow ``flow_id`` of ``session_id`` ended: the idle gap counts from
        ``now`` (a session that was closed meanwhile is left alone)."""
        s = self._by_id.get(session_id or "")
        if s is None or flow_id not in s.in_flight:
            return
        s.in_flight.discard(flow_id)
        s.last_seen = max(s.last_seen, now)

    def forget_flows(self, flow_ids: Iterable[str]) -> None:
        """Flows that will never end (see the recorder's stale-flow horizon)
        stop holding their sessions open."""
        gone = set(flow_ids)
        if gone:
            for s in self._by_key.values():
                s.in_flight -= gone

    def expire(self, now: datetime) -> list[Session]:
        """Remove and return every session idle for longer than ``idle_s`` (one
        with a request in flight is not idle)."""
        idle = [k for k, s in self._by_key.items() if s.idle(now, self.idle_s)]
        return [self._pop(k) for k in idle]

    def close_all(self) -> list[Session]:
        out = list(self._by_key.values())
        self._by_key.clear()
        self._by_id.clear()
        return out

    def _pop(self, key: SessionKey) -> Session:
        s = self._by_key.pop(key)
        self._by_id.pop(s.session_id, None)
        return s
