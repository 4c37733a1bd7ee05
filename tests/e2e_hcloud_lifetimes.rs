//! A paid server is never lost (issues 16 and 17), end to end through the Hetzner API simulator
//! with the real launcher binary: a cancel while the server is locked by its boot, or while its
//! create is in flight, deletes it or ends its lease within Woodpecker's 20 s and the next reap
//! deletes it; a SIGKILLed launcher's server is reaped once its short lease ends; a long build
//! renews its lease and is never reaped; leases are judged by the API's clock; eight builds
//! that start with 10 requests left (and no project key yet) all succeed.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::BIN;
use support::hcloud_sim::AfterCreate;
use support::hcloud_sim::cloud::Cloud;

const EXPIRES: &str = "buildkit-launcher/expires";

/// The launcher's config for these tests: fast retries and a lease of `lease_s` seconds.
fn config(c: &Cloud, lease_s: u64) {
    std::fs::write(
        c.ctx.path().join("fast.ncl"),
        format!(
            "{{ hcloud.retry = {{ initial_delay_ms = 50, max_delay_ms = 400 }}, hcloud.lease_s = {lease_s} }}"
        ),
    )
    .unwrap();
}

fn spawn_build(c: &Cloud, needle: &str) -> std::process::Child {
    support::spawn_until(
        Command::new(BIN)
            .args(c.args())
            .env("HCLOUD_TOKEN", &c.sim.token)
            .env("HCLOUD_ENDPOINT", &c.sim.endpoint)
            .env("TMPDIR", c.tmp.path())
            .env_remove("CI_REPO"),
        needle,
    )
}

fn reap(c: &Cloud) -> support::Outcome {
    c.launcher()
        .args([
            "--config",
            &format!("{}/fast.ncl", c.ctx.path().display()),
            "reap",
        ])
        .run()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait for the launcher to exit, killing it if it outlives `limit` (the test then fails).
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> (Option<i32>, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the launcher was still running {limit:?} after the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// After a cancel: within 18 s of the signal the server was deleted or its lease ended (a PUT
/// that set `expires` to the API's now), the launcher left before 19 s, and the next reap
/// deletes what is left. Returns the exit code.
fn assert_cancel_leaves_nothing(c: &Cloud, child: &mut std::process::Child) -> i32 {
    let sent = Instant::now();
    support::sigterm(child);
    let (code, took) = wait_exit(child, Duration::from_secs(25));
    assert!(
        took < Duration::from_secs(19),
        "exit {took:?} after SIGTERM"
    );
    let servers = c.sim.servers();
    if let Some(left) = servers.first() {
        let expires: u64 = left.labels[EXPIRES].parse().unwrap();
        assert!(
            expires <= buildkit_launcher::provider::unix_now(),
            "a server left with a lease still running: {left:?}"
        );
        let put = c
            .sim
            .requests()
            .into_iter()
            .rfind(|(_, r)| r == &format!("PUT /servers/{}", left.id))
            .expect("its lease was ended with a label update");
        let after = put.0.saturating_duration_since(sent);
        assert!(
            after < Duration::from_secs(18),
            "lease ended {after:?} after SIGTERM"
        );
        assert_eq!(code, Some(6), "a server not confirmed gone is exit 6");
        // The next reap deletes it, once its boot lets it (it waits for the lock).
        let out = reap(c);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stdout.contains("deleted"), "{}", out.stdout);
    } else {
        assert_eq!(
            code,
            Some(5),
            "deleted within the grace: exit 5 (cancelled)"
        );
    }
    c.sim.assert_clean();
    code.unwrap_or(-1)
}

#[test]
fn sigterm_2_s_into_a_30_s_locked_boot_ends_the_lease_and_the_next_reap_deletes_it() {
    let Some(c) = Cloud::new("RUN sleep 60") else {
        return;
    };
    config(&c, 600);
    c.sim.action_time("create_server", Duration::from_secs(30));
    c.sim.action_time("start_server", Duration::from_secs(30));
    let mut child = spawn_build(&c, "attempt 1/");
    wait_for("a locked server", Duration::from_secs(30), || {
        c.sim
            .servers()
            .first()
            .is_some_and(|s| c.sim.is_locked(s.id))
    });
    std::thread::sleep(Duration::from_secs(2));
    let code = assert_cancel_leaves_nothing(&c, &mut child);
    assert_eq!(code, 6, "the boot holds the lock past the deadline");
}

#[test]
fn sigterm_with_the_create_in_flight_and_a_30_s_boot_ends_the_lease_in_time() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    config(&c, 600);
    c.sim.action_time("create_server", Duration::from_secs(30));
    c.sim.action_time("start_server", Duration::from_secs(30));
    c.sim
        .after_create(&[AfterCreate::Slow(Duration::from_secs(25))]);
    let mut child = spawn_build(&c, "attempt 1/");
    wait_for("the create sent", Duration::from_secs(30), || {
        c.calls("POST /servers") == 1
    });
    assert_cancel_leaves_nothing(&c, &mut child);
}

