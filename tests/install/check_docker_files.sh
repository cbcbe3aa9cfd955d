#!/usr/bin/env bash
# check_docker_files.sh SOURCE_DIR BUILD_DIR: the Dockerfile and docker-compose.yml, checked
# without Docker (scripts/check-docker.sh runs them where a daemon is available):
#   - every stage is Debian 12; there are two (build, run); the last copies from the first, runs
#     as a non-root USER and installs no compiler or -dev package;
#   - the run stage installs the Debian package of every shared library the built programs load
#     (ldd + dpkg -S on this Debian 12 host);
#   - the compose file has the services redis, capgate-mock and capgate; every file it mounts or
#     gives as a secret exists; the gateway's config passes capgate --check-config with the
#     secrets where compose puts them; the upstream credential is one the mock accepts.
set -euo pipefail
src=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)
tmp=$(mktemp -d /tmp/capgate-docker-files.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
ok() { echo "ok: $*"; }
df="$src/Dockerfile"
dc="$src/docker-compose.yml"
[[ -f $df && -f $dc ]] || fail "Dockerfile or docker-compose.yml missing"

# ---- Dockerfile ----
mapfile -t froms < <(grep -E '^FROM ' "$df")
((${#froms[@]} >= 2)) || fail "not multi-stage: ${froms[*]}"
for f in "${froms[@]}"; do
  [[ $f =~ ^FROM\ debian:(12|bookworm)(-slim)?(\ AS\ [a-z]+)?$ ]] || fail "not Debian 12: $f"
done
# The last stage: from its FROM to the end.
last=$(awk '/^FROM /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' "$df")
grep -qE '^COPY --from=build ' <<<"$last" || fail "the run stage copies nothing from the build"
user=$(grep -E '^USER ' <<<"$last" | tail -n 1 | awk '{print $2}')
[[ -n $user && ${user%%:*} != root && ${user%%:*} != 0 ]] || fail "the run stage's USER: '$user'"
if grep -E 'build-essential|gcc|cmake|-dev\b' <<<"$last" >/dev/null; then
  fail "the run stage installs build tools"
fi
# Each shared library of the programs comes from a package the run stage installs.
for bin in capgate capgate-mock; do
  for lib in $(ldd "$build/$bin" | awk '/=> \//{print $3}'); do
    pkg=$(dpkg -S "$(readlink -f "$lib")" 2>/dev/null | head -n 1 | cut -d: -f1) ||
      pkg=$(dpkg -S "$lib" 2>/dev/null | head -n 1 | cut -d: -f1) || true
    [[ -n $pkg ]] || fail "no Debian package owns $lib"
    # in every Debian image: libc6, and libgcc-s1 (libc6 depends on it; jemalloc's libstdc++ loads it)
    [[ $pkg == libc6 || $pkg == libgcc-s1 ]] && continue
    grep -qw -- "$pkg" <<<"$last" || fail "$bin loads $lib from $pkg, which the run stage lacks"
  done
done
grep -qx 'build\*' "$src/.dockerignore" || fail ".dockerignore does not leave out build trees"
ok "Dockerfile: ${#froms[@]} Debian 12 stages, USER $user, the runtime packages of every library"

# ---- docker-compose.yml ----
for svc in redis capgate-mock capgate; do
  grep -qE "^  $svc:\$" "$dc" || fail "compose has no service $svc"
done
for f in $(grep -oE '\./docker/[A-Za-z0-9_./-]+' "$dc" | sort -u); do
  [[ -f $src/$f ]] || fail "compose refers to $f, which does not exist"
done
conf="$src/docker/capgate.compose.json"
grep -q 'docker/capgate.compose.json:/etc/capgate/capgate.json' "$dc" ||
  fail "compose does not mount docker/capgate.compose.json as the config"
sed "s|/run/secrets/|$src/docker/secrets/|g" "$conf" >"$tmp/capgate.json"
"$build/capgate" --check-config "$tmp/capgate.json" >"$tmp/check.out" 2>&1 ||
  fail "capgate --check-config of the compose config: $(cat "$tmp/check.out")"
# Every secret the config names is one compose gives to the capgate service.
for s in $(grep -oE '/run/secrets/[a-z_]+' "$conf" | sed 's|/run/secrets/||' | sort -u); do
  grep -E '^    secrets: \[' "$dc" | grep -q "\b$s\b" || fail "secret $s is not given by compose"
done
pair="$(tr -d '\n' <"$src/docker/secrets/upstream_secret_id"):$(tr -d '\n' \
  <"$src/docker/secrets/upstream_secret_key")"
grep -qxF "$pair" "$src/docker/secrets/mock_credentials" ||
  fail "the mock does not accept the gateway's upstream credential"
ok "docker-compose.yml: services, files, secrets; the gateway config passes --check-config"
