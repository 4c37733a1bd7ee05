#!/usr/bin/env bash
# Two platforms at once against one after the other (issue 12), through the Hetzner API
# simulator with real sandbox runners, sshd, rsync, buildah and a registry (needs root and what
# README.md, "Two commands", lists). Prints the wall times and the two ratios for docs/PERFORMANCE.md.
#
#   sudo benches/platforms.sh
#
# A benchmark, not a test: nothing fails on a slow machine; the numbers are one run's.
set -euo pipefail
cd "$(dirname "$0")/.."
CI=true cargo test --locked --quiet --test e2e_platforms bench_two_platforms -- --ignored --nocapture 2>&1 |
  grep '^BENCH' || { echo "benches/platforms.sh: the benchmark did not run (see cargo test output)" >&2; exit 1; }
