-- standin.instances: the per-worker plugin-instance cache and its claims (Kong 2.7.1's
-- get_instance_id / reset_instance). A request that finds a claim without an id busy-waits.
--   kong-2.7: the wait is unbounded and goes once around the event loop per iteration with a
--             zero epoll timeout; a failed StartInstance returns its error string where a result
--             is expected, so the claim keeps a nil id forever (later requests spin).
--   fixed:    0.1 s steps capped at 10 s (Kong 3.3), failed starts remove the claim (Kong 3.1).
-- Every miss, start, reset and leaked claim goes to the ground-truth log.

local cjson = require "cjson.safe"
local semaphore = require "ngx.semaphore"
local truth = require "standin.truth"

local M = {}

local behaviour = "kong-2.7"
-- A test aid (`cargo xtask up --inject refused-start`), and this configuration's generation.
local inject, generation = nil, 1
local injected = false
-- key -> { id, seq, Config }: module state, so one table per worker.
local running = {}

function M.configure(b, inj, gen)
    behaviour, inject, generation = b, inj, gen
end

--- One trip around the event loop with a zero epoll timeout. OpenResty's ngx.sleep(0) does that
--- (delayed-posted-events patch); on stock nginx a 0-delay timer that posts a semaphore does the
--- same, while ngx.sleep(0) would spin without any syscall.
local function yield_through_loop()
    local sema = semaphore.new()
    local ok = ngx.timer.at(0, function() sema:post(1) end)
    if not ok then
        return ngx.sleep(0.001)
    end
    sema:wait(60)
end

local function start_instance(rpc, name, conf)
    -- Test aid: after a reload, each worker's first JS StartInstance connects where nothing
    -- listens, as in the gap between a server's crash and its respawn. That forces the race's
    -- leaked-claim branch; the kernel sees a real failed connect.
    if inject == "refused-start" and generation > 1 and name == "jsplugin" and not injected then
        injected = true
        local copy = {}
        for k, v in pairs(rpc) do copy[k] = v end
        copy.path = rpc.path .. ".refused"
        rpc = setmetatable(copy, getmetatable(rpc))
        truth.emit("injected", { plugin = name, fault = inject, worker = ngx.worker.id(), path = rpc.path })
    end
    local status, err = rpc:call("plugin.StartInstance", { Name = name, Config = cjson.encode(conf) })
    if status == nil then
        if behaviour == "kong-2.7" then
            return err -- 2.7.1 returns the bare error string (fixed by Kong #9384 in 3.1)
        end
        return nil, err
    end
    return { id = status.Id, Config = status.Config }
end

local function wait_for_claim(name, key)
    ngx.update_time()
    local started = ngx.now()
    local info = running[key]
    if behaviour == "fixed" then
        while info and info.id == nil do
            ngx.update_time()
            if ngx.now() - started >= 10 then
                error("Could not claim instance_id for " .. name .. " (key: " .. key .. ")", 0)
            end
            ngx.sleep(0.1)
            info = running[key]
        end
        return info
    end
    -- Two marks per waiting request, for the analysis's check: a quarter second (any spin the
    -- probe reports must come from such a worker) and a whole second (the probe must report it).
    local marks = { { after = 0.25, ev = "claim_wait" }, { after = 1, ev = "claim_spin" } }
    local next_mark = 1
    while info and info.id == nil do
        yield_through_loop()
        info = running[key]
        local mark = marks[next_mark]
        if mark then
            ngx.update_time()
            if ngx.now() - started >= mark.after then
                next_mark = next_mark + 1
                truth.emit(mark.ev, { plugin = name, key = key, worker = ngx.worker.id() })
            end
        end
    end
    return info
end

--- The instance id for this plugin config in this worker, starting an instance on a miss.
--- Raises on a failed start (the caller's request then fails, as in Kong).
function M.get_instance_id(rpc, name, conf)
    local key = conf.__key__
    local info = running[key]
    if info and info.id == nil then
        info = wait_for_claim(name, key)
    end
    if info and info.id ~= nil and info.seq == conf.__seq__ then
        return info.id
    end

    local claim = { seq = conf.__seq__ }
    running[key] = claim
    truth.emit("cache_miss", { plugin = name, key = key, worker = ngx.worker.id(),
                               previous_id = info and info.id })
    local new, err
    if behaviour == "fixed" then
        local ok
        ok, new, err = pcall(start_instance, rpc, name, conf)
        if not ok then new, err = nil, new end
    else
        -- A Lua error here (e.g. the msgid assert) leaves the claim in place, as in 2.7.1.
        new, err = start_instance(rpc, name, conf)
    end
    if new == nil then
        running[key] = nil
        truth.emit("start_failed", { plugin = name, key = key, err = tostring(err), claim = "removed" })
        error(tostring(err), 0)
    end
    -- Indexing the error string yields nil: that is how 2.7.1 leaks the claim.
    claim.id = new.id
    claim.Config = new.Config
    if claim.id == nil then
        truth.emit("claim_leaked", { plugin = name, key = key, worker = ngx.worker.id(),
                                     err = tostring(new) })
    else
        truth.emit("instance_started", { plugin = name, key = key, worker = ngx.worker.id(),
                                         instance_id = claim.id })
    end
    return claim.id
end

--- Forgets this worker's instance for the config, so the next request starts a new one.
function M.reset_instance(name, conf, reason)
    local key = conf.__key__
    local cur = running[key]
    truth.emit("cache_reset", { plugin = name, key = key, worker = ngx.worker.id(),
                                instance_id = cur and cur.id, reason = reason })
    if cur and cur.id ~= nil then
        running[key] = nil
    end
end

return M