#[test]
fn a_build_whose_boot_holds_the_lock_is_deleted_once_the_boot_ends() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    config(&c, 600);
    // The build is done before the boot's actions end: the delete waits for them.
    c.sim.action_time("start_server", Duration::from_secs(12));
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("is locked by running action"),
        "{}",
        out.stderr
    );
    assert_eq!(c.calls("GET /servers/{id}/actions"), 1);
    assert_eq!(c.report()["attempts"][0]["destroyed"], true);
    c.sim.assert_clean();
}

#[test]
fn after_sigkill_the_next_reap_once_the_short_lease_ends_deletes_the_server() {
    let Some(c) = Cloud::new("RUN sleep 60") else {
        return;
    };
    config(&c, 4);
    let mut child = spawn_build(&c, "RUN sleep");
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let servers = c.sim.servers();
    assert_eq!(servers.len(), 1, "SIGKILL: nothing cleaned up");
    // Within its lease the server is kept; once it ends, the next reap deletes it.
    let out = reap(&c);
    assert_eq!(out.code, 0, "{}", out.stderr);
    if killed.elapsed() < Duration::from_secs(2) {
        assert_eq!(c.sim.servers().len(), 1, "kept while its lease runs");
    }
    std::thread::sleep(Duration::from_secs(5));
    let out = reap(&c);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("deleted"), "{}", out.stdout);
    c.sim.assert_clean();
}

#[test]
fn a_build_longer_than_its_lease_renews_it_and_is_never_reaped() {
    let Some(c) = Cloud::new("RUN sleep 14") else {
        return;
    };
    config(&c, 3);
    let mut child = Command::new(BIN)
        .args(c.args())
        .env("HCLOUD_TOKEN", &c.sim.token)
        .env("HCLOUD_ENDPOINT", &c.sim.endpoint)
        .env("TMPDIR", c.tmp.path())
        .env_remove("CI_REPO")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Another agent reaps every second while the build runs: never its server.
    let mut reaped = Vec::new();
    for _ in 0..120 {
        std::thread::sleep(Duration::from_secs(1));
        let out = reap(&c);
        if out.code != 0 || out.stdout.contains("deleted") {
            reaped.push(format!("exit {}: {}{}", out.code, out.stdout, out.stderr));
        }
        if c.calls("DELETE /servers/{id}") > 0 || child.try_wait().unwrap().is_some() {
            break;
        }
    }
    // The build ends on its own (its destroy may be under way); killed only if it hangs.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert!(
        reaped.is_empty(),
        "a live build's server was reaped: {reaped:?}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr:\n{stderr}");
    let renewals = c.calls("PUT /servers/{id}");
    eprintln!("lease renewals of a 14 s build with a 3 s lease: {renewals}");
    assert!(renewals >= 4, "the lease was renewed: {renewals}");
    c.sim.assert_clean();
}

