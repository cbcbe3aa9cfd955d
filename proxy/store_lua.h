/* store_lua.h: the Redis script behind store_limit, one EVALSHA per request over all its keys.
 * It mirrors limit_decide (limit.c) on Redis TIME: KEYS are the request's buckets, ARGV holds three
 * values per key (emission_us, tolerance_us, shadow 0/1). Nothing is written unless every
 * enforcing bucket admits; then each admitting bucket gets its new TAT with PX expiry = tolerance
 * (a shadow bucket that would refuse is reported and not advanced). Reply: allowed (0/1), denied
 * index, shadow_denied index (0-based, -1 none), retry_after_us, then remaining and reset_us per
 * key. TATs are integers below 2^53, exact in Lua's doubles; written with %d, never %.14g. */
#ifndef CAPGATE_STORE_LUA_H
#define CAPGATE_STORE_LUA_H

#define STORE_LUA_LIMIT \
    "if redis.replicate_commands then redis.replicate_commands() end\n" \
    "local t = redis.call('TIME')\n" \
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n" \
    "local n = #KEYS\n" \
    "local denied, shadow_denied, retry = -1, -1, 0\n" \
    "local newtat, rem, reset = {}, {}, {}\n" \
    "for i = 1, n do\n" \
    "  local e = tonumber(ARGV[3 * i - 2])\n" \
    "  local tol = tonumber(ARGV[3 * i - 1])\n" \
    "  local shadow = ARGV[3 * i] == '1'\n" \
    "  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0\n" \
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

#endif
