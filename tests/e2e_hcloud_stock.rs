//! Server types by need, not by name, end to end through the Hetzner API simulator: a type
//! sold out in every location (412 `resource_unavailable`) moves the create to the rung's next
//! candidate, `locations[].available` only orders candidates, and the log says which type was
//! used and why. After every test the simulator holds no server.

mod support;

use support::hcloud_sim::cloud::Cloud;

/// The line that says why the build does not run on its first choice.
fn substitute_line(stderr: &str) -> &str {
    stderr
        .lines()
        .rfind(|l| l.contains(" sold out in ") && !l.contains("trying"))
        .unwrap_or_else(|| panic!("no substitute line in:\n{stderr}"))
}

#[test]
fn cx33_and_cx43_sold_out_run_on_an_8_gb_type_of_another_family_within_the_ceiling() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    c.sim.sell_out("cx33");
    c.sim.sell_out("cx43");
    let policy = c.ctx.path().join("policy.ncl");
    std::fs::write(&policy, "{ max_eur_per_hour = 0.03 }").unwrap();
    let out = c
        .launcher()
        .env("BUILDKIT_LAUNCHER_POLICY", &policy)
        .args(c.args())
        .run();
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    let create = c.sim.last_create_request().unwrap();
    assert_eq!(create["server_type"], "cpx32", "{create}");
    // cx33 in each of the three locations, then cpx32 in the first.
    assert_eq!(c.calls("POST /servers"), 4);
    let line = substitute_line(&out.stderr);
    assert!(
        line.contains(
            "cx33 sold out in fsn1 (resource_unavailable), nbg1 (resource_unavailable), hel1 (resource_unavailable): cpx32, 8 GB, 4 vCPUs, 0.0240 EUR/h"
        ),
        "{line}"
    );
    // The report's attempt names the type used and why.
    let attempt = &c.report()["attempts"][0];
    assert_eq!(attempt["tier"], "cx33");
    assert_eq!(attempt["substitute"]["server_type"], "cpx32", "{attempt}");
    assert!(
        attempt["substitute"]["why"]
            .as_str()
            .unwrap()
            .starts_with("cx33 sold out in fsn1"),
        "{attempt}"
    );
    assert_eq!(attempt["substitute"]["price_eur_per_hour"], 0.024);
    // cpx32's hour and its primary IPv4's (the simulator's GET /pricing: 0.0010 EUR/h).
    let cost = attempt["cost_eur"].as_f64().unwrap();
    assert!((cost - (0.024 + 0.001)).abs() < 1e-9, "{attempt}");
    c.sim.assert_clean();
}

#[test]
fn an_available_false_type_that_can_be_ordered_is_still_tried_after_the_others() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    // Every type that fits a cx33 rung is sold out although the API calls it available,
    // except cpx32, which the API calls unavailable although it can be ordered.
    let sold_out = ["cx33", "cx43", "cx53", "cpx42", "ccx23", "ccx33"];
    for t in sold_out {
        c.sim.sell_out(t);
        c.sim.hint_available(t, true);
    }
    c.sim.hint_available("cpx32", false);
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert_eq!(c.sim.last_create_request().unwrap()["server_type"], "cpx32");
    assert_eq!(c.calls("POST /servers"), 6 * 3 + 1);
    let line = substitute_line(&out.stderr);
    // The configured type first, then the available ones cheapest first, cpx32 last.
    let order: Vec<usize> = [
        "cx33 ", "cx43 ", "cpx42 ", "ccx23 ", "cx53 ", "ccx33 ", "cpx32,",
    ]
    .iter()
    .map(|t| line.find(t).unwrap_or_else(|| panic!("{t} in {line}")))
    .collect();
    assert!(order.is_sorted(), "{order:?}: {line}");
    c.sim.assert_clean();
}

#[test]
fn every_arm64_type_sold_out_is_exit_4_naming_what_was_tried_and_leaves_nothing() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    c.sim.add_snapshot(
        "arm64",
        &[
            ("buildkit-launcher/role", "golden"),
            ("buildkit-launcher/arch", "arm64"),
            ("buildkit-launcher/buildkit", "v0.16.0"),
        ],
        "2026-11-20T00:00:00+00:00",
    );
    for t in ["cax11", "cax21", "cax31", "cax41"] {
        c.sim.sell_out(t);
    }
    let out = c.build(&["--arch", "arm64"]);
    assert_eq!(out.code, 4, "stderr:\n{}", out.stderr);
    // The summary's verdict is one line naming every type tried and where; the report says
    // the same.
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("sold out"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    let line = lines[0];
    assert!(
        line.starts_with("build stopped by an infrastructure failure"),
        "{line}"
    );
    assert!(
        line.ends_with(c.report()["error"].as_str().unwrap()),
        "{line}"
    );
    assert!(line.contains("is sold out"), "{line}");
    let tried: Vec<&str> = ["cax11", "cax21", "cax31", "cax41"]
        .into_iter()
        .filter(|t| line.contains(&format!("{t} sold out in fsn1 (resource_unavailable), nbg1 (resource_unavailable), hel1 (resource_unavailable)")))
        .collect();
    // The rung's type and every bigger cax: at least two, each in every location.
    assert!(tried.len() >= 2, "{line}");
    assert_eq!(c.calls("POST /servers"), 3 * tried.len() as u32, "{line}");
    assert!(line.contains("nothing was created"), "{line}");
    c.sim.assert_clean();
}

