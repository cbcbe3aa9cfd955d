#!/usr/bin/env bash
# test.sh: the whole suite from a fresh clone. Installs what is missing (install-deps.sh --test),
# installs the integration tests' npm packages, builds build/ (-Werror) and build-asan/
# (ASan+UBSan), runs ctest in both, checks a copy of the repository alone in a fresh directory
# (scripts/check-standalone.sh), checks the install and the .deb (tests/install/), runs each fuzz
# target briefly (scripts/fuzz.sh, when clang is there) and prints a one-line summary. Exit
# status 0 only if every build and every test passed.
# Env: CAPGATE_TEST_JOBS (parallel integration tests, default 2), CAPGATE_SKIP_ASAN=1,
# CAPGATE_SKIP_FUZZ=1, CAPGATE_FUZZ_SECONDS (per fuzz target, default 10).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

jobs_build=2
jobs_integration=${CAPGATE_TEST_JOBS:-2}
start=$(date +%s)

log() { printf '\n==> %s\n' "$*"; }

log "dependencies"
./scripts/install-deps.sh --test

log "npm ci (tests/integration)"
(cd tests/integration && npm ci --no-audit --no-fund --loglevel=error)

summary=()
failed=0

# run_suite NAME BUILD_DIR CMAKE_ARGS... : configure, build, unit tests (parallel), integration
# tests (modest parallelism: some are timing-sensitive). Records one summary entry.
run_suite() {
  local name=$1 dir=$2
  shift 2
  local out unit_line int_line ok=1
  log "$name: configure + build ($dir)"
  if ! cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null ||
    ! cmake --build "$dir" -j "$jobs_build"; then
    summary+=("$name: BUILD FAILED")
    failed=1
    return
  fi
  log "$name: unit tests"
  out=$(mktemp)
  if ! ctest --test-dir "$dir" -L unit -j "$jobs_build" --output-on-failure 2>&1 | tee "$out"; then ok=0; fi
  unit_line=$(grep -E 'tests passed|No tests were found' "$out" | tail -n1 || true)
  log "$name: integration tests"
  if ! ctest --test-dir "$dir" -L integration -j "$jobs_integration" --output-on-failure 2>&1 | tee "$out"; then ok=0; fi
  int_line=$(grep -E 'tests passed|No tests were found' "$out" | tail -n1 || true)
  rm -f "$out"
  ((ok)) || failed=1
  summary+=("$name: unit ${unit_line:-?}; integration ${int_line:-?}")
}

run_suite build build -DCAPGATE_WERROR=ON

# Once, in the normal tree: a copy of the repository alone in a fresh directory builds and passes
# the unit tests (scripts/check-standalone.sh).
log "standalone: the repository copied to a directory with nothing beside it"
out=$(mktemp)
if ctest --test-dir build -L standalone --output-on-failure 2>&1 | tee "$out"; then
  summary+=("standalone: $(grep -E 'tests passed' "$out" | tail -n1 || true)")
else
  summary+=("standalone: FAILED")
  failed=1
fi
rm -f "$out"

# Once, in the normal tree: cmake --install into a staging root, the man pages, the units, the
# installed programs with the installed config, and the .deb (tests/install/check_install.sh).
log "install: staging install, man pages, units, installed config, .deb"
out=$(mktemp)
if ctest --test-dir build -L install --output-on-failure 2>&1 | tee "$out"; then
  summary+=("install: $(grep -E 'tests passed' "$out" | tail -n1 || true)")
else
  summary+=("install: FAILED")
  failed=1
fi
rm -f "$out"

if [[ ${CAPGATE_SKIP_ASAN:-0} != 1 ]]; then
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
  run_suite asan build-asan -DCAPGATE_SANITIZE=address,undefined
  unset ASAN_OPTIONS UBSAN_OPTIONS
fi

# A short run of every fuzz target (10 s each, about 2 minutes with the build) when clang is
# there: a smoke test that the targets build and hold their invariants on their seeds and more.
if [[ ${CAPGATE_SKIP_FUZZ:-0} != 1 ]] && command -v clang >/dev/null 2>&1; then
  log "fuzz: build-fuzz, each target for ${CAPGATE_FUZZ_SECONDS:-10}s"
  if ./scripts/fuzz.sh "${CAPGATE_FUZZ_SECONDS:-10}"; then
    summary+=("fuzz: every target ran ${CAPGATE_FUZZ_SECONDS:-10}s without a finding")
  else
    summary+=("fuzz: FAILED (see build-fuzz/fuzz-artifacts/)")
    failed=1
  fi
fi

elapsed=$(($(date +%s) - start))
status=PASS
((failed == 0)) || status=FAIL
line=$(printf '%s | ' "${summary[@]}")
printf '\ntest.sh: %s in %ss | %s\n' "$status" "$elapsed" "${line% | }"
exit "$failed"
