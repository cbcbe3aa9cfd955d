#!/usr/bin/env bash
# bench.sh: the gateway against the mock called directly and against nginx, in one run, with wrk
# over keep-alive loopback. Pinning (2 CPUs or more), --layout shared (the default): capgate-mock
# and redis-server (the services outside the gateway) on CPU 0; the proxy under test (nginx,
# capgate) and wrk (1 thread) share CPU 1, so every proxy gets the same one core and the same
# competition from the load generator. --layout dedicated: capgate-mock, redis-server and wrk share
# CPU 0, the proxy under test has CPU 1 to itself; the run is then bounded by CPU 0 as much as by
# the proxy. Besides req/s, every run records the CPU time the server under test used per request
# (utime + stime of the mock, the nginx worker or capgate, over the run / requests; for full,
# redis-server's is reported beside it): a figure that varies far less than req/s on a shared
# machine. Each target runs --runs
# times, the targets taking turns (run 1 of each, then run 2 of each, ...) so a noisy phase of the
# machine hits every target alike; the table gives the median requests/s of the valid runs and
# p50/p99 of that median run and the median CPU per request, then the ratios capgate/nginx req/s
# and CPU per request and capgate p99 - direct p99.
# Targets (letters of the brief in brackets):
#   direct      (a) capgate-mock called directly, pre-signed CaptchaIframeQuery (mock credential)
#   nginx       (b) nginx (1 worker, upstream keepalive 64) in front of the same mock
#   capgate     (c) capgate, 1 worker, signature app, upstream plain HTTP to the mock
#   capgate-w2  (c) the same with 2 workers
#   capgate-tls (c) capgate, 1 worker, signature app, upstream HTTPS to the mock's TLS listener
#   token       (d) capgate, 1 worker, token app (Authorization: Bearer), upstream plain HTTP
#   full        (e) capgate, 1 worker, token app, with redis-server, limits (never refusing),
#                   audit and metrics on; reports redis-server CPU per forwarded request, the
#                   Redis commands per request and their time (INFO commandstats), and the
#                   audit stream's bytes per entry
#   pool-hit        capgate, 1 worker, token app, prefetch pool (in-memory store): requests with
#                   exactly a profile's parameters, answered from the pool; the mock delays every
#                   CaptchaIframeQuery by 20 ms (fault rule) during the run
#   pool-forward    the same gateway and fault, the same parameters plus userIp (a per-user
#                   field), so every request bypasses the pool and waits for the mock
#   ("pool" = both.) The pool targets run --pool-duration / --duration seconds at each of the
#   --pool-connections counts, and take their turn with the others. The gateway keeps N profiles
#   of size 10000 (N = CAPGATE_BENCH_POOL_RATE (80000) x --pool-duration / 10000, businessId
#   1..N) so a hit run cannot drain it. Before each hit run the fault is off until every profile
#   is full again (/metrics capgate_pool_depth, bounded wait), then it is added. A hit run is
#   valid only if capgate_pool_misses_total did not rise and capgate_pool_hits_total rose by at
#   least wrk's count; a forward run only if neither counter moved. The report adds the p50 and
#   p99 ratios forwarded / hit at each connection count.
# A run is valid when wrk saw no socket error and no non-2xx reply, every body had "code":0
# (counted by cycle.lua), no pre-signed request was sent twice, and the mock's journal ends in
# code-0 entries; the table counts invalid runs apart.
# Usage: bench.sh [--targets direct,nginx,...,pool-hit,pool-forward|a,b,c,d,e,pool]
#                 [--duration S] [--runs N] [--connections N] [--pool-connections N,N...]
#                 [--pool-duration S] [--layout shared|dedicated] [--no-build]
# Environment: CAPGATE_BENCH_BUILD_DIR (default build/), CAPGATE_BENCH_PRESIGN_RATE (120000),
# CAPGATE_BENCH_POOL_RATE (80000).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${CAPGATE_BENCH_BUILD_DIR:-"$root/build"}
targets="direct,nginx,capgate,capgate-w2,capgate-tls,token,full,pool-hit,pool-forward"
duration=10
runs=3
connections=50
pool_connections="10,50"
pool_duration=3
build=1
layout=shared
# Pre-signed requests per second of run: above what one core can serve, so no Nonce repeats.
presign_rate=${CAPGATE_BENCH_PRESIGN_RATE:-120000}
# Pool hits per second to provision for (above what one core serves): sizes the pool.
pool_rate=${CAPGATE_BENCH_POOL_RATE:-80000}
pool_size=10000
# The upstream latency the mock adds during the pool runs.
pool_delay_ms=20

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

