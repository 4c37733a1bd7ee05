//! The Hetzner Cloud provider: production runners.
//!
//! A runner is a server created from the newest golden snapshot of its architecture (or
//! `--golden-image`), with the per-build cloud-init user data, the project SSH key, the lease
//! labels and name, the tier's server type, in the first configured location that sells the
//! type and has capacity (`create.rs`; the ladder and locations per type: `types.rs`). While
//! SSH waits, the create action is re-checked at a modest pace ([`HcloudProvider::watch_boot`]),
//! at a pace that stretches when the project's request budget runs low. Destroy deletes and
//! confirms (action success, or 404: already gone), retrying transient failures.

pub mod api;
pub mod candidates;
pub mod catalogue;
pub mod client;
mod create;
mod images;
mod lifetime;
mod rate;
pub mod stock;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::Method;
use zeroize::Zeroizing;

use super::{LABEL_MANAGED_BY, LeaseInfo, MANAGED_BY, Provider, ProviderError, Runner, RunnerSpec};
use crate::backend::REMOTE_WORKDIR;
use crate::config::Arch;
use crate::retry::RetryPolicy;
use crate::runner::ConnectPolicy;
pub use client::{ApiClient, ApiError, DEFAULT_ENDPOINT, Retry};
pub use create::PROJECT_KEY;
pub use lifetime::LOCKED_WAIT;
pub use types::{LadderCheck, LadderError};

/// The action of a [`ProviderError::Setup`] that means no golden snapshot matches.
const FIND_GOLDEN: &str = "find a golden snapshot";

/// How long a server may take to be deleted, and when its actions are first looked at.
const DELETE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const FIRST_DELETE_POLL: Duration = Duration::from_millis(500);
/// The create action is first looked at after 1 s, then every 10 s stretching to 30 s.
const FIRST_CREATE_CHECK: Duration = Duration::from_secs(1);
const CREATE_CHECK_EVERY: Duration = Duration::from_secs(10);
const CREATE_CHECK_MAX: Duration = Duration::from_secs(30);
/// The default lease when the settings name none (`hcloud.lease_s`).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(600);

pub struct HcloudSettings {
    pub endpoint: String,
    pub token: Zeroizing<String>,
    pub locations: Vec<String>,
    /// A snapshot id, or a label selector; default: the newest golden snapshot of the arch.
    pub golden_image: Option<String>,
    pub retry: RetryPolicy,
    /// A runner's lease, renewed every third of it while the launcher lives.
    pub lease: Duration,
    /// How long one request may wait in all for the request budget (429s).
    pub rate_limit_wait: Duration,
}

/// A created server not yet ready: its create actions (and `next_actions`) and its address.
type Pending = (Vec<i64>, Option<String>);

pub struct HcloudProvider {
    api: ApiClient,
    locations: Vec<String>,
    golden_image: Option<String>,
    /// Servers created by this process and not yet ready: their create actions and address.
    pending: Mutex<HashMap<String, Pending>>,
    /// Create actions to watch while SSH waits, by server id.
    booting: Mutex<HashMap<String, Vec<i64>>>,
    /// The golden snapshot per architecture: its id and disk size (GB), once looked up.
    images: tokio::sync::Mutex<HashMap<Arch, (i64, Option<f64>)>>,
    /// `GET /server_types`, read once per run.
    types: tokio::sync::Mutex<Option<Vec<api::ServerType>>>,
    /// `GET /pricing`, read once per run (every platform's estimate uses it).
    pricing: tokio::sync::Mutex<Option<api::Pricing>>,
    /// Server type → the configured locations that sell it (from the ladder check).
    sold: Mutex<HashMap<String, Vec<String>>>,
    /// Server id → the type it runs on instead of its rung's, and why (`create.rs`).
    substitutes: Mutex<HashMap<String, super::Substitute>>,
    lease: Duration,
    /// Each runner gets a primary IPv4; false: IPv6-only (`hcloud.ipv4`).
    ipv4: bool,
    log: Arc<dyn Fn(&str) + Send + Sync>,
}

