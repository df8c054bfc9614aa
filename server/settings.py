"""The server's settings: a typed dataclass with defaults, read from untrusted JSON.

They come from ``initializationOptions`` and ``workspace/didChangeConfiguration`` (flat,
or under a ``kaffee`` key). Every invalid value is reported and replaced by its default;
null asks for the default; unknown keys are reported and ignored. Nothing here raises.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class ServerSettings:
    model_path: str | None = None  # model directory; None: the --model flag, else the bundled model
    max_lines: int = 8  # longest block suggestion, in lines (1: single lines only)
    deadline_ms: int = 1000  # time budget of one request, queueing included
    workspace_context: bool = True  # n-gram cache over the workspace's Java files and open documents
    device: str = "cpu"  # where the model runs: cpu, cuda or auto
    enable: bool = True  # false: answer every request with nothing (the model stays loaded)
    stats: bool = True  # count shown/accepted suggestions into the local stats file (server/stats.py)
    debounce_ms: int = 50  # a request that comes while the model works on the previous one (same
    # document and kind) waits for it up to this long, dropped if superseded meanwhile; 0: off
    backend: str | None = None  # openai:URL: suggestions from that server (None: the --backend flag, if any)
    remote_model: str | None = None  # the "model" a backend request names (None: the server's first)
    api_key_env: str | None = None  # environment variable holding the backend's bearer token


# JSON name -> (field name, check returning an error message or None)
def _check_model_path(v: Any) -> str | None:
    return (
        None
        if v is None or (isinstance(v, str) and v.strip())
        else "must be a directory path (string) or null"
    )


def _check_max_lines(v: Any) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 200
    return None if ok else "must be an integer from 1 to 200"


def _check_deadline(v: Any) -> str | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and 10 <= v <= 600_000
    return None if ok else "must be a number of milliseconds from 10 to 600000"


def _check_debounce(v: Any) -> str | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 2000
    return None if ok else "must be a number of milliseconds from 0 (off) to 2000"


def _check_backend(v: Any) -> str | None:
    if v is None:
        return None
    from kaffee.errors import KaffeeError
    from kaffee.server.remote import parse_backend

    try:
        parse_backend(v if isinstance(v, str) else "")
    except KaffeeError as exc:
        return f"must be openai:URL or null ({exc})"
    return None


def _check_name(v: Any) -> str | None:
    return None if v is None or (isinstance(v, str) and v.strip()) else "must be a name (string) or null"


def _check_bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _check_device(v: Any) -> str | None:
    return None if v in DEVICES else f"must be one of {', '.join(DEVICES)}"


_FIELDS = {
    "modelPath": ("model_path", _check_model_path),
    "maxLines": ("max_lines", _check_max_lines),
    "deadlineMs": ("deadline_ms", _check_deadline),
    "workspaceContext": ("workspace_context", _check_bool),
    "device": ("device", _check_device),
    "enable": ("enable", _check_bool),
    "stats": ("stats", _check_bool),
    "debounceMs": ("debounce_ms", _check_debounce),
    "backend": ("backend", _check_backend),
    "remoteModel": ("remote_model", _check_name),
    "apiKeyEnv": ("api_key_env", _check_name),
}
assert {f for f, _ in _FIELDS.values()} == {f.name for f in fields(ServerSettings)}


def parse_settings(
    raw: Any, base: ServerSettings | None = None, defaults: ServerSettings | None = None
) -> tuple[ServerSettings, list[str]]:
    """Settings from client JSON over ``base``; also the problems found, for the user.

    A key set to null takes its value from ``defaults`` (the server's own, the command
    line's device included), so a client that clears a setting gets the default back
    rather than the value it set before. Keys left out keep ``base``'s value.
    """
    defaults = defaults or ServerSettings()
    base = base or defaults
    if raw is None:
        return base, []
    if isinstance(raw, dict) and isinstance(raw.get("kaffee"), dict):
        raw = raw["kaffee"]
    if not isinstance(raw, dict):
        return base, [f"settings must be a JSON object, got {type(raw).__name__}; using the defaults"]
    problems, values = [], {}
    for key, value in raw.items():
        if key not in _FIELDS:
            problems.append(f"unknown setting {key!r} ignored (known: {', '.join(_FIELDS)})")
            continue
        name, check = _FIELDS[key]
        if value is None:
            values[name] = getattr(defaults, name)
            continue
        error = check(value)
        if error:
            problems.append(f"setting {key}={value!r} {error}; using the default {getattr(defaults, name)!r}")
            values[name] = getattr(defaults, name)
        else:
            values[name] = int(value) if name in ("deadline_ms", "debounce_ms") else value
    return replace(base, **values), problems