while (($#)); do
  case "$1" in
    --targets) targets=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --pool-connections) pool_connections=$2; shift 2 ;;
    --pool-duration) pool_duration=$2; shift 2 ;;
    --layout) layout=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ $duration =~ ^[1-9][0-9]*$ && $runs =~ ^[1-9][0-9]*$ && $connections =~ ^[1-9][0-9]*$ &&
  $pool_duration =~ ^[1-9][0-9]*$ && $pool_rate =~ ^[1-9][0-9]*$ ]] || {
  echo "bench.sh: --duration, --runs, --connections, --pool-duration and CAPGATE_BENCH_POOL_RATE take positive integers" >&2
  exit 2
}
[[ $layout == shared || $layout == dedicated ]] || {
  echo "bench.sh: --layout takes shared or dedicated" >&2
  exit 2
}
[[ $pool_connections =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || {
  echo "bench.sh: --pool-connections takes positive integers separated by commas" >&2
  exit 2
}
IFS=, read -r -a pool_conns <<<"$pool_connections"
pool_profiles=$(((pool_rate * pool_duration + pool_size - 1) / pool_size))

all_targets=(direct nginx capgate capgate-w2 capgate-tls token full pool-hit pool-forward)
target_list=()
IFS=, read -r -a requested <<<"$targets"
for t in "${requested[@]}"; do
  case "$t" in
    a) t=direct ;; b) t=nginx ;; c) t=capgate,capgate-w2,capgate-tls ;; d) t=token ;; e) t=full ;;
    pool) t=pool-hit,pool-forward ;;
  esac
  IFS=, read -r -a expanded <<<"$t"
  for x in "${expanded[@]}"; do
    [[ " ${all_targets[*]} " == *" $x "* ]] || {
      echo "bench.sh: unknown target: $x (known: ${all_targets[*]}, or a b c d e pool)" >&2
      exit 2
    }
    [[ " ${target_list[*]} " == *" $x "* ]] || target_list+=("$x")
  done
done

work=$(mktemp -d "${TMPDIR:-/tmp}/capgate-bench.XXXXXX")
pids=()
cleanup() {
  local p t
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for ((t = 0; t < 50; t++)); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf 'bench.sh: %s\n' "$*" >&2; }

mock_pin=()
proxy_pin=()
wrk_pin=()
if (($(nproc) >= 2)); then
  mock_pin=(taskset -c 0)
  proxy_pin=(taskset -c 1)
  if [[ $layout == shared ]]; then
    wrk_pin=(taskset -c 1)
    pinning="capgate-mock and redis-server on CPU 0; the proxy under test and wrk on CPU 1"
  else
    wrk_pin=(taskset -c 0)
    pinning="capgate-mock, redis-server and wrk on CPU 0; the proxy under test on CPU 1"
  fi
else
  pinning="one CPU only: everything shares it, numbers are not comparable"
  say "$pinning"
fi

# wait_line FILE REGEX PID: bounded wait for a line in a process's output; prints the line.
wait_line() {
  local file=$1 re=$2 pid=$3 i line
  for ((i = 0; i < 100; i++)); do
    line=$(grep -Em1 "$re" "$file" || true)
    if [[ -n $line ]]; then
      printf '%s\n' "$line"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  say "no line matching '$re' within 10 s; output:"
  cat "$file" >&2
  return 1
}

# free_port: a TCP port free on 127.0.0.1 right now (for servers whose address must be known
# before they start: requests are signed for HOST:PORT).
free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => {
    console.log(s.address().port); s.close(); });'
}

# wait_http URL: bounded wait (10 s) until URL answers at all.
wait_http() {
  local i
  for ((i = 0; i < 100; i++)); do
    if curl -s -o /dev/null --max-time 1 "$1"; then return 0; fi
    sleep 0.1
  done
  say "$1 did not answer within 10 s"
  return 1
}

do_build() {
  "$root/scripts/install-deps.sh" --bench
  cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build_dir" -j 2 --target capgate capgate-mock >/dev/null
}

# ---- servers -----------------------------------------------------------------------------