#[test]
fn cx53_withdrawn_a_cx23_build_still_runs() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    c.sim.deprecate_server_type("cx53");
    std::fs::write(c.ctx.path().join(".build-spec.ncl"), "{ tier = \"cx23\" }").unwrap();
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert_eq!(c.sim.last_create_request().unwrap()["server_type"], "cx23");
    assert_eq!(c.calls("POST /servers"), 1);
    // The withdrawn type is a warning naming what a cx53 rung would use.
    assert!(
        out.stderr
            .contains("server type cx53 (tiers.amd64) is not sold in fsn1, nbg1, hel1 any more (a rung of it has no candidate)"),
        "{}",
        out.stderr
    );
    c.sim.assert_clean();
}

#[test]
fn a_golden_snapshot_from_a_larger_disk_runs_on_a_type_with_that_disk_or_not_at_all() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    let golden = *c
        .sim
        .images()
        .iter()
        .find(|(_, i)| i.labels.get("buildkit-launcher/role").map(String::as_str) == Some("golden"))
        .expect("the golden snapshot")
        .0;
    // Baked on an 80 GB disk: a cx23 (40 GB) cannot boot it; the cheapest type with the
    // rung's memory and vCPUs and an 80 GB disk is cpx22.
    c.sim.set_image_disk(golden, 80.0);
    std::fs::write(c.ctx.path().join(".build-spec.ncl"), "{ tier = \"cx23\" }").unwrap();
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert_eq!(c.sim.last_create_request().unwrap()["server_type"], "cpx22");
    assert_eq!(c.calls("POST /servers"), 1, "no create was refused");
    assert!(
        out.stderr.contains(&format!(
            "golden snapshot {golden} was taken from a 80 GB disk, more than cx23's 40 GB"
        )),
        "{}",
        out.stderr
    );
    // A disk no type has: exit 2 before any server, naming the snapshot and the way out.
    c.sim.set_image_disk(golden, 5000.0);
    let creates = c.calls("POST /servers");
    let out = c.build(&[]);
    let line = out.assert_one_error_line(2);
    assert!(
        line.contains(&format!(
            "golden snapshot {golden} was taken from a 5000 GB disk"
        )),
        "{line}"
    );
    assert!(line.contains("bake it on the smallest type"), "{line}");
    assert_eq!(c.calls("POST /servers"), creates);
    c.sim.assert_clean();
}

/// API requests of one successful build with a realistic boot (create 20 s, start 25 s, delete
/// 5 s: FACTS.md), per fallback: none, the configured type sold out everywhere, and it and the
/// first substitute sold out. Each refused create costs one request per location, nothing else.
/// `CI=true cargo test --test e2e_hcloud_stock requests_per_fallback -- --nocapture` prints them
/// (docs/PERFORMANCE.md).
#[test]
fn requests_per_fallback_with_a_realistic_boot() {
    let mut counts = Vec::new();
    for sold_out in [&[][..], &["cx33"], &["cx33", "cpx32"]] {
        let Some(c) = Cloud::new("RUN true") else {
            return;
        };
        c.sim
            .action_time("create_server", std::time::Duration::from_secs(20));
        c.sim
            .action_time("start_server", std::time::Duration::from_secs(25));
        c.sim
            .action_time("delete_server", std::time::Duration::from_secs(5));
        for t in sold_out {
            c.sim.sell_out(t);
            // The API's hint calls them available (it is wrong both ways: FACTS.md), so each
            // is tried; with a true hint a sold-out substitute goes last and costs nothing.
            c.sim.hint_available(t, true);
        }
        let started = std::time::Instant::now();
        let out = c.build(&[]);
        assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
        // The project key the fixture registered is not the build's.
        let requests = c.sim.total_calls() - 1;
        eprintln!(
            "API requests for one build with a 25 s boot, {} type(s) sold out everywhere: {requests} ({} creates) in {:.1} s",
            sold_out.len(),
            c.calls("POST /servers"),
            started.elapsed().as_secs_f64()
        );
        assert_eq!(c.calls("POST /servers"), 1 + 3 * sold_out.len() as u32);
        counts.push(requests);
        c.sim.assert_clean();
    }
    // A fallback adds its refused creates (3 locations each) and nothing else.
    assert_eq!(counts[1], counts[0] + 3, "{counts:?}");
    assert_eq!(counts[2], counts[0] + 6, "{counts:?}");
}
