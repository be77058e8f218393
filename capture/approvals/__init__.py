"""Four-eyes approvals, change tickets and time-boxed grants.

* :mod:`capture.approvals.state`   the read model folded from events, and the rules (pure)
* :mod:`capture.approvals.service` ApprovalService: emits events, folds the log, enforces
* :mod:`capture.approvals.webhook` notifications (JSON, Slack-compatible) with retries
* :mod:`capture.approvals.client`  HTTP client of the gateway's control API (CLI, dashboard)
"""

from __future__ import annotations

from capture.approvals.service import (
    Approval,
    ApprovalError,
    ApprovalService,
    EmitRequest,
    Emitter,
    Grant,
    Vote,
    now_utc,
)

__all__ = [
    "Approval",
    "ApprovalError",
    "ApprovalService",
    "EmitRequest",
    "Emitter",
    "Grant",
    "Vote",
    "now_utc",
]
