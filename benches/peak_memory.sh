#!/usr/bin/env bash
# Peak memory of a file-heavy build: what the cgroup's charged peak says against what the build
# needed not to be OOM-killed (docs/PERFORMANCE.md, "Peak memory"; docs/design/runner.md).
#
#   sudo benches/peak_memory.sh [LIMIT_MIB...]     default limits: 512 256 128 96 64 48
#
# Builds `FROM scratch` + `COPY data /data` of a generated context (BKL_PEAK_FILES files of
# BKL_PEAK_KIB KiB, incompressible; default 2,000 × 100 KiB = 200 MB) with buildah (vfs, chroot
# isolation, a fresh store per run) inside a cgroup v1 memory cgroup at each limit, with
# golden-image/bkl-runner-stats sampling it (--sample 0.2) as on a sandbox runner. Prints one
# row per limit: the outcome (ok, or oom with the cgroup's oom_kill count), the charged peak
# (memory.max_usage_in_bytes), what bkl-runner-stats reports as peak_memory_mib, the highest
# sampled need and the highest sampled reclaimable memory. The build needed at most the lowest
# limit it passed, and more than the highest it failed.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "peak_memory: needs root (memory cgroups, buildah)" >&2; exit 1; }
here=$(cd "$(dirname "$0")/.." && pwd)
stats=$here/golden-image/bkl-runner-stats
limits=("$@")
((${#limits[@]})) || limits=(512 256 128 96 64 48)
files=${BKL_PEAK_FILES:-2000} kib=${BKL_PEAK_KIB:-100}

work=$(mktemp -d /var/tmp/bkl-peak.XXXXXX)
cg=/sys/fs/cgroup/memory/bkl-peak-$$
sampler=""
cleanup() {
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
    if [ -d "$cg" ]; then
        for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        sleep 0.2
        rmdir "$cg" 2>/dev/null || true
    fi
    buildah --root "$work/store/root" --runroot "$work/store/run" --storage-driver vfs rmi --all --force >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/ctx/data"
for ((i = 0; i < files; i++)); do
    d=$work/ctx/data/d$((i % 30))
    mkdir -p "$d"
    head -c $((kib * 1024)) /dev/urandom >"$d/f$i"
done
printf 'FROM scratch\nCOPY data /data\n' >"$work/ctx/Dockerfile"
echo "peak_memory: context of $files files × $kib KiB ($(du -sm "$work/ctx" | cut -f1) MiB); kernel $(uname -r)"
printf '%-9s %-10s %-13s %-16s %-15s %-18s %s\n' limit_mib outcome charged_mib peak_memory_mib sampled_need_mib sampled_reclaim_mib seconds

for limit in "${limits[@]}"; do

    mkdir -p "$cg"
    echo $((limit * 1048576)) >"$cg/memory.limit_in_bytes"
    [ -f "$cg/memory.memsw.limit_in_bytes" ] && echo $((limit * 1048576)) >"$cg/memory.memsw.limit_in_bytes"
    state=$work/state-$limit
    BKL_STATS_CGROUP=$cg BKL_STATS_STATE=$state sh "$stats" --sample 0.2 &
    sampler=$!
    rm -rf "$work/store"
    start=$(date +%s.%N)
    rc=0
    sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" \
        buildah --root "$work/store/root" --runroot "$work/store/run" --storage-driver vfs \
        bud --isolation chroot --layers=false -t "bkl-peak:$limit" "$work/ctx" >"$work/log-$limit" 2>&1 || rc=$?
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    out=$(BKL_STATS_CGROUP=$cg BKL_STATS_STATE=$state sh "$stats")
    oom=$(sed -n 's/^oom_kill //p' "$cg/memory.oom_control")
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true; sampler=""
    read -r need reclaim <"$state" || { need=0 reclaim=0; }
    outcome=ok
    ((rc == 0)) || outcome="failed($rc)"
    ((oom > 0)) && outcome="oom($oom)"
    peak=$(sed -E 's/.*"peak_memory_mib": ([0-9]+).*/\1/' <<<"$out")
    charged=$(sed -E 's/.*"charged_peak_mib": ([0-9]+).*/\1/' <<<"$out")
    printf '%-9s %-10s %-13s %-16s %-15s %-18s %s\n' "$limit" "$outcome" "$charged" "$peak" \
        $(((need + 1048575) / 1048576)) $(((reclaim + 1048575) / 1048576)) "$secs"
    buildah --root "$work/store/root" --runroot "$work/store/run" --storage-driver vfs rmi --all --force >/dev/null 2>&1 || true
    rmdir "$cg"
done