mock_url="" mock_tls=""
start_mock() {
  local log="$work/mock.log"
  "$root/scripts/gen-certs.sh" "$work/certs"
  # The Timestamp window covers the whole benchmark: the pre-signed files keep their Timestamp.
  "${mock_pin[@]}" "$build_dir/capgate-mock" --listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 \
    --tls-cert "$work/certs/server.pem" --tls-key "$work/certs/server.key" \
    --timestamp-window 3600 --log-level warn >"$log" 2>&1 &
  pids+=("$!")
  mock_pid=$!
  mock_url=$(wait_line "$log" '^capgate-mock listening on http://' "$!")
  mock_url=${mock_url#capgate-mock listening on }
  mock_tls=$(wait_line "$log" '^capgate-mock listening on https://' "${pids[-1]}")
  mock_tls=${mock_tls#capgate-mock listening on }
  say "capgate-mock at $mock_url and $mock_tls"
}

nginx_host=""
start_nginx() {
  local dir="$work/nginx" port
  port=$(free_port)
  nginx_host="127.0.0.1:$port"
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  upstream mock {
    server ${mock_url#http://};
    keepalive 64;
  }
  server {
    listen $nginx_host;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # The requests are signed for nginx's host:port; the mock checks the Host it sees.
      proxy_set_header Host \$http_host;
    }
  }
}
CONF
  "${proxy_pin[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/out.log" 2>&1 &
  pids+=("$!")
  nginx_pid=$!
  wait_http "http://$nginx_host/__admin/health"
  say "nginx at http://$nginx_host (one worker, upstream keepalive 64)"
}

redis_port=""
start_redis() {
  redis_port=$(free_port)
  "${mock_pin[@]}" redis-server --bind 127.0.0.1 --port "$redis_port" --save '' \
    --appendonly no --dir "$work" --logfile "$work/redis.log" &
  pids+=("$!")
  redis_pid=$!
  local i
  for ((i = 0; i < 100; i++)); do
    if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
      say "redis-server at 127.0.0.1:$redis_port"
      return 0
    fi
    sleep 0.1
  done
  say "redis-server did not answer within 10 s"
  return 1
}

# pool_profile_query K: the parameters of pool profile K (1..pool_profiles), in a query string.
pool_profile_query() {
  printf 'Action=CaptchaIframeQuery&captchaType=9&disturbLevel=1&isHttps=0&clientType=2&accountType=0&businessId=%s' "$1"
}

# capgate_config WORKERS UPSTREAM_URL PORT [full|pool]: a gateway config on stdout.
capgate_config() {
  local workers=$1 url=$2 port=$3 full=${4:-} extra="" k
  if [[ $full == pool ]]; then
    extra=$(
      printf '  "pool": { "ttl_s": 300, "profiles": [\n'
      for ((k = 1; k <= pool_profiles; k++)); do
        printf '    { "captchaType": 9, "disturbLevel": 1, "isHttps": 0, "clientType": 2, "accountType": 0, "businessId": %s, "size": %s }%s\n' \
          "$k" "$pool_size" "$( ((k < pool_profiles)) && echo ,)"
      done
      printf '  ] },\n'
      # without redis every audit record also goes to <spool_dir>/audit.jsonl: keep it in $work
      printf '  "audit": { "spool_dir": "%s" },' "$work/spool-$port"
    )
  elif [[ $full != full ]]; then
    extra=$(printf '  "audit": { "spool_dir": "%s" },' "$work/spool-$port")
  else
    extra=$(
      cat <<JSON
  "redis": { "url": "redis://127.0.0.1:$redis_port/0", "timeout_ms": 1000 },
  "limits": [
    { "name": "bench-scene", "businessId": "*", "sceneId": "*", "rate": 1000000000, "period_s": 1, "burst": 1000000000 },
    { "name": "bench-app", "scope": "app", "rate": 1000000000, "period_s": 1, "burst": 1000000000 },
    { "name": "bench-global", "scope": "global", "rate": 1000000000, "period_s": 1, "burst": 1000000000 }
  ],
  "audit": { "stream": "capgate:audit", "maxlen": 100000, "spool_dir": "$work/spool-$port", "pii": "hash" },
  "metrics": { "flush_ms": 1000 },
JSON
    )
  fi
  cat <<JSON
{
  "listen": "127.0.0.1:$port",
  "admin_listen": "127.0.0.1:0",
  "workers": $workers,
  "log_level": "warn",
  "upstream": {
    "url": "$url",
    "secret_id_env": "BENCH_UPSTREAM_ID",
    "secret_key_env": "BENCH_UPSTREAM_KEY",
    "signature_method": "HmacSHA256",
    "method": "GET",
    "ca_file": "$work/certs/ca.pem",
    "max_connections": 64
  },
$extra
  "auth": { "timestamp_window_s": 3600 },
  "apps": [
    { "name": "bench-sig", "auth": "signature", "secret_id": "$app_id", "secret_key_env": "BENCH_APP_KEY" },
    { "name": "bench-token", "auth": "token", "token_env": "BENCH_APP_TOKEN" }
  ]
}
JSON
}

app_id="AKIDcapgateBench00000000000000000000"
app_key="capgate-bench-app-secret"
app_token="capgate-bench-token"
declare -A gw_host=() gw_admin=() gw_pid=()

# start_capgate NAME WORKERS UPSTREAM_URL [full]
start_capgate() {
  local name=$1 workers=$2 url=$3 full=${4:-} port conf="$work/$1.json" log="$work/$1.log" line
  port=$(free_port)
  capgate_config "$workers" "$url" "$port" "$full" >"$conf"
  "${proxy_pin[@]}" env BENCH_UPSTREAM_ID=AKIDcapgateMockTestKey00000000000000 \
    BENCH_UPSTREAM_KEY=capgate-mock-secret BENCH_APP_KEY="$app_key" BENCH_APP_TOKEN="$app_token" \
    "$build_dir/capgate" --config "$conf" >"$log" 2>&1 &
  pids+=("$!")
  gw_pid[$name]=$!
  line=$(wait_line "$log" '^capgate admin listening on http://' "$!")
  gw_admin[$name]=${line#capgate admin listening on }
  gw_host[$name]="127.0.0.1:$port"
  wait_http "${gw_admin[$name]}/healthz"
  case "$full" in
    full) full=", redis + limits + audit + metrics" ;;
    pool) full=", pool of $pool_profiles profile(s) x $pool_size URLs in memory" ;;
  esac
  say "capgate ($name: $workers worker(s), upstream $url$full) at http://${gw_host[$name]} (pid ${gw_pid[$name]})"
}

