#!/usr/bin/env bash
# install-deps.sh [--test] [--bench]: installs the Debian 12 packages capgate needs, only those
# missing. Build: compiler, cmake, libevent, OpenSSL, hiredis, jansson, cmocka, jemalloc. --test adds
# redis, node and npm (unless a node >= 18 is already on PATH), clang with its libFuzzer runtime
# (the fuzz targets, scripts/fuzz.sh), chromium (optional: the browser test skips without it) and
# what the install test uses (man-db, systemd, dpkg-dev), clang-format (unit/format).
# --bench adds wrk, nginx-light with its lua module (the lua-gateway peer), linux-perf (--perf)
# and node.
set -euo pipefail

want_test=0
want_bench=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    --bench) want_bench=1 ;;
    -h | --help)
      sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "install-deps.sh: unknown argument: $arg" >&2
      exit 2
      ;;
  esac
done

# libjemalloc-dev: capgate's allocator (CMakeLists.txt, CAPGATE_ALLOCATOR; without it, libc's).
required=(build-essential cmake pkg-config libevent-dev libssl-dev libhiredis-dev
  libjansson-dev libcmocka-dev libjemalloc-dev openssl)
optional=()

node_major() {
  local v
  v=$(node --version 2>/dev/null) || return 1
  v=${v#v}
  printf '%s\n' "${v%%.*}"
}

if ((want_test || want_bench)); then
  # The tests and the benchmark's request signer run on node; any node >= 18 on PATH will do.
  major=$(node_major || echo 0)
  if ((major >= 18)); then
    if ((want_test)) && ! command -v npm >/dev/null 2>&1; then required+=(npm); fi
  else
    required+=(nodejs)
    ((want_test)) && required+=(npm)
  fi
fi
if ((want_test)); then
  # ca-certificates: npm reaches its registry over https with the system store.
  required+=(redis-server redis-tools ca-certificates)
  # The install test (tests/install/): man -l renders the pages, systemd-analyze verify checks
  # the units, dpkg-shlibdeps (dpkg-dev) fills the .deb's Depends, curl sends its request.
  required+=(man-db groff-base systemd dpkg-dev curl)
  # clang: tests/fuzz (libFuzzer ships in libclang-rt-14-dev on Debian 12); clang-format: the
  # unit/format test (scripts/check-format.sh)
  required+=(clang libclang-rt-14-dev clang-format)
  optional+=(chromium)
fi
if ((want_bench)); then
  # libnginx-mod-http-lua (the lua-gateway peer) replaces wrk's LuaJIT with OpenResty's
  # (libluajit2-5.1-2; Debian 12's lua-resty-core needs it); scripts/bench/cycle.lua is written
  # so its string hashing stays fast (see there). linux-perf: bench.sh --perf.
  required+=(wrk nginx-light libnginx-mod-http-lua linux-perf)
fi

is_installed() {
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

missing_required=()
missing_optional=()
for p in "${required[@]}"; do is_installed "$p" || missing_required+=("$p"); done
for p in "${optional[@]}"; do is_installed "$p" || missing_optional+=("$p"); done

if ((${#missing_required[@]} == 0 && ${#missing_optional[@]} == 0)); then
  exit 0
fi

as_root=()
if ((EUID != 0)); then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install-deps.sh: missing packages (${missing_required[*]} ${missing_optional[*]}) and not root, no sudo" >&2
    exit 1
  fi
  as_root=(sudo)
fi

apt_get() {
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q \
    -o Dpkg::Use-Pty=0 --no-install-recommends "$@"
}

echo "install-deps.sh: installing ${missing_required[*]} ${missing_optional[*]}" >&2
apt_get update >/dev/null
if ((${#missing_required[@]})); then
  apt_get install "${missing_required[@]}" >/dev/null
fi
for p in "${missing_optional[@]}"; do
  if ! apt_get install "$p" >/dev/null; then
    echo "install-deps.sh: warning: could not install optional package $p; tests that need it will skip" >&2
  fi
done
