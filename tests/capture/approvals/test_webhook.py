"""Approval notifications against a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from capture.approvals.webhook import Webhook, build_payload, check_webhook_url
from pipeline.transport.sqlite import SqliteEventLog
from schemas.models import Operation
from tests.support.approvals import Clock, approval_stack, requirement, who

SECRET_PATH = "/services/T000/B000/s3cr3t-hook-token"


@dataclass
class Receiver:
    url: str
    #: answer these statuses first, then 200 (0 = drop the connection)
    fail_with: list[int] = field(default_factory=list)
    #: while clear, requests wait (a receiver that hangs)
    gate: threading.Event = field(default_factory=threading.Event)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    attempts: int = 0
    got: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        with self.got:
            assert self.got.wait_for(lambda: len(self.bodies) >= n, timeout), self.bodies
            return list(self.bodies)


@contextlib.contextmanager
def receiver(fail_with: list[int] | None = None, *, hang: bool = False) -> Iterator[Receiver]:
    state = Receiver(url="", fail_with=list(fail_with or []))
    if not hang:
        state.gate.set()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            state.gate.wait(60)
            with state.got:
                state.attempts += 1
                status = state.fail_with.pop(0) if state.fail_with else 200
                if status == 200:
                    state.bodies.append(json.loads(body))
                    state.headers.append({k.lower(): v for k, v in self.headers.items()})
                    state.got.notify_all()
            if status == 0:
                self.close_connection = True
                self.connection.close()
                return
            self.send_response(status)
            if status == 429:
                self.send_header("retry-after", "0")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}{SECRET_PATH}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.gate.set()
        server.shutdown()
        server.server_close()


DANA = who("dana", "Vector-Read")
ANN = who("ann", "Vector-Approve")
OPS = [Operation(action="delete", collection="docs", ids=["secret-id-1"], filter_present=True)]


async def _ask(svc: Any, **kw: Any) -> str:
    a = await svc.request_approval(
        requester=DANA, operations=OPS, request_sha256="e" * 64, requirement=requirement(**kw),
        mode="hold", reason="purge stale docs", blast_radius=1234, session_id=None,
        request_id="r1", client_address="127.0.0.1")
    return str(a.approval_id)


async def test_requested_decided_expired_reach_the_receiver_after_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # httpx logs each request URL at INFO
    clock = Clock()
    # a 503, a dropped connection and a 429 before the receiver accepts
    with receiver([503, 0, 429]) as rx:
        hook = Webhook(rx.url, backoff_s=0.01, max_backoff_s=0.05, max_attempts=6)
        async with approval_stack(SqliteEventLog(tmp_path / "e.db"), "gw-a",
                                  f"sqlite:{tmp_path / 'e.db'}", webhook=hook,
                                  clock=clock) as (_, svc):
            aid = await _ask(svc)
            await svc.decide(aid, ANN, "approve", "fine by me")
            aid2 = await _ask(svc, expires=timedelta(minutes=5))
            clock.advance(timedelta(minutes=6))  # the sweeper expires it
            bodies = await asyncio.to_thread(rx.wait_for, 4)
            await hook.idle()
        assert rx.attempts == 7 and hook.delivered == 4 and hook.failed == 0
    kinds = [(b["event"], b["approval_id"]) for b in bodies]
    assert kinds == [("approval.requested", aid), ("approval.decided", aid),
                     ("approval.requested", aid2), ("approval.expired", aid2)]
    req, dec = bodies[0], bodies[1]
    # Slack shows `text`; machines read the fields
    assert "dana asks for approval" in req["text"] and "delete on docs" in req["text"]
    assert "1234 points" in req["text"]
    assert req["operations"] == [{"action": "delete", "collection": "docs", "ids": 1,
                                  "filter": True}]
    assert req["requester"] == {"subject": "dana", "issuer": DANA.issuer}
    assert dec["decision"]["approver"]["subject"] == "ann" and dec["status"] == "approved"
    assert "ann approved" in dec["text"]
    assert rx.headers[0]["content-type"] == "application/json"
    assert rx.headers[0]["x-embedguard-event"] == "approval.requested"
    everything = json.dumps(bodies)
    for secret in ("jti-dana", "jti-ann", "secret-id-1", "authorization"):
        assert secret not in everything
    # the URL (a Slack token lives in its path) is never logged
    assert "s3cr3t-hook-token" not in caplog.text
    assert "HTTP 503" in caplog.text and "http://127.0.0.1:" in caplog.text
    assert "HTTP Request: POST" in caplog.text  # httpx did log, without the path


async def test_an_expiry_recorded_by_two_gateways_is_notified_once(tmp_path: Path) -> None:
    """Several gateways (or --workers) share one log, and each sweeper may
    record the same expiry: only the gateway whose record is first in the log
    notifies. Both gateways expire each approval at once until one round has
    two records (whether it does is up to the scheduler)."""
    url = f"sqlite:{tmp_path / 'e.db'}"
    with receiver() as rx:
        hook_a, hook_b = Webhook(rx.url), Webhook(rx.url)
        async with (
            approval_stack(SqliteEventLog(tmp_path / "e.db"), "gw-a", url, webhook=hook_a,
                           sweep_interval_s=3600) as (_, a),
            approval_stack(SqliteEventLog(tmp_path / "e.db"), "gw-b", url, webhook=hook_b,
                           sweep_interval_s=3600) as (_, b),
        ):
            doubled = 0
            for _ in range(20):
                aid = await _ask(a)
                await b.sync()
                done = await asyncio.gather(a.expire(aid, force=True),
                                            b.expire(aid, force=True))
                assert [x.status for x in done] == ["expired", "expired"]
                await a.sync()
                records = len(a.book._records[aid].expiries)
                assert records in (1, 2)
                doubled += records == 2
                await hook_a.idle()
                await hook_b.idle()
                expired = [x for x in rx.bodies
                           if x["event"] == "approval.expired" and x["approval_id"] == aid]
                assert len(expired) == 1, (records, expired)
                if doubled:
                    break
            assert doubled, "no round recorded the expiry twice; the check was not exercised"


async def test_a_hanging_receiver_never_blocks_decisions(tmp_path: Path) -> None:
    with receiver(hang=True) as rx:
        hook = Webhook(rx.url, timeout_s=60)
        async with approval_stack(SqliteEventLog(tmp_path / "e.db"), "gw-a",
                                  f"sqlite:{tmp_path / 'e.db'}", webhook=hook) as (_, svc):
            aid = await _ask(svc)
            decided = await svc.decide(aid, ANN, "deny", "no")  # returns while it hangs
            assert decided.status == "denied"
            assert rx.bodies == []
            rx.gate.set()
            bodies = await asyncio.to_thread(rx.wait_for, 2)
    assert [b["event"] for b in bodies] == ["approval.requested", "approval.decided"]
    assert ":no_entry: ann denied" in bodies[1]["text"]


async def test_gives_up_after_max_attempts_and_on_client_errors() -> None:
    with receiver([500] * 10) as rx:
        hook = Webhook(rx.url, backoff_s=0.01, max_backoff_s=0.02, max_attempts=3)
        await hook.start()
        a = _approval()
        hook.notify("requested", a)
        await hook.idle()
        assert rx.attempts == 3 and hook.failed == 1 and hook.delivered == 0
        await hook.close()
    with receiver([404, 404]) as rx:  # the receiver refuses it: no point retrying
        hook = Webhook(rx.url, backoff_s=0.01, max_attempts=5)
        await hook.start()
        hook.notify("requested", _approval())
        await hook.idle()
        assert rx.attempts == 1 and hook.failed == 1
        await hook.close()


def _approval() -> Any:
    from datetime import UTC, datetime

    from capture.approvals.state import ApprovalBook
    from schemas.chain import EventStamper
    from schemas.models import ApprovalRequested

    ev = EventStamper("gw").stamp(
        ApprovalRequested, session_id="s", approval_id="A1", kind="request",
        requester_subject="dana", requester_issuer="iss", operations=OPS,
        request_sha256="e" * 64, approver_groups=[["Vector-Approve"]],
        expires_at=datetime.now(UTC) + timedelta(hours=1), mode="async").event
    book = ApprovalBook()
    book.apply(ev)
    return book.get("A1")


def test_payload_is_slack_compatible_and_bounded() -> None:
    a = _approval()
    body = build_payload("requested", a)
    assert isinstance(body["text"], str) and body["text"]
    json.dumps(body)  # plain JSON
    assert "requester_token_id" not in body


@pytest.mark.parametrize("url", ["ftp://x/y", "http://user:pw@host/x", "hooks.slack.com/x", ""])
def test_bad_webhook_urls_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(ValueError) as info:
        check_webhook_url(url)
    assert url == "" or url not in str(info.value)
