//! Destroying a sandbox runner: its sshd, sampler and buildkitd, every process in any of its
//! cgroups (runc's build containers outlive a killed buildkitd), those cgroups in every cgroup
//! v1 hierarchy, the mounts below its directory, the directory and its address claim; then a
//! check that they are gone.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{CGROUP_ROOT, CGROUP_RUNNERS, LocalProvider};
use crate::provider::ProviderError;

impl LocalProvider {
    /// Kill every process of the runner, remove its cgroup, mounts and directory, and confirm.
    ///
    /// Synchronous (it takes well under a second) so that `Drop` guards can call it too.
    pub fn teardown(&self, id: &str) -> Result<(), ProviderError> {
        let err = |action: &'static str, detail: String| ProviderError::Runner {
            id: id.to_owned(),
            action,
            detail,
        };
        let cgroup = self.cgroup(id);
        let dir = self.dir(id);
        let deadline = Instant::now() + Duration::from_secs(10);
        // The sshd was spawned by this process: kill and reap it (no zombie left behind).
        let child = self.sshd.lock().expect("sshd table lock").remove(id);
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        } else if let Some(pid) = fs::read_to_string(dir.join("sshd.pid.launcher"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        // The sampler is outside the cgroup: kill and reap it (it would also end by itself
        // once the cgroup is gone).
        let sampler = self.samplers.lock().expect("sampler table lock").remove(id);
        if let Some(mut sampler) = sampler {
            let _ = sampler.kill();
            let _ = sampler.wait();
        } else if let Some(pid) = fs::read_to_string(dir.join("sampler.pid.launcher"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        // buildkitd first (it would start more containers), then everything in the runner's
        // cgroups: its sshd's sessions, runc's build containers (below it, in every v1
        // hierarchy runc created them in).
        let daemon = self
            .buildkitd
            .lock()
            .expect("buildkitd table lock")
            .remove(id);
        if let Some(mut daemon) = daemon {
            let _ = daemon.kill();
            let _ = daemon.wait();
        } else if let Some(pid) = fs::read_to_string(dir.join("buildkitd.pid.launcher"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let cgroups = runner_cgroups(id);
        loop {
            let pids: Vec<i32> = cgroups
                .iter()
                .flat_map(|cg| {
                    fs::read_to_string(cg.join("cgroup.procs"))
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|l| l.trim().parse().ok())
                        .collect::<Vec<i32>>()
                })
                .collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if Instant::now() > deadline {
                return Err(err(
                    "stop its processes",
                    format!("processes still in {} after 10 s", cgroup.display()),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Deepest first: a cgroup with children cannot be removed.
        for cg in &cgroups {
            while let Err(e) = fs::remove_dir(cg) {
                if !cg.exists() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(err("remove its cgroups", format!("{}: {e}", cg.display())));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        unmount_below(&dir);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| err("remove its directory", e.to_string()))?;
        }
        self.release_address(id);
        if cgroup.exists() || dir.exists() || !runner_cgroups(id).is_empty() {
            return Err(err(
                "confirm it is gone",
                "its cgroup or directory is still there".into(),
            ));
        }
        Ok(())
    }
}

/// Every cgroup of runner `id` in every cgroup v1 hierarchy (the memory cgroup the provider
/// made, and what runc made for build containers below `buildkit-launcher/<id>` in the
/// others), deepest first.
fn runner_cgroups(id: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&entry.path(), out);
                }
            }
        }
        out.push(dir.to_owned());
    }
    let mut out = Vec::new();
    let Ok(hierarchies) = fs::read_dir(CGROUP_ROOT) else {
        return out;
    };
    for hierarchy in hierarchies.flatten() {
        let top = hierarchy.path().join(CGROUP_RUNNERS).join(id);
        if top.is_dir() {
            walk(&top, &mut out);
        }
    }
    out
}

/// Detach anything mounted under `dir` (a killed build tool can leave bind mounts behind).
fn unmount_below(dir: &Path) {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
}
