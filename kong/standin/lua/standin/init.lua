-- standin: the stand-in gateway's entry points, one per nginx phase (see nginx.conf.tmpl).
--   init        master, at start and on every reload (HUP): reads standin.json, numbers this
--               configuration generation, runs each server's query command (as Kong.init does)
--   init_worker every worker: worker 0 spawns this generation's plugin servers
--   exit_worker every worker: worker 0 stops its generation (SIGKILL or SIGTERM)
--   access      per request: runs the route's plugin, failing open on RPC errors

local cjson = require "cjson.safe"
local events = require "standin.events"
local instances = require "standin.instances"
local mp_rpc = require "standin.mp_rpc"
local pb_rpc = require "standin.pb_rpc"
local os_ = require "standin.ffi_os"
local servers = require "standin.servers"
local truth = require "standin.truth"

local M = {}

local cfg
local gen
local rpcs = {}  -- per worker: name -> Rpc
local confs = {} -- per worker: name -> the plugin config Kong would send (with __key__/__seq__)

local function read_file(path)
    local f, err = io.open(path, "r")
    if not f then return nil, err end
    local s = f:read("*a")
    f:close()
    return s
end

local function next_generation(path)
    local n = tonumber(read_file(path) or "") or 0
    local f = assert(io.open(path, "w"))
    f:write(tostring(n + 1), "\n")
    f:close()
    return n + 1
end

local function query(def)
    ngx.update_time()
    local started = ngx.now()
    local p = io.popen(def.query_cmd .. " 2>/dev/null")
    local out = p and p:read("*a") or ""
    if p then p:close() end
    ngx.update_time()
    local info = cjson.decode(out)
    -- As in Kong: the query output names the protocol (go-pdk says ProtoBuf:1), MsgPack if not.
    def.protocol = type(info) == "table" and info.Protocol or "MsgPack:1"
    if type(info) == "table" and info.Plugins then info = info.Plugins end
    local names = {}
    for _, p_ in ipairs(type(info) == "table" and info or {}) do names[#names + 1] = p_.Name end
    truth.emit("query", { plugin = def.name, ok = #names > 0, plugins = names, protocol = def.protocol,
                          duration_ms = math.floor((ngx.now() - started) * 1000) })
    return #names > 0
end

function M.init(config_path)
    cfg = assert(cjson.decode(assert(read_file(config_path))), "bad " .. config_path)
    gen = next_generation(cfg.prefix .. "/generation")
    truth.configure(cfg.truth_log, gen)
    instances.configure(cfg.behaviour, cfg.inject, gen)
    events.configure(cfg.behaviour)
    pb_rpc.configure(cfg.behaviour)
    truth.emit("master_init", { behaviour = cfg.behaviour, workers = cfg.workers,
                                servers = #cfg.servers })
    for _, def in ipairs(cfg.servers) do
        if not query(def) then
            ngx.log(ngx.ERR, "plugin server ", def.name, ": query command failed: ", def.query_cmd)
        end
    end
    for name, why in pairs(cfg.skipped or {}) do
        truth.emit("skipped", { plugin = name, reason = why })
    end
end

function M.init_worker()
    truth.emit("worker_start", { worker = ngx.worker.id(), count = ngx.worker.count(),
                                 init_ms = cfg.worker_init_ms })
    -- Kong 2.7.1's init_worker loads its config and builds its router before the worker serves,
    -- and worker 0 starts its plugin servers only after it (kong/README.md). Modelled as a
    -- blocking wait: Kong's own waits in init_worker block too (its patched ngx.sleep).
    os_.block_ms(cfg.worker_init_ms or 0)
    if ngx.worker.id() == 0 then
        servers.start(cfg.servers, cfg.pump_window_s)
    else
        ngx.log(ngx.INFO, "only worker #0 can manage plugin servers")
    end
end

function M.exit_worker()
    truth.emit("worker_exit", { worker = ngx.worker.id() })
    if ngx.worker.id() == 0 then
        servers.stop(cfg.behaviour)
    end
end

local function rpc_for(name)
    local rpc = rpcs[name]
    if not rpc then
        for _, def in ipairs(cfg.servers) do
            if def.name == name then
                rpc = (def.protocol == "ProtoBuf:1" and pb_rpc or mp_rpc).new(def.socket)
            end
        end
        rpcs[name] = rpc
        confs[name] = { __key__ = "plugins:" .. name .. ":::::", __seq__ = 1,
                        route_id = name .. "-route", service_id = "reflection" }
    end
    return rpc, confs[name]
end

local function respond(status, body)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode(body))
    return ngx.exit(status)
end

function M.access(name)
    local skipped = cfg.skipped and cfg.skipped[name]
    if skipped then
        return respond(503, { message = skipped })
    end
    local rpc, conf = rpc_for(name)
    if not rpc then
        return respond(503, { message = "no plugin server configured for " .. name })
    end
    local ok, err = pcall(events.handle_event, rpc, name, conf, "access")
    if not ok then
        truth.emit("lua_error", { plugin = name, err = tostring(err), worker = ngx.worker.id(),
                                  failed_open = cfg.behaviour == "fixed" })
        if cfg.behaviour ~= "fixed" then
            error(err, 0) -- a 500, as an uncaught error in Kong 2.7.1's access phase
        end
        ngx.log(ngx.ERR, "[", name, "] ", err)
    end
    local exit = ngx.ctx.standin_exit
    if exit then
        return respond(exit.status or 500, exit.body or {})
    end
end

function M.health()
    return respond(200, { status = "ok", gen = gen, behaviour = cfg.behaviour,
                          worker = ngx.worker.id(), worker_pid = os_.getpid() })
end

return M
