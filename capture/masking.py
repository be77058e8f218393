"""Response masking: redact user data in a JSON document by path, by field name
and by detector, and strip vectors.

Pure: a parsed JSON value in, a new JSON value plus the list of what was masked
out. No I/O, no clock. The input is never modified; the output shares every
unmodified sub-object with it.

Paths
-----
A path uses the dotted syntax of ``shared/vector-db-apis.md``::

    path  := step+            e.g.  result.points[].payload, data.Get.{*}[]
    step  := name | "." name | "[]" | "{*}" | ".{*}"

``name`` selects a key of an object (any characters except ``. [ ] { }``),
``[]`` every element of an array, ``{*}`` every value of an object (a map).
A path may start with ``[]`` or ``{*}`` when the document itself is an array or
a map. A step that does not fit the document (a missing key, an array where an
object was expected) selects nothing; a document never makes masking fail.

What each argument does
-----------------------
``paths`` -- *user-data roots* (the classifier's ``user_data_paths``, such as
``result.points[].payload``, ``metadatas[][]``, ``documents[][]``, plus any the
policy adds). At and below each location the value is *scanned*:

* every string (at any depth; object keys are never touched) has each detector
  hit replaced in place: ``"mail a@x.io"`` becomes ``"mail [MASKED:email]"``;
* every object entry whose key is one of ``fields`` (compared case-insensitively,
  at any depth, including the location's own key) is replaced as a whole;
* numbers, booleans and null are left alone by detectors (a 13-digit
  millisecond timestamp must not become a "card"); mask them by field name.

``fields`` -- key names whose whole value is masked wherever they occur under a
root (kind ``field``). ``field_paths`` -- absolute paths whose whole value is
masked (kind ``field``), e.g. Milvus ``data[].email``. ``strip_vector_paths`` --
absolute paths whose value is replaced by ``null`` (kind ``vector``); the key is
kept, so typed clients that expect the field still parse the response.
``vector_scan_paths`` -- absolute paths under which every *vector-shaped* value
(see :func:`is_vector_shaped`) is replaced by ``null`` (kind ``vector``), for
responses whose vector fields cannot be named in advance (Milvus rows).

Record ids are protected by position, never by name: no edit is made at or
below a location named by ``id_paths`` (the classifier's ``response_ids``, such
as Qdrant's ``result.points[].id`` or Milvus' ``data[].id``). A key called
``id``, ``_id`` or ``ids`` *inside* user data (a payload, metadata or a
property) is user data like any other key. A whole-value mask or strip that a
policy places on a container *above* an id replaces that container; that is the
policy author's explicit choice.

When edits overlap, a strip beats a whole-value mask, which beats a detector
replacement, and an edit of a container replaces any edit inside it.

Placeholders
------------
``placeholder`` mode writes ``[MASKED:<kind>]``. ``hmac`` mode writes
``[HMAC:<kind>:<16 hex>]``: the first 16 hex digits of
HMAC-SHA256(key, ``<kind>:<normalised value>``), so equal values give equal
tokens (joinable) and nobody without the key can confirm a guess. Values are
normalised before hashing so that formatting does not break joins: e-mail
addresses are case-folded, phone, card and numeric ids keep only their digits,
alphanumeric ids are upper-cased without separators, and whole field values use
their canonical JSON (strings as themselves). The key must be at least 16 bytes.

Detectors
---------
``email``        local@domain.tld (Unicode letters allowed).
``phone``        international ``+CC ...`` with 7-15 digits; North American
                 ``(415) 555-2671`` / ``415-555-2671`` / ``415.555.2671`` with
                 optional leading ``1`` (area code 2-9); trunk-prefixed national
                 numbers such as ``020 7946 0958`` or ``01 23 45 67 89`` (0 then
                 1-9, separated groups, 9-11 digits). Bare digit runs are never phones.
``card``         13-19 digits, optionally separated by single spaces or hyphens,
                 passing the Luhn check and starting with 2-6 (the issuer ranges
                 of Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay).
``national_id``  US SSN ``123-45-6789`` (hyphenated, valid area/group/serial);
                 UK National Insurance number ``AB 12 34 56 C``; Canadian SIN
                 ``046 454 286`` (separated, Luhn-valid).

Everything is iterative, so arbitrarily deep documents cannot exhaust the
Python stack.

Two implementations
-------------------
``mask_document_reference`` is the general algorithm: every edit goes through
a trie that settles overlaps by the priorities above. ``mask_document`` gives
the same result with less work when the spec's edit paths cannot meet (worked
out once per spec; the gateway's specs always part): the edits are then
disjoint, so they are collected in a list and applied directly. Given the JSON
text the document was parsed from (``source``), it skips the walk when the
text cannot hold anything to mask. The tests compare the two on random
documents and specs.
"""

from __future__ import annotations

import functools
import hashlib
import hmac as _hmac
import json
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, Literal, TypeAlias

from schemas.models import MaskedField

__all__ = [
    "DETECTORS",
    "Detector",
    "MaskMode",
    "MaskResult",
    "MaskingError",
    "Span",
    "detect",
    "is_vector_shaped",
    "mask_document",
    "mask_document_reference",
    "mask_text",
    "parse_path",
    "render_path",
]

