-- standin.events: one plugin phase (Kong 2.7.1's handle_event): HandleEvent with the cached
-- instance id, then (MessagePack) Step calls answering each PDK call the plugin makes until the
-- server says "ret"; pb_rpc runs its bridge loop inside HandleEvent and returns "ret" itself.
-- Errors fail open: the request goes on without the plugin.
--   kong-2.7: only "no plugin instance" resets the cache and retries (without bound).
--   fixed:    any error resets the cache (Kong 3.0 #8547, 3.5 #11370); up to 3 attempts.

local instances = require "standin.instances"
local pdk = require "standin.pdk"
local truth = require "standin.truth"

local M = {}

local behaviour = "kong-2.7"

function M.configure(b)
    behaviour = b
end

local function step_loop(rpc, name, res)
    while type(res) == "table" and type(res.Data) == "table" do
        local call = res.Data
        local value, perr = pdk.call(call.Method, call.Args)
        local err
        res, err = rpc:call(pdk.step_method(call.Method, perr), { EventId = res.EventId, Data = perr or value })
        if not res then
            truth.emit("rpc_error", { plugin = name, method = "plugin.Step", err = tostring(err),
                                      worker = ngx.worker.id(), failed_open = true })
            ngx.log(ngx.ERR, "[", name, "] ", err)
            return
        end
    end
end

--- Runs `phase` of plugin `name` for this request. Raises only where Kong 2.7.1 would.
function M.handle_event(rpc, name, conf, phase, attempt)
    attempt = attempt or 1
    local instance_id = instances.get_instance_id(rpc, name, conf)
    local res, err = rpc:call("plugin.HandleEvent", { InstanceId = instance_id, EventName = phase })
    if res and res ~= "" then
        return step_loop(rpc, name, res)
    end
    err = tostring(err)
    local lost = err:lower():find("no plugin instance", 1, true) ~= nil
    if lost or behaviour == "fixed" then
        instances.reset_instance(name, conf, err)
        if behaviour ~= "fixed" or attempt < 3 then
            return M.handle_event(rpc, name, conf, phase, attempt + 1)
        end
    end
    truth.emit("rpc_error", { plugin = name, method = "plugin.HandleEvent", instance_id = instance_id,
                              err = err, worker = ngx.worker.id(), failed_open = true })
    ngx.log(ngx.ERR, "[", name, "] ", err)
end

return M
