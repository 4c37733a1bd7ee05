//! A hostile build, end to end on a local runner (real sshd, rsync, registry, buildah): what a
//! Dockerfile prints decides nothing, no process the launcher starts can read a secret from its
//! environment, and a pull-request build teaches the sizer nothing.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use support::BIN;
use support::local_build::{Fixture, assert_success, outcomes};

const HCLOUD_TOKEN: &str = "fake-hcloud-token-d00d";
const REGISTRY_PASSWORD: &str = "fake-registry-password-b33f";
const BUILD_SECRET: &str = "fake-build-secret-c0ffee";

#[test]
fn oom_words_in_a_failing_build_are_exit_1_with_one_attempt() {
    // The build prints every phrase a text-based classifier would take for OOM, then fails.
    // The phrases are assembled by printf, so that they appear in the output but not in the
    // Dockerfile's command (which buildctl's own error line quotes).
    let Some(f) = Fixture::new(
        "RUN printf 'exit code: 1%s\\n' 37; printf 'cannot al%s memory\\n' locate; \
         printf 'error: failed to solve: Resource%s: process \"x\" did not complete successfully: cannot al%s memory\\n' Exhausted locate; exit 1",
    ) else {
        return;
    };
    for backend in ["buildctl", "buildah"] {
        let out = f.build(backend, &[]);
        assert_eq!(out.code, 1, "{backend}: stderr:\n{}", out.stderr);
        let report = f.report();
        assert_eq!(report["outcome"], "build_failed", "{backend}");
        assert_eq!(
            outcomes(&report).len(),
            1,
            "{backend}: one attempt, no retry"
        );
        let error = report["error"].as_str().unwrap();
        for printed in [
            "exit code: 137",
            "cannot allocate memory",
            "ResourceExhausted",
        ] {
            assert!(
                !error.contains(printed),
                "{backend}: build output in the report: {error}"
            );
        }
        if backend == "buildctl" {
            assert!(error.ends_with("exit code: 1"), "{error}");
        }
        f.assert_nothing_left();
    }
}

#[test]
fn buildkits_words_in_the_dockerfiles_own_command_are_exit_1_with_one_attempt() {
    // buildctl's final error line quotes the failed step's command: here the command itself
    // carries what buildctl prints when buildkitd is lost, and BuildKit's ENOMEM status.
    let Some(f) = Fixture::new(
        "RUN echo 'error: failed to receive status: rpc error: code = Unavailable desc = error reading from server: EOF'; \
         echo 'error: failed to solve: Unavailable: error reading from server: EOF'; \
         echo 'error: failed to solve: ResourceExhausted: cannot allocate memory'; exit 1",
    ) else {
        return;
    };
    let out = f.build("buildctl", &[]);
    assert_eq!(out.code, 1, "stderr:\n{}", out.stderr);
    let report = f.report();
    assert_eq!(report["outcome"], "build_failed");
    assert_eq!(outcomes(&report).len(), 1, "one attempt, no retry");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.starts_with("the build failed: failed to solve: process \"/bin/sh -c echo"),
        "{error}"
    );
    assert!(!out.stderr.contains("stopped answering"), "{}", out.stderr);
    f.assert_nothing_left();
}

#[test]
fn a_step_that_exits_137_by_itself_is_not_oom() {
    let Some(f) = Fixture::new("RUN exit 137") else {
        return;
    };
    for backend in ["buildctl", "buildah"] {
        let out = f.build(backend, &[]);
        assert_eq!(out.code, 1, "{backend}: stderr:\n{}", out.stderr);
        assert_eq!(outcomes(&f.report()).len(), 1, "{backend}");
        f.assert_nothing_left();
    }
}

