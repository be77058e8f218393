"""Enforcer: the policy decides each operation; obligations are applied.

Deny refuses the request with 403 and the reasons; require_approval is left to
the approval gate (capture/approval_gate.py), which holds the request or answers
202. Allowed requests (and those that await approval) get their row filters
injected into the body and a masking plan for the response. The policy file is
watched: a valid change is swapped in and recorded as PolicyChanged with the
diff; an invalid one keeps the old policy and logs why.

A ``--workers`` worker restarted while the file does not load starts from the
last version that did (:func:`start_from_if_invalid`, given by its supervisor:
what the other workers enforce), says so loudly, and follows the file's
reloads from there; its PolicyChanged events name the hash it enforces.

With an approvals service, the change ticket a request names
(``X-Change-Ticket``) is checked against it (approved by another person, in
scope, in its window, operations left) and the verdict is passed to the
policy, as are the caller's active time-boxed grants; :func:`evaluate` stays
pure. A request that relies on a ticket claims its operations from it through
the log (:meth:`ApprovalService.claim`), so two concurrent requests, on this
gateway or on two, cannot both take its last operation; the claim is given back
if the request is not forwarded, so only operations that reached the database
use the ticket up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from capture.filter_guard import masked_filter_problem
from capture.filters import FilterInjectionError, MalformedFilterError, inject_filters
from capture.headers import header_value
from capture.masker import PLAN_KEY, MaskPlan
from capture.policy import (
    Decision,
    GrantScope,
    Policy,
    PolicyError,
    RequestContext,
    RequestObligations,
    TicketCheck,
    evaluate,
    load_policy,
    parse_policy,
    policy_diff,
)
from capture.state import block, fail_closed, state_of
from capture.types import Identity, Operation
from pipeline.transport.errors import EventLogError

if TYPE_CHECKING:
    from capture.approvals.service import ApprovalService, Grant

__all__ = ["Enforcer", "grant_scope", "start_from_if_invalid"]

log = logging.getLogger("embedguard.enforcer")

Recorder = Callable[..., Awaitable[None]]
_PLAN_CACHE_SIZE = 256
RecordReceived = Callable[[http.HTTPFlow], Awaitable[None]]

#: policy file -> the text to enforce when that file does not load at start
_FALLBACKS: dict[Path, str] = {}


def start_from_if_invalid(path: Path, text: str | None) -> None:
    """An Enforcer of ``path`` created in this process from now on enforces
    ``text`` (the last version that loaded) if the file does not load, instead
    of refusing to start. For a restarted ``--workers`` worker only: a gateway
    that never had a valid policy must not start (None forgets it)."""
    if text is None:
        _FALLBACKS.pop(path, None)
    else:
        _FALLBACKS[path] = text


@functools.lru_cache(maxsize=64)
def _header_key(name: str) -> bytes:
    """A header name as ``header_value`` compares it (as mitmproxy does)."""
    return name.encode("utf-8", "surrogateescape").lower()


def grant_scope(g: Grant) -> GrantScope:
    """An approvals-service grant as the policy sees it."""
    return GrantScope(grant_id=g.grant_id, kind=g.kind, actions=list(g.actions),
                      collections=list(g.collections), valid_from=g.valid_from,
                      valid_until=g.valid_until, issued_by=g.issued_by)


class Enforcer:
    def __init__(
        self,
        policy_path: Path,
        *,
        reload_interval_s: float = 1.0,
        approvals: ApprovalService | None = None,
        record_received: RecordReceived | None = None,
    ) -> None:
        #: checks change tickets and finds grants (None: tickets cannot be valid)
        self.approvals = approvals
        #: makes a request's PolicyDecided durable now (the Recorder's)
        self.record_received = record_received
        self._ticket_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._plans: dict[tuple[int, tuple[str, ...]], tuple[RequestObligations, MaskPlan]] = {}
        self.path = policy_path
        self.reload_interval_s = reload_interval_s
        self._watcher: asyncio.Task[None] | None = None
        #: records PolicyChanged (the Recorder's ``record_system``; None in tests)
        self.record_system: Recorder | None = None
        try:
            self.policy: Policy = load_policy(policy_path)  # PolicyError: fail at start
            self._text = policy_path.read_text(encoding="utf-8")
            self._mtime = policy_path.stat().st_mtime_ns
        except PolicyError as exc:
            fallback = _FALLBACKS.get(policy_path)
            if fallback is None:
                raise
            self._start_from(fallback, exc)

    def _start_from(self, text: str, why: PolicyError) -> None:
        # the fallback loaded before (in the supervisor): a PolicyError here
        # would mean it did not, and refuses the start as the file's would
        self.policy = parse_policy(text, str(self.path))
        self._text = text
        try:
            # the invalid version is not read again until the file changes
            self._mtime = self.path.stat().st_mtime_ns
        except OSError:
            self._mtime = -1
        log.error(
            "policy %s does not load, so this gateway enforces the last version that "
            "loaded (%s), as the gateway's other workers do; it follows the file again "
            "once the file loads. Fix the file:\n%s",
            self.path, self.policy.sha256[:12], why,
        )

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
    async def request(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or flow.response is not None or st.identity is None:
            return
        cls = st.classification
        if cls is None:
            return
        policy = self.policy
        path = flow.request.path.split("?", 1)[0]
        now = datetime.now(UTC)
        ticket_id = (
            header_value(flow.request.headers, _header_key(policy.change_ticket_header)) or ""
        ).strip()
        grants: list[GrantScope] = []
        if self.approvals is not None:
            # The folded view may lag the log by a poll interval: a grant issued
            # a moment ago may be missed, which only ever refuses more.
            grants = [grant_scope(g)
                      for g in self.approvals.active_grants(
                          st.identity.issuer, st.identity.subject, now)]
        ctx = RequestContext(
            now=now,
            change_ticket=ticket_id or None,
            verify_tickets=True,
            grants=grants,
            dpop_bound=st.identity.auth_method == "dpop",
            client_address=st.client_address or None,
            product=cls.product,
            method=flow.request.method,
            path=path,
        )
        if not ticket_id or self.approvals is None or len(ticket_id) > 256:
            self._decided(flow, evaluate(policy, st.identity, cls.operations, ctx))
            return
        try:
            async with self._ticket_lock(ticket_id):
                check = await self._check_ticket(ticket_id, st.identity, cls.operations, now)
                decision = evaluate(policy, st.identity, cls.operations,
                                    ctx.model_copy(update={"ticket": check}))
                if decision.ticket_id:
                    decision = await self._claim_ticket(flow, decision, ctx, check)
                self._decided(flow, decision)
        except EventLogError as exc:
            log.error("request %s: change ticket not checkable: %s", st.request_id, exc)
            st.forwarded = False
            block(flow, st, 503, "audit_log_unavailable",
                  "the change ticket cannot be checked or its use recorded now, so the "
                  "request was not forwarded; retry later", "log")

    @contextlib.asynccontextmanager
    async def _ticket_lock(self, ticket_id: str) -> AsyncIterator[None]:
        """One check-and-record at a time per ticket (the lock lives while used)."""
        lock, users = self._ticket_locks.get(ticket_id, (asyncio.Lock(), 0))
        self._ticket_locks[ticket_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._ticket_locks[ticket_id]
            if users <= 1:
                del self._ticket_locks[ticket_id]
            else:
                self._ticket_locks[ticket_id] = (lock, users - 1)

    async def _claim_ticket(self, flow: http.HTTPFlow, decision: Decision,
                            ctx: RequestContext, check: TicketCheck) -> Decision:
        """Take the request's operations from the ticket across every gateway
        (:meth:`ApprovalService.claim`); if they do not fit, decide again with the
        ticket refused. The claim is given back if the request is not forwarded
        (the approval gate's response and error hooks)."""
        from capture.approvals.service import CLAIM_KEY, ApprovalError

        st = state_of(flow)
        assert self.approvals is not None and st is not None and st.identity is not None
        assert st.classification is not None
        ops = st.classification.operations
        try:
            await self.approvals.claim(check.ticket_id, kind="ticket", request_id=st.request_id,
                                       operations=max(1, len(ops)))
        except ApprovalError as exc:
            refused = TicketCheck(ticket_id=check.ticket_id, valid=False, reason=exc.message,
                                  error=exc.code)
            return evaluate(self.policy, st.identity, ops,
                            ctx.model_copy(update={"ticket": refused}))
        st.extra[CLAIM_KEY] = (check.ticket_id, "ticket")
        return decision

    async def _check_ticket(self, ticket_id: str, identity: Identity,
                            operations: list[Operation], now: datetime) -> TicketCheck:
        from capture.approvals.service import ApprovalError

        assert self.approvals is not None
        try:
            await self.approvals.check_ticket(ticket_id, identity, operations, now)
        except ApprovalError as exc:
            return TicketCheck(ticket_id=ticket_id, valid=False, reason=exc.message,
                               error=exc.code)
        return TicketCheck(ticket_id=ticket_id, valid=True)

    def _decided(self, flow: http.HTTPFlow, decision: Decision) -> None:
        st = state_of(flow)
        assert st is not None
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
        if decision.outcome == "require_approval" and self.approvals is None:
            block(flow, st, decision.status, "approval_required", decision.reason, "approval")
            return
        self._apply_obligations(flow, decision)

    def _apply_obligations(self, flow: http.HTTPFlow, decision: Decision) -> None:
        st = state_of(flow)
        assert st is not None and st.classification is not None and st.identity is not None
        ob = decision.obligations
        mask = ob.mask
        if mask is not None and mask.filters == "deny" and st.classification.filters:
            problem = masked_filter_problem(
                st.classification.product, st.classification.filters,
                fields=mask.fields, paths=mask.paths, detectors=mask.detectors)
            if problem is not None:
                block(flow, st, 403, "masked_field_filter", problem, "policy")
                return
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
            except MalformedFilterError as exc:
                # the client's own filter is at fault: say what to fix
                block(flow, st, 400, "bad_request",
                      f"the request's filter cannot take the row filter: {exc}", "policy")
                return
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
            st.extra[PLAN_KEY] = self._mask_plan(ob, tuple(st.classification.user_data_paths))

    def _mask_plan(self, ob: RequestObligations, user_data_paths: tuple[str, ...]) -> MaskPlan:
        """The response's masking plan. Remembered per obligations object: the
        policy hands out the same one for every request it decides alike, and
        holding it in the entry keeps its id from being reused."""
        key = (id(ob), user_data_paths)
        found = self._plans.get(key)
        if found is not None and found[0] is ob:
            return found[1]
        m = ob.mask
        plan = MaskPlan(
            detectors=tuple(m.detectors) if m else (),
            fields=tuple(m.fields) if m else (),
            field_paths=tuple(m.paths) if m else (),
            mode=m.mode if m else "placeholder",
            strip_vectors=ob.strip_vectors,
            user_data_paths=user_data_paths,
        )
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[key] = (ob, plan)
        return plan