impl HcloudProvider {
    pub fn new(
        settings: HcloudSettings,
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Result<HcloudProvider, ProviderError> {
        let api = ApiClient::new(
            &settings.endpoint,
            settings.token,
            settings.retry,
            log.clone(),
        )
        .map_err(|e| setup("prepare the Hetzner API client", e))?
        .with_rate_limit_wait(settings.rate_limit_wait);
        Ok(HcloudProvider {
            api,
            locations: settings.locations,
            golden_image: settings.golden_image,
            pending: Mutex::new(HashMap::new()),
            booting: Mutex::new(HashMap::new()),
            images: tokio::sync::Mutex::new(HashMap::new()),
            types: tokio::sync::Mutex::new(None),
            pricing: tokio::sync::Mutex::new(None),
            sold: Mutex::new(HashMap::new()),
            substitutes: Mutex::new(HashMap::new()),
            lease: settings.lease,
            ipv4: true,
            log,
        })
    }

    /// `false`: create IPv6-only runners (`public_net.enable_ipv4 = false`): no primary IPv4 to
    /// pay for, and the launcher reaches the runner at `::1` of its /64 (`address`).
    pub fn with_ipv4(mut self, ipv4: bool) -> HcloudProvider {
        self.ipv4 = ipv4;
        self
    }

    /// Requests sent to the API so far.
    pub fn api_calls(&self) -> u32 {
        self.api.calls()
    }

    /// The API client, for the calls other commands (check, golden-image) make.
    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    /// What the last response said about the project's request budget.
    pub fn rate_limit(&self) -> client::RateLimit {
        self.api.rate_limit()
    }

    /// Before any server: a golden snapshot for `arch` exists. `Ok(Some(why))` when none does
    /// (a usage error: bake one, or fix `--golden-image`); `Err` when the API cannot be asked.
    /// The answer is kept, so the create asks nothing more.
    ///
    /// Also: the snapshot's disk fits the rung (`tier`). A snapshot taken from a larger disk
    /// boots only types with at least that disk (FACTS.md "Snapshots"), so the rung's need
    /// grows to it; a rung no type can then serve is a usage error too.
    pub async fn missing_golden_image(
        &self,
        arch: Arch,
        tier: &crate::config::Tier,
    ) -> Result<Option<String>, ProviderError> {
        match self.golden_image(arch).await {
            Ok((id, Some(disk))) if disk > tier.disk_gb as f64 => {
                if self
                    .ranked(arch, &bootable(tier, Some(disk)))
                    .await
                    .is_some_and(|c| c.is_empty())
                {
                    return Ok(Some(format!(
                        "golden snapshot {id} was taken from a {disk} GB disk, and no server type that meets rung {} ({} vCPUs, {} GB memory) with at least that disk can be ordered; bake it on the smallest type (`golden-image build` does)",
                        tier.name,
                        tier.vcpus,
                        tier.memory_mib as f64 / 1024.0
                    )));
                }
                (self.log)(&format!(
                    "golden snapshot {id} was taken from a {disk} GB disk, more than {}'s {} GB: this build runs on a type with at least that disk",
                    tier.name, tier.disk_gb
                ));
                Ok(None)
            }
            Ok(_) => Ok(None),
            Err(ProviderError::Setup {
                action: FIND_GOLDEN,
                detail,
            }) => Ok(Some(detail)),
            Err(e) => Err(e),
        }
    }

    /// `--golden-image` is one snapshot id (one architecture), not a selector.
    pub fn golden_image_is_an_id(&self) -> bool {
        self.golden_image
            .as_deref()
            .is_some_and(|g| g.parse::<i64>().is_ok())
    }

    /// The golden snapshot to boot from: `--golden-image`, else the newest labelled one.
    async fn golden_image(&self, arch: Arch) -> Result<(i64, Option<f64>), ProviderError> {
        let mut cache = self.images.lock().await;
        if let Some(found) = cache.get(&arch) {
            return Ok(*found);
        }
        // `--golden-image` (a pipeline's `golden_image`) chooses among the golden snapshots of
        // this architecture only: a selector is narrowed to them, an id must be one of them,
        // unless the operator policy names the selector (golden_images). Otherwise a pipeline
        // could boot its build, with the registry credentials, from any snapshot of the
        // project, a production one included.
        let golden = format!("buildkit-launcher/role=golden,buildkit-launcher/arch={arch}");
        let trusted = crate::policy::Policy::current()
            .map(|p| p.golden_images.clone())
            .unwrap_or_default();
        let wanted_id = self
            .golden_image
            .as_deref()
            .and_then(|g| g.parse::<i64>().ok());
        let selector = match (&self.golden_image, wanted_id) {
            (None, _) | (Some(_), Some(_)) => golden.clone(),
            (Some(given), None) if trusted.contains(given) => given.clone(),
            (Some(given), None) => format!("{given},{golden}"),
        };
        let path = format!(
            "/images?type=snapshot&status=available&sort=created:desc&per_page=50&architecture={}&label_selector={}",
            hetzner_arch(arch),
            encode(&selector)
        );
        if let Some(id) = wanted_id {
            let page: api::ImagesPage = self
                .api
                .call(Method::GET, &path, None, Retry::Always)
                .await
                .map_err(|e| setup("look up the golden snapshot", e))?;
            let Some(image) = page.images.iter().find(|i| i.id == id) else {
                return Err(ProviderError::Setup {
                    action: FIND_GOLDEN,
                    detail: format!(
                        "{} {id}: not one of the newest golden {arch} snapshots (labels {golden}); a runner boots only from those",
                        crate::exit::option("--golden-image")
                    ),
                });
            };
            cache.insert(arch, (id, image.disk_size));
            return Ok((id, image.disk_size));
        }
        let page: api::ImagesPage = self
            .api
            .call(Method::GET, &path, None, Retry::Always)
            .await
            .map_err(|e| setup("look up the golden snapshot", e))?;
        let image = page.images.first().ok_or_else(|| ProviderError::Setup {
            action: FIND_GOLDEN,
            detail: match &self.golden_image {
                Some(given) if selector != *given => format!(
                    "{} {}: no golden {arch} snapshot matches it: a pipeline's selector only chooses among the launcher's golden snapshots ({golden}), unless the operator policy lists it in golden_images",
                    crate::exit::option("--golden-image"),
                    crate::exit::quote(given)
                ),
                _ => format!(
                    "no {arch} snapshot matches {}; bake one with `buildkit-launcher golden-image build --arch {arch}`",
                    crate::exit::quote(&selector)
                ),
            },
        })?;
        (self.log)(&format!(
            "golden snapshot {} ({}, created {})",
            image.id,
            image.description.as_deref().unwrap_or("no description"),
            image.created
        ));
        cache.insert(arch, (image.id, image.disk_size));
        Ok((image.id, image.disk_size))
    }

    /// Poll an action until it succeeds, fails or `timeout` passes. The first poll comes after
    /// `first_wait`: an action is never done the moment it starts, and every poll spends the
    /// project's shared request budget.
    async fn wait_action(
        &self,
        id: i64,
        what: &str,
        first_wait: Duration,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let started = Instant::now();
        let mut interval = first_wait;
        let mut polls = 0u32;
        loop {
            tokio::time::sleep(self.api.poll_interval(interval)).await;
            interval = (interval * 3 / 2).clamp(Duration::from_millis(500), Duration::from_secs(5));
            let resp: api::ActionResponse = self
                .api
                .call(Method::GET, &format!("/actions/{id}"), None, Retry::Always)
                .await?;
            match resp.action.status.as_str() {
                "success" => return Ok(()),
                "error" => {
                    let (code, message) = resp.action.error.map_or_else(
                        || ("action_failed".to_owned(), "no detail".to_owned()),
                        |e| (e.code, e.message),
                    );
                    return Err(ApiError::Api {
                        method: "GET".into(),
                        path: format!("/actions/{id} ({what})"),
                        status: 200,
                        code,
                        message,
                    });
                }
                _ => {}
            }
            polls += 1;
            if started.elapsed() > timeout {
                return Err(ApiError::Transport {
                    method: "GET".into(),
                    path: format!("/actions/{id}"),
                    detail: format!("{what} did not finish within {} s", timeout.as_secs()),
                });
            }
            if polls.is_multiple_of(5) {
                (self.log)(&format!(
                    "waiting for {what} (action {id}, {:.0} s)",
                    started.elapsed().as_secs_f64()
                ));
            }
        }
    }

    /// Watch the create action (and its `next_actions`) of server `id` while SSH waits: one
    /// `GET /actions?id=…` after 1 s, then every 10 s stretching to 30 s (slower still when the
    /// budget runs low). Returns `Ok` once all succeeded (or there is nothing to watch), an
    /// error as soon as one failed.
    pub async fn watch_create(&self, id: &str) -> Result<(), ApiError> {
        let actions = self
            .booting
            .lock()
            .expect("booting lock")
            .remove(id)
            .unwrap_or_default();
        if actions.is_empty() {
            return Ok(());
        }
        let query: Vec<String> = actions.iter().map(|a| format!("id={a}")).collect();
        let path = format!("/actions?{}", query.join("&"));
        let mut interval = FIRST_CREATE_CHECK;
        loop {
            tokio::time::sleep(self.api.poll_interval(interval)).await;
            interval = if interval < CREATE_CHECK_EVERY {
                CREATE_CHECK_EVERY
            } else {
                (interval * 3 / 2).min(CREATE_CHECK_MAX)
            };
            let page: api::ActionsPage = self
                .api
                .call(Method::GET, &path, None, Retry::Always)
                .await?;
            // An answer that lists none of the actions asked for says nothing about the boot:
            // never read as "it succeeded".
            if actions
                .iter()
                .any(|id| !page.actions.iter().any(|a| a.id == *id))
            {
                return Err(ApiError::Decode {
                    method: "GET".into(),
                    path,
                    detail: format!(
                        "the answer lists {} of the {} create actions asked for",
                        page.actions.len(),
                        actions.len()
                    ),
                });
            }
            if let Some(failed) = page.actions.iter().find(|a| a.status == "error") {
                let (code, message) = failed.error.clone().map_or_else(
                    || ("action_failed".to_owned(), "no detail".to_owned()),
                    |e| (e.code, e.message),
                );
                return Err(ApiError::Api {
                    method: "GET".into(),
                    path: format!("/actions/{} (create the server)", failed.id),
                    status: 200,
                    code,
                    message,
                });
            }
            if page.actions.iter().all(|a| a.status == "success") {
                return Ok(());
            }
        }
    }
}

#[async_trait]
impl Provider for HcloudProvider {
    fn name(&self) -> &'static str {
        "hcloud"
    }

