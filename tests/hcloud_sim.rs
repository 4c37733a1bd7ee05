//! Self-tests of the Hetzner Cloud API simulator (`tests/support/hcloud_sim`, a test double of
//! Hetzner's API): auth, catalogue, label selectors, faults, the rate limit, and servers realized
//! as sandbox runners that are torn down on delete. Answers are read both as raw JSON (exact
//! shapes and statuses) and through the `hcloud` crate (its models must deserialize them).
//! Tests that realize runners need root and sshd; they skip with one line locally, fail in CI.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use buildkit_launcher::provider::cloud_init::UserData;
use buildkit_launcher::provider::keys::BuildKeys;
use buildkit_launcher::provider::{Lease, labels};
use hcloud::apis::configuration::Configuration;
use hcloud::apis::{actions_api, server_types_api, servers_api};
use hcloud::models::{self, action, server};
use serde_json::{Value, json};
use support::hcloud_sim::{HcloudSim, encode};

/// Poll `GET /actions/{id}` until it is no longer running.
fn wait_action(sim: &HcloudSim, id: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = sim.get(&format!("/actions/{id}"));
        assert_eq!(reply.status, 200, "{}", reply.json);
        if reply.json["action"]["status"] != "running" {
            return reply.json["action"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "action {id} still running after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn crate_config(sim: &HcloudSim) -> Configuration {
    let mut config = Configuration::new();
    config
        .base_path_mapping
        .insert("https://api.hetzner.cloud/v1".into(), sim.endpoint.clone());
    config.bearer_access_token = Some(sim.token.clone());
    config
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn every_request_needs_the_token() {
    let sim = HcloudSim::start();
    for token in [None, Some("not-the-token")] {
        let reply = sim.call_with_token("GET", "/servers", None, token);
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.json,
            json!({"error": {"code": "unauthorized", "message": "unable to authenticate", "details": {}}})
        );
        assert_eq!(
            reply.header("ratelimit-limit"),
            Some("3600"),
            "{:?}",
            reply.headers
        );
    }
    assert_eq!(sim.get("/servers").status, 200);
    assert_eq!(sim.calls()["GET /servers"], 3);
    assert_eq!(sim.total_calls(), 3);
    assert_eq!(sim.get("/no_such_thing").code(), "not_found");
}

#[test]
fn server_types_and_locations_come_in_the_crates_shapes() {
    let sim = HcloudSim::start();
    sim.deprecate_server_type("cx33");
    let config = crate_config(&sim);
    let types = runtime()
        .block_on(server_types_api::list_server_types(
            &config,
            Default::default(),
        ))
        .expect("the hcloud crate reads GET /server_types");
    let names: Vec<&str> = types.server_types.iter().map(|t| t.name.as_str()).collect();
    for name in [
        "cx22", "cx32", "cx23", "cx33", "cx43", "cx53", "cax11", "cax21", "cax31", "cax41",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let cx43 = types
        .server_types
        .iter()
        .find(|t| t.name == "cx43")
        .unwrap();
    assert_eq!((cx43.cores, cx43.memory, cx43.disk), (8, 16.0, 160.0));
    assert_eq!(cx43.architecture, models::Architecture::X86);
    assert!(matches!(cx43.deprecation, Some(None)));
    assert!(matches!(
        types
            .server_types
            .iter()
            .find(|t| t.name == "cx33")
            .unwrap()
            .deprecation,
        Some(Some(_))
    ));
    assert_eq!(types.meta.pagination.total_entries, Some(16));

    let raw = sim.get("/server_types?name=cx23");
    let cx23 = &raw.json["server_types"][0];
    assert_eq!(cx23["deprecation"], Value::Null);
    assert!(cx23.as_object().unwrap().contains_key("deprecation"));
    let fsn1 = cx23["prices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["location"] == "fsn1")
        .unwrap();
    assert_eq!(fsn1["price_hourly"]["net"], "0.0080000000");
    assert_eq!(fsn1["price_hourly"]["gross"], "0.0095200000");
    let cx22 = &sim.get("/server_types?name=cx22").json["server_types"][0];
    assert_eq!(
        cx22["deprecation"]["unavailable_after"],
        "2025-12-31T23:59:59+00:00"
    );
    assert_eq!(raw.json["meta"]["pagination"]["total_entries"], 1);

    let locations = sim.get("/locations");
    let names: Vec<&str> = locations.json["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fsn1", "nbg1", "hel1"]);
}

#[test]
fn snapshots_are_found_by_label_selector_newest_first() {
    let sim = HcloudSim::start();
    let golden = [
        ("buildkit-launcher/role", "golden"),
        ("buildkit-launcher/arch", "amd64"),
    ];
    let old = sim.add_snapshot("amd64", &golden, "2026-10-01T03:00:00+00:00");
    let new = sim.add_snapshot("amd64", &golden, "2026-11-01T03:00:00Z");
    let arm = sim.add_snapshot(
        "arm64",
        &[
            ("buildkit-launcher/role", "golden"),
            ("buildkit-launcher/arch", "arm64"),
        ],
        "2026-11-02T03:00:00+00:00",
    );
    let other = sim.add_snapshot("amd64", &[("team", "x")], "2026-11-03T03:00:00+00:00");
    let ids = |query: &str| -> Vec<i64> {
        let reply = sim.get(&format!("/images?{query}"));
        assert_eq!(reply.status, 200, "{}", reply.json);
        reply.json["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_i64().unwrap())
            .collect()
    };
    let selector = encode("buildkit-launcher/role=golden,buildkit-launcher/arch=amd64");
    assert_eq!(
        ids(&format!(
            "type=snapshot&label_selector={selector}&sort=created:desc"
        )),
        [new, old]
    );
    assert_eq!(
        ids(&format!(
            "type=snapshot&label_selector={selector}&sort=created:asc"
        )),
        [old, new]
    );
    let role = encode("buildkit-launcher/role");
    assert_eq!(
        ids(&format!(
            "type=snapshot&label_selector={role}&architecture=arm"
        )),
        [arm]
    );
    assert_eq!(
        ids(&format!(
            "type=snapshot&label_selector={}&sort=created:desc",
            encode("!buildkit-launcher/role")
        )),
        [other]
    );
    assert_eq!(
        ids(&format!(
            "label_selector={}&sort=id",
            encode("team in (x,y)")
        )),
        [other]
    );
    assert_eq!(
        ids(&format!(
            "type=snapshot&label_selector={}",
            encode("buildkit-launcher/arch!=amd64")
        )),
        [arm, other]
    );
    assert_eq!(
        sim.get(&format!("/images?label_selector={}", encode("a=b=c,=x")))
            .code(),
        "invalid_input"
    );

    let image = &sim.get(&format!("/images/{new}")).json["image"];
    assert_eq!(image["type"], "snapshot");
    assert_eq!(image["architecture"], "x86");
    assert_eq!(image["name"], Value::Null);
    assert_eq!(image["labels"]["buildkit-launcher/role"], "golden");
    assert_eq!(
        sim.call("DELETE", &format!("/images/{old}"), None).status,
        204
    );
    assert_eq!(sim.get(&format!("/images/{old}")).status, 404);
    assert_eq!(sim.calls()["GET /images/{id}"], 2);
}

fn create_body(name: &str, location: &str, server_type: &str) -> Value {
    json!({"name": name, "server_type": server_type, "image": "debian-12", "location": location,
           "user_data": "#cloud-config\n", "labels": {"managed-by": "buildkit-launcher"},
           "start_after_create": true})
}

#[test]
fn create_is_validated_and_location_faults_answer_412() {
    let sim = HcloudSim::start();
    let post = |body: &Value| sim.call("POST", "/servers", Some(body));
    sim.fail_location("fsn1", "resource_unavailable");
    let reply = post(&create_body("bkl-a-1-deadbeef", "fsn1", "cx23"));
    assert_eq!(
        (reply.status, reply.code()),
        (412, "resource_unavailable"),
        "{}",
        reply.json
    );
    assert_eq!(reply.json["error"]["message"], "error during placement");
    assert_eq!(sim.last_create_request().unwrap()["location"], "fsn1");
    sim.fail_location("hel1", "resource_limit_exceeded");
    assert_eq!(
        post(&create_body("bkl-a-1-deadbeef", "hel1", "cx23")).status,
        403
    );

    let invalid = [
        create_body("bkl-a-1-deadbeef", "nbg1", "cx99"),
        create_body("bkl-a-1-deadbeef", "nbg1", "cx22"),
        create_body("bkl-a-1-deadbeef", "ash", "cx23"),
        create_body("not a hostname", "nbg1", "cx23"),
        json!({"name": "x", "server_type": "cx23", "image": "debian-12", "labels": {"-bad": "v"}}),
        json!({"name": "x", "server_type": "cax11", "image": "114690387"}),
    ];
    for body in &invalid {
        let reply = post(body);
        assert_eq!(
            (reply.status, reply.code()),
            (400, "invalid_input"),
            "{body}: {}",
            reply.json
        );
    }
    assert_eq!(
        post(&create_body("bkl-a-1-deadbeef", "nbg1", "cx22")).json["error"]["message"],
        "unsupported location for server type"
    );
    let reply = sim.call("POST", "/servers", None);
    assert_eq!(reply.code(), "json_error");
    sim.add_server("taken", &[]);
    assert_eq!(
        post(&create_body("taken", "nbg1", "cx23")).code(),
        "uniqueness_error"
    );
    assert_eq!(sim.servers().len(), 1);
    assert_eq!(sim.calls()["POST /servers"], 11);
}

#[test]
fn a_sold_out_type_answers_412_everywhere_and_available_is_a_hint_that_can_be_wrong() {
    let sim = HcloudSim::start();
    let post = |name: &str, location: &str, server_type: &str| {
        sim.call(
            "POST",
            "/servers",
            Some(&create_body(name, location, server_type)),
        )
    };
    let available = |server_type: &str| -> Vec<Value> {
        sim.get(&format!("/server_types?name={server_type}")).json["server_types"][0]["locations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["available"].clone())
            .collect()
    };
    assert_eq!(available("cx33"), [true, true, true]);
    sim.sell_out("cx33");
    // Still listed and sold (not past any deprecation), but out of stock in every location.
    assert_eq!(available("cx33"), [false, false, false]);
    for location in ["fsn1", "nbg1", "hel1"] {
        let reply = post("bkl-s-1-deadbeef", location, "cx33");
        assert_eq!(
            (reply.status, reply.code()),
            (412, "resource_unavailable"),
            "{}",
            reply.json
        );
    }
    // The hint wrong both ways: "available" and refused, "unavailable" and ordered.
    sim.hint_available("cx33", true);
    assert_eq!(available("cx33"), [true, true, true]);
    assert_eq!(post("bkl-s-1-deadbeef", "fsn1", "cx33").status, 412);
    sim.hint_available("cpx32", false);
    assert_eq!(available("cpx32"), [false, false, false]);
    // (Ordering it makes a sandbox runner: tests/e2e_hcloud_stock.rs does, as root.)
    let cpx32 = &sim.get("/server_types?name=cpx32").json["server_types"][0];
    assert_eq!(
        (&cpx32["cores"], &cpx32["memory"], &cpx32["disk"]),
        (&json!(4), &json!(8.0), &json!(160.0))
    );
}

#[test]
fn the_rate_limit_answers_429_with_headers() {
    let sim = HcloudSim::start();
    sim.set_refill_per_second(0.0);
    sim.set_budget(5, 2);
    let first = sim.get("/locations");
    assert_eq!(
        (first.status, first.header("ratelimit-remaining")),
        (200, Some("1"))
    );
    assert_eq!(first.header("ratelimit-limit"), Some("5"));
    assert_eq!(
        sim.get("/locations").header("ratelimit-remaining"),
        Some("0")
    );
    let refused = sim.get("/locations");
    assert_eq!(
        (refused.status, refused.code()),
        (429, "rate_limit_exceeded")
    );
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    let reset: u64 = refused.header("ratelimit-reset").unwrap().parse().unwrap();
    assert!(
        reset > buildkit_launcher::provider::unix_now(),
        "reset {reset} is in the past"
    );

    sim.set_refill_per_second(20.0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sim.get("/locations").status, 200);

    sim.set_budget(3600, 3600);
    sim.fail_next_requests_with_429(2);
    assert_eq!(sim.get("/servers").status, 429);
    assert_eq!(sim.get("/servers").status, 429);
    sim.fail_next_5xx(1);
    let unavailable = sim.get("/servers");
    assert_eq!(
        (unavailable.status, unavailable.code()),
        (503, "unavailable")
    );
    assert!(unavailable.header("ratelimit-reset").is_some());
    assert_eq!(sim.get("/servers").status, 200);
    assert_eq!(sim.requests().len(), 8);
}

#[test]
fn deletes_fail_as_scripted_then_the_server_is_gone() {
    let sim = HcloudSim::start();
    let id = sim.add_server("bkl-old-1-0000abcd", &[("managed-by", "buildkit-launcher")]);
    let delete = || sim.call("DELETE", &format!("/servers/{id}"), None);
    sim.fail_deletes(2);
    assert_eq!((delete().status, delete().status), (503, 503));

    sim.fail_delete_actions(1);
    let reply = delete();
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["action"]["command"], "delete_server");
    let failed = wait_action(&sim, reply.json["action"]["id"].as_i64().unwrap());
    assert_eq!(failed["status"], "error");
    assert_eq!(failed["error"]["code"], "action_failed");
    assert_eq!(
        sim.get(&format!("/servers/{id}")).json["server"]["locked"],
        false
    );

    sim.action_delay(Duration::from_millis(400));
    let reply = delete();
    assert_eq!(delete().code(), "locked", "a second delete while one runs");
    let action = reply.json["action"]["id"].as_i64().unwrap();
    let listed = sim.get(&format!("/actions?id={action}&id=999999"));
    assert_eq!(listed.json["actions"][0]["status"], "running");
    assert_eq!(listed.json["actions"].as_array().unwrap().len(), 1);
    assert_eq!(wait_action(&sim, action)["status"], "success");
    let gone = sim.get(&format!("/servers/{id}"));
    assert_eq!((gone.status, gone.code()), (404, "not_found"));
    assert!(sim.servers().is_empty());
    assert_eq!(sim.calls()["DELETE /servers/{id}"], 5);
}

#[test]
fn create_image_makes_a_labelled_snapshot_of_the_servers_architecture() {
    let sim = HcloudSim::start();
    sim.action_delay(Duration::ZERO);
    let id = sim.add_server("bkl-golden-bake", &[]);
    let off = sim.call("POST", &format!("/servers/{id}/actions/poweroff"), None);
    assert_eq!(
        (off.status, &off.json["action"]["command"]),
        (201, &json!("stop_server"))
    );
    wait_action(&sim, off.json["action"]["id"].as_i64().unwrap());
    assert_eq!(sim.servers()[0].status, "off");
    let body = json!({"type": "snapshot", "description": "golden", "labels": {"buildkit-launcher/role": "golden"}});
    let reply = sim.call(
        "POST",
        &format!("/servers/{id}/actions/create_image"),
        Some(&body),
    );
    assert_eq!(reply.status, 201, "{}", reply.json);
    let image = reply.json["image"]["id"].as_i64().unwrap();
    wait_action(&sim, reply.json["action"]["id"].as_i64().unwrap());
    let image = &sim.get(&format!("/images/{image}")).json["image"];
    assert_eq!(
        (
            &image["status"],
            &image["architecture"],
            &image["disk_size"]
        ),
        (&json!("available"), &json!("x86"), &json!(40.0))
    );
    assert_eq!(image["created_from"]["name"], "bkl-golden-bake");
    assert_eq!(sim.calls()["POST /servers/{id}/actions/create_image"], 1);
}

/// A realistic create request: the launcher's labels and cloud-init user data with fresh keys.
fn launcher_request(name: &str, location: &str) -> models::CreateServerRequest {
    let lease = Lease::new(3600);
    let keys = BuildKeys::generate(&lease.id).unwrap();
    let mut request =
        models::CreateServerRequest::new("debian-12".into(), name.into(), "cx23".into());
    request.location = Some(location.into());
    request.labels = Some(labels(&lease, "test/repo", "cx23").into_iter().collect());
    request.user_data = Some(UserData::for_build(&keys).render());
    request.start_after_create = Some(true);
    request.ssh_keys = Some(vec!["buildkit-launcher".into()]);
    request
}

/// The project key `launcher_request` names (a throwaway public key, as the launcher's).
fn register_project_key(sim: &HcloudSim) {
    let key = BuildKeys::generate("project")
        .unwrap()
        .client
        .public_openssh;
    let reply = sim.call(
        "POST",
        "/ssh_keys",
        Some(&json!({"name": "buildkit-launcher", "public_key": key})),
    );
    assert_eq!(reply.status, 201, "{}", reply.json);
}

fn needs_runners() -> bool {
    support::registry::require_root_and_tools(&["sshd"])
}

#[test]
fn a_created_server_is_a_reachable_sandbox_runner_until_deleted() {
    if !needs_runners() {
        return;
    }
    let sim = HcloudSim::start();
    register_project_key(&sim);
    let config = crate_config(&sim);
    let rt = runtime();
    let params = servers_api::CreateServerParams {
        create_server_request: launcher_request("bkl-test-repo-1-abc", "nbg1"),
    };
    let created = rt
        .block_on(servers_api::create_server(&config, params))
        .expect("create through the hcloud crate");
    let server = created.server;
    assert_eq!(server.status, server::Status::Initializing);
    assert_eq!(created.action.command, "create_server");
    assert_eq!(created.next_actions[0].command, "start_server");
    assert!(created.root_password.is_none(), "an SSH key was named");
    let ip = server.public_net.ipv4.as_ref().expect("an IPv4").ip.clone();
    assert!(ip.starts_with("127.0.0."), "{ip}");
    assert_eq!(
        sim.last_create_request().unwrap()["labels"]["managed-by"],
        "buildkit-launcher"
    );

    let action = rt.block_on(async {
        loop {
            let a = actions_api::get_action(
                &config,
                actions_api::GetActionParams {
                    id: created.action.id,
                },
            )
            .await
            .unwrap()
            .action;
            if a.status != action::Status::Running {
                break a;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(
        (action.status, action.progress),
        (action::Status::Success, 100)
    );
    let got = rt
        .block_on(servers_api::get_server(
            &config,
            servers_api::GetServerParams { id: server.id },
        ))
        .unwrap();
    assert_eq!(got.server.unwrap().status, server::Status::Running);

    let mut banner = [0u8; 7];
    let mut ssh = TcpStream::connect((ip.as_str(), 22)).expect("the runner listens on port 22");
    ssh.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ssh.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0");
    drop(ssh);
    let sim_server = sim.servers().pop().unwrap();
    let runner = sim_server.runner.clone().expect("realized");
    assert_eq!(sim_server.ip.as_deref(), Some(ip.as_str()));
    let cgroup = format!("/sys/fs/cgroup/memory/buildkit-launcher/{runner}/memory.limit_in_bytes");
    assert_eq!(
        std::fs::read_to_string(cgroup).unwrap().trim(),
        (256u64 << 20).to_string(),
        "cx23 ÷ 16"
    );

    let deleted = rt
        .block_on(servers_api::delete_server(
            &config,
            servers_api::DeleteServerParams { id: server.id },
        ))
        .unwrap();
    assert_eq!(
        wait_action(&sim, deleted.action.unwrap().id)["status"],
        "success"
    );
    assert_eq!(sim.get(&format!("/servers/{}", server.id)).status, 404);
    assert!(!sim.runner_base().join(&runner).exists());
    assert!(
        TcpStream::connect((ip.as_str(), 22)).is_err(),
        "nothing listens any more"
    );
    sim.assert_clean();
}

#[test]
fn a_failed_create_action_leaves_an_off_server_without_runner() {
    if !needs_runners() {
        return;
    }
    let sim = HcloudSim::start();
    register_project_key(&sim);
    sim.fail_create_actions(1);
    let body = serde_json::to_value(launcher_request("bkl-test-repo-2-abc", "hel1")).unwrap();
    let reply = sim.call("POST", "/servers", Some(&body));
    assert_eq!(reply.status, 201, "{}", reply.json);
    let failed = wait_action(&sim, reply.json["action"]["id"].as_i64().unwrap());
    assert_eq!(failed["status"], "error");
    let server = sim.servers().pop().unwrap();
    assert_eq!(
        (server.status.as_str(), server.runner.as_deref()),
        ("off", None)
    );
    sim.assert_no_runner_left();
    let id = server.id;
    let deleted = sim.call("DELETE", &format!("/servers/{id}"), None);
    wait_action(&sim, deleted.json["action"]["id"].as_i64().unwrap());
    sim.assert_clean();
}

#[test]
fn dropping_the_simulator_tears_its_runners_down() {
    if !needs_runners() {
        return;
    }
    let sim = HcloudSim::start();
    register_project_key(&sim);
    let body = serde_json::to_value(launcher_request("bkl-test-repo-3-abc", "fsn1")).unwrap();
    let reply = sim.call("POST", "/servers", Some(&body));
    assert_eq!(reply.status, 201, "{}", reply.json);
    let runner = sim.live_runners().pop().expect("a live runner");
    let dir = sim.runner_base().join(&runner);
    assert!(dir.exists());
    drop(sim);
    assert!(!dir.exists(), "{} left after drop", dir.display());
    let cgroup = format!("/sys/fs/cgroup/memory/buildkit-launcher/{runner}");
    assert!(
        !std::path::Path::new(&cgroup).exists(),
        "{cgroup} left after drop"
    );
}
