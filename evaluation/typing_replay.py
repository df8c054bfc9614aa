"""The one model of a user typing code with inline suggestions on.

Both the `typing` task (``task_typing.py``, systems asked in-process or over LSP) and
the latency benchmark (``bench/latency.py``, one ``didChange`` per keystroke to a real
server) replay typing with these rules:

- The user types line by line. Indentation is free (editors auto-indent); every other
  character of the line is a keystroke, and so is Enter.
- At every token start (and right after an accepted suggestion) the system is asked
  for a suggestion. The user accepts it with one key (Tab) when it is exactly what they
  were about to type on this line and saves at least one key (``MIN_GAIN``); they save
  ``gain - 1`` keystrokes. Otherwise they type on to the next token start.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kaffee.evaluation.metrics import accepted_length

MIN_GAIN = 2  # a suggestion is worth accepting (one Tab) only when it saves at least one key


@dataclass(frozen=True)
class ReplayLine:
    """One line the user types, as offsets into the original text."""

    indent: int  # offset of the line's first character (its indentation is inserted free)
    start: int  # offset of the first character the user types (after indentation)
    end: int  # offset one past the last character the user types (Enter follows)
    token_starts: tuple[int, ...]  # where the user stops to look at a suggestion


@dataclass
class TypingCounts:
    keystrokes: int = 0  # keys pressed without suggestions: characters after indentation, and Enter
    saved: int = 0  # keys not pressed thanks to accepted suggestions (net of the Tab)
    accepted: int = 0  # suggestions accepted
    accepted_chars: int = 0  # characters those suggestions inserted
    requests: int = 0  # suggestions asked for


def accept(suggestion: str, upcoming: str) -> int:
    """Characters a user takes from ``suggestion`` when about to type ``upcoming`` (0: rejected)."""
    gain = accepted_length(suggestion, upcoming)
    return gain if gain >= MIN_GAIN else 0


def lines_of(text: str, start: int, end: int, token_starts: Sequence[int]) -> list[ReplayLine]:
    """The lines of ``text[start:end]`` (``start`` at a line start) as a user types them.

    ``token_starts`` are the offsets of the Java tokens in the region (from the one
    lexer); a line without tokens (blank, a comment) is typed without asking.
    """
    starts = sorted(token_starts)
    out: list[ReplayLine] = []
    pos = start
    while pos < end:
        nl = text.find("\n", pos, end)
        line_end = nl if nl >= 0 else end
        body = text[pos:line_end].rstrip()
        first = pos + len(body) - len(body.lstrip())
        last = pos + len(body)
        lo, hi = bisect.bisect_left(starts, first), bisect.bisect_left(starts, last)
        out.append(ReplayLine(pos, first, last, tuple(starts[lo:hi])))
        pos = line_end + 1
    return out


def replay(
    text: str,
    lines: Sequence[ReplayLine],
    suggest: Callable[[int], str | None],
    type_text: Callable[[int, str], None] | None = None,
    max_requests: int | None = None,
) -> TypingCounts:
    """Type ``lines`` of ``text``, asking ``suggest(cursor)`` at every token start.

    ``suggest`` gets the offset up to which the user has typed (the text before it is
    ``text[:cursor]``; the segment's later lines do not exist yet) and returns the
    suggestion, or None when there is none. ``type_text(cursor, piece)``, if given, is
    told every insertion in order: the free indentation, each typed character, an
    accepted suggestion, Enter. With ``max_requests`` the replay stops asking after that
    many requests and the remaining text is typed.
    """
    counts = TypingCounts()

    def put(cursor: int, piece: str) -> None:
        if type_text is not None and piece:
            type_text(cursor, piece)

    for line in lines:
        put(line.indent, text[line.indent : line.start])
        counts.keystrokes += (line.end - line.start) + 1
        cursor = line.start
        ask = cursor in line.token_starts
        while cursor < line.end:
            if ask and (max_requests is None or counts.requests < max_requests):
                counts.requests += 1
                gain = accept(suggest(cursor) or "", text[cursor : line.end])
                if gain:
                    put(cursor, text[cursor : cursor + gain])
                    counts.saved += gain - 1
                    counts.accepted += 1
                    counts.accepted_chars += gain
                    cursor += gain
                    continue  # ask again right after an accepted suggestion
            i = bisect.bisect_right(line.token_starts, cursor)  # type on to the next token start
            nxt = line.token_starts[i] if i < len(line.token_starts) else line.end
            for j in range(cursor, nxt):
                put(j, text[j])
            cursor, ask = nxt, True
        nl = text.find("\n", line.end)
        put(line.end, text[line.end : nl + 1] if nl >= 0 else text[line.end :])  # Enter
    return counts
