"""End to end: what an upstream answers besides a success (redirects, errors,
cookies) reaches a client of a real `embedguard gateway` process only as the
policy and the route allow, and the event log records what was changed.

Regressions of audit 3b (t16_responses): a 302 with ``Location:
http://10.0.0.7:6333/...`` exposed the upstream's address, the upstream's
``Set-Cookie`` was passed on, and a 3xx or 4xx body echoing
``bob@example.org`` was delivered unmasked under an e-mail obligation.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from capture.devidp import mint_token
from schemas.models import MaskedField, ResponseRecorded
from tests.support.events import read_events
from tests.support.gateway import GatewayProcess, gateway_process

POLICY = """\
version: 1
rules:
  - id: read-public
    effect: allow
    subjects: {groups: [Vector-Read]}
    actions: [search, read]
    collections: ["public*"]
    obligations:
      mask: {detectors: [email], fields: [email], mode: placeholder}
"""
QUERY = "/collections/public/points/query"

#: what the upstream answers, by the collection name in the path:
#: (status, headers, body)
ANSWERS: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {
    "public": (302, [("location", "http://10.0.0.7:6333/collections/public/points/query?i=1"),
                     ("set-cookie", "qdrant_session=abc; Path=/"),
                     ("content-type", "application/json")],
               b'{"status":{"error":"moved, contact bob@example.org"}}'),
    "public-here": (307, [("set-cookie", "qdrant_session=abc"),
                          ("content-type", "application/json")],  # + Location: its own URL
                    b'{"status":{"error":"moved, contact bob@example.org"}}'),
    "public-bad": (400, [("content-type", "application/json"), ("set-cookie", "a=b")],
                   b'{"status":{"error":"Wrong input: payload {\\"who\\": \\"bob@example.org\\"}'
                   b' ..."},"result":null}'),
    "public-html": (404, [("content-type", "text/html")],
                    b"<h1>no such collection</h1> ask bob@example.org"),
}


@contextlib.contextmanager
def answering_upstream() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length") or 0))
            collection = self.path.split("/")[2]
            status, headers, body = ANSWERS[collection]
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            if collection == "public-here":
                here = f"http://{self.headers['host']}/collections/{collection}/points/scroll"
                self.send_header("location", here)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, dev_idp: str) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("gw-answers")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    with answering_upstream() as upstream, gateway_process(
        tmp, upstream=upstream, kind="qdrant", policy=Path(policy), issuer=dev_idp
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def auth(dev_idp: str) -> dict[str, str]:
    return {"authorization": f"Bearer {mint_token(dev_idp, 'alice', ['Vector-Read'])}"}


def ask(gw: GatewayProcess, auth: dict[str, str],
        collection: str) -> tuple[httpx.Response, ResponseRecorded]:
    r = httpx.post(f"{gw.url}/collections/{collection}/points/query",
                   json={"query": [0.1], "limit": 3}, headers=auth, timeout=30)
    rid = r.headers["x-embedguard-request-id"]
    (recorded,) = [e.event for e in read_events(gw.log_url)
                   if isinstance(e.event, ResponseRecorded)
                   and e.event.envelope.request_id == rid]
    assert recorded.status == r.status_code
    assert recorded.body == r.content  # the record holds what was delivered
    return r, recorded


def _nothing_leaks(r: httpx.Response) -> None:
    seen = str(r.headers.raw) + r.text
    for leak in ("10.0.0.7", "127.0.0.1", "bob@example.org", "qdrant_session", "a=b"):
        assert leak not in seen, leak


def test_a_redirect_off_the_route_is_a_502(gw: GatewayProcess, auth: dict[str, str]) -> None:
    r, recorded = ask(gw, auth, "public")
    assert r.status_code == 502
    assert r.json()["error"] == "upstream_redirect_off_route"
    _nothing_leaks(r)
    assert recorded.upstream_error and "302" in recorded.upstream_error
    assert {(f.path, f.kind) for f in recorded.masked_fields} == {
        ("headers.location", "header"), ("headers.set-cookie", "header")}


def test_a_redirect_on_the_upstream_is_rewritten_and_its_body_masked(
    gw: GatewayProcess, auth: dict[str, str]
) -> None:
    r, recorded = ask(gw, auth, "public-here")
    assert r.status_code == 307
    assert r.headers.get_list("location") == ["/collections/public-here/points/scroll"]
    assert r.json() == {"status": {"error": "moved, contact [MASKED:email]"}}
    _nothing_leaks(r)
    assert set(recorded.masked_fields) == {
        MaskedField(path="status.error", kind="email"),
        MaskedField(path="headers.location", kind="header"),
        MaskedField(path="headers.set-cookie", kind="header")}


def test_an_error_body_is_masked(gw: GatewayProcess, auth: dict[str, str]) -> None:
    r, recorded = ask(gw, auth, "public-bad")
    assert r.status_code == 400
    assert "set-cookie" not in r.headers
    body: Any = r.json()
    assert body["status"]["error"] == 'Wrong input: payload {"who": "[MASKED:email]"} ...'
    _nothing_leaks(r)
    assert set(recorded.masked_fields) == {
        MaskedField(path="status.error", kind="email"),
        MaskedField(path="headers.set-cookie", kind="header")}


def test_an_error_body_that_cannot_be_masked_is_withheld(
    gw: GatewayProcess, auth: dict[str, str]
) -> None:
    r, _ = ask(gw, auth, "public-html")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    answer = json.loads(r.content)
    assert answer["error"] == "masking_failed" and "withheld" in answer["reason"]
    _nothing_leaks(r)
