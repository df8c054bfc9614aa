"""The VS Code extension (editors/vscode) type-checks and packages.

``npm ci`` installs exactly what package-lock.json names (not rerun when node_modules
already matches it), then ``tsc --noEmit`` checks src/extension.ts against the
vscode and vscode-languageclient typings, and ``npm run package`` builds the .vsix
(esbuild bundle, vsce) without the network. Skipped without npm, or when the npm
registry cannot be reached at all.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from kaffee.server.settings import _FIELDS as FIELDS
from kaffee.server.settings import ServerSettings, parse_settings

EXTENSION = Path(__file__).resolve().parents[1] / "editors" / "vscode"
NPM = shutil.which("npm")
NPX = shutil.which("npx")
NODE = shutil.which("node")

SETTING_KEYS = list(FIELDS)  # the JSON names the server reads

# npm's messages when the registry cannot be reached at all (no network, no DNS).
OFFLINE_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT")


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=EXTENSION, capture_output=True, text=True, timeout=timeout, check=False)


def _installed_matches_lock() -> bool:
    """True when node_modules holds the versions package-lock.json pins (npm writes this file)."""
    hidden_lock = EXTENSION / "node_modules" / ".package-lock.json"
    if not hidden_lock.is_file():
        return False
    wanted = json.loads((EXTENSION / "package-lock.json").read_text())["packages"]
    installed = json.loads(hidden_lock.read_text())["packages"]
    return all(
        installed.get(path, {}).get("version") == entry.get("version")
        for path, entry in wanted.items()
        # "" is the extension itself; optional packages for other platforms (esbuild's
        # binaries, vsce-sign's) are in the lock but not installed here.
        if path and not (entry.get("optional") and path not in installed)
    )


def test_package_json_and_lock_agree() -> None:
    package = json.loads((EXTENSION / "package.json").read_text())
    lock = json.loads((EXTENSION / "package-lock.json").read_text())
    root = lock["packages"][""]
    assert root.get("dependencies", {}) == package.get("dependencies", {})
    assert root.get("devDependencies", {}) == package.get("devDependencies", {})
    assert package["main"] == "./dist/extension.js"  # the esbuild bundle (npm run package)
    assert "onLanguage:java" in package["activationEvents"]


def _declared() -> dict[str, dict]:
    """The extension's settings (package.json ``contributes.configuration``), without the ``kaffee.`` prefix."""
    package = json.loads((EXTENSION / "package.json").read_text())
    props = package["contributes"]["configuration"]["properties"]
    return {key.removeprefix("kaffee."): decl for key, decl in props.items()}


def _problems(key: str, value: object) -> list[str]:
    return parse_settings({key: value})[1]


def test_every_server_setting_is_declared_and_forwarded() -> None:
    """Each setting the server reads (server/settings.py) is a VS Code setting the extension sends."""
    declared = _declared()
    source = (EXTENSION / "src" / "extension.ts").read_text()
    missing = [key for key in SETTING_KEYS if key not in declared]
    assert not missing, f"server settings not declared in package.json: {missing}"
    # serverOptionsFromSettings puts each one into the initializationOptions it builds
    unsent = [key for key in SETTING_KEYS if not re.search(rf"\boptions\.{key}\s*=", source)]
    assert not unsent, f"server settings the extension does not forward: {unsent}"
    options = re.search(r"interface KaffeeOptions \{([^}]*)\}", source)
    assert options is not None
    fields = set(re.findall(r"^\s*(\w+)\?:", options.group(1), re.MULTILINE))
    assert fields == set(SETTING_KEYS), fields ^ set(SETTING_KEYS)


def test_declared_ranges_defaults_and_choices_match_the_server() -> None:
    declared = _declared()
    for key in SETTING_KEYS:
        decl = declared[key]
        # a number the server bounds must be bounded in the settings UI, at the same place
        name = FIELDS[key][0]
        default = getattr(ServerSettings(), name)
        numeric = isinstance(default, int) and not isinstance(default, bool)
        for bound, step in (("minimum", -1), ("maximum", 1)):
            if numeric and _problems(key, step * 10**12):
                assert bound in decl, f"kaffee.{key} lacks its {bound}"
            if bound in decl:
                assert not _problems(key, decl[bound]), f"kaffee.{key}: server rejects its {bound}"
                assert _problems(key, decl[bound] + step), f"kaffee.{key}: server accepts past its {bound}"
        if decl.get("default") is not None:  # null: not sent, the server's default applies
            settings, problems = parse_settings({key: decl["default"]})
            assert not problems and getattr(settings, name) == default, key
        for choice in decl.get("enum", []):
            assert choice is None or not _problems(key, choice), f"kaffee.{key}: server rejects {choice!r}"
        assert decl.get("markdownDescription") or decl.get("description"), key


