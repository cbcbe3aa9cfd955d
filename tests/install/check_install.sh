#!/usr/bin/env bash
# check_install.sh SOURCE_DIR BUILD_DIR: what `cmake --install` and `cpack -G DEB` produce.
#   1. install into a DESTDIR staging root (prefix /usr): the exact file list; a second install
#      keeps an edited /etc/capgate/capgate.json;
#   2. man -l renders both pages with no warning (groff -ww);
#   3. systemd-analyze verify accepts both units (skipped, said loudly, without it);
#   4. the installed capgate starts with the installed config (secrets as files, the upstream
#      pointed at an installed capgate-mock on a free port) and forwards one signed request;
#   5. cpack -G DEB builds the package: its contents, Depends and conffiles.
# Exit 0 when all pass; the first failure stops it with a message.
set -euo pipefail

src=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)
tmp=$(mktemp -d /tmp/capgate-install-test.XXXXXX)
stage="$tmp/stage"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
ok() { echo "ok: $*"; }

# ---- 1. the staging install ----
DESTDIR="$stage" cmake --install "$build" --prefix /usr >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log" >&2; fail "cmake --install"; }
(cd "$stage" && find . \( -type f -o -type d -empty \) | sed 's|^\./|/|' | LC_ALL=C sort) \
  >"$tmp/files"
cat >"$tmp/expected" <<'LIST'
/etc/capgate/capgate.json
/etc/capgate/credentials
/etc/logrotate.d/capgate
/lib/systemd/system/capgate-mock.service
/lib/systemd/system/capgate.service
/usr/bin/capgate
/usr/bin/capgate-mock
/usr/share/doc/capgate/README.md
/usr/share/doc/capgate/capgate.example.json
/usr/share/doc/capgate/configuration.md
/usr/share/doc/capgate/contrib/grafana/capgate.json
/usr/share/doc/capgate/contrib/prometheus/alerts.yml
/usr/share/doc/capgate/operations.md
/usr/share/man/man1/capgate-mock.1
/usr/share/man/man8/capgate.8
LIST
diff -u "$tmp/expected" "$tmp/files" || fail "the installed files differ from the list above"
ok "installed file list"
[[ -x $stage/usr/bin/capgate && -x $stage/usr/bin/capgate-mock ]] || fail "binaries not executable"
[[ $(stat -c %a "$stage/etc/capgate/credentials") == 700 ]] ||
  fail "/etc/capgate/credentials is not mode 0700"
grep -q '"spool_dir": "/var/lib/capgate/spool"' "$stage/etc/capgate/capgate.json" ||
  fail "the installed config does not set the spool to /var/lib/capgate/spool"
grep -qx 'ExecStart=/usr/bin/capgate --config /etc/capgate/capgate.json' \
  "$stage/lib/systemd/system/capgate.service" || fail "capgate.service's ExecStart"
echo '{"edited": true}' >"$stage/etc/capgate/capgate.json"
DESTDIR="$stage" cmake --install "$build" --prefix /usr >"$tmp/install2.log" 2>&1 ||
  fail "second cmake --install"
[[ $(cat "$stage/etc/capgate/capgate.json") == '{"edited": true}' ]] ||
  fail "a second install overwrote an existing /etc/capgate/capgate.json"
grep -q 'Kept (not overwritten)' "$tmp/install2.log" || fail "the kept config is not reported"
cp "$src/packaging/capgate.json" "$stage/etc/capgate/capgate.json"
ok "an existing /etc/capgate/capgate.json is kept"

# ---- 2. man pages ----
for page in usr/share/man/man8/capgate.8 usr/share/man/man1/capgate-mock.1; do
  out=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings=w -l "$stage/$page" 2>&1 >/dev/null) ||
    fail "man -l $page failed: $out"
  [[ -z $out ]] || fail "man -l $page warns: $out"
  LC_ALL=C.UTF-8 man -l "$stage/$page" 2>/dev/null | grep -q 'EXIT STATUS' ||
    fail "$page has no EXIT STATUS section"
