//! `check` against the Hetzner API simulator and a real registry: every finding appears when
//! its cause is staged, and a healthy setup has none.

mod support;

use support::hcloud_sim::HcloudSim;
use support::registry::{Registry, require_root_and_tools};
use support::{Context, Launcher};

/// A golden snapshot baked with the buildkitd settings of the default launcher config.
fn golden(sim: &HcloudSim, arch: &str, created: &str) {
    golden_with(sim, arch, created, &current_digest());
}

fn golden_with(sim: &HcloudSim, arch: &str, created: &str, digest: &str) -> i64 {
    sim.add_snapshot(
        arch,
        &[
            ("buildkit-launcher/role", "golden"),
            ("buildkit-launcher/arch", arch),
            ("buildkit-launcher/buildkitd-config", digest),
        ],
        created,
    )
}

/// The buildkitd config digest of the default launcher config.
fn current_digest() -> String {
    let config = buildkit_launcher::config::Config::defaults();
    buildkit_launcher::config::buildkitd_toml::golden_digest(&config.buildkitd).unwrap()
}

fn now_rfc3339(days_ago: u64) -> String {
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs(days_ago * 86_400);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.replace('Z', "+00:00")
}

fn check(sim: &HcloudSim, args: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
    let out = Launcher::new()
        .env("HCLOUD_TOKEN", &sim.token)
        .env("HCLOUD_ENDPOINT", &sim.endpoint)
        .args(["check", "--json"])
        .args(args)
        .run();
    let findings: Vec<serde_json::Value> = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    (out.code, findings, out.stderr)
}

/// The findings that are not passes.
fn problems(findings: &[serde_json::Value]) -> Vec<serde_json::Value> {
    findings
        .iter()
        .filter(|f| f["severity"] != "passed")
        .cloned()
        .collect()
}

fn has(findings: &[serde_json::Value], severity: &str, area: &str, text: &str) -> bool {
    findings.iter().any(|f| {
        f["severity"] == severity
            && f["area"] == area
            && f["message"].as_str().unwrap().contains(text)
            && !f["fix"].as_str().unwrap().is_empty()
    })
}

