"""Masker (capture/masker.py): the body helpers it uses on every masked response."""

from __future__ import annotations

import pytest
from mitmproxy import http

from capture.masker import set_identity_body


@pytest.mark.parametrize(
    "fields",
    [
        [(b"content-type", b"application/json"), (b"content-length", b"120")],
        [(b"Content-Length", b"5"), (b"x-a", b"1"), (b"content-length", b"5")],
        [(b"content-type", b"application/json")],  # no length yet
        [(b"Transfer-Encoding", b"chunked"), (b"content-type", b"application/json")],
        [],
    ],
)
@pytest.mark.parametrize("body", [b"", b'{"a":"[MASKED:email]"}', "é".encode() * 300])
def test_set_identity_body_equals_set_content(
    fields: list[tuple[bytes, bytes]], body: bytes
) -> None:
    by_api = http.Response.make(200, b"original body", fields)
    by_api.headers.fields = tuple(fields)
    ours = http.Response.make(200, b"original body", fields)
    ours.headers.fields = tuple(fields)
    by_api.set_content(body)
    set_identity_body(ours, body)
    assert ours.raw_content == by_api.raw_content == body
    assert ours.headers.fields == by_api.headers.fields
