-- wrk script for the OpenGateway benchmark (bench/run.py): POST /v1/images/generations.
--
-- Environment (read once per wrk Lua state):
--   BENCH_KEY           bearer key sent in Authorization (default "og-bench-key")
--   BENCH_BODY_FILE     send this file's bytes as the body instead (S6's streaming request, S7's
--                       4 MB multipart edit), with BENCH_CONTENT_TYPE as its Content-Type; the
--                       path is the URL's, given on wrk's command line
--   BENCH_HEADERS       extra request headers, one "Name: value" a line (the routing headers
--                       a peer such as Portkey needs on every request)
--   BENCH_REQUEST_HOOK  "key": every request carries an Idempotency-Key of its own
--                       (BENCH_KEY_PREFIX, the thread's id and a counter); "plain": the same
--                       request() hook without the header, the baseline that pays wrk's hook
--                       too (S1 and S2's Idempotency-Key rows)
--   BENCH_MAX_REQUESTS  if > 0: each wrk thread stops after this many responses (count-bounded
--                       runs, S5). This enables wrk's response() hook, which costs wrk some speed,
--                       so it is off for the throughput scenarios.
--   BENCH_STOP_FILE     with BENCH_MAX_REQUESTS: each thread creates "<file>.<thread id>" when it
--                       stops, so the caller can end wrk early with SIGINT (wrk's main thread
--                       otherwise sleeps for the whole -d duration).
--
-- done() prints one machine-readable line:
--   BENCH_RESULT {"requests":..,"duration_us":..,"bytes":..,"errors":{..},"non2xx":..,
--                 "p50_us":..,"p90_us":..,"p99_us":..,"p999_us":..,"max_us":..,"mean_us":..}
-- "non2xx" counts responses with status >= 400 (wrk's own status error counter), or, when the
-- response() hook is on, every status outside 200..299.

wrk.method = "POST"
wrk.body = '{"model":"openai/gpt-image-1","prompt":"A small red cube on a white background.",'
        .. '"size":"1024x1024","quality":"medium"}'
wrk.headers["Content-Type"] = "application/json"
local body_file = os.getenv("BENCH_BODY_FILE")
if body_file and body_file ~= "" then
   local f = assert(io.open(body_file, "rb"))
   wrk.body = f:read("*a")
   f:close()
   wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/octet-stream"
end
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "og-bench-key")
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
   local name, value = string.match(line, "^%s*([^:]+):%s*(.-)%s*$")
   if name then wrk.headers[name] = value end
end

local threads = {}
local next_id = 0

function setup(thread)
   next_id = next_id + 1
   thread:set("id", next_id)
   table.insert(threads, thread)
end

local hook = os.getenv("BENCH_REQUEST_HOOK")
if hook == "key" or hook == "plain" then
   local prefix = os.getenv("BENCH_KEY_PREFIX") or "bench"
   local sent = 0
   function request()
      sent = sent + 1
      if hook == "key" then
         wrk.headers["Idempotency-Key"] = prefix .. "-" .. tostring(id) .. "-" .. tostring(sent)
      end
      return wrk.format()
   end
end

responses = 0
non2xx_seen = 0

local max_requests = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "0") or 0
local stop_file = os.getenv("BENCH_STOP_FILE")

if max_requests > 0 then
   local stopped = false
   function response(status, headers, body)
      if stopped then return end
      responses = responses + 1
      if status < 200 or status > 299 then
         non2xx_seen = non2xx_seen + 1
      end
      if responses >= max_requests then
         stopped = true
         if stop_file then
            local f = io.open(stop_file .. "." .. tostring(id), "w")
            if f then f:write(tostring(responses)) f:close() end
         end
         wrk.thread:stop()
      end
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   local non2xx = e.status
   if max_requests > 0 then
      non2xx = 0
      for _, t in ipairs(threads) do
         non2xx = non2xx + (t:get("non2xx_seen") or 0)
      end
   end
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},"non2xx":%d,'
      .. '"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"p999_us":%.1f,"max_us":%.1f,"mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.timeout, e.status, non2xx,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean))
end
