"""Regenerate or verify the Debian recipes (data/recipes/).

    python -m kaffee.data.recipe_tools generate [--count N] [--resume] [--out data/recipes/debian-java-all]
    python -m kaffee.data.recipe_tools recipes [--out data/recipes/debian-java-all]   # offline, from the TSV
    python -m kaffee.data.recipe_tools verify [RECIPE]
    python -m kaffee.data.recipe_tools binaries [--fetch] [--out-dir DIR]              # Java in binary .debs

``generate`` queries the Sources index through the private apt configuration (debian.py),
keeps source packages that build with Java tooling and are not giant non-Java projects,
and tries to download *every* candidate (``--count`` stops early): the mirror answers 404
for most of them, so a count says little about what is reachable. Each candidate's outcome
(ok, mirror_404, too_few_java_files, too_large, ...) goes to ``OUT.outcomes.tsv`` as it
completes (``--resume`` skips the final outcomes already there). From that log two recipes
are written: the held-out application packages (``debian-java-heldout-apps``: whole
packages for evaluation on code unlike libraries, never trained on) and the training recipe
``OUT`` (every other package that downloads). Applications are told from libraries by the
Debian sections of their binary packages (``package_section``); the held-out set is a
seeded hash-fraction of the applications (``holdout``). The downloads stay in the cache,
so a later ``kaffee corpus build --recipe debian-java-all`` reuses them.

``binaries`` lists the binary packages that ship Java sources (``*-source``, ``*-sources``,
``*-examples``, ``*-demo``, ``openjdk-*-source`` with its src.zip) from the Packages index
and, with ``--fetch``, downloads and unpacks them into a directory of .java files, one
folder per package, for ``kaffee corpus build DIR --projects-from-subdirs``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import re
import sys
import tarfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, fields
from pathlib import Path

from kaffee.data import debian
from kaffee.data.sources import RECIPES_DIR, is_java, load_recipe

log = logging.getLogger("kaffee.recipe_tools")

JAVA_TOOLING = re.compile(
    r"\b(javahelper|maven-debian-helper|gradle-debian-helper|maven-repo-helper|ant|default-jdk|default-jdk-headless)\b"
)
# Giant or mostly non-Java packages that happen to build with Java tooling.
EXCLUDE = re.compile(
    r"^(openjdk-.*|libreoffice.*|texlive.*|ceph|erlang|r-base|octave|opencv|scilab|zabbix|csound|emboss|"
    r"geotranz|sumo|vtk.*|paraview|gdal|swig.*|llvm.*|gcc.*|mysql.*|mariadb.*|postgresql.*|"
    r"dojo|libjs-.*|node-.*|ruby-.*|python-.*|php.*|perl.*|octave-.*|r-cran-.*|pd-.*)$"
)
# Well-known projects listed first when present (libraries, tools, applications, test frameworks).
PREFERRED = (
    "guava-libraries libspring-java netty jetty9 apache-log4j2 checkstyle josm junit4 junit5 testng mockito "
    "libhamcrest-java easymock assertj-core libcommons-lang3-java commons-io libcommons-collections4-java "
    "jackson-databind jackson-core libgoogle-gson-java antlr4 maven ant tomcat9 jsoup sweethome3d jedit "
    "libpdfbox2-java lucene8 groovy h2database hsqldb derby bouncycastle jgit freeplane jabref zookeeper "
    "activemq jline3 picocli javacc jmock2 xalan commons-math3 logback rhino jaxb protobuf snakeyaml trove3 "
    "jtidy jsch libjoda-time-java lombok"
).split()

# Debian sections of end-user programs (binary package sections; Debian policy 2.4). A source package
# is an application when one of its binaries that is not library-shaped (NON_APP_BINARY) sits in one.
APP_SECTIONS = frozenset(
    "games editors web httpd graphics x11 net utils science math devel vcs text tex sound video electronics "
    "database admin mail comm hamradio education gnome kde interpreters".split()
)
NON_APP_BINARY = re.compile(
    r"^(lib|elpa-|python3?-|ruby-|node-|php-|r-cran-|tcl|gir1)|-(java|doc|docs|javadoc|jni|dev|source|sources|api|l10n|common|data|el)$"
)
# Outcomes that will not change on a retry (a --resume run skips them); the rest are retried. The size
# verdicts (too_small, too_large) are recomputed from the index on every run.
FINAL_OUTCOMES = frozenset({"ok", "too_few_java_files", "mirror_404", "unknown_package", "no_tarball"})
HELDOUT_RECIPE = "debian-java-heldout-apps"


@dataclass
class Candidate:
    """One source package from the Sources index."""

    name: str  # source package name
    version: str  # version in the index
    size: int  # bytes of its upstream tarball(s)
    group: str  # variety group: preferred | java-lib | app | other-lib
    section: str = ""  # Debian section that classified it (package_section)
    app: bool = False  # an application (by section), candidate for the held-out evaluation set
    skip: str = ""  # why it is not tried at all (too_small | too_large), "" when it is tried


@dataclass
class Outcome:
    """One row of the outcome log (OUT.outcomes.tsv)."""

    name: str
    version: str
    group: str
    section: str
    app: int  # 1 = application by section
    outcome: str  # ok | too_few_java_files | mirror_404 | unknown_package | too_large | too_small | ...
    java_files: int  # .java files in its upstream tarballs (0 when not downloaded)
    mb: float  # upstream tarball size from the index (MB)


OUTCOME_COLUMNS = [f.name for f in fields(Outcome)]


def _field(stanza: str, name: str) -> str:
    m = re.search(rf"^{name}:(.*(?:\n[ \t].*)*)", stanza, re.M)
    return m.group(1).strip() if m else ""


def _newer(a: str, b: str) -> bool:
    """Rough Debian version order (enough to pick bookworm-security over bookworm)."""
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", a)] > [
        int(x) if x.isdigit() else x for x in re.split(r"(\d+)", b)
    ]


def package_list(stanza: str) -> list[tuple[str, str, str]]:
    """(binary package, section, arch) from a Sources stanza's Package-List (``contrib/doc`` -> ``doc``)."""
    out = []
    for line in _field(stanza, "Package-List").splitlines():
        parts = line.split()
        if len(parts) >= 3:
            arch = next((p[5:] for p in parts[4:] if p.startswith("arch=")), "")
            out.append((parts[0], parts[2].rsplit("/", 1)[-1], arch))
    return out


