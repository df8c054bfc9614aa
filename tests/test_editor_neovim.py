"""Headless Neovim against the real ``kaffee serve``: the editor client works end to end.

Neovim loads editors/nvim/kaffee.lua from a minimal init, opens a Java file in a
small Maven-style project, waits for the Kaffee client to attach and initialize,
asks for completions after ``System.out.``, then types in insert mode through
``nvim_input`` as a user would: ghost text (an extmark in the ghost highlight) after
typing and the idle time, cleared by a cursor move, by <Esc> and by the dismiss key,
accepted by word, by line and whole, over several lines for a block; and the
<C-x><C-o> menu. It writes what it saw to a JSON file that the test checks.
Runs on every Neovim from 0.7 (Debian bookworm's package) on; skipped without nvim.
On Neovim 0.12+ kaffee.lua would use vim.lsp.inline_completion; the test sets
``inline_native = false`` so that every version runs kaffee.lua's extmark path.
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

# Ghost text: typed at the end of CURSOR_LINE in insert mode, then the plugin's idle
# timer (IDLE_MS) asks for a suggestion; each wait for an editor state is polled.
GHOST_TYPED = "println("
IDLE_MS = 150
GHOST_TIMEOUT_MS = 20_000
GHOST_HL = "KaffeeGhostText"  # kaffee.lua's default highlight group
KEYS = {"accept": "<Tab>", "accept_word": "<M-Right>", "accept_line": "<M-Down>", "dismiss": "<C-]>"}
# A block suggestion (ghost text over several lines): the cursor at the end of the
# indented empty line after an opening "{" that the rest of the file does not close.
BLOCK_SOURCE = "public class Hello {\n    public int size() {\n    \n}\n"
BLOCK_LINE = 2

# Loaded with -u: only kaffee.lua, configured from the JSON file the test writes.
INIT_LUA = """
local cfg = vim.fn.json_decode(table.concat(vim.fn.readfile(vim.env.KAFFEE_TEST_CONFIG), "\\n"))
vim.lsp.set_log_level("info")
_G.kaffee = dofile(cfg.kaffee_lua)
local ok, err = pcall(_G.kaffee.setup, {
  cmd = cfg.cmd,
  init_options = cfg.init_options,
  idle_ms = cfg.idle_ms,
  inline_native = false, -- 0.12+: kaffee.lua's extmarks, which the driver looks for, not Neovim's own
  on_exit = function(code, signal)
    _G.kaffee_exit = { code = code, signal = signal }
  end,
})
_G.kaffee_setup_error = not ok and tostring(err) or nil
"""

# Run with -c after the Java file is loaded, as a coroutine: the ghost-text part types
# through nvim_input, which Neovim reads only while the driver waits (yielded to the
# main loop). Always writes the result file and quits.
DRIVER_LUA = """
local cfg = vim.fn.json_decode(table.concat(vim.fn.readfile(vim.env.KAFFEE_TEST_CONFIG), "\\n"))
local result = { items = {}, errors = {}, ghost = {} }
local driver

local function now_ms()
  return vim.loop.hrtime() / 1e6
end

local function finish()
  vim.fn.writefile({ vim.fn.json_encode(result) }, cfg.result)
  vim.cmd("qa!")
end

local function resume()
  local ok, err = coroutine.resume(driver)
  if not ok then
    table.insert(result.errors, "driver: " .. tostring(err))
    finish()
  end
end

-- Polls pred() every 20 ms, yielding to Neovim between polls, until it returns a
-- true value (returned) or timeout_ms pass (nil).
local function wait_for(timeout_ms, pred)
  local deadline = now_ms() + timeout_ms
  while true do
    local value = pred()
    if value or now_ms() > deadline then
      return value or nil
    end
    vim.defer_fn(resume, 20)
    coroutine.yield()
  end
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
    return result.attached or _G.kaffee_exit ~= nil or _G.kaffee_setup_error ~= nil
  end, 50)
  if _G.kaffee_setup_error then
    table.insert(result.errors, "setup: " .. _G.kaffee_setup_error)
  end
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

-- Ghost text -----------------------------------------------------------------------
local bufnr = vim.api.nvim_get_current_buf()

