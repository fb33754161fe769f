-- standin.pb_rpc: the ProtoBuf host side for go-pdk embedded servers (Kong 2.7.1's pb_rpc),
-- behind the same `call` interface as mp_rpc. Frames are a 4-byte little-endian length plus
-- payload. HandleEvent runs the whole bridge loop: the server sends a method-name frame and an
-- argument frame per PDK call, the host answers one frame, and an empty frame then the RpcReturn
-- end the event. The protocol has no error message: the server closes the connection instead.
-- Only the PDK calls in `types` below are typed; others get an empty answer.
--
-- NOTE: written from the protocol notes and pluginsocket.proto; it has never talked to a real
-- go-pdk server (no Go toolchain on the machine it was written on).

local bit = require "bit"
local ffi = require "ffi"
local pdk = require "standin.pdk"

local M = {}
local Rpc = {}
Rpc.__index = Rpc

local behaviour = "kong-2.7"

function M.configure(b)
    behaviour = b
end

function M.new(socket_path)
    return setmetatable({ path = socket_path, seq = 0 }, Rpc)
end

-- Wire encoding ------------------------------------------------------------------------------

local function varint(n)
    local out = {}
    -- Negative int32/int64 values are 10-byte two's complement varints; ids here are >= 0.
    repeat
        local byte = n % 128
        n = math.floor(n / 128)
        out[#out + 1] = string.char(n > 0 and byte + 128 or byte)
    until n == 0
    return table.concat(out)
end

local function key(field, wire)
    return varint(field * 8 + wire)
end

local function f_varint(field, n)
    return key(field, 0) .. varint(n)
end

local function f_bytes(field, s)
    return key(field, 2) .. varint(#s) .. s
end

local function f_double(field, x)
    local buf = ffi.new("double[1]", x)
    return key(field, 1) .. ffi.string(buf, 8)
end

-- Decodes one message into { [field] = { values… } } (varints as numbers, others as strings).
local function decode(s)
    local fields, i = {}, 1
    local function read_varint()
        local n, mul = 0, 1
        while true do
            local b = s:byte(i)
            if not b then error("truncated varint") end
            i = i + 1
            n = n + (b % 128) * mul
            mul = mul * 128
            if b < 128 then return n end
        end
    end
    while i <= #s do
        local k = read_varint()
        local field, wire = math.floor(k / 8), k % 8
        local v
        if wire == 0 then
            v = read_varint()
        elseif wire == 1 then
            v = s:sub(i, i + 7); i = i + 8
        elseif wire == 2 then
            local len = read_varint()
            v = s:sub(i, i + len - 1); i = i + len
        elseif wire == 5 then
            v = s:sub(i, i + 3); i = i + 4
        else
            error("unsupported wire type " .. wire)
        end
        fields[field] = fields[field] or {}
        table.insert(fields[field], v)
    end
    return fields
end

local function first(fields, n)
    return fields[n] and fields[n][1]
end

-- google.protobuf.Value / Struct / ListValue <-> Lua values.
local decode_value
local function decode_struct(s)
    local t = {}
    for _, entry in ipairs(decode(s)[1] or {}) do
        local e = decode(entry)
        t[first(e, 1) or ""] = decode_value(first(e, 2) or "")
    end
    return t
end

local function decode_list(s)
    local t = {}
    for i, v in ipairs(decode(s)[1] or {}) do t[i] = decode_value(v) end
    return t
end

decode_value = function(s)
    local f = decode(s)
    if f[2] then
        local buf = ffi.new("double[1]")
        ffi.copy(buf, f[2][1], 8)
        return buf[0]
    end
    if f[3] then return f[3][1] end
    if f[4] then return f[4][1] ~= 0 end
    if f[5] then return decode_struct(f[5][1]) end
    if f[6] then return decode_list(f[6][1]) end
    return nil
end

local encode_value
local function encode_struct(t)
    local out = {}
    for k, v in pairs(t) do
        out[#out + 1] = f_bytes(1, f_bytes(1, tostring(k)) .. f_bytes(2, encode_value(v)))
    end
    return table.concat(out)
end

encode_value = function(v)
    local ty = type(v)
    if ty == "string" then return f_bytes(3, v) end
    if ty == "number" then return f_double(2, v) end
    if ty == "boolean" then return f_varint(4, v and 1 or 0) end
    if ty == "table" then
        if #v > 0 then
            local out = {}
            for _, x in ipairs(v) do out[#out + 1] = f_bytes(1, encode_value(x)) end
            return f_bytes(6, table.concat(out))
        end
        return f_bytes(5, encode_struct(v))
    end
    return f_varint(1, 0) -- null_value
end

-- PDK argument and result types (method name -> input, output), from the Kong service.
local types = {
    ["kong.service.request.set_header"] = { "KV", "Empty" },
    ["kong.service.request.add_header"] = { "KV", "Empty" },
    ["kong.service.request.clear_header"] = { "String", "Empty" },
    ["kong.request.get_header"] = { "String", "String" },
    ["kong.request.get_method"] = { "Empty", "String" },
    ["kong.request.get_path"] = { "Empty", "String" },
    ["kong.request.get_raw_query"] = { "Empty", "String" },
    ["kong.response.set_header"] = { "KV", "Empty" },
    ["kong.response.exit"] = { "ExitArgs", "Empty" },
    ["kong.nginx.get_var"] = { "String", "String" },
    ["kong.node.get_id"] = { "Empty", "String" },
    ["kong.ctx.shared.set"] = { "KV", "Empty" },
    ["kong.ctx.shared.get"] = { "String", "Value" },
}
for _, level in ipairs { "alert", "crit", "err", "warn", "notice", "info", "debug" } do
    types["kong.log." .. level] = { "ListValue", "Empty" }
end

local function decode_args(kind, s)
    if kind == "KV" then
        local f = decode(s)
        return { first(f, 1) or "", decode_value(first(f, 2) or "") }
    elseif kind == "String" then
        return { first(decode(s), 1) or "" }
    elseif kind == "ListValue" then
        return decode_list(s)
    elseif kind == "ExitArgs" then
        local f = decode(s)
        local headers = first(f, 3)
        return { first(f, 1) or 200, first(f, 2), headers and decode_struct(headers) }
    end
    return {}
end

local function encode_result(kind, v)
    if kind == "String" then return v ~= nil and f_bytes(1, tostring(v)) or "" end
    if kind == "Value" then return encode_value(v) end
    return ""
end

-- Framing ------------------------------------------------------------------------------------

local function frame(payload)
    local n = #payload
    return string.char(n % 256, bit.band(bit.rshift(n, 8), 255), bit.band(bit.rshift(n, 16), 255),
                       bit.band(bit.rshift(n, 24), 255)) .. payload
end

local function read_frame(c)
    local head, err = c:receive(4)
    if not head then return nil, err end
    local b1, b2, b3, b4 = head:byte(1, 4)
    local n = b1 + b2 * 256 + b3 * 65536 + b4 * 16777216
    if n == 0 then return "" end
    return c:receive(n)
end

-- Calls --------------------------------------------------------------------------------------

local function connect(self)
    local c, err = ngx.socket.connect("unix:" .. self.path)
    if not c and behaviour == "kong-2.7" then
        error(err, 0) -- 2.7.1 asserts here: a Lua error (a leaked claim inside get_instance_id)
    end
    return c, err
end

local function start_instance(self, c, seq, args)
    local call = f_varint(1, seq) .. f_bytes(33, f_bytes(1, args.Name) .. f_bytes(2, args.Config))
    local _, err = c:send(frame(call))
    if err then return nil, err end
    local payload
    payload, err = read_frame(c)
    if not payload then return nil, err end
    local status = first(decode(payload), 33)
    if not status then return nil, "no instance status in the reply" end
    return { Id = first(decode(status), 2) or 0 }
end

local function handle_event(self, c, seq, args)
    local call = f_varint(1, seq)
        .. f_bytes(36, f_varint(1, args.InstanceId or 0) .. f_bytes(2, args.EventName))
    local _, err = c:send(frame(call))
    if err then return nil, err end
    while true do
        local method
        method, err = read_frame(c)
        if not method then return nil, err end
        if method == "" then
            local ret
            ret, err = read_frame(c)
            if not ret then return nil, err end
            return { Data = "ret" }
        end
        local arg
        arg, err = read_frame(c)
        if not arg then return nil, err end
        local ty = types[method] or { "Empty", "Empty" }
        local value = pdk.call(method, decode_args(ty[1], arg))
        _, err = c:send(frame(encode_result(ty[2], value)))
        if err then return nil, err end
    end
end

--- Same contract as mp_rpc's call: the result, or nil and an error string.
function Rpc:call(method, args)
    self.seq = self.seq + 1
    local c, err = connect(self)
    if not c then return nil, err end
    local res
    if method == "plugin.StartInstance" then
        res, err = start_instance(self, c, self.seq, args)
    elseif method == "plugin.HandleEvent" then
        res, err = handle_event(self, c, self.seq, args)
    else
        res, err = nil, method .. " is not supported by the stand-in's ProtoBuf host"
    end
    if res then c:setkeepalive() else c:close() end
    return res, err
end

return M
