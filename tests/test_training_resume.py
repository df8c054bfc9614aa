"""Rerunning `kaffee train` / `kaffee finetune`: the same command continues its run, nothing else is lost,
and a kill at any step of a checkpoint swap leaves a run that the same command finishes bit-identically."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_model_dir
from java_samples import training_texts
from kaffee import atomic_dir
from kaffee.cli import main
from kaffee.training import run as run_mod

LOOP = [
    "--max-steps",
    "6",
    "--save-interval",
    "2",
    "--eval-interval",
    "6",
    "--block-size",
    "32",
    "--batch-size",
    "4",
]
LEFTOVER_KINDS = (".tmp-", ".old-", ".trash-")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_tokenizer) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    texts = training_texts(6)
    for name, rows in (("train", texts[:14]), ("valid", texts[14:])):
        lines = [
            json.dumps({"text": t, "project": "p", "path": f"src/F{i}.java"}) for i, t in enumerate(rows)
        ]
        (d / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines))
    tiny_tokenizer.save(d / "tokenizer.json")
    return d


def train_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--family", "gpt", "--preset", "nano", "--corpus", str(corpus / "train.jsonl"),
            "--tokenizer", str(corpus / "tokenizer.json"), "--out", str(out), *LOOP, *extra]  # fmt: skip


def kaffee(argv: list[str]) -> tuple[int, dict | None]:
    """Run a kaffee command in this process: its exit code and the JSON summary it printed."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    lines = [line for line in buf.getvalue().splitlines() if line.startswith("{")]
    return rc, json.loads(lines[-1]) if lines else None


class Crash(Exception):
    pass


@contextlib.contextmanager
def crash_at_step(monkeypatch: pytest.MonkeyPatch, step: int):
    """The next training run raises after optimizer step ``step`` (its checkpoints so far stay)."""
    real = run_mod.train

    def on_step(s: int, loss: float) -> None:
        if s == step:
            raise Crash

    monkeypatch.setattr(run_mod, "train", lambda *a, **k: real(*a, **k, on_step=on_step))
    with pytest.raises(Crash):
        yield
    monkeypatch.setattr(run_mod, "train", real)


def saved_step(out: Path) -> int:
    return json.loads((out / "trainer" / "state.json").read_text())["run"]["step"]


def weights(out: Path) -> tuple[bytes, bytes]:
    return (out / "model.safetensors").read_bytes(), (out / "trainer" / "optimizer.safetensors").read_bytes()


def leftovers(out: Path) -> list[str]:
    return [
        p.name
        for p in out.parent.iterdir()
        if p.name.startswith(f".{out.name}.") and any(k in p.name for k in LEFTOVER_KINDS)
    ]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "m"
    rc, summary = kaffee(train_args(corpus, out))
    assert rc == 0 and summary["steps_this_run"] == 6
    return out


# -- the same command continues its own run (issue 15, item 12) ---------------------------


def test_same_command_continues_after_a_crash(corpus, reference, tmp_path, monkeypatch, caplog):
    out = tmp_path / "m"
    with crash_at_step(monkeypatch, 5):
        kaffee(train_args(corpus, out))
    assert saved_step(out) == 4
    caplog.set_level(logging.INFO)
    rc, summary = kaffee(train_args(corpus, out))
    assert rc == 0 and summary["steps_this_run"] == 2 and summary["steps"] == 6
    assert "continuing it at step 4 of 6" in caplog.text
    assert weights(out) == weights(reference)


def test_finished_run_is_kept_unless_force(corpus, reference, tmp_path, capsys, caplog):
    out = tmp_path / "m"
    caplog.set_level(logging.INFO)
    rc, summary = kaffee(train_args(corpus, out, "--resume"))  # no checkpoint yet: a new run, not an error
    assert rc == 0 and summary["steps_this_run"] == 6 and "holds no checkpoint yet" in caplog.text
    before = weights(out)
    assert before == weights(reference)
    rc, _ = kaffee(train_args(corpus, out))
    assert rc == 1 and "finished run (step 6 of 6)" in capsys.readouterr().err
    assert weights(out) == before
    rc, summary = kaffee(train_args(corpus, out, "--resume"))  # nothing left to resume
    assert rc == 1 and "finished run" in capsys.readouterr().err
    rc, summary = kaffee(train_args(corpus, out, "--force"))
    assert rc == 0 and summary["steps_this_run"] == 6
    assert weights(out) == before  # started over: the same run again


def test_other_settings_need_resume_other_models_need_force(corpus, tmp_path, monkeypatch, capsys, caplog):
    out = tmp_path / "m"
    with crash_at_step(monkeypatch, 3):
        kaffee(train_args(corpus, out))
    assert saved_step(out) == 2
    capsys.readouterr()
    rc, _ = kaffee(train_args(corpus, out, "--lr", "0.002"))
    err = capsys.readouterr().err
    assert rc == 1 and "train.lr: 0.001 -> 0.002" in err and "--resume" in err and saved_step(out) == 2
    rc, _ = kaffee(train_args(corpus, out, "--set", "n_layer=1", "--resume"))
    err = capsys.readouterr().err
    assert rc == 1 and "another run" in err and "model.n_layer" in err and saved_step(out) == 2
    rc, _ = kaffee(train_args(corpus, out, "--resume", "--force"))
    assert rc == 1 and "contradict" in capsys.readouterr().err
    caplog.set_level(logging.INFO)
    rc, summary = kaffee(train_args(corpus, out, "--lr", "0.002", "--resume"))
    assert rc == 0 and summary["steps_this_run"] == 4
    assert "changed settings (train.lr: 0.001 -> 0.002)" in caplog.text


def test_changed_training_data_is_not_continued(corpus, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for f in ("train.jsonl", "valid.jsonl", "tokenizer.json"):
        (data / f).write_bytes((corpus / f).read_bytes())
    out = tmp_path / "m"
    with crash_at_step(monkeypatch, 3):
        kaffee(train_args(data, out))
    with (data / "train.jsonl").open("a") as f:  # the corpus rebuilt in place
        f.write(
            json.dumps({"text": "class Extra { int x; }", "project": "p", "path": "src/Extra.java"}) + "\n"
        )
    # no clean-up needed: the token cache is keyed by the corpus file's size and time too
    capsys.readouterr()
    rc, _ = kaffee(train_args(data, out))
    assert rc == 1 and "training data changed" in capsys.readouterr().err and saved_step(out) == 2


def test_what_is_not_a_training_run_is_not_replaced(corpus, tiny_tokenizer, tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    rc, _ = kaffee(train_args(corpus, other, "--force"))
    assert rc == 1 and "not a Kaffee model directory" in capsys.readouterr().err
    assert (other / "todo.txt").read_text() == "keep me"
    model = make_tiny_model_dir(tmp_path / "model", "gpt", tiny_tokenizer, train=False)  # no training state
    rc, _ = kaffee(train_args(corpus, model, "--resume"))
    assert rc == 1 and "not a resumable training run" in capsys.readouterr().err
    assert (model / "card.md").read_text().startswith("# tiny gpt")


def test_ngram_model_is_not_recounted_over(corpus, tmp_path, capsys):
    args = ["train", "--family", "ngram", "--preset", "nano", "--corpus", str(corpus / "train.jsonl"),
            "--tokenizer", str(corpus / "tokenizer.json"), "--out", str(tmp_path / "ng")]  # fmt: skip
    assert kaffee(args)[0] == 0
    rc, _ = kaffee(args)
    assert rc == 1 and "--force" in capsys.readouterr().err
    assert kaffee([*args, "--force"])[0] == 0


def test_finetune_same_command_continues(tiny_tokenizer, tmp_path, monkeypatch, java_samples, capsys):
    base = make_tiny_model_dir(tmp_path / "base", "gpt", tiny_tokenizer, train=False)
    project = tmp_path / "project"
    project.mkdir()
    for i in range(3):
        for name, text in java_samples.items():
            (project / f"{i}{name}").write_text(text.replace("Account", "Konto"))

    def args(out: Path) -> list[str]:
        return ["finetune", "--from", str(base), "--corpus", str(project), "--out", str(out),
                "--max-steps", "4", "--save-interval", "2", "--eval-interval", "4", "--batch-size", "2", "--block-size", "32"]  # fmt: skip

    assert kaffee(args(tmp_path / "ref"))[0] == 0
    with crash_at_step(monkeypatch, 3):
        kaffee(args(tmp_path / "ft"))
    assert saved_step(tmp_path / "ft") == 2
    rc, result = kaffee(args(tmp_path / "ft"))
    assert rc == 0 and result["steps_this_run"] == 2
    assert weights(tmp_path / "ft") == weights(tmp_path / "ref")
    rc, _ = kaffee(args(tmp_path / "ft"))
    assert rc == 1 and "finished run" in capsys.readouterr().err


# -- a kill at each step of a checkpoint swap (issue 15, item 13) -------------------------

# With LOOP, checkpoints are written at steps 2, 4 and 6. The first swap (no directory at --out yet)
# is one rename (event 1); the second is an exchange (2), the rename of the old directory to a trash
# name (3) and its deletion (4); without RENAME_EXCHANGE it is --out -> .old (2), tmp -> --out (3),
# .old -> trash (4) and the deletion (5). A kill before event k leaves:
KILLS = [
    # (swap, k, step saved at --out after the kill (None: no --out), step the rerun starts from)
    ("exchange", 1, None, 0),  # first checkpoint written, not yet renamed in
    ("exchange", 2, 2, 2),  # second checkpoint written, not yet swapped in
    ("exchange", 3, 4, 4),  # swapped: the old directory lies under the temporary name
    ("exchange", 4, 4, 4),  # the old directory renamed to trash, not yet deleted
    ("rename", 3, None, 2),  # between the two renames: --out missing, the old one under .old
    ("rename", 4, 4, 4),  # the new one in place, the old one still under .old
]


def _kill_before_event(out: Path, k: int, exchange: bool) -> None:
    """In this (forked) process, os._exit(9) just before the k-th rename/exchange/delete of a swap of ``out``."""
    count = [0]

    def event() -> None:
        count[0] += 1
        if count[0] == k:
            os._exit(9)

    def counted(fn):
        def wrapper(*a, **kw):
            event()
            return fn(*a, **kw)

        return wrapper

    def ours(*paths: str | Path) -> bool:
        return any(Path(p).name == out.name or Path(p).name.startswith(f".{out.name}.") for p in paths)

    real_rename = os.rename

    def rename(src, dst, *a, **kw):
        if ours(src, dst):  # not the token cache's own renames
            event()
        return real_rename(src, dst, *a, **kw)

    os.rename = rename  # also what Path.rename calls
    atomic_dir._rmtree = counted(atomic_dir._rmtree)
    atomic_dir._exchange = counted(atomic_dir._exchange) if exchange else (lambda a, b: False)


def _child(argv: list[str], k: int, exchange: bool) -> None:
    try:
        _kill_before_event(Path(argv[argv.index("--out") + 1]), k, exchange)
        with contextlib.redirect_stderr(io.StringIO()):
            kaffee(argv)
    finally:
        os._exit(0)  # not killed: the test sees 0 instead of 9


def kill_runs_main() -> None:
    """Entry point of the subprocess: ``[[argv, k, exchange], ...]`` on stdin, exit codes on stdout.

    One child is forked per case, from a process that has not trained anything yet: forking a
    process whose thread pools have run (like pytest's after a training) can deadlock.
    """
    import sys

    import torch._dynamo  # noqa: F401  (what the first training imports: once here, not in every child)
    from transformers import LlamaForCausalLM  # noqa: F401

    codes = []
    for argv, k, exchange in json.loads(sys.stdin.read()):
        pid = os.fork()
        if pid == 0:
            _child(argv, k, exchange)
        codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    print(json.dumps(codes))


@pytest.fixture(scope="module")
def killed(corpus, tmp_path_factory) -> dict[tuple[str, int], tuple[Path, int]]:
    """Each KILLS case run until its kill, in one subprocess: {(swap, k): (its --out, exit code)}."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("killed")
    outs = {(swap, k): root / f"{swap}-{k}" / "m" for swap, k, *_ in KILLS}
    cases = [[train_args(corpus, out), k, swap == "exchange"] for (swap, k), out in outs.items()]
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_training_resume as t; t.kill_runs_main()"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    codes = json.loads(r.stdout.strip().splitlines()[-1])
    return {case: (out, c) for (case, out), c in zip(outs.items(), codes, strict=True)}


@pytest.mark.parametrize("swap,k,at_out,resumed_from", KILLS)
def test_kill_at_each_swap_step(swap, k, at_out, resumed_from, corpus, reference, killed, caplog):
    out, code = killed[(swap, k)]
    assert code == 9, "the injected kill did not happen"
    if at_out is None:
        assert not out.exists()
    else:
        assert saved_step(out) == at_out  # complete: its state matches its weights (checked by the rerun)
    assert leftovers(out), "the kill should have left something to clean up"
    caplog.set_level(logging.INFO)
    rc, summary = kaffee(train_args(corpus, out))  # the same command again
    assert rc == 0 and summary["steps_this_run"] == 6 - resumed_from
    assert not leftovers(out)
    assert weights(out) == weights(reference)
    assert "left by a killed run" in caplog.text


def test_two_runs_sharing_a_data_cache_tokenise_once(corpus, tmp_path, monkeypatch):
    """--data-cache: a gpt and an lstm on the same data, read the same way, encode it once."""
    import kaffee.training.data as data_module

    calls: list[str] = []
    real = data_module.token_stream

    def counting(*args, **kwargs):
        calls.append(args[1])  # the split
        return real(*args, **kwargs)

    monkeypatch.setattr(data_module, "token_stream", counting)
    cache = tmp_path / "cache"
    rc, _ = kaffee(train_args(corpus, tmp_path / "gpt", "--data-cache", str(cache)))
    assert rc == 0 and sorted(calls) == ["train", "valid"]
    lstm = [
        a if a != "gpt" else "lstm" for a in train_args(corpus, tmp_path / "lstm", "--data-cache", str(cache))
    ]
    rc, _ = kaffee(lstm)
    assert rc == 0 and sorted(calls) == ["train", "valid"]  # nothing encoded again
    assert not (tmp_path / ".gpt.data-cache").exists() and not (tmp_path / ".lstm.data-cache").exists()
    rc, _ = kaffee(train_args(corpus, tmp_path / "nofim", "--data-cache", str(cache), "--fim-rate", "0"))
    assert rc == 0 and sorted(calls) == ["train", "train", "valid"]  # other data: its own entry
    # --tokenize-only fills the cache and writes no model; the run after it encodes nothing
    fresh = tmp_path / "fresh"
    rc, summary = kaffee(train_args(corpus, tmp_path / "t", "--data-cache", str(fresh), "--tokenize-only"))
    assert rc == 0 and summary["train_tokens"] > 0 and not (tmp_path / "t").exists()
    assert sorted(calls) == ["train", "train", "train", "valid", "valid"]
    rc, _ = kaffee(train_args(corpus, tmp_path / "t", "--data-cache", str(fresh)))
    assert rc == 0 and len(calls) == 5


def test_a_regenerated_valid_export_is_encoded_again(corpus, tmp_path, tiny_tokenizer):
    """The cache key of the valid split follows the valid file, not the train file it sits beside."""
    from kaffee.training.data import DataConfig, cached_token_stream

    data = tmp_path / "data"
    data.mkdir()
    for f in ("train.jsonl", "valid.jsonl"):
        (data / f).write_bytes((corpus / f).read_bytes())
    tok_path = corpus / "tokenizer.json"
    cfg = DataConfig(fim_rate=0.0)
    before = np.asarray(
        cached_token_stream(
            data / "train.jsonl", "valid", tiny_tokenizer, tok_path, cfg, False, tmp_path / "c"
        )
    )
    row = {"text": "class Other { long y; }", "project": "q", "path": "src/Other.java"}
    (data / "valid.jsonl").write_text(json.dumps(row) + "\n")
    after = np.asarray(
        cached_token_stream(
            data / "train.jsonl", "valid", tiny_tokenizer, tok_path, cfg, False, tmp_path / "c"
        )
    )
    assert not np.array_equal(before, after)
