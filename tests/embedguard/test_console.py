"""embedguard/console.py: the CLI's consoles print client values as typed and
show invisible or reordering characters as markers."""

from __future__ import annotations

import io

import pytest
from rich.table import Table

from embedguard.console import plain_console, visible


@pytest.mark.parametrize(("value", "expected"), [
    ("alice\u202egpj.exe", "alice⟨U+202E⟩gpj.exe"),
    ("ali\u200bce", "ali⟨U+200B⟩ce"),
    ("x\u2066y\u2069\u200f", "x⟨U+2066⟩y⟨U+2069⟩⟨U+200F⟩"),
    ("tag\U000e0041", "tag⟨U+E0041⟩"),
    ("bell\x07esc\x1b[2J", "bell⟨U+0007⟩esc⟨U+001B⟩[2J"),
    ("Zoë 日本 مرحبا 🙂\t\n", "Zoë 日本 مرحبا 🙂\t\n"),
    (42, "42"),
])
def test_visible(value: object, expected: str) -> None:
    assert visible(value) == expected


def _printed(*renderables: object) -> str:
    console = plain_console()
    console.file = io.StringIO()
    for r in renderables:
        console.print(r)
    out = console.file.getvalue()
    assert isinstance(out, str)
    return out


def test_printed_strings_and_table_cells_show_the_markers() -> None:
    table = Table("subject", "collection")
    table.add_row("alice\u202egpj.exe", "do\u200bcs")
    out = _printed("by alice\u202egpj.exe [bold]x[/] :skull:", table)
    assert "\u202e" not in out and "\u200b" not in out
    assert "by alice⟨U+202E⟩gpj.exe [bold]x[/] :skull:" in out
    assert "alice⟨U+202E⟩gpj.exe" in out and "do⟨U+200B⟩cs" in out
