"""Intake: the first addon. It gives each flow its request id and state, and
keeps what the client sent (Host header, headers, body) before later addons
strip credentials or inject filters."""

from __future__ import annotations

import gc
import logging
import re
import zlib

import brotli
import zstandard
from mitmproxy import http

from capture.config import GatewayConfig, Route
from capture.state import KEY, REQUEST_ID_HEADER, FlowState, block, fail_closed, state_of

__all__ = ["BodyDecodeError", "BodyTooLarge", "Intake", "decode_body"]

log = logging.getLogger("embedguard.intake")


class BodyDecodeError(ValueError):
    """The request body is not valid data in its content coding."""


class BodyTooLarge(ValueError):
    """Decoded, the request body would be larger than the gateway accepts."""


#: Request content codings the gateway decodes. mitmproxy alone would also
#: "decode" any Python codec named in the header (base64, bz2, rot13...) and
#: pass undecodable bodies through as they are.
CONTENT_CODINGS = ("identity", "gzip", "x-gzip", "deflate", "br", "zstd")
_CHUNK = 16  # bytes of br/zstd input per step; bounds the output of one step


def decode_body(raw: bytes, coding: str, limit: int) -> bytes:
    """Decode ``raw`` from one content coding, producing at most ``limit``
    bytes: a decompression bomb stops at the limit instead of filling memory.

    Raises :class:`BodyTooLarge` past the limit and :class:`BodyDecodeError`
    for bad or truncated data or a coding not in :data:`CONTENT_CODINGS`.
    """
    coding = coding.strip().lower()
    if coding not in CONTENT_CODINGS:
        raise BodyDecodeError(f"content-encoding {coding[:40]!r} is not supported")
    if coding == "identity" or not raw:
        out = raw
    elif coding in ("gzip", "x-gzip"):
        out = _inflate(raw, 16 + zlib.MAX_WBITS, limit)
    elif coding == "deflate":  # zlib-wrapped as the RFC says, or raw as some clients send
        try:
            out = _inflate(raw, zlib.MAX_WBITS, limit)
        except BodyDecodeError:
            out = _inflate(raw, -zlib.MAX_WBITS, limit)
    elif coding == "br":
        out = _unbrotli(raw, limit)
    else:
        out = _unzstd(raw, limit)
    if len(out) > limit:
        raise BodyTooLarge(f"{coding} body decodes to more than {limit} bytes")
    return out


def _inflate(raw: bytes, wbits: int, limit: int) -> bytes:
    out = bytearray()
    data = raw
    while data:  # gzip bodies may hold several members
        d = zlib.decompressobj(wbits)
        try:
            out += d.decompress(data, limit + 1 - len(out))
        except zlib.error as exc:
            raise BodyDecodeError(f"invalid compressed data: {exc}") from None
        if len(out) > limit:
            raise BodyTooLarge(f"body decodes to more than {limit} bytes")
        if not d.eof:
            raise BodyDecodeError("compressed data is truncated")
        data = d.unused_data
        if data and wbits <= zlib.MAX_WBITS:  # only gzip has members
            raise BodyDecodeError("data after the end of the compressed stream")
    return bytes(out)


def _unbrotli(raw: bytes, limit: int) -> bytes:
    d = brotli.Decompressor()
    out = bytearray()
    try:
        for i in range(0, len(raw), _CHUNK):
            out += d.process(raw[i:i + _CHUNK])
            if len(out) > limit:
                raise BodyTooLarge(f"br body decodes to more than {limit} bytes")
    except brotli.error as exc:
        raise BodyDecodeError(f"invalid br data: {exc}") from None
    if not d.is_finished():
        raise BodyDecodeError("br data is truncated")
    return bytes(out)


def _unzstd(raw: bytes, limit: int) -> bytes:
    out = bytearray()
    data = raw
    try:
        while data:  # one frame after another
            d = zstandard.ZstdDecompressor().decompressobj()
            i = 0
            while i < len(data) and not d.eof:
                out += d.decompress(data[i:i + _CHUNK])
                i += _CHUNK
                if len(out) > limit:
                    raise BodyTooLarge(f"zstd body decodes to more than {limit} bytes")
            if not d.eof:
                raise BodyDecodeError("zstd data is truncated")
            data = d.unused_data + data[i:]
    except zstandard.ZstdError as exc:
        raise BodyDecodeError(f"invalid zstd data: {exc}") from None
    return bytes(out)


