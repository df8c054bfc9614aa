"""Headless Neovim against the real ``kaffee serve``: the editor client works end to end.

Neovim loads editors/nvim/kaffee.lua from a minimal init, opens a Java file in a
small Maven-style project, waits for the Kaffee client to attach and initialize,
asks for completions after ``System.out.`` and writes what it got to a JSON file.
Runs on every Neovim from 0.7 (Debian bookworm's package) on; skipped without nvim.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KAFFEE_LUA = REPO / "editors" / "nvim" / "kaffee.lua"
NVIM = shutil.which("nvim")


def _nvim_version() -> tuple[int, ...]:
    """(major, minor, patch) from `nvim --version` ("NVIM v0.7.2"), or () when unknown."""
    if NVIM is None:
        return ()
    output = subprocess.run([NVIM, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.match(r"NVIM v(\d+)\.(\d+)\.(\d+)", output)
    return tuple(int(part) for part in match.groups()) if match else ()


NVIM_VERSION = _nvim_version()

pytestmark = [
    pytest.mark.skipif(NVIM is None, reason="nvim is not installed (Debian: apt-get install neovim)"),
    pytest.mark.skipif(
        NVIM is not None and NVIM_VERSION < (0, 7, 0),
        reason=f"kaffee.lua needs Neovim 0.7 or newer, found {NVIM_VERSION or 'an unknown version'}",
    ),
]

JAVA_SOURCE = """public class Hello {
    public static void main(String[] args) {
        String greeting = "Hello, " + args.length;
        System.out.
    }
}
"""
# Cursor right after "System.out." (0-based line and UTF-16 column, as LSP counts).
CURSOR_LINE = 3
CURSOR_CHARACTER = len("        System.out.")

ATTACH_TIMEOUT_MS = 120_000  # server start: Python, torch and the model load
COMPLETION_TIMEOUT_MS = 60_000  # retries until the first non-empty answer
NVIM_TIMEOUT_S = 240

# Loaded with -u: only kaffee.lua, configured from the JSON file the test writes.
INIT_LUA = """
local cfg = vim.fn.json_decode(table.concat(vim.fn.readfile(vim.env.KAFFEE_TEST_CONFIG), "\\n"))
vim.lsp.set_log_level("info")
_G.kaffee = dofile(cfg.kaffee_lua)
_G.kaffee.setup({
  cmd = cfg.cmd,
  init_options = cfg.init_options,
  on_exit = function(code, signal)
    _G.kaffee_exit = { code = code, signal = signal }
  end,
})
"""

# Run with -c after the Java file is loaded. Always writes the result file and quits.
DRIVER_LUA = """
local cfg = vim.fn.json_decode(table.concat(vim.fn.readfile(vim.env.KAFFEE_TEST_CONFIG), "\\n"))
local result = { items = {}, errors = {} }

local function now_ms()
  return vim.loop.hrtime() / 1e6
end

local function run()
  local v = vim.version()
  result.nvim = ("%d.%d.%d"):format(v.major, v.minor, v.patch)
  local bufnr = vim.api.nvim_get_current_buf()
  result.filetype = vim.bo[bufnr].filetype

  local client
  vim.wait(cfg.attach_timeout_ms, function()
    client = _G.kaffee.get_client(bufnr)
    result.attached = client ~= nil and (client.initialized == true or client.server_capabilities ~= nil)
    return result.attached or _G.kaffee_exit ~= nil
  end, 50)
  if _G.kaffee_exit then
    table.insert(result.errors, ("the server exited (code %s, signal %s)"):format(_G.kaffee_exit.code, _G.kaffee_exit.signal))
  end
  if not result.attached then
    table.insert(result.errors, "no initialized kaffee client attached to the buffer")
    return
  end
  result.root_dir = client.config.root_dir
  result.omnifunc = vim.bo[bufnr].omnifunc
  local completion_provider = client.server_capabilities.completionProvider or {}
  result.trigger_characters = completion_provider.triggerCharacters or {}
  result.inline_provider = client.server_capabilities.inlineCompletionProvider ~= nil

  local params = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = { line = cfg.line, character = cfg.character },
    context = { triggerKind = 2, triggerCharacter = "." },
  }
  local deadline = now_ms() + cfg.completion_timeout_ms
  result.attempts = 0
  repeat
    result.attempts = result.attempts + 1
    local responses, err = vim.lsp.buf_request_sync(bufnr, "textDocument/completion", params, cfg.completion_timeout_ms)
    if err then
      table.insert(result.errors, "completion: " .. tostring(err))
    end
    for _, response in pairs(responses or {}) do
      if response.err then
        table.insert(result.errors, "completion: " .. vim.inspect(response.err))
      elseif type(response.result) == "table" then
        for _, item in ipairs(response.result.items or response.result) do
          table.insert(result.items, item)
        end
      end
    end
    if #result.items == 0 then
      vim.wait(250)
    end
  until #result.items > 0 or now_ms() > deadline

  if result.inline_provider then
    local inline_params = {
      textDocument = params.textDocument,
      position = params.position,
      context = { triggerKind = 1 },
    }
    local response
    if vim.fn.has("nvim-0.11") == 1 then
      response = client:request_sync("textDocument/inlineCompletion", inline_params, cfg.completion_timeout_ms, bufnr)
    else
      response = client.request_sync("textDocument/inlineCompletion", inline_params, cfg.completion_timeout_ms, bufnr)
    end
    if response == nil then
      table.insert(result.errors, "inlineCompletion: no answer")
    elseif response.err then
      table.insert(result.errors, "inlineCompletion: " .. vim.inspect(response.err))
    else
      result.inline = response.result
    end
  end
