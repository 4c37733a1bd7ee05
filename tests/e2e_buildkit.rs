//! `build --provider local --backend buildctl` end to end against the real BuildKit on sandbox
//! runners, made to misbehave for real: a daemon that starts late, one that does not start
//! within the launcher's wait, one that exits at once (a bad flag), one whose socket exists but
//! that does not answer (stopped), and
//! `FROM` a plain-HTTP registry by a name buildkitd.toml does not list. Every test checks that
//! nothing is left behind.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use buildkit_launcher::provider::local::buildkitd::{EXTRA_ARGS_ENV, START_AFTER_ENV};
use support::local_build::{Fixture, TOOLS, assert_success, outcomes};
use support::registry::{Registry, loopback_name, require_root_and_tools};
use support::{BIN, Launcher};

/// A launcher config file in the context: buildkitd gets `seconds` to list a worker.
fn ready_timeout_config(f: &Fixture, seconds: u64) -> String {
    let path = f.ctx.path().join("launcher.ncl");
    std::fs::write(
        &path,
        format!("{{ buildkitd = {{ ready_timeout_s = {seconds} }} }}\n"),
    )
    .unwrap();
    format!("--config={}", path.display())
}

/// The fixture's build, each runner's buildkitd starting `delay_s` seconds late.
fn build_late(f: &Fixture, delay_s: u32, extra: &[&str]) -> support::Outcome {
    Launcher::new()
        .args(f.args("buildctl"))
        .args(extra)
        .env(START_AFTER_ENV, delay_s.to_string())
        .run()
}

#[test]
fn a_daemon_that_starts_a_few_seconds_late_is_waited_for_and_the_build_succeeds() {
    let Some(f) = Fixture::new("RUN echo built > /built.txt") else {
        return;
    };
    let out = build_late(&f, 3, &["--tag", "v1", "--tag", "latest"]);
    assert_success(&f, &out);
    assert!(
        out.stderr
            .contains("waiting up to 60 s for buildkitd on the runner to list a worker"),
        "{}",
        out.stderr
    );
    // What real buildctl's `debug workers` lists: the worker's id and its platforms.
    let ready = out
        .stderr
        .lines()
        .find(|l| l.contains("buildkitd is ready after"))
        .unwrap_or_else(|| panic!("{}", out.stderr));
    let seconds: f64 = ready
        .split("ready after ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(seconds >= 2.0, "it waited for the late daemon: {ready}");
    assert!(ready.contains(" linux/amd64,"), "{ready}");
}

#[test]
fn a_daemon_that_does_not_start_within_the_wait_is_exit_4_naming_buildkitd() {
    let Some(f) = Fixture::new("RUN echo built > /built.txt") else {
        return;
    };
    let config = ready_timeout_config(&f, 2);
    let out = build_late(&f, 600, &[&config]);
    assert_eq!(out.code, 4, "stderr:\n{}", out.stderr);
    let report = f.report();
    assert_eq!(report["outcome"], "infrastructure");
    assert_eq!(outcomes(&report), [("cx33".into(), "lost".into())]);
    let error = report["error"].as_str().unwrap();
    // Real buildctl --wait with no socket: the deadline passes.
    assert!(
        error.contains("buildkitd") && error.contains("context deadline exceeded"),
        "{error}"
    );
    assert!(
        !out.stderr.contains("#1 "),
        "no build was started:\n{}",
        out.stderr
    );
    f.assert_nothing_left();
}

/// The pids whose parent is `pid`.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid …: comm may hold spaces, the last ')' ends it.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

#[test]
fn what_the_late_daemon_starts_before_buildkitd_runs_in_the_runners_memory_cgroup() {
    let Some(f) = Fixture::new("RUN echo built > /built.txt") else {
        return;
    };
    let config = ready_timeout_config(&f, 2);
    // The start-after hook's shell forks `sleep` at once: it joined the runner's cgroup before
    // it was exec'd, so the sleep is in it from its first instruction.
    let mut child = Command::new(BIN)
        .args(f.args("buildctl"))
        .arg(&config)
        .env(START_AFTER_ENV, "600")
        .env_remove("CI")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let seen = loop {
        let runner = std::fs::read_dir(f.runners.path())
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("local-"));
        if let Some(runner) = runner
            && let Ok(pid) = std::fs::read_to_string(runner.path().join("buildkitd.pid.launcher"))
            && let Some(sleep) = children(pid.trim().parse().unwrap()).first()
        {
            let id = runner.file_name().to_string_lossy().into_owned();
            let cgroups = std::fs::read_to_string(format!("/proc/{sleep}/cgroup")).unwrap();
            break Some((id, cgroups));
        }
        if started.elapsed() > Duration::from_secs(30) || child.try_wait().unwrap().is_some() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let status = child.wait().unwrap();
    let (id, cgroups) = seen.expect("the late daemon's sleep was seen");
    let memory = cgroups
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "memory"))
        })
        .unwrap_or_else(|| panic!("{cgroups}"));
    assert!(
        memory.ends_with(&format!(":/buildkit-launcher/{id}")),
        "{memory}"
    );
    assert_eq!(status.code(), Some(4));
    f.assert_nothing_left();
}