    /// A server from a custom snapshot boots in tens of seconds to a few minutes.
    fn connect_policy(&self) -> ConnectPolicy {
        ConnectPolicy {
            attempts: 120,
            ..ConnectPolicy::default()
        }
    }

    async fn create(&self, spec: &RunnerSpec) -> Result<String, ProviderError> {
        self.create_server(spec).await
    }

    async fn find(&self, name: &str) -> Result<Option<String>, ProviderError> {
        self.find_by_name(name)
            .await
            .map(|s| s.map(|s| s.id.to_string()))
            .map_err(|e| setup("look a server up by name", e))
    }

    async fn watch_boot(&self, id: &str) -> Result<(), ProviderError> {
        self.watch_create(id)
            .await
            .map_err(|e| runner_error(id, "boot", e))
    }

    async fn wait_ready(&self, id: &str) -> Result<Runner, ProviderError> {
        let (actions, host) = self
            .pending
            .lock()
            .expect("pending lock")
            .remove(id)
            .unwrap_or_default();
        // Readiness is SSH answering with the build's host key (connection attempts cost no
        // API requests); the create actions are watched meanwhile (`watch_boot`).
        self.booting
            .lock()
            .expect("booting lock")
            .insert(id.to_owned(), actions);
        let host = match host {
            Some(host) => host,
            None => {
                let resp: api::ServerResponse = self
                    .api
                    .call(Method::GET, &format!("/servers/{id}"), None, Retry::Always)
                    .await
                    .map_err(|e| runner_error(id, "read its address", e))?;
                address(&resp.server.public_net).ok_or_else(|| ProviderError::Runner {
                    id: id.to_owned(),
                    action: "read its address",
                    detail: "the server has no public IP".into(),
                })?
            }
        };
        Ok(Runner {
            id: id.to_owned(),
            host,
            port: 22,
            workdir: REMOTE_WORKDIR.to_owned(),
            home: "/root".to_owned(),
        })
    }

