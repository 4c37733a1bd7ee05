//! The operator's policy: what only the operator decides (ARCHITECTURE.md, "Trust boundaries").
//!
//! A pull request controls the repository and the pipeline file, so it controls every
//! `PLUGIN_*` setting. The policy therefore never comes from a setting: it is read from
//! [`IMAGE_FILE`] in the plugin image (an operator builds `FROM` the plugin image and adds it),
//! else from the file named by [`ENV`] (set in the Woodpecker agent's environment), else it is
//! [`Policy::default`]. The contract and its defaults are `schemas/policy.ncl`.
//!
//! It decides where the Hetzner token may be sent, where registry credentials may be sent, the
//! ceiling on server size and hourly price (a spec or a repository's config chooses within it,
//! never above), which redirecting settings a pipeline may use, and what pull-request builds
//! may do. Safe defaults: Hetzner's endpoint, no `config` or `hcloud_endpoint` from settings,
//! the built-in ladder's top as the ceiling, pull-request builds without secrets.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{Arch, Config};
use crate::ncl::{self, Contract, NclError};

/// The policy file an operator bakes into the plugin image; it wins over [`ENV`].
pub const IMAGE_FILE: &str = "/etc/buildkit-launcher/policy.ncl";
/// The environment variable naming a policy file, for agents and terminals.
pub const ENV: &str = "BUILDKIT_LAUNCHER_POLICY";

pub const POLICY_CONTRACT: Contract = Contract {
    name: "schemas/policy.ncl",
    source: include_str!("../schemas/policy.ncl"),
    fields_hint: "a policy may set hcloud_endpoint, registries, max_memory_gb, max_eur_per_hour, repository_may_set, pull_requests, build_env, secret_env, golden_images and token_realms",
};

/// Variables that always hold a secret of the launcher.
pub const SECRET_NAMES: &[&str] = &[
    "HCLOUD_TOKEN",
    "PLUGIN_HCLOUD_TOKEN",
    "REGISTRY_PASSWORD",
    "PLUGIN_PASSWORD",
    "PLUGIN_REGISTRY_PASSWORD",
    "PLUGIN_BUILD_SECRETS",
];

/// Every known secret value in `text` replaced by `****`. Values shorter than 4 characters
/// are left alone (they would mask ordinary words).
pub fn mask(text: &str, secrets: &[zeroize::Zeroizing<String>]) -> String {
    let mut text = text.to_owned();
    for value in secrets.iter().filter(|v| v.len() >= 4) {
        if text.contains(value.as_str()) {
            text = text.replace(value.as_str(), "****");
        }
    }
    text
}

/// A line for the terminal or the CI log: every secret value the launcher holds masked, then
/// control bytes escaped. A policy that cannot be read still masks the launcher's own secrets
/// (its defaults name them).
pub fn printable(line: &str) -> String {
    let secrets = match Policy::current() {
        Ok(policy) => policy.secret_values(),
        Err(_) => Policy::default().secret_values(),
    };
    crate::exit::escape_controls(&mask(line, &secrets))
}

/// A plugin setting that redirects the token or replaces the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Redirecting {
    Config,
    HcloudEndpoint,
    /// `http_proxy`, `https_proxy`, `no_proxy` other than the agent's own (docs/design/proxy.md).
    Proxy,
}

