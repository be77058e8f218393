"""Redaction of credentials in recorded headers and request bodies (pure)."""

from __future__ import annotations

import functools
import json
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any

from schemas.models import Header

__all__ = [
    "CLIENT_CREDENTIAL_HEADERS",
    "REDACTED",
    "is_secret_header",
    "is_secret_query_param",
    "redact_query",
    "strip_secret_query",
    "SECRET_BODY_KEYS",
    "redact_header_records",
    "redact_headers",
    "body_holds_credentials",
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
    r"(api[-_]?key|access[-_]?key|private[-_]?key|token|secret|password|auth|cookie"
    r"|credential|signature)",
    re.I,
)


@functools.lru_cache(maxsize=4096)
def is_secret_header(name: str) -> bool:
    # Cached: every request asks about the same few names, twice (stripping
    # and recording), and the regex search is most of the cost.
    n = name.lower()
    return n in CLIENT_CREDENTIAL_HEADERS or bool(_SECRETISH.search(n))


#: Query parameters that carry a credential (whole names: Pinecone's
#: ``paginationToken`` is no credential). The gateway holds the upstream's
#: credential and sends it in a header; one in the query is the client's own.
_SECRET_QUERY = re.compile(
    r"(x[-_]?)?(api[-_]?key|apikey|access[-_]?token|id[-_]?token|auth|authorization"
    r"|token|key|password|passwd|secret|client[-_]?secret|signature|sig|credentials?)",
    re.I,
)
_QUERY_HINT = re.compile(r"key|token|auth|pass|secret|sig|credential", re.I)


def is_secret_query_param(name: str) -> bool:
    return bool(_SECRET_QUERY.fullmatch(urllib.parse.unquote_plus(name).strip()))


def _query_parts(query: str) -> list[tuple[str, bool]]:
    return [(part, is_secret_query_param(part.partition("=")[0]))
            for part in query.split("&")]


def redact_query(query: str) -> str:
    """``query`` with the value of every credential parameter replaced by
    ``[REDACTED]`` (the rest byte for byte as sent)."""
    if not query or not _QUERY_HINT.search(query):
        return query
    return "&".join(f"{part.partition('=')[0]}={REDACTED}" if secret else part
                    for part, secret in _query_parts(query))


def strip_secret_query(query: str) -> tuple[str, list[str]]:
    """``query`` without its credential parameters, and their names."""
    if not query or not _QUERY_HINT.search(query):
        return query, []
    parts = _query_parts(query)
    gone = [p.partition("=")[0] for p, secret in parts if secret]
    return "&".join(p for p, secret in parts if not secret), gone


def redact_headers(headers: Iterable[tuple[str, str]]) -> list[Header]:
    return [
        Header(name=k.lower(), value=REDACTED if is_secret_header(k) else v) for k, v in headers
    ]


def redact_header_records(headers: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """``redact_headers`` as the plain records the recorder's events take."""
    return [
        {"name": k.lower(), "value": REDACTED if is_secret_header(k) else v} for k, v in headers
    ]


#: JSON keys whose values are credentials in some product's request bodies,
#: compared lower-case without '-' or '_': Milvus ``users/create`` (password)
#: and ``users/update_password`` (password, newPassword), Zilliz Cloud's
#: ``jobs/import/create`` (accessKey, secretKey, token; vector-db-apis.md),
#: Milvus snapshot export and restore (``externalSpec``, a JSON string whose
#: ``extfs`` holds access_key_id and access_key_value),
#: Qdrant's snapshot recovery from a URL (api_key), and the usual spellings
#: of the same things. A key counts wherever it appears in the body, so a body
#: with a user's own payload field named ``token`` or ``password`` is not
#: recorded either: the record is an audit trail, never a credential store.
SECRET_BODY_KEYS = frozenset(
    {
        "password",
        "passwd",
        "newpassword",
        "oldpassword",
        "secret",
        "secretkey",
        "secretaccesskey",
        "clientsecret",
        "accesskey",
        "accesskeyid",
        "apikey",
        "privatekey",
        "token",
        "accesstoken",
        "refreshtoken",
        "sessiontoken",
        "authtoken",
        "bearertoken",
        "idtoken",
        "credential",
        "credentials",
        # object-storage credentials: Milvus snapshot export/restore_external
        # ``externalSpec.extfs`` (access_key_id, access_key_value), Azure
        "accesskeyvalue",
        "accountkey",
        "sastoken",
        "connectionstring",
        # Milvus ``externalSpec``: a JSON string whose extfs may carry keys
        "externalspec",
    }
)

#: a cheap test on the raw bytes before any JSON is parsed: a quoted key that
#: could be one of SECRET_BODY_KEYS...
_KEY_HINT = re.compile(
    rb'(?i)"[a-z_-]*(?:pass(?:word|wd)|secret|[a-z_-]key|token|credentials?'
    rb'|key[_-]?value|connection[_-]?string|external[_-]?spec)"\s*:'
)
#: ...or a backslash, since a key spelled with JSON escapes escapes that test


def _norm(key: str) -> str:
    return key.lower().replace("-", "").replace("_", "")


def _holds_key(value: Any) -> bool:
    if isinstance(value, dict):
        return any(
            _norm(k) in SECRET_BODY_KEYS or _holds_key(v) for k, v in value.items()
        )
    if isinstance(value, list):
        return any(_holds_key(v) for v in value)
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        # JSON inside a string (Milvus ``externalSpec``, options passed through
        # as text): its keys count too
        try:
            inner = json.loads(value)
        except ValueError:
            return False
        return _holds_key(inner)
    return False


def body_holds_credentials(body: bytes) -> bool:
    """Whether a request body carries a credential: a JSON key of
    SECRET_BODY_KEYS anywhere in it, or, for a body that is not JSON, what
    looks like one. Such a body is never recorded (its sha256 and size are):
    bodies are referenced by hash, and a copy with the values replaced would
    not hash to it (invariant 4)."""
    if not body:
        return False
    hinted = _KEY_HINT.search(body) is not None
    if not hinted and b"\\" not in body:
        return False
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return hinted
    return _holds_key(doc)