# ---- runs ----------------------------------------------------------------------------------

declare -A results=() invalid=() label=()
label[direct]="capgate-mock direct | mock credential"
label[nginx]="nginx -> mock (HTTP) | mock credential"
label[capgate]="capgate 1 worker -> mock (HTTP) | signature"
label[capgate-w2]="capgate 2 workers -> mock (HTTP) | signature"
label[capgate-tls]="capgate 1 worker -> mock (HTTPS) | signature"
label[token]="capgate 1 worker -> mock (HTTP) | token"
label[full]="capgate 1 worker + redis (limits, audit, metrics) -> mock (HTTP) | token"
label[pool-hit]="capgate 1 worker, pool hit (mock +${pool_delay_ms} ms) | token"
label[pool-forward]="capgate 1 worker -> mock +${pool_delay_ms} ms (HTTP), userIp bypasses the pool | token"

# presign HOST ID KEY FILE
presign() {
  node "$root/scripts/bench/presign.mjs" --host "$1" --secret-id "$2" --secret-key "$3" \
    --count "$((presign_rate * duration))" --out "$4"
}

# pool_metric NAME: the value of an unlabelled metric on the pool gateway's /metrics.
pool_metric() {
  curl -s --max-time 5 "${gw_admin[pool]}/metrics" | awk -v n="$1" '$1 == n { print $2; f = 1 } END { if (!f) print "" }'
}

# pool_depth: URLs ready over every profile (sum of capgate_pool_depth{profile=...}).
pool_depth() {
  curl -s --max-time 5 "${gw_admin[pool]}/metrics" | awk '/^capgate_pool_depth\{/ { s += $2 } END { printf "%d\n", s }'
}

# pool_fill: with no fault in the mock, bounded wait (300 s) until the pool holds at least 99%
# of pool_profiles x pool_size URLs.
pool_fill() {
  local want=$((pool_profiles * pool_size * 99 / 100)) start=$SECONDS depth=0
  while ((SECONDS - start < 300)); do
    depth=$(pool_depth)
    if ((depth >= want)); then
      say "pool: $depth URLs ready after $((SECONDS - start)) s"
      return 0
    fi
    sleep 0.5
  done
  say "pool: only $depth of $want URLs ready after 300 s"
  return 1
}

# server_pids TARGET: the processes whose CPU time counts as the server's for TARGET.
server_pids() {
  case "$1" in
    direct) echo "$mock_pid" ;;
    nginx) pgrep -P "$nginx_pid" | paste -sd ' ' - ;;
    pool-hit | pool-forward) echo "${gw_pid[pool]}" ;;
    *) echo "${gw_pid[$1]}" ;;
  esac
}

