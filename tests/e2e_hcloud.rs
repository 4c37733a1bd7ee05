//! `build --provider hcloud` and `reap` end to end against the Hetzner API simulator
//! (tests/support/hcloud_sim), whose servers are real sandbox runners, with a real registry.
//! After every test the simulator holds no server and no runner is left.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::BIN;
use support::hcloud_sim::cloud::Cloud;
use support::local_build::outcomes as tiers;

#[test]
fn a_build_through_the_api_succeeds_in_at_most_8_requests_and_leaves_no_server() {
    let Some(c) = Cloud::new("RUN echo built > /built.txt") else {
        return;
    };
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    let report = c.report();
    assert_eq!(report["outcome"], "success");
    assert_eq!(report["provider"], "hcloud");
    // The API's price replaced the reference table in the plan.
    assert!(
        report["plan"]["cost_basis"]
            .as_str()
            .unwrap()
            .contains("Hetzner API"),
        "{}",
        report["plan"]["cost_basis"]
    );
    // The create request carried the design's name, labels and per-build cloud-init keys.
    let create = c.sim.last_create_request().unwrap();
    let name = create["name"].as_str().unwrap();
    assert!(
        name.starts_with("bkl-e2e-app-0-") && name.len() <= 63,
        "{name}"
    );
    let labels = &create["labels"];
    assert_eq!(labels["managed-by"], "buildkit-launcher");
    assert_eq!(labels["buildkit-launcher/tier"], "cx33");
    assert!(
        labels["buildkit-launcher/expires"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    let user_data = create["user_data"].as_str().unwrap();
    assert!(user_data.starts_with("#cloud-config") && user_data.contains("ssh_authorized_keys"));
    assert_eq!(create["server_type"], "cx33");
    assert_eq!(create["location"], "fsn1");
    // Requests per successful build (the benchmark in docs/PERFORMANCE.md reports the count).
    // The project key Cloud::new registered is the test's setup, not the build's.
    let total = c.sim.total_calls() - c.calls("POST /ssh_keys");
    eprintln!(
        "API requests for one successful build: {total} ({:?})",
        c.sim.calls()
    );
    assert!(total <= 8, "{total} requests: {:?}", c.sim.calls());
    c.sim.assert_clean();
}

#[test]
fn out_of_memory_retries_on_the_next_server_type() {
    let Some(c) = Cloud::new("RUN dd if=/dev/zero of=/dev/null bs=350M count=1") else {
        return;
    };
    std::fs::write(c.ctx.path().join(".build-spec.ncl"), "{ tier = \"cx23\" }").unwrap();
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert_eq!(
        tiers(&c.report()),
        [("cx23".into(), "oom".into()), ("cx33".into(), "ok".into())]
    );
    assert_eq!(c.calls("POST /servers"), 2);
    assert_eq!(c.calls("DELETE /servers/{id}"), 2);
    c.sim.assert_clean();
}

#[test]
fn no_capacity_in_the_first_location_falls_back_to_the_second() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    c.sim.fail_location("fsn1", "resource_unavailable");
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert_eq!(c.sim.last_create_request().unwrap()["location"], "nbg1");
    assert_eq!(c.calls("POST /servers"), 2);
    assert!(
        out.stderr.contains("no capacity for cx33 in fsn1"),
        "{}",
        out.stderr
    );
    c.sim.assert_clean();
}

#[test]
fn a_burst_of_429s_is_waited_out() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    c.sim.fail_next_requests_with_429(3);
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("rate_limit_exceeded"), "{}", out.stderr);
    c.sim.assert_clean();
}

#[test]
fn a_delete_failing_three_times_is_confirmed_on_the_fourth() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    c.sim.fail_deletes(3);
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert_eq!(c.calls("DELETE /servers/{id}"), 4);
    assert_eq!(c.report()["attempts"][0]["destroyed"], true);
    c.sim.assert_clean();
}

