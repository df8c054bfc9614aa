"""Which network for which budget: every family trained on the same data for the same minutes.

Issue 11's comparison, run through the same commands a user runs: ``kaffee train`` for
each family (n-gram, LSTM, GRU, GPT, BERT) on one corpus and tokenizer, for each training
budget in minutes (the n-gram only counts, once), then one ``kaffee eval`` of all of
them on the same held-out positions, which also reports each system's cost (params,
disk, load time, memory, CPU per prediction). Writes ``architectures.md`` (a table) and
``architectures.png`` (quality against training budget, and against CPU time per
prediction) in ``--out``. BERT answers as ``bert:DIR`` (mask slots at the cursor, seeing the
text after it; ``evaluation/bert_system.py``), the others through the completion engine
with its cache and project context off.

    python -P bench/architectures.py --corpus runs/corpus-full --eval-corpus runs/corpus-apps \\
        --tokenizer models/default/tokenizer.json --budgets 1,2 --max-docs 3000 --out runs/arch

The learning-rate schedule is cosine over ``--max-steps``; a run stopped by its minute
budget has not decayed it, equally for every neural family. ``-P`` keeps ``bench/`` off
``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

FAMILIES = {  # name -> kaffee train arguments
    "ngram": ["--family", "ngram"],
    "lstm": ["--family", "lstm"],
    "gru": ["--family", "lstm", "--set", "cell=gru"],
    "gpt": ["--family", "gpt"],
    "bert": ["--family", "bert"],
}
SPEC_KIND = {"ngram": "ngram", "lstm": "lstm", "gru": "lstm", "gpt": "gpt", "bert": "bert"}
ENGINE_OPTIONS = "cache=off,project=off,"  # the engine's extras off: the network alone is compared


def kaffee(*args: str) -> None:
    cmd = [sys.executable, "-m", "kaffee", *args]
    print("$ kaffee " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def train_all(args: argparse.Namespace) -> dict[str, Path]:
    """label -> model directory, for every family and budget."""
    out: dict[str, Path] = {}
    common = ["--corpus", str(args.corpus), "--tokenizer", str(args.tokenizer), "--preset", args.preset]
    common += ["--max-docs", str(args.max_docs), "--fim-rate", "0", *shlex.split(args.train_args)]
    for family in args.families.split(","):
        budgets = [0.0] if family == "ngram" else [float(b) for b in args.budgets.split(",")]
        for minutes in budgets:
            label = family if family == "ngram" else f"{family}-{minutes:g}min"
            model = args.out / "models" / label
            loop = (
                []
                if family == "ngram"
                else ["--max-minutes", f"{minutes:g}", "--max-steps", str(args.max_steps)]
            )
            if not (model / "config.json").is_file():
                kaffee("train", *FAMILIES[family], *common, *loop, "--out", str(model), "--force")
            out[label] = model
    return out


def evaluate(args: argparse.Namespace, models: dict[str, Path]) -> dict:
    systems = []
    for label, model in models.items():
        kind = SPEC_KIND[label.split("-")[0]]
        options = "" if kind == "bert" else ENGINE_OPTIONS  # bert:DIR does not use the engine
        systems += ["--system", f"{kind}:{model},{options}label={label}"]
    tasks = ["--task", "token", "--task", "line"]
    kaffee(
        "eval", "--corpus", str(args.eval_corpus), *systems, *tasks,
        "--limit", str(args.limit), "--seed", "0", "--no-progress", "--out", str(args.out / "eval"),
    )  # fmt: skip
    return json.loads((args.out / "eval" / "results.json").read_text())


def summarise(results: dict, args: argparse.Namespace) -> list[dict]:
    rows = {
        (r["system"], r["task"], r["metric"]): r["value"] for r in results["results"] if r["slice"] == "all"
    }
    cost = {s["system"]: s.get("cost", {}) for s in results["systems"]}
    out = []
    for system in cost:
        family, _, budget = system.partition("-")
        out.append(
            {
                "system": system,
                "family": family,
                "minutes": float(budget.removesuffix("min")) if budget else 0.0,
                "top1": rows.get((system, "token", "top1")),
                "mrr10": rows.get((system, "token", "mrr10")),
                "line_em": rows.get((system, "line", "em")),
                "edit_sim": rows.get((system, "line", "edit_sim")),
                "params_m": (cost[system].get("params") or 0) / 1e6,
                "cpu_ms_token": cost[system].get("cpu_ms", {}).get("token"),
                "cpu_ms_line": cost[system].get("cpu_ms", {}).get("line"),
            }
        )
    return out


def write_report(table: list[dict], args: argparse.Namespace) -> None:
    head = "| system | train min | params M | token top-1 % | MRR@10 % | line EM % | edit sim % | CPU ms/token | CPU ms/line |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v, d=1):
        return "–" if v is None else f"{v:.{d}f}"

    for r in table:
        lines.append(
            f"| {r['system']} | {f(r['minutes'])} | {f(r['params_m'], 2)} | {f(r['top1'])} | {f(r['mrr10'])} "
            f"| {f(r['line_em'])} | {f(r['edit_sim'])} | {f(r['cpu_ms_token'])} | {f(r['cpu_ms_line'])} |"
        )
    text = "\n".join(lines)
    (args.out / "architectures.md").write_text(text + "\n")
    print(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for family in dict.fromkeys(r["family"] for r in table):
        pts = sorted((r["minutes"], r["top1"], r["cpu_ms_token"]) for r in table if r["family"] == family)
        a.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=family)
        b.scatter([p[2] for p in pts], [p[1] for p in pts], label=family)
    a.set(
        xlabel="training budget (minutes, this CPU)",
        ylabel="token top-1 %",
        title="quality vs training budget",
    )
    b.set(
        xlabel="CPU ms per next-token prediction", ylabel="token top-1 %", title="quality vs prediction cost"
    )
    a.legend()
    b.legend()
    fig.tight_layout()
    fig.savefig(args.out / "architectures.png", dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True, help="training corpus (its train split)")
    p.add_argument("--eval-corpus", type=Path, required=True, help="held-out corpus (its test split)")
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--families", default="ngram,lstm,gru,gpt,bert")
    p.add_argument("--budgets", default="1,2", help="training minutes per neural run, comma-separated")
    p.add_argument("--preset", default="small")
    p.add_argument("--max-docs", type=int, default=3000, help="training documents (same for every family)")
    p.add_argument("--max-steps", type=int, default=2000, help="schedule length; the minutes stop earlier")
    p.add_argument(
        "--train-args", default="", help="more kaffee train arguments, the same for every family (one string)"
    )
    p.add_argument("--limit", type=int, default=150, help="positions per task")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    models = train_all(args)
    write_report(summarise(evaluate(args, models), args), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
