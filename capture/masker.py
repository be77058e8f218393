"""Masker: the response as delivered is the masked one.

Runs in the response hook before the recorder. Applies the policy's masking
obligations (placed on the flow by the enforcer as a MaskPlan), strips vectors,
collects the point ids in the response for lineage, and notes product-level
errors (Milvus answers errors as HTTP 200 with a non-zero ``code``). The
original body's hash is kept so the record proves what the upstream said.

A query may rename the fields it selects (GraphQL aliases: ``{ s: salary }``
answers ``{"s": ...}``). The classification lists those renames, and
:func:`aliased_fields` widens the plan's field names and field paths by them,
so a renamed field is masked as the field itself would be.

A response may also carry a field's value away from the field's key: a Qdrant
group id is the value of the ``group_by`` field, a facet hit or an
``order_value`` that of the faceted or ordered field, a Weaviate aggregate
summarises a property's values. The classification lists those locations
with the field (``field_aliases`` entries whose first element is a path), and
:func:`field_plan` masks each one whole when its field is masked by name, or
by a path that ends in its name, with the token the field's own value gets
(so HMAC tokens still join). Such a
location is then no longer a response id: it is neither protected from
masking nor recorded as a result id (a Qdrant ``with_lookup`` record's id is
the group id).

An answer that is not a success (a status outside 2xx, or a Milvus error
``code``) does not have the shape the classifier's paths describe, and it may
echo what the request sent or what the database holds (``Wrong input: payload
{"who": "bob@example.org"}``). Under a masking obligation its whole document is
scanned by the detectors and field names (:func:`whole_document_paths`), on top
of the plan's own paths; a body that cannot be read is withheld as for a
success, but the client keeps the upstream's status.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mitmproxy import http

from capture.masking import (
    EACH_ELEMENT,
    EACH_VALUE,
    MaskingError,
    MaskResult,
    mask_document,
    mask_document_reference,
    mask_text,
    parse_path,
)
from capture.state import FlowState, error_response, fail_closed, state_of
from schemas.models import MaskedField

__all__ = [
    "BODY_SEEN",
    "MaskPlan",
    "Masker",
    "aliased_fields",
    "extract_ids",
    "field_plan",
    "set_identity_body",
    "whole_document_paths",
]

log = logging.getLogger("embedguard.masker")
PLAN_KEY = "mask_plan"
#: FlowState.extra: (the response's raw_content object the masker read, its
#: Content-Encoding, that body decoded, its sha256). The recorder reuses the digest (and the decoded
#: body) when the response still holds that very object, i.e. nothing changed
#: it since: one SHA-256 (and one decompression) less per unmasked response.
BODY_SEEN = "body_seen"


@dataclass(frozen=True)
class MaskPlan:
    detectors: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    field_paths: tuple[str, ...] = ()
    mode: Literal["placeholder", "hmac"] = "placeholder"
    strip_vectors: bool = False
    user_data_paths: tuple[str, ...] = field(default=())

    @property
    def active(self) -> bool:
        return bool(self.detectors or self.fields or self.field_paths or self.strip_vectors)


def set_identity_body(resp: http.Response, body: bytes) -> None:
    """``resp.set_content(body)`` for a response without Content-Encoding, on
    the raw fields: the body as is, and Content-Length fixed unless the message
    is sent with Transfer-Encoding (as mitmproxy's ``set_content`` does)."""
    resp.raw_content = body
    headers = resp.headers
    length = str(len(body)).encode()
    out: list[tuple[bytes, bytes]] = []
    done = False
    for k, v in headers.fields:
        name = k.lower()
        if name == b"transfer-encoding":
            return  # the fields stay as they were
        if name == b"content-length":
            if not done:
                out.append((k, length))
                done = True
        else:
            out.append((k, v))
    if not done:
        out.append((b"content-length", length))
    headers.fields = tuple(out)


def _walk(doc: Any, steps: Sequence[str]) -> Iterator[Any]:
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        node, i = stack.pop()
        if i == len(steps):
            yield node
            continue
        step = steps[i]
        if step == "[]":
            if isinstance(node, list):
                stack.extend((x, i + 1) for x in reversed(node))
        elif step == "{*}":
            if isinstance(node, dict):
                stack.extend((x, i + 1) for x in reversed(list(node.values())))
        elif isinstance(node, dict) and step in node:
            stack.append((node[step], i + 1))


#: ``json.dumps(doc, separators=(",", ":"))`` without building an encoder per call
_encode = json.JSONEncoder(separators=(",", ":")).encode

_parsed = functools.lru_cache(maxsize=1024)(parse_path)


def _id_values(doc: Any, steps: Sequence[str]) -> Iterator[Any] | tuple[Any, ...]:
    """What ``_walk`` yields; a path of key names only (``result.id``, the
    most common) is followed directly."""
    if EACH_ELEMENT in steps or EACH_VALUE in steps:
        return _walk(doc, steps)
    node = doc
    for step in steps:
        if not isinstance(node, dict) or step not in node:
            return ()
        node = node[step]
    return (node,)


@functools.lru_cache(maxsize=256)
def _id_paths(paths: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The parsed ``paths`` that parse (the others select nothing)."""
    out: list[tuple[str, ...]] = []
    for path in paths:
        try:
            out.append(_parsed(path))
        except MaskingError:
            continue
    return tuple(out)


def extract_ids(doc: Any, paths: Sequence[str], limit: int = 10_000) -> list[str]:
    """Point ids found at ``paths`` (dotted, with [] and {*}), as strings."""
    out: list[str] = []
    for steps in _id_paths(tuple(paths)):
        for value in _id_values(doc, steps):
            if isinstance(value, list):
                out.extend(
                    str(v) for v in value if isinstance(v, str | int) and not isinstance(v, bool)
                )
            elif isinstance(value, str | int) and not isinstance(value, bool):
                out.append(str(value))
            if len(out) >= limit:
                return out[:limit]
    return out


#: A policy path with more renamed spellings than this is widened instead: each
#: renamed step becomes {*} (masks more, never less).
MAX_ALIAS_VARIANTS = 64


def _render_steps(steps: Sequence[str]) -> str:
    out = ""
    for step in steps:
        if step == EACH_ELEMENT:
            out += step
        else:
            out += f".{step}" if out else step
    return out


@functools.lru_cache(maxsize=256)
def aliased_fields(
    fields: tuple[str, ...],
    field_paths: tuple[str, ...],
    aliases: tuple[tuple[str, str], ...],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``fields`` and ``field_paths`` widened by a query's ``aliases``
    ((response key, field name) pairs, the classification's ``field_aliases``).

    A response key that renames a masked field becomes a masked field name
    (compared case-insensitively, like ``fields``), and a path through a
    renamed key is masked along every renamed spelling too. Aliases are
    matched by name wherever they occur in the query, not by position: a key
    that renames a masked field in one selection is masked in all of them,
    which can only mask more."""
    if not aliases:
        return fields, field_paths
    folded = {f.casefold() for f in fields}
    more_fields = [a for a, name in aliases if name.casefold() in folded and a != name]
    renames: dict[str, list[str]] = {}
    for alias, name in aliases:
        if alias != name and alias not in renames.setdefault(name, []):
            renames[name].append(alias)
    more_paths: list[str] = []
    for path in field_paths:
        try:
            steps = _parsed(path)
        except MaskingError:
            continue  # mask_document reports it
        options = [
            [s] if s in (EACH_ELEMENT, EACH_VALUE) else [s, *renames.get(s, ())] for s in steps
        ]
        count = math.prod(len(o) for o in options)
        if count == 1:
            continue
        if count > MAX_ALIAS_VARIANTS:
            options = [o if len(o) == 1 else [EACH_VALUE] for o in options]
        more_paths.extend(_render_steps(combo) for combo in itertools.product(*options))
    return (
        tuple(dict.fromkeys((*fields, *more_fields))),
        tuple(dict.fromkeys((*field_paths, *more_paths))),
    )


def _is_value_path(key: str) -> bool:
    """Whether a ``field_aliases`` entry names a response path (a location
    holding the field's value) rather than a response key (a GraphQL alias,
    which cannot contain these characters)."""
    return "." in key or "[" in key or "{" in key


@functools.lru_cache(maxsize=256)
def field_plan(
    fields: tuple[str, ...],
    field_paths: tuple[str, ...],
    field_aliases: tuple[tuple[str, str], ...],
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The field names and whole-value paths to mask, given a classification's
    ``field_aliases``, and the value paths among them: the response paths
    listed as holding a value of a field in ``fields`` (compared
    case-insensitively, as masking compares keys). Renamed keys widen
    ``fields`` and ``field_paths`` (:func:`aliased_fields`); the value paths
    are added to the whole-value paths."""
    if not field_aliases:
        return fields, field_paths, ()
    renames = tuple(a for a in field_aliases if not _is_value_path(a[0]))
    fields_out, paths_out = aliased_fields(fields, field_paths, renames)
    # A path rule masks the field its last key names (``result.points[].payload
    # .salary``: salary); a facet, group id, order value or aggregate of that
    # field elsewhere in the response would otherwise show what the path
    # hides. (Where several fields share that key, all their values are masked:
    # more than the path alone, never less.)
    folded = {f.casefold() for f in fields} | {
        key.casefold() for key in map(_last_key, field_paths) if key is not None
    }
    values = tuple(
        dict.fromkeys(
            path
            for path, name in field_aliases
            if _is_value_path(path) and name.casefold() in folded
        )
    )
    if values:
        paths_out = tuple(dict.fromkeys((*paths_out, *values)))
    return fields_out, paths_out, values


def _last_key(path: str) -> str | None:
    """The last key a masking path names (``a.b[].c{*}`` -> ``c``), or None."""
    try:
        steps = parse_path(path)
    except MaskingError:
        return None
    keys = [step for step in steps if step not in (EACH_ELEMENT, EACH_VALUE)]
    return str(keys[-1]) if keys else None


def whole_document_paths(doc: Any) -> tuple[str, ...]:
    """Scan roots that together reach every value of ``doc`` (each value of
    an object, each element of an array), so that scanning them masks by
    detector and by field name anywhere in it; none for a scalar."""
    if isinstance(doc, dict):
        return (EACH_VALUE,)
    if isinstance(doc, list):
        return (EACH_ELEMENT,)
    return ()


def is_success(status: int) -> bool:
    """Whether a response has the shape the classifier's paths describe."""
    return 200 <= status < 300


#: headers of an answer that is not a success which a client still needs when
#: its body is withheld (the Credentials addon rewrites or removes the URLs)
_KEPT_WHEN_WITHHELD = ("location", "content-location", "refresh", "retry-after")


def _encoding_and_type(headers: http.Headers) -> tuple[str | None, str]:
    """``header_value`` of Content-Encoding and of Content-Type (``""`` when
    absent), in one pass over the fields."""
    encodings: list[bytes] = []
    types: list[bytes] = []
    for k, v in headers.fields:
        name = k.lower()
        if name == b"content-encoding":
            encodings.append(v)
        elif name == b"content-type":
            types.append(v)
    encoding = (
        ", ".join(v.decode("utf-8", "surrogateescape") for v in encodings) if encodings else None
    )
    return encoding, ", ".join(v.decode("utf-8", "surrogateescape") for v in types)


class Masker:
    def __init__(self, hmac_key: bytes | None = None, *, reference: bool = False) -> None:
        self.hmac_key = hmac_key
        #: the plain path: every JSON body parsed, masked by the general
        #: algorithm (mask_document_reference) and serialised by json.dumps.
        #: The tests run it beside the default to prove both deliver the same.
        self.reference = reference

    @fail_closed("upstream")
    def response(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or not st.forwarded or flow.response is None:
            return
        resp = flow.response
        headers = resp.headers
        encoding, ctype = _encoding_and_type(headers)
        encoded = encoding is not None
        raw = (resp.get_content(strict=False) if encoded else resp.raw_content) or b""
        digest = hashlib.sha256(raw).hexdigest()
        st.extra["original_body_sha256"] = digest
        st.extra[BODY_SEEN] = (resp.raw_content, encoding, raw, digest)
        cls = st.classification
        plan: MaskPlan | None = st.extra.get(PLAN_KEY)
        if not raw or ("json" not in ctype and raw.lstrip()[:1] not in (b"{", b"[")):
            if plan is not None and plan.active and raw:
                # A policy that masks cannot be honoured on a body we cannot read:
                # fail closed rather than deliver unmasked data.
                self._withhold(flow, st, f"response is {ctype or 'untyped'}, not JSON")
            return
        masking = plan is not None and plan.active
        id_paths = cls.response_ids if cls is not None else ()
        if masking and plan is not None and cls is not None and cls.field_aliases:
            _, _, value_paths = field_plan(plan.fields, plan.field_paths, cls.field_aliases)
            if value_paths:
                # a location holding a masked field's value is masked even where
                # it is also a record id, and not recorded as one
                id_paths = tuple(p for p in id_paths if p not in value_paths)
        if (
            not masking
            and not self.reference
            and (cls is None or (not cls.response_ids and cls.product != "milvus"))
        ):
            # nothing below reads the document: no ids to collect, no product
            # error to note, nothing to mask
            if cls is not None:
                st.extra["result_ids"] = []
            return
        try:
            if not self.reference and raw[:1] in (b"{", b"[") and raw[1:2] != b"\x00":
                # what json.loads does to bytes that json.detect_encoding takes
                # for UTF-8 (no BOM, no NUL in the first two), minus the detection
                doc = json.loads(raw.decode("utf-8", "surrogatepass"))
            else:
                doc = json.loads(raw)
        except (ValueError, RecursionError):
            if masking:
                self._withhold(flow, st, "response body is not valid JSON")
            return
        success = is_success(resp.status_code)
        if cls is not None:
            st.extra["result_ids"] = extract_ids(doc, id_paths)
            if cls.product == "milvus" and isinstance(doc, dict):
                code = doc.get("code")
                if isinstance(code, int) and code != 0:
                    message = str(doc.get("message"))[:300]
                    st.extra["upstream_error"] = f"milvus code {code}: {message}"
                    success = False  # an error, whatever the status says
        if plan is None or not masking:
            return
        fields, field_paths = plan.fields, plan.field_paths
        if cls is not None and cls.field_aliases:
            fields, field_paths, _ = field_plan(fields, field_paths, cls.field_aliases)
        strip = plan.strip_vectors and cls is not None
        scan_paths = plan.user_data_paths
        if not success:
            # not the shape the paths describe: scan all of it (a scan root
            # covers any user-data root below it)
            scan_paths = whole_document_paths(doc) if (plan.detectors or fields) else ()
        try:
            if isinstance(doc, str):  # a bare JSON string: no field, only its text
                text, kinds = mask_text(doc, plan.detectors, mode=plan.mode,
                                        hmac_key=self.hmac_key)
                result = MaskResult(doc=text, masked_fields=[
                    MaskedField(path="", kind=kind) for kind in kinds])
            elif self.reference:
                result = mask_document_reference(
                    doc,
                    paths=list(scan_paths),
                    detectors=plan.detectors,
                    fields=fields,
                    field_paths=field_paths,
                    strip_vector_paths=list(cls.vector_paths) if (strip and cls) else [],
                    vector_scan_paths=list(cls.vector_scan_paths) if (strip and cls) else [],
                    id_paths=list(id_paths),
                    mode=plan.mode,
                    hmac_key=self.hmac_key,
                )
            else:
                result = mask_document(
                    doc,
                    paths=scan_paths,
                    detectors=plan.detectors,
                    fields=fields,
                    field_paths=field_paths,
                    strip_vector_paths=cls.vector_paths if (strip and cls) else (),
                    vector_scan_paths=cls.vector_scan_paths if (strip and cls) else (),
                    id_paths=id_paths,
                    mode=plan.mode,
                    hmac_key=self.hmac_key,
                    source=raw,  # lets it skip the walk when the text holds nothing to mask
                )
        except MaskingError as exc:
            log.error("masking obligation cannot be applied to %s: %s", st.request_id, exc)
            self._withhold(flow, st, "the masking obligation is misconfigured")
            return
        if result.masked_fields:
            if self.reference:
                body = json.dumps(result.doc, separators=(",", ":")).encode()
            else:
                body = _encode(result.doc).encode()
            if encoded:
                resp.set_content(body)  # encoded again as the upstream encoded it
            else:
                set_identity_body(resp, body)
            st.extra["masked_fields"] = result.masked_fields

    @staticmethod
    def _withhold(flow: http.HTTPFlow, st: FlowState, why: str) -> None:
        assert flow.response is not None
        upstream = flow.response
        if is_success(upstream.status_code):
            flow.response = error_response(
                502,
                "masking_failed",
                f"the policy requires masking this response, but {why}; it was withheld",
                st.request_id,
                method=flow.request.method,
            )
            return
        # An answer that is not a success keeps its status (a 404 stays a 404),
        # only its body is withheld.
        status = upstream.status_code
        flow.response = error_response(
            status,
            "masking_failed",
            f"the upstream answered {status}; the policy requires masking this response, "
            f"but {why}; its body was withheld",
            st.request_id,
            method=flow.request.method,
        )
        for name in _KEPT_WHEN_WITHHELD:
            values = upstream.headers.get_all(name)
            if values:
                flow.response.headers.set_all(name, values)