def package_section(stanza: str) -> tuple[str, bool]:
    """The section that classifies a source package, and whether it is an application.

    Rule: an application has a program binary -- ``Architecture: all`` (Java programs are
    architecture-independent; the C tools of a C project with Java bindings are not) and not
    library-shaped (NON_APP_BINARY: ``lib*``, ``*-java``, ``-doc``, ``elpa-*``, ...) -- that sits in
    one of APP_SECTIONS; its section is that binary's. Applications the Java team files under
    ``java`` (jflex, openrefine) are missed on purpose: the held-out set needs precision, and
    ``junit4``/``zookeeper`` look the same there (docs/architecture.md has the measurement).
    Otherwise the source ``Section`` (unless ``misc``), else the most common section of its
    non-doc binaries.
    """
    src = _field(stanza, "Section").rsplit("/", 1)[-1]
    binaries = package_list(stanza) or [
        (b.strip(), src, "all") for b in _field(stanza, "Binary").split(",") if b.strip()
    ]
    for binary, section, arch in binaries:
        if arch != "all" or NON_APP_BINARY.search(binary):
            continue
        if section in APP_SECTIONS:
            return section, True
    if src and src != "misc":
        return src, False
    counts = Counter(sec for _, sec, _ in binaries if sec not in ("doc", "misc"))
    return (counts.most_common(1)[0][0] if counts else src or "misc"), False


