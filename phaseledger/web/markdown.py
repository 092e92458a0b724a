"""A small, safe Markdown renderer for the artifacts phases publish (``ctx.artifact``).

The text is HTML-escaped before anything else, so an artifact can never inject markup:
what it may produce is the subset below, built here. Supported: ``#`` headings (shifted
down to fit under the page's own), paragraphs, ``-``/``*`` and ``1.`` lists, fenced code
blocks, ``>`` quotes, pipe tables, horizontal rules, and inline ``code``, ``**bold**``,
``*italic*`` and ``[links](https://...)`` (http, https and mailto only).
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

_INLINE_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?!\*)")
_LINK = re.compile(r"\[([^\]]+)\]\(((?:https?://|mailto:)[^)\s\"'<>]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_BULLET = re.compile(r"^\s*[-*+]\s+(.*)$")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+(.*)$")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")


def inline(text: str) -> str:
    """One line of Markdown as safe HTML (the text is escaped first)."""
    codes: list[str] = []

    def keep(match: re.Match[str]) -> str:
        codes.append(f"<code>{match.group(1)}</code>")
        return f"\x00{len(codes) - 1}\x00"

    html = _INLINE_CODE.sub(keep, escape(text, quote=False))
    # The URL is escaped already (with the rest of the text) and holds no quote or bracket.
    html = _LINK.sub(lambda m: f'<a href="{m.group(2)}" rel="nofollow noopener">{m.group(1)}</a>', html)
    html = _BOLD.sub(r"<strong>\1</strong>", html)
    html = _ITALIC.sub(r"<em>\1</em>", html)
    return re.sub("\x00(\\d+)\x00", lambda m: codes[int(m.group(1))], html)


def _cells(line: str) -> list[str]:
    line = line.strip().removeprefix("|").removesuffix("|")
    return [cell.strip() for cell in line.split("|")]


def render(text: str, *, heading_offset: int = 2) -> str:
    """Markdown text as safe HTML; ``#`` becomes ``<h{1 + heading_offset}>`` (at most ``h6``)."""
    lines = text.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            out.append("<p>" + " ".join(inline(line.strip()) for line in paragraph) + "</p>")
            paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            flush()
            block = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            out.append("<pre><code>" + escape("\n".join(block), quote=False) + "</code></pre>")
            i += 1
            continue
        if not line.strip():
            flush()
            i += 1
            continue
        heading = _HEADING.match(line)
        if heading:
            flush()
            level = min(len(heading.group(1)) + heading_offset, 6)
            out.append(f"<h{level}>{inline(heading.group(2).strip())}</h{level}>")
            i += 1
            continue
        if _RULE.match(line):
            flush()
            out.append("<hr>")
            i += 1
            continue
        if "|" in line and i + 1 < len(lines) and _TABLE_RULE.match(lines[i + 1]):
            flush()
            head = _cells(line)
            i += 2
            body = []
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                body.append(_cells(lines[i]))
                i += 1
            out.append(table_html(head, body, markdown=True))
            continue
        for pattern, tag in ((_BULLET, "ul"), (_NUMBERED, "ol")):
            if pattern.match(line):
                flush()
                items = []
                while i < len(lines) and (item := pattern.match(lines[i])):
                    items.append(f"<li>{inline(item.group(1))}</li>")
                    i += 1
                out.append(f"<{tag}>{''.join(items)}</{tag}>")
                break
        else:
            if line.lstrip().startswith(">"):
                flush()
                quoted = []
                while i < len(lines) and lines[i].lstrip().startswith(">"):
                    quoted.append(lines[i].lstrip()[1:].strip())
                    i += 1
                out.append("<blockquote>" + " ".join(inline(q) for q in quoted) + "</blockquote>")
                continue
            paragraph.append(line)
            i += 1
    flush()
    return "\n".join(out)


def _cell(value: Any, markdown: bool) -> str:
    if markdown:
        return inline(str(value))
    if value is None:
        return ""
    return escape(value if isinstance(value, str) else _json(value))


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, default=str)


def table_html(head: list[str], body: list[list[Any]], *, markdown: bool = False) -> str:
    """An HTML table (every cell escaped; Markdown inline markup when ``markdown``)."""
    header = "".join(f'<th scope="col">{_cell(h, markdown)}</th>' for h in head)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(c, markdown)}</td>" for c in row) + "</tr>" for row in body)
    return f'<table class="grid"><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>'


def table_artifact(rows: list[Any]) -> str:
    """A table artifact as HTML: rows of dicts (columns from their keys) or lists (first row the header)."""
    if not rows:
        return '<p class="muted">(empty table)</p>'
    if all(isinstance(row, dict) for row in rows):
        head: list[str] = []
        for row in rows:
            head.extend(key for key in row if key not in head)
        return table_html(head, [[row.get(key) for key in head] for row in rows])
    lists = [row if isinstance(row, list) else [row] for row in rows]
    return table_html([str(h) for h in lists[0]], lists[1:])
