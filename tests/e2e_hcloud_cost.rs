//! What a runner really costs, end to end through the Hetzner API simulator: every server gets
//! a primary IPv4 billed per started hour, priced by `GET /pricing`, which the estimate and the
//! report count; `hcloud.ipv4 = false` creates IPv6-only runners, reached over IPv6, with no
//! IPv4 to pay for. And the simulator's side of it: `/pricing` in the API's shape, and a create
//! with neither public IP nor private network refused. After every build the simulator holds
//! no server.

mod support;

use serde_json::json;
use support::hcloud_sim::HcloudSim;
use support::hcloud_sim::cloud::Cloud;
use support::{Context, Launcher};

/// The simulator's prices (tests/support/hcloud_sim/catalog.rs): cx33, the generic default
/// rung, and the primary IPv4 (made up to differ from the launcher's reference 0.0008).
const CX33: f64 = 0.0128;
const IPV4: f64 = 0.0010;

fn close(value: &serde_json::Value, expected: f64) -> bool {
    value.as_f64().is_some_and(|v| (v - expected).abs() < 1e-9)
}

#[test]
fn a_build_reports_its_primary_ipv4_at_the_apis_price() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    let out = c.build(&[]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    let create = c.sim.last_create_request().unwrap();
    assert_eq!(
        create["public_net"],
        json!({"enable_ipv4": true, "enable_ipv6": true}),
        "{create}"
    );
    assert_eq!(c.calls("GET /pricing"), 1);
    let report = c.report();
    let attempt = &report["attempts"][0];
    assert_eq!(attempt["tier"], "cx33", "{attempt}");
    // One started hour of cx33 and of its primary IPv4, both at the API's prices.
    assert!(close(&attempt["cost_eur"], CX33 + IPV4), "{attempt}");
    assert!(close(&attempt["ipv4_cost_eur"], IPV4), "{attempt}");
    assert!(close(&report["cost_eur"], CX33 + IPV4), "{report}");
    let plan = &report["plan"];
    assert!(close(&plan["ipv4_eur_per_hour"], IPV4), "{plan}");
    assert!(close(&plan["estimated_cost_eur"], CX33 + IPV4), "{plan}");
    let basis = plan["cost_basis"].as_str().unwrap();
    assert!(
        basis.contains("the Hetzner API's net price in fsn1")
            && basis.contains("IPv4: GET /pricing in fsn1"),
        "{basis}"
    );
    // The rung's candidates as the API lists them: cx33 first.
    assert_eq!(
        plan["rung"]["source"], "GET /server_types at the API's prices",
        "{plan}"
    );
    assert_eq!(plan["rung"]["candidates"][0]["name"], "cx33");
    assert!(close(&plan["rung"]["candidates"][0]["eur_per_hour"], CX33));
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("its primary IPv4 included"),
        "the summary says so:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    c.sim.assert_clean();
}

#[test]
fn an_ipv6_only_runner_is_reached_over_ipv6_and_costs_no_ipv4() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    let config = c.ctx.path().join("ipv6.ncl");
    std::fs::write(
        &config,
        "{ hcloud.retry = { initial_delay_ms = 50, max_delay_ms = 400 }, hcloud.ipv4 = false }",
    )
    .unwrap();
    let mut args = c.args();
    assert_eq!(args[0], "--config");
    args[1] = config.display().to_string();
    let out = c.launcher().args(args).run();
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    let create = c.sim.last_create_request().unwrap();
    assert_eq!(
        create["public_net"],
        json!({"enable_ipv4": false, "enable_ipv6": true}),
        "{create}"
    );
    // The server had no IPv4: the launcher connected to its IPv6 address (a literal, in
    // brackets), synced over it and built.
    assert!(
        out.stderr.contains("connected to [::ffff:127."),
        "stderr:\n{}",
        out.stderr
    );
    // No IPv4, so no price of one asked for, estimated or billed.
    assert_eq!(c.calls("GET /pricing"), 0);
    let report = c.report();
    let attempt = &report["attempts"][0];
    assert!(close(&attempt["cost_eur"], CX33), "{attempt}");
    assert!(attempt.get("ipv4_cost_eur").is_none(), "{attempt}");
    assert!(report["plan"]["ipv4_eur_per_hour"].is_null());
    assert!(close(&report["plan"]["estimated_cost_eur"], CX33));
    assert!(
        report["plan"]["cost_basis"]
            .as_str()
            .unwrap()
            .ends_with("IPv6 only, no primary IPv4"),
        "{}",
        report["plan"]["cost_basis"]
    );
    c.sim.assert_clean();
}