def candidate_from_stanza(stanza: str, max_bytes: int, min_bytes: int = 10_000) -> Candidate | None:
    """A Candidate for a Java-built source package (skip set when out of the size range), else None."""
    name, version = _field(stanza, "Package"), _field(stanza, "Version")
    if not name or EXCLUDE.match(name):
        return None
    build_deps = _field(stanza, "Build-Depends") + " " + _field(stanza, "Build-Depends-Indep")
    if not JAVA_TOOLING.search(build_deps):
        return None
    files = [ln.split() for ln in _field(stanza, "Files").splitlines() if len(ln.split()) == 3]
    size = sum(int(f[1]) for f in files if ".tar." in f[2] and ".debian.tar" not in f[2])
    limit = max_bytes * 2 if name in PREFERRED else max_bytes
    skip = "too_small" if size < min_bytes else "too_large" if size > limit else ""
    binaries = _field(stanza, "Binary")
    java_team = "java" in _field(stanza, "Maintainer").lower() or _field(stanza, "Section") == "java"
    if name in PREFERRED:
        group = "preferred"
    elif not all(b.strip().startswith("lib") for b in binaries.split(",")):
        group = "app"
    else:
        group = "java-lib" if java_team else "other-lib"
    section, app = package_section(stanza)
    return Candidate(name, version, size, group, section, app, skip)


def candidates_from_stanzas(stanzas, max_bytes: int, min_bytes: int = 10_000) -> list[Candidate]:  # noqa: ANN001
    """Newest version of each Java-built source package (stanzas: any iterable of str).

    A security or point-release upload lists only its new debian.tar (the orig tarball stays in the
    main archive), so its size is taken from the largest upstream tarball any stanza of that name lists.
    """
    found: dict[str, Candidate] = {}
    sizes: dict[str, int] = {}
    for stanza in stanzas:
        cand = candidate_from_stanza(stanza, max_bytes, min_bytes)
        if cand is None:
            continue
        sizes[cand.name] = max(sizes.get(cand.name, 0), cand.size)
        old = found.get(cand.name)
        if old is None or _newer(cand.version, old.version):
            found[cand.name] = cand
    for cand in found.values():
        cand.size = sizes[cand.name]
        limit = max_bytes * 2 if cand.name in PREFERRED else max_bytes
        cand.skip = "too_small" if cand.size < min_bytes else "too_large" if cand.size > limit else ""
    return list(found.values())


def candidates(cfg: debian.AptConfig, max_bytes: int) -> list[Candidate]:
    """Every Java-built source package of the index (newest version each), with its size verdict."""
    return candidates_from_stanzas(debian.read_sources_index(cfg), max_bytes)


def ordered(cands: list[Candidate], seed: int) -> list[Candidate]:
    """Preferred first, then a seeded round-robin over the variety groups."""

    def key(c: Candidate) -> str:
        return hashlib.sha256(f"{seed}:{c.name}".encode()).hexdigest()

    pref = {n: i for i, n in enumerate(PREFERRED)}
    out = sorted((c for c in cands if c.group == "preferred"), key=lambda c: pref[c.name])
    groups = [sorted((c for c in cands if c.group == g), key=key) for g in ("java-lib", "app", "other-lib")]
    weights = (3, 2, 1)  # per round: libraries, applications/tools, other teams' packages
    while any(groups):
        for g, w in zip(groups, weights, strict=True):
            for _ in range(w):
                if g:
                    out.append(g.pop(0))
    return out


def count_java(paths: list[Path]) -> int:
    n = 0
    for path in paths:
        try:
            with tarfile.open(path, "r|*") as tf:
                n += sum(1 for m in tf if m.isfile() and is_java(m.name))
        except (tarfile.TarError, OSError, EOFError) as exc:
            log.warning("%s: unreadable (%s)", path, exc)
    return n


def verify_one(cfg: debian.AptConfig, name: str, version: str | None, min_java: int) -> tuple[bool, str, int]:
    try:
        paths = debian.fetch(cfg, name, version)
    except debian.DebianError as exc:
        debian.forget(cfg, name, version)
        return False, exc.reason, 0
    n = count_java(paths)
    return n >= min_java, "ok" if n >= min_java else "too_few_java_files", n


# ---- outcome log -------------------------------------------------------------------------------


def outcomes_path(recipe: Path) -> Path:
    return recipe.with_name(recipe.name + ".outcomes.tsv")


