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
# machine; wrk's own CPU per request (cycle.lua counts it from when its targets are loaded); and the
# server threads' context switches per request, voluntary + involuntary. Each target runs --runs
# times, the targets taking turns (run 1 of each, then run 2 of each, ...) so a noisy phase of the
# machine hits every target alike; the table gives the median requests/s of the valid runs and
# p50/p99 of that median run and the median CPU per request, then the ratios capgate/nginx req/s
# and CPU per request and capgate p99 - direct p99.
# Targets (letters of the brief in brackets):
#   direct      (a) capgate-mock called directly, pre-signed CaptchaIframeQuery (mock credential)
#   nginx-bare  (b) nginx (1 worker, upstream keepalive 64) in front of the same mock, a bare
#                   relay ("nginx" is another name for it)
#   nginx-features  nginx-bare plus limit_req keyed by businessId:sceneId and an access log with
#                   the business ids (scripts/bench/peers/nginx-features.conf.in)
#   lua-gateway     nginx + lua doing what capgate does for a signature app: signature check,
#                   Nonce in a shared dict, validation, a counter limit, re-signing, access log
#                   (scripts/bench/peers/lua_gateway.lua); checked before its runs (a good request
#                   gets code 0, a bad Signature 4100, a replayed Nonce 4500) and skipped if not
#   capgate     (c) capgate, 1 worker, signature app, upstream plain HTTP to the mock
#   capgate-w2  (c) the same with 2 workers
#   capgate-tls (c) capgate, 1 worker, signature app, upstream HTTPS to the mock's TLS listener
#   token       (d) capgate, 1 worker, token app (Authorization: Bearer), upstream plain HTTP
#   full        (e) capgate, 1 worker, token app, with redis-server, limits (never refusing),
#                   audit and metrics on; reports redis-server CPU per forwarded request, the
#                   Redis commands per request and their time (INFO commandstats), and the
#                   audit stream's bytes per entry
#   full-durable    full with audit.commit "durable": each reply waits for EXEC of its record
#   full-replicas   full with audit.min_replicas 1 against a replica (redis-server --replicaof,
#                   on CPU 0 too): each batch waits for WAIT 1
#   full-replicas-durable  both
#   token-durable   token (no Redis) with audit.commit "durable": each reply waits for the fsync
#                   of <spool_dir>/audit.jsonl (one per batch)
#   ("durability" = the four; the report adds their req/s and p99 against full or token.)
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
# The report ends with the goals of issue 17: capgate full / lua-gateway and capgate / lua-gateway
# req/s, capgate's CPU per request / nginx-bare's, capgate-tls - capgate CPU per request.
# --latency P,P...: after the wrk runs, capgate-loadgen (tools/loadgen.c) sends at a constant
# rate of P% of capgate's median req/s (from the wrk runs, in --layout), --runs times taken in
# turns, to capgate and to the mock directly (pre-signed requests, open loop, latency from each
# request's due time, 1 s of warm-up before the measured --duration); reports p50/p90/p99/p99.9
# of both, the p50 and p99 capgate adds over the direct call at each rate (the difference of the
# medians, and run by run within a round), and per run the generator's own send lag and CPU and
# the share of the two cores other processes took (a disturbed run shows there). Needs capgate
# in --targets. --latency-layout picks where the generator and capgate run for these runs (the
# wrk runs keep --layout): colocated (the default) puts the generator alone on CPU 1 and capgate
# (moved there with taskset -a) beside the mock on CPU 0, so the direct call and the call through
# capgate cross between the cores once each way alike and the generator keeps time alike;
# dedicated puts the generator with the mock on CPU 0 and capgate alone on CPU 1 (the call
# through capgate then crosses cores twice each way, the direct call never); shared puts the
# generator on capgate's CPU 1 (the call through capgate then also pays for their taking turns on
# one core). Why colocated: the comment at lat_pin below, and docs/benchmarks.md ("Latency at a
# fixed rate").
# --idle N: instead of the runs, capgate (as the capgate target) with N idle keep-alive clients
# (capgate-loadgen --idle: one token request on each, then silence): VmRSS before and after.
# --perf DIR: after the runs, one more wrk run per target under perf record (-g, the server's
# processes); DIR/TARGET.folded gets the folded stacks (scripts/bench/stackcollapse.awk),
# DIR/TARGET.txt their per-function table (functable.awk) and DIR/TARGET.svg a flame graph of
# them (flamegraph.awk). With --latency, one more constant-rate run per target and rate under
# perf record of the scheduler (see latency_run): DIR/latency-TARGET-PCT.md.
# Usage: bench.sh [--targets direct,nginx-bare,...,pool-hit,pool-forward|a,b,c,d,e,pool,durability]
#                 [--duration S] [--runs N] [--connections N] [--pool-connections N,N...]
#                 [--pool-duration S] [--layout shared|dedicated] [--no-build]
#                 [--latency P,P...] [--latency-layout colocated|dedicated|shared] [--idle N]
#                 [--perf DIR]
# Environment: CAPGATE_BENCH_BUILD_DIR (default build/), CAPGATE_BENCH_PRESIGN_RATE (120000),
# CAPGATE_BENCH_POOL_RATE (80000), CAPGATE_BENCH_LUA_ROOT (the lua module unpacked there rather
# than installed: scripts/bench/peers/peers.sh).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${CAPGATE_BENCH_BUILD_DIR:-"$root/build"}
targets="direct,nginx-bare,nginx-features,lua-gateway,capgate,capgate-w2,capgate-tls,token,full,pool-hit,pool-forward"
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
latency_pcts=""
latency_layout=colocated
lat_proxy_cpu=""
# Seconds each constant-rate run sends before its measured --duration (connections opened,
# capgate's upstream connections warm; checked, not in the latencies).
latency_warmup=1
idle_clients=0
perf_dir=""

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
    --latency) latency_pcts=$2; shift 2 ;;
    --latency-layout) latency_layout=$2; shift 2 ;;
    --idle) idle_clients=$2; shift 2 ;;
    --perf) perf_dir=$2; shift 2 ;;
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
[[ $latency_layout == colocated || $latency_layout == dedicated || $latency_layout == shared ]] || {
  echo "bench.sh: --latency-layout takes colocated, dedicated or shared" >&2
  exit 2
}
[[ $pool_connections =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || {
  echo "bench.sh: --pool-connections takes positive integers separated by commas" >&2
  exit 2
}
[[ -z $latency_pcts || $latency_pcts =~ ^[1-9][0-9]?(,[1-9][0-9]?)*$ ]] || {
  echo "bench.sh: --latency takes percentages 1..99 separated by commas" >&2
  exit 2
}
[[ $idle_clients =~ ^[0-9]+$ ]] || { echo "bench.sh: --idle takes a count" >&2; exit 2; }
if [[ -n $perf_dir ]]; then
  mkdir -p "$perf_dir"
  perf_dir=$(cd "$perf_dir" && pwd)
fi
IFS=, read -r -a pool_conns <<<"$pool_connections"
pool_profiles=$(((pool_rate * pool_duration + pool_size - 1) / pool_size))

all_targets=(direct nginx-bare nginx-features lua-gateway capgate capgate-w2 capgate-tls token full
  pool-hit pool-forward full-durable full-replicas full-replicas-durable token-durable)
target_list=()
IFS=, read -r -a requested <<<"$targets"
for t in "${requested[@]}"; do
  case "$t" in
    a) t=direct ;; b | nginx) t=nginx-bare ;; c) t=capgate,capgate-w2,capgate-tls ;; d) t=token ;; e) t=full ;;
    pool) t=pool-hit,pool-forward ;;
    durability) t=full,full-durable,full-replicas,full-replicas-durable,token,token-durable ;;
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
lat_pin=()
lat_pinning="one CPU only: everything shares it, numbers are not comparable"
if (($(nproc) >= 2)); then
  mock_pin=(taskset -c 0)
  proxy_pin=(taskset -c 1)
  # The constant-rate runs compare the mock called directly with the mock behind capgate; for
  # the difference to be capgate's, both calls must pay the machine alike. Two things differ
  # between layouts on 2 cores: who the generator competes with, and how many wake-ups cross
  # from one core to the other (about 18 us each at p50 on this VM, with a tail of 0.1-1 ms;
  # on one core about 2 us). colocated (the default): the generator alone on CPU 1, capgate
  # beside the mock on CPU 0: one cross-core round trip per request for both calls (generator
  # <-> mock, or generator <-> capgate; capgate <-> mock stays on CPU 0) and the same generator
  # conditions; capgate's own CPU work shares the mock's core, so at higher rates it waits for
  # the mock's work too. dedicated: the generator with the mock on CPU 0, capgate alone on CPU 1:
  # the same competition for both, but the call through capgate crosses cores twice per way
  # and the direct call never, so "added" counts two cross-core round trips of this VM. shared:
  # the generator on capgate's core: the call through capgate also pays for the generator and
  # capgate taking turns on one core, which the direct call never does.
  case "$latency_layout" in
    colocated)
      lat_pin=(taskset -c 1) lat_proxy_cpu=0
      lat_pinning="capgate-loadgen alone on CPU 1, capgate with capgate-mock and redis-server on CPU 0 (--latency-layout colocated)"
      ;;
    dedicated)
      lat_pin=(taskset -c 0) lat_proxy_cpu=1
      lat_pinning="capgate-loadgen with capgate-mock and redis-server on CPU 0, capgate alone on CPU 1 (--latency-layout dedicated)"
      ;;
    shared)
      lat_pin=(taskset -c 1) lat_proxy_cpu=1
      lat_pinning="capgate-mock and redis-server on CPU 0, capgate-loadgen and capgate on CPU 1 (--latency-layout shared)"
      ;;
  esac
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
  cmake --build "$build_dir" -j 2 --target capgate capgate-mock capgate-loadgen >/dev/null
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

