"""Masker (capture/masker.py): the body helpers it uses on every masked response, and
the addon itself against its reference path."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import tflow

from capture.config import Route
from capture.masker import BODY_SEEN, PLAN_KEY, Masker, MaskPlan, extract_ids, set_identity_body
from capture.masking import DETECTORS
from capture.state import KEY, FlowState, state_of
from capture.types import Classification
from tests.capture.test_masking import _DOC, _KEYS, _PII, _locations, _render_steps


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


# ------------------------------------------------- Masker: fast = reference
#
# Masker() takes shortcuts (no parse when nothing reads the document, the walk
# skipped when the body cannot hold anything to mask, a reused encoder, the
# fast mask_document); Masker(reference=True) is the plain path. On random
# bodies, specs and encodings both deliver the same bytes, headers and status
# and record the same masked fields, ids and hashes.

HMAC_KEY = b"h" * 32
ROUTE = Route(kind="qdrant", upstream="http://db.internal:6333", listen_port=6333)


def _run(masker: Masker, body: bytes, headers: list[tuple[bytes, bytes]],
         cls: Classification | None, plan: MaskPlan | None, status: int = 200
         ) -> tuple[Any, ...]:
    flow = tflow.tflow()
    st_ = FlowState(route=ROUTE, request_id="r-1")
    st_.forwarded = True
    st_.classification = cls
    if plan is not None:
        st_.extra[PLAN_KEY] = plan
    flow.metadata[KEY] = st_
    resp = http.Response.make(status, b"", [])
    resp.headers.fields = tuple(headers)
    resp.raw_content = body
    flow.response = resp
    masker.response(flow)
    after = state_of(flow)
    assert after is st_ and flow.response is not None
    seen = st_.extra.get(BODY_SEEN)
    return (
        flow.response.status_code,
        flow.response.raw_content,
        flow.response.headers.fields,
        st_.extra.get("masked_fields"),
        st_.extra.get("result_ids", []),
        st_.extra.get("upstream_error"),
        st_.extra.get("original_body_sha256"),
        seen and (seen[1], seen[2], seen[3]),
    )


_RICH = st.recursive(  # payloads dense with personal data
    _PII | st.integers() | st.none(),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(_KEYS), children, max_size=4),
    max_leaves=15,
)
_POINTS = st.lists(
    st.fixed_dictionaries({
        "id": st.integers(0, 10**6) | st.sampled_from(["p-1", "a@x.io"]),
        "payload": _RICH | _DOC,
        "vector": st.lists(st.floats(-1, 1), max_size=3),
    }),
    min_size=1,
    max_size=3,
).map(lambda points: {"result": {"points": points}, "status": "ok", "time": 0.0001})
_RARELY = st.sampled_from([False] * 5 + [True])
_QDRANT_PATHS = ("result.points[].payload", "result.points[].vector", "result.points[].id")


@st.composite
def _case(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, bytes]], Any, Any, Any]:
    doc = draw(_POINTS | st.dictionaries(st.sampled_from(_KEYS), _DOC, max_size=5) | _DOC)
    found = sorted({_render_steps(list(x)) for x in _locations(doc)} | set(_QDRANT_PATHS))
    some = st.lists(st.sampled_from(found), max_size=2).map(tuple)
    scanned = st.lists(st.sampled_from(found), min_size=1, max_size=2).map(tuple)
    product = draw(st.sampled_from(["qdrant", "milvus", "chroma"]))
    cls = None if draw(_RARELY) else Classification(
        product=product,  # type: ignore[arg-type]
        operations=[],
        response_ids=draw(some),
        user_data_paths=draw(scanned),
        vector_paths=draw(some),
    )
    plan = None if draw(_RARELY) else MaskPlan(
        detectors=tuple(draw(st.lists(st.sampled_from(list(DETECTORS)), min_size=1,
                                      max_size=4, unique=True))),
        fields=tuple(draw(st.lists(st.sampled_from(["email", "EMAIL", "note", "k"]),
                                   max_size=2))),
        field_paths=draw(some) if draw(_RARELY) else (),
        mode=draw(st.sampled_from(["placeholder", "hmac"])),
        strip_vectors=draw(st.booleans()),
        user_data_paths=cls.user_data_paths if cls else (),
    )
    if isinstance(doc, dict) and product == "milvus" and draw(st.booleans()):
        doc = {**doc, "code": draw(st.sampled_from([0, 1100, "x"])), "message": "bad a@x.io"}
    text = json.dumps(doc)
    body = draw(st.sampled_from([
        text.encode(), json.dumps(doc, ensure_ascii=False).encode(),
        json.dumps(doc, separators=(",", ":")).encode(), b" " + text.encode(),
        text.encode("utf-16-le"), text.encode("utf-16"), b"\xef\xbb\xbf" + text.encode(),
        # not JSON, not UTF-8
        text[:-1].encode(), b"{\xff}", b"[\x00]",
    ]))
    headers = [(b"content-type", draw(st.sampled_from([b"application/json", b"text/plain"])))]
    if draw(st.booleans()):
        body = gzip.compress(body, mtime=0)
        headers.append((b"content-encoding", b"gzip"))
    if draw(st.booleans()):
        headers.append((b"transfer-encoding", b"chunked"))
    else:
        headers.append((b"content-length", str(len(body)).encode()))
    key = None if draw(_RARELY) else HMAC_KEY
    return body, headers, cls, plan, key


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_case())
def test_masker_delivers_what_the_reference_delivers(case: tuple[Any, ...]) -> None:
    body, headers, cls, plan, key = case
    fast = _run(Masker(key), body, headers, cls, plan)
    reference = _run(Masker(key, reference=True), body, headers, cls, plan)
    assert fast == reference


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_case(), status=st.sampled_from([201, 302, 400, 404, 500]))
def test_masker_delivers_what_the_reference_delivers_for_any_status(
    case: tuple[Any, ...], status: int
) -> None:
    body, headers, cls, plan, key = case
    fast = _run(Masker(key), body, headers, cls, plan, status)
    reference = _run(Masker(key, reference=True), body, headers, cls, plan, status)
    assert fast == reference


@pytest.mark.parametrize("response_ids", [(), ("data[].id",)])
@pytest.mark.parametrize("plan", [None, MaskPlan()])
def test_milvus_errors_are_noted_without_ids_or_masking(
    response_ids: tuple[str, ...], plan: MaskPlan | None
) -> None:
    cls = Classification(product="milvus", operations=[], response_ids=response_ids)
    body = json.dumps({"code": 1100, "message": "collection not found", "data": []}).encode()
    for masker in (Masker(), Masker(reference=True)):
        *_, ids, error, _, _ = _run(masker, body, [(b"content-type", b"application/json")],
                                    cls, plan)
        assert error == "milvus code 1100: collection not found"
        assert ids == []


_PAYLOAD_PII = [
    "bob@example.org", "Carol@Example.com", "+44 20 7946 0958", "(415) 555-2671",
    "4111 1111 1111 1111", "5555555555554444", "123-45-6789", "AB 12 34 56 C", "046 454 286",
    "jürgen@bücher.de",
]
_PAYLOAD = st.recursive(
    st.sampled_from(_PAYLOAD_PII).flatmap(
        lambda v: st.sampled_from([v, f"see {v} now", f"{v}, {v}"])
    ) | st.integers() | st.none() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["a", "b", "note", "x y", "é"]), children, max_size=3),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.dictionaries(st.sampled_from(["a", "text", "email", "deep"]), _PAYLOAD,
                               min_size=1, max_size=4),
       mode=st.sampled_from(["placeholder", "hmac"]), gz=st.booleans(),
       reference=st.booleans())
def test_a_masked_value_never_reaches_the_client(
    payload: dict[str, Any], mode: str, gz: bool, reference: bool
) -> None:
    doc = {"result": {"id": 1, "payload": payload, "vector": [0.1, 0.2]}, "status": "ok"}
    body = json.dumps(doc).encode()
    headers = [(b"content-type", b"application/json")]
    if gz:
        body = gzip.compress(body)
        headers.append((b"content-encoding", b"gzip"))
    cls = Classification(product="qdrant", operations=[], response_ids=("result.id",),
                         user_data_paths=("result.payload",), vector_paths=("result.vector",))
    plan = MaskPlan(detectors=DETECTORS, fields=("email",), mode=mode,  # type: ignore[arg-type]
                    strip_vectors=True, user_data_paths=cls.user_data_paths)
    status, raw, fields, masked, ids, *_ = _run(
        Masker(HMAC_KEY, reference=reference), body, headers, cls, plan
    )
    assert status == 200 and ids == ["1"]
    delivered = gzip.decompress(raw) if gz else raw
    assert (b"content-length", str(len(raw)).encode()) in fields
    out = json.loads(delivered)
    assert out["result"]["vector"] is None
    assert masked, "something was masked"

    strings: list[str] = []
    stack: list[Any] = [out]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            strings.append(v)
    for value in _PAYLOAD_PII:
        assert not any(value in s for s in strings), value


@settings(max_examples=300, deadline=None)
@given(doc=_DOC, data=st.data())
def test_extract_ids_follows_key_paths_like_the_walk(doc: object, data: st.DataObject) -> None:
    from capture.masker import _parsed, _walk

    found = [_render_steps(list(s)) for s in _locations(doc)]
    paths = data.draw(st.lists(st.sampled_from(found) if found else st.just("a"), max_size=3)
                      | st.lists(st.sampled_from(["a", "a.b", "id", "a[]", "{*}.id"]),
                                 max_size=3))
    want: list[str] = []
    for path in paths:
        for value in _walk(doc, _parsed(path)):
            vals = value if isinstance(value, list) else [value]
            want.extend(str(v) for v in vals
                        if isinstance(v, str | int) and not isinstance(v, bool))
    assert extract_ids(doc, paths) == want[:10_000]


@pytest.mark.parametrize(
    "fields",
    [
        [],
        [(b"Content-Type", b"application/json")],
        [(b"content-encoding", b"gzip"), (b"CONTENT-TYPE", b"text/plain")],
        [(b"content-encoding", b"gzip"), (b"Content-Encoding", b"br"), (b"content-type", b"")],
        [(b"content-type", b"a"), (b"x", b"y"), (b"content-type", b"\xff")],
    ],
)
def test_encoding_and_type_read_as_header_value_does(fields: list[tuple[bytes, bytes]]) -> None:
    from capture.headers import header_value
    from capture.masker import _encoding_and_type

    headers = http.Headers(fields)
    assert _encoding_and_type(headers) == (
        header_value(headers, b"content-encoding"),
        header_value(headers, b"content-type") or "",
    )


# -------------------------------------- answers that are not a success
#
# Audit 3b: a 3xx or 4xx body echoing bob@example.org was delivered unmasked
# under an e-mail obligation, because only the paths of a success were masked.

_QDRANT_QUERY = Classification(product="qdrant", operations=[],
                               response_ids=("result.points[].id",),
                               user_data_paths=("result.points[].payload",),
                               vector_paths=("result.points[].vector",))
_EMAIL_PLAN = MaskPlan(detectors=("email",), fields=("secret",), strip_vectors=True,
                       user_data_paths=_QDRANT_QUERY.user_data_paths)


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize(
    ("status", "doc", "delivered", "masked"),
    [
        (400, {"status": {"error": 'Wrong input: payload {"who": "bob@example.org"}'},
               "result": None},
         {"status": {"error": 'Wrong input: payload {"who": "[MASKED:email]"}'},
          "result": None},
         [("status.error", "email")]),
        (302, {"status": {"error": "moved, contact bob@example.org"}},
         {"status": {"error": "moved, contact [MASKED:email]"}}, [("status.error", "email")]),
        (404, ["bob@example.org", {"secret": 7}], ["[MASKED:email]", {"secret": "[MASKED:field]"}],
         [("[0]", "email"), ("[1].secret", "field")]),
        (500, "failed for bob@example.org", "failed for [MASKED:email]", [("", "email")]),
        (503, 42, 42, []),
        # the success paths still apply, besides
        (409, {"result": {"points": [{"id": "bob@example.org", "payload": {"a": "bob@example.org"},
                                      "vector": [0.5]}]}},
         {"result": {"points": [{"id": "bob@example.org", "payload": {"a": "[MASKED:email]"},
                                 "vector": None}]}},
         [("result.points[0].payload.a", "email"), ("result.points[0].vector", "vector")]),
    ],
)
def test_an_answer_that_is_no_success_is_masked_all_over(
    reference: bool, status: int, doc: Any, delivered: Any, masked: list[tuple[str, str]]
) -> None:
    body = json.dumps(doc).encode()
    got_status, raw, _, fields, *_ = _run(
        Masker(HMAC_KEY, reference=reference), body, [(b"content-type", b"application/json")],
        _QDRANT_QUERY, _EMAIL_PLAN, status)
    assert got_status == status
    assert json.loads(raw) == delivered
    assert sorted((f.path, f.kind) for f in fields or []) == sorted(masked)


def test_a_success_is_masked_at_its_paths_only() -> None:
    # what the classifier says is not user data stays as it is in a 2xx
    doc = {"result": {"points": []}, "status": "ok", "note": "bob@example.org"}
    _, raw, *_ = _run(Masker(), json.dumps(doc).encode(),
                      [(b"content-type", b"application/json")], _QDRANT_QUERY, _EMAIL_PLAN)
    assert json.loads(raw) == doc


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("status", [200, 404])
def test_a_bare_json_string_is_masked_whatever_the_status(reference: bool, status: int) -> None:
    """A 2xx body that is one JSON string has no field and no path: its text
    is scanned as an error's is (it was delivered as it came; found in review)."""
    got_status, raw, _, fields, *_ = _run(
        Masker(HMAC_KEY, reference=reference), b'"bob@example.org"',
        [(b"content-type", b"application/json")], _QDRANT_QUERY, _EMAIL_PLAN, status)
    assert got_status == status and json.loads(raw) == "[MASKED:email]"
    assert [(f.path, f.kind) for f in fields or []] == [("", "email")]


