"""Repository-level training text and line-level FIM: the layout training writes is the one serving reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kaffee.data.layout import REPO_LAYOUT, fim_suffix_ids, path_header
from kaffee.errors import KaffeeError
from kaffee.server.context import build_prompt
from kaffee.server.engine import CompletionEngine, EngineOptions
from kaffee.server.project import ProjectConfig
from kaffee.training.data import DataConfig, doc_ids, line_fim_ids, token_stream
from kaffee.training.repo_order import dependencies, dependency_order

MONEY = "package bank.util;\n\npublic final class Money {\n    long cents;\n}\n"
ACCOUNT = (
    "package bank;\n\nimport bank.util.Money;\n\npublic class Account {\n"
    "    Money balance;\n    Ledger ledger;\n}\n"
)
LEDGER = "package bank;\n\nimport java.util.List;\n\nclass Ledger {\n    List<Account> accounts;\n}\n"
TELLER = "package bank.app;\n\nimport bank.*;\nimport static bank.util.Money.of;\n\nclass Teller {\n    Account a;\n}\n"
PROJECT = {
    "src/bank/app/Teller.java": TELLER,
    "src/bank/Account.java": ACCOUNT,
    "src/bank/Ledger.java": LEDGER,
    "src/bank/util/Money.java": MONEY,
}


def test_dependencies_follow_imports_same_package_names_and_wildcards():
    paths, texts = list(PROJECT), list(PROJECT.values())
    deps = dependencies(paths, texts)
    name = {i: p.rsplit("/", 1)[-1] for i, p in enumerate(paths)}
    got = {name[i]: sorted(name[j] for j in d) for i, d in enumerate(deps)}
    assert got == {
        "Teller.java": ["Account.java", "Money.java"],  # bank.* names Account; the static import names Money
        "Account.java": ["Ledger.java", "Money.java"],  # an import and a same-package type
        "Ledger.java": ["Account.java"],  # java.util.List is not in the project
        "Money.java": [],
    }


def test_dependency_order_puts_each_file_after_what_it_uses_and_cuts_cycles():
    paths, texts = list(PROJECT), list(PROJECT.values())
    order = [paths[i].rsplit("/", 1)[-1] for i in dependency_order(paths, texts)]
    assert sorted(order) == sorted(p.rsplit("/", 1)[-1] for p in paths)  # every file once
    assert order.index("Money.java") < order.index("Account.java") < order.index("Teller.java")
    # Account <-> Ledger is a cycle: cut once, deterministically
    assert order == [paths[i].rsplit("/", 1)[-1] for i in dependency_order(paths, texts)]


lines_text = st.lists(
    st.one_of(
        st.sampled_from(["", "    ", "int x = 1;", "  foo(a, b);", "}", "\t return y;", 'ä = "日本";', "x"]),
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30),
    ),
    min_size=1,
    max_size=40,
).map(lambda ls: "\n".join(ls))


def _split_psm(ids: list[int], tok) -> tuple[list[int], list[int], list[int], list[int]]:
    """(prefix, suffix, middle, rest) ids of a FIM document (after the lead: see _lead)."""
    p, s, m = ids.index(tok.fim_prefix_id), ids.index(tok.fim_suffix_id), ids.index(tok.fim_middle_id)
    rest = ids[m + 1 :]
    cut = rest.index(tok.eos_id) if tok.eos_id in rest else len(rest)
    return ids[p + 1 : s], ids[s + 1 : m], rest[:cut], rest[cut + 1 :]


def _lead(ids: list[int], tok) -> str:
    """The text before a FIM document's window (a file start ended by <eos>), or ""."""
    p = ids.index(tok.fim_prefix_id)
    assert p == 0 or ids[p - 1] == tok.eos_id
    return tok.decode(ids[: max(0, p - 1)])


@settings(max_examples=150, deadline=None)
@given(lines_text, st.integers(0, 2**31))
def test_line_fim_loses_no_text_and_its_middle_is_a_few_lines(tiny_tokenizer, text, seed):
    tok = tiny_tokenizer
    header = path_header("bank/Account.java")
    ids = line_fim_ids(text, tok, np.random.default_rng(seed), header)
    if tok.fim_prefix_id not in ids:  # blank lines only, or a blank suffix: a plain document
        assert tok.decode(ids) == header + text
        return
    pre, suf, mid, rest = _split_psm(ids, tok)
    lead, window, suffix, middle = _lead(ids, tok), tok.decode(pre), tok.decode(suf), tok.decode(mid)
    assert window.startswith(header) and (not lead or lead.startswith(header))
    prefix = lead + window[len(header) :] if lead else window
    assert not lead or lead.endswith("\n")  # the window starts at a line
    got = prefix + middle + suffix + tok.decode(rest)
    assert (header + text).startswith(got) and not (header + text)[
        len(got) :
    ].strip()  # only blank tail dropped
    assert middle and middle.count("\n") <= 3
    assert suf == fim_suffix_ids(tok, text[len(prefix) - len(header) + len(middle) :])


