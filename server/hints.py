"""Member hints: after ``receiver.``, the members of the receiver's workspace type.

A 29M-parameter model rarely copies a project's member name from its prompt, so the
engine mixes the names straight into its next-piece distribution. :func:`member_table`
finds the file's variables whose declared type is a workspace type (a regex over
declarations, nearest before the cursor first) and lists those types' non-private
members; :class:`MemberHints` turns that table into next-piece probabilities by
matching the text that ends the context.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from kaffee.server.outline import TypeOutline

# A variable declaration: a capitalised type (generic arguments and array brackets allowed),
# then a lower-case name followed by "=", ";", ",", ")" or ":" (fields, locals, parameters, for-each).
_VAR_DECL = re.compile(
    r"\b([A-Z][\w$]*)(?:\s*<[^;=(){}]{0,80}?>)?(?:\s*\[\s*\])*\s+([a-z_$][\w$]*)\s*(?=[=;,):])"
)


def member_table(
    before: str, lookup: Callable[[list[str]], list[tuple[str, TypeOutline]]], limit: int, after: str = ""
) -> dict[str, tuple[str, ...]]:
    """``{receiver: member names}`` for the variables declared in ``before`` (the text before the
    cursor; the nearest declaration wins) or ``after`` (fields declared further down) whose type is
    a workspace type, and for those types themselves; at most ``limit`` members in all."""
    typed: dict[str, str] = {}
    for text in (after, before):  # before the cursor overrides, and its last declaration sorts last
        for m in _VAR_DECL.finditer(text):
            typed.pop(m.group(2), None)
            typed[m.group(2)] = m.group(1)
    pairs = list(reversed(typed.items()))
    outlines = {t.name: t for _, t in lookup(list(dict.fromkeys(t for _, t in pairs)))}
    table: dict[str, tuple[str, ...]] = {}
    used = 0
    for receiver, type_name in pairs + [(t, t) for t in outlines]:
        t = outlines.get(type_name)
        if t is None or receiver in table or used >= limit:
            continue
        members = (t.methods + t.fields)[: limit - used]
        table[receiver] = members
        used += len(members)
    return table


_MEMBER_TAIL = re.compile(r"(?<![\w$.])([A-Za-z_$][\w$]*)\s*\.\s*([\w$]*)$")  # not "a.b." nor "pkg.x."


class MemberHints:
    """Next-piece hints after ``receiver.`` from the members of the receiver's workspace type.

    The model rarely copies a project's member name from the prompt by itself, so the
    names are mixed into its distribution: right after the dot each member's first piece
    shares ``weight * n / (n + 1)`` of the mass (``n`` members), inside a name the pieces
    that continue a member share ``inside`` (where a member is already complete, its
    share stays with the model). Matching is on text, so whitespace and the split into
    sub-word pieces do not matter.
    """

    def __init__(
        self,
        table: dict[str, tuple[str, ...]],
        encode: Callable[[str], list[int]],
        decode_tail: Callable[[list[int]], str],
    ):
        self.table = table
        self.encode = encode
        self.decode_tail = decode_tail  # ids -> text of their last characters
        self._first: dict[str, int] = {}

    def _first_piece(self, rest: str) -> int:
        tok = self._first.get(rest)
        if tok is None:
            tok = self._first[rest] = self.encode(rest)[0]
        return tok

    def pieces(
        self, context: list[int], weight: float, inside: float = 0.9
    ) -> tuple[dict[int, float], float]:
        """``({piece id: probability}, total mass)`` to mix in after ``context`` (empty: no hint)."""
        tail = self.decode_tail(context[-12:])
        m = _MEMBER_TAIL.search(tail)
        if m is None:
            return {}, 0.0
        line = tail[tail.rfind("\n") + 1 : m.start()]
        if "//" in line or line.count('"') % 2 or "/*" in line:  # in a comment or a string: no hints
            return {}, 0.0
        members = self.table.get(m.group(1))
        if not members:
            return {}, 0.0
        typed = m.group(2)
        longer = [x for x in members if x.startswith(typed) and len(x) > len(typed)]
        if not longer:
            return {}, 0.0
        complete = sum(1 for x in members if x == typed)
        if typed:
            mass = inside * len(longer) / (len(longer) + complete)
        else:
            mass = weight * len(longer) / (len(longer) + 1)
        out: dict[int, float] = {}
        for x in longer:
            tok = self._first_piece(x[len(typed) :])
            out[tok] = out.get(tok, 0.0) + mass / len(longer)
        return out, mass
