//! `build --provider hcloud` against the simulator where Hetzner's real behaviour used to break
//! it (issue 9): servers without an SSH key, types sold per location, creates that succeed but
//! answer 5xx / `timeout` / a dropped connection, SIGTERM with a create in flight, an empty
//! request budget, the project's quota, a create action failing late, and reap's paging and
//! wording. After every test the simulator holds no server and no SSH key a build left.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::BIN;
use support::hcloud_sim::AfterCreate;
use support::hcloud_sim::cloud::Cloud;

#[test]
fn every_create_names_the_project_key_which_the_first_build_registers_once() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    c.sim.remove_ssh_keys();
    let registered = c.calls("POST /ssh_keys");
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    let create = c.sim.last_create_request().unwrap();
    assert_eq!(create["ssh_keys"], serde_json::json!(["buildkit-launcher"]));
    let keys = c.sim.ssh_keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].1["managed-by"], "buildkit-launcher");
    assert_eq!(c.calls("POST /ssh_keys"), registered + 1);
    // The next build reuses it: no key request at all, and within the request target.
    let before = c.sim.total_calls();
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert_eq!(c.calls("POST /ssh_keys"), registered + 1);
    assert_eq!(c.calls("GET /ssh_keys"), 1);
    let second = c.sim.total_calls() - before;
    eprintln!("API requests for a build with the project key in place: {second}");
    assert!(second <= 8, "{second}: {:?}", c.sim.calls());
    c.sim.assert_clean();
}

#[test]
fn types_are_tried_only_where_sold_and_unsupported_location_means_the_next_one() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    // Not sold in fsn1: the create goes straight to nbg1.
    c.sim.stop_selling("cx33", "fsn1");
    c.sim.deprecate_in("cx33", "nbg1", false);
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert_eq!(c.sim.last_create_request().unwrap()["location"], "nbg1");
    assert_eq!(c.calls("POST /servers"), 1);
    assert!(
        out.stderr
            .contains("cx33 is deprecated at Hetzner in nbg1 (not sold there after"),
        "per-location deprecation warned: {}",
        out.stderr
    );
    // Listed, but refused at create time: the next location.
    c.sim.fail_location("nbg1", "invalid_input");
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert_eq!(c.sim.last_create_request().unwrap()["location"], "hel1");
    assert!(out.stderr.contains("not sold in nbg1"), "{}", out.stderr);
    c.sim.fail_location("nbg1", "");
    // Sold in none of the configured locations: the rung is a need, and another type meets
    // it there (the cheapest: cpx32), said before the server.
    c.sim.stop_selling("cx33", "nbg1");
    let out = c.build(&["--location", "fsn1,nbg1"]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert_eq!(c.sim.last_create_request().unwrap()["server_type"], "cpx32");
    assert!(
        out.stderr.contains(
            "rung cx33 of tiers.amd64: cx33 is not sold in fsn1, nbg1; builds of this rung use cpx32, 8 GB, 4 vCPUs, 0.0240 EUR/h"
        ),
        "{}",
        out.stderr
    );
    // No type meeting the need sold there: exit 2 before any server, naming where it is.
    for t in ["cx43", "cx53", "cpx32", "cpx42", "ccx23", "ccx33"] {
        c.sim.stop_selling(t, "fsn1");
        c.sim.stop_selling(t, "nbg1");
    }
    let creates = c.calls("POST /servers");
    let out = c.build(&["--location", "fsn1,nbg1"]);
    let line = out.assert_one_error_line(2);
    assert!(
        line.contains("\"cx33\" is not sold in any configured location (fsn1, nbg1) and no other type meets its need there"),
        "{line}"
    );
    assert!(line.contains("sold in hel1"), "{line}");
    assert_eq!(c.calls("POST /servers"), creates);
    c.sim.assert_clean();
}

#[test]
fn a_create_made_but_answered_5xx_timeout_or_a_dropped_connection_is_found_by_name() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    for fault in [
        AfterCreate::Fail("unavailable"),
        AfterCreate::Fail("timeout"),
        AfterCreate::Drop,
        // A gateway's redirect: never followed (the token would go with it), and the
        // outcome is unknown like a 5xx's.
        AfterCreate::Redirect,
    ] {
        c.sim.after_create(&[fault]);
        let creates = c.calls("POST /servers");
        let before = c.sim.total_calls();
        let out = c.build(&[]);
        eprintln!(
            "API requests for a build whose create answered {fault:?}: {}",
            c.sim.total_calls() - before
        );
        assert_eq!(out.code, 0, "{fault:?}: stderr:\n{}", out.stderr);
        assert_eq!(
            c.calls("POST /servers"),
            creates + 1,
            "{fault:?}: never created twice"
        );
        assert!(
            out.stderr.contains("exists: using it"),
            "{fault:?}: {}",
            out.stderr
        );
        c.sim.assert_clean();
    }
}

