"""The consoles embedguard's commands print through.

No markup and no emoji codes: what is printed (subjects, collections, ids,
paths, reasons, error messages) comes from clients and users, and "[/]" or
":skull:" in it is text to show, not a style to apply. Styling goes through
``rich.text.Text``. ``wide``: piped output is not squeezed into 80 columns
(tables of ids become unreadable)."""

from __future__ import annotations

import sys

from rich.console import Console

__all__ = ["plain_console"]


def plain_console(*, stderr: bool = False, wide: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(
        stderr=stderr,
        soft_wrap=True,
        highlight=False,
        markup=False,
        emoji=False,
        width=None if not wide or stream.isatty() else 240,
    )
