//! Part 1: the launcher's overhead per build on the local provider, by phase.

use super::*;

// ---------------------------------------------------------------------------------------------
// Part 1: launcher overhead per build, by phase.

/// A throwaway registry from `scripts/local-registry`, stopped and removed on drop.
pub(crate) struct Registry {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) addr: String,
}

impl Registry {
    pub(crate) async fn start() -> Result<Registry> {
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

pub(crate) fn script(name: &str) -> PathBuf {
    Path::new(REPO).join("scripts").join(name)
}

pub(crate) fn last_line(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes)
        .unwrap_or("(not UTF-8)")
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
}

/// One launcher run: the phases of its report (summed over attempts) and its wall time.
pub(crate) struct BuildRun {
    pub(crate) phases: [f64; 5],
    pub(crate) wall: f64,
}

pub(crate) async fn overhead_runs() -> Result<Vec<BuildRun>> {
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
pub(crate) fn hello_context(work: &Path, registry: &str) -> Result<PathBuf> {
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

pub(crate) fn read_report(path: &Path, wall: f64) -> Result<BuildRun> {
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

pub(crate) fn overhead_table(runs: &[BuildRun]) -> String {
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
