-- wrk script used by every wrk row of bench/bench.py, configured from the environment:
--   BENCH_PATH     request target: "/bench" straight to the upstream, or an absolute URL
--                  ("http://bench.upstream.test/bench") so a proxy sees an absolute-form request
--                  (wrk has no proxy support; absolute-form targets are how a plain-HTTP proxy is used)
--   BENCH_HOST     Host header
--   BENCH_AUTH     optional Proxy-Authorization value (the calling app, on every request)
--   BENCH_API_KEY  optional X-Api-Key value (rows without the gateway send the key themselves)
-- done() prints one line "BENCH_RESULT {...}" (latencies in microseconds) that bench.py parses.

wrk.method = "GET"
wrk.path = os.getenv("BENCH_PATH") or "/"
wrk.headers["Host"] = os.getenv("BENCH_HOST")
wrk.headers["Accept"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Proxy-Authorization"] = auth
end
local key = os.getenv("BENCH_API_KEY")
if key and key ~= "" then
  wrk.headers["X-Api-Key"] = key
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%.1f,"p90_us":%.1f,' ..
    '"p99_us":%.1f,"mean_us":%.1f,"max_us":%.1f,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
