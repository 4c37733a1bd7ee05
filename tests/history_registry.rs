//! `--history registry`: samples as OCI artifacts in a real registry (Debian's
//! `docker-registry`, distribution v2): read back in order, parallel writers, auth, retention,
//! and calls from inside a tokio runtime.

mod support;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use buildkit_launcher::config::Config;
use buildkit_launcher::history::registry::RegistryStore;
use buildkit_launcher::history::{HistoryKey, HistoryStore, Outcome};
use buildkit_launcher::registry::Credentials;
use buildkit_launcher::sizing::{self, Language, SizingInput, Source};
use support::history::{key, sample};
use support::registry::{Registry, http_get, require_root_and_tools};

fn peaks(store: &dyn HistoryStore, key: &HistoryKey, window: usize) -> Vec<u64> {
    let recent = store.recent(key, window).unwrap();
    assert!(recent.warnings.is_empty(), "{:?}", recent.warnings);
    recent.samples.iter().map(|s| s.peak_memory_mib).collect()
}

fn store(registry: &Registry, retention: usize) -> RegistryStore {
    RegistryStore::new(registry.addr.clone(), true, None, retention)
}

/// The sample tags a repository holds, straight from the registry.
fn tags(registry: &Registry, repository: &str) -> Vec<String> {
    let Some(body) = registry.tags(repository) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut tags: Vec<String> = v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    tags.sort();
    tags
}

#[test]
fn a_second_store_reads_back_the_last_window_of_successful_samples_of_the_key() {
    if !require_root_and_tools(&["docker-registry"]) {
        return;
    }
    let registry = Registry::start();
    let writer = store(&registry, 0);
    let app = key("Acme/App", "Dockerfile");
    let other_dockerfile = key("Acme/App", "docker/ci.Dockerfile");
    let other_repo = key("acme/other", "Dockerfile");
    let mut append_times = Vec::new();
    for i in 0..40 {
        let started = Instant::now();
        writer.append(&sample(&app, 1000 + i, Outcome::Ok)).unwrap();
        append_times.push(started.elapsed());
        if i % 5 == 0 {
            writer
                .append(&sample(&app, 99_000 + i, Outcome::Oom))
                .unwrap();
            writer
                .append(&sample(&app, 98_000 + i, Outcome::Failed))
                .unwrap();
        }
        if i % 10 == 0 {
            writer
                .append(&sample(&other_dockerfile, 7000 + i, Outcome::Ok))
                .unwrap();
            writer
                .append(&sample(&other_repo, 8000 + i, Outcome::Ok))
                .unwrap();
        }
    }

    // A second build: its own store, same registry.
    let reader = store(&registry, 0);
    let started = Instant::now();
    let got = peaks(&reader, &app, 30);
    let first_recent = started.elapsed();
    assert_eq!(got, (1010..1040).collect::<Vec<_>>());
    let started = Instant::now();
    assert_eq!(peaks(&reader, &app, 30), got);
    let second_recent = started.elapsed();
    assert_eq!(peaks(&reader, &app, 3), [1037, 1038, 1039]);
    assert_eq!(peaks(&reader, &app, 1000).len(), 40);
    assert_eq!(
        peaks(&reader, &other_dockerfile, 30),
        [7000, 7010, 7020, 7030]
    );
    assert_eq!(peaks(&reader, &other_repo, 30), [8000, 8010, 8020, 8030]);
    assert!(peaks(&reader, &app, 0).is_empty());

    // Each key in its own repository, every sample its own tag.
    let repository = reader.repository(&app);
    assert!(
        repository.starts_with("cache/buildkit-launcher/history/acme/app/"),
        "{repository}"
    );
    assert_ne!(repository, reader.repository(&other_dockerfile));
    assert_eq!(tags(&registry, &repository).len(), 40 + 2 * 8);
    assert_eq!(
        reader.describe(),
        format!("registry:{}/cache/buildkit-launcher/history", registry.addr)
    );

    append_times.sort();
    eprintln!(
        "timing: append (no pruning) median {:?}, max {:?}; recent(30) of {} samples: \
         first {first_recent:?}, again {second_recent:?}",
        append_times[append_times.len() / 2],
        append_times.last().unwrap(),
        40 + 2 * 8,
    );
}

