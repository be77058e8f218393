"""capture/masking.py: detectors, paths, placeholders and HMAC tokens, vector
stripping, ids, deep input."""

from __future__ import annotations

import copy
import json
import re
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture.masking import (
    DETECTORS,
    MaskingError,
    detect,
    is_vector_shaped,
    mask_document,
    mask_document_reference,
    mask_text,
    parse_path,
    render_path,
)
from schemas.models import MaskedField

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
_EMAIL_SHAPE = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}")


# ---------------------------------------------------------------- detectors

@pytest.mark.parametrize(
    ("text", "kind", "masked"),
    [
        ("write to a@x.io today", "email", "write to [MASKED:email] today"),
        ("First.Last+tag@Mail.Example.co.uk", "email", "[MASKED:email]"),
        ("<bob@example.org>", "email", "<[MASKED:email]>"),
        ("mailto:ann@corp.example", "email", "mailto:[MASKED:email]"),
        ("jürgen@bücher.de", "email", "[MASKED:email]"),
        ("call +1 (415) 555-2671 now", "phone", "call [MASKED:phone] now"),
        ("+14155552671", "phone", "[MASKED:phone]"),
        ("+44 20 7946 0958", "phone", "[MASKED:phone]"),
        ("+44 (0)20 7946 0958", "phone", "[MASKED:phone]"),
        ("(415) 555-2671", "phone", "[MASKED:phone]"),
        ("415-555-2671", "phone", "[MASKED:phone]"),
        ("415.555.2671", "phone", "[MASKED:phone]"),
        ("1-800-555-0199", "phone", "[MASKED:phone]"),
        ("020 7946 0958", "phone", "[MASKED:phone]"),
        ("01 23 45 67 89", "phone", "[MASKED:phone]"),
        ("030 12345678", "phone", "[MASKED:phone]"),
        ("card 4111 1111 1111 1111 exp 12/29", "card", "card [MASKED:card] exp 12/29"),
        ("4111111111111111", "card", "[MASKED:card]"),
        ("4111-1111-1111-1111", "card", "[MASKED:card]"),
        ("3782 822463 10005", "card", "[MASKED:card]"),
        ("5555555555554444", "card", "[MASKED:card]"),
        ("6011111111111117", "card", "[MASKED:card]"),
        ("4111111111111111 2024", "card", "[MASKED:card] 2024"),
        ("ssn 123-45-6789.", "national_id", "ssn [MASKED:national_id]."),
        ("AB 12 34 56 C", "national_id", "[MASKED:national_id]"),
        ("QQ123456C is not one, AB123456C is", "national_id",
         "QQ123456C is not one, [MASKED:national_id] is"),
        ("046 454 286", "national_id", "[MASKED:national_id]"),
    ],
)
def test_detector_true_positives(text: str, kind: str, masked: str) -> None:
    out, kinds = mask_text(text, [kind])
    assert out == masked
    assert kinds == [kind]


@pytest.mark.parametrize(
    "text",
    [
        "12345", "42", "0", "-7", "3.14159", "0.1234567890", "1e-10", "2024-01-15",
        "2024-01-15T10:30:00Z", "10:30:00", "6b1b5c3e-6f0e-4b6a-9a57-3f3c8f0b2a11",
        "192.168.100.1", "10.0.0.0/8", "v1.2.3", "1,234,567", "1700000000000",  # ms timestamp
        "1700000000", "4111111111111112",  # Luhn fails
        "1234567812345670",  # Luhn passes but no issuer starts with 1
        "123-456-7890",  # no area code starts with 1
        "000-12-3456", "666-12-3456", "123-00-4567", "123456789",  # not SSNs
        "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", "user at example dot com", "a@b", "@x.io",
        "price 1200.50 EUR", "port 6333", "ids [1, 2, 3]", "+33", "order 0012",
        "9780306406157",  # ISBN-13
    ],
)
def test_detector_true_negatives(text: str) -> None:
    assert mask_text(text, DETECTORS) == (text, [])


def test_overlapping_hits_are_all_masked() -> None:
    # the card wins the overlap; the e-mail glued to it is still caught
    out, kinds = mask_text("4111 1111 1111 1111a@x.io", DETECTORS)
    assert out == "[MASKED:card][MASKED:email]"
    assert sorted(kinds) == ["card", "email"]


