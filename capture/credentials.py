"""Credentials: the client's token never goes upstream; the gateway's does.

Strips every header that carries a client credential (and model-provider keys
such as Weaviate's X-OpenAI-Api-Key), then injects the upstream API key in the
header the product expects. The key lives only in memory as a SecretStr.
"""

from __future__ import annotations

from mitmproxy import http

from capture.config import CREDENTIAL_HEADERS
from capture.redact import is_secret_header
from capture.state import fail_closed, state_of

__all__ = ["Credentials", "strip_client_credentials"]


def strip_client_credentials(headers: http.Headers) -> list[str]:
    """Remove credential-bearing headers in place; return their names.

    One pass over the raw fields: the multidict's key iteration and deletes
    cost several times more, on every request.
    """
    fields = headers.fields
    kept = tuple(f for f in fields if not is_secret_header(f[0].decode("latin-1")))
    if len(kept) == len(fields):
        return []
    names = sorted(
        {f[0].decode("latin-1").lower() for f in fields if is_secret_header(f[0].decode("latin-1"))}
    )
    headers.fields = kept
    return names


class Credentials:
    @fail_closed("upstream")
    def request(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or flow.response is not None:
            return
        strip_client_credentials(flow.request.headers)
        route = st.route
        # Reverse mode keeps the client's Host header; upstream gets its own.
        flow.request.host_header = route.upstream_hostport
        # mitmproxy reports the method upper-cased, so "get" was classified and
        # recorded as GET: send it as GET too.
        method = flow.request.method
        if flow.request.data.method != method.encode("utf-8", "surrogateescape"):
            flow.request.method = method
        if not (flow.request.is_http2 or flow.request.is_http3) and flow.request.data.authority:
            # An absolute-form target (GET http://other-host/path) would be
            # forwarded as sent, and the upstream would route by its authority
            # rather than the Host header: always send origin-form.
            flow.request.authority = ""
        if route.credential is not None:
            kind = st.classification.product if st.classification else route.kind
            header, fmt = CREDENTIAL_HEADERS.get(kind, ("authorization", "Bearer {secret}"))
            flow.request.headers[header] = fmt.format(secret=route.credential.get_secret_value())