def raw_headers(headers: http.Headers) -> list[tuple[str, str]]:
    """Every header in order (repeats kept), decoded from the raw fields."""
    return [
        (k.decode("latin-1"), v.decode("utf-8", "replace")) for k, v in headers.fields
    ]


#: A request target holds no control character and no space (RFC 9112 §3.2):
#: the upstream gets HTTP/1.1, where a CR/LF in it ends the request line and
#: starts a request nobody classified (an HTTP/2 :path may carry any byte).
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
#: A field value holds no CR, LF, NUL or other control character but HTAB
#: (RFC 9110 §5.5); a name is a token (RFC 9110 §5.6.2).
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: Connection-specific fields, malformed in an HTTP/2 request (RFC 9113
#: §8.2.2); forwarded as HTTP/1.1, a Transfer-Encoding would frame the body
#: the upstream reads differently from the one the gateway classified.
_H2_FORBIDDEN = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade"}
)


def malformed(request: http.Request) -> str | None:
    """Why ``request`` cannot be forwarded as the request it was classified
    as, or None. mitmproxy's HTTP/1 parser refuses most of this itself; its
    HTTP/2 layer does not, and forwards HTTP/2 requests upstream as HTTP/1.1."""
    if _BAD_TARGET.search(request.data.path):
        return ("the request target holds a space or a control character; "
                "percent-encode it")
    h2 = request.http_version.startswith("HTTP/2")
    for name, value in request.headers.fields:
        if not _TOKEN.match(name):
            return f"header name {name[:40]!r} is not a valid HTTP token"
        if _BAD_VALUE.search(value):
            return (f"header {name.decode('latin-1')[:40]!r} holds a control character "
                    "(CR, LF, NUL...); remove it")
        if h2 and name.lower() in _H2_FORBIDDEN:
            if name.lower() == b"te" and value.strip().lower() == b"trailers":
                continue
            return (f"header {name.decode('latin-1')!r} is connection-specific and not "
                    "allowed in an HTTP/2 request (RFC 9113 section 8.2.2)")
    return None


class Intake:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._routes: dict[str, Route] = {r.mode_spec: r for r in config.routes}

    def running(self) -> None:
        # Startup leaves ~100k long-lived objects (mitmproxy, the pydantic and
        # Avro schemas, the policy, TLS state). Every full garbage collection
        # walked them all while traffic runs; frozen, the collector skips
        # them (bench/gateway_profile.py: gc time per request about halved).
        # Once per process: a process that embeds several gateways (tests)
        # keeps collecting what later ones leave behind.
        if gc.get_freeze_count() == 0:
            gc.collect()
            gc.freeze()

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
        st.extra["client_headers"] = raw_headers(flow.request.headers)
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
        problem = malformed(flow.request)
        if problem is not None:
            block(flow, st, 400, "bad_request", problem, "classify")
            return
        body = flow.request.raw_content or b""
        coding = flow.request.headers.get("content-encoding")
        if coding:
            # The upstream gets the decoded bytes: what is classified and
            # recorded is exactly what it receives, whatever its decoder.
            try:
                body = decode_body(body, coding, self.config.max_body_size)
            except BodyTooLarge:
                block(flow, st, 413, "body_too_large",
                      f"the {coding[:40]!r} request body decodes to more than "
                      f"{self.config.max_body_size} bytes, the most the gateway accepts",
                      "classify")
                return
            except BodyDecodeError as exc:
                supported = coding.strip().lower() in CONTENT_CODINGS
                block(flow, st, 400 if supported else 415,
                      "bad_request" if supported else "unsupported_content_encoding",
                      f"cannot decode the body: {exc}; send it uncompressed or with "
                      "gzip/deflate/br/zstd", "classify")
                return
            del flow.request.headers["content-encoding"]
            flow.request.content = body
        elif (body and "content-length" not in flow.request.headers
              and "transfer-encoding" not in flow.request.headers):
            # An HTTP/2 body needs no length; forwarded as HTTP/1.1 without one,
            # the upstream would read it as the next request. (HTTP/1 framing
            # was checked by mitmproxy's parser; Transfer-Encoding is refused
            # above for HTTP/2.)
            flow.request.headers["content-length"] = str(len(body))
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
