"""Make the carry for the GPU job (bench/gpu_default_model.sh) and check that it can travel.

    python -P bench/gpu_carry.py runs/corpus-all --out runs/gpu-carry

Writes ``OUT/train.jsonl.xz`` (a seeded sample of the train split, application files
weighted up: ``data/export.py``), ``OUT/valid.jsonl.xz`` and ``OUT/tokenizer.json`` (the
bundled model's, so token ids and evaluations stay comparable). A split whose export is
already there with the same settings (its ``.json`` record) is kept, not redone.

Then it adds up what a device call sends -- the checkout's files (tracked, and untracked
ones git does not ignore) without the folders set aside for the call (the bundled model:
the job never reads it), plus the carry -- and exits 1 when that passes the 64 MiB a
call may send. Last it prints the call: set the folders aside, run the job, put them back.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kaffee.data.export import DEFAULT_APP_WEIGHT, ExportConfig, export_split, source_fields
from kaffee.errors import KaffeeError

REPO = Path(__file__).resolve().parents[1]
TRAVEL_LIMIT = 64 * 2**20  # bytes a device call may send: working tree plus carry


@dataclass
class CarryConfig:
    corpus: Path  # corpus directory (kaffee corpus build)
    out: Path  # the carry folder to write (git-ignored, e.g. runs/gpu-carry)
    train_chars: int = 420_000_000  # characters of the train sample (the bundled model's sample size)
    valid_chars: int = 6_000_000  # characters of the valid sample
    seed: int = 0  # the sample's seed
    app_weight: float = DEFAULT_APP_WEIGHT  # application files drawn this many times as likely
    tokenizer: Path = REPO / "models" / "default" / "tokenizer.json"  # copied into the carry
    set_aside: tuple[str, ...] = ("models/default",)  # checkout folders moved out for the call
    limit: int = TRAVEL_LIMIT  # bytes a call may send


def _same_data(cfg: CarryConfig, split: str) -> dict:
    """What an export's record must say for it to be this carry's: the corpus, its build, the apps."""
    from kaffee.data.recipe_tools import app_packages

    return {"split": split, **source_fields(cfg.corpus, app_packages())}


def _export(cfg: CarryConfig, split: str, chars: int, weight: float) -> dict:
    out = cfg.out / f"{split}.jsonl.xz"
    record = out.with_name(out.name + ".json")
    want = {"max_bytes": chars, "seed": cfg.seed, "app_weight": weight, **_same_data(cfg, split)}
    if out.is_file() and record.is_file():
        old = json.loads(record.read_text())
        if {k: old.get(k) for k in want} == want and old.get("compressed_bytes") == out.stat().st_size:
            print(f"{split}: kept {out} ({old['files']} files, {old['chars']:,} characters)", file=sys.stderr)
            return old
    print(f"{split}: exporting {chars:,} characters from {cfg.corpus} ...", file=sys.stderr, flush=True)
    return export_split(cfg.corpus, out, ExportConfig(split, chars, cfg.seed, weight))


def _check_paths(cfg: CarryConfig, repo: Path) -> None:
    """Before any work: the carry must be a git-ignored folder of the checkout, the inputs must exist."""
    out = cfg.out.resolve()
    if not out.is_relative_to(repo.resolve()):
        raise KaffeeError(
            f"--out {cfg.out} is outside the checkout {repo}: a device call carries only its paths"
        )
    ignored = subprocess.run(["git", "check-ignore", "-q", str(out)], cwd=repo).returncode == 0
    if not ignored:
        raise KaffeeError(f"--out {cfg.out} is not git-ignored: carry paths must be (e.g. under runs/)")
    if not cfg.tokenizer.is_file():
        raise KaffeeError(
            f"no tokenizer at {cfg.tokenizer} (is models/default set aside? put it back: "
            "git checkout -- models/default)"
        )
    if not (cfg.corpus / "stats.json").is_file():
        raise KaffeeError(f"{cfg.corpus} is not a corpus directory (kaffee corpus build writes stats.json)")


def travelling_bytes(repo: Path, set_aside: tuple[str, ...]) -> int:
    """Bytes of the checkout's files a device call sends, without the folders set aside."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.decode()
    total = 0
    for name in filter(None, listed.split("\0")):
        if any(name == d or name.startswith(d.rstrip("/") + "/") for d in set_aside):
            continue
        path = repo / name
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def make_carry(cfg: CarryConfig, repo: Path = REPO) -> dict:
    """Write the carry; return its records and the bytes a call would send (KaffeeError past the limit)."""
    _check_paths(cfg, repo)
    cfg.out.mkdir(parents=True, exist_ok=True)
    train = _export(cfg, "train", cfg.train_chars, cfg.app_weight)
    valid = _export(cfg, "valid", cfg.valid_chars, 1.0)
    shutil.copyfile(cfg.tokenizer, cfg.out / "tokenizer.json")
    carry = sum(p.stat().st_size for p in cfg.out.rglob("*") if p.is_file())
    tree = travelling_bytes(repo, cfg.set_aside)
    summary = {"train": train, "valid": valid, "carry_bytes": carry, "tree_bytes": tree, "limit": cfg.limit}
    if carry + tree > cfg.limit:
        raise KaffeeError(
            f"the call would send {(carry + tree) / 2**20:.1f} MiB (carry {carry / 2**20:.1f}, checkout "
            f"{tree / 2**20:.1f} without {', '.join(cfg.set_aside)}), over {cfg.limit / 2**20:.0f} MiB: "
            "export fewer --train-chars"
        )
    return summary


def device_call(cfg: CarryConfig, repo: Path = REPO) -> str:
    """The call, with the set-aside folders moved out of the checkout and back (``git checkout`` restores them too)."""
    carry = cfg.out.resolve().relative_to(repo.resolve())
    places = [(d, f"/tmp/kaffee-aside-{d.replace('/', '-')}") for d in cfg.set_aside]
    aside = " && ".join(f"test ! -e {tmp} && mv -T {d} {tmp}" for d, tmp in places)
    back = " && ".join(f"mv -T {tmp} {d}" for d, tmp in places)
    return (
        f"here:   {aside}\n"
        f'device: run(command="CARRY={carry} OUT=$OUT bench/gpu_default_model.sh", carry=["{carry}"], '
        "timeout_s=600)\n"
        f"here:   {back}   (or: git checkout -- {' '.join(cfg.set_aside)})"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path, help="corpus directory (kaffee corpus build)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-carry", help="carry folder to write")
    ap.add_argument("--train-chars", type=int, default=CarryConfig.train_chars)
    ap.add_argument("--valid-chars", type=int, default=CarryConfig.valid_chars)
    ap.add_argument("--seed", type=int, default=CarryConfig.seed)
    ap.add_argument("--app-weight", type=float, default=CarryConfig.app_weight)
    args = ap.parse_args(argv)
    cfg = CarryConfig(args.corpus, args.out, args.train_chars, args.valid_chars, args.seed, args.app_weight)
    try:
        summary = make_carry(cfg)
    except KaffeeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in summary.items() if k not in ("train", "valid")}))
    print(
        f"carry {summary['carry_bytes'] / 2**20:.1f} MiB + checkout {summary['tree_bytes'] / 2**20:.1f} MiB "
        f"of {summary['limit'] / 2**20:.0f} MiB; the call:\n{device_call(cfg)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
