//! A hostile repository and pipeline file, shared by the suites that attack `build`
//! (tests/e2e_untrusted.rs, tests/e2e_settings.rs): a context with a greedy spec, a folder
//! outside it holding a marker that must never leak, the Hetzner API simulator, and a
//! Woodpecker plugin step driven only by `PLUGIN_*`/`CI_*` and the operator's policy file.

use std::process::Command;

use super::hcloud_sim::HcloudSim;
use super::{BIN, Context, Launcher};

pub const OUTSIDE: &str = "OUTSIDE-MARKER-91be";
/// A spec asking for the most expensive server for a day: what an attacker would want leaked.
pub const GREEDY_SPEC: &str = "{ tier = \"cx53\", timeout_minutes = 1440 }";

pub struct Attack {
    pub sim: HcloudSim,
    pub ctx: Context,
    pub outside: tempfile::TempDir,
}

impl Attack {
    pub fn new() -> Attack {
        let sim = HcloudSim::with_golden_amd64();
        let ctx = Context::new().file(".build-spec.ncl", GREEDY_SPEC);
        std::fs::create_dir(ctx.path().join(".git")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("rules"), format!("{OUTSIDE}\n[bad\n")).unwrap();
        std::fs::write(
            outside.path().join("Dockerfile"),
            format!("FROM scratch\n# {OUTSIDE}\n"),
        )
        .unwrap();
        Attack { sim, ctx, outside }
    }

    /// `build --provider hcloud` at a terminal, against the simulator.
    pub fn build(&self, extra: &[&str]) -> super::Outcome {
        Launcher::new()
            .env("HCLOUD_TOKEN", &self.sim.token)
            .env("HCLOUD_ENDPOINT", &self.sim.endpoint)
            .args(["build", "--provider", "hcloud", "--history", "none"])
            .args(["--registry", "127.0.0.1:9", "--context"])
            .args([self.ctx.path()])
            .args(extra)
            .run()
    }

    /// Refused with exit 2 in one line, nothing of the outside file in it, no API request.
    pub fn assert_refused_before_any_request(&self, out: &super::Outcome, what: &str) -> String {
        let line = out.assert_one_line_error(2).to_owned();
        assert!(
            !line.contains(OUTSIDE),
            "{what}: an outside file leaked: {line}"
        );
        assert!(!out.stdout.contains(OUTSIDE), "{what}");
        assert_eq!(
            self.sim.total_calls(),
            0,
            "{what}: the API was called: {:?}",
            self.sim.calls()
        );
        self.sim.assert_clean();
        line
    }

    pub fn reset(&self) {
        for name in [".dockerignore", "Dockerfile.dockerignore", "docker"] {
            let path = self.ctx.path().join(name);
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// A Woodpecker plugin step: no arguments, settings as `PLUGIN_*`, the operator's policy file.
pub fn plugin(a: &Attack, policy: &str, settings: &[(&str, &str)]) -> super::Outcome {
    plugin_in(a, a.ctx.path(), policy, settings)
}

/// [`plugin`] with the step's working directory at `dir` (the workspace, `CI_WORKSPACE`, is
/// still the context's folder).
pub fn plugin_in(
    a: &Attack,
    dir: &std::path::Path,
    policy: &str,
    settings: &[(&str, &str)],
) -> super::Outcome {
    let policy_file = a.outside.path().join("policy.ncl");
    std::fs::write(&policy_file, policy).unwrap();
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if ["CI", "PLUGIN_", "HCLOUD_", "BUILDKIT_LAUNCHER", "REGISTRY_"]
            .iter()
            .any(|p| key.starts_with(p))
        {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(dir)
        .env("HOME", a.outside.path())
        .env("BUILDKIT_LAUNCHER_POLICY", &policy_file)
        .env("CI_WORKSPACE", a.ctx.path())
        .env("CI_REPO", "org/attack")
        .env("PLUGIN_HCLOUD_TOKEN", &a.sim.token)
        .env("PLUGIN_HISTORY", "none")
        .env("PLUGIN_REGISTRY", "127.0.0.1:9");
    for (k, v) in settings {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    super::Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The simulator's endpoint as the only one the token may go to.
pub fn pinned(a: &Attack, rest: &str) -> String {
    format!("{{ hcloud_endpoint = \"{}\"{rest} }}", a.sim.endpoint)
}