end

local ok, err = pcall(run)
if not ok then
  table.insert(result.errors, "driver: " .. tostring(err))
end
vim.fn.writefile({ vim.fn.json_encode(result) }, cfg.result)
vim.cmd("qa!")
"""


def _tail(path: Path, lines: int = 40) -> str:
    if not path.is_file():
        return f"({path} not written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _lsp_logs(home: Path) -> str:
    # Neovim 0.7 logs to stdpath("cache")/lsp.log, 0.8+ to stdpath("log") (state dir).
    return "\n".join(f"--- {log}\n{_tail(log)}" for log in sorted(home.rglob("lsp.log"))) or "(no lsp.log)"


def test_neovim_receives_completions_from_kaffee_serve(tmp_path: Path, tiny_model_dir: Path) -> None:
    project = tmp_path / "project"
    source = project / "src" / "main" / "java" / "Hello.java"
    source.parent.mkdir(parents=True)
    (project / "pom.xml").write_text("<project/>\n")
    source.write_text(JAVA_SOURCE)

    home = tmp_path / "nvim-home"
    init_lua = tmp_path / "init.lua"
    driver_lua = tmp_path / "driver.lua"
    result_json = tmp_path / "result.json"
    config_json = tmp_path / "config.json"
    init_lua.write_text(INIT_LUA)
    driver_lua.write_text(DRIVER_LUA)
    config_json.write_text(
        json.dumps(
            {
                "kaffee_lua": str(KAFFEE_LUA),
                "cmd": [sys.executable, "-m", "kaffee", "serve", "--model", str(tiny_model_dir)],
                # A generous deadline: CI machines are slow and the first request is cold.
                "init_options": {"deadlineMs": 10_000, "device": "cpu"},
                "line": CURSOR_LINE,
                "character": CURSOR_CHARACTER,
                "attach_timeout_ms": ATTACH_TIMEOUT_MS,
                "completion_timeout_ms": COMPLETION_TIMEOUT_MS,
                "result": str(result_json),
            }
        )
    )
    # A private home for Neovim: no user config, plugins, shada or swap files.
    env = dict(os.environ)
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        env[var] = str(home / var.lower())
    env["NVIM_LOG_FILE"] = str(home / "nvim.log")
    env["KAFFEE_TEST_CONFIG"] = str(config_json)

    # -n: no swap file, -i NONE: no shada; the driver runs once the Java file is loaded.
    cmd = [NVIM, "--headless", "-n", "-i", "NONE", "-u", str(init_lua)]
    cmd += [str(source), "-c", f"luafile {driver_lua}"]
    try:
        proc = subprocess.run(
            cmd,
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=NVIM_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"nvim did not finish in {NVIM_TIMEOUT_S} s\nstderr: {exc.stderr}\n{_lsp_logs(home)}")

    output = f"nvim exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    diagnostics = f"{output}\n{_lsp_logs(home)}"
    assert result_json.is_file(), f"the driver wrote no result\n{diagnostics}"
    result = json.loads(result_json.read_text())
    context = f"result: {json.dumps(result, indent=1)[:4000]}\n{diagnostics}"

    assert result.get("filetype") == "java", context
    assert result.get("attached"), f"the kaffee client did not attach\n{context}"
    assert Path(result["root_dir"]).resolve() == project.resolve(), context
    assert result.get("omnifunc") == "v:lua.vim.lsp.omnifunc", context
    assert "." in result.get("trigger_characters", []), context
    assert result.get("items"), f"no completion items\n{context}"
    assert all(isinstance(item.get("label"), str) and item["label"] for item in result["items"]), context
    assert not result.get("errors"), context
