-- wrk script for the online path: every request is the dashboard's galaxy-startup POST.
-- The endpoint comes from the environment (BENCH_ENDPOINT); wrk -s with no URL path beyond
-- the host gets the API's path from here. At the end it prints one JSON line that
-- bench/measure.py reads: counts, errors and latency percentiles in microseconds.

local endpoint = os.getenv("BENCH_ENDPOINT")
if endpoint then
    wrk.method = "POST"
    wrk.path = "/galaxyctl_api/v1.0/galaxy-startup"
    wrk.body = '{"endpoint": "' .. endpoint .. '"}'
    wrk.headers["Content-Type"] = "application/json"
end
-- Without BENCH_ENDPOINT: a plain GET of the URL given to wrk (the Galaxy stand-in itself).

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, ' ..
        '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
        '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
        summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