#[test]
fn a_daemon_that_exits_at_once_is_exit_4_with_one_line_naming_buildkitd_and_its_error() {
    let Some(f) = Fixture::new("RUN echo built > /built.txt") else {
        return;
    };
    // A long wait: the launcher must not sit it out (the daemon is gone within a second).
    let config = ready_timeout_config(&f, 600);
    let out = Launcher::new()
        .args(f.args("buildctl"))
        .args([&config])
        .env(EXTRA_ARGS_ENV, "--oci-worker-snapshotter=bogus")
        .run();
    assert_eq!(out.code, 4, "stderr:\n{}", out.stderr);
    let report = f.report();
    assert_eq!(report["outcome"], "infrastructure");
    assert_eq!(outcomes(&report), [("cx33".into(), "lost".into())]);
    let error = report["error"].as_str().unwrap();
    assert!(!error.contains('\n'), "one line: {error}");
    // Its exit status and its own fatal line, not the stack trace after it.
    assert!(
        error.contains("runner local-")
            && error.contains("buildkitd exited (exit status: 1)")
            && error.ends_with("buildkitd: unknown snapshotter name: \"bogus\""),
        "{error}"
    );
    let said = format!("{}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("unknown snapshotter"))
        .collect();
    assert_eq!(lines.len(), 1, "said:\n{said}");
    assert!(lines[0].contains(error), "{}", lines[0]);
    assert!(!out.stderr.contains("#1 "), "no build was started");
    f.assert_nothing_left();
}

#[test]
fn a_daemon_whose_socket_exists_but_does_not_answer_is_exit_4_naming_buildkitd() {
    let Some(f) = Fixture::new("RUN echo built > /built.txt") else {
        return;
    };
    let config = ready_timeout_config(&f, 2);
    // The daemon starts 2 s late; as soon as its socket appears it is stopped (SIGSTOP), long
    // before it loads its workers: the socket accepts connections, nothing answers.
    let mut child = Command::new(BIN)
        .args(f.args("buildctl"))
        .arg(&config)
        .env(START_AFTER_ENV, "2")
        .env_remove("CI")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let stopped = loop {
        let runner = std::fs::read_dir(f.runners.path())
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("local-"));
        if let Some(runner) = runner {
            let socket = runner.path().join("root/run/buildkit/buildkitd.sock");
            let pid = std::fs::read_to_string(runner.path().join("buildkitd.pid.launcher"));
            if let (true, Ok(pid)) = (socket.exists(), pid) {
                let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
                break true;
            }
        }
        if started.elapsed() > Duration::from_secs(30) || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let status = child.wait().unwrap();
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert!(
        stopped,
        "the runner's buildkitd socket never appeared:\n{stderr}"
    );
    assert_eq!(status.code(), Some(4), "stderr:\n{stderr}");
    let error = f.report()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("buildkitd"), "{error}");
    // Real buildctl blocks about 20 s on such a socket whatever --timeout says; the launcher's
    // own bound (the wait plus 30 s) ends it in any case.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    f.assert_nothing_left();
}

/// A registry under a name BuildKit does not treat as local, with the base image; the
/// Dockerfile pulls from it by that name. `None`: skipped (not in CI).
fn named_registry_fixture() -> Option<(Fixture, String)> {
    if !require_root_and_tools(TOOLS) {
        return None;
    }
    let Some((name, ip)) = loopback_name() else {
        let line = "needs a host name other than localhost for a loopback address in /etc/hosts";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{line}");
        eprintln!("skipped: {line}");
        return None;
    };
    let registry = Registry::start_at(ip).with_base_image();
    let host = registry.addr_as(&name);
    let dockerfile = format!("FROM {host}/base/busybox:latest\nRUN echo built > /built.txt\n");
    let mut f = Fixture::with(registry, &dockerfile);
    f.registry_addr = host.clone();
    Some((f, host))
}