clk_tck=$(getconf CLK_TCK)
# cpu_ticks PID...: utime + stime of the processes (all their threads), in clock ticks.
cpu_ticks() {
  local p total=0 t
  for p in "$@"; do
    # the fields after "(comm) ": state is 1st, utime 12th, stime 13th
    t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }')
    total=$((total + ${t:-0}))
  done
  echo "$total"
}

# one_run TARGET RUN [CONNECTIONS]: one wrk run of TARGET; appends "rps p50_us p99_us cpu_us" to
# results[TARGET] (results[TARGET@CONNECTIONS] for the pool targets) or counts invalid.
one_run() {
  local t=$1 i=$2 c=${3:-$connections} d=$duration key=$1 url host file="$work/requests.txt"
  local out="$work/wrk-$1-$2-${3:-c}.out" args bad=() total k hits0="" misses0="" hits1="" misses1=""
  case "$t" in
    direct) host=${mock_url#http://}; presign "$host" AKIDcapgateMockTestKey00000000000000 capgate-mock-secret "$file" ;;
    nginx) host=$nginx_host; presign "$host" AKIDcapgateMockTestKey00000000000000 capgate-mock-secret "$file" ;;
    capgate | capgate-w2 | capgate-tls) host=${gw_host[$t]}; presign "$host" "$app_id" "$app_key" "$file" ;;
    token | full) host=${gw_host[$t]} ;;
    pool-hit | pool-forward) host=${gw_host[pool]}; key="$t@$c" ;;
  esac
  if [[ $t == pool-hit ]]; then
    d=$pool_duration
    for ((k = 1; k <= pool_profiles; k++)); do
      printf '/v2/index.php?%s\n' "$(pool_profile_query "$k")"
    done >"$file"
    url="http://$host/"
    args=("$file" "$host" 1 Authorization "Bearer $app_token" repeat)
  elif [[ $t == pool-forward ]]; then
    url="http://$host/v2/index.php?$(pool_profile_query 1)&userIp=203.0.113.9"
    args=(- "$host" 1 Authorization "Bearer $app_token")
  elif [[ $t == token || $t == full ]]; then
    url="http://$host/v2/index.php?Action=CaptchaIframeQuery&captchaType=1&disturbLevel=1&isHttps=0&clientType=2&accountType=0&businessId=1&sceneId=1"
    args=(- "$host" 1 Authorization "Bearer $app_token")
  else
    url="http://$host/"
    args=("$file" "$host" 1)
  fi
  node "$root/scripts/bench/admin.mjs" reset "$mock_url"
  local redis0=""
  if [[ $t == full ]]; then
    redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
    redis0=$(cpu_ticks "$redis_pid")
  fi
  if [[ $t == pool-hit ]]; then
    # Refill at the mock's full speed (reset dropped the fault), then slow upstream down.
    pool_fill || bad+=("the pool did not fill")
  fi
  if [[ $t == pool-* ]]; then
    node "$root/scripts/bench/admin.mjs" fault "$mock_url" \
      "{\"action\": \"CaptchaIframeQuery\", \"delay_ms\": $pool_delay_ms}"
    hits0=$(pool_metric capgate_pool_hits_total)
    misses0=$(pool_metric capgate_pool_misses_total)
  fi
  local spids cpu0 cpu1 cpu_us
  read -r -a spids <<<"$(server_pids "$t")"
  cpu0=$(cpu_ticks "${spids[@]}")
  if ! "${wrk_pin[@]}" wrk -t1 -c "$c" -d "${d}s" --latency \
    -s "$root/scripts/bench/cycle.lua" "$url" "${args[@]}" >"$out" 2>&1; then
    bad+=("wrk failed")
  fi
  cpu1=$(cpu_ticks "${spids[@]}")
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  p50=$(awk '$1 == "50%" {print $2}' "$out")
  p99=$(awk '$1 == "99%" {print $2}' "$out")
  total=$(awk '/requests in/ {print $1}' "$out")
  grep -q 'Socket errors' "$out" && bad+=("$(grep 'Socket errors' "$out")")
  grep -q 'Non-2xx' "$out" && bad+=("$(grep 'Non-2xx' "$out")")
  grep -Eq 'cycle.lua: wrapped [1-9]' "$out" && bad+=("a pre-signed request was sent twice (raise CAPGATE_BENCH_PRESIGN_RATE)")
  grep -Eq 'cycle.lua: bad [1-9]' "$out" && bad+=("$(grep 'cycle.lua: bad' "$out") replies without \"code\":0")
  grep -q 'cycle.lua: bad 0' "$out" || bad+=("cycle.lua did not report")
  [[ -n $rps && -n $p50 && -n $p99 && ${total:-0} -gt 0 ]] || bad+=("no numbers in wrk's output")
  cpu_us=$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$clk_tck" -v n="${total:-1}" 'BEGIN { printf "%.2f", (b - a) * 1000000 / hz / n }')
  node "$root/scripts/bench/admin.mjs" check "$mock_url" >/dev/null || bad+=("the mock's journal shows failed requests")
  if [[ $t == pool-* ]]; then
    hits1=$(pool_metric capgate_pool_hits_total)
    misses1=$(pool_metric capgate_pool_misses_total)
    if [[ -z $hits0 || -z $hits1 || -z $misses0 || -z $misses1 ]]; then
      bad+=("no capgate_pool_hits_total / capgate_pool_misses_total in /metrics")
    elif [[ $t == pool-hit ]]; then
      ((misses1 == misses0)) || bad+=("$((misses1 - misses0)) pool misses during the run (the pool ran dry)")
      ((hits1 - hits0 >= ${total:-0})) || bad+=("only $((hits1 - hits0)) pool hits for $total requests")
    else
      ((hits1 == hits0 && misses1 == misses0)) || bad+=("the pool was consulted ($((hits1 - hits0)) hits, $((misses1 - misses0)) misses)")
    fi
  fi
  if ((${#bad[@]})); then
    invalid[$key]=$((${invalid[$key]:-0} + 1))
    say "$key run $i: INVALID: ${bad[*]}"
    cat "$out" >&2
    return 0
  fi
  results[$key]+="$rps $(to_us "$p50") $(to_us "$p99") $cpu_us"$'\n'
  say "$key run $i: $rps req/s, p50 $p50, p99 $p99, server CPU $cpu_us us/request ($total requests${hits1:+, pool hits +$((hits1 - hits0)), misses +$((misses1 - misses0))})"
  if [[ $t == full ]]; then
    redis_per_request "$total" "$(awk -v a="$redis0" -v b="$(cpu_ticks "$redis_pid")" -v hz="$clk_tck" \
      -v n="$total" 'BEGIN { printf "%.2f", (b - a) * 1000000 / hz / n }')"
  fi
}

# to_us 1.23ms|456.00us|1.2s: microseconds.
to_us() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) m = 1; else if (v ~ /ms$/) m = 1000; else if (v ~ /s$/) m = 1000000; else m = 0
    sub(/[a-z]+$/, "", v); printf "%.0f", v * m }'
}

