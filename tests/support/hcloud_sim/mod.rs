//! An in-process simulator of the Hetzner Cloud API for end-to-end tests: a test double of
//! Hetzner's API (never the real endpoint), speaking its JSON through the `hcloud` crate's own
//! models. A created server is realized as a sandbox runner (`LocalProvider`: its own sshd on
//! `127.0.0.N:22`, keys from the request's cloud-init user data, a memory cgroup sized from the
//! server type ÷ 16), so the launcher can SSH to `public_net.ipv4.ip` as it would on Hetzner.
//!
//! This file owns the public face: starting it (its own tokio runtime on a background thread,
//! axum on `127.0.0.1:0`, so sync tests can use it), scripted faults, inspection, and cleanup on
//! drop (every sandbox runner it realized is torn down). `state.rs` holds the records and the
//! API's rules, `labels.rs` label syntax and selectors, `api.rs` the HTTP side (gate,
//! catalogue, images, actions), `servers.rs` the servers and their runners, `catalog.rs`
//! server types, prices and locations (sold and deprecated per location), `keys.rs` SSH keys,
//! `faults.rs` the scripted faults and the request budget, `render.rs` images, actions and time
//! as the API writes them, `strict.rs` the closed enums,
//! unspecified order and paging rules, `client.rs` a tiny raw-HTTP client for tests.
//!
//! As strict as the real API where the launcher's correctness depends on it; each file says
//! where its behaviour comes from (hcloud-go, hcloud-python, the API reference). A server
//! created without `ssh_keys` gets a root password and a sandbox whose sshd refuses every
//! session the way Debian's PAM does for an expired password. Every realized server is a
//! machine of its own: own sshd, address, memory cgroup, work directory, home and buildah
//! storage (`LocalProvider`), so no test passes thanks to another server's cache.
//!
//! ```ignore
//! let sim = HcloudSim::start();
//! // run the launcher with HCLOUD_ENDPOINT=sim.endpoint, HCLOUD_TOKEN=sim.token
//! sim.fail_location("fsn1", "resource_unavailable");
//! assert_eq!(sim.calls()["POST /servers"], 2);
//! ```

mod api;
mod catalog;
mod client;
pub mod cloud;
mod faults;
mod keys;
mod labels;
mod render;
mod servers;
mod state;
mod strict;

pub use faults::AfterCreate;

#[allow(unused_imports)] // not every test binary uses the client
pub use client::{Reply, encode};

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use buildkit_launcher::provider::local::LocalProvider;
use hcloud::models::Architecture;
use hcloud::models::{image, server};

use state::{ImageRec, ServerRec, State};
pub use state::{SimImage, SimServer};

pub struct HcloudSim {
    /// `http://127.0.0.1:PORT/v1`: what `HCLOUD_ENDPOINT` gets.
    pub endpoint: String,
    /// The only token it accepts (`Authorization: Bearer <token>`); fake and random.
    pub token: String,
    shared: api::Shared,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Where the sandbox runners live; removed on drop.
    base: tempfile::TempDir,
}

impl HcloudSim {
    /// [`HcloudSim::start`] with the one amd64 golden snapshot (created 2026-11-20) most
    /// suites build from.
    #[allow(dead_code)]
    pub fn with_golden_amd64() -> HcloudSim {
        let sim = HcloudSim::start();
        sim.add_snapshot("amd64", cloud::GOLDEN, "2026-11-20T00:00:00+00:00");
        sim
    }