def test_detect_reports_spans() -> None:
    spans = detect("a@x.io and 415-555-2671", ["email", "phone"])
    assert [(s.start, s.end, s.kind) for s in spans] == [(0, 6, "email"), (11, 23, "phone")]


def test_only_requested_detectors_run() -> None:
    assert mask_text("a@x.io 415-555-2671", ["phone"])[0] == "a@x.io [MASKED:phone]"


@pytest.mark.parametrize(
    "text",
    ["a" * 200_000, "a@" * 100_000, "x@b-" * 50_000, "1 " * 100_000, "4111 " * 50_000,
     "+" * 100_000, "0" * 100_000, "a@" + "b." * 100_000],
)
def test_adversarial_strings_are_fast(text: str) -> None:
    import time

    start = time.perf_counter()
    mask_text(text, DETECTORS)
    assert time.perf_counter() - start < 5


# --------------------------------------------------------------------- hmac

def test_hmac_tokens_are_joinable_and_key_dependent() -> None:
    a, _ = mask_text("a@x.io", ["email"], mode="hmac", hmac_key=KEY)
    b, _ = mask_text("A@X.IO", ["email"], mode="hmac", hmac_key=KEY)  # case-folded
    c, _ = mask_text("b@x.io", ["email"], mode="hmac", hmac_key=KEY)
    d, _ = mask_text("a@x.io", ["email"], mode="hmac", hmac_key=OTHER_KEY)
    assert re.fullmatch(r"\[HMAC:email:[0-9a-f]{16}\]", a)
    assert a == b
    assert a != c
    assert a != d


def test_hmac_normalises_formatting() -> None:
    one, _ = mask_text("+1 (415) 555-2671", ["phone"], mode="hmac", hmac_key=KEY)
    two, _ = mask_text("+1 415.555.2671", ["phone"], mode="hmac", hmac_key=KEY)
    assert one == two
    card1, _ = mask_text("4111 1111 1111 1111", ["card"], mode="hmac", hmac_key=KEY)
    card2, _ = mask_text("4111-1111-1111-1111", ["card"], mode="hmac", hmac_key=KEY)
    assert card1 == card2


def test_hmac_joins_across_documents() -> None:
    r1 = mask_document({"p": {"owner": "a@x.io"}}, paths=["p"], detectors=["email"],
                       mode="hmac", hmac_key=KEY)
    r2 = mask_document([{"m": "contact: a@x.io"}], paths=["[]"], detectors=["email"],
                       mode="hmac", hmac_key=KEY)
    token = r1.doc["p"]["owner"]
    assert r2.doc[0]["m"] == f"contact: {token}"


@pytest.mark.parametrize("key", [None, b"", b"short"])
def test_hmac_needs_a_real_key(key: bytes | None) -> None:
    with pytest.raises(MaskingError, match="16 bytes"):
        mask_document({}, paths=["x"], detectors=["email"], mode="hmac", hmac_key=key)


# -------------------------------------------------------------------- paths

@pytest.mark.parametrize(
    ("path", "steps"),
    [
        ("result.points[].payload", ("result", "points", "[]", "payload")),
        ("ids[][]", ("ids", "[]", "[]")),
        ("vectors{*}.metadata", ("vectors", "{*}", "metadata")),
        ("[].properties", ("[]", "properties")),
        ("data.Get.{*}[]", ("data", "Get", "{*}", "[]")),
        ("data[].email", ("data", "[]", "email")),
    ],
)
def test_parse_path(path: str, steps: tuple[str, ...]) -> None:
    assert parse_path(path) == steps


@pytest.mark.parametrize("path", ["", ".a", "a..b", "a[0]", "a{x}", "a]", "a.[]x]"])
def test_bad_paths_raise(path: str) -> None:
    with pytest.raises(MaskingError):
        parse_path(path)


def test_render_path_quotes_odd_keys() -> None:
    assert render_path(("result", "points", 0, "payload", "email")) == \
        "result.points[0].payload.email"
    assert render_path(("vectors", "v-1.a", "metadata")) == 'vectors["v-1.a"].metadata'
    assert render_path((0, "x")) == "[0].x"