#[test]
fn a_healthy_setup_passes_every_check() {
    if !require_root_and_tools(&["docker-registry"]) {
        return;
    }
    let sim = HcloudSim::start();
    golden(&sim, "amd64", &now_rfc3339(2));
    golden(&sim, "arm64", &now_rfc3339(3));
    let registry = Registry::start();
    let ctx = Context::new();
    let history = format!("file:{}/h.jsonl", ctx.path().display());
    let (code, findings, stderr) = check(
        &sim,
        &[
            "--registry",
            &registry.addr,
            "--insecure-registry",
            "--history",
            &history,
        ],
    );
    assert_eq!(
        problems(&findings),
        Vec::<serde_json::Value>::new(),
        "{stderr}"
    );
    assert_eq!(code, 0);
    // The whole checklist, each check that passed named.
    let passed = |area: &str, text: &str| {
        findings.iter().any(|f| {
            f["severity"] == "passed"
                && f["area"] == area
                && f["message"].as_str().unwrap().contains(text)
        })
    };
    for (area, text) in [
        ("server types", "tiers.amd64"),
        ("server types", "tiers.arm64"),
        ("hcloud token", "may write"),
        ("golden image", "amd64 golden snapshot"),
        ("golden image", "arm64 golden snapshot"),
        (
            "golden image",
            "has the launcher config's buildkitd settings",
        ),
        ("runners", "no runner with an expired lease"),
        ("hcloud rate limit", "API requests left"),
        ("registry", "answers"),
        ("history", "can be read"),
    ] {
        assert!(passed(area, text), "{area}: {text}: {findings:#?}");
    }
    // The same checklist for a person: one line per check and a total.
    let out = Launcher::new()
        .env("HCLOUD_TOKEN", &sim.token)
        .env("HCLOUD_ENDPOINT", &sim.endpoint)
        .args(["check", "--registry", &registry.addr, "--insecure-registry"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("PASSED   server types"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("checks passed, 0 warned, 0 failed"),
        "{}",
        out.stdout
    );
}

#[test]
fn each_staged_cause_is_reported_with_its_severity() {
    if !require_root_and_tools(&["docker-registry"]) {
        return;
    }
    let sim = HcloudSim::start();
    golden(&sim, "amd64", &now_rfc3339(20)); // older than 14 days; arm64 has none
    // Deprecated in one configured location only (per location, as the API now reports it;
    // the top-level deprecation stays null).
    sim.deprecate_in("cx33", "nbg1", false);
    // Sold in none of the configured locations.
    for location in ["fsn1", "nbg1", "hel1"] {
        sim.stop_selling("cax41", location);
    }
    sim.add_server(
        "bkl-killed-1-deadbeef",
        &[
            ("managed-by", "buildkit-launcher"),
            ("buildkit-launcher/expires", "1000000000"),
        ],
    );
    sim.set_budget(3600, 100);
    let ctx = Context::new();
    std::fs::create_dir(ctx.path().join("h.jsonl")).unwrap(); // a directory: unreadable as a file
    let history = format!("file:{}/h.jsonl", ctx.path().display());
    let (code, findings, stderr) = check(
        &sim,
        // Nothing listens on port 9 of loopback: the registry is unreachable.
        &[
            "--registry",
            "127.0.0.1:9",
            "--insecure-registry",
            "--history",
            &history,
        ],
    );
    assert_eq!(code, 4, "high findings make a non-zero exit\n{stderr}");
    assert!(
        has(&findings, "warning", "golden image", "is 20 days old"),
        "{findings:#?}"
    );
    assert!(
        has(
            &findings,
            "warning",
            "golden image",
            "no golden snapshot for arm64"
        ),
        "{findings:#?}"
    );
    assert!(
        has(
            &findings,
            "warning",
            "server types",
            "cx33 (tiers.amd64) is deprecated at Hetzner in nbg1"
        ),
        "{findings:#?}"
    );
    assert!(
        has(
            &findings,
            "high",
            "server types",
            "\"cax41\" is not sold in any configured location"
        ),
        "{findings:#?}"
    );
    assert!(
        has(
            &findings,
            "high",
            "runners",
            "1 runner(s) with expired leases"
        ),
        "{findings:#?}"
    );
    assert!(
        has(
            &findings,
            "warning",
            "hcloud rate limit",
            "of 3600 API requests left"
        ),
        "{findings:#?}"
    );
    assert!(
        has(&findings, "high", "registry", "127.0.0.1:9 is unreachable"),
        "{findings:#?}"
    );
    assert!(
        has(&findings, "high", "history", "cannot be read"),
        "{findings:#?}"
    );
    // Highest severity first.
    assert_eq!(findings[0]["severity"], "high");
}

#[test]
fn a_missing_golden_image_for_the_default_arch_and_an_unknown_type_are_high() {
    let sim = HcloudSim::start();
    let ctx = Context::new().file(
        "bad.ncl",
        r#"{ tiers.amd64 = [ { name = "cx23", vcpus = 2, memory_mib = 4096, disk_gb = 40 },
                             { name = "cx77", vcpus = 4, memory_mib = 8192, disk_gb = 80 } ],
             language_defaults.amd64 = { rust = "cx23", java = "cx23", go = "cx23", node = "cx23", python = "cx23", generic = "cx23" } }"#,
    );
    let config = ctx.path().join("bad.ncl").display().to_string();
    let out = Launcher::new()
        .env("HCLOUD_TOKEN", &sim.token)
        .env("HCLOUD_ENDPOINT", &sim.endpoint)
        .args(["--config", &config, "check", "--json"])
        .run();
    let findings: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(out.code, 4);
    assert!(
        has(
            &findings,
            "high",
            "server types",
            "cx77 (tiers.amd64) does not exist"
        ),
        "{findings:#?}"
    );
    assert!(
        has(
            &findings,
            "high",
            "golden image",
            "no golden snapshot for amd64"
        ),
        "{findings:#?}"
    );
}

#[test]
fn an_invalid_token_is_critical() {
    let sim = HcloudSim::start();
    let out = Launcher::new()
        .env("HCLOUD_TOKEN", "not-the-simulators-token")
        .env("HCLOUD_ENDPOINT", &sim.endpoint)
        .args(["check", "--json"])
        .run();
    let findings: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(out.code, 4);
    assert!(
        has(&findings, "critical", "hcloud token", "unauthorized"),
        "{findings:#?}"
    );
    assert!(
        !out.stdout.contains("not-the-simulators-token"),
        "the token never appears"
    );
}

#[test]
fn a_readonly_token_is_critical_and_a_writable_one_registers_the_project_key() {
    let sim = HcloudSim::start();
    golden(&sim, "amd64", &now_rfc3339(2));
    golden(&sim, "arm64", &now_rfc3339(3));
    let out = Launcher::new()
        .env("HCLOUD_TOKEN", sim.readonly_token())
        .env("HCLOUD_ENDPOINT", &sim.endpoint)
        .args(["check", "--json"])
        .run();
    let findings: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        has(
            &findings,
            "critical",
            "hcloud token",
            "the token is read-only"
        ),
        "{findings:#?}"
    );
    assert!(sim.ssh_keys().is_empty());
    let (code, findings, stderr) = check(&sim, &[]);
    let findings = problems(&findings);
    assert_eq!((code, findings.len()), (0, 0), "{findings:#?}\n{stderr}");
    assert_eq!(
        sim.ssh_keys().len(),
        1,
        "the probe registered the project key"
    );
    // Once it exists, the probe rewrites its label: still one key, still no finding.
    let (code, _, _) = check(&sim, &[]);
    assert_eq!(code, 0);
    assert_eq!(sim.ssh_keys().len(), 1);
}

