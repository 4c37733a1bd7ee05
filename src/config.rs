//! The launcher configuration: tier ladders, language defaults, sizing policy, spec settings.
//!
//! The contract and every default live in `schemas/launcher.ncl`, embedded in the binary. A
//! user's `--config FILE.ncl` is checked against that same contract (Nickel fills in what the
//! file leaves out); relations Nickel cannot state locally (ladders ordered by memory, unique
//! names, defaults that name a tier of their ladder) are checked here with the setting named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ncl::{self, Contract, NclError};

mod buildkitd;
pub mod buildkitd_toml;

pub use buildkitd::{BuildkitdSettings, GcSettings, RegistryHost, repository_path_ok};

pub const LAUNCHER_CONTRACT: Contract = Contract {
    name: "schemas/launcher.ncl",
    source: include_str!("../schemas/launcher.ncl"),
    fields_hint: "see schemas/launcher.ncl for the settings and their defaults",
};

/// How long the launcher's own config may take to evaluate.
const CONFIG_EVAL_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The OCI platform a runner of this architecture builds natively: `linux/amd64`.
    pub fn platform(self) -> &'static str {
        match self {
            Arch::Amd64 => "linux/amd64",
            Arch::Arm64 => "linux/arm64",
        }
    }

    /// `linux/amd64`, `linux/arm64` (and its default variant `linux/arm64/v8`, which BuildKit
    /// normalizes to `linux/arm64`): the platforms Hetzner has servers for. `None` for any
    /// other platform.
    pub fn from_platform(platform: &str) -> Option<Arch> {
        match platform {
            "linux/amd64" => Some(Arch::Amd64),
            "linux/arm64" | "linux/arm64/v8" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One server type of a ladder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gb: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_eur_per_hour: Option<f64>,
}

impl Tier {
    /// Memory a build can use: the tier's memory less what the runner itself keeps.
    pub fn usable_mib(&self, reserved_mib: u64) -> u64 {
        self.memory_mib.saturating_sub(reserved_mib)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ladders {
    pub amd64: Vec<Tier>,
    pub arm64: Vec<Tier>,
}

/// Default tier name per detected language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageDefaults {
    pub rust: String,
    pub java: String,
    pub go: String,
    pub node: String,
    pub python: String,
    pub generic: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerArch<T> {
    pub amd64: T,
    pub arm64: T,
}

impl<T> PerArch<T> {
    pub fn get(&self, arch: Arch) -> &T {
        match arch {
            Arch::Amd64 => &self.amd64,
            Arch::Arm64 => &self.arm64,
        }
    }
}

/// The history rule's parameters (SIZING.md): required = percentile(peaks) × margin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizingPolicy {
    pub percentile: f64,
    pub margin: f64,
    pub window: usize,
    pub min_samples: usize,
    pub reserved_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecSettings {
    pub file: String,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HcloudConfig {
    pub locations: Vec<String>,
    pub retry: RetryConfig,
    /// A runner's lease in seconds: renewed every third of it while its launcher lives, so a
    /// killed launcher's server is reaped this long after its last renewal.
    pub lease_s: u64,
    /// How long one API request may wait in all for the project's request budget (429s).
    pub rate_limit_wait_s: u64,
    /// Each runner gets a primary IPv4 (billed); false: IPv6-only runners.
    pub ipv4: bool,
}

impl HcloudConfig {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_s)
    }

    pub fn rate_limit_wait(&self) -> Duration {
        Duration::from_secs(self.rate_limit_wait_s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    pub attempts: u32,
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
}

impl RetryConfig {
    pub fn policy(&self) -> crate::retry::RetryPolicy {
        crate::retry::RetryPolicy {
            max_attempts: self.attempts,
            initial_delay: Duration::from_millis(self.initial_delay_ms),
            max_delay: Duration::from_millis(self.max_delay_ms),
            ..crate::retry::RetryPolicy::API
        }
    }
}

/// Where a build's cache and history live in its registry (`{repo}`: the image repository).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryLayout {
    pub cache: String,
    pub history: String,
}

impl RegistryLayout {
    /// The cache repository of the image repository `repo`.
    pub fn cache_repo(&self, repo: &str) -> String {
        self.cache.replace("{repo}", repo)
    }

    /// Which of the launcher's namespaces holds the repository `repo`, if one does: an image
    /// pushed there would overwrite a cache or feed the sizer forged samples.
    pub fn namespace_of(&self, repo: &str) -> Option<&'static str> {
        let under = |ns: &str| repo == ns || repo.starts_with(&format!("{ns}/"));
        if under(&self.history) {
            return Some("the history namespace (registry.history in the launcher config)");
        }
        let in_cache = match self.cache.split_once("{repo}") {
            Some((pre, post)) => {
                repo.len() > pre.len() + post.len() && repo.starts_with(pre) && repo.ends_with(post)
            }
            None => under(&self.cache),
        };
        in_cache.then_some("the cache namespace (registry.cache in the launcher config)")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub tiers: Ladders,
    pub language_defaults: PerArch<LanguageDefaults>,
    pub sizing: SizingPolicy,
    pub spec: SpecSettings,
    pub hcloud: HcloudConfig,
    pub buildkitd: BuildkitdSettings,
    pub registry: RegistryLayout,
    pub default_arch: Arch,
    /// Set when the operator policy took tiers out of the ladders: the ceiling, in words.
    #[serde(skip)]
    pub ceiling: Option<String>,
    /// The tiers the operator policy took out of the ladders (above its ceiling), with their
    /// architecture: a retry would have used the smallest larger one, so the plan can say why
    /// there is none.
    #[serde(skip)]
    pub above_ceiling: Vec<(Arch, Tier)>,
    /// The operator policy's ceiling in numbers (set with the policy; none by default), which
    /// the plan's candidates are held to.
    #[serde(skip)]
    pub limits: Limits,
}

/// The operator's price and memory ceiling (policy `max_eur_per_hour`, `max_memory_gb`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub eur_per_hour: Option<f64>,
    pub memory_gb: Option<f64>,
}

impl Limits {
    /// The most memory (GB) a server of `arch` may have: the policy's `max_memory_gb`, else the
    /// top of the built-in ladder (as the policy holds sizing to it), so no substitute type is
    /// larger than the biggest server a build could be sized to.
    pub fn memory_gb_for(&self, arch: Arch) -> f64 {
        self.memory_gb.unwrap_or_else(|| {
            Config::defaults()
                .ladder(arch)
                .last()
                .map_or(f64::INFINITY, |t| t.memory_mib as f64 / 1024.0)
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Nickel(#[from] NclError),
    #[error("{origin}: {setting}: {message}")]
    Invalid {
        origin: String,
        setting: String,
        message: String,
    },
}

impl Config {
    /// Load the embedded defaults, overridden by `file` when given.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        match file {
            None => Ok(Config::defaults()),
            Some(file) => Config::load_file(Some(file)),
        }
    }

    fn load_file(file: Option<&Path>) -> Result<Config, ConfigError> {
        let root = match file {
            // An operator's config may import its siblings; it is trusted, but stays in its folder.
            Some(file) => file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_owned),
            None => PathBuf::from("."),
        };
        if let Some(file) = file {
            let problem = match std::fs::metadata(file) {
                Err(_) => Some("no such file"),
                Ok(m) if m.is_dir() => Some("is a directory"),
                Ok(_) => None,
            };
            if let Some(problem) = problem {
                return Err(ConfigError::Nickel(NclError::Read {
                    path: file.to_owned(),
                    source: std::io::Error::other(problem),
                }));
            }
        }
        let mut config: Config = ncl::evaluate(file, &root, LAUNCHER_CONTRACT, CONFIG_EVAL_LIMIT)?;
        config
            .buildkitd
            .resolve_paths(&std::path::absolute(&root).unwrap_or(root));
        let origin = file.map_or_else(
            || LAUNCHER_CONTRACT.name.to_owned(),
            |f| f.display().to_string(),
        );
        config.validate(&origin)?;
        Ok(config)
    }

    /// The embedded defaults alone, evaluated once per process.
    pub fn defaults() -> Config {
        static DEFAULTS: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
        DEFAULTS
            .get_or_init(|| {
                Config::load_file(None)
                    .expect("the embedded schemas/launcher.ncl evaluates and validates")
            })
            .clone()
    }

    pub fn ladder(&self, arch: Arch) -> &[Tier] {
        match arch {
            Arch::Amd64 => &self.tiers.amd64,
            Arch::Arm64 => &self.tiers.arm64,
        }
    }

    pub fn spec_timeout(&self) -> Duration {
        Duration::from_millis(self.spec.timeout_ms)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |setting: String, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            setting,
            message,
        };
        for arch in [Arch::Amd64, Arch::Arm64] {
            let ladder = self.ladder(arch);
            for (i, pair) in ladder.windows(2).enumerate() {
                if pair[1].memory_mib <= pair[0].memory_mib {
                    return Err(invalid(
                        format!("tiers.{arch}[{}]", i + 1),
                        format!(
                            "\"{}\" ({} MiB) must have more memory than \"{}\" ({} MiB) before it; list tiers smallest first",
                            pair[1].name, pair[1].memory_mib, pair[0].name, pair[0].memory_mib
                        ),
                    ));
                }
            }
            for (i, tier) in ladder.iter().enumerate() {
                if ladder[..i].iter().any(|t| t.name == tier.name) {
                    return Err(invalid(
                        format!("tiers.{arch}[{i}]"),
                        format!("\"{}\" appears twice in the ladder", tier.name),
                    ));
                }
            }
            let defaults = self.language_defaults.get(arch);
            for (lang, name) in defaults.iter() {
                if !ladder.iter().any(|t| t.name == name) {
                    return Err(invalid(
                        format!("language_defaults.{arch}.{lang}"),
                        format!(
                            "\"{name}\" is not a tier of the {arch} ladder ({})",
                            tier_names(ladder)
                        ),
                    ));
                }
            }
        }
        if let Err((setting, message)) = self.buildkitd.validate() {
            return Err(invalid(setting, message));
        }
        if self.sizing.min_samples > self.sizing.window {
            return Err(invalid(
                "sizing.min_samples".into(),
                format!(
                    "{} is larger than sizing.window ({}), so history could never be used",
                    self.sizing.min_samples, self.sizing.window
                ),
            ));
        }
        Ok(())
    }
}

impl LanguageDefaults {
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("rust", self.rust.as_str()),
            ("java", self.java.as_str()),
            ("go", self.go.as_str()),
            ("node", self.node.as_str()),
            ("python", self.python.as_str()),
            ("generic", self.generic.as_str()),
        ]
        .into_iter()
    }
}

