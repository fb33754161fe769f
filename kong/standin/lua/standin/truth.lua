-- standin.truth: the stand-in's ground-truth log, JSON lines appended by every nginx process.
-- Each line: ts (realtime s), mono_ns (CLOCK_MONOTONIC, comparable with eBPF timestamps),
-- ev (event name), pid (the writing process), gen (configuration generation), plus fields.

local cjson = require "cjson.safe"
local os_ = require "standin.ffi_os"

local M = { path = nil, gen = nil }

function M.configure(path, gen)
    M.path = path
    M.gen = gen
end

function M.emit(ev, fields)
    if not M.path then return end
    local rec = fields or {}
    rec.ev = ev
    rec.pid = os_.getpid()
    rec.gen = M.gen
    local body = cjson.encode(rec) or '{"ev":"encode_error"}'
    local real, mono = os_.clocks()
    -- cjson keeps 14 digits: write the clocks ourselves to keep them exact.
    local line = string.format('{"ts":%.6f,"mono_ns":%.0f,%s\n', real, mono, body:sub(2))
    -- O_APPEND and one write per line keep lines from several processes whole.
    local f = io.open(M.path, "a")
    if f then
        f:setvbuf("full", 8192)
        f:write(line)
        f:close()
    end
end

return M
