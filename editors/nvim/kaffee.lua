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
-- (`autocomplete = true`). On 0.12+ the server's inline suggestions show as ghost
-- text through vim.lsp.inline_completion (`inline = true`).

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
  inline = true, -- 0.12+: vim.lsp.inline_completion.enable() (ghost text)
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

local function make_on_attach(config)
  return function(client, bufnr)
    if config.omnifunc then
      vim.bo[bufnr].omnifunc = "v:lua.vim.lsp.omnifunc"
    end
    if config.autocomplete and vim.lsp.completion and vim.lsp.completion.enable then
      pcall(vim.lsp.completion.enable, true, client.id, bufnr, { autotrigger = true })
    end
    if config.inline and type(vim.lsp.inline_completion) == "table" and vim.lsp.inline_completion.enable then
      pcall(vim.lsp.inline_completion.enable, true, { bufnr = bufnr })
    end
    if config.on_attach then
      config.on_attach(client, bufnr)
    end
  end
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
  })
  -- Shallow on purpose: a list given by the user (cmd, filetypes) replaces the default.
  local config = vim.tbl_extend("force", M.defaults, opts)
  M.config = config

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
