"""Declarations of a Java file without their bodies: what another file needs to call it.

``outline(text)`` parses with tree-sitter-java and returns one :class:`TypeOutline` per
top-level type (nested types are rendered inside their parent): the type's header, its
fields (initialisers dropped), constructor and method signatures, and enum constants.
The engine puts the outlines of workspace types named near the cursor into the prompt,
so the model can use the project's own member names. Parsing never raises: broken code
gives whatever tree-sitter recovered, and an empty list at worst.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_TYPE_DECLS = frozenset(
    (
        "class_declaration",
        "interface_declaration",
        "enum_declaration",
        "record_declaration",
        "annotation_type_declaration",
    )
)
_BODY_TYPES = frozenset(("class_body", "interface_body", "enum_body", "annotation_type_body"))
_FIELDS = frozenset(("field_declaration", "constant_declaration"))
_CALLABLES = frozenset(("method_declaration", "constructor_declaration", "compact_constructor_declaration"))
_SPACES = re.compile(r"\s+")
MAX_MEMBERS = 60  # members rendered per type (huge generated classes would flood the prompt)


@dataclass(frozen=True)
class TypeOutline:
    name: str  # simple name of the top-level type
    text: str  # Java-like declaration text without bodies, one member per line
    methods: tuple[str, ...] = ()  # names of its non-private methods (no constructors), in source order
    fields: tuple[str, ...] = ()  # names of its non-private fields and enum constants, in source order


@lru_cache(maxsize=1)
def java_parser():
    """The tree-sitter-java parser (built once; tree-sitter parsers are cheap to reuse)."""
    import tree_sitter_java
    from tree_sitter import Language, Parser

    return Parser(Language(tree_sitter_java.language()))


def _text(src: bytes, start: int, end: int) -> str:
    return _SPACES.sub(" ", src[start:end].decode("utf-8", errors="replace")).strip()


def _without_annotations(node, src: bytes) -> int:
    """Start byte of ``node`` after its annotations (modifiers keep their keywords)."""
    start = node.start_byte
    for child in node.children:
        if child.type == "modifiers":
            for m in child.children:
                if m.type in ("annotation", "marker_annotation", "line_comment", "block_comment"):
                    start = max(start, m.end_byte)
                else:
                    return max(start, m.start_byte)
            return max(start, child.end_byte)
        return child.start_byte
    return start


def _member_lines(body, src: bytes, indent: str, out: list[str], names: dict | None = None) -> None:
    """Render the members of ``body``; collect the top level's member names into ``names``."""
    constants: list[str] = []
    for child in body.children:
        if len(out) >= MAX_MEMBERS:
            out.append(f"{indent}// ...")
            return
        kind = child.type
        if kind == "enum_constant":
            name = child.child_by_field_name("name")
            if name is not None:
                constants.append(_text(src, name.start_byte, name.end_byte))
                if names is not None:
                    names["fields"].append(constants[-1])
        elif kind == "enum_body_declarations":
            if constants:
                out.append(f"{indent}{', '.join(constants)};")
                constants = []
            _member_lines(child, src, indent, out, names)
        elif kind in _FIELDS:
            parts = []
            start = _without_annotations(child, src)
            head_end = start
            for c in child.children:
                if c.type == "variable_declarator":
                    if not parts:
                        head_end = c.start_byte
                    name = c.child_by_field_name("name")
                    if name is not None:
                        parts.append(_text(src, name.start_byte, name.end_byte))
            if parts:
                head = _text(src, start, head_end)
                out.append(f"{indent}{head} {', '.join(parts)};")
                if names is not None and not head.startswith("private "):
                    names["fields"].extend(parts)
        elif kind in _CALLABLES:
            body_node = child.child_by_field_name("body")
            end = body_node.start_byte if body_node is not None else child.end_byte
            sig = _text(src, _without_annotations(child, src), end).rstrip(";").strip()
            out.append(f"{indent}{sig};")
            name = child.child_by_field_name("name")
            if (
                names is not None
                and kind == "method_declaration"
                and name is not None
                and not sig.startswith("private ")
            ):
                names["methods"].append(_text(src, name.start_byte, name.end_byte))
        elif kind in _TYPE_DECLS:
            _render_type(child, src, indent, out)
    if constants:
        out.append(f"{indent}{', '.join(constants)};")


def _render_type(node, src: bytes, indent: str, out: list[str], names: dict | None = None) -> None:
    body = node.child_by_field_name("body")
    if body is None:
        body = next((c for c in node.children if c.type in _BODY_TYPES), None)
    end = body.start_byte if body is not None else node.end_byte
    out.append(f"{indent}{_text(src, _without_annotations(node, src), end)} {{")
    if body is not None:
        _member_lines(body, src, indent + "    ", out, names)
    out.append(f"{indent}}}")


def outline(text: str) -> list[TypeOutline]:
    """The top-level types declared in ``text``, each rendered without method bodies."""
    src = text.encode("utf-8", errors="surrogatepass")
    try:
        tree = java_parser().parse(src)
    except Exception:  # noqa: BLE001 - a parser failure means "no declarations", never an error
        return []
    result = []
    for node in tree.root_node.children:
        if node.type not in _TYPE_DECLS:
            continue
        name = node.child_by_field_name("name")
        if name is None:
            continue
        lines: list[str] = []
        names: dict[str, list[str]] = {"methods": [], "fields": []}
        _render_type(node, src, "", lines, names)
        result.append(
            TypeOutline(
                _text(src, name.start_byte, name.end_byte),
                "\n".join(lines),
                tuple(dict.fromkeys(names["methods"])),
                tuple(dict.fromkeys(names["fields"])),
            )
        )
    return result
