//! A sandbox runner's own buildkitd: the real BuildKit daemon, set up the way the golden image
//! sets it up and started inside the runner's memory cgroup.
//!
//! 1. The golden image's files (`golden-image/`, compiled in, and the rendered `buildkitd.toml`
//!    with its `registry-ca/` files) are written to `<dir>/golden/` and
//!    `provision.sh` runs with `BKL_ROOT=<dir>/root`: it installs `buildkitd.toml` as
//!    `<root>/etc/buildkit/buildkitd.toml`, the units and `bkl-runner-stats` under the root, and
//!    finds BuildKit already installed in `<root>/usr/local/bin` (links to this machine's
//!    buildctl and buildkitd, put there by `scripts/install-deps`), so nothing is downloaded. The
//!    pin it reads names the version this machine has; everything else is the golden image's.
//! 2. `buildkitd.toml` is rendered from the launcher config's `buildkitd` settings exactly as
//!    a bake renders it (`crate::config::buildkitd_toml`), with two differences: build
//!    containers go under the runner's memory cgroup (`defaultCgroupParent`), so the tier's
//!    memory limit applies to the build, and CA files are named under the sandbox's root.
//! 3. buildkitd starts with that config and its own root, socket and trace socket under
//!    `<root>`, Debian's runc (`--oci-worker-binary`; the release tarball's buildkit-runc is not
//!    installed), snapshotter `auto`, host networking (no CNI config), and on a runner standing
//!    in for an ARM server `--oci-worker-platform linux/arm64` (its worker claims that platform;
//!    a build without RUN steps for it needs no emulation).
//!
//! The launcher then talks to it exactly as to a Hetzner runner's: `buildctl` over SSH (the
//! runner's sshd sets `BUILDKIT_HOST` to this socket), the readiness wait, the metadata file.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{CGROUP_ROOT, LocalProvider, host_arch, runner_tool};
use crate::config::BuildkitdSettings;
use crate::config::buildkitd_toml::{self, Target};
use crate::provider::ProviderError;

/// The golden image's files, as `provision.sh` expects to find them beside itself.
const GOLDEN_FILES: [(&str, &str, u32); 6] = [
    (
        "provision.sh",
        include_str!("../../../golden-image/provision.sh"),
        0o755,
    ),
    (
        "buildkit.service",
        include_str!("../../../golden-image/buildkit.service"),
        0o644,
    ),
    (
        "bkl-runner-stats.service",
        include_str!("../../../golden-image/bkl-runner-stats.service"),
        0o644,
    ),
    (
        "ssh-oom.conf",
        include_str!("../../../golden-image/ssh-oom.conf"),
        0o644,
    ),
    (
        "bkl-runner-stats",
        include_str!("../../../golden-image/bkl-runner-stats"),
        0o755,
    ),
    (
        "buildkit.pin",
        include_str!("../../../golden-image/buildkit.pin"),
        0o644,
    ),
];

/// Debian's runc (`apt-get install runc`; scripts/install-deps).
pub const RUNC: &str = "/usr/sbin/runc";

/// Where a runner's buildkitd listens.
pub fn socket(root: &Path) -> PathBuf {
    root.join("run/buildkit/buildkitd.sock")
}

/// `BUILDKIT_HOST` for buildctl on the runner.
pub fn buildkit_host(root: &Path) -> String {
    format!("unix://{}", socket(root).display())
}

/// The BuildKit version of an installed `buildkitd` (`buildkitd --version` prints
/// `buildkitd github.com/moby/buildkit v0.32.2 <commit>`).
pub fn version(buildkitd: &Path) -> Result<String, String> {
    let out = Command::new(buildkitd)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", buildkitd.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(2)
        .filter(|v| v.starts_with('v'))
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "{} --version printed no version: {:?}",
                buildkitd.display(),
                text.trim()
            )
        })
}