def outcome_row(cand: Candidate, outcome: str, java_files: int) -> Outcome:
    return Outcome(cand.name, cand.version, cand.group, cand.section, int(cand.app), outcome, java_files,
                   round(cand.size / 1e6, 3))  # fmt: skip


def write_outcomes(path: Path, rows: list[Outcome]) -> None:
    """The whole log, one row per package (the last row of a name wins), sorted by name."""
    last = {r.name: r for r in rows}
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(OUTCOME_COLUMNS)
        for r in sorted(last.values(), key=lambda r: r.name):
            w.writerow([getattr(r, c) for c in OUTCOME_COLUMNS])
    tmp.replace(path)


def read_outcomes(path: Path) -> list[Outcome]:
    """Rows of an outcome log (a later row of the same name replaces an earlier one)."""
    if not path.is_file():
        return []
    rows: dict[str, Outcome] = {}
    with path.open(newline="") as fh:
        for rec in csv.DictReader(fh, delimiter="\t"):
            if not rec.get("name") or rec["name"] == "name":
                continue
            rows[rec["name"]] = Outcome(rec["name"], rec["version"], rec["group"], rec["section"], int(rec["app"]),
                                        rec["outcome"], int(rec["java_files"]), float(rec["mb"]))  # fmt: skip
    return list(rows.values())


def app_packages(log_path: Path | None = None) -> frozenset[str]:
    """Source packages that are applications by Debian section (``package_section``), as the outcome log
    records them (default: ``debian-java-all.outcomes.tsv``). A corpus built from Debian source packages
    names each project after its package, so these are also its application projects; the JDK's modules
    and the binary packages' folders (``java/openjdk-17-demo``) are not in the log and count as libraries.
    """
    return frozenset(
        r.name for r in read_outcomes(log_path or outcomes_path(RECIPES_DIR / "debian-java-all")) if r.app
    )


# ---- hold-out rule and recipes -----------------------------------------------------------------


def holdout(rows: list[Outcome], fraction: float, seed: int, min_java: int = 50) -> set[str]:
    """Held-out application packages: every downloaded app with at least ``min_java`` .java files (enough
    code to evaluate on) whose seeded name hash falls below ``fraction``.

    Whole packages, chosen by name alone (stable when other packages come or go)."""
    chosen = set()
    for r in rows:
        if r.outcome == "ok" and r.app and r.java_files >= min_java:
            h = int(hashlib.sha256(f"holdout:{seed}:{r.name}".encode()).hexdigest()[:16], 16) / 16**16
            if h < fraction:
                chosen.add(r.name)
    return chosen


_HEADER = (
    "# Format: one package per line, `NAME VERSION`, then an optional `# comment`; blank lines and\n"
    "# lines starting with # are ignored. VERSION may be left out to take apt's candidate.\n"
    "# Generated from the outcome log {log} by `python -m kaffee.data.recipe_tools generate`\n"
    "# (or `... recipes`); the comment gives the variety group, the Debian section (app = application\n"
    "# by section), the upstream tarball size and the .java file count.\n"
)


def _recipe_line(r: Outcome) -> str:
    kind = f"{r.section} app" if r.app else r.section
    return f"{r.name} {r.version}  # {r.group}, {kind}, {r.mb:.1f} MB, {r.java_files} java files"