done
# Every flag of the programs' --help is in its page.
for flag in $("$stage/usr/bin/capgate" --help | grep -o -- '--[a-z-]*' | sort -u); do
  man -l "$stage/usr/share/man/man8/capgate.8" 2>/dev/null | grep -q -- "$flag" ||
    fail "capgate(8) does not mention $flag"
done
for flag in $("$stage/usr/bin/capgate-mock" --help | grep -o -- '--[a-z-]*' | sort -u); do
  man -l "$stage/usr/share/man/man1/capgate-mock.1" 2>/dev/null | grep -q -- "$flag" ||
    fail "capgate-mock(1) does not mention $flag"
done
ok "man pages render without warnings and name every flag"

# ---- 3. systemd units ----
if command -v systemd-analyze >/dev/null 2>&1; then
  # The units as installed, except that the binaries they run are the staged ones (verify checks
  # that each Exec path is executable) and man: finds the staged pages (Documentation=).
  mkdir -p "$tmp/units"
  for unit in capgate.service capgate-mock.service; do
    sed "s|=/usr/bin/|=$stage/usr/bin/|" "$stage/lib/systemd/system/$unit" >"$tmp/units/$unit"
    out=$(MANPATH="$stage/usr/share/man" systemd-analyze verify "$tmp/units/$unit" 2>&1) ||
      fail "systemd-analyze verify $unit: $out"
    # verify also reports problems of other units on the host; only ours count.
    if grep -q "capgate" <<<"$out"; then fail "systemd-analyze verify $unit: $out"; fi
  done
  ok "systemd-analyze verify accepts both units"
else
  echo "SKIP: systemd-analyze is not installed (apt-get install systemd): units not verified"
fi

# ---- 4. the installed binaries, the installed config, secrets as files ----
secret_id=AKIDinstallTest000000000000000000000
secret_key=install-test-upstream-key
app_key=install-test-app-key
creds="$tmp/credentials"
mkdir -m 0700 "$creds"
printf '%s\n' "$secret_id" >"$creds/upstream_secret_id"
printf '%s' "$secret_key" >"$creds/upstream_secret_key"
printf '%s\n' "$app_key" >"$creds/app_web_secret_key"
printf '%s:%s\n' "$secret_id" "$secret_key" >"$creds/mock"

: >"$tmp/mock.out"
"$stage/usr/bin/capgate-mock" --listen 127.0.0.1:0 --credentials-file "$creds/mock" \
  >"$tmp/mock.out" 2>"$tmp/mock.err" &
pids+=($!)
wait_line() { # FILE REGEX: the first match within 10 s
  local i
  for ((i = 0; i < 100; i++)); do
    if grep -Eq "$2" "$1"; then grep -Eo "$2" "$1" | head -n 1; return 0; fi
    sleep 0.1
  done
  return 1
}
mock_url=$(wait_line "$tmp/mock.out" 'http://127\.0\.0\.1:[0-9]+') ||
  fail "capgate-mock did not start: $(cat "$tmp/mock.err")"