QDRANT_SCROLL = {
    "result": {
        "points": [
            {"id": 1, "payload": {"email": "a@x.io", "note": "ring 415-555-2671",
                                  "nested": {"deep": ["b@y.org", 7, None]}},
             "vector": [0.1, 0.2]},
            {"id": "c@z.io", "payload": {"city": "Oslo"}, "vector": [0.3, 0.4]},
        ],
        "next_page_offset": None,
    },
    "status": "ok",
}


def test_scan_roots_mask_detector_hits_inside_and_record_concrete_paths() -> None:
    before = copy.deepcopy(QDRANT_SCROLL)
    r = mask_document(QDRANT_SCROLL, paths=["result.points[].payload"],
                      detectors=["email", "phone"], id_paths=["result.points[].id"])
    assert QDRANT_SCROLL == before  # input untouched
    p0 = r.doc["result"]["points"][0]["payload"]
    assert p0["email"] == "[MASKED:email]"
    assert p0["note"] == "ring [MASKED:phone]"
    assert p0["nested"]["deep"] == ["[MASKED:email]", 7, None]
    assert r.doc["result"]["points"][1]["id"] == "c@z.io"  # ids are never masked
    assert r.doc["result"]["points"][0]["vector"] == [0.1, 0.2]
    assert r.masked_fields == [
        MaskedField(path="result.points[0].payload.email", kind="email"),
        MaskedField(path="result.points[0].payload.nested.deep[0]", kind="email"),
        MaskedField(path="result.points[0].payload.note", kind="phone"),
    ]


def test_fields_mask_whole_values_case_insensitively_at_any_depth() -> None:
    doc = {"matches": [{"id": "v1", "metadata": {"Email": "not-an-address",
                                                 "profile": {"ssn": 123456789}}}]}
    r = mask_document(doc, paths=["matches[].metadata"], fields=["email", "SSN"])
    md = r.doc["matches"][0]["metadata"]
    assert md == {"Email": "[MASKED:field]", "profile": {"ssn": "[MASKED:field]"}}
    assert {f.kind for f in r.masked_fields} == {"field"}


def test_field_paths_mask_whole_values() -> None:
    doc = {"code": 0, "data": [{"id": 1, "email": "a@x.io", "age": 40},
                               {"id": 2, "email": None}]}
    # the record id is protected by its position (the classifier's id path)
    r = mask_document(doc, field_paths=["data[].email", "data[].id"], id_paths=["data[].id"])
    assert r.doc["data"] == [{"id": 1, "email": "[MASKED:field]", "age": 40},
                             {"id": 2, "email": None}]
    assert r.masked_fields == [MaskedField(path="data[0].email", kind="field")]


def test_map_values_and_nested_arrays() -> None:
    pinecone_fetch = {"vectors": {"v1": {"id": "v1", "values": [0.1],
                                         "metadata": {"m": "a@x.io"}}}, "namespace": "ns"}
    r = mask_document(pinecone_fetch, paths=["vectors{*}.metadata"], detectors=["email"],
                      strip_vector_paths=["vectors{*}.values"], id_paths=["vectors{*}.id"])
    assert r.doc["vectors"]["v1"] == {"id": "v1", "values": None,
                                      "metadata": {"m": "[MASKED:email]"}}
    assert [f.path for f in r.masked_fields] == ["vectors.v1.metadata.m", "vectors.v1.values"]

    chroma_query = {"ids": [["a@x.io", "b"]], "documents": [["mail a@x.io", None]],
                    "metadatas": [[{"u": "b@y.io"}, None]], "embeddings": None}
    r = mask_document(chroma_query, paths=["documents[][]", "metadatas[][]"],
                      detectors=["email"], id_paths=["ids[][]"])
    assert r.doc["ids"] == [["a@x.io", "b"]]
    assert r.doc["documents"] == [["mail [MASKED:email]", None]]
    assert r.doc["metadatas"] == [[{"u": "[MASKED:email]"}, None]]
    assert [f.path for f in r.masked_fields] == ["documents[0][0]", "metadatas[0][0].u"]


def test_paths_that_do_not_fit_select_nothing() -> None:
    doc = {"result": [1, 2], "x": "a@x.io"}
    r = mask_document(doc, paths=["result.points[].payload", "x[]", "result{*}", "nope"],
                      detectors=["email"])
    assert r.doc == doc
    assert r.masked_fields == []


