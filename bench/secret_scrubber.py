"""Secret scrubber benchmark: recall on the planted set, replacements per MB and MB/s on real code.

    python bench/secret_scrubber.py                                   # planted set only
    python bench/secret_scrubber.py --corpus runs/corpus-full --mb 50 --show 40
    python bench/secret_scrubber.py --corpus /usr/lib/jvm/java-17-openjdk-amd64/lib/src.zip --mb 50
    python bench/secret_scrubber.py --module /tmp/old_secrets.py ...  # another version of data/secrets.py

--corpus is a kaffee corpus directory (its ``text`` column, rows in a seeded random order), a .zip/.jar of
sources (JDK src.zip) or a directory of .java files. On real code every replacement is a
candidate false positive: --show prints a sample as changed lines, to be judged by eye.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import random
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

# This file is named like the stdlib's `secrets`: keep its folder off the path so libraries get the real one.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parent.parent
PLANTED = ROOT / "tests" / "fixtures" / "secrets_planted.jsonl"


def load_module(path: str | None) -> ModuleType:
    if path is None:
        from kaffee.data import secrets

        return secrets
    spec = importlib.util.spec_from_file_location("secrets_under_test", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def planted(mod: ModuleType, path: Path = PLANTED) -> dict:
    """Recall per family and overall; benign lines changed."""
    total, caught, misses, benign_changed = Counter(), Counter(), [], []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        text, _ = mod.scrub(rec["code"])
        if rec["family"] == "benign":
            if text != rec["code"]:
                benign_changed.append((rec["code"], text))
            continue
        for secret in rec["secrets"]:
            total[rec["family"]] += 1
            if secret in text:
                misses.append((rec["family"], secret, text))
            else:
                caught[rec["family"]] += 1
    n, k = sum(total.values()), sum(caught.values())
    return {"secrets": n, "caught": k, "recall": k / n, "misses": misses, "benign_changed": benign_changed,
            "per_family": {f: f"{caught[f]}/{total[f]}" for f in sorted(total)}}  # fmt: skip


def texts(corpus: Path, max_bytes: int) -> Iterator[str]:
    """Texts from a corpus dir, a source zip or a folder, up to ``max_bytes`` of UTF-8."""
    seen = 0

    def take(items: Iterator[str]) -> Iterator[str]:
        nonlocal seen
        for text in items:
            if seen >= max_bytes:
                return
            seen += len(text.encode())
            yield text

    if corpus.is_dir() and (corpus / "stats.json").is_file():
        import datasets

        ds = datasets.load_from_disk(str(corpus)).select_columns(["text"])
        order = list(range(ds.num_rows))
        random.Random(0).shuffle(order)  # a sample across projects, not the first ones stored
        yield from take(ds[i]["text"] for i in order)
    elif corpus.suffix in (".zip", ".jar"):
        with zipfile.ZipFile(corpus) as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(".java"))
            yield from take(zf.read(n).decode("utf-8", "replace") for n in names)
    else:
        yield from take(p.read_text("utf-8", "replace") for p in sorted(corpus.rglob("*.java")))


def on_corpus(mod: ModuleType, corpus: Path, mb: float, show: int, seed: int = 0) -> dict:
    docs = list(texts(corpus, int(mb * 1e6)))
    nbytes = sum(len(t.encode()) for t in docs)
    found: Counter[str] = Counter()
    changed: list[tuple[str, str]] = []
    t0 = time.perf_counter()
    outs = [mod.scrub(t) for t in docs]
    elapsed = time.perf_counter() - t0
    for text, (new, kinds) in zip(docs, outs, strict=True):
        found.update(kinds)
        if new != text:
            old_lines, new_lines = text.splitlines(), new.splitlines()
            for op in difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False).get_opcodes():
                if op[0] != "equal":
                    changed += zip(old_lines[op[1] : op[2]], new_lines[op[3] : op[4]], strict=False)
    sample = random.Random(seed).sample(changed, min(show, len(changed)))
    return {"files": len(docs), "mb": nbytes / 1e6, "seconds": elapsed, "mb_per_s": nbytes / 1e6 / elapsed,
            "replacements": sum(found.values()), "per_mb": sum(found.values()) / (nbytes / 1e6),
            "by_kind": dict(found.most_common()), "changed_lines": len(changed), "sample": sample}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, help="corpus dir, source .zip or folder of .java files")
    ap.add_argument("--mb", type=float, default=50.0, help="megabytes of text to scrub (default 50)")
    ap.add_argument(
        "--show", type=int, default=30, help="changed lines to print from the corpus (default 30)"
    )
    ap.add_argument("--module", help="path of another secrets.py to measure (default: kaffee.data.secrets)")
    ap.add_argument("--planted", type=Path, default=PLANTED, help="planted set (JSONL)")
    args = ap.parse_args(argv)
    mod = load_module(args.module)

    res = planted(mod, args.planted)
    print(f"planted: recall {res['caught']}/{res['secrets']} = {res['recall']:.1%}; "
          f"benign lines changed: {len(res['benign_changed'])}")  # fmt: skip
    print("  per family: " + ", ".join(f"{f} {v}" for f, v in res["per_family"].items()))
    for family, secret, text in res["misses"]:
        print(f"  MISSED {family}: {secret!r} in {text!r}")
    for code, text in res["benign_changed"]:
        print(f"  BENIGN CHANGED: {code!r} -> {text!r}")
    if args.corpus:
        c = on_corpus(mod, args.corpus, args.mb, args.show)
        print(f"corpus {args.corpus}: {c['files']} files, {c['mb']:.1f} MB, scrubbed in {c['seconds']:.2f} s "
              f"= {c['mb_per_s']:.1f} MB/s; {c['replacements']} replacements = {c['per_mb']:.2f}/MB "
              f"({c['changed_lines']} changed lines)")  # fmt: skip
        print(f"  by kind: {c['by_kind']}")
        for old, new in c["sample"]:
            print(f"  - {old.strip()[:160]}\n    + {new.strip()[:160]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
