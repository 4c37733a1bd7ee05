//! `golden-image build|list|prune` end to end against the Hetzner API simulator
//! (tests/support/hcloud_sim), whose servers are real sandbox runners (with `BKL_ROOT`, so
//! provisioning installs below the runner's own directory, never into the host).
//!
//! BuildKit itself is not downloaded: each test serves a FAKE BuildKit release tarball (shell
//! stubs `bin/buildctl` and `bin/buildkitd` that print BuildKit-style version lines) from a
//! loopback HTTP server, and points a test pin file at it with that tarball's sha256.
//! Building needs root and sshd (skipped without them, failing under CI=true); listing and
//! pruning only talk to the simulator and run everywhere.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use buildkit_launcher::config::{Arch, Config};
use serde_json::Value;
use support::fake_release::{COMMIT, Release};
use support::hcloud_sim::HcloudSim;
use support::registry::require_root_and_tools;
use support::{Launcher, Outcome};

const TOOLS: &[&str] = &["sshd", "ssh", "rsync", "curl", "tar", "sha256sum"];

struct Cloud {
    sim: HcloudSim,
    config: tempfile::TempDir,
}

impl Cloud {
    fn new() -> Cloud {
        let config = tempfile::tempdir().unwrap();
        // Retries fast enough for tests; the policy itself is the production one.
        std::fs::write(
            config.path().join("fast.ncl"),
            "{ hcloud.retry = { initial_delay_ms = 50, max_delay_ms = 400 } }",
        )
        .unwrap();
        let sim = HcloudSim::start();
        // The project key earlier builds or bakes registered (a first one registers it).
        sim.add_ssh_key("buildkit-launcher");
        Cloud { sim, config }
    }

    fn run(&self, args: &[&str]) -> Outcome {
        Launcher::new()
            .env("HCLOUD_TOKEN", &self.sim.token)
            .env("HCLOUD_ENDPOINT", &self.sim.endpoint)
            .env("CI_COMMIT_SHA", COMMIT)
            .args(["--config".to_owned(), self.config_file()])
            .args(["golden-image"])
            .args(args)
            .run()
    }

    fn config_file(&self) -> String {
        self.config.path().join("fast.ncl").display().to_string()
    }

    fn bake(&self, pin: &Path) -> Outcome {
        let pin = pin.display().to_string();
        self.run(&[
            "build",
            "--arch",
            "amd64",
            "--pin",
            &pin,
            "--base-image",
            "debian-12",
            "--json",
        ])
    }

    fn calls(&self, endpoint: &str) -> u32 {
        self.sim.calls().get(endpoint).copied().unwrap_or(0)
    }

    /// Snapshots in the simulator: id → labels.
    fn snapshots(&self) -> Vec<(i64, support::hcloud_sim::SimImage)> {
        self.sim
            .images()
            .into_iter()
            .filter(|(_, i)| i.kind == "snapshot")
            .collect()
    }
}

fn json(out: &Outcome) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        )
    })
}

