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

from dashboard.text import md_literal

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
