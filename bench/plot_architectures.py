"""Tables and plots of an equal-budget comparison (``bench/architectures.py``), from its files alone.

Reads each RUN directory that ``bench/architectures.py --out RUN`` wrote: ``eval/results.json``
(quality and cost per system), ``eval/predictions.jsonl`` (which positions were scored) and
``models/<label>/config.json`` (steps, tokens and validation loss each model reached in its
budget). Several RUN directories are merged only when they scored the very same positions
(the same position ids for every task, same corpus fingerprint, seed and split); otherwise
it stops. Writes, in ``--img-dir``:

- ``arch_budget.png``: token top-1 and line edit similarity against the training budget, a
  learning curve per family (95 % bootstrap intervals as error bars; the n-gram is one point
  at the minutes its counting took);
- ``arch_cost.png``: the same two metrics against CPU milliseconds per prediction;

and prints Markdown tables (quality with intervals, token top-1 by category, training
reached, cost), also written to ``--table`` when given.

    python -P bench/plot_architectures.py runs/arch-all --img-dir docs/img --table runs/arch-all/tables.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CATEGORIES = [  # token-task slices, as the study reported them
    ("kind=identifier", "identifier"),
    ("category=method call", "method call"),
    ("category=type", "type"),
    ("kind=keyword", "keyword"),
    ("kind=operator/punctuation", "punctuation"),
]


def position_ids(run: Path) -> dict[str, set[str]]:
    """task -> the position ids any system of this run was scored on."""
    ids: dict[str, set[str]] = {}
    with open(run / "eval" / "predictions.jsonl", encoding="utf-8") as f:
        for line in f:
            _fingerprint, task, pid = json.loads(line)["k"].rsplit("|", 2)
            ids.setdefault(task, set()).add(pid)
    return ids


def load_runs(runs: list[Path]) -> list[dict]:
    """One row per system over all runs; refuses runs whose positions differ."""
    rows: list[dict] = []
    first_ids = first_key = None
    for run in runs:
        results = json.loads((run / "eval" / "results.json").read_text())
        key = (results["corpus"]["fingerprint"], results["corpus"]["split"], results["seed"])
        ids = position_ids(run)
        if first_ids is None:
            first_ids, first_key = ids, key
        elif ids != first_ids or key != first_key:
            raise SystemExit(f"{run}: not the same positions as {runs[0]}; these runs cannot be merged")
        values = {(r["system"], r["task"], r["metric"], r["slice"]): r for r in results["results"]}
        for s in results["systems"]:
            name = s["system"]
            family, _, budget = name.partition("-")
            meta = json.loads((run / "models" / name / "config.json").read_text())
            training = meta.get("training", {})

            def v(task, metric, slice_="all", name=name, values=values):
                return values.get((name, task, metric, slice_))

            cost = s.get("cost", {})
            rows.append(
                {
                    "system": name,
                    "run": str(run),
                    "family": family,
                    "minutes": float(budget.removesuffix("min")) if budget else 0.0,
                    "train_seconds": training.get("seconds"),  # the n-gram's counting time
                    "steps": training.get("step"),
                    "train_tokens": training.get("tokens"),
                    "val_loss": training.get(
                        "val_loss", (training.get("history") or [{}])[-1].get("val_loss")
                    ),
                    "top1": v("token", "top1"),
                    "top5": v("token", "top5"),
                    "mrr10": v("token", "mrr10"),
                    "line_em": v("line", "em"),
                    "edit_sim": v("line", "edit_sim"),
                    "categories": {label: v("token", "top1", sl) for sl, label in CATEGORIES},
                    "params_m": (cost.get("params") or 0) / 1e6,
                    "disk_mb": cost.get("disk_mb"),
                    "load_s": cost.get("load_s"),
                    "memory_mb": cost.get("memory_mb"),
                    "cpu_ms_token": cost.get("cpu_ms", {}).get("token"),
                    "cpu_ms_line": cost.get("cpu_ms", {}).get("line"),
                }
            )
    return rows


def _num(x, d=1) -> str:
    return "–" if x is None else f"{x:.{d}f}"


def _ci(r: dict | None) -> str:
    if r is None:
        return "–"
    lo, hi = r["ci95"]
    return f"{r['value']:.1f} [{lo:.1f}, {hi:.1f}]"


def _val(r: dict | None) -> float | None:
    return None if r is None else r["value"]


def tables(rows: list[dict]) -> str:
    out = [
        "| system | token top-1 % | token top-5 % | MRR@10 % | line EM % | line edit sim % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['system']} | {_ci(r['top1'])} | {_num(_val(r['top5']))} | {_num(_val(r['mrr10']))} "
            f"| {_ci(r['line_em'])} | {_ci(r['edit_sim'])} |"
        )
    n = {
        label: next((r["categories"][label]["n"] for r in rows if r["categories"][label]), 0)
        for _, label in CATEGORIES
    }
    out += [
        "",
        "| system | " + " | ".join(f"top-1 % {label} (n={n[label]})" for _, label in CATEGORIES) + " |",
    ]
    out.append("|---|" + "---:|" * len(CATEGORIES))
    for r in rows:
        out.append(
            f"| {r['system']} | " + " | ".join(_num(_val(r["categories"][lb])) for _, lb in CATEGORIES) + " |"
        )
    out += [
        "",
        "| system | budget min | steps | tokens seen (k) | val loss (nats) | params M | disk MB | load s | memory MB | CPU ms/token | CPU ms/line |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        budget = (
            f"({_num((r['train_seconds'] or 0) / 60)} counting)"
            if r["family"] == "ngram"
            else _num(r["minutes"], 0)
        )
        tokens = None if r["train_tokens"] is None else r["train_tokens"] / 1e3
        out.append(
            f"| {r['system']} | {budget} | {r['steps'] if r['steps'] is not None else '–'} | {_num(tokens, 0)} "
            f"| {_num(r['val_loss'], 2)} | {_num(r['params_m'], 2)} | {_num(r['disk_mb'])} | {_num(r['load_s'], 2)} "
            f"| {_num(r['memory_mb'], 0)} | {_num(r['cpu_ms_token'])} | {_num(r['cpu_ms_line'])} |"
        )
    return "\n".join(out) + "\n"


def plots(rows: list[dict], img_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    families = list(dict.fromkeys(r["family"] for r in rows))
    colour = {f: f"C{i}" for i, f in enumerate(families)}
    metrics = [("top1", "token top-1 %"), ("edit_sim", "line edit similarity %")]

    def err(rs, metric):
        lo = [r[metric]["value"] - r[metric]["ci95"][0] for r in rs]
        hi = [r[metric]["ci95"][1] - r[metric]["value"] for r in rs]
        return [lo, hi]

    written = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (metric, label) in zip(axes, metrics, strict=True):
        for f in families:
            rs = sorted((r for r in rows if r["family"] == f and r[metric]), key=lambda r: r["minutes"])
            if not rs:
                continue
            if f == "ngram":  # counted once over the whole corpus: one point at its counting time
                xs = [(r["train_seconds"] or 0) / 60 for r in rs]
                ax.errorbar(xs, [r[metric]["value"] for r in rs], yerr=err(rs, metric), fmt="s",
                            color=colour[f], capsize=3, label="ngram (counting time)")  # fmt: skip
                continue
            xs = [r["minutes"] for r in rs]
            ax.errorbar(xs, [r[metric]["value"] for r in rs], yerr=err(rs, metric), fmt="o-",
                        color=colour[f], capsize=3, label=f)  # fmt: skip
        ax.set(xlabel="training budget (wall-clock minutes, 2 busy CPU cores)", ylabel=label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    written.append(_finish(fig, axes, "quality against training budget (same corpus, tokenizer and held-out positions)",
                           img_dir / "arch_budget.png"))  # fmt: skip

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (metric, label), cost in zip(axes, metrics, ["cpu_ms_token", "cpu_ms_line"], strict=True):
        for f in families:
            rs = [r for r in rows if r["family"] == f and r[metric] and r[cost] is not None]
            ax.scatter([r[cost] for r in rs], [r[metric]["value"] for r in rs], color=colour[f], label=f)
            for r in rs:  # the budget beside each point; the colour names the family
                text = f"{r['minutes']:g}m" if r["family"] != "ngram" else ""
                ax.annotate(text, (r[cost], r[metric]["value"]), fontsize=7, color=colour[f],
                            xytext=(4, 2 if r["minutes"] <= 1 else -8), textcoords="offset points")  # fmt: skip
        task = "next-token" if cost == "cpu_ms_token" else "line"
        ax.set(xlabel=f"CPU ms per {task} prediction", ylabel=label)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    written.append(_finish(fig, axes, "quality against prediction cost (up and left is better; 1m/3m: training minutes)",
                           img_dir / "arch_cost.png"))  # fmt: skip
    return written


def _finish(fig, axes, title: str, path: Path) -> Path:
    """Legend, title and layout of a two-panel figure, saved to ``path``."""
    import matplotlib.pyplot as plt

    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="bench/architectures.py --out directories")
    p.add_argument("--img-dir", type=Path, default=None, help="write arch_budget.png and arch_cost.png here")
    p.add_argument("--table", type=Path, default=None, help="also write the Markdown tables here")
    p.add_argument("--json", type=Path, default=None, help="also write the merged rows as JSON here")
    args = p.parse_args(argv)
    rows = load_runs(args.runs)
    text = tables(rows)
    sys.stdout.write(text)
    if args.table:
        args.table.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.img_dir:
        for path in plots(rows, args.img_dir):
            print(f"wrote {path} ({path.stat().st_size // 1024} KB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
