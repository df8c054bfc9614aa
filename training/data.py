"""Training data: texts -> token ids (with fill-in-the-middle) -> packed fixed-length blocks.

Two inputs are accepted: a corpus directory (``kaffee corpus build``; tokenised with
``datasets.map(num_proc=...)``) or an exported ``.jsonl[.xz]`` file of ``{"text": ...}``
rows (for machines without ``datasets``, e.g. a GPU box; tokenised with the Rust
tokenizer's own thread pool).
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from kaffee.data.tokenizer import KaffeeTokenizer
from kaffee.errors import KaffeeError

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    fim_rate: float = 0.5  # fraction of training documents rewritten as prefix-suffix-middle
    seed: int = 1337  # seeds FIM cut points and the block order
    num_proc: int = 2  # worker processes for datasets.map
    max_docs: int | None = None  # use at most this many documents (smoke runs)


def fim_ids(text: str, tok: KaffeeTokenizer, rng: np.random.Generator) -> list[int]:
    """PSM fill-in-the-middle: <pre>prefix<suf>suffix<mid>middle, cut at two random characters."""
    a, b = sorted(rng.integers(0, len(text) + 1, size=2).tolist())
    prefix, middle, suffix = text[:a], text[a:b], text[b:]
    return tok.fim_ids(tok.encode(prefix), tok.encode(suffix), tok.encode(middle))


def fim_decode(ids: list[int], tok: KaffeeTokenizer) -> str:
    """Undo fim_ids: the original document text."""
    p, s, m = ids.index(tok.fim_prefix_id), ids.index(tok.fim_suffix_id), ids.index(tok.fim_middle_id)
    return tok.decode(ids[p + 1 : s]) + tok.decode(ids[m + 1 :]) + tok.decode(ids[s + 1 : m])


def doc_ids(text: str, index: int, tok: KaffeeTokenizer, fim_rate: float, seed: int) -> list[int]:
    """Ids of one document followed by end-of-file; FIM decided per document from (seed, index)."""
    rng = np.random.default_rng([seed, index])
    body = fim_ids(text, tok, rng) if fim_rate > 0 and rng.random() < fim_rate else tok.encode(text)
    return body + [tok.eos_id]


def read_jsonl_texts(path: Path, max_docs: int | None = None) -> list[str]:
    opener = lzma.open if path.suffix == ".xz" else open
    out = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line)["text"])
            if max_docs and len(out) >= max_docs:
                break
    return out


def _tokenize_dataset(ds, tok_path: Path, cfg: DataConfig, fim_rate: float) -> np.ndarray:
    import pyarrow.compute as pc

    def encode(batch: dict, indices: list[int]) -> dict:
        tok = KaffeeTokenizer.from_file(tok_path)
        return {
            "ids": [
                doc_ids(t, i, tok, fim_rate, cfg.seed) for t, i in zip(batch["text"], indices, strict=True)
            ]
        }

    mapped = ds.map(
        encode,
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        num_proc=max(1, min(cfg.num_proc, len(ds))) if len(ds) > 64 else None,
        desc="tokenizing",
    )
    return pc.list_flatten(mapped.data.column("ids")).to_numpy().astype(np.int32)


def token_stream(
    source: Path, split: str, tok: KaffeeTokenizer, tok_path: Path, cfg: DataConfig, fim: bool
) -> np.ndarray:
    """All documents of ``split`` as one int32 array, each ended by end-of-file."""
    fim_rate = cfg.fim_rate if fim else 0.0
    if source.is_file():
        name = source.name
        if split not in name:  # export files are named like train.jsonl.xz / valid.jsonl.xz
            sibling = source.with_name(name.replace("train", split))
            if not sibling.is_file():
                raise KaffeeError(f"no {split} file next to {source} (expected {sibling.name})")
            source = sibling
        texts = read_jsonl_texts(source, cfg.max_docs)
        if not texts:
            raise KaffeeError(f"{source} holds no documents")
        out: list[int] = []
        for start in range(0, len(texts), 2048):
            chunk = texts[start : start + 2048]
            encoded = tok.encode_batch(chunk)  # Rust thread pool
            for i, ids in enumerate(encoded, start):
                rng = np.random.default_rng([cfg.seed, i])
                if fim_rate > 0 and rng.random() < fim_rate:
                    ids = fim_ids(texts[i], tok, rng)
                out += ids + [tok.eos_id]
        return np.asarray(out, dtype=np.int32)
    from kaffee.data.corpus import load_corpus, split_of

    ds = split_of(load_corpus(source), split)
    if cfg.max_docs:
        ds = ds.select(range(min(cfg.max_docs, len(ds))))
    return _tokenize_dataset(ds.select_columns(["text"]), tok_path, cfg, fim_rate)


def cached_token_stream(
    source: Path,
    split: str,
    tok: KaffeeTokenizer,
    tok_path: Path,
    cfg: DataConfig,
    fim: bool,
    cache_dir: Path,
) -> np.ndarray:
    """token_stream, cached as .npy keyed by everything that changes its content."""
    key = json.dumps(
        [
            str(source.resolve()),
            split,
            hashlib.sha256(Path(tok_path).read_bytes()).hexdigest(),
            cfg.fim_rate if fim else 0,
            cfg.seed,
            cfg.max_docs,
        ]
    )
    path = cache_dir / f"{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    arr = token_stream(source, split, tok, tok_path, cfg, fim)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # per-process temp name: under torchrun every rank tokenises and writes the same cache
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
    return arr


class BlockSampler:
    """Fixed-length blocks over a token stream, in a seeded order that is a pure function of the step.

    Step ``s`` of a run with ``per_step`` blocks per optimizer step always reads the same
    blocks, so a resumed run sees exactly the data the uninterrupted run would have.
    """

    def __init__(self, stream: np.ndarray, block_size: int, seed: int):
        if len(stream) < block_size + 1:
            raise KaffeeError(
                f"only {len(stream)} tokens of training data; need at least {block_size + 1} (one block)"
            )
        self.stream = stream
        self.block_size = block_size
        self.seed = seed
        self.n_blocks = (len(stream) - 1) // block_size
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _perm_for(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
            self._perm_epoch = epoch
        return self._perm

    def block_ids(self, start: int, count: int) -> list[int]:
        out = []
        for g in range(start, start + count):
            epoch, pos = divmod(g, self.n_blocks)
            out.append(int(self._perm_for(epoch)[pos]))
        return out

    def rows(self, ids: list[int]) -> np.ndarray:
        """Blocks ``ids`` with one token of overlap for the targets: (len(ids), block_size + 1)."""
        B = self.block_size
        return np.stack([self.stream[i * B : i * B + B + 1] for i in ids])

    def batch(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets, (count, block_size) each."""
        rows = self.rows(self.block_ids(start, count))
        return rows[:, :-1], rows[:, 1:]
