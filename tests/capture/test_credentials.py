"""Credentials (capture/credentials.py): the client's credentials never go
upstream, the gateway's own do, and the request leaves in origin-form."""

from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.test import tflow
from pydantic import SecretStr

from capture.config import Route
from capture.credentials import Credentials, rewrite_upstream_headers, strip_client_credentials
from capture.state import KEY, FlowState

UPSTREAM_KEY = "eg-upstream-key-5d1e"


@pytest.mark.parametrize(
    ("fields", "kept", "stripped"),
    [
        ([("Host", "h"), ("Accept", "*/*")], [("Host", "h"), ("Accept", "*/*")], []),
        (
            [("Authorization", "Bearer t"), ("Host", "h"), ("authorization", "Bearer u")],
            [("Host", "h")],
            ["authorization"],
        ),
        (
            [
                ("X-Api-Key", "a"),
                ("api-key", "b"),
                ("DPoP", "p"),
                ("Cookie", "c"),
                ("X-OpenAI-Api-Key", "sk"),
                ("User-Agent", "ua"),
                ("x-chroma-token", "t"),
            ],
            [("User-Agent", "ua")],
            ["api-key", "cookie", "dpop", "x-api-key", "x-chroma-token", "x-openai-api-key"],
        ),
        (
            [("X-Session-Token", "s"), ("Content-Type", "application/json")],
            [("Content-Type", "application/json")],
            ["x-session-token"],
        ),
    ],
)
def test_strip_removes_every_credential_and_keeps_the_rest_in_order(
    fields: list[tuple[str, str]], kept: list[tuple[str, str]], stripped: list[str]
) -> None:
    headers = http.Headers([(k.encode(), v.encode()) for k, v in fields])
    assert strip_client_credentials(headers) == stripped
    assert [(k.decode(), v.decode()) for k, v in headers.fields] == kept


def flow_for(method: str, url: str, headers: dict[str, str], kind: str = "qdrant") -> http.HTTPFlow:
    f = tflow.tflow()
    f.request = http.Request.make(method, url, b"", headers)
    route = Route(
        kind=kind,  # type: ignore[arg-type]
        upstream="http://db.internal:6333",
        listen_port=6333,
        credential=SecretStr(UPSTREAM_KEY),
    )
    f.metadata[KEY] = FlowState(route=route)
    return f


def test_client_token_out_upstream_key_in_origin_form_upper_case_method() -> None:
    f = flow_for(
        "get",
        "http://gw:6333/collections/docs/points/1",
        {"host": "gw:6333", "authorization": "Bearer client-token", "accept": "*/*"},
    )
    f.request.authority = "other-host:80"  # an absolute-form target
    Credentials().request(f)
    assert f.request.data.method == b"GET"
    assert f.request.authority == ""
    assert f.request.headers["host"] == "db.internal:6333"
    assert f.request.headers.get_all("api-key") == [UPSTREAM_KEY]
    assert "client-token" not in str(f.request.headers.fields)
    assert f.request.headers["accept"] == "*/*"


def test_weaviate_key_goes_in_authorization_replacing_the_clients() -> None:
    f = flow_for(
        "POST",
        "http://gw:8080/v1/graphql",
        {"host": "gw:8080", "Authorization": "Bearer client-token"},
        kind="weaviate",
    )
    Credentials().request(f)
    assert f.request.headers.get_all("authorization") == [f"Bearer {UPSTREAM_KEY}"]


def _by_headers_api(
    fields: list[tuple[bytes, bytes]], host: str, credential: tuple[str, str] | None
) -> tuple[tuple[bytes, bytes], ...]:
    """What the mitmproxy header API makes of the same request (the HTTP/2 path)."""
    headers = http.Headers(fields)
    strip_client_credentials(headers)
    headers["Host"] = host
    if credential is not None:
        headers[credential[0]] = credential[1]
    return headers.fields


@pytest.mark.parametrize(
    "fields",
    [
        [(b"Host", b"gw:6333"), (b"Accept", b"*/*")],
        [(b"accept", b"*/*")],  # no Host at all
        [(b"HOST", b"a"), (b"x-y", b"1"), (b"host", b"b"), (b"Authorization", b"Bearer t")],
        [(b"api-key", b"client"), (b"Api-Key", b"client2"), (b"User-Agent", b"ua")],
        [(b"Cookie", b"c"), (b"X-OpenAI-Api-Key", b"sk"), (b"x-chroma-token", b"t"),
         (b"Content-Type", b"application/json"), (b"host", b"h"), (b"X-Caf\xc3\xa9", b"\xff")],
        [],
    ],
)
@pytest.mark.parametrize(
    "credential", [None, ("api-key", UPSTREAM_KEY), ("authorization", f"Bearer {UPSTREAM_KEY}"),
                   ("x-chroma-token", UPSTREAM_KEY)],
)
def test_one_pass_rewrite_equals_the_header_api(
    fields: list[tuple[bytes, bytes]], credential: tuple[str, str] | None
) -> None:
    expected = _by_headers_api(fields, "db.internal:6333", credential)
    got = rewrite_upstream_headers(
        tuple(fields),
        b"db.internal:6333",
        None if credential is None else (credential[0].encode(), credential[1].encode()),
    )
    assert got == expected


def test_http2_request_keeps_the_header_api_path() -> None:
    f = flow_for("GET", "http://gw:6333/collections/docs/points/1",
                 {"authorization": "Bearer client-token", "accept": "*/*"})
    f.request.http_version = "HTTP/2.0"
    Credentials().request(f)
    assert f.request.authority == "db.internal:6333"
    assert f.request.headers.get_all("api-key") == [UPSTREAM_KEY]
    assert "client-token" not in str(f.request.headers.fields)