def test_settings_that_send_code_elsewhere_are_restricted_in_untrusted_workspaces() -> None:
    package = json.loads((EXTENSION / "package.json").read_text())
    restricted = package["capabilities"]["untrustedWorkspaces"]["restrictedConfigurations"]
    assert {"kaffee.server.path", "kaffee.server.args", "kaffee.backend", "kaffee.apiKeyEnv"} <= set(
        restricted
    )
    source = (EXTENSION / "src" / "extension.ts").read_text()
    for key in ("backend", "apiKeyEnv"):  # read so that untrusted workspace values do not count
        assert re.search(rf"trustedUserValue<string>\(config, '{key}'\)", source), key


def _npm_ci() -> None:
    """``npm ci`` unless node_modules already matches the lock; skips the test when offline."""
    if _installed_matches_lock():
        return
    assert NPM is not None
    install = _run([NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"], timeout=600)
    output = install.stdout + install.stderr
    if install.returncode != 0 and any(code in output for code in OFFLINE_ERRORS):
        pytest.skip(f"the npm registry is unreachable: {output.strip()[-500:]}")
    assert install.returncode == 0, f"npm ci failed\n{install.stdout}\n{install.stderr}"


@pytest.mark.slow
@pytest.mark.skipif(NPM is None or NPX is None, reason="npm is not installed (node 18+ with npm)")
def test_extension_type_checks() -> None:
    _npm_ci()
    check = _run([NPX, "--no-install", "tsc", "-p", ".", "--noEmit"], timeout=300)
    assert check.returncode == 0, f"tsc reported errors\n{check.stdout}\n{check.stderr}"


# Loads a bundle with a stand-in for the `vscode` module (only VS Code provides it) and
# prints what it exports: any other module the bundle still needs from node_modules fails.
LOAD_BUNDLE = """
const Module = require("module");
const load = Module._load;
const stub = new Proxy(function () {}, {
  get: (target, key) => (key === "__esModule" ? true : stub),
  construct: () => stub,
  apply: () => stub,
});
Module._load = function (request, ...rest) {
  return request === "vscode" ? stub : load.call(this, request, ...rest);
};
const extension = require(process.argv[1]);
console.log(typeof extension.activate, typeof extension.deactivate);
"""


@pytest.mark.slow
@pytest.mark.skipif(NPM is None or NODE is None, reason="npm is not installed (node 18+ with npm)")
def test_extension_packages_as_bundled_vsix(tmp_path: Path) -> None:
    _npm_ci()
    version = json.loads((EXTENSION / "package.json").read_text())["version"]
    # `npm run package` is vsce package (its prepublish step type-checks and bundles);
    # --out keeps the .vsix out of the source tree. No network is needed from here on.
    build = _run([NPM, "run", "package", "--", "--out", str(tmp_path)], timeout=300)
    output = build.stdout + build.stderr
    assert build.returncode == 0, f"npm run package failed\n{output}"
    assert "WARNING" not in output, output  # e.g. vsce's "you should bundle your extension"
    vsix = tmp_path / f"kaffee-{version}.vsix"
    assert vsix.is_file(), output

    with zipfile.ZipFile(vsix) as archive:
        names = archive.namelist()
        bundle = archive.read("extension/dist/extension.js")
    assert "extension/package.json" in names
    assert not [name for name in names if "node_modules" in name], names
    assert not [name for name in names if name.endswith((".ts", ".map"))], names
    shipped = {name for name in names if name.startswith("extension/")}
    assert shipped == {
        "extension/package.json",
        "extension/dist/extension.js",
        "extension/readme.md",
        "extension/LICENSE.txt",
    }, names

    # The bundle holds vscode-languageclient: it loads from a folder without node_modules.
    (tmp_path / "extension.js").write_bytes(bundle)
    assert NODE is not None
    load = subprocess.run(
        [NODE, "-e", LOAD_BUNDLE, str(tmp_path / "extension.js")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert load.returncode == 0, load.stderr
    assert load.stdout.split() == ["function", "function"], load.stdout
