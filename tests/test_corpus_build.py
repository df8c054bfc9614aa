"""End-to-end builds: mixed sources, every bad input, Debian (apt faked), interruption, and the CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from kaffee.data import debian
from kaffee.data.corpus import build, load_corpus, split_of
from kaffee.data.dataset_writer import DatasetWriter
from kaffee.errors import KaffeeError
from test_corpus_filters import SECRET_VALUES, planted_java
from test_corpus_helpers import config, make_java, write_project


def test_mixed_sources_with_bad_inputs(tmp_path: Path) -> None:
    good = write_project(tmp_path, "good", 4, seed=1)
    (good / "Latin.java").write_bytes(make_java(50).replace("keeps track", "g\xe9re").encode("latin-1"))
    (good / "Settings.java").write_text(planted_java())
    with open(good / "Huge.java", "wb") as fh:
        fh.truncate(200 * 1024 * 1024)  # sparse: never read
    (good / "Binary.java").write_bytes(b"\xca\xfe\xba\xbe\0\0\0" * 100)
    (good / "loop").symlink_to(good)
    empty = tmp_path / "docs"
    empty.mkdir()
    (empty / "README.md").write_text("no java here")
    stats = build(config([good, tmp_path / "missing", empty], tmp_path / "out", num_proc=2))

    assert stats["files_seen"] == 4 + 5
    assert stats["dropped"] == {"binary": 1, "symlink_loop": 1, "too_large": 1}
    assert stats["latin1_fallbacks"] == 1
    assert stats["secrets_scrubbed"]["total"] >= 13 and stats["secrets_scrubbed"]["files"] == 1
    assert [(f["source"], f["reason"]) for f in stats["failed_sources"]] == [
        (str(tmp_path / "missing"), "not_found")
    ]
    assert stats["sources_without_java"] == [str(empty)]
    ds = load_corpus(tmp_path / "out")
    assert ds.column_names[:5] == ["text", "project", "path", "sha256", "split"]
    assert ds.num_rows == 6
    text = "\n".join(ds["text"])
    for value in SECRET_VALUES:
        assert value not in text
    assert "g\u00e9re" in text
    saved = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert saved["files_kept"] == 6 and saved["bytes_kept"] > 0


def test_dir_without_java_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    with pytest.raises(KaffeeError, match="no Java files found"):
        build(config([tmp_path / "docs"], tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_only_unusable_files_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "A.java").write_text("// just a comment\n")
    with pytest.raises(KaffeeError, match="no usable Java files.*near_empty"):
        build(config([tmp_path / "p"], tmp_path / "out"))


def test_existing_out_needs_force(tmp_path: Path) -> None:
    src = write_project(tmp_path, "p", 2, seed=2)
    build(config([src], tmp_path / "out"))
    with pytest.raises(KaffeeError, match="--force"):
        build(config([src], tmp_path / "out"))
    build(config([src], tmp_path / "out", force=True))
    (tmp_path / "notcorpus").mkdir()
    (tmp_path / "notcorpus" / "precious.txt").write_text("keep me")
    with pytest.raises(KaffeeError, match="not a corpus directory"):
        build(config([src], tmp_path / "notcorpus", force=True))


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_write_leaves_previous_corpus_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          error: BaseException) -> None:  # fmt: skip
    src = write_project(tmp_path, "p", 3, seed=3)
    out = tmp_path / "out"
    with monkeypatch.context() as m:  # first build dies half way through writing: nothing at --out
        real_close = DatasetWriter.close

        def dying_close(self, *a, **kw):  # the dataset is written, stats.json and the swap are not
            real_close(self, *a, **kw)
            raise error

        m.setattr(DatasetWriter, "close", dying_close)
        with pytest.raises(type(error)):
            build(config([src], out))
        assert not out.exists()
        assert not list(tmp_path.glob(".out.tmp-*"))
    first = build(config([src], out))
    with monkeypatch.context() as m:  # a forced rebuild that dies keeps the previous complete corpus
        m.setattr(DatasetWriter, "close", dying_close)
        (src / "Extra.java").write_text(make_java(99))
        with pytest.raises(type(error)):
            build(config([src], out, force=True))
    assert load_corpus(out).num_rows == first["files_kept"] == 3


def test_load_corpus_and_split_of_errors(tmp_path: Path) -> None:
    with pytest.raises(KaffeeError, match="not a corpus directory"):
        load_corpus(tmp_path)
    src = write_project(tmp_path, "p", 2, seed=4)
    build(config([src], tmp_path / "out"))
    ds = load_corpus(tmp_path / "out")
    assert split_of(ds, "train").num_rows == 2
    with pytest.raises(KaffeeError, match="no 'test' files"):
        split_of(ds, "test")
    with pytest.raises(KaffeeError, match="unknown split"):
        split_of(ds, "dev")


# ------------------------------------------------------------------ Debian, with apt faked


def test_deb_src_entries_are_derived(tmp_path: Path) -> None:
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (tmp_path / "sources.list").write_text("deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib\n"
                                           "# deb http://commented.example/ x main\ndeb-src http://m.example/debian bookworm main\n")  # fmt: skip
    (parts / "debian.sources").write_text("Types: deb\nURIs: http://m.example/debian-security\nSuites: bookworm-security\n"
                                          "Components: main\nSigned-By: /k.gpg\n\nTypes: deb\nURIs: http://off.example\n"
                                          "Suites: x\nComponents: main\nEnabled: no\n")  # fmt: skip
    (parts / "other.list.disabled").write_text("deb http://disabled.example/ x main\n")
    cfg = debian.AptConfig(tmp_path / "cache", sources_list=tmp_path / "sources.list", sources_parts=parts)
    path = debian.write_private_config(cfg)
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    assert lines == ["deb-src [signed-by=/k.gpg] http://m.example/debian bookworm main contrib",
                     "deb-src [signed-by=/k.gpg] http://m.example/debian-security bookworm-security main"]  # fmt: skip


class FakeApt:
    """Stands in for apt-get: `update` and `source --download-only` without the network."""

    def __init__(self, network: bool = True, known: tuple[str, ...] = ("libfoo-java",)) -> None:
        self.network, self.known, self.calls = network, known, []

    def __call__(self, cmd: list[str], cwd=None, **kw) -> subprocess.CompletedProcess:
        args = cmd[cmd.index("Debug::NoLocking=1") :]
        self.calls.append(args)
        if not self.network:
            return subprocess.CompletedProcess(cmd, 100, "", "E: Failed to fetch http://deb.example/x  "
                                               "Temporary failure resolving 'deb.example'\n")  # fmt: skip
        if "update" in args:
            return subprocess.CompletedProcess(cmd, 0, "Reading package lists...\n", "")
        spec = args[-1]
        name, _, version = spec.partition("=")
        if name not in self.known:
            return subprocess.CompletedProcess(
                cmd, 100, "", f"E: Unable to find a source package for {spec}\n"
            )
        with tarfile.open(Path(cwd) / f"{name}_{version or '1.0'}.orig.tar.xz", "w:xz") as tf:
            for i in range(3):
                data = make_java(700 + i).encode()
                info = tarfile.TarInfo(f"{name}-1.0/src/F{i}.java")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        (Path(cwd) / f"{name}_{version or '1.0'}.debian.tar.xz").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")


def test_debian_packages_unknown_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeApt()
    monkeypatch.setattr(debian.subprocess, "run", fake)
    src = write_project(tmp_path, "local", 3, seed=5)
    cfg = config([src, "debian:libfoo-java=1.0-1", "debian:no-such-package"], tmp_path / "out",
                 cache_dir=tmp_path / "cache")  # fmt: skip
    stats = build(cfg)
    assert stats["projects"] == 2 and stats["files_kept"] == 6
    assert [(f["source"], f["reason"]) for f in stats["failed_sources"]] == [
        ("debian:no-such-package", "unknown_package")
    ]
    assert (tmp_path / "cache" / "debian" / "etc" / "sources.list").read_text().count("deb-src") >= 1
    downloads = sum("source" in c for c in fake.calls)
    cfg.force = True
    build(cfg)  # a re-run does not download finished packages again (only the failed one is retried)
    assert sum("source" in c for c in fake.calls) == downloads + 1


def test_no_network_for_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian.subprocess, "run", FakeApt(network=False))
    src = write_project(tmp_path, "local", 2, seed=6)
    stats = build(config([src, "debian:libfoo-java"], tmp_path / "out", cache_dir=tmp_path / "cache"))
    assert stats["files_kept"] == 2
    assert [(f["source"], f["reason"]) for f in stats["failed_sources"]] == [
        ("debian:libfoo-java", "no_network")
    ]


def test_recipe_packages_are_added(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian.subprocess, "run", FakeApt())
    recipe = tmp_path / "recipe"
    recipe.write_text("# test recipe\nlibfoo-java 1.0-1\n")
    stats = build(config([], tmp_path / "out", recipe=str(recipe), cache_dir=tmp_path / "cache"))
    assert stats["files_kept"] == 3 and stats["projects_per_split"]["train"] == 1


# ------------------------------------------------------------------ CLI


def _kaffee(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kaffee", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_cli_build_and_stats(tmp_path: Path, tiny_tokenizer) -> None:
    root = tmp_path / "checkouts"
    for i in range(4):
        write_project(root, f"app{i}", 3, seed=20 + i)
    out = tmp_path / "corpus"
    proc = _kaffee("corpus", "build", str(root), "--out", str(out), "--projects-from-subdirs", "--num-proc", "1",
                   "--seed", "7", "--no-progress", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "files: 12 kept of 12 seen" in proc.stdout
    proc = _kaffee("corpus", "stats", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "projects: 4" in proc.stdout and "train" in proc.stdout and "valid" in proc.stdout
    tiny_tokenizer.save(tmp_path / "tok.json")
    proc = _kaffee("corpus", "stats", str(out), "--tokenizer", str(tmp_path / "tok.json"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ds = load_corpus(out)
    want = sum(len(tiny_tokenizer.encode(t)) for t in split_of(ds, "train")["text"])
    assert f"train  {want:>15,}" in proc.stdout
    proc = _kaffee(
        "corpus", "build", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "c2"), cwd=tmp_path
    )
    assert proc.returncode == 1
    assert "no Java files found" in proc.stderr and "Traceback" not in proc.stderr
    proc = _kaffee("corpus", "stats", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 1 and "not a corpus directory" in proc.stderr
