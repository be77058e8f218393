"""A gateway's approval stack without the proxy: a real Recorder (the emitter)
and a real ApprovalService on a real event log, as each gateway process has."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from capture.approvals.service import ApprovalService
from capture.config import GatewayConfig, Route
from capture.policy import ApprovalRequirement
from capture.recorder import Recorder
from capture.types import Identity
from pipeline.transport.base import EventLog

__all__ = ["ISS", "Clock", "approval_stack", "requirement", "who"]

ROOT = Path(__file__).resolve().parents[2]
ISS = "https://idp.example"


class Clock:
    """Real time plus an offset the test moves forward (expiry without sleeping)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, by: timedelta) -> None:
        self.offset += by


def who(sub: str, *groups: str, token: str | None = None) -> Identity:
    return Identity(sub, ISS, frozenset(groups), token_id=token or f"jti-{sub}")


def requirement(
    n: int = 1, groups: list[list[str]] | None = None, expires: timedelta = timedelta(minutes=30)
) -> ApprovalRequirement:
    return ApprovalRequirement(
        rule_ids=["ds-write"], groups_any_of=groups or [["Vector-Approve"]], min_approvals=n,
        expires_after=expires, mode="hold",
    )


@contextlib.asynccontextmanager
async def approval_stack(
    log: EventLog, gateway_id: str, log_url: str, **service_kw: Any
) -> AsyncIterator[tuple[Recorder, ApprovalService]]:
    config = GatewayConfig(
        routes=[Route(upstream="http://127.0.0.1:9", listen_port=0)],
        policy_path=ROOT / "examples" / "policy.yaml",
        log_url=log_url,
        issuer=ISS,
        audience="embedguard",
        gateway_id=gateway_id,
    )
    recorder = Recorder(config, log_=log)
    await recorder.running()
    service_kw.setdefault("poll_interval_s", 0.05)
    service_kw.setdefault("sweep_interval_s", 0.05)
    service_kw.setdefault("stream", lambda: recorder.stamper.gateway_id)
    service = ApprovalService(log, recorder.emit, **service_kw)
    await service.start()
    try:
        yield recorder, service
    finally:
        await service.close()
        await recorder.done()
