"""Reports from a results dict: results.json, results.md (tables), report.html (tables + plots), compare.

Everything here reads only the results dict, so a report can be rebuilt (or two runs
compared) from results.json files alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from kaffee.errors import KaffeeError
from kaffee.evaluation.lexer import CATEGORIES, KINDS
from kaffee.evaluation.task_line import CONTEXT_BUCKETS
from kaffee.evaluation.tasks import TASKS

# -- tables ------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _digits(unit: str) -> int:
    return 3 if unit == "bits/char" else 1


def format_cell(row: dict[str, Any]) -> str:
    d = _digits(row.get("unit", "%"))
    lo, hi = (row.get("ci95") or [None, None])[:2]
    cell = _fmt(row.get("value"), d)
    if lo is not None and hi is not None:
        cell += f" [{_fmt(lo, d)}, {_fmt(hi, d)}]"
    return cell


def _headline(task: str) -> tuple[str, ...]:
    cls = TASKS.get(task)
    return cls.headline if cls else ()


def _header(metric: str, unit: str, better: bool) -> str:
    arrow = "↑" if better else "↓"
    unit = f" {unit}" if unit else ""
    return f"{metric}{unit} {arrow}"


def task_tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per task: systems x headline metrics, slice 'all'."""
    rows = results.get("results", [])
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    out = []
    for task in tasks:
        metrics = [m for m in _headline(task) if any(r["task"] == task and r["metric"] == m for r in rows)]
        metrics += [
            m for m in dict.fromkeys(r["metric"] for r in rows if r["task"] == task) if m not in metrics
        ]
        index = {(r["system"], r["metric"]): r for r in rows if r["task"] == task and r["slice"] == "all"}
        if not index:
            continue
        first = {m: next(r for r in rows if r["task"] == task and r["metric"] == m) for m in metrics}
        header = (
            ["system"]
            + [_header(m, first[m]["unit"], first[m]["higher_is_better"]) for m in metrics]
            + ["n", "errors"]
        )
        body = []
        for system in systems:
            cells = [index.get((system, m)) for m in metrics]
            if not any(cells):
                continue
            any_row = next(c for c in cells if c)
            n = any_row["n"]  # positions behind the first metric (latency rows count requests)
            body.append(
                [system]
                + [format_cell(c) if c else "n/a" for c in cells]
                + [str(n), str(any_row.get("errors") or 0)]
            )
        npos = results.get("positions", {}).get(task)
        title = f"{task}" + (f" ({npos} positions)" if npos else "")
        out.append((title, header, body))
    # token accuracy by kind: one more table, it is what people ask first
    kind_rows = [
        r for r in rows if r["task"] == "token" and r["metric"] == "top1" and r["slice"].startswith("kind=")
    ]
    if kind_rows:
        header = ["system"] + [f"top1 % · {k}" for k in KINDS]
        body = []
        for system in systems:
            idx = {r["slice"][5:]: r for r in kind_rows if r["system"] == system}
            if idx:
                body.append(
                    [system]
                    + [format_cell(idx[k]) + f" (n={idx[k]['n']})" if k in idx else "–" for k in KINDS]
                )
        out.append(("token top-1 by kind", header, body))
    # and the study's categories (top-1 and top-5, as Böning 2020 reported them)
    cat_rows = [r for r in rows if r["task"] == "token" and r["slice"].startswith("category=")]
    if cat_rows:
        cols = [(m, c) for c in CATEGORIES for m in ("top1", "top5")]
        header = ["system"] + [f"{m} % · {c}" for m, c in cols]
        body = []
        for system in systems:
            idx = {(r["metric"], r["slice"][9:]): r for r in cat_rows if r["system"] == system}
            if idx:
                body.append(
                    [system]
                    + [format_cell(idx[k]) + f" (n={idx[k]['n']})" if k in idx else "–" for k in cols]
                )
        out.append(("token accuracy by category", header, body))
    return out


