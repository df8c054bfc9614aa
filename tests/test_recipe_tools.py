"""Recipe generation offline: Sources/Packages stanzas (with sections), the outcome log, the held-out apps."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from kaffee.data import debian, recipe_tools
from kaffee.data.recipe_tools import Outcome
from kaffee.data.sources import load_recipe
from test_corpus_helpers import make_java


def stanza(name: str, version: str = "1.0-1", section: str = "misc", bins: tuple[tuple[str, str], ...] = (),
           deps: str = "debhelper-compat (= 13), javahelper", size: int = 200_000) -> str:  # fmt: skip
    bins = bins or ((f"lib{name}-java", "java"),)
    return "\n".join([
        f"Package: {name}",
        f"Binary: {', '.join(b[0] for b in bins)}",
        f"Version: {version}",
        "Maintainer: Debian Java Maintainers <pkg-java-maintainers@lists.alioth.debian.org>",
        f"Build-Depends: {deps}",
        "Files:",
        *([f" 0123456789abcdef0123456789abcdef {size} {name}_{version.split('-')[0]}.orig.tar.xz"] if size else []),
        f" 0123456789abcdef0123456789abcdef 2000 {name}_{version}.debian.tar.xz",
        "Package-List:",
        *(f" {b[0]} deb {b[1]} optional arch={b[2] if len(b) > 2 else 'all'}" for b in bins),
        f"Section: {section}",
    ])  # fmt: skip


STANZAS = [
    stanza("jedit", section="editors", bins=(("jedit", "editors"),)),
    stanza("josm", section="utils", bins=(("josm", "utils"), ("josm-l10n", "localization"))),
    stanza("triplea", section="games", bins=(("triplea", "games"),)),
    stanza(
        "commons-foo",
        section="java",
        bins=(("libcommons-foo-java", "java"), ("libcommons-foo-java-doc", "doc")),
    ),
    stanza("netbeans", section="misc", bins=(("libnb-platform-java", "java"),)),
    stanza("sci-lib", section="science", bins=(("libsci-java", "science"),)),  # a library, even in science
    stanza(
        "bindings", section="misc", bins=(("tclbind", "interpreters", "any"), ("libbind-java", "java"))
    ),  # C tools
    stanza(
        "pb", section="devel", bins=(("elpa-pb-mode", "editors"), ("libpb-java", "java"))
    ),  # an Emacs mode
    stanza("maven", section="java", bins=(("libmaven3-core-java", "java"), ("maven", "java"))),
    stanza("pyonly", deps="debhelper-compat (= 13), python3"),  # not built with Java tooling
    stanza("huge", size=99 << 20),  # over --max-mb
    stanza("commons-foo", version="1.2-1", section="java", bins=(("libcommons-foo-java", "java"),)),  # newer
    # a security upload lists only its debian.tar: the size comes from the main archive's stanza
    stanza(
        "commons-foo",
        version="1.2-1+deb12u1",
        section="java",
        bins=(("libcommons-foo-java", "java"),),
        size=0,
    ),
]


def test_sections_and_candidates() -> None:
    by = {c.name: c for c in recipe_tools.candidates_from_stanzas(STANZAS, 30 << 20)}
    assert "pyonly" not in by and by["huge"].skip == "too_large" and not by["jedit"].skip
    assert by["commons-foo"].size == 200_000 and not by["commons-foo"].skip
    assert (by["jedit"].section, by["jedit"].app) == ("editors", True)
    assert (by["josm"].section, by["josm"].app) == ("utils", True)
    assert (by["triplea"].section, by["triplea"].app) == ("games", True)
    assert (by["commons-foo"].section, by["commons-foo"].app, by["commons-foo"].version) == (
        "java",
        False,
        "1.2-1+deb12u1",
    )
    assert (by["netbeans"].section, by["netbeans"].app) == ("java", False)  # misc source: its binaries decide
    assert (by["sci-lib"].section, by["sci-lib"].app) == ("science", False)  # library-shaped binary
    assert not by["bindings"].app and not by["pb"].app
    assert not by["maven"].app  # section java: tools filed there are missed (precision first, see the docs)
    assert recipe_tools.package_list(STANZAS[1]) == [
        ("josm", "utils", "all"),
        ("josm-l10n", "localization", "all"),
    ]


def _row(name: str, outcome: str = "ok", app: int = 0, n: int = 50) -> Outcome:
    return Outcome(
        name, "1.0-1", "app" if app else "java-lib", "games" if app else "java", app, outcome, n, 0.5
    )


def test_outcome_log_round_trip(tmp_path: Path) -> None:
    path = recipe_tools.outcomes_path(tmp_path / "debian-java-all")
    assert path.name == "debian-java-all.outcomes.tsv"
    rows = [_row("b", "mirror_404", n=0), _row("a"), _row("b", "ok", n=7)]  # the last row of a name wins
    recipe_tools.write_outcomes(path, rows)
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == recipe_tools.OUTCOME_COLUMNS == [
        "name", "version", "group", "section", "app", "outcome", "java_files", "mb"
    ]  # fmt: skip
    assert lines[1:] == [
        "a\t1.0-1\tjava-lib\tjava\t0\tok\t50\t0.5",
        "b\t1.0-1\tjava-lib\tjava\t0\tok\t7\t0.5",
    ]
    assert recipe_tools.read_outcomes(path) == [_row("a"), _row("b", "ok", n=7)]
    assert recipe_tools.read_outcomes(tmp_path / "missing.tsv") == []


def test_holdout_rule_keeps_apps_out_of_training(tmp_path: Path) -> None:
    rows = [_row(f"app{i}", app=1) for i in range(40)] + [_row(f"lib{i}") for i in range(40)]
    rows += [_row("app-404", "mirror_404", app=1, n=0)]
    held = recipe_tools.holdout(rows, 0.25, seed=0)
    assert held and all(n.startswith("app") for n in held) and "app-404" not in held
    assert 4 <= len(held) <= 18  # about a quarter of 40
    assert recipe_tools.holdout(rows, 1.0, 0) == {f"app{i}" for i in range(40)}
    assert recipe_tools.holdout(rows, 0.0, 0) == set()
    # chosen by name alone: other packages coming or going does not move the held-out set
    assert recipe_tools.holdout(rows[:10] + rows[40:], 0.25, 0) == held & {f"app{i}" for i in range(10)}
    train, test = tmp_path / "train", tmp_path / "heldout"
    n_train, n_test = recipe_tools.write_recipes(rows, train, test, 0.25, 0, reference=[sorted(held)[0]])
    train_names = {n for n, _ in load_recipe(str(train))}
    test_names = {n for n, _ in load_recipe(str(test))}
    assert test_names == held and not train_names & held and "app-404" not in train_names
    assert (n_train, n_test) == (80 - len(held), len(held)) and len(train_names) == n_train
    assert "seen-by-default-model" in test.read_text() and all(v for _, v in load_recipe(str(test)))


def test_generate_tries_every_candidate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reachable = {"jedit": 60, "josm": 55, "commons-foo": 40, "maven": 3, "triplea": 70}  # .java files each

    def fetch(cfg: debian.AptConfig, name: str, version: str | None = None) -> list[Path]:
        if name not in reachable:
            raise debian.DebianError("mirror_404", f"{name}: 404 Not Found")
        folder = debian.package_dir(cfg, name, version)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.orig.tar.gz"
        with tarfile.open(path, "w:gz") as tf:
            for i in range(reachable[name]):
                data = make_java(i).encode()
                info = tarfile.TarInfo(f"{name}/src/F{i}.java")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return [path]

    monkeypatch.setattr(debian, "update", lambda cfg: None)
    monkeypatch.setattr(debian, "read_sources_index", lambda cfg: iter(STANZAS))
    monkeypatch.setattr(debian, "fetch", fetch)
    out, held_out = tmp_path / "recipes" / "train", tmp_path / "recipes" / "heldout"
    out.parent.mkdir()
    argv = ["--cache-dir", str(tmp_path / "cache"), "--jobs", "2", "generate", "--out", str(out),
            "--heldout-out", str(held_out), "--holdout-fraction", "1.0"]  # fmt: skip
    assert recipe_tools.main(argv) == 0
    rows = {r.name: r for r in recipe_tools.read_outcomes(recipe_tools.outcomes_path(out))}
    assert {n: r.outcome for n, r in rows.items()} == {
        "jedit": "ok", "josm": "ok", "triplea": "ok", "commons-foo": "ok", "maven": "too_few_java_files",
        "netbeans": "mirror_404", "sci-lib": "mirror_404", "huge": "too_large", "bindings": "mirror_404",
        "pb": "mirror_404",
    }  # fmt: skip
    assert rows["jedit"].java_files == 60 and rows["jedit"].app == 1 and rows["jedit"].section == "editors"
    assert {n for n, _ in load_recipe(str(held_out))} == {"jedit", "josm", "triplea"}  # every app, fraction 1
    assert load_recipe(str(out)) == [("commons-foo", "1.2-1+deb12u1")]
    # --resume: final outcomes are not tried again; `recipes` rewrites both files offline
    calls = []
    monkeypatch.setattr(
        debian, "fetch", lambda cfg, name, version=None: calls.append(name) or fetch(cfg, name, version)
    )
    assert recipe_tools.main(argv + ["--resume"]) == 0 and calls == []
    rec = ["recipes", "--out", str(out), "--heldout-out", str(held_out), "--holdout-fraction", "0"]
    assert recipe_tools.main(rec) == 0 and load_recipe(str(held_out)) == []
    assert {n for n, _ in load_recipe(str(out))} == {"jedit", "josm", "triplea", "commons-foo"}


def test_binary_config_and_candidates(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb [signed-by=/k.gpg] http://m.example/debian bookworm main\n")
    cfg = debian.AptConfig(tmp_path / "c", sources_list=tmp_path / "sources.list", sources_parts=tmp_path / "none",
                           binary=True)  # fmt: skip
    lines = [ln for ln in debian.write_private_config(cfg).read_text().splitlines() if not ln.startswith("#")]
    assert lines == ["deb [signed-by=/k.gpg] http://m.example/debian bookworm main"]
    assert cfg.src_dir.name == "deb"
    pkgs = [
        "Package: openjdk-17-source\nVersion: 17.0.1-1\nSection: java\nSize: 47000000\nInstalled-Size: 50000\n"
        "Depends: openjdk-17-jdk\nDescription: OpenJDK Development Kit (JDK) source files",
        "Package: uima-examples\nVersion: 2.10-1\nSection: java\nSize: 200000\nInstalled-Size: 700\n"
        "Depends: libuima-core-java\nDescription: Examples of UIMA components",
        "Package: libfoo-dev-examples\nVersion: 1\nSection: libdevel\nDepends: libc6\nDescription: C examples",
        "Package: libbar-java\nVersion: 1\nSection: java\nDescription: a jar, no sources",
    ]
    names = [c.name for c in recipe_tools.binary_candidates_from_stanzas(pkgs)]
    assert names == ["openjdk-17-source", "uima-examples"]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_extract_java_from_deb(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: demo-examples\nVersion: 1.0\nArchitecture: all\nMaintainer: x <x@example.org>\nDescription: d\n"
    )
    ex = root / "usr/share/doc/demo-examples/examples"
    ex.mkdir(parents=True)
    (ex / "Hello.java").write_text(make_java(1))
    (ex / "README").write_text("not java")
    jdk = root / "usr/lib/jvm/openjdk-17"
    jdk.mkdir(parents=True)
    with zipfile.ZipFile(jdk / "src.zip", "w") as zf:
        zf.writestr("java.base/java/lang/Object.java", make_java(2))
        zf.writestr("../evil/Escape.java", make_java(3))  # unsafe member name: skipped
    (root / "usr/src").mkdir(parents=True)
    with tarfile.open(root / "usr/src/demo.tar.gz", "w:gz") as tf:  # as bsh-src ships its sources
        data = make_java(4).encode()
        info = tarfile.TarInfo("bsh/src/Interp.java")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    deb = tmp_path / "demo.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(root), str(deb)], check=True,
                   capture_output=True)  # fmt: skip
    dest = tmp_path / "java" / "demo-examples"
    assert debian.extract_java(deb, dest) == 3
    found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert found == ["demo/bsh/src/Interp.java", "src/java.base/java/lang/Object.java",
                     "usr/share/doc/demo-examples/examples/Hello.java"]  # fmt: skip
    assert not (tmp_path / "java" / "evil").exists()
