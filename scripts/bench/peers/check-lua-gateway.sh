#!/usr/bin/env bash
# check-lua-gateway.sh: starts capgate-mock and the lua-gateway peer (lua-gateway.conf.in) on
# free loopback ports and checks it as scripts/bench.sh does before benchmarking it: one good
# request gets code 0, a bad Signature 4100, the good request replayed (same Nonce) 4500.
# Usage: check-lua-gateway.sh (after a build; CAPGATE_BENCH_BUILD_DIR, default build/;
# CAPGATE_BENCH_LUA_ROOT: see peers.sh)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
build_dir=${CAPGATE_BENCH_BUILD_DIR:-"$root/build"}
# shellcheck source=peers.sh
. "$here/peers.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/capgate-luacheck.XXXXXX")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => {
    console.log(s.address().port); s.close(); });'
}

"$build_dir/capgate-mock" --listen 127.0.0.1:0 --log-level warn >"$work/mock.log" 2>&1 &
pids+=("$!")
mock=""
for ((i = 0; i < 100; i++)); do
  mock=$(sed -nE 's|^capgate-mock listening on http://(.*)$|\1|p' "$work/mock.log" 2>/dev/null | head -n1 || true)
  [[ -n $mock ]] && break
  sleep 0.1
done
[[ -n $mock ]] || { cat "$work/mock.log" >&2; echo "check-lua-gateway.sh: the mock did not start" >&2; exit 1; }

port=$(free_port)
mkdir -p "$work/nginx/tmp"
app_id=AKIDcapgateLuaCheck0000000000000000
peer_render "$here/lua-gateway.conf.in" "$work/nginx/nginx.conf" DIR="$work/nginx" PEERS="$here" \
  APP_ID="$app_id" APP_KEY=lua-check-app-key UP_ID=AKIDcapgateMockTestKey00000000000000 \
  UP_KEY=capgate-mock-secret UP_HOST="$mock" WINDOW=300 LISTEN="127.0.0.1:$port" LUA_ROOT="$lua_root"
env "${lua_env[@]}" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" >"$work/nginx/out.log" 2>&1 &
pids+=("$!")
for ((i = 0; i < 100; i++)); do
  curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && break
  sleep 0.1
done
if lua_gateway_check "$root" "127.0.0.1:$port" "$app_id" lua-check-app-key "$work"; then
  echo "check-lua-gateway.sh: ok"
else
  echo "check-lua-gateway.sh: FAILED; nginx error log:" >&2
  cat "$work/nginx/error.log" >&2
  exit 1
fi
