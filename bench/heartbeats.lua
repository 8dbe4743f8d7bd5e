-- wrk script of bench/heartbeats.py: each wrk thread sends its own file of pre-signed agent requests (heartbeats, or
-- lease polls), each exactly once (a nonce is accepted once), then stops. Without a file it sends wrk's plain request
-- (the baseline endpoint). At the end it prints one line, "RESULT {json}": requests, duration, latency percentiles,
-- statuses, socket errors.
--
--   wrk -t1 -c8 -d120s -s bench/heartbeats.lua http://127.0.0.1:8000/api/v1/agent/heartbeat/ -- PREFIX [PATH]
--
-- reads PREFIX.0, PREFIX.1, ... (one per thread), one request a line: key id, timestamp, nonce, signature and body,
-- separated by tabs, each POSTed to PATH (the path it was signed for: the heartbeat's by default). A thread that has its last answer writes PREFIX.done.N: wrk's main thread sleeps for the whole
-- -d whatever its threads do, so bench/heartbeats.py interrupts it (SIGINT) once every thread is done, and the
-- duration reported is the threads' own, from the first heartbeat sent to the last answer received.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]])
local timespec = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, timespec) -- CLOCK_MONOTONIC
  return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) / 1e9
end

local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

-- Globals, not locals: done() reads them from each thread with thread:get().
queue = nil
prefix = nil
issued = 0
completed = 0
statuses = {}
non2xx = 0
first_sent = 0
last_done = 0
-- wrk calls request() once in thread 0 before the run, to check what it returns, and never sends that request.
unsent = false

function init(args)
  unsent = (id == 0)
  prefix = args[1]
  if prefix == nil or prefix == "-" then
    prefix = nil
    return
  end
  local path = args[2] or "/api/v1/agent/heartbeat/"
  queue = {}
  for line in io.lines(prefix .. "." .. id) do
    local key, ts, nonce, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    queue[#queue + 1] = wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      ["X-Idlefleet-Key"] = key,
      ["X-Idlefleet-Timestamp"] = ts,
      ["X-Idlefleet-Nonce"] = nonce,
      ["X-Idlefleet-Signature"] = sig,
    }, body)
  end
end

function delay()
  -- Once every heartbeat of this thread has been sent, a connection that is free waits here (instead of sending)
  -- until the last answers are in.
  if queue ~= nil and issued >= #queue then
    return 600000
  end
  return 0
end

function request()
  if unsent then
    unsent = false
    return wrk.format("GET", "/healthz/")
  end
  if queue == nil then
    issued = issued + 1
    return wrk.format()
  end
  if issued >= #queue then
    -- More connections than heartbeats in this thread: the spare ones send the plain request, never a heartbeat
    -- again (that would be a replay, and count against the address's limit of failed agent requests).
    return wrk.format("GET", "/healthz/")
  end
  if issued == 0 then
    first_sent = now()
  end
  issued = issued + 1
  return queue[issued]
end

function response(status, headers, body)
  completed = completed + 1
  statuses[status] = (statuses[status] or 0) + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
  if queue ~= nil and completed == #queue then
    last_done = now()
    local marker = io.open(prefix .. ".done." .. id, "w")
    marker:close()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local issued_total, non2xx_total, started, ended = 0, 0, nil, nil
  local merged = {}
  for _, thread in ipairs(threads) do
    issued_total = issued_total + thread:get("issued")
    non2xx_total = non2xx_total + thread:get("non2xx")
    for status, count in pairs(thread:get("statuses")) do
      merged[tostring(status)] = (merged[tostring(status)] or 0) + count
    end
    local first, last = thread:get("first_sent"), thread:get("last_done")
    if first > 0 and (started == nil or first < started) then
      started = first
    end
    if last > 0 and (ended == nil or last > ended) then
      ended = last
    end
  end
  local duration = summary.duration / 1e6
  if started ~= nil and ended ~= nil then
    duration = ended - started
  end
  local parts = {}
  for status, count in pairs(merged) do
    parts[#parts + 1] = string.format('"%s": %d', status, count)
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "issued": %d, "duration_s": %.6f, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, '
      .. '"max_ms": %.3f, "mean_ms": %.3f, "non2xx": %d, "statuses": {%s}, "socket_errors": {"connect": %d, '
      .. '"read": %d, "write": %d, "timeout": %d}}\n',
    summary.requests, issued_total, duration, latency:percentile(50) / 1e3,
    latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3, latency.mean / 1e3,
    non2xx_total, table.concat(parts, ", "), e.connect, e.read, e.write, e.timeout
  ))
end
