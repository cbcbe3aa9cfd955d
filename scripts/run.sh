#!/usr/bin/env bash
# run.sh: builds capgate into build/ and runs the local stack in the foreground until Ctrl-C:
# capgate-mock on 127.0.0.1:9000, then prints how to call it (a signed curl and the official
# Node SDK). Logs go to var/log/. `run.sh curl` prints a fresh signed curl for a running mock.
# Env: CAPGATE_MOCK_HOST (127.0.0.1), CAPGATE_MOCK_PORT (9000), CAPGATE_MOCK_SECRET_ID,
# CAPGATE_MOCK_SECRET_KEY (the mock's documented test pair), CAPGATE_RUN_SKIP_BUILD=1.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir="$root/build"
log_dir="$root/var/log"

mock_host=${CAPGATE_MOCK_HOST:-127.0.0.1}
mock_port=${CAPGATE_MOCK_PORT:-9000}
mock_secret_id=${CAPGATE_MOCK_SECRET_ID:-AKIDcapgateMockTestKey00000000000000}
mock_secret_key=${CAPGATE_MOCK_SECRET_KEY:-capgate-mock-secret}

pids=()
names=()

cleanup() {
  local i t
  trap - EXIT INT TERM
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "run.sh: stopping ${names[$i]} (pid ${pids[$i]})" >&2
      kill -TERM "${pids[$i]}" 2>/dev/null || true
    fi
  done
  # Bounded: whatever has not exited 5 s after SIGTERM gets SIGKILL.
  for i in "${!pids[@]}"; do
    for ((t = 0; t < 50; t++)); do
      kill -0 "${pids[$i]}" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
}

build() {
  "$root/scripts/install-deps.sh"
  cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build_dir" -j 2 >/dev/null
}

# start_service NAME LOGFILE READY_REGEX CMD...: starts CMD in the background with stdout and
# stderr in LOGFILE, waits (bounded) until LOGFILE has a line matching READY_REGEX.
start_service() {
  local name=$1 log=$2 ready=$3 i
  shift 3
  : >"$log"
  "$@" >"$log" 2>&1 &
  pids+=("$!")
  names+=("$name")
  for ((i = 0; i < 100; i++)); do
    if grep -Eq "$ready" "$log"; then return 0; fi
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "run.sh: $name did not become ready within 10 s; its log ($log):" >&2
  cat "$log" >&2
  return 1
}

start_mock() {
  start_service capgate-mock "$log_dir/capgate-mock.log" '^capgate-mock listening on http://' \
    "$build_dir/capgate-mock" --listen "$mock_host:$mock_port" \
    --credential "$mock_secret_id:$mock_secret_key"
}

# signed_query METHOD HOST PATH NAME=VALUE...: the v2 parameters (values without reserved
# characters) plus Timestamp, Nonce, SecretId, SignatureMethod=HmacSHA256 and their Signature,
# URL-encoded, for the mock's credential.
signed_query() {
  local method=$1 host=$2 path=$3 sorted sig
  shift 3
  local params=("$@" "SecretId=$mock_secret_id" "Timestamp=$(date +%s)"
    "Nonce=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')" "SignatureMethod=HmacSHA256")
  sorted=$(printf '%s\n' "${params[@]}" | LC_ALL=C sort | paste -sd '&' -)
  sig=$(printf '%s' "$method$host$path?$sorted" |
    openssl dgst -sha256 -hmac "$mock_secret_key" -binary | openssl base64 -A)
  sig=${sig//+/%2B}
  sig=${sig//\//%2F}
  sig=${sig//=/%3D}
  printf '%s&Signature=%s\n' "$sorted" "$sig"
}

mock_curl() {
  local host="$mock_host:$mock_port"
  printf "curl -s 'http://%s/v2/index.php?%s'\n" "$host" "$(signed_query GET "$host" /v2/index.php \
    Action=CaptchaIframeQuery Region=gz captchaType=1 disturbLevel=1 isHttps=0 clientType=2 accountType=0)"
}

print_mock_usage() {
  local host="$mock_host:$mock_port" cmd answer="(install curl to see it)"
  cmd=$(mock_curl)
  if command -v curl >/dev/null 2>&1; then
    answer=$(bash -c "$(mock_curl)" || echo "(curl failed)")
  fi
  cat <<USAGE

capgate-mock is listening on http://$host (log: $log_dir/capgate-mock.log)
credential: SecretId=$mock_secret_id SecretKey=$mock_secret_key

A signed CaptchaIframeQuery (each Nonce is accepted once and a Timestamp for 300 s; print a
fresh one with: ./scripts/run.sh curl):

  $cmd

The answer it gave just now:

  $answer

The same call with Tencent's Node SDK (npm install qcloudapi-sdk@0.2.1):

  const Capi = require('qcloudapi-sdk');
  const capi = new Capi({ SecretId: '$mock_secret_id', SecretKey: '$mock_secret_key',
    serviceType: 'csec', protocol: 'http', host: '$host', Region: 'gz', signatureMethod: 'sha256' });
  capi.request({ Action: 'CaptchaIframeQuery', captchaType: 1, disturbLevel: 1, isHttps: 0,
    clientType: 2, accountType: 0 }, (err, body) => console.log(err || body));

Admin API: curl http://$host/__admin/health, /__admin/requests (journal). Ctrl-C stops.
USAGE
}

main() {
  if [[ ${1:-} == curl ]]; then
    mock_curl
    return 0
  fi
  mkdir -p "$log_dir"
  [[ ${CAPGATE_RUN_SKIP_BUILD:-0} == 1 ]] || build
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  start_mock
  print_mock_usage
  # In the foreground until Ctrl-C or until a service exits on its own.
  local rc=0
  wait -n "${pids[@]}" || rc=$?
  echo "run.sh: a service exited (status $rc); see $log_dir" >&2
  return 1
}

main "$@"
