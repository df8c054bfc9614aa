"""Each source kind, and the bad inputs met at discovery (missing, unreadable, huge, bombs, loops)."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from kaffee.data import sources
from kaffee.data.sources import Limits, SourceError, find_jdk_src_zip, resolve_path
from test_corpus_helpers import make_java, write_project


def _files(src: sources.Source) -> list[sources.RawFile]:
    return list(src.iter_files())


def _kept(src: sources.Source) -> dict[str, bytes]:
    return {f.path: f.data for f in _files(src) if f.data is not None}


def test_directory_source(tmp_path: Path) -> None:
    proj = write_project(tmp_path, "shop", 3, seed=1)
    (proj / "README.md").write_text("not java")
    src = resolve_path(str(proj), Limits())
    files = _files(src)
    assert src.kind == "dir" and src.project == "shop"
    assert sorted(f.path for f in files) == [f"src/main/java/File{i}.java" for i in range(3)]
    assert all(f.project == "shop" and f.data for f in files)


def test_git_checkout_skips_git_dir(tmp_path: Path) -> None:
    proj = write_project(tmp_path, "repo", 2, seed=2)
    git = proj / ".git" / "objects"
    git.mkdir(parents=True)
    (git / "Stale.java").write_text(make_java(99))
    paths = [f.path for f in _files(resolve_path(str(proj), Limits()))]
    assert len(paths) == 2 and not any(".git" in p for p in paths)


def test_projects_from_subdirs(tmp_path: Path) -> None:
    write_project(tmp_path / "all", "alpha", 2, seed=3)
    write_project(tmp_path / "all", "beta", 1, seed=4)
    src = resolve_path(str(tmp_path / "all"), Limits(), projects_from_subdirs=True)
    assert sorted({f.project for f in _files(src)}) == ["all/alpha", "all/beta"]


def _make_archive(tmp_path: Path, suffix: str, members: dict[str, bytes]) -> Path:
    path = tmp_path / f"lib-1.0{suffix}"
    if suffix in (".zip", ".jar"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        mode = {".tar.gz": "w:gz", ".tar.xz": "w:xz", ".tar.bz2": "w:bz2"}[suffix]
        with tarfile.open(path, mode) as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("suffix", [".zip", ".jar", ".tar.gz", ".tar.xz", ".tar.bz2"])
def test_archive_sources(tmp_path: Path, suffix: str) -> None:
    members = {"lib-1.0/src/A.java": make_java(1).encode(), "lib-1.0/src/B.java": make_java(2).encode(),
               "lib-1.0/README": b"readme", "lib-1.0/lib/x.class": b"\xca\xfe\xba\xbe"}  # fmt: skip
    src = resolve_path(str(_make_archive(tmp_path, suffix, members)), Limits())
    assert src.project == "lib-1.0"
    assert _kept(src) == {k: v for k, v in members.items() if k.endswith(".java")}


def test_jdk_src_zip_found_and_split_by_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "fake-jdk"
    (home / "lib").mkdir(parents=True)
    _make_archive(tmp_path, ".zip", {"java.base/java/lang/Foo.java": make_java(5).encode(),
                                     "java.desktop/java/awt/Bar.java": make_java(6).encode()})  # fmt: skip
    os.replace(tmp_path / "lib-1.0.zip", home / "lib" / "src.zip")
    monkeypatch.setenv("JAVA_HOME", str(home))
    assert find_jdk_src_zip() == (home / "lib" / "src.zip").resolve()
    src = sources.resolve_jdk("jdk", Limits())
    assert sorted(f.project for f in _files(src)) == ["openjdk-src/java.base", "openjdk-src/java.desktop"]


def test_no_jdk_gives_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "find_jdk_src_zip", lambda: None)
    with pytest.raises(SourceError, match="no JDK src.zip found"):
        sources.resolve_jdk("jdk", Limits())


def test_dangling_src_zip_symlink_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    home = tmp_path / "jvm" / "broken"
    (home / "lib").mkdir(parents=True)
    (home / "lib" / "src.zip").symlink_to(tmp_path / "missing.zip")
    assert find_jdk_src_zip(java_home=str(home), jvm_glob=str(tmp_path / "jvm" / "*")) is None
    good = tmp_path / "jvm" / "good" / "lib"
    good.mkdir(parents=True)
    (good / "src.zip").write_bytes(b"")
    found = find_jdk_src_zip(java_home=str(home), jvm_glob=str(tmp_path / "jvm" / "*"))
    assert found is not None and found.parent == good.resolve()


def test_nonexistent_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or directory") as err:
        resolve_path(str(tmp_path / "missing"), Limits())
    assert err.value.reason == "not_found"


def test_unsupported_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SourceError, match="not a directory"):
        resolve_path(str(tmp_path / "notes.txt"), Limits())


def test_huge_file_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = write_project(tmp_path, "p", 1, seed=7)
    big = proj / "Huge.java"
    with open(big, "wb") as fh:  # a sparse 200 MB file: costs nothing on disk
        fh.truncate(200 * 1024 * 1024)
    files = {f.path: f for f in _files(resolve_path(str(proj), Limits()))}
    assert files["Huge.java"].data is None and files["Huge.java"].reason == "too_large"
    assert files["src/main/java/File0.java"].data


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = write_project(tmp_path, "p", 2, seed=8)
    locked = proj / "src" / "main" / "java" / "File1.java"
    locked.chmod(0)
    real_open = open

    def fake_open(path, *a, **kw):  # root ignores chmod 000: simulate the permission error
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(sources, "open", fake_open, raising=False)
    files = {f.path: f for f in _files(resolve_path(str(proj), Limits()))}
    assert files["src/main/java/File1.java"].reason == "unreadable"
    assert files["src/main/java/File0.java"].data


def test_symlink_loops(tmp_path: Path) -> None:
    proj = write_project(tmp_path, "p", 1, seed=9)
    (proj / "src" / "loop").symlink_to(proj)  # directory loop
    (proj / "Self.java").symlink_to(proj / "Self.java")  # file pointing at itself
    files = _files(resolve_path(str(proj), Limits()))
    reasons = {f.path: f.reason for f in files}
    assert reasons["src/loop"] == "symlink_loop"
    assert reasons["Self.java"] == "symlink_loop"
    assert reasons["src/main/java/File0.java"] is None


def test_zip_bomb_member_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Good.java", make_java(10))
        with zf.open("Bomb.java", "w", force_zip64=True) as fh:  # 64 MB of zeros -> ~64 KB compressed
            chunk = b"\0" * (1 << 20)
            for _ in range(64):
                fh.write(chunk)
    assert path.stat().st_size < 1 << 20
    files = {f.path: f for f in _files(resolve_path(str(path), Limits()))}
    assert files["Bomb.java"].reason == "archive_bomb" and files["Bomb.java"].data is None
    assert files["Good.java"].data


def test_tar_bomb_stops_expansion(tmp_path: Path) -> None:
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in (("A.java", make_java(11).encode()), ("zeros.bin", b"\0" * (8 << 20)),
                           ("B.java", make_java(12).encode())):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    limits = Limits(ratio_floor_bytes=1 << 20, max_ratio=100)
    files = _files(resolve_path(str(path), limits))
    assert [f.path for f in files if f.data] == ["A.java"]
    assert any(f.reason == "archive_bomb" for f in files)


def test_corrupt_archive(tmp_path: Path) -> None:
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(SourceError, match="not a readable zip"):
        _files(resolve_path(str(bad), Limits()))


def test_load_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "mine"
    recipe.write_text("# comment\nfoo 1.0-1  # a library\n\nbar\n")
    assert sources.load_recipe(str(recipe)) == [("foo", "1.0-1"), ("bar", None)]
    shipped = sources.load_recipe("debian-java")
    assert len(shipped) >= 200 and all(v for _, v in shipped)
    with pytest.raises(SourceError, match="unknown recipe"):
        sources.load_recipe("no-such-recipe")
