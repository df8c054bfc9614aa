"""`python -m kaffee.data.export`: the seeded, application-weighted sample of a split."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import datasets
import numpy as np
import pytest
from kaffee.data import recipe_tools
from kaffee.data.export import ExportConfig, app_mask, draw_order, export_split, main, source_fields
from kaffee.data.recipe_tools import Outcome
from kaffee.errors import KaffeeError

APPS = {"editor", "game"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 train projects (2 applications, 20 files each) of varied file sizes, plus one valid project."""
    rng = np.random.default_rng(0)
    rows = []
    for project in ["editor", "game", *(f"lib{i}" for i in range(8))]:
        for k in range(20):
            text = f"class {project.capitalize()}{k} {{}}\n" + "// x\n" * int(rng.integers(1, 40))
            rows.append({"text": text, "project": project, "path": f"src/F{k}.java", "split": "train"})
    rows.append({"text": "class V {}\n", "project": "valid", "path": "V.java", "split": "valid"})
    for r in rows:
        r["sha256"] = ""
    out = tmp_path_factory.mktemp("corpus") / "c"
    datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]}).save_to_disk(str(out))
    (out / "stats.json").write_text(json.dumps({"files_kept": len(rows)}))
    return out


def _rows(path: Path) -> list[dict]:
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _old_sample(corpus: Path, max_bytes: int, seed: int) -> list[dict]:
    """What the export wrote before --app-weight: datasets' shuffle(seed), cut before the file that overflows."""
    from kaffee.data.corpus import load_corpus, split_of

    out, size = [], 0
    for row in split_of(load_corpus(corpus), "train").shuffle(seed=seed).flatten_indices():
        if size + len(row["text"]) > max_bytes:
            break
        out.append({"text": row["text"], "project": row["project"], "path": row["path"]})
        size += len(row["text"])
    return out


def test_weight_one_is_the_old_sample_exactly(corpus: Path, tmp_path: Path) -> None:
    for seed in (0, 3):
        rec = export_split(
            corpus, tmp_path / "t.jsonl.xz", ExportConfig(max_bytes=3000, seed=seed), apps=APPS
        )
        assert _rows(tmp_path / "t.jsonl.xz") == _old_sample(corpus, 3000, seed)
        assert rec["app_weight"] == 1.0 and rec["files"] == len(_rows(tmp_path / "t.jsonl.xz"))


def test_app_share_rises_with_the_weight_and_is_recorded(corpus: Path, tmp_path: Path) -> None:
    shares = []
    samples = {}
    for w in (1.0, 2.0, 4.0):
        out = tmp_path / f"w{w}.jsonl.xz"
        rec = export_split(corpus, out, ExportConfig(max_bytes=2500, seed=0, app_weight=w), apps=APPS)
        rows = _rows(out)
        app_chars = sum(len(r["text"]) for r in rows if r["project"] in APPS)
        assert rec["app_chars"] == app_chars and rec["chars"] == sum(len(r["text"]) for r in rows) <= 2500
        assert rec["app_files"] == sum(r["project"] in APPS for r in rows)
        assert json.loads((tmp_path / f"w{w}.jsonl.xz.json").read_text()) == rec  # the sidecar
        assert rec["app_weight"] == w and rec["app_share_of_split"] == pytest.approx(0.2, abs=0.1)
        shares.append(rec["app_share"])
        samples[w] = {(r["project"], r["path"]) for r in rows}
    assert shares[0] < shares[1] < shares[2]
    # a heavier weight keeps every application file it had and only gives up library files
    apps_of = {w: {k for k in s if k[0] in APPS} for w, s in samples.items()}
    assert apps_of[1.0] <= apps_of[2.0] <= apps_of[4.0]
    assert samples[4.0] - apps_of[4.0] <= samples[1.0] - apps_of[1.0]


def test_seeded_export_is_deterministic(corpus: Path, tmp_path: Path) -> None:
    cfg = ExportConfig(max_bytes=2000, seed=5, app_weight=2.0)
    a = export_split(corpus, tmp_path / "a.jsonl.xz", cfg, apps=APPS)
    b = export_split(corpus, tmp_path / "b.jsonl.xz", cfg, apps=APPS)
    assert _rows(tmp_path / "a.jsonl.xz") == _rows(tmp_path / "b.jsonl.xz")
    assert {k: v for k, v in a.items() if k != "out"} == {k: v for k, v in b.items() if k != "out"}
    c = export_split(
        corpus, tmp_path / "c.jsonl.xz", ExportConfig(max_bytes=2000, seed=6, app_weight=2.0), apps=APPS
    )
    assert _rows(tmp_path / "c.jsonl.xz") != _rows(tmp_path / "a.jsonl.xz")
    assert c["chars"] <= 2000


def test_without_seed_the_split_is_written_in_order_unweighted(corpus: Path, tmp_path: Path) -> None:
    rec = export_split(corpus, tmp_path / "all.jsonl.xz", ExportConfig(app_weight=3.0), apps=APPS)
    rows = _rows(tmp_path / "all.jsonl.xz")
    assert rec["files"] == 200 and rec["app_weight"] == 1.0
    assert [r["project"] for r in rows[:20]] == ["editor"] * 20
    assert rec["app_share"] == rec["app_share_of_split"]  # the whole split: the weight cannot change it


