"""``KEY=VALUE`` strings to :class:`EngineOptions`: the one parser behind every command line.

Used by ``kaffee serve/complete --engine-option``, by ``kaffee eval`` system specs
(``gpt:DIR,cache=off,project.form=comments``) and by the latency benchmark. Keys are
EngineOptions fields, a few short aliases, or ``SECTION.FIELD`` for the nested configs
(``cache.max_weight=0.5``, ``project.budget_tokens=256``). Values take the type of the
field's default; ``none`` clears a field whose default is None. An unknown key or a
value of the wrong type raises :class:`KaffeeError` listing what is valid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from kaffee.errors import KaffeeError

ALIASES = {
    "cache": "workspace_cache",
    "ctx": "context_tokens",
    "project": "project_context",
}
TRUE = frozenset(("1", "true", "on", "yes"))
FALSE = frozenset(("0", "false", "off", "no"))


def coerce(value: str, default: Any, what: str) -> Any:
    """``value`` converted to the type of ``default`` (``what`` names it in the error)."""
    raw = value.strip()
    low = raw.lower()
    try:
        if isinstance(default, bool):
            if low in TRUE:
                return True
            if low in FALSE:
                return False
            raise ValueError("expected on/off, true/false, yes/no or 1/0")
        if default is None or isinstance(default, float):
            if default is None and low in ("none", "null", ""):
                return None
            return float(raw)
        if isinstance(default, int):
            return int(raw)
        return raw
    except ValueError as exc:
        kind = (
            "on/off"
            if isinstance(default, bool)
            else type(default).__name__
            if default is not None
            else "number"
        )
        raise KaffeeError(f"{what}: {raw!r} is not a valid {kind} ({exc})") from exc


def _pairs(items: Mapping[str, str] | Iterable[str], where: str) -> list[tuple[str, str]]:
    if isinstance(items, Mapping):
        return [(str(k), str(v)) for k, v in items.items()]
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise KaffeeError(f"{where}: {item!r} is not KEY=VALUE")
        out.append((key, value))
    return out


def option_keys(cls: type | None = None) -> list[str]:
    """Every key the parser accepts, for help and error messages."""
    if cls is None:
        from kaffee.server.engine import EngineOptions

        cls = EngineOptions
    keys = set(ALIASES)
    for f in dataclasses.fields(cls):
        default = _default(cls, f)
        if dataclasses.is_dataclass(default):
            keys |= {f"{f.name}.{g.name}" for g in dataclasses.fields(default)}
        else:
            keys.add(f.name)
    return sorted(keys)


def _default(cls: type, f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def parse_engine_options(
    items: Mapping[str, str] | Iterable[str], where: str = "--engine-option", **base: Any
):
    """EngineOptions from ``items`` over keyword defaults ``base`` (e.g. ``max_lines=4``)."""
    from kaffee.server.engine import EngineOptions

    fields = {f.name: f for f in dataclasses.fields(EngineOptions)}
    values: dict[str, Any] = dict(base)
    nested: dict[str, dict[str, Any]] = {}
    for key, value in _pairs(items, where):
        key = key.strip().replace("-", "_")
        name, _, sub = ALIASES.get(key, key).partition(".")
        f = fields.get(name)
        default = _default(EngineOptions, f) if f is not None else None
        if (
            f is None
            or (sub and not dataclasses.is_dataclass(default))
            or (not sub and dataclasses.is_dataclass(default))
        ):
            raise KaffeeError(
                f"{where}: unknown option {key!r}; known: {', '.join(option_keys(EngineOptions))}"
            )
        if sub:
            sub_fields = {g.name for g in dataclasses.fields(default)}
            if sub not in sub_fields:
                raise KaffeeError(
                    f"{where}: unknown option {key!r}; known: {', '.join(option_keys(EngineOptions))}"
                )
            nested.setdefault(name, {})[sub] = coerce(value, getattr(default, sub), f"{where}: {key}")
        else:
            values[name] = coerce(value, default, f"{where}: {key}")
    for name, sub_values in nested.items():
        values[name] = dataclasses.replace(
            values.get(name) or _default(EngineOptions, fields[name]), **sub_values
        )
    return EngineOptions(**values)
