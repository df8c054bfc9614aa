"""Top-1 of the engine at nested-generic closers (``Map<String, List<Integer`` -> ``>``).

Issue 13 measured the lexer fix with this: before, the engine ended the token at ``>>``
while the evaluation's target was ``>``. Picks the first ``>`` of a ``>>`` type-argument
closer in each of N test-split files (seeded), asks the engine for the next token with
the rest of the file after the cursor's line, and prints how often ``>`` ranks first.

    python bench/generic_closers.py --corpus runs/corpus-apps --model models/default
"""

from __future__ import annotations

import argparse
import random

from datasets import load_from_disk
from kaffee.evaluation.lexer import lex
from kaffee.server.engine import CompletionEngine, EngineOptions


def closer_positions(corpus: str, n: int, seed: int) -> list[tuple[str, int]]:
    ds = load_from_disk(corpus)
    test = [i for i, s in enumerate(ds["split"]) if s == "test"]
    random.Random(seed).shuffle(test)
    out: list[tuple[str, int]] = []
    for i in test:
        text = ds[i]["text"]
        toks = lex(text)
        for a, b in zip(toks, toks[1:], strict=False):
            if a.text == ">" and b.text == ">" and b.start == a.start + 1:
                out.append((text, a.start))
                break
        if len(out) >= n:
            break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True)
    p.add_argument("--model", default="models/default")
    p.add_argument("-n", type=int, default=60, help="positions (one per file)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    engine = CompletionEngine.from_model_dir(
        args.model, EngineOptions(project_context=False, workspace_cache=False)
    )
    positions = closer_positions(args.corpus, args.n, args.seed)
    hits = 0
    for text, off in positions:
        end = text.find("\n", off)
        ranked = [t.text for t in engine.next_tokens(text[:off], text[end:] if end >= 0 else "", k=5)]
        hits += ranked[:1] == [">"]
    print(
        f"top-1 '>' at {len(positions)} nested-generic closers: {hits} ({100 * hits / max(1, len(positions)):.1f} %)"
    )


if __name__ == "__main__":
    main()
