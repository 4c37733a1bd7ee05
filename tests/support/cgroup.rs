//! A throwaway cgroup v1 memory cgroup for tests that need a real OOM kill (how the launcher
//! reads one: docs/design/runner.md, "Peak memory (bkl-runner-stats)" and "OOM evidence on
//! cgroup v1"); removed on drop, after its processes are killed.

use std::path::PathBuf;
use std::sync::atomic::AtomicU32;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A cgroup v1 memory cgroup with a limit, removed on drop (after its processes have exited).
pub struct MemoryCgroup {
    pub path: PathBuf,
}

impl MemoryCgroup {
    pub fn new(mib: u64) -> MemoryCgroup {
        let path = PathBuf::from(format!(
            "/sys/fs/cgroup/memory/bkl-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).expect("create a memory cgroup (cgroup v1)");
        let bytes = (mib * 1024 * 1024).to_string();
        std::fs::write(path.join("memory.limit_in_bytes"), &bytes).unwrap();
        let memsw = path.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            std::fs::write(memsw, &bytes).unwrap();
        }
        MemoryCgroup { path }
    }

    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.path.join("memory.oom_control"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .map_or(0, |n| n.trim().parse().unwrap())
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        eprintln!("could not remove {}", self.path.display());
    }
}
