-- standin.pdk: the slice of Kong's PDK that plugin servers may call back into during an event
-- (the `Method`/`Args` of a Step). Enough for the dummy plugins and common read calls; anything
-- else answers an error, which the server sees as a StepError.

local M = {}

local function set_exit(status, body, headers)
    ngx.ctx.standin_exit = { status = status, body = body, headers = headers }
end

local function log_at(level)
    return function(...)
        local parts = {}
        for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
        ngx.log(level, "[plugin] ", table.concat(parts, " "))
    end
end

local methods = {
    ["kong.service.request.set_header"] = function(k, v) ngx.req.set_header(k, v) end,
    ["kong.service.request.add_header"] = function(k, v)
        local old = ngx.req.get_headers()[k]
        if type(old) == "table" then table.insert(old, v) elseif old then old = { old, v } else old = v end
        ngx.req.set_header(k, old)
    end,
    ["kong.service.request.clear_header"] = function(k) ngx.req.clear_header(k) end,
    ["kong.request.get_header"] = function(k)
        local v = ngx.req.get_headers()[k]
        if type(v) == "table" then return v[1] end
        return v
    end,
    ["kong.request.get_headers"] = function() return ngx.req.get_headers() end,
    ["kong.request.get_method"] = function() return ngx.req.get_method() end,
    ["kong.request.get_path"] = function() return ngx.var.uri end,
    ["kong.request.get_raw_query"] = function() return ngx.var.args or "" end,
    ["kong.request.get_query"] = function() return ngx.req.get_uri_args() end,
    ["kong.response.set_header"] = function(k, v) ngx.header[k] = v end,
    ["kong.response.exit"] = set_exit,
    ["kong.response.error"] = function(status, msg) set_exit(status, msg) end,
    ["kong.nginx.get_var"] = function(k) return ngx.var[k] end,
    ["kong.ctx.shared.get"] = function(k) return (ngx.ctx.shared or {})[k] end,
    ["kong.ctx.shared.set"] = function(k, v)
        ngx.ctx.shared = ngx.ctx.shared or {}
        ngx.ctx.shared[k] = v
    end,
    ["kong.node.get_id"] = function() return "reloadscope-standin" end,
    ["kong.log.alert"] = log_at(ngx.ALERT),
    ["kong.log.crit"] = log_at(ngx.CRIT),
    ["kong.log.err"] = log_at(ngx.ERR),
    ["kong.log.warn"] = log_at(ngx.WARN),
    ["kong.log.notice"] = log_at(ngx.NOTICE),
    ["kong.log.info"] = log_at(ngx.INFO),
    ["kong.log.debug"] = log_at(ngx.DEBUG),
}

--- Runs one PDK call; returns its value, or nil and an error string.
function M.call(method, args)
    local f = methods[method]
    if not f then
        return nil, "PDK method " .. tostring(method) .. " is not available in the stand-in"
    end
    args = type(args) == "table" and args or {}
    local ok, ret, err = pcall(f, unpack(args, 1, table.maxn(args)))
    if not ok then return nil, tostring(ret) end
    return ret, err
end

--- Kong picks StepMultiMap for multi-value maps (headers, query), StepError for errors.
function M.step_method(method, err)
    if err then return "plugin.StepError" end
    if method == "kong.request.get_headers" or method == "kong.request.get_query" then
        return "plugin.StepMultiMap"
    end
    return "plugin.Step"
end

return M
