#!/usr/bin/env bash
# soak.sh [MINUTES]: both programs under ASan+UBSan for MINUTES (default 30) of moderate load,
# with faults on a schedule, then checks that nothing was lost or leaked.
#
# Builds build-asan/ (as scripts/test.sh does; SOAK_BUILD_DIR=DIR takes DIR's programs instead, to
# read RSS without ASan's own memory), starts capgate-mock (TLS upstream), a
# redis-server with AOF (appendfsync always, so a kill -9 loses no acknowledged write) on a free
# port, and capgate (audit to the Redis stream, spool dir beside it), all in a fresh temp dir.
# scripts/soak-load.mjs sends SOAK_RATE requests a second (default 50) from three signature apps
# and a token app, about 1 in 10 bad. Every SOAK_CYCLE_S seconds (default 150) the schedule runs:
#   +20 s  Redis SIGSTOP for SOAK_STOP_S (default 8) seconds, then SIGCONT
#   +45 s  the mock stalls 5 calls (capgate's upstream timeout answers them)
#   +60 s  the mock resets 6 connections (5 open the breaker, its first probe fails)
#   +75 s  the mock answers HTTP 500 to 30% of calls, 30 times
#   +90 s  capgate gets SIGHUP (the config alternates one limit's rate)
#   +110 s Redis kill -9, restarted 3 s later on the same port and AOF
# Every SOAK_SAMPLE_S seconds (default 10) one CSV row: RSS and open descriptors of capgate and
# the mock, capgate's error counters from /metrics, the mock's counts from /__admin/health.
# At the end: every answered request's X-Request-Id has a record in the audit stream, RSS and
# descriptors are flat after the warm-up (SOAK_WARMUP_S, default a fifth of the run, at most
# 300 s), both programs exit 0 on SIGTERM and their logs hold no sanitizer report.
# Prints a summary (scripts/soak-report.mjs); exit 0 only if every check passed.
# Output stays in SOAK_DIR (default a new /tmp/capgate-soak.XXXXXX): samples.csv, logs,
# load.json, summary.txt.
set -euo pipefail

minutes=${1:-30}
if ! [[ $minutes =~ ^[0-9]+$ ]] || ((minutes < 1)); then
  echo "usage: $0 [MINUTES]  (a whole number >= 1)" >&2
  exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

duration=$((minutes * 60))
rate=${SOAK_RATE:-50}
cycle=${SOAK_CYCLE_S:-150}
sample_s=${SOAK_SAMPLE_S:-10}
stop_s=${SOAK_STOP_S:-8}
warmup=${SOAK_WARMUP_S:-$((duration / 5 < 300 ? duration / 5 : 300))}
dir=${SOAK_DIR:-$(mktemp -d /tmp/capgate-soak.XXXXXX)}
mkdir -p "$dir"

log() { printf '[soak %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

if [[ -n ${SOAK_BUILD_DIR:-} ]]; then
  # another build's programs (a Release or RelWithDebInfo tree: RSS without ASan's own memory),
  # copied so a rebuild of that tree during the soak does not change them
  bin="$dir/bin"
  mkdir -p "$bin"
  cp "$SOAK_BUILD_DIR/capgate" "$SOAK_BUILD_DIR/capgate-mock" "$bin/" || exit 1
  log "programs of $SOAK_BUILD_DIR"
else
  bin=build-asan
  log "build-asan (ASan+UBSan)"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCAPGATE_SANITIZE=address,undefined \
    >/dev/null
  cmake --build build-asan -j2 --target capgate capgate-mock >"$dir/build.log" 2>&1 || {
    tail -n 30 "$dir/build.log" >&2
    exit 1
  }
fi
if [[ ! -d tests/integration/node_modules ]]; then
  (cd tests/integration && npm ci --no-audit --no-fund --loglevel=error)
fi

# A small quarantine so ASan's own memory settles early; leaks are reported at exit.
export ASAN_OPTIONS=detect_leaks=1:quarantine_size_mb=16:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=0

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# waitline FILE REGEX: the first line of FILE matching REGEX (bounded: 60 s).
waitline() {
  local i
  for ((i = 0; i < 600; i++)); do
    if grep -m1 -E "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "soak: timed out waiting for /$2/ in $1" >&2
  return 1
}
free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{
    console.log(s.address().port);s.close();});'
}

./scripts/gen-certs.sh "$dir/certs" >/dev/null 2>&1

