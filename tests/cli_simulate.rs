//! `simulate` reproduces the figures SIZING.md quotes for the shared traces.

mod support;

use support::{Launcher, trace};

/// SIZING.md's simulation prices (the figures it quotes were made with them), and IPv6-only
/// runners, so no primary IPv4 is added to them.
const SIZING_MD: &str = r#"{
  tiers.amd64 = [
    { name = "cx23", vcpus = 2, memory_mib = 4096, disk_gb = 40, price_eur_per_hour = 0.0080 },
    { name = "cx33", vcpus = 4, memory_mib = 8192, disk_gb = 80, price_eur_per_hour = 0.0128 },
    { name = "cx43", vcpus = 8, memory_mib = 16384, disk_gb = 160, price_eur_per_hour = 0.0240 },
    { name = "cx53", vcpus = 16, memory_mib = 32768, disk_gb = 320, price_eur_per_hour = 0.0464 },
  ],
  hcloud.ipv4 = %IPV4%,
}"#;

fn simulate_with(name: &str, ipv4: bool, extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("launcher.ncl");
    std::fs::write(&config, SIZING_MD.replace("%IPV4%", &ipv4.to_string())).unwrap();
    let out = Launcher::new()
        .args(["--config"])
        .args([&config])
        .args(["simulate", "--json"])
        .args(extra)
        .args(["--trace"])
        .args([trace(name)])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

fn simulate_json(name: &str) -> serde_json::Value {
    simulate_with(name, false, &[])
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
    let wide = simulate_with("dev-steady-noisy.jsonl", false, &["--margin", "1.6"]);
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

#[test]
fn every_runner_pays_for_its_primary_ipv4_unless_it_is_ipv6_only() {
    let without = simulate_with("dev-steady-noisy.jsonl", false, &[]);
    let with = simulate_with("dev-steady-noisy.jsonl", true, &[]);
    // The fixed baseline runs each of the 720 builds on cx43 for one started hour: the
    // primary IPv4 adds 720 × 0.0008 EUR.
    let fixed = |v: &serde_json::Value| v["fixed_cost"].as_f64().unwrap();
    assert!(
        (fixed(&with) - fixed(&without) - 720.0 * 0.0008).abs() < 1e-9,
        "{} vs {}",
        fixed(&with),
        fixed(&without)
    );
    assert_eq!(with["ipv4_eur_per_hour"], 0.0008);
    assert_eq!(without["ipv4_eur_per_hour"], 0.0);
    for field in ["policy_cost", "oracle_cost"] {
        assert!(
            with[field].as_f64() > without[field].as_f64(),
            "{field}: the IPv4 is billed too"
        );
    }
    // The default config: Hetzner's reference prices, the IPv4 included, and the table says so.
    let t = trace("dev-steady-noisy.jsonl");
    let out = Launcher::new()
        .args(["simulate", "--trace"])
        .args([&t])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("each runner's primary IPv4 included (0.0008 EUR/h)"),
        "{}",
        out.stdout
    );
}