#[test]
fn build_makes_one_labelled_snapshot_from_the_smallest_tier_and_deletes_its_server() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let release = Release::serve();
    let c = Cloud::new();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = c.bake(&release.pin(None));
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    let report = json(&out);
    assert_eq!(report["outcome"], "success");
    assert_eq!(report["server_deleted"], true);
    assert!(out.stderr.contains("checksum verified"), "{}", out.stderr);
    assert!(
        out.stderr.contains("verify: all checks passed"),
        "{}",
        out.stderr
    );
    // The installed, real binaries were run and reported the pinned version.
    for tool in ["buildctl", "buildkitd"] {
        let line = format!("verify: ok: {tool} reports {}", release.version);
        assert!(out.stderr.contains(&line), "{line}\n{}", out.stderr);
    }
    assert_eq!(release.downloads.load(Ordering::Relaxed), 1);

    // Exactly one snapshot, labelled as the design says.
    let snapshots = c.snapshots();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let (id, image) = &snapshots[0];
    assert_eq!(report["snapshot"], *id);
    assert_eq!(image.status, "available");
    let l = &image.labels;
    assert_eq!(l["buildkit-launcher/role"], "golden");
    assert_eq!(l["buildkit-launcher/arch"], "amd64");
    assert_eq!(l["buildkit-launcher/buildkit"], release.version.as_str());
    assert_eq!(l["buildkit-launcher/source-commit"], COMMIT);
    assert_eq!(l["managed-by"], "buildkit-launcher");
    let created: u64 = l["buildkit-launcher/created"].parse().unwrap();
    assert!(created >= started && created <= started + 600, "{created}");
    assert!(
        image.description.starts_with(&format!(
            "buildkit-launcher golden amd64 buildkit {} 20",
            release.version
        )),
        "{}",
        image.description
    );
    assert!(
        image
            .created_from
            .as_deref()
            .unwrap()
            .starts_with("bkl-golden-amd64-"),
        "{image:?}"
    );

    // The bake server: the smallest amd64 tier, the base image, runner-like lease labels.
    let create = c.sim.last_create_request().unwrap();
    let smallest = Config::defaults().ladder(Arch::Amd64)[0].name.clone();
    assert_eq!(create["server_type"], smallest.as_str());
    assert_eq!(create["image"], "114690387", "debian-12 for x86");
    let labels = &create["labels"];
    assert_eq!(labels["managed-by"], "buildkit-launcher");
    assert_eq!(labels["buildkit-launcher/role"], "bake");
    assert!(labels["buildkit-launcher/lease"].is_string());
    assert!(labels["buildkit-launcher/expires"].is_string());
    let user_data = create["user_data"].as_str().unwrap();
    assert!(user_data.starts_with("#cloud-config\n"));
    assert!(user_data.contains("package_update: true"));
    assert_eq!(c.calls("POST /servers/{id}/actions/poweroff"), 1);
    assert_eq!(c.calls("POST /servers/{id}/actions/create_image"), 1);

    // And nothing is left: no server, no runner directory, cgroup or sshd.
    c.sim.assert_clean();

    // What `list` shows of it.
    let out = c.run(&["list", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let listed = json(&out);
    assert_eq!(listed[0]["id"], *id);
    assert_eq!(listed[0]["buildkit"], release.version.as_str());
    assert_eq!(listed[0]["age_days"], 0);
}

#[test]
fn a_wrong_checksum_fails_provisioning_with_exit_4_and_still_deletes_the_server() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let release = Release::serve();
    let c = Cloud::new();
    let wrong = "e".repeat(64);
    let out = c.bake(&release.pin(Some(&wrong)));
    assert_eq!(out.code, 4, "stderr:\n{}", out.stderr);
    let report = json(&out);
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["server_deleted"], true);
    assert!(report["snapshot"].is_null());
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("provisioning"), "{error}");
    assert!(error.contains("checksum mismatch"), "{error}");
    let last = out.stderr.lines().last().unwrap();
    assert!(last.starts_with("error: provisioning"), "{last}");
    assert!(c.snapshots().is_empty());
    assert_eq!(c.calls("POST /servers"), 1);
    assert_eq!(c.calls("POST /servers/{id}/actions/create_image"), 0);
    assert_eq!(c.calls("DELETE /servers/{id}"), 1);
    c.sim.assert_clean();
}

#[test]
fn a_server_whose_deletion_cannot_be_confirmed_is_exit_6() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let release = Release::serve();
    let c = Cloud::new();
    c.sim.fail_deletes(1000);
    let out = c.bake(&release.pin(None));
    assert_eq!(out.code, 6, "stderr:\n{}", out.stderr);
    let report = json(&out);
    assert_eq!(report["server_deleted"], false);
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("`reap` will find it"),
        "{report}"
    );
    // The server is still there, with the labels `reap` goes by; clean it up.
    let servers = c.sim.servers();
    assert_eq!(servers.len(), 1);
    assert!(servers[0].labels.contains_key("buildkit-launcher/expires"));
    c.sim.fail_deletes(0);
    let reply = c
        .sim
        .call("DELETE", &format!("/servers/{}", servers[0].id), None);
    assert_eq!(reply.status, 200, "{reply:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.sim.servers().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    c.sim.assert_clean();
}

#[test]
fn sigterm_during_provisioning_deletes_the_server_and_exits_5() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let release = Release::serve_after(Duration::from_secs(120));
    let c = Cloud::new();
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(support::BIN)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("HCLOUD_TOKEN", &c.sim.token)
        .env("HCLOUD_ENDPOINT", &c.sim.endpoint)
        .args([
            "--config",
            &c.config_file(),
            "golden-image",
            "build",
            "--pin",
        ])
        .arg(release.pin(None))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // provision.sh is downloading BuildKit (and the download hangs): the bake is mid-way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while release.asked.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the bake never started downloading BuildKit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.sim.servers().len(), 1);
    support::sigterm(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(5));
    assert!(c.snapshots().is_empty());
    assert_eq!(c.calls("POST /servers/{id}/actions/create_image"), 0);
    c.sim.assert_clean();
}