/// `cx23, cx33, cx43` — for error messages that list what is allowed.
pub fn tier_names(ladder: &[Tier]) -> String {
    ladder
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_match_sizing_md() {
        let c = Config::defaults();
        let names: Vec<_> = c.tiers.amd64.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["cx23", "cx33", "cx43", "cx53"]);
        let mem: Vec<_> = c.tiers.arm64.iter().map(|t| t.memory_mib).collect();
        assert_eq!(mem, [4096, 8192, 16384, 32768]);
        let prices: Vec<_> = c
            .tiers
            .amd64
            .iter()
            .map(|t| t.price_eur_per_hour.unwrap())
            .collect();
        assert_eq!(prices, [0.0064, 0.0104, 0.0210, 0.0360]);
        assert_eq!(c.sizing.percentile, 95.0);
        assert_eq!(c.sizing.margin, 1.2);
        assert_eq!(c.sizing.window, 30);
        assert_eq!(c.sizing.min_samples, 5);
        assert_eq!(c.sizing.reserved_mib, 512);
        assert_eq!(c.language_defaults.amd64.rust, "cx43");
        assert_eq!(c.language_defaults.amd64.python, "cx23");
        assert_eq!(c.language_defaults.arm64.rust, "cax31");
        assert_eq!(c.default_arch, Arch::Amd64);
        assert_eq!(c.spec.file, ".build-spec.ncl");
        assert_eq!(c.hcloud.locations, ["fsn1", "nbg1", "hel1"]);
        assert_eq!(c.hcloud.retry.policy(), crate::retry::RetryPolicy::API);
        assert_eq!(c.hcloud.lease(), Duration::from_secs(600));
        assert_eq!(c.hcloud.rate_limit_wait(), Duration::from_secs(600));
        assert!(
            c.hcloud.ipv4,
            "runners get a primary IPv4 unless the config says otherwise"
        );
    }

    fn load_str(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("launcher.ncl");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path))
    }

    #[test]
    fn a_file_overrides_one_part_and_keeps_the_rest() {
        let c =
            load_str("{ sizing.margin = 1.5, language_defaults.amd64.python = \"cx33\" }").unwrap();
        assert_eq!(c.sizing.margin, 1.5);
        assert_eq!(c.sizing.window, 30);
        assert_eq!(c.language_defaults.amd64.python, "cx33");
        assert_eq!(c.language_defaults.amd64.rust, "cx43");
        assert_eq!(c.tiers.amd64.len(), 4);
    }

    #[test]
    fn unordered_ladder_is_refused_with_the_setting_named() {
        let err = load_str(
            r#"{ tiers.amd64 = [
                { name = "cx33", vcpus = 4, memory_mib = 8192, disk_gb = 80 },
                { name = "cx23", vcpus = 2, memory_mib = 4096, disk_gb = 40 } ],
                language_defaults.amd64 = { rust = "cx33", java = "cx33", go = "cx33", node = "cx33", python = "cx33", generic = "cx33" } }"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tiers.amd64[1]"), "{err}");
        assert!(err.contains("smallest first"), "{err}");
    }

    #[test]
    fn a_default_outside_the_ladder_is_refused() {
        let err = load_str("{ language_defaults.amd64.go = \"cx99\" }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("language_defaults.amd64.go"), "{err}");
        assert!(err.contains("cx23, cx33, cx43, cx53"), "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_values_fail_with_a_location() {
        let err = load_str("{\n  sizing.marginn = 1.5 }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("launcher.ncl:2:"), "{err}");
        assert!(err.contains("marginn"), "{err}");
        let err = load_str("{ sizing.margin = 9 }").unwrap_err().to_string();
        assert!(err.contains("between 1 and 4"), "{err}");
    }
}
