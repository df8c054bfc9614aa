"""``kaffee complete FILE:LINE:COL`` and ``kaffee serve``'s flags, as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from java_samples import MAIN as SOURCE  # the tiny model was trained on it
from kaffee.errors import KaffeeError
from kaffee.server.cli import cursor_offset, parse_engine_options, parse_spot

BANK = Path(__file__).resolve().parent.parent / "examples" / "Bank.java"


def kaffee(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kaffee", *args], capture_output=True, text=True, timeout=300
    )


def test_complete_prints_both_kinds_of_suggestions(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "Main.java"
    src.write_text(SOURCE)
    # after the first "System.out." (1-based line and column, as an editor shows them)
    line = SOURCE[: SOURCE.index("System.out.")].count("\n") + 1
    spot = f"{src}:{line}:{len('        System.out.') + 1}"
    out = kaffee("complete", spot, "--model", str(tiny_model_dir), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["tokens"][0]["text"] == "println"
    assert {"text", "stop_reason", "tokens", "elapsed_ms"} <= set(data["completion"])
    human = kaffee("complete", spot, "--model", str(tiny_model_dir), "-k", "3")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[1] == "next tokens:"
    ranked = [ln for ln in lines if re.match(r" +\d+\. ", ln)]
    assert len(ranked) == 3 and ranked[0].startswith("   1. 'println'"), ranked  # -k 3
    head = next(i for i, ln in enumerate(lines) if ln.startswith(("line (", "block (")))
    assert head == 2 + len(ranked) and lines[head + 1].startswith("  | println("), lines


def test_complete_reports_bad_input_clearly(tmp_path: Path) -> None:
    binary = tmp_path / "Blob.java"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    for args, needle in [
        (["complete", "no-colons"], "FILE:LINE:COL"),
        (["complete", f"{tmp_path}/Missing.java:1:1"], "not a readable file"),
        (["complete", f"{binary}:1:1"], "binary"),
        (["complete", f"{binary}:0:1"], "1-based"),
        (["complete", f"{binary}:1:1", "--engine-option", "nonsense=1"], "unknown option 'nonsense'"),
        (["complete", f"{BANK}:9999:1"], "has 54 lines; there is no line 9999"),
        (["complete", f"{BANK}:50:24", "--model", f"{tmp_path}/none"], "does not exist"),
        (["complete", f"{BANK}:50:24", "--model", str(tmp_path)], "not a Kaffee model directory"),
        (["serve", "--model", f"{tmp_path}/none"], "does not exist"),
    ]:
        out = kaffee(*args)
        assert out.returncode == 1 and needle in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_serve_help_names_its_flags() -> None:
    out = kaffee("serve", "--help")
    assert out.returncode == 0
    for flag in ("--model", "--tcp", "--host", "--port", "--log-level", "--log-file"):
        assert flag in out.stdout
    assert "127.0.0.1" in out.stdout


def test_spot_and_offset_parsing() -> None:
    assert parse_spot("C:/src/A.java:3:7") == (Path("C:/src/A.java"), 3, 7)
    with pytest.raises(KaffeeError):
        parse_spot("A.java:x:1")
    text = "ab\n😀cd\n"
    assert cursor_offset(text, 2, 2) == text.index("c")  # columns count characters
    assert cursor_offset(text, 9, 9) == len(text)
    opts = parse_engine_options(["speculate=0", "naive=true", "deadline_ms=none", "quantize=none"])
    assert opts.speculate == 0 and opts.naive and opts.deadline_ms is None and opts.quantize == "none"
    with pytest.raises(KaffeeError):
        parse_engine_options(["speculate=lots"])


def test_serve_refuses_a_remote_host_without_allow_remote() -> None:
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com", ""):
        out = kaffee("serve", "--tcp", "--host", host, "--port", "1")
        assert out.returncode == 1, (host, out.stderr)
        assert "--allow-remote" in out.stderr and "no authentication" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    assert "--allow-remote" in kaffee("serve", "--help").stdout


@pytest.mark.timeout(60)  # the readline below would block for ever if the warning went missing
def test_serve_with_allow_remote_warns_that_tcp_has_no_authentication(tiny_model_dir: Path) -> None:
    from test_lsp_raw import _free_port

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kaffee",
            "serve",
            "--model",
            str(tiny_model_dir),
            "--tcp",
            "--host",
            "0.0.0.0",
        ]
        + ["--port", str(_free_port()), "--allow-remote", "--log-level", "warning"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()  # the warning comes before the server listens
        assert "WARNING" in line and "no authentication" in line and "0.0.0.0" in line, line
    finally:
        proc.kill()
        proc.wait(10)


def test_loopback_hosts_need_no_flag() -> None:
    from kaffee.server.cli import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost", "LOCALHOST"))
    assert not any(
        is_loopback(h) for h in ("0.0.0.0", "::", "", "10.0.0.1", "my-laptop", "localhost.evil.com")
    )
