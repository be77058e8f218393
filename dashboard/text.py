"""Recorded values shown as typed in Streamlit's Markdown.

Most Streamlit text elements and labels (``st.markdown``, ``st.caption``,
``st.info`` and its siblings, expander, tab, metric, button and page-link
labels) render their text as GitHub-flavoured Markdown with Streamlit's
additions: ``:emoji:`` shortcodes, ``:color[...]`` directives,
``:material/icon:``, ``:streamlit:``, ``$LaTeX$`` and typographic arrows.
Collection names, subjects, session ids, paths, point ids and reasons are
chosen by clients; put into such text unescaped, a collection named
``**APPROVED by security team**`` or ``![x](http://attacker/pixel)`` would style
the auditor's screen or make the browser fetch a remote image.
:func:`md_literal` makes a value display as typed; the text written in code
around it keeps its Markdown.

A value can also mislead without any Markdown: Unicode direction overrides
(U+202E turns ``alice\u202egpj.exe`` into ``aliceexe.jpg`` on screen, the
"Trojan Source" trick), zero-width characters (``ali\u200bce`` looks exactly
like ``alice``) and tag characters (invisible ASCII look-alikes). :func:`visible`
shows each such character as a marker, ``⟨U+202E⟩``, so an auditor sees that
it is there and which one it is; :func:`visible_data` does that to every
string of a table, a JSON body or a list before the dashboard shows it, and
``md_literal`` does it too.
"""

from __future__ import annotations

import re
import string
from typing import Any

from embedguard.console import visible

__all__ = ["md_literal", "visible", "visible_data"]

# Every ASCII punctuation character may be backslash-escaped in CommonMark, and
# an escaped one is always literal: emphasis, links, images, HTML, tables,
# headings, lists, code spans, strikethrough, autolinks, math delimiters.
_ESCAPED = {c: "\\" + c for c in string.punctuation}
# Not "\:": Streamlit's frontend searches the raw source for ":word:" to decide
# whether to load its emoji plugin (and rewrites ":material/" there) before any
# Markdown parsing, so an escaped colon next to a written ":" could still turn
# it on. A character reference puts no ":" in the source at all.
_ESCAPED[":"] = "&#58;"
# One line: a line break in a value could start a heading, list, table or code
# block. (Streamlit labels are one line anyway.)
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")
# Streamlit rewrites these in the parsed text, after escapes are resolved, so no
# escape stops them: ":streamlit:" becomes its logo and these pairs, between
# spaces, become arrows and symbols. A word joiner (U+2060, zero width,
# invisible) inside them keeps them as typed on screen.
_JOINER = "\u2060"
_STREAMLIT_LOGO = re.compile(r":(?=streamlit:)")
_TYPOGRAPHIC = re.compile(r"(?:(?<=\s)|^)(<->|->|<-|--|>=|<=|~=)(?=\s|$)")


def visible_data(value: Any) -> Any:
    """``value`` (a string, a mapping, a list or tuple, a pandas DataFrame, or a
    scalar) with ``visible`` applied to every string in it, keys included; a new
    object, the original untouched (use it for display, the original for lookups)."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, dict):
        return {visible_data(k): visible_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(visible_data(v) for v in value)
    frame_type = _dataframe_type()
    if frame_type is not None and isinstance(value, frame_type):
        shown = value.copy()
        shown.columns = [visible_data(c) for c in shown.columns]
        from pandas.api.types import is_object_dtype, is_string_dtype

        for column in shown.columns:
            if is_object_dtype(shown[column]) or is_string_dtype(shown[column]):
                shown[column] = shown[column].map(visible_data)
        return shown
    return value


def _dataframe_type() -> type | None:
    import sys

    pandas = sys.modules.get("pandas")  # a DataFrame exists only if pandas is loaded
    return None if pandas is None else pandas.DataFrame


def _join(match: re.Match[str]) -> str:
    pair = match.group(1)
    return pair[0] + _JOINER + pair[1:]


def md_literal(value: object) -> str:
    """``value`` as Markdown source that Streamlit displays exactly as ``str(value)``
    (line breaks shown as spaces, invisible characters as ``visible`` shows
    them). Use it for every value that is not written in
    the dashboard's code before it goes into Markdown text or a label."""
    text = visible(_LINE_BREAKS.sub(" ", str(value)))
    text = _STREAMLIT_LOGO.sub(":" + _JOINER, text)
    text = _TYPOGRAPHIC.sub(_join, text)
    return "".join(_ESCAPED.get(c, c) for c in text)
