//! Build history: what finished builds needed, the source of the percentile sizing rule.
//!
//! A [`HistoryStore`] answers "the most recent successful builds of this key" and takes new
//! samples. `file:PATH` keeps JSON lines on disk; `none` remembers nothing. The store is picked
//! by a `STORE` string (see [`StoreSpec`]).

pub mod file;
pub mod registry;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Arch;
pub use file::FileStore;

/// One finished build, one JSON line. Also the `simulate` trace format, where `tier` and
/// `outcome` are absent (and mean `ok`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub ts: String,
    pub repo: String,
    pub dockerfile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The runner's architecture. Absent in samples written before the architecture was part
    /// of the key (and in `simulate` traces): those count as `amd64`, the only architecture
    /// most of them can have had (see [`HistoryKey::matches`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    pub peak_memory_mib: u64,
    pub duration_s: f64,
    #[serde(default)]
    pub outcome: Outcome,
}

impl Sample {
    /// The architecture it was built on. Samples written before the architecture was part of
    /// the key say it by their tier: Hetzner's ARM types are the `cax` ones; anything else (and
    /// a trace without a tier) counts as amd64.
    pub fn arch(&self) -> Arch {
        self.arch.unwrap_or_else(|| match &self.tier {
            Some(tier) if tier.starts_with("cax") => Arch::Arm64,
            _ => Arch::Amd64,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    #[default]
    Ok,
    Oom,
    Failed,
}

/// What history is kept per: (repo, dockerfile[, target], arch). An arm64 build of the same
/// Dockerfile is its own key: another compiler, other memory needs, another ladder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct HistoryKey {
    pub repo: String,
    pub dockerfile: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub arch: Arch,
}

impl HistoryKey {
    pub fn matches(&self, sample: &Sample) -> bool {
        self.repo == sample.repo
            && self.dockerfile == sample.dockerfile
            && self.target == sample.target
            && self.arch == sample.arch()
    }
}

impl std::fmt::Display for HistoryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}", self.repo, self.dockerfile)?;
        if let Some(target) = &self.target {
            write!(f, ", target {target}")?;
        }
        if self.arch != Arch::Amd64 {
            write!(f, ", {}", self.arch)?;
        }
        f.write_str(")")
    }
}

/// The most recent successful samples of a key, oldest first, and what was skipped reading them.
#[derive(Debug, Default)]
pub struct Recent {
    pub samples: Vec<Sample>,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history store {}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// `file:PATH` names something that is not a history file: a device, a FIFO, a symlink, a
    /// directory, or a file larger than [`file::MAX_HISTORY_BYTES`]. A setting to fix (exit 2),
    /// not a store that is down.
    #[error("history file {}: {what}", crate::text::escape_controls(&path.display().to_string()))]
    NotAHistoryFile { path: PathBuf, what: String },
    #[error("history store \"{0}\" is not valid: use file:PATH, registry or none")]
    BadSpec(String),
    #[error("history store \"registry\" is not available yet; use file:PATH or none")]
    RegistryUnavailable,
}

pub trait HistoryStore {
    /// The last `window` successful samples for `key`, oldest first.
    fn recent(&self, key: &HistoryKey, window: usize) -> Result<Recent, HistoryError>;
    /// Record a finished build.
    fn append(&self, sample: &Sample) -> Result<(), HistoryError>;
    /// Where the samples live, for explanations (`file:/var/lib/…`).
    fn describe(&self) -> String;
}

/// Remembers nothing: every build is sized from its spec or language default.
pub struct NoHistory;

impl HistoryStore for NoHistory {
    fn recent(&self, _key: &HistoryKey, _window: usize) -> Result<Recent, HistoryError> {
        Ok(Recent::default())
    }
    fn append(&self, _sample: &Sample) -> Result<(), HistoryError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "none".into()
    }
}

/// A parsed `STORE` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    File(PathBuf),
    Registry,
    None,
}

impl std::str::FromStr for StoreSpec {
    type Err = HistoryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(StoreSpec::None),
            "registry" => Ok(StoreSpec::Registry),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(StoreSpec::File(PathBuf::from(path))),
                _ => Err(HistoryError::BadSpec(s.to_owned())),
            },
        }
    }
}

impl StoreSpec {
    /// The terminal default: a JSONL file under the user's state directory.
    pub fn terminal_default() -> StoreSpec {
        let base = dirs::state_dir()
            .or_else(dirs::data_local_dir)
            .unwrap_or_else(std::env::temp_dir);
        StoreSpec::File(base.join("buildkit-launcher").join("history.jsonl"))
    }

    pub fn open(&self) -> Result<Box<dyn HistoryStore>, HistoryError> {
        match self {
            StoreSpec::File(path) => Ok(Box::new(FileStore::new(path.clone()))),
            StoreSpec::None => Ok(Box::new(NoHistory)),
            StoreSpec::Registry => Err(HistoryError::RegistryUnavailable),
        }
    }
}

impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSpec::File(p) => write!(f, "file:{}", p.display()),
            StoreSpec::Registry => f.write_str("registry"),
            StoreSpec::None => f.write_str("none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_specs_parse() {
        assert_eq!("none".parse::<StoreSpec>().unwrap(), StoreSpec::None);
        assert_eq!(
            "file:/tmp/h.jsonl".parse::<StoreSpec>().unwrap(),
            StoreSpec::File("/tmp/h.jsonl".into())
        );
        for bad in ["file:", "s3://x", ""] {
            let err = bad.parse::<StoreSpec>().unwrap_err().to_string();
            assert!(err.contains("file:PATH, registry or none"), "{err}");
        }
    }

    #[test]
    fn samples_without_an_arch_count_by_their_tier() {
        let line = |tier: &str| {
            serde_json::from_str::<Sample>(&format!(
                r#"{{"ts": "t", "repo": "a/b", "dockerfile": "Dockerfile", {tier} "peak_memory_mib": 1, "duration_s": 1}}"#
            ))
            .unwrap()
        };
        assert_eq!(line(r#""tier": "cax21","#).arch(), Arch::Arm64);
        assert_eq!(line(r#""tier": "cx33","#).arch(), Arch::Amd64);
        assert_eq!(line("").arch(), Arch::Amd64);
        assert_eq!(
            line(r#""tier": "cx33", "arch": "arm64","#).arch(),
            Arch::Arm64
        );
    }

    #[test]
    fn trace_lines_without_tier_or_outcome_mean_ok() {
        let s: Sample = serde_json::from_str(
            r#"{"ts": "2026-01-08T09:04:00Z", "repo": "a/b", "dockerfile": "Dockerfile", "lang": "node", "peak_memory_mib": 3835, "duration_s": 991}"#,
        )
        .unwrap();
        assert_eq!(s.outcome, Outcome::Ok);
        assert_eq!(s.tier, None);
    }
}