#[test]
fn the_simulator_prices_primary_ips_per_location_as_the_api_does() {
    let sim = HcloudSim::start();
    let reply = sim.get("/pricing");
    assert_eq!(reply.status, 200, "{}", reply.json);
    let pricing = &reply.json["pricing"];
    assert_eq!(pricing["currency"], "EUR");
    let ipv4 = pricing["primary_ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "ipv4")
        .unwrap();
    let locations: Vec<&str> = ipv4["prices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["location"].as_str().unwrap())
        .collect();
    assert_eq!(locations, ["fsn1", "nbg1", "hel1"]);
    assert_eq!(ipv4["prices"][0]["price_hourly"]["net"], "0.0010000000");
    assert!(ipv4["prices"][0]["price_monthly"]["net"].is_string());
}

#[test]
fn a_server_with_neither_public_ip_nor_private_network_is_refused() {
    let sim = HcloudSim::start();
    sim.add_ssh_key("buildkit-launcher");
    let body = json!({
        "name": "no-net", "server_type": "cx23", "image": "debian-12", "location": "fsn1",
        "ssh_keys": ["buildkit-launcher"],
        "public_net": {"enable_ipv4": false, "enable_ipv6": false},
    });
    let reply = sim.call("POST", "/servers", Some(&body));
    assert_eq!(reply.status, 400, "{}", reply.json);
    assert_eq!(reply.code(), "invalid_input");
    assert_eq!(
        reply.json["error"]["details"]["fields"][0]["name"],
        "public_net"
    );
    assert!(sim.servers().is_empty());
}

#[test]
fn plan_with_a_token_prices_and_ranks_from_the_api_and_without_one_asks_nothing() {
    let sim = HcloudSim::start();
    // cpx32 out of stock: the API marks it unavailable, so it is ranked after the others.
    sim.sell_out("cpx32");
    let ctx = Context::new();
    let plan = |token: bool| {
        let mut launcher = Launcher::new();
        if token {
            launcher = launcher
                .env("HCLOUD_TOKEN", &sim.token)
                .env("HCLOUD_ENDPOINT", &sim.endpoint);
        }
        let out = launcher
            .args(["plan", "--json", "--history", "none", "--context"])
            .args([ctx.path()])
            .run();
        assert_eq!(out.code, 0, "{}", out.stderr);
        serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap()
    };
    let offline = plan(false);
    assert_eq!(sim.total_calls(), 0, "no token, no request");
    assert_eq!(offline["tier"], "cx33");
    assert!(close(&offline["estimated_cost_eur"], 0.0104 + 0.0008));
    assert!(
        offline["rung"]["source"]
            .as_str()
            .unwrap()
            .starts_with("the built-in catalogue")
    );
    let online = plan(true);
    let calls = sim.calls();
    assert_eq!(
        (calls.get("GET /server_types"), calls.get("GET /pricing")),
        (Some(&1), Some(&1)),
        "{calls:?}"
    );
    assert_eq!(
        sim.total_calls(),
        2,
        "read-only, nothing created: {calls:?}"
    );
    assert!(
        close(&online["estimated_cost_eur"], CX33 + IPV4),
        "{online}"
    );
    assert!(close(&online["ipv4_eur_per_hour"], IPV4));
    assert!(
        online["cost_basis"]
            .as_str()
            .unwrap()
            .contains("IPv4: GET /pricing in fsn1"),
        "{}",
        online["cost_basis"]
    );
    assert_eq!(
        online["rung"]["source"],
        "GET /server_types at the API's prices"
    );
    let names: Vec<&str> = online["rung"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"cx33"), "{names:?}");
    assert_eq!(names.last(), Some(&"cpx32"), "{names:?}");
}

#[test]
fn plan_never_sends_the_token_to_an_unsafe_endpoint() {
    let ctx = Context::new();
    let out = Launcher::new()
        .env("HCLOUD_TOKEN", "fake-token-for-tests")
        .env("HCLOUD_ENDPOINT", "http://evil.example/v1")
        .args(["plan", "--history", "none", "--context"])
        .args([ctx.path()])
        .run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        out.stderr.trim(),
        "error: --hcloud-endpoint: hcloud endpoint http://evil.example/v1: the token is only sent over https (plain http only to a loopback address)"
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}
