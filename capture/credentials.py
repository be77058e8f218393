"""Credentials: the client's token never goes upstream; the gateway's does.

Strips every header that carries a client credential (and model-provider keys
such as Weaviate's X-OpenAI-Api-Key), then injects the upstream API key in the
header the product expects. The key lives only in memory as a SecretStr.

On the way back, the upstream's own session and address stay inside too
(:func:`clean_response_headers`): ``Set-Cookie`` is dropped (the gateway owns
the client's session, and a session with the upstream would be one opened
with the gateway's credential), and a URL in ``Location``,
``Content-Location`` or ``Refresh`` that points at the upstream's origin
becomes the path the client reaches through the gateway (a relative
reference). One that points anywhere else is removed; a redirect (3xx) to such
a place is answered with a JSON 502 instead, because a redirect without its
target is no answer a client can act on, and the gateway never sends a client
off its route. What was changed is recorded with the response, as masking is.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import urllib.parse
from typing import Any, Literal

from mitmproxy import http

from capture.config import CREDENTIAL_HEADERS, Route
from capture.masker import BODY_SEEN
from capture.redact import is_secret_header, strip_secret_query
from capture.state import error_response, fail_closed, state_of
from schemas.models import MaskedField

__all__ = [
    "CLIENT_QUERY",
    "CREDENTIAL_REDACTED",
    "Credentials",
    "HeaderChange",
    "clean_response_headers",
    "client_reference",
    "rewrite_upstream_headers",
    "route_origins",
    "scrub_secret",
    "secret_forms",
    "strip_client_credentials",
]

#: (scheme, host, port) of an http(s) URL, lower-case, the port explicit
Origin = tuple[str, str, int]
#: (lower-case header name, what was done to it)
HeaderChange = tuple[str, Literal["removed", "rewritten"]]


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


# -- response headers -----------------------------------------------------------

_URL_HEADERS = frozenset({b"location", b"content-location"})
#: dropped from upstream responses: the upstream's cookies, and its
#: challenges, which concern the gateway's credential (and name the
#: upstream's realm), never the client's
_COOKIE_HEADERS = frozenset(
    {b"set-cookie", b"set-cookie2", b"www-authenticate", b"proxy-authenticate"}
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Refresh: ``<seconds>; url=<URL>`` (the URL optionally quoted)
_REFRESH = re.compile(r"""^(\s*[^;,]*)[;,]\s*url\s*=\s*(['"]?)(.*?)\2\s*$""", re.I | re.S)
#: what a browser or client might read as the start of another host
_NETWORK_PATH = re.compile(r"^[/\\]{2}|^/\\")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def _origin(url: str) -> Origin | None:
    try:
        p = urllib.parse.urlsplit(url)
        port = p.port
    except ValueError:
        return None
    scheme = p.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not p.hostname or p.username or p.password:
        return None
    return scheme, p.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def route_origins(route: Route) -> frozenset[Origin]:
    """The origins a response of ``route`` may name as its own: the upstream's
    (which the gateway hides) and the public URL clients use, if configured."""
    found = (_origin(u) for u in (route.upstream, route.public_url) if u)
    return frozenset(o for o in found if o is not None)


def client_reference(value: str, origins: frozenset[Origin]) -> str | None:
    """``value`` (a URL a response names) as the client may follow it through
    the gateway, or None when it leads off the route.

    A relative reference stays as it is (the client resolves it against the
    gateway's URL, which serves the same paths); an absolute URL on one of
    ``origins`` becomes its path, query and fragment. Anything else (another
    host, port or scheme, user info, a scheme-relative ``//host``, a control
    character) is off the route."""
    if _CONTROL.search(value):
        return None
    try:
        p = urllib.parse.urlsplit(value)
    except ValueError:
        return None
    if not p.scheme and not p.netloc:
        reference = value
    elif _origin(value) in origins:
        reference = urllib.parse.urlunsplit(("", "", p.path or "/", p.query, p.fragment))
    else:
        return None
    # never a reference a client could read as another host ("//h", "/\\h")
    return None if _NETWORK_PATH.match(reference) else reference


def _refresh_value(value: str, origins: frozenset[Origin]) -> str | None:
    m = _REFRESH.match(value)
    if m is None:
        return value if "url" not in value.lower() else None
    reference = client_reference(m.group(3), origins)
    return None if reference is None else f"{m.group(1).strip()}; url={reference}"


def clean_response_headers(
    fields: tuple[tuple[bytes, bytes], ...], origins: frozenset[Origin]
) -> tuple[tuple[tuple[bytes, bytes], ...], list[HeaderChange]]:
    """A response's header fields as the client may see them, and what changed:
    ``Set-Cookie`` and the upstream's auth challenges removed; ``Location``,
    ``Content-Location`` and ``Refresh`` rewritten to a reference through the
    gateway (:func:`client_reference`)
    when they name the upstream, removed when they lead off the route."""
    out: list[tuple[bytes, bytes]] = []
    changes: list[HeaderChange] = []
    for name, value in fields:
        lower = name.lower()
        if lower in _COOKIE_HEADERS:
            changes.append((lower.decode("latin-1"), "removed"))
            continue
        if lower in _URL_HEADERS or lower == b"refresh":
            text = value.decode("utf-8", "surrogateescape").strip()
            new = (_refresh_value(text, origins) if lower == b"refresh"
                   else client_reference(text, origins))
            if new is None:
                changes.append((lower.decode("latin-1"), "removed"))
                continue
            if new != text:
                changes.append((lower.decode("latin-1"), "rewritten"))
                value = new.encode("utf-8", "surrogateescape")
        out.append((name, value))
    return tuple(out), changes


#: st.extra: the client's query, when credential parameters were taken out of
#: the forwarded one
CLIENT_QUERY = "client_query"
#: what an upstream's echo of the gateway's credential becomes
CREDENTIAL_REDACTED = b"[REDACTED:credential]"
#: a shorter credential is not searched for in responses: its bytes would
#: match ordinary text (no real API key is this short)
_MIN_SCRUB_LEN = 8


@functools.lru_cache(maxsize=64)
def _forms(secret: str) -> tuple[bytes, ...]:
    raw = secret.encode()
    escaped = json.dumps(secret)[1:-1].encode()  # as it sits inside a JSON string
    b64 = base64.b64encode(raw)
    return tuple(dict.fromkeys(f for f in (raw, escaped, b64) if len(f) >= _MIN_SCRUB_LEN))


def secret_forms(route: Route) -> tuple[bytes, ...]:
    """The byte forms of ``route``'s upstream credential that an echo would
    show (as sent, JSON-escaped, base64), or () without one."""
    if route.credential is None:
        return ()
    return _forms(route.credential.get_secret_value())


def scrub_secret(resp: http.Response, forms: tuple[bytes, ...],
                 seen: tuple[Any, ...] | None = None) -> list[str]:
    """Replace every echo of the gateway's own credential (``forms``) in the
    response's headers and (decoded) body with ``[REDACTED:credential]``, so it
    reaches neither the client nor the record (an upstream that echoes the key
    it was sent, in an error message or a debug header). ``seen``: the
    masker's ``BODY_SEEN`` (the body it decoded), so an encoded body the
    masker left as it came is not decoded twice. Returns where it was found
    (``headers.<name>``, ``body``)."""
    found: list[str] = []
    fields = resp.headers.fields
    if any(f in v for _, v in fields for f in forms):
        out = []
        for name, value in fields:
            if any(f in value for f in forms):
                for f in forms:
                    value = value.replace(f, CREDENTIAL_REDACTED)
                found.append(f"headers.{name.decode('latin-1').lower()}")
            out.append((name, value))
        resp.headers.fields = tuple(out)
    raw = resp.raw_content
    if raw:
        encoded = bool(resp.headers.get("content-encoding"))
        if not encoded:
            body = raw
        elif seen is not None and seen[0] is raw:
            body = seen[2]  # the masker decoded these very bytes
        else:
            body = resp.get_content(strict=False) or b""
        if any(f in body for f in forms):
            for f in forms:
                body = body.replace(f, CREDENTIAL_REDACTED)
            if encoded:
                resp.content = body  # encoded again as it came, length fixed
            else:
                resp.raw_content = body
                if "content-length" in resp.headers:
                    resp.headers["content-length"] = str(len(body))
            found.append("body")
    return found


class Credentials:
    @fail_closed("upstream")
    def response(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or not st.forwarded or flow.response is None:
            return
        resp = flow.response
        forms = secret_forms(st.route)
        if forms:
            scrubbed = scrub_secret(resp, forms, st.extra.get(BODY_SEEN))
            if scrubbed:
                st.extra["masked_fields"] = [
                    *st.extra.get("masked_fields", []),
                    *(MaskedField(path=where, kind="credential") for where in scrubbed)]
        fields, changes = clean_response_headers(resp.headers.fields, route_origins(st.route))
        if not changes:
            return
        recorded = [MaskedField(path=f"headers.{name}", kind="header")
                    for name in dict.fromkeys(name for name, _ in changes)]
        if 300 <= resp.status_code < 400 and ("location", "removed") in changes:
            st.extra["upstream_error"] = (
                f"the upstream answered {resp.status_code} with a redirect off the route; "
                "it was not passed on"
            )
            st.extra["masked_fields"] = recorded
            flow.response = error_response(
                502,
                "upstream_redirect_off_route",
                f"the upstream answered {resp.status_code} and redirected to a location "
                "outside this gateway's route; the redirect was not passed on (the operation "
                "may have completed upstream)",
                st.request_id,
                method=flow.request.method,
            )
            return
        resp.headers.fields = fields
        st.extra["masked_fields"] = [*st.extra.get("masked_fields", []), *recorded]

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
        # a credential in the query (?api-key=...) is the client's own: it never
        # goes upstream (the recorder keeps the client's query, redacted)
        path, sep, query = req.path.partition("?")
        if sep:
            kept, gone = strip_secret_query(query)
            if gone:
                st.extra[CLIENT_QUERY] = query
                req.path = f"{path}?{kept}" if kept else path
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
