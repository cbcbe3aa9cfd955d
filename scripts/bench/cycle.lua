-- cycle.lua: wrk script that sends each pre-signed request target of a file at most once.
-- Thread k of n takes lines k, k+n, k+2n, ... so threads never share a Nonce. If a thread runs
-- out it starts over and counts the wrap; done() reports it and the run is void. Every reply
-- whose body has no "code":0 is counted as bad; done() reports that too ("cycle.lua: bad N").
-- Usage: wrk -t N -s cycle.lua URL -- FILE HOST N [HEADER_NAME HEADER_VALUE [repeat]]
-- FILE "-": no file, every request is GET HOST's URL path (for token auth; pair with a header).
-- "repeat": the file's targets are meant to be sent over and over (token auth, no Nonce), so a
-- wrap is not counted.
-- Each request carries an "X-Seq: N" header last (see init).
-- Garbage collection: a file holds up to millions of targets, and one LuaJIT collection cycle
-- marks every one of them in a single step; with the collector running, each run had one pause
-- of about 300 ms, which wrk's latency correction turned into a p99 of 260-380 ms whatever the
-- server. So with more than GC_STOP_TARGETS targets the collector stops once they are loaded,
-- and runs (a full cycle, the same pause) only if the garbage of the replies passes GC_LIMIT_KB,
-- checked every GC_CHECK replies. A small table keeps the collector: its cycles are cheap, and
-- a heap that only grows costs page faults on the core wrk shares with the server.
local GC_STOP_TARGETS = 10000
local GC_LIMIT_KB = 2 * 1024 * 1024
local GC_CHECK = 100000
local gc_stopped = false

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local targets = {}
local pos = 0
local replies = 0
local repeating = false
wrapped = 0
bad = 0

-- The process's CPU seconds (os.clock: every thread's) when this thread had loaded its targets:
-- done() reports the CPU wrk used after that, its cost during the run, without the loading.
loaded_cpu = 0

function init(args)
  load_targets(args)
  loaded_cpu = os.clock()
end

function load_targets(args)
  -- setup() of this thread ran just before, in the main state, and set the global id.
  local file, host, nthreads = args[1], args[2], tonumber(args[3])
  local headers = { Host = host }
  if args[4] then
    headers[args[4]] = args[5]
  end
  repeating = args[6] == "repeat"
  if file == "-" then
    targets[1] = wrk.format("GET", wrk.path, headers)
    return
  end
  -- The request is built here rather than by wrk.format, with a header that differs from line
  -- to line last ("X-Seq: N"). Every string is interned, and OpenResty's LuaJIT (libluajit2,
  -- which Debian's lua module for nginx pulls in and wrk then loads) hashes a long string from
  -- samples that weigh its end: requests that differ only in the middle (Nonce, Signature) and
  -- end alike all hash the same, and loading 40,000 of them took 25 s instead of 0.03.
  local head = " HTTP/1.1\r\n"
  for name, value in pairs(headers) do
    head = head .. name .. ": " .. value .. "\r\n"
  end
  local k, i = id, 0
  for line in io.lines(file) do
    if i % nthreads == k then
      targets[#targets + 1] = "GET " .. line .. head .. "X-Seq: " .. i .. "\r\n\r\n"
    end
    i = i + 1
  end
  if #targets == 0 then
    error("no request targets for thread " .. k .. " in " .. file)
  end
  if #targets > GC_STOP_TARGETS then
    collectgarbage("collect")
    collectgarbage("stop")
    gc_stopped = true
  end
end

function request()
  pos = pos + 1
  if pos > #targets then
    pos = 1
    if #targets > 1 and not repeating then
      wrapped = wrapped + 1
    end
  end
  return targets[pos]
end

function response(status, headers, body)
  if not (body and body:find('"code":0[,}]')) then
    bad = bad + 1
  end
  replies = replies + 1
  if gc_stopped and replies % GC_CHECK == 0 and collectgarbage("count") > GC_LIMIT_KB then
    collectgarbage("collect")
  end
end

function done(summary, latency, requests)
  local w, b = 0, 0
  for _, t in ipairs(threads) do
    w = w + (tonumber(t:get("wrapped")) or 0)
    b = b + (tonumber(t:get("bad")) or 0)
  end
  io.write(string.format("cycle.lua: wrapped %d\n", w))
  io.write(string.format("cycle.lua: bad %d\n", b))
  local loaded = 0
  for _, t in ipairs(threads) do
    loaded = math.max(loaded, tonumber(t:get("loaded_cpu")) or 0)
  end
  io.write(string.format("cycle.lua: cpu after loading %.6f\n", os.clock() - loaded))
end
