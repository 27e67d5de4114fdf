-- wrk script for bench/run.sh: POSTs the request in the file $BENCH_BODY (what
-- `ecl-gate load --print-body` prints) on every request, and prints one machine-readable
-- line at the end, latencies in microseconds.
local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "wrk-report requests=%d duration_us=%d status_errors=%d socket_errors=%d p50_us=%d p99_us=%d p999_us=%d\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
