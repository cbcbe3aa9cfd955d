#!/usr/bin/env bash
# check-standalone.sh: the repository builds and passes its unit tests on its own. Copies the
# tracked files (as they are in the work tree, uncommitted edits included) into a fresh directory
# whose parent holds nothing else, checks that no file refers to anything beside the checkout,
# configures and builds there, and runs the unit tests there. Run by ctest (label "standalone")
# from scripts/test.sh in the normal tree.
# Exit: 0 pass, 1 fail, 77 skipped (not a git checkout: nothing says which files are the project).
# Env: CAPGATE_STANDALONE_KEEP=1 keeps the copy; CAPGATE_STANDALONE_JOBS (default 2).
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jobs=${CAPGATE_STANDALONE_JOBS:-2}

if ! git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "check-standalone: $src is not a git checkout; skipped"
  exit 77
fi

outer=$(mktemp -d "${TMPDIR:-/tmp}/capgate-standalone.XXXXXX")
cleanup() {
  if [[ ${CAPGATE_STANDALONE_KEEP:-0} == 1 ]]; then
    echo "check-standalone: copy kept in $outer"
  else
    rm -rf "$outer"
  fi
}
trap cleanup EXIT
copy=$outer/capgate

# Tracked files that exist in the work tree (a tracked file deleted but not yet committed is left
# out, as a commit would leave it out).
mkdir "$copy"
git -C "$src" ls-files -z |
  while IFS= read -r -d '' f; do
    if [[ -e $src/$f || -L $src/$f ]]; then printf '%s\0' "$f"; fi
  done |
  tar -C "$src" --null -T - -cf - | tar -C "$copy" -xf -
echo "check-standalone: $(git -C "$src" ls-files | wc -l) tracked files copied to $copy"

# The copy's parent holds nothing else, so a path that climbs out of the checkout finds nothing.
others=$(find "$outer" -mindepth 1 -maxdepth 1 ! -name capgate)
if [[ -n $others ]]; then
  echo "check-standalone: FAIL: $outer holds more than the copy: $others"
  exit 1
fi

# No file may refer to the old workspace beside the checkout or to its notes. The patterns are
# spelled in two pieces so this script does not match itself.
up='\.\./'
pattern="${up}shared|DESIGN[.]md|STYLE[.]md"
if hits=$(grep -rnIE "$pattern" "$copy"); then
  echo "check-standalone: FAIL: references to files outside the repository:"
  echo "${hits//$copy\//}"
  exit 1
fi

echo "check-standalone: configure + build (Debug, -Werror) in $copy/build"
cmake -S "$copy" -B "$copy/build" -DCMAKE_BUILD_TYPE=Debug -DCAPGATE_WERROR=ON >/dev/null
# Only what the unit tests need: their executables pull in the core and both module libraries.
targets=()
for t in "$copy"/tests/unit/test_*.c; do
  targets+=("$(basename "$t" .c)")
done
cmake --build "$copy/build" -j "$jobs" --target "${targets[@]}" >/dev/null

# Nothing in the build may point back at the original tree.
if grep -rqsF "$src/" "$copy/build/CMakeCache.txt" "$copy/build/CMakeFiles" --include='*.make' \
  --include='*.txt' --include='*.cmake'; then
  echo "check-standalone: FAIL: the copy's build refers to $src"
  exit 1
fi

echo "check-standalone: unit tests in the copy"
ctest --test-dir "$copy/build" -L unit -j "$jobs" --output-on-failure
echo "check-standalone: PASS"
