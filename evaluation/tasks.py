"""The task registry: names on the command line -> task classes (lm-evaluation-harness style)."""

from __future__ import annotations

from kaffee.errors import KaffeeError
from kaffee.evaluation.task_base import Task
from kaffee.evaluation.task_bpc import BpcTask
from kaffee.evaluation.task_codexglue import CodeXGlueLineTask
from kaffee.evaluation.task_line import LineTask
from kaffee.evaluation.task_token import TokenTask
from kaffee.evaluation.task_typing import TypingTask

TASKS: dict[str, type[Task]] = {
    t.name: t for t in (TokenTask, LineTask, CodeXGlueLineTask, BpcTask, TypingTask)
}
DEFAULT_TASKS: tuple[str, ...] = ("token", "line", "bpc", "typing")  # codexglue-line needs a file


def available() -> str:
    return "\n".join(f"  {name:15} {cls.summary}" for name, cls in TASKS.items())


def get_task(name: str, **options) -> Task:
    """The task called ``name``; an unknown name lists what is available (and the closest match)."""
    cls = TASKS.get(name.strip().lower())
    if cls is None:
        import difflib

        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KaffeeError(f"unknown task {name!r}{hint}; available tasks:\n{available()}")
    return cls(**options)
