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

// ---------------------------------------------------------------------------------------------
// Part 1: launcher overhead per build, by phase.

/// A throwaway registry from `scripts/local-registry`, stopped and removed on drop.
struct Registry {
    dir: tempfile::TempDir,
    addr: String,
}

impl Registry {
    async fn start() -> Result<Registry> {
        // The guard exists before the registry does: stopping one that never started is a
        // no-op, and one that started is stopped whatever fails next.
        let mut registry = Registry {
            dir: tempfile::Builder::new()
                .prefix("bkl-bench-registry-")
                .tempdir_in("/var/tmp")
                .context("create the registry's directory")?,
            addr: String::new(),
        };
        let mut last = String::new();
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let out = Command::new(script("local-registry"))
                .arg("start")
                .arg(port.to_string())
                .arg(registry.dir.path())
                .stdin(Stdio::null())
                .output()
                .await
                .context("run scripts/local-registry")?;
            if out.status.success() {
                registry.addr = format!("127.0.0.1:{port}");
                progress(last_line(&out.stdout));
                return Ok(registry);
            }
            last = last_line(&out.stderr).to_owned();
        }
        bail!("scripts/local-registry start failed: {last}")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        match std::process::Command::new(script("local-registry"))
            .arg("stop")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => progress(last_line(&out.stdout)),
            Ok(out) => progress(&format!(
                "warning: scripts/local-registry stop failed: {}",
                last_line(&out.stderr)
            )),
            Err(e) => progress(&format!(
                "warning: cannot run scripts/local-registry stop: {e}"
            )),
        }
        // The directory (config, log, blobs) goes when the TempDir field drops, after this.
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(REPO).join("scripts").join(name)
}

fn last_line(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes)
        .unwrap_or("(not UTF-8)")
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
}

/// One launcher run: the phases of its report (summed over attempts) and its wall time.
struct BuildRun {
    phases: [f64; 5],
    wall: f64,
}

