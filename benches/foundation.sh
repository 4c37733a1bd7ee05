#!/usr/bin/env bash
# Benchmarks for the foundation (issue 2): `plan` with a spec file, and `simulate` over a
# generated 100,000-build history. Prints a Markdown table for docs/PERFORMANCE.md.
#
#   benches/foundation.sh            # needs hyperfine and GNU time (apt-get install hyperfine time)
#
# A benchmark, not a test: nothing here fails on a slow machine; it reports ratios to targets.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in hyperfine /usr/bin/time python3; do
  command -v "$tool" >/dev/null || { echo "benches/foundation.sh: $tool is missing (apt-get install hyperfine time)" >&2; exit 2; }
done

cargo build --release --locked --quiet
bin=target/release/buildkit-launcher
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 100,000 builds over 200 keys and 6 languages, deterministic.
python3 - "$work/history.jsonl" <<'PY'
import json, random, sys
random.seed(7)
langs = ["rust", "go", "node", "java", "python", "generic"]
keys = [(f"org{i % 17}/svc-{i}", langs[i % 6], random.randint(800, 20000)) for i in range(200)]
with open(sys.argv[1], "w") as f:
    for n in range(100_000):
        repo, lang, base = keys[random.randrange(len(keys))]
        peak = max(100, int(random.gauss(base, base * 0.15)))
        f.write(json.dumps({"ts": f"2026-01-01T00:00:{n % 60:02d}Z", "repo": repo, "dockerfile": "Dockerfile",
                            "lang": lang, "peak_memory_mib": peak, "duration_s": random.randint(30, 5000)}) + "\n")
PY

# plan: the example with its spec file, no history (the spec decides).
plan=("$bin" plan --context examples/hello --history none)
"${plan[@]}" >/dev/null
hyperfine --warmup 5 --runs 50 --export-json "$work/plan.json" "${plan[*]}" >/dev/null
# simulate: 100k builds.
sim=("$bin" simulate --trace "$work/history.jsonl" --json)
"${sim[@]}" >/dev/null
hyperfine --warmup 2 --runs 10 --export-json "$work/sim.json" "${sim[*]}" >/dev/null

peak_kib() { /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -1; }
plan_kib=$(peak_kib "${plan[@]}")
# The sandboxed evaluator alone, as plan starts it (RSS counts the binary's shared pages in each
# process, so parent + child is an upper bound of the tree).
child_kib=$(peak_kib "$bin" __eval-ncl schemas/build_spec.ncl examples/hello "$PWD/examples/hello/.build-spec.ncl" 3)
sim_kib=$(peak_kib "${sim[@]}")

# The whole process tree of `plan` (the launcher and its sandboxed Nickel evaluator, which run
# at the same time): the peak charge of a memory cgroup of its own, median of 21 runs. Needs
# root and the cgroup v1 memory controller; the binary's pages are cached by the warm-up, so the
# charge is the processes' own memory.
tree_kib=""
cg=/sys/fs/cgroup/memory/bkl-bench-$$
if [ "$(id -u)" = 0 ] && [ -d /sys/fs/cgroup/memory ] && mkdir "$cg" 2>/dev/null; then
  peaks=()
  for _ in $(seq 21); do
    echo 0 > "$cg/memory.max_usage_in_bytes"
    sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$cg" "${plan[@]}" >/dev/null
    peaks+=($(( $(cat "$cg/memory.max_usage_in_bytes") / 1024 )))
  done
  tree_kib=$(printf '%s\n' "${peaks[@]}" | sort -n | sed -n 11p)
  rmdir "$cg"
fi

python3 - "$work/plan.json" "$work/sim.json" "$plan_kib" "$sim_kib" "$tree_kib" "$child_kib" <<'PY'
import json, sys
plan = json.load(open(sys.argv[1]))["results"][0]
sim = json.load(open(sys.argv[2]))["results"][0]
plan_mb, sim_mb = int(sys.argv[3]) / 1024, int(sys.argv[4]) / 1024
tree = sys.argv[5]
rows = [
    ("`plan` with a spec file, wall time, sandboxed evaluation included (median of 50)", f"{plan['median']*1000:.1f} ms", "50 ms", plan['median'] / 0.050),
    ("`plan` peak memory (largest single process, RSS)", f"{plan_mb:.1f} MB", "40 MB", plan_mb / 40),
]
sum_mb = plan_mb + int(sys.argv[6]) / 1024
rows.append(("`plan` peak memory, launcher + sandboxed evaluator, sum of peak RSS (upper bound)", f"{sum_mb:.1f} MB", "40 MB", sum_mb / 40))
if tree:
    tree_mb = int(tree) / 1024
    rows.append(("`plan` peak memory, whole process tree (memory cgroup charge: private memory, median of 21)", f"{tree_mb:.1f} MB", "40 MB", tree_mb / 40))
rows += [
    ("`simulate` 100,000 builds, wall time (median of 10)", f"{sim['median']*1000:.0f} ms", "1 s", sim['median'] / 1.0),
    ("`simulate` 100,000 builds, peak memory (RSS)", f"{sim_mb:.1f} MB", "—", None),
]
print("| measure | result | target | result ÷ target |")
print("|---|---|---|---|")
for name, value, target, ratio in rows:
    print(f"| {name} | {value} | {target} | {'—' if ratio is None else f'{ratio:.2f}'} |")
PY
