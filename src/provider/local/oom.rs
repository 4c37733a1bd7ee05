//! OOM evidence for a sandbox runner on cgroup v1 that survives the build container.
//!
//! With the real BuildKit the build runs in a runc container cgroup below the runner's memory
//! cgroup. When the runner's limit is hit the kernel kills a process there, and cgroup v1
//! counts the kill (`oom_kill` in `memory.oom_control`) only in the victim's own cgroup, which
//! runc removes as soon as the step ends; the runner's cgroup keeps no count (cgroup v2's
//! `memory.events` is hierarchical and needs none of this). What cgroup v1 does offer is the
//! OOM notifier of the cgroup whose limit was hit (Documentation/admin-guide/cgroup-v1/
//! memory.rst, "OOM Control"): an eventfd registered through `cgroup.event_control` for the
//! runner's `memory.oom_control` is signalled each time the OOM killer runs for the runner's
//! limit, whichever descendant the victim lives in.
//!
//! [`watch`] registers one and counts the events into a file that the runner's
//! `bkl-runner-stats` adds to `oom_kills` (`BKL_STATS_OOM_EVENTS`). The eventfd is also
//! signalled when the cgroup is removed; the watcher then ends.

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

/// Register an OOM notifier on `cgroup` (cgroup v1) and count its events into `counter`
/// (a decimal number, rewritten on every event; `0` until the first). A cgroup without
/// `memory.oom_control` (cgroup v2) gets no watcher.
pub fn watch(cgroup: &Path, counter: &Path) -> std::io::Result<()> {
    let control = cgroup.join("memory.oom_control");
    if !control.exists() {
        return Ok(());
    }
    fs::write(counter, "0\n")?;
    // SAFETY: eventfd(2) with valid flags; the returned descriptor is owned by the File below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: efd is a fresh descriptor nothing else owns.
    let mut events = unsafe { fs::File::from_raw_fd(efd) };
    let oom_control = fs::File::open(&control)?;
    fs::write(
        cgroup.join("cgroup.event_control"),
        format!("{} {}", events.as_raw_fd(), oom_control.as_raw_fd()),
    )?;
    let cgroup: PathBuf = cgroup.to_owned();
    let counter: PathBuf = counter.to_owned();
    std::thread::Builder::new()
        .name("oom-watch".into())
        .spawn(move || {
            let _keep = oom_control;
            let mut total: u64 = 0;
            let mut buf = [0u8; 8];
            while events.read_exact(&mut buf).is_ok() {
                // Removal of the cgroup signals the eventfd too: that is the end.
                if !cgroup.exists() {
                    break;
                }
                total += u64::from_ne_bytes(buf);
                let _ = fs::write(&counter, format!("{total}\n"));
            }
        })?;
    Ok(())
}
