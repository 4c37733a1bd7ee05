//! History keys and samples for the tests of the registry history store.

use buildkit_launcher::history::{HistoryKey, Outcome, Sample};

/// The amd64 key of `repo`'s `dockerfile`, no target.
pub fn key(repo: &str, dockerfile: &str) -> HistoryKey {
    HistoryKey {
        repo: repo.into(),
        dockerfile: dockerfile.into(),
        target: None,
        arch: buildkit_launcher::config::Arch::Amd64,
    }
}

/// A sample of `key` that peaked at `peak` MiB, one minute on a cx33.
pub fn sample(key: &HistoryKey, peak: u64, outcome: Outcome) -> Sample {
    Sample {
        ts: "2026-11-01T00:00:00Z".into(),
        repo: key.repo.clone(),
        dockerfile: key.dockerfile.clone(),
        target: key.target.clone(),
        lang: Some("rust".into()),
        tier: Some("cx33".into()),
        peak_memory_mib: peak,
        arch: None,
        duration_s: 60.0,
        outcome,
    }
}