/// Provision `root` from the golden image's files and the buildkitd.toml rendered from
/// `settings` for this sandbox; returns the config's path. `buildctl` and `buildkitd` are this
/// machine's.
pub fn provision(
    dir: &Path,
    root: &Path,
    buildctl: &Path,
    buildkitd: &Path,
    cgroup_parent: &str,
    settings: &BuildkitdSettings,
) -> Result<PathBuf, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let golden = dir.join("golden");
    fs::create_dir_all(&golden).map_err(|e| io("create golden/", e))?;
    for (name, text, mode) in GOLDEN_FILES {
        let path = golden.join(name);
        fs::write(&path, text).map_err(|e| io(name, e))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(|e| io(name, e))?;
    }
    let root_text = root
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", root.display()))?;
    let rendered = buildkitd_toml::render(
        settings,
        Target {
            root: root_text,
            cgroup_parent,
        },
    )
    .map_err(|e| e.to_string())?;
    fs::write(golden.join("buildkitd.toml"), &rendered.text)
        .map_err(|e| io("buildkitd.toml", e))?;
    if !rendered.ca_files.is_empty() {
        let cas = golden.join("registry-ca");
        fs::create_dir_all(&cas).map_err(|e| io("create golden/registry-ca/", e))?;
        for ca in &rendered.ca_files {
            fs::write(cas.join(&ca.name), &ca.contents).map_err(|e| io(&ca.name, e))?;
        }
    }
    let version = version(buildkitd)?;
    // The golden pin with this machine's version: provision.sh then finds BuildKit installed.
    let pin = GOLDEN_FILES[5]
        .1
        .lines()
        .map(|l| {
            if l.starts_with("BUILDKIT_VERSION=") {
                format!("BUILDKIT_VERSION={version}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(golden.join("sandbox.pin"), pin + "\n").map_err(|e| io("sandbox.pin", e))?;
    let bin = root.join("usr/local/bin");
    fs::create_dir_all(&bin).map_err(|e| io("create usr/local/bin", e))?;
    for (name, target) in [("buildctl", buildctl), ("buildkitd", buildkitd)] {
        let link = bin.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).map_err(|e| io(name, e))?;
    }
    let out = Command::new("/bin/bash")
        .arg(golden.join("provision.sh"))
        .arg(golden.join("sandbox.pin"))
        .env_clear()
        .envs(crate::environment::for_child())
        .env("BKL_ROOT", root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io("run provision.sh", e))?;
    let _ = fs::write(
        dir.join("provision.log"),
        [out.stdout.as_slice(), out.stderr.as_slice()].concat(),
    );
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "golden-image/provision.sh failed: {}",
            stderr.lines().last().unwrap_or("no output")
        ));
    }
    Ok(root.join("etc/buildkit/buildkitd.toml"))
}

/// The environment variable that delays every sandbox runner's buildkitd by this many seconds
/// (the process starts at once, in the runner's cgroup, and becomes buildkitd after the delay):
/// the tests' daemon that is late, or never ready within the launcher's wait.
pub const START_AFTER_ENV: &str = "BKL_LOCAL_BUILDKITD_START_AFTER_S";

/// The environment variable whose words (split at whitespace) are appended to every sandbox
/// runner's buildkitd command line: the tests' daemon that will not start
/// (`--oci-worker-snapshotter=bogus`).
pub const EXTRA_ARGS_ENV: &str = "BKL_LOCAL_BUILDKITD_ARGS";

/// How a runner's buildkitd that exited is worded: its exit status and the last meaningful
/// line of its log, escaped and cut (the log goes with the runner's directory).
pub fn exited(status: std::process::ExitStatus, log: &str) -> String {
    let line = last_meaningful_line(log).unwrap_or("its log is empty");
    let mut line = crate::text::escape_controls(line);
    if line.chars().count() > 300 {
        line = line.chars().take(300).collect::<String>() + "…";
    }
    format!("buildkitd exited ({status}) before it listed a worker: {line}")
}

