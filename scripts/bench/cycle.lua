-- cycle.lua: wrk script that sends each pre-signed request target of a file at most once.
-- Thread k of n takes lines k, k+n, k+2n, ... so threads never share a Nonce. If a thread runs
-- out it starts over and counts the wrap; done() reports it and the run is void.
-- Usage: wrk -t N -s cycle.lua URL -- FILE HOST N

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local targets = {}
local pos = 0
wrapped = 0

function init(args)
  -- setup() of this thread ran just before, in the main state, and set the global id.
  local file, host, nthreads = args[1], args[2], tonumber(args[3])
  local k, i = id, 0
  for line in io.lines(file) do
    if i % nthreads == k then
      targets[#targets + 1] = wrk.format("GET", line, { Host = host })
    end
    i = i + 1
  end
  if #targets == 0 then
    error("no request targets for thread " .. k .. " in " .. file)
  end
end

function request()
  pos = pos + 1
  if pos > #targets then
    pos = 1
    wrapped = wrapped + 1
  end
  return targets[pos]
end

function done(summary, latency, requests)
  local w = 0
  for _, t in ipairs(threads) do
    w = w + (tonumber(t:get("wrapped")) or 0)
  end
  io.write(string.format("cycle.lua: wrapped %d\n", w))
end