redis_stats=()
# redis_per_request TOTAL CPU_US: Redis commands per forwarded request in the last run, and
# redis-server's CPU per request (CPU_US, measured over the wrk run).
redis_per_request() {
  local total=$1 stats line="redis-server CPU $2 us per request; "
  # The metrics flush runs every flush_ms (1 s): let the last one land.
  sleep 1.5
  stats=$(redis-cli -p "$redis_port" INFO commandstats | tr -d '\r')
  for cmd in evalsha xadd hincrby; do
    local calls
    calls=$(sed -nE "s/^cmdstat_$cmd:calls=([0-9]+),.*/\\1/p" <<<"$stats")
    line+="$(printf '%s %s (%.4f per request); ' "${cmd^^}" "${calls:-0}" "$(awk -v c="${calls:-0}" -v n="$total" 'BEGIN { print c / n }')")"
  done
  # Where the time inside commands went (INFO commandstats: usec, per forwarded request; a
  # script's usec includes the commands it called, EXEC's those it ran, which are listed too).
  line+="command time per request:$(awk -F'[:,=]' -v n="$total" '/^cmdstat_/ && $3 > 0 {
    sub(/^cmdstat_/, "", $1); printf " %s %.2f us (%.3f calls),", toupper($1), $5 / n, $3 / n }' <<<"$stats" | sed 's/,$//'); "
  # What an audit record costs in Redis memory: the stream's bytes per entry (all entries sampled).
  local len bytes
  len=$(redis-cli -p "$redis_port" XLEN capgate:audit | tr -d '\r')
  bytes=$(redis-cli -p "$redis_port" MEMORY USAGE capgate:audit SAMPLES 0 | tr -d '\r')
  if [[ $len =~ ^[1-9][0-9]*$ && $bytes =~ ^[0-9]+$ ]]; then
    line+="audit stream $len entries, $((bytes / len)) bytes each; "
  fi
  redis_stats+=("$total requests: $line")
  say "redis: $total requests: $line"
}

