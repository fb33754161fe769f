-- standin.servers: the external plugin servers' lifecycle, as Kong 2.7.1 runs it.
-- Only worker 0 manages them: one 0-delay timer per server spawns it as the worker's own child,
-- pumps its output, and respawns it at most once a second when it dies. When worker 0 exits, its
-- generation is killed: SIGKILL in kong-2.7 (what ngx.pipe's GC does when the old worker's Lua
-- VM closes), SIGTERM in fixed (Kong 3.0's graceful stop).
--
-- The pump is what keeps an old worker 0 alive after a reload (kong/README.md, "Why old worker 0
-- lingers"): Kong reads each server's output with ngx.pipe's default 10 s read timeout, an nginx
-- timer that cannot be cancelled. A window restarts at the spawn, at each output chunk and at
-- each empty timeout; the pump looks at ngx.worker.exiting() only when a window ends with no
-- output. Its ngx.sleep polls hold the worker exactly as Kong's read timer does.

local os_ = require "standin.ffi_os"
local truth = require "standin.truth"

local M = {}

-- name -> pid of this worker's running server.
local running = {}
-- Length of a read window (lua-resty-core's default pipe read timeout, 10 s); standin.json may
-- shorten it for tests.
local window_s = 10
-- How often the pump looks for output and the end of its window.
local PUMP_POLL_S = 0.05
-- Spawns by this worker, to give each server its own output file (Kong: its own pipe).
local spawns = 0

local function file_size(path)
    local f = io.open(path, "r")
    if not f then return 0 end
    local size = f:seek("end")
    f:close()
    return size or 0
end

--- Kong's grab_logs on one server: returns how the server ended when it died, or nil when the
--- worker is exiting and a whole window passed with no output.
local function pump(def, pid, log, spawned_at)
    local seen = file_size(log)
    local window_start = spawned_at
    while true do
        local how = os_.reap(pid)
        if how then return how end
        ngx.update_time()
        local size = file_size(log)
        if size ~= seen then
            seen = size
            window_start = ngx.now()
        elseif ngx.now() - window_start >= window_s then
            if ngx.worker.exiting() then
                truth.emit("pump_end", { plugin = def.name, server_pid = pid,
                                         window_start_s = window_start })
                return nil
            end
            window_start = ngx.now()
        end
        ngx.sleep(PUMP_POLL_S)
    end
end

-- Returns how the server ended if it died before binding, else nil.
local function wait_ready(def, pid, old_identity, started)
    -- A new file at the socket path means this server has re-bound it: from then on new
    -- connections reach this generation.
    while not ngx.worker.exiting() and ngx.now() - started < 60 do
        local identity = os_.file_identity(def.socket)
        if identity and identity ~= old_identity then
            ngx.update_time()
            truth.emit("server_ready", {
                plugin = def.name, server_pid = pid, socket = def.socket, file = identity,
                after_ms = math.floor((ngx.now() - started) * 1000),
            })
            return nil
        end
        local how = os_.reap(pid)
        if how then return how end
        ngx.sleep(0.02)
        ngx.update_time()
    end
end

local function manage(premature, def)
    if premature then return end
    local next_spawn = 0
    while not ngx.worker.exiting() do
        ngx.update_time()
        if ngx.now() < next_spawn then
            ngx.sleep(next_spawn - ngx.now())
        end
        if ngx.worker.exiting() then return end
        ngx.update_time()
        next_spawn = ngx.now() + 1
        local old_identity = os_.file_identity(def.socket)
        spawns = spawns + 1
        local log = def.log:gsub("%.log$", "") .. "." .. os_.getpid() .. "-" .. spawns .. ".log"
        local pid, err = os_.spawn(def.argv, def.env, log)
        if not pid then
            truth.emit("spawn_failed", { plugin = def.name, err = err })
            ngx.log(ngx.ERR, "[", def.name, "] ", err)
        else
            running[def.name] = pid
            truth.emit("spawn", { plugin = def.name, server_pid = pid, socket = def.socket,
                                  parent_pid = os_.getpid(), log = log })
            ngx.log(ngx.NOTICE, "started plugin server ", def.name, " pid ", pid)
            local spawned_at = ngx.now()
            local how = wait_ready(def, pid, old_identity, spawned_at) or pump(def, pid, log, spawned_at)
            -- The pump gave up while exiting: leave the child running, exit_worker decides its
            -- fate, as in Kong.
            if not how then return end
            running[def.name] = nil
            truth.emit("server_exit", { plugin = def.name, server_pid = pid,
                                        code = how.code, signal = how.signal })
            ngx.log(ngx.WARN, "external pluginserver '", def.name, "' terminated: ",
                    how.code and ("exit " .. how.code) or how.signal and ("signal " .. how.signal) or ("waitpid errno " .. tostring(how.errno)))
        end
    end
end

--- Worker 0 only: start one manager per plugin server.
function M.start(defs, pump_window_s)
    window_s = pump_window_s or window_s
    os_.keep_children_for_us()
    for _, def in ipairs(defs) do
        local ok, err = ngx.timer.at(0, manage, def)
        if not ok then ngx.log(ngx.ERR, "cannot start manager for ", def.name, ": ", err) end
    end
end

--- Worker 0's exit: stop this generation of servers.
function M.stop(behaviour)
    local sig = behaviour == "fixed" and os_.SIGTERM or os_.SIGKILL
    local signame = sig == os_.SIGTERM and "SIGTERM" or "SIGKILL"
    for name, pid in pairs(running) do
        local delivered = os_.kill(pid, sig)
        truth.emit("kill", { plugin = name, server_pid = pid, signal = signame,
                             delivered = delivered, reason = "worker 0 exiting" })
        -- Reap it so no zombie outlives us (Kong's master, pid 1 in its image, reaps them).
        -- exit_worker cannot yield, so this waits by blocking (2 s at most).
        local how
        for _ = 1, 200 do
            how = os_.reap(pid)
            if how then break end
            os_.usleep(10000)
        end
        if not how and sig == os_.SIGTERM then
            os_.kill(pid, os_.SIGKILL)
            truth.emit("kill", { plugin = name, server_pid = pid, signal = "SIGKILL",
                                 reason = "still running 2 s after SIGTERM" })
            how = os_.reap(pid, true)
        end
        truth.emit("server_exit", { plugin = name, server_pid = pid,
                                    code = how and how.code, signal = how and how.signal })
        running[name] = nil
    end
end

return M