def write_recipes(rows: list[Outcome], out: Path, heldout_out: Path, fraction: float, seed: int,
                  reference: list[str] | None = None) -> tuple[int, int]:  # fmt: skip
    """Write the training recipe ``out`` (downloaded, not held out) and the held-out app recipe."""
    held = holdout(rows, fraction, seed)
    ok = sorted((r for r in rows if r.outcome == "ok"), key=lambda r: r.name)
    train = [r for r in ok if r.name not in held]
    test = [r for r in ok if r.name in held]
    assert not {r.name for r in train} & {r.name for r in test}
    log_name = outcomes_path(out).name
    out.write_text(
        f"# Debian source packages for training (kaffee corpus build --recipe {out.name}); the held-out\n"
        f"# application packages of {heldout_out.name} are never listed here.\n"
        + _HEADER.format(log=log_name)
        + "\n"
        + "".join(_recipe_line(r) + "\n" for r in train)
    )
    ref = set(reference or [])
    heldout_out.write_text(
        "# Held-out evaluation set: whole Debian application packages (code unlike libraries), never in\n"
        f"# training. Rule: every package of {log_name} that downloaded (outcome ok) and is an application\n"
        "# by Debian section (recipe_tools.package_section: an arch-all binary, not library-shaped, in one of\n"
        f"# {' '.join(sorted(APP_SECTIONS))}), with at least 50 .java files,\n"
        f"# whose sha256('holdout:{seed}:NAME') falls in the lowest {fraction:.0%} (recipe_tools.holdout).\n"
        "# `seen-by-default-model` marks packages the bundled model was trained on (data/recipes/debian-java):\n"
        "# leave them out when comparing against that model.\n"
        + _HEADER.format(log=log_name)
        + "\n"
        + "".join(_recipe_line(r) + (", seen-by-default-model" if r.name in ref else "") + "\n" for r in test)
    )
    return len(train), len(test)


def _summary(rows: list[Outcome]) -> str:
    by = Counter(r.outcome for r in rows)
    ok = [r for r in rows if r.outcome == "ok"]
    return (f"{len(rows)} candidates: " + ", ".join(f"{k} {v}" for k, v in by.most_common())
            + f"; ok: {sum(r.java_files for r in ok)} java files, {sum(r.mb for r in ok):.0f} MB of tarballs,"
            f" {sum(r.app for r in ok)} apps")  # fmt: skip


def _reference() -> list[str]:
    try:
        return [n for n, _ in load_recipe("debian-java")]
    except Exception:  # noqa: BLE001 (the reference recipe is optional)
        return []


def generate(args: argparse.Namespace) -> int:
    cfg = debian.AptConfig(Path(args.cache_dir) / "debian")
    debian.update(cfg)
    out = Path(args.out)
    log_path = outcomes_path(out)
    cands = ordered(candidates(cfg, args.max_mb << 20), args.seed)
    previous = {r.name: r for r in read_outcomes(log_path)} if args.resume else {}
    rows: list[Outcome] = []
    todo: list[Candidate] = []
    for c in cands:
        prev = previous.get(c.name)
        if c.skip:
            rows.append(outcome_row(c, c.skip, 0))
        elif prev is not None and prev.version == c.version and prev.outcome in FINAL_OUTCOMES:
            rows.append(outcome_row(c, prev.outcome, prev.java_files))  # group/section from today's rule
        else:
            todo.append(c)
    log.info("%d candidate source packages: %d to try, %d skipped by size, %d known from %s",
             len(cands), len(todo), sum(bool(c.skip) for c in cands), len(rows) - sum(bool(c.skip) for c in cands),
             log_path)  # fmt: skip
    deadline = time.monotonic() + args.max_minutes * 60 if args.max_minutes else None
    kept = sum(r.outcome == "ok" for r in rows)
    write_outcomes(log_path, rows)
    with ThreadPoolExecutor(args.jobs) as pool:
        for start in range(0, len(todo), args.jobs * 8):
            if (args.count and kept >= args.count) or (deadline and time.monotonic() > deadline):
                log.warning("stopped early (%s); %d candidates left untried", "count" if kept >= (args.count or 1e9)
                            else "time", len(todo) - start)  # fmt: skip
                break
            batch = todo[start : start + args.jobs * 8]
            futs = {pool.submit(verify_one, cfg, c.name, c.version, args.min_java): c for c in batch}
            for fut in as_completed(futs):
                cand = futs[fut]
                _, reason, n = fut.result()
                log.info("%-40s %-24s %s (%d java files)", cand.name, cand.version, reason, n)
                rows.append(outcome_row(cand, reason, n))
                kept += reason == "ok"
            write_outcomes(log_path, rows)  # after every batch: a bounded or killed run keeps its log
    print(_summary(rows))
    n_train, n_test = write_recipes(rows, out, Path(args.heldout_out), args.holdout_fraction, args.seed,
                                    _reference())  # fmt: skip
    print(
        f"wrote {n_train} training packages to {out}, {n_test} held-out apps to {args.heldout_out}, log {log_path}"
    )
    return 0


