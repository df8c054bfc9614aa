-- Kaffee for Neovim: starts `kaffee serve` (LSP over stdio) for Java buffers.
--
-- Works on Neovim 0.7 (Debian bookworm) and newer:
--   0.11+    vim.lsp.config() + vim.lsp.enable()
--   0.8-0.10 vim.lsp.start() from a FileType autocommand
--   0.7      vim.lsp.start_client() once per project root + vim.lsp.buf_attach_client()
--
-- Use it (see editors/nvim/README.md):
--   require("kaffee").setup({ model = "~/models/kaffee-small" })      -- copied to ~/.config/nvim/lua/
--   dofile("/path/to/kaffee/editors/nvim/kaffee.lua").setup({})       -- or straight from a checkout
--
-- Completions come through the 'omnifunc' (<C-x><C-o>, set on attach), through any
-- completion plugin that reads LSP sources, or, on 0.11+, through vim.lsp.completion
-- (`autocomplete = true`).
--
-- Ghost text (`inline = true`): the server's textDocument/inlineCompletion answer,
-- shown after the cursor. On 0.12+ through vim.lsp.inline_completion; on 0.7-0.11
-- (or with `inline_native = false`) through extmark virtual text drawn here: the rest of
-- the cursor line as virt_text (inline on 0.10+, overlay before), the following lines of
-- a block as virt_lines. Requested `idle_ms` after the last edit or cursor move in
-- insert mode; accepted whole, by word or by line; cleared on any cursor move, edit,
-- mode change or buffer switch. `:KaffeeToggle` turns it off and on.

local M = {}