/// The line of a buildkitd log that says why it ended: the last `buildkitd: …` line (its
/// fatal error; a Go stack trace follows it), else the last `level=fatal`/`level=error`
/// entry, else the last line that is not a stack frame (frames are a symbol without spaces,
/// or an indented file position).
fn last_meaningful_line(log: &str) -> Option<&str> {
    let lines: Vec<&str> = log.lines().map(str::trim_end).collect();
    let last = |f: &dyn Fn(&str) -> bool| lines.iter().rev().copied().find(|l| f(l));
    last(&|l| l.starts_with("buildkitd: "))
        .or_else(|| last(&|l| l.contains("level=fatal") || l.contains("level=error")))
        .or_else(|| {
            last(&|l| !l.is_empty() && !l.starts_with(char::is_whitespace) && l.contains(' '))
        })
}

/// Start buildkitd in its own process group, `delay_s` seconds late when set, with `extra`
/// arguments last. `cgroup_procs` is the runner's cgroup's `cgroup.procs`: the child joins it
/// before it execs, so buildkitd's first allocation, and everything it or the delay's shell
/// starts, is charged there.
#[allow(clippy::too_many_arguments)]
pub fn start(
    dir: &Path,
    root: &Path,
    buildkitd: &Path,
    config: &Path,
    platform: Option<&str>,
    delay_s: Option<u32>,
    extra: &[String],
    cgroup_procs: &Path,
) -> Result<Child, String> {
    let log = fs::File::create(dir.join("buildkitd.log"))
        .map_err(|e| format!("open buildkitd.log: {e}"))?;
    let state = root.join("var/lib/buildkit");
    let run = root.join("run/buildkit");
    fs::create_dir_all(&state).map_err(|e| format!("create {}: {e}", state.display()))?;
    fs::create_dir_all(&run).map_err(|e| format!("create {}: {e}", run.display()))?;
    let mut cmd = match delay_s {
        Some(delay) => {
            let mut sh = Command::new("/bin/sh");
            sh.arg("-c")
                .arg(format!("sleep {delay}; exec \"$0\" \"$@\""))
                .arg(buildkitd);
            sh
        }
        None => Command::new(buildkitd),
    };
    cmd.env_clear()
        .envs(crate::environment::for_child())
        .env("TMPDIR", dir.join("tmp"))
        .arg("--config")
        .arg(config)
        .arg("--root")
        .arg(&state)
        .arg("--addr")
        .arg(buildkit_host(root))
        .arg("--otel-socket-path")
        .arg(run.join("otel-grpc.sock"))
        .arg("--oci-worker-binary")
        .arg(RUNC);
    if let Some(platform) = platform {
        cmd.arg("--oci-worker-platform").arg(platform);
    }
    cmd.args(extra);
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cgroup_procs)
        .map_err(|e| format!("open {}: {e}", cgroup_procs.display()))?;
    let procs_fd = procs.as_raw_fd();
    // SAFETY: between fork and exec the closure only calls write(2) on a descriptor opened
    // before the fork, with a buffer it owns: async-signal-safe, no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || {
            // "0" is the writing process itself (cgroup v1 and v2 alike).
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| format!("buildkitd.log: {e}"))?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", buildkitd.display()));
    // The child has its own copy (closed at exec: std opens files close-on-exec).
    drop(procs);
    child
}

