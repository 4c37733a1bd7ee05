//! The Hetzner Cloud provider: production runners.
//!
//! A runner is a server created from the newest golden snapshot of its architecture (or
//! `--golden-image`), with the per-build cloud-init user data, the lease labels and name, the
//! tier's server type, in the first configured location with capacity (`resource_unavailable`
//! or `placement_error` → the next one). Waiting polls the create action at a pace that stretches
//! when the project's request budget runs low. Destroy deletes and confirms (action success, or
//! 404: already gone), retrying transient failures.

pub mod api;
pub mod client;
mod images;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::Method;
use zeroize::Zeroizing;

use super::{LABEL_MANAGED_BY, LeaseInfo, MANAGED_BY, Provider, ProviderError, Runner, RunnerSpec};
use crate::backend::REMOTE_WORKDIR;
use crate::config::{Arch, Tier};
use crate::retry::RetryPolicy;
use crate::runner::ConnectPolicy;
pub use client::{ApiClient, ApiError, DEFAULT_ENDPOINT, Retry};

/// How long a server may take to be deleted, and when its actions are first looked at.
const DELETE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const FIRST_DELETE_POLL: Duration = Duration::from_millis(500);
const FIRST_CREATE_CHECK: Duration = Duration::from_secs(1);

pub struct HcloudSettings {
    pub endpoint: String,
    pub token: Zeroizing<String>,
    pub locations: Vec<String>,
    /// A snapshot id, or a label selector; default: the newest golden snapshot of the arch.
    pub golden_image: Option<String>,
    pub retry: RetryPolicy,
}

pub struct HcloudProvider {
    api: ApiClient,
    locations: Vec<String>,
    golden_image: Option<String>,
    /// Servers created by this process and not yet ready: their create action and address.
    pending: Mutex<HashMap<String, (i64, Option<String>)>>,
    images: tokio::sync::Mutex<HashMap<Arch, i64>>,
    log: Arc<dyn Fn(&str) + Send + Sync>,
}

