"""Regenerate or verify a Debian recipe (data/recipes/debian-java).

    python -m kaffee.data.recipe_tools generate [--count 260] [--out data/recipes/debian-java]
    python -m kaffee.data.recipe_tools verify [RECIPE]

``generate`` queries the Sources index through the private apt configuration (debian.py),
keeps source packages that build with Java tooling, are of reasonable size and are not
giant non-Java projects, picks a varied set (well-known libraries and test frameworks
first, then a seeded round-robin over libraries, applications/tools and other teams'
packages), and lists only those that really download and hold Java files. The downloads
stay in the cache, so a later ``kaffee corpus build --recipe debian-java`` reuses them.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


@dataclass
class Candidate:
    """One source package from the Sources index."""

    name: str  # source package name
    version: str  # version in the index
    size: int  # bytes of its upstream tarball(s)
    group: str  # variety group: preferred | java-lib | app | other-lib


def _field(stanza: str, name: str) -> str:
    m = re.search(rf"^{name}:(.*(?:\n[ \t].*)*)", stanza, re.M)
    return m.group(1).strip() if m else ""


def _newer(a: str, b: str) -> bool:
    """Rough Debian version order (enough to pick bookworm-security over bookworm)."""
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", a)] > [
        int(x) if x.isdigit() else x for x in re.split(r"(\d+)", b)
    ]


def candidates(cfg: debian.AptConfig, max_bytes: int) -> list[Candidate]:
    found: dict[str, Candidate] = {}
    for stanza in debian.read_sources_index(cfg):
        name, version = _field(stanza, "Package"), _field(stanza, "Version")
        if not name or EXCLUDE.match(name):
            continue
        build_deps = _field(stanza, "Build-Depends") + " " + _field(stanza, "Build-Depends-Indep")
        if not JAVA_TOOLING.search(build_deps):
            continue
        files = [ln.split() for ln in _field(stanza, "Files").splitlines() if len(ln.split()) == 3]
        size = sum(int(f[1]) for f in files if ".tar." in f[2] and ".debian.tar" not in f[2])
        limit = max_bytes * 2 if name in PREFERRED else max_bytes
        if not 10_000 <= size <= limit:
            continue
        binaries = _field(stanza, "Binary")
        java_team = "java" in _field(stanza, "Maintainer").lower() or _field(stanza, "Section") == "java"
        if name in PREFERRED:
            group = "preferred"
        elif not all(b.strip().startswith("lib") for b in binaries.split(",")):
            group = "app"
        else:
            group = "java-lib" if java_team else "other-lib"
        old = found.get(name)
        if old is None or _newer(version, old.version):
            found[name] = Candidate(name, version, size, group)
    return list(found.values())


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


def generate(args: argparse.Namespace) -> int:
    cfg = debian.AptConfig(Path(args.cache_dir) / "debian")
    debian.update(cfg)
    cands = ordered(candidates(cfg, args.max_mb << 20), args.seed)
    log.info("%d candidate source packages", len(cands))
    chosen: list[tuple[Candidate, int]] = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for start in range(0, len(cands), args.jobs * 4):
            batch = cands[start : start + args.jobs * 4]
            results = pool.map(lambda c: verify_one(cfg, c.name, c.version, args.min_java), batch)
            for cand, (ok, reason, n) in zip(batch, results, strict=True):
                log.info("%-40s %-24s %s (%d java files)", cand.name, cand.version, reason, n)
                if ok:
                    chosen.append((cand, n))
            if len(chosen) >= args.count:
                break
    chosen = chosen[: args.count]
    lines = [
        "# Debian source packages for the debian-java recipe (kaffee corpus build --recipe debian-java).",
        "# Format: one package per line, `NAME VERSION`, then an optional `# comment`; blank lines and",
        "# lines starting with # are ignored. VERSION may be left out to take apt's candidate.",
        "# Generated and verified to download by `python -m kaffee.data.recipe_tools generate`;",
        "# the comment gives the variety group, the upstream tarball size and the .java file count.",
        "",
    ]
    for cand, n in chosen:
        lines.append(f"{cand.name} {cand.version}  # {cand.group}, {cand.size / 1e6:.1f} MB, {n} java files")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {len(chosen)} packages to {args.out}")
    return 0 if len(chosen) >= args.count else 1


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaffee.data.recipe_tools", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--cache-dir", default=str(debian.default_cache_dir()), help="download cache")
    parser.add_argument("--jobs", type=int, default=4, help="parallel downloads")
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate", help="query the index, verify downloads, write the recipe")
    gen.add_argument("--count", type=int, default=260, help="packages to list")
    gen.add_argument("--max-mb", type=int, default=30, help="largest upstream tarball to consider (MB)")
    gen.add_argument("--min-java", type=int, default=10, help="fewest .java files a package must hold")
    gen.add_argument("--seed", type=int, default=0, help="seed of the variety order")
    gen.add_argument("--out", default=str(RECIPES_DIR / "debian-java"), help="recipe file to write")
    gen.set_defaults(func=generate)
    ver = sub.add_parser("verify", help="check that every package of a recipe downloads")
    ver.add_argument("recipe", nargs="?", default="debian-java", help="recipe name or path")
    ver.set_defaults(func=verify)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