#[test]
fn a_second_build_is_sized_from_the_history_the_first_left() {
    if !require_root_and_tools(&["docker-registry"]) {
        return;
    }
    let registry = Registry::start();
    let config = Config::defaults();
    let app = key("acme/app", "Dockerfile");
    let size = |store: &RegistryStore| {
        let history = store.recent(&app, config.sizing.window).unwrap().samples;
        let sizing = sizing::decide(&SizingInput {
            config: &config,
            arch_flag: None,
            spec: None,
            language: Language::Generic,
            language_marker: None,
            key: &app,
            history: &history,
            history_unreadable: false,
        })
        .unwrap();
        (sizing.source, sizing.tier.memory_mib, sizing.samples)
    };
    let (source, first_memory, _) = size(&store(&registry, 100));
    assert_eq!(source, Source::Default);
    // Earlier builds, from other stores, peaked at 12 GiB.
    let writer = store(&registry, 100);
    for i in 0..10 {
        writer
            .append(&sample(&app, 12_000 + i, Outcome::Ok))
            .unwrap();
    }
    let (source, second_memory, samples) = size(&store(&registry, 100));
    assert_eq!((source, samples), (Source::History, 10));
    assert!(
        second_memory > 12_000 && second_memory > first_memory,
        "{first_memory} MiB, then {second_memory} MiB"
    );
}

#[test]
fn twenty_parallel_writers_lose_no_sample() {
    if !require_root_and_tools(&["docker-registry"]) {
        return;
    }
    let registry = Registry::start();
    let app = key("acme/app", "Dockerfile");
    std::thread::scope(|scope| {
        for w in 0..20u64 {
            let (registry, app) = (&registry, &app);
            scope.spawn(move || {
                // Each writer its own store, as separate builds would have.
                let writer = store(registry, 1000);
                for i in 0..5 {
                    writer
                        .append(&sample(app, w * 100 + i, Outcome::Ok))
                        .unwrap();
                }
            });
        }
    });
    let got = peaks(&store(&registry, 1000), &app, 200);
    assert_eq!(got.len(), 100, "{got:?}");
    let expected: BTreeSet<u64> = (0..20)
        .flat_map(|w| (0..5).map(move |i| w * 100 + i))
        .collect();
    assert_eq!(got.iter().copied().collect::<BTreeSet<_>>(), expected);
    // Oldest first: each writer's samples in the order it appended them.
    for w in 0..20 {
        let mine: Vec<u64> = got.iter().copied().filter(|p| p / 100 == w).collect();
        assert_eq!(mine, (0..5).map(|i| w * 100 + i).collect::<Vec<_>>());
    }
}

#[test]
fn parallel_writers_prune_down_to_the_retention() {
    if !require_root_and_tools(&["docker-registry"]) {
        return;
    }
    let registry = Registry::start();
    let app = key("acme/app", "Dockerfile");
    std::thread::scope(|scope| {
        for w in 0..10u64 {
            let (registry, app) = (&registry, &app);
            scope.spawn(move || {
                let writer = store(registry, 12);
                for i in 0..5 {
                    writer
                        .append(&sample(app, w * 100 + i, Outcome::Ok))
                        .unwrap();
                }
            });
        }
    });
    // The last prune to list the tags saw every push before it (each writer lists after its
    // own push), so the newest 12 remain -- give or take a delete that lost a race inside
    // distribution (its deletes are not atomic), which the next prune retries.
    let reader = store(&registry, 12);
    let repository = reader.repository(&app);
    let held = tags(&registry, &repository);
    assert!((12..=15).contains(&held.len()), "{held:?}");
    let readable = peaks(&reader, &app, 30).len();
    assert!(
        (12..=held.len()).contains(&readable),
        "{readable} of {held:?}"
    );
    reader.append(&sample(&app, 5000, Outcome::Ok)).unwrap();
    let held = tags(&registry, &repository);
    assert_eq!(
        held.len(),
        12,
        "{held:?} {:?}",
        reader.recent(&app, 0).unwrap().warnings
    );
    let got = peaks(&reader, &app, 30);
    assert_eq!((got.len(), got.last()), (12, Some(&5000)));
}