#[test]
fn sigterm_while_the_create_is_in_flight_still_deletes_the_server() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    c.sim
        .after_create(&[AfterCreate::Slow(Duration::from_secs(4))]);
    let mut child = support::spawn_until(
        Command::new(BIN)
            .args(c.args())
            .env("HCLOUD_TOKEN", &c.sim.token)
            .env("HCLOUD_ENDPOINT", &c.sim.endpoint)
            .env("TMPDIR", c.tmp.path())
            .env_remove("CI_REPO"),
        "attempt 1/",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.calls("POST /servers") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.calls("POST /servers"), 1, "the create was sent");
    let sent = Instant::now();
    support::sigterm(&child);
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(5));
    // Loosely, as the SIGTERM test of e2e_hcloud.rs: well inside Woodpecker's 20 s.
    assert!(
        took < Duration::from_secs(20),
        "exit {took:?} after SIGTERM"
    );
    assert_eq!(c.calls("DELETE /servers/{id}"), 1);
    c.sim.assert_clean();
}

#[test]
fn a_build_that_starts_with_an_empty_budget_waits_about_a_second_per_request() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    // The production retry policy, not the tests' fast one.
    std::fs::write(c.ctx.path().join("fast.ncl"), "{}").unwrap();
    c.sim.set_budget(3600, 0);
    let before = c.sim.total_calls();
    let started = Instant::now();
    let out = c.build(&[]);
    eprintln!(
        "API requests (429s included) for a build starting with an empty budget: {}",
        c.sim.total_calls() - before
    );
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    eprintln!(
        "wall time of a build starting with an empty budget: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let waits: Vec<f64> = out
        .stderr
        .lines()
        .filter(|l| l.contains("rate_limit_exceeded"))
        .filter_map(|l| {
            l.split("retrying in ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(!waits.is_empty(), "{}", out.stderr);
    assert!(
        waits.iter().all(|w| (1.0..=4.0).contains(w)),
        "waits after 429 are about a second, not the reset: {waits:?}"
    );
    assert!(
        out.stderr.contains("requests left, full again in"),
        "{}",
        out.stderr
    );
    c.sim.assert_clean();
}

#[test]
fn the_projects_quota_is_waited_for_and_then_named() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    c.sim.fail_quota(2);
    let before = c.sim.total_calls();
    let out = c.build(&[]);
    eprintln!(
        "API requests for a build that waited out 2 quota refusals: {}",
        c.sim.total_calls() - before
    );
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(
        out.stderr
            .contains("the project's quota is reached (resource_limit_exceeded"),
        "{}",
        out.stderr
    );
    c.sim.fail_quota(1000);
    let out = c.build(&[]);
    assert_eq!(out.code, 4, "stderr:\n{}", out.stderr);
    let error = c.report()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("quota is reached")
            && error.contains("server limit")
            && !error.contains('\n'),
        "one line naming the quota: {error}"
    );
    c.sim.fail_quota(0);
    c.sim.assert_clean();
}

#[test]
fn a_create_action_failing_late_ends_the_attempt_without_the_ssh_wait() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    c.sim.action_delay(Duration::from_secs(3));
    c.sim.fail_create_actions(1);
    let before = c.sim.total_calls();
    let out = c.build(&[]);
    eprintln!(
        "API requests for a build whose create action failed: {} ({:?})",
        c.sim.total_calls() - before,
        c.sim.calls()
    );
    assert_eq!(out.code, 4, "stderr:\n{}", out.stderr);
    let error = c.report()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("action_failed"), "{error}\n{}", out.stderr);
    assert!(
        !out.stderr.contains("/120 attempts, 1"),
        "no long SSH wait: {}",
        out.stderr
    );
    assert_eq!(c.calls("POST /servers"), 1);
    c.sim.action_delay(Duration::from_millis(100));
    c.sim.assert_clean();
}

#[test]
fn reap_pages_in_a_stable_order_and_shows_names_leases_and_human_times() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    let expired = (buildkit_launcher::provider::unix_now() - 2 * 3600 - 5 * 60).to_string();
    let mut ids = Vec::new();
    for n in 0..55 {
        ids.push(c.sim.add_server(
            &format!("bkl-e2e-app-{n}-{n:08x}"),
            &[
                ("managed-by", "buildkit-launcher"),
                ("buildkit-launcher/lease", &format!("{n:08x}")),
                ("buildkit-launcher/expires", &expired),
            ],
        ));
    }
    let config = format!("{}/fast.ncl", c.ctx.path().display());
    let out = c
        .launcher()
        .args(["--config", &config, "reap", "--dry-run", "--json"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let listed: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let mut seen: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, ids, "every server once, none twice");
    let out = c
        .launcher()
        .args(["--config", &config, "reap", "--dry-run"])
        .run();
    assert!(
        out.stdout.contains("bkl-e2e-app-7-00000007"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("expired 2 h 5 min ago"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("would delete"), "{}", out.stdout);
    for id in ids {
        c.sim.call("DELETE", &format!("/servers/{id}"), None);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.sim.servers().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    c.sim.assert_clean();
}
