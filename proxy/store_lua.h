/* store_lua.h: the Redis scripts. STORE_LUA_LIMIT is behind store_limit: one EVALSHA per batch
 * of requests (store_redis.c gathers the limit calls of one event-loop turn, up to
 * STORE_REDIS_BATCH_MAX), over all their keys (the cache scripts follow it, after its
 * description).
 * It mirrors limit_decide (limit.c) on Redis TIME, the requests taken one after the other in their
 * order, exactly as if each were a script of its own run at the same instant:
 *   KEYS  the batch's bucket entries E1..Em (a key once per distinct key, emission, tolerance and
 *         shadow), then the Nonce key of each request that claims one, in request order;
 *   ARGV  m, the number of requests; per entry emission_us, tolerance_us, shadow (0/1), px_ms
 *         (the expiry of a TAT written, ceil(tolerance / 1000) and at least 1); then per request
 *         nb (its buckets), nb entry numbers (1-based, in the request's bucket order) and the
 *         Nonce's PX in ms, 0 when it claims none.
 * A request's Nonce is claimed with SET NX PX before its buckets are looked at; when it exists
 * already the request is a replay and touches nothing else (store_limit_nonce). The entries' TATs
 * are read with one MGET (a key that is missing or not a string counts as an empty bucket) and
 * kept in a table: a later request of the batch sees what an earlier one admitted. A request
 * writes nothing unless every enforcing bucket admits; then its admitting buckets take their new
 * TAT (a shadow bucket that would refuse is reported and not advanced). At the end each key
 * written gets its last TAT with one SET ... PX (so a bucket hit by k requests costs one SET, not
 * k). Reply, flat, per request: 2 for a replay (nothing more), or allowed (1/0), denied index,
 * shadow_denied index (0-based, -1 none), retry_after_us, then remaining and reset_us per bucket.
 * TATs are integers below 2^53, exact in Lua's doubles; written with %d, never %.14g. Globals are
 * copied to locals once: each global read is a table lookup in Redis's protected environment. */
#ifndef CAPGATE_STORE_LUA_H
#define CAPGATE_STORE_LUA_H

#define STORE_LUA_LIMIT \
    "if redis.replicate_commands then redis.replicate_commands() end\n" \
    "local tonumber, call, floor, fmt = tonumber, redis.call, math.floor, string.format\n" \
    "local keys, argv = KEYS, ARGV\n" \
    "local m, nreq = tonumber(argv[1]), tonumber(argv[2])\n" \
    "local t = call('TIME')\n" \
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n" \
    "local tat, e, tol, sh, px = {}, {}, {}, {}, {}\n" \
    "if m > 0 then\n" \
    "  local v = call('MGET', unpack(keys, 1, m))\n" \
    "  for j = 1, m do\n" \
    "    local k, a = keys[j], 4 * j - 1\n" \
    "    if tat[k] == nil then tat[k] = tonumber(v[j]) or 0 end\n" \
    "    e[j], tol[j], sh[j], px[j] = tonumber(argv[a]), tonumber(argv[a + 1]),\n" \
    "                                 argv[a + 2] == '1', argv[a + 3]\n" \
    "  end\n" \
    "end\n" \
    "local out, o, a, nk, nt, wk, wpx, nw = {}, 0, 4 * m + 3, m, {}, {}, {}, 0\n" \
    "for q = 1, nreq do\n" \
    "  local nb = tonumber(argv[a])\n" \
    "  local npx = argv[a + nb + 1]\n" \
    "  local replay = false\n" \
    "  if npx ~= '0' then\n" \
    "    nk = nk + 1\n" \
    "    replay = not call('SET', keys[nk], '1', 'NX', 'PX', npx)\n" \
    "  end\n" \
    "  if replay then\n" \
    "    o = o + 1\n" \
    "    out[o] = 2\n" \
    "  else\n" \
    "    local denied, sd, retry = -1, -1, 0\n" \
    "    for i = 1, nb do\n" \
    "      local j = tonumber(argv[a + i])\n" \
    "      local cur = tat[keys[j]]\n" \
    "      local n1 = (cur > now and cur or now) + e[j]\n" \
    "      if n1 - now <= tol[j] then\n" \
    "        nt[i] = n1\n" \
    "      else\n" \
    "        nt[i] = false\n" \
    "        if sh[j] then\n" \
    "          if sd < 0 then sd = i - 1 end\n" \
    "        elseif denied < 0 then\n" \
    "          denied = i - 1\n" \
    "          retry = n1 - now - tol[j]\n" \
    "        end\n" \
    "      end\n" \
    "    end\n" \
    "    out[o + 1], out[o + 2], out[o + 3], out[o + 4] = denied < 0 and 1 or 0, denied, sd, " \
    "retry\n" \
    "    o = o + 4\n" \
    "    for i = 1, nb do\n" \
    "      local j = tonumber(argv[a + i])\n" \
    "      local k, n1 = keys[j], nt[i]\n" \
    "      if n1 then\n" \
    "        local rem, rs = floor((tol[j] - (n1 - now)) / e[j]), n1 - now\n" \
    "        if denied >= 0 then\n" \
    "          rem, rs = rem + 1, rs - e[j]\n" \
    "        else\n" \
    "          tat[k] = n1\n" \
    "          if not wpx[k] then\n" \
    "            nw = nw + 1\n" \
    "            wk[nw] = k\n" \
    "          end\n" \
    "          wpx[k] = px[j]\n" \
    "        end\n" \
    "        out[o + 1], out[o + 2] = rem, rs\n" \
    "      else\n" \
    "        local cur = tat[k]\n" \
    "        out[o + 1], out[o + 2] = 0, cur > now and cur - now or 0\n" \
    "      end\n" \
    "      o = o + 2\n" \
    "    end\n" \
    "  end\n" \
    "  a = a + nb + 2\n" \
    "end\n" \
    "for i = 1, nw do\n" \
    "  local k = wk[i]\n" \
    "  call('SET', k, fmt('%d', tat[k]), 'PX', wpx[k])\n" \
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

#endif
