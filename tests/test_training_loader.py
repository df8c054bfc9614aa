"""Host-side training data: the prefetching loader gives exactly the sampler's batches; the token
cache is uint16 and memory-mapped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from kaffee.training.data import BlockSampler, DataConfig, cached_token_stream
from kaffee.training.trainer import HostBatches


def test_prefetched_batches_are_the_samplers_whatever_is_asked_next():
    stream = np.arange(5000, dtype=np.uint16) % 977
    sampler = BlockSampler(stream, 16, seed=3)
    loader = HostBatches(sampler, 4, pin=False)
    # in order (the prefetch hits), then a jump (it misses), then a repeat
    for first, nxt in [(0, 4), (4, 8), (8, 12), (40, 44), (40, None), (0, 4)]:
        x, y = loader.get(first, prefetch=nxt)
        xb, yb = sampler.batch(first, 4)
        assert x.dtype == torch.int64 and torch.equal(x, torch.from_numpy(xb.astype(np.int64)))
        assert torch.equal(y, torch.from_numpy(yb.astype(np.int64)))
    loader.close()


def test_token_cache_is_uint16_memory_mapped_and_equal_to_the_stream(tiny_tokenizer, tmp_path: Path):
    rows = [
        {"project": "p", "path": f"src/A{i}.java", "text": f"class A{i} {{ int x = {i}; }}\n"}
        for i in range(30)
    ]
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tiny_tokenizer.save(tmp_path / "tok.json")
    cfg = DataConfig(fim_rate=0.5)
    args = (source, "train", tiny_tokenizer, tmp_path / "tok.json", cfg, True, tmp_path / "cache")
    first = cached_token_stream(*args)
    again = cached_token_stream(*args)
    assert isinstance(first, np.memmap) and first.dtype == np.uint16
    assert np.array_equal(first, again) and int(first.max()) < tiny_tokenizer.vocab_size
    text = tiny_tokenizer.decode(first.tolist())
    assert text.count("// Path: src/A") == 30


def test_parallel_encoding_gives_the_same_stream(tiny_tokenizer, tmp_path: Path):
    from kaffee.training.data import docs_stream

    tiny_tokenizer.save(tmp_path / "tok.json")
    docs = [
        (f"p{i % 7}", f"src/p/C{i}.java", f"class C{i} {{\n  int f() {{ return {i}; }}\n}}\n")
        for i in range(4500)
    ]
    serial = docs_stream(docs, tiny_tokenizer, 0.5, 1, 0.5, True)
    parallel = docs_stream(docs, tiny_tokenizer, 0.5, 1, 0.5, True, tmp_path / "tok.json", num_proc=2)
    assert parallel.dtype == np.int32 and np.array_equal(serial, parallel)
