//! `history list --history registry`: every key a real registry keeps (Debian's
//! `docker-registry`, distribution v2), found through its repository list, each key's builds,
//! and a sample a writer put into another key's repository skipped with a warning.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use buildkit_launcher::history::registry::RegistryStore;
use buildkit_launcher::history::{HistoryStore, Outcome};
use support::Launcher;
use support::history::{key, sample};
use support::registry::{Registry, http_get, require_root_and_tools};

/// `PUT path` with `body` over HTTP/1.0; the status.
fn http_put(addr: &str, path: &str, content_type: &str, body: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    let request = format!(
        "PUT {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn every_key_of_a_registry_with_its_builds() {
    if !require_root_and_tools(&["docker-registry"]) {
        return;
    }
    let registry = Registry::start();
    let store = RegistryStore::new(registry.addr.clone(), true, None, 0);
    let (app, api) = (key("org/app", "Dockerfile"), key("org/api", "Dockerfile"));
    for peak in [1000, 1200, 1400] {
        store.append(&sample(&app, peak, Outcome::Ok)).unwrap();
    }
    store.append(&sample(&api, 3000, Outcome::Oom)).unwrap();
    store.append(&sample(&api, 3100, Outcome::Ok)).unwrap();
    // A writer copies one of org/app's samples into org/api's repository.
    let from = store.repository(&app);
    let to = store.repository(&api);
    let listed: serde_json::Value = serde_json::from_str(&registry.tags(&from).unwrap()).unwrap();
    let tag = listed["tags"][0].as_str().unwrap().to_owned();
    let accept = "application/vnd.oci.image.manifest.v1+json".to_owned();
    let (status, _, manifest) = http_get(
        &registry.addr,
        &format!("/v2/{from}/manifests/{tag}"),
        &[("Accept", accept.clone())],
    )
    .unwrap();
    assert_eq!(status, 200, "{manifest}");
    let forged = "s99999999999999-0000beef";
    assert_eq!(
        http_put(
            &registry.addr,
            &format!("/v2/{to}/manifests/{forged}"),
            &accept,
            &manifest
        ),
        201
    );

    let list = |extra: &[&str]| {
        Launcher::new()
            .args([
                "history",
                "list",
                "--history",
                "registry",
                "--insecure-registry",
            ])
            .args(extra)
            .run()
    };
    let out = list(&["--registry", &registry.addr, "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let row = |repo: &str| {
        rows.iter()
            .find(|r| r["key"].as_str().unwrap().starts_with(repo))
            .unwrap_or_else(|| panic!("{repo}: {rows:?}"))
    };
    assert_eq!(row("org/app ")["builds"], 3);
    assert_eq!(
        row("org/app ")["peak_mib"],
        serde_json::json!([1000, 1200, 1400])
    );
    assert_eq!(row("org/api ")["builds"], 2);
    assert_eq!(row("org/api ")["failed_or_oom"], 1);
    assert!(
        out.stderr.contains(&format!(
            "{to}:{forged}: skipped, its key belongs in another repository"
        )),
        "{}",
        out.stderr
    );
    // The table names the store.
    let out = list(&["--registry", &registry.addr]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with(&format!(
            "2 key(s) in registry:{}/cache/buildkit-launcher/history",
            registry.addr
        )),
        "{}",
        out.stdout
    );
    // Without the registry: exit 2, one line saying what to set.
    let out = list(&[]);
    let line = out.assert_one_line_error(2);
    assert!(line.contains("set --registry"), "{line}");
}