def test_line_fim_prompt_is_the_engine_prompt(tiny_tokenizer, java_samples):
    """Training's <pre> prefix <suf> suffix <mid> is what the engine builds for that cursor."""
    tok = tiny_tokenizer
    text = java_samples["Account.java"]
    header = path_header("bank/Account.java")
    checked = 0
    for seed in range(40):
        ids = line_fim_ids(text, tok, np.random.default_rng(seed), header)
        if tok.fim_prefix_id not in ids or _lead(ids, tok):  # plain text, or a window not at the start
            continue
        pre, suf, mid, _ = _split_psm(ids, tok)
        cursor = len(tok.decode(pre)) - len(header)
        end = cursor + len(tok.decode(mid))  # the editor's buffer: the middle is not typed yet
        prompt = build_prompt(
            tok,
            text[:cursor],
            text[end:],
            budget_tokens=4096,
            suffix_tokens=32,
            fim=True,
            heal=False,
            header=header,
        )
        assert prompt.fim and prompt.window_start == 0
        assert prompt.ids == ids[: ids.index(tok.fim_middle_id) + 1]
        checked += 1
    assert checked >= 30


def test_long_files_get_an_engine_shaped_fim_window(tiny_tokenizer, java_samples):
    """Far down a file, training's FIM prefix is a header and a window, as the engine's is."""
    tok = tiny_tokenizer
    text = "\n".join(java_samples.values()) * 6
    header = path_header("bank/Big.java")
    windows = 0
    for seed in range(30):
        ids = line_fim_ids(text, tok, np.random.default_rng(seed), header)
        if tok.fim_prefix_id not in ids or not _lead(ids, tok):
            continue
        windows += 1
        window = tok.decode(_split_psm(ids, tok)[0])
        assert window.startswith(header) and len(window) <= len(header) + 4096
    assert windows >= 10
    cursor = len(text) // 2
    prompt = build_prompt(
        tok,
        text[:cursor],
        text[cursor:],
        budget_tokens=300,
        suffix_tokens=32,
        fim=True,
        heal=False,
        header=header,
    )
    assert prompt.fim and prompt.window_start > 0
    assert prompt.ids[: 1 + len(tok.encode(header))] == [tok.fim_prefix_id, *tok.encode(header)]


def test_line_fim_share_mixes_line_and_whole_file_middles(tiny_tokenizer, java_samples):
    tok = tiny_tokenizer
    text = java_samples["Account.java"]
    docs = [doc_ids(text, i, tok, 1.0, 3, "src/bank/Account.java", 0.5) for i in range(200)]
    assert all(d[-1] == tok.eos_id for d in docs)
    assert sum(d[0] != tok.fim_prefix_id for d in docs) <= 10  # a line-level middle that ran to the end
    docs = [d for d in docs if d[0] == tok.fim_prefix_id]
    middles = [tok.decode(_split_psm(d, tok)[2]) for d in docs]
    line_level = sum(0 < len(m) and m.count("\n") <= 3 for m in middles)
    assert 70 < line_level < 170  # about half line-level (whole-file middles are rarely that short)
    assert all(tok.decode(d).count("// Path: src/bank/Account.java\n") == 1 for d in docs)


