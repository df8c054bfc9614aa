"""The harness end to end: reports, resumable cache, bad input, the CLI and `eval compare`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
from eval_fixtures import OracleSystem, RandomSystem, make_corpus
from java_samples import training_texts
from kaffee.errors import KaffeeError
from kaffee.evaluation import cli as eval_cli
from kaffee.evaluation.harness import CACHE_FILE, EvalConfig, run_evaluation
from kaffee.evaluation.report import compare, load_results
from kaffee.evaluation.system_base import Context, RequestFailed
from kaffee.evaluation.system_registry import parse_system_spec
from kaffee.evaluation.systems import MostFrequentTokenSystem

CXG_FIXTURE = Path(__file__).parent / "fixtures" / "codexglue_line_sample.jsonl"
ROW_FIELDS = {"system", "task", "metric", "slice", "value", "ci95", "n", "corpus", "split", "seed"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "c")


def eval_main(argv: list[str]) -> int:
    """`kaffee eval ...` through this stage's own parser (what kaffee.cli.main does for it)."""
    parser = argparse.ArgumentParser(prog="kaffee")
    eval_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KaffeeError as exc:
        print(f"kaffee eval: error: {exc}", file=sys.stderr)
        return 1


class Counting(OracleSystem):
    """The oracle, counting its requests and optionally failing or dying."""

    def __init__(self, label="counting", fail_every=0, die_after=None):
        super().__init__()
        self.label = label
        self.calls = 0
        self.fail_every = fail_every
        self.die_after = die_after

    def _tick(self):
        self.calls += 1
        if self.die_after is not None and self.calls > self.die_after:
            raise KeyboardInterrupt
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RequestFailed("time-out after 0.1 s")

    def next_tokens(self, ctx: Context, k: int = 10):
        self._tick()
        return super().next_tokens(ctx, k)

    def complete(self, ctx: Context):
        self._tick()
        return super().complete(ctx)


def test_end_to_end_two_systems_write_three_reports(corpus, tmp_path):
    out = tmp_path / "run"
    config = EvalConfig(
        out=str(out),
        corpus=str(corpus),
        tasks=["token", "line", "typing", "codexglue-line"],
        limit=12,
        seed=3,
        codexglue_file=str(CXG_FIXTURE),
        typing_lines=2,
        progress=False,
    )
    mft = MostFrequentTokenSystem(training_texts(2))
    results = run_evaluation(config, systems=[mft, OracleSystem()])
    for name in ("results.json", "results.md", "report.html", CACHE_FILE):
        assert (out / name).is_file(), name
    data = load_results(out / "results.json")
    assert data == json.loads(json.dumps(results))
    rows = data["results"]
    assert rows and all(ROW_FIELDS <= set(r) for r in rows)
    assert {r["system"] for r in rows} == {"mft", "oracle"}
    assert {r["task"] for r in rows} == {"token", "line", "typing", "codexglue-line"}
    assert all(r["seed"] == 3 for r in rows)
    token_top1 = {
        r["system"]: r for r in rows if r["task"] == "token" and r["metric"] == "top1" and r["slice"] == "all"
    }
    assert token_top1["oracle"]["value"] == 100.0 and token_top1["oracle"]["n"] == 12
    assert token_top1["mft"]["value"] < 100.0
    lo, hi = token_top1["mft"]["ci95"]
    assert lo <= token_top1["mft"]["value"] <= hi
    assert token_top1["mft"]["split"] == "test" and token_top1["mft"]["corpus"] == str(corpus)
    md = (out / "results.md").read_text()
    assert "| system |" in md and "top1 % ↑" in md and "edit_sim" in md and "keystrokes_saved" in md
    assert "oracle" in md and "[" in md  # intervals
    page = (out / "report.html").read_text()
    assert page.count("<img") == 3  # token kinds, edit sim by context length, latency
    assert "data:image/png;base64," in page
    assert "<code>" in page and "`" not in page  # the run line's `corpus` rendered, not leaked
    # a few predictions per system and task, with what the oracle got right
    shown = data["examples"]["oracle"]["line"]
    assert 0 < len(shown) <= 6 and all(e["hit"] and e["prediction"] == e["target"] for e in shown)
    assert not all(e["hit"] for e in data["examples"]["mft"]["token"])
    assert "Example predictions" in page and shown[0]["target"].replace("<", "&lt;") in page


