#!/usr/bin/env bash
# The real BuildKit on sandbox runners (issue 18): runner up -> buildkitd lists a worker; the
# launcher's overhead (wall time - buildctl's own time); a multi-stage build with a slow step,
# first / no-change / one-file-change, each on a fresh runner through the registry cache
# (mode=max), as ratios to the first. Needs root and what scripts/install-deps installs.
#
#   sudo benches/buildkit.sh
#
# A benchmark, not a test: nothing fails on a slow machine; the numbers are one run's.
set -euo pipefail
cd "$(dirname "$0")/.."
CI=true cargo test --locked --quiet --test e2e_buildkit bench_real_buildkit -- --ignored --nocapture 2>&1 |
  grep '^BENCH' || { echo "benches/buildkit.sh: the benchmark did not run (see cargo test output)" >&2; exit 1; }