#[test]
fn a_bake_cancelled_during_a_60_s_snapshot_ends_its_lease_and_a_reap_leaves_nothing() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let release = Release::serve();
    let c = Cloud::new();
    // The snapshot holds the server's lock for a minute (FACTS.md: snapshots take minutes).
    c.sim.action_time("create_image", Duration::from_secs(60));
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(support::BIN)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("HCLOUD_TOKEN", &c.sim.token)
        .env("HCLOUD_ENDPOINT", &c.sim.endpoint)
        .env("CI_COMMIT_SHA", COMMIT)
        .args([
            "--config",
            &c.config_file(),
            "golden-image",
            "build",
            "--pin",
        ])
        .arg(release.pin(None))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while c.calls("POST /servers/{id}/actions/create_image") == 0 {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the bake never started its snapshot");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let sent = Instant::now();
    support::sigterm(&child);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() > Duration::from_secs(25) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the bake was still running 25 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(19),
        "exit {took:?} after SIGTERM"
    );
    // Locked by the snapshot past the deadline: its lease was ended, exit 6 says so.
    assert_eq!(status.code(), Some(6));
    let servers = c.sim.servers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    let expires: u64 = servers[0].labels["buildkit-launcher/expires"]
        .parse()
        .unwrap();
    assert!(expires <= buildkit_launcher::provider::unix_now());
    // The next reap deletes it once the snapshot lets it.
    let out = Launcher::new()
        .env("HCLOUD_TOKEN", &c.sim.token)
        .env("HCLOUD_ENDPOINT", &c.sim.endpoint)
        .args(["--config", &c.config_file(), "reap"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("deleted"), "{}", out.stdout);
    c.sim.assert_clean();
}

