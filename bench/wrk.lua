-- wrk script for bench/run.sh: one fixed request, every response's status checked.
--
-- Environment:
--   BENCH_METHOD      GET (default), POST, DELETE, ...
--   BENCH_PATH        request target (default /)
--   BENCH_TOKEN       agent credential, sent as `Authorization: Bearer ...` (optional)
--   BENCH_BODY        request body (optional)
--   BENCH_EXPECT      the one status every response must have (default 200)
--   BENCH_HEADERS     more request headers, `Name: value` separated by `|` (optional)
--
-- Prints one machine-readable `RESULT key=value ...` line (latencies in µs).

local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/"
local token = os.getenv("BENCH_TOKEN") or ""
local body = os.getenv("BENCH_BODY") or ""
local expect = tonumber(os.getenv("BENCH_EXPECT") or "200")

wrk.method = method
wrk.path = path
if token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
if body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end
for h in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^|]+") do
  local k, v = string.match(h, "^%s*([^:]+):%s*(.-)%s*$")
  if k then
    wrk.headers[k] = v
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  unexpected = 0
  first_bad = 0
end

function response(status, headers, body)
  if status ~= expect then
    unexpected = unexpected + 1
    if first_bad == 0 then
      first_bad = status
    end
  end
end

function done(summary, latency, requests)
  local unexpected_total, first = 0, 0
  for _, t in ipairs(threads) do
    unexpected_total = unexpected_total + (t:get("unexpected") or 0)
    local fb = t:get("first_bad") or 0
    if first == 0 and fb ~= 0 then
      first = fb
    end
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d unexpected=%d first_bad=%d socket_errors=%d " ..
    "p50_us=%d p90_us=%d p99_us=%d mean_us=%.1f max_us=%d\n",
    summary.requests, summary.duration, unexpected_total, first,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
