#!/usr/bin/env bash
# fuzz.sh [SECONDS]: builds the libFuzzer targets of tests/fuzz in build-fuzz/ (clang,
# -DCAPGATE_FUZZ=ON: ASan + UBSan + coverage) and runs each one after the other for SECONDS
# (default 60) with one job, seeds from tests/fuzz/corpus/<target>, new inputs kept in
# build-fuzz/fuzz-corpus/<target> (the seeds in the tree are not touched). A crash leaves its
# input as build-fuzz/fuzz-artifacts/<target>/crash-*; exit 1 when any target failed.
# Env: CAPGATE_FUZZ_TARGETS="httpd params ..." runs only those.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
seconds=${1:-60}
[[ $seconds =~ ^[0-9]+$ ]] || { echo "usage: fuzz.sh [SECONDS]" >&2; exit 2; }
if ! command -v clang >/dev/null; then
  echo "fuzz.sh: clang is needed (install-deps.sh --test)" >&2
  exit 2
fi

CC=clang cmake -S . -B build-fuzz -DCAPGATE_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz --target fuzz -j 2

targets=${CAPGATE_FUZZ_TARGETS:-$(cd tests/fuzz && ls fuzz_*.c | sed 's/^fuzz_//; s/\.c$//')}
failed=()
for t in $targets; do
  work=build-fuzz/fuzz-corpus/$t art=build-fuzz/fuzz-artifacts/$t
  mkdir -p "$work" "$art"
  printf '==> fuzz %s for %ss\n' "$t" "$seconds"
  if ! "build-fuzz/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$art/" "$work" \
    "tests/fuzz/corpus/$t" 2>"build-fuzz/fuzz-$t.log"; then
    failed+=("$t")
    tail -n 40 "build-fuzz/fuzz-$t.log"
  fi
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' \
    "build-fuzz/fuzz-$t.log" | tr '\n' ' '
  echo
done
if ((${#failed[@]})); then
  echo "fuzz.sh: FAILED: ${failed[*]} (inputs in build-fuzz/fuzz-artifacts/)"
  exit 1
fi
echo "fuzz.sh: every target ran ${seconds}s without a finding"