#[test]
fn bad_input_is_exit_2_before_any_server_exists() {
    let c = Cloud::new();
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("bad.pin");
    std::fs::write(&pin, "BUILDKIT_VERSION=latest\n").unwrap();
    let out = c.bake(&pin);
    let line = out.assert_one_line_error(2);
    assert!(line.contains("bad.pin: BUILDKIT_VERSION"), "{line}");

    let release_less_pin = dir.path().join("ok.pin");
    std::fs::write(
        &release_less_pin,
        format!(
            "BUILDKIT_VERSION=v0.16.0\nBUILDKIT_SHA256_AMD64={0}\nBUILDKIT_SHA256_ARM64={0}\nBUILDKIT_URL=http://127.0.0.1:9/x\n",
            "a".repeat(64)
        ),
    )
    .unwrap();
    let pin = release_less_pin.display().to_string();
    let out = c.run(&["build", "--pin", &pin, "--base-image", "debian-99"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("--base-image debian-99"),
        "{}",
        out.stderr
    );
    assert_eq!(c.calls("POST /servers"), 0);

    let out = Launcher::new()
        .env("HCLOUD_ENDPOINT", &c.sim.endpoint)
        .args(["golden-image", "list"])
        .run();
    let line = out.assert_one_line_error(2);
    assert!(line.contains("HCLOUD_TOKEN"), "{line}");
}

/// The BuildKit version the stocked snapshots (not baked here) carry.
const STOCKED_VERSION: &str = "v0.16.0";

const GOLDEN_AMD64: &[(&str, &str)] = &[
    ("buildkit-launcher/role", "golden"),
    ("buildkit-launcher/arch", "amd64"),
    ("buildkit-launcher/buildkit", STOCKED_VERSION),
    ("managed-by", "buildkit-launcher"),
];

/// Four golden amd64 snapshots (days 2..5), an older protected one (day 1), one arm64 golden
/// and one unrelated snapshot. Returns (golden amd64 newest first, protected, arm64, other).
fn stocked() -> (Cloud, Vec<i64>, i64, i64, i64) {
    let c = Cloud::new();
    let protected = c
        .sim
        .add_snapshot("amd64", GOLDEN_AMD64, "2026-11-01T06:00:00+00:00");
    c.sim.protect_image(protected, true);
    let mut golden: Vec<i64> = (2..=5)
        .map(|day| {
            c.sim.add_snapshot(
                "amd64",
                GOLDEN_AMD64,
                &format!("2026-11-0{day}T06:00:00+00:00"),
            )
        })
        .collect();
    golden.reverse();
    let arm = c.sim.add_snapshot(
        "arm64",
        &[
            ("buildkit-launcher/role", "golden"),
            ("buildkit-launcher/arch", "arm64"),
        ],
        "2026-10-01T06:00:00+00:00",
    );
    let other = c.sim.add_snapshot(
        "amd64",
        &[("team", "db-backups")],
        "2026-01-01T06:00:00+00:00",
    );
    (c, golden, protected, arm, other)
}

#[test]
fn list_shows_golden_snapshots_newest_first_with_age_and_protection() {
    let (c, golden, protected, arm, other) = stocked();
    let out = c.run(&["list", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let listed = json(&out);
    let ids: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect();
    let mut expected = golden.clone();
    expected.push(protected);
    expected.push(arm);
    assert_eq!(
        ids, expected,
        "newest first; the unrelated image is not listed"
    );
    assert!(!ids.contains(&other));
    assert_eq!(listed[4]["protected"], true);
    assert_eq!(listed[0]["protected"], false);
    assert_eq!(listed[0]["arch"], "amd64");
    assert_eq!(listed[5]["arch"], "arm64");
    assert!(listed[0]["age_days"].as_u64().is_some());

    let out = c.run(&["list", "--arch", "arm64"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(lines[0].starts_with("id "), "{}", lines[0]);
    assert!(lines[0].contains("age_days") && lines[0].contains("protected"));
    assert!(lines[1].starts_with(&arm.to_string()), "{}", lines[1]);
}

#[test]
fn prune_keeps_exactly_the_newest_n_skips_protected_and_leaves_other_images() {
    let (c, golden, protected, arm, other) = stocked();
    let before = c.snapshots().len();

    // --keep 0 is refused before anything happens.
    let out = c.run(&["prune", "--keep", "0"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(c.snapshots().len(), before);

    // --dry-run deletes nothing and says what it would delete.
    let out = c.run(&["prune", "--keep", "2", "--dry-run", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let would: Vec<i64> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "would_delete")
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(would, golden[2..].to_vec());
    assert_eq!(c.snapshots().len(), before);
    assert_eq!(c.calls("DELETE /images/{id}"), 0);

    // The real thing.
    let out = c.run(&["prune", "--keep", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("protected"), "{}", out.stdout);
    assert!(
        out.stderr.contains(&format!("snapshot {protected}")),
        "{}",
        out.stderr
    );
    let mut left: Vec<i64> = c.snapshots().into_iter().map(|(id, _)| id).collect();
    left.sort_unstable();
    let mut expected = vec![golden[0], golden[1], protected, arm, other];
    expected.sort_unstable();
    assert_eq!(left, expected);
    assert_eq!(c.calls("DELETE /images/{id}"), 2);
    assert!(c.sim.images().len() > left.len(), "system images stay too");

    // Keep 1: only the newest amd64 one stays (and the protected one).
    let out = c.run(&["prune", "--arch", "amd64", "--keep", "1", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let entries = json(&out);
    let kept: Vec<i64> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "kept")
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(kept, [golden[0]]);
    assert!(c.snapshots().iter().any(|(id, _)| *id == golden[0]));
    assert!(c.snapshots().iter().any(|(id, _)| *id == protected));
}

#[test]
fn prune_counts_only_available_snapshots_toward_keep() {
    let (c, golden, _, _, _) = stocked();
    // The newest is still being taken (a bake under way): it may fail, so it does not count.
    c.sim.set_image_creating(golden[0], true);
    let out = c.run(&["prune", "--keep", "2", "--dry-run", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let entries = json(&out);
    let action = |id: i64| {
        entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| e["action"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(
        action(golden[0]),
        "kept",
        "a creating snapshot is never deleted"
    );
    assert_eq!(
        (action(golden[1]), action(golden[2])),
        ("kept".into(), "kept".into())
    );
    assert_eq!(action(golden[3]), "would_delete");
}

#[test]
fn a_deprecated_base_image_is_still_found_with_a_warning() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let release = Release::serve();
    let c = Cloud::new();
    c.sim.deprecate_image("debian-12");
    let out = c.bake(&release.pin(None));
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("image debian-12") && out.stderr.contains("is deprecated at Hetzner"),
        "{}",
        out.stderr
    );
    let create = c.sim.last_create_request().unwrap();
    assert_eq!(create["ssh_keys"], serde_json::json!(["buildkit-launcher"]));
    assert!(c.sim.servers().is_empty());
}

#[test]
fn a_snapshot_whose_answer_is_lost_is_found_by_its_labels_not_made_twice() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let release = Release::serve();
    let c = Cloud::new();
    // The snapshot is made, but the answer is a 503: repeating the request blindly would make a
    // second golden snapshot (and bill it).
    c.sim.after_create_image(&["unavailable"]);
    let out = c.bake(&release.pin(None));
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("but snapshot"), "{}", out.stderr);
    let snapshots = c.snapshots();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert_eq!(json(&out)["snapshot"], snapshots[0].0);
    assert_eq!(snapshots[0].1.status, "available");
    assert_eq!(c.calls("POST /servers/{id}/actions/create_image"), 1);
    c.sim.assert_clean();
}

#[test]
fn a_bake_installs_the_buildkitd_settings_of_the_launcher_config_and_labels_their_digest() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let release = Release::serve();
    let c = Cloud::new();
    let dir = c.config.path();
    std::fs::write(
        dir.join("zot-ca.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let settings = |mirror: &str| {
        format!(
            "{{ hcloud.retry = {{ initial_delay_ms = 50, max_delay_ms = 400 }}, buildkitd.registries = {{ \"zot.internal:5000\" = {{ ca_file = \"zot-ca.pem\" }}, \"docker.io\" = {{ mirrors = [\"{mirror}\"] }} }} }}"
        )
    };
    std::fs::write(dir.join("fast.ncl"), settings("zot.internal:5000")).unwrap();

    // What the bake will install, before any server exists.
    let printed = c.run(&["config"]);
    assert_eq!(printed.code, 0, "{}", printed.stderr);
    assert!(
        printed
            .stdout
            .contains("[registry.\"docker.io\"]\nmirrors = [\"zot.internal:5000\"]\n"),
        "{}",
        printed.stdout
    );
    assert!(
        printed.stdout.contains(
            "[registry.\"zot.internal:5000\"]\nca = [\"/etc/buildkit/registry-ca/zot.internal_5000.pem\"]\n"
        ),
        "{}",
        printed.stdout
    );
    let digest = c.run(&["config", "--digest"]);
    assert_eq!(digest.code, 0, "{}", digest.stderr);
    let digest = digest.stdout.trim().to_owned();
    assert_eq!(digest.len(), 32, "{digest}");
    assert!(
        printed
            .stdout
            .contains(&format!("# config digest: {digest}\n"))
    );

    let out = c.bake(&release.pin(None));
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    // provision.sh on the bake server (a sandbox: below its BKL_ROOT) installed the CA the
    // config names.
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("provision: installed the registry CA /")
                && l.ends_with("/etc/buildkit/registry-ca/zot.internal_5000.pem")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("verify: ok: registry CA /")
                && l.ends_with("/etc/buildkit/registry-ca/zot.internal_5000.pem exists")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(
            "buildkitd.toml from the launcher config: digest {digest}, 1 registry CA file(s)"
        )),
        "{}",
        out.stderr
    );
    let snapshots = c.snapshots();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let (id, image) = &snapshots[0];
    assert_eq!(image.labels["buildkit-launcher/buildkitd-config"], digest);
    let listed = c.run(&["list", "--json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let listed = json(&listed);
    assert_eq!(listed[0]["config"], "current");
    assert_eq!(listed[0]["buildkitd_config"], digest.as_str());
    assert!(
        !listed_warns(&c),
        "no warning while the settings are the same"
    );

    // The operator changes the mirror: the snapshot no longer has the config's settings.
    std::fs::write(dir.join("fast.ncl"), settings("mirror.internal:5000")).unwrap();
    let out = c.run(&["list"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.lines().nth(1).unwrap().ends_with(" differs"),
        "{}",
        out.stdout
    );
    let now = c.run(&["config", "--digest"]).stdout.trim().to_owned();
    assert_eq!(
        out.stderr.trim(),
        format!(
            "buildkit-launcher: warning: the newest amd64 golden snapshot ({id}) was baked with other buildkitd settings (digest {digest}) than the launcher config has now ({now}): bake again with `buildkit-launcher golden-image build --arch amd64`"
        )
    );
    c.sim.assert_clean();
}

fn listed_warns(c: &Cloud) -> bool {
    c.run(&["list"]).stderr.contains("warning")
}