# full_probe: does capgate with a redis section put keys into Redis? (limits, audit, metrics
# wired in); returns 1 with a message when not.
full_probe() {
  local i keys
  for ((i = 0; i < 5; i++)); do
    curl -s -o /dev/null --max-time 2 -H "Authorization: Bearer $app_token" \
      "http://${gw_host[full]}/v2/index.php?Action=CaptchaIframeQuery&captchaType=1&disturbLevel=1&isHttps=0&clientType=2&accountType=0&businessId=1&sceneId=1" || true
  done
  sleep 1.5
  keys=$(redis-cli -p "$redis_port" DBSIZE)
  say "full: after 5 requests Redis holds $keys key(s): $(redis-cli -p "$redis_port" --scan | head -n 5 | paste -sd ' ' -)"
  ((keys > 0))
}

# ---- main ----------------------------------------------------------------------------------

((build)) && do_build
start_mock
for t in "${target_list[@]}"; do
  case "$t" in
    nginx) start_nginx ;;
    capgate) start_capgate capgate 1 "$mock_url/v2/index.php" ;;
    capgate-w2) start_capgate capgate-w2 2 "$mock_url/v2/index.php" ;;
    capgate-tls) start_capgate capgate-tls 1 "$mock_tls/v2/index.php" ;;
    token) start_capgate token 1 "$mock_url/v2/index.php" ;;
    full)
      start_redis
      start_capgate full 1 "$mock_url/v2/index.php" full
      ;;
    pool-hit | pool-forward)
      [[ -n ${gw_pid[pool]:-} ]] || start_capgate pool 1 "$mock_url/v2/index.php" pool
      ;;
  esac
done
skipped=()
if [[ " ${target_list[*]} " == *" full "* ]] && ! full_probe; then
  skipped+=("full: SKIPPED: capgate with a redis section put no key into Redis (limits, audit and metrics are not wired into this build)")
  say "${skipped[-1]}"
  target_list=("${target_list[@]/full/}")
fi

for ((i = 1; i <= runs; i++)); do
  for t in "${target_list[@]}"; do
    case "$t" in
      "") ;;
      pool-hit | pool-forward)
        # Both pool targets at each connection count, hit then forward, in pool-hit's turn.
        if [[ $t == pool-forward && " ${target_list[*]} " == *" pool-hit "* ]]; then continue; fi
        for c in "${pool_conns[@]}"; do
          for p in pool-hit pool-forward; do
            if [[ " ${target_list[*]} " == *" $p "* ]]; then one_run "$p" "$i" "$c"; fi
          done
        done
        ;;
      *) one_run "$t" "$i" ;;
    esac
  done
done

# ---- report --------------------------------------------------------------------------------

# median TARGET: "rps p50 p99" of the median valid run by req/s (empty when none).
median() {
  local lines n
  lines=$(printf '%s' "${results[$1]:-}" | sed '/^$/d' | sort -n -k1,1)
  n=$(printf '%s\n' "$lines" | sed '/^$/d' | wc -l)
  ((n > 0)) || return 0
  printf '%s\n' "$lines" | sed -n "$(((n + 1) / 2))p"
}
fmt_ms() { awk -v u="$1" 'BEGIN { printf "%.2f ms", u / 1000 }'; }
# median_cpu TARGET: the median server CPU us/request over the valid runs (empty when none).
median_cpu() {
  printf '%s' "${results[$1]:-}" | awk 'NF { print $4 }' | sort -n |
    awk '{ v[NR] = $1 } END { if (NR) printf "%.2f", v[int((NR + 1) / 2)] }'
}

declare -A med_rps=() med_p50=() med_p99=() med_cpu=()
# table_row KEY CELLS: the table row of results[KEY], after its leading CELLS ("target | path |
# auth", plus the connections for the pool); sets med_rps, med_p50, med_p99 and med_cpu[KEY].
table_row() {
  local k=$1 cells=$2 m runs_list m_rps m_p50 m_p99
  m=$(median "$k")
  if [[ -z $m ]]; then
    echo "| $cells | - | - | - | - | - | ${invalid[$k]:-0} |"
    return
  fi
  runs_list=$(printf '%s' "${results[$k]:-}" | awk 'NF {printf "%s%.0f", (n++ ? ", " : ""), $1}')
  read -r m_rps m_p50 m_p99 _ <<<"$m"
  med_rps[$k]=$m_rps
  med_p50[$k]=$m_p50
  med_p99[$k]=$m_p99
  med_cpu[$k]=$(median_cpu "$k")
  printf '| %s | %.0f | %s | %s | %s | %s us | %s |\n' "$cells" "$m_rps" "$runs_list" \
    "$(fmt_ms "$m_p50")" "$(fmt_ms "$m_p99")" "${med_cpu[$k]}" "${invalid[$k]:-0}"
}
main_targets=() pool_targets=()
for t in "${target_list[@]}"; do
  case "$t" in
    "") ;;
    pool-*) pool_targets+=("$t") ;;
    *) main_targets+=("$t") ;;
  esac