#[test]
fn retention_keeps_the_newest_samples() {
    if !require_root_and_tools(&["docker-registry"]) {
        return;
    }
    let registry = Registry::start();
    let app = key("acme/app", "Dockerfile");
    let writer = store(&registry, 10);
    let mut pruning_appends = Vec::new();
    for i in 0..25 {
        let started = Instant::now();
        writer.append(&sample(&app, i, Outcome::Ok)).unwrap();
        if i >= 10 {
            pruning_appends.push(started.elapsed());
        }
    }
    pruning_appends.sort();
    eprintln!(
        "timing: append deleting one old sample: median {:?}, max {:?}",
        pruning_appends[pruning_appends.len() / 2],
        pruning_appends.last().unwrap()
    );
    assert_eq!(tags(&registry, &writer.repository(&app)).len(), 10);
    assert_eq!(peaks(&writer, &app, 100), (15..25).collect::<Vec<_>>());
}

#[test]
fn registry_auth_works_and_a_wrong_password_is_a_clear_error_without_it() {
    if !require_root_and_tools(&["docker-registry", "htpasswd"]) {
        return;
    }
    let password = "correct-Horse-7391";
    let registry = Registry::start_with_auth("ci", password);
    let app = key("acme/app", "Dockerfile");
    let with = |password: &str| {
        RegistryStore::new(
            registry.addr.clone(),
            true,
            Some(Credentials {
                username: "ci".into(),
                password: zeroize::Zeroizing::new(password.into()),
            }),
            5,
        )
    };
    let good = with(password);
    for i in 0..7 {
        good.append(&sample(&app, i, Outcome::Ok)).unwrap();
    }
    // Pruning (tag list, manifest GET, DELETE) authenticates too.
    assert_eq!(peaks(&good, &app, 30), [2, 3, 4, 5, 6]);
    let held = registry.tags(&good.repository(&app)).unwrap();
    assert_eq!(held.matches("\"s").count(), 5, "{held}");
    assert!(!good.describe().contains(password));

    let wrong_password = "wrong-Horse-1111";
    let bad = with(wrong_password);
    let errors = [
        bad.append(&sample(&app, 1, Outcome::Ok)).unwrap_err(),
        bad.recent(&app, 30).unwrap_err(),
    ];
    for error in errors {
        let message = error.to_string();
        eprintln!("wrong password: {message}");
        assert!(!message.contains('\n'), "{message}");
        assert!(!message.contains(wrong_password) && !message.contains(password));
        assert!(message.contains(&registry.addr), "{message}");
        assert!(message.contains(&good.repository(&app)), "{message}");
        assert!(
            message.contains("refused the credentials of user \"ci\""),
            "{message}"
        );
    }
    let anonymous = RegistryStore::new(registry.addr.clone(), true, None, 5);
    let message = anonymous.recent(&app, 30).unwrap_err().to_string();
    assert!(message.contains("wants credentials"), "{message}");
}

#[test]
fn a_key_never_appended_is_an_empty_history() {
    if !require_root_and_tools(&["docker-registry"]) {
        return;
    }
    let registry = Registry::start();
    let recent = store(&registry, 10)
        .recent(&key("nobody/never", "Dockerfile"), 30)
        .unwrap();
    assert!(recent.samples.is_empty());
    assert!(recent.warnings.is_empty(), "{:?}", recent.warnings);
}

#[test]
fn an_unreadable_sample_is_skipped_with_a_warning_naming_it() {
    if !require_root_and_tools(&["docker-registry"]) {
        return;
    }
    let registry = Registry::start();
    let app = key("acme/app", "Dockerfile");
    let store = store(&registry, 0);
    for i in 0..3 {
        store.append(&sample(&app, i, Outcome::Ok)).unwrap();
    }
    // A manifest under a sample tag (newest of all) whose annotation is not a sample.
    let repository = store.repository(&app);
    let tag = "s99999999999999-00000000";
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "size": 2,
        },
        "layers": [],
        "annotations": { "dev.buildkit-launcher.sample": "{\"ts\": oops" },
    }))
    .unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let reference =
            oci_client::Reference::with_tag(registry.addr.clone(), repository.clone(), tag.into());
        client
            .auth(
                &reference,
                &oci_client::secrets::RegistryAuth::Anonymous,
                oci_client::RegistryOperation::Push,
            )
            .await
            .unwrap();
        client
            .push_manifest_raw(
                &reference,
                body,
                "application/vnd.oci.image.manifest.v1+json"
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap();
    });
    let recent = store.recent(&app, 30).unwrap();
    let got: Vec<u64> = recent.samples.iter().map(|s| s.peak_memory_mib).collect();
    assert_eq!(got, [0, 1, 2]);
    assert_eq!(recent.warnings.len(), 1, "{:?}", recent.warnings);
    let warning = &recent.warnings[0];
    assert!(
        warning.contains(&format!("{}/{repository}:{tag}: skipped", registry.addr)),
        "{warning}"
    );
}

