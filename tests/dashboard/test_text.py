"""dashboard/text.py ``md_literal``: a value a client chose, put into Streamlit's
Markdown, displays as typed.

CommonMark (markdown-it-py) shows that the escaped source renders back to the
value with no markup; Streamlit's own additions are checked on the source with
the frontend's rules, copied from streamlit/static (StreamlitMarkdown.*.js,
remark-emoji.*.js, Streamlit 1.67), because its renderer is JavaScript."""

from __future__ import annotations

import html
import re

import pytest
from markdown_it import MarkdownIt

from dashboard.text import _LINE_BREAKS, md_literal, visible, visible_data

_MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])

# -- the frontend's rules (StreamlitMarkdown.*.js) -------------------------------------
#: hm(): the emoji plugin is loaded only when the raw source matches this
EMOJI_TRIGGER = re.compile(r":(?!material/|streamlit:)[\w+-][\w_+-]*:", re.ASCII)
#: remark-emoji, run on the parsed text once loaded
EMOJI_CODE = re.compile(r":\+1:|:-1:|:[\w-]+:", re.ASCII)
#: remark-directive text directives (:red[...], :green-background[...], :small[...])
DIRECTIVE = re.compile(r":[a-z][a-z0-9-]*\[")
#: bm(): LaTeX is on when the source, code spans and \$ \\ \` removed, matches these
_NOT_MATH = re.compile(r"(?m:^) {0,3}(`{3,}|~{3,})[\s\S]*?(?:\n[ \t]*\1|$)"
                       r"|(?<!`)(`+)[^`\n]+\2(?!`)|\\[\\$`]")
_BLOCK_MATH = re.compile(r"(?<!\$)\$\$+(?!\$)[\s\S]*?\$\$")
_INLINE_MATH = re.compile(r"(?<!\$)\$(?![\s$])[^$\n]*?[^\s$]\$(?!\d)")
#: Gm(): typographic symbols replaced in the parsed text
TYPOGRAPHIC = re.compile(r"(^|\s)(<->|->|<-|--|>=|<=|~=)(\s|$)")
_MARKUP = re.compile(r"<(?!/?p>)[a-z/][^>]*>")


def latex_on(source: str) -> bool:
    if "$" not in source:
        return False
    stripped = _NOT_MATH.sub("_", source)
    return bool(_BLOCK_MATH.search(stripped) or _INLINE_MATH.search(stripped))


def html_of(source: str) -> str:
    return _MD.render(source)


def shown(source: str) -> str:
    """The text a reader sees: the rendered HTML without tags, entities resolved,
    word joiners (zero width, invisible) dropped."""
    text = re.sub(r"<[^>]+>", "", html_of(source))
    return html.unescape(text).strip().replace("\u2060", "")


def streamlit_problems(source: str) -> list[str]:
    """What Streamlit's frontend would do to this source beyond CommonMark."""
    problems = []
    if EMOJI_TRIGGER.search(source):
        problems.append("loads the emoji plugin")
    if DIRECTIVE.search(source):
        problems.append("has a text directive")
    if ":material/" in source:
        problems.append("names a Material icon")
    if latex_on(source):
        problems.append("turns LaTeX on")
    text = html.unescape(re.sub(r"<[^>]+>", "", html_of(source)))  # word joiners kept
    if ":streamlit:" in text:
        problems.append("shows the Streamlit logo")
    if TYPOGRAPHIC.search(text):
        problems.append("gets typographic symbols")
    return problems