# The mock keeps every captcha URL and ticket it issued for --captcha-ttl (default 1200 s), so
# its memory grows for that long by design: here that horizon ends with the warm-up.

log "capgate-mock"
"$bin/capgate-mock" --listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 \
  --tls-cert "$dir/certs/server.pem" --tls-key "$dir/certs/server.key" --log-level warn \
  --captcha-ttl "$((warmup > 60 ? warmup : 60))" \
  >"$dir/mock.log" 2>&1 &
mock_pid=$!
pids+=("$mock_pid")
mock_url=$(waitline "$dir/mock.log" '^capgate-mock listening on http://' | awk '{print $4}')
mock_url=${mock_url%/}
mock_tls=$(waitline "$dir/mock.log" '^capgate-mock listening on https://' | awk '{print $4}')
mock_tls=${mock_tls%/}
mock_tls_hostport=${mock_tls#https://}

redis_port=$(free_port)
mkdir -p "$dir/redis"
redis_pid=
start_redis() {
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly yes \
    --appendfsync always --dir "$dir/redis" >>"$dir/redis.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  local i
  for ((i = 0; i < 100; i++)); do
    [[ $(redis-cli -p "$redis_port" PING 2>/dev/null) == PONG ]] && return 0
    sleep 0.1
  done
  echo "soak: redis-server did not answer PING" >&2
  return 1
}
log "redis-server on port $redis_port (AOF, appendfsync always)"
start_redis

# The apps: three signature apps and a token app, secrets through the environment.
export SOAK_MOCK_SECRET_ID=AKIDcapgateMockTestKey00000000000000
export SOAK_MOCK_SECRET_KEY=capgate-mock-secret
export SOAK_KEY_A=soak-app-a-secret-1f2e SOAK_KEY_B=soak-app-b-secret-3c4d
export SOAK_KEY_C=soak-app-c-secret-5a6b SOAK_TOKEN_T=soak-token-app-secret-7e8f
export SOAK_APPS='[
  {"secretId": "AKIDsoakAppA0000000000000000000000000", "secretKey": "soak-app-a-secret-1f2e"},
  {"secretId": "AKIDsoakAppB0000000000000000000000000", "secretKey": "soak-app-b-secret-3c4d"},
  {"secretId": "AKIDsoakAppC0000000000000000000000000", "secretKey": "soak-app-c-secret-5a6b"},
  {"token": "soak-token-app-secret-7e8f"}]'

# write_config RATE: capgate.json, with RATE for the "tight" limit (SIGHUP alternates it).
write_config() {
  cat >"$dir/capgate.json.tmp" <<EOF
{
  "listen": "127.0.0.1:0",
  "admin_listen": "127.0.0.1:0",
  "workers": 2,
  "log_level": "warn",
  "upstream": {
    "url": "${mock_tls}/v2/index.php", "sign_host": "${mock_tls_hostport}",
    "secret_id_env": "SOAK_MOCK_SECRET_ID", "secret_key_env": "SOAK_MOCK_SECRET_KEY",
    "ca_file": "$dir/certs/ca.pem", "verify_tls": true,
    "connect_timeout_ms": 1000, "timeout_ms": 1500, "retries": 0, "max_connections": 16
  },
  "redis": { "url": "redis://127.0.0.1:${redis_port}/0", "timeout_ms": 200 },
  "on_store_error": "local",
  "audit": { "spool_dir": "$dir/spool", "stream": "soak:audit" },
  "apps": [
    { "name": "app-a", "auth": "signature", "secret_id": "AKIDsoakAppA0000000000000000000000000",
      "secret_key_env": "SOAK_KEY_A" },
    { "name": "app-b", "auth": "signature", "secret_id": "AKIDsoakAppB0000000000000000000000000",
      "secret_key_env": "SOAK_KEY_B", "business_ids": [1, 2, 3, 4, 5] },
    { "name": "app-c", "auth": "signature", "secret_id": "AKIDsoakAppC0000000000000000000000000",
      "secret_key_env": "SOAK_KEY_C" },
    { "name": "app-t", "auth": "token", "token_env": "SOAK_TOKEN_T", "business_ids": "*" }
  ],
  "limits": [
    { "name": "tight", "businessId": 5, "sceneId": 3, "rate": $1, "period_s": 1, "burst": 2 },
    { "name": "per-scene", "businessId": "*", "sceneId": "*", "rate": 40, "period_s": 1 },
    { "name": "per-app", "scope": "app", "rate": 200, "period_s": 1 }
  ]
}
EOF
  mv "$dir/capgate.json.tmp" "$dir/capgate.json"
}
write_config 1
log "capgate (config $dir/capgate.json)"
"$bin/capgate" --config "$dir/capgate.json" >"$dir/capgate.log" 2>&1 &
gw_pid=$!
pids+=("$gw_pid")
gw_base=$(waitline "$dir/capgate.log" '^capgate listening on http://' | awk '{print $4}')
gw_base=${gw_base%/}
gw_admin=$(waitline "$dir/capgate.log" '^capgate admin listening on http://' | awk '{print $5}')
gw_admin=${gw_admin%/}
log "capgate $gw_base (admin $gw_admin), mock $mock_tls, output in $dir"

