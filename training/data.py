"""Training data: texts -> token ids (with fill-in-the-middle) -> packed fixed-length blocks.

Two inputs are accepted: a corpus directory (``kaffee corpus build``; tokenised with
``datasets.map(num_proc=...)``) or an exported ``.jsonl[.xz]`` file of ``{"text", "project",
"path"}`` rows (for machines without ``datasets``, e.g. a GPU box; tokenised with the Rust
tokenizer's own thread pool).

The layout is the one the engine builds its prompts with (``data/layout.py``):

- repository level (``repo_level``): the files of one project follow each other, each
  after the files it refers to (``training/repo_order.py``), each starting with its path
  header, ``<eos>`` between files -- what the engine's project context puts before a file;
- fill-in-the-middle (``fim_rate``): PSM documents, either whole-file (two random cut
  points) or line-level (``line_fim_share``): the middle is the rest of a line or a few
  lines from a cursor, the suffix what the engine sends after a cursor (``fim_suffix_ids``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from kaffee.data.layout import (
    REPO_LAYOUT,
    SUFFIX_TOKENS,
    file_header,
    fim_suffix_ids,
    snap_to_line,
    window_start,
)
from kaffee.data.tokenizer import KaffeeTokenizer
from kaffee.errors import KaffeeError
from kaffee.training.repo_order import dependency_order

log = logging.getLogger(__name__)

LAYOUT_VERSION = 4  # bump when the text a document turns into changes (invalidates token caches)


@dataclass
class DataConfig:
    fim_rate: float = 0.5  # fraction of training documents rewritten as prefix-suffix-middle
    line_fim_share: float = 0.5  # of the FIM documents, the share with a line-level middle (rest: whole-file)
    repo_level: bool = True  # files of a project side by side, dependency-ordered, under path headers
    seed: int = 1337  # seeds FIM cut points and the block order
    num_proc: int = 2  # worker processes for datasets.map
    max_docs: int | None = None  # use at most this many documents (smoke runs)

    @property
    def layout(self) -> str:
        """What meta["layout"] records: how files were laid out (the engine follows it)."""
        return REPO_LAYOUT if self.repo_level else "files"


def fim_ids(text: str, tok: KaffeeTokenizer, rng: np.random.Generator, header: str = "") -> list[int]:
    """Whole-file PSM: <pre>header+prefix<suf>suffix<mid>middle, cut at two random characters of ``text``."""
    a, b = sorted(rng.integers(0, len(text) + 1, size=2).tolist())
    prefix, middle, suffix = text[:a], text[a:b], text[b:]
    return tok.fim_ids(tok.encode(header + prefix), tok.encode(suffix), tok.encode(middle))


def line_fim_ids(
    text: str,
    tok: KaffeeTokenizer,
    rng: np.random.Generator,
    header: str = "",
    suffix_tokens: int = SUFFIX_TOKENS,
) -> list[int]:
    """Line-level PSM: the middle starts at a cursor on a random non-blank line.

    Half the middles are the rest of the line, a quarter end inside the line (what stays
    after them is, like a closing bracket an editor inserted, the start of the suffix), a
    quarter run 1-3 lines further. The prefix is the header and a window of the text before
    the cursor, and the suffix is cut exactly as the engine cuts the text after a cursor;
    the text before the window goes first (a file start, ``<eos>`` after it) and the text
    after the suffix's cut follows as a headerless fragment (``<eos>`` first), so no text
    of the file is lost. With nothing but blank text after the middle the
    document stays plain, as the engine's prompt does then.
    """
    lines = text.splitlines(keepends=True)
    starts = np.cumsum([0] + [len(ln) for ln in lines[:-1]]).tolist() if lines else []
    candidates = [i for i, ln in enumerate(lines) if ln.strip()]
    if not candidates:
        return tok.encode(header + text)
    i = candidates[int(rng.integers(len(candidates)))]
    content = lines[i].rstrip("\r\n")
    indent = len(content) - len(content.lstrip())
    col = int(rng.integers(indent, len(content)))  # before a character of the line: the middle is never empty
    cursor = starts[i] + col
    r = rng.random()
    if r < 0.25:
        end = starts[i] + int(rng.integers(col + 1, len(content) + 1))
    else:
        j = min(i + (0 if r < 0.75 else int(rng.integers(1, 4))), len(lines) - 1)
        end = starts[j] + len(lines[j].rstrip("\r\n"))
    prefix, middle, suffix = text[:cursor], text[cursor:end], text[end:]
    if not suffix.strip():  # the engine writes a blank suffix as plain left-to-right text: so does training
        return tok.encode(header + text)
    suffix_ids = fim_suffix_ids(tok, suffix, suffix_tokens)
    # The engine's FIM prefix is the header and a window of the text before the cursor that
    # starts at a line (its size depends on the model and the project context): a window of
    # 1-4k characters here, cut the engine's way; the text before it goes first as a file start.
    start = snap_to_line(prefix, window_start(len(prefix), int(rng.integers(1024, 4096))))
    ids: list[int] = []
    if start > 0:
        ids = [*tok.encode(header + prefix[:start]), tok.eos_id]
    ids += tok.fim_ids(tok.encode(header + prefix[start:]), suffix_ids, tok.encode(middle))
    rest = suffix[len(tok.decode_bytes(suffix_ids).decode("utf-8")) :]  # whole characters: fim_suffix_ids
    if rest.strip():
        ids += [tok.eos_id, *tok.encode(rest)]
    return ids


def fim_decode(ids: list[int], tok: KaffeeTokenizer) -> str:
    """Undo fim_ids: the original document text."""
    p, s, m = ids.index(tok.fim_prefix_id), ids.index(tok.fim_suffix_id), ids.index(tok.fim_middle_id)
    return tok.decode(ids[p + 1 : s]) + tok.decode(ids[m + 1 :]) + tok.decode(ids[s + 1 : m])


def doc_ids(
    text: str,
    index: int,
    tok: KaffeeTokenizer,
    fim_rate: float,
    seed: int,
    path: str | None = None,
    line_fim_share: float = 0.0,
    plain_ids: list[int] | None = None,
) -> list[int]:
    """Ids of one document followed by end-of-file; FIM decided per document from (seed, index).

    ``path`` (repository layout) puts the file's path header first, inside the FIM prefix.
    ``plain_ids``: the document's ids without FIM when already encoded (batch encoding).
    """
    header = file_header(path)
    rng = np.random.default_rng([seed, index])
    if fim_rate > 0 and rng.random() < fim_rate:
        if line_fim_share > 0 and rng.random() < line_fim_share:
            body = line_fim_ids(text, tok, rng, header)
        else:
            body = fim_ids(text, tok, rng, header)
    else:
        body = plain_ids if plain_ids is not None else tok.encode(header + text)
    return body + [tok.eos_id]


def repo_sequence(projects: Sequence[str], paths: Sequence[str], texts_of) -> list[int]:
    """Row indices in repository order: projects in order of first appearance, files dependency-ordered.

    ``texts_of(indices)`` returns the texts of those rows (one project's at a time, so
    memory holds one project, not the corpus).
    """
    groups: dict[str, list[int]] = {}
    for i, project in enumerate(projects):
        groups.setdefault(project, []).append(i)
    order: list[int] = []
    for rows in groups.values():
        if len(rows) == 1:
            order += rows
            continue
        texts = texts_of(rows)
        order += [rows[k] for k in dependency_order([paths[i] for i in rows], texts)]
    return order


def read_jsonl_rows(path: Path, max_docs: int | None = None) -> list[dict]:
    """Rows of an exported ``.jsonl[.xz]`` file (``text``; ``project`` and ``path`` when exported with them)."""
    opener = lzma.open if path.suffix == ".xz" else open
    out = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
            if max_docs and len(out) >= max_docs:
                break
    return out


def _tokenize_dataset(ds, tok_path: Path, cfg: DataConfig, fim_rate: float) -> np.ndarray:
    import pyarrow.compute as pc

    with_paths = "path" in ds.column_names

    def encode(batch: dict, indices: list[int]) -> dict:
        tok = KaffeeTokenizer.from_file(tok_path)
        paths = batch["path"] if with_paths else [None] * len(indices)
        return {
            "ids": [
                doc_ids(t, i, tok, fim_rate, cfg.seed, p, cfg.line_fim_share)
                for t, i, p in zip(batch["text"], indices, paths, strict=True)
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


def _jsonl_stream(
    source: Path, tok: KaffeeTokenizer, tok_path: Path, cfg: DataConfig, fim_rate: float
) -> np.ndarray:
    rows = read_jsonl_rows(source, cfg.max_docs)
    if not rows:
        raise KaffeeError(f"{source} holds no documents")
    repo = cfg.repo_level and all("path" in r and "project" in r for r in rows)
    if cfg.repo_level and not repo:  # the model's config.json would claim a layout its text does not have
        raise KaffeeError(
            f"{source} has rows without project/path fields, so its files cannot be laid out by repository: "
            "export it again with python -m kaffee.data.export (which writes them), or pass --no-repo-level"
        )
    docs = [(r.get("project", ""), r.get("path", ""), r["text"]) for r in rows]
    return docs_stream(docs, tok, fim_rate, cfg.seed, cfg.line_fim_share, repo, tok_path, cfg.num_proc)


def docs_stream(
    docs: Sequence[tuple[str, str, str]],
    tok: KaffeeTokenizer,
    fim_rate: float,
    seed: int,
    line_fim_share: float,
    repo: bool,
    tok_path: Path | None = None,
    num_proc: int = 1,
) -> np.ndarray:
    """In-memory (project, path, text) documents as one int32 stream (exported files, fine-tuning).

    With ``tok_path`` and ``num_proc`` > 1, chunks are encoded in that many processes (the
    FIM rewriting is Python, serial per process); the stream is the same, since each
    document's FIM draw depends on (seed, its index) only.
    """
    if repo:
        order = repo_sequence(
            [d[0] for d in docs], [d[1] for d in docs], lambda idx: [docs[i][2] for i in idx]
        )
        docs = [docs[i] for i in order]
    chunks = [(start, docs[start : start + 2048]) for start in range(0, len(docs), 2048)]
    job = (fim_rate, seed, line_fim_share, repo)
    if num_proc > 1 and tok_path is not None and len(chunks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding tokenizer threads
        with ProcessPoolExecutor(min(num_proc, len(chunks)), mp_context=ctx) as pool:
            parts = list(pool.map(_encode_chunk_file, [(str(tok_path), c, job) for c in chunks]))
    else:
        parts = [_encode_chunk(tok, chunk, job) for chunk in chunks]
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def _encode_chunk_file(args: tuple[str, tuple[int, list], tuple]) -> np.ndarray:
    tok_path, chunk, job = args
    return _encode_chunk(KaffeeTokenizer.from_file(Path(tok_path)), chunk, job)


def _encode_chunk(tok: KaffeeTokenizer, chunk: tuple[int, list], job: tuple) -> np.ndarray:
    (start, docs), (fim_rate, seed, line_fim_share, repo) = chunk, job
    paths = [d[1] if repo else None for d in docs]
    plain = tok.encode_batch(
        [file_header(p) + d[2] for d, p in zip(docs, paths, strict=True)]
    )  # Rust threads
    out: list[int] = []
    for i, (d, p, ids) in enumerate(zip(docs, paths, plain, strict=True), start):
        out += doc_ids(d[2], i, tok, fim_rate, seed, p, line_fim_share, plain_ids=ids)
    return np.asarray(out, dtype=np.int32)


def split_source(source: Path, split: str) -> Path:
    """Where ``split`` is read from: a corpus directory itself, or the export file of that split
    next to ``source`` (exports are named like train.jsonl.xz / valid.jsonl.xz)."""
    if not source.is_file() or split in source.name:
        return source
    sibling = source.with_name(source.name.replace("train", split))
    if not sibling.is_file():
        raise KaffeeError(f"no {split} file next to {source} (expected {sibling.name})")
    return sibling


def token_stream(
    source: Path, split: str, tok: KaffeeTokenizer, tok_path: Path, cfg: DataConfig, fim: bool
) -> np.ndarray:
    """All documents of ``split`` as one int32 array, each ended by end-of-file."""
    fim_rate = cfg.fim_rate if fim else 0.0
    source = split_source(source, split)
    if source.is_file():
        return _jsonl_stream(source, tok, tok_path, cfg, fim_rate)
    from kaffee.data.corpus import load_corpus, split_of

    ds = split_of(load_corpus(source), split)
    if cfg.max_docs:
        ds = ds.select(range(min(cfg.max_docs, len(ds))))
    if not cfg.repo_level:
        return _tokenize_dataset(ds.select_columns(["text"]), tok_path, cfg, fim_rate)
    order = repo_sequence(list(ds["project"]), list(ds["path"]), lambda idx: list(ds.select(idx)["text"]))
    ds = ds.select(order).select_columns(["text", "path"])
    return _tokenize_dataset(ds, tok_path, cfg, fim_rate)


def cached_token_stream(
    source: Path,
    split: str,
    tok: KaffeeTokenizer,
    tok_path: Path,
    cfg: DataConfig,
    fim: bool,
    cache_dir: Path,
) -> np.ndarray:
    """token_stream, cached as .npy keyed by everything that changes its content.

    Stored as uint16 when the vocabulary fits (half the bytes of int32) and returned
    memory-mapped, so a large stream is paged in as blocks are read, not held in RAM.
    """
    read = split_source(source, split)
    # a rebuilt corpus or regenerated export at one path is other data (a missing one: token_stream says so)
    identity = [(st := read.stat()).st_ino, st.st_size, st.st_mtime_ns] if read.exists() else None
    key = json.dumps(
        [
            str(source.resolve()),
            identity,
            split,
            hashlib.sha256(Path(tok_path).read_bytes()).hexdigest(),
            cfg.fim_rate if fim else 0,
            cfg.line_fim_share if fim else 0,
            cfg.repo_level,
            LAYOUT_VERSION,
            cfg.seed,
            cfg.max_docs,
        ]
    )
    path = cache_dir / f"{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"
    if not path.is_file():
        arr = token_stream(source, split, tok, tok_path, cfg, fim)
        if tok.vocab_size <= np.iinfo(np.uint16).max:
            arr = arr.astype(np.uint16)
        cache_dir.mkdir(parents=True, exist_ok=True)
        # per-process temp name: under torchrun every rank tokenises and writes the same cache
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, arr)
        tmp.replace(path)
    return np.load(path, mmap_mode="r")


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
