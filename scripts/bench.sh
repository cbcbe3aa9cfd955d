#!/usr/bin/env bash
# bench.sh: throughput and latency over keep-alive loopback with wrk. The server under test is
# pinned to CPU 0 and wrk to CPU 1. Each target runs --runs times; the table on stdout gives the
# median requests/s and the p50/p99 latency of the median run.
# Targets: mock (capgate-mock CaptchaIframeQuery, pre-signed distinct requests: the mock refuses
# a repeated Nonce), mock-health (GET /__admin/health, the floor of the HTTP stack).
# Usage: bench.sh [--targets mock,mock-health] [--duration SECONDS] [--runs N]
#                 [--connections N] [--no-build]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir="$root/build-bench"
targets="mock,mock-health"
duration=10
runs=3
connections=64
build=1
# Pre-signed requests per second of run: above what one core can serve, so no Nonce repeats.
presign_rate=${CAPGATE_BENCH_PRESIGN_RATE:-80000}

while (($#)); do
  case "$1" in
    --targets) targets=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ $duration =~ ^[1-9][0-9]*$ && $runs =~ ^[1-9][0-9]*$ && $connections =~ ^[1-9][0-9]*$ ]] || {
  echo "bench.sh: --duration, --runs and --connections take positive integers" >&2
  exit 2
}

work=$(mktemp -d "${TMPDIR:-/tmp}/capgate-bench.XXXXXX")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf 'bench.sh: %s\n' "$*" >&2; }

# CPU pinning: server on CPU 0, wrk on CPU 1 (no pinning on a single-CPU machine).
server_pin=()
client_pin=()
if (($(nproc) >= 2)); then
  server_pin=(taskset -c 0)
  client_pin=(taskset -c 1)
else
  say "one CPU only: server and wrk share it, numbers are not comparable"
fi

rows=()

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

# wrk_run LABEL URL [LUA_SCRIPT [SCRIPT ARGS...]]: one wrk run; sets rps, p50, p99 (and fails
# on socket errors, non-2xx answers or a wrapped request file).
wrk_run() {
  local label=$1 url=$2 out script=()
  shift 2
  if (($#)); then
    script=(-s "$1")
    shift
  fi
  out="$work/wrk.out"
  "${client_pin[@]}" wrk -t1 -c "$connections" -d "${duration}s" --latency "${script[@]}" "$url" "$@" \
    >"$out" 2>&1 || {
    cat "$out" >&2
    return 1
  }
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  p50=$(awk '$1 == "50%" {print $2}' "$out")
  p99=$(awk '$1 == "99%" {print $2}' "$out")
  if grep -Eq 'Socket errors|Non-2xx' "$out" || grep -Eq 'cycle.lua: wrapped [1-9]' "$out"; then
    say "$label: run is void:"
    cat "$out" >&2
    return 1
  fi
  [[ -n $rps && -n $p50 && -n $p99 ]] || {
    cat "$out" >&2
    return 1
  }
  say "$label: $rps req/s, p50 $p50, p99 $p99"
}

# record TARGET WHAT "RPS P50 P99"...: appends a table row with the median run by req/s.
record() {
  local target=$1 what=$2 median all
  shift 2
  median=$(printf '%s\n' "$@" | sort -n -k1,1 | sed -n "$((($# + 1) / 2))p")
  all=$(printf '%s\n' "$@" | awk '{printf "%s%.0f", (NR > 1 ? ", " : ""), $1}')
  read -r m_rps m_p50 m_p99 <<<"$median"
  rows+=("| $target | $what | $(printf '%.0f' "$m_rps") | $all | $m_p50 | $m_p99 |")
}

do_build() {
  "$root/scripts/install-deps.sh" --bench
  cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build_dir" -j 2 --target capgate-mock >/dev/null
}

mock_url=""
# start_mock: capgate-mock on a free port, pinned, quiet, with a Timestamp window that covers
# the whole benchmark (the pre-signed file is made once).
start_mock() {
  [[ -z $mock_url ]] || return 0
  local log="$work/mock.log" line
  "${server_pin[@]}" "$build_dir/capgate-mock" --listen 127.0.0.1:0 --timestamp-window 3600 \
    --log-level warn >"$log" 2>&1 &
  pids+=("$!")
  line=$(wait_line "$log" '^capgate-mock listening on http://' "$!")
  mock_url=${line#capgate-mock listening on }
  say "capgate-mock at $mock_url"
}

bench_mock_health() {
  start_mock
  local results=() i
  for ((i = 1; i <= runs; i++)); do
    wrk_run "mock-health run $i" "$mock_url/__admin/health"
    results+=("$rps $p50 $p99")
  done
  record capgate-mock "GET /__admin/health" "${results[@]}"
}

bench_mock() {
  start_mock
  local file="$work/mock-requests.txt" host=${mock_url#http://} count results=() i total
  count=$((presign_rate * duration))
  say "pre-signing $count CaptchaIframeQuery requests"
  node "$root/scripts/bench/presign.mjs" --host "$host" --count "$count" --out "$file"
  for ((i = 1; i <= runs; i++)); do
    node "$root/scripts/bench/admin.mjs" reset "$mock_url"
    wrk_run "mock run $i" "$mock_url/" "$root/scripts/bench/cycle.lua" "$file" "$host" 1
    total=$(node "$root/scripts/bench/admin.mjs" check "$mock_url")
    say "mock run $i: journal counted $total requests, the last ones answered code 0"
    results+=("$rps $p50 $p99")
  done
  record capgate-mock "CaptchaIframeQuery (GET, HmacSHA256)" "${results[@]}"
}

((build)) && do_build
IFS=, read -r -a target_list <<<"$targets"
for t in "${target_list[@]}"; do
  case "$t" in
    mock) bench_mock ;;
    mock-health) bench_mock_health ;;
    *) echo "bench.sh: unknown target: $t (known: mock, mock-health)" >&2; exit 2 ;;
  esac
done

printf '\nwrk 1 thread, %s keep-alive connections, %s s per run, median of %s runs; server on CPU 0, wrk on CPU 1 (%s).\n\n' \
  "$connections" "$duration" "$runs" "$(nproc) CPUs"
echo "| server | request | req/s (median) | req/s (runs) | p50 | p99 |"
echo "|---|---|---:|---|---:|---:|"
printf '%s\n' "${rows[@]}"
