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
            .contains("cx53 is deprecated at Hetzner in every configured location"),
        "{}",
        out.stderr
    );
    c.sim.assert_clean();
}
