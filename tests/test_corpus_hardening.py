"""Issue 15, corpus builder: kills at every rename boundary, symlinks leaving the tree, UTF-16,
unsafe archive names, bad arguments rejected before any work."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from kaffee import atomic_dir
from kaffee.atomic_dir import make_tmp_dir, recover_dir, replace_dir
from kaffee.data import corpus
from kaffee.data.corpus import build, load_corpus, load_stats
from kaffee.data.dedup import MinHashConfig, max_threshold
from kaffee.data.filters import FilterConfig, clean
from kaffee.data.sources import Limits, resolve_path
from kaffee.errors import KaffeeError
from test_corpus_helpers import config, make_java, write_project

OLD = {"a.txt": "old", "sub/b.txt": "old b"}
NEW = {"a.txt": "new", "sub/b.txt": "new b", "sub/c.txt": "new c"}


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}


def _install_kill(step: int, when: str, no_exchange: bool) -> None:
    """In this (forked) process, os._exit(9) before/after the ``step``-th filesystem primitive (rename,
    replace, exchange, rmtree, mkdtemp): no cleanup, as after a SIGKILL."""
    calls = [0]

    def killing(fn: Callable) -> Callable:
        def wrapper(*a, **kw):
            calls[0] += 1
            if calls[0] == step and when == "before":
                os._exit(9)
            result = fn(*a, **kw)
            if calls[0] == step and when == "after":
                os._exit(9)
            return result

        return wrapper

    exchange = (lambda a, b: False) if no_exchange else atomic_dir._exchange
    atomic_dir._exchange = killing(exchange)
    os.rename = killing(os.rename)
    os.replace = killing(os.replace)
    shutil.rmtree = killing(shutil.rmtree)
    tempfile.mkdtemp = killing(tempfile.mkdtemp)


def _run_case(case: dict) -> None:
    """A forked child: set up the kill, run the case, exit 0 if it finished (9 when killed, 3 on an error)."""
    try:
        _install_kill(case["step"], case["when"], case["no_exchange"])
        if case["what"] == "write_new":
            _write_new(Path(case["final"]))
        else:
            build(config([case["src"]], Path(case["final"]), force=True))
        os._exit(0)
    except BaseException:
        os._exit(3)


def kill_runs_main() -> None:
    """Entry point of a fresh interpreter: cases (JSON) on stdin, their exit codes on stdout.

    Each case gets its starting state, then runs in a child forked from this process, which has no
    threads yet (forking pytest's own process, with torch and thread pools loaded, can deadlock the
    child). Stops after the first case that finishes; a child that hangs is killed (exit code 124).
    """
    codes = []
    for case in json.loads(sys.stdin.read()):
        final = Path(case["final"])
        if case.get("copy_from"):
            shutil.copytree(case["copy_from"], final)
        else:
            _write_tree(final, OLD)
        pid = os.fork()
        if pid == 0:
            _run_case(case)
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            codes.append(124)
            break
        codes.append(os.waitstatus_to_exitcode(done[1]))
        if codes[-1] != 9:
            break
    print(json.dumps(codes))


CHILD_TIMEOUT_S = 60


def _killed_runs(cases: list[dict]) -> list[int]:
    """Run ``cases`` (see kill_runs_main) in a fresh interpreter; their exit codes, in order."""
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_corpus_hardening as t; t.kill_runs_main()"
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps(cases), capture_output=True, text=True,
                       timeout=240, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    codes = json.loads(r.stdout.strip().splitlines()[-1])
    assert all(c in (0, 9) for c in codes), f"a child failed: {codes}"
    return codes


def _write_new(final: Path) -> None:
    tmp = make_tmp_dir(final)
    _write_tree(tmp, NEW)
    replace_dir(tmp, final)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("no_exchange", [False, True], ids=["exchange", "two-renames"])
def test_replace_dir_killed_at_every_step(tmp_path: Path, no_exchange: bool) -> None:
    cases = [{"what": "write_new", "step": step, "when": when, "no_exchange": no_exchange,
              "final": str(tmp_path / f"{step}-{when}" / "out")}
             for step in range(1, 20) for when in ("before", "after")]  # fmt: skip
    codes = _killed_runs(cases)
    assert codes[-1] == 0, "replace_dir never finished"
    seen = set()
    for case, code in zip(cases, codes, strict=False):
        final, where = Path(case["final"]), (case["step"], case["when"])
        if not no_exchange:  # with the atomic exchange, final is complete at every instant
            assert _tree(final) in (OLD, NEW), where
        recover_dir(final)
        after = _tree(final)
        assert after in (OLD, NEW), where
        assert os.listdir(final.parent) == ["out"], where  # no leftovers
        seen.add("new" if after == NEW else "old")
        if code == 0:
            assert after == NEW
    assert seen == {"old", "new"} and cases[len(codes) - 1]["step"] >= 3


def test_replace_dir_into_missing_final_and_recover_keeps_live_writers(tmp_path: Path) -> None:
    final = tmp_path / "out"
    tmp = make_tmp_dir(final)
    _write_tree(tmp, NEW)
    recover_dir(final)  # our own (live) tmp dir is not a leftover
    assert tmp.is_dir()
    replace_dir(tmp, final)
    assert _tree(final) == NEW and os.listdir(tmp_path) == ["out"]


def test_recover_restores_old_dir_left_by_a_kill(tmp_path: Path) -> None:
    """The state the pre-fix builder left when killed right after os.replace(out, old)."""
    dead = _dead_pid()
    _write_tree(tmp_path / f".out.old-{dead}", OLD)
    _write_tree(tmp_path / f".out.tmp-{dead}", {"half": "written"})
    _write_tree(tmp_path / f".other.old-{dead}", OLD)  # another directory's: not ours to touch
    done = recover_dir(tmp_path / "out")
    assert _tree(tmp_path / "out") == OLD and len(done) == 2
    assert sorted(os.listdir(tmp_path)) == [f".other.old-{dead}", "out"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # not os.fork(): pytest's process has threads
    proc.wait(timeout=60)
    return proc.pid


def test_leftovers_with_our_own_pid_but_no_lock_are_cleaned(tmp_path: Path) -> None:
    """In a container the PID recurs (PID 1 under docker): a killed run's leftovers carry the PID of the
    run that recovers them. No live process holds their lock, so they are cleaned, and the old one restored."""
    me = os.getpid()
    _write_tree(tmp_path / f".out.old-{me}", OLD)
    _write_tree(tmp_path / f".out.tmp-{me}-k1ll3d", {"half": "written"})
    _write_tree(tmp_path / f".out.trash-{me}-x9/d", {"half": "deleted"})
    done = recover_dir(tmp_path / "out")
    assert _tree(tmp_path / "out") == OLD and len(done) == 3, done
    assert os.listdir(tmp_path) == ["out"]
    _write_tree(tmp_path / f".out.old-{me}", NEW)  # final exists: an old leftover is deleted, not restored
    assert recover_dir(tmp_path / "out") == [f"removed .out.old-{me}"]
    assert _tree(tmp_path / "out") == OLD and os.listdir(tmp_path) == ["out"]


@pytest.mark.timeout(120)
def test_leftover_locked_by_a_live_process_is_kept(tmp_path: Path) -> None:
    """A dead PID in the name does not matter either: a live writer holding the lock keeps its directory."""
    tmp = tmp_path / f".out.tmp-{_dead_pid()}-live"
    _write_tree(tmp, {"being": "written"})
    hold = "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_SH); print(1, flush=True); sys.stdin.read()"
    proc = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout.readline().strip() == b"1"
        assert recover_dir(tmp_path / "out") == [] and _tree(tmp) == {"being": "written"}
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert recover_dir(tmp_path / "out") == [f"removed {tmp.name}"] and os.listdir(tmp_path) == []


# ------------------------------------------------------------------ corpus build killed while writing


@pytest.mark.timeout(400)
@pytest.mark.parametrize("no_exchange", [False, True], ids=["exchange", "two-renames"])
def test_corpus_build_killed_at_every_rename(tmp_path: Path, no_exchange: bool) -> None:
    src = write_project(tmp_path, "p", 3, seed=3)
    first = tmp_path / "first"
    build(config([src], first))
    (src / "Extra.java").write_text(make_java(99))
    cases = [{"what": "build", "step": step, "when": "after", "no_exchange": no_exchange, "src": str(src),
              "copy_from": str(first), "final": str(tmp_path / f"k{step}" / "out")} for step in range(1, 40)]  # fmt: skip
    codes = _killed_runs(cases)
    outcomes = []
    for case in cases[: len(codes)]:
        out, step = Path(case["final"]), case["step"]
        cfg = config([src], out, force=True)
        if not no_exchange:
            assert load_corpus(out).num_rows in (3, 4), step
        corpus._check_out(cfg)  # what the next build does first
        rows = load_corpus(out).num_rows
        assert rows in (3, 4) and load_stats(out)["files_kept"] == rows, step
        assert os.listdir(out.parent) == ["out"], step
        outcomes.append(rows)
    assert codes[-1] == 0, "the build never finished"
    assert outcomes[0] == 3 and outcomes[-1] == 4 and len(outcomes) >= 3


# ------------------------------------------------------------------ bad arguments, before any work


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--near-dup-threshold", "0.99"], "at most 0.98 with 128 MinHash permutations"),
        (["--near-dup-threshold", "1.5"], "must be above 0 and at most 0.98"),
        (["--near-dup-threshold", "0"], "must be above 0"),
        (["--num-proc", "0"], "--num-proc: must be at least 1"),
        (["--out", "{file}/corpus"], "is not a directory"),
        (["--out", "{file}"], "exists and is not a directory"),
    ],
)
def test_bad_arguments_are_rejected_up_front(tmp_path: Path, args: list[str], message: str) -> None:
    src = write_project(tmp_path, "p", 2, seed=1)
    (tmp_path / "file").write_text("a regular file")
    args = [a.format(file=tmp_path / "file") for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-m", "kaffee", "corpus", "build", str(src), "--no-progress", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    assert (tmp_path / "file").read_text() == "a regular file"


def test_bad_config_is_rejected_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(KaffeeError, match="at most 0.98"):
        config([tmp_path], tmp_path / "out", minhash=MinHashConfig(threshold=0.99))
    (tmp_path / "file").write_text("x")
    with pytest.raises(KaffeeError, match="is not a directory"):
        config([tmp_path], tmp_path / "file" / "out")
    assert max_threshold(128) == 0.98 and max_threshold(64) == 0.96


# ------------------------------------------------------------------ symlinks leaving the tree


def test_symlinks_never_leave_the_source_tree(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "Secret.java").write_text(make_java(500))
    proj = write_project(tmp_path, "p", 2, seed=31)
    java = proj / "src" / "main" / "java"
    (proj / "Passwd.java").symlink_to("/etc/passwd")
    (proj / "Secret.java").symlink_to(outside / "Secret.java")
    (proj / "ext").symlink_to(outside)  # a directory outside
    (proj / "Dangling.java").symlink_to(outside / "Nope.java")
    (java / "Alias.java").symlink_to(java / "File0.java")  # inside the tree: read once, under one path
    (proj / "same").symlink_to(java)  # inside the tree, a directory: walked once
    files = list(resolve_path(str(proj), Limits()).iter_files())
    reasons = {f.path: f.reason for f in files}
    assert reasons == {
        "Dangling.java": "symlink_outside_source",
        "Passwd.java": "symlink_outside_source",
        "Secret.java": "symlink_outside_source",
        "ext": "symlink_outside_source",
        "same/Alias.java": None,
        "same/File1.java": None,
    }  # fmt: skip (first path in walk order)
    stats = build(config([proj], tmp_path / "out"))
    assert stats["files_seen"] == 6 and stats["dropped"] == {"symlink_outside_source": 4}
    text = "\n".join(load_corpus(tmp_path / "out")["text"])
    assert make_java(500) not in text and "root:" not in text


# ------------------------------------------------------------------ archive member names


UNSAFE_NAMES = {
    "../../../../tmp/x/Slip.java": None,
    "lib/../../Up.java": None,
    "/abs/Abs.java": "abs/Abs.java",
    "C:\\win\\src\\Win.java": "win/src/Win.java",
    "C:/drive/Drive.java": "drive/Drive.java",
    "./a/./b/../Dots.java": "a/Dots.java",
    "//double//Slash.java": "double/Slash.java",
    "ctl/Bad\x1b[2J.java": None,
}


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_archive_member_names_are_made_safe(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"evil.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for i, name in enumerate(UNSAFE_NAMES):
                zf.writestr(zipfile.ZipInfo(name), make_java(600 + i))
    else:
        with tarfile.open(path, "w") as tf:
            for i, name in enumerate(UNSAFE_NAMES):
                data = make_java(600 + i).encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    files = list(resolve_path(str(path), Limits()).iter_files())
    kept = sorted(f.path for f in files if f.data is not None)
    assert kept == sorted(p for p in UNSAFE_NAMES.values() if p)
    assert [f.reason for f in files if f.data is None] == ["unsafe_path"] * 3
    assert all(".." not in f.path.split("/") and not f.path.startswith("/") for f in files)


# ------------------------------------------------------------------ decoding: UTF-16, NULs anywhere

GOOD = make_java(700).replace("keeps track", "g\u00e8re l'\u00e9tat \u65e5\u672c")


@pytest.mark.parametrize(
    "data",
    [
        GOOD.encode("utf-16-le"),
        GOOD.encode("utf-16-be"),
        b"\xff\xfe" + GOOD.encode("utf-16-le"),
        b"\xfe\xff" + GOOD.encode("utf-16-be"),
        b"\xef\xbb\xbf" + GOOD.encode(),
        GOOD.replace("\n", "\r\n").encode("utf-16"),  # BOM in native order, CRLF
    ],
    ids=["le", "be", "le-bom", "be-bom", "utf8-bom", "crlf"],
)
def test_utf16_and_boms_are_decoded(data: bytes) -> None:
    out = clean(data, FilterConfig())
    assert out.reason is None and out.text == GOOD and not out.latin1


@pytest.mark.parametrize(
    "data",
    [
        GOOD.encode()
        + b"// an ordinary comment line, repeated\n" * 300
        + b"// \x00 late NUL\n",  # after 8 KB
        GOOD.encode("utf-16-le") + b"\x00\x00",  # a NUL character in UTF-16 text
        GOOD.encode("utf-16-le")[:-1],  # odd length
        b"\xff\xfe"
        + 'class A { String s = "\ud800"; }'.encode("utf-16-le", "surrogatepass") * 20,  # lone surrogate
        b"\xca\xfe\xba\xbe\0\0\0" * 100,
    ],
    ids=["late-nul", "utf16-nul", "odd-length", "lone-surrogate", "class-file"],
)
def test_nul_anywhere_and_broken_utf16_are_binary(data: bytes) -> None:
    assert clean(data, FilterConfig()).reason == "binary"