def project_tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per task with ``project=`` slices: each held-out project's headline
    metrics per system (the harness writes them for the tasks with per-position scores)."""
    rows = [r for r in results.get("results", []) if r["slice"].startswith("project=")]
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        sel = [r for r in rows if r["task"] == task]
        present = set(r["metric"] for r in sel)
        metrics = [m for m in _headline(task) if m in present] + sorted(present - set(_headline(task)))
        first = {m: next(r for r in sel if r["metric"] == m) for m in metrics}
        index = {(r["slice"], r["system"], r["metric"]): r for r in sel}
        systems = list(dict.fromkeys(r["system"] for r in sel))
        header = (
            ["project", "system"]
            + [_header(m, first[m]["unit"], first[m]["higher_is_better"]) for m in metrics]
            + ["n"]
        )
        body = []
        for slice_name in sorted(dict.fromkeys(r["slice"] for r in sel)):
            for system in systems:
                cells = [index.get((slice_name, system, m)) for m in metrics]
                if not any(cells):
                    continue
                n = next(c for c in cells if c)["n"]
                body.append(
                    [slice_name.removeprefix("project="), system]
                    + [format_cell(c) if c else "n/a" for c in cells]
                    + [str(n)]
                )
        out.append((f"{task} per project", header, body))
    return out


def gain_tables(
    results: dict[str, Any], per_project: bool = True
) -> list[tuple[str, list[str], list[list[str]]]]:
    """Project-context gain tables: pooled per system (and, with ``per_project``, the repo view:
    every project's value without and with project context, and the gain)."""
    gains = results.get("project_gain") or []
    if not gains:
        return []
    tables = []
    pooled = [g for g in gains if g["slice"] == "all"]
    body = []
    for g in pooled:
        body.append(
            [
                g["system"],
                g["task"],
                g["metric"],
                _fmt(g["without_value"]),
                _fmt(g["with"]),
                format_cell({"value": g["gain"], "ci95": g["ci95"], "unit": ""}),
                str(g["n"]),
            ]
        )
    header = ["system", "task", "metric", "without", "with", "gain [95 % CI]", "n"]
    title = "Project context (retrieved code, member hints and the workspace cache): with minus without"
    tables.append((title, header, body))
    if per_project:
        rows = [
            g for g in gains if g["slice"] != "all" and g["metric"] in ("em", "edit_sim", "mrr10", "top1")
        ]
        rows.sort(key=lambda g: (g["system"], g["task"], g["metric"], -(g["gain"] or 0.0)))
        body = [
            [
                g["slice"].removeprefix("project="),
                g["system"],
                f"{g['task']} {g['metric']}",
                _fmt(g["without_value"]),
                _fmt(g["with"]),
                format_cell({"value": g["gain"], "ci95": g["ci95"], "unit": ""}),
                str(g["n"]),
            ]
            for g in rows
        ]
        header = ["project", "system", "metric", "without", "with", "gain [95 % CI]", "n"]
        tables.append(("Repo view: which projects gain from project context", header, body))
    return tables


def cost_table(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """System cost beside the quality tables: size, load time, memory, CPU per prediction."""
    systems = [s for s in results.get("systems", []) if s.get("cost")]
    if not systems:
        return []
    tasks = sorted({t for s in systems for t in s["cost"].get("cpu_ms", {})})
    header = ["system", "params (M)", "disk MB", "load s", "memory MB"] + [
        f"CPU ms / {t} prediction" for t in tasks
    ]
    body = []
    for s in systems:
        c = s["cost"]
        params = c.get("params")
        row = [
            s["system"],
            "" if params is None else f"{params / 1e6:.1f}",
            _fmt(c.get("disk_mb")),
            _fmt(c.get("load_s"), 2),
            _fmt(c.get("memory_mb"), 0),
        ]
        row += [_fmt(c.get("cpu_ms", {}).get(t)) for t in tasks]
        body.append(row)
    return [("Cost (memory: RSS added by loading in-process, or the LSP server's peak RSS)", header, body)]


def markdown_table(header: list[str], body: list[list[str]], text_columns: int = 1) -> str:
    """A Markdown table; the first ``text_columns`` are left-aligned, the numbers right-aligned."""
    esc = [[c.replace("|", "\\|") for c in row] for row in [header, *body]]
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def _run_line(results: dict[str, Any]) -> str:
    cfg = results.get("config", {})
    corpus = results.get("corpus") or {}
    parts = []
    if corpus:
        parts.append(
            f"corpus `{corpus.get('path')}` ({corpus.get('split')} split: {corpus.get('files')} files, "
            f"{corpus.get('projects')} projects)"
        )
    if cfg.get("codexglue_file"):
        parts.append(f"CodeXGLUE file `{cfg['codexglue_file']}`")
    parts.append(f"seed {results.get('seed')}")
    parts.append(f"limit {cfg.get('limit') or 'none'}")
    return ", ".join(parts)


def to_markdown(results: dict[str, Any]) -> str:
    out = [
        "# Kaffee evaluation",
        "",
        _run_line(results) + ".",
        "",
        "Cells: value [95 % bootstrap interval]; ↑ higher is better, ↓ lower.",
        "",
    ]
    for title, header, body in task_tables(results):
        out += [f"## {title}", "", markdown_table(header, body), ""]
    for title, header, body in project_tables(results):
        out += [f"## {title}", "", markdown_table(header, body, text_columns=2), ""]
    for title, header, body in gain_tables(results):
        out += [f"## {title}", "", markdown_table(header, body, text_columns=3), ""]
    for title, header, body in cost_table(results):
        out += [f"## {title}", "", markdown_table(header, body), ""]
    if results.get("problems"):
        out += (
            ["## Problems", ""] + [f"- **{p['where']}**: {p['message']}" for p in results["problems"]] + [""]
        )
    if results.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(out)


# -- plots --------------------------------------------------------------------------------------------------


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _err(rows: list[dict]) -> list[list[float]]:
    lo = [max(0.0, r["value"] - r["ci95"][0]) if r["ci95"][0] is not None else 0.0 for r in rows]
    hi = [max(0.0, r["ci95"][1] - r["value"]) if r["ci95"][1] is not None else 0.0 for r in rows]
    return [lo, hi]


def plot_token_kinds(results: dict[str, Any]) -> str | None:
    rows = [
        r
        for r in results["results"]
        if r["task"] == "token" and r["metric"] == "top1" and r["slice"].startswith("kind=")
    ]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(systems)
    for s_i, system in enumerate(systems):
        xs, vals, sel = [], [], []
        for k_i, kind in enumerate(KINDS):
            r = next((r for r in rows if r["system"] == system and r["slice"] == f"kind={kind}"), None)
            if r and r["value"] is not None:
                xs.append(k_i + s_i * width - 0.4 + width / 2)
                vals.append(r["value"])
                sel.append(r)
        ax.bar(xs, vals, width, yerr=_err(sel), capsize=2, label=system)
    ax.set_xticks(range(len(KINDS)), KINDS)
    ax.set_ylabel("top-1 accuracy %")
    ax.set_ylim(0, 100)
    ax.set_title("Token accuracy by kind (95 % bootstrap intervals)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def plot_context(results: dict[str, Any]) -> str | None:
    rows = [
        r
        for r in results["results"]
        if r["task"] == "line" and r["metric"] == "edit_sim" and r["slice"].startswith("context=")
    ]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for system in dict.fromkeys(r["system"] for r in rows):
        sel = sorted(
            (r for r in rows if r["system"] == system and r["value"] is not None),
            key=lambda r: CONTEXT_BUCKETS.index(r["slice"][8:]),
        )
        xs = [CONTEXT_BUCKETS.index(r["slice"][8:]) for r in sel]
        ax.errorbar(xs, [r["value"] for r in sel], yerr=_err(sel), marker="o", capsize=2, label=system)
    present = sorted({CONTEXT_BUCKETS.index(r["slice"][8:]) for r in rows})
    ax.set_xticks(present, [CONTEXT_BUCKETS[i] for i in present])
    ax.set_xlabel("characters before the cursor")
    ax.set_ylabel("edit similarity (0–100)")
    ax.set_ylim(0, 100)
    ax.set_title("Line completion: edit similarity by context length")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def plot_latency(results: dict[str, Any]) -> str | None:
    dists = results.get("distributions", {})
    series = {}
    for system, tasks in dists.items():
        for task in ("typing", "line", "codexglue-line", "token"):
            vals = tasks.get(task, {}).get("latency_ms")
            if vals:
                series[f"{system} · {task}"] = vals
                break
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4))
    allv = np.concatenate([np.asarray(v) for v in series.values()])
    lo, hi = max(0.01, float(allv.min())), max(0.02, float(allv.max()))
    bins = np.logspace(math.log10(lo), math.log10(hi * 1.01), 40)
    for name, vals in series.items():
        ax.hist(
            vals,
            bins=bins,
            histtype="step",
            linewidth=1.5,
            label=f"{name} (p50 {np.percentile(vals, 50):.1f} ms)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("request latency (ms, log scale)")
    ax.set_ylabel("requests")
    ax.set_title("Latency distribution (typing replay where run)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


# -- html ------------------------------------------------------------------------------------------------------


def _inline(text: str) -> str:
    """Escaped HTML with Markdown `code` spans as <code> (run lines, notes and problems use them)."""
    parts = html.escape(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: show it as typed
        return html.escape(text)
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _examples_html(results: dict[str, Any]) -> str:
    out = []
    for system, by_task in (results.get("examples") or {}).items():
        for task, rows in by_task.items():
            trs = "".join(
                "<tr>"
                + f"<td>{html.escape(r['where'])}</td>"
                + "".join(
                    f"<td class='code'>{html.escape(r[k])}</td>" for k in ("before", "target", "prediction")
                )
                + f"<td>{'✓' if r.get('hit') else '✗'}</td></tr>"
                for r in rows
            )
            out.append(
                f"<h3>{html.escape(system)} · {html.escape(task)}</h3><table class='examples'><thead><tr>"
                "<th>where</th><th>line before the cursor</th><th>target</th><th>prediction</th><th>hit</th>"
                f"</tr></thead><tbody>{trs}</tbody></table>"
            )
    return "<h2>Example predictions</h2>" + "".join(out) if out else ""


def _html_table(header: list[str], body: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def to_html(results: dict[str, Any]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Kaffee evaluation</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}",
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}",
        "th{background:#f3f3f3}img{max-width:100%}.small{color:#555;font-size:90%}",
        ".examples td{text-align:left}td.code{font-family:monospace;white-space:pre-wrap}",
        "</style></head><body><h1>Kaffee evaluation</h1>",
        f"<p>{_inline(_run_line(results))}. Created {html.escape(str(results.get('created')))}.</p>",
        "<p class='small'>Cells: value [95 % bootstrap interval]; ↑ higher is better, ↓ lower.</p>",
    ]
    tables = task_tables(results) + project_tables(results) + gain_tables(results) + cost_table(results)
    for title, header, body in tables:
        parts.append(f"<h2>{html.escape(title)}</h2>{_html_table(header, body)}")
    for title, fn in (
        ("Accuracy by token kind", plot_token_kinds),
        ("Edit similarity by context length", plot_context),
        ("Latency distribution", plot_latency),
    ):
        png = fn(results)
        if png:
            parts.append(f"<h2>{title}</h2><img alt='{title}' src='data:image/png;base64,{png}'>")
    if results.get("problems"):
        items = "".join(
            f"<li><b>{_inline(p['where'])}</b>: {_inline(p['message'])}</li>" for p in results["problems"]
        )
        parts.append(f"<h2>Problems</h2><ul>{items}</ul>")
    if results.get("notes"):
        parts.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{_inline(n)}</li>" for n in results["notes"]) + "</ul>"
        )
    parts.append(_examples_html(results))
    systems = results.get("systems", [])
    if systems:
        body = [
            [s.get("system", ""), s.get("spec", ""), s.get("fingerprint", ""), s.get("status", "")]
            for s in systems
        ]
        parts.append("<h2>Systems</h2>" + _html_table(["system", "spec", "fingerprint", "status"], body))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(results: dict[str, Any], out: Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "results.md").write_text(to_markdown(results), encoding="utf-8")
    (out / "report.html").write_text(to_html(results), encoding="utf-8")


# -- compare ----------------------------------------------------------------------------------------------------


def load_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise KaffeeError(f"no results file at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KaffeeError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or "results" not in data:
        raise KaffeeError(f"{path} is not a `kaffee eval` results file")
    return data


def compare(a: dict[str, Any], b: dict[str, Any], a_name: str = "A", b_name: str = "B") -> str:
    """Markdown: each headline number of A beside B, the change, and whether the intervals overlap."""
    rows_a = [r for r in a["results"] if r["slice"] == "all"]
    rows_b = [r for r in b["results"] if r["slice"] == "all"]
    sys_a = list(dict.fromkeys(r["system"] for r in rows_a))
    sys_b = list(dict.fromkeys(r["system"] for r in rows_b))
    common = [s for s in sys_a if s in sys_b]
    out = [f"# Compare {a_name} → {b_name}", ""]
    if common:
        pairs = [(s, s) for s in common]
    else:
        pairs = list(zip(sys_a, sys_b, strict=False))
        if pairs:
            out += ["No system appears in both runs; systems are paired in run order.", ""]
    for key in ("seed", "corpus"):
        if a.get(key) != b.get(key):
            what = "test split" if key == "corpus" else key
            out += [
                f"Note: the runs differ in {what} ({_short(a.get(key))} vs {_short(b.get(key))}); numbers are not on the same positions.",
                "",
            ]
    pa, pb = a.get("positions") or {}, b.get("positions") or {}
    differ = {t: (pa[t], pb[t]) for t in pa if t in pb and pa[t] != pb[t]}
    if differ:
        sizes = ", ".join(f"{t}: {x} vs {y}" for t, (x, y) in differ.items())
        out += [f"Note: sample sizes differ ({sizes}).", ""]
    header = ["task", "metric", "system", a_name, b_name, "change", ""]
    body = []
    index_b = {(r["system"], r["task"], r["metric"]): r for r in rows_b}
    for sa, sb in pairs:
        for ra in (r for r in rows_a if r["system"] == sa):
            rb = index_b.get((sb, ra["task"], ra["metric"]))
            if rb is None:
                continue
            va, vb = ra["value"], rb["value"]
            delta = None if va is None or vb is None else vb - va
            verdict = ""
            if delta is not None and None not in ra["ci95"] and None not in rb["ci95"]:
                apart = ra["ci95"][1] < rb["ci95"][0] or rb["ci95"][1] < ra["ci95"][0]
                if apart:
                    better = (delta > 0) == bool(ra.get("higher_is_better", True))
                    verdict = "better" if better else "worse"
                else:
                    verdict = "within noise"
            name = sa if sa == sb else f"{sa} → {sb}"
            d = _digits(ra.get("unit", "%"))
            body.append(
                [
                    ra["task"],
                    ra["metric"],
                    name,
                    format_cell(ra),
                    format_cell(rb),
                    ("+" if (delta or 0) >= 0 else "") + _fmt(delta, d),
                    verdict,
                ]
            )
    if not body:
        out.append("The two runs share no (system, task, metric) to compare.")
    else:
        out.append(markdown_table(header, body, text_columns=3))
        out += ["", "'better'/'worse': the 95 % intervals do not overlap; 'within noise': they do."]
    only_a = [s for s in sys_a if s not in sys_b and common]
    only_b = [s for s in sys_b if s not in sys_a and common]
    if only_a:
        out.append(f"\nOnly in {a_name}: {', '.join(only_a)}")
    if only_b:
        out.append(f"\nOnly in {b_name}: {', '.join(only_b)}")
    return "\n".join(out) + "\n"


def _short(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("fingerprint") or v.get("path"))
    return str(v)
