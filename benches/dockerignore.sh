#!/usr/bin/env bash
# The worst .dockerignore a repository can commit, against two launcher binaries (issue 16):
# a stack-deep pattern, 70,000 patterns, and patterns at the caps over a large context. Runs
# `plan` (which computes the context's entry list, as `build` does before any server) and prints
# wall time and exit code per case, for docs/PERFORMANCE.md.
#
#   benches/dockerignore.sh BEFORE_BIN AFTER_BIN [FILES]
#
# BEFORE_BIN `-` runs only AFTER_BIN.
#
# A benchmark, not a test: nothing fails on a slow machine; the numbers are one run's.
set -euo pipefail
before=$1 after=$2 files=${3:-300}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

context() { # NAME FILES: a context with FILES files and the Dockerfile
  local dir=$work/$1
  mkdir -p "$dir/src"
  echo 'FROM scratch' >"$dir/Dockerfile"
  (cd "$dir/src" && seq 1 "$2" | sed 's/^/file-/' | xargs touch)
  echo "$dir"
}

deep=$(context deep 10)
python3 -c "print('^' * 50000 + '*')" >"$deep/.dockerignore"
many=$(context many "$files")
python3 -c "print('\n'.join(f'**/*p{i}*q*' for i in range(70000)))" >"$many/.dockerignore"
capped=$(context capped "$files")
python3 -c "print('\n'.join(f'**/*p{i}*q*' for i in range(10000)))" >"$capped/.dockerignore"
large=$(context large 100000)
python3 -c "print('\n'.join(f'**/*p{i}*q*' for i in range(10000)))" >"$large/.dockerignore"

run() { # LABEL BIN CONTEXT
  local start end code
  start=$(date +%s.%N)
  code=0
  timeout 600 "$2" plan --context "$3" --history none >/dev/null 2>"$work/err" || code=$?
  end=$(date +%s.%N)
  printf 'BENCH %-7s %-55s exit %3s  %8.2f s  %s\n' "$1" "$(basename "$3")" "$code" \
    "$(echo "$end - $start" | bc)" "$(head -c 160 "$work/err" | tr '\n' ' ')"
}

for label in before after; do
  [ "$label" = before ] && [ "$before" = - ] && continue
  bin=$before
  [ "$label" = after ] && bin=$after
  run "$label" "$bin" "$deep"
  run "$label" "$bin" "$many"
  run "$label" "$bin" "$capped"
  run "$label" "$bin" "$large"
done
