"""Redaction of credentials in recorded headers (pure)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from schemas.models import Header

__all__ = [
    "CLIENT_CREDENTIAL_HEADERS",
    "REDACTED",
    "is_secret_header",
    "redact_header_records",
    "redact_headers",
]

REDACTED = "[REDACTED]"

#: Headers that carry a client's credential to some vector database or to a
#: model provider (Weaviate modules read third-party keys from headers).
CLIENT_CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "api-key",
        "x-api-key",
        "x-chroma-token",
        "dpop",
        "cookie",
        "set-cookie",
    }
)
_SECRETISH = re.compile(
    r"(api[-_]?key|token|secret|password|auth|cookie|credential|signature)", re.I
)


@functools.lru_cache(maxsize=4096)
def is_secret_header(name: str) -> bool:
    # Cached: every request asks about the same few names, twice (stripping
    # and recording), and the regex search is most of the cost.
    n = name.lower()
    return n in CLIENT_CREDENTIAL_HEADERS or bool(_SECRETISH.search(n))


def redact_headers(headers: Iterable[tuple[str, str]]) -> list[Header]:
    return [
        Header(name=k.lower(), value=REDACTED if is_secret_header(k) else v) for k, v in headers
    ]


def redact_header_records(headers: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """``redact_headers`` as the plain records the recorder's events take."""
    return [
        {"name": k.lower(), "value": REDACTED if is_secret_header(k) else v} for k, v in headers
    ]
