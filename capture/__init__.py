"""The gateway: mitmproxy addons, each one concern, in processing order.

``build_addons`` returns them in the order mitmproxy calls their hooks:

0. ``ControlApi``     /_embedguard/ approvals, tickets, grants (answered here, never forwarded)
1. ``Intake``         request id, state, what the client sent
2. ``IdentityCheck``  OIDC token and DPoP proof → Identity (401 otherwise)
3. ``Classifier``     the operations of the request (unknown → 403)
4. ``Enforcer``       policy decision, row filters, masking plan (403 on deny)
4a. ``ApprovalGate``  require_approval: ApprovalRequested, then hold the flow for the
                     decision (or 202 in async mode); tickets and grants are checked
                     by the Enforcer against the same ApprovalService
5. ``Masker``         (response) masks and strips, collects response ids
6. ``Credentials``    strips the client's credentials, injects the upstream's;
                     (response) drops Set-Cookie, keeps Location/Refresh on the
                     route (an off-route redirect becomes a JSON 502)
7. ``Recorder``       events made durable before forwarding / delivering (503 otherwise)
"""

from __future__ import annotations

from capture.config import GatewayConfig

__all__ = ["build_addons"]


def build_addons(config: GatewayConfig) -> list[object]:
    from capture.approval_gate import ApprovalGate
    from capture.approvals.service import (
        ApprovalService,
        approver_groups,
        ticket_requirement,
    )
    from capture.approvals.webhook import Webhook
    from capture.classifier import Classifier
    from capture.control_api import ControlApi
    from capture.credentials import Credentials
    from capture.enforcer import Enforcer
    from capture.identity import IdentityCheck
    from capture.intake import Intake
    from capture.masker import Masker
    from capture.policy import PolicyError
    from capture.recorder import Recorder
    from pipeline.transport import open_log

    try:
        enforcer = Enforcer(config.policy_path)
    except PolicyError as exc:
        raise ValueError(f"the policy does not load:\n{exc}") from None
    event_log = open_log(config.log_url)
    recorder = Recorder(config, log_=event_log, policy_sha256=lambda: enforcer.policy.sha256)
    enforcer.record_system = recorder.record_system
    recorder.on_started.append(enforcer.record_active)
    hmac_key = config.mask_hmac_key.get_secret_value().encode() if config.mask_hmac_key else None
    identity = IdentityCheck(config)
    # One ApprovalService per process, shared by the control API, the enforcer
    # and the approval gate; it reads the same log the recorder appends to.
    approvals = ApprovalService(
        event_log,
        recorder.emit,
        webhook=Webhook(config.approval_webhook_url.get_secret_value())
        if config.approval_webhook_url
        else None,
        ticket_requirement=lambda: ticket_requirement(enforcer.policy),
        grant_issuer_groups=approver_groups(enforcer.policy),
        stream=lambda: recorder.stamper.gateway_id,
    )
    control = ControlApi(approvals, identity.verifier, ready=recorder.started,
                         require_tls=config.tls_cert is not None)
    gate = ApprovalGate.wire(config, approvals, enforcer=enforcer, recorder=recorder)
    return [
        control,
        Intake(config),
        identity,
        Classifier(config),
        enforcer,
        gate,
        Masker(hmac_key),
        Credentials(),
        recorder,
    ]