async fn overhead_runs() -> Result<Vec<BuildRun>> {
    progress("part 1: launcher overhead per build on the local provider");
    let registry = Registry::start().await?;
    check_stop()?;
    let out = Command::new(script("prepare-base-image"))
        .arg(&registry.addr)
        .stdin(Stdio::null())
        .output()
        .await
        .context("run scripts/prepare-base-image")?;
    ensure!(
        out.status.success(),
        "scripts/prepare-base-image failed: {}",
        last_line(&out.stderr)
    );
    progress(last_line(&out.stdout));

    let work = tempfile::Builder::new()
        .prefix("bkl-bench-build-")
        .tempdir_in("/var/tmp")
        .context("create a work directory")?;
    let context = hello_context(work.path(), &registry.addr)?;
    let runners = work.path().join("runners");
    let home = work.path().join("home");
    fs::create_dir_all(&runners)?;
    fs::create_dir_all(&home)?;

    let mut runs = Vec::new();
    for n in 1..=BUILDS {
        check_stop()?;
        let report = work.path().join(format!("report-{n}.json"));
        let mut cmd = Command::new(BIN);
        cmd.args(["build", "--provider", "local", "--local-dir"])
            .arg(&runners)
            .args(["--history", "none", "--backend", "buildah", "--context"])
            .arg(&context)
            .args([
                "--registry",
                &registry.addr,
                "--insecure-registry",
                "--report",
            ])
            .arg(&report)
            .env("HOME", &home)
            .env("XDG_STATE_HOME", home.join("state"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Nothing from the calling environment may change the build (CI variables, a config,
        // registry credentials).
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CI_")
                || key.starts_with("PLUGIN_")
                || key.starts_with("BUILDKIT_LAUNCHER")
                || key.starts_with("REGISTRY_")
            {
                cmd.env_remove(key.as_ref());
            }
        }
        let started = Instant::now();
        let child = cmd.spawn().context("start the launcher")?;
        CHILD.store(
            child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .unwrap_or(0),
            Ordering::SeqCst,
        );
        let output = child.wait_with_output().await;
        CHILD.store(0, Ordering::SeqCst);
        let wall = started.elapsed().as_secs_f64();
        let output = output.context("wait for the launcher")?;
        let run = read_report(&report, wall).with_context(|| {
            format!(
                "build {n}/{BUILDS} ({}): {}",
                output.status,
                last_line(&output.stderr)
            )
        })?;
        ensure!(
            output.status.success(),
            "build {n}/{BUILDS} exited with {}: {}",
            output.status,
            last_line(&output.stderr)
        );
        progress(&format!(
            "build {n}/{BUILDS}: {wall:.2} s wall; spawn {:.2}, ssh {:.2}, sync {:.2}, build {:.2}, destroy {:.2} s",
            run.phases[0], run.phases[1], run.phases[2], run.phases[3], run.phases[4]
        ));
        runs.push(run);
    }
    let left: Vec<_> = fs::read_dir(&runners)?
        .flatten()
        .map(|e| e.path())
        .collect();
    ensure!(left.is_empty(), "runner directories left behind: {left:?}");
    Ok(runs)
}

/// A copy of examples/hello (named `hello`, so the image and history key are the example's)
/// whose Dockerfile's `ARG BASE` points at `registry`.
fn hello_context(work: &Path, registry: &str) -> Result<PathBuf> {
    let source = Path::new(REPO).join("examples/hello");
    let context = work.join("hello");
    fs::create_dir(&context)?;
    for entry in fs::read_dir(&source)? {
        let entry = entry?;
        ensure!(
            entry.file_type()?.is_file(),
            "examples/hello holds more than files: {}",
            entry.path().display()
        );
        let to = context.join(entry.file_name());
        if entry.file_name() == "Dockerfile" {
            let text = fs::read_to_string(entry.path())?;
            let base = format!("ARG BASE={registry}/base/busybox:latest");
            let mut found = false;
            let rewritten: Vec<&str> = text
                .lines()
                .map(|l| {
                    if l.starts_with("ARG BASE=") {
                        found = true;
                        base.as_str()
                    } else {
                        l
                    }
                })
                .collect();
            ensure!(found, "examples/hello/Dockerfile has no `ARG BASE=` line");
            fs::write(&to, rewritten.join("\n") + "\n")?;
        } else {
            fs::copy(entry.path(), &to)?;
        }
    }
    Ok(context)
}

fn read_report(path: &Path, wall: f64) -> Result<BuildRun> {
    let text = fs::read_to_string(path).context("no run report was written")?;
    let report: serde_json::Value = serde_json::from_str(&text).context("read the run report")?;
    ensure!(
        report["outcome"] == "success",
        "outcome {}: {}",
        report["outcome"],
        report["error"].as_str().unwrap_or("no error message")
    );
    let attempts = report["attempts"].as_array().context("no attempts")?;
    if attempts.len() != 1 {
        progress(&format!(
            "note: {} attempts (phases summed over them)",
            attempts.len()
        ));
    }
    let mut phases = [0.0; 5];
    for attempt in attempts {
        ensure!(
            attempt["destroyed"] == true,
            "runner {} not destroyed",
            attempt["runner"]
        );
        for (sum, name) in phases.iter_mut().zip(PHASES) {
            *sum += attempt["seconds"][name]
                .as_f64()
                .with_context(|| format!("no seconds.{name} in the report"))?;
        }
    }
    Ok(BuildRun { phases, wall })
}

fn overhead_table(runs: &[BuildRun]) -> String {
    let labels = [
        "spawn (runner created, sshd listening)",
        "ssh (master connection, host key verified)",
        "sync (context listed and sent)",
        "build (`buildah bud` + push)",
        "destroy (runner killed, removed, confirmed)",
    ];
    let wall = median(runs.iter().map(|r| r.wall));
    let mut out = format!(
        "Launcher overhead per build (`build --provider local --backend buildah`, examples/hello; \
         {} builds, medians):\n\n\
         | phase | median | min – max | share of median wall time |\n|---|---|---|---|\n",
        runs.len()
    );
    let mut row = |label: &str, values: Vec<f64>| {
        let m = median(values.iter().copied());
        let (lo, hi) = min_max(&values);
        let _ = writeln!(
            out,
            "| {label} | {m:.2} s | {lo:.2} – {hi:.2} s | {:.0} % |",
            100.0 * m / wall
        );
    };
    for (i, label) in labels.iter().enumerate() {
        row(label, runs.iter().map(|r| r.phases[i]).collect());
    }
    row(
        "rest (outside the phases: plan, runner directory query, tag verification, process start and exit)",
        runs.iter()
            .map(|r| r.wall - r.phases.iter().sum::<f64>())
            .collect(),
    );
    row("**wall time**", runs.iter().map(|r| r.wall).collect());
    row(
        "**launcher overhead** (wall time − build)",
        runs.iter().map(|r| r.wall - r.phases[3]).collect(),
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Part 2: context sync throughput.

/// Destroys the sandbox runner when dropped, whatever happened.
struct RunnerGuard<'a> {
    provider: &'a LocalProvider,
    id: String,
}

impl Drop for RunnerGuard<'_> {
    fn drop(&mut self) {
        match self.provider.teardown(&self.id) {
            Ok(()) => progress(&format!("runner {} destroyed", self.id)),
            Err(e) => progress(&format!("warning: {e}")),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Method {
    /// `context_entries` + `Connection::sync`.
    Launcher,
    /// `tar -cf - | ssh 'tar -xf -'` through the master connection.
    Tar,
    /// The same tar, fed the launcher's entry list (`context_entries`, timed as the launcher's).
    TarList,
    /// rsync as `Connection::sync` runs it, with extra flags (index into RSYNC_VARIANTS).
    Rsync(usize),
    /// Reference: `tar -cf - | tar -xf -` into the target, the writes without SSH.
    LocalTar,
    /// Reference: `tar -cf - | ssh 'cat > /dev/null'`, the SSH channel without the writes.
    SshOnly,
}

impl Method {
    fn slug(self) -> String {
        match self {
            Method::Launcher => "launcher".into(),
            Method::Tar => "tar".into(),
            Method::TarList => "tarlist".into(),
            Method::Rsync(i) => format!("rsync{i}"),
            Method::LocalTar => "localtar".into(),
            Method::SshOnly => "sshonly".into(),
        }
    }

    fn label(self) -> String {
        match self {
            Method::Launcher => "launcher (context_entries + Connection::sync)".into(),
            Method::Tar => "tar | ssh".into(),
            Method::TarList => "context_entries + tar -T - | ssh".into(),
            Method::Rsync(0) => "rsync, the launcher's flags".into(),
            Method::Rsync(i) => format!("rsync + {}", RSYNC_VARIANTS[i].join(" ")),
            Method::LocalTar => "reference: tar | tar, no ssh".into(),
            Method::SshOnly => "reference: tar | ssh cat > /dev/null".into(),
        }
    }
}

/// Where the transfers go, and the seconds each method took there, one per round.
struct Target {
    name: String,
    /// For progress lines.
    short: &'static str,
    dir: String,
    methods: Vec<Method>,
    /// Per method (same order): seconds per round; `None` once this rsync rejected the flags.
    seconds: Vec<Option<Vec<f64>>>,
    /// `context_entries`, per launcher round.
    listing: Vec<f64>,
}

impl Target {
    fn new(name: String, short: &'static str, dir: String, with_ssh_only: bool) -> Target {
        let mut methods = vec![Method::Launcher, Method::Tar];
        methods.extend((0..RSYNC_VARIANTS.len()).map(Method::Rsync));
        methods.push(Method::TarList);
        methods.push(Method::LocalTar);
        if with_ssh_only {
            methods.push(Method::SshOnly);
        }
        Target {
            name,
            short,
            dir,
            seconds: vec![Some(Vec::new()); methods.len()],
            methods,
            listing: Vec::new(),
        }
    }

    fn of(&self, method: Method) -> Option<&[f64]> {
        let i = self.methods.iter().position(|m| *m == method)?;
        self.seconds[i].as_deref().filter(|s| !s.is_empty())
    }
}

struct SyncResults {
    targets: Vec<Target>,
    ssh_via: &'static str,
    rounds: usize,
}

async fn sync_runs() -> Result<SyncResults> {
    progress("part 2: context sync throughput, launcher vs tar|ssh");
    let context_dir = tempfile::Builder::new()
        .prefix("bkl-bench-context-")
        .tempdir_in("/var/tmp")
        .context("create the context directory")?;
    let context = context_dir.path().join("context");
    let started = Instant::now();
    generate_context(&context)?;
    // Written back now, so that no transfer pays for the generator's dirty pages.
    std::process::Command::new("sync").status()?;
    progress(&format!(
        "context generated: {CONTEXT_FILES} files, {CONTEXT_BYTES} bytes in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    check_stop()?;
    // A second target on tmpfs takes the disk out: what is left is SSH and the copying tool.
    let shm = tempfile::Builder::new()
        .prefix("bkl-bench-")
        .tempdir_in("/dev/shm")
        .context("create a directory in /dev/shm")?;

    let base = tempfile::Builder::new()
        .prefix("bkl-bench-runner-")
        .tempdir_in("/var/tmp")
        .context("create the runners directory")?;
    // Memory scale 1: the runner's cgroup is the whole tier (4 GiB), so the 200 MB written
    // into its page cache (or tmpfs) is not squeezed by the limit test builds get (÷ 16).
    let provider = LocalProvider::new(base.path().to_owned(), 1, Vec::new());
    let lease = Lease::new(3600);
    let keys = BuildKeys::generate(&lease.id)?;
    let tier = Tier {
        name: "bench".into(),
        vcpus: 2,
        memory_mib: 4096,
        disk_gb: 40,
        price_eur_per_hour: None,
    };
    let spec = RunnerSpec {
        name: format!("bkl-bench-{}", lease.id),
        labels: labels(&lease, "bench/local-build", &tier.name),
        lease,
        tier,
        arch: Arch::Amd64,
        user_data: UserData::for_build(&keys).render(),
    };
    let id = provider.create(&spec).await?;
    let _guard = RunnerGuard {
        provider: &provider,
        id: id.clone(),
    };
    let runner = provider.wait_ready(&id).await?;
    let mut log = |line: String| progress(&line);
    let conn = Connection::connect(
        &runner,
        &keys.client.private_openssh,
        &keys.host.public_openssh,
        ConnectPolicy::default(),
        &mut log,
    )
    .await?;
    progress(&format!("runner {id} up at {}", conn.address()));
    let mut targets = vec![
        Target::new(
            format!("the runner's work directory ({})", fs_type(&runner.workdir)),
            "disk",
            runner.workdir.clone(),
            true,
        ),
        Target::new(
            format!("{} (/dev/shm)", fs_type("/dev/shm")),
            "shm",
            shm.path().display().to_string(),
            false,
        ),
    ];
    let result = measure(&conn, &runner.host, &context, &mut targets).await;
    conn.close().await;
    let ssh_via = result?;
    Ok(SyncResults {
        targets,
        ssh_via,
        rounds: rounds(),
    })
    // The runner is destroyed (guard), then its base, /dev/shm's directory and the context
    // are removed.
}

/// The file system type of `path`: that of the longest mount point above it.
fn fs_type(path: &str) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .enumerate()
        .filter_map(|(n, l)| {
            let mut fields = l.split(' ');
            let point = fields.nth(1)?.replace("\\040", " ");
            let kind = fields.next()?;
            // The longest mount point wins; at the same point, the later mount.
            path.starts_with(&point)
                .then(|| ((point.len(), n), kind.to_owned()))
        })
        .max_by_key(|(rank, _)| *rank)
        .map_or_else(|| "unknown file system".into(), |(_, kind)| kind)
}

/// Transfers per method and target: ROUNDS, or LOCAL_BUILD_ROUNDS to look closer.
fn rounds() -> usize {
    std::env::var("LOCAL_BUILD_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(ROUNDS)
}

/// A 64-bit generator (SplitMix64): deterministic, fast, and its output does not compress.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// CONTEXT_FILES files of 10–190 kB (pairs averaging 100 kB: CONTEXT_BYTES in all) in 30
/// directories two levels deep.
fn generate_context(root: &Path) -> Result<()> {
    let mean = usize::try_from(CONTEXT_BYTES)? / CONTEXT_FILES;
    let mut rng = SplitMix64(0x6c6f_6361_6c5f_6275); // "local_bu"
    let mut buf = vec![0u8; 2 * mean];
    let mut offset = 0;
    let mut total = 0u64;
    for i in 0..CONTEXT_FILES {
        let dir = root
            .join(format!("d{:02}", i % 10))
            .join(format!("s{}", (i / 10) % 3));
        fs::create_dir_all(&dir)?;
        let size = if i % 2 == 0 {
            offset = usize::try_from(rng.next() % 90_001)?;
            mean + offset
        } else {
            mean - offset
        };
        rng.fill(&mut buf[..size]);
        fs::write(dir.join(format!("f{i:04}.bin")), &buf[..size])?;
        total += size as u64;
    }
    ensure!(total == CONTEXT_BYTES, "generated {total} bytes");
    Ok(())
}

/// The ssh command rsync and tar use: the launcher's own config file when it can be found
/// beside the control socket, else options that make a fallback to a new connection fail.
fn ssh_command(socket: &Path) -> (String, &'static str) {
    let config = socket
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("config"))
        .find(|p| fs::read_to_string(p).is_ok_and(|t| t.contains("IdentitiesOnly yes")));
    let socket = shell_quote(&socket.display().to_string());
    match config {
        Some(config) => (
            format!(
                "ssh -F {} -S {socket} -o ControlMaster=no",
                shell_quote(&config.display().to_string())
            ),
            "the connection's own ssh config (-F), as `Connection::sync` does",
        ),
        None => (
            format!(
                "ssh -F /dev/null -S {socket} -o ControlMaster=no -o BatchMode=yes \
                 -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/dev/null"
            ),
            "-F /dev/null and explicit options (the connection's config was not found)",
        ),
    }
}

/// Runs every method of every target, round after round; returns how ssh was invoked.
async fn measure(
    conn: &Connection,
    host: &str,
    context: &Path,
    targets: &mut [Target],
) -> Result<&'static str> {
    let socket = conn.control_socket();
    let (ssh, ssh_via) = ssh_command(&socket);
    progress(&format!("ssh for tar and rsync: {ssh}"));
    let check = Command::new("ssh")
        .arg("-S")
        .arg(&socket)
        .args(["-O", "check", &format!("root@{host}")])
        .output()
        .await?;
    ensure!(
        check.status.success(),
        "the master connection does not answer on {}: {}",
        socket.display(),
        last_line(&check.stderr)
    );
    let x = Transfer {
        conn,
        host,
        ssh: &ssh,
        context,
    };
    // One unmeasured transfer each of the launcher's way and tar's per target: programs
    // loaded, the context in the page cache, and the whole path checked before any timing.
    for target in targets.iter() {
        for method in [Method::Launcher, Method::Tar] {
            let dir = format!("{}/bench-warmup-{}", target.dir, method.slug());
            x.run(method, &dir).await?;
            verify(conn, &dir).await?;
            clean(conn, &dir).await?;
        }
    }
    let rounds = rounds();
    for round in 0..rounds {
        for target in targets.iter_mut() {
            let n = target.methods.len();
            for k in 0..n {
                check_stop()?;
                // Each round starts with another method: none always runs right after another.
                let i = (k + round) % n;
                let method = target.methods[i];
                if target.seconds[i].is_none() {
                    continue;
                }
                let dir = format!("{}/bench-{}-{round}", target.dir, method.slug());
                match x.run(method, &dir).await {
                    Ok(t) => {
                        if method != Method::SshOnly {
                            verify(conn, &dir).await?;
                        }
                        progress(&format!(
                            "round {}/{rounds} {:<5} {:<48} {:6.2} s {:6.0} MB/s",
                            round + 1,
                            target.short,
                            method.label(),
                            t.listing + t.seconds,
                            mb_per_s(t.listing + t.seconds)
                        ));
                        if method == Method::Launcher {
                            target.listing.push(t.listing);
                        }
                        if let Some(v) = target.seconds[i].as_mut() {
                            v.push(t.listing + t.seconds);
                        }
                    }
                    // A flag set this rsync does not know is a finding, not a failure.
                    Err(e)
                        if matches!(method, Method::Rsync(v) if v > 0)
                            && !STOP.load(Ordering::SeqCst) =>
                    {
                        progress(&format!("{}: not measured: {e:#}", method.label()));
                        target.seconds[i] = None;
                    }
                    Err(e) => return Err(e),
                }
                clean(conn, &dir).await?;
            }
        }
    }
    Ok(ssh_via)
}

struct Timing {
    /// `context_entries` (the launcher's way only).
    listing: f64,
    /// The transfer itself.
    seconds: f64,
}

/// What every transfer needs.
struct Transfer<'a> {
    conn: &'a Connection,
    host: &'a str,
    ssh: &'a str,
    context: &'a Path,
}

impl Transfer<'_> {
    async fn run(&self, method: Method, dir: &str) -> Result<Timing> {
        let q = |s: &str| shell_quote(s);
        let context = self.context;
        match method {
            Method::Launcher => {
                let started = Instant::now();
                let entries = context_entries(context, "Dockerfile")?;
                let listing = started.elapsed().as_secs_f64();
                let started = Instant::now();
                let stats = self.conn.sync(context, &entries, dir).await?;
                let seconds = started.elapsed().as_secs_f64();
                ensure!(
                    stats.bytes == CONTEXT_BYTES,
                    "rsync reported {} bytes",
                    stats.bytes
                );
                Ok(Timing { listing, seconds })
            }
            Method::Tar | Method::TarList | Method::LocalTar | Method::SshOnly => {
                let started = Instant::now();
                let (sender, list, listing) = if method == Method::TarList {
                    let entries = context_entries(context, "Dockerfile")?;
                    let mut list = Vec::new();
                    for entry in &entries {
                        list.extend_from_slice(entry.as_os_str().as_encoded_bytes());
                        list.push(0);
                    }
                    let listing = started.elapsed().as_secs_f64();
                    // Directories are listed themselves: no recursion, as with rsync.
                    ("--null --no-recursion -T - -cf -", Some(list), listing)
                } else {
                    ("-cf - .", None, 0.0)
                };
                let remote = match method {
                    Method::SshOnly => "cat > /dev/null".to_owned(),
                    _ => format!("mkdir -p {0} && tar -C {0} -xf -", q(dir)),
                };
                let receiver = match method {
                    // The runner's directories are on this machine: the same writes, no SSH.
                    Method::LocalTar => format!("bash -c {}", q(&remote)),
                    _ => format!(
                        "{} {} {}",
                        self.ssh,
                        q(&format!("root@{}", self.host)),
                        q(&remote)
                    ),
                };
                let pipeline = format!(
                    "set -o pipefail; tar -C {} {sender} | {receiver}",
                    q(&context.display().to_string()),
                );
                let started = Instant::now();
                let mut child = Command::new("bash")
                    .arg("-c")
                    .arg(&pipeline)
                    .stdin(if list.is_some() {
                        Stdio::piped()
                    } else {
                        Stdio::null()
                    })
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .context("start the tar pipeline")?;
                let stdin = child.stdin.take();
                let writer = async move {
                    if let (Some(mut stdin), Some(list)) = (stdin, list) {
                        let _ = stdin.write_all(&list).await;
                        let _ = stdin.shutdown().await;
                    }
                };
                let (_, out) = tokio::join!(writer, child.wait_with_output());
                let out = out?;
                let seconds = started.elapsed().as_secs_f64();
                ensure!(
                    out.status.success(),
                    "{}: {}: {}",
                    method.label(),
                    out.status,
                    last_line(&out.stderr)
                );
                Ok(Timing { listing, seconds })
            }
            Method::Rsync(i) => {
                // As `Connection::sync` does it: the directory made over the connection first,
                // then rsync with the list on stdin (the list itself is made untimed here).
                let entries = context_entries(context, "Dockerfile")?;
                let mut list = Vec::new();
                for entry in &entries {
                    list.extend_from_slice(entry.as_os_str().as_encoded_bytes());
                    list.push(0);
                }
                let started = Instant::now();
                self.conn
                    .run_checked(
                        "create the target directory",
                        &format!("mkdir -p {}", q(dir)),
                        None,
                    )
                    .await?;
                let mut child = Command::new("rsync")
                    .args([
                        "--archive",
                        "--from0",
                        "--files-from=-",
                        "--numeric-ids",
                        "--stats",
                    ])
                    .args(RSYNC_VARIANTS[i])
                    .arg("-e")
                    .arg(self.ssh)
                    .arg(format!("{}/", context.display()))
                    .arg(format!("root@{}:{dir}/", self.host))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .context("start rsync")?;
                let mut stdin = child.stdin.take().context("rsync stdin")?;
                let writer = async move {
                    let _ = stdin.write_all(&list).await;
                    let _ = stdin.shutdown().await;
                };
                let (_, out) = tokio::join!(writer, child.wait_with_output());
                let out = out?;
                let seconds = started.elapsed().as_secs_f64();
                ensure!(
                    out.status.success(),
                    "rsync: {}: {}",
                    out.status,
                    last_line(&out.stderr)
                );
                Ok(Timing {
                    listing: 0.0,
                    seconds,
                })
            }
        }
    }
}

/// Every file arrived, whole: the count and the sum of the sizes on the runner.
async fn verify(conn: &Connection, dir: &str) -> Result<()> {
    let sizes = conn
        .run_checked(
            "list the transferred files",
            &format!("find {} -type f -printf '%s\\n'", shell_quote(dir)),
            None,
        )
        .await?;
    let sizes: Vec<u64> = sizes
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let total: u64 = sizes.iter().sum();
    ensure!(
        sizes.len() == CONTEXT_FILES && total == CONTEXT_BYTES,
        "{dir} holds {} files, {total} bytes; expected {CONTEXT_FILES}, {CONTEXT_BYTES}",
        sizes.len()
    );
    Ok(())
}

/// Remove a target directory and write back what is dirty, so the next transfer starts even.
async fn clean(conn: &Connection, dir: &str) -> Result<()> {
    conn.run_checked(
        "remove the target directory",
        &format!("rm -rf {} && sync", shell_quote(dir)),
        None,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

fn mb_per_s(seconds: f64) -> f64 {
    CONTEXT_BYTES as f64 / 1e6 / seconds
}

fn sync_tables(r: &SyncResults) -> String {
    let mut out = format!(
        "Context sync: 200 MB in {CONTEXT_FILES} files (incompressible) to one sandbox runner, \
         each transfer into a fresh directory, tar and rsync through the launcher's SSH master \
         connection ({}); medians of {} (MB = 10^6 bytes). The launcher's time includes \
         listing the context (`context_entries`).\n",
        r.ssh_via, r.rounds
    );
    let mut measures = Vec::new();
    for target in &r.targets {
        let tar = target
            .of(Method::Tar)
            .map_or(f64::NAN, |v| median(v.iter().copied()));
        let _ = write!(
            out,
            "\nInto {}:\n\n\
             | method | median time | MB/s | MB/s, slowest – fastest | ÷ tar\\|ssh |\n\
             |---|---|---|---|---|\n",
            target.name
        );
        for (i, method) in target.methods.iter().enumerate() {
            let name = match method {
                Method::Launcher => {
                    "launcher: `context_entries` + `Connection::sync` (rsync)".to_owned()
                }
                Method::Tar => "`tar -cf - . \\| ssh … 'tar -xf -'`".to_owned(),
                Method::TarList => {
                    "`context_entries` + `tar --null --no-recursion -T - -cf - \\| ssh …` (the launcher's list, sent by tar)".to_owned()
                }
                Method::Rsync(0) => {
                    "rsync, the launcher's flags (the same command, run by the bench)".to_owned()
                }
                Method::Rsync(v) => format!("rsync + `{}`", RSYNC_VARIANTS[*v].join(" ")),
                Method::LocalTar => "reference: `tar \\| tar`, no SSH (the writes)".to_owned(),
                Method::SshOnly => {
                    "reference: `tar \\| ssh 'cat > /dev/null'` (the SSH channel)".to_owned()
                }
            };
            let _ = match target.seconds[i].as_deref().filter(|v| !v.is_empty()) {
                Some(v) => {
                    let s = median(v.iter().copied());
                    let (fast, slow) = min_max(v);
                    writeln!(
                        out,
                        "| {name} | {s:.2} s | {:.0} | {:.0} – {:.0} | {:.2} |",
                        mb_per_s(s),
                        mb_per_s(slow),
                        mb_per_s(fast),
                        tar / s
                    )
                }
                None => writeln!(out, "| {name} | rejected by this rsync | — | — | — |"),
            };
        }
        let launcher = target
            .of(Method::Launcher)
            .map_or(f64::NAN, |v| median(v.iter().copied()));
        let _ = writeln!(
            out,
            "\nListing ({CONTEXT_FILES} files): {:.1} ms (median).",
            1e3 * median(target.listing.iter().copied())
        );
        measures.push((&target.name, tar / launcher));
    }
    out.push_str("\n| measure | result | target | result ÷ target |\n|---|---|---|---|\n");
    for (name, ratio) in measures {
        let _ = writeln!(
            out,
            "| launcher sync throughput ÷ tar\\|ssh throughput, into {name} | {ratio:.2} | ≥ {SYNC_TARGET} | {:.2} |",
            ratio / SYNC_TARGET
        );
    }
    out
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