def test_id_paths_are_protected() -> None:
    doc = {"rows": [{"pk": "d@x.io", "pk2": {"deep": "e@x.io"}, "note": "f@x.io"}]}
    r = mask_document(doc, paths=["rows[]"], detectors=["email"], fields=["pk"],
                      id_paths=["rows[].pk", "rows[].pk2"])
    assert r.doc["rows"][0] == {"pk": "d@x.io", "pk2": {"deep": "e@x.io"},
                                "note": "[MASKED:email]"}


# The audit's bypass: keys named id, _id or ids inside user data were skipped,
# with everything under them. Only the positions the classifier names as
# record ids are protected.
QDRANT_ID_KEYS = {"result": {"points": [{
    "id": 1, "score": 0.9,
    "payload": {"owner": "carol@x.io", "id": "alice@x.io", "_id": "dave@x.io",
                "ids": {"contact": "bob@x.io", "phone": "+1 415 555 2671"}}}]},
    "status": "ok"}


@pytest.mark.parametrize("masker", [mask_document, mask_document_reference])
def test_id_named_keys_inside_user_data_are_masked(masker: Any) -> None:
    source = json.dumps(QDRANT_ID_KEYS).encode()
    r = masker(json.loads(source), paths=["result.points[].payload"],
               detectors=["email", "phone"], id_paths=["result.points[].id"],
               **({"source": source} if masker is mask_document else {}))
    point = r.doc["result"]["points"][0]
    assert point["id"] == 1
    assert point["payload"] == {
        "owner": "[MASKED:email]", "id": "[MASKED:email]", "_id": "[MASKED:email]",
        "ids": {"contact": "[MASKED:email]", "phone": "[MASKED:phone]"}}
    # and by field name, at the root and below
    r = masker({"metadatas": [{"id": "x", "m": {"_id": 7}}]}, paths=["metadatas[]"],
               fields=["id", "_id"])
    assert r.doc == {"metadatas": [{"id": "[MASKED:field]", "m": {"_id": "[MASKED:field]"}}]}
    # a policy path that ends in a payload key named id
    r = masker(QDRANT_ID_KEYS, field_paths=["result.points[].payload.id"],
               id_paths=["result.points[].id"])
    assert r.doc["result"]["points"][0]["payload"]["id"] == "[MASKED:field]"


def test_strip_vectors_replaces_with_null_and_wins_over_masks() -> None:
    doc = {"result": [{"id": 1, "vector": {"dense": [0.1], "note": "a@x.io"},
                       "payload": {"e": "a@x.io"}}]}
    r = mask_document(doc, paths=["result[]"], detectors=["email"],
                      strip_vector_paths=["result[].vector"])
    assert r.doc["result"][0]["vector"] is None
    assert r.doc["result"][0]["payload"] == {"e": "[MASKED:email]"}
    assert MaskedField(path="result[0].vector", kind="vector") in r.masked_fields
    assert not any(f.path.startswith("result[0].vector.") for f in r.masked_fields)


@pytest.mark.parametrize(
    ("value", "shaped"),
    [
        ([0.11, 0.22, 0.33], True),  # FloatVector (and float16 converted to floats)
        ([1, -2, 127], True),  # Int8Vector, BinaryVector as integers
        ({"3": 0.5, "1024": 0.25}, True),  # SparseFloatVector
        ("AAECAw==", True), ("AQID", True), ("QUJD", True),  # []byte: binary, float16
        ("Oslo", True), ("2024", True),  # scalars that cannot be told apart: stripped
        ([], False), ({}, False), ("", False), ([True, 1], False), ([0.1, "x"], False),
        ({"a": 1.0}, False), ({"3": "x"}, False), ("a note", False), ("abc", False),
        ("AQ=D", False), ("a@x.io", False), (None, False), (3, False), (True, False),
    ],
)
def test_is_vector_shaped(value: object, shaped: bool) -> None:
    assert is_vector_shaped(value) is shaped


# Milvus rows: the vector fields' names come from the collection schema, so
# vectors are found by shape under a scan root, at any depth.
MILVUS_ROWS = {"code": 0, "cost": 0, "data": [
    {"id": "AQID", "distance": 0.9, "embedding": [0.11, 0.22, 0.33], "bin": "AAECAw==",
     "sparse": {"3": 0.5}, "int8": [1, -2], "title": "a note", "n": 7, "tags": [],
     "chunks": [{"text": "x y", "emb": [0.3, 0.4]}], "nested": [[0.5, 0.6], [0.7]]},
]}