-- Every extmark of any namespace in the buffer that draws text in the ghost-text
-- highlight: { row, col, pos, text } with text = its ghost chunks, "\\n" between lines.
local function ghosts()
  local found = {}
  local function ghost_chunks(chunks)
    local parts = {}
    for _, chunk in ipairs(chunks or {}) do
      if chunk[2] == cfg.hl_group then
        table.insert(parts, chunk[1])
      end
    end
    return table.concat(parts), #parts
  end
  for _, ns in pairs(vim.api.nvim_get_namespaces()) do
    for _, mark in ipairs(vim.api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { details = true })) do
      local details = mark[4] or {}
      local first, count = ghost_chunks(details.virt_text)
      local lines = { first }
      for _, line in ipairs(details.virt_lines or {}) do
        local text, n = ghost_chunks(line)
        table.insert(lines, text)
        count = count + n
      end
      if count > 0 then
        table.insert(found, {
          row = mark[2], col = mark[3], pos = details.virt_text_pos, text = table.concat(lines, "\\n")
        })
      end
    end
  end
  return found
end

local function state()
  local cursor = vim.api.nvim_win_get_cursor(0)
  return {
    mode = vim.api.nvim_get_mode().mode,
    row = cursor[1] - 1,
    col = cursor[2],
    lines = vim.api.nvim_buf_get_lines(bufnr, 0, -1, false),
    ghosts = ghosts(),
  }
end

-- The ghost shown at the cursor in insert mode, waited for; nil after the timeout.
local function ghost_at_cursor()
  return wait_for(cfg.ghost_timeout_ms, function()
    local s = state()
    for _, g in ipairs(s.ghosts) do
      if s.mode == "i" and g.row == s.row and g.col == s.col and g.text ~= "" then
        return g
      end
    end
  end)
end

-- Sends keys as typed, then waits until check(state) holds; records the state under name.
local function step(name, keys, check)
  local start = now_ms()
  if keys then
    vim.api.nvim_input(keys)
  end
  local s = wait_for(cfg.ghost_timeout_ms, function()
    local s = state()
    return check(s) and s
  end)
  s = s or state()
  s.ok = check(s) and true or false
  s.ms = math.floor(now_ms() - start)
  result.ghost[name] = s
  return s.ok
end