# shellcheck source=bench/peers/peers.sh
. "$root/scripts/bench/peers/peers.sh"
declare -A nginx_hosts=() nginx_pids=()
# start_nginx NAME: nginx-bare (its config here), nginx-features or lua-gateway (their templates
# in scripts/bench/peers/), one worker pinned like capgate.
start_nginx() {
  local name=$1 dir="$work/$1" port nginx_host peers="$root/scripts/bench/peers"
  port=$(free_port)
  nginx_host="127.0.0.1:$port"
  mkdir -p "$dir/tmp"
  case "$name" in
    nginx-features)
      peer_render "$peers/nginx-features.conf.in" "$dir/nginx.conf" DIR="$dir" \
        UP_HOST="${mock_url#http://}" LISTEN="$nginx_host"
      ;;
    lua-gateway)
      peer_render "$peers/lua-gateway.conf.in" "$dir/nginx.conf" DIR="$dir" PEERS="$peers" \
        APP_ID="$app_id" APP_KEY="$app_key" UP_ID=AKIDcapgateMockTestKey00000000000000 \
        UP_KEY=capgate-mock-secret UP_HOST="${mock_url#http://}" WINDOW=3600 LISTEN="$nginx_host" \
        LUA_ROOT="$lua_root"
      ;;
    *) nginx_bare_conf "$dir" "$nginx_host" >"$dir/nginx.conf" ;;
  esac
  "${proxy_pin[@]}" env "${lua_env[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
    >"$dir/out.log" 2>&1 &
  pids+=("$!")
  nginx_pids[$name]=$!
  nginx_hosts[$name]=$nginx_host
  wait_http "http://$nginx_host/__admin/health"
  say "$name at http://$nginx_host (one worker, upstream keepalive 64)"
}

# nginx_bare_conf DIR HOST:PORT: the bare relay's config.
nginx_bare_conf() {
  local dir=$1 nginx_host=$2
  cat <<CONF
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
}

