"""Masked fields stay masked in filters.

Masking rewrites responses, but a filter works upstream, on the real values: a
caller whose responses show ``[MASKED:email]`` could still search with
``email == "alice@corp.io"`` and learn from which results come back (or how
many: a count, a facet, an aggregate) whether the guess was right, one value
at a time. So when the policy masks something for a request, the request's
own filters may neither name a masked field nor compare against a value of a
masked kind:

* a filter **key** is refused when its last name is a masked field (the rule's
  ``fields``, or the last key of one of its ``paths``), compared
  case-insensitively as masking compares keys. Keys are read the way each
  product writes them: Qdrant ``"key"`` (``meta.email``, ``tags[].email``),
  Chroma and Pinecone metadata keys (not the ``$`` operators), Weaviate
  ``path`` (REST and GraphQL), Milvus field names and ``meta["email"]``
  subscripts in the expression;
* a filter **value** (a string or a number anywhere in the filter, a Milvus
  string literal) is refused when one of the rule's detectors finds its kind
  in it: a filter may not ask for an e-mail address that responses would mask;
* while a detector masks, a **partial-match** operator is refused outright
  (Qdrant ``match.text``/``phrase``/``text_any``, Chroma ``$contains``/
  ``$regex`` on documents, Weaviate ``Like``, Milvus ``like``/
  ``text_match``/``phrase_match``): ``bob@%``, ``bob%example.org`` or a
  regex spell a masked value out piece by piece, and a wildcard can stand for
  the very character (``@``) a detector would look for;
* ranking or sorting by a property (Weaviate ``bm25``/``hybrid``/``ask``
  ``properties``, ``sort``, REST ``?sort=``) counts as naming it, and a model
  that reads the stored properties (Weaviate ``generate``, ``summary``,
  ``answer``, ``rerank``, ``ask``) is refused while a field is masked: its
  answer can quote the field, and masking by name cannot find it there.

The check runs on the filters the classifier read (``Classification.filters``)
and answers with what to change. A rule can waive it with ``mask: {filters:
allow}`` (say, for a field that is masked for display but not secret).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from capture.masker import _last_key
from capture.masking import detect
from capture.types import ModelRead

__all__ = ["masked_filter_problem"]

#: Milvus: a string literal (single or double quotes, backslash escapes)
_MILVUS_LITERAL = re.compile(r"""(["'])((?:\\.|(?!\1)[^\\])*)\1""")
#: Milvus: a literal used as a subscript key, ``meta["email"]``
_MILVUS_SUBSCRIPT = re.compile(r"""\[\s*(["'])((?:\\.|(?!\1)[^\\])*)\1\s*\]""")
_MILVUS_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
#: the names in a key path such as ``meta.email``, ``tags[].email`` or ``a[0].b``
_KEY_PARTS = re.compile(r"[^.\[\]]+")


def masked_filter_problem(
    product: str,
    filters: Iterable[Any],
    *,
    fields: Iterable[str] = (),
    paths: Iterable[str] = (),
    detectors: Iterable[str] = (),
) -> str | None:
    """Why the request's ``filters`` would reveal masked values, or None."""
    names = {f.casefold() for f in fields} | {
        k.casefold() for k in map(_last_key, paths) if k is not None
    }
    kinds = tuple(detectors)
    if not names and not kinds:
        return None
    for flt in filters:
        if isinstance(flt, ModelRead):
            if names:
                return (
                    f"the request asks a model upstream ({flt.module}) to read the stored "
                    "properties, and the policy masks fields for you: its answer can quote "
                    "them, which masking cannot map back to fields; remove it (or ask for a "
                    "role that may see them)"
                )
            continue  # detectors scan what it answers (user data)
        if kinds:
            partial = _partial_match(product, flt)
            if partial is not None:
                return (
                    f"the request uses a partial-match filter ({partial}) while the policy "
                    f"masks {', '.join(kinds)} for you: a pattern or word match can confirm a "
                    "masked value piece by piece (a wildcard stands for any character); use "
                    "exact conditions, or ask for a rule with mask: {filters: allow}"
                )
        keys, values = _terms(product, flt)
        for key in keys:
            parts = _KEY_PARTS.findall(key)
            if parts and parts[-1].casefold() in names:
                return (
                    f"the request filters on {key!r}, a field the policy masks for you: a "
                    "filter on a masked field would reveal its values through which results "
                    "come back; remove that condition (or ask for a role that may see it)"
                )
        if kinds:
            for value in values:
                hits = detect(value, kinds)
                if hits:
                    return (
                        f"the request filters on a value that is a {hits[0].kind} (masked for "
                        "you in responses): a filter on a masked value would confirm it "
                        "through which results come back; remove that condition"
                    )
    return None


#: Milvus: LIKE and the full-text match functions, outside string literals
_MILVUS_PARTIAL = re.compile(r"\b(like|text_match|phrase_match)\b", re.I)
_QDRANT_PARTIAL = frozenset({"text", "phrase", "text_any"})
_CHROMA_PARTIAL = frozenset({"$contains", "$not_contains", "$regex", "$not_regex"})


def _partial_match(product: str, flt: Any) -> str | None:
    """The partial-match operator a filter uses (a pattern, a substring or a
    full-text word match), or None: such operators match pieces of a value,
    so their operands cannot be checked against the detectors the way an
    exact value is."""
    if isinstance(flt, str):
        m = _MILVUS_PARTIAL.search(_MILVUS_LITERAL.sub(" ", flt))
        return str(m.group(1)) if m else None
    # (node, the key it sits under, inside Chroma's where_document?)
    stack: list[tuple[Any, str | None, bool]] = [(flt, None, False)]
    while stack:
        cur, parent, in_doc = stack.pop()
        if isinstance(cur, dict):
            for k, v in cur.items():
                if product == "qdrant" and parent == "match" and k in _QDRANT_PARTIAL:
                    return f"match.{k}"
                if product == "chroma" and k in _CHROMA_PARTIAL and (
                        in_doc or k.endswith("regex")):
                    return str(k)
                if (product == "weaviate" and k == "operator" and isinstance(v, str)
                        and v.casefold() == "like"):
                    return "Like"
                stack.append((v, k, in_doc or k == "where_document"))
        elif isinstance(cur, list | tuple):
            stack.extend((x, parent, in_doc) for x in cur)
    return None


def _terms(product: str, flt: Any) -> tuple[list[str], list[str]]:
    """(keys, values) a filter names."""
    if isinstance(flt, str):
        return _milvus_terms(flt)
    keys: list[str] = []
    values: list[str] = []
    if product == "chroma" and isinstance(flt, dict):
        # the classifier passes {"where": ...} or {"where_document": ...}
        for part, inner in flt.items():
            _walk(inner, keys, values, _dollar_keys if part == "where" else _no_keys)
        return keys, values
    pick: _Pick = {"qdrant": _qdrant_keys, "pinecone": _dollar_keys, "chroma": _dollar_keys,
                   "weaviate": _weaviate_keys}.get(product, _any_keys)
    _walk(flt, keys, values, pick)
    return keys, values


#: (key names, whether the entry's value is that name rather than a condition)
_Pick = Callable[[str, Any], tuple[list[str], bool] | None]


def _walk(node: Any, keys: list[str], values: list[str], pick: _Pick) -> None:
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            for k, v in cur.items():
                named = pick(k, v)
                if named is not None:
                    keys.extend(named[0])
                    if named[1]:
                        continue  # the value is the key, not a compared value
                stack.append(v)
        elif isinstance(cur, list | tuple):
            stack.extend(cur)
        elif isinstance(cur, str):
            values.append(cur)
        elif isinstance(cur, int | float) and not isinstance(cur, bool):
            values.append(str(cur))


def _qdrant_keys(k: str, v: Any) -> tuple[list[str], bool] | None:
    return ([v], True) if k == "key" and isinstance(v, str) else None


def _dollar_keys(k: str, _v: Any) -> tuple[list[str], bool] | None:
    return None if k.startswith("$") else ([k], False)


def _no_keys(_k: str, _v: Any) -> tuple[list[str], bool] | None:
    return None


def _weaviate_keys(k: str, v: Any) -> tuple[list[str], bool] | None:
    if k != "path":
        return None
    if isinstance(v, str):
        return [v], True
    if isinstance(v, list):
        return [str(x) for x in v if isinstance(x, str)], True
    return None


def _any_keys(k: str, v: Any) -> tuple[list[str], bool] | None:
    return _qdrant_keys(k, v) or _weaviate_keys(k, v) or _dollar_keys(k, v)


def _milvus_terms(expr: str) -> tuple[list[str], list[str]]:
    keys = [m.group(2) for m in _MILVUS_SUBSCRIPT.finditer(expr)]
    values = [m.group(2) for m in _MILVUS_LITERAL.finditer(expr)]
    rest = _MILVUS_LITERAL.sub(" ", expr)
    keys.extend(_names(rest))
    values.extend(re.findall(r"\d[\d\-\s]{5,}\d", rest))  # numbers a detector may know
    return keys, values


def _names(text: str) -> Iterator[str]:
    for m in _MILVUS_NAME.finditer(text):
        yield m.group(0)
