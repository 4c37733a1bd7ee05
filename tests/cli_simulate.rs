//! `simulate` reproduces the figures SIZING.md quotes for the shared traces.

mod support;

use support::{Launcher, trace};

fn simulate_json(name: &str) -> serde_json::Value {
    let out = Launcher::new()
        .args(["simulate", "--json", "--trace"])
        .args([trace(name)])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

fn assert_close(v: &serde_json::Value, field: &str, expected: f64) {
    let got = v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} missing"));
    assert!(
        (got - expected).abs() < 1e-4,
        "{field}: got {got}, SIZING.md says {expected}"
    );
}

#[test]
fn steady_noisy_trace_matches_sizing_md() {
    let r = simulate_json("dev-steady-noisy.jsonl");
    assert_eq!(r["builds"], 720);
    assert_close(&r, "policy_cost", 9.2320);
    assert_close(&r, "oracle_cost", 7.3376);
    assert_close(&r, "cost_ratio_vs_oracle", 1.2582);
    assert_eq!(r["oom_retries"], 0);
    assert_close(&r, "fixed_cost", 17.2800);
    assert_close(&r, "fixed_cost_ratio_vs_oracle", 2.3550);
    assert_eq!(r["fixed_failures"], 6);
    assert_eq!(r["sized_by_history"], 660);
    assert_eq!(r["sized_by_default"], 60);
}

#[test]
fn drift_step_spiky_trace_matches_sizing_md() {
    let r = simulate_json("dev-drift-step-spiky.jsonl");
    assert_eq!(r["builds"], 720);
    assert_close(&r, "policy_cost", 11.5888);
    assert_close(&r, "oracle_cost", 8.4960);
    assert_close(&r, "cost_ratio_vs_oracle", 1.3640);
    assert_eq!(r["oom_retries"], 2);
    assert_eq!(r["failures"], 0);
    assert_close(&r, "fixed_cost", 17.6160);
    assert_close(&r, "fixed_cost_ratio_vs_oracle", 2.0734);
    assert_eq!(r["fixed_failures"], 0);
}

#[test]
fn flags_change_the_policy() {
    // A larger margin can only cost more on a trace with no OOMs.
    let base = simulate_json("dev-steady-noisy.jsonl");
    let out = Launcher::new()
        .args(["simulate", "--json", "--margin", "1.6", "--trace"])
        .args([trace("dev-steady-noisy.jsonl")])
        .run();
    let wide: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(wide["policy_cost"].as_f64() > base["policy_cost"].as_f64());
    assert_eq!(wide["oracle_cost"], base["oracle_cost"]);
}

#[test]
fn table_output() {
    let t = trace("dev-drift-step-spiky.jsonl");
    let out = Launcher::new()
        .args(["simulate", "--trace"])
        .args([&t])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = out.redact(&[(&t, "[TRACE]")]);
    insta::assert_snapshot!("simulate_table", out.stdout);
}