    pub fn start() -> HcloudSim {
        let base = tempfile::Builder::new()
            .prefix("bkl-hcloud-sim-")
            .tempdir_in("/var/tmp")
            .expect("a directory for the simulator's sandbox runners");
        let token = format!(
            "sim-{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let shared = api::Shared {
            state: Arc::new(Mutex::new(State::new(token.clone()))),
            provider: Arc::new(LocalProvider::new(base.path().to_owned(), 16, Vec::new())),
            base: base.path().to_owned(),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("local address").port();
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let app = api::router(shared.clone());
        let thread = std::thread::Builder::new()
            .name("hcloud-sim".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("the simulator's runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        served = axum::serve(listener, app) => {
                            if let Err(e) = served {
                                eprintln!("hcloud simulator: server stopped: {e}");
                            }
                        }
                        _ = stop => {}
                    }
                });
                // Pending actions are dropped; teardowns already running get time to finish.
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .expect("start the simulator's thread");
        HcloudSim {
            endpoint: format!("http://127.0.0.1:{port}/v1"),
            token,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
            base,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state()
    }

    // ---- scripted faults and state ----------------------------------------------------------

    /// The rate limit: `limit` per bucket, `remaining` in it now (refills at 1/s by default).
    pub fn set_budget(&self, limit: u32, remaining: u32) {
        let mut st = self.state();
        st.bucket.limit = limit;
        st.bucket.tokens = f64::from(remaining.min(limit));
        st.bucket.last = Instant::now();
    }

    pub fn set_refill_per_second(&self, per_second: f64) {
        let mut st = self.state();
        st.bucket.refill();
        st.bucket.refill = per_second.max(0.0);
    }

    /// A token of the same project that may only read (`token_readonly` on anything else).
    pub fn readonly_token(&self) -> String {
        self.state().readonly_token.clone()
    }

