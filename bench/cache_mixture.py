"""Fit the workspace cache's mixture weight on held-out projects (numbers, not pass/fail).

For sampled files of each project of a corpus split, the model's log-probability of
every code token (comments left out) is recorded next to the project cache's (an
order-6 n-gram over the project's *other* files, as the server builds it) and the
features the engine sees at that step: the longest matched n-gram order, that
history's count and the model's entropy. Then the weight

    lam = sigmoid(a[matched] + b * log(1 + count) + e * entropy)

is fitted by maximising the mixture's likelihood, and compared with no cache and with
the capped rule ``min(0.3, c / (c + 3))``, trained on one half of the projects and
tested on the other, both ways. The last line prints the parameters fitted on all of
them: ``CacheConfig.fitted`` (server/cache.py).

    python bench/cache_mixture.py --corpus runs/corpus-full --split valid --files 6 --out runs/fit/valid
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import numpy as np
import torch
from kaffee.evaluation.harness import load_held_out
from kaffee.models.checkpoint import load_model
from kaffee.models.ngram import NgramCounts
from kaffee.server.java_tokens import lex

CACHE_TOKENS = 400_000  # as CacheConfig.max_tokens


def collect(
    corpus: str, split: str, files: int, projects: int, model_dir: str
) -> tuple[np.ndarray, list[str]]:
    model = load_model(model_dir)
    tok = model.tokenizer
    held = load_held_out(corpus, split)
    by: dict[str, list] = {}
    for f in held.files:
        by.setdefault(f.project, []).append(f)
    rng = random.Random(0)
    rows, names = [], []
    for proj in sorted(by)[:projects]:
        fs = by[proj]
        if len(fs) < 5:
            continue
        sample = rng.sample(fs, min(files, len(fs) // 3))
        ids: list[int] = []
        for f in fs:
            if f not in sample and len(ids) < CACHE_TOKENS:
                ids += tok.encode(f.text[:400_000]) + [tok.eos_id]
        counts = NgramCounts.build(np.asarray(ids[:CACHE_TOKENS]), tok.vocab_size, 6)
        for f in sample:
            enc = tok.encode(f.text)[:1023]
            x = [tok.eos_id, *enc]
            starts, o = [], 0  # character offset of each token (byte-level BPE: bytes of ASCII text)
            for t in enc:
                starts.append(o)
                o += len(tok.id_to_bytes[t])
            text_bytes = f.text.encode("utf-8")
            comments = [
                (len(f.text[: c.start].encode()), len(f.text[: c.end].encode()))
                for c in lex(text_bytes[:o].decode("utf-8", errors="ignore"))
                if c.kind == "comment"
            ]
            with torch.no_grad():
                logits = model.module(input_ids=torch.tensor([x])).logits[0, :-1].float()
            lp = torch.log_softmax(logits, -1)
            entropy = -(lp.exp() * lp).sum(-1)
            target_lp = lp.gather(1, torch.tensor(x[1:])[:, None])[:, 0]
            for i in range(len(x) - 1):
                if any(a <= starts[i] < b for a, b in comments):
                    continue
                p, matched, count = counts.distribution(x[max(0, i - 4) : i + 1])
                cache_lp = math.log(max(float(p[x[i + 1]]), 1e-30))
                rows.append((float(target_lp[i]), cache_lp, matched, count, float(entropy[i])))
                names.append(proj)
        print(f"{proj}: {len(rows)} code tokens so far", flush=True)
    return np.asarray(rows, dtype=np.float64), names


def weight(theta: torch.Tensor, matched, count, entropy) -> torch.Tensor:
    z = theta[:7][matched.long()] + theta[7] * torch.log1p(count) + theta[8] * entropy
    return torch.sigmoid(z).clamp(1e-6, 1 - 1e-6)


def mixture_nll(lam, model_lp, cache_lp) -> torch.Tensor:
    return -torch.logaddexp(torch.log1p(-lam) + model_lp, torch.log(lam) + cache_lp).mean()


def fit(model_lp, cache_lp, matched, count, entropy, steps: int = 600) -> torch.Tensor:
    theta = torch.zeros(9, dtype=torch.float64)
    theta[:7] = -3.0
    theta.requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(steps):
        loss = mixture_nll(weight(theta, matched, count, entropy), model_lp, cache_lp)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return theta.detach()


def report(x: np.ndarray, names: list[str]) -> None:
    model_lp, cache_lp, matched, count, entropy = (torch.tensor(x[:, i]) for i in range(5))
    capped = torch.where(matched >= 3, count / (count + 3.0), torch.zeros_like(count)).clamp(1e-6, 0.3)
    projects = sorted(set(names))
    half = len(projects) // 2
    proj = np.asarray(names)
    print(f"{len(x)} code tokens, {len(projects)} projects")
    print("| fitted on | tested on | no cache | capped 0.3 | fitted |")
    print("| --- | --- | ---: | ---: | ---: |")
    for train, test in ((projects[:half], projects[half:]), (projects[half:], projects[:half])):
        tr, te = torch.tensor(np.isin(proj, train)), torch.tensor(np.isin(proj, test))
        theta = fit(model_lp[tr], cache_lp[tr], matched[tr], count[tr], entropy[tr])
        lam = weight(theta, matched[te], count[te], entropy[te])
        print(
            f"| {', '.join(train)} | {', '.join(test)} | {-model_lp[te].mean():.4f} "
            f"| {mixture_nll(capped[te], model_lp[te], cache_lp[te]):.4f} "
            f"| {mixture_nll(lam, model_lp[te], cache_lp[te]):.4f} |"
        )
    theta = fit(model_lp, cache_lp, matched, count, entropy)
    print("nats per code token; fitted on all projects: fitted =", tuple(round(float(t), 2) for t in theta))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="corpus directory")
    p.add_argument("--split", default="valid", help="split whose projects are used (default valid)")
    p.add_argument("--files", type=int, default=6, help="files sampled per project (default 6)")
    p.add_argument("--projects", type=int, default=1000, help="at most this many projects")
    p.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    p.add_argument(
        "--out", type=Path, default=None, help="save the collected rows here (.npy) and reuse them"
    )
    args = p.parse_args(argv)
    out = args.out.with_suffix(".npy") if args.out else None
    if out is not None and out.is_file():
        x = np.load(out)
        names = out.with_suffix(".projects").read_text().split("\n")
    else:
        from kaffee.models import default_model_dir

        x, names = collect(
            args.corpus, args.split, args.files, args.projects, args.model or str(default_model_dir())
        )
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, x)
            out.with_suffix(".projects").write_text("\n".join(names))
    report(x, names)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