@pytest.mark.parametrize("reference", [False, True])
def test_a_milvus_error_message_is_masked(reference: bool) -> None:
    cls = Classification(product="milvus", operations=[], response_ids=("data[].id",),
                         user_data_paths=("data[]",))
    body = json.dumps({"code": 1100, "message": "bad row bob@example.org", "data": []}).encode()
    _, raw, _, fields, _, error, *_ = _run(
        Masker(reference=reference), body, [(b"content-type", b"application/json")], cls,
        MaskPlan(detectors=("email",), user_data_paths=cls.user_data_paths))
    assert json.loads(raw)["message"] == "bad row [MASKED:email]"
    assert error == "milvus code 1100: bad row bob@example.org"  # the record's own note
    assert [(f.path, f.kind) for f in fields] == [("message", "email")]


@pytest.mark.parametrize(
    ("status", "body", "ctype"),
    [
        (302, b"<a href='http://10.0.0.7/'>moved</a> bob@example.org", b"text/html"),
        (404, b"no such collection; ask bob@example.org", b"text/plain"),
        (400, b'{"status": "bob@example.org"', b"application/json"),  # not valid JSON
    ],
)
def test_an_unreadable_answer_that_is_no_success_keeps_its_status_not_its_body(
    status: int, body: bytes, ctype: bytes
) -> None:
    headers = [(b"content-type", ctype), (b"location", b"/collections/public"),
               (b"retry-after", b"3"), (b"x-upstream", b"1")]
    for masker in (Masker(), Masker(reference=True)):
        got_status, raw, fields, masked, *_ = _run(masker, body, headers, _QDRANT_QUERY,
                                                   _EMAIL_PLAN, status)
        assert got_status == status
        answer = json.loads(raw)
        assert answer["error"] == "masking_failed" and answer["request_id"] == "r-1"
        assert "withheld" in answer["reason"] and str(status) in answer["reason"]
        assert b"bob@" not in raw
        names = dict(fields)
        assert names[b"location"] == b"/collections/public" and names[b"retry-after"] == b"3"
        assert b"x-upstream" not in names
        assert masked is None


def test_an_unreadable_success_is_still_a_502() -> None:
    status, raw, *_ = _run(Masker(), b"bob@example.org", [(b"content-type", b"text/plain")],
                           _QDRANT_QUERY, _EMAIL_PLAN)
    assert status == 502 and json.loads(raw)["error"] == "masking_failed"
