"""Credentials (capture/credentials.py): the client's credentials never go
upstream, the gateway's own do, and the request leaves in origin-form."""

from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.test import tflow
from pydantic import SecretStr

from capture.config import Route
from capture.credentials import (
    Credentials,
    HeaderChange,
    clean_response_headers,
    client_reference,
    rewrite_upstream_headers,
    route_origins,
    strip_client_credentials,
)
from capture.state import KEY, FlowState
from schemas.models import MaskedField

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


# -- response headers: the upstream's session and address stay inside --------------
#
# Audit 3b: a 302 with Location: http://10.0.0.7:6333/... (the upstream's
# address) and the upstream's Set-Cookie reached the client as they were.

ORIGINS = route_origins(Route(kind="qdrant", upstream="http://db.internal:6333",
                              listen_port=6333, public_url="https://vectors.example.com"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # the upstream's own origin: the path the client reaches through the gateway
        ("http://db.internal:6333/collections/a?x=1#f", "/collections/a?x=1#f"),
        ("HTTP://DB.Internal:6333/c", "/c"),
        ("http://db.internal:6333", "/"),
        ("https://vectors.example.com/c", "/c"),
        ("https://vectors.example.com:443/c", "/c"),
        # relative references resolve against the gateway already
        ("/collections/a", "/collections/a"),
        ("points?offset=2", "points?offset=2"),
        ("?page=2", "?page=2"),
        # anywhere else is off the route
        ("http://10.0.0.7:6333/collections/public/points/query?internal=1", None),
        ("https://db.internal:6333/c", None),  # another scheme
        ("http://db.internal:6334/c", None),  # another port
        ("http://db.internal/c", None),
        ("http://user@db.internal:6333/c", None),
        ("//db.internal:6333/c", None),
        ("//evil.example/c", None),
        ("/\\evil.example/c", None),
        ("\\\\evil.example/c", None),
        ("http://db.internal:6333//evil.example/c", None),
        ("javascript:alert(1)", None),
        ("http://db.internal:99999/c", None),
        ("/c\r\nX-Injected: 1", None),
    ],
)
def test_client_reference(value: str, expected: str | None) -> None:
    assert client_reference(value, ORIGINS) == expected


@pytest.mark.parametrize(
    ("fields", "kept", "changes"),
    [
        ([("Content-Type", "application/json")], [("Content-Type", "application/json")], []),
        (
            [("Set-Cookie", "qdrant_session=abc; Path=/"), ("X-A", "1"),
             ("set-cookie", "b=2"), ("Set-Cookie2", "c=3")],
            [("X-A", "1")],
            [("set-cookie", "removed"), ("set-cookie", "removed"), ("set-cookie2", "removed")],
        ),
        (
            [("WWW-Authenticate", 'Basic realm="qdrant-prod-eu"'), ("X-A", "1"),
             ("Proxy-Authenticate", "Basic")],
            [("X-A", "1")],
            [("www-authenticate", "removed"), ("proxy-authenticate", "removed")],
        ),
        (
            [("Location", "http://db.internal:6333/collections/a"),
             ("Content-Location", "http://10.0.0.7:6333/collections/a")],
            [("Location", "/collections/a")],
            [("location", "rewritten"), ("content-location", "removed")],
        ),
        ([("Location", "/collections/a")], [("Location", "/collections/a")], []),
        (
            [("Refresh", "5; url=http://db.internal:6333/a"), ("Refresh", "0;URL='http://x/'"),
             ("Refresh", "3")],
            [("Refresh", "5; url=/a"), ("Refresh", "3")],
            [("refresh", "rewritten"), ("refresh", "removed")],
        ),
    ],
)
def test_clean_response_headers(
    fields: list[tuple[str, str]], kept: list[tuple[str, str]], changes: list[HeaderChange]
) -> None:
    raw = tuple((k.encode(), v.encode()) for k, v in fields)
    out, got = clean_response_headers(raw, ORIGINS)
    assert [(k.decode(), v.decode()) for k, v in out] == kept
    assert got == changes


def _answered(status: int, headers: list[tuple[str, str]], *, forwarded: bool = True,
              body: bytes = b'{"status":"ok"}') -> http.HTTPFlow:
    f = flow_for("POST", "http://gw:6333/collections/public/points/query", {})
    st_ = f.metadata[KEY]
    st_.forwarded = forwarded
    f.response = http.Response.make(status, body, [(k.encode(), v.encode()) for k, v in headers])
    return f


def test_an_upstream_redirect_off_the_route_becomes_a_502() -> None:
    f = _answered(302, [("location", "http://10.0.0.7:6333/collections/public/points/query"),
                        ("set-cookie", "qdrant_session=abc")])
    Credentials().response(f)
    assert f.response is not None and f.response.status_code == 502
    assert f.response.json()["error"] == "upstream_redirect_off_route"
    assert "10.0.0.7" not in str(f.response.headers.fields) + f.response.text
    assert "location" not in f.response.headers and "set-cookie" not in f.response.headers
    st_ = f.metadata[KEY]
    assert "302" in st_.extra["upstream_error"]
    assert st_.extra["masked_fields"] == [MaskedField(path="headers.location", kind="header"),
                                          MaskedField(path="headers.set-cookie", kind="header")]


