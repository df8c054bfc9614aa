"""What a system under test is: the interface every task asks, and what it is asked with.

Every system answers the same two questions for a :class:`Context` (text before and
after the cursor): the ranked next tokens and the rest of the line. Model systems also
score text (bits per character). A request that fails (time-out, crashed server) raises
:class:`RequestFailed`, which the harness counts as an error and moves on.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaffee.errors import KaffeeError

WORKSPACE_ROOT = "/kaffee-eval"  # where held-out files pretend to live (URIs only; nothing is written)


class RequestFailed(Exception):
    """One request failed (time-out, server error); counted as an error, the run goes on."""


class SystemUnavailable(KaffeeError):
    """The system cannot answer at all (server does not start, model missing): skip it."""


@dataclass(frozen=True)
class Context:
    """What an editor knows at the cursor."""

    prefix: str  # text before the cursor
    suffix: str = ""  # text after the cursor ("" = hidden / prefix-only)
    project: str = "eval"  # project the file belongs to (workspace)
    path: str = "Main.java"  # path of the file inside its project

    @property
    def text(self) -> str:
        return self.prefix + self.suffix


@dataclass(frozen=True)
class SystemSpec:
    kind: str  # one of SYSTEM_KINDS
    target: str  # model directory, LSP command line, or "" for mft
    options: dict[str, str] = field(default_factory=dict)
    label: str = ""  # name in reports (defaults to the spec text)
    text: str = ""  # the spec as given


def file_uri(root: str | os.PathLike, project: str, path: str) -> str:
    return (Path(root) / project / path).resolve().as_uri()


class System(ABC):
    """Something that suggests code. Subclasses answer what they can; the rest raise NotImplementedError."""

    label: str = "?"
    #: task capabilities: "next_tokens", "complete", "bits"
    capabilities: frozenset[str] = frozenset({"next_tokens", "complete"})

    def fingerprint(self) -> str:
        """Changes when the system would answer differently (keys the prediction cache)."""
        return self.label

    def begin_file(self, project: str, path: str, workspace: dict[str, str]) -> None:  # noqa: B027
        """Called before the positions of one file; ``workspace`` = the other files of its project."""

    @abstractmethod
    def next_tokens(self, ctx: Context, k: int = 10) -> list[str]:
        """Ranked whole Java tokens that may come next (best first)."""

    @abstractmethod
    def complete(self, ctx: Context) -> str:
        """The suggested rest of the line at the cursor."""

    def bits(self, text: str) -> tuple[float, int]:
        """(bits, characters) the system needs to encode ``text``."""
        raise NotImplementedError

    def cost(self) -> dict[str, Any]:
        """What the system can tell about its size: ``disk_mb``, ``params`` (empty if unknown)."""
        return {}

    def process_id(self) -> int | None:
        """The process that does the work, for CPU and memory readings (None: this process)."""
        return None

    def health(self) -> str | None:
        """A warning when the answers are no longer what the spec promised (e.g. a fallback model)."""
        return None

    def close(self) -> None:  # noqa: B027
        pass


@dataclass
class SystemSettings:
    device: str = "cpu"  # torch device for model systems
    lsp_timeout: float = 10.0  # seconds per LSP request before it counts as an error
    lsp_start_timeout: float = 60.0  # seconds for an LSP server to answer `initialize`
    workspace: str | None = None  # directory used as the LSP workspace root
    lsp_init_options: dict | None = None  # initializationOptions sent to LSP servers
