"""Approval notifications: a JSON POST on requested, decided and expired.

The body has a Slack-compatible ``text`` (so a Slack or Mattermost incoming
webhook shows it as it is) plus structured fields for machines. It never holds
a token, a token id, a request body or vector ids: only who, what kind of
operation on which collection, how many, and the decision.

Delivery never blocks or fails the request path: :meth:`Webhook.notify` puts
the message on a bounded queue and returns; one background task posts them in
order, retrying connection errors, timeouts, 429 and 5xx with exponential
backoff (honouring ``Retry-After``). A message that still fails is logged and
dropped. The URL itself may be a secret (Slack puts its token in the path), so
logs name only its scheme and host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from capture.approvals.state import Approval, Vote

__all__ = ["Webhook", "WebhookMessage", "build_payload", "safe_webhook_target"]

log = logging.getLogger("embedguard.approvals.webhook")

Kind = Literal["requested", "decided", "expired"]


def safe_webhook_target(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what may appear in logs and errors."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or "?"
    return f"{p.scheme}://{host}" + (f":{p.port}" if p.port else "")


def check_webhook_url(url: str) -> str:
    """ValueError unless ``url`` is an http(s) URL with a host and no user info."""
    p = urllib.parse.urlsplit(url.strip())
    if p.scheme not in ("http", "https") or not p.hostname:
        raise ValueError("the approval webhook must be an http(s)://host/... URL")
    if p.username or p.password:
        raise ValueError("the approval webhook URL must not contain user:password@")
    return url.strip()


def _ops_summary(a: Approval) -> list[dict[str, Any]]:
    out = []
    for op in a.operations:
        item: dict[str, Any] = {"action": op.action.value, "collection": op.collection}
        if op.ids:
            item["ids"] = len(op.ids)
        if op.vector_count:
            item["vectors"] = op.vector_count
        if op.filter_present:
            item["filter"] = True
        out.append(item)
    return out


def _text(kind: Kind, a: Approval, vote: Vote | None, decision: str | None) -> str:
    what = "change ticket" if a.kind == "ticket" else "approval"
    ops = ", ".join(
        f"{op.action.value} on {op.collection or '(no collection)'}" for op in a.operations[:5]
    ) or "no operations"
    if len(a.operations) > 5:
        ops += f" and {len(a.operations) - 5} more"
    if kind == "requested":
        radius = f"; touches about {a.blast_radius} points" if a.blast_radius is not None else ""
        return (
            f":raised_hand: {a.requester_subject} asks for {what} {a.approval_id}: {ops}{radius}. "
            f"Needs {a.min_approvals} approver(s), expires {a.expires_at:%Y-%m-%d %H:%M UTC}."
            + (f" Reason: {a.reason}" if a.reason else "")
        )
    if kind == "expired":
        return f":hourglass: {what} {a.approval_id} for {a.requester_subject} expired ({ops})."
    who = vote.subject if vote else "someone"
    verb = "approved" if decision == "approve" else "denied"
    tally = f" ({len(a.approvals)} of {a.min_approvals})" if decision == "approve" else ""
    status = f" Now {a.status}." if a.status != "pending" else " Still pending."
    icon = ":white_check_mark:" if decision == "approve" else ":no_entry:"
    return f"{icon} {who} {verb} {what} {a.approval_id}{tally} for {a.requester_subject}.{status}"


def build_payload(
    kind: Kind, a: Approval, *, vote: Vote | None = None, decision: str | None = None
) -> dict[str, Any]:
    """The JSON body for one notification (pure; no secrets by construction)."""
    body: dict[str, Any] = {
        "text": _text(kind, a, vote, decision),
        "event": f"approval.{kind}",
        "approval_id": a.approval_id,
        "kind": a.kind,
        "status": a.status,
        "requester": {"subject": a.requester_subject, "issuer": a.requester_issuer},
        "operations": _ops_summary(a),
        "approver_groups": a.approver_groups,
        "min_approvals": a.min_approvals,
        "approvals": len(a.approvals),
        "denials": len(a.denials),
        "expires_at": a.expires_at.isoformat(),
        "mode": a.mode,
        "reason": a.reason,
        "blast_radius": a.blast_radius,
        "request_sha256": a.request_sha256,
        "gateway_id": a.gateway_id,
    }
    if vote is not None:
        body["decision"] = {
            "decision": decision,
            "approver": {"subject": vote.subject, "issuer": vote.issuer},
            "reason": vote.reason,
            "at": vote.at.isoformat(),
        }
    return body


class _HideUrl(logging.Filter):
    """httpx logs every request URL at INFO; this one carries a secret."""

    def __init__(self, url: str, shown: str) -> None:
        super().__init__()
        self.url, self.shown = url, shown

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to fix
            return True
        if self.url in text:
            record.msg, record.args = text.replace(self.url, self.shown + "/…"), ()
        return True


@dataclass(frozen=True)
class WebhookMessage:
    kind: Kind
    payload: dict[str, Any]


class Webhook:
    """Posts notifications to ``url`` from a background task (see the module doc)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 6,
        backoff_s: float = 0.5,
        max_backoff_s: float = 60.0,
        queue_size: int = 1000,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = check_webhook_url(url)
        self.target = safe_webhook_target(url)
        self._hide = _HideUrl(self._url, self.target)
        self.timeout_s = timeout_s
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._queue: asyncio.Queue[WebhookMessage] = asyncio.Queue(queue_size)
        self._http = http
        self._owns_http = http is None
        self._task: asyncio.Task[None] | None = None
        #: counters for tests and metrics
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def __repr__(self) -> str:
        return f"Webhook({self.target!r})"

    async def start(self) -> None:
        if self._task is not None:
            return
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        logging.getLogger("httpx").addFilter(self._hide)
        self._task = asyncio.create_task(self._run(), name="approvals-webhook")

    async def close(self, drain_timeout_s: float = 2.0) -> None:
        """Give queued messages ``drain_timeout_s`` to go out, then stop."""
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout_s):
                    await self._queue.join()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None
        logging.getLogger("httpx").removeFilter(self._hide)

    def notify(
        self, kind: Kind, approval: Approval, *, vote: Vote | None = None,
        decision: str | None = None,
    ) -> None:
        """Queue a notification; never raises and never waits."""
        try:
            msg = WebhookMessage(kind, build_payload(kind, approval, vote=vote,
                                                     decision=decision))
            self._queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("approval webhook %s: queue full, %s notification for %s dropped",
                      self.target, kind, approval.approval_id)
        except Exception:  # noqa: BLE001 - a notification must never fail the caller
            self.dropped += 1
            log.exception("approval webhook: could not build the %s notification", kind)

    async def idle(self) -> None:
        """Wait until every queued message was delivered or given up (for tests)."""
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            msg = await self._queue.get()
            try:
                await self._deliver(msg)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep delivering the next ones
                self.failed += 1
                log.exception("approval webhook %s: delivery crashed", self.target)
            finally:
                self._queue.task_done()

    async def _deliver(self, msg: WebhookMessage) -> None:
        assert self._http is not None
        delay = self.backoff_s
        why = ""
        for attempt in range(1, self.max_attempts + 1):
            retry_after: float | None = None
            try:
                resp = await self._http.post(
                    self._url, json=msg.payload,
                    headers={"user-agent": "embedguard-approvals",
                             "x-embedguard-event": msg.payload["event"]},
                )
                if resp.status_code < 300:
                    self.delivered += 1
                    return
                why = f"HTTP {resp.status_code}"
                if resp.status_code not in (408, 425, 429) and resp.status_code < 500:
                    break  # the receiver refuses this message; retrying will not help
                ra = resp.headers.get("retry-after", "")
                if ra.isdigit():
                    retry_after = float(ra)
            except httpx.HTTPError as exc:
                why = type(exc).__name__
            if attempt < self.max_attempts:
                wait = min(retry_after if retry_after is not None else delay,
                           self.max_backoff_s)
                log.warning("approval webhook %s: %s for %s (attempt %d/%d); retrying in %.1fs",
                            self.target, why, msg.payload["approval_id"], attempt,
                            self.max_attempts, wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.max_backoff_s)
        self.failed += 1
        log.error("approval webhook %s: gave up on the %s notification for %s (%s)",
                  self.target, msg.kind, msg.payload["approval_id"], why)
