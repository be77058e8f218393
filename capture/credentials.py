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

__all__ = ["Credentials", "rewrite_upstream_headers", "strip_client_credentials"]


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


def _encoded(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")  # as mitmproxy encodes header text


def rewrite_upstream_headers(
    fields: tuple[tuple[bytes, bytes], ...],
    host: bytes,
    credential: tuple[bytes, bytes] | None,
) -> tuple[tuple[bytes, bytes], ...]:
    """An HTTP/1 request's header fields as they go upstream, in one pass:
    every client credential dropped (``strip_client_credentials``), the Host
    header set to ``host`` and the ``credential`` (lower-case name, value) set,
    each as mitmproxy's ``headers[name] = value`` sets it: the first field of
    that name gets the value in place, later ones are dropped, and a name not
    present is appended."""
    cred_name = credential[0] if credential is not None else None
    out: list[tuple[bytes, bytes]] = []
    host_set = cred_set = False
    for field in fields:
        name = field[0].lower()
        if name == b"host":
            if not host_set:
                out.append((field[0], host))
                host_set = True
        elif name == cred_name:
            # a credential header is a secret header, so this is a client's:
            # replaced by the gateway's below, never forwarded
            if not cred_set and not is_secret_header(field[0].decode("latin-1")):
                assert credential is not None
                out.append((field[0], credential[1]))
                cred_set = True
        elif not is_secret_header(field[0].decode("latin-1")):
            out.append(field)
    if not host_set:
        out.append((b"Host", host))
    if credential is not None and not cred_set:
        out.append(credential)
    return tuple(out)


class Credentials:
    @fail_closed("upstream")
    def request(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or flow.response is not None:
            return
        route = st.route
        req = flow.request
        credential: tuple[str, str] | None = None  # (header, value) upstream expects
        if route.credential is not None:
            kind = st.classification.product if st.classification else route.kind
            header, fmt = CREDENTIAL_HEADERS.get(kind, ("authorization", "Bearer {secret}"))
            credential = header, fmt.format(secret=route.credential.get_secret_value())
        # Reverse mode keeps the client's Host header; upstream gets its own.
        if not (req.is_http2 or req.is_http3):
            req.headers.fields = rewrite_upstream_headers(
                req.headers.fields,
                _encoded(route.upstream_hostport),
                None
                if credential is None
                else (_encoded(credential[0]).lower(), _encoded(credential[1])),
            )
        else:
            strip_client_credentials(req.headers)
            req.host_header = route.upstream_hostport
            if credential is not None:
                req.headers[credential[0]] = credential[1]
        self._origin_form(req)

    @staticmethod
    def _origin_form(req: http.Request) -> None:
        # mitmproxy reports the method upper-cased, so "get" was classified and
        # recorded as GET: send it as GET too.
        method = req.method
        if req.data.method != method.encode("utf-8", "surrogateescape"):
            req.method = method
        if not (req.is_http2 or req.is_http3) and req.data.authority:
            # An absolute-form target (GET http://other-host/path) would be
            # forwarded as sent, and the upstream would route by its authority
            # rather than the Host header: always send origin-form.
            req.authority = ""
