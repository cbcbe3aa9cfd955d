#!/usr/bin/env bash
# check-format.sh [--fix]: every C source and header of the repository is as .clang-format writes
# it (clang-format --dry-run -Werror, one line per file that differs). --fix rewrites them in
# place. ctest runs the check as unit/format; scripts/install-deps.sh --test installs clang-format.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fix=0
case "${1:-}" in
  --fix) fix=1 ;;
  "") ;;
  *)
    echo "check-format.sh: unknown argument: $1" >&2
    exit 2
    ;;
esac

if ! command -v clang-format >/dev/null 2>&1; then
  echo "check-format.sh: clang-format is not installed (scripts/install-deps.sh --test)" >&2
  exit 1
fi

mapfile -t files < <(git ls-files -- '*.c' '*.h' 2>/dev/null ||
  find common include proxy mockserver tests -name '*.[ch]' | sort)
if ((fix)); then
  clang-format -i -- "${files[@]}"
  exit 0
fi
bad=0
for f in "${files[@]}"; do
  if ! clang-format --dry-run -Werror -- "$f" >/dev/null 2>&1; then
    echo "check-format.sh: $f differs from .clang-format (run scripts/check-format.sh --fix)" >&2
    bad=1
  fi
done
((bad == 0)) && echo "check-format.sh: ${#files[@]} files as .clang-format writes them"
exit "$bad"