Detector = Literal["email", "phone", "card", "national_id"]
MaskMode = Literal["placeholder", "hmac"]
#: Detector names, in the order that breaks ties between equal overlapping hits.
DETECTORS: Final[tuple[Detector, ...]] = ("email", "card", "national_id", "phone")
MIN_HMAC_KEY_BYTES: Final = 16

#: One step of a parsed path: a key name, ``[]`` (each element) or ``{*}`` (each value).
Step: TypeAlias = str
EACH_ELEMENT: Final = "[]"
EACH_VALUE: Final = "{*}"
#: A concrete location: object keys (str) and array indexes (int).
Address: TypeAlias = tuple[str | int, ...]

class MaskingError(ValueError):
    """The masking arguments are wrong (never raised because of a document)."""


@dataclass(frozen=True)
class Span:
    """A detector hit in a string: ``text[start:end]`` is a ``kind``."""

    start: int
    end: int
    kind: Detector


@dataclass
class MaskResult:
    """The masked document and every field that was changed."""

    doc: Any
    masked_fields: list[MaskedField] = field(default_factory=list)


# --------------------------------------------------------------------------- paths

_STEP = re.compile(r"\[\]|\.?\{\*\}|\.?([^.\[\]{}]+)")


def parse_path(path: str) -> tuple[Step, ...]:
    """``"result.points[].payload"`` -> ``("result", "points", "[]", "payload")``."""
    if not isinstance(path, str) or not path:
        raise MaskingError(f"empty path {path!r} — name at least one key, [] or {{*}}")
    steps: list[Step] = []
    pos = 0
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None or (m.group(0).startswith(".") and pos == 0):
            raise MaskingError(
                f"bad path {path!r} at character {pos + 1} — use key.key, [] for each "
                "element and {*} for each map value, e.g. result.points[].payload"
            )
        steps.append(m.group(1) if m.group(1) is not None else m.group(0).lstrip("."))
        pos = m.end()
    return tuple(steps)


_parse_cached = lru_cache(maxsize=1024)(parse_path)


def _steps(path: str) -> tuple[Step, ...]:
    # every response of a route masks the same few paths; parse each once
    return _parse_cached(path) if isinstance(path, str) else parse_path(path)


_SIMPLE_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]*")


def render_path(address: Iterable[str | int]) -> str:
    """A concrete address as text: ``result.points[0].payload.email``; keys that
    are not simple identifiers are quoted: ``vectors["v-1.a"]``."""
    out: list[str] = []
    for comp in address:
        if isinstance(comp, int):
            out.append(f"[{comp}]")
        elif _SIMPLE_KEY.fullmatch(comp):
            out.append(f".{comp}" if out else comp)
        else:
            out.append(f"[{json.dumps(comp, ensure_ascii=False)}]")
    return "".join(out)


# A location is carried as a cons cell (parent, component) so that walking a
# deep document costs O(1) per step instead of copying ever-longer tuples.
_Link: TypeAlias = "tuple[_Link, str | int] | None"


def _address(link: _Link) -> Address:
    comps: list[str | int] = []
    while link is not None:
        link, comp = link
        comps.append(comp)
    comps.reverse()
    return tuple(comps)


def _last(link: _Link) -> str | int | None:
    return None if link is None else link[1]


def _resolve(doc: Any, steps: Sequence[Step]) -> list[tuple[_Link, Any]]:
    current: list[tuple[_Link, Any]] = [(None, doc)]
    for step in steps:
        nxt: list[tuple[_Link, Any]] = []
        for link, value in current:
            if step == EACH_ELEMENT:
                if isinstance(value, list):
                    nxt.extend(((link, i), v) for i, v in enumerate(value))
            elif step == EACH_VALUE:
                if isinstance(value, dict):
                    nxt.extend(((link, k), v) for k, v in value.items())
            elif isinstance(value, dict) and step in value:
                nxt.append(((link, step), value[step]))
        current = nxt
    return current


# ------------------------------------------------------------------- vector shapes

#: Padded standard base64 (Go's ``encoding/base64.StdEncoding``): how a JSON API
#: written in Go, such as Milvus', writes ``[]byte`` -- binary, float16 and
#: bfloat16 vectors.
_B64 = "[A-Za-z0-9+/]"
_BASE64 = re.compile(f"(?:{_B64}{{4}})*(?:{_B64}{{4}}|{_B64}{{3}}=|{_B64}{{2}}==)")
#: a sparse vector's keys: decimal dimension indexes (Go writes map[uint32]float32 so)
_INDEX_KEY = re.compile(r"[0-9]+")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_vector_shaped(value: Any) -> bool:
    """Whether ``value`` may be a vector as a JSON API writes one: a non-empty
    array of numbers (dense float or int8), a non-empty object whose keys are
    all decimal indexes and whose values are all numbers (sparse), or a string
    of padded standard base64 (raw bytes: binary, float16, bfloat16).

    Shape cannot tell a vector from a scalar that looks like one (an array of
    integers, the string ``"2024"``): ``vector_scan_paths`` strips those too,
    failing closed."""
    if isinstance(value, list):
        return bool(value) and all(_is_number(v) for v in value)
    if isinstance(value, dict):
        return bool(value) and all(
            isinstance(k, str) and _INDEX_KEY.fullmatch(k) is not None and _is_number(v)
            for k, v in value.items()
        )
    if isinstance(value, str):
        return _BASE64.fullmatch(value) is not None
    return False


