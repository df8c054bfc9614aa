"""The VS Code extension (editors/vscode) type-checks with the pinned TypeScript.

``npm ci`` installs exactly what package-lock.json names (not rerun when node_modules
already matches it), then ``tsc --noEmit`` checks src/extension.ts against the
vscode and vscode-languageclient typings. Skipped without npm, or when the npm
registry cannot be reached at all.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

EXTENSION = Path(__file__).resolve().parents[1] / "editors" / "vscode"
NPM = shutil.which("npm")
NPX = shutil.which("npx")

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
        if path  # "" is the extension itself
    )


def test_package_json_and_lock_agree() -> None:
    package = json.loads((EXTENSION / "package.json").read_text())
    lock = json.loads((EXTENSION / "package-lock.json").read_text())
    root = lock["packages"][""]
    assert root.get("dependencies", {}) == package.get("dependencies", {})
    assert root.get("devDependencies", {}) == package.get("devDependencies", {})
    assert package["main"] == "./dist/extension.js"  # the esbuild bundle (npm run package)
    assert "onLanguage:java" in package["activationEvents"]


@pytest.mark.slow
@pytest.mark.skipif(NPM is None or NPX is None, reason="npm is not installed (node 18+ with npm)")
def test_extension_type_checks() -> None:
    if not _installed_matches_lock():
        install = _run([NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"], timeout=600)
        output = install.stdout + install.stderr
        if install.returncode != 0 and any(code in output for code in OFFLINE_ERRORS):
            pytest.skip(f"the npm registry is unreachable: {output.strip()[-500:]}")
        assert install.returncode == 0, f"npm ci failed\n{install.stdout}\n{install.stderr}"
    check = _run([NPX, "--no-install", "tsc", "-p", ".", "--noEmit"], timeout=300)
    assert check.returncode == 0, f"tsc reported errors\n{check.stdout}\n{check.stderr}"
