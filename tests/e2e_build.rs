//! `build --provider local` end to end: the built binary, a real registry, real sshd, rsync,
//! memory cgroups, buildah, and the real BuildKit (each runner's own buildkitd).
//! Every test checks that no runner directory, cgroup or sshd is left behind.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::BIN;
use support::local_build::{Fixture, assert_success, outcomes};
use support::registry::require_root_and_tools;

#[test]
fn success_with_buildah() {
    let Some(f) = Fixture::new("RUN echo built > /built.txt") else {
        return;
    };
    let out = f.build("buildah", &["--tag", "v1", "--tag", "latest"]);
    assert_success(&f, &out);
    let report = f.report();
    assert_eq!(outcomes(&report).len(), 1);
    assert!(report["attempts"][0]["peak_memory_mib"].as_u64().unwrap() > 0);
    // The history gained an ok sample with the measured peak.
    let history = std::fs::read_to_string(f.ctx.path().join("history.jsonl")).unwrap();
    let sample: serde_json::Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    assert_eq!(sample["outcome"], "ok");
    assert_eq!(sample["repo"], "e2e/app");
}

#[test]
fn success_with_buildctl() {
    let Some(f) = Fixture::new("RUN echo built > /built.txt") else {
        return;
    };
    let out = f.build("buildctl", &["--tag", "v1", "--tag", "latest"]);
    assert_success(&f, &out);
    assert!(
        out.stderr.contains("#1 "),
        "buildctl-style progress: {}",
        out.stderr
    );
}

#[test]
fn out_of_memory_retries_once_on_the_next_tier_with_more_memory() {
    // cx23 ÷ 16 = 256 MiB: a 350 MiB buffer is OOM-killed; cx33 ÷ 16 = 512 MiB: it fits.
    let Some(f) = Fixture::new("RUN dd if=/dev/zero of=/dev/null bs=350M count=1") else {
        return;
    };
    std::fs::write(f.ctx.path().join(".build-spec.ncl"), "{ tier = \"cx23\" }").unwrap();
    let out = f.build("buildah", &["--tag", "v1", "--tag", "latest"]);
    assert_success(&f, &out);
    let report = f.report();
    assert_eq!(
        outcomes(&report),
        [("cx23".into(), "oom".into()), ("cx33".into(), "ok".into())]
    );
    let peak = report["attempts"][1]["peak_memory_mib"].as_u64().unwrap();
    assert!(
        peak > 256,
        "the retry really had more than cx23's 256 MiB: peak {peak}"
    );
    assert!(
        out.stderr.contains("retrying once on cx33"),
        "{}",
        out.stderr
    );
}

/// The real BuildKit: the step is killed in a runc container cgroup below the runner's, which
/// runc removes; the runner's OOM notifier (cgroup v1) is the evidence, not buildctl's words.
#[test]
fn out_of_memory_under_real_buildkit_retries_once_on_the_next_tier() {
    let Some(f) = Fixture::new("RUN dd if=/dev/zero of=/dev/null bs=350M count=1") else {
        return;
    };
    std::fs::write(f.ctx.path().join(".build-spec.ncl"), "{ tier = \"cx23\" }").unwrap();
    let out = f.build("buildctl", &["--tag", "v1", "--tag", "latest"]);
    assert_success(&f, &out);
    let report = f.report();
    assert_eq!(
        outcomes(&report),
        [("cx23".into(), "oom".into()), ("cx33".into(), "ok".into())]
    );
    assert!(
        out.stderr.contains("retrying once on cx33"),
        "{}",
        out.stderr
    );
}

#[test]
fn out_of_memory_twice_is_exit_3() {
    let Some(f) = Fixture::new("RUN dd if=/dev/zero of=/dev/null bs=600M count=1") else {
        return;
    };
    std::fs::write(f.ctx.path().join(".build-spec.ncl"), "{ tier = \"cx23\" }").unwrap();
    let out = f.build("buildctl", &[]);
    assert_eq!(out.code, 3, "stderr:\n{}", out.stderr);
    let report = f.report();
    assert_eq!(report["outcome"], "out_of_memory");
    assert_eq!(
        outcomes(&report),
        [("cx23".into(), "oom".into()), ("cx33".into(), "oom".into())]
    );
    f.assert_nothing_left();
}