def test_an_upstream_redirect_on_its_own_origin_is_passed_on_through_the_gateway() -> None:
    f = _answered(307, [("location", "http://db.internal:6333/collections/public/points/x"),
                        ("set-cookie", "a=1"), ("set-cookie", "b=2")])
    masked_before = MaskedField(path="result", kind="email")
    f.metadata[KEY].extra["masked_fields"] = [masked_before]
    Credentials().response(f)
    assert f.response is not None and f.response.status_code == 307
    assert f.response.headers.get_all("location") == ["/collections/public/points/x"]
    assert "set-cookie" not in f.response.headers
    assert f.metadata[KEY].extra["masked_fields"] == [
        masked_before, MaskedField(path="headers.location", kind="header"),
        MaskedField(path="headers.set-cookie", kind="header")]


def test_a_location_off_the_route_is_removed_from_an_answer_that_is_no_redirect() -> None:
    f = _answered(201, [("location", "http://10.0.0.7:6333/collections/c"),
                        ("content-type", "application/json")])
    Credentials().response(f)
    assert f.response is not None and f.response.status_code == 201
    assert f.response.content == b'{"status":"ok"}'
    assert "location" not in f.response.headers
    assert f.metadata[KEY].extra["masked_fields"] == [
        MaskedField(path="headers.location", kind="header")]


@pytest.mark.parametrize("forwarded", [True, False])
def test_clean_headers_are_left_alone(forwarded: bool) -> None:
    f = _answered(302 if forwarded else 403, [("location", "/collections/public")]
                  if forwarded else [("set-cookie", "gateway's own")], forwarded=forwarded)
    before = f.response.headers.fields if f.response else None
    Credentials().response(f)
    assert f.response is not None and f.response.headers.fields == before
    assert "masked_fields" not in f.metadata[KEY].extra


# -- the gateway's own credential echoed back, and credentials in the query ---------


@pytest.mark.parametrize("encoding", [None, "gzip", "br"])
def test_an_echoed_upstream_key_is_scrubbed_from_body_and_headers(encoding: str | None) -> None:
    """An upstream that echoes the key it was sent (an error message, a debug
    header): neither the client nor the record gets it. Found in review."""
    import base64
    import json

    body = json.dumps({"status": {"error": f"bad api-key {UPSTREAM_KEY}"},
                       "echo": base64.b64encode(UPSTREAM_KEY.encode()).decode()}).encode()
    f = _answered(403, [("content-type", "application/json"), ("x-debug", f"key={UPSTREAM_KEY}")],
                  body=body)
    assert f.response is not None
    if encoding:
        f.response.encode(encoding)
    Credentials().response(f)
    resp = f.response
    assert resp is not None and resp.status_code == 403
    assert UPSTREAM_KEY.encode() not in resp.get_content()  # type: ignore[operator]
    assert UPSTREAM_KEY not in str(resp.headers.fields)
    assert resp.headers.get("content-encoding") == encoding
    out = json.loads(resp.get_content() or b"")
    assert out["status"]["error"] == "bad api-key [REDACTED:credential]"
    assert out["echo"] == "[REDACTED:credential]"
    assert resp.headers["x-debug"] == "key=[REDACTED:credential]"
    if not encoding:
        assert int(resp.headers["content-length"]) == len(resp.raw_content or b"")
    assert f.metadata[KEY].extra["masked_fields"] == [
        MaskedField(path="headers.x-debug", kind="credential"),
        MaskedField(path="body", kind="credential")]


def test_an_answer_without_the_key_is_left_alone() -> None:
    f = _answered(200, [("content-type", "application/json")])
    before = f.response.raw_content if f.response else None
    Credentials().response(f)
    assert f.response is not None and f.response.raw_content is before
    assert "masked_fields" not in f.metadata[KEY].extra


def test_a_credential_in_the_query_never_goes_upstream() -> None:
    from capture.credentials import CLIENT_QUERY

    f = flow_for("GET", "http://gw:6333/collections/docs/points/1?api-key=client-own&wait=true"
                 "&paginationToken=p2&X-Api-Key=x", {"host": "gw:6333"})
    Credentials().request(f)
    assert f.request.path == "/collections/docs/points/1?wait=true&paginationToken=p2"
    assert f.metadata[KEY].extra[CLIENT_QUERY] == (
        "api-key=client-own&wait=true&paginationToken=p2&X-Api-Key=x")
    g = flow_for("GET", "http://gw:6333/collections/docs/points/1?wait=true", {"host": "gw:6333"})
    Credentials().request(g)
    assert g.request.path == "/collections/docs/points/1?wait=true"
    assert CLIENT_QUERY not in g.metadata[KEY].extra


def test_the_scrub_reads_the_body_the_masker_decoded() -> None:
    """An encoded body the masker left as it came is not decoded again: the
    masker's BODY_SEEN holds its bytes decoded."""
    import json

    from capture.masker import BODY_SEEN

    body = json.dumps({"error": f"bad key {UPSTREAM_KEY}"}).encode()
    f = _answered(403, [("content-type", "application/json")], body=body)
    assert f.response is not None
    f.response.encode("gzip")
    f.metadata[KEY].extra[BODY_SEEN] = (f.response.raw_content, "gzip", body, "-")
    Credentials().response(f)
    assert f.response.get_content() == b'{"error": "bad key [REDACTED:credential]"}'
    assert f.response.headers["content-encoding"] == "gzip"
