//! Self-tests of the simulator's strictness (tests/support/hcloud_sim, a test double of
//! Hetzner's API): the behaviours of the real API that the launcher's fixes of issue 9 rely on,
//! each checked here so that the end-to-end tests cannot pass against a lenient double.

mod support;

use std::time::Duration;

use buildkit_launcher::provider::cloud_init::UserData;
use buildkit_launcher::provider::keys::BuildKeys;
use buildkit_launcher::provider::{Lease, labels};
use serde_json::{Value, json};
use support::hcloud_sim::{AfterCreate, HcloudSim};

fn request(name: &str, location: &str, ssh_keys: Option<&str>) -> Value {
    let lease = Lease::new(3600);
    let keys = BuildKeys::generate(&lease.id).unwrap();
    let mut body = json!({
        "name": name, "server_type": "cx23", "image": "debian-12", "location": location,
        "labels": labels(&lease, "test/repo", "cx23"),
        "user_data": UserData::for_build(&keys).render(),
    });
    if let Some(key) = ssh_keys {
        body["ssh_keys"] = json!([key]);
    }
    body
}

fn register_key(sim: &HcloudSim) {
    let key = BuildKeys::generate("p").unwrap().client.public_openssh;
    let reply = sim.call(
        "POST",
        "/ssh_keys",
        Some(&json!({"name": "buildkit-launcher", "public_key": key})),
    );
    assert_eq!(reply.status, 201, "{}", reply.json);
    let again = sim.call(
        "POST",
        "/ssh_keys",
        Some(&json!({"name": "buildkit-launcher", "public_key": key})),
    );
    assert_eq!(again.code(), "uniqueness_error");
}