@pytest.mark.parametrize("masker", [mask_document, mask_document_reference])
def test_vector_scan_paths_strip_every_vector_shape_below_and_keep_ids(masker: Any) -> None:
    before = copy.deepcopy(MILVUS_ROWS)
    r = masker(MILVUS_ROWS, vector_scan_paths=["data"], id_paths=["data[].id"])
    assert MILVUS_ROWS == before
    assert r.doc["data"][0] == {
        "id": "AQID", "distance": 0.9, "embedding": None, "bin": None, "sparse": None,
        "int8": None, "title": "a note", "n": 7, "tags": [],
        "chunks": [{"text": "x y", "emb": None}], "nested": [None, None]}
    assert {(f.path, f.kind) for f in r.masked_fields} == {
        (f"data[0].{p}", "vector")
        for p in ("embedding", "bin", "sparse", "int8", "chunks[0].emb", "nested[0]",
                  "nested[1]")}
    # a vector also wins over masks and scans of the same row
    r = masker(MILVUS_ROWS, paths=["data[]"], detectors=["email"], fields=["bin", "title"],
               vector_scan_paths=["data"], id_paths=["data[].id"])
    row = r.doc["data"][0]
    assert row["bin"] is None and row["embedding"] is None and row["id"] == "AQID"
    assert row["title"] == "[MASKED:field]"


def test_root_document_can_be_masked() -> None:
    r = mask_document(["a@x.io", {"e": "b@x.io"}], paths=["[]"], detectors=["email"])
    assert r.doc == ["[MASKED:email]", {"e": "[MASKED:email]"}]
    r = mask_document({"v": [1]}, strip_vector_paths=["v"])
    assert r.doc == {"v": None}


def test_nothing_to_do_returns_the_document() -> None:
    doc = {"a": 1}
    assert mask_document(doc).doc is doc
    assert mask_document(doc, paths=["a"], detectors=["email"]).masked_fields == []


@pytest.mark.parametrize(
    "kwargs",
    [{"detectors": ["ssn"]}, {"mode": "blur"}, {"paths": ["a..b"]},
     {"strip_vector_paths": [""]}, {"field_paths": ["]"]}, {"id_paths": ["{"]}],
)
def test_bad_arguments_raise_masking_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(MaskingError):
        mask_document({"a": 1}, **kwargs)  # type: ignore[arg-type]


def test_deeply_nested_input_does_not_exhaust_the_stack() -> None:
    depth = 50_000
    doc: dict[str, object] = {}
    node = doc
    for _ in range(depth):
        child: dict[str, object] = {}
        node["a"] = child
        node = child
    node["e"] = "x@y.io"
    node["v"] = [1.0]
    lst: list[object] = ["a@x.io"]
    for _ in range(depth):
        lst = [lst]
    r = mask_document({"d": doc, "l": lst}, paths=["d", "l"], detectors=["email"])
    assert len(r.masked_fields) == 2
    out = r.doc["d"]
    for _ in range(depth):
        out = out["a"]
    assert out == {"e": "[MASKED:email]", "v": [1.0]}
    assert node["e"] == "x@y.io"  # input untouched


# ---------------------------------------------------------------- properties

_local = st.text(alphabet=string.ascii_letters + string.digits + "._%+-", min_size=1,
                 max_size=12).filter(lambda s: not s.startswith(".") and "@" not in s)
_domain = st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,8}){0,2}\.[a-z]{2,6}", fullmatch=True)
_emails = st.builds(lambda a, b: f"{a}@{b}", _local, _domain)
_noise = st.text(alphabet=string.printable + "äß€", max_size=30)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.one_of(_emails, _noise), min_size=1, max_size=8),
       mode=st.sampled_from(["placeholder", "hmac"]))
def test_property_no_email_shape_survives(parts: list[str], mode: str) -> None:
    text = " ".join(parts)
    out, _ = mask_text(text, DETECTORS, mode=mode, hmac_key=KEY)  # type: ignore[arg-type]
    assert _EMAIL_SHAPE.search(out) is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.one_of(_noise, _emails),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["a", "b", "id", "email", "payload"]), children,
                      max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_json)
