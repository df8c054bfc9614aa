"""The bundled models/default, the product's most important file, loaded as users get it.

It loads through ``FastGPT.load`` in int8 and fp32; fp32 computes what the transformers
model (``checkpoint.load_model``) computes; int8 stays close to fp32; and ``kaffee complete``
on the bundled example suggests ``println``. Every example file is cut to its first
N_TOKENS tokens so the whole module runs in well under 30 s on two cores.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kaffee.models import default_model_dir
from kaffee.models.checkpoint import load_model, read_meta
from kaffee.models.gpt import GPTConfig
from kaffee.server.fastgpt import FastGPT

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.java"))
N_TOKENS = 256


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return default_model_dir()


@pytest.fixture(scope="module")
def fp32(model_dir: Path) -> FastGPT:
    return FastGPT.load(model_dir, quantize="none")


@pytest.fixture(scope="module")
def int8(model_dir: Path) -> FastGPT:
    logger = logging.getLogger("kaffee.server.fastgpt")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        model = FastGPT.load(model_dir, quantize="int8")
    finally:
        logger.removeHandler(handler)
    if any("int8 kernels are unavailable" in m for m in seen):
        pytest.skip("this torch build has no quantized CPU kernels; int8 falls back to fp32")
    return model


@pytest.fixture(scope="module")
def example_ids(fp32: FastGPT) -> dict[str, list[int]]:
    assert len(EXAMPLES) >= 4, EXAMPLES
    return {p.name: fp32.tokenizer.encode(p.read_text())[:N_TOKENS] for p in EXAMPLES}


@pytest.fixture(scope="module")
def fp32_rows(fp32: FastGPT, example_ids: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Next-token log-probs after every position of every example: name -> (T, V)."""
    return {name: fp32.advance_all(fp32.new_state(), ids) for name, ids in example_ids.items()}


def test_loads_in_fp32_and_int8(model_dir: Path, fp32: FastGPT, int8: FastGPT) -> None:
    meta = read_meta(model_dir)
    assert meta["family"] == "gpt"
    for model, mode in ((fp32, "none"), (int8, "int8")):
        assert model.quantize == mode
        assert model.cfg == GPTConfig(**meta["config"])
        assert model.tokenizer.vocab_size == model.vocab_size == meta["config"]["vocab_size"]
        assert len(model.layers) == model.cfg.n_layer
        assert model.eps == model.cfg.rms_norm_eps == 1e-6  # config.json has no rms_norm_eps: the default
    assert int8._embed_q is not None and int8._embed_q.dtype == torch.int8
    assert fp32._embed_q is None and fp32.embed.dtype == torch.float32


def test_fp32_predicts_the_examples_well(fp32_rows: dict[str, torch.Tensor], example_ids) -> None:
    """A broken checkpoint (shuffled shards, wrong tokenizer, wrong eps) predicts Java badly."""
    for name, rows in fp32_rows.items():
        assert torch.allclose(rows.logsumexp(-1), torch.zeros(len(rows)), atol=1e-4), name
        ids = torch.tensor(example_ids[name])
        nll = -rows[:-1].gather(1, ids[1:, None]).mean().item()
        assert nll < 2.0, (name, nll)  # measured 1.08-1.74 nats per token; a uniform guess is 9.7


def test_fp32_matches_transformers(model_dir: Path, fp32: FastGPT, fp32_rows, example_ids) -> None:
    ref = load_model(model_dir)  # the transformers LlamaForCausalLM behind the GPTModel wrapper
    assert ref.family == "gpt" and ref.cfg == fp32.cfg
    worst = 0.0
    for name, ids in example_ids.items():
        with torch.inference_mode():
            logits = ref.module(input_ids=torch.tensor([ids])).logits[0].float()
        diff = (torch.log_softmax(logits, dim=-1) - fp32_rows[name]).abs().max().item()
        worst = max(worst, diff)
    assert worst <= 1e-4, worst  # measured 0.0: the same kernels in the same order
    # the wrapper's own scoring path
    ids = example_ids["Transaction.java"]
    assert torch.allclose(ref.sequence_logprobs(ids), fp32.sequence_logprobs(ids), atol=1e-4)
    # the wrapper's incremental path (KV cache, one token at a time) agrees too
    ids = example_ids["Bank.java"]
    state = ref.new_state()
    ref.advance(state, ids[:100])
    for i in range(100, 104):
        row = ref.advance(state, [ids[i]])
        assert torch.allclose(row, fp32_rows["Bank.java"][i], atol=1e-4), i
    ref.crop(state, 50)
    assert torch.allclose(ref.advance(state, ids[50:52]), fp32_rows["Bank.java"][51], atol=1e-4)


