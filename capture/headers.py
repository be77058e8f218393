"""Header look-ups on the raw fields, for the hooks that run on every request.

``http.Headers.get`` lower-cases and re-encodes every field name through the
multidict's generic machinery on each call (≈ 3 µs for a handful of headers);
the hooks ask for a few headers per request, so they read the raw fields once
instead. The result is the same as ``headers.get(name)``: repeated fields
folded with ``", "``, values decoded as mitmproxy decodes them.
"""

from __future__ import annotations

from mitmproxy import http

__all__ = ["header_value"]


def header_value(headers: http.Headers, name: bytes) -> str | None:
    """``headers.get(name)`` for a lower-case ASCII ``name`` given as bytes."""
    values = [v for k, v in headers.fields if k.lower() == name]
    if not values:
        return None
    return ", ".join(v.decode("utf-8", "surrogateescape") for v in values)