#[test]
fn leases_are_judged_by_the_apis_clock_not_the_agents() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    config(&c, 600);
    // The API's clock is an hour behind this agent's.
    c.sim.set_clock_skew(-3600);
    let now = buildkit_launcher::provider::unix_now();
    let managed = |name: &str, expires: u64| {
        c.sim.add_server(
            name,
            &[
                ("managed-by", "buildkit-launcher"),
                (EXPIRES, &expires.to_string()),
            ],
        )
    };
    // Over by this agent's clock, not by the API's: kept.
    let live = managed("bkl-a-1-aaaaaaaa", now - 600);
    // Over by the API's clock too: deleted.
    let over = managed("bkl-a-2-bbbbbbbb", now - 3600 - 60);
    let out = reap(&c);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let left: Vec<i64> = c.sim.servers().iter().map(|s| s.id).collect();
    assert_eq!(left, [live], "{}", out.stdout);
    assert!(!left.contains(&over));
    // A build writes its lease in the API's time too.
    c.sim.call("DELETE", &format!("/servers/{live}"), None);
    wait_for("the bystander gone", Duration::from_secs(10), || {
        c.sim.servers().is_empty()
    });
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    let create = c.sim.last_create_request().unwrap();
    let expires: u64 = create["labels"][EXPIRES].as_str().unwrap().parse().unwrap();
    let api_now = now - 3600;
    assert!(
        (api_now + 590..api_now + 700).contains(&expires),
        "expires {expires} vs the API's now {api_now}"
    );
    c.sim.assert_clean();
}

#[test]
fn a_runner_without_a_readable_lease_is_reaped_by_its_age_in_the_apis_time() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    config(&c, 600);
    // The API's clock is two hours behind this agent's: ages are the API's.
    c.sim.set_clock_skew(-7200);
    let managed = |name: &str, expires: &str, age_s: u64| {
        let id = c.sim.add_server(
            name,
            &[("managed-by", "buildkit-launcher"), (EXPIRES, expires)],
        );
        c.sim.set_age(id, age_s);
        id
    };
    // Label edited away, 26 h old: past the longest build and an hour; deleted.
    let old = managed("bkl-a-1-aaaaaaaa", "soon", 26 * 3600);
    // Label damaged, 24 h old (24 h 2 min by this agent's clock, which is ahead): kept.
    let young = managed("bkl-a-2-bbbbbbbb", "", 24 * 3600 - 7200 + 120);
    let out = c
        .launcher()
        .args([
            "--config",
            &format!("{}/fast.ncl", c.ctx.path().display()),
            "reap",
            "--json",
        ])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let left: Vec<i64> = c.sim.servers().iter().map(|s| s.id).collect();
    assert_eq!(left, [young], "{}", out.stdout);
    assert!(!left.contains(&old));
    let entries: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let entry = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "bkl-a-1-aaaaaaaa")
        .unwrap();
    assert_eq!(entry["action"], "deleted");
    assert_eq!(entry["by_age"], true);
    assert!(
        out.stderr.contains(
            "has no readable buildkit-launcher/expires label and was created more than 1 d 1 h ago"
        ),
        "{}",
        out.stderr
    );
    c.sim.call("DELETE", &format!("/servers/{young}"), None);
    wait_for("the young one gone", Duration::from_secs(10), || {
        c.sim.servers().is_empty()
    });
}