    async fn destroy(&self, id: &str) -> Result<(), ProviderError> {
        self.delete_confirmed(id).await
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.lease)
    }

    fn now(&self) -> Option<u64> {
        self.api.knows_api_time().then(|| self.api.now())
    }

    /// `PUT /servers/{id}` with every label, the expiry `seconds` from the API's now
    /// (`lifetime.rs`).
    async fn set_lease(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
        seconds: u64,
    ) -> Result<(), ProviderError> {
        self.put_lease(id, labels, seconds).await
    }

    fn substitute(&self, id: &str) -> Option<super::Substitute> {
        self.substitutes
            .lock()
            .expect("substitutes lock")
            .get(id)
            .cloned()
    }

    async fn list_leases(&self) -> Result<Vec<LeaseInfo>, ProviderError> {
        let mut leases = Vec::new();
        let mut page = Some(1);
        while let Some(n) = page {
            let path = format!(
                "/servers?label_selector={}&sort=id:asc&per_page=50&page={n}",
                encode(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"))
            );
            let resp: api::ServersPage = self
                .api
                .call(Method::GET, &path, None, Retry::Always)
                .await
                .map_err(|e| setup("list managed servers", e))?;
            page = api::Meta::next_page(&resp.meta);
            leases.extend(
                resp.servers
                    .into_iter()
                    // The selector already filters; checking again costs nothing.
                    .filter(|s| {
                        s.labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
                    })
                    .map(|s| LeaseInfo {
                        id: s.id.to_string(),
                        created: api::parse_time(&s.created)
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_secs()),
                        name: s.name,
                        labels: s.labels,
                        locked: s.locked,
                    }),
            );
        }
        Ok(leases)
    }
}

