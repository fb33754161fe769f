-- standin.mp_rpc: the MessagePack-RPC client Kong 2.7.1 uses for Python and JS plugin servers.
-- One connect per call through the worker's cosocket keepalive pool (keyed by socket path), one
-- outstanding request per connection, msgids from a per-worker per-server counter.

local mp = require "MessagePack"

local M = {}
local Rpc = {}
Rpc.__index = Rpc

--- A client for the server listening at socket_path (one per worker and server).
function M.new(socket_path)
    return setmetatable({ path = socket_path, msg_id = 0 }, Rpc)
end

--- Sends [0, id, method, {...}] and reads one reply. Returns result, or nil and an error.
--- A reply for another msgid raises, as Kong's assert does.
function Rpc:call(method, ...)
    self.msg_id = self.msg_id + 1
    local msg_id = self.msg_id
    local c, err = ngx.socket.connect("unix:" .. self.path)
    if not c then
        return nil, err
    end
    local _, serr = c:send(mp.pack({ 0, msg_id, method, { ... } }))
    if serr then
        c:setkeepalive()
        return nil, serr
    end
    local rerr
    local next_msg = mp.unpacker(function()
        local data, e = c:receiveany(4096)
        if not data then rerr = e end
        return data
    end)
    -- The iterator yields (true, object), or nothing when the stream ended first.
    local ok, got, reply = pcall(next_msg)
    if not ok or got == nil then
        -- Kong 2.7.1 hands the connection back to the pool on this path too.
        c:setkeepalive()
        return nil, rerr or (not ok and tostring(got)) or "no data"
    end
    assert(type(reply) == "table" and reply[2] == msg_id,
           "unexpected RPC reply msgid (sent " .. msg_id .. ")")
    c:setkeepalive()
    if reply[3] ~= nil then
        return nil, tostring(reply[3])
    end
    return reply[4]
end

return M