replica_port=""
# start_replica: a replica of the bench's redis-server (for audit.min_replicas), pinned with it;
# bounded wait until it is in sync.
start_replica() {
  replica_port=$(free_port)
  "${mock_pin[@]}" redis-server --bind 127.0.0.1 --port "$replica_port" --save '' \
    --appendonly no --dir "$work" --dbfilename replica.rdb --logfile "$work/replica.log" \
    --replicaof 127.0.0.1 "$redis_port" &
  pids+=("$!")
  local i
  for ((i = 0; i < 100; i++)); do
    if redis-cli -p "$replica_port" INFO replication 2>/dev/null | grep -q 'master_link_status:up'; then
      say "redis-server replica at 127.0.0.1:$replica_port"
      return 0
    fi
    sleep 0.1
  done
  say "the replica did not sync within 10 s"
  return 1
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

# capgate_config WORKERS UPSTREAM_URL PORT [full|full-durable|full-replicas|
# full-replicas-durable|durable|pool]: a gateway config on stdout.
capgate_config() {
  local workers=$1 url=$2 port=$3 full=${4:-} extra="" k durability=""
  case "$full" in
    *durable) durability+=', "commit": "durable"' ;;
  esac
  case "$full" in
    full-replicas*) durability+=', "min_replicas": 1' ;;
  esac
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
  elif [[ $full != full* ]]; then
    extra=$(printf '  "audit": { "spool_dir": "%s"%s },' "$work/spool-$port" "$durability")
  else
    extra=$(
      cat <<JSON
  "redis": { "url": "redis://127.0.0.1:$redis_port/0", "timeout_ms": 1000 },
  "limits": [
    { "name": "bench-scene", "businessId": "*", "sceneId": "*", "rate": 1000000000, "period_s": 1, "burst": 1000000000 },
    { "name": "bench-app", "scope": "app", "rate": 1000000000, "period_s": 1, "burst": 1000000000 },
    { "name": "bench-global", "scope": "global", "rate": 1000000000, "period_s": 1, "burst": 1000000000 }
  ],
  "audit": { "stream": "capgate:audit", "maxlen": 100000, "spool_dir": "$work/spool-$port", "pii": "hash"$durability },
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

# capgate_malloc: the allocator the capgate under test is linked with (CAPGATE_ALLOCATOR).
capgate_malloc() {
  if ldd "$build_dir/capgate" 2>/dev/null | grep -q libjemalloc; then echo "jemalloc"; else echo "libc malloc"; fi
}

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
    full-*) full=", redis + limits + audit ($full) + metrics" ;;
    durable) full=", audit.commit durable" ;;
    pool) full=", pool of $pool_profiles profile(s) x $pool_size URLs in memory" ;;
  esac
  say "capgate ($name: $workers worker(s), upstream $url$full, $(capgate_malloc)) at http://${gw_host[$name]} (pid ${gw_pid[$name]})"
}

# ---- runs ----------------------------------------------------------------------------------

declare -A results=() invalid=() label=()
label[direct]="capgate-mock direct | mock credential"
label[nginx-bare]="nginx -> mock (HTTP), bare relay | mock credential"
label[nginx-features]="nginx + limit_req + access log -> mock (HTTP) | mock credential"
label[lua-gateway]="nginx + lua gateway -> mock (HTTP) | signature"
label[capgate]="capgate 1 worker -> mock (HTTP) | signature"
label[capgate-w2]="capgate 2 workers -> mock (HTTP) | signature"
label[capgate-tls]="capgate 1 worker -> mock (HTTPS) | signature"
label[token]="capgate 1 worker -> mock (HTTP) | token"
label[full]="capgate 1 worker + redis (limits, audit, metrics) -> mock (HTTP) | token"
label[full-durable]="full, audit.commit durable | token"
label[full-replicas]="full, audit.min_replicas 1 (one replica) | token"
label[full-replicas-durable]="full, commit durable + min_replicas 1 | token"
label[token-durable]="token, audit.commit durable (fsync of audit.jsonl) | token"
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
    nginx-*| lua-gateway) pgrep -P "${nginx_pids[$1]}" | paste -sd ' ' - ;;
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