#[test]
fn refused_registry_credentials_are_high() {
    if !require_root_and_tools(&["docker-registry", "htpasswd"]) {
        return;
    }
    let sim = HcloudSim::start();
    golden(&sim, "amd64", &now_rfc3339(1));
    golden(&sim, "arm64", &now_rfc3339(1));
    let registry = Registry::start_with_auth("ci", "right-password");
    let out = Launcher::new()
        .env("HCLOUD_TOKEN", &sim.token)
        .env("HCLOUD_ENDPOINT", &sim.endpoint)
        .env("REGISTRY_PASSWORD", "wrong-password")
        .args([
            "check",
            "--json",
            "--insecure-registry",
            "--registry-user",
            "ci",
            "--registry",
            &registry.addr,
        ])
        .run();
    let findings: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(out.code, 4);
    assert!(
        has(
            &findings,
            "high",
            "registry",
            "refused the credentials of user ci"
        ),
        "{findings:#?}"
    );
    assert!(!out.stdout.contains("wrong-password") && !out.stderr.contains("wrong-password"));
}

#[test]
fn a_golden_snapshot_baked_with_other_buildkitd_settings_is_a_warning() {
    let sim = HcloudSim::start();
    let old = golden_with(
        &sim,
        "amd64",
        &now_rfc3339(1),
        "0123456789abcdef0123456789abcdef",
    );
    golden(&sim, "arm64", &now_rfc3339(1));
    let (_, findings, stderr) = check(&sim, &[]);
    let expected = format!(
        "the newest amd64 golden snapshot ({old}) was baked with other buildkitd settings (digest 0123456789abcdef0123456789abcdef) than the launcher config has now ({}): bake again with `buildkit-launcher golden-image build --arch amd64`",
        current_digest()
    );
    let found = |severity: &str, message: &str| {
        findings
            .iter()
            .any(|f| f["severity"] == severity && f["message"] == message)
    };
    assert!(found("warning", &expected), "{stderr}\n{findings:#?}");
    assert!(
        has(&findings, "passed", "golden image", "arm64 golden snapshot"),
        "{findings:#?}"
    );
    assert!(
        !findings.iter().any(|f| f["severity"] != "passed"
            && f["message"]
                .as_str()
                .unwrap()
                .contains("arm64 golden snapshot")),
        "{findings:#?}"
    );
}

#[test]
fn each_rung_is_reported_with_what_a_build_of_it_would_meet_per_location() {
    let sim = HcloudSim::start();
    golden(&sim, "amd64", &now_rfc3339(1));
    golden(&sim, "arm64", &now_rfc3339(1));
    // July 2026: cx33, cx43, cx53 and every cax type orderable nowhere (FACTS.md "Stock").
    for t in ["cx33", "cx43", "cx53", "cax11", "cax21", "cax31", "cax41"] {
        sim.sell_out(t);
    }
    // The substitute is deprecated in one location (per location, as the API gives it).
    sim.deprecate_in("cpx32", "hel1", false);
    let (code, findings, stderr) = check(&sim, &[]);
    assert_eq!(code, 4, "a rung with nothing in stock is high\n{stderr}");
    let message = |text: &str| {
        findings
            .iter()
            .find(|f| f["area"] == "server stock" && f["message"].as_str().unwrap().contains(text))
            .unwrap_or_else(|| panic!("no server stock finding with {text:?}: {findings:#?}"))
            .clone()
    };
    // In stock: passed, per location.
    let cx23 = message("rung cx23 of tiers.amd64");
    assert_eq!(cx23["severity"], "passed");
    assert_eq!(
        cx23["message"],
        "rung cx23 of tiers.amd64 (4 GB, 2 vCPUs): cx23 in stock in fsn1, nbg1, hel1"
    );
    // Sold out: a warning naming the substitute and every candidate's stock per location.
    let cx33 = message("rung cx33 of tiers.amd64");
    assert_eq!(cx33["severity"], "warning");
    let text = cx33["message"].as_str().unwrap();
    assert!(
        text.starts_with("rung cx33 of tiers.amd64 (8 GB, 4 vCPUs): builds of this rung will use cpx32 (cx33 sold out in fsn1, nbg1, hel1; cpx32 in stock in fsn1, nbg1, hel1 (deprecated there, sold until "),
        "{text}"
    );
    // Every arm64 candidate sold out: high, naming them.
    let cax21 = message("rung cax21 of tiers.arm64");
    assert_eq!(cax21["severity"], "high");
    let text = cax21["message"].as_str().unwrap();
    assert!(text.contains("no candidate in stock anywhere"), "{text}");
    for t in [
        "cax21 sold out in fsn1, nbg1, hel1",
        "cax31 sold out",
        "cax41 sold out",
    ] {
        assert!(text.contains(t), "{t}: {text}");
    }
    assert!(cax21["fix"].as_str().unwrap().contains("hcloud.locations"));
    // Reading stock costs no request beyond the one GET /server_types of the run.
    assert_eq!(
        sim.calls().get("GET /server_types").copied(),
        Some(1),
        "{:?}",
        sim.calls()
    );
}