def _jsonl(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_repo_level_stream_lays_out_projects_in_dependency_order(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    rows = [{"project": "bank", "path": p, "text": t} for p, t in PROJECT.items()]
    rows.insert(2, {"project": "other", "path": "x/Solo.java", "text": "class Solo {}\n"})
    source = _jsonl(tmp_path, rows)
    text = tok.decode(
        token_stream(source, "train", tok, Path(), DataConfig(fim_rate=0.0), fim=False).tolist()
    )
    files = [f for f in text.split(tok.decode([tok.eos_id])) if f]
    labels = [f.split("\n", 1)[0] for f in files]
    assert labels == [  # per project, each file after the files it uses (the Account/Ledger cycle cut once)
        "// Path: src/bank/Ledger.java",
        "// Path: bank/util/Money.java",
        "// Path: src/bank/Account.java",
        "// Path: bank/app/Teller.java",
        "// Path: x/Solo.java",
    ]
    assert labels.index("// Path: bank/util/Money.java") < labels.index("// Path: src/bank/Account.java")
    plain = tok.decode(
        token_stream(
            source, "train", tok, Path(), DataConfig(fim_rate=0.0, repo_level=False), fim=False
        ).tolist()
    )
    assert "// Path:" not in plain and plain.count("class ") == 5  # the old layout, files as they came
    (tmp_path / "bare.jsonl").write_text(json.dumps({"text": "class A {}\n"}) + "\n")
    with pytest.raises(KaffeeError, match="no-repo-level"):  # a layout the model's config would wrongly claim
        token_stream(tmp_path / "bare.jsonl", "bare", tok, Path(), DataConfig(), fim=False)


def test_engine_reproduces_the_repo_layout(tiny_model_dir: Path):
    eng = CompletionEngine.from_model_dir(
        tiny_model_dir,
        EngineOptions(workspace_cache=False, project=ProjectConfig(min_similarity=0.0, min_window_tokens=64)),
    )
    eng.set_workspace_files({"file:///w/src/bank/Ledger.java": LEDGER})
    eng.settle()
    tok = eng.tokenizer
    prefix, doc = "package bank;\n\nclass Account {\n    Led", "file:///w/src/bank/Account.java"
    before = tok.decode(eng._prompt(prefix, "\n}\n", document=doc).ids)
    assert "// Path: src/bank/Account.java" not in before and before.count("\n// ") >= 1  # comments form
    eng.model.meta = {**eng.model.meta, "layout": REPO_LAYOUT}
    eng._pins.clear()
    prompt = eng._prompt(prefix, "\n}\n", document=doc)
    text = tok.decode(prompt.ids)
    # files form: <eos>-separated blocks, then the file under its own path header, as training lays it out
    window = prefix[: len(prefix) - len(prompt.heal)]
    assert text.endswith(tok.decode([tok.eos_id]) + path_header("src/bank/Account.java") + window)
    assert "// Path: src/bank/Ledger.java\npackage bank;" in text


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_cli_train_records_the_layout(share, tiny_tokenizer, tmp_path):
    """A model's config.json says how its text was laid out, which is what the engine follows."""
    from kaffee.cli import main

    rows = [{"project": "bank", "path": p, "text": t * 20} for p, t in PROJECT.items()]
    source = _jsonl(tmp_path, rows)
    (tmp_path / "valid.jsonl").write_text(source.read_text())
    tiny_tokenizer.save(tmp_path / "tokenizer.json")
    out = tmp_path / "m"
    args = ["train", "--family", "gpt", "--preset", "nano", "--corpus", str(source)]
    args += ["--tokenizer", str(tmp_path / "tokenizer.json"), "--out", str(out), "--max-steps", "2"]
    args += ["--batch-size", "2", "--block-size", "32", "--line-fim-share", str(share)]
    assert main(args) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["layout"] == REPO_LAYOUT and meta["line_fim_share"] == share


def test_finetune_can_switch_a_model_to_the_repo_layout(tiny_model_dir: Path, tmp_path):
    from kaffee.training.data import DataConfig
    from kaffee.training.run import run_finetune
    from kaffee.training.trainer import TrainConfig

    project = tmp_path / "bank"
    for path, text in PROJECT.items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(text * 8)
    cfg = TrainConfig(max_steps=2, batch_size=2, block_size=32, eval_interval=2, eval_blocks=2)
    out = tmp_path / "ft"
    run_finetune(tiny_model_dir, project, out, cfg, DataConfig(), layout=REPO_LAYOUT)
    meta = json.loads((out / "config.json").read_text())
    assert meta["layout"] == REPO_LAYOUT and meta["finetuned_from"] == str(tiny_model_dir)
    assert json.loads((tiny_model_dir / "config.json").read_text()).get("layout") != REPO_LAYOUT


def test_a_run_saved_before_the_layout_existed_resumes_as_the_old_layout():
    from kaffee.training.run import spec_changes

    saved = {"family": "gpt", "data": {"corpus": "/c", "fim_rate": 0.5}}
    old_layout = {
        "family": "gpt",
        "data": {"corpus": "/c", "fim_rate": 0.5, "layout": "files", "line_fim_share": 0.0},
    }
    assert spec_changes(saved, old_layout) == {}  # --no-repo-level --line-fim-share 0: the same run
    new = {
        "family": "gpt",
        "data": {"corpus": "/c", "fim_rate": 0.5, "layout": REPO_LAYOUT, "line_fim_share": 0.5},
    }
    assert spec_changes(saved, new) == {
        "data.layout": ("files", REPO_LAYOUT),
        "data.line_fim_share": (0.0, 0.5),
    }
