//! Test support: a builder that runs the built binary in a clean environment.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod attack;
pub mod buildkit_tarball;
pub mod cgroup;
pub mod fake_release;
pub mod hcloud_sim;
pub mod history;
pub mod local_build;
pub mod plugin_step;
pub mod proxy;
pub mod registry;
pub mod runner;
pub mod token_auth;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_buildkit-launcher");

/// The repository checkout (for examples/ and tests/data/).
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/data/traces/NAME`: the repository's copies of the design's traces (their README says
/// where they come from); nothing under tests/ reads outside the repository.
pub fn trace(name: &str) -> PathBuf {
    repo_dir().join("tests/data/traces").join(name)
}

/// Runs `buildkit-launcher` with the environment cleared of anything that would change its
/// behaviour (CI variables, config path) and a private HOME and state directory.
pub struct Launcher {
    args: Vec<OsString>,
    envs: Vec<(String, OsString)>,
    cwd: Option<PathBuf>,
    home: tempfile::TempDir,
}

#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Launcher {
    pub fn new() -> Launcher {
        Launcher {
            args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
            home: tempfile::tempdir().expect("temp HOME"),
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// `--history=file:PATH`
    pub fn history_file(self, path: &Path) -> Self {
        self.args([format!("--history=file:{}", path.display())])
    }

    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.envs.push((key.to_owned(), value.into()));
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    pub fn run(self) -> Outcome {
        let mut cmd = Command::new(BIN);
        cmd.args(&self.args);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            // HCLOUD_* too: a test must never reach a real cloud endpoint or token by accident.
            if key.starts_with("CI_")
                || key.starts_with("PLUGIN_")
                || key.starts_with("BUILDKIT_LAUNCHER")
                || key.starts_with("HCLOUD_")
                // The machine's own proxy is never the test's.
                || key.to_ascii_lowercase().ends_with("_proxy")
            {
                cmd.env_remove(key.as_ref());
            }
        }
        cmd.env("HOME", self.home.path())
            .env("XDG_STATE_HOME", self.home.path().join("state"))
            .env("NO_COLOR", "1");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        let out = cmd.output().expect("run buildkit-launcher");
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Outcome {
    /// Replace varying paths with stable placeholders for snapshots.
    pub fn redact(mut self, pairs: &[(&Path, &str)]) -> Self {
        for (path, placeholder) in pairs {
            let text = path.display().to_string();
            self.stdout = self.stdout.replace(&text, placeholder);
            self.stderr = self.stderr.replace(&text, placeholder);
        }
        self
    }

    /// The run failed with `code` and said so in exactly one line starting with `error: `.
    pub fn assert_one_line_error(&self, code: i32) -> &str {
        assert_eq!(
            self.code, code,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line, got:\n{}", self.stderr);
        assert!(lines[0].starts_with("error: "), "{}", lines[0]);
        assert!(self.stdout.is_empty(), "nothing on stdout: {}", self.stdout);
        lines[0]
    }

    /// The run failed with `code` and said why in exactly one line starting with `error: `
    /// (progress lines and warnings before it are allowed).
    pub fn assert_one_error_line(&self, code: i32) -> &str {
        assert_eq!(
            self.code, code,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "expected one error line, got:\n{}",
            self.stderr
        );
        errors[0]
    }
}

/// A throwaway build context: a Dockerfile plus whatever files a test adds.
pub struct Context {
    pub dir: tempfile::TempDir,
}

impl Context {
    pub fn new() -> Context {
        let dir = tempfile::tempdir().expect("temp context");
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        Context { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(self, name: &str, content: &str) -> Self {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, content).unwrap();
        self
    }
}

/// Spawn `cmd` (a launcher) and return once a line of its stderr contains `needle`, plus half a
/// second for the step to get going. Stderr keeps being drained so the launcher never blocks on
/// a full pipe. If the line never comes, the process is killed and reaped and the test fails.
pub fn spawn_until(cmd: &mut Command, needle: &str) -> std::process::Child {
    let (child, rx) = spawn_until_keeping(cmd, needle);
    std::thread::spawn(move || while rx.recv().is_ok() {});
    child
}

/// [`spawn_until`], and the rest of stderr comes through the receiver (it ends when the
/// launcher does): for a test that reads what the launcher said after the line.
pub fn spawn_until_keeping(
    cmd: &mut Command,
    needle: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start buildkit-launcher");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(line) if line.contains(needle) => {
                std::thread::sleep(std::time::Duration::from_millis(500));
                return (child, rx);
            }
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the launcher never printed a line containing {needle:?}");
            }
        }
    }
}

/// Send SIGTERM to `child` (a launcher under test), as Woodpecker does on cancel.
pub fn sigterm(child: &std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("send SIGTERM");
}