mock_hp=${mock_url#http://}

# The installed config, changed only where this host differs from a production one: the
# credential directory systemd would provide, the state and log directories, the listeners (free
# ports) and the upstream (the mock).
mkdir -p "$tmp/state" "$tmp/log"
sed -e "s|/run/credentials/capgate.service|$creds|g" \
  -e "s|/var/lib/capgate|$tmp/state|g" -e "s|/var/log/capgate|$tmp/log|g" \
  -e 's|"127.0.0.1:8080"|"127.0.0.1:0"|; s|"127.0.0.1:8081"|"127.0.0.1:0"|' \
  -e "s|https://csec.api.qcloud.com/v2/index.php|http://$mock_hp/v2/index.php|" \
  -e "s|\"sign_host\": \"csec.api.qcloud.com\"|\"sign_host\": \"$mock_hp\"|" \
  "$stage/etc/capgate/capgate.json" >"$tmp/capgate.json"
grep -q "$creds/upstream_secret_key" "$tmp/capgate.json" || fail "the config rewrite missed"

"$stage/usr/bin/capgate" --check-config "$tmp/capgate.json" >"$tmp/check.out" 2>&1 ||
  fail "--check-config of the installed config: $(cat "$tmp/check.out")"
: >"$tmp/gw.out"
"$stage/usr/bin/capgate" --config "$tmp/capgate.json" >"$tmp/gw.out" 2>"$tmp/gw.err" &
pids+=($!)
gw_url=$(wait_line "$tmp/gw.out" '^capgate listening on http://[0-9.]+:[0-9]+') ||
  fail "capgate did not start: $(cat "$tmp/gw.err")"
gw_hp=${gw_url#capgate listening on http://}
app_id=$(jq -r '.apps[0].secret_id' "$tmp/capgate.json")

# A v2 signature (HmacSHA256 over METHOD HOST PATH ? sorted params), as the SDKs compute it.
params=(Action=CaptchaIframeQuery Region=gz captchaType=9 disturbLevel=1 isHttps=1 clientType=2
  accountType=0 businessId=1 sceneId=1 "SecretId=$app_id" "Timestamp=$(date +%s)"
  "Nonce=$RANDOM$RANDOM" SignatureMethod=HmacSHA256)
sorted=$(printf '%s\n' "${params[@]}" | LC_ALL=C sort | paste -sd '&' -)
sig=$(printf '%s' "GET$gw_hp/v2/index.php?$sorted" |
  openssl dgst -sha256 -hmac "$app_key" -binary | openssl base64 -A | jq -sRr @uri)
body=$(curl -s --max-time 10 "http://$gw_hp/v2/index.php?$sorted&Signature=$sig") ||
  fail "curl to the installed capgate failed"
[[ $(jq -r .code <<<"$body") == 0 ]] || fail "the signed request was not forwarded: $body"
jq -e '.url | startswith("http")' <<<"$body" >/dev/null || fail "no captcha url: $body"
# The mock saw it, signed with the upstream credential read from its file.
curl -s "http://$mock_hp/__admin/requests" | grep -q "$secret_id" ||
  fail "the mock's journal has no request with the upstream SecretId"
ok "installed capgate with the installed config forwarded a signed request: $body"

# ---- 5. the .deb ----
(cd "$build" && cpack -G DEB -B "$tmp/deb" >"$tmp/cpack.log" 2>&1) ||
  { cat "$tmp/cpack.log" >&2; fail "cpack -G DEB"; }
deb=$(ls "$tmp"/deb/capgate_*.deb)
dpkg-deb -c "$deb" | tee /dev/stderr | awk '{print $6}' >"$tmp/deb.files"
for f in ./usr/bin/capgate ./usr/bin/capgate-mock ./etc/capgate/capgate.json \
  ./lib/systemd/system/capgate.service ./lib/systemd/system/capgate-mock.service \
  ./etc/logrotate.d/capgate ./usr/share/man/man8/capgate.8 ./usr/share/man/man1/capgate-mock.1; do
  grep -qx -- "$f" "$tmp/deb.files" || fail "the .deb lacks $f"
done
depends=$(dpkg-deb -f "$deb" Depends)
for lib in libevent-core libevent-openssl libhiredis libjansson libssl; do
  grep -q "$lib" <<<"$depends" || fail "the .deb does not depend on $lib: $depends"
done
dpkg-deb -e "$deb" "$tmp/control"
grep -qx /etc/capgate/capgate.json "$tmp/control/conffiles" ||
  fail "/etc/capgate/capgate.json is not a conffile"
ok "the .deb: contents above, Depends: $depends; conffiles: $(tr '\n' ' ' <"$tmp/control/conffiles")"