/// `tier` as a need a golden snapshot of `disk` GB can boot: its disk at least the snapshot's.
fn bootable(tier: &crate::config::Tier, disk: Option<f64>) -> crate::config::Tier {
    let mut tier = tier.clone();
    if let Some(disk) = disk {
        tier.disk_gb = tier.disk_gb.max(disk.ceil() as u64);
    }
    tier
}

/// Where to reach a server: its IPv4, else the first address (`::1`) of its IPv6 network
/// (Hetzner reports the /64, not an address).
fn address(net: &api::PublicNet) -> Option<String> {
    if let Some(v4) = &net.ipv4 {
        return Some(v4.ip.clone());
    }
    let v6 = &net.ipv6.as_ref()?.ip;
    let prefix = v6.split('/').next()?;
    Some(if prefix.ends_with("::") {
        format!("{prefix}1")
    } else {
        prefix.to_owned()
    })
}

fn hetzner_arch(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "x86",
        Arch::Arm64 => "arm",
    }
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn setup(action: &'static str, e: ApiError) -> ProviderError {
    ProviderError::Setup {
        action,
        detail: e.to_string(),
    }
}

fn runner_error(id: &str, action: &'static str, e: ApiError) -> ProviderError {
    ProviderError::Runner {
        id: id.to_owned(),
        action,
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_first_else_the_first_address_of_the_ipv6_network() {
        let net: api::PublicNet = serde_json::from_str(
            r#"{"ipv4": {"ip": "203.0.113.7"}, "ipv6": {"ip": "2001:db8:1:2::/64"}}"#,
        )
        .unwrap();
        assert_eq!(address(&net).as_deref(), Some("203.0.113.7"));
        let net: api::PublicNet =
            serde_json::from_str(r#"{"ipv4": null, "ipv6": {"ip": "2001:db8:1:2::/64"}}"#).unwrap();
        assert_eq!(address(&net).as_deref(), Some("2001:db8:1:2::1"));
        let net: api::PublicNet = serde_json::from_str(r#"{"ipv4": null, "ipv6": null}"#).unwrap();
        assert_eq!(address(&net), None);
        // A single address (the simulator's IPv4-mapped loopback for an IPv6-only server).
        let net: api::PublicNet =
            serde_json::from_str(r#"{"ipv4": null, "ipv6": {"ip": "::ffff:127.0.0.9/128"}}"#)
                .unwrap();
        assert_eq!(address(&net).as_deref(), Some("::ffff:127.0.0.9"));
    }
}