#[test]
fn an_unknown_server_type_is_exit_2_before_any_server_exists() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    std::fs::write(
        c.ctx.path().join("fast.ncl"),
        r#"{ tiers.amd64 = [
              { name = "cx23", vcpus = 2, memory_mib = 4096, disk_gb = 40 },
              { name = "cx99", vcpus = 4, memory_mib = 8192, disk_gb = 80 } ],
            language_defaults.amd64 = { rust = "cx23", java = "cx23", go = "cx23", node = "cx23", python = "cx23", generic = "cx23" } }"#,
    )
    .unwrap();
    let out = c.build(&[]);
    let line = out.assert_one_line_error(2);
    assert!(
        line.contains("\"cx99\" does not exist at Hetzner"),
        "{line}"
    );
    assert!(line.contains("cx23, cx33, cx43, cx53"), "{line}");
    assert_eq!(c.calls("POST /servers"), 0);
    c.sim.assert_clean();
}

/// Start a build in the background; return once its RUN step runs.
fn start_until_running(c: &Cloud) -> std::process::Child {
    support::spawn_until(
        Command::new(BIN)
            .args(c.args())
            .env("HCLOUD_TOKEN", &c.sim.token)
            .env("HCLOUD_ENDPOINT", &c.sim.endpoint)
            .env("TMPDIR", c.tmp.path())
            .env_remove("CI_REPO"),
        "RUN sleep",
    )
}

#[test]
fn sigterm_mid_build_sends_the_delete_within_2_s() {
    let Some(c) = Cloud::new("RUN sleep 60") else {
        return;
    };
    let mut child = start_until_running(&c);
    let sent = Instant::now();
    support::sigterm(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(5));
    let delete = c
        .sim
        .requests()
        .into_iter()
        .find(|(_, r)| r.starts_with("DELETE /servers/"))
        .expect("a DELETE was sent");
    let after = delete.0.saturating_duration_since(sent);
    assert!(
        after < Duration::from_secs(2),
        "DELETE came {after:?} after SIGTERM"
    );
    c.sim.assert_clean();
}

#[test]
fn after_sigkill_the_server_stays_labelled_and_reap_removes_only_expired_managed_ones() {
    let Some(c) = Cloud::new("RUN sleep 60") else {
        return;
    };
    let mut child = start_until_running(&c);
    child.kill().unwrap();
    child.wait().unwrap();
    // SIGKILL: nothing could clean up; the server is still there with its lease labels.
    let servers = c.sim.servers();
    assert_eq!(servers.len(), 1);
    let orphan = &servers[0];
    assert_eq!(orphan.labels["managed-by"], "buildkit-launcher");
    // Two bystanders: an unmanaged server and a managed one whose lease is still valid.
    let far_future = (buildkit_launcher::provider::unix_now() + 3600).to_string();
    let unmanaged = c.sim.add_server("someone-elses", &[("team", "web")]);
    let valid = c.sim.add_server(
        "bkl-other-1-aaaaaaaa",
        &[
            ("managed-by", "buildkit-launcher"),
            ("buildkit-launcher/expires", &far_future),
        ],
    );
    let reap = |extra: &[&str]| {
        c.launcher()
            .args([
                "--config",
                &format!("{}/fast.ncl", c.ctx.path().display()),
                "reap",
            ])
            .args(extra)
            .run()
    };
    // Before the lease runs out, reap keeps it.
    let out = reap(&["--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(c.sim.servers().len(), 3);
    // As if its time had passed: the lease now ends in the past.
    c.sim
        .set_label(orphan.id, "buildkit-launcher/expires", "1000000000");
    let out = reap(&["--dry-run", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "would_delete")
            .count(),
        1
    );
    assert_eq!(c.sim.servers().len(), 3, "a dry run deletes nothing");
    let out = reap(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let left: Vec<i64> = c.sim.servers().iter().map(|s| s.id).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.contains(&unmanaged) && left.contains(&valid),
        "{left:?}"
    );
    // The bystanders are not ours to delete; remove them so the simulator ends empty.
    for id in [unmanaged, valid] {
        let reply = c.sim.call("DELETE", &format!("/servers/{id}"), None);
        assert!(reply.status < 300, "{}", reply.status);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.sim.servers().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    c.sim.assert_clean();
}
