-- standin.ffi_os: the few libc calls stock nginx does not offer to Lua (no ngx.pipe here):
-- fork/exec of plugin servers, waitpid, kill, stat of a socket path and clocks.

local ffi = require "ffi"
local bit = require "bit"
local C = ffi.C

-- One declaration at a time: some may already exist (e.g. from lua-resty-core).
for _, decl in ipairs {
    "int fork(void);",
    "int execve(const char *path, char *const argv[], char *const envp[]);",
    "int waitpid(int pid, int *status, int options);",
    "int kill(int pid, int sig);",
    "int open(const char *pathname, int flags, int mode);",
    "int dup2(int oldfd, int newfd);",
    "int close(int fd);",
    "int close_range(unsigned int first, unsigned int last, int flags);",
    "void _exit(int status);",
    "int getpid(void);",
    "int usleep(unsigned int usec);",
    "void *signal(int signum, void *handler);",
    "int stat(const char *path, void *buf);",
    "typedef struct { long tv_sec; long tv_nsec; } standin_timespec;",
    "int clock_gettime(int clk_id, standin_timespec *tp);",
} do
    pcall(ffi.cdef, decl)
end

local M = {}

M.SIGKILL = 9
M.SIGTERM = 15
local SIGCHLD = 17
local WNOHANG = 1
local O_WRONLY, O_CREAT, O_APPEND, O_RDONLY = 1, 64, 1024, 0

function M.getpid()
    return tonumber(C.getpid())
end

--- Realtime seconds (float) and CLOCK_MONOTONIC nanoseconds (what bpf_ktime_get_ns reports).
function M.clocks()
    local ts = ffi.new("standin_timespec")
    C.clock_gettime(0, ts)
    local real = tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
    C.clock_gettime(1, ts)
    local mono = tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
    return real, mono
end

--- nginx's SIGCHLD handler reaps every child with waitpid(-1); the default disposition leaves
--- our children for our own waitpid, as Kong's ngx.pipe does with its own bookkeeping.
function M.keep_children_for_us()
    C.signal(SIGCHLD, nil)
end

--- Starts argv[1] with argv and env (lists of strings); stdout+stderr append to log_path.
--- Returns the child's pid. The child is a direct child of the calling worker.
function M.spawn(argv, env, log_path)
    -- Build every C array before fork: the child only calls into libc, then execs.
    local c_argv = ffi.new("char *[?]", #argv + 1)
    for i, a in ipairs(argv) do c_argv[i - 1] = ffi.cast("char *", a) end
    local c_env = ffi.new("char *[?]", #env + 1)
    for i, e in ipairs(env) do c_env[i - 1] = ffi.cast("char *", e) end
    local pid = C.fork()
    if pid < 0 then
        return nil, "fork failed: errno " .. ffi.errno()
    end
    if pid == 0 then
        local null = C.open("/dev/null", O_RDONLY, 0)
        if null >= 0 then C.dup2(null, 0) end
        local log = C.open(log_path, bit.bor(O_WRONLY, O_CREAT, O_APPEND), 420)
        if log >= 0 then
            C.dup2(log, 1)
            C.dup2(log, 2)
        end
        -- Drop nginx's listeners, epoll fd and pooled sockets; the server must hold none of them.
        if not pcall(C.close_range, 3, 0xFFFFFFFF, 0) then
            for fd = 3, 4095 do C.close(fd) end
        end
        C.execve(c_argv[0], c_argv, c_env)
        C._exit(127)
    end
    -- Keep the strings alive until here (the arrays only point into them).
    return tonumber(pid), nil, { argv, env, c_argv, c_env }
end

--- Non-blocking (or blocking when wait is true) reap of one child.
--- Returns nil while it runs, else { code = n } or { signal = n }.
function M.reap(pid, wait)
    local st = ffi.new("int[1]")
    local r = C.waitpid(pid, st, wait and 0 or WNOHANG)
    if r == 0 then return nil end
    if r < 0 then return { gone = true, errno = ffi.errno() } end
    local s = st[0]
    local sig = bit.band(s, 0x7f)
    if sig == 0 then return { code = bit.band(bit.rshift(s, 8), 0xff) } end
    return { signal = sig }
end

--- Blocks the whole worker: only for exit_worker, where nothing may yield.
function M.usleep(usec)
    C.usleep(usec)
end

--- Blocks the whole worker for `ms` milliseconds (usleep takes under a second at a time).
function M.block_ms(ms)
    local left = ms * 1000
    while left > 0 do
        local step = math.min(left, 100000)
        C.usleep(step)
        left = left - step
    end
end

function M.kill(pid, sig)
    return C.kill(pid, sig) == 0
end

--- Identity of the file at a path ("inode:mtime", nil when missing). A listener that re-binds
--- the path makes a new file; the inode number alone may be reused once the old one is freed.
function M.file_identity(path)
    local buf = ffi.new("uint8_t[256]")
    if C.stat(path, buf) ~= 0 then return nil end
    -- x86_64 and arm64 agree: st_ino at byte 8, st_mtim (sec, nsec) at byte 88.
    local u64 = ffi.cast("uint64_t *", buf)
    return string.format("%d:%d.%09d", tonumber(u64[1]), tonumber(u64[11]), tonumber(u64[12]))
end

return M