#[test]
fn from_an_http_registry_missing_from_buildkitd_toml_fails_clearly() {
    // The runner's buildkitd.toml is rendered from the default launcher config, which names
    // no registry host (tests/e2e_buildkitd_config.rs names this one and the build works).
    let Some((f, host)) = named_registry_fixture() else {
        return;
    };
    let out = f.build("buildctl", &[]);
    assert_eq!(out.code, 1, "stderr:\n{}", out.stderr);
    let report = f.report();
    assert_eq!(report["outcome"], "build_failed");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "failed to resolve source metadata for {host}/base/busybox:latest"
        )) && error.contains("http: server gave HTTP response to HTTPS client")
            && error.contains("launcher config's buildkitd.registries with http = true"),
        "{error}"
    );
    f.assert_nothing_left();
}

/// The real daemon's numbers for docs/PERFORMANCE.md (benches/buildkit.sh): runner up →
/// buildkitd lists a worker; launcher overhead (wall − buildctl's own time); a multi-stage build
/// with a slow step, first / no change / one file changed, each on a fresh runner through the
/// registry cache (mode=max). Prints `BENCH` lines; asserts only that the builds succeed.
#[test]
#[ignore = "a benchmark: benches/buildkit.sh"]
fn bench_real_buildkit() {
    // 1. Runner up (its sshd answers) → its buildkitd lists a worker, polled locally.
    if !support::runner::require_local_runner() {
        return;
    }
    let sandbox = support::runner::Sandbox::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    use buildkit_launcher::provider::Provider;
    let mut up = Vec::new();
    let mut worker = Vec::new();
    for _ in 0..3 {
        let (spec, _keys) = sandbox.spec(support::runner::tier("cx33", 8192));
        let start = Instant::now();
        let id = rt.block_on(sandbox.provider.create(&spec)).unwrap();
        let _guard = support::runner::RunnerGuard {
            sandbox: &sandbox,
            id: id.clone(),
        };
        rt.block_on(sandbox.provider.wait_ready(&id)).unwrap();
        let ready = start.elapsed();
        let host = format!(
            "unix://{}/root/run/buildkit/buildkitd.sock",
            sandbox.base.path().join(&id).display()
        );
        loop {
            let out = Command::new("buildctl")
                .args(["--addr", &host, "debug", "workers"])
                .output()
                .unwrap();
            if out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() > 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        up.push(ready.as_secs_f64());
        worker.push((start.elapsed() - ready).as_secs_f64());
    }
    println!("BENCH runner_up_s {up:.2?} then_worker_listed_s {worker:.2?}");

    // 2. and 3. A multi-stage build: a slow dependency stage, then the sources.
    let Some(registry_check) = Fixture::new("") else {
        return;
    };
    let base = registry_check.registry.base_image();
    let dockerfile = format!(
        "FROM {base} AS deps\nRUN sleep 8 && echo deps > /deps.txt\n\
         FROM {base} AS build\nCOPY --from=deps /deps.txt /deps.txt\nCOPY src/ /src/\n\
         RUN cat /deps.txt /src/* > /out.txt\n\
         FROM {base}\nCOPY --from=build /out.txt /out.txt\n"
    );
    let f = Fixture::with(registry_check.registry, &dockerfile);
    std::fs::create_dir_all(f.ctx.path().join("src")).unwrap();
    std::fs::write(f.ctx.path().join("src/a.txt"), "a\n").unwrap();
    std::fs::write(f.ctx.path().join("src/b.txt"), "b\n").unwrap();
    let run = |label: &str| -> f64 {
        let start = Instant::now();
        let out = f.build("buildctl", &["--tag", "v1", "--cache", "max"]);
        let wall = start.elapsed().as_secs_f64();
        assert_eq!(out.code, 0, "{label}:\n{}", out.stderr);
        let report = f.report();
        let build = report["attempts"][0]["seconds"]["build"].as_f64().unwrap();
        println!(
            "BENCH {label} wall_s {wall:.2} buildctl_s {build:.2} overhead_s {:.2}",
            wall - build
        );
        wall
    };
    let first = run("first");
    let same = run("no_change");
    std::fs::write(f.ctx.path().join("src/b.txt"), "b changed\n").unwrap();
    let one = run("one_file_changed");
    println!(
        "BENCH ratios no_change/first {:.2} one_file_changed/first {:.2}",
        same / first,
        one / first
    );
}
