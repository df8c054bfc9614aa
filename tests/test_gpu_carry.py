"""bench/gpu_carry.py: the GPU job's carry, made from a corpus and checked against what a call may send."""

from __future__ import annotations

import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kaffee.errors import KaffeeError
from test_data_export import corpus  # noqa: F401 - the fixture (10 train projects, one valid)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu_carry  # noqa: E402


def _repo(tmp_path: Path, big: int) -> Path:
    """A git checkout with a small tracked file and a big one under models/default."""
    repo = tmp_path / "repo"
    (repo / "models" / "default").mkdir(parents=True)
    (repo / "README.md").write_text("x" * 1000)
    (repo / "models" / "default" / "model.safetensors").write_bytes(b"\0" * big)
    (repo / ".gitignore").write_text("runs/\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    return repo


def test_carry_is_written_checked_and_kept(corpus: Path, tmp_path: Path, tiny_tokenizer) -> None:  # noqa: F811
    repo = _repo(tmp_path, big=10_000)
    tok = tmp_path / "tokenizer.json"
    tiny_tokenizer.save(tok)
    cfg = gpu_carry.CarryConfig(corpus, repo / "runs" / "carry", 2_000, 100, tokenizer=tok, limit=10**6)
    summary = gpu_carry.make_carry(cfg, repo)
    with lzma.open(cfg.out / "train.jsonl.xz", "rt") as f:
        rows = [json.loads(line) for line in f]
    assert rows and all({"text", "project", "path"} <= set(r) for r in rows)
    assert (cfg.out / "tokenizer.json").read_bytes() == tok.read_bytes()
    assert summary["train"]["app_weight"] == cfg.app_weight and summary["valid"]["app_weight"] == 1.0
    # the set-aside model and the git-ignored carry are not counted as the checkout
    assert summary["tree_bytes"] == len("x" * 1000) + len("runs/\n")
    assert summary["carry_bytes"] == sum(p.stat().st_size for p in cfg.out.iterdir())
    before = (cfg.out / "train.jsonl.xz").stat().st_mtime_ns
    gpu_carry.make_carry(cfg, repo)  # same settings: the exports are kept
    assert (cfg.out / "train.jsonl.xz").stat().st_mtime_ns == before
    call = gpu_carry.device_call(cfg, repo)
    assert 'carry=["runs/carry"]' in call and "mv -T models/default" in call


def test_over_the_limit_is_a_clear_error(corpus: Path, tmp_path: Path, tiny_tokenizer) -> None:  # noqa: F811
    repo = _repo(tmp_path, big=10)
    tok = tmp_path / "tokenizer.json"
    tiny_tokenizer.save(tok)
    cfg = gpu_carry.CarryConfig(corpus, repo / "runs" / "carry", 2_000, 100, tokenizer=tok, limit=2_000)
    with pytest.raises(KaffeeError, match="over"):
        gpu_carry.make_carry(cfg, repo)


def test_an_export_from_other_data_is_redone(corpus: Path, tmp_path: Path, tiny_tokenizer) -> None:  # noqa: F811
    """Same settings, another corpus build: the old export is not kept."""
    repo = _repo(tmp_path, big=10)
    data = tmp_path / "corpus"
    shutil.copytree(corpus, data)
    tok = tmp_path / "tokenizer.json"
    tiny_tokenizer.save(tok)
    cfg = gpu_carry.CarryConfig(data, repo / "runs" / "carry", 2_000, 100, tokenizer=tok, limit=10**6)
    gpu_carry.make_carry(cfg, repo)
    before = (cfg.out / "train.jsonl.xz").stat().st_mtime_ns
    (data / "stats.json").write_text(json.dumps({"files_kept": 1, "rebuilt": True}))
    gpu_carry.make_carry(cfg, repo)
    assert (cfg.out / "train.jsonl.xz").stat().st_mtime_ns != before


@pytest.mark.parametrize("where", ["outside", "not ignored"])
def test_a_carry_that_cannot_travel_is_refused_before_any_work(
    corpus: Path,  # noqa: F811
    tmp_path: Path,
    tiny_tokenizer,
    where: str,
) -> None:
    repo = _repo(tmp_path, big=10)
    tok = tmp_path / "tokenizer.json"
    tiny_tokenizer.save(tok)
    out = tmp_path / "elsewhere" if where == "outside" else repo / "carry"
    cfg = gpu_carry.CarryConfig(corpus, out, 2_000, 100, tokenizer=tok)
    with pytest.raises(KaffeeError, match="outside|git-ignored"):
        gpu_carry.make_carry(cfg, repo)
    assert not out.exists()