def recipes(args: argparse.Namespace) -> int:
    """Rewrite both recipes from an existing outcome log (offline)."""
    out = Path(args.out)
    rows = read_outcomes(outcomes_path(out))
    if not rows:
        print(f"no outcome log at {outcomes_path(out)}; run `generate` first", file=sys.stderr)
        return 1
    print(_summary(rows))
    n_train, n_test = write_recipes(rows, out, Path(args.heldout_out), args.holdout_fraction, args.seed,
                                    _reference())  # fmt: skip
    print(f"wrote {n_train} training packages to {out}, {n_test} held-out apps to {args.heldout_out}")
    return 0


def verify(args: argparse.Namespace) -> int:
    cfg = debian.AptConfig(Path(args.cache_dir) / "debian")
    debian.update(cfg)
    packages = load_recipe(args.recipe)
    failed = 0
    with ThreadPoolExecutor(args.jobs) as pool:
        results = pool.map(lambda p: verify_one(cfg, p[0], p[1], 1), packages)
        for (name, version), (ok, reason, n) in zip(packages, results, strict=True):
            print(f"{'ok  ' if ok else 'FAIL'} {name} {version or ''} {reason} {n}")
            failed += not ok
    print(f"{len(packages) - failed} ok, {failed} failed")
    return 1 if failed else 0


# ---- Java in binary packages -------------------------------------------------------------------

BINARY_JAVA = re.compile(
    r"^(openjdk-\d+-source|openjfx-source|.*-(source|sources|src|examples|example|demo|demos))$"
)
BINARY_RECIPE = "debian-java-binaries"


@dataclass
class BinaryCandidate:
    name: str
    version: str
    section: str
    size: int  # .deb bytes
    installed_kb: int  # Installed-Size
    description: str


def binary_candidates_from_stanzas(stanzas) -> list[BinaryCandidate]:  # noqa: ANN001 (any iterable of str)
    """Binary packages that may ship Java sources: a name like ``*-source``/``*-examples``/``*-demo``
    and something Java about them (section java, a Java name, or a dependency on a JRE/JDK/Java library)."""
    found: dict[str, BinaryCandidate] = {}
    for st in stanzas:
        name = _field(st, "Package")
        if not BINARY_JAVA.match(name):
            continue
        deps = _field(st, "Depends") + " " + _field(st, "Recommends")
        section = _field(st, "Section").rsplit("/", 1)[-1]
        javaish = (section == "java" or re.search(r"java|jdk|jfx|jre", name)
                   or re.search(r"\b(default-jre|openjdk-\d+|java\d*-runtime|lib[\w.+-]*-java)\b", deps))  # fmt: skip
        if not javaish:
            continue
        version = _field(st, "Version")
        c = BinaryCandidate(name, version, section, int(_field(st, "Size") or 0),
                            int(_field(st, "Installed-Size") or 0), _field(st, "Description").splitlines()[0][:80])  # fmt: skip
        old = found.get(name)
        if old is None or _newer(version, old.version):
            found[name] = c
    return sorted(found.values(), key=lambda c: c.name)


