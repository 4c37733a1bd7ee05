//! Choosing and configuring the provider, shared by `build` and `reap`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use zeroize::Zeroizing;

use crate::backend::{Backend, BuildRequest};
use crate::config::Config;
use crate::exit::Error;
use crate::provider::Provider;
use crate::provider::hcloud::{DEFAULT_ENDPOINT, HcloudProvider, HcloudSettings};
use crate::provider::local::{DEFAULT_BASE, LocalProvider};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// Hetzner Cloud (production). Token in HCLOUD_TOKEN.
    Hcloud,
    /// A sandboxed runner on this machine (needs root).
    Local,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Provider")]
pub struct ProviderArgs {
    /// Where runners come from.
    #[arg(long, value_enum, default_value = "hcloud")]
    pub provider: ProviderKind,

    /// Hetzner Cloud API endpoint. The token is read from HCLOUD_TOKEN only (never from an
    /// argument, which other users of the machine could see).
    #[arg(long, value_name = "URL", env = "HCLOUD_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub hcloud_endpoint: String,

    /// Hetzner location to try, in order, when one has no capacity (repeatable or
    /// comma-separated). Default: hcloud.locations of the config (fsn1, nbg1, hel1).
    #[arg(long = "location", value_name = "LOCATION", value_delimiter = ',')]
    pub locations: Vec<String>,

    /// Snapshot to boot runners from: an image id or a label selector. Default: the newest
    /// snapshot labelled buildkit-launcher/role=golden for the build's architecture.
    #[arg(long, value_name = "SELECTOR-or-ID")]
    pub golden_image: Option<String>,

    /// Local provider: divide each tier's memory by this for the runner's memory cgroup
    /// (16: cx23 → 256 MiB), so out-of-memory and the retry happen for real on a small machine.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub local_memory_scale: u64,

    /// Local provider: a directory to put first on the runner's PATH (repeatable), e.g. one
    /// holding a `buildctl`.
    #[arg(long, value_name = "DIR")]
    pub local_tools: Vec<PathBuf>,

    /// Local provider: where runner directories live.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BASE)]
    pub local_dir: PathBuf,
}

/// The build tool the runner will really use: `--provider local` with `--backend buildctl`
/// builds with buildah when no `buildctl` is on the sandbox runner's PATH, so the plan says
/// so and shows that command. The note says why, for the plan and the log.
pub fn resolve_backend(
    provider: ProviderKind,
    local_tools: &[PathBuf],
    build: &mut BuildRequest,
) -> Option<String> {
    if provider != ProviderKind::Local || build.backend != Backend::Buildctl {
        return None;
    }
    let tools: Vec<PathBuf> = local_tools
        .iter()
        .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone()))
        .collect();
    if crate::provider::local::runner_tool(&tools, "buildctl").is_some() {
        return None;
    }
    build.backend = Backend::Buildah;
    Some("buildah: buildctl is not on the local runner's PATH (--local-tools DIR adds one)".into())
}

/// What `check` says to do about a refused token.
pub const TOKEN_FIX: &str = "create a read & write API token in the Hetzner Cloud console and put it in HCLOUD_TOKEN (in a pipeline: the setting hcloud_token, from_secret)";

/// An error of the cloud API as the command's error: a refused token (HTTP 401, as
/// `provider::hcloud::ApiError` renders it) is the user's to fix (exit 2, with `check`'s fix);
/// anything else is infrastructure (exit 4).
pub fn cloud_error(e: impl std::fmt::Display) -> Error {
    let text = e.to_string();
    if text.contains("(HTTP 401)") {
        Error::Usage(format!(
            "{text}: the Hetzner API refused the token; {TOKEN_FIX}"
        ))
    } else {
        Error::Infrastructure(text)
    }
}

/// The provider, concrete (for provider-specific preflight) and as a trait object.
/// A Hetzner provider with the launcher config's retries, lease and request-budget wait; its
/// endpoint held to the operator policy first. Nothing is contacted yet.
pub(super) fn hcloud_provider(
    config: &Config,
    endpoint: &str,
    token: String,
    locations: Vec<String>,
    golden_image: Option<String>,
    log: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<HcloudProvider, Error> {
    crate::policy::Policy::current()?
        .check_endpoint(endpoint)
        .map_err(|e| Error::Usage(format!("--hcloud-endpoint: {e}")))?;
    HcloudProvider::new(
        HcloudSettings {
            endpoint: endpoint.to_owned(),
            token: Zeroizing::new(token),
            locations,
            golden_image,
            retry: config.hcloud.retry.policy(),
            lease: config.hcloud.lease(),
            rate_limit_wait: config.hcloud.rate_limit_wait(),
        },
        log,
    )
    .map_err(|e| Error::Usage(e.to_string()))
}

/// `--location` (a list), else the config's `hcloud.locations`; an empty name is exit 2.
pub(super) fn chosen_locations(given: &[String], config: &Config) -> Result<Vec<String>, Error> {
    let locations = if given.is_empty() {
        config.hcloud.locations.clone()
    } else {
        given.to_vec()
    };
    if locations.iter().any(|l| l.trim().is_empty()) {
        return Err(Error::Usage(
            "--location: a location name is empty; give names such as fsn1".into(),
        ));
    }
    Ok(locations)
}

pub enum Chosen {
    Hcloud(Arc<HcloudProvider>),
    Local(Arc<LocalProvider>),
}

impl Chosen {
    pub fn as_dyn(&self) -> Arc<dyn Provider> {
        match self {
            Chosen::Hcloud(p) => p.clone(),
            Chosen::Local(p) => p.clone(),
        }
    }
}

impl ProviderArgs {
    /// Check the settings and build the provider; nothing is contacted yet.
    pub fn choose(
        &self,
        config: &Config,
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Result<Chosen, Error> {
        match self.provider {
            ProviderKind::Hcloud => {
                let token = super::plugin::secret_env(&["HCLOUD_TOKEN", "PLUGIN_HCLOUD_TOKEN"])
                    .ok_or_else(|| {
                        Error::Usage(
                            "HCLOUD_TOKEN is not set: the hcloud provider needs a Hetzner Cloud API token (read & write) in that environment variable (in a Woodpecker step: the setting hcloud_token from_secret)".into(),
                        )
                    })?;
                let provider = hcloud_provider(
                    config,
                    &self.hcloud_endpoint,
                    token,
                    chosen_locations(&self.locations, config)?,
                    self.golden_image.clone(),
                    log,
                )?
                .with_ipv4(config.hcloud.ipv4);
                Ok(Chosen::Hcloud(Arc::new(provider)))
            }
            ProviderKind::Local => {
                LocalProvider::check_host().map_err(|e| Error::Usage(e.to_string()))?;
                let mut tools = Vec::new();
                for dir in &self.local_tools {
                    if !dir.is_dir() {
                        return Err(Error::Usage(format!(
                            "--local-tools {}: not a directory",
                            dir.display()
                        )));
                    }
                    tools.push(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()));
                }
                // A CA file the config names must be readable before any runner exists.
                crate::config::buildkitd_toml::golden_digest(&config.buildkitd)
                    .map_err(|e| Error::Usage(e.to_string()))?;
                Ok(Chosen::Local(Arc::new(
                    LocalProvider::new(self.local_dir.clone(), self.local_memory_scale, tools)
                        .with_buildkitd(config.buildkitd.clone()),
                )))
            }
        }
    }
}
