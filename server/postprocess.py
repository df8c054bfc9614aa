"""Stop rules applied while decoding, and the clean-up applied to a finished suggestion.

A stop rule sees the text generated after the cursor so far and says where to cut it
(and so stop decoding) as soon as that is known:
- single line: at the end of the line, or before a closing bracket that the text after
  the cursor already has;
- block (after ``{`` + newline): when the brackets balance (the block's ``}``) or a line
  comes back to the opening line's indentation, or after ``max_lines`` lines.
Afterwards: trim any overlap with the text after the cursor, and indent like the file.
"""

from __future__ import annotations

from dataclasses import dataclass

from kaffee.server.context import BlockContext, IndentStyle, indent_columns, leading_ws, render_indent
from kaffee.server.java_tokens import CLOSERS, OPENERS, lex


@dataclass
class Cut:
    at: int  # keep text[:at]
    reason: str  # why decoding stopped: newline, suffix, block_end, dedent, max_lines


class LineStop:
    """Single-line mode: stop at the line break or before a bracket the suffix already closes."""

    def __init__(self, line_suffix: str):
        ahead = line_suffix.lstrip()
        self.closer_ahead = ahead[0] if ahead and ahead[0] in CLOSERS else ""

    def feed(self, text: str) -> Cut | None:
        end = len(text)
        for ch in "\n\r":
            i = text.find(ch)
            if 0 <= i < end:
                end = i
        if self.closer_ahead:
            depth = 0
            for t in lex(text[:end]):
                if t.kind != "separator":
                    continue
                if t.text in OPENERS:
                    depth += 1
                elif t.text in CLOSERS:
                    if depth == 0:
                        if t.text == self.closer_ahead:
                            return Cut(t.start, "suffix")
                        break
                    depth -= 1
        if end < len(text):
            return Cut(end, "newline")
        return None


class BlockStop:
    """Block mode: the body of the block just opened, and its ``}`` unless the suffix has it."""

    def __init__(self, ctx: BlockContext, max_lines: int, style: IndentStyle):
        self.ctx = ctx
        self.max_lines = max(1, max_lines)
        self.width = style.width
        self.open_cols = indent_columns(ctx.open_indent, style.width)

    def feed(self, text: str) -> Cut | None:
        pre = self.ctx.line_prefix
        full = pre + text
        # 1. bracket balance: the "}" that closes the block opened on the line above
        depth = 1
        close_at = -1
        for t in lex(full):
            if t.kind == "separator" and t.text == "{":
                depth += 1
            elif t.kind == "separator" and t.text == "}":
                depth -= 1
                if depth == 0:
                    close_at = t.start
                    break
        # 2. line by line: dedent to the opening level, line budget
        line_start = 0
        for n, line in enumerate(full.split("\n")):
            line_end = line_start + len(line)
            if 0 <= close_at <= line_end:
                if self.ctx.closer_in_suffix:
                    return Cut(max(0, line_start - 1 - len(pre)), "block_end")
                return Cut(close_at + 1 - len(pre), "block_end")
            complete = line_end < len(full)
            if n > 0 and line.strip() and not line.strip().startswith("}"):
                if indent_columns(leading_ws(line), self.width) <= self.open_cols:
                    return Cut(max(0, line_start - 1 - len(pre)), "dedent")
            if complete and n + 1 >= self.max_lines:
                return Cut(max(0, line_end - len(pre)), "max_lines")
            line_start = line_end + 1
        return None


def _closes_own_bracket(kept: str, trimmed: str) -> bool:
    """Would removing ``trimmed`` remove a closer that ``kept`` needs for its own opener?"""
    stack = []
    for t in lex(kept):
        if t.kind == "separator" and t.text in OPENERS:
            stack.append(t.text)
        elif t.kind == "separator" and t.text in CLOSERS and stack and stack[-1] == CLOSERS[t.text]:
            stack.pop()
    for t in lex(trimmed):
        if t.kind == "separator" and t.text in CLOSERS and stack and stack[-1] == CLOSERS[t.text]:
            return True
    return False


def trim_suffix_overlap(text: str, line_suffix: str) -> str:
    """Drop the end of a one-line ``text`` that repeats what follows the cursor on its line.

    The overlap must be whole tokens of the suffix (``;``, ``);``, ``) {``), and never a
    bracket that closes one the suggestion itself opened.
    """
    target = line_suffix.strip()
    body = text.rstrip()
    if not target or not body:
        return text
    ends = sorted({t.end for t in lex(target)}, reverse=True)
    for k in ends:
        piece = target[:k]
        if body.endswith(piece):
            kept = body[: len(body) - len(piece)]
            if not _closes_own_bracket(kept, piece):
                return kept.rstrip() if kept.strip() else kept
    return text


def drop_repeated_lines(text: str, suffix: str) -> str:
    """Cut a multi-line suggestion before a line that repeats the next line after the cursor."""
    following = [ln.strip() for ln in suffix.split("\n")[1:] if ln.strip()]
    if not following or "\n" not in text:
        return text
    lines = text.split("\n")
    for i in range(1, len(lines)):
        if lines[i].strip() and lines[i].strip() == following[0]:
            return "\n".join(lines[:i])
    return text


def reindent(text: str, line_prefix: str, style: IndentStyle) -> str:
    """Re-render the leading whitespace of every suggested line in the file's style."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        body = line.lstrip(" \t")
        ws = line[: len(line) - len(body)]
        if i == 0:
            if line_prefix.strip() or not ws:
                out.append(line)
                continue
            full = render_indent(indent_columns(line_prefix + ws, style.width), style)
            out.append(full[len(line_prefix) :] + body if full.startswith(line_prefix) else line)
            continue
        if not body:
            out.append("")
            continue
        out.append(render_indent(indent_columns(ws, style.width), style) + body)
    return "\n".join(out)


def repeats_next_line(text: str, line_prefix: str, suffix: str) -> bool:
    """A whole-line suggestion on a blank line that is the very next line after the cursor."""
    if line_prefix.strip() or not text.strip():
        return False
    following = [ln.strip() for ln in suffix.split("\n")[1:] if ln.strip()]
    return bool(following) and following[0] == text.strip()


def finish_line(text: str, line_suffix: str, line_prefix: str, style: IndentStyle, suffix: str = "") -> str:
    """The cleaned single-line suggestion; empty when it would only repeat the next line."""
    if repeats_next_line(text, line_prefix, suffix):
        return ""
    text = trim_suffix_overlap(text, line_suffix)
    text = reindent(text, line_prefix, style)
    return text.rstrip() if text.strip() else ""


def finish_block(text: str, ctx: BlockContext, suffix: str, style: IndentStyle) -> str:
    text = drop_repeated_lines(text, suffix)
    text = reindent(text, ctx.line_prefix, style)
    lines = [ln.rstrip() for ln in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)
