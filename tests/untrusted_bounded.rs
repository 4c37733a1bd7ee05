//! Inputs a repository or a pipeline controls, made as large or as slow as an attacker can
//! (issue 16, "every input is bounded"): each is refused with exit 2 and one line naming the
//! file and the cap, quickly, before any server or API request; nothing is read unbounded.
//!
//! Hostile registries are small loopback servers here, answering what an attacker's would.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::hcloud_sim::HcloudSim;
use support::hcloud_sim::cloud::GOLDEN;
use support::{BIN, Context};

/// Runs `cmd` to its end, or kills it after `limit` and fails: an attack must not hang the step.
fn finishes_within(cmd: &mut Command, limit: Duration) -> support::Outcome {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    support::Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The launcher with nothing of this environment but `PATH`, at home in `home`.
fn launcher(home: &Context) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("HOME", home.path())
        .env("NO_COLOR", "1");
    cmd
}

/// `build --provider hcloud` against the simulator, at a terminal, with `extra` arguments.
fn build(sim: &HcloudSim, ctx: &Context, extra: &[&str]) -> support::Outcome {
    finishes_within(
        launcher(ctx)
            .env("HCLOUD_TOKEN", &sim.token)
            .env("HCLOUD_ENDPOINT", &sim.endpoint)
            .args(["build", "--provider", "hcloud", "--registry", "127.0.0.1:9"])
            .arg("--context")
            .arg(ctx.path())
            .args(extra),
        Duration::from_secs(60),
    )
}

fn simulator() -> HcloudSim {
    let sim = HcloudSim::start();
    sim.add_snapshot("amd64", GOLDEN, "2026-11-20T00:00:00+00:00");
    sim
}

fn assert_no_request(sim: &HcloudSim, what: &str) {
    assert_eq!(sim.total_calls(), 0, "{what}: {:?}", sim.calls());
    sim.assert_clean();
}

/// The committed `.dockerignore` of an attacker: a line of 50,000 `^` (it overflowed the stack:
/// SIGABRT), and 70,000 patterns (10 ms a file, silently). Both are one line naming the file
/// and the cap, exit 2, no API request.
#[test]
fn ignore_files_beyond_the_caps_cost_no_server() {
    let sim = simulator();
    let ctx = Context::new().file("Dockerfile", "FROM scratch\n");
    let ignore = ctx.path().join(".dockerignore");
    let cases = [
        (
            format!("{}*\n", "^".repeat(50_000)),
            " line 1: a pattern of 50001 characters, more than the cap of 4096",
        ),
        (
            (0..70_000).map(|i| format!("**/*p{i}*q*\n")).collect(),
            ": more than 10000 patterns (the cap)",
        ),
    ];
    for (text, expect) in cases {
        std::fs::write(&ignore, text).unwrap();
        let out = build(&sim, &ctx, &["--history", "none"]);
        let line = out.assert_one_line_error(2);
        assert!(
            line.contains(&format!("{}{expect}", ignore.display())),
            "{line}"
        );
        assert!(!out.stderr.contains("overflow"), "{}", out.stderr);
        assert_no_request(&sim, expect);
    }
}

/// `history: file:/dev/zero` ate memory until killed; a FIFO hung for ever; a symlink was
/// followed. Each is exit 2 with the file named, at once, and the build never starts.
#[test]
fn a_history_file_that_is_not_one_costs_no_server() {
    let sim = simulator();
    let ctx = Context::new().file("Dockerfile", "FROM scratch\n");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("history.jsonl");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let cases = [
        ("/dev/zero".into(), "is not a regular file"),
        (fifo, "is not a regular file"),
        (link, "is a symlink"),
    ];
    for (path, expect) in cases {
        let setting = format!("file:{}", path.display());
        let out = build(&sim, &ctx, &["--history", &setting]);
        let line = out.assert_one_line_error(2);
        assert!(
            line.contains(&format!("history file {}: {expect}", path.display())),
            "{line}"
        );
        assert_no_request(&sim, expect);
        // `plan` reads it the same way.
        let out = finishes_within(
            launcher(&ctx)
                .args(["plan", "--history", &setting, "--context"])
                .arg(ctx.path()),
            Duration::from_secs(30),
        );
        out.assert_one_line_error(2);
    }
}