local function run_ghost()
  local line = vim.api.nvim_buf_get_lines(bufnr, cfg.ghost_line, cfg.ghost_line + 1, false)[1]
  vim.api.nvim_win_set_cursor(0, { cfg.ghost_line + 1, 0 })
  local typed_line = line .. cfg.ghost_typed
  local end_col = #typed_line
  local function at_end(s)
    return s.mode == "i" and s.row == cfg.ghost_line and s.col == end_col
  end

  -- Typed, then idle: ghost text at the cursor.
  if not step("typed", "A" .. cfg.ghost_typed, function(s)
    return at_end(s) and s.lines[cfg.ghost_line + 1] == typed_line
  end) then
    return
  end
  result.ghost.first = ghost_at_cursor()
  if not result.ghost.first then
    return
  end
  -- A cursor move clears it (a new one may come later, but only at the new position).
  step("moved_left", "<Left>", function(s)
    return s.col == end_col - 1
  end)
  -- Back at the end, idle: it comes back; leaving insert mode clears it.
  step("back_at_end", "<End>", at_end)
  result.ghost.second = ghost_at_cursor()
  step("escaped", "<Esc>", function(s)
    return s.mode == "n"
  end)
  -- Insert mode again: a suggestion; accept its first word.
  step("appending", "A", at_end)
  result.ghost.third = ghost_at_cursor()
  if not result.ghost.third then
    return
  end
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  step("accepted_word", cfg.keys.accept_word, function(s)
    return vim.api.nvim_buf_get_changedtick(bufnr) ~= tick
  end)
  -- Dismissed: gone, the buffer as it was.
  tick = vim.api.nvim_buf_get_changedtick(bufnr)
  local before = state()
  step("dismissed", cfg.keys.dismiss, function(s)
    return #s.ghosts == 0
  end)
  result.ghost.dismiss_changed_buffer = vim.api.nvim_buf_get_changedtick(bufnr) ~= tick
  result.ghost.dismiss_moved_cursor = before.row ~= state().row or before.col ~= state().col
  -- Away and back: a new suggestion at the cursor; accept all of it.
  local col = state().col
  step("left_again", "<Left>", function(s)
    return s.col == col - 1
  end)
  step("end_again", "<End>", function(s)
    return s.col == col
  end)
  result.ghost.fourth = ghost_at_cursor()
  if not result.ghost.fourth then
    return
  end
  result.ghost.before_accept = state()
  tick = vim.api.nvim_buf_get_changedtick(bufnr)
  step("accepted", cfg.keys.accept, function(s)
    return vim.api.nvim_buf_get_changedtick(bufnr) ~= tick
  end)

  -- A block: new text (as if pasted), then insert mode on the empty line of a method
  -- body that nothing closes yet. Accept its first line, then the rest.
  step("escaped_again", "<Esc>", function(s)
    return s.mode == "n"
  end)
  vim.api.nvim_buf_set_lines(bufnr, 0, -1, false, cfg.block_lines)
  vim.api.nvim_win_set_cursor(0, { cfg.block_line + 1, 0 })
  local block_col = #cfg.block_lines[cfg.block_line + 1]
  step("block_insert", "A", function(s)
    return s.mode == "i" and s.row == cfg.block_line and s.col == block_col
  end)
  result.ghost.block = ghost_at_cursor()
  if not result.ghost.block then
    return
  end
  tick = vim.api.nvim_buf_get_changedtick(bufnr)
  step("accepted_line", cfg.keys.accept_line, function(s)
    return vim.api.nvim_buf_get_changedtick(bufnr) ~= tick
  end)
  tick = vim.api.nvim_buf_get_changedtick(bufnr)
  step("accepted_block", cfg.keys.accept, function(s)
    return vim.api.nvim_buf_get_changedtick(bufnr) ~= tick
  end)

  -- The completion list through the omnifunc, typed: <C-x><C-o> after "System.out.".
  step("escaped_for_list", "<Esc>", function(s)
    return s.mode == "n"
  end)
  vim.api.nvim_buf_set_lines(bufnr, 0, -1, false, cfg.source_lines)
  vim.api.nvim_win_set_cursor(0, { cfg.line + 1, 0 })
  step("omni_insert", "A", function(s)
    return s.mode == "i" and s.row == cfg.line and s.col == cfg.character
  end)
  local menu
  local deadline = now_ms() + cfg.completion_timeout_ms
  repeat
    result.omni_attempts = (result.omni_attempts or 0) + 1
    vim.api.nvim_input("<C-x><C-o>")
    menu = wait_for(3000, function()
      local info = vim.fn.complete_info({ "items", "mode", "pum_visible" })
      return #info.items > 0 and info
    end)
  until menu or now_ms() > deadline -- (again: the first answers may be empty while cold)
  result.omni = {
    mode = menu and menu.mode,
    pum_visible = menu and menu.pum_visible,
    labels = {},
    ghosts = ghosts(),
  }
  for _, item in ipairs(menu and menu.items or {}) do
    table.insert(result.omni.labels, item.word)
  end
end

