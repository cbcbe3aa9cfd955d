#!/usr/bin/env bash
# gen-certs.sh DIR: a test CA (ca.pem, ca.key), a server certificate signed by it (server.pem,
# server.key; SAN localhost, 127.0.0.1, csec.api.qcloud.com) and an unrelated CA (wrong-ca.pem)
# for tests that expect verification to fail. Idempotent: existing valid files are kept.
set -euo pipefail

usage() { echo "usage: $0 DIR" >&2; exit 2; }
[[ $# -eq 1 ]] || usage
dir=$1
mkdir -p "$dir"
cd "$dir"

# Everything already there and the server certificate still chains to the CA: nothing to do.
if [[ -s ca.pem && -s ca.key && -s server.pem && -s server.key && -s wrong-ca.pem ]] &&
  openssl verify -CAfile ca.pem server.pem >/dev/null 2>&1; then
  exit 0
fi

umask 077
work=$(mktemp -d "${TMPDIR:-/tmp}/capgate-certs.XXXXXX")
trap 'rm -rf "$work"' EXIT

run() {
  local out
  if ! out=$("$@" 2>&1); then
    printf '%s\n' "$out" >&2
    echo "gen-certs.sh: failed: $*" >&2
    exit 1
  fi
}

make_ca() { # name subject
  run openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
    -keyout "$work/$1.key" -out "$work/$1.pem" -subj "$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash"
}

make_ca ca "/CN=capgate test CA"
make_ca wrong-ca "/CN=capgate unrelated test CA"

cat >"$work/server.ext" <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:csec.api.qcloud.com
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash
EXT
run openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$work/server.key" \
  -out "$work/server.csr" -subj "/CN=localhost"
run openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 825 -sha256 -extfile "$work/server.ext" -out "$work/server.pem"
run openssl verify -CAfile "$work/ca.pem" "$work/server.pem"

chmod 644 "$work/ca.pem" "$work/wrong-ca.pem" "$work/server.pem"
chmod 600 "$work/ca.key" "$work/server.key"
# Move into place only once everything was made, so a failed run leaves no half set behind.
for f in ca.key ca.pem server.key server.pem wrong-ca.pem; do
  mv -f "$work/$f" "./$f"
done