def _vector_links(roots: Iterable[tuple[_Link, Any]]) -> Iterator[_Link]:
    """The location of every vector-shaped value at or below each root; a
    vector's own elements are not visited."""
    stack = list(roots)
    while stack:
        link, value = stack.pop()
        if is_vector_shaped(value):
            yield link
        elif isinstance(value, dict):
            stack.extend(((link, k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend(((link, i), v) for i, v in enumerate(value))


# ----------------------------------------------------------------------- detectors

_EMAIL = re.compile(
    r"(?<![\w.!#$%&'*+/=?^`{|}~-])[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}"
)
_PHONE_INTL = re.compile(r"(?<![\w+])\+(?:[ .\-()]{0,2}\d){7,15}(?![\d])")
_PHONE_NANP = re.compile(
    r"(?<![\w+.\-])(?:1[ .\-]?)?(?:\([2-9]\d{2}\)[ .\-]?|[2-9]\d{2}[ .\-])"
    r"\d{3}[ .\-]\d{4}(?![\w\-]|\.\d)"
)
_PHONE_TRUNK = re.compile(r"(?<![\w+.\-])0[1-9]\d{0,3}(?:[ \-]\d{2,8}){1,4}(?![\w\-]|\.\d)")
_DIGIT_RUN = re.compile(r"(?<![\d])\d+(?:[ \-]\d+)*")
_SSN = re.compile(r"(?<![\w\-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w\-])")
_NINO = re.compile(
    r"(?<![\w])(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r" ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![\w])"
)
_SIN = re.compile(r"(?<![\w\-])[0-79]\d{2}[ \-]\d{3}[ \-]\d{3}(?![\w\-])")
_NON_DIGIT = re.compile(r"\D")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return _NON_DIGIT.sub("", text)


def _find_email(text: str) -> Iterator[tuple[int, int]]:
    if "@" in text:
        for m in _EMAIL.finditer(text):
            yield m.start(), m.end()


def _find_phone(text: str) -> Iterator[tuple[int, int]]:
    if "+" in text:
        for m in _PHONE_INTL.finditer(text):
            digits = _digits(m.group(0))
            if digits[0] != "0" and 7 <= len(digits) <= 15:
                yield m.start(), m.end()
    for m in _PHONE_NANP.finditer(text):
        yield m.start(), m.end()
    for m in _PHONE_TRUNK.finditer(text):
        if 9 <= len(_digits(m.group(0))) <= 11:
            yield m.start(), m.end()


def _find_card(text: str) -> Iterator[tuple[int, int]]:
    # A card is one group of 13-19 digits, or several groups of at least 3
    # digits (4-4-4-4, 4-6-5, 4-4-4-4-3) joined by single separators. Trying
    # only those keeps the work per group constant on adversarial digit soup.
    for run in _DIGIT_RUN.finditer(text):
        groups = [(g.start(), g.end()) for g in re.finditer(r"\d+", run.group(0))]
        base = run.start()
        i = 0
        while i < len(groups):
            best: tuple[int, int] | None = None
            gi_start, gi_end = groups[i]
            if text[base + gi_start] in "23456":
                digits = ""
                for j in range(i, len(groups)):
                    g_start, g_end = groups[j]
                    if g_end - g_start < 3 and j > i:
                        break
                    digits += text[base + g_start : base + g_end]
                    if len(digits) > 19 or (g_end - g_start < 3):
                        break
                    if len(digits) >= 13 and _luhn(digits):
                        best = (base + gi_start, base + g_end)
            if best is not None:
                yield best
                while i < len(groups) and base + groups[i][0] < best[1]:
                    i += 1
            else:
                i += 1


def _find_national_id(text: str) -> Iterator[tuple[int, int]]:
    if "-" in text:
        for m in _SSN.finditer(text):
            yield m.start(), m.end()
    for m in _NINO.finditer(text):
        yield m.start(), m.end()
    for m in _SIN.finditer(text):
        if _luhn(_digits(m.group(0))):
            yield m.start(), m.end()


_FINDERS: Final[dict[Detector, Callable[[str], Iterator[tuple[int, int]]]]] = {
    "email": _find_email,
    "card": _find_card,
    "national_id": _find_national_id,
    "phone": _find_phone,
}


def detect(text: str, detectors: Iterable[str]) -> list[Span]:
    """Non-overlapping detector hits in ``text``, left to right. Where hits
    overlap, the earliest wins, then the longest, then the order of DETECTORS."""
    return _detect(text, _check_detectors(detectors))


#: What a hit of each detector cannot do without: an e-mail address has an
#: ``@``; a card, phone number or national id has digits. A string without any
#: (most payload text) skips that detector's regexes.
_HAS_DIGIT = re.compile(r"\d")


def _detect(text: str, wanted: frozenset[str]) -> list[Span]:
    """``detect`` for detectors already checked."""
    return [Span(s, e, kind) for s, e, kind in _spans(text, wanted)]


def _spans(text: str, wanted: frozenset[str]) -> list[tuple[int, int, Detector]]:
    """``_detect`` as plain (start, end, kind) tuples."""
    hits: list[tuple[int, int, int, Detector]] = []
    digits: bool | None = None
    for rank, kind in enumerate(DETECTORS):
        if kind not in wanted:
            continue
        if kind == "email":
            if "@" not in text:
                continue
        else:
            if digits is None:
                digits = _HAS_DIGIT.search(text) is not None
            if not digits:
                continue
        hits.extend((s, -(e - s), rank, kind) for s, e in _FINDERS[kind](text))
    if not hits:
        return []
    if len(hits) == 1:
        s, neg_len, _, kind = hits[0]
        return [(s, s - neg_len, kind)]
    hits.sort()
    spans: list[tuple[int, int, Detector]] = []
    end = 0
    for s, neg_len, _, kind in hits:
        if s >= end:
            spans.append((s, s - neg_len, kind))
            end = s - neg_len
    return spans


def _check_detectors(detectors: Iterable[str]) -> frozenset[str]:
    wanted = frozenset(detectors)
    unknown = wanted - set(DETECTORS)
    if unknown:
        raise MaskingError(
            f"unknown detector(s) {', '.join(sorted(unknown))} — use {', '.join(DETECTORS)}"
        )
    return wanted


# ---------------------------------------------------------------------- replacing


def _normalise(kind: str, value: str) -> str:
    if kind == "email":
        return value.casefold()
    if kind in ("phone", "card"):
        return _digits(value)
    if kind == "national_id":
        return re.sub(r"[^0-9A-Za-z]", "", value).upper()
    return value


class _Tokens:
    def __init__(self, mode: MaskMode, key: bytes | None) -> None:
        if mode not in ("placeholder", "hmac"):
            raise MaskingError(f"unknown mask mode {mode!r} — use placeholder or hmac")
        if mode == "hmac":
            if not isinstance(key, bytes | bytearray) or len(key) < MIN_HMAC_KEY_BYTES:
                raise MaskingError(
                    f"hmac mode needs a key of at least {MIN_HMAC_KEY_BYTES} bytes — "
                    "configure the gateway's mask HMAC key"
                )
        self.mode = mode
        self.key = bytes(key) if key is not None else b""

    def token(self, kind: str, value: str) -> str:
        if self.mode == "placeholder":
            return f"[MASKED:{kind}]"
        msg = f"{kind}:{_normalise(kind, value)}".encode("utf-8", "surrogatepass")
        digest = _hmac.new(self.key, msg, hashlib.sha256).hexdigest()[:16]
        return f"[HMAC:{kind}:{digest}]"


_TOKEN, _CLEAN, _DIRTY = 0, 1, 2


def _mask_string(text: str, wanted: frozenset[str], tokens: _Tokens) -> tuple[str, list[str]]:
    """Replace every detector hit. Repeats on the text left between inserted
    tokens until nothing is found, so a hit that lost an overlap (``a@x.io``
    glued to a card number) is still caught, and inserted tokens are never
    rescanned."""
    # each piece is (text, state): a token we inserted, text known to hold no
    # hit, or text still to scan
    first: list[Span] | None = _detect(text, wanted)
    if not first:  # most strings: nothing to replace
        return text, []
    pieces: list[tuple[str, int]] = [(text, _DIRTY)]
    kinds: list[str] = []
    while any(state == _DIRTY for _, state in pieces):
        out: list[tuple[str, int]] = []
        for piece, state in pieces:
            if first is not None:
                spans, first = first, None
            else:
                spans = _detect(piece, wanted) if state == _DIRTY else []
            if not spans:
                out.append((piece, _CLEAN if state == _DIRTY else state))
                continue
            pos = 0
            for span in spans:
                if span.start > pos:
                    out.append((piece[pos : span.start], _DIRTY))
                out.append((tokens.token(span.kind, piece[span.start : span.end]), _TOKEN))
                kinds.append(span.kind)
                pos = span.end
            if pos < len(piece):
                out.append((piece[pos:], _DIRTY))
        pieces = out
    if not kinds:
        return text, []
    return "".join(p for p, _ in pieces), list(dict.fromkeys(kinds))


def _mask_string_fast(
    text: str, find: Callable[[str], list[tuple[int, int, Detector]]], tokens: _Tokens
) -> tuple[str, list[str]]:
    """``_mask_string`` on plain span tuples (``find`` is ``_span_finder`` of
    the detectors), with the same rounds (so the same kinds in the same
    order); the tests compare the two."""
    first: list[tuple[int, int, Detector]] | None = find(text)
    if not first:
        return text, []
    pieces: list[tuple[str, int]] = [(text, _DIRTY)]
    kinds: list[str] = []
    dirty = True
    while dirty:
        dirty = False
        out: list[tuple[str, int]] = []
        for piece, state in pieces:
            if state != _DIRTY:
                out.append((piece, state))
                continue
            if first is not None:
                spans, first = first, None
            else:
                spans = find(piece)
            if not spans:
                out.append((piece, _CLEAN))
                continue
            pos = 0
            for start, end, kind in spans:
                if start > pos:
                    out.append((piece[pos:start], _DIRTY))
                    dirty = True
                out.append((tokens.token(kind, piece[start:end]), _TOKEN))
                kinds.append(kind)
                pos = end
            if pos < len(piece):
                out.append((piece[pos:], _DIRTY))
                dirty = True
        pieces = out
    return "".join([p for p, _ in pieces]), list(dict.fromkeys(kinds))


def mask_text(
    text: str,
    detectors: Iterable[str],
    *,
    mode: MaskMode = "placeholder",
    hmac_key: bytes | None = None,
) -> tuple[str, list[str]]:
    """``text`` with every detector hit replaced, and the kinds that were found."""
    return _mask_string(text, _check_detectors(detectors), _Tokens(mode, hmac_key))


def _canonical(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ------------------------------------------------------------------------- edits

_STRIP, _WHOLE, _SCAN = 3, 2, 1
_EDIT: Final = object()  # trie marker: value is (priority, new_value, kinds)


class _Trie:
    """Edits keyed by address. An edit on a container hides edits inside it."""

    def __init__(self) -> None:
        self.root: dict[Any, Any] = {}

    def add(self, address: Address, priority: int, value: Any, kinds: list[str]) -> None:
        node = self.root
        for comp in address:
            existing = node.get(_EDIT)
            if existing is not None and existing[0] >= _WHOLE:
                return
            node = node.setdefault(comp, {})
        existing = node.get(_EDIT)
        if existing is not None and existing[0] >= priority:
            return
        if priority >= _WHOLE:
            node.clear()
        node[_EDIT] = (priority, value, kinds)

    def covers(self, address: Address) -> bool:
        """Whether ``address`` is at or below a marked location."""
        node = self.root
        for comp in address:
            if _EDIT in node:
                return True
            nxt = node.get(comp)
            if nxt is None:
                return False
            node = nxt
        return _EDIT in node

    def apply(self, doc: Any) -> tuple[Any, list[tuple[Address, list[str]]]]:
        applied: list[tuple[Address, list[str]]] = []
        if _EDIT in self.root:
            _, value, kinds = self.root[_EDIT]
            return value, [((), kinds)]
        if not self.root:
            return doc, []
        new_doc = _shallow(doc)
        stack: list[tuple[dict[Any, Any], Any, _Link]] = [(self.root, new_doc, None)]
        while stack:
            node, container, link = stack.pop()
            for comp, child in node.items():
                if comp is _EDIT:
                    continue
                here: _Link = (link, comp)
                if _EDIT in child:
                    _, value, kinds = child[_EDIT]
                    container[comp] = value
                    applied.append((_address(here), kinds))
                else:
                    copy = _shallow(container[comp])
                    container[comp] = copy
                    stack.append((child, copy, here))
        applied.sort(key=lambda item: _sort_key(item[0]))
        return new_doc, applied


def _shallow(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


def _sort_key(address: Address) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, c, "") if isinstance(c, int) else (1, 0, c) for c in address)


# Every response of a route names the same detectors and fields and masks the
# same few addresses: work them out once (pure functions of hashable input).
_rendered = lru_cache(maxsize=4096)(render_path)


@lru_cache(maxsize=256)
def _wanted(detectors: tuple[str, ...]) -> frozenset[str]:
    return _check_detectors(detectors)


@lru_cache(maxsize=256)
def _field_names(fields: tuple[str, ...]) -> frozenset[str]:
    return frozenset(f.casefold() for f in fields)


def mask_document_reference(
    doc: Any,
    *,
    paths: Sequence[str] = (),
    detectors: Sequence[str] = (),
    mode: MaskMode = "placeholder",
    hmac_key: bytes | None = None,
    strip_vector_paths: Sequence[str] = (),
    fields: Sequence[str] = (),
    field_paths: Sequence[str] = (),
    id_paths: Sequence[str] = (),
    vector_scan_paths: Sequence[str] = (),
) -> MaskResult:
    """:func:`mask_document` by the general algorithm: every edit goes through
    the edit trie, whatever the paths. ``mask_document`` uses it whenever its
    edit paths may overlap; the tests compare the two on random documents and
    specs.
    """
    wanted = _wanted(tuple(detectors))
    tokens = _Tokens(mode, hmac_key)
    scan_roots = [_steps(p) for p in paths]
    whole_paths = [_steps(p) for p in field_paths]
    strip_paths = [_steps(p) for p in strip_vector_paths]
    vector_roots = [_steps(p) for p in vector_scan_paths]
    protected_paths = [_steps(p) for p in id_paths]
    field_names = _field_names(tuple(fields))

    protected = _Trie()
    for steps in protected_paths:
        for link, _ in _resolve(doc, steps):
            protected.add(_address(link), _STRIP, None, [])

    edits = _Trie()

    def add(link: _Link, priority: int, value: Any, kinds: list[str]) -> None:
        address = _address(link)
        if not protected.covers(address):
            edits.add(address, priority, value, kinds)

    for steps in strip_paths:
        for link, value in _resolve(doc, steps):
            if value is not None:
                add(link, _STRIP, None, ["vector"])
    for steps in vector_roots:
        for link in _vector_links(_resolve(doc, steps)):
            add(link, _STRIP, None, ["vector"])
    for steps in whole_paths:
        for link, value in _resolve(doc, steps):
            if value is not None:
                add(link, _WHOLE, tokens.token("field", _canonical(value)), ["field"])
    if wanted or field_names:
        for steps in scan_roots:
            for link, value in _resolve(doc, steps):
                _scan(value, link, wanted, field_names, tokens, add)

    new_doc, applied = edits.apply(doc)
    masked = [
        MaskedField(path=_rendered(address), kind=kind)
        for address, kinds in applied
        for kind in kinds
    ]
    return MaskResult(doc=new_doc, masked_fields=masked)


def _scan(
    root: Any,
    root_link: _Link,
    wanted: frozenset[str],
    field_names: frozenset[str],
    tokens: _Tokens,
    add: Callable[[_Link, int, Any, list[str]], None],
) -> None:
    last = _last(root_link)
    if isinstance(last, str) and last.casefold() in field_names and root is not None:
        add(root_link, _WHOLE, tokens.token("field", _canonical(root)), ["field"])
        return
    stack: list[tuple[_Link, Any]] = [(root_link, root)]
    while stack:
        link, value = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                child_link: _Link = (link, key)
                if isinstance(key, str) and key.casefold() in field_names and child is not None:
                    add(child_link, _WHOLE, tokens.token("field", _canonical(child)), ["field"])
                else:
                    stack.append((child_link, child))
        elif isinstance(value, list):
            stack.extend(((link, i), child) for i, child in enumerate(value))
        elif isinstance(value, str) and wanted:
            masked, kinds = _mask_string(value, wanted, tokens)
            if kinds:
                add(link, _SCAN, masked, kinds)


# --------------------------------------------------------------------- fast path
#
# The common case -- the gateway masking one response -- has edit paths that
# cannot reach the same location: ``result.points[].payload`` (scanned) and
# ``result.points[].vector`` (stripped) part at their fourth step. Their edits
# then never overlap, and need neither priorities nor the trie: they are
# collected in a list and applied directly. Whether the paths of a spec part
# like that is worked out once per spec (a pure function of the paths).


def _may_meet(a: Sequence[Step], b: Sequence[Step]) -> bool:
    """Whether paths ``a`` and ``b`` can select the same location, or one a
    location at or below the other's. Both walk the same nodes as long as
    their steps agree; ``[]`` selects list elements and never meets a key
    step, two different names never meet, ``{*}`` meets any name."""
    for x, y in zip(a, b, strict=False):
        if x == y:
            continue
        if x == EACH_ELEMENT or y == EACH_ELEMENT:
            return False
        if x != EACH_VALUE and y != EACH_VALUE:
            return False
    return True


@dataclass(frozen=True)
class _Plan:
    scan: tuple[tuple[Step, ...], ...]
    whole: tuple[tuple[Step, ...], ...]
    strip: tuple[tuple[Step, ...], ...]
    vector: tuple[tuple[Step, ...], ...]
    ids: tuple[tuple[Step, ...], ...]
    field_names: frozenset[str]
    #: no two edit paths (scanned, whole-value, stripped, vector-scanned) can meet
    disjoint: bool
    #: some id path can meet an edit path: edits must be checked against ids
    guard_ids: bool
    #: what the source text must contain for anything to be masked (see _could_mask)
    folded_fields: tuple[bytes, ...]
    #: the detectors' hits in a string, as _spans finds them
    find: Callable[[str], list[tuple[int, int, Detector]]]


@lru_cache(maxsize=256)
def _plan(
    paths: tuple[str, ...],
    field_paths: tuple[str, ...],
    strip_vector_paths: tuple[str, ...],
    id_paths: tuple[str, ...],
    fields: tuple[str, ...],
    wanted: frozenset[str] = frozenset(),
    vector_scan_paths: tuple[str, ...] = (),
) -> _Plan:
    # parsed in the order mask_document_reference parses them, so a spec with
    # several faults raises the same error
    scan = tuple(_steps(p) for p in paths)
    whole = tuple(_steps(p) for p in field_paths)
    strip = tuple(_steps(p) for p in strip_vector_paths)
    vector = tuple(_steps(p) for p in vector_scan_paths)
    ids = tuple(_steps(p) for p in id_paths)
    field_names = _field_names(fields)
    edit_paths = scan + whole + strip + vector
    disjoint = not any(
        _may_meet(a, b) for i, a in enumerate(edit_paths) for b in edit_paths[i + 1 :]
    )
    guard_ids = any(_may_meet(a, b) for a in ids for b in edit_paths)
    # a key matches a field name when its casefold does; an ASCII key's casefold
    # is ASCII, so only the ASCII names can match in an ASCII text
    folded = tuple(f.encode() for f in sorted(field_names) if f.isascii())
    return _Plan(scan, whole, strip, vector, ids, field_names, disjoint, guard_ids, folded,
                 _span_finder(wanted))


@lru_cache(maxsize=256)
def _spec(
    detectors: tuple[str, ...],
    mode: MaskMode,
    hmac_key: bytes | None,
    paths: tuple[str, ...],
    field_paths: tuple[str, ...],
    strip_vector_paths: tuple[str, ...],
    id_paths: tuple[str, ...],
    fields: tuple[str, ...],
    vector_scan_paths: tuple[str, ...] = (),
) -> tuple[frozenset[str], _Tokens, _Plan]:
    # checked in the order of mask_document_reference, so a spec with several
    # faults raises the same error (a raise is never cached)
    wanted = _wanted(detectors)
    tokens = _Tokens(mode, hmac_key)
    return wanted, tokens, _plan(paths, field_paths, strip_vector_paths, id_paths, fields,
                                 wanted, vector_scan_paths)


def _email_spans(text: str) -> list[tuple[int, int, Detector]]:
    # _spans for the e-mail detector alone: its matches never overlap and come
    # in order, so sorting and overlap removal change nothing
    if "@" not in text:
        return []
    return [(m.start(), m.end(), "email") for m in _EMAIL.finditer(text)]


def _span_finder(wanted: frozenset[str]) -> Callable[[str], list[tuple[int, int, Detector]]]:
    if wanted == {"email"}:
        return _email_spans
    return functools.partial(_spans, wanted=wanted)


#: a phone number, card or national id holds two adjacent digits, or a ``+``
#: then at most two separators and a digit (``+1 415 ...``)
_DIGITS_HIT = re.compile(rb"\d\d|\+[ .\-()]{0,2}\d")


def _could_mask(source: bytes, plan: _Plan, wanted: frozenset[str]) -> bool:
    """False only if masking the JSON document parsed from ``source`` certainly
    changes nothing: the text is UTF-8 ASCII without escapes (so every string
    and key appears in it as is), has no ``@`` for the e-mail detector, no
    digits a phone, card or national id needs, and no key that is a field
    name. (JSON in UTF-16 or UTF-32, which json.loads also reads, has NULs.)"""
    if plan.whole or plan.strip or plan.vector:
        return True
    if not plan.scan:
        return False
    # the signs of something to mask first (most bodies that have one have
    # an @), then whether the text could hide one
    if "email" in wanted and b"@" in source:
        return True
    if len(wanted) > ("email" in wanted) and _DIGITS_HIT.search(source) is not None:
        return True
    if plan.folded_fields:
        lowered = source.lower()
        if any(b'"' + name + b'"' in lowered for name in plan.folded_fields):
            return True
    return not source.isascii() or b"\\" in source or b"\x00" in source


@lru_cache(maxsize=4096)
def _masked_field(address: Address, kind: str) -> MaskedField:
    # MaskedField is frozen: one instance per (location, kind) can be shared
    return MaskedField(path=_rendered(address), kind=kind)


_Edit: TypeAlias = "tuple[_Link, Any, list[str]]"


def mask_document(
    doc: Any,
    *,
    paths: Sequence[str] = (),
    detectors: Sequence[str] = (),
    mode: MaskMode = "placeholder",
    hmac_key: bytes | None = None,
    strip_vector_paths: Sequence[str] = (),
    fields: Sequence[str] = (),
    field_paths: Sequence[str] = (),
    id_paths: Sequence[str] = (),
    vector_scan_paths: Sequence[str] = (),
    source: bytes | None = None,
) -> MaskResult:
    """Mask ``doc`` as the module docstring describes.

    ``source``, if given, is the JSON text ``doc`` was parsed from: when it
    cannot hold anything to mask (see ``_could_mask``) the document is not
    walked at all.

    Raises :class:`MaskingError` only for bad arguments (a malformed path, an
    unknown detector, hmac mode without a usable key), before looking at the
    document, so a caller can fail closed.
    """
    try:
        wanted, tokens, plan = _spec(
            tuple(detectors), mode, hmac_key, tuple(paths), tuple(field_paths),
            tuple(strip_vector_paths), tuple(id_paths), tuple(fields), tuple(vector_scan_paths),
        )
    except TypeError:  # something unhashable: let the reference say what is wrong
        plan = None
    if plan is None or not plan.disjoint:
        return mask_document_reference(
            doc, paths=paths, detectors=detectors, mode=mode, hmac_key=hmac_key,
            strip_vector_paths=strip_vector_paths, fields=fields, field_paths=field_paths,
            id_paths=id_paths, vector_scan_paths=vector_scan_paths,
        )
    field_names = plan.field_names
    if source is not None and not _could_mask(source, plan, wanted):
        return MaskResult(doc=doc, masked_fields=[])

    edits: list[_Edit] = []
    for steps in plan.strip:
        for link, value in _resolve(doc, steps):
            if value is not None:
                edits.append((link, None, ["vector"]))
    for steps in plan.vector:
        # one root's vectors never nest, and roots that could meet make the
        # plan not disjoint
        edits.extend((link, None, ["vector"]) for link in _vector_links(_resolve(doc, steps)))
    for steps in plan.whole:
        for link, value in _resolve(doc, steps):
            if value is not None:
                edits.append((link, tokens.token("field", _canonical(value)), ["field"]))
    if wanted or field_names:
        find = plan.find
        is_field: dict[Any, bool] = {}  # key -> whether it names a field (for this call)
        for steps in plan.scan:
            _scan_into(_resolve(doc, steps), wanted, find, field_names, tokens, edits, is_field)
    if not edits:
        return MaskResult(doc=doc, masked_fields=[])

    located = [(_address(link), value, kinds) for link, value, kinds in edits]
    if plan.guard_ids:
        protected = _Trie()
        for steps in plan.ids:
            for link, _ in _resolve(doc, steps):
                protected.add(_address(link), _STRIP, None, [])
        located = [e for e in located if not protected.covers(e[0])]
        if not located:
            return MaskResult(doc=doc, masked_fields=[])
    if len(located) > 1:
        if source is not None:
            # parsed from JSON, so every key is a str: where two locations first
            # differ, both are keys of one object or indexes of one array, and
            # comparing them as they are orders them as _sort_key does
            located.sort(key=_first)
        else:
            located.sort(key=_located_order)
    new_doc = _apply_disjoint(doc, located)
    masked = [_masked_field(address, kind) for address, _, kinds in located for kind in kinds]
    return MaskResult(doc=new_doc, masked_fields=masked)



_first = operator.itemgetter(0)


def _located_order(item: tuple[Address, Any, list[str]]) -> tuple[tuple[bool, Any], ...]:
    # the order of _sort_key: at each step indexes (numerically) before keys
    return tuple([(isinstance(c, str), c) for c in item[0]])


def _apply_disjoint(doc: Any, located: list[tuple[Address, Any, list[str]]]) -> Any:
    """``doc`` with each value replaced, copying only the containers on the way
    to an edit (by location: one copy per container however many edits it
    holds). No edit is at or below another."""
    if not located[0][0]:  # the document itself (then it is the only edit)
        return located[0][1]
    new_doc = _shallow(doc)
    copies: dict[Any, Any] = {}  # component -> (copy, its copies)
    for address, value, _ in located:
        container, below = new_doc, copies
        for comp in address[:-1]:
            entry = below.get(comp)
            if entry is None:
                entry = (_shallow(container[comp]), {})
                container[comp] = entry[0]
                below[comp] = entry
            container, below = entry
        container[address[-1]] = value
    return new_doc


def _scan_into(
    roots: list[tuple[_Link, Any]],
    wanted: frozenset[str],
    find: Callable[[str], list[tuple[int, int, Detector]]],
    field_names: frozenset[str],
    tokens: _Tokens,
    edits: list[_Edit],
    is_field: dict[Any, bool],
) -> None:
    """``_scan`` of each root, appending the edits to a list, with the
    detectors' cheapest pre-filter (an ``@``, a digit) tried inline before
    ``_mask_string``."""
    email = "email" in wanted
    digits = len(wanted) > email
    has_digit = _HAS_DIGIT.search
    stack: list[tuple[_Link, Any]] = []
    for root_link, root in roots:
        last = _last(root_link)
        if isinstance(last, str) and last.casefold() in field_names and root is not None:
            edits.append((root_link, tokens.token("field", _canonical(root)), ["field"]))
            continue
        if isinstance(root, str):
            if (email and "@" in root) or (digits and has_digit(root) is not None):
                masked, kinds = _mask_string_fast(root, find, tokens)
                if kinds:
                    edits.append((root_link, masked, kinds))
        elif isinstance(root, dict | list):
            stack.append((root_link, root))
    # strings are masked where they are met; only containers go on the stack
    pop, push = stack.pop, stack.append
    while stack:
        link, value = pop()
        if isinstance(value, dict):
            for key, child in value.items():
                if field_names and child is not None:
                    # the same keys recur in every point of a response: fold each once
                    named = is_field.get(key)
                    if named is None:
                        named = is_field[key] = (
                            isinstance(key, str) and key.casefold() in field_names
                        )
                    if named:
                        edits.append(
                            ((link, key), tokens.token("field", _canonical(child)), ["field"])
                        )
                        continue
                if isinstance(child, str):
                    if (email and "@" in child) or (digits and has_digit(child) is not None):
                        masked, kinds = _mask_string_fast(child, find, tokens)
                        if kinds:
                            edits.append(((link, key), masked, kinds))
                elif isinstance(child, dict | list):
                    push(((link, key), child))
        elif isinstance(value, list):
            for i, child in enumerate(value):
                if isinstance(child, str):
                    if (email and "@" in child) or (digits and has_digit(child) is not None):
                        masked, kinds = _mask_string_fast(child, find, tokens)
                        if kinds:
                            edits.append(((link, i), masked, kinds))
                elif isinstance(child, dict | list):
                    push(((link, i), child))