/// The pids of every descendant of `root` (not `root` itself), from /proc.
fn descendants(root: u32) -> Vec<(u32, String)> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c).to_owned();
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid, comm));
        }
    }
    let mut tree = BTreeSet::from([root]);
    loop {
        let before = tree.len();
        for (pid, ppid, _) in &parent_of {
            if tree.contains(ppid) {
                tree.insert(*pid);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    parent_of
        .into_iter()
        .filter(|(pid, _, _)| *pid != root && tree.contains(pid))
        .map(|(pid, _, comm)| (pid, comm))
        .collect()
}

/// A process sharing the workspace (a detached step of the same pipeline) swaps a listed
/// directory for a symlink to a directory outside it once the plan was made, while the runner
/// boots: rsync would follow the symlink in the middle of each listed path. The launcher sees
/// the swap before it sends anything and builds nothing.
#[test]
fn a_directory_swapped_for_a_symlink_after_the_plan_is_never_sent() {
    // A directory inside the context, then the context itself (`ctx/` would follow the link).
    for swap_the_context in [false, true] {
        let Some(f) = Fixture::new("COPY sub/ /sub/\nRUN cat /sub/notes") else {
            return;
        };
        std::fs::create_dir(f.ctx.path().join("sub")).unwrap();
        std::fs::write(f.ctx.path().join("sub/notes"), "committed").unwrap();
        // Outside the workspace: what a swapped path would lead rsync to.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("notes"), "outside-canary-91fe").unwrap();
        std::fs::create_dir(outside.path().join("sub")).unwrap();
        std::fs::write(outside.path().join("sub/notes"), "outside-canary-91fe").unwrap();
        std::fs::copy(
            f.ctx.path().join("Dockerfile"),
            outside.path().join("Dockerfile"),
        )
        .unwrap();
        let (runners, ctx, target) = (
            f.runners.path().to_owned(),
            f.ctx.path().to_owned(),
            outside.path().to_owned(),
        );
        let swapped = if swap_the_context {
            ctx.clone()
        } else {
            ctx.join("sub")
        };
        let moved = target.join("moved");
        let (at, from) = (swapped.clone(), moved.clone());
        let swapper = std::thread::spawn(move || {
            // The plan is made (and the context listed) before the runner exists.
            for _ in 0..6000 {
                let booting = std::fs::read_dir(&runners)
                    .unwrap()
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("local-"));
                if booting {
                    std::fs::rename(&at, &from).unwrap();
                    let link = if swap_the_context {
                        target.clone()
                    } else {
                        target.join("sub")
                    };
                    std::os::unix::fs::symlink(link, &at).unwrap();
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            false
        });
        let out = f.build("buildctl", &[]);
        let case = if swap_the_context {
            "the context"
        } else {
            "sub"
        };
        assert!(swapper.join().unwrap(), "{case}: the runner never appeared");
        // Infrastructure (exit 4): the runner was fine, the workspace is not the launcher's
        // to fix. (The report, in the context, went where the link leads.)
        let report = f.report();
        f.assert_nothing_left();
        std::fs::remove_file(&swapped).unwrap();
        std::fs::rename(&moved, &swapped).unwrap();
        assert_eq!(out.code, 4, "{case}: {}\n{}", out.stdout, out.stderr);
        let error = report["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            error.contains("the build context changed while it was being read or sent"),
            "{case}: {error}"
        );
        for stream in [&out.stderr, &out.stdout] {
            assert!(!stream.contains("outside-canary-91fe"), "{case}: {stream}");
        }
        assert!(report["digest"].is_null(), "{case}: nothing was pushed");
    }
}

/// /proc/PID/environ keeps the environment a process started with, whatever it unsets later:
/// another process of the launcher's user (a rsync sent to `/proc/<launcher>/environ` through
/// a swapped workspace symlink, a second step's process) must not read the token there. The
/// launcher runs as an unprivileged user here, waiting on an API that never answers, and the
/// same user tries to read its environment.
#[test]
fn another_process_of_the_launchers_user_cannot_read_its_environment() {
    if !support::registry::require_root_and_tools(&["setpriv"]) {
        return;
    }
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/v1", silent.local_addr().unwrap());
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        home.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let as_nobody = |program: &str| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", program]);
        cmd
    };
    let mut launcher = as_nobody(BIN)
        .args(["reap", "--provider", "hcloud"])
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HCLOUD_TOKEN", HCLOUD_TOKEN)
        .env("HCLOUD_ENDPOINT", &endpoint)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The launcher is waiting once the API's listener has its connection.
    let (_held, _) = silent.accept().unwrap();
    let pid = launcher.id();
    let read = as_nobody("cat")
        .arg(format!("/proc/{pid}/environ"))
        .output()
        .unwrap();
    let _ = launcher.kill();
    let _ = launcher.wait();
    assert!(
        !String::from_utf8_lossy(&read.stdout).contains(HCLOUD_TOKEN),
        "the launcher's user read the token in /proc/{pid}/environ"
    );
    assert!(!read.status.success(), "{read:?}");
}

#[test]
fn no_child_of_the_launcher_sees_a_secret_in_its_environment() {
    // Long enough to sample sshd, the ssh master, rsync and the build tool on the runner.
    let Some(f) =
        Fixture::new("RUN --mount=type=secret,id=tok test -s /run/secrets/tok && sleep 4")
    else {
        return;
    };
    for backend in ["buildctl", "buildah"] {
        let log_path = f.ctx.path().join(format!("{backend}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(BIN)
            .args(f.args(backend))
            .args([
                "--registry-user",
                "ci",
                "--secret",
                "id=tok,env=BUILD_SECRET",
            ])
            .env("HCLOUD_TOKEN", HCLOUD_TOKEN)
            .env("REGISTRY_PASSWORD", REGISTRY_PASSWORD)
            .env("PLUGIN_HCLOUD_TOKEN", HCLOUD_TOKEN)
            .env("BUILD_SECRET", BUILD_SECRET)
            .env("HOME", f.ctx.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let launcher = child.id();
        let cmdline = |pid: u32| std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        // Read once the launcher's exec is complete: spawn returns as exec closes the
        // close-on-exec pipe, a moment before the kernel fills in the new command line (an
        // empty one here made every fork look exec'd, seen in CI).
        let mut own = cmdline(launcher);
        while own.is_empty() && child.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(1));
            own = cmdline(launcher);
        }
        assert!(!own.is_empty(), "{backend}: the launcher's command line");
        let mut seen = BTreeSet::new();
        let mut leaks = Vec::new();
        while child.try_wait().unwrap().is_none() {
            for (pid, comm) in descendants(launcher) {
                // A child between fork and exec is still a copy of the launcher, with its
                // command line and its initial environment (ours to give, never what the child
                // runs with): only what a child execs counts. The command line is read before
                // and after the environment and must be the same exec'd program both times, so
                // an exec racing the reads (seen once: a fork's environment read just before its
                // exec, its command line just after) is never taken for a leak.
                let before = cmdline(pid);
                if before == own || before.is_empty() {
                    continue;
                }
                let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                    continue;
                };
                if cmdline(pid) != before {
                    continue;
                }
                let environ = String::from_utf8_lossy(&environ);
                for secret in [HCLOUD_TOKEN, REGISTRY_PASSWORD, BUILD_SECRET] {
                    if environ.contains(secret) {
                        leaks.push(format!(
                            "{comm} ({pid}, {:?}; the launcher is {:?}) holds {secret}",
                            String::from_utf8_lossy(&before),
                            String::from_utf8_lossy(&own)
                        ));
                    }
                }
                seen.insert(comm);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let status = child.wait().unwrap();
        let stderr = std::fs::read_to_string(&log_path).unwrap();
        assert_eq!(status.code(), Some(0), "{backend}: {stderr}");
        assert!(leaks.is_empty(), "{backend}: {leaks:?}");
        for secret in [HCLOUD_TOKEN, REGISTRY_PASSWORD, BUILD_SECRET] {
            assert!(
                !stderr.contains(secret),
                "{backend}: the log shows {secret}"
            );
        }
        // The sample covered what matters: the runner's sshd, the ssh master and rsync.
        for comm in ["sshd", "ssh", "rsync"] {
            assert!(
                seen.contains(comm),
                "{backend}: never saw {comm} among {seen:?}"
            );
        }
        f.assert_nothing_left();
    }
}

#[test]
fn a_pull_request_build_leaves_the_history_unchanged() {
    let Some(f) = Fixture::new("RUN echo built > /built.txt") else {
        return;
    };
    let history = f.ctx.path().join("history.jsonl");
    let out = support::Launcher::new()
        .env("CI_PIPELINE_EVENT", "pull_request")
        .env("CI_COMMIT_PULL_REQUEST", "5")
        .args(f.args("buildah"))
        .args(["--tag", "latest", "--tag", "v1"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!history.exists(), "a pull-request build wrote history");
    // It pushed under its own tag only (docs/SECURITY.md, layer 5).
    let digest = f.report()["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        f.registry.manifest_digest("e2e/app", "pr-5").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(f.registry.manifest_digest("e2e/app", "latest"), None);

    let plan = support::Launcher::new()
        .env("CI_PIPELINE_EVENT", "pull_request")
        .args(["plan", "--context"])
        .args([f.ctx.path()])
        .args(["--project", "e2e/app", "--history"])
        .args([format!("file:{}", history.display())])
        .run();
    assert!(
        plan.stdout
            .contains("read only: a pull-request build records no sample"),
        "{}",
        plan.stdout
    );

    let out = f.build("buildah", &["--tag", "latest", "--tag", "v1"]);
    assert_success(&f, &out);
    let lines = std::fs::read_to_string(&history).unwrap();
    assert_eq!(
        lines.lines().count(),
        1,
        "a push build records its sample: {lines}"
    );
}

/// `# syntax=` in a pull request's Dockerfile would run any image as BuildKit's frontend with
/// the build's session: the golden image's buildkitd.toml allows only the operator's list, and
/// the refusal is a clear failure of the build (real BuildKit, nothing left behind).
#[test]
fn a_syntax_frontend_outside_the_operators_list_is_refused() {
    let Some(f) = Fixture::new("RUN echo never") else {
        return;
    };
    let dockerfile = format!(
        "# syntax={}/evil/frontend:1\nFROM {}\nRUN echo never\n",
        f.registry_addr,
        f.registry.base_image()
    );
    std::fs::write(f.ctx.path().join("Dockerfile"), dockerfile).unwrap();
    let out = f.build("buildctl", &[]);
    assert_eq!(out.code, 1, "stderr:\n{}", out.stderr);
    let report = f.report();
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("names a frontend image the runners do not allow")
            && error.contains("evil/frontend"),
        "{error}"
    );
    f.assert_nothing_left();
}