    /// The next creates are made and then answered as scripted, one entry per create.
    /// The next `create_image` requests make their snapshot and then answer with these error
    /// codes (`unavailable`, `timeout`, …), one per request.
    pub fn after_create_image(&self, codes: &[&'static str]) {
        self.state().faults.after_create_image = codes.to_vec();
    }

    pub fn after_create(&self, script: &[AfterCreate]) {
        self.state().faults.after_create = script.to_vec();
    }

    /// The next `n` name lookups (`GET /servers?name=…`) list nothing, as a listing that lags
    /// a create a moment old.
    pub fn lag_name_lookups(&self, n: u32) {
        self.state().faults.lagging_lookups = n;
    }

    /// The next `n` creates are refused with 403 `resource_limit_exceeded` (the project's
    /// server quota).
    pub fn fail_quota(&self, n: u32) {
        self.state().faults.quota = n;
    }

    /// `server_type` is not sold in `location` (not listed there; a create there is 400
    /// `invalid_input` "unsupported location for server type").
    pub fn stop_selling(&self, server_type: &str, location: &str) {
        self.state()
            .sales
            .not_sold
            .insert((server_type.into(), location.into()));
    }

    /// `server_type` is out of stock in every location: listed and sold, but a create answers
    /// 412 `resource_unavailable` (catalog.rs `Sales::sold_out`).
    pub fn sell_out(&self, server_type: &str) {
        assert!(catalog::server_type(server_type).is_some(), "{server_type}");
        let mut st = self.state();
        for l in catalog::LOCATIONS {
            st.sales.sold_out.insert((server_type.into(), l.1.into()));
        }
    }

    /// Make `locations[].available` of `server_type` say `available` in every location,
    /// whatever the stock (the hint can be wrong both ways: catalog.rs `Sales::available`).
    pub fn hint_available(&self, server_type: &str, available: bool) {
        let mut st = self.state();
        for l in catalog::LOCATIONS {
            st.sales
                .available
                .insert((server_type.into(), l.1.into()), available);
        }
    }

    /// `server_type` is deprecated in `location` only: announced a month ago, unavailable
    /// after now (`over`) or in a month.
    pub fn deprecate_in(&self, server_type: &str, location: &str, over: bool) {
        let now = SystemTime::now();
        let month = Duration::from_secs(30 * 86_400);
        let until = if over { now } else { now + month };
        self.state().sales.per_location.insert(
            (server_type.into(), location.into()),
            (state::rfc3339(now - month), state::rfc3339(until)),
        );
    }

    /// Deprecate the system image `name` (both architectures): it is listed only with
    /// `include_deprecated=true`.
    pub fn deprecate_image(&self, name: &str) {
        let mut st = self.state();
        let ids: Vec<i64> = st
            .images
            .values()
            .filter(|i| i.name.as_deref() == Some(name))
            .map(|i| i.id)
            .collect();
        for id in ids {
            st.image_deprecations
                .insert(id, "2026-10-01T00:00:00+00:00".into());
        }
    }

    /// Register an SSH key (a throwaway public key) called `name`.
    pub fn add_ssh_key(&self, name: &str) {
        let key = buildkit_launcher::provider::keys::KeyPair::generate(name)
            .expect("an SSH key")
            .public_openssh;
        let reply = self.call(
            "POST",
            "/ssh_keys",
            Some(&serde_json::json!({"name": name, "public_key": key})),
        );
        assert_eq!(reply.status, 201, "add_ssh_key: {}", reply.json);
    }

    /// Forget every SSH key of the project.
    pub fn remove_ssh_keys(&self) {
        self.state().ssh_keys.clear();
    }

    /// The project's SSH keys: (name, labels).
    pub fn ssh_keys(&self) -> Vec<(String, BTreeMap<String, String>)> {
        self.state()
            .ssh_keys
            .values()
            .map(|k| (k.name.clone(), k.labels.clone()))
            .collect()
    }

    /// The next `n` authenticated requests get 429 `rate_limit_exceeded`, whatever the budget.
    pub fn fail_next_requests_with_429(&self, n: u32) {
        self.state().faults.burst_429 = n;
    }

    /// `POST /servers` in `location` fails with `code` (e.g. `resource_unavailable` → 412,
    /// `placement_error` → 412, `resource_limit_exceeded` → 403) until cleared with `""`.
    pub fn fail_location(&self, location: &str, code: &str) {
        let mut st = self.state();
        if code.is_empty() {
            st.faults.locations.remove(location);
        } else {
            st.faults.locations.insert(location.into(), code.into());
        }
    }

    /// The next `n` `DELETE /servers/{id}` get 503 `unavailable` (the server stays).
    pub fn fail_deletes(&self, n: u32) {
        self.state().faults.fail_deletes = n;
    }

    /// The next `n` delete actions end in `error` (the server stays, unlocked).
    pub fn fail_delete_actions(&self, n: u32) {
        self.state().faults.fail_delete_actions = n;
    }

    /// The next `n` authenticated requests of any kind get 503 `unavailable`.
    pub fn fail_next_5xx(&self, n: u32) {
        self.state().faults.fail_5xx = n;
    }

    /// Actions started from now on stay `running` this long (default 100 ms).
    pub fn action_delay(&self, delay: Duration) {
        self.state().action_delay = delay;
    }

    /// Actions of `command` (`create_server`, `start_server`, `create_image`, `delete_server`…)
    /// started from now on run this long: a boot from a large snapshot takes tens of seconds
    /// to minutes, a snapshot several minutes (FACTS.md). The server is locked meanwhile.
    pub fn action_time(&self, command: &str, time: Duration) {
        self.state().command_times.insert(command.into(), time);
    }

    /// The API's clock runs `seconds` ahead of this machine's (negative: behind).
    pub fn set_clock_skew(&self, seconds: i64) {
        self.state().clock_skew = seconds;
    }

    /// Whether server `id` is locked now (an action runs on it).
    pub fn is_locked(&self, id: i64) -> bool {
        self.state().is_locked(id)
    }

    /// The next `n` create actions end in `error`: the server stays, `off`, its runner gone.
    pub fn fail_create_actions(&self, n: u32) {
        self.state().faults.fail_create_actions = n;
    }

    /// A snapshot (`arch`: `amd64`/`x86` or `arm64`/`arm`) with these labels, created at
    /// `created` (RFC 3339), taken on the smallest tier (40 GB disk). Returns its id.
    pub fn add_snapshot(&self, arch: &str, labels: &[(&str, &str)], created: &str) -> i64 {
        assert!(
            state::parse_time(created).is_some(),
            "add_snapshot: '{created}' is not RFC 3339"
        );
        let arch = match arch {
            "amd64" | "x86" => Architecture::X86,
            "arm64" | "arm" => Architecture::Arm,
            other => panic!("add_snapshot: unknown architecture '{other}'"),
        };
        let mut st = self.state();
        let id = st.alloc_id();
        let record = ImageRec {
            id,
            kind: image::Type::Snapshot,
            name: None,
            arch,
            labels: pairs(labels),
            description: format!("snapshot {id}"),
            created: created.into(),
            disk_size: 40.0,
            created_from: Some((id - 1, "bkl-golden-bake".into())),
            status: image::Status::Available,
            os_version: None,
            protected: false,
        };
        st.images.insert(id, record);
        id
    }

    /// Mark an image `creating` (a snapshot still being taken) or `available`.
    pub fn set_image_creating(&self, id: i64, creating: bool) {
        let mut st = self.state();
        let image = st
            .images
            .get_mut(&id)
            .expect("set_image_creating: no such image");
        image.status = if creating {
            image::Status::Creating
        } else {
            image::Status::Available
        };
    }

    /// Set an image's `disk_size` (GB): a snapshot taken from a larger server's disk boots
    /// only types with at least that disk (state.rs `plan_create`).
    pub fn set_image_disk(&self, id: i64, gb: f64) {
        let mut st = self.state();
        st.images
            .get_mut(&id)
            .expect("set_image_disk: no such image")
            .disk_size = gb;
    }

    /// Set an image's `protection.delete` (a delete is then refused with 423 `protected`).
    pub fn protect_image(&self, id: i64, protected: bool) {
        let mut st = self.state();
        let image = st
            .images
            .get_mut(&id)
            .expect("protect_image: no such image");
        image.protected = protected;
    }

    /// Images of any type (system images included), by id.
    pub fn images(&self) -> BTreeMap<i64, SimImage> {
        let st = self.state();
        st.images
            .values()
            .map(|i| {
                let image = SimImage {
                    kind: state::enum_text(&i.kind),
                    labels: i.labels.clone(),
                    description: i.description.clone(),
                    status: state::enum_text(&i.status),
                    created_from: i.created_from.as_ref().map(|(_, name)| name.clone()),
                };
                (i.id, image)
            })
            .collect()
    }

    /// A running cx23 in fsn1 that is not realized as a runner (for reaper tests).
    pub fn add_server(&self, name: &str, labels: &[(&str, &str)]) -> i64 {
        let mut st = self.state();
        let id = st.alloc_id();
        let record = ServerRec {
            id,
            name: name.into(),
            labels: pairs(labels),
            server_type: catalog::server_type("cx23").expect("in the catalogue"),
            location: "fsn1".into(),
            status: server::Status::Running,
            created: state::now_rfc3339(),
            image: Some(114690387),
            ipv4: Some(format!("203.0.113.{}", id % 250 + 1)),
            ipv6: None,
            runner: None,
            locked: false,
        };
        st.servers.insert(id, record);
        id
    }

    /// Set one label of a server, as an operator (or time passing, for a lease) would.
    pub fn set_label(&self, id: i64, key: &str, value: &str) {
        let mut st = self.state();
        let server = st.servers.get_mut(&id).expect("set_label: no such server");
        server.labels.insert(key.into(), value.into());
    }

    /// Make a server `seconds_ago` old by the API's clock (its `created`).
    pub fn set_age(&self, id: i64, seconds_ago: u64) {
        let mut st = self.state();
        let created = state::rfc3339(st.api_time() - Duration::from_secs(seconds_ago));
        st.servers
            .get_mut(&id)
            .expect("set_age: no such server")
            .created = created;
    }

    /// Deprecates a server type as of now: `deprecation` is set (announced a month ago,
    /// unavailable after now) and creating a server of that type fails with `invalid_input`
    /// "unsupported location for server type".
    pub fn deprecate_server_type(&self, name: &str) {
        assert!(
            catalog::server_type(name).is_some(),
            "unknown server type {name}"
        );
        let now = SystemTime::now();
        let announced = now - Duration::from_secs(30 * 86_400);
        self.state().sales.deprecations.insert(
            name.into(),
            (state::rfc3339(announced), state::rfc3339(now)),
        );
    }

    // ---- inspection -------------------------------------------------------------------------

    pub fn servers(&self) -> Vec<SimServer> {
        let st = self.state();
        st.servers.values().map(|s| st.sim_server(s)).collect()
    }

    /// Requests per endpoint, keyed by method and route template: `POST /servers`,
    /// `GET /actions/{id}`, `DELETE /servers/{id}`… (every request, answered or refused).
    pub fn calls(&self) -> BTreeMap<String, u32> {
        self.state().calls.clone()
    }

    /// Requests answered 429 (the budget spent, or a scripted burst).
    pub fn rate_limited(&self) -> u32 {
        self.state().rate_limited
    }

    pub fn total_calls(&self) -> u32 {
        self.state().calls.values().sum()
    }

    /// Every request with its arrival time: `DELETE /servers/1001`, `GET /images?type=…`.
    pub fn requests(&self) -> Vec<(Instant, String)> {
        self.state().requests.clone()
    }

    /// The JSON body of the last `POST /servers` (accepted or not).
    pub fn last_create_request(&self) -> Option<serde_json::Value> {
        self.state().last_create.clone()
    }

    /// The directory the sandbox runners live in.
    pub fn runner_base(&self) -> &Path {
        self.base.path()
    }

    /// Sandbox runners that exist right now.
    pub fn live_runners(&self) -> Vec<String> {
        self.state().realized.iter().cloned().collect()
    }

    /// Nothing left behind: no server, no SSH key but the launcher's one project key, and of
    /// every runner ever realized no directory, no cgroup and no sshd.
    pub fn assert_clean(&self) {
        let servers = self.servers();
        assert!(
            servers.is_empty(),
            "servers left in the simulator: {servers:?}"
        );
        let keys: Vec<String> = self.ssh_keys().into_iter().map(|(n, _)| n).collect();
        assert!(
            keys.iter().all(|k| k == "buildkit-launcher"),
            "SSH keys left in the simulator: {keys:?}"
        );
        self.assert_no_runner_left();
    }

    /// No sandbox runner left (servers created by `add_server` may remain): of every runner
    /// ever realized no directory, no cgroup in any hierarchy, no sshd, sampler, buildkitd or
    /// runc container, and nothing mounted under the runners' directory.
    pub fn assert_no_runner_left(&self) {
        let ever: Vec<String> = self.state().ever_realized.iter().cloned().collect();
        for runner in &ever {
            let dir = self.base.path().join(runner);
            assert!(!dir.exists(), "runner directory {} left", dir.display());
            crate::support::runner::assert_no_cgroups(runner);
        }
        crate::support::runner::assert_no_daemon_or_mount(self.base.path());
        let ps = std::process::Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .expect("run ps");
        let base = self.base.path().display().to_string();
        let ps = String::from_utf8_lossy(&ps.stdout);
        assert!(
            !ps.lines().any(|l| l.contains("sshd") && l.contains(&base)),
            "an sshd of the simulator's runners is still running"
        );
        assert!(
            !ps.lines()
                .any(|l| l.contains("bkl-runner-stats") && l.contains(&base)),
            "a memory sampler of the simulator's runners is still running"
        );
    }
}

impl Drop for HcloudSim {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let runners: Vec<String> = self.state().realized.iter().cloned().collect();
        for runner in runners {
            if let Err(e) = self.shared.provider.teardown(&runner) {
                eprintln!("hcloud simulator: teardown of {runner} on drop failed: {e}");
            }
        }
        // `base` (the runners' directory) is removed when the field drops.
    }
}

fn pairs(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