@pytest.fixture(scope="module")
def int8_vs_fp32(int8: FastGPT, fp32_rows, example_ids) -> tuple[float, list[int]]:
    """Top-1 agreement over all positions, and each position's top-5 overlap."""
    agree = total = 0
    overlaps: list[int] = []
    for name, ids in example_ids.items():
        rows, ref = int8.advance_all(int8.new_state(), ids), fp32_rows[name]
        agree += (rows.argmax(-1) == ref.argmax(-1)).sum().item()
        total += len(ids)
        for a, b in zip(rows.topk(5).indices.tolist(), ref.topk(5).indices.tolist(), strict=True):
            overlaps.append(len(set(a) & set(b)))
    return agree / total, overlaps


def test_int8_stays_close_to_fp32(int8_vs_fp32: tuple[float, list[int]]) -> None:
    """Regression floor for the int8 path: measured 0.959 top-1 agreement with 8-bit activations (VNNI),
    0.927 with 7-bit (elsewhere), mean top-5 overlap 4.37;
    every position's top-5 sets share at least one token.

    A wrong scale, a transposed or mis-fused weight, or a broken embedding drops both to ~0.
    """
    agree, overlaps = int8_vs_fp32
    assert agree >= 0.90, agree
    assert min(overlaps) >= 1, "some position's int8 and fp32 top-5 share no token"
    assert sum(overlaps) / len(overlaps) >= 4.0, sum(overlaps) / len(overlaps)


@pytest.mark.xfail(
    strict=True,
    reason="issue 13 asks for >= 98 % top-1 agreement; int8 reaches 95.9 % over whole blocks with "
    "8-bit activations on VNNI CPUs (92.7 % at 7 bits elsewhere): linear_dynamic quantizes "
    "activations per tensor; keeping the head in fp32 gives 96.5 %. Remove this mark once fixed.",
)
def test_int8_top1_agrees_with_fp32_on_98_percent(int8_vs_fp32: tuple[float, list[int]]) -> None:
    agree, _ = int8_vs_fp32
    assert agree >= 0.98, agree


def test_kaffee_complete_suggests_println_on_the_bundled_example(model_dir: Path) -> None:
    spot = f"{ROOT / 'examples' / 'Bank.java'}:50:24"  # after "System.out." in the for loop
    out = subprocess.run(
        [sys.executable, "-m", "kaffee", "complete", spot, "-k", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert Path(data["model"]).resolve() == model_dir.resolve() and not data["degraded"]
    assert data["tokens"][0]["text"] == "println", data["tokens"]
    assert data["completion"]["text"].startswith("println("), data["completion"]


def test_a_lone_surrogate_in_another_file_breaks_nothing(model_dir: Path):
    """Review finding: a bad file's text reached the project index raw, and every prompt that
    retrieved a window of it raised in the tokenizer (and the fallback raised again)."""
    from kaffee.server.engine import CompletionEngine

    engine = CompletionEngine.from_model_dir(model_dir)
    bad = (
        "public class Account {\n    private int balance;\n    public void deposit(int amount) {\n"
        '        balance += amount;\n        System.out.println("deposit \ud800" + amount);\n    }\n'
        "    public int getBalance() { return balance; }\n}\n"
    )
    src = (
        "public class Main {\n    public static void main(String[] args) {\n"
        "        Account account = new Account();\n        account.deposit(5);\n        account."
    )
    engine.update_document("file:///ws/Account.java", bad)
    engine.update_document("file:///ws/Main.java", src)
    engine.settle()
    ranked = [t.text for t in engine.next_tokens(src, "\n    }\n}\n", k=3, document="file:///ws/Main.java")]
    assert "getBalance" in ranked and not engine.degraded
