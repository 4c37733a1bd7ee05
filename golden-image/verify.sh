#!/usr/bin/env bash
# Verify a provisioned golden-image bake server before it is snapshotted: one line per failed
# check, and a non-zero exit when any failed. Run by `buildkit-launcher golden-image build`
# after provision.sh, with the same arguments and environment.
#
#   verify.sh [PIN]           PIN: the pin file (default: $BKL_PIN, else ./buildkit.pin)
#
# BKL_ROOT (the sandbox install prefix) set: the files are checked under it, and the checks
# that need the real system (systemd, a running buildkitd, cgroup v2) are skipped.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pin=${1:-${BKL_PIN:-$here/buildkit.pin}}
ROOT="${BKL_ROOT:-}"
failures=0

ok() { printf 'verify: ok: %s\n' "$*"; }
fail() {
    printf 'verify: FAILED: %s\n' "$*" >&2
    failures=$((failures + 1))
}

VERSION=$(grep -E '^[[:space:]]*BUILDKIT_VERSION=' "$pin" 2>/dev/null | tail -n 1 | cut -d= -f2- | tr -d "\"' ")
if [ -z "$VERSION" ]; then
    fail "$pin: BUILDKIT_VERSION is not set"
    VERSION=unknown
fi

for b in buildctl buildkitd; do
    path="$ROOT/usr/local/bin/$b"
    if [ ! -x "$path" ]; then
        fail "$path is missing or not executable"
        continue
    fi
    reported=$("$path" --version 2>&1 | head -n 1)
    if printf '%s\n' "$reported" | grep -qF " $VERSION "; then
        ok "$b reports $VERSION"
    else
        fail "$b reports '$reported', not the pinned $VERSION"
    fi
done
for f in "$ROOT/etc/buildkit/buildkitd.toml" "$ROOT/etc/systemd/system/buildkit.service" \
    "$ROOT/etc/systemd/system/bkl-runner-stats.service" \
    "$ROOT/etc/systemd/system/ssh.service.d/buildkit-launcher-oom.conf"; do
    if [ -s "$f" ]; then ok "$f exists"; else fail "$f is missing or empty"; fi
done
# Each registry CA the rendered buildkitd.toml names (ca = ["/etc/buildkit/registry-ca/…"]).
for ca in $(grep -o '"/[^"]*/registry-ca/[^"]*"' "$ROOT/etc/buildkit/buildkitd.toml" 2>/dev/null | tr -d '"'); do
    if [ -s "$ROOT$ca" ]; then ok "registry CA $ROOT$ca exists"; else fail "registry CA $ROOT$ca, named in buildkitd.toml, is missing or empty"; fi
done
if command -v rsync >/dev/null 2>&1; then ok "rsync is installed"; else fail "rsync is not installed"; fi
stats="$ROOT/usr/local/bin/bkl-runner-stats"
if [ -x "$stats" ]; then ok "$stats is executable"; else fail "$stats is missing or not executable"; fi

if [ -z "$ROOT" ]; then
    if systemctl is-enabled --quiet buildkit.service; then ok "buildkit.service is enabled"; else fail "buildkit.service is not enabled"; fi
    if systemctl is-active --quiet buildkit.service; then ok "buildkit.service is active"; else fail "buildkit.service is not active"; fi
    if [ "$(systemctl show --property Type --value buildkit.service)" = notify ]; then ok "buildkit.service is Type=notify"; else fail "buildkit.service is not Type=notify: systemd would call it started before it serves"; fi
    # A listed worker, not just an answer: the table's header comes even with no worker.
    if workers=$(buildctl --wait --timeout 30 debug workers 2>&1) && worker=$(printf '%s\n' "$workers" | sed -n 2p) && [ -n "$worker" ]; then
        ok "buildctl debug workers lists a worker: $worker"
    else
        fail "buildctl debug workers lists no worker: $(printf '%s\n' "$workers" | tail -n 1)"
    fi
    # OOM scores: build steps inherit buildkitd's, so it must be the default; sshd's sessions
    # must be protected (README.md, "Out of memory").
    main=$(systemctl show --property MainPID --value buildkit.service)
    adj=$(cat "/proc/$main/oom_score_adj" 2>/dev/null)
    if [ "$adj" = 0 ]; then ok "buildkitd's oom_score_adj is 0 (build steps inherit it)"; else fail "buildkitd's oom_score_adj is '$adj', not 0: every build step would inherit it"; fi
    ssh_adj=$(systemctl show --property OOMScoreAdjust --value ssh.service)
    if [ "$ssh_adj" = -900 ]; then ok "ssh.service OOMScoreAdjust=-900"; else fail "ssh.service OOMScoreAdjust is '$ssh_adj', not -900"; fi
    if systemctl is-enabled --quiet bkl-runner-stats.service && systemctl is-active --quiet bkl-runner-stats.service; then ok "bkl-runner-stats.service (the memory sampler) is enabled and active"; else fail "bkl-runner-stats.service is not enabled and active: peak memory would fall back to the charged peak"; fi
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then ok "cgroup v2"; else fail "not cgroup v2: bkl-runner-stats cannot work"; fi
    # buildkitd must have left the unit's own cgroup (buildkit.service, ExecStartPost), or runc
    # cannot put build containers below it and the unit's memory.peak misses the build.
    cg=/sys/fs/cgroup/system.slice/buildkit.service
    if [ -z "$(cat "$cg/cgroup.procs" 2>/dev/null)" ] && grep -qx "$main" "$cg/daemon/cgroup.procs" 2>/dev/null; then
        ok "buildkitd (pid $main) runs in $cg/daemon"
    else
        fail "buildkitd (pid $main) is not in $cg/daemon: build containers would escape the unit's memory accounting"
    fi
    if out=$("$stats" 2>&1) && printf '%s\n' "$out" | grep -qE '^\{"peak_memory_mib": [0-9]+, "oom_kills": [0-9]+, "charged_peak_mib": [0-9]+\}$'; then
        ok "bkl-runner-stats: $out"
    else
        fail "bkl-runner-stats printed '$out'"
    fi
else
    echo "verify: BKL_ROOT is set (sandbox): systemd, buildkitd and cgroup checks skipped"
fi

if [ "$failures" -gt 0 ]; then
    echo "verify: $failures check(s) failed" >&2
    exit 1
fi
echo "verify: all checks passed"