def test_interrupted_run_resumes_from_the_cache(corpus, tmp_path):
    out = tmp_path / "run"
    config = EvalConfig(out=str(out), corpus=str(corpus), tasks=["token"], limit=20, progress=False)
    dying = Counting(die_after=7)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(config, systems=[dying])
    cached = (out / CACHE_FILE).read_text().splitlines()
    assert len(cached) == 7
    again = Counting()
    results = run_evaluation(config, systems=[again])
    assert again.calls == 20 - 7  # only what was missing
    top1 = next(r for r in results["results"] if r["metric"] == "top1" and r["slice"] == "all")
    assert top1["value"] == 100.0 and top1["n"] == 20
    third = Counting()
    run_evaluation(config, systems=[third])
    assert third.calls == 0
    # a torn last line (killed while writing) is ignored
    with (out / CACHE_FILE).open("a") as fh:
        fh.write('{"k": "counting|token|x", "o": {"ran')
    fourth = Counting()
    run_evaluation(config, systems=[fourth])
    assert fourth.calls == 0


def test_failed_requests_are_counted_and_the_run_goes_on(corpus, tmp_path):
    config = EvalConfig(
        out=str(tmp_path / "r"), corpus=str(corpus), tasks=["token", "line"], limit=10, progress=False
    )
    flaky = Counting(label="flaky", fail_every=3)
    results = run_evaluation(config, systems=[flaky, RandomSystem()])
    rows = {(r["system"], r["task"], r["metric"]): r for r in results["results"] if r["slice"] == "all"}
    assert rows[("flaky", "token", "top1")]["errors"] == 3
    assert rows[("flaky", "token", "top1")]["value"] == pytest.approx(70.0)  # failures score as misses
    assert rows[("flaky", "line", "em")]["errors"] > 0
    assert ("random", "line", "em") in rows
    assert any("flaky · token: 3 of 10 positions failed" in n for n in results["notes"])


def test_corpus_without_test_split(tmp_path):
    corpus = make_corpus(tmp_path / "c", test=False)
    config = EvalConfig(out=str(tmp_path / "r"), corpus=str(corpus), tasks=["token"], progress=False)
    with pytest.raises(KaffeeError, match="test"):
        run_evaluation(config, systems=[RandomSystem()])
    with pytest.raises(KaffeeError, match="does not exist"):
        run_evaluation(
            EvalConfig(
                out=str(tmp_path / "r"), corpus=str(tmp_path / "nope"), tasks=["token"], progress=False
            ),
            systems=[RandomSystem()],
        )


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty system spec"),
        ("gpt", "cannot parse"),
        ("transformer:models/x", "cannot parse"),
        ("gpt:", "names no model directory"),
        ("gpt:models/x,cache", "not key=value"),
        ("lsp:", "names no command"),
    ],
)
def test_system_specs_that_do_not_parse(spec, message):
    with pytest.raises(KaffeeError, match=message) as err:
        parse_system_spec(spec)
    assert "gpt" in str(err.value) or "lsp" in str(err.value)


def test_system_spec_variants():
    spec = parse_system_spec("gpt:models/default,cache=off,fim=off,ctx=512,label=small")
    assert (spec.kind, spec.target, spec.label) == ("gpt", "models/default", "small")
    assert spec.options == {"cache": "off", "fim": "off", "ctx": "512"}
    assert parse_system_spec("lsp:kaffee serve --model m").target == "kaffee serve --model m"
    assert parse_system_spec("mft").kind == "mft"


