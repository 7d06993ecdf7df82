-- wrk script: POST JSON bodies read from a file (one body per line), round-robin.
--
--   wrk -t2 -c16 -d10s -s bench/wrk/post.lua http://127.0.0.1:8000 -- bodies.jsonl /predict
--
-- Every request is formatted once in init(); each wrk thread starts at its own offset so
-- the threads do not send the same user at the same moment. done() prints one JSON line
-- (counts, errors, latency percentiles in microseconds) for bench/serve.py to read.

local requests = {}
local count = 0
local next_index = 0
local threads = 0

function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end

function init(args)
  local path, target = args[1], args[2]
  if path == nil or target == nil then
    error("usage: -- BODIES_FILE PATH")
  end
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(path) do
    if #line > 0 then
      count = count + 1
      requests[count] = wrk.format("POST", target, headers, line)
    end
  end
  if count == 0 then
    error("no request bodies in " .. path)
  end
  next_index = (offset or 0) % count
end

function request()
  next_index = next_index % count + 1
  return requests[next_index]
end

function done(summary, latency, requests_stats)
  local e = summary.errors
  io.write(string.format(
    '\n{"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"mean_us": %.1f, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