/// Where a pull-request build pushes (`pull_requests.push`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullRequestPush {
    /// The image under `pr-<N>` only, the default cache under its own `pr-<N>` tag: never the
    /// default branch's tags or cache entries.
    PrTag,
    /// Nothing: the build runs, nothing is pushed.
    DryRun,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequests {
    pub secrets: bool,
    pub push: PullRequestPush,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub hcloud_endpoint: Option<String>,
    pub registries: Vec<String>,
    /// Hosts a registry's token realm may point at besides the registry's own host.
    #[serde(default)]
    pub token_realms: Vec<String>,
    #[serde(default)]
    pub max_memory_gb: Option<f64>,
    #[serde(default)]
    pub max_eur_per_hour: Option<f64>,
    pub repository_may_set: Vec<Redirecting>,
    pub pull_requests: PullRequests,
    /// Variables of the agent that `build_args_from_env` and `secrets` (`env=`) may read.
    #[serde(default)]
    pub build_env: Vec<String>,
    /// Further variables that hold secrets: never readable by a setting, masked in output.
    #[serde(default)]
    pub secret_env: Vec<String>,
    /// Label selectors `golden_image` may name besides the launcher's own golden snapshots.
    #[serde(default)]
    pub golden_images: Vec<String>,
    /// Where it came from, for messages.
    #[serde(skip)]
    pub origin: String,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            hcloud_endpoint: None,
            registries: Vec::new(),
            token_realms: Vec::new(),
            max_memory_gb: None,
            max_eur_per_hour: None,
            repository_may_set: Vec::new(),
            pull_requests: PullRequests {
                secrets: false,
                push: PullRequestPush::PrTag,
            },
            build_env: Vec::new(),
            secret_env: Vec::new(),
            golden_images: Vec::new(),
            origin: "the default policy".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("operator policy: {0}")]
    Nickel(#[from] NclError),
    #[error("operator policy {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("{0}")]
    Loaded(String),
}

static CURRENT: OnceLock<Result<Policy, String>> = OnceLock::new();

