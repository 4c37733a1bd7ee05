//! Sandbox runners for end-to-end tests: a local provider in a private directory, and a guard
//! that destroys its runner even when the test fails.

use std::path::PathBuf;

use buildkit_launcher::config::{Arch, Tier};
use buildkit_launcher::provider::cloud_init::UserData;
use buildkit_launcher::provider::keys::BuildKeys;
use buildkit_launcher::provider::local::LocalProvider;
use buildkit_launcher::provider::{Lease, RunnerSpec, labels};

/// Can this machine host sandbox runners? Locally a missing part skips the test with one line;
/// under `CI=true` it fails it (a missing part is a failure there).
pub fn require_local_runner() -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    for tool in [
        "/usr/sbin/sshd",
        "/usr/bin/ssh",
        "/usr/bin/rsync",
        "/usr/bin/buildah",
        // the real BuildKit every sandbox runner runs (scripts/install-deps)
        "/usr/local/bin/buildkitd",
        "/usr/local/bin/buildctl",
        "/usr/sbin/runc",
    ] {
        if !std::path::Path::new(tool).exists() {
            missing.push(tool.to_owned());
        }
    }
    if !std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        missing.push("the cgroup v1 memory controller".to_owned());
    }
    if missing.is_empty() {
        return true;
    }
    let line = format!("sandbox runner test needs {}", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{line} (CI=true: a missing part is a failure)");
    }
    eprintln!("skipped: {line}");
    false
}

pub fn tier(name: &str, memory_mib: u64) -> Tier {
    Tier {
        name: name.into(),
        vcpus: 2,
        memory_mib,
        disk_gb: 40,
        price_eur_per_hour: None,
    }
}

/// A local provider whose runners live in a private temporary directory.
pub struct Sandbox {
    pub provider: LocalProvider,
    pub base: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let base = tempfile::Builder::new()
            .prefix("bkl-test-")
            .tempdir_in("/var/tmp")
            .expect("sandbox base");
        Sandbox {
            provider: LocalProvider::new(base.path().to_owned(), 16, Vec::new()),
            base,
        }
    }

    /// A runner spec with fresh keys.
    pub fn spec(&self, tier: Tier) -> (RunnerSpec, BuildKeys) {
        let lease = Lease::new(3600);
        let keys = BuildKeys::generate(&lease.id).unwrap();
        let spec = RunnerSpec {
            name: format!("bkl-test-{}", lease.id),
            labels: labels(&lease, "test/repo", &tier.name),
            lease,
            tier,
            arch: Arch::Amd64,
            user_data: UserData::for_build(&keys).render(),
        };
        (spec, keys)
    }

    /// No runner of this sandbox is left: no directory, no cgroup, no sshd.
    pub fn assert_empty(&self) {
        let leftovers: Vec<PathBuf> = std::fs::read_dir(self.base.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("local-"))
            })
            .collect();
        assert!(
            leftovers.is_empty(),
            "runner directories left: {leftovers:?}"
        );
        let cgroups: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup/memory/buildkit-launcher")
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let base = self.base.path().display().to_string();
        for cg in cgroups {
            // Another test's runner may be alive concurrently: only this sandbox's ids count.
            let id = cg.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                !std::path::Path::new(&base).join(&id).exists(),
                "cgroup {} of this sandbox left",
                cg.display()
            );
        }
        let ps = std::process::Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout);
        assert!(
            !ps.lines().any(|l| l.contains("sshd") && l.contains(&base)),
            "an sshd of this sandbox is still running"
        );
        assert!(
            !ps.lines()
                .any(|l| l.contains("bkl-runner-stats") && l.contains(&base)),
            "a memory sampler of this sandbox is still running"
        );
        assert_no_daemon_or_mount(self.base.path());
    }
}

/// No cgroup of runner `id` is left in any cgroup v1 hierarchy (its memory cgroup, and what
/// runc made below `buildkit-launcher/<id>` for build containers in the others).
pub fn assert_no_cgroups(id: &str) {
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let cg = hierarchy.path().join("buildkit-launcher").join(id);
        assert!(!cg.exists(), "cgroup {} left", cg.display());
    }
}

/// No buildkitd or runc container of runners under `base` runs, and nothing is mounted there.
pub fn assert_no_daemon_or_mount(base: &std::path::Path) {
    let base = base.display().to_string();
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    for line in ps.lines() {
        assert!(
            !((line.contains("buildkitd") || line.contains("runc")) && line.contains(&base)),
            "still running: {line}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mounts.lines() {
        assert!(
            line.split(' ').nth(4).is_none_or(|p| !p.starts_with(&base)),
            "still mounted: {line}"
        );
    }
}

/// Destroys a runner when dropped, so a failing test leaves nothing behind.
pub struct RunnerGuard<'a> {
    pub sandbox: &'a Sandbox,
    pub id: String,
}

impl Drop for RunnerGuard<'_> {
    fn drop(&mut self) {
        let _ = self.sandbox.provider.teardown(&self.id);
    }
}