#[test]
fn a_failing_run_step_is_exit_1_without_retry() {
    let Some(f) = Fixture::new("RUN echo about to fail && exit 3") else {
        return;
    };
    let out = f.build("buildctl", &[]);
    assert_eq!(out.code, 1, "stderr:\n{}", out.stderr);
    let report = f.report();
    assert_eq!(report["outcome"], "build_failed");
    assert_eq!(outcomes(&report), [("cx33".into(), "failed".into())]);
    assert!(
        report["error"].as_str().unwrap().contains("exit code: 3"),
        "{}",
        report["error"]
    );
    f.assert_nothing_left();
}

/// Start the build in the background and return once its RUN step is running.
fn start_until_running(f: &Fixture) -> std::process::Child {
    support::spawn_until(Command::new(BIN).args(f.args("buildah")), "STEP 2/2: RUN")
}

#[test]
fn sigterm_during_the_build_is_exit_5_and_the_runner_is_gone_within_5_s() {
    let Some(f) = Fixture::new("RUN sleep 60") else {
        return;
    };
    let mut child = start_until_running(&f);
    let sent = Instant::now();
    support::sigterm(&child);
    let status = child.wait().unwrap();
    let elapsed = sent.elapsed();
    assert_eq!(status.code(), Some(5));
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let report = f.report();
    assert_eq!(report["outcome"], "cancelled");
    assert_eq!(report["attempts"][0]["outcome"], "cancelled");
    f.assert_nothing_left();
}

#[test]
fn the_runners_sshd_killed_mid_build_is_exit_4() {
    let Some(f) = Fixture::new("RUN sleep 30") else {
        return;
    };
    let mut child = start_until_running(&f);
    let id = std::fs::read_dir(f.runners.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("local-"))
        .expect("a runner exists");
    let procs = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/buildkit-launcher/{id}/cgroup.procs"
    ))
    .unwrap();
    for pid in procs.lines() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "sshd" {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid.parse().unwrap()),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(4));
    let report = f.report();
    assert_eq!(report["outcome"], "infrastructure");
    assert_eq!(report["attempts"][0]["outcome"], "lost");
    f.assert_nothing_left();
}

#[test]
fn a_secret_never_shows_in_logs_report_or_process_lists() {
    const VALUE: &str = "fake-s3cr3t-e2e-7f3a9c";
    // The Dockerfile proves the secret arrived by its hash, so the value itself is nowhere but
    // in the launcher's environment.
    let mut sha = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut sha.stdin.take().unwrap(), VALUE.as_bytes()).unwrap();
    let hash = String::from_utf8(sha.wait_with_output().unwrap().stdout).unwrap();
    let hash = hash.split_whitespace().next().unwrap().to_owned();
    let Some(f) = Fixture::new(&format!(
        "RUN --mount=type=secret,id=token test \"$(sha256sum /run/secrets/token | cut -d' ' -f1)\" = {hash} && sleep 3"
    )) else {
        return;
    };
    let mut child = Command::new(BIN)
        .args(f.args("buildah"))
        .args(["--secret", "id=token,env=BKL_E2E_TOKEN"])
        .env("BKL_E2E_TOKEN", VALUE)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain the pipes while polling the process list, so the build never blocks on output.
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout_pipe, &mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr_pipe, &mut s).unwrap();
        s
    });
    let mut snapshots = 0;
    let mut leaked_in_ps = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        leaked_in_ps |= String::from_utf8_lossy(&ps.stdout).contains(VALUE);
        snapshots += 1;
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (out_reader.join().unwrap(), err_reader.join().unwrap());
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(
        snapshots > 10,
        "the process list was looked at during the build ({snapshots})"
    );
    assert!(
        !leaked_in_ps,
        "the secret appeared in a process's arguments"
    );
    let report = std::fs::read_to_string(&f.report).unwrap();
    assert!(!report.contains(VALUE), "the secret is in the report");
    assert!(!stdout.contains(VALUE), "the secret is on stdout");
    assert!(!stderr.contains(VALUE), "the secret is on stderr");
    f.assert_nothing_left();
}