done

if ((${#main_targets[@]})); then
printf '\nwrk 1 thread, %s keep-alive connections, %s s per run, %s runs per target taken in turns;\n%s (%s CPUs); GET CaptchaIframeQuery, HmacSHA256.\n\n' \
  "$connections" "$duration" "$runs" "$pinning" "$(nproc)"
echo "| target | path | client auth | req/s (median) | req/s (valid runs) | p50 | p99 | server CPU / request | invalid runs |"
echo "|---|---|---|---:|---|---:|---:|---:|---:|"
fi
for t in "${main_targets[@]}"; do table_row "$t" "$t | ${label[$t]}"; done
echo
for t in capgate capgate-w2 capgate-tls token full; do
  if [[ -n ${med_rps[$t]:-} && -n ${med_rps[nginx]:-} ]]; then
    awk -v a="${med_rps[$t]}" -v b="${med_rps[nginx]}" -v t="$t" \
      'BEGIN { printf "- %s / nginx req/s: %.2f (goal >= 0.8)\n", t, a / b }'
  fi
  if [[ -n ${med_cpu[$t]:-} && -n ${med_cpu[nginx]:-} ]]; then
    awk -v a="${med_cpu[$t]}" -v b="${med_cpu[nginx]}" -v t="$t" \
      'BEGIN { printf "- %s / nginx server CPU per request: %.2f (%.2f us against %.2f us)\n", t, a / b, a, b }'
  fi
  if [[ -n ${med_p99[$t]:-} && -n ${med_p99[direct]:-} ]]; then
    awk -v a="${med_p99[$t]}" -v b="${med_p99[direct]}" -v t="$t" -v c="$connections" \
      'BEGIN { printf "- %s p99 - direct p99 at %s connections: %.2f ms (goal < 1 ms)\n", t, c, (a - b) / 1000 }'
  fi
done
if [[ -n ${med_rps[nginx]:-} && -n ${med_rps[direct]:-} ]]; then
  awk -v a="${med_rps[nginx]}" -v b="${med_rps[direct]}" 'BEGIN { printf "- nginx / direct req/s: %.2f\n", a / b }'
fi
for s in "${redis_stats[@]}"; do echo "- full, Redis commands: $s"; done
for s in "${skipped[@]}"; do echo "- $s"; done

if ((${#pool_targets[@]})); then
  printf '\nPrefetch pool: wrk 1 thread, keep-alive, hits %s s and forwarded %s s per run, %s runs taken in\nturns; %s (%s CPUs); the mock delays CaptchaIframeQuery by %s ms; %s profile(s) x %s URLs.\n\n' \
    "$pool_duration" "$duration" "$runs" "$pinning" "$(nproc)" "$pool_delay_ms" "$pool_profiles" "$pool_size"
  echo "| target | path | client auth | connections | req/s (median) | req/s (valid runs) | p50 | p99 | server CPU / request | invalid runs |"
  echo "|---|---|---|---:|---:|---|---:|---:|---:|---:|"
  for c in "${pool_conns[@]}"; do
    for t in "${pool_targets[@]}"; do table_row "$t@$c" "$t | ${label[$t]} | $c"; done
  done
  echo
  for c in "${pool_conns[@]}"; do
    if [[ -n ${med_p50[pool-hit@$c]:-} && -n ${med_p50[pool-forward@$c]:-} ]]; then
      awk -v h="${med_p50[pool-hit@$c]}" -v f="${med_p50[pool-forward@$c]}" \
        -v h99="${med_p99[pool-hit@$c]}" -v f99="${med_p99[pool-forward@$c]}" -v c="$c" \
        'BEGIN { printf "- forwarded / pool hit at %s connections: p50 %.1fx (goal >= 5), p99 %.1fx\n", c, f / h, f99 / h99 }'
    fi
    if [[ -n ${med_rps[pool-forward@$c]:-} ]]; then
      awk -v r="${med_rps[pool-forward@$c]}" -v c="$c" -v d="$pool_delay_ms" \
        'BEGIN { printf "- forwarded at %s connections: %.0f req/s, bounded by %s connections / %s ms = %.0f req/s\n", c, r, c, d, c * 1000 / d }'
    fi
  done
fi