def test_property_documents_mask_every_email_and_keep_the_rest(doc: object) -> None:
    before = json.dumps(doc, sort_keys=True)
    r = mask_document({"root": doc}, paths=["root"], detectors=["email"])
    assert json.dumps(doc, sort_keys=True) == before  # input untouched

    def strings(value: object) -> list[str]:
        out: list[str] = []
        stack: list[object] = [value]
        while stack:
            v = stack.pop()
            if isinstance(v, dict):
                stack.extend(v.values())  # keys named id are user data too
            elif isinstance(v, list):
                stack.extend(v)
            elif isinstance(v, str):
                out.append(v)
        return out

    for s in strings(r.doc):
        assert _EMAIL_SHAPE.search(s) is None
    # numbers, booleans and nulls are never touched
    def scalars(value: object) -> list[object]:
        return [v for v in _leaves(value) if not isinstance(v, str)]

    assert scalars(r.doc["root"]) == scalars(doc)


def _leaves(value: object) -> list[object]:
    out: list[object] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v[k] for k in sorted(v))
        elif isinstance(v, list):
            stack.extend(v)
        else:
            out.append(v)
    return out


def _detect_without_shortcuts(text: str, wanted: frozenset[str]) -> list[tuple[int, int, str]]:
    """detect() as it was before its pre-filters: every finder on every string."""
    from capture.masking import _FINDERS, DETECTORS

    hits = sorted(
        (s, -(e - s), rank, kind)
        for rank, kind in enumerate(DETECTORS) if kind in wanted
        for s, e in _FINDERS[kind](text)
    )
    out: list[tuple[int, int, str]] = []
    end = 0
    for s, neg, _, kind in hits:
        if s >= end:
            out.append((s, s - neg, kind))
            end = s - neg
    return out


_PII_ALPHABET = string.ascii_letters + string.digits + " @.+-()_\u0660\u0661\u00e9\uff10"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.one_of(
        st.text(alphabet=_PII_ALPHABET, max_size=60),
        st.text(max_size=40),
        st.sampled_from(["mail bob@example.org", "call +44 20 7946 0958", "4111 1111 1111 1111",
                         "ssn 123-45-6789", "AB 12 34 56 C", "046 454 286", "no pii here",
                         "\u0661\u0662\u0663-\u0664\u0665-\u0666\u0667\u0668\u0669"]),
    ),
    detectors=st.sets(st.sampled_from(["email", "phone", "card", "national_id"]), min_size=1),
)
def test_detect_pre_filters_never_change_the_hits(text: str, detectors: set[str]) -> None:
    got = [(s.start, s.end, s.kind) for s in detect(text, detectors)]
    assert got == _detect_without_shortcuts(text, frozenset(detectors))


# ------------------------------------------- fast path = reference (equivalence)
#
# mask_document takes shortcuts (edits applied without the trie when the edit
# paths cannot meet, strings pre-filtered, the walk skipped when the source
# text cannot hold anything to mask). mask_document_reference is the general
# algorithm. On random documents and specs the two must give the same document,
# the same bytes on the wire and the same list of masked fields.

_KEYS = ["a", "b", "id", "_id", "ids", "email", "Email", "EMAIL", "payload", "points",
         "vector", "note", "é", "ß", "ss", "K", "k", "\u212a", "0", "17"]
_PII = st.sampled_from([
    "bob@example.org", "Write to Carol@Example.com today", "a@x.io.b@y.io",
    "+44 20 7946 0958", "call +1 (415) 555-2671", "415.555.2671", "020 7946 0958",
    "4111 1111 1111 1111", "4111-1111-1111-1111", "card 5555555555554444 exp",
    "ssn 123-45-6789.", "AB 12 34 56 C", "046 454 286", "4111 1111 1111 1111a@x.io",
    "jürgen@bücher.de", "\u0661\u0662\u0663-\u0664\u0665-\u0666\u0667\u0668\u0669",
    "1700000000000", "2024-01-15", "v1.2.3", "no pii", "", "QUJDRA==",
])
_TEXT = st.one_of(_PII, _emails, _noise,
                  st.builds(lambda a, b: f"{a} {b}", _PII, _PII),
                  st.text(alphabet=_PII_ALPHABET, max_size=30))
_SCALAR = st.none() | st.booleans() | st.integers(-10**20, 10**20) \
    | st.floats(allow_nan=False, allow_infinity=False)
_DOC = st.recursive(
    _SCALAR | _TEXT,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(_KEYS), children, max_size=5),
    max_leaves=40,
)
_STEP = st.one_of(st.sampled_from(["[]", "{*}"]), st.sampled_from(_KEYS[:10]))