def test_cli_bad_system_and_bad_task_do_not_stop_the_rest(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    code = eval_main(
        [
            "eval", "--corpus", str(corpus), "--system", "mft", "--system", "gpt:" + str(tmp_path / "missing"),
            "--task", "token", "--task", "nope", "--limit", "8", "--out", str(out), "--no-progress",
        ]
    )  # fmt: skip
    assert code == 1
    printed = capsys.readouterr()
    assert "| mft |" in printed.out
    assert "does not exist" in printed.err and "unknown task 'nope'" in printed.err
    data = load_results(out)
    assert {r["system"] for r in data["results"]} == {"mft"}
    wheres = {p["where"] for p in data["problems"]}
    assert "task nope" in wheres and any(w.startswith("system gpt:") for w in wheres)
    assert "Problems" in (out / "results.md").read_text()


def test_cli_spec_that_does_not_parse_fails_before_any_work(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--corpus", str(corpus), "--system", "mft", "--system", "bogus:xyz", "--out", str(out)]
    assert eval_main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("cannot parse system spec 'bogus:xyz'") == 1 and "KIND:DIR" in err
    assert not out.exists()  # no empty results.json or report.html


def test_cli_requires_out_and_system(corpus):
    assert eval_main(["eval", "--corpus", str(corpus), "--system", "mft"]) == 1
    assert eval_main(["eval", "--corpus", str(corpus), "--out", "x"]) == 1


def test_compare_two_runs(corpus, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    base = dict(corpus=str(corpus), tasks=["token"], limit=30, progress=False)
    run_evaluation(EvalConfig(out=str(a), **base), systems=[RandomSystem()])
    oracle = OracleSystem()
    oracle.label = "random"  # same name, much better: compare must call it out
    run_evaluation(EvalConfig(out=str(b), **base), systems=[oracle])
    text = compare(load_results(a), load_results(b), "a", "b")
    assert "| token | top1 | random |" in text and "better" in text
    assert eval_main(["eval", "compare", str(a / "results.json"), str(b / "results.json")]) == 0
    printed = capsys.readouterr().out
    assert "Compare a → b" in printed and "+" in printed
    assert eval_main(["eval", "compare", str(a / "results.json"), str(tmp_path / "none.json")]) == 1


def test_cli_end_to_end_engine_and_baseline(corpus, tiny_ngram_dir, tmp_path, capsys):
    """Two tiny real systems from the command line: the n-gram model through the engine, and mft."""
    pytest.importorskip("kaffee.server.engine")
    out = tmp_path / "run"
    argv = [
        "eval", "--corpus", str(corpus), "--system", f"ngram:{tiny_ngram_dir},cache=off", "--system", "mft",
        "--task", "token,line,bpc", "--task", "typing", "--limit", "10", "--typing-lines", "2",
        "--seed", "1", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert eval_main(argv) == 0
    printed = capsys.readouterr().out
    assert "## token" in printed and "## bpc" in printed
    data = load_results(out)
    label = f"ngram:{tiny_ngram_dir},cache=off"
    rows = {(r["system"], r["task"], r["metric"]): r for r in data["results"] if r["slice"] == "all"}
    assert rows[(label, "token", "top1")]["value"] > rows[("mft", "token", "top1")]["value"]
    assert 0 < rows[(label, "bpc", "bpc")]["value"] < 8
    assert ("mft", "bpc", "bpc") not in rows  # mft is not a language model
    assert any("mft does not do bpc" in n for n in data["notes"])
    for name in ("results.md", "report.html"):
        assert (out / name).stat().st_size > 500
    cost = {s["system"]: s["cost"] for s in data["systems"]}
    assert cost[label]["disk_mb"] > 0 and cost[label]["load_s"] >= 0 and "memory_mb" in cost[label]
    assert set(cost[label]["cpu_ms"]) == {"token", "line", "bpc", "typing"}
    assert all(v >= 0 for v in cost[label]["cpu_ms"].values()) and cost[label]["cpu_ms"]["bpc"] > 0
    assert cost[label]["params"] > 0  # numbers stored in its safetensors (n-gram counts here)
    assert "## Cost" in printed and "CPU ms / token prediction" in (out / "results.md").read_text()
    # the same command again answers everything from the prediction cache, with the same numbers
    assert eval_main(argv) == 0
    again = load_results(out)
    strip = [
        {k: v for k, v in r.items() if k != "ci95"}
        for r in data["results"]
        if not r["metric"].startswith("latency")
    ]
    strip2 = [
        {k: v for k, v in r.items() if k != "ci95"}
        for r in again["results"]
        if not r["metric"].startswith("latency")
    ]
    assert strip == strip2


def test_model_that_does_not_load_is_reported_not_measured(corpus, tiny_ngram_dir, tmp_path):
    """A corrupt model would make the engine answer from its fallback: the harness refuses to measure that."""
    pytest.importorskip("kaffee.server.engine")
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_ngram_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    config = EvalConfig(
        out=str(tmp_path / "r"),
        corpus=str(corpus),
        systems=[f"ngram:{broken}", "mft"],
        tasks=["token"],
        limit=5,
        progress=False,
    )
    results = run_evaluation(config)
    assert {r["system"] for r in results["results"]} == {"mft"}
    assert any("fallback" in p["message"] for p in results["problems"])


def test_per_project_breakdown_in_results_and_reports(tmp_path):
    """Each held-out project's metrics per system: an oracle that knows only one project's
    files is perfect there and blank on the other; project names are escaped in the reports."""
    import datasets
    from eval_fixtures import TEST_FILES

    odd = "<i>odd|name</i>"  # a project name with HTML and a Markdown table separator
    files = {("bank", path): text for (p, path), text in TEST_FILES.items() if p == "bank"}
    files[(odd, "src/Greeter.java")] = TEST_FILES[("greet", "src/Greeter.java")]
    rows = [{"project": "t", "path": "T.java", "split": "train", "text": training_texts(1)[0]}]
    rows += [{"project": p, "path": path, "split": "test", "text": t} for (p, path), t in files.items()]
    corpus = tmp_path / "c"
    datasets.Dataset.from_dict(
        {
            "text": [r["text"] for r in rows],
            "project": [r["project"] for r in rows],
            "path": [r["path"] for r in rows],
            "sha256": [str(i) for i in range(len(rows))],
            "split": [r["split"] for r in rows],
        }
    ).save_to_disk(str(corpus))
    (corpus / "stats.json").write_text(json.dumps({"files_kept": len(rows)}))

    knows_bank = OracleSystem({k: v for k, v in files.items() if k[0] == "bank"})
    knows_bank.label = "bank-oracle"
    out = tmp_path / "run"
    config = EvalConfig(out=str(out), corpus=str(corpus), tasks=["token", "line"], limit=40, progress=False)
    data = run_evaluation(config, systems=[knows_bank, OracleSystem(files)])

    def row(system, task, metric, slice_name):
        (r,) = [
            r
            for r in data["results"]
            if (r["system"], r["task"], r["metric"], r["slice"]) == (system, task, metric, slice_name)
        ]
        return r

    for task, metric in (("token", "top1"), ("line", "em")):
        bank = row("bank-oracle", task, metric, "project=bank")
        other = row("bank-oracle", task, metric, f"project={odd}")
        assert bank["value"] == 100.0 and other["value"] == 0.0, (bank, other)
        assert row("oracle", task, metric, f"project={odd}")["value"] == 100.0
        pooled = row("bank-oracle", task, metric, "all")
        assert bank["n"] + other["n"] == pooled["n"] and bank["n"] > 0 and other["n"] > 0
        # the projects' values, weighted by their positions, give the pooled one
        weighted = (bank["value"] * bank["n"] + other["value"] * other["n"]) / pooled["n"]
        assert weighted == pytest.approx(pooled["value"])
    es = [row("bank-oracle", "line", "edit_sim", f"project={p}") for p in ("bank", odd)]
    assert es[0]["value"] == 100.0 and es[1]["value"] < 100.0

    md = (out / "results.md").read_text()
    assert "## token per project" in md and "## line per project" in md
    assert "<i>odd\\|name</i>" in md  # the separator escaped, the table intact
    page = (out / "report.html").read_text()
    assert "<h2>token per project</h2>" in page and "<h2>line per project</h2>" in page
    assert "&lt;i&gt;odd|name&lt;/i&gt;" in page and odd not in page
    assert "<td>bank</td><td>bank-oracle</td><td>100.0" in page
