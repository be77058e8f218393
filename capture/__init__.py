"""The gateway: mitmproxy addons, each one concern, in processing order.

``build_addons`` returns them in the order mitmproxy calls their hooks:

1. ``Intake``         request id, state, what the client sent
2. ``IdentityCheck``  OIDC token and DPoP proof → Identity (401 otherwise)
3. ``Classifier``     the operations of the request (unknown → 403)
4. ``Enforcer``       policy decision, row filters, masking plan (403 on deny)
5. ``Masker``         (response) masks and strips, collects response ids
6. ``Credentials``    strips the client's credentials, injects the upstream's
7. ``Recorder``       events made durable before forwarding / delivering (503 otherwise)
"""

from __future__ import annotations

from capture.config import GatewayConfig

__all__ = ["build_addons"]


def build_addons(config: GatewayConfig) -> list[object]:
    from capture.classifier import Classifier
    from capture.credentials import Credentials
    from capture.enforcer import Enforcer
    from capture.identity import IdentityCheck
    from capture.intake import Intake
    from capture.masker import Masker
    from capture.policy import PolicyError
    from capture.recorder import Recorder

    try:
        enforcer = Enforcer(config.policy_path)
    except PolicyError as exc:
        raise ValueError(f"the policy does not load:\n{exc}") from None
    recorder = Recorder(config, policy_sha256=lambda: enforcer.policy.sha256)
    enforcer.record_system = recorder.record_system
    recorder.on_started.append(enforcer.record_active)
    hmac_key = config.mask_hmac_key.get_secret_value().encode() if config.mask_hmac_key else None
    return [
        Intake(config),
        IdentityCheck(config),
        Classifier(config),
        enforcer,
        Masker(hmac_key),
        Credentials(),
        recorder,
    ]