# ctx_switches PID...: the voluntary and the involuntary context switches of the processes' threads
# so far, as "V N" (a thread that ended is not counted).
ctx_switches() {
  local p
  for p in "$@"; do cat "/proc/$p"/task/*/status 2>/dev/null; done |
    awk '$1 == "voluntary_ctxt_switches:" { v += $2 } $1 == "nonvoluntary_ctxt_switches:" { n += $2 }
      END { print v + 0, n + 0 }'
}

# one_run TARGET RUN [CONNECTIONS]: one wrk run of TARGET; appends "rps p50_us p99_us cpu_us" to
# results[TARGET] (results[TARGET@CONNECTIONS] for the pool targets) or counts invalid.
one_run() {
  local t=$1 i=$2 c=${3:-$connections} d=$duration key=$1 url host file="$work/requests.txt"
  local out="$work/wrk-$1-$2-${3:-c}.out" args bad=() total k hits0="" misses0="" hits1="" misses1=""
  case "$t" in
    direct) host=${mock_url#http://}; presign "$host" AKIDcapgateMockTestKey00000000000000 capgate-mock-secret "$file" ;;
    nginx-bare | nginx-features) host=${nginx_hosts[$t]}; presign "$host" AKIDcapgateMockTestKey00000000000000 capgate-mock-secret "$file" ;;
    lua-gateway) host=${nginx_hosts[$t]}; presign "$host" "$app_id" "$app_key" "$file" ;;
    capgate | capgate-w2 | capgate-tls) host=${gw_host[$t]}; presign "$host" "$app_id" "$app_key" "$file" ;;
    token | token-durable | full*) host=${gw_host[$t]} ;;
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
  elif [[ $t == token* || $t == full* ]]; then
    url="http://$host/v2/index.php?Action=CaptchaIframeQuery&captchaType=1&disturbLevel=1&isHttps=0&clientType=2&accountType=0&businessId=1&sceneId=1"
    args=(- "$host" 1 Authorization "Bearer $app_token")
  else
    url="http://$host/"
    args=("$file" "$host" 1)
  fi
  node "$root/scripts/bench/admin.mjs" reset "$mock_url"
  local redis0=""
  if [[ $t == full* ]]; then
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
  local sw0 sw1
  sw0=$(ctx_switches "${spids[@]}")
  local perf_pid=""
  if [[ $i == perf ]]; then
    # The server's processes, sampled for the run's length (DWARF unwinding: the Release build
    # keeps no frame pointers).
    perf record -q -F 1999 --call-graph dwarf,16384 -o "$work/perf-$key.data" \
      -p "$(IFS=,; echo "${spids[*]}")" -- sleep "$d" >"$work/perf-$key.log" 2>&1 &
    perf_pid=$!
  fi
  if ! "${wrk_pin[@]}" wrk -t1 -c "$c" -d "${d}s" --latency \
    -s "$root/scripts/bench/cycle.lua" "$url" "${args[@]}" >"$out" 2>&1; then
    bad+=("wrk failed")
  fi
  cpu1=$(cpu_ticks "${spids[@]}")
  sw1=$(ctx_switches "${spids[@]}")
  if [[ -n $perf_pid ]]; then
    wait "$perf_pid" || bad+=("perf record failed: $(tail -n 3 "$work/perf-$key.log")")
  fi
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
  if [[ $i == perf ]]; then
    say "$key profiled run: $rps req/s, server CPU $cpu_us us/request (not in the table)"
    perf_report "$key" "$rps" "$cpu_us"
    return 0
  fi
  # wrk's own CPU per request during the run (cycle.lua: the process's CPU after its targets were
  # loaded), its share of the core it shares with the server in the shared layout
  local wrk_us
  wrk_us=$(awk -v n="${total:-1}" '/^cycle.lua: cpu after loading / { printf "%.2f", $NF * 1000000 / n }' "$out")
  results[$key]+="$rps $(to_us "$p50") $(to_us "$p99") $cpu_us $i ${wrk_us:-0}"$'\n'
  # the server's threads' context switches per request: how often they slept (voluntary: epoll_wait
  # found nothing) and were preempted (involuntary: wrk woke on their core and took it)
  local switches
  switches=$(awk -v a="$sw0" -v b="$sw1" -v n="${total:-1}" 'BEGIN { split(a, x, " "); split(b, y, " ")
    printf "%.2f voluntary + %.2f involuntary", (y[1] - x[1]) / n, (y[2] - x[2]) / n }')
  say "$key run $i: $rps req/s, p50 $p50, p99 $p99, server CPU $cpu_us us/request, wrk ${wrk_us:-?} us/request, context switches $switches per request ($total requests${hits1:+, pool hits +$((hits1 - hits0)), misses +$((misses1 - misses0))})"
  if [[ $t == full* ]]; then
    redis_per_request "$t" "$total" "$(awk -v a="$redis0" -v b="$(cpu_ticks "$redis_pid")" -v hz="$clk_tck" \
      -v n="$total" 'BEGIN { printf "%.2f", (b - a) * 1000000 / hz / n }')"
  fi
}

# perf_report KEY RPS CPU_US: from perf-KEY.data, perf_dir/KEY.folded (the folded stacks),
# KEY.txt (the share of each object, from perf report, then the per-function table of the
# stacks: self and total share, self as us of CPU_US) and
# KEY.svg (a flame graph of them).
perf_report() {
  local key=$1 data="$work/perf-$1.data"
  perf script -i "$data" -F comm,tid,ip,sym,dso 2>/dev/null |
    awk -f "$root/scripts/bench/stackcollapse.awk" | sort >"$perf_dir/$key.folded"
  {
    printf 'perf record -F 1999 --call-graph dwarf of %s (the server'"'"'s processes) during one wrk run:\n' "$key"
    printf '%s req/s, %s us of server CPU per request, %s samples.\n\n' "$2" "$3" \
      "$(awk '{ s += $NF } END { print s + 0 }' "$perf_dir/$key.folded")"
    printf '| object | self | us/request |\n|---|---:|---:|\n'
    perf report -i "$data" --stdio --no-children --sort dso -g none 2>/dev/null |
      awk -v cpu="$3" '/^ +[0-9.]+%/ { p = $1; sub(/%/, "", p); if (p >= 0.5)
        printf "| %s | %.1f%% | %.2f |\n", $2, p, p * cpu / 100 }'
    echo
    awk -v cpu="$3" -f "$root/scripts/bench/functable.awk" "$perf_dir/$key.folded"
  } >"$perf_dir/$key.txt"
  awk -v title="$key: $2 req/s, $3 us server CPU per request" \
    -f "$root/scripts/bench/flamegraph.awk" "$perf_dir/$key.folded" >"$perf_dir/$key.svg"
  say "perf: $perf_dir/$key.txt, $key.folded, $key.svg"
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
  local t=$1 total=$2 stats line="redis-server CPU $3 us per request; "
  # The metrics flush runs every flush_ms (1 s): let the last one land.
  sleep 1.5
  stats=$(redis-cli -p "$redis_port" INFO commandstats | tr -d '\r')
  for cmd in evalsha xadd hincrby wait; do
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
  redis_stats+=("$t, $total requests: $line")
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

# ---- constant rate and idle clients ------------------------------------------------------------

declare -A lat=() lat_invalid=()
# cores_busy_ticks: user + nice + system time of CPUs 0 and 1 so far (/proc/stat, clock ticks;
# interrupts and softirqs left out: loopback traffic is counted there, not in any process).
cores_busy_ticks() {
  awk '$1 == "cpu0" || $1 == "cpu1" { t += $2 + $3 + $4 } END { print t + 0 }' /proc/stat
}
# our_ticks: CPU time (ticks) of the servers this bench started.
our_ticks() {
  local p=("$mock_pid" "${gw_pid[@]}")
  [[ -n ${redis_pid:-} ]] && p+=("$redis_pid")
  cpu_ticks "${p[@]}"
}
# latency_run TARGET PCT RATE RUN: capgate-loadgen at RATE req/s against TARGET (direct or
# capgate), latency_warmup seconds of warm-up then --duration measured, over at most
# --connections connections, pinned per --latency-layout; appends "p50 p90 p99 p99.9" (us),
# the generator's send lag p99 (us) and CPU per request (us), the share of the two cores that
# other processes used during the run (%) and RUN to lat[TARGET@PCT], or counts the run invalid
# (a failed or non-code-0 reply, the mock's journal). RUN "sched" (with --perf DIR): a run under
# `perf record` of the scheduler's switches and wake-ups on every CPU, with the generator's
# per-request trace, left out of the medians; scripts/bench/sched-attrib.mjs then writes
# DIR/latency-TARGET-PCT.md: where the time of the median and of the slowest requests went.
latency_run() {
  local t=$1 pct=$2 rate=$3 i=$4 host file="$work/rate-requests.txt" out="$work/rate-$1-$2-$4.out" bad=()
  local count=$((rate * (duration + latency_warmup) + 100))
  if [[ $t == direct ]]; then
    host=${mock_url#http://}
    node "$root/scripts/bench/presign.mjs" --host "$host" --secret-id AKIDcapgateMockTestKey00000000000000 \
      --secret-key capgate-mock-secret --count "$count" --out "$file"
  else
    host=${gw_host[$t]}
    node "$root/scripts/bench/presign.mjs" --host "$host" --secret-id "$app_id" --secret-key "$app_key" \
      --count "$count" --out "$file"
  fi
  node "$root/scripts/bench/admin.mjs" reset "$mock_url"
  local busy0 ours0 busy1 ours1 ns0 ns1
  local trace=() perf_pid="" sched="$perf_dir/latency-$t-$pct"
  if [[ $i == sched ]]; then
    trace=(--trace "$sched.trace")
    perf record -q -k CLOCK_MONOTONIC -a -e sched:sched_switch -e sched:sched_wakeup \
      -o "$sched.data" >"$sched.perf.log" 2>&1 &
    perf_pid=$!
    sleep 0.5
  fi
  busy0=$(cores_busy_ticks) ours0=$(our_ticks) ns0=$(date +%s%N)
  "${lat_pin[@]}" "$build_dir/capgate-loadgen" --host "$host" --file "$file" --rate "$rate" \
    --duration "$duration" --warmup "$latency_warmup" --connections "$connections" \
    "${trace[@]}" >"$out" 2>&1 || bad+=("not every reply was good")
  busy1=$(cores_busy_ticks) ours1=$(our_ticks) ns1=$(date +%s%N)
  if [[ -n $perf_pid ]]; then
    kill -INT "$perf_pid" 2>/dev/null
    wait "$perf_pid" 2>/dev/null || true
  fi
  node "$root/scripts/bench/admin.mjs" check "$mock_url" >/dev/null || bad+=("the mock's journal shows failed requests")
  local p50 p90 p99 p999 lag99 lgcpu other
  read -r p50 p90 p99 p999 < <(awk '$1 == "latency_us" { print $3, $5, $7, $9 }' "$out")
  read -r lag99 lgcpu < <(awk '$1 == "generator" { print $6, $NF }' "$out")
  [[ -n $p99 && -n $lgcpu ]] || bad+=("no numbers in capgate-loadgen's output")
  other=$(awk -v b="$((busy1 - busy0))" -v o="$((ours1 - ours0))" -v hz="$clk_tck" -v lg="${lgcpu:-0}" \
    -v n="$((rate * (duration + latency_warmup)))" -v el="$((ns1 - ns0))" 'BEGIN {
      x = ((b - o) / hz * 1e6 - lg * n) / (el / 1e3 * 2) * 100; printf "%.0f", x < 0 ? 0 : x }')
  if ((${#bad[@]})); then
    [[ $i == sched ]] || lat_invalid[$t@$pct]=$((${lat_invalid[$t@$pct]:-0} + 1))
    say "$t at $rate req/s ($pct% of capgate's max) run $i: INVALID: ${bad[*]}"
    cat "$out" >&2
    return 0
  fi
  if [[ $i == sched ]]; then
    perf script -i "$sched.data" -F comm,pid,tid,cpu,time,event,trace --ns >"$sched.sched" 2>/dev/null &&
      node "$root/scripts/bench/sched-attrib.mjs" --trace "$sched.trace" --sched "$sched.sched" \
        --pids "capgate=${gw_pid[capgate]},mock=$mock_pid${redis_pid:+,redis=$redis_pid}" \
        --label "$t at $rate req/s ($pct% of capgate's max), p50 $p50 us, p99 $p99 us, other processes $other% of the 2 cores" \
        >"$sched.md" 2>"$sched.err" && say "sched: $sched.md" || say "sched: no attribution ($(cat "$sched.err"))"
    rm -f "$sched.sched" # (the .data stays for perf sched timehist -i)
    return 0
  fi
  lat[$t@$pct]+="$p50 $p90 $p99 $p999 $lag99 $lgcpu $other $i"$'\n'
  say "$t at $rate req/s ($pct% of capgate's max) run $i: p50 $p50 us, p90 $p90 us, p99 $p99 us, p99.9 $p999 us; generator: send lag p99 $lag99 us, $lgcpu us CPU/request; other processes $other% of the 2 cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

# lat_median KEY COLUMN: the median of a column (1 p50, 2 p90, 3 p99, 4 p99.9, 5 send lag p99,
# 6 generator CPU/request, 7 other processes' %) over lat[KEY]'s runs.
lat_median() {
  printf '%s' "${lat[$1]:-}" | awk -v c="$2" 'NF { print $c }' | sort -n |
    awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'
}

# idle_mode: capgate (the capgate target's config) with idle_clients keep-alive clients that
# each sent one request; prints VmRSS before and after, and exits.
idle_mode() {
  local log="$work/idle.out" i line rss0 rss1 hwm fds lg
  start_capgate capgate 1 "$mock_url/v2/index.php"
  local pid=${gw_pid[capgate]} host=${gw_host[capgate]}
  # One request first, so the first-use allocations (upstream connection, TLS-less client
  # buffers, caches) are in the baseline.
  curl -s -o /dev/null -H "Authorization: Bearer $app_token" \
    "http://$host/v2/index.php?Action=CaptchaIframeQuery&captchaType=1&disturbLevel=1&isHttps=0&clientType=2&accountType=0"
  sleep 0.5
  rss0=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
  "${wrk_pin[@]}" "$build_dir/capgate-loadgen" --host "$host" --idle "$idle_clients" --hold 600 \
    --header "Authorization: Bearer $app_token" \
    --path "/v2/index.php?Action=CaptchaIframeQuery&captchaType=1&disturbLevel=1&isHttps=0&clientType=2&accountType=0" \
    >"$log" 2>&1 &
  lg=$!
  pids+=("$lg")
  line=""
  for ((i = 0; i < 1200; i++)); do
    line=$(grep -m1 'idle connections open' "$log" || true)
    [[ -n $line ]] && break
    kill -0 "$lg" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -z $line ]]; then
    say "idle: the clients did not all get a reply within 120 s"
    cat "$log" >&2
    return 1
  fi
  sleep 1
  rss1=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
  fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
  kill -TERM "$lg" 2>/dev/null || true
  wait "$lg" 2>/dev/null || true
  printf '\ncapgate, 1 worker, the capgate target'"'"'s config; %s keep-alive clients, each sent one token request and\nthen stayed idle (capgate-loadgen --idle).\n\n' "$idle_clients"
  echo "| measure | value |"
  echo "|---|---:|"
  awk -v a="$rss0" 'BEGIN { printf "| VmRSS before | %.1f MB |\n", a / 1024 }'
  awk -v a="$rss1" -v n="$idle_clients" 'BEGIN { printf "| VmRSS with %d idle clients | %.1f MB (goal <= 64 MB) |\n", n, a / 1024 }'
  awk -v a="$hwm" 'BEGIN { printf "| VmHWM | %.1f MB |\n", a / 1024 }'
  awk -v a="$rss0" -v b="$rss1" -v n="$idle_clients" 'BEGIN { printf "| per idle client | %.2f KB |\n", (b - a) / n }'
  echo "| capgate's open descriptors | $fds |"
  echo "| loadgen | $line |"
}

# ---- main ----------------------------------------------------------------------------------

((build)) && do_build
start_mock
if ((idle_clients > 0)); then
  idle_mode
  exit
fi
for t in "${target_list[@]}"; do
  case "$t" in
    nginx-bare | nginx-features | lua-gateway) start_nginx "$t" ;;
    capgate) start_capgate capgate 1 "$mock_url/v2/index.php" ;;
    capgate-w2) start_capgate capgate-w2 2 "$mock_url/v2/index.php" ;;
    capgate-tls) start_capgate capgate-tls 1 "$mock_tls/v2/index.php" ;;
    token) start_capgate token 1 "$mock_url/v2/index.php" ;;
    full | full-durable | full-replicas | full-replicas-durable)
      [[ -n $redis_port ]] || start_redis
      if [[ $t == full-replicas* && -z $replica_port ]]; then start_replica; fi
      start_capgate "$t" 1 "$mock_url/v2/index.php" "$t"
      ;;
    token-durable) start_capgate token-durable 1 "$mock_url/v2/index.php" durable ;;
    pool-hit | pool-forward)
      [[ -n ${gw_pid[pool]:-} ]] || start_capgate pool 1 "$mock_url/v2/index.php" pool
      ;;
  esac
done
skipped=()
if [[ " ${target_list[*]} " == *" full "* ]] && ! full_probe; then
  skipped+=("full: SKIPPED: capgate with a redis section put no key into Redis (limits, audit and metrics are not wired into this build)")
  say "${skipped[-1]}"
  for k in "${!target_list[@]}"; do [[ ${target_list[$k]} != full ]] || target_list[$k]=""; done
fi
if [[ " ${target_list[*]} " == *" lua-gateway "* ]]; then
  if lua_gateway_check "$root" "${nginx_hosts[lua-gateway]}" "$app_id" "$app_key" "$work" >"$work/luacheck.txt"; then
    say "$(paste -sd ';' "$work/luacheck.txt")"
  else
    skipped+=("lua-gateway: SKIPPED: its check failed: $(grep FAILED "$work/luacheck.txt" | paste -sd ';' -)")
    say "${skipped[-1]}"
    cat "$work/lua-gateway/error.log" >&2
    target_list=("${target_list[@]/lua-gateway/}")
  fi
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

if [[ -n $perf_dir ]]; then
  for t in "${target_list[@]}"; do
    case "$t" in "" | pool-*) ;; *) one_run "$t" perf ;; esac
  done
fi

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
# median_col TARGET COL: the median of column COL of the valid runs (empty when none): 4 the
# server's CPU us/request, 6 wrk's.
median_col() {
  printf '%s' "${results[$1]:-}" | awk -v c="$2" 'NF >= c { print $c }' | sort -n |
    awk '{ v[NR] = $1 } END { if (NR) printf "%.2f", v[int((NR + 1) / 2)] }'
}
median_cpu() { median_col "$1" 4; }

if [[ -n $latency_pcts ]]; then
  IFS=, read -r -a lat_pcts <<<"$latency_pcts"
  if [[ -z ${gw_pid[capgate]:-} || -z ${results[capgate]:-} ]]; then
    skipped+=("--latency: SKIPPED: it needs a valid capgate run (add capgate to --targets)")
  else
    lat_max=$(median capgate | awk '{ printf "%.0f", $1 }')
    # capgate (every thread) moves to the CPU of --latency-layout for these runs
    if [[ -n $lat_proxy_cpu ]]; then taskset -a -p -c "$lat_proxy_cpu" "${gw_pid[capgate]}" >/dev/null; fi
    for ((i = 1; i <= runs; i++)); do
      for pct in "${lat_pcts[@]}"; do
        for t in direct capgate; do latency_run "$t" "$pct" "$((lat_max * pct / 100))" "$i"; done
      done
    done
    if [[ -n $perf_dir ]]; then
      for pct in "${lat_pcts[@]}"; do
        for t in direct capgate; do latency_run "$t" "$pct" "$((lat_max * pct / 100))" sched; done
      done
    fi
  fi
fi

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
  if [[ -n ${med_rps[$t]:-} && -n ${med_rps[nginx-bare]:-} ]]; then
    awk -v a="${med_rps[$t]}" -v b="${med_rps[nginx-bare]}" -v t="$t" \
      'BEGIN { printf "- %s / nginx-bare req/s: %.2f\n", t, a / b }'
  fi
  if [[ -n ${med_cpu[$t]:-} && -n ${med_cpu[nginx-bare]:-} ]]; then
    awk -v a="${med_cpu[$t]}" -v b="${med_cpu[nginx-bare]}" -v t="$t" \
      'BEGIN { printf "- %s / nginx-bare server CPU per request: %.2f (%.2f us against %.2f us)\n", t, a / b, a, b }'
  fi
  if [[ -n ${med_p99[$t]:-} && -n ${med_p99[direct]:-} ]]; then
    awk -v a="${med_p99[$t]}" -v b="${med_p99[direct]}" -v t="$t" -v c="$connections" \
      'BEGIN { printf "- %s p99 - direct p99 at %s connections: %.2f ms (goal < 1 ms)\n", t, c, (a - b) / 1000 }'
  fi
done
for t in nginx-bare nginx-features lua-gateway; do
  if [[ -n ${med_rps[$t]:-} && -n ${med_rps[direct]:-} ]]; then
    awk -v a="${med_rps[$t]}" -v b="${med_rps[direct]}" -v t="$t" 'BEGIN { printf "- %s / direct req/s: %.2f\n", t, a / b }'
  fi
done
# paired A B COL OP: A's and B's valid runs of the same round (taken minutes apart at most, so in
# the same phase of a noisy machine) compared: A / B (OP ratio) or A - B (OP diff) of column COL
# (1 req/s, 4 CPU per request) per round; prints the median and the list, nothing without a pair.
paired() {
  {
    printf '%s' "${results[$1]:-}" | awk 'NF { print "a", $0 }'
    printf '%s' "${results[$2]:-}" | awk 'NF { print "b", $0 }'
  } | awk -v col="$3" -v op="$4" '
    { if ($1 == "a") a[$6] = $(col + 1); else b[$6] = $(col + 1) }
    END {
      n = 0
      for (r = 1; r <= 10000; r++) {
        if (!((r in a) && (r in b)) || (op == "ratio" && b[r] <= 0)) continue
        x = op == "ratio" ? a[r] / b[r] : a[r] - b[r]
        v[++n] = x
        l = l (n > 1 ? ", " : "") sprintf("%.2f", x)
      }
      if (!n) exit
      for (i = 2; i <= n; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
      printf "%.2f (rounds: %s)", v[int((n + 1) / 2)], l
    }'
}
# goal_ratio LABEL A B GOAL [KEY_A KEY_B COL]: "- LABEL: A/B (goal GOAL)" when both medians exist;
# with the keys, the median of the same ratio taken round by round (paired) after it.
goal_ratio() {
  [[ -n $2 && -n $3 ]] || return 0
  local p=""
  [[ -n ${5:-} ]] && p=$(paired "$5" "$6" "$7" ratio)
  awk -v l="$1" -v a="$2" -v b="$3" -v g="$4" -v p="$p" 'BEGIN {
    printf "- %s: %.2f (%s / %s; goal %s)%s\n", l, a / b, a, b, g, p == "" ? "" : "; paired by round " p }'
}
if [[ -n ${med_rps[lua-gateway]:-}${med_cpu[nginx-bare]:-}${med_cpu[capgate-tls]:-} ]]; then
  echo
  echo "Goals (issue 17), medians of this run:"
  goal_ratio "capgate full / lua-gateway req/s" "${med_rps[full]:-}" "${med_rps[lua-gateway]:-}" ">= 1.3" full lua-gateway 1
  goal_ratio "capgate (signature, memory store) / lua-gateway req/s" "${med_rps[capgate]:-}" "${med_rps[lua-gateway]:-}" ">= 1.5" capgate lua-gateway 1
  goal_ratio "capgate full / lua-gateway server CPU per request" "${med_cpu[full]:-}" "${med_cpu[lua-gateway]:-}" "none: a reading of the req/s goal that noise moves less" full lua-gateway 4
  goal_ratio "capgate / lua-gateway server CPU per request" "${med_cpu[capgate]:-}" "${med_cpu[lua-gateway]:-}" "none: a reading of the req/s goal that noise moves less" capgate lua-gateway 4
  goal_ratio "capgate / nginx-bare server CPU per request" "${med_cpu[capgate]:-}" "${med_cpu[nginx-bare]:-}" "<= 1.8" capgate nginx-bare 4
  if [[ -n ${med_cpu[capgate-tls]:-} && -n ${med_cpu[capgate]:-} ]]; then
    awk -v a="${med_cpu[capgate-tls]}" -v b="${med_cpu[capgate]}" -v p="$(paired capgate-tls capgate 4 diff)" \
      'BEGIN { printf "- capgate-tls - capgate server CPU per request: %.2f us (%s - %s; goal <= 3 us)%s\n", a - b, a, b, p == "" ? "" : "; paired by round " p }'
  fi
  # In the shared layout the server and wrk share one core, so a target's req/s is about
  # 1 / (server + wrk CPU per request): the req/s ratio the CPU figures predict, with the
  # median wrk CPU per request of each target.
  if [[ $layout == shared ]]; then
    for pair in full:lua-gateway capgate:lua-gateway; do
      a=${pair%%:*} b=${pair#*:}
      [[ -n ${med_cpu[$a]:-} && -n ${med_cpu[$b]:-} ]] || continue
      wa=$(median_col "$a" 6) wb=$(median_col "$b" 6)
      awk -v l="$a / $b" -v sa="${med_cpu[$a]}" -v sb="${med_cpu[$b]}" -v wa="$wa" -v wb="$wb" 'BEGIN {
        printf "- %s req/s from the one core'"'"'s CPU per request, (%s + wrk %s) / (%s + wrk %s): %.2f\n", l, sb, wb, sa, wa, (sb + wb) / (sa + wa) }'
    done
  fi
fi
for s in "${redis_stats[@]}"; do echo "- Redis commands: $s"; done
# The cost of each durability option: req/s and p99 against the same gateway without it.
for pair in full-durable:full full-replicas:full full-replicas-durable:full token-durable:token; do
  t=${pair%%:*} b=${pair#*:}
  if [[ -n ${med_rps[$t]:-} && -n ${med_rps[$b]:-} ]]; then
    awk -v a="${med_rps[$t]}" -v b="${med_rps[$b]}" -v a99="${med_p99[$t]}" -v b99="${med_p99[$b]}" \
      -v t="$t" -v base="$b" 'BEGIN { printf "- %s / %s: req/s %.2f, p99 %.2fx (%.2f ms against %.2f ms)\n", t, base, a / b, a99 / b99, a99 / 1000, b99 / 1000 }'
  fi
done
for s in "${skipped[@]}"; do echo "- $s"; done

# lat_added PCT COL: capgate's COL (1 p50, 3 p99) minus the direct call's, run by run (the runs of
# one round are taken back to back); "MEDIAN (rounds: a, b, c)", nothing without a pair.
lat_added() {
  {
    printf '%s' "${lat[capgate@$1]:-}" | awk 'NF { print "a", $0 }'
    printf '%s' "${lat[direct@$1]:-}" | awk 'NF { print "b", $0 }'
  } | awk -v col="$2" '
    { if ($1 == "a") a[$NF] = $(col + 1); else b[$NF] = $(col + 1) }
    END {
      n = 0
      for (r = 1; r <= 10000; r++) {
        if (!((r in a) && (r in b))) continue
        v[++n] = a[r] - b[r]
        l = l (n > 1 ? ", " : "") (a[r] - b[r])
      }
      if (!n) exit
      for (i = 2; i <= n; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
      printf "%d us (rounds: %s us)", v[int((n + 1) / 2)], l
    }'
}

if [[ -n $latency_pcts && -n ${lat_max:-} ]]; then
  printf '\nConstant rate (capgate-loadgen, open loop, latency from each request'"'"'s due time), %s s of warm-up\nthen %s s measured per run, %s runs taken in turns, at most %s connections; %s;\nmedians of the runs. capgate'"'"'s max: %s req/s (its median above). "generator lag" is how late\nthe generator sent (p99 of due -> sent), "other CPU" the share of the two cores that processes\nthis bench did not start used meanwhile: high values mark runs the machine disturbed.\n\n' \
    "$latency_warmup" "$duration" "$runs" "$connections" "$lat_pinning" "$lat_max"
  echo "| rate | target | p50 | p90 | p99 | p99.9 | generator lag p99 | generator CPU / request | other CPU | invalid runs |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  for pct in "${lat_pcts[@]}"; do
    for t in direct capgate; do
      printf '| %s%% (%s req/s) | %s | %s us | %s us | %s us | %s us | %s us | %s us | %s%% | %s |\n' "$pct" \
        "$((lat_max * pct / 100))" "$t" "$(lat_median "$t@$pct" 1)" "$(lat_median "$t@$pct" 2)" \
        "$(lat_median "$t@$pct" 3)" "$(lat_median "$t@$pct" 4)" "$(lat_median "$t@$pct" 5)" \
        "$(lat_median "$t@$pct" 6)" "$(lat_median "$t@$pct" 7)" "${lat_invalid[$t@$pct]:-0}"
    done
  done
  echo
  for pct in "${lat_pcts[@]}"; do
    goal=""
    case "$pct" in 20) goal="; goal <= 0.3 ms" ;; 50) goal="; goal <= 1 ms" ;; esac
    for c in 1:p50 3:p99; do
      a=$(lat_median "capgate@$pct" "${c%%:*}") b=$(lat_median "direct@$pct" "${c%%:*}")
      [[ -n $a && -n $b ]] || continue
      awk -v a="$a" -v b="$b" -v p="$pct" -v w="${c#*:}" -v g="$([[ $c == 3:* ]] && echo "$goal")" \
        -v r="$(lat_added "$pct" "${c%%:*}")" -v l="$latency_layout" 'BEGIN {
        printf "- %s capgate adds over the direct call at %s%% of its max (%s layout): %.3f ms (medians)%s%s\n",
          w, p, l, (a - b) / 1000, r == "" ? "" : "; paired by round " r, g }'
    done
  done
  if [[ -n $perf_dir ]]; then
    for pct in "${lat_pcts[@]}"; do
      for t in direct capgate; do
        [[ -s $perf_dir/latency-$t-$pct.md ]] && { echo; cat "$perf_dir/latency-$t-$pct.md"; }
      done
    done
  fi
fi

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
