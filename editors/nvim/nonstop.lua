-- nvim-dap adapter and configuration for nonstop: breakpoints become rules in the running
-- program (logpoints, snapshots, counts); nothing ever pauses.
local dap = require("dap")
dap.adapters.nonstop = { type = "executable", command = "nonstop", args = { "dap" } }
local config = {
  {
    type = "nonstop",
    request = "attach",
    name = "nonstop: attach to a service",
    server = os.getenv("NONSTOP_SERVER") or "http://127.0.0.1:7070",
    service = function() return vim.fn.input("service: ") end,
    sourceMap = function() return { [vim.fn.getcwd() .. "/"] = "" } end,
  },
}
dap.configurations.rust = config
dap.configurations.c = config
dap.configurations.cpp = config