driver = coroutine.create(function()
  local ok, err = pcall(run)
  if not ok then
    table.insert(result.errors, "driver: " .. tostring(err))
  end
  if result.attached then
    run_ghost() -- not under pcall: it yields; resume() reports its errors
  end
  finish()
end)
resume()
"""


def _tail(path: Path, lines: int = 40) -> str:
    if not path.is_file():
        return f"({path} not written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _lsp_logs(home: Path) -> str:
    # Neovim 0.7 logs to stdpath("cache")/lsp.log, 0.8+ to stdpath("log") (state dir).
    return "\n".join(f"--- {log}\n{_tail(log)}" for log in sorted(home.rglob("lsp.log"))) or "(no lsp.log)"


def _inserted(before: list[str], row: int, col: int, after: list[str]) -> str | None:
    """The text `after` has at byte column `col` of line `row` that `before` has not, or None."""
    old = "\n".join(before).encode()
    new = "\n".join(after).encode()
    offset = sum(len(line.encode()) + 1 for line in before[:row]) + col
    if len(new) < len(old) or not (new.startswith(old[:offset]) and new.endswith(old[offset:])):
        return None
    return new[offset : len(new) - (len(old) - offset)].decode()


def _end_of(row: int, col: int, text: str) -> tuple[int, int]:
    """(row, byte column) right after `text` inserted at (row, col)."""
    lines = text.split("\n")
    if len(lines) == 1:
        return row, col + len(text.encode())
    return row + len(lines) - 1, len(lines[-1].encode())


def _next_word(text: str) -> str:
    """What accept-word takes: a line break with the indentation after it, or blanks and
    a run of word characters, or blanks and a run of punctuation."""
    match = re.match(r"\n[ \t]*|[ \t]*\w+|[ \t]*[^\w\s]+", text)
    return match.group(0) if match else text


def _ghost_at(state: dict, row: int, col: int) -> list[dict]:
    return [g for g in state["ghosts"] if (g["row"], g["col"]) == (row, col)]


def check_ghost_text(result: dict, context: str) -> None:
    """The ghost-text walk of DRIVER_LUA: shown after typing and idle, cleared by a cursor
    move, by leaving insert mode and by the dismiss key; accepted by word and whole."""
    ghost = result.get("ghost", {})
    line_text = JAVA_SOURCE.splitlines()[CURSOR_LINE] + GHOST_TYPED
    end_col = len(line_text.encode())
    assert ghost.get("typed", {}).get("ok"), f"typing in insert mode did not reach the buffer\n{context}"

    first = ghost.get("first")
    assert first, f"no ghost text extmark at the cursor after typing and idling\n{context}"
    assert (first["row"], first["col"]) == (CURSOR_LINE, end_col), context
    assert first["pos"] in ("inline", "overlay", "eol"), context

    moved = ghost["moved_left"]
    assert moved["ok"], f"<Left> did not move the cursor\n{context}"
    assert not _ghost_at(moved, CURSOR_LINE, end_col), f"ghost text stayed after a cursor move\n{context}"

    assert ghost.get("second"), f"no ghost text after moving back to the end\n{context}"
    escaped = ghost["escaped"]
    assert escaped["ok"] and not escaped["ghosts"], f"ghost text stayed after leaving insert mode\n{context}"

    third = ghost.get("third")
    assert ghost["appending"]["ok"] and third, f"no ghost text after entering insert mode\n{context}"
    word = ghost["accepted_word"]
    part = _inserted(ghost["appending"]["lines"], third["row"], third["col"], word["lines"])
    assert part == _next_word(third["text"]), f"accept-word inserted {part!r}\n{context}"
    row, col = _end_of(third["row"], third["col"], part)
    assert (word["mode"], word["row"], word["col"]) == ("i", row, col), context
    rest = third["text"][len(part) :]
    if rest.strip():
        shown = _ghost_at(word, row, col)
        assert [g["text"] for g in shown] == [rest], f"the rest of the suggestion is not shown\n{context}"

    dismissed = ghost["dismissed"]
    assert dismissed["ok"], f"the dismiss key left ghost text\n{context}"
    assert dismissed["lines"] == word["lines"] and not ghost["dismiss_changed_buffer"], context
    assert not ghost["dismiss_moved_cursor"], context

    fourth = ghost.get("fourth")
    assert fourth, f"no ghost text after moving away and back\n{context}"
    before, accepted = ghost["before_accept"], ghost["accepted"]
    assert accepted["ok"], f"the accept key changed nothing\n{context}"
    inserted = _inserted(before["lines"], fourth["row"], fourth["col"], accepted["lines"])
    assert inserted == fourth["text"], (
        f"accept inserted {inserted!r}, the ghost text was {fourth['text']!r}\n{context}"
    )
    row, col = _end_of(fourth["row"], fourth["col"], inserted)
    assert (accepted["mode"], accepted["row"], accepted["col"]) == ("i", row, col), context
    assert not _ghost_at(accepted, fourth["row"], fourth["col"]), context

    # A block: first line at the cursor, the others as virtual lines below it.
    block = ghost.get("block")
    block_col = len(BLOCK_SOURCE.splitlines()[BLOCK_LINE].encode())
    assert ghost["block_insert"]["ok"] and block, f"no ghost text on the empty line of a block\n{context}"
    assert (block["row"], block["col"]) == (BLOCK_LINE, block_col), context
    assert "\n" in block["text"], f"the block suggestion has no virtual lines\n{context}"
    first_line, rest = block["text"].split("\n", 1)
    by_line = ghost["accepted_line"]
    part = _inserted(ghost["block_insert"]["lines"], BLOCK_LINE, block_col, by_line["lines"])
    assert part == first_line, f"accept-line inserted {part!r}\n{context}"
    row, col = _end_of(BLOCK_LINE, block_col, part)
    assert (by_line["mode"], by_line["row"], by_line["col"]) == ("i", row, col), context
    assert [g["text"] for g in _ghost_at(by_line, row, col)] == ["\n" + rest], context
    whole = ghost["accepted_block"]
    inserted = _inserted(by_line["lines"], row, col, whole["lines"])
    assert inserted == "\n" + rest, f"accept inserted {inserted!r} after accept-line\n{context}"
    assert (whole["mode"], whole["row"], whole["col"]) == ("i", *_end_of(row, col, inserted)), context

    # The completion list, typed: <C-x><C-o> opens the omnifunc's menu; no ghost text over it.
    omni = result.get("omni", {})
    assert ghost["omni_insert"]["ok"], context
    assert omni.get("labels") and omni.get("pum_visible"), f"<C-x><C-o> showed no completion menu\n{context}"
    assert not omni.get("ghosts"), f"ghost text shown over the completion menu\n{context}"


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
                "idle_ms": IDLE_MS,
                "ghost_line": CURSOR_LINE,
                "ghost_typed": GHOST_TYPED,
                "ghost_timeout_ms": GHOST_TIMEOUT_MS,
                "hl_group": GHOST_HL,
                "keys": KEYS,
                "source_lines": JAVA_SOURCE.splitlines(),
                "block_lines": BLOCK_SOURCE.splitlines(),
                "block_line": BLOCK_LINE,
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
    check_ghost_text(result, context)


# Without a server (cmd not found): setup()'s option checks and :KaffeeToggle.
SETUP_LUA = """
local out = {}
local ok, err = pcall(function()
  local kaffee = dofile(vim.env.KAFFEE_LUA)
  out.bad_keymap = select(2, pcall(kaffee.setup, { keymaps = { accept_all = "<C-l>" } }))
  out.bad_idle = select(2, pcall(kaffee.setup, { idle_ms = "soon" }))
  vim.notify = function() end
  kaffee.setup({ cmd = { "/nonexistent/kaffee" }, keymaps = { accept = "<C-l>", dismiss = false }, idle_ms = 5 })
  out.keymaps = kaffee.config.keymaps
  out.idle_ms = kaffee.config.idle_ms
  out.command = vim.fn.exists(":KaffeeToggle")
  out.highlight = vim.fn.synIDattr(vim.fn.synIDtrans(vim.fn.hlID("KaffeeGhostText")), "name")
  out.inline = { kaffee.config.inline }
  vim.cmd("KaffeeToggle")
  table.insert(out.inline, kaffee.config.inline)
  vim.cmd("KaffeeToggle")
  table.insert(out.inline, kaffee.config.inline)
end)
out.error = not ok and tostring(err) or nil
vim.fn.writefile({ vim.fn.json_encode(out) }, vim.env.KAFFEE_RESULT)
vim.cmd("qa!")
"""


def test_setup_options_and_toggle(tmp_path: Path) -> None:
    script = tmp_path / "setup.lua"
    result_json = tmp_path / "result.json"
    script.write_text(SETUP_LUA)
    env = dict(os.environ, KAFFEE_LUA=str(KAFFEE_LUA), KAFFEE_RESULT=str(result_json))
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        env[var] = str(tmp_path / var.lower())
    cmd = [NVIM, "--headless", "-n", "-i", "NONE", "-u", "NONE", "-c", f"luafile {script}"]
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result_json.is_file(), f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(result_json.read_text())
    assert not out.get("error"), out
    assert 'unknown key map "accept_all"' in out["bad_keymap"], out
    assert 'option "idle_ms" must be a number' in out["bad_idle"], out
    # Keys merge over the defaults one by one; false leaves a key unmapped.
    assert out["keymaps"] == {
        "accept": "<C-l>",
        "accept_word": "<M-Right>",
        "accept_line": "<M-Down>",
        "dismiss": False,
    }, out
    assert out["idle_ms"] == 5, out
    assert out["command"] == 2, out
    assert out["highlight"] == "Comment", out
    assert out["inline"] == [True, False, True], out