#[test]
fn eight_first_builds_starting_with_10_requests_left_all_succeed() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    config(&c, 600);
    // The first builds of a project: no project key yet, and almost no budget.
    c.sim.remove_ssh_keys();
    c.sim.set_budget(3600, 10);
    let started = Instant::now();
    let children: Vec<_> = (0..8)
        .map(|n| {
            let report = c.ctx.path().join(format!("report-{n}.json"));
            let mut args = c.args();
            let at = args.iter().position(|a| a == "--report").unwrap();
            args[at + 1] = report.display().to_string();
            // A repository each: eight builds pushing one tag would overwrite each other's
            // image between push and verification.
            let at = args.iter().position(|a| a == "--project").unwrap();
            args[at + 1] = format!("e2e/app{n}");
            Command::new(BIN)
                .args(&args)
                .env("HCLOUD_TOKEN", &c.sim.token)
                .env("HCLOUD_ENDPOINT", &c.sim.endpoint)
                .env("TMPDIR", c.tmp.path())
                .env("CI_PIPELINE_NUMBER", format!("{}", 100 + n))
                .env_remove("CI_REPO")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let wall = started.elapsed();
    let (requests, limited) = (c.sim.total_calls(), c.sim.rate_limited());
    // Answered requests beyond the 10 left need one refill second each.
    let bound = (requests - limited).saturating_sub(10);
    eprintln!(
        "eight concurrent builds from 10 requests left: {:.1} s wall, {} answered requests and {limited} 429s; the refill's lower bound: {bound} s (ratio {:.2})",
        wall.as_secs_f64(),
        requests - limited,
        wall.as_secs_f64() / f64::from(bound.max(1))
    );
    for (n, out) in outputs.iter().enumerate() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "build {n}:\n{stderr}");
    }
    let keys: Vec<String> = c.sim.ssh_keys().into_iter().map(|(n, _)| n).collect();
    assert_eq!(keys, ["buildkit-launcher"], "one project key");
    c.sim.assert_clean();
}

#[test]
fn a_create_answered_with_an_unreadable_body_is_found_by_name_or_stays_registered() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    config(&c, 600);
    // Found by name: the build goes on on it.
    c.sim.after_create(&[AfterCreate::Garbled]);
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert_eq!(c.calls("POST /servers"), 1);
    c.sim.assert_clean();
    // Not listed yet when looked for: the create fails, but the name stays registered, and
    // the destroy finds and deletes it.
    c.sim.after_create(&[AfterCreate::Garbled]);
    c.sim.lag_name_lookups(1);
    let out = c.build(&[]);
    assert_eq!(out.code, 4, "stderr:\n{}", out.stderr);
    let error = c.report()["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("may exist all the same"), "{error}");
    assert!(
        out.stderr.contains("was being created; destroying it"),
        "{}",
        out.stderr
    );
    c.sim.assert_clean();
}

#[test]
fn a_budget_that_does_not_refill_fails_after_its_own_bound_naming_it() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    std::fs::write(
        c.ctx.path().join("fast.ncl"),
        "{ hcloud.retry = { initial_delay_ms = 50, max_delay_ms = 400 }, hcloud.rate_limit_wait_s = 4 }",
    )
    .unwrap();
    c.sim.set_refill_per_second(0.0);
    c.sim.set_budget(3600, 0);
    let started = Instant::now();
    let out = c.build(&[]);
    let took = started.elapsed();
    assert_eq!(out.code, 4, "stderr:\n{}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .expect("an error line");
    assert!(line.contains("rate_limit_exceeded"), "{line}");
    assert!(line.contains("hcloud.rate_limit_wait_s"), "{line}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(30),
        "{took:?}"
    );
    assert!(
        out.stderr.contains("waiting for it to refill"),
        "{}",
        out.stderr
    );
    c.sim.set_refill_per_second(1.0);
    c.sim.assert_clean();
}

#[test]
fn a_build_with_a_realistic_boot_and_delete_costs_few_requests() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    config(&c, 600);
    // A boot from a snapshot: create 20 s, start 25 s; a delete of 5 s (FACTS.md).
    c.sim.action_time("create_server", Duration::from_secs(20));
    c.sim.action_time("start_server", Duration::from_secs(25));
    c.sim.action_time("delete_server", Duration::from_secs(5));
    let started = Instant::now();
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    // The project key the test registered is not the build's.
    let requests = c.sim.total_calls() - 1;
    eprintln!(
        "API requests for one successful build with a 25 s boot and a 5 s delete: {requests} in {:.1} s ({:?})",
        started.elapsed().as_secs_f64(),
        c.sim.calls()
    );
    assert!(requests <= 18, "{:?}", c.sim.calls());
    c.sim.assert_clean();
}