/// What `GET /server_types` says about a ladder.
#[derive(Debug, Default)]
pub struct LadderCheck {
    /// Tier name → (net EUR/h, location of that price).
    pub prices: HashMap<String, (f64, String)>,
    pub deprecated: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LadderError {
    #[error(
        "tiers.{arch}: server type \"{name}\" does not exist at Hetzner; valid {arch} types are {valid}"
    )]
    Unknown {
        arch: Arch,
        name: String,
        valid: String,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
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
        .map_err(|e| setup("prepare the Hetzner API client", e))?;
        Ok(HcloudProvider {
            api,
            locations: settings.locations,
            golden_image: settings.golden_image,
            pending: Mutex::new(HashMap::new()),
            images: tokio::sync::Mutex::new(HashMap::new()),
            log,
        })
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

    /// Check the ladder's types exist (exit 2 otherwise) and note deprecated ones; one request.
    pub async fn check_ladder(
        &self,
        arch: Arch,
        ladder: &[Tier],
    ) -> Result<LadderCheck, LadderError> {
        let mut types = Vec::new();
        let mut page = Some(1);
        while let Some(n) = page {
            let resp: api::ServerTypesPage = self
                .api
                .call(
                    Method::GET,
                    &format!("/server_types?per_page=50&page={n}"),
                    None,
                    Retry::Always,
                )
                .await?;
            page = api::Meta::next_page(&resp.meta);
            types.extend(resp.server_types);
        }
        let hetzner_arch = hetzner_arch(arch);
        let mut check = LadderCheck::default();
        for tier in ladder {
            let Some(t) = types.iter().find(|t| t.name == tier.name) else {
                let mut valid: Vec<&str> = types
                    .iter()
                    .filter(|t| t.architecture == hetzner_arch && !t.is_deprecated())
                    .map(|t| t.name.as_str())
                    .collect();
                valid.sort_unstable();
                return Err(LadderError::Unknown {
                    arch,
                    name: tier.name.clone(),
                    valid: valid.join(", "),
                });
            };
            if t.is_deprecated() {
                check.deprecated.push(t.name.clone());
            }
            let location = self.locations.first().map_or("fsn1", String::as_str);
            if let Some(price) = t.hourly_price(location) {
                check.prices.insert(t.name.clone(), price);
            }
        }
        Ok(check)
    }

    /// The golden snapshot to boot from: `--golden-image`, else the newest labelled one.
    async fn golden_image(&self, arch: Arch) -> Result<i64, ProviderError> {
        let mut cache = self.images.lock().await;
        if let Some(id) = cache.get(&arch) {
            return Ok(*id);
        }
        if let Some(id) = self
            .golden_image
            .as_deref()
            .and_then(|g| g.parse::<i64>().ok())
        {
            cache.insert(arch, id);
            return Ok(id);
        }
        let selector = self.golden_image.clone().unwrap_or_else(|| {
            format!("buildkit-launcher/role=golden,buildkit-launcher/arch={arch}")
        });
        let path = format!(
            "/images?type=snapshot&status=available&sort=created:desc&architecture={}&label_selector={}",
            hetzner_arch(arch),
            encode(&selector)
        );
        let page: api::ImagesPage = self
            .api
            .call(Method::GET, &path, None, Retry::Always)
            .await
            .map_err(|e| setup("look up the golden snapshot", e))?;
        let image = page.images.first().ok_or_else(|| ProviderError::Setup {
            action: "find a golden snapshot",
            detail: format!(
                "no {arch} snapshot matches \"{selector}\"; bake one with `buildkit-launcher golden-image build --arch {arch}`"
            ),
        })?;
        (self.log)(&format!(
            "golden snapshot {} ({}, created {})",
            image.id,
            image.description.as_deref().unwrap_or("no description"),
            image.created
        ));
        cache.insert(arch, image.id);
        Ok(image.id)
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

    /// One poll of an action after a short wait: an error ends it, anything else is fine.
    async fn check_action(&self, id: i64, what: &str) -> Result<(), ApiError> {
        tokio::time::sleep(self.api.poll_interval(FIRST_CREATE_CHECK)).await;
        let resp: api::ActionResponse = self
            .api
            .call(Method::GET, &format!("/actions/{id}"), None, Retry::Always)
            .await?;
        match (resp.action.status.as_str(), resp.action.error) {
            ("error", error) => {
                let (code, message) = error.map_or_else(
                    || ("action_failed".to_owned(), "no detail".to_owned()),
                    |e| (e.code, e.message),
                );
                Err(ApiError::Api {
                    method: "GET".into(),
                    path: format!("/actions/{id} ({what})"),
                    status: 200,
                    code,
                    message,
                })
            }
            _ => Ok(()),
        }
    }

    async fn find_by_name(&self, name: &str) -> Result<Option<api::Server>, ApiError> {
        let page: api::ServersPage = self
            .api
            .call(
                Method::GET,
                &format!("/servers?name={}", encode(name)),
                None,
                Retry::Always,
            )
            .await?;
        Ok(page.servers.into_iter().next())
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
        let image = self.golden_image(spec.arch).await?;
        let mut refused = Vec::new();
        for location in &self.locations {
            let body = serde_json::json!({
                "name": spec.name,
                "server_type": spec.tier.name,
                "image": image.to_string(),
                "location": location,
                "user_data": spec.user_data,
                "labels": spec.labels,
                "start_after_create": true,
            });
            match self
                .api
                .call::<api::CreateServerResponse>(
                    Method::POST,
                    "/servers",
                    Some(&body),
                    Retry::IfRefused,
                )
                .await
            {
                Ok(resp) => {
                    let id = resp.server.id.to_string();
                    let host = address(&resp.server.public_net);
                    self.pending
                        .lock()
                        .expect("pending lock")
                        .insert(id.clone(), (resp.action.id, host));
                    (self.log)(&format!(
                        "server {id} ({}, {location}) is being created",
                        spec.tier.name
                    ));
                    return Ok(id);
                }
                Err(e) if matches!(e.code(), Some("resource_unavailable" | "placement_error")) => {
                    (self.log)(&format!(
                        "no capacity for {} in {location} ({}); trying the next location",
                        spec.tier.name,
                        e.code().unwrap_or_default()
                    ));
                    refused.push(format!("{location}: {}", e.code().unwrap_or_default()));
                }
                Err(e) if e.is_ambiguous() => {
                    // The request may have created the server: find it by its unique name.
                    if let Ok(Some(server)) = self.find_by_name(&spec.name).await {
                        let id = server.id.to_string();
                        let host = address(&server.public_net);
                        self.pending
                            .lock()
                            .expect("pending lock")
                            .insert(id.clone(), (0, host));
                        return Ok(id);
                    }
                    return Err(setup("create a server", e));
                }
                Err(e) => return Err(setup("create a server", e)),
            }
        }
        Err(ProviderError::Setup {
            action: "create a server",
            detail: format!(
                "no capacity for {} in any configured location ({})",
                spec.tier.name,
                refused.join(", ")
            ),
        })
    }

    async fn wait_ready(&self, id: &str) -> Result<Runner, ProviderError> {
        let (action, host) = self
            .pending
            .lock()
            .expect("pending lock")
            .remove(id)
            .unwrap_or((0, None));
        if action != 0 {
            // One look at the create action, to fail fast when Hetzner could not create the
            // server. Readiness itself is SSH answering with the build's host key: the
            // connection attempts cost no API requests, polling would.
            self.check_action(action, "create the server")
                .await
                .map_err(|e| runner_error(id, "boot", e))?;
        }
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
        let resp = self
            .api
            .call::<api::ActionResponse>(
                Method::DELETE,
                &format!("/servers/{id}"),
                None,
                Retry::Always,
            )
            .await;
        match resp {
            Ok(resp) => self
                .wait_action(
                    resp.action.id,
                    "the server to be deleted",
                    FIRST_DELETE_POLL,
                    DELETE_TIMEOUT,
                )
                .await
                .map_err(|e| runner_error(id, "confirm its deletion", e)),
            // Already gone: that is the confirmation.
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(runner_error(id, "delete it", e)),
        }
    }

    async fn list_leases(&self) -> Result<Vec<LeaseInfo>, ProviderError> {
        let mut leases = Vec::new();
        let mut page = Some(1);
        while let Some(n) = page {
            let path = format!(
                "/servers?label_selector={}&per_page=50&page={n}",
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
                        labels: s.labels,
                    }),
            );
        }
        Ok(leases)
    }
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
    }
}
