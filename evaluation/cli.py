"""`kaffee eval`: compare suggestion quality across systems; `kaffee eval compare A.json B.json`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from kaffee.errors import KaffeeError
from kaffee.evaluation.system_registry import SPEC_HELP, parse_system_spec
from kaffee.evaluation.tasks import DEFAULT_TASKS, available

log = logging.getLogger(__name__)

EPILOG = f"""\
systems: {SPEC_HELP}.
  examples: --system gpt:models/default --system gpt:models/default,cache=off,ctx=512
            --system ngram:runs/ng --system mft --system 'lsp:kaffee serve --model models/default'

tasks (default: {" ".join(DEFAULT_TASKS)}):
{available()}

outputs in --out: results.json, results.md, report.html, predictions.jsonl (resume cache:
run the same command again to continue an interrupted run).

compare two runs:  kaffee eval compare A/results.json B/results.json
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate systems on held-out code (token, line, bpc, typing, codexglue-line)",
        description="Run systems on the same held-out positions of a corpus's test split and report "
        "top-k accuracy, exact match / edit similarity, bits per character and typing savings.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--corpus", help="corpus directory (from `kaffee corpus build`); its test split is evaluated"
    )
    p.add_argument(
        "--system",
        dest="systems",
        action="append",
        default=[],
        metavar="SPEC",
        help="system under test (repeatable)",
    )
    p.add_argument(
        "--task",
        dest="tasks",
        action="append",
        default=[],
        metavar="NAME",
        help=f"task (repeatable; default: {' '.join(DEFAULT_TASKS)})",
    )
    p.add_argument(
        "--limit", type=int, default=None, metavar="N", help="positions per task (a quick run); default all"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for sampling positions and bootstrap (default 0)"
    )
    p.add_argument("--out", metavar="DIR", help="output directory for results.json, results.md, report.html")
    p.add_argument("--split", default="test", help="held-out split to evaluate (default test)")
    p.add_argument("--device", default="cpu", help="torch device for model systems (default cpu)")
    p.add_argument(
        "--lsp-timeout", type=float, default=10.0, metavar="S", help="seconds per LSP request (default 10)"
    )
    p.add_argument(
        "--lsp-start-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds for an LSP server to initialize",
    )
    p.add_argument(
        "--lsp-init-options",
        metavar="JSON",
        help='initializationOptions for lsp: systems, e.g. \'{"deadlineMs": 60000, "workspaceContext": false}\'',
    )
    p.add_argument(
        "--codexglue-file",
        metavar="JSONL",
        help="CodeXGLUE javaCorpus line-completion file for codexglue-line",
    )
    p.add_argument(
        "--typing-lines",
        type=int,
        default=5,
        metavar="N",
        help="code lines per typing-replay segment (default 5)",
    )
    p.add_argument(
        "--project-compare",
        action="store_true",
        help="also run every model system without project context (no retrieved code, no workspace cache) "
        "on the same positions and report the paired gain, pooled and per project",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_command)

    sub = p.add_subparsers(dest="eval_command", metavar="{compare}")
    c = sub.add_parser("compare", help="show what changed between two results.json files")
    c.add_argument("a", metavar="A.json", help="results.json of the first run (or its directory)")
    c.add_argument("b", metavar="B.json", help="results.json of the second run (or its directory)")
    c.add_argument(
        "--out", dest="compare_out", metavar="FILE", help="also write the comparison (Markdown) here"
    )
    c.set_defaults(func=compare_command)


def run_command(args: argparse.Namespace) -> int:
    from kaffee.evaluation.harness import EvalConfig, run_evaluation
    from kaffee.evaluation.report import cost_table, gain_tables, task_tables

    if not args.out:
        raise KaffeeError("--out DIR is required (where results.json, results.md and report.html go)")
    if not args.systems:
        raise KaffeeError(f"give at least one --system; {SPEC_HELP}")
    for text in args.systems:  # a typo is an error before any work, not an empty report
        parse_system_spec(text)
    tasks = [t for arg in args.tasks for t in arg.split(",") if t.strip()] or list(DEFAULT_TASKS)
    if args.codexglue_file and not args.tasks:
        tasks.append("codexglue-line")
    if not args.corpus and any(t != "codexglue-line" for t in tasks):
        raise KaffeeError("--corpus DIR is required for tasks other than codexglue-line")
    init_options = None
    if args.lsp_init_options:
        try:
            init_options = json.loads(args.lsp_init_options)
        except json.JSONDecodeError as exc:
            raise KaffeeError(f"--lsp-init-options is not valid JSON: {exc}") from exc
    config = EvalConfig(
        out=args.out,
        systems=list(args.systems),
        corpus=args.corpus,
        tasks=tasks,
        limit=args.limit,
        seed=args.seed,
        split=args.split,
        device=args.device,
        lsp_timeout=args.lsp_timeout,
        lsp_start_timeout=args.lsp_start_timeout,
        lsp_init_options=init_options,
        codexglue_file=args.codexglue_file,
        typing_lines=args.typing_lines,
        project_compare=args.project_compare,
        progress=not args.no_progress,
    )
    results = run_evaluation(config)
    out = Path(args.out)
    from kaffee.evaluation.report import markdown_table

    for title, header, body in (
        task_tables(results) + gain_tables(results, per_project=False) + cost_table(results)
    ):
        print(f"\n## {title}\n\n{markdown_table(header, body)}")
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}, {out / 'report.html'}")
    problems = results.get("problems", [])
    for p in problems:
        print(f"problem: {p['where']}: {p['message']}", file=sys.stderr)
    return 1 if problems else 0


def compare_command(args: argparse.Namespace) -> int:
    from kaffee.evaluation.report import compare, load_results

    text = compare(
        load_results(args.a), load_results(args.b), a_name=run_name(args.a, "A"), b_name=run_name(args.b, "B")
    )
    print(text)
    if args.compare_out:
        Path(args.compare_out).write_text(text, encoding="utf-8")
    return 0


def run_name(path: str, fallback: str) -> str:
    """A short name for a run: its directory for .../results.json, else the file's stem."""
    p = Path(path)
    if p.is_dir():
        return p.name or fallback
    if p.name == "results.json":
        return p.parent.name or fallback
    return p.stem or fallback
