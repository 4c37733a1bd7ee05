//! A Woodpecker plugin step through the Hetzner API simulator and a real runner: no arguments,
//! the settings as `PLUGIN_*`, the pipeline facts as `CI_*`, and an operator policy that lets
//! this pipeline point the plugin at the simulator and bring a config with fast retries.

use std::process::Command;

use super::hcloud_sim::HcloudSim;
use super::{BIN, Context, Outcome};

/// The config every step brings (fast API retries).
pub const FAST_CONFIG: &str = "{ hcloud.retry = { initial_delay_ms = 50, max_delay_ms = 400 } }";

/// Run the step in `ctx` (its workspace), with `settings` (settings and `CI_*` facts) added to
/// the simulator's token and endpoint.
pub fn run(sim: &HcloudSim, ctx: &Context, settings: &[(&str, &str)]) -> Outcome {
    run_with_policy(sim, ctx, "", settings)
}

/// [`run`] under a policy with `fields` (`, secret_env = ["X"]`) added to the one that lets
/// the step bring its config and the simulator's endpoint.
pub fn run_with_policy(
    sim: &HcloudSim,
    ctx: &Context,
    fields: &str,
    settings: &[(&str, &str)],
) -> Outcome {
    let policy = ctx.path().join("operator-policy.ncl");
    std::fs::write(
        &policy,
        format!("{{ repository_may_set = ['config, 'hcloud_endpoint]{fields} }}"),
    )
    .unwrap();
    std::fs::write(ctx.path().join("fast.ncl"), FAST_CONFIG).unwrap();
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("CI") || key.starts_with("PLUGIN_") || key.starts_with("HCLOUD_") {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(ctx.path())
        .env("BUILDKIT_LAUNCHER_POLICY", &policy)
        .env("HOME", ctx.path())
        .env("CI_WORKSPACE", ctx.path())
        .env("CI_PIPELINE_NUMBER", "9")
        .env("PLUGIN_HCLOUD_TOKEN", &sim.token)
        .env("PLUGIN_HCLOUD_ENDPOINT", &sim.endpoint)
        .env("PLUGIN_CONFIG", ctx.path().join("fast.ncl"));
    for (k, v) in settings {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