def _render_steps(steps: list[str]) -> str:
    out = ""
    for step in steps:
        if step == "[]":
            out += "[]"
        elif step == "{*}":
            out += ".{*}" if out else "{*}"
        else:
            out += f".{step}" if out else step
    return out


_RANDOM_PATH = st.lists(_STEP, min_size=1, max_size=4).map(_render_steps)


def _locations(doc: object) -> list[list[str]]:
    """Every location in ``doc`` as path steps (indexes as ``[]``)."""
    out: list[list[str]] = []
    stack: list[tuple[object, list[str]]] = [(doc, [])]
    while stack:
        value, steps = stack.pop()
        if steps:
            out.append(steps)
        if isinstance(value, dict):
            stack.extend((v, [*steps, k]) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, [*steps, "[]"]) for v in value)
    return out


@st.composite
def _specs(draw: st.DrawFn, doc: object = None) -> dict[str, object]:
    """A mask spec whose paths mostly select something in ``doc`` (some keys
    widened to {*}, a few random paths beside them). Three in four have edit
    paths that cannot meet (the fast path), the rest may overlap (the
    fallback to the general algorithm)."""
    from capture.masking import _may_meet

    found = sorted({tuple(x) for x in _locations(doc)})

    def some_paths(max_size: int) -> list[str]:
        paths: list[str] = []
        for _ in range(draw(st.integers(0, max_size))):
            if found and draw(st.integers(0, 4)):
                steps = list(draw(st.sampled_from(found)))
                steps = [
                    "{*}" if s != "[]" and draw(st.integers(0, 5)) == 0 else s for s in steps
                ]
                paths.append(_render_steps(steps))
            else:
                paths.append(draw(_RANDOM_PATH))
        return paths

    kinds = {"paths": some_paths(3), "field_paths": some_paths(2),
             "strip_vector_paths": some_paths(2), "vector_scan_paths": some_paths(1)}
    if draw(st.integers(0, 3)):
        kept: list[tuple[str, ...]] = []
        for kind, paths in kinds.items():
            disjoint = []
            for path in paths:
                steps = parse_path(path)
                if not any(_may_meet(steps, other) for other in kept):
                    kept.append(steps)
                    disjoint.append(path)
            kinds[kind] = disjoint
    return {
        **kinds,
        "detectors": draw(st.lists(st.sampled_from(list(DETECTORS)), max_size=4, unique=True)),
        "fields": draw(st.lists(st.sampled_from(["email", "EMAIL", "note", "SS", "ß", "k",
                                                 "é", "id"]), max_size=3)),
        "id_paths": some_paths(2),
        "mode": draw(st.sampled_from(["placeholder", "hmac"])),
        "hmac_key": KEY,
    }


def _wire(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _sources(doc: object) -> list[bytes | None]:
    # the texts a document may have been parsed from: ASCII-escaped, UTF-8,
    # pretty-printed, UTF-16 (json.loads reads it too)
    text = json.dumps(doc)
    return [None, text.encode(), json.dumps(doc, ensure_ascii=False).encode(),
            json.dumps(doc, indent=2, ensure_ascii=False).encode(), text.encode("utf-16"),
            text.encode("utf-16-le"), text.encode("utf-32-be")]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(st.sampled_from(_KEYS), _DOC, max_size=5) | _DOC, data=st.data())
def test_fast_path_equals_the_reference(doc: object, data: st.DataObject) -> None:
    from capture.masking import mask_document_reference

    spec = data.draw(_specs(doc))
    before = _wire(doc)
    want = mask_document_reference(doc, **spec)  # type: ignore[arg-type]
    for source in _sources(doc):
        got = mask_document(doc, **spec, source=source)  # type: ignore[arg-type]
        assert got.masked_fields == want.masked_fields
        assert got.doc == want.doc
        assert _wire(got.doc) == _wire(want.doc)
        if not want.masked_fields:
            assert got.doc is doc
    assert _wire(doc) == before  # the input is never modified