impl Policy {
    /// The policy of this process, loaded once.
    pub fn current() -> Result<&'static Policy, PolicyError> {
        CURRENT
            .get_or_init(|| Policy::load().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|message| PolicyError::Loaded(message.clone()))
    }

    /// [`IMAGE_FILE`] if it exists, else the file named by [`ENV`], else the defaults.
    pub fn load() -> Result<Policy, PolicyError> {
        let file = if Path::new(IMAGE_FILE).exists() {
            Some(PathBuf::from(IMAGE_FILE))
        } else {
            crate::environment::var(ENV)
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from)
        };
        match file {
            Some(file) => Policy::from_file(&file),
            None => Ok(Policy::default()),
        }
    }

    pub fn from_file(file: &Path) -> Result<Policy, PolicyError> {
        if !file.is_file() {
            return Err(PolicyError::Invalid {
                origin: file.display().to_string(),
                message: "no such file".into(),
            });
        }
        let root = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        let mut policy: Policy =
            ncl::evaluate(Some(file), &root, POLICY_CONTRACT, Duration::from_secs(10))?;
        policy.origin = file.display().to_string();
        Ok(policy)
    }

    /// Does the variable `name` hold a secret of the launcher? The token, the registry
    /// password and their plugin twins, a plugin's build secrets, Woodpecker's git
    /// credentials, any `PLUGIN_*` (a setting is the pipeline's own, never a build's input) and
    /// what the policy marks secret.
    pub fn is_secret_name(&self, name: &str) -> bool {
        SECRET_NAMES.contains(&name)
            || name.starts_with("PLUGIN_")
            || name.starts_with("CI_NETRC_")
            || name.starts_with("BKL_BUILD_SECRET_")
            || self.secret_env.iter().any(|s| s == name)
    }

    /// The values of every secret the launcher holds, for refusing and masking them.
    pub fn secret_values(&self) -> Vec<zeroize::Zeroizing<String>> {
        let mut names: Vec<String> = SECRET_NAMES.iter().map(|s| s.to_string()).collect();
        names.extend(self.secret_env.iter().cloned());
        names.extend(
            crate::environment::with_prefixes(&["BKL_BUILD_SECRET_", "CI_NETRC_PASSWORD"])
                .into_keys(),
        );
        let mut values: Vec<zeroize::Zeroizing<String>> = names
            .iter()
            .filter_map(|n| crate::environment::var(n))
            .filter(|v| !v.trim().is_empty())
            .map(zeroize::Zeroizing::new)
            .collect();
        values.extend(
            crate::proxy::current()
                .passwords()
                .into_iter()
                .map(zeroize::Zeroizing::new),
        );
        values.sort_by(|a, b| {
            b.len()
                .cmp(&a.len())
                .then_with(|| a.as_str().cmp(b.as_str()))
        });
        values.dedup_by(|a, b| a.as_str() == b.as_str());
        values
    }

    pub fn may_set(&self, setting: Redirecting) -> bool {
        self.repository_may_set.contains(&setting)
    }

    /// The ceiling on memory, MiB: the policy's, else the top of the built-in ladder.
    pub fn max_memory_mib(&self, arch: Arch) -> u64 {
        match self.max_memory_gb {
            Some(gb) => (gb * 1024.0).floor() as u64,
            None => Config::defaults()
                .ladder(arch)
                .last()
                .map_or(u64::MAX, |t| t.memory_mib),
        }
    }

    /// Take every tier above the ceiling out of `config`'s ladders (and point language defaults
    /// that named one at the highest tier left), so that no source of a size can exceed it.
    /// Under a price ceiling a type without a known price counts as above it. A ladder the
    /// ceiling empties fails only the builds of that architecture (sizing says why); both
    /// empty is an error of the policy.
    pub fn cap(&self, config: &mut Config) -> Result<(), PolicyError> {
        config.limits = crate::config::Limits {
            eur_per_hour: self.max_eur_per_hour,
            memory_gb: self.max_memory_gb,
        };
        let mut capped = false;
        let mut emptied = Vec::new();
        let mut removed = Vec::new();
        for arch in [Arch::Amd64, Arch::Arm64] {
            let max_mib = self.max_memory_mib(arch);
            let within = |t: &crate::config::Tier| {
                t.memory_mib <= max_mib
                    && match (self.max_eur_per_hour, t.price_eur_per_hour) {
                        (Some(max), Some(price)) => price <= max,
                        (Some(_), None) => false,
                        (None, _) => true,
                    }
            };
            let ladder = match arch {
                Arch::Amd64 => &mut config.tiers.amd64,
                Arch::Arm64 => &mut config.tiers.arm64,
            };
            let before = ladder.len();
            removed.extend(
                ladder
                    .iter()
                    .filter(|t| !within(t))
                    .map(|t| (arch, t.clone())),
            );
            ladder.retain(within);
            capped |= ladder.len() != before;
            let Some(top) = ladder.last().map(|t| t.name.clone()) else {
                emptied.push(arch);
                continue;
            };
            let names: Vec<String> = ladder.iter().map(|t| t.name.clone()).collect();
            let defaults = match arch {
                Arch::Amd64 => &mut config.language_defaults.amd64,
                Arch::Arm64 => &mut config.language_defaults.arm64,
            };
            for name in [
                &mut defaults.rust,
                &mut defaults.java,
                &mut defaults.go,
                &mut defaults.node,
                &mut defaults.python,
                &mut defaults.generic,
            ] {
                if !names.contains(name) {
                    *name = top.clone();
                }
            }
        }
        config.above_ceiling = removed;
        if emptied.len() == 2 {
            return Err(PolicyError::Invalid {
                origin: self.origin.clone(),
                message: format!(
                    "no server type of the launcher config is within the ceiling ({}; a type without a price counts as above a price ceiling)",
                    self.describe_ceiling(config.default_arch)
                ),
            });
        }
        if capped {
            config.ceiling = Some(self.describe_ceiling(config.default_arch));
        }
        Ok(())
    }

    /// What the ceiling is, in words, for messages.
    pub fn describe_ceiling(&self, arch: Arch) -> String {
        let memory = self.max_memory_mib(arch) as f64 / 1024.0;
        let mut text = format!("{memory} GB memory");
        if let Some(price) = self.max_eur_per_hour {
            text.push_str(&format!(" and {price} EUR/h"));
        }
        format!(
            "the operator policy ({}) allows at most {text}",
            self.origin
        )
    }

    /// May registry credentials be sent to `registry`?
    pub fn check_registry(&self, registry: &str) -> Result<(), String> {
        if self.registries.is_empty() || self.registries.iter().any(|r| r == registry) {
            Ok(())
        } else {
            Err(format!(
                "registry {registry}: the operator policy ({}) sends registry credentials only to {}",
                self.origin,
                self.registries.join(", ")
            ))
        }
    }

    /// May the token be sent to `endpoint`? https only (plain http for loopback), and the
    /// policy's endpoint when it names one and pipelines may not choose their own.
    pub fn check_endpoint(&self, endpoint: &str) -> Result<(), String> {
        if !endpoint_is_safe(endpoint) {
            return Err(format!(
                "hcloud endpoint {endpoint}: the token is only sent over https (plain http only to a loopback address)"
            ));
        }
        match &self.hcloud_endpoint {
            Some(allowed) if allowed != endpoint && !self.may_set(Redirecting::HcloudEndpoint) => {
                Err(format!(
                    "hcloud endpoint {endpoint}: the operator policy ({}) sends the token only to {allowed}",
                    self.origin
                ))
            }
            _ => Ok(()),
        }
    }
}