#[test]
fn an_unreachable_registry_is_a_one_line_error() {
    // Nothing listens on port 1.
    let store = RegistryStore::new("127.0.0.1:1".into(), true, None, 10);
    let app = key("acme/app", "Dockerfile");
    for error in [
        store.recent(&app, 30).unwrap_err(),
        store.append(&sample(&app, 1, Outcome::Ok)).unwrap_err(),
    ] {
        let message = error.to_string();
        assert!(!message.contains('\n'), "{message}");
        assert!(
            message.contains("registry:127.0.0.1:1/cache/buildkit-launcher/history/acme/app/"),
            "{message}"
        );
        assert!(message.to_lowercase().contains("connect"), "{message}");
    }
}

#[tokio::test]
async fn works_from_inside_a_current_thread_runtime() {
    if !require_root_and_tools(&["docker-registry"]) {
        return;
    }
    let registry = Registry::start();
    let app = key("acme/app", "Dockerfile");
    let store = store(&registry, 10);
    for i in 0..3 {
        store.append(&sample(&app, i, Outcome::Ok)).unwrap();
    }
    assert_eq!(peaks(&store, &app, 30), [0, 1, 2]);
    // The runtime is still usable afterwards.
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_from_inside_a_multi_thread_runtime() {
    if !require_root_and_tools(&["docker-registry"]) {
        return;
    }
    let registry = Registry::start();
    let app = key("acme/app", "Dockerfile");
    let store = std::sync::Arc::new(store(&registry, 10));
    let task = {
        let (store, app) = (store.clone(), app.clone());
        tokio::spawn(async move { store.append(&sample(&app, 7, Outcome::Ok)) })
    };
    task.await.unwrap().unwrap();
    assert_eq!(peaks(&*store, &app, 30), [7]);
}

/// A registry with `storage.delete.enabled: false`: the fixture always enables deletes.
struct NoDeleteRegistry {
    addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl NoDeleteRegistry {
    fn start() -> NoDeleteRegistry {
        let dir = tempfile::Builder::new()
            .prefix("test-registry-nodelete-")
            .tempdir()
            .unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\n  delete:\n    enabled: false\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let registry = NoDeleteRegistry {
            addr,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(http_get(&registry.addr, "/v2/", &[]), Ok((200, _, _))) {
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

impl Drop for NoDeleteRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_registry_refusing_deletes_costs_a_warning_not_a_build() {
    if !require_root_and_tools(&["docker-registry"]) {
        return;
    }
    let registry = NoDeleteRegistry::start();
    let app = key("acme/app", "Dockerfile");
    let store = RegistryStore::new(registry.addr.clone(), true, None, 3);
    for i in 0..8 {
        store.append(&sample(&app, i, Outcome::Ok)).unwrap();
    }
    let recent = store.recent(&app, 30).unwrap();
    assert_eq!(recent.samples.len(), 8);
    // One line per failed prune, from this store's appends; none of them fail the append.
    assert_eq!(recent.warnings.len(), 5, "{:?}", recent.warnings);
    for w in &recent.warnings {
        assert!(!w.contains('\n'), "{w}");
        assert!(w.contains("storage.delete.enabled"), "{w}");
        assert!(w.contains(&registry.addr), "{w}");
    }
    // Reported once: the next read of this store is quiet again.
    assert!(store.recent(&app, 30).unwrap().warnings.is_empty());
    // Any reader notices a repository far over its retention.
    let reader = RegistryStore::new(registry.addr.clone(), true, None, 2);
    for i in 8..25 {
        store.append(&sample(&app, i, Outcome::Ok)).unwrap();
    }
    let warnings = reader.recent(&app, 30).unwrap().warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("holds 25 samples"), "{}", warnings[0]);
}

/// Puts `body` (an OCI image manifest) under `tag` in `repository`, as anyone with push access
/// to the registry could.
fn push_raw(registry: &Registry, repository: &str, tag: &str, body: Vec<u8>) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let reference = oci_client::Reference::with_tag(
            registry.addr.clone(),
            repository.to_owned(),
            tag.into(),
        );
        client
            .auth(
                &reference,
                &oci_client::secrets::RegistryAuth::Anonymous,
                oci_client::RegistryOperation::Push,
            )
            .await
            .unwrap();
        client
            .push_manifest_raw(
                &reference,
                body,
                "application/vnd.oci.image.manifest.v1+json"
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap();
    });
}

/// A manifest like a sample's, with `annotations`.
fn manifest_with(annotations: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "size": 2,
        },
        "layers": [],
        "annotations": annotations,
    }))
    .unwrap()
}

