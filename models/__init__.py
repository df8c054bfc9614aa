"""Model families, their interface and the model directory format; shipped model directories.

``lm`` (the interface every family answers), ``gpt``, ``lstm``, ``ngram``, ``families``
(the registry), ``checkpoint`` (model directory I/O) and ``export`` are imported by
training, serving and evaluation alike. ``default/`` (package data) is what the server
uses without --model.
"""

from __future__ import annotations

from pathlib import Path

from kaffee.errors import KaffeeError

DEFAULT_MODEL_NAME = "default"


def default_model_dir() -> Path:
    """The bundled default model directory; a clear error if it is not there."""
    path = Path(__file__).parent / DEFAULT_MODEL_NAME
    if not (path / "config.json").is_file():
        raise KaffeeError(f"the bundled default model is missing at {path}; pass --model DIR")
    return path
