//! The world of an end-to-end build through the Hetzner API simulator: the simulator with a
//! golden snapshot, a registry with a base image, a context, the launcher's TMPDIR, and the
//! command line of `build --provider hcloud` against them (tests/e2e_hcloud*.rs).

use super::HcloudSim;
use crate::support::registry::{Registry, require_root_and_tools};
use crate::support::{Context, Launcher};

/// What a build on a sandbox runner needs (the same as a local build).
pub use crate::support::local_build::TOOLS;
pub const GOLDEN: &[(&str, &str)] = &[
    ("buildkit-launcher/role", "golden"),
    ("buildkit-launcher/arch", "amd64"),
    ("buildkit-launcher/buildkit", "v0.16.0"),
];

pub struct Cloud {
    pub sim: HcloudSim,
    pub registry: Registry,
    pub ctx: Context,
    /// The launcher's TMPDIR (its SSH keys and control socket): removed even after a SIGKILL.
    pub tmp: tempfile::TempDir,
}

impl Cloud {
    pub fn new(dockerfile_body: &str) -> Option<Cloud> {
        if !require_root_and_tools(TOOLS) {
            return None;
        }
        let sim = HcloudSim::with_golden_amd64();
        // The project key an earlier build registered (the first build of a project registers
        // it: tests/e2e_hcloud_faults.rs).
        sim.add_ssh_key("buildkit-launcher");
        let registry = Registry::start().with_base_image();
        let dockerfile = format!("FROM {}\n{dockerfile_body}\n", registry.base_image());
        // Retries fast enough for tests; the policy itself is the production one.
        let ctx = Context::new().file("Dockerfile", &dockerfile).file(
            "fast.ncl",
            "{ hcloud.retry = { initial_delay_ms = 50, max_delay_ms = 400 } }",
        );
        let tmp = tempfile::Builder::new()
            .prefix("bkl-t-")
            .tempdir_in("/tmp")
            .unwrap();
        Some(Cloud {
            sim,
            registry,
            ctx,
            tmp,
        })
    }

    pub fn report_path(&self) -> std::path::PathBuf {
        self.ctx.path().join("report.json")
    }

    pub fn args(&self) -> Vec<String> {
        let ctx = self.ctx.path().display().to_string();
        vec![
            "--config".into(),
            format!("{ctx}/fast.ncl"),
            "build".into(),
            "--provider".into(),
            "hcloud".into(),
            "--context".into(),
            ctx.clone(),
            "--project".into(),
            "e2e/app".into(),
            "--history".into(),
            format!("file:{ctx}/history.jsonl"),
            "--registry".into(),
            self.registry.addr.clone(),
            "--insecure-registry".into(),
            "--report".into(),
            self.report_path().display().to_string(),
        ]
    }

    pub fn launcher(&self) -> Launcher {
        Launcher::new()
            .env("HCLOUD_TOKEN", &self.sim.token)
            .env("HCLOUD_ENDPOINT", &self.sim.endpoint)
            .env("TMPDIR", self.tmp.path())
    }

    pub fn build(&self, extra: &[&str]) -> crate::support::Outcome {
        self.launcher().args(self.args()).args(extra).run()
    }

    pub fn report(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.report_path()).unwrap()).unwrap()
    }

    pub fn calls(&self, endpoint: &str) -> u32 {
        self.sim.calls().get(endpoint).copied().unwrap_or(0)
    }
}
