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
"""

from __future__ import annotations

import re
import string

__all__ = ["md_literal"]

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


def _join(match: re.Match[str]) -> str:
    pair = match.group(1)
    return pair[0] + _JOINER + pair[1:]


def md_literal(value: object) -> str:
    """``value`` as Markdown source that Streamlit displays exactly as ``str(value)``
    (line breaks shown as spaces). Use it for every value that is not written in
    the dashboard's code before it goes into Markdown text or a label."""
    text = _LINE_BREAKS.sub(" ", str(value))
    text = _STREAMLIT_LOGO.sub(":" + _JOINER, text)
    text = _TYPOGRAPHIC.sub(_join, text)
    return "".join(_ESCAPED.get(c, c) for c in text)