/// The attack of issue 16: a pull request pushed sample-shaped tags, dated newer than every
/// real sample, into the history repository, and the next main build's prune kept those and
/// deleted every real sample. Now only valid samples of the key count towards the retention:
/// the fakes (garbage, another key's sample, a sample under a tag not its own, one dated
/// years ahead) are deleted, the real samples stay.
#[test]
fn prune_deletes_sample_shaped_tags_that_are_not_samples_instead_of_counting_them() {
    if !require_root_and_tools(&["docker-registry"]) {
        return;
    }
    let registry = Registry::start();
    let app = key("acme/app", "Dockerfile");
    let writer = store(&registry, 5);
    for i in 0..5 {
        writer.append(&sample(&app, i, Outcome::Ok)).unwrap();
    }
    let repository = writer.repository(&app);
    let real = tags(&registry, &repository);
    assert_eq!(real.len(), 5);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let other =
        serde_json::to_string(&sample(&key("evil/app", "Dockerfile"), 1, Outcome::Ok)).unwrap();
    let valid = serde_json::to_string(&sample(&app, 1, Outcome::Ok)).unwrap();
    let mut fakes = Vec::new();
    for i in 0..8u64 {
        // A minute ahead: newer than every real sample, but a plausible clock.
        let tag = format!("s{:014}-{:08x}", now + 60_000 + i, 0xdead_0000u64 + i);
        let annotations = match i % 3 {
            0 => serde_json::json!({ "dev.buildkit-launcher.sample": "{\"ts\": oops" }),
            1 => serde_json::json!({
                "dev.buildkit-launcher.sample": other,
                "dev.buildkit-launcher.tag": tag,
            }),
            _ => serde_json::json!({
                "dev.buildkit-launcher.sample": valid,
                "dev.buildkit-launcher.tag": "s00000000000001-00000000",
            }),
        };
        push_raw(&registry, &repository, &tag, manifest_with(annotations));
        fakes.push(tag);
    }
    // A well-formed sample of the key, but dated a hundred years ahead.
    let future = "s99999999999999-0000beef";
    push_raw(
        &registry,
        &repository,
        future,
        manifest_with(serde_json::json!({
            "dev.buildkit-launcher.sample": valid,
            "dev.buildkit-launcher.tag": future,
        })),
    );
    fakes.push(future.to_owned());

    // The next main build appends one sample; its prune runs.
    writer.append(&sample(&app, 5, Outcome::Ok)).unwrap();
    let left = tags(&registry, &repository);
    for fake in &fakes {
        assert!(!left.contains(fake), "{fake} was not pruned: {left:?}");
    }
    assert_eq!(left.len(), 5, "{left:?}");
    // The oldest real sample went for the new one; the other four stayed.
    assert!(!left.contains(&real[0]), "{left:?}");
    for tag in &real[1..] {
        assert!(left.contains(tag), "{tag} was pruned: {left:?}");
    }
    assert_eq!(peaks(&writer, &app, 30), [1, 2, 3, 4, 5]);
}
