"""Source text → a flat list of text blocks (headings, bullets, paragraphs) with source offsets.

Each format has its own splitter; all return :class:`Block` values whose ``text`` is the cleaned
reading text (markup removed, whitespace collapsed) and whose ``offsets`` map every character of
``text`` back to its position in the ORIGINAL source, so any piece of a block (a sentence, a
clause) can be given a :class:`~careplan_fhir.guidance.model.SourceSpan`.

- plain text and Markdown: careful line parsing (ATX and setext headings, question, colon and
  ALL-CAPS headings, ``•``/``-``/``*``/``1.``/``1)`` bullets, wrapped lines, inline emphasis and
  links in Markdown);
- HTML: Beautiful Soup (``html.parser``) for structure (h1–h6, li, p, div, br, …), then each
  piece of text is found again in the source so offsets point into the original markup.

Pure: no IO.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from bs4 import BeautifulSoup
from bs4.element import (
    Comment,
    Declaration,
    Doctype,
    NavigableString,
    ProcessingInstruction,
    Tag,
)

from .model import SourceSpan

BlockKind = Literal["heading", "bullet", "paragraph"]


@dataclass(frozen=True)
class Block:
    """One heading, bullet or paragraph.

    ``offsets[i]`` is the source offset of ``text[i]``; ``level`` is the heading level (1–6; 0
    when unknown) or the bullet's nesting depth; ``marker`` the bullet marker as written.
    """

    kind: BlockKind
    text: str
    offsets: tuple[int, ...]
    level: int = 0
    marker: str | None = None
    #: How the block was recognised as a heading ("atx", "html", "question", "colon", "caps", …).
    cue: str | None = None

    def span(self, source: str, start: int = 0, end: int | None = None) -> SourceSpan:
        """The source span of ``text[start:end]`` (the whole block by default)."""
        stop = len(self.text) if end is None else end
        return span_of(source, self.offsets, start, stop)


def span_of(source: str, offsets: Sequence[int], start: int, end: int) -> SourceSpan:
    """Source span covering ``text[start:end]`` of a text whose char offsets are ``offsets``."""
    if not offsets:
        return SourceSpan(start=0, end=0, line=1)
    start = max(0, min(start, len(offsets) - 1))
    end = max(start + 1, min(end, len(offsets)))
    first = offsets[start]
    last = max(first + 1, offsets[end - 1] + 1)
    return SourceSpan(start=first, end=last, line=source.count("\n", 0, first) + 1)


# --------------------------------------------------------------------------------------------
# Lines and heading cues shared by the text and Markdown splitters

_BULLET = re.compile(
    r"^(?P<indent>[ \t]*)(?P<marker>[•·▪◦‣●○■□►▸➢✓✔➤–—*+-]|\d{1,2}[.)]|\(\d{1,2}\)|[a-zA-Z][)])"
    r"[ \t]+(?=\S)"
)
_ATX = re.compile(r"^[ ]{0,3}(?P<hashes>#{1,6})[ \t]+(?P<body>.*?)[ \t]*#*[ \t]*$")
_SETEXT = re.compile(r"^[ ]{0,3}(?:=+|-{2,})[ \t]*$")
_FENCE = re.compile(r"^[ ]{0,3}(?:```|~~~)")
_RULE = re.compile(r"^[ ]{0,3}(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:_[ \t]*){3,})$")
_TERMINAL = re.compile(r"[.!;,]$")
_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")
_LEAD_IN_WORDS = re.compile(
    r"\b(?:if|when|include|includes|including|following|these|are|is|will|should|can|may|"
    r"must|have|has|need|you|your)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class _Line:
    start: int
    end: int
    text: str

    @property
    def blank(self) -> bool:
        return not self.text.strip()


def _lines(source: str) -> list[_Line]:
    lines: list[_Line] = []
    pos = 0
    for raw in source.splitlines(keepends=True):
        body = raw.rstrip("\r\n")
        lines.append(_Line(pos, pos + len(body), body))
        pos += len(raw)
    return lines


def heading_cue(text: str, *, alone: bool, strict: bool = False) -> str | None:
    """Why a one-line text reads as a heading, or None.

    Questions ("What is recovery like?"), lead-in labels ending in a colon, ALL-CAPS lines, and
    (when ``alone`` in its paragraph and not ``strict``) short lines without closing punctuation.
    """
    stripped = text.strip()
    words = _WORD.findall(stripped)
    if not words or len(stripped) > 120:
        return None
    if stripped.endswith("?") and len(words) <= 14:
        return "question"
    if stripped.endswith(":"):
        # "Bathing:" is a heading; "Call your doctor if you have:" is a lead-in to a list.
        if len(words) <= 5 and not _LEAD_IN_WORDS.search(stripped):
            return "colon"
        return None
    letters = [c for c in stripped if c.isalpha()]
    if (
        len(letters) >= 3
        and all(c.isupper() for c in letters)
        and len(words) <= 10
        and not _TERMINAL.search(stripped)
    ):
        return "caps"
    if strict or not alone:
        return None
    if len(words) <= 8 and not _TERMINAL.search(stripped) and stripped[0].isupper():
        return "line"
    return None


# --------------------------------------------------------------------------------------------
# Inline cleaning with offsets


def _collapse(pieces: Iterator[tuple[str, int]]) -> tuple[str, tuple[int, ...]]:
    """Join (char, offset) pairs, collapsing whitespace runs to one space and trimming."""
    chars: list[str] = []
    offsets: list[int] = []
    for char, offset in pieces:
        if char.isspace() or char == "\u00a0":
            if chars and chars[-1] != " ":
                chars.append(" ")
                offsets.append(offset)
            continue
        chars.append(char)
        offsets.append(offset)
    while chars and chars[-1] == " ":
        chars.pop()
        offsets.pop()
    return "".join(chars), tuple(offsets)


_MD_LINK = re.compile(r"!?\[(?P<label>[^\]]*)\]\([^)]*\)")
_MD_AUTOLINK = re.compile(r"<(?:https?://|mailto:)[^>]+>")
_MD_EMPHASIS = re.compile(r"(?<![\w\\])(\*{1,3}|_{1,3})(?=\S)|(?<=\S)(\*{1,3}|_{1,3})(?![\w])|`+")
_MD_ESCAPE = re.compile(r"\\(?=[\\`*_{}\[\]()#+\-.!>])")


def _markdown_inline(source: str, start: int, end: int) -> Iterator[tuple[str, int]]:
    """Characters of ``source[start:end]`` without Markdown inline syntax, with offsets."""
    segment = source[start:end]
    drop = [False] * len(segment)
    for match in _MD_LINK.finditer(segment):
        label_start = match.start("label")
        for i in range(match.start(), match.end()):
            if not label_start <= i < match.end("label"):
                drop[i] = True
    for pattern in (_MD_AUTOLINK,):
        for match in pattern.finditer(segment):
            drop[match.start()] = True
            drop[match.end() - 1] = True
    for pattern in (_MD_EMPHASIS, _MD_ESCAPE):
        for match in pattern.finditer(segment):
            for i in range(match.start(), match.end()):
                drop[i] = True
    for i, char in enumerate(segment):
        if not drop[i]:
            yield char, start + i


def _plain_inline(source: str, start: int, end: int) -> Iterator[tuple[str, int]]:
    for i in range(start, end):
        yield source[i], i


# --------------------------------------------------------------------------------------------
# Plain text and Markdown


@dataclass
class _Pending:
    kind: BlockKind
    ranges: list[tuple[int, int]]
    level: int = 0
    marker: str | None = None
    cue: str | None = None


def _emit(source: str, pending: _Pending, markdown: bool) -> Block | None:
    inline = _markdown_inline if markdown else _plain_inline

    def chars() -> Iterator[tuple[str, int]]:
        for index, (start, end) in enumerate(pending.ranges):
            if index:
                yield " ", start
            yield from inline(source, start, end)

    text, offsets = _collapse(chars())
    if not text:
        return None
    return Block(pending.kind, text, offsets, pending.level, pending.marker, pending.cue)


def split_line_blocks(source: str, *, markdown: bool = False) -> list[Block]:
    """Split plain text (or Markdown when ``markdown``) into blocks by careful line parsing."""
    lines = _lines(source)
    blocks: list[Block] = []
    pending: _Pending | None = None
    paragraph_lines: list[_Line] = []
    in_fence = False

    def flush_pending() -> None:
        nonlocal pending
        if pending is not None:
            block = _emit(source, pending, markdown)
            if block is not None:
                blocks.append(block)
        pending = None

    def flush_paragraph(next_is_bullet: bool) -> None:
        """A run of plain lines: headings where a line reads as one, the rest one paragraph."""
        nonlocal paragraph_lines, pending
        run = paragraph_lines
        paragraph_lines = []
        if not run:
            return
        body: list[tuple[int, int]] = []
        for index, line in enumerate(run):
            content_start = line.start + (len(line.text) - len(line.text.lstrip()))
            alone = len(run) == 1
            cue = heading_cue(line.text, alone=alone or (next_is_bullet and index == len(run) - 1))
            if cue == "line" and not alone and index < len(run) - 1:
                cue = None
            is_first_or_after_heading = index == 0 or body == []
            if cue is not None and cue != "colon" and not is_first_or_after_heading:
                cue = None
            if cue == "colon" and body:
                # "…include:" ending a paragraph is a lead-in, kept in its paragraph.
                cue = None
            if cue is not None:
                if body:
                    pending = _Pending("paragraph", body)
                    flush_pending()
                    body = []
                pending = _Pending("heading", [(content_start, line.end)], 0, None, cue)
                flush_pending()
            else:
                body.append((content_start, line.end))
        if body:
            pending = _Pending("paragraph", body)
            flush_pending()

    for index, line in enumerate(lines):
        if markdown and _FENCE.match(line.text):
            flush_paragraph(False)
            flush_pending()
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if line.blank:
            flush_paragraph(False)
            flush_pending()
            continue
        text = line.text
        if markdown:
            quote = re.match(r"^[ ]{0,3}(?:>[ ]?)+", text)
            if quote:
                line = _Line(line.start + quote.end(), line.end, text[quote.end() :])
                text = line.text
            atx = _ATX.match(text)
            if atx:
                flush_paragraph(False)
                flush_pending()
                body_start = line.start + atx.start("body")
                pending = _Pending(
                    "heading", [(body_start, line.start + atx.end("body"))], len(atx["hashes"])
                )
                pending.cue = "atx"
                flush_pending()
                continue
            if _SETEXT.match(text) and len(paragraph_lines) == 1:
                heading_line = paragraph_lines[0]
                paragraph_lines = []
                level = 1 if text.strip().startswith("=") else 2
                start = (
                    heading_line.start + len(heading_line.text) - len(heading_line.text.lstrip())
                )
                pending = _Pending("heading", [(start, heading_line.end)], level, None, "setext")
                flush_pending()
                continue
            if _RULE.match(text):
                flush_paragraph(False)
                flush_pending()
                continue
        elif _RULE.match(text) and not _BULLET.match(text):
            flush_paragraph(False)
            flush_pending()
            continue
        bullet = _BULLET.match(text)
        if bullet:
            flush_paragraph(True)
            flush_pending()
            indent = len(bullet["indent"].expandtabs(4))
            pending = _Pending(
                "bullet", [(line.start + bullet.end(), line.end)], indent // 2, bullet["marker"]
            )
            continue
        if pending is not None and pending.kind == "bullet":
            # A wrapped bullet line, unless it reads as a heading of its own.
            next_blank = index + 1 >= len(lines) or lines[index + 1].blank
            indented = text[:1].isspace()
            if not indented and heading_cue(text, alone=next_blank, strict=not next_blank):
                flush_pending()
                paragraph_lines.append(line)
                continue
            content_start = line.start + len(text) - len(text.lstrip())
            pending.ranges.append((content_start, line.end))
            continue
        if markdown:
            bold = re.fullmatch(r"[ ]{0,3}(\*\*|__)(?P<body>[^*_].*?)\1[ \t]*:?[ \t]*", text)
            if bold and not paragraph_lines:
                flush_pending()
                pending = _Pending(
                    "heading",
                    [(line.start + bold.start("body"), line.start + bold.end("body"))],
                    0,
                    None,
                    "bold",
                )
                flush_pending()
                continue
        paragraph_lines.append(line)
    flush_paragraph(False)
    flush_pending()
    return blocks


# --------------------------------------------------------------------------------------------
# HTML

_SKIPPED_TAGS = frozenset(
    {"script", "style", "noscript", "template", "head", "nav", "svg", "button", "form", "select"}
)
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "dialog",
        "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "h1", "h2", "h3", "h4",
        "h5", "h6", "header", "hgroup", "hr", "html", "li", "main", "menu", "ol", "p", "pre",
        "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
    }
)  # fmt: skip
_BREAK = "\x00"
_HEADING_TAGS = {f"h{n}": n for n in range(1, 7)}
_STRONG_TAGS = frozenset({"b", "strong"})
_ENTITY = r"(?:&[#A-Za-z0-9]+;)"
_TAG_OR_SPACE = r"(?:\s|&nbsp;|&#160;|<[^>]*>)*"


def _word_pattern(word: str) -> str:
    parts = []
    for char in word:
        if char.isalnum():
            parts.append(re.escape(char))
        else:
            parts.append(f"(?:{re.escape(char)}|{_ENTITY})")
    return "".join(parts)


class _Aligner:
    """Finds successive pieces of extracted text in the original HTML, moving forward."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.cursor = 0

    def offsets(self, text: str) -> tuple[int, ...]:
        """Source offset of each character of ``text`` (whitespace already collapsed)."""
        result: list[int] = []
        for match in re.finditer(r"\S+| ", text):
            piece = match.group(0)
            if piece == " ":
                result.append(result[-1] + 1 if result else self.cursor)
                continue
            found = self.source.find(piece, self.cursor)
            if found != -1 and found - self.cursor < 4000:
                result.extend(range(found, found + len(piece)))
                self.cursor = found + len(piece)
                continue
            result.extend(self._token_offsets(piece))
        return tuple(result)

    def _token_offsets(self, piece: str) -> list[int]:
        """Offsets of a piece split by markup (``here</em>.``) or written with entities."""
        result: list[int] = []
        for token in re.finditer(r"\w+|[^\w\s]", piece):
            located = re.compile(_word_pattern(token.group(0))).search(self.source, self.cursor)
            if located is None or located.start() - self.cursor > 4000:
                result.extend([self.cursor] * len(token.group(0)))
                continue
            width = located.end() - located.start()
            size = len(token.group(0))
            result.extend(located.start() + (i * width) // size for i in range(size))
            self.cursor = located.end()
        return result


@dataclass
class _HtmlPiece:
    kind: BlockKind
    text: str
    level: int
    cue: str | None
    depth: int


def _is_all_strong(tag: Tag) -> bool:
    """A paragraph whose whole text is bold: a heading in many exported leaflets."""
    text = tag.get_text(" ", strip=True)
    if not text:
        return False
    strong = " ".join(
        child.get_text(" ", strip=True) for child in tag.find_all(list(_STRONG_TAGS))
    ).strip()
    return strong == text


def _html_pieces(soup: BeautifulSoup) -> list[_HtmlPiece]:
    pieces: list[_HtmlPiece] = []
    buffer: list[str] = []

    def flush(kind: BlockKind, level: int, cue: str | None, depth: int) -> None:
        raw = "".join(buffer)
        buffer.clear()
        lines = [" ".join(line.split()) for line in raw.split(_BREAK)]
        lines = [line for line in lines if line]
        if not lines:
            return
        if kind == "paragraph" and len(lines) > 1:
            for line in lines:
                pieces.append(_HtmlPiece("paragraph", line, 0, "br", depth))
            return
        pieces.append(_HtmlPiece(kind, " ".join(lines), level, cue, depth))

    def describe(tag: Tag, depth: int) -> tuple[BlockKind, int, str | None]:
        name = tag.name.lower()
        if name in _HEADING_TAGS:
            return "heading", _HEADING_TAGS[name], "html"
        if name == "li":
            return "bullet", max(0, depth - 1), None
        if name in {"p", "dt"} and _is_all_strong(tag):
            return "heading", 0, "bold"
        return "paragraph", 0, None

    def walk(node: Tag, depth: int, own: tuple[BlockKind, int, str | None]) -> None:
        for child in node.children:
            if isinstance(child, Comment | Declaration | Doctype | ProcessingInstruction):
                continue
            if isinstance(child, NavigableString):
                # Source line breaks are spaces in HTML; only <br> breaks a line.
                buffer.append(re.sub(r"\s", " ", str(child)))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name.lower()
            if name in _SKIPPED_TAGS:
                continue
            if name == "br":
                buffer.append(_BREAK)
                continue
            if name not in _BLOCK_TAGS:
                walk(child, depth, own)
                continue
            flush(*own, depth)
            child_depth = depth + 1 if name in {"ul", "ol", "menu"} else depth
            child_own = describe(child, child_depth)
            walk(child, child_depth, child_own)
            flush(*child_own, child_depth)

    walk(soup, 0, ("paragraph", 0, None))
    flush("paragraph", 0, None, 0)
    return pieces


def split_html_blocks(source: str) -> list[Block]:
    """Split an HTML leaflet into blocks, with offsets into the original HTML source."""
    soup = BeautifulSoup(source, "html.parser")
    aligner = _Aligner(source)
    body = soup.body
    if body is not None:
        start = source.lower().find("<body")
        aligner.cursor = max(0, start)
    blocks: list[Block] = []
    for piece in _html_pieces(soup):
        text = piece.text
        marker: str | None = None
        kind = piece.kind
        cue = piece.cue
        if kind == "paragraph":
            bullet = _BULLET.match(text)
            if bullet:
                kind, marker = "bullet", bullet["marker"]
                text = text[bullet.end() :]
            else:
                found = heading_cue(text, alone=True, strict=True)
                if found is not None:
                    kind, cue = "heading", found
        offsets = aligner.offsets(text)
        blocks.append(Block(kind, text, offsets, piece.level, marker, cue))
    return blocks


def html_title(source: str) -> str | None:
    """The document's ``<title>``, if it has one."""
    soup = BeautifulSoup(source, "html.parser")
    if soup.title is None:
        return None
    title = " ".join(soup.title.get_text(" ").split())
    return title or None


def split_blocks(source: str, fmt: Literal["text", "markdown", "html"]) -> list[Block]:
    """Blocks of ``source`` read as ``fmt``."""
    if fmt == "html":
        return split_html_blocks(source)
    return split_line_blocks(source, markdown=fmt == "markdown")


__all__ = [
    "Block",
    "BlockKind",
    "heading_cue",
    "html_title",
    "span_of",
    "split_blocks",
    "split_html_blocks",
    "split_line_blocks",
]
