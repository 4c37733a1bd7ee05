//! `bkl-runner-stats` (golden-image/bkl-runner-stats; the local provider installs the same
//! script bound to its runner's cgroup) against fixture cgroupfs directories of both versions:
//! cgroup v2 (the golden image: memory.stat, memory.peak, memory.events) and v1 (the local
//! sandbox: memory.stat, memory.kmem.usage_in_bytes, memory.max_usage_in_bytes,
//! memory.oom_control). The numbers are shaped like a build that wrote many files under a
//! 256 MiB limit: the charged peak is the limit, what the build needed is far less.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

const MIB: u64 = 1024 * 1024;

fn script() -> PathBuf {
    support::repo_dir().join("golden-image/bkl-runner-stats")
}

/// A fixture cgroup directory and the sampler's state file beside it.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("cg")).unwrap();
        Fixture { dir }
    }

    fn cg(&self) -> PathBuf {
        self.dir.path().join("cg")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state/peak")
    }

    fn write(&self, name: &str, text: &str) -> &Self {
        std::fs::write(self.cg().join(name), text).unwrap();
        self
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
        Command::new("sh")
            .arg(script())
            .args(args)
            .env("BKL_STATS_CGROUP", self.cg())
            .env("BKL_STATS_STATE", self.state())
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    fn stats(&self) -> serde_json::Value {
        let out = self.run(&[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    fn sample(&self) {
        let out = self.run(&["--sample-once"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// cgroup v2 memory.stat with the fields bkl-runner-stats reads (and some it must ignore).
fn v2_stat(anon: u64, file: u64, shmem: u64, kernel: u64, slab_reclaimable: u64) -> String {
    format!(
        "anon {anon}\nfile {file}\nkernel {kernel}\nkernel_stack 1048576\npagetables 2097152\n\
         sec_pagetables 0\npercpu 0\nsock 0\nvmalloc 0\nshmem {shmem}\nfile_mapped 0\n\
         file_dirty 0\nslab_reclaimable {slab_reclaimable}\nslab_unreclaimable 1048576\n\
         slab {}\n",
        slab_reclaimable + MIB
    )
}

fn v2(f: &Fixture, current: u64, peak: u64, stat: &str, oom_kill: u64) {
    f.write("memory.current", &format!("{current}\n"))
        .write("memory.peak", &format!("{peak}\n"))
        .write("memory.stat", stat)
        .write(
            "memory.events",
            &format!(
                "low 0\nhigh 0\nmax 12\noom {oom_kill}\noom_kill {oom_kill}\noom_group_kill 0\n"
            ),
        );
}

fn v1(f: &Fixture, usage: u64, max_usage: u64, rss: u64, cache: u64, shmem: u64, kmem: u64) {
    f.write("memory.usage_in_bytes", &format!("{usage}\n"))
        .write("memory.max_usage_in_bytes", &format!("{max_usage}\n"))
        .write("memory.kmem.usage_in_bytes", &format!("{kmem}\n"))
        .write(
            "memory.stat",
            &format!(
                "cache 0\nrss 0\nshmem 0\ntotal_cache {cache}\ntotal_rss {rss}\n\
                 total_rss_huge 0\ntotal_shmem {shmem}\ntotal_mapped_file 0\n"
            ),
        )
        .write(
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        );
}

#[test]
fn v2_peak_is_the_highest_sampled_anon_shmem_and_unreclaimable_kernel_memory() {
    let f = Fixture::new();
    // Mid-build: 90 MiB anon, 4 MiB shmem, 30 MiB kernel of which 20 MiB reclaimable slab,
    // 150 MiB page cache; the charged peak is at the 256 MiB limit.
    v2(
        &f,
        250 * MIB,
        256 * MIB,
        &v2_stat(90 * MIB, 150 * MIB, 4 * MIB, 30 * MIB, 20 * MIB),
        0,
    );
    f.sample();
    // After the build: its processes are gone, the cache stays.
    v2(
        &f,
        180 * MIB,
        256 * MIB,
        &v2_stat(5 * MIB, 170 * MIB, 0, 12 * MIB, 8 * MIB),
        0,
    );
    f.sample();
    let stats = f.stats();
    assert_eq!(stats["peak_memory_mib"], 90 + 4 + 30 - 20);
    assert_eq!(stats["charged_peak_mib"], 256);
    assert_eq!(stats["oom_kills"], 0);
}

#[test]
fn v2_without_the_kernel_field_sums_the_kernel_parts() {
    let f = Fixture::new();
    // Kernels before 5.18 have no "kernel" line: kernel_stack + pagetables + slab (+ others).
    let stat = v2_stat(64 * MIB, 10 * MIB, 0, 0, 2 * MIB).replace("kernel 0\n", "");
    v2(&f, 78 * MIB, 80 * MIB, &stat, 2);
    f.sample();
    let stats = f.stats();
    // 64 anon + (1 kernel_stack + 2 pagetables + 3 slab) - 2 reclaimable = 68
    assert_eq!(stats["peak_memory_mib"], 68);
    assert_eq!(stats["oom_kills"], 2);
}

#[test]
fn v1_peak_is_the_highest_sampled_rss_shmem_and_kernel_memory() {
    let f = Fixture::new();
    v1(
        &f,
        255 * MIB,
        256 * MIB,
        70 * MIB,
        160 * MIB,
        2 * MIB,
        20 * MIB,
    );
    f.sample();
    v1(&f, 200 * MIB, 256 * MIB, 3 * MIB, 190 * MIB, 0, 10 * MIB);
    f.sample();
    f.write(
        "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    );
    let stats = f.stats();
    assert_eq!(stats["peak_memory_mib"], 70 + 2 + 20);
    assert_eq!(stats["charged_peak_mib"], 256);
    assert_eq!(stats["oom_kills"], 1);
}

/// cgroup v1 with a watcher of the cgroup's OOM notifier (a sandbox runner): a kill in a build
/// container's cgroup (gone by now) shows only as an event; one in the cgroup itself is both an
/// event and its own oom_kill, and counts once.
#[test]
fn v1_oom_events_of_the_cgroups_limit_count_once() {
    let f = Fixture::new();
    v1(&f, 200 * MIB, 256 * MIB, 3 * MIB, 190 * MIB, 0, 10 * MIB);
    let events = f.dir.path().join("oom-events");
    let stats = |events_text: &str, oom_kill: u64| {
        std::fs::write(&events, events_text).unwrap();
        f.write(
            "memory.oom_control",
            &format!("oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kill}\n"),
        );
        let out = f.run_env(&[], &[("BKL_STATS_OOM_EVENTS", events.as_os_str())]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["oom_kills"].as_u64().unwrap()
    };
    assert_eq!(stats("0\n", 0), 0);
    assert_eq!(stats("1\n", 0), 1, "a build container's kill");
    assert_eq!(stats("1\n", 1), 1, "a kill in the cgroup itself, once");
    assert_eq!(stats("2\n", 1), 2);
}

#[test]
fn without_a_sample_the_charged_peak_stands_in() {
    // An overestimate is safe; reporting only what is left after the build would not be.
    let f = Fixture::new();
    v2(
        &f,
        100 * MIB,
        250 * MIB,
        &v2_stat(5 * MIB, 90 * MIB, 0, 5 * MIB, 0),
        0,
    );
    assert_eq!(f.stats()["peak_memory_mib"], 250);
    let g = Fixture::new();
    v1(&g, 100 * MIB, 300 * MIB, 5 * MIB, 90 * MIB, 0, 5 * MIB);
    assert_eq!(g.stats()["peak_memory_mib"], 300);
}

#[test]
fn a_spike_between_samples_shows_as_the_charged_peak_less_the_cache() {
    // dd's 350 MiB buffer lives for a fraction of a second: no sample sees it, but the charged
    // peak does, and the samples bound the page cache that could have been part of it.
    let f = Fixture::new();
    v1(&f, 40 * MIB, 40 * MIB, 30 * MIB, 6 * MIB, 0, 4 * MIB);
    f.sample();
    v1(&f, 40 * MIB, 362 * MIB, 30 * MIB, 8 * MIB, 0, 4 * MIB);
    let stats = f.stats();
    assert_eq!(stats["peak_memory_mib"], 362 - 8);
    assert_eq!(stats["charged_peak_mib"], 362);
}

#[test]
fn the_current_figure_counts_when_it_is_above_the_last_sample() {
    let f = Fixture::new();
    v2(
        &f,
        50 * MIB,
        60 * MIB,
        &v2_stat(20 * MIB, 10 * MIB, 0, 5 * MIB, 0),
        0,
    );
    f.sample();
    v2(
        &f,
        120 * MIB,
        130 * MIB,
        &v2_stat(100 * MIB, 10 * MIB, 0, 5 * MIB, 0),
        0,
    );
    // Needed now: 100 + 5 = 105; but 130 charged with at most 10 MiB of cache: 120.
    assert_eq!(f.stats()["peak_memory_mib"], 120);
}

#[test]
fn no_memory_accounting_is_an_error_naming_the_directory() {
    let f = Fixture::new();
    let out = f.run(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no memory accounting at"), "{stderr}");
    assert!(stderr.contains(&f.cg().display().to_string()), "{stderr}");
    assert!(!f.run(&["--sample-once"]).status.success());
    assert!(!f.run(&["--bogus"]).status.success());
}

#[test]
fn the_sampler_samples_until_its_cgroup_is_removed() {
    // A sandbox runner's teardown removes the cgroup; its sampler must not outlive it.
    let f = Fixture::new();
    v1(&f, MIB, MIB, 7 * MIB, 0, 0, 0);
    let mut child = Command::new("sh")
        .arg(script())
        .args(["--sample", "0.05"])
        .env("BKL_STATS_CGROUP", f.cg())
        .env("BKL_STATS_STATE", f.state())
        .spawn()
        .unwrap();
    // The first sample lands, then the cgroup goes away.
    let bound = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !f.state().exists() && std::time::Instant::now() < bound {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::remove_dir_all(f.cg()).unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > bound {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "the sampler did not end"
    );
    assert_eq!(
        std::fs::read_to_string(f.state()).unwrap(),
        format!("{} 0\n", 7 * MIB)
    );
}
