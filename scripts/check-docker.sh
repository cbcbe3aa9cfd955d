#!/usr/bin/env bash
# check-docker.sh: builds the image (Dockerfile) and runs docker-compose.yml (Redis, capgate-mock,
# capgate), then checks: the programs run as a non-root user, the gateway answers /healthz and
# /readyz, a signed CaptchaIframeQuery through it gets code 0 from the mock, and its audit
# record reaches Redis. Exit 77 (skip) where no Docker daemon is reachable; 0 on success.
# Env: CAPGATE_COMPOSE_PROJECT (default capgate-check).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
project=${CAPGATE_COMPOSE_PROJECT:-capgate-check}

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "check-docker.sh: SKIP: no reachable Docker daemon (docker info failed)" >&2
  exit 77
fi
compose=(docker compose -p "$project" -f docker-compose.yml)

fail() {
  echo "check-docker.sh: FAIL: $*" >&2
  "${compose[@]}" logs --no-color >&2 || true
  exit 1
}
cleanup() { "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "check-docker.sh: building and starting (docker compose up --build)"
"${compose[@]}" up -d --build --wait --wait-timeout 120 || fail "docker compose up"

uid=$("${compose[@]}" exec -T capgate id -u) || fail "docker compose exec capgate id -u"
[[ $uid != 0 ]] || fail "capgate runs as root in the container"
uid=$("${compose[@]}" exec -T capgate-mock id -u) || fail "docker compose exec capgate-mock id -u"
[[ $uid != 0 ]] || fail "capgate-mock runs as root in the container"

for ((i = 0; i < 50; i++)); do
  curl -fs -o /dev/null http://127.0.0.1:8081/readyz && break
  sleep 0.2
done
curl -fs -o /dev/null http://127.0.0.1:8081/healthz || fail "/healthz"
curl -fs -o /dev/null http://127.0.0.1:8081/readyz || fail "/readyz"
# The admin listener is published, so it has a token (docker/secrets/admin_token).
code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8081/metrics)
[[ $code == 401 ]] || fail "/metrics without the admin token: $code, not 401"
curl -fs -o /dev/null -H "Authorization: Bearer $(tr -d '\n' <docker/secrets/admin_token)" \
  http://127.0.0.1:8081/metrics || fail "/metrics with the admin token"

# A v2 signature with the compose app's credential (docker/capgate.compose.json, its secret file).
app_id=$(sed -nE 's/.*"secret_id": "([^"]*)".*/\1/p' docker/capgate.compose.json | head -n 1)
app_key=$(tr -d '\n' <docker/secrets/app_web_secret_key)
host=127.0.0.1:8080
params=(Action=CaptchaIframeQuery Region=gz captchaType=9 disturbLevel=1 isHttps=1 clientType=2
  accountType=0 businessId=1 sceneId=1 "SecretId=$app_id" "Timestamp=$(date +%s)"
  "Nonce=$RANDOM$RANDOM" SignatureMethod=HmacSHA256)
sorted=$(printf '%s\n' "${params[@]}" | LC_ALL=C sort | paste -sd '&' -)
sig=$(printf '%s' "GET$host/v2/index.php?$sorted" |
  openssl dgst -sha256 -hmac "$app_key" -binary | openssl base64 -A)
sig=${sig//+/%2B}
sig=${sig//\//%2F}
sig=${sig//=/%3D}
body=$(curl -s --max-time 10 "http://$host/v2/index.php?$sorted&Signature=$sig") ||
  fail "curl to capgate"
grep -q '"code":0' <<<"$body" || fail "the signed request was not forwarded: $body"
echo "check-docker.sh: capgate answered: $body"

for ((i = 0; i < 50; i++)); do
  n=$("${compose[@]}" exec -T redis redis-cli XLEN capgate:audit | tr -d '\r')
  [[ $n =~ ^[1-9] ]] && break
  sleep 0.2
done
[[ $n =~ ^[1-9] ]] || fail "no audit record in Redis (XLEN capgate:audit = $n)"
echo "check-docker.sh: ok (non-root, probes, a forwarded request, its audit record in Redis)"