--- Defaults of setup(); every key may be overridden.
M.defaults = {
  name = "kaffee", -- client name (one client per project root)
  cmd = { "kaffee", "serve" }, -- the server command line (LSP over stdio)
  model = nil, -- model directory, passed as `--model DIR` (nil: the server's default model)
  log_level = nil, -- passed as `--log-level L` (debug, info, warning, error)
  -- initializationOptions, sent as given; keys the server reads:
  -- modelPath (string|nil), maxLines (int), deadlineMs (int),
  -- workspaceContext (bool), device ("cpu"|"cuda"|"auto"). Left out: server defaults.
  init_options = {},
  filetypes = { "java" },
  -- The first directory upwards holding one of these is the project root
  -- (the file's own directory when none is found).
  root_markers = {
    "pom.xml",
    "build.gradle",
    "build.gradle.kts",
    "settings.gradle",
    "settings.gradle.kts",
    "build.xml",
    ".git",
  },
  capabilities = nil, -- extra client capabilities, merged over Neovim's own
  on_attach = nil, -- function(client, bufnr) called after Kaffee's own attach steps
  on_exit = nil, -- function(code, signal, client_id) called when the server process ends
  omnifunc = true, -- set 'omnifunc' to vim.lsp.omnifunc in attached buffers
  autocomplete = false, -- 0.11+: vim.lsp.completion.enable(..., { autotrigger = true })
  inline = true, -- ghost text (see above); `:KaffeeToggle` flips it at run time
  inline_native = true, -- 0.12+: use vim.lsp.inline_completion; false: Kaffee's extmarks there too
  idle_ms = 250, -- extmark ghost text: request a suggestion after this long without typing
  hl_group = "KaffeeGhostText", -- highlight of the ghost text (default: linked to Comment)
  -- Insert-mode keys in attached buffers; false or "" leaves one unmapped. A key with
  -- nothing to accept or dismiss does what it does without Kaffee.
  keymaps = {
    accept = "<Tab>", -- the whole suggestion
    accept_word = "<M-Right>", -- the next word
    accept_line = "<M-Down>", -- the rest of the current line (then the next line)
    dismiss = "<C-]>",
  },
}

local function has(feature)
  return vim.fn.has(feature) == 1
end

local function notify(msg, level)
  vim.notify("kaffee: " .. msg, level or vim.log.levels.INFO)
end

--- Type check of setup() options (vim.validate's signature differs across versions).
local function check_types(opts, types)
  for key, value in pairs(opts) do
    local expected = types[key]
    if expected == nil then
      error(("kaffee.setup: unknown option %q"):format(tostring(key)), 3)
    elseif type(value) ~= expected then
      error(("kaffee.setup: option %q must be a %s, got %s"):format(key, expected, type(value)), 3)
    end
  end
end

--- The full server command line for a resolved configuration.
local function build_cmd(config)
  local cmd = {}
  for _, part in ipairs(config.cmd) do
    table.insert(cmd, part)
  end
  if config.model then
    table.insert(cmd, "--model")
    table.insert(cmd, vim.fn.expand(config.model))
  end
  if config.log_level then
    table.insert(cmd, "--log-level")
    table.insert(cmd, config.log_level)
  end
  return cmd
end

--- initializationOptions, always encoded as a JSON object (never `[]`).
local function build_init_options(config)
  local opts = config.init_options or {}
  if vim.tbl_isempty(opts) then
    return vim.empty_dict()
  end
  return opts
end

local function build_capabilities(config)
  local capabilities = vim.lsp.protocol.make_client_capabilities()
  if config.capabilities then
    capabilities = vim.tbl_deep_extend("force", capabilities, config.capabilities)
  end
  return capabilities
end

--- Project root of a buffer: the nearest directory upwards with a root marker.
--- Written with vim.loop only, as vim.fs does not exist before 0.8.
local function find_root(bufnr, markers)
  local name = vim.api.nvim_buf_get_name(bufnr)
  local start = name ~= "" and vim.fn.fnamemodify(name, ":p:h") or vim.loop.cwd()
  local dir = start
  while dir and dir ~= "" do
    for _, marker in ipairs(markers) do
      if vim.loop.fs_stat(dir .. "/" .. marker) then
        return dir
      end
    end
    local parent = vim.fn.fnamemodify(dir, ":h")
    if parent == dir then
      break
    end
    dir = parent
  end
  return start
end

--- Only real files and new buffers: no help, terminal, quickfix or scratch buffers.
local function attachable(bufnr)
  return vim.api.nvim_buf_is_valid(bufnr) and vim.bo[bufnr].buftype == ""
end

-- Ghost text ---------------------------------------------------------------------------

local INLINE_METHOD = "textDocument/inlineCompletion"
local ghost_ns = vim.api.nvim_create_namespace("kaffee_ghost")
M.namespace = ghost_ns -- the extmark namespace of the ghost text

local ghost = {
  enabled = true, -- run-time switch (:KaffeeToggle); setup() sets it from `inline`
  timer = nil, -- the idle timer (one for all buffers: only the current one types)
  seq = 0, -- number of the latest request; answers to older ones are dropped
  pending = nil, -- { client = client, id = request_id } of the request in flight
  current = nil, -- what is shown: { bufnr, row, col, tick, text }
}

local function config_of()
  return M.config or M.defaults
end

local function native_inline(config)
  return config.inline_native
    and type(vim.lsp.inline_completion) == "table"
    and vim.lsp.inline_completion.enable ~= nil
end

local function in_insert_mode()
  return vim.api.nvim_get_mode().mode == "i" and vim.fn.pumvisible() == 0
end

--- (0-based row, byte column, changedtick) of the cursor in the current window.
local function cursor_state(bufnr)
  local pos = vim.api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2], vim.api.nvim_buf_get_changedtick(bufnr)
end

local function utf8_len(byte)
  if byte < 0xC0 then
    return 1 -- ASCII, or a stray continuation byte counted on its own
  elseif byte < 0xE0 then
    return 2
  elseif byte < 0xF0 then
    return 3
  end
  return 4
end

--- LSP character offset (in the client's position encoding) of a byte column of `line`.
local function byte_to_char(line, col, encoding)
  if encoding == "utf-8" then
    return col
  end
  local units, i = 0, 1
  while i <= col and i <= #line do
    local len = utf8_len(line:byte(i))
    units = units + ((encoding ~= "utf-32" and len == 4) and 2 or 1)
    i = i + len
  end
  return units
end

--- Byte column of an LSP character offset of `line`.
local function char_to_byte(line, character, encoding)
  if encoding == "utf-8" then
    return math.min(character, #line)
  end
  local units, i = 0, 1
  while i <= #line and units < character do
    local len = utf8_len(line:byte(i))
    units = units + ((encoding ~= "utf-32" and len == 4) and 2 or 1)
    i = i + len
  end
  return math.min(i - 1, #line)
end

--- Calls client.request (0.7-0.10) or client:request (0.11+); returns ok, request_id.
local function client_request(client, method, params, handler, bufnr)
  if has("nvim-0.11") then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

local function cancel_pending()
  local pending = ghost.pending
  ghost.pending = nil
  if pending then
    if has("nvim-0.11") then
      pcall(pending.client.cancel_request, pending.client, pending.id)
    else
      pcall(pending.client.cancel_request, pending.id)
    end
  end
end

--- Removes the ghost text and forgets any request in flight.
local function clear()
  ghost.seq = ghost.seq + 1
  cancel_pending()
  local shown = ghost.current
  ghost.current = nil
  if shown and vim.api.nvim_buf_is_valid(shown.bufnr) then
    vim.api.nvim_buf_clear_namespace(shown.bufnr, ghost_ns, 0, -1)
  end
end

--- Whether the shown ghost text still belongs where the cursor is, unedited.
local function still_current(shown, bufnr)
  if not shown or shown.bufnr ~= bufnr or vim.api.nvim_get_current_buf() ~= bufnr then
    return false
  end
  local row, col, tick = cursor_state(bufnr)
  return shown.row == row and shown.col == col and shown.tick == tick
end

local function display(text)
  return (text:gsub("\t", string.rep(" ", vim.bo.tabstop)))
end

--- Draws ghost text `shown.text` at (shown.row, shown.col) of shown.bufnr.
local function render(shown)
  local config = config_of()
  local hl = config.hl_group
  local bufnr, row, col = shown.bufnr, shown.row, shown.col
  vim.api.nvim_buf_clear_namespace(bufnr, ghost_ns, 0, -1)
  local lines = vim.split(shown.text, "\n", { plain = true })
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
  local suffix = line:sub(col + 1)
  local opts = { hl_mode = "combine" }
  if has("nvim-0.10") then
    -- Inline virtual text shifts the rest of the line right, as if typed.
    if lines[1] ~= "" then
      opts.virt_text = { { display(lines[1]), hl } }
      opts.virt_text_pos = "inline"
    end
  else
    -- 0.7-0.9 have no inline virtual text: draw over the line from the cursor on, the
    -- text after the cursor redrawn after the suggestion (or after its last line).
    local chunks = {}
    if lines[1] ~= "" then
      table.insert(chunks, { display(lines[1]), hl })
    end
    if suffix ~= "" then
      if #lines == 1 then
        table.insert(chunks, { display(suffix), "Normal" })
      else
        local width = vim.fn.strdisplaywidth(display(suffix)) - vim.fn.strdisplaywidth(display(lines[1]))
        if width > 0 then
          table.insert(chunks, { string.rep(" ", width), "Normal" })
        end
      end
    end
    if #chunks > 0 then
      opts.virt_text = chunks
      opts.virt_text_pos = "overlay"
    end
  end
  if #lines > 1 then
    opts.virt_lines = {}
    for i = 2, #lines do
      local chunks = { { display(lines[i]), hl } }
      if i == #lines and suffix ~= "" and not has("nvim-0.10") then
        table.insert(chunks, { display(suffix), "Normal" })
      end
      table.insert(opts.virt_lines, chunks)
    end
  end
  shown.extmark = vim.api.nvim_buf_set_extmark(bufnr, ghost_ns, row, col, opts)
  ghost.current = shown
end

--- The text to show from an InlineCompletionItem answered for (row, col), or nil.
--- The item's range must end at the cursor; text it covers before the cursor (already
--- typed) must start the insertText and is not shown again.
local function item_text(item, line, row, col, encoding)
  if type(item) ~= "table" then
    return nil
  end
  local text = item.insertText
  if type(text) == "table" then
    text = text.value -- a StringValue (snippet): shown and inserted as plain text
  end
  if type(text) ~= "string" then
    return nil
  end
  local range = item.range
  if type(range) == "table" and range.start and range["end"] then
    local start_col = char_to_byte(line, range.start.character, encoding)
    local end_col = char_to_byte(line, range["end"].character, encoding)
    if range.start.line ~= row or range["end"].line ~= row or end_col ~= col or start_col > col then
      return nil
    end
    local typed = line:sub(start_col + 1, col)
    if text:sub(1, #typed) ~= typed then
      return nil
    end
    text = text:sub(#typed + 1)
  end
  if text:match("^%s*$") then
    return nil
  end
  return text
end

--- Asks the server for a suggestion at the cursor; shows it if nothing moved meanwhile.
local function request(bufnr)
  local config = config_of()
  if not (ghost.enabled and config.inline) or vim.api.nvim_get_current_buf() ~= bufnr or not in_insert_mode() then
    return
  end
  local client = M.get_client(bufnr)
  if not client then
    return
  end
  clear()
  local seq = ghost.seq
  local row, col, tick = cursor_state(bufnr)
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
  local encoding = client.offset_encoding or "utf-16"
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = { line = row, character = byte_to_char(line, col, encoding) },
    context = { triggerKind = 2 }, -- InlineCompletionTriggerKind.Automatic
  }
  local function handler(err, result)
    if seq ~= ghost.seq then
      return -- superseded by a later request, or cleared
    end
    ghost.pending = nil
    if err or type(result) ~= "table" or not vim.api.nvim_buf_is_valid(bufnr) then
      return
    end
    -- Stale: the buffer changed, the cursor moved, or insert mode was left meanwhile.
    if not in_insert_mode() or not still_current({ bufnr = bufnr, row = row, col = col, tick = tick }, bufnr) then
      return
    end
    local items = result.items or result
    for _, item in ipairs(items) do
      local text = item_text(item, line, row, col, encoding)
      if text then
        render({ bufnr = bufnr, row = row, col = col, tick = tick, text = text, command = item.command })
        return
      end
    end
  end
  local ok, id = client_request(client, INLINE_METHOD, params, handler, bufnr)
  if ok and id then
    ghost.pending = { client = client, id = id }
  end
end

--- (Re)starts the idle timer: a request for bufnr once the user pauses.
local function schedule_request(bufnr)
  local config = config_of()
  if not (ghost.enabled and config.inline) then
    return
  end
  ghost.timer = ghost.timer or vim.loop.new_timer()
  ghost.timer:stop()
  ghost.timer:start(
    config.idle_ms,
    0,
    vim.schedule_wrap(function()
      request(bufnr)
    end)
  )
end

local function stop_timer()
  if ghost.timer then
    ghost.timer:stop()
  end
end

--- The ghost text shown in the current buffer (what accept() would insert), or nil.
function M.ghost_text()
  local shown = ghost.current
  if shown and still_current(shown, vim.api.nvim_get_current_buf()) then
    return shown.text
  end
  return nil
end

--- The next word of a suggestion: its leading blanks and a run of word characters or
--- of punctuation; at a line break, the break and the next line's indentation.
local function next_word(text)
  return text:match("^\n[ \t]*") or text:match("^[ \t]*[%w_]+") or text:match("^[ \t]*[^%w_%s]+") or text
end

--- The rest of the suggestion's current line; at a line break, the next line.
local function next_line(text)
  return text:match("^\n[^\n]*") or text:match("^[^\n]+") or text
end

--- Inserts the shown suggestion, or its next word ("word") or line ("line"), at the
--- cursor; the rest, if any, stays shown. Returns false when nothing is shown.
function M.accept(kind)
  local bufnr = vim.api.nvim_get_current_buf()
  local shown = ghost.current
  if not still_current(shown, bufnr) then
    return false
  end
  local part = shown.text
  if kind == "word" then
    part = next_word(shown.text)
  elseif kind == "line" then
    part = next_line(shown.text)
  end
  local rest = shown.text:sub(#part + 1)
  M.report_accept(shown.command, vim.fn.strchars(part), bufnr)
  local lines = vim.split(part, "\n", { plain = true })
  vim.api.nvim_buf_set_text(bufnr, shown.row, shown.col, shown.row, shown.col, lines)
  local row = shown.row + #lines - 1
  local col = #lines == 1 and shown.col + #lines[1] or #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { row + 1, col })
  clear()
  if rest ~= "" and not rest:match("^%s*$") then
    local tick = vim.api.nvim_buf_get_changedtick(bufnr)
    render({ bufnr = bufnr, row = row, col = col, tick = tick, text = rest, command = shown.command })
  end
  return true
end

--- Runs a suggestion's `command` (the server's `kaffee.accepted`: local acceptance
--- statistics) through workspace/executeCommand, telling it how many characters were
--- inserted (fewer than offered for a word or line accept).
function M.report_accept(command, chars, bufnr)
  local client = M.get_client(bufnr)
  if type(command) ~= "table" or type(command.command) ~= "string" or not client then
    return
  end
  local args = vim.deepcopy(command.arguments or {})
  if #args >= 3 then
    args[3] = chars
  end
  local params = { command = command.command, arguments = args }
  client_request(client, "workspace/executeCommand", params, function() end, bufnr)
end

--- Hides the shown suggestion. Returns false when nothing was shown.
function M.dismiss()
  local visible = M.ghost_text() ~= nil
  clear()
  stop_timer()
  return visible
end

--- Turns ghost text off or on (`enable` nil: flip it); returns the new state.
function M.toggle(enable)
  local config = config_of()
  if enable == nil then
    enable = not (ghost.enabled and config.inline)
  end
  ghost.enabled = enable
  config.inline = enable
  clear()
  stop_timer()
  if native_inline(config) then
    pcall(vim.lsp.inline_completion.enable, enable)
  end
  notify("ghost text " .. (enable and "on" or "off"))
  return enable
end

local function feed(keys)
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), "ni", false)
end

--- An insert-mode key: `action()` when it applies, else the key's own meaning.
local function map_key(bufnr, lhs, action, desc)
  if type(lhs) ~= "string" or lhs == "" then
    return
  end
  vim.keymap.set("i", lhs, function()
    if not action() then
      feed(lhs)
    end
  end, { buffer = bufnr, silent = true, desc = desc })
end

--- KaffeeGhostText, linked to Comment unless the user or the colour scheme set it;
--- again after every `:colorscheme` (which clears default links).
local function define_highlight()
  local function link()
    vim.cmd("highlight default link " .. M.defaults.hl_group .. " Comment")
  end
  link()
  vim.api.nvim_create_autocmd("ColorScheme", {
    group = vim.api.nvim_create_augroup("kaffee_highlight", { clear = true }),
    callback = link,
  })
end

--- Ghost text for one attached buffer: native on 0.12+, else timer, autocommands, keys.
local function attach_ghost(config, bufnr)
  local keys = config.keymaps or {}
  if native_inline(config) then
    if config.inline then
      pcall(vim.lsp.inline_completion.enable, true, { bufnr = bufnr })
    end
    map_key(bufnr, keys.accept, function()
      return vim.lsp.inline_completion.get ~= nil and vim.lsp.inline_completion.get() == true
    end, "Accept Kaffee's suggestion")
    return
  end
  local group = vim.api.nvim_create_augroup("kaffee_ghost_" .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ "InsertEnter", "TextChangedI", "CursorMovedI" }, {
    group = group,
    buffer = bufnr,
    desc = "Kaffee ghost text: clear it unless still current, request anew after idle_ms",
    callback = function()
      if ghost.current and still_current(ghost.current, bufnr) then
        return -- e.g. the rest of a partly accepted suggestion
      end
      clear()
      schedule_request(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave", "CompleteChanged", "TextChanged", "CursorMoved" }, {
    group = group,
    buffer = bufnr,
    desc = "Kaffee ghost text: clear it",
    callback = function()
      if ghost.current or ghost.pending then
        clear()
      end
      stop_timer()
    end,
  })
  vim.api.nvim_create_autocmd({ "BufUnload", "BufWipeout" }, {
    group = group,
    buffer = bufnr,
    once = true,
    callback = function()
      pcall(vim.api.nvim_del_augroup_by_id, group)
      if ghost.current and ghost.current.bufnr == bufnr then
        ghost.current = nil
      end
    end,
  })
  map_key(bufnr, keys.accept, function()
    return M.accept()
  end, "Accept Kaffee's suggestion")
  map_key(bufnr, keys.accept_word, function()
    return M.accept("word")
  end, "Accept the next word of Kaffee's suggestion")
  map_key(bufnr, keys.accept_line, function()
    return M.accept("line")
  end, "Accept the current line of Kaffee's suggestion")
  map_key(bufnr, keys.dismiss, M.dismiss, "Dismiss Kaffee's suggestion")
end

local function make_on_attach(config)
  return function(client, bufnr)
    if config.omnifunc then
      vim.bo[bufnr].omnifunc = "v:lua.vim.lsp.omnifunc"
    end
    if config.autocomplete and vim.lsp.completion and vim.lsp.completion.enable then
      pcall(vim.lsp.completion.enable, true, client.id, bufnr, { autotrigger = true })
    end
    attach_ghost(config, bufnr)
    if config.on_attach then
      config.on_attach(client, bufnr)
    end
  end
end

-- Status ---------------------------------------------------------------------------

local STATUS_LABEL = { loading = "loading", ready = "", fallback = "n-gram", error = "error", disabled = "off" }

--- The server's `kaffee/status`: the last params are kept for M.status(); a
--- `User KaffeeStatus` autocommand lets a statusline plugin redraw.
local function on_status(_, result, ctx)
  if type(result) ~= "table" then
    return
  end
  M.last_status = vim.tbl_extend("force", result, { client_id = ctx and ctx.client_id })
  pcall(vim.api.nvim_exec_autocmds, "User", { pattern = "KaffeeStatus", modeline = false })
end

--- A short text for the statusline ("" before the server said anything), e.g.
--- "Kaffee 42ms", "Kaffee loading", "Kaffee n-gram", "Kaffee error", "Kaffee off".
--- `M.last_status` holds the full params (state, model, backend, device, latencyMs, message).
function M.status()
  local s = M.last_status
  if type(s) ~= "table" or STATUS_LABEL[s.state] == nil then
    return ""
  end
  local label = STATUS_LABEL[s.state]
  if s.state == "ready" and type(s.latencyMs) == "number" then
    label = ("%dms"):format(math.floor(s.latencyMs + 0.5))
  end
  return label == "" and "Kaffee" or ("Kaffee " .. label)
end

--- The client configuration shared by every Neovim version's start function.
local function client_config(config, root_dir)
  return {
    name = config.name,
    cmd = build_cmd(config),
    root_dir = root_dir,
    init_options = build_init_options(config),
    -- Answers workspace/configuration for section "kaffee" with the same options.
    settings = { kaffee = build_init_options(config) },
    capabilities = build_capabilities(config),
    handlers = { ["kaffee/status"] = on_status },
    on_attach = make_on_attach(config),
    on_exit = config.on_exit,
  }
end

-- Neovim 0.7: one client per (name, root), attached by hand to each buffer.
local clients_by_root = {}

local function attach_07(config, bufnr)
  local root = find_root(bufnr, config.root_markers)
  local client_id = clients_by_root[root]
  local client = client_id and vim.lsp.get_client_by_id(client_id)
  if not client or client.is_stopped() then
    client_id = vim.lsp.start_client(client_config(config, root))
    if not client_id then
      notify("could not start " .. table.concat(build_cmd(config), " "), vim.log.levels.ERROR)
      return
    end
    clients_by_root[root] = client_id
  end
  vim.lsp.buf_attach_client(bufnr, client_id)
end

-- Neovim 0.8 to 0.10: vim.lsp.start reuses a running client with the same name and root.
local function attach_08(config, bufnr)
  local root = find_root(bufnr, config.root_markers)
  vim.lsp.start(client_config(config, root), { bufnr = bufnr })
end

--- Start Kaffee for the configured filetypes. Call once, from init.lua.
function M.setup(opts)
  if not has("nvim-0.7") then
    notify("needs Neovim 0.7 or newer", vim.log.levels.ERROR)
    return
  end
  opts = opts or {}
  check_types(opts, {
    name = "string",
    cmd = "table",
    model = "string",
    log_level = "string",
    init_options = "table",
    filetypes = "table",
    root_markers = "table",
    capabilities = "table",
    on_attach = "function",
    on_exit = "function",
    omnifunc = "boolean",
    autocomplete = "boolean",
    inline = "boolean",
    inline_native = "boolean",
    idle_ms = "number",
    hl_group = "string",
    keymaps = "table",
  })
  -- Shallow on purpose: a list given by the user (cmd, filetypes) replaces the default.
  local config = vim.tbl_extend("force", M.defaults, opts)
  -- keymaps merge key by key: { accept = "<C-l>" } keeps the other default keys.
  config.keymaps = vim.tbl_extend("force", M.defaults.keymaps, opts.keymaps or {})
  for action, lhs in pairs(config.keymaps) do
    if M.defaults.keymaps[action] == nil then
      error(("kaffee.setup: unknown key map %q"):format(tostring(action)), 2)
    elseif lhs ~= false and type(lhs) ~= "string" then
      error(("kaffee.setup: key map %q must be a string or false"):format(action), 2)
    end
  end
  if config.idle_ms < 0 then
    error("kaffee.setup: idle_ms must not be negative", 2)
  end
  M.config = config
  ghost.enabled = config.inline
  define_highlight()
  vim.api.nvim_create_user_command("KaffeeToggle", function()
    M.toggle()
  end, { desc = "Turn Kaffee's ghost text off or on" })

  local program = config.cmd[1]
  if not program or vim.fn.executable(program) ~= 1 then
    notify(
      ("server program %q not found; install kaffee or pass `cmd` to setup()"):format(tostring(program)),
      vim.log.levels.WARN
    )
    return
  end

  if has("nvim-0.11") and vim.lsp.config and vim.lsp.enable then
    local client = client_config(config, nil)
    client.filetypes = config.filetypes
    client.root_markers = config.root_markers
    vim.lsp.config(config.name, client)
    vim.lsp.enable(config.name)
    -- enable() attaches open buffers itself only after VimEnter; before it (setup()
    -- from a -c command), replay FileType for its own autocommand group.
    if vim.v.vim_did_enter ~= 1 then
      for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
        if vim.api.nvim_buf_is_loaded(bufnr) and vim.tbl_contains(config.filetypes, vim.bo[bufnr].filetype) then
          pcall(vim.api.nvim_exec_autocmds, "FileType", { group = "nvim.lsp.enable", buffer = bufnr })
        end
      end
    end
    return
  end

  local attach = vim.lsp.start and attach_08 or attach_07
  local group = vim.api.nvim_create_augroup("kaffee", { clear = true })
  vim.api.nvim_create_autocmd("FileType", {
    group = group,
    pattern = config.filetypes,
    desc = "Start or attach the Kaffee language server",
    callback = function(args)
      if attachable(args.buf) then
        attach(config, args.buf)
      end
    end,
  })
  -- Buffers already open when setup() runs (e.g. a plugin manager loading late).
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    if
      vim.api.nvim_buf_is_loaded(bufnr)
      and attachable(bufnr)
      and vim.tbl_contains(config.filetypes, vim.bo[bufnr].filetype)
    then
      attach(config, bufnr)
    end
  end
end

--- The Kaffee client attached to a buffer (0: current), or nil.
function M.get_client(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local name = (M.config or M.defaults).name
  local clients = vim.lsp.get_clients and vim.lsp.get_clients({ bufnr = bufnr, name = name })
    or vim.lsp.buf_get_clients(bufnr)
  for _, client in pairs(clients) do
    if client.name == name then
      return client
    end
  end
  return nil
end

return M
