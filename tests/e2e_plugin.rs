//! Plugin mode end to end: the binary started with no arguments, driven only by `PLUGIN_*` and
//! `CI_*` variables as a Woodpecker step would be, through the Hetzner API simulator and a real
//! registry that also keeps the build history.

mod support;

use std::process::Command;

use buildkit_launcher::history::registry::RegistryStore;
use buildkit_launcher::history::{HistoryStore, Outcome, Sample};
use support::hcloud_sim::HcloudSim;
use support::local_build::TOOLS;
use support::registry::{Registry, require_root_and_tools};
use support::{BIN, Context};

fn plugin_build(
    sim: &HcloudSim,
    registry: &Registry,
    ctx: &Context,
    report: &str,
) -> (i32, String) {
    let out = support::plugin_step::run(
        sim,
        ctx,
        &[
            ("CI_REPO", "org/plugin-app"),
            ("CI_PIPELINE_NUMBER", "42"),
            ("PLUGIN_REGISTRY", &registry.addr),
            ("PLUGIN_INSECURE_REGISTRY", "true"),
            ("PLUGIN_REPO", "org/plugin-app"),
            ("PLUGIN_TAGS", "latest,v1"),
            ("PLUGIN_BUILD_ARGS", r#"{"GREETING":"hello, plugin"}"#),
            ("PLUGIN_REPORT", report),
        ],
    );
    (out.code, out.stderr)
}

#[test]
fn a_plugin_build_from_settings_alone_and_history_that_resizes_the_next_build() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let sim = HcloudSim::with_golden_amd64();
    let registry = Registry::start().with_base_image();
    let dockerfile = format!(
        "FROM {}\nARG GREETING\nRUN echo \"$GREETING\" > /greeting.txt\n",
        registry.base_image()
    );
    let ctx = Context::new().file("Dockerfile", &dockerfile).file(
        "fast.ncl",
        "{ hcloud.retry = { initial_delay_ms = 50, max_delay_ms = 400 } }",
    );
    // Four earlier builds of this key needed 7000 MiB: one more sample and history decides.
    let store = RegistryStore::new(registry.addr.clone(), true, None, 100);
    for _ in 0..4 {
        store
            .append(&Sample {
                ts: "2026-11-01T00:00:00Z".into(),
                repo: "org/plugin-app".into(),
                dockerfile: "Dockerfile".into(),
                target: None,
                lang: Some("generic".into()),
                tier: Some("cx43".into()),
                peak_memory_mib: 7000,
                arch: None,
                duration_s: 100.0,
                outcome: Outcome::Ok,
            })
            .unwrap();
    }

    let first = ctx.path().join("first.json").display().to_string();
    let (code, stderr) = plugin_build(&sim, &registry, &ctx, &first);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&first).unwrap()).unwrap();
    assert_eq!(report["provider"], "hcloud");
    assert_eq!(
        report["plan"]["source"], "default",
        "4 samples are not enough yet"
    );
    assert_eq!(report["plan"]["tier"], "cx33");
    assert_eq!(report["plan"]["history"]["key"]["repo"], "org/plugin-app");
    let name = sim.last_create_request().unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(name.starts_with("bkl-org-plugin-app-42-"), "{name}");
    for tag in ["latest", "v1"] {
        assert_eq!(
            registry.manifest_digest("org/plugin-app", tag).as_deref(),
            report["digest"].as_str()
        );
    }

    // The second build reads the five samples back from the registry: p95 = 7000 × 1.2 → cx43.
    let second = ctx.path().join("second.json").display().to_string();
    let (code, stderr) = plugin_build(&sim, &registry, &ctx, &second);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&second).unwrap()).unwrap();
    assert_eq!(report["plan"]["source"], "history");
    assert_eq!(report["plan"]["samples"], 5);
    assert_eq!(report["plan"]["tier"], "cx43");
    sim.assert_clean();
}

#[test]
fn an_unknown_plugin_setting_is_exit_2_with_one_line() {
    let ctx = Context::new();
    let out = Command::new(BIN)
        .current_dir(ctx.path())
        .env_remove("CI")
        .env("CI_WORKSPACE", ctx.path())
        .env("PLUGIN_TAGZ", "latest")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("tagz (did you mean tag?): not a setting of this plugin"),
        "{stderr}"
    );
}
