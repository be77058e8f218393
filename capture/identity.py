"""Identity: verify the caller's OIDC token (and DPoP proof) before anything
else. A missing or invalid identity is refused with 401 (default deny); an
issuer we cannot reach gives 503, never a pass."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from mitmproxy import http

from capture.config import GatewayConfig
from capture.dpop import AuthError
from capture.oidc import OidcVerifier
from capture.state import block, fail_closed, state_of

__all__ = ["IdentityCheck"]

log = logging.getLogger("embedguard.identity")


class IdentityCheck:
    def __init__(self, config: GatewayConfig, verifier: OidcVerifier | None = None) -> None:
        self.config = config
        self.verifier = verifier or OidcVerifier(
            config.issuer, config.audience, groups_claim=config.groups_claim
        )

    async def running(self) -> None:
        try:
            await self.verifier.load()
        except AuthError as exc:  # keep serving: each request retries and gets 503 meanwhile
            log.error("issuer %s not reachable at start: %s", self.config.issuer, exc.message)

    async def done(self) -> None:
        await self.verifier.aclose()

    @fail_closed("identity")
    async def request(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or flow.response is not None:
            return
        headers = flow.request.headers
        if len(headers.get_all("authorization")) > 1 or len(headers.get_all("dpop")) > 1:
            st.auth_error_code = "duplicate_credentials"
            block(
                flow,
                st,
                401,
                "unauthenticated",
                "send exactly one Authorization header (and at most one DPoP header)",
                "identity",
            )
            return
        scheme = "https" if flow.client_conn.tls_established else "http"
        url = f"{scheme}://{st.client_host}{flow.request.path.split('?', 1)[0]}"
        try:
            st.identity = await self.verifier.authenticate(
                authorization=headers.get("authorization"),
                dpop_proof=headers.get("dpop"),
                method=flow.request.method,
                url=url,
                now=datetime.now(UTC),
            )
        except AuthError as exc:
            st.auth_error_code = exc.code
            error = "identity_unavailable" if exc.status == 503 else "unauthenticated"
            block(flow, st, exc.status, error, f"{exc.code}: {exc.message}", "identity")
            if flow.response is not None and exc.status == 401:
                flow.response.headers["www-authenticate"] = exc.www_authenticate()
