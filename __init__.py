"""Kaffee: self-hosted Java code completion.

The repository root is this package (see pyproject.toml): ``kaffee.data`` builds
corpora, ``kaffee.training`` trains models, ``kaffee.server`` serves completions and
``kaffee.evaluation`` measures them.
"""

__version__ = "0.1.0"
