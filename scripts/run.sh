#!/usr/bin/env bash
# run.sh: the local stack in the foreground until Ctrl-C. Installs what is missing
# (install-deps.sh), builds into build/, makes the test certificates in var/certs, starts
# capgate-mock (HTTP 127.0.0.1:9000, HTTPS 127.0.0.1:9443 with the test certificate), then
# capgate with config/dev.json (front HTTP 127.0.0.1:8080 and HTTPS 127.0.0.1:8443 with the test
# certificate), waits for both, and prints how to call the gateway: a token curl, a signed curl,
# a signed curl over HTTPS (verified with var/certs/ca.pem, also addressed as csec.api.qcloud.com
# as a hosts entry would), Tencent's Node SDK, the admin endpoints and the demo page. Logs go to
# var/log/.
#   run.sh             the stack
#   run.sh curl        a fresh signed curl through a running gateway (signature app demo-web)
#   run.sh curl-https  the same over the gateway's HTTPS front
#   run.sh curl-mock   a fresh signed curl straight to a running mock (its test credential)
# Env: REDIS_URL (redis://host:port/db: capgate runs with a derived config var/capgate.json that
# adds "redis": {"url": REDIS_URL}), CAPGATE_DEMO_WEB_KEY (SecretKey of the app demo-web, default
# capgate-dev-demo-web-secret), CAPGATE_BATCH_TOKEN (bearer token of the app batch-job, default
# capgate-dev-batch-token), CAPGATE_MOCK_HOST (127.0.0.1), CAPGATE_MOCK_PORT (9000),
# CAPGATE_MOCK_SECRET_ID, CAPGATE_MOCK_SECRET_KEY (the mock's documented test pair, also the
# gateway's "real" upstream credential), CAPGATE_CAPTCHA_APP_KEY (the AppSecretKey of CaptchaAppId
# 190000001, held by capgate and the mock), CAPGATE_RUN_SKIP_BUILD=1, CAPGATE_BUILD_DIR (build/).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${CAPGATE_BUILD_DIR:-"$root/build"}
log_dir="$root/var/log"
cert_dir="$root/var/certs"
dev_config="$root/config/dev.json"

mock_host=${CAPGATE_MOCK_HOST:-127.0.0.1}
mock_port=${CAPGATE_MOCK_PORT:-9000}
mock_secret_id=${CAPGATE_MOCK_SECRET_ID:-AKIDcapgateMockTestKey00000000000000}
mock_secret_key=${CAPGATE_MOCK_SECRET_KEY:-capgate-mock-secret}
demo_web_key=${CAPGATE_DEMO_WEB_KEY:-capgate-dev-demo-web-secret}
batch_token=${CAPGATE_BATCH_TOKEN:-capgate-dev-batch-token}
# API 3.0: the CaptchaAppId of config/dev.json's captcha_apps and its AppSecretKey, which the mock
# accepts and capgate injects
captcha_app_id=190000001
captcha_app_key=${CAPGATE_CAPTCHA_APP_KEY:-capgate-dev-captcha-app-key}
redis_url=${REDIS_URL:-}

pids=()
names=()

cleanup() {
  local i t
  trap - EXIT INT TERM
  # Stop in reverse order of start: the gateway drains before its upstream goes away.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "run.sh: stopping ${names[$i]} (pid ${pids[$i]})" >&2
      kill -TERM "${pids[$i]}" 2>/dev/null || true
    fi
    # Bounded: whatever has not exited 30 s after SIGTERM gets SIGKILL. capgate needs that long
    # at worst (in-flight requests up to the upstream timeout, then the last audit and metrics
    # flushes, each bounded by redis.timeout_ms retries); killing it sooner could lose audit
    # records still queued in memory.
    for ((t = 0; t < 300; t++)); do
      kill -0 "${pids[$i]}" 2>/dev/null || break
      if ((t == 50)); then
        echo "run.sh: ${names[$i]} is still finishing its work; waiting up to 25 s more" >&2
      fi
      sleep 0.1
    done
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "run.sh: ${names[$i]} did not exit 30 s after SIGTERM; killing it" >&2
    fi
    kill -KILL "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
}

die() {
  echo "run.sh: $*" >&2
  exit 1
}

