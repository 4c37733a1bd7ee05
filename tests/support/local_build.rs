//! `build --provider local` fixtures for the end-to-end suites: a registry with the base image,
//! a private runner directory, a context, the report; and the checks every such test ends with
//! (nothing left behind, the tags resolve to the reported digest).

use std::path::PathBuf;
use std::process::Command;

use super::registry::{Registry, require_root_and_tools};
use super::{Context, Launcher};

pub const TOOLS: &[&str] = &[
    "sshd",
    "ssh",
    "rsync",
    "buildah",
    "docker-registry",
    "busybox",
    // the real BuildKit (scripts/install-deps): every buildctl build runs on it
    "buildctl",
    "buildkitd",
    "runc",
];

/// A registry with the base image, a private runner directory, and a context.
pub struct Fixture {
    pub registry: Registry,
    pub runners: tempfile::TempDir,
    pub ctx: Context,
    pub report: PathBuf,
    /// `--local-tools` (default: none; the runner's buildctl is the real one, talking to the
    /// runner's own buildkitd).
    pub tools: Option<PathBuf>,
    /// `--registry` (default: the registry's address).
    pub registry_addr: String,
}

impl Fixture {
    /// `None` (skip) where root or a tool is missing, except under CI=true where it panics.
    pub fn new(dockerfile_body: &str) -> Option<Fixture> {
        if !require_root_and_tools(TOOLS) {
            return None;
        }
        let registry = Registry::start().with_base_image();
        let dockerfile = format!("FROM {}\n{dockerfile_body}\n", registry.base_image());
        Some(Fixture::with(registry, &dockerfile))
    }

    /// With this registry and this whole Dockerfile.
    pub fn with(registry: Registry, dockerfile: &str) -> Fixture {
        let ctx = Context::new().file("Dockerfile", dockerfile);
        let runners = tempfile::Builder::new()
            .prefix("bkl-e2e-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let report = ctx.path().join("report.json");
        Fixture {
            runners,
            ctx,
            report,
            tools: None,
            registry_addr: registry.addr.clone(),
            registry,
        }
    }

    pub fn args(&self, backend: &str) -> Vec<String> {
        let mut args = vec![
            "build".to_owned(),
            "--provider".into(),
            "local".into(),
            "--local-dir".into(),
            self.runners.path().display().to_string(),
            "--history".into(),
            format!("file:{}", self.ctx.path().join("history.jsonl").display()),
            "--backend".into(),
            backend.into(),
            "--context".into(),
            self.ctx.path().display().to_string(),
            "--project".into(),
            "e2e/app".into(),
            "--registry".into(),
            self.registry_addr.clone(),
            "--insecure-registry".into(),
            "--report".into(),
            self.report.display().to_string(),
        ];
        if let Some(tools) = &self.tools {
            args.push("--local-tools".into());
            args.push(tools.display().to_string());
        }
        args
    }

    pub fn build(&self, backend: &str, extra: &[&str]) -> crate::support::Outcome {
        Launcher::new().args(self.args(backend)).args(extra).run()
    }

    pub fn report(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.report).expect("the report was written");
        serde_json::from_str(&text).unwrap()
    }

    /// No runner directory, cgroup or sshd of this fixture is left.
    pub fn assert_nothing_left(&self) {
        let base = self.runners.path();
        let dirs: Vec<_> = std::fs::read_dir(base)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("local-"))
            .collect();
        assert!(dirs.is_empty(), "runner directories left: {dirs:?}");
        for attempt in self.report()["attempts"].as_array().unwrap() {
            let id = attempt["runner"].as_str().unwrap();
            crate::support::runner::assert_no_cgroups(id);
            assert_eq!(attempt["destroyed"], true, "{attempt}");
        }
        crate::support::runner::assert_no_daemon_or_mount(base);
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout);
        let base = base.display().to_string();
        assert!(
            !ps.lines().any(|l| l.contains("sshd") && l.contains(&base)),
            "an sshd of this test is still running"
        );
        assert!(
            !ps.lines()
                .any(|l| l.contains("bkl-runner-stats") && l.contains(&base)),
            "a memory sampler of this test is still running"
        );
    }
}

pub fn outcomes(report: &serde_json::Value) -> Vec<(String, String)> {
    report["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["tier"].as_str().unwrap().to_owned(),
                a["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub fn assert_success(f: &Fixture, out: &crate::support::Outcome) {
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    let report = f.report();
    assert_eq!(report["outcome"], "success");
    let digest = report["digest"].as_str().unwrap();
    assert!(digest.starts_with("sha256:"), "{digest}");
    // Independently of the launcher's own check: both tags resolve to the reported digest.
    for tag in ["v1", "latest"] {
        assert_eq!(
            f.registry.manifest_digest("e2e/app", tag).as_deref(),
            Some(digest),
            "tag {tag}"
        );
    }
    assert!(out.stdout.starts_with("build succeeded:"), "{}", out.stdout);
    f.assert_nothing_left();
}
