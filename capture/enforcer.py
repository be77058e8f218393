"""Enforcer: the policy decides each operation; obligations are applied.

Deny (and, until the approvals service exists, require_approval) refuses the
request with 403 and the reasons. Allowed requests get their row filters
injected into the body and a masking plan for the response. The policy file
is watched: a valid change is swapped in and recorded as PolicyChanged with
the diff; an invalid one keeps the old policy and logs why.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mitmproxy import http

from capture.filters import FilterInjectionError, inject_filters
from capture.masker import PLAN_KEY, MaskPlan
from capture.policy import (
    Decision,
    Policy,
    PolicyError,
    RequestContext,
    evaluate,
    load_policy,
    policy_diff,
)
from capture.state import block, fail_closed, state_of

__all__ = ["Enforcer"]

log = logging.getLogger("embedguard.enforcer")

Recorder = Callable[..., Awaitable[None]]


class Enforcer:
    def __init__(self, policy_path: Path, *, reload_interval_s: float = 1.0) -> None:
        self.path = policy_path
        self.reload_interval_s = reload_interval_s
        self.policy: Policy = load_policy(policy_path)  # PolicyError: fail at start
        self._text = policy_path.read_text(encoding="utf-8")
        self._mtime = policy_path.stat().st_mtime_ns
        self._watcher: asyncio.Task[None] | None = None
        self.record_system: Recorder | None = None

    # -- reload -----------------------------------------------------------------
    async def record_active(self) -> None:
        """Record the policy in force at start (a PolicyChanged from nothing)."""
        await self._record_change(None, self._text)

    async def running(self) -> None:
        self._watcher = asyncio.create_task(self._watch())

    async def done(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval_s)
            try:
                await self.reload_if_changed()
            except Exception:  # noqa: BLE001 - the watcher must survive anything
                log.exception("policy reload failed; keeping the current policy")

    async def reload_if_changed(self) -> bool:
        try:
            mtime = self.path.stat().st_mtime_ns
            if mtime == self._mtime:
                return False
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.error("cannot read policy %s (%s); keeping the current policy", self.path, exc)
            return False
        self._mtime = mtime
        if text == self._text:
            return False
        try:
            new = load_policy(self.path)
        except PolicyError as exc:
            log.error(
                "new policy %s is invalid; keeping policy %s:\n%s",
                self.path,
                self.policy.sha256[:12],
                exc,
            )
            return False
        old_text = self._text
        self.policy, self._text = new, text
        log.info("policy reloaded: %s", new.sha256[:12])
        await self._record_change(old_text, text)
        return True

    async def _record_change(self, old_text: str | None, new_text: str) -> None:
        if self.record_system is None:
            return
        from capture.policy import policy_sha256
        from schemas.models import PolicyChanged

        await self.record_system(
            PolicyChanged,
            old_sha256=policy_sha256(old_text) if old_text is not None else None,
            new_sha256=policy_sha256(new_text),
            diff=policy_diff(old_text, new_text, name=self.path.name),
            source=str(self.path),
        )

    # -- decisions ----------------------------------------------------------------
    @fail_closed("policy")
    def request(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or flow.response is not None or st.identity is None:
            return
        cls = st.classification
        if cls is None:
            return
        policy = self.policy
        path = flow.request.path.split("?", 1)[0]
        ctx = RequestContext(
            now=datetime.now(UTC),
            change_ticket=flow.request.headers.get(policy.change_ticket_header),
            dpop_bound=st.identity.auth_method == "dpop",
            client_address=st.client_address or None,
            product=cls.product,
            method=flow.request.method,
            path=path,
        )
        decision = evaluate(policy, st.identity, cls.operations, ctx)
        st.decision = decision
        if decision.outcome == "deny":
            block(
                flow,
                st,
                decision.status,
                decision.error or "policy_denied",
                decision.reason,
                "policy",
            )
            return
        if decision.outcome == "require_approval":
            block(flow, st, decision.status, "approval_required", decision.reason, "approval")
            return
        self._apply_obligations(flow, decision)

    def _apply_obligations(self, flow: http.HTTPFlow, decision: Decision) -> None:
        st = state_of(flow)
        assert st is not None and st.classification is not None and st.identity is not None
        ob = decision.obligations
        if ob.row_filters:
            try:
                body: Any = json.loads(st.client_body or b"{}")
                new = inject_filters(
                    st.classification.product,
                    flow.request.path.split("?", 1)[0],
                    body,
                    [rf.filter for rf in ob.row_filters],
                    st.identity,
                )
            except (ValueError, FilterInjectionError) as exc:
                block(
                    flow,
                    st,
                    403,
                    "policy_denied",
                    f"a row filter must apply to this request but cannot: {exc}",
                    "policy",
                )
                return
            flow.request.set_content(json.dumps(new, separators=(",", ":")).encode())
            st.injected_filter = True
        if ob.mask is not None or ob.strip_vectors:
            m = ob.mask
            st.extra[PLAN_KEY] = MaskPlan(
                detectors=tuple(m.detectors) if m else (),
                fields=tuple(m.fields) if m else (),
                field_paths=tuple(m.paths) if m else (),
                mode=m.mode if m else "placeholder",
                strip_vectors=ob.strip_vectors,
                user_data_paths=tuple(st.classification.user_data_paths),
            )