# step TEXT: a progress line with the time since run.sh started, so a long install or build is
# visibly under way rather than silent.
run_start=$(date +%s)
step() {
  echo "run.sh: [+$(($(date +%s) - run_start))s] $*" >&2
}

build() {
  step "installing missing dependencies (scripts/install-deps.sh)"
  "$root/scripts/install-deps.sh"
  step "configuring $build_dir"
  cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release >/dev/null
  step "building (about 2 minutes on 2 cores the first time)"
  cmake --build "$build_dir" -j 2 >/dev/null
  step "built"
}

# json_string FILE KEY: the first "KEY": "value" of a JSON file (flat string values only).
json_string() {
  sed -nE "s/.*\"$2\"[[:space:]]*:[[:space:]]*\"([^\"]*)\".*/\\1/p" "$1" | head -n 1
}

# The mock's TLS listener is where config/dev.json sends upstream requests.
upstream_url=$(json_string "$dev_config" url)
[[ $upstream_url =~ ^https://([^/]+)/ ]] || die "config/dev.json: upstream.url is not https://HOST:PORT/...: $upstream_url"
mock_tls=${BASH_REMATCH[1]}
demo_web_id=$(json_string "$dev_config" secret_id)
[[ -n $demo_web_id ]] || die "config/dev.json: no app with a secret_id"
gw_addr=$(json_string "$dev_config" listen)
gw_tls_addr=$(json_string "$dev_config" tls_listen)
admin_addr=$(json_string "$dev_config" admin_listen)

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
  start_service capgate-mock "$log_dir/capgate-mock.log" '^capgate-mock listening on https://' \
    "$build_dir/capgate-mock" --listen "$mock_host:$mock_port" --tls-listen "$mock_tls" \
    --tls-cert "$cert_dir/server.pem" --tls-key "$cert_dir/server.key" \
    --credential "$mock_secret_id:$mock_secret_key" \
    --captcha-app "$captcha_app_id:$captcha_app_key"
}

# gateway_config: config/dev.json, or with REDIS_URL a copy in var/ with a redis section.
gateway_config() {
  local out="$root/var/capgate.json" url
  if [[ -z $redis_url ]]; then
    printf '%s\n' "$dev_config"
    return 0
  fi
  [[ $redis_url =~ ^redis:// ]] || die "REDIS_URL must look like redis://[:password@]host[:port][/db]; got $redis_url"
  url=${redis_url//\\/\\\\}
  url=${url//\"/\\\"}
  # JSON allows keys in any order: the redis section goes right after the opening brace.
  awk -v url="$url" 'NR == 1 && /^\{/ { print; printf "  \"redis\": { \"url\": \"%s\" },\n", url; next } { print }' \
    "$dev_config" >"$out.tmp"
  mv -f "$out.tmp" "$out"
  printf '%s\n' "$out"
}

start_gateway() {
  local config=$1 log="$log_dir/capgate.log" i
  # Relative paths in the config (ca_file, tls, spool_dir, audit file) are relative to its
  # directory: config/dev.json names ../var/..., and so does var/capgate.json (REDIS_URL).
  start_service capgate "$log" '^capgate admin listening on http://' \
    env CAPGATE_SECRET_ID="$mock_secret_id" CAPGATE_SECRET_KEY="$mock_secret_key" \
    CAPGATE_DEMO_WEB_KEY="$demo_web_key" CAPGATE_BATCH_TOKEN="$batch_token" \
    CAPGATE_CAPTCHA_APP_KEY="$captcha_app_key" \
    "$build_dir/capgate" --config "$config"
  gw_addr=$(sed -n 's|^capgate listening on http://||p' "$log" | head -n 1)
  gw_tls_addr=$(sed -n 's|^capgate listening on https://||p' "$log" | head -n 1)
  admin_addr=$(sed -n 's|^capgate admin listening on http://||p' "$log" | head -n 1)
  # Ready: /healthz answers 200 (bounded, 5 s).
  for ((i = 0; i < 50; i++)); do
    if curl -fs -o /dev/null --max-time 1 "http://$admin_addr/healthz"; then return 0; fi
    sleep 0.1
  done
  die "capgate did not answer http://$admin_addr/healthz within 5 s; see $log"
}

# signed_query METHOD HOST PATH SECRET_ID SECRET_KEY NAME=VALUE...: the v2 parameters (values
# without reserved characters) plus Timestamp, Nonce, SecretId, SignatureMethod=HmacSHA256 and
# their Signature, URL-encoded.
signed_query() {
  local method=$1 host=$2 path=$3 id=$4 key=$5 sorted sig
  shift 5
  local params=("$@" "SecretId=$id" "Timestamp=$(date +%s)"
    "Nonce=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')" "SignatureMethod=HmacSHA256")
  sorted=$(printf '%s\n' "${params[@]}" | LC_ALL=C sort | paste -sd '&' -)
  sig=$(printf '%s' "$method$host$path?$sorted" |
    openssl dgst -sha256 -hmac "$key" -binary | openssl base64 -A)
  sig=${sig//+/%2B}
  sig=${sig//\//%2F}
  sig=${sig//=/%3D}
  printf '%s&Signature=%s\n' "$sorted" "$sig"
}

seed=(Action=CaptchaIframeQuery Region=gz captchaType=1 disturbLevel=1 isHttps=0 clientType=2 accountType=0)

mock_curl() {
  local host="$mock_host:$mock_port"
  printf "curl -s 'http://%s/v2/index.php?%s'\n" "$host" \
    "$(signed_query GET "$host" /v2/index.php "$mock_secret_id" "$mock_secret_key" "${seed[@]}")"
}

gateway_signed_curl() {
  printf "curl -s 'http://%s/v2/index.php?%s'\n" "$gw_addr" \
    "$(signed_query GET "$gw_addr" /v2/index.php "$demo_web_id" "$demo_web_key" "${seed[@]}")"
}

# Over the HTTPS front, verified against the test CA; the Host signed is the one addressed.
gateway_https_curl() {
  printf "curl -s --cacert '%s' 'https://%s/v2/index.php?%s'\n" "$cert_dir/ca.pem" "$gw_tls_addr" \
    "$(signed_query GET "$gw_tls_addr" /v2/index.php "$demo_web_id" "$demo_web_key" "${seed[@]}")"
}

# The same as an app with a hosts entry (or internal DNS) mapping csec.api.qcloud.com to capgate
# would send it: the test certificate names csec.api.qcloud.com.
gateway_resolve_curl() {
  local port=${gw_tls_addr##*:} host="csec.api.qcloud.com:${gw_tls_addr##*:}"
  local fmt="curl -s --cacert '%s' --resolve 'csec.api.qcloud.com:%s:%s'"
  fmt+=" 'https://%s/v2/index.php?%s'"
  printf "$fmt\n" "$cert_dir/ca.pem" "$port" "${gw_tls_addr%:*}" "$host" \
    "$(signed_query GET "$host" /v2/index.php "$demo_web_id" "$demo_web_key" "${seed[@]}")"
}

gateway_token_curl() {
  printf "curl -s -H 'Authorization: Bearer %s' 'http://%s/v2/index.php?%s'\n" "$batch_token" \
    "$gw_addr" "Action=CaptchaIframeQuery&captchaType=1&disturbLevel=1&isHttps=0&clientType=2&accountType=0"
}

# answer CMD: what CMD printed just now (it is run to check that it works). A signed command is
# usable once (its Nonce), so the one checked is never the one printed: the caller prints a
# fresh one made after the check.
answer() {
  bash -c "$1" 2>&1 || echo "(the command failed: status $?)"
}

print_usage() {
  local config=$1 token_cmd signed_cmd https_cmd resolve_cmd
  local token_ans signed_ans https_ans resolve_ans
  # Checked first, then printed fresh: a pasted signed curl has a Nonce nobody used yet.
  step "checking each way to call the gateway once"
  token_cmd=$(gateway_token_curl)
  token_ans=$(answer "$token_cmd")
  signed_ans=$(answer "$(gateway_signed_curl)")
  https_ans=$(answer "$(gateway_https_curl)")
  resolve_ans=$(answer "$(gateway_resolve_curl)")
  signed_cmd=$(gateway_signed_curl)
  https_cmd=$(gateway_https_curl)
  resolve_cmd=$(gateway_resolve_curl)
  cat <<USAGE

capgate is listening on http://$gw_addr and https://$gw_tls_addr (certificate var/certs/server.pem
from the test CA var/certs/ca.pem; config: ${config#"$root"/}; log: var/log/capgate.log)
  upstream: capgate-mock over HTTPS at https://$mock_tls (test CA var/certs/ca.pem), also plain
  HTTP at http://$mock_host:$mock_port (log: var/log/capgate-mock.log)
  redis: ${redis_url:-none (the embedded in-memory store; set REDIS_URL to use one)}

App batch-job, token auth (CAPGATE_BATCH_TOKEN=$batch_token):

  $token_cmd

  answered just now: $token_ans

App demo-web, v2 signature (SecretId $demo_web_id, SecretKey CAPGATE_DEMO_WEB_KEY=$demo_web_key;
each Nonce is accepted once and a Timestamp for 300 s; a fresh one: ./scripts/run.sh curl):

  $signed_cmd

  a call like it (its own Nonce) answered just now: $signed_ans

The same over the HTTPS front, verified against the test CA (./scripts/run.sh curl-https):

  $https_cmd

  a call like it answered just now: $https_ans

And addressed as csec.api.qcloud.com, as an app with a hosts entry or internal DNS record for
it would (the certificate's SAN includes the name; signed for the Host
csec.api.qcloud.com:${gw_tls_addr##*:}):

  $resolve_cmd

  a call like it answered just now: $resolve_ans

The same signed call with Tencent's Node SDK (npm install qcloudapi-sdk@0.2.1), only host and
credentials changed:

  const Capi = require('qcloudapi-sdk');
  const capi = new Capi({ SecretId: '$demo_web_id', SecretKey: '$demo_web_key',
    serviceType: 'csec', protocol: 'http', host: '$gw_addr', path: '/v2/index.php',
    Region: 'gz', signatureMethod: 'sha256' });
  capi.request({ Action: 'CaptchaIframeQuery', captchaType: 1, disturbLevel: 1, isHttps: 0,
    clientType: 2, accountType: 0 }, (err, body) => console.log(err || body));

API 3.0 (DescribeCaptchaResult) with Tencent's 3.0 Node SDK (npm install
tencentcloud-sdk-nodejs), only endpoint and credentials changed; the gateway adds the
AppSecretKey of CaptchaAppId $captcha_app_id (ticket and randstr: the /demo page's API 3.0 flow, or
curl -s -X POST -d '{"appid": $captcha_app_id}' http://$mock_host:$mock_port/__admin/solve):

  const { captcha } = require('tencentcloud-sdk-nodejs');
  const c = new captcha.v20190722.Client({ credential: { secretId: '$demo_web_id',
    secretKey: '$demo_web_key' }, region: '', profile: { httpProfile: { endpoint: '$gw_addr',
    protocol: 'http://' } } });
  c.DescribeCaptchaResult({ CaptchaType: 9, Ticket: TICKET, Randstr: RANDSTR,
    UserIp: '127.0.0.1', CaptchaAppId: $captcha_app_id }).then(console.log, console.error);

Admin: curl http://$admin_addr/healthz, /readyz, /metrics (Prometheus), /admin/stats
(per businessId/sceneId/minute), /admin/audit (recent audit records).
Demo page (the whole captcha flow in a browser, v2 and API 3.0): http://$admin_addr/demo
Mock admin API: http://$mock_host:$mock_port/__admin/health, /__admin/requests (journal).

Ctrl-C stops both.
USAGE
}

main() {
  case ${1:-} in
    curl) gateway_signed_curl; return 0 ;;
    curl-https) gateway_https_curl; return 0 ;;
    curl-mock) mock_curl; return 0 ;;
    "") ;;
    *) echo "usage: $0 [curl|curl-https|curl-mock]" >&2; return 2 ;;
  esac
  cd "$root"
  mkdir -p "$log_dir"
  [[ ${CAPGATE_RUN_SKIP_BUILD:-0} == 1 ]] || build
  step "making the test certificates in var/certs"
  "$root/scripts/gen-certs.sh" "$cert_dir"
  command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)"
  local config
  config=$(gateway_config)
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  step "starting capgate-mock (log: var/log/capgate-mock.log)"
  start_mock
  step "starting capgate (log: var/log/capgate.log)"
  start_gateway "$config"
  step "ready"
  print_usage "$config"
  # In the foreground until Ctrl-C or until a service exits on its own.
  local rc=0
  wait -n "${pids[@]}" || rc=$?
  echo "run.sh: a service exited (status $rc); see $log_dir" >&2
  return 1
}

main "$@"