@settings(max_examples=200, deadline=None)
@given(doc=_DOC, data=st.data())
def test_fast_path_raises_what_the_reference_raises(doc: object, data: st.DataObject) -> None:
    from capture.masking import mask_document_reference

    spec = data.draw(_specs(doc))
    broken = dict(spec)
    broken["mode"] = "hmac"
    broken["hmac_key"] = b"short"
    for bad in (broken, {**spec, "detectors": ["ssn"]}, {**spec, "paths": ["a..b"]},
                {**spec, "id_paths": ["]"]}, {**spec, "paths": [["a"]]}):
        with pytest.raises(MaskingError) as ref:
            mask_document_reference(doc, **bad)  # type: ignore[arg-type]
        with pytest.raises(MaskingError) as fast:
            mask_document(doc, **bad, source=_wire(doc))  # type: ignore[arg-type]
        assert str(fast.value) == str(ref.value)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXT | st.lists(_PII, max_size=5).map("".join),
       detectors=st.sets(st.sampled_from(list(DETECTORS)), min_size=1),
       mode=st.sampled_from(["placeholder", "hmac"]))
def test_fast_string_masking_equals_the_reference(text: str, detectors: set[str],
                                                  mode: str) -> None:
    from capture.masking import _mask_string, _mask_string_fast, _span_finder, _Tokens

    tokens = _Tokens(mode, KEY)  # type: ignore[arg-type]
    wanted = frozenset(detectors)
    want = _mask_string(text, wanted, tokens)
    assert _mask_string_fast(text, _span_finder(wanted), tokens) == want


def test_fast_path_is_taken_for_the_gateways_specs() -> None:
    """The classifier's paths for each product part from the vectors and ids
    they sit beside, so the gateway's specs never need the trie."""
    from capture.masking import _plan

    for paths, strip, ids in [
        (("result.payload",), ("result.vector",), ("result.id",)),
        (("result.points[].payload",), ("result.points[].vector",),
         ("result.points[].id",)),
        (("result[].payload",), ("result[].vector",), ("result[].id",)),
        (("documents[][]", "metadatas[][]"), ("embeddings",), ("ids[][]",)),
        (("vectors{*}.metadata",), ("vectors{*}.values",), ("vectors{*}.id",)),
    ]:
        plan = _plan(paths, (), strip, ids, ("email",))
        assert plan.disjoint
        assert not plan.guard_ids
    assert not _plan(("a", "a.b"), (), (), (), ()).disjoint
    assert not _plan(("a.{*}",), ("a.v",), (), (), ()).disjoint
    assert _plan(("a[]",), ("a.v",), (), (), ()).disjoint
    assert _plan(("data[]",), (), (), ("data[].pk",), ()).guard_ids


@pytest.mark.parametrize(
    ("source", "may"),
    [
        (b'{"result":{"payload":{"team":"search"}}}', False),
        (b'{"result":{"payload":{"text":"a@x.io"}}}', True),  # an @
        (b'{"result":{"payload":{"EMAIL":null}}}', True),  # a field name, any case
        (b'{"result":{"payload":{"t":"\\u0040"}}}', True),  # an escape
        ('{"result":{"payload":{"t":"é"}}}'.encode(), True),  # not ASCII
        ('{"result":{"payload":{"team":"search"}}}'.encode("utf-16"), True),
        ('{"result":{"payload":{"team":"search"}}}'.encode("utf-16-le"), True),  # NULs
        ('{"result":{"payload":{"team":"search"}}}'.encode("utf-32-be"), True),
    ],
)
def test_source_pre_filter(source: bytes, may: bool) -> None:
    from capture.masking import _could_mask, _plan

    plan = _plan(("result.payload",), (), (), ("result.id",), ("email",))
    assert _could_mask(source, plan, frozenset({"email"})) is may
    doc = json.loads(source)
    r = mask_document(doc, paths=["result.payload"], detectors=["email"], fields=["email"],
                      source=source)
    if not may:
        assert r.doc is doc and r.masked_fields == []


@pytest.mark.parametrize(
    ("text", "may"),
    [('"a b c 1 x 2"', False), ('"10"', True), ('"+1 2"', True), ('"+ (1"', True),
     ('{"n":12}', True)],  # digits in a number count too: the filter over-approximates
)
def test_source_pre_filter_for_digit_detectors(text: str, may: bool) -> None:
    from capture.masking import _could_mask, _plan

    plan = _plan(("[]",), (), (), (), ())
    wanted = frozenset({"phone", "card", "national_id"})
    assert _could_mask(f"[{text}]".encode(), plan, wanted) is may