/// `https://…`, or `http://` to 127.0.0.0/8, localhost or [::1].
pub fn endpoint_is_safe(endpoint: &str) -> bool {
    let Ok(url) = url::Url::parse(endpoint) else {
        return false;
    };
    if !url.username().is_empty() || url.password().is_some() {
        return false;
    }
    match (url.scheme(), url.host()) {
        ("https", Some(_)) => true,
        ("http", Some(url::Host::Ipv4(ip))) => ip.is_loopback(),
        ("http", Some(url::Host::Ipv6(ip))) => ip.is_loopback(),
        ("http", Some(url::Host::Domain(d))) => d == "localhost",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_https_or_loopback() {
        assert!(endpoint_is_safe("https://api.hetzner.cloud/v1"));
        assert!(endpoint_is_safe("http://127.0.0.1:8080/v1"));
        assert!(endpoint_is_safe("http://127.9.9.9/v1"));
        assert!(endpoint_is_safe("http://[::1]:9/v1"));
        assert!(!endpoint_is_safe("http://evil.example/v1"));
        assert!(!endpoint_is_safe("http://127.0.0.1.evil.example/v1"));
        assert!(!endpoint_is_safe("https://user:pw@api.hetzner.cloud/v1"));
        assert!(!endpoint_is_safe("ftp://api.hetzner.cloud"));
        assert!(!endpoint_is_safe("api.hetzner.cloud"));
    }

    #[test]
    fn a_named_endpoint_is_the_only_one_unless_pipelines_may_choose() {
        let mut p = Policy {
            hcloud_endpoint: Some("https://api.hetzner.cloud/v1".into()),
            ..Policy::default()
        };
        assert!(p.check_endpoint("https://api.hetzner.cloud/v1").is_ok());
        assert!(p.check_endpoint("https://other.example/v1").is_err());
        p.repository_may_set.push(Redirecting::HcloudEndpoint);
        assert!(p.check_endpoint("https://other.example/v1").is_ok());
        assert!(p.check_endpoint("http://other.example/v1").is_err());
    }

    #[test]
    fn registries_and_the_default_ceiling() {
        let mut p = Policy::default();
        assert!(p.check_registry("anything:5000").is_ok());
        p.registries = vec!["zot:5000".into()];
        assert!(p.check_registry("zot:5000").is_ok());
        assert!(
            p.check_registry("evil:5000")
                .unwrap_err()
                .contains("only to zot:5000")
        );
        assert_eq!(Policy::default().max_memory_mib(Arch::Amd64), 32768);
    }

    #[test]
    fn a_policy_file_is_checked_against_its_contract() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.ncl");
        std::fs::write(
            &file,
            "{ max_memory_gb = 16, repository_may_set = ['config] }",
        )
        .unwrap();
        let p = Policy::from_file(&file).unwrap();
        assert_eq!(p.max_memory_gb, Some(16.0));
        assert!(p.may_set(Redirecting::Config));
        assert!(!p.pull_requests.secrets);
        std::fs::write(&file, "{ hcloud_endpoint = \"http://evil.example\" }").unwrap();
        let e = Policy::from_file(&file).unwrap_err().to_string();
        assert!(e.contains("https"), "{e}");
    }
}
