# peers.sh: helpers shared by scripts/bench.sh and check-lua-gateway.sh (sourced, not run).

# The lua module: installed (libnginx-mod-http-lua), or, with CAPGATE_BENCH_LUA_ROOT, unpacked
# there (dpkg-deb -x of libnginx-mod-http-lua, libnginx-mod-http-ndk, lua-resty-core,
# lua-resty-lrucache and libluajit2-5.1-2): the installed module brings OpenResty's LuaJIT, which
# replaces the one every other program on the machine (wrk) loads. lua_root is the template's
# LUA_ROOT; lua_env the environment nginx then needs.
lua_root=${CAPGATE_BENCH_LUA_ROOT:-}
lua_env=(CAPGATE_BENCH_PEER=lua-gateway)
if [[ -n $lua_root ]]; then
  lua_lib=$(find "$lua_root" -name 'libluajit-5.1.so.2' -print -quit)
  [[ -n $lua_lib ]] && lua_env+=("LD_LIBRARY_PATH=$(dirname "$lua_lib")")
fi

# peer_render TEMPLATE OUT NAME=VALUE...: TEMPLATE with each @NAME@ replaced by VALUE, to OUT;
# fails when a @NAME@ is left.
peer_render() {
  local tpl=$1 out=$2 text kv
  shift 2
  text=$(<"$tpl")
  for kv in "$@"; do text=${text//@${kv%%=*}@/${kv#*=}}; done
  if [[ $text =~ @[A-Z_]+@ ]]; then
    echo "peer_render: $tpl: ${BASH_REMATCH[0]} not given" >&2
    return 1
  fi
  printf '%s\n' "$text" >"$out"
}

# lua_gateway_check ROOT HOST APP_ID APP_KEY DIR: the lua-gateway at HOST answers one good request
# with code 0, a bad Signature with 4100 and the good request's replay with 4500. Prints what it
# saw; 1 when any answer differs.
lua_gateway_check() {
  local root=$1 host=$2 id=$3 key=$4 dir=$5 good bad body code rc=0
  node "$root/scripts/bench/presign.mjs" --host "$host" --secret-id "$id" --secret-key "$key" \
    --signature-method HmacSHA1 --count 2 --out "$dir/check-requests.txt" || return 1
  good=$(sed -n 1p "$dir/check-requests.txt")
  # The second request with another Signature of the right shape (28 base64 characters).
  bad=$(sed -n 2p "$dir/check-requests.txt")
  bad="${bad%%&Signature=*}&Signature=AAAAAAAAAAAAAAAAAAAAAAAAAAA%3D"
  for c in "good 0" "bad 4100" "good 4500"; do
    local what=${c% *} want=${c#* } url
    [[ $what == good ]] && url=$good || url=$bad
    body=$(curl -s --max-time 5 "http://$host$url" || true)
    code=$(sed -nE 's/.*"code": *([0-9]+).*/\1/p' <<<"$body")
    if [[ $code == "$want" ]]; then
      echo "lua-gateway check: $what request -> code $code (want $want): ok"
    else
      echo "lua-gateway check: $what request -> ${body:-no answer} (want code $want): FAILED"
      rc=1
    fi
  done
  return "$rc"
}
