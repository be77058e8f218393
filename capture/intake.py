"""Intake: the first addon. It gives each flow its request id and state, and
keeps what the client sent (Host header, headers, body) before later addons
strip credentials or inject filters."""

from __future__ import annotations

import logging

from mitmproxy import http

from capture.config import GatewayConfig, Route
from capture.state import KEY, REQUEST_ID_HEADER, FlowState, block, fail_closed, state_of

__all__ = ["Intake"]

log = logging.getLogger("embedguard.intake")


class Intake:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._routes: dict[str, Route] = {r.mode_spec: r for r in config.routes}

    def route_for(self, flow: http.HTTPFlow) -> Route | None:
        mode = flow.client_conn.proxy_mode
        route = self._routes.get(mode.full_spec)
        if route is None and len(self._routes) == 1:
            route = next(iter(self._routes.values()))
        return route

    @fail_closed("classify")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        route = self.route_for(flow)
        if route is None:  # a listener we did not configure: refuse, never guess
            flow.kill()
            log.error(
                "flow on unconfigured listener %s killed", flow.client_conn.proxy_mode.full_spec
            )
            return
        st = FlowState(route=route)
        st.client_address = flow.client_conn.peername[0] if flow.client_conn.peername else ""
        st.client_host = flow.request.host_header or ""
        st.extra["client_headers"] = list(flow.request.headers.items(multi=True))
        flow.metadata[KEY] = st

    @fail_closed("classify")
    def request(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or flow.response is not None:
            return
        if self.config.tls_cert is not None and not flow.client_conn.tls_established:
            # mitmproxy's reverse mode serves plain HTTP on a TLS listener too;
            # a gateway configured for TLS must not take tokens in the clear.
            block(
                flow,
                st,
                403,
                "tls_required",
                "this listener accepts only TLS; connect with https://",
                "identity",
            )
            return
        body = flow.request.raw_content or b""
        if flow.request.headers.get("content-encoding"):
            decoded = flow.request.get_content(strict=False)
            if decoded is None:
                block(
                    flow,
                    st,
                    400,
                    "bad_request",
                    f"cannot decode content-encoding {flow.request.headers['content-encoding']!r}; "
                    "send the body uncompressed or with gzip/deflate/br/zstd",
                    "classify",
                )
                return
            body = decoded
        if len(body) > self.config.max_body_size:
            block(
                flow,
                st,
                413,
                "body_too_large",
                f"request body is {len(body)} bytes; the gateway accepts at most "
                f"{self.config.max_body_size}",
                "classify",
            )
            return
        st.client_body = body

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is not None and flow.response is not None:
            flow.response.headers[REQUEST_ID_HEADER] = st.request_id