HOSTILE = [
    "**APPROVED by security team**",
    "__bold__ *em* _em_ ~~struck~~",
    "![x](http://attacker.test/pixel)",
    "[click](https://attacker.test/login)",
    "<img src=x onerror=alert(1)>",
    "<https://attacker.test/auto>",
    ":green[verified] :red-background[x] :small[tiny] :color[c]{foreground=\"red\"}",
    ":material/check_circle: :streamlit: :skull: :+1:",
    "$x^2$ and $$\\sum$$",
    "# heading",
    "> quote",
    "- item",
    "1. item",
    "| a | b |\n|---|---|\n| c | d |",
    "line one\n\n    indented code\nsetext\n===",
    "`code` ``x``",
    "a -- b -> c <- d <-> e >= f <= g ~= h",
    "x[/]",
    "[bold]rich[/]",
    "[/x]",
    "s-[red]evil[/]",
    "back\\slash \\* \\: &amp; &#58; &copy;",
    "trailing backslash\\",
    "[ref]: http://attacker.test/ref",
    "footnote[^1]",
    "emoji-ish time 09:30:00",
    "plain text",
    "",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_renders_back_to_the_value(value: str) -> None:
    source = md_literal(value)
    assert not _MARKUP.search(html_of(source)), html_of(source)
    assert shown(source) == re.sub(r"\r\n|[\r\n]", " ", value).strip()


@pytest.mark.parametrize("value", HOSTILE)
def test_streamlit_adds_nothing(value: str) -> None:
    assert streamlit_problems(md_literal(value)) == []


@pytest.mark.parametrize("value", [v for v in HOSTILE if v])  # "****" is no bold
def test_stays_literal_next_to_written_markdown(value: str) -> None:
    # the pages put values after labels such as "**identity** " and before ": "
    source = f"**identity** {md_literal(value)}: {md_literal(value)} · **{md_literal(value)}**"
    assert streamlit_problems(source) == []
    rendered = html_of(source)
    assert rendered.count("<strong>") == 2 and "<a " not in rendered and "<img" not in rendered
    flat = re.sub(r"\r\n|[\r\n]", " ", value)
    assert shown(source) == f"identity {flat}: {flat} · {flat}".strip()


def test_a_colon_is_a_character_reference_not_an_escape() -> None:
    # "\:skull" followed by a ":" the page wrote would still load the emoji plugin
    assert md_literal(":skull") == "&#58;skull"
    assert not EMOJI_TRIGGER.search(md_literal(":skull") + ":")
    assert EMOJI_TRIGGER.search("\\:skull" + ":")


def test_the_rules_above_catch_what_streamlit_does() -> None:
    for raw in ("**x** :skull:", ":green[x]", ":material/check:", "$x^2$", ":streamlit:",
                "a -- b"):
        assert streamlit_problems(raw), raw


# -- invisible and reordering characters (visible, visible_data) ------------------------

SPOOFS = {
    # Trojan Source: the override shows "alice‮gpj.exe" as "aliceexe.jpg"
    "alice\u202egpj.exe": "alice⟨U+202E⟩gpj.exe",
    "admin\u2066\u2069x\u2067y\u2068z\u202a\u202b\u202c\u202d": (
        "admin⟨U+2066⟩⟨U+2069⟩x⟨U+2067⟩y⟨U+2068⟩z⟨U+202A⟩⟨U+202B⟩⟨U+202C⟩⟨U+202D⟩"),
    "\u200fmark\u200e\u061c": "⟨U+200F⟩mark⟨U+200E⟩⟨U+061C⟩",
    # looks exactly like "alice"
    "ali\u200bce\u2060\ufeff\u00ad": "ali⟨U+200B⟩ce⟨U+2060⟩⟨U+FEFF⟩⟨U+00AD⟩",
    # tag characters: invisible ASCII look-alikes ("ASCII smuggling")
    "ok\U000e0069\U000e0067\U000e006e": "ok⟨U+E0069⟩⟨U+E0067⟩⟨U+E006E⟩",
    "nul\x00esc\x1b[31mdel\x7f": "nul⟨U+0000⟩esc⟨U+001B⟩[31mdel⟨U+007F⟩",
    "para\u2029line\u2028": "para⟨U+2029⟩line⟨U+2028⟩",
}


@pytest.mark.parametrize(("value", "expected"), SPOOFS.items())
def test_invisible_and_reordering_characters_are_shown_as_markers(
    value: str, expected: str
) -> None:
    assert visible(value) == expected


@pytest.mark.parametrize("value", [
    "plain", "Zoë Ångström", "日本語のコレクション", "مرحبا", "שלום", "emoji 🙂👩‍💻🏳️‍🌈",
    "tab\tand\nnew line\r\n", "no-break\u00a0space", "",
])
def test_other_text_is_left_as_it_is(value: str) -> None:
    # other scripts (right-to-left ones too: their letters order themselves) and
    # emoji stay; ZWJ sequences (👩‍💻) carry U+200D, which is shown: an auditor
    # sees the joiner rather than guessing what joins what
    assert visible(value) == value.replace("\u200d", "⟨U+200D⟩")


def test_md_literal_shows_the_markers_as_typed() -> None:
    for value, expected in SPOOFS.items():
        source = md_literal(value)
        assert streamlit_problems(source) == []
        # line breaks (U+2028 and U+2029 too) become spaces first, as always
        assert shown(source) == visible(_LINE_BREAKS.sub(" ", value)).strip()
        if "\u2029" not in value:
            assert "⟨U+" in shown(source)


def test_visible_data_reaches_every_string_and_leaves_the_original() -> None:
    import pandas as pd

    body = {"na\u202eme": ["a\u200bb", ("t\u2066",), 3, None, {"k": "v\u202e"}], "n": 1.5}
    shown_body = visible_data(body)
    assert shown_body == {"na⟨U+202E⟩me": ["a⟨U+200B⟩b", ("t⟨U+2066⟩",), 3, None,
                                           {"k": "v⟨U+202E⟩"}], "n": 1.5}
    assert body["na\u202eme"][0] == "a\u200bb"  # untouched
    frame = pd.DataFrame({"subject": ["alice\u202egpj", "bob"], "count": [1, 2]})
    shown_frame = visible_data(frame)
    assert list(shown_frame["subject"]) == ["alice⟨U+202E⟩gpj", "bob"]
    assert list(shown_frame["count"]) == [1, 2]
    assert frame["subject"][0] == "alice\u202egpj"