/// Delete every server, waiting out 423 `locked` while a boot action still runs.
fn delete_all(sim: &HcloudSim) {
    for s in sim.servers() {
        for _ in 0..400 {
            if sim
                .call("DELETE", &format!("/servers/{}", s.id), None)
                .status
                != 423
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for _ in 0..200 {
        if sim.servers().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn types_are_sold_and_deprecated_per_location() {
    let sim = HcloudSim::start();
    register_key(&sim);
    sim.stop_selling("cx53", "hel1");
    sim.deprecate_in("cx43", "fsn1", true);
    sim.deprecate_in("cx33", "nbg1", false);
    let types = sim.get("/server_types?name=cx53&name=cx43&name=cx33").json;
    let find = |name: &str| {
        types["server_types"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()
            .clone()
    };
    let locations = |t: &Value| -> Vec<String> {
        t["locations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(locations(&find("cx53")), ["fsn1", "nbg1"]);
    let cx33 = find("cx33");
    assert!(cx33["locations"][1]["deprecation"]["unavailable_after"].is_string());
    assert!(cx33["locations"][0]["deprecation"].is_null());
    for (location, server_type) in [("hel1", "cx53"), ("fsn1", "cx43")] {
        let mut body = request("bkl-x-1-aaaaaaaa", location, Some("buildkit-launcher"));
        body["server_type"] = json!(server_type);
        let reply = sim.call("POST", "/servers", Some(&body));
        assert_eq!(
            (reply.status, reply.code()),
            (400, "invalid_input"),
            "{}",
            reply.json
        );
        assert_eq!(
            reply.json["error"]["message"],
            "unsupported location for server type"
        );
    }
    sim.assert_clean();
}

#[test]
fn unknown_enum_values_are_invalid_input_and_paging_defaults_to_25() {
    let sim = HcloudSim::start();
    for path in [
        "/servers?sort=age:desc",
        "/servers?status=teleporting",
        "/images?type=snapshots",
        "/images?status=ready",
        "/server_types?sort=price",
    ] {
        let reply = sim.get(path);
        assert_eq!(
            (reply.status, reply.code()),
            (400, "invalid_input"),
            "{path}"
        );
    }
    for n in 0..60 {
        sim.add_server(&format!("s{n}"), &[("managed-by", "buildkit-launcher")]);
    }
    let page = sim.get("/servers?sort=id:asc").json;
    assert_eq!(page["servers"].as_array().unwrap().len(), 25);
    assert_eq!(page["meta"]["pagination"]["per_page"], 25);
    let page = sim.get("/servers?sort=id:asc&per_page=500").json;
    assert_eq!(page["servers"].as_array().unwrap().len(), 50);
    // Without sort, the order is not promised and changes between requests.
    let first = sim.get("/servers?per_page=50").json["servers"][0]["id"].clone();
    let second = sim.get("/servers?per_page=50").json["servers"][0]["id"].clone();
    assert_ne!(first, second);
    delete_all(&sim);
    sim.assert_clean();
}

#[test]
fn a_readonly_token_may_only_read() {
    let sim = HcloudSim::start();
    let token = sim.readonly_token();
    assert_eq!(
        sim.call_with_token("GET", "/servers", None, Some(&token))
            .status,
        200
    );
    let reply = sim.call_with_token(
        "POST",
        "/ssh_keys",
        Some(&json!({"name": "x", "public_key": "ssh-ed25519 AAAA"})),
        Some(&token),
    );
    assert_eq!((reply.status, reply.code()), (403, "token_readonly"));
}

#[test]
fn deprecated_images_are_listed_only_when_asked_for() {
    let sim = HcloudSim::start();
    sim.deprecate_image("debian-12");
    let listed = |q: &str| {
        sim.get(&format!("/images?name=debian-12&architecture=x86{q}"))
            .json["images"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(listed(""), 0);
    assert_eq!(listed("&include_deprecated=true"), 1);
    let image = &sim
        .get("/images?name=debian-12&architecture=x86&include_deprecated=true")
        .json["images"][0];
    assert!(image["deprecated"].is_string());
}

#[test]
fn quota_and_unknown_keys_are_refused() {
    let sim = HcloudSim::start();
    let reply = sim.call(
        "POST",
        "/servers",
        Some(&request("bkl-x-1-bbbbbbbb", "fsn1", Some("nope"))),
    );
    assert_eq!(reply.code(), "invalid_input", "{}", reply.json);
    sim.fail_quota(1);
    let reply = sim.call(
        "POST",
        "/servers",
        Some(&request("bkl-x-1-bbbbbbbb", "fsn1", None)),
    );
    assert_eq!(
        (reply.status, reply.code()),
        (403, "resource_limit_exceeded")
    );
    sim.assert_clean();
}

fn needs_runners() -> bool {
    support::registry::require_root_and_tools(&["sshd", "ssh"])
}

#[test]
fn without_ssh_keys_a_root_password_is_set_and_every_session_is_refused_as_pam_does() {
    if !needs_runners() {
        return;
    }
    let sim = HcloudSim::start();
    let reply = sim.call(
        "POST",
        "/servers",
        Some(&request("bkl-x-1-cccccccc", "fsn1", None)),
    );
    assert_eq!(reply.status, 201, "{}", reply.json);
    assert!(reply.json["root_password"].is_string());
    let runner = sim.live_runners().pop().unwrap();
    let config =
        std::fs::read_to_string(sim.runner_base().join(&runner).join("sshd_config")).unwrap();
    assert!(
        config.contains("Password change required but no TTY available"),
        "{config}"
    );
    delete_all(&sim);
    sim.assert_clean();
}

#[test]
fn a_create_can_be_made_and_then_answered_with_an_error_or_a_dropped_connection() {
    if !needs_runners() {
        return;
    }
    let sim = HcloudSim::start();
    register_key(&sim);
    sim.after_create(&[AfterCreate::Fail("timeout"), AfterCreate::Drop]);
    let reply = sim.call(
        "POST",
        "/servers",
        Some(&request(
            "bkl-x-1-dddddddd",
            "fsn1",
            Some("buildkit-launcher"),
        )),
    );
    assert_eq!((reply.status, reply.code()), (504, "timeout"));
    assert_eq!(sim.servers().len(), 1, "made although the answer was 504");
    let again = sim.call(
        "POST",
        "/servers",
        Some(&request(
            "bkl-x-1-dddddddd",
            "fsn1",
            Some("buildkit-launcher"),
        )),
    );
    assert_eq!(again.code(), "uniqueness_error");
    delete_all(&sim);
    sim.assert_clean();
}

#[test]
fn a_server_is_locked_while_any_action_runs_and_its_labels_can_change_meanwhile() {
    if !needs_runners() {
        return;
    }
    let sim = HcloudSim::start();
    register_key(&sim);
    sim.action_time("create_server", Duration::from_secs(3));
    sim.action_time("start_server", Duration::from_secs(3));
    let reply = sim.call(
        "POST",
        "/servers",
        Some(&request(
            "bkl-x-1-eeeeeeee",
            "fsn1",
            Some("buildkit-launcher"),
        )),
    );
    assert_eq!(reply.status, 201, "{}", reply.json);
    let id = reply.json["server"]["id"].as_i64().unwrap();
    // Booting: locked; a delete is refused, the running actions are listed.
    assert_eq!(
        sim.get(&format!("/servers/{id}")).json["server"]["locked"],
        true
    );
    let delete = sim.call("DELETE", &format!("/servers/{id}"), None);
    assert_eq!((delete.status, delete.code()), (423, "locked"));
    let running = sim.get(&format!("/servers/{id}/actions?status=running"));
    let commands: Vec<&str> = running.json["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["command"].as_str().unwrap())
        .collect();
    assert!(commands.contains(&"create_server"), "{commands:?}");
    assert_eq!(
        sim.get(&format!("/servers/{id}/actions?status=stuck"))
            .code(),
        "invalid_input"
    );
    // A label update is not an action: accepted while locked, and it replaces the set.
    let put = sim.call(
        "PUT",
        &format!("/servers/{id}"),
        Some(&json!({"labels": {"managed-by": "buildkit-launcher", "buildkit-launcher/expires": "1"}})),
    );
    assert_eq!(put.status, 200, "{}", put.json);
    assert_eq!(
        put.json["server"]["labels"]["buildkit-launcher/expires"],
        "1"
    );
    assert!(put.json["server"]["labels"]["buildkit-launcher/lease"].is_null());
    let bad = sim.call(
        "PUT",
        &format!("/servers/{id}"),
        Some(&json!({"labels": {"-bad": "x"}})),
    );
    assert_eq!(bad.code(), "invalid_input");
    // Once the boot's actions end, the delete is accepted.
    for _ in 0..200 {
        if !sim.is_locked(id) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!sim.is_locked(id));
    delete_all(&sim);
    sim.assert_clean();
}

#[test]
fn every_answer_carries_the_apis_time_in_its_date_header() {
    let sim = HcloudSim::start();
    sim.set_clock_skew(-3600);
    let reply = sim.get("/server_types");
    let date = httpdate::parse_http_date(reply.header("date").expect("a Date header")).unwrap();
    let behind = std::time::SystemTime::now().duration_since(date).unwrap();
    assert!(
        (3595..3605).contains(&behind.as_secs()),
        "{behind:?} behind"
    );
}
