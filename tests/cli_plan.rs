//! Black-box tests of `plan` and `spec check` on the built binary.

mod support;

use support::{Context, Launcher, repo_dir};

fn history_line(repo: &str, peak: u64, outcome: &str) -> String {
    format!(
        r#"{{"ts":"2026-11-01T00:00:00Z","repo":"{repo}","dockerfile":"Dockerfile","lang":"node","peak_memory_mib":{peak},"duration_s":4000,"outcome":"{outcome}"}}"#
    )
}

#[test]
fn plan_of_the_example_explains_the_spec() {
    let example = repo_dir().join("examples/hello");
    let out = Launcher::new()
        .args(["plan", "--context"])
        .args([&example])
        .args([
            "--history",
            "none",
            "--registry",
            "localhost:5000",
            "--tag",
            "v1",
            "--tag",
            "latest",
        ])
        .run()
        .redact(&[(&example, "[EXAMPLE]")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr, "");
    insta::assert_snapshot!("plan_example_human", out.stdout);
}

#[test]
fn plan_shows_the_extra_caches_and_what_a_dry_run_leaves_out() {
    let example = repo_dir().join("examples/hello");
    let plan = |extra: &[&str]| {
        Launcher::new()
            .args(["plan", "--history", "none", "--context"])
            .args([&example])
            .args(["--registry", "localhost:5000", "--insecure-registry"])
            .args([
                "--cache-to",
                "localhost:5000/cache/hello:main,type=registry,ref=localhost:5000/cache/hello-min,mode=min",
                "--cache-from",
                "localhost:5000/cache/hello:main",
                "--cache-from",
                "mirror.example/pub/cache",
            ])
            .args(extra)
            .run()
            .redact(&[(&example, "[EXAMPLE]")])
    };
    let out = plan(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!("plan_extra_caches_human", out.stdout);
    let out = plan(&["--json", "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        json["extra_caches"],
        serde_json::json!({
            "to": [
                {"ref": "localhost:5000/cache/hello:main", "mode": "max"},
                {"ref": "localhost:5000/cache/hello-min", "mode": "min"},
            ],
            "from": [
                {"ref": "localhost:5000/cache/hello:main", "anonymous": false},
                {"ref": "mirror.example/pub/cache", "anonymous": true},
            ],
        })
    );
    let commands = json["commands"].to_string();
    assert!(!commands.contains("--export-cache"), "{commands}");
    assert_eq!(commands.matches("--import-cache").count(), 3, "{commands}");
}

#[test]
fn plan_for_the_local_provider_shows_the_tool_its_runner_really_has() {
    let example = repo_dir().join("examples/hello");
    let plan = |tools: &[&str]| {
        let out = Launcher::new()
            .args(["plan", "--json", "--history", "none", "--provider", "local"])
            .args(tools)
            .args(["--context"])
            .args([&example])
            .run();
        assert_eq!(out.code, 0, "{}", out.stderr);
        serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap()
    };
    // The sandbox runner's PATH: its bin/, --local-tools, then the system directories.
    let system_has_buildctl = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .any(|d| std::path::Path::new(d).join("buildctl").exists());
    let bare = plan(&[]);
    let commands = bare["commands"].to_string();
    if system_has_buildctl {
        assert!(commands.contains("buildctl build"), "{commands}");
    } else {
        assert!(commands.contains("buildah bud"), "{commands}");
        assert!(!commands.contains("buildctl"), "{commands}");
        let note = bare["backend_note"].as_str().unwrap();
        assert!(
            note.contains("buildctl is not on the local runner's PATH"),
            "{note}"
        );
    }
    // With a --local-tools directory holding an executable `buildctl`: buildctl, after the wait.
    let tools = tempfile::tempdir().unwrap();
    let buildctl = tools.path().join("buildctl");
    std::fs::write(&buildctl, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(
        &buildctl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let with_double = plan(&["--local-tools", tools.path().to_str().unwrap()]);
    let commands: Vec<&str> = with_double["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        commands[1].starts_with("buildctl --wait --timeout 60 debug workers"),
        "{commands:?}"
    );
    assert!(commands[2].starts_with("buildctl build "), "{commands:?}");
    assert!(with_double.get("backend_note").is_none());
}

#[test]
fn plan_by_history_json_has_the_design_fields() {
    let ctx = Context::new().file("package.json", "{}");
    let history = ctx.path().join("history.jsonl");
    let mut lines: Vec<String> = (0..19)
        .map(|i| history_line("org/app", 3000 + i, "ok"))
        .collect();
    lines.push(history_line("org/app", 6000, "ok"));
    lines.push(history_line("org/app", 30000, "oom")); // not a success: ignored
    lines.push(history_line("org/other", 30000, "ok")); // another key: ignored
    std::fs::write(&history, lines.join("\n") + "\n").unwrap();
    let out = Launcher::new()
        .args(["plan", "--json", "--project", "org/app", "--context"])
        .args([ctx.path()])
        .history_file(&history)
        .run()
        .redact(&[(ctx.path(), "[CTX]")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    // 20 samples 3000..=3018 and 6000: p95 = 19th smallest = 3018; × 1.2 = 3621.6 > 3584 → cx33
    assert_eq!(plan["tier"], "cx33");
    assert_eq!(plan["retry_tier"], "cx43");
    assert_eq!(plan["source"], "history");
    assert_eq!(plan["required_memory_mib"], 3622);
    assert_eq!(plan["samples"], 20);
    assert_eq!(plan["arch"], "amd64");
    // durations 4000 s → 2 started hours × (0.0104 server + 0.0008 primary IPv4)
    assert!((plan["estimated_cost_eur"].as_f64().unwrap() - 0.0224).abs() < 1e-12);
    assert!(
        plan["cost_basis"]
            .as_str()
            .unwrap()
            .contains("0.0008 EUR/h primary IPv4"),
        "{}",
        plan["cost_basis"]
    );
    assert!(
        plan["reason"]
            .as_str()
            .unwrap()
            .contains("p95 of the last 20 successful builds")
    );
    insta::assert_snapshot!("plan_history_json", out.stdout);
}

#[test]
fn plan_by_language_default_and_ci_repo_names_the_key() {
    let ctx = Context::new().file("Cargo.toml", "[package]\n");
    let out = Launcher::new()
        .args(["plan", "--history", "none", "--context"])
        .args([ctx.path()])
        .env("CI_REPO", "acme/engine")
        .run()
        .redact(&[(ctx.path(), "[CTX]")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!("plan_default_human", out.stdout);
}

#[test]
fn plan_on_arm64_uses_the_arm64_ladder() {
    let ctx = Context::new().file("Cargo.toml", "");
    let out = Launcher::new()
        .args([
            "plan",
            "--json",
            "--arch",
            "arm64",
            "--history",
            "none",
            "--context",
        ])
        .args([ctx.path()])
        .run();
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan["tier"], "cax31");
    assert_eq!(plan["retry_tier"], "cax41");
    // arm64 has reference prices too; the runner's primary IPv4 is part of the cost.
    let cost = plan["estimated_cost_eur"].as_f64().unwrap();
    assert!((cost - (0.013 + 0.0008)).abs() < 1e-12, "{cost}");
    assert_eq!(plan["ipv4_eur_per_hour"], 0.0008);
    // The rung: its need, then the cax candidates in the order a create tries them.
    assert_eq!(plan["rung"]["need"]["memory_gb"], 16.0);
    let names: Vec<&str> = plan["rung"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cax31", "cax41"]);
}

#[test]
fn the_default_history_store_lives_in_the_state_directory() {
    let ctx = Context::new();
    let out = Launcher::new()
        .args(["plan", "--json", "--context"])
        .args([ctx.path()])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let store = plan["history"]["store"].as_str().unwrap();
    assert!(
        store.starts_with("file:") && store.ends_with("/state/buildkit-launcher/history.jsonl"),
        "{store}"
    );
}

#[test]
fn a_corrupt_history_line_is_a_warning_naming_file_and_line() {
    let ctx = Context::new();
    let history = ctx.path().join("h.jsonl");
    std::fs::write(
        &history,
        format!("{}\nnot json\n", history_line("x", 1, "ok")),
    )
    .unwrap();
    let out = Launcher::new()
        .args(["plan", "--project", "x", "--context"])
        .args([ctx.path()])
        .history_file(&history)
        .run()
        .redact(&[(ctx.path(), "[CTX]")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!("history_corrupt_line_warning", out.stderr);
}

#[test]
fn a_config_file_changes_the_decision() {
    let ctx = Context::new().file("requirements.txt", "");
    let config = ctx.path().join("launcher.ncl");
    std::fs::write(&config, "{ language_defaults.amd64.python = \"cx43\" }").unwrap();
    let out = Launcher::new()
        .args(["plan", "--json", "--history", "none", "--config"])
        .args([&config])
        .args(["--context"])
        .args([ctx.path()])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan["tier"], "cx43");
    assert_eq!(plan["language"], "python");
}

#[test]
fn ipv6_only_runners_cost_no_ipv4_and_a_bad_switch_is_one_line() {
    let ctx = Context::new();
    let config = ctx.path().join("launcher.ncl");
    std::fs::write(&config, "{ hcloud.ipv4 = false }").unwrap();
    let plan = |config: &std::path::Path| {
        Launcher::new()
            .args(["plan", "--json", "--history", "none", "--config"])
            .args([config])
            .args(["--context"])
            .args([ctx.path()])
            .run()
    };
    let out = plan(&config);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan_json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(plan_json["ipv4_eur_per_hour"].is_null());
    assert_eq!(plan_json["estimated_cost_eur"], 0.0104);
    assert_eq!(
        plan_json["cost_basis"],
        "1 started hour × 0.0104 EUR/h, the reference price in the launcher config; IPv6 only, no primary IPv4"
    );
    std::fs::write(&config, "{ hcloud.ipv4 = \"no\" }").unwrap();
    let out = plan(&config);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "error: {}:1:17: contract broken by the value of `ipv4`",
            config.display()
        )
    );
}

#[test]
fn the_rung_lists_its_candidates_in_create_order_and_marks_those_above_the_ceiling() {
    let ctx = Context::new();
    let policy = ctx.path().join("policy.ncl");
    std::fs::write(&policy, "{ max_eur_per_hour = 0.025, max_memory_gb = 16 }").unwrap();
    let plan = |json: bool| {
        let out = Launcher::new()
            .env("BUILDKIT_LAUNCHER_POLICY", &policy)
            .args(["plan", "--history", "none", "--context"])
            .args([ctx.path()])
            .args(if json { &["--json"][..] } else { &[][..] })
            .run();
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout
    };
    let json: serde_json::Value = serde_json::from_str(&plan(true)).unwrap();
    assert_eq!(json["tier"], "cx33");
    let rung = &json["rung"];
    assert_eq!(
        rung["need"],
        serde_json::json!({"arch": "amd64", "memory_gb": 8.0, "vcpus": 4, "disk_gb": 80})
    );
    let listed: Vec<(String, Option<String>)> = rung["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["above_ceiling"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let within: Vec<&str> = listed
        .iter()
        .filter(|(_, above)| above.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    // What a create tries, in order: the rung's type, then the cheapest that meet its need.
    assert_eq!(within, ["cx33", "cpx32", "cx43"]);
    assert_eq!(
        listed[3],
        (
            "cpx42".to_owned(),
            Some("above the price ceiling (0.025 EUR/h)".to_owned())
        )
    );
    assert!(
        listed.contains(&(
            "cx53".to_owned(),
            Some("above the memory ceiling (16 GB)".to_owned())
        )),
        "{listed:?}"
    );
    let text = plan(false);
    assert!(
        text.contains("  rung      needs 8 GB memory, 4 vCPUs, 80 GB disk (amd64); a create tries, in this order"),
        "{text}"
    );
    assert!(
        text.contains("not tried: above the price ceiling (0.025 EUR/h)"),
        "{text}"
    );
}

#[test]
fn the_example_config_of_the_readme_is_valid() {
    let out = Launcher::new()
        .args([
            "plan",
            "--json",
            "--history",
            "none",
            "--arch",
            "arm64",
            "--config",
        ])
        .args([repo_dir().join("examples/launcher.ncl")])
        .args(["--context"])
        .args([repo_dir().join("examples/hello")])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan["tier"], "cax11");
    // The example's own price, and the primary IPv4's reference price.
    assert!((plan["estimated_cost_eur"].as_f64().unwrap() - (0.0066 + 0.0008)).abs() < 1e-12);
}

#[test]
fn spec_check_reports_the_selection() {
    let example = repo_dir().join("examples/hello/.build-spec.ncl");
    let out = Launcher::new()
        .args(["spec", "check"])
        .args([&example])
        .run()
        .redact(&[(&repo_dir(), "[REPO]")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!("spec_check_example", out.stdout);
}

#[test]
fn help_teaches_the_commands_and_exit_codes() {
    let out = Launcher::new().args(["--help"]).run();
    assert_eq!(out.code, 0);
    insta::assert_snapshot!("help", out.stdout);
    let out = Launcher::new().args(["plan", "--help"]).run();
    assert_eq!(out.code, 0);
    insta::assert_snapshot!("plan_help", out.stdout);
}

#[test]
fn history_show_lists_a_keys_samples_and_what_they_size() {
    let ctx = Context::new();
    let history = ctx.path().join("h.jsonl");
    let mut lines: Vec<String> = (0..6)
        .map(|i| history_line("org/app", 3000 + i, "ok"))
        .collect();
    lines.push(history_line("org/app", 9000, "oom"));
    lines.push(history_line("org/other", 100, "ok"));
    std::fs::write(&history, lines.join("\n") + "\n").unwrap();
    let out = Launcher::new()
        .args(["history", "show", "--json", "--project", "org/app"])
        .history_file(&history)
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v["samples"].as_array().unwrap().len(),
        6,
        "only ok samples of the key"
    );
    assert_eq!(v["percentile_mib"], 3005);
    assert_eq!(v["required_mib"], 3606);
    assert_eq!(v["tier"], "cx33");
}

#[test]
fn plan_for_two_platforms_decides_each_on_its_own_ladder_and_key() {
    let example = repo_dir().join("examples/hello");
    let plan = |extra: &[&str]| {
        Launcher::new()
            .args(["plan", "--history", "none", "--context"])
            .args([&example])
            .args(["--registry", "localhost:5000", "--tag", "v1"])
            .args(["--platform", "linux/amd64", "--platform", "linux/arm64"])
            .args(["--cache-to", "localhost:5000/cache/extra:main"])
            .args(extra)
            .run()
            .redact(&[(&example, "[EXAMPLE]")])
    };
    let out = plan(&["--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["index"], true);
    assert_eq!(v["images"][0], "localhost:5000/hello:v1");
    let platforms = v["platforms"].as_array().unwrap();
    let decided: Vec<(&str, &str, &str)> = platforms
        .iter()
        .map(|p| {
            (
                p["arch"].as_str().unwrap(),
                p["history"]["key"]["arch"].as_str().unwrap(),
                p["cache_ref"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        decided,
        [
            ("amd64", "amd64", "localhost:5000/cache/hello"),
            ("arm64", "arm64", "localhost:5000/cache/hello:arm64"),
        ]
    );
    assert!(platforms[1]["tier"].as_str().unwrap().starts_with("cax"));
    // Each platform pushes by digest; the arm64 one exports its own extra-cache tag.
    let arm = platforms[1]["commands"].as_array().unwrap().last().unwrap();
    let arm = arm.as_str().unwrap();
    assert!(
        arm.contains("push-by-digest=true") && arm.contains("platform=linux/arm64"),
        "{arm}"
    );
    assert!(
        arm.contains("ref=localhost:5000/cache/extra:main-arm64"),
        "{arm}"
    );
    let out = plan(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("2 platforms (linux/amd64, linux/arm64), each built natively"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("one OCI image index under every tag"),
        "{}",
        out.stdout
    );
}

#[test]
fn plan_with_sbom_shows_the_configured_scanner_image_in_the_buildctl_command() {
    let ctx = Context::new();
    let plan = |config: Option<&str>, json: bool| {
        let mut launcher = Launcher::new().args(["plan", "--history", "none", "--sbom"]);
        if json {
            launcher = launcher.args(["--json"]);
        }
        if let Some(text) = config {
            let path = ctx.path().join("launcher.ncl");
            std::fs::write(&path, text).unwrap();
            launcher = launcher.args(["--config"]).args([&path]);
        }
        launcher
            .args(["--context"])
            .args([ctx.path()])
            .args(["--registry", "zot.example:5000"])
            .run()
    };
    // The default: Docker Hub's scanner, named in the command plan prints.
    let out = plan(None, false);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(
            "--opt attest:sbom=generator=docker.io/docker/buildkit-syft-scanner:stable-1"
        ),
        "{}",
        out.stdout
    );
    // The operator's mirror, in the text and in the JSON commands alike.
    let mirror = "zot.example:5000/mirror/buildkit-syft-scanner:stable-1";
    let config = format!("{{ buildkitd.sbom_generator = \"{mirror}\" }}\n");
    let out = plan(Some(&config), false);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("--opt attest:sbom=generator={mirror}")),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout
            .contains("docker.io/docker/buildkit-syft-scanner"),
        "{}",
        out.stdout
    );
    let out = plan(Some(&config), true);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let commands = json["commands"].to_string();
    assert!(
        commands.contains(&format!("attest:sbom=generator={mirror}")),
        "{commands}"
    );
}