# metric NAME: the sum of every series of NAME in capgate's /metrics text ($metrics_text).
metric() {
  awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d", s }' \
    <<<"$metrics_text"
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
nfds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

csv=$dir/samples.csv
echo "t_s,gw_rss_kb,gw_fds,gw_requests,gw_store_errors,gw_store_timeouts,gw_flush_errors,\
gw_audit_submit_failures,gw_audit_queue,gw_audit_spool,gw_open_conns,gw_upstream_errors,\
mock_rss_kb,mock_fds,mock_api_calls,mock_pending,mock_conns,event" >"$csv"
event_file=$dir/events.log
: >"$event_file"
t0=$(date +%s)
sampler() {
  local now t health ev
  while :; do
    now=$(date +%s)
    t=$((now - t0))
    metrics_text=$(curl -s -m 3 "$gw_admin/metrics" || true)
    health=$(curl -s -m 3 "$mock_url/__admin/health" || true)
    ev=$(awk -v t="$t" -v s="$sample_s" \
      '$1 > t - s && $1 <= t {printf "%s%s", sep, $2; sep = ";"}' "$event_file")
    printf '%d,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$t" \
      "$(rss_kb "$gw_pid")" "$(nfds "$gw_pid")" "$(metric capgate_requests_total)" \
      "$(metric capgate_store_errors_total)" "$(metric capgate_store_timeouts_total)" \
      "$(metric capgate_metrics_flush_errors_total)" \
      "$(metric capgate_audit_submit_failures_total)" "$(metric capgate_audit_queue_depth)" \
      "$(metric capgate_audit_spool_records)" "$(metric capgate_open_connections)" \
      "$(awk '/^capgate_requests_total\{/ && /decision="upstream_error"/ {s += $NF}
          END {printf "%d", s}' <<<"$metrics_text")" \
      "$(rss_kb "$mock_pid")" "$(nfds "$mock_pid")" \
      "$(grep -o '"api_calls": *[0-9]*' <<<"$health" | grep -o '[0-9]*$' || echo 0)" \
      "$(grep -o '"pending": *[0-9]*' <<<"$health" | grep -o '[0-9]*$' || echo 0)" \
      "$(grep -o '"connections": *[0-9]*' <<<"$health" | grep -o '[0-9]*$' || echo 0)" \
      "$ev" >>"$csv"
    sleep "$sample_s"
  done
}

event() {
  printf '%d %s\n' "$(($(date +%s) - t0))" "$1" >>"$event_file"
  log "fault: $1"
}
mock_fault() {
  curl -s -m 3 -X POST -H 'content-type: application/json' -d "$1" \
    "$mock_url/__admin/faults" >/dev/null || true
}

# sleep_until OFFSET: sleeps until OFFSET seconds into the current cycle ($cstart); false once
# the run is over.
sleep_until() {
  local wait=$((cstart + $1 - $(date +%s)))
  ((wait > 0)) && sleep "$wait"
  (($(date +%s) < t0 + duration - 15))
}
hup_rate=1
faults() {
  while (($(date +%s) < t0 + duration - 15)); do
    cstart=$(date +%s)
    sleep_until 20 || break
    event redis_sigstop
    kill -STOP "$redis_pid"
    sleep "$stop_s"
    kill -CONT "$redis_pid"
    event redis_sigcont
    sleep_until 45 || break
    event mock_stall
    mock_fault '{"network": "stall", "times": 5}'
    sleep_until 60 || break
    event mock_reset
    mock_fault '{"network": "reset", "times": 6}'
    sleep_until 75 || break
    event mock_http_500
    mock_fault '{"network": "http_500", "probability": 0.3, "times": 30}'
    sleep_until 90 || break
    hup_rate=$((hup_rate == 1 ? 2 : 1))
    write_config "$hup_rate"
    event capgate_sighup
    kill -HUP "$gw_pid"
    sleep_until 110 || break
    event redis_kill9
    kill -KILL "$redis_pid"
    wait "$redis_pid" 2>/dev/null || true
    sleep 3
    start_redis
    event redis_restarted
    sleep_until "$cycle" || break
  done
}

sampler &
sampler_pid=$!
pids+=("$sampler_pid")

log "load: $rate req/s for ${duration}s; faults every ${cycle}s; warm-up ${warmup}s"
SOAK_BASE=$gw_base SOAK_DURATION_S=$duration SOAK_RATE=$rate SOAK_IDS_FILE="$dir/ids.txt" \
  SOAK_SUMMARY_FILE="$dir/load.json" node scripts/soak-load.mjs >"$dir/load.log" 2>&1 &
load_pid=$!
pids+=("$load_pid")
# The fault loop runs in this shell (it restarts Redis, whose pid the end needs).
faults
wait "$load_pid" || log "the load generator failed (see $dir/load.log)"
log "load done; waiting for the audit spool and queue to drain"

# Drained: the spool and queue empty on two reads in a row (bounded: 120 s).
drained=0
for ((i = 0; i < 120; i++)); do
  metrics_text=$(curl -s -m 3 "$gw_admin/metrics" || true)
  if [[ -n $metrics_text && $(metric capgate_audit_spool_records) == 0 &&
    $(metric capgate_audit_queue_depth) == 0 ]]; then
    drained=$((drained + 1))
    ((drained >= 2)) && break
  else
    drained=0
  fi
  sleep 1
done
sleep "$sample_s"
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true

# The stream's request ids (redis-cli --raw prints each field and value on its own line). An
# entry is one "json" field, the audit.file line; an entry of the earlier flat format has a
# "request_id" field.
redis-cli -p "$redis_port" --raw XRANGE soak:audit - + |
  awk 'prev == "request_id" {print}
       prev == "json" && match($0, /"request_id":"[0-9a-f]+"/) {print substr($0, RSTART + 14, RLENGTH - 15)}
       {prev = $0}' >"$dir/stream_ids.txt"
sort -u "$dir/ids.txt" >"$dir/ids.sorted"
sort "$dir/stream_ids.txt" >"$dir/stream.sorted"
sort -u "$dir/stream.sorted" >"$dir/stream.usorted"
comm -23 "$dir/ids.sorted" "$dir/stream.usorted" >"$dir/missing.txt"

log "SIGTERM to capgate and the mock"
# stop PID: SIGTERM, then its exit status in $stopped_rc (bounded: 30 s, then SIGKILL).
stop() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  stopped_rc=0
  wait "$pid" || stopped_rc=$?
}
stop "$gw_pid"
gw_rc=$stopped_rc
stop "$mock_pid"
mock_rc=$stopped_rc
redis-cli -p "$redis_port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
san_re='ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|SUMMARY: (Address|Undefined)'
gw_san=$(grep -cE "$san_re" "$dir/capgate.log" || true)
mock_san=$(grep -cE "$san_re" "$dir/mock.log" || true)

SOAK_CSV=$csv SOAK_WARMUP_S=$warmup SOAK_LOAD_JSON="$dir/load.json" \
  SOAK_ANSWERED_IDS=$(wc -l <"$dir/ids.sorted") \
  SOAK_STREAM_RECORDS=$(wc -l <"$dir/stream.sorted") \
  SOAK_STREAM_IDS=$(wc -l <"$dir/stream.usorted") \
  SOAK_MISSING=$(wc -l <"$dir/missing.txt") SOAK_DRAINED=$drained \
  SOAK_GW_RC=$gw_rc SOAK_MOCK_RC=$mock_rc SOAK_GW_SAN=$gw_san SOAK_MOCK_SAN=$mock_san \
  SOAK_EVENTS="$event_file" SOAK_MINUTES=$minutes \
  node scripts/soak-report.mjs | tee "$dir/summary.txt"
rc=${PIPESTATUS[0]}
trap - EXIT
cleanup
log "output in $dir"
exit "$rc"