impl LocalProvider {
    /// The runner's own buildkitd: provisioned from the golden image's files, started, moved
    /// into the runner's memory cgroup (its build containers go below it).
    pub(super) fn start_buildkitd(
        &self,
        id: &str,
        dir: &Path,
        cgroup: &Path,
        arch: crate::config::Arch,
    ) -> Result<(), ProviderError> {
        let fail = |detail: String| ProviderError::Runner {
            id: id.to_owned(),
            action: "start its buildkitd",
            detail,
        };
        let (Some(buildctl), Some(daemon)) =
            (runner_tool(&[], "buildctl"), runner_tool(&[], "buildkitd"))
        else {
            return Err(fail(
                "buildctl or buildkitd is not installed (scripts/install-deps)".into(),
            ));
        };
        let root = dir.join("root");
        let parent = cgroup
            .strip_prefix(Path::new(CGROUP_ROOT).join("memory"))
            .map_err(|_| fail(format!("{} is not a memory cgroup", cgroup.display())))?;
        let config = provision(
            dir,
            &root,
            &buildctl,
            &daemon,
            &parent.display().to_string(),
            &self.buildkitd_settings,
        )
        .map_err(fail)?;
        let platform = (arch.as_str() != host_arch()).then(|| arch.platform());
        // The launcher's environment as it started (it scrubs its own).
        let delay = match crate::environment::var(START_AFTER_ENV) {
            None => None,
            Some(v) => Some(v.parse::<u32>().map_err(|_| {
                fail(format!(
                    "{}={v:?}: not a whole number of seconds",
                    START_AFTER_ENV
                ))
            })?),
        };
        let extra: Vec<String> = crate::environment::var(EXTRA_ARGS_ENV)
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        // The child joins the runner's memory cgroup before it execs (the only hierarchy the
        // runner has a cgroup of its own in; runc makes the build containers' in the others).
        let child = start(
            dir,
            &root,
            &daemon,
            &config,
            platform,
            delay,
            &extra,
            &cgroup.join("cgroup.procs"),
        )
        .map_err(fail)?;
        let pid = child.id();
        self.buildkitd
            .lock()
            .expect("buildkitd table lock")
            .insert(id.to_owned(), child);
        fs::write(dir.join("buildkitd.pid.launcher"), pid.to_string())
            .map_err(|e| fail(format!("record its pid: {e}")))?;
        Ok(())
    }

    /// How runner `id`'s buildkitd ended, if it has (its status and the last meaningful line
    /// of its log), as the error that fails the attempt.
    pub(super) fn buildkitd_exited(&self, id: &str) -> Option<ProviderError> {
        let status = self
            .buildkitd
            .lock()
            .expect("buildkitd table lock")
            .get_mut(id)?
            .try_wait()
            .ok()??;
        let log = fs::read(self.dir(id).join("buildkitd.log")).unwrap_or_default();
        Some(ProviderError::Runner {
            id: id.to_owned(),
            action: "start its buildkitd",
            detail: exited(status, &String::from_utf8_lossy(&log)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn an_exit_names_the_status_and_the_fatal_line_not_the_stack_trace() {
        let log = "time=\"t\" level=info msg=\"auto snapshotter: using overlayfs\"\n\
                   buildkitd: unknown snapshotter name: \"bogus\"\n\
                   main.snapshotterFactory\n\
                   \t/tmp/bk/src/cmd/buildkitd/main_oci_worker.go:460\n\
                   runtime.goexit\n\
                   \t/go/src/runtime/asm_amd64.s:1264\n";
        assert_eq!(
            exited(std::process::ExitStatus::from_raw(1 << 8), log),
            "buildkitd exited (exit status: 1) before it listed a worker: buildkitd: unknown snapshotter name: \"bogus\""
        );
    }

    #[test]
    fn without_a_fatal_line_the_last_error_or_sentence_is_named_escaped_and_cut() {
        let log = "level=error msg=\"a\u{1b}[31m\"\nlevel=info msg=done\n";
        assert_eq!(
            last_meaningful_line(log),
            Some("level=error msg=\"a\u{1b}[31m\"")
        );
        let words = format!("{}\nmain.main\n", "x y".repeat(200));
        let text = exited(std::process::ExitStatus::from_raw(9), &words);
        assert!(text.contains("signal: 9"), "{text}");
        assert!(text.ends_with("…") && text.len() < 400, "{text}");
        assert!(
            exited(std::process::ExitStatus::from_raw(1 << 8), "").ends_with("its log is empty")
        );
        assert!(
            exited(
                std::process::ExitStatus::from_raw(1 << 8),
                "level=error msg=\"\u{1b}x\""
            )
            .contains("\\u{1b}")
        );
    }
}