def test_draw_order_draws_w_times_as_likely() -> None:
    """Early draws hold applications at the odds w·p / (w·p + 1 - p) of weighted sampling."""
    rng = np.random.default_rng(1)
    is_app = rng.random(40_000) < 0.1
    order = draw_order(is_app, seed=0, app_weight=3.0)
    assert sorted(order.tolist()) == list(range(len(is_app)))
    first = is_app[order[:2000]].mean()
    assert first == pytest.approx(0.3 / (0.3 + 0.9), abs=0.03)
    assert is_app[draw_order(is_app, seed=0)[:2000]].mean() == pytest.approx(0.1, abs=0.02)


def test_cli_records_the_weight_and_refuses_a_weight_without_seed(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recipe_tools, "app_packages", lambda log_path=None: frozenset(APPS))
    out = tmp_path / "train.jsonl.xz"
    assert main([str(corpus), "--out", str(out), "--max-bytes", "2000", "--seed", "0"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["app_weight"] == 2.0 and rec["app_files"] > 0  # the default weight
    with pytest.raises(SystemExit):
        main([str(corpus), "--out", str(out), "--app-weight", "2"])
    assert "pass --seed too" in capsys.readouterr().err


def test_app_packages_come_from_the_outcome_log(tmp_path: Path) -> None:
    log = tmp_path / "r.outcomes.tsv"
    recipe_tools.write_outcomes(log, [Outcome("josm", "1", "preferred", "utils", 1, "ok", 3, 1.0),
                                      Outcome("guava-libraries", "1", "preferred", "java", 0, "ok", 3, 1.0)])  # fmt: skip
    assert recipe_tools.app_packages(log) == {"josm"}
    shipped = recipe_tools.app_packages()  # data/recipes/debian-java-all.outcomes.tsv
    assert {"josm", "jedit", "plantuml"} <= shipped and "guava-libraries" not in shipped
    projects = ["josm", "java/openjdk-17-demo", "openjdk-src/java.base", "guava-libraries"]
    assert app_mask(projects, shipped).tolist() == [True, False, False, False]


def test_record_names_its_source_and_changes_with_the_corpus_stats(corpus: Path, tmp_path: Path) -> None:
    import hashlib
    import shutil

    cfg = ExportConfig(max_bytes=2000, seed=0, app_weight=2.0)
    rec = export_split(corpus, tmp_path / "a.jsonl.xz", cfg, apps=APPS)
    assert rec["split"] == "train" and rec["corpus"] == str(corpus.resolve())
    assert rec["corpus_stats_sha256"] == hashlib.sha256((corpus / "stats.json").read_bytes()).hexdigest()
    assert rec["apps_sha256"] == hashlib.sha256(b"editor\ngame").hexdigest()
    assert json.loads((tmp_path / "a.jsonl.xz.json").read_text()) == rec  # in the sidecar too

    copy = tmp_path / "copy"
    shutil.copytree(corpus, copy)
    same = export_split(copy, tmp_path / "b.jsonl.xz", cfg, apps=APPS)
    assert same["corpus_stats_sha256"] == rec["corpus_stats_sha256"] and same["corpus"] != rec["corpus"]
    (copy / "stats.json").write_text(json.dumps({"files_kept": 999}))
    changed = export_split(copy, tmp_path / "c.jsonl.xz", cfg, apps=APPS)
    assert changed["corpus_stats_sha256"] != rec["corpus_stats_sha256"]
    other_apps = export_split(copy, tmp_path / "d.jsonl.xz", cfg, apps={"editor"})
    assert other_apps["apps_sha256"] != rec["apps_sha256"]
    (copy / "stats.json").unlink()  # load_corpus refuses such a directory; the record would say None
    assert source_fields(copy, APPS)["corpus_stats_sha256"] is None


def test_non_finite_weights_are_refused(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t.jsonl.xz"
    for bad in ("nan", "inf", "-inf", "0"):
        with pytest.raises(SystemExit):
            main([str(corpus), "--out", str(out), "--seed", "0", f"--app-weight={bad}"])
        assert "--app-weight must be positive and finite" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(KaffeeError, match="finite"):
        draw_order(np.zeros(3, dtype=bool), seed=0, app_weight=float("nan"))


def test_dry_run_prints_the_record_and_writes_nothing(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recipe_tools, "app_packages", lambda log_path=None: frozenset(APPS))
    args = [str(corpus), "--max-bytes", "2500", "--seed", "0", "--app-weight", "3"]
    assert main([*args, "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] is True and dry["out"] is None and "compressed_bytes" not in dry
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "t.jsonl.xz"
    assert main([*args, "--out", str(out)]) == 0
    real = json.loads(capsys.readouterr().out)
    drop = ("out", "dry_run", "compressed_bytes")
    assert {k: v for k, v in dry.items() if k not in drop} == {k: v for k, v in real.items() if k not in drop}
    assert dry["app_share"] > 0 and dry["files"] == len(_rows(out))
    with pytest.raises(SystemExit):
        main(args)  # neither --out nor --dry-run
    assert "--out is required" in capsys.readouterr().err