def binaries(args: argparse.Namespace) -> int:
    """List (and with --fetch, download and unpack) the binary packages that ship Java sources."""
    cfg = debian.AptConfig(Path(args.cache_dir) / "debian-bin", binary=True)
    debian.update(cfg)
    cands = binary_candidates_from_stanzas(debian.read_packages_index(cfg))
    out_dir = Path(args.out_dir) if args.out_dir else cfg.cache_dir / "java"
    rows = []

    def one(c: BinaryCandidate) -> tuple[str, int]:
        if not args.fetch:
            return "listed", 0
        try:
            deb = debian.fetch_binary(cfg, c.name, c.version)
        except debian.DebianError as exc:
            debian.forget(cfg, c.name, c.version)
            return exc.reason, 0
        target = out_dir / c.name
        marker = target / ".complete"
        if marker.exists():
            n = int(marker.read_text())
        else:
            n = debian.extract_java(deb, target)
            marker.write_text(f"{n}\n")
        return ("ok" if n else "no_java_files"), n

    with ThreadPoolExecutor(args.jobs) as pool:
        for c, (outcome, n) in zip(cands, pool.map(one, cands), strict=True):
            rows.append((c, outcome, n))
            print(f"{c.name}\t{c.version}\t{c.section}\t{c.size / 1e6:.1f} MB deb\t"
                  f"{c.installed_kb / 1e3:.1f} MB installed\t{outcome}\t{n} java\t{c.description}")  # fmt: skip
    recipe = Path(args.recipe_out)
    keep = [(c, o, n) for c, o, n in rows if not args.fetch or o == "ok"]
    recipe.write_text(
        "# Debian *binary* packages that ship Java sources (-source/-sources/-examples/-demo, openjdk-N-source's\n"
        "# src.zip). Not a source-package recipe: fetch and unpack with\n"
        "#   python -m kaffee.data.recipe_tools binaries --fetch [--out-dir DIR]\n"
        "# then `kaffee corpus build DIR --projects-from-subdirs` (one project per package).\n"
        "# Format as the other recipes: `NAME VERSION  # section, .deb size, installed size[, java files]`.\n\n"
        + "".join(
            f"{c.name} {c.version}  # {c.section}, {c.size / 1e6:.1f} MB deb, {c.installed_kb / 1e3:.1f} MB "
            f"installed" + (f", {n} java files" if args.fetch else "") + "\n"
            for c, _, n in keep
        )  # fmt: skip
    )
    by = Counter(o for _, o, _ in rows)
    print(f"{len(rows)} binary candidates: " + ", ".join(f"{k} {v}" for k, v in by.most_common())
          + f"; {sum(n for _, _, n in rows)} java files under {out_dir}; wrote {recipe}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaffee.data.recipe_tools", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--cache-dir", default=str(debian.default_cache_dir()), help="download cache")
    parser.add_argument("--jobs", type=int, default=6, help="parallel downloads")
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate", help="try every candidate, log each outcome, write both recipes")
    gen.add_argument("--count", type=int, default=0, help="stop once this many download (0: try all)")
    gen.add_argument(
        "--max-minutes", type=float, default=0, help="stop starting new batches after this (0: none)"
    )
    gen.add_argument("--resume", action="store_true", help="skip candidates with a final outcome in the log")
    gen.add_argument("--max-mb", type=int, default=30, help="largest upstream tarball to consider (MB)")
    gen.add_argument("--min-java", type=int, default=10, help="fewest .java files a package must hold")
    gen.add_argument("--seed", type=int, default=0, help="seed of the variety order and of the hold-out")
    gen.add_argument("--out", default=str(RECIPES_DIR / "debian-java-all"), help="training recipe to write")
    for p in (
        gen,
        rec := sub.add_parser("recipes", help="rewrite both recipes from the outcome log (offline)"),
    ):
        p.add_argument("--holdout-fraction", type=float, default=0.5, help="share of the apps held out")
        p.add_argument("--heldout-out", default=str(RECIPES_DIR / HELDOUT_RECIPE), help="held-out recipe")
    rec.add_argument("--seed", type=int, default=0, help="seed of the hold-out")
    rec.add_argument(
        "--out", default=str(RECIPES_DIR / "debian-java-all"), help="training recipe (log beside it)"
    )
    gen.set_defaults(func=generate)
    rec.set_defaults(func=recipes)
    ver = sub.add_parser("verify", help="check that every package of a recipe downloads")
    ver.add_argument("recipe", nargs="?", default="debian-java", help="recipe name or path")
    ver.set_defaults(func=verify)
    b = sub.add_parser(
        "binaries", help="list (--fetch: download and unpack) binary packages with Java sources"
    )
    b.add_argument("--fetch", action="store_true", help="download and unpack the .java files")
    b.add_argument("--out-dir", default="", help="where to unpack (default: CACHE/debian-bin/java)")
    b.add_argument("--recipe-out", default=str(RECIPES_DIR / BINARY_RECIPE), help="recipe list to write")
    b.set_defaults(func=binaries)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