#[test]
fn an_ignored_file_never_reaches_the_runner() {
    let Some(f) = Fixture::new(
        "COPY . /ctx\nRUN test -e /ctx/keep.txt && test ! -e /ctx/ignored.txt && test ! -e /ctx/private",
    ) else {
        return;
    };
    std::fs::write(
        f.ctx.path().join(".dockerignore"),
        "ignored.txt\nprivate/\nreport.json\n",
    )
    .unwrap();
    std::fs::write(f.ctx.path().join("keep.txt"), "kept").unwrap();
    std::fs::write(f.ctx.path().join("ignored.txt"), "not for the runner").unwrap();
    std::fs::create_dir(f.ctx.path().join("private")).unwrap();
    std::fs::write(f.ctx.path().join("private/key"), "not for the runner").unwrap();
    let out = f.build("buildah", &[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    f.assert_nothing_left();
}

/// rsync reads a `--files-from` entry starting with `#` or `;` as a comment, `--from0` or not:
/// a repository's `#x` and `;y` were silently not sent. They arrive, at the top and below.
#[test]
fn files_whose_names_start_with_a_comment_character_reach_the_runner() {
    let Some(f) = Fixture::new(
        "COPY . /ctx\nRUN test \"$(cat '/ctx/#x')\" = hash && test \"$(cat '/ctx/;y')\" = semi && test -e '/ctx/d/#z'",
    ) else {
        return;
    };
    std::fs::write(f.ctx.path().join("#x"), "hash").unwrap();
    std::fs::write(f.ctx.path().join(";y"), "semi").unwrap();
    std::fs::create_dir(f.ctx.path().join("d")).unwrap();
    std::fs::write(f.ctx.path().join("d/#z"), "deep").unwrap();
    let out = f.build("buildah", &[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    f.assert_nothing_left();
}

#[test]
fn a_missing_secret_variable_is_exit_2_before_any_runner_exists() {
    let Some(f) = Fixture::new("RUN true") else {
        return;
    };
    let out = f.build(
        "buildah",
        &["--secret", "id=token,env=BKL_E2E_UNSET_VARIABLE"],
    );
    let line = out.assert_one_line_error(2);
    assert!(line.contains("BKL_E2E_UNSET_VARIABLE is not set"), "{line}");
    let entries = std::fs::read_dir(f.runners.path()).unwrap().count();
    assert_eq!(entries, 0, "nothing was spawned");
}

#[test]
fn without_root_the_local_provider_says_so_plainly() {
    if !require_root_and_tools(&["setpriv"]) {
        return;
    }
    // A context and a binary that the unprivileged user can read.
    let ctx = tempfile::Builder::new()
        .prefix("bkl-noroot-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(ctx.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The checkout may sit where that user cannot reach (under /root): run a copy from /tmp.
    let bin = ctx.path().join("buildkit-launcher");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let runners = tempfile::tempdir().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args([
            "build",
            "--provider",
            "local",
            "--history",
            "none",
            "--local-dir",
        ])
        .arg(runners.path())
        .arg("--context")
        .arg(ctx.path())
        .env("HOME", "/tmp")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("the local provider needs root"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(runners.path()).unwrap().count(),
        0,
        "nothing spawned"
    );
}

/// The runner's buildkitd (its pid as the local provider recorded it).
fn buildkitd_pid(f: &Fixture) -> i32 {
    let id = std::fs::read_dir(f.runners.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("local-"))
        .expect("a runner exists");
    std::fs::read_to_string(f.runners.path().join(id).join("buildkitd.pid.launcher"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn buildkitd_killed_mid_build_is_exit_4_naming_buildkitd() {
    let Some(f) = Fixture::new("RUN sleep 30") else {
        return;
    };
    let (mut child, rest) = support::spawn_until_keeping(
        Command::new(BIN).args(f.args("buildctl")),
        "[2/2] RUN sleep",
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(buildkitd_pid(&f)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let said: Vec<String> = rest.iter().collect();
    let report = f.report();
    assert_eq!(
        status.code(),
        Some(4),
        "{}\nreport: {report:#}",
        said.join("\n")
    );
    assert_eq!(outcomes(&report), [("cx33".into(), "lost".into())]);
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("buildkitd") && error.contains("Unavailable"),
        "{error}"
    );
    // The build container outlives its daemon: teardown still removes it, its cgroups and
    // mounts.
    f.assert_nothing_left();
}

#[test]
fn a_cache_export_the_registry_refuses_is_a_warning_and_the_image_is_pushed() {
    let Some(f) = Fixture::new("RUN sleep 2") else {
        return;
    };
    // Once the build runs (the launcher's permission check before it passed), the registry
    // keeps taking the image but fails every request for the default cache's repository.
    let mut args = f.args("buildctl");
    args.extend(["--tag", "v1", "--tag", "latest"].map(String::from));
    let cmd = &mut Command::new(BIN);
    let (mut child, rest) = support::spawn_until_keeping(cmd.args(args), "[2/2] RUN sleep");
    f.registry.break_repository("cache/e2e/app");
    let status = child.wait().unwrap();
    let stderr = rest.iter().collect::<Vec<_>>().join("\n");
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    let report = f.report();
    assert_eq!(report["outcome"], "success");
    let digest = report["digest"].as_str().unwrap();
    for tag in ["v1", "latest"] {
        assert_eq!(
            f.registry.manifest_digest("e2e/app", tag).as_deref(),
            Some(digest),
            "tag {tag}"
        );
    }
    f.assert_nothing_left();
    let warnings = report["attempts"][0]["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("the build cache could not be written: "),
        "{warnings:?}"
    );
    assert!(
        stderr.contains("warning: the build cache could not be written"),
        "{stderr}"
    );
}

#[test]
fn sigterm_during_a_real_buildkit_build_is_exit_5_and_nothing_is_left() {
    let Some(f) = Fixture::new("RUN sleep 60") else {
        return;
    };
    let mut child = support::spawn_until(
        Command::new(BIN).args(f.args("buildctl")),
        "[2/2] RUN sleep",
    );
    let sent = Instant::now();
    support::sigterm(&child);
    let status = child.wait().unwrap();
    let elapsed = sent.elapsed();
    assert_eq!(status.code(), Some(5));
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(f.report()["outcome"], "cancelled");
    // buildkitd, the runc container running `sleep 60`, its cgroups and mounts: all gone.
    f.assert_nothing_left();
}

/// The agent reading the step's log may go away (a crash, a restart) while the build runs: a
/// closed stderr is no reason to stop, to panic or to keep a runner. The read end of the
/// launcher's stderr is closed once the RUN step starts (its stdout from the start); the build
/// goes on printing into it and still succeeds, its summary going nowhere, and a SIGTERM that
/// arrives after it (the launcher says so on the closed log) still cancels and destroys
/// everything.
#[test]
fn a_closed_log_neither_fails_the_build_nor_keeps_a_runner() {
    use std::io::BufRead;
    for cancelled in [false, true] {
        let body = if cancelled {
            "RUN sleep 60"
        } else {
            "RUN sleep 2; for i in 1 2 3 4 5; do echo line-$i; done"
        };
        let Some(f) = Fixture::new(body) else {
            return;
        };
        let mut child = Command::new(BIN)
            .args(f.args("buildctl"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The summary on stdout goes nowhere either.
        drop(child.stdout.take());
        let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("[2/2] RUN sleep") {
            line.clear();
            if log.read_line(&mut line).unwrap() == 0 {
                panic!("the launcher ended before the RUN step: {:?}", child.wait());
            }
        }
        drop(log);
        if cancelled {
            std::thread::sleep(Duration::from_millis(500));
            support::sigterm(&child);
        }
        let status = child.wait().unwrap();
        let case = if cancelled { "SIGTERM" } else { "to the end" };
        assert_eq!(
            status.code(),
            Some(if cancelled { 5 } else { 0 }),
            "{case}: {status:?}"
        );
        let report = f.report();
        assert_eq!(
            report["outcome"],
            if cancelled { "cancelled" } else { "success" },
            "{case}: {report}"
        );
        f.assert_nothing_left();
    }
}
