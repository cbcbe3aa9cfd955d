/* store_lua.h: the Redis scripts. STORE_LUA_LIMIT is behind store_limit, one EVALSHA per request
 * over all its keys (the cache scripts follow it, after its description).
 * It mirrors limit_decide (limit.c) on Redis TIME: KEYS are the request's buckets, ARGV holds three
 * values per key (emission_us, tolerance_us, shadow 0/1). A signed request's Nonce key may follow
 * the buckets as one more KEYS entry, its PX in ms one more ARGV entry: it is claimed with SET NX PX
 * before any bucket is read, and when it already exists the script returns the string "replay"
 * having touched nothing else (store_limit_nonce). The buckets are read with one MGET (a key that
 * is missing or not a string counts as an empty bucket). Nothing is written unless every
 * enforcing bucket admits; then each admitting bucket gets its new TAT with PX expiry = tolerance
 * (a shadow bucket that would refuse is reported and not advanced). Reply: allowed (0/1), denied
 * index, shadow_denied index (0-based, -1 none), retry_after_us, then remaining and reset_us per
 * key. TATs are integers below 2^53, exact in Lua's doubles; written with %d, never %.14g. */
#ifndef CAPGATE_STORE_LUA_H
#define CAPGATE_STORE_LUA_H

#define STORE_LUA_LIMIT \
    "if redis.replicate_commands then redis.replicate_commands() end\n" \
    "local n = math.floor(#ARGV / 3)\n" \
    "if #KEYS > n and not redis.call('SET', KEYS[n + 1], '1', 'NX', 'PX', ARGV[3 * n + 1]) then\n" \
    "  return 'replay'\n" \
    "end\n" \
    "local t = redis.call('TIME')\n" \
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n" \
    "local denied, shadow_denied, retry = -1, -1, 0\n" \
    "local newtat, rem, reset = {}, {}, {}\n" \
    "local tats = n > 0 and redis.call('MGET', unpack(KEYS, 1, n)) or {}\n" \
    "for i = 1, n do\n" \
    "  local e = tonumber(ARGV[3 * i - 2])\n" \
    "  local tol = tonumber(ARGV[3 * i - 1])\n" \
    "  local shadow = ARGV[3 * i] == '1'\n" \
    "  local tat = tonumber(tats[i] or '0') or 0\n" \
    "  local base = tat > now and tat or now\n" \
    "  local nt = base + e\n" \
    "  if nt - now <= tol then\n" \
    "    newtat[i] = nt\n" \
    "    rem[i] = math.floor((tol - (nt - now)) / e)\n" \
    "    reset[i] = nt - now\n" \
    "  else\n" \
    "    newtat[i] = false\n" \
    "    rem[i] = 0\n" \
    "    reset[i] = tat > now and tat - now or 0\n" \
    "    if shadow then\n" \
    "      if shadow_denied < 0 then shadow_denied = i - 1 end\n" \
    "    elseif denied < 0 then\n" \
    "      denied = i - 1\n" \
    "      retry = nt - now - tol\n" \
    "    end\n" \
    "  end\n" \
    "end\n" \
    "local out = {denied < 0 and 1 or 0, denied, shadow_denied, retry}\n" \
    "for i = 1, n do\n" \
    "  if denied >= 0 then\n" \
    "    if newtat[i] then\n" \
    "      rem[i] = rem[i] + 1\n" \
    "      reset[i] = reset[i] - tonumber(ARGV[3 * i - 2])\n" \
    "    end\n" \
    "  elseif newtat[i] then\n" \
    "    local px = math.ceil(tonumber(ARGV[3 * i - 1]) / 1000)\n" \
    "    redis.call('SET', KEYS[i], string.format('%d', newtat[i]),\n" \
    "               'PX', string.format('%d', px))\n" \
    "  end\n" \
    "  out[#out + 1] = rem[i]\n" \
    "  out[#out + 1] = reset[i]\n" \
    "end\n" \
    "return out\n"

/* Prefetch pool: KEYS[1] is a profile's list of "<created_ms>|<url>" entries, oldest first.
 * PUSH: ARGV url, cap, ttl_ms; appends with Redis TIME, drops the oldest beyond cap, sets PEXPIRE
 * 2 * ttl_ms; returns the length. POP / DEPTH: ARGV ttl_ms; drop entries from the front whose age
 * is ttl_ms or more (a malformed entry counts as expired); POP returns {dropped, url} (or
 * {dropped} when none is fresh) and removes the url; DEPTH returns {dropped, length}. */
#define STORE_LUA_NOW \
    "if redis.replicate_commands then redis.replicate_commands() end\n" \
    "local t = redis.call('TIME')\n" \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

#define STORE_LUA_POOL_PUSH \
    STORE_LUA_NOW \
    "local n = redis.call('RPUSH', KEYS[1], string.format('%d', now) .. '|' .. ARGV[1])\n" \
    "local cap = tonumber(ARGV[2])\n" \
    "while n > cap do\n" \
    "  redis.call('LPOP', KEYS[1])\n" \
    "  n = n - 1\n" \
    "end\n" \
    "redis.call('PEXPIRE', KEYS[1], string.format('%d', 2 * tonumber(ARGV[3])))\n" \
    "return n\n"

#define STORE_LUA_POOL_TAKE(pop) \
    STORE_LUA_NOW \
    "local ttl = tonumber(ARGV[1])\n" \
    "local dropped = 0\n" \
    "while true do\n" \
    "  local e = redis.call('LINDEX', KEYS[1], 0)\n" \
    "  if not e then break end\n" \
    "  local bar = string.find(e, '|', 1, true)\n" \
    "  local created = bar and tonumber(string.sub(e, 1, bar - 1)) or nil\n" \
    "  if created and now < created + ttl then\n" \
    "    if " pop " then\n" \
    "      redis.call('LPOP', KEYS[1])\n" \
    "      return {dropped, string.sub(e, bar + 1)}\n" \
    "    end\n" \
    "    break\n" \
    "  end\n" \
    "  redis.call('LPOP', KEYS[1])\n" \
    "  dropped = dropped + 1\n" \
    "end\n" \
    "if " pop " then return {dropped} end\n" \
    "return {dropped, redis.call('LLEN', KEYS[1])}\n"

#define STORE_LUA_POOL_POP STORE_LUA_POOL_TAKE("true")
#define STORE_LUA_POOL_DEPTH STORE_LUA_POOL_TAKE("false")

/* Idempotency: KEYS[1] holds "P|<fp>" (pending) or "D|<fp>|<body>" (done), with PX expiry.
 * BEGIN: ARGV fp, pending_ms; absent → SET the pending marker, {0}; another fp → {3}; pending →
 * {1}; done → {2, body}. COMPLETE: ARGV fp, body, ttl_ms; only over our own pending marker: 2
 * written, 3 not ours. ABANDON: ARGV fp; deletes our own pending marker: 2, else 3. The numbers are
 * enum store_idem_state. */
#define STORE_LUA_IDEM_BEGIN \
    "local v = redis.call('GET', KEYS[1])\n" \
    "if not v then\n" \
    "  redis.call('SET', KEYS[1], 'P|' .. ARGV[1], 'PX', ARGV[2])\n" \
    "  return {0}\n" \
    "end\n" \
    "if string.sub(v, 3, 2 + #ARGV[1]) ~= ARGV[1] then return {3} end\n" \
    "if string.sub(v, 1, 2) == 'P|' and #v == 2 + #ARGV[1] then return {1} end\n" \
    "if string.sub(v, 1, 2) == 'D|' then return {2, string.sub(v, 4 + #ARGV[1])} end\n" \
    "return {3}\n"

#define STORE_LUA_IDEM_COMPLETE \
    "if redis.call('GET', KEYS[1]) ~= 'P|' .. ARGV[1] then return 3 end\n" \
    "redis.call('SET', KEYS[1], 'D|' .. ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[3])\n" \
    "return 2\n"

#define STORE_LUA_IDEM_ABANDON \
    "if redis.call('GET', KEYS[1]) ~= 'P|' .. ARGV[1] then return 3 end\n" \
    "redis.call('DEL', KEYS[1])\n" \
    "return 2\n"

/* Heartbeat (README "Redis layout and outages"): KEYS[1] is the ZSET <prefix>instances, member
 * an instance name, score the Redis clock in ms when it last beat. ARGV: instance, ttl_ms.
 * Members older than ttl_ms are dropped; the reply is the count of live instances (this one
 * included). The Redis clock: instances need not agree on theirs. */
#define STORE_LUA_HEARTBEAT \
    "local t = redis.call('TIME')\n" \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n" \
    "redis.call('ZADD', KEYS[1], now, ARGV[1])\n" \
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))\n" \
    "redis.call('PEXPIRE', KEYS[1], ARGV[2])\n" \
    "return redis.call('ZCARD', KEYS[1])\n"

#endif
