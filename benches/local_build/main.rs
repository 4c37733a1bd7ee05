//! Benchmarks of local builds (`build --provider local`). A benchmark, not a test: it asserts
//! nothing about time; it prints Markdown tables for docs/PERFORMANCE.md on stdout and its
//! progress on stderr.
//!
//!   cargo bench --bench local_build              # both parts, as root
//!   cargo bench --bench local_build -- overhead  # only part 1
//!   cargo bench --bench local_build -- sync      # only part 2
//!
//! Needs root, sshd, ssh, rsync, tar, buildah, docker-registry, busybox-static and curl
//! (scripts/install-deps) and the cgroup v1 memory controller, as the local provider does.
//!
//! 1. Launcher overhead per build, by phase: a throwaway registry (`scripts/local-registry`)
//!    holding the base image (`scripts/prepare-base-image`), then [`BUILDS`] runs of the
//!    release binary, `build --provider local --backend buildah`, on a copy of examples/hello
//!    whose base image comes from that registry. Reported: the median of each phase of the
//!    run report (`seconds: {spawn, ssh, sync, build, destroy}`), the wall time, and the
//!    launcher's overhead (wall time − build) as a share of the wall time.
//! 2. Context sync throughput: a 200 MB, 2,000-file context of incompressible bytes sent to
//!    one sandbox runner (created through the library), [`ROUNDS`] rounds (or
//!    `LOCAL_BUILD_ROUNDS`), each method in turn into a fresh directory: the launcher's way
//!    (`context_entries` + `Connection::sync`, i.e. rsync over the SSH master connection)
//!    against `tar -cf - | ssh … tar -xf -` through the same master connection, plus rsync with
//!    other flags, so a change of flags can be judged on numbers. Two targets: the runner's
//!    work directory (what a build uses) and tmpfs (/dev/shm), which takes the disk out of the
//!    comparison; two reference rows show the SSH channel alone and the writes alone. Target:
//!    the launcher's throughput at least 0.9 × that of tar|ssh.
//!
//! Everything it starts is stopped and everything it creates is removed, also when a step
//! fails (Drop guards) and on SIGINT/SIGTERM (it stops after the current step; a running
//! launcher is sent SIGTERM and destroys its own runner). Built and run by
//! `cargo test --all-targets` (no `--bench` argument), it does nothing.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use buildkit_launcher::config::{Arch, Tier};
use buildkit_launcher::provider::cloud_init::UserData;
use buildkit_launcher::provider::keys::BuildKeys;
use buildkit_launcher::provider::local::LocalProvider;
use buildkit_launcher::provider::{Lease, Provider, RunnerSpec, labels};
use buildkit_launcher::transport::dockerignore::context_entries;
use buildkit_launcher::transport::session::{ConnectPolicy, Connection, shell_quote};
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_buildkit-launcher");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Launcher runs in part 1.
const BUILDS: usize = 5;
/// Transfers per method in part 2.
const ROUNDS: usize = 3;
const CONTEXT_FILES: usize = 2_000;
/// 200 MB (10^6 bytes, as every MB here).
const CONTEXT_BYTES: u64 = 200_000_000;
/// The launcher's sync throughput ÷ that of tar|ssh, at least.
const SYNC_TARGET: f64 = 0.9;
const PHASES: [&str; 5] = ["spawn", "ssh", "sync", "build", "destroy"];
/// rsync flag sets tried besides the launcher's own (`--archive --from0 --files-from=-
/// --numeric-ids --stats`); a set this rsync rejects is reported as such.
const RSYNC_VARIANTS: [&[&str]; 4] = [
    &[],
    &["--whole-file"],
    &["--whole-file", "--inplace"],
    &["--whole-file", "--checksum-choice=none"],
];

/// Set by SIGINT/SIGTERM: stop after the current step, through the Drop guards.
static STOP: AtomicBool = AtomicBool::new(false);
/// The launcher process running right now (0: none), which a signal is forwarded to.
static CHILD: AtomicI32 = AtomicI32::new(0);

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        eprintln!(
            "local_build: a benchmark, not a test; run it as root with `cargo bench --bench local_build`"
        );
        return ExitCode::SUCCESS;
    }
    let only = |part: &str| args.iter().any(|a| a == part);
    let (overhead, sync) = match (only("overhead"), only("sync")) {
        (false, false) => (true, true),
        chosen => chosen,
    };
    if let Err(e) = preflight() {
        eprintln!("local_build: {e:#}");
        return ExitCode::from(2);
    }
    watch_signals();
    match run(overhead, sync).await {
        Ok(markdown) => {
            print!("{markdown}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("local_build: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(overhead: bool, sync: bool) -> Result<String> {
    let mut out = String::new();
    writeln!(out, "Machine: {}\n", machine())?;
    if overhead {
        let runs = overhead_runs().await?;
        out.push_str(&overhead_table(&runs));
        out.push('\n');
    }
    if sync {
        let results = sync_runs().await?;
        out.push_str(&sync_tables(&results));
    }
    Ok(out)
}

fn progress(line: &str) {
    eprintln!("local_build: {line}");
}

fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted by a signal; cleaned up");
    }
    Ok(())
}

fn watch_signals() {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            progress("signal received: stopping after the current step and cleaning up");
            STOP.store(true, Ordering::SeqCst);
            let pid = CHILD.load(Ordering::SeqCst);
            if pid > 0 {
                // The launcher cancels its build and destroys its runner on SIGTERM.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    });
}

fn preflight() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "needs root (the local provider starts an sshd per runner and creates memory cgroups); run `sudo -E cargo bench --bench local_build` or as root"
    );
    LocalProvider::check_host()?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = [
        "ssh",
        "rsync",
        "tar",
        "bash",
        "buildah",
        "docker-registry",
        "curl",
    ]
    .into_iter()
    .filter(|tool| !std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
    .collect();
    ensure!(
        missing.is_empty(),
        "missing {} (scripts/install-deps)",
        missing.join(", ")
    );
    Ok(())
}

/// Cores, memory, OS, kernel and the tool versions the figures depend on.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let os = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown OS".into());
    let first_line = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_else(|| format!("{program}: not found"))
    };
    let rsync = first_line("rsync", &["--version"]);
    let rsync = rsync
        .split_whitespace()
        .nth(2)
        .map_or(rsync.clone(), |v| format!("rsync {v}"));
    let ssh = first_line("ssh", &["-V"]);
    let ssh = ssh.split(',').next().unwrap_or(&ssh).to_owned();
    format!(
        "{cores} cores, {mem_gib:.0} GiB, {os}, kernel {}; {rsync}, {ssh}, {}",
        first_line("uname", &["-r"]),
        first_line("buildah", &["--version"])
            .split(" (")
            .next()
            .unwrap_or("buildah")
    )
}

mod overhead;
mod sync;
mod transfer;

use overhead::*;
use sync::*;
use transfer::*;

fn mb_per_s(seconds: f64) -> f64 {
    CONTEXT_BYTES as f64 / 1e6 / seconds
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}
