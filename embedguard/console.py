"""The consoles embedguard's commands print through.

No markup and no emoji codes: what is printed (subjects, collections, ids,
paths, reasons, error messages) comes from clients and users, and "[/]" or
":skull:" in it is text to show, not a style to apply. Styling goes through
``rich.text.Text``. ``wide``: piped output is not squeezed into 80 columns
(tables of ids become unreadable).

Nor invisible or reordering characters: a subject ``alice\u202egpj.exe``
(a right-to-left override) would print as ``aliceexe.jpg``, and ``ali\u200bce``
exactly like ``alice``. Every string these consoles print or put in a table
cell shows each such character as ``⟨U+202E⟩`` (:func:`visible`); build a
``Text`` from client values with ``visible`` too. ``--json`` output is not
printed through them and keeps the values exact."""

from __future__ import annotations

import sys
import unicodedata
from typing import Any

from rich.console import Console
from rich.text import Text

__all__ = ["plain_console", "visible"]

# Format characters (category Cf: direction marks, embeddings, overrides and
# isolates, zero-width space and joiners, word joiner, BOM, soft hyphen, tag
# characters...), C0 and C1 controls, the line and paragraph separators, and
# lone surrogates: invisible, or reordering the text around them. Tab, line
# feed and carriage return stay: they are layout.
_KEEP = frozenset("\t\n\r")
_HIDDEN = frozenset({"Cf", "Cc", "Zl", "Zp", "Cs"})


def _shown_char(c: str) -> str:
    if c in _KEEP or unicodedata.category(c) not in _HIDDEN:
        return c
    return f"⟨U+{ord(c):04X}⟩"


def visible(value: object) -> str:
    """``str(value)`` with every invisible or reordering character (above) shown
    as ``⟨U+XXXX⟩``. Everything else, other scripts and emoji included, stays."""
    text = str(value)
    if text.isprintable():  # none of those characters (the usual case)
        return text
    return "".join(map(_shown_char, text))


class _VisibleConsole(Console):
    def render_str(self, text: str, **kwargs: Any) -> Text:
        # every str printed or put in a table cell passes here
        return super().render_str(visible(text), **kwargs)


def plain_console(*, stderr: bool = False, wide: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return _VisibleConsole(
        stderr=stderr,
        soft_wrap=True,
        highlight=False,
        markup=False,
        emoji=False,
        width=None if not wide or stream.isatty() else 240,
    )
