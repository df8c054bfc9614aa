"""The ``kaffee`` command line: one subcommand per stage of the flow (DESIGN.md).

Each stage owns its arguments in ``<stage>/cli.py`` exposing ``register(subparsers)``;
this file only wires them together, so stages stay independent.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from kaffee.errors import KaffeeError

# Module of each stage's CLI; each module defines register(subparsers).
STAGE_CLIS: tuple[str, ...] = (
    "kaffee.data.cli",  # corpus, tokenizer
    "kaffee.training.cli",  # train, finetune
    "kaffee.server.cli",  # serve, complete
    "kaffee.evaluation.cli",  # eval
    "kaffee.models.cli",  # export
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaffee",
        description="Kaffee: Java code completion. Build a corpus, train a model, evaluate it, serve it over LSP.",
    )
    parser.add_argument("--version", action="version", version="kaffee 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in STAGE_CLIS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # a stage that is not part of this build
            # one stage's missing dependency must not take the other commands down
            logging.getLogger(__name__).debug("%s unavailable: %s", module_name, exc)
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=str(getattr(args, "log_level", None) or "INFO").upper(),
            stream=sys.stderr,
            format="%(levelname)s %(name)s: %(message)s",
        )
    try:
        return int(args.func(args) or 0)
    except KaffeeError as exc:
        print(f"kaffee {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kaffee {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `kaffee corpus stats DIR | head`
        sys.stderr.close()
        return 0
