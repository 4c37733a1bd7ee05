//! Deciding how big a build's server must be, and saying why (SIZING.md).
//!
//! First that applies wins: the repository's spec file, then the percentile of recent peak
//! memory × margin, then the language default. [`decide`] is pure: its inputs are already read.

pub mod language;
pub mod rules;
pub mod spec;

use serde::Serialize;

use crate::config::{Arch, Config, Tier};
use crate::history::{HistoryKey, Sample};
pub use language::Language;
pub use spec::{BuildSpec, LoadedSpec, SpecError};

/// Where a size came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Spec,
    History,
    Default,
}

/// Everything sizing knows before deciding.
pub struct SizingInput<'a> {
    pub config: &'a Config,
    /// `--arch`, when given.
    pub arch_flag: Option<Arch>,
    pub spec: Option<&'a LoadedSpec>,
    pub language: Language,
    /// The file that gave the language away (`Cargo.toml`), if any.
    pub language_marker: Option<&'static str>,
    pub key: &'a HistoryKey,
    /// Recent successful samples of the key, oldest first (at most `window`).
    pub history: &'a [Sample],
    /// The history store could not be read (the build goes on without it).
    pub history_unreadable: bool,
}

/// The decision, with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sizing {
    pub arch: Arch,
    pub source: Source,
    /// Index of the chosen tier in the arch's ladder.
    #[serde(skip)]
    pub tier_index: usize,
    pub tier: Tier,
    pub retry_tier: Option<Tier>,
    /// The memory the decision asked for, MiB (spec request or percentile × margin).
    pub required_memory_mib: Option<u64>,
    /// The percentile of recent peaks, MiB, when history decided.
    pub percentile_mib: Option<u64>,
    /// Successful builds of the key that history had.
    pub samples: usize,
    pub language: Language,
    pub timeout_minutes: Option<u64>,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SizingError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(
        "{}: arch: the spec asks for {spec} but --arch/--platform asks for {flag}; remove one of them",
        path.display()
    )]
    ArchConflict {
        path: std::path::PathBuf,
        spec: Arch,
        flag: Arch,
    },
    #[error(
        "no {arch} server type is within the ceiling: {ceiling} (a type without a known price counts as above a price ceiling)"
    )]
    NoTier { arch: Arch, ceiling: String },
}

/// The runner's architecture: `--arch` (or this platform of `--platform`), else the spec's
/// `arch`, else the config's `default_arch`. A flag and a spec that disagree are an error.
pub fn choose_arch(
    flag: Option<Arch>,
    spec: Option<&LoadedSpec>,
    default: Arch,
) -> Result<Arch, SizingError> {
    let spec_arch = spec.and_then(|s| s.spec.arch());
    match (flag, spec_arch, spec) {
        (Some(flag), Some(spec), Some(loaded)) if flag != spec => Err(SizingError::ArchConflict {
            path: loaded.path.clone(),
            spec,
            flag,
        }),
        (Some(flag), _, _) => Ok(flag),
        (None, Some(spec), _) => Ok(spec),
        (None, None, _) => Ok(default),
    }
}

pub fn decide(input: &SizingInput<'_>) -> Result<Sizing, SizingError> {
    let config = input.config;
    let arch = choose_arch(input.arch_flag, input.spec, config.default_arch)?;
    let ladder = config.ladder(arch);
    if ladder.is_empty() {
        return Err(SizingError::NoTier {
            arch,
            ceiling: config
                .ceiling
                .clone()
                .unwrap_or_else(|| "the launcher config".to_owned()),
        });
    }
    let policy = &config.sizing;
    let peaks: Vec<u64> = input.history.iter().map(|s| s.peak_memory_mib).collect();
    let samples = peaks.len().min(policy.window);
    let timeout_minutes = input.spec.and_then(|s| s.spec.timeout_minutes);

    let decision = |source, index: usize, required, percentile, reason: String| Sizing {
        arch,
        source,
        tier_index: index,
        tier: ladder[index].clone(),
        retry_tier: ladder.get(index + 1).cloned(),
        required_memory_mib: required,
        percentile_mib: percentile,
        samples,
        language: input.language,
        timeout_minutes,
        reason,
    };

    if let Some(loaded) = input.spec
        && let Some(index) = loaded.choose(arch, ladder, config.ceiling.as_deref())?
    {
        let file = loaded.path.file_name().map_or_else(
            || loaded.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let reason = match &loaded.spec.tier {
            Some(name) => format!("the spec file {file} names the server type {name}"),
            None => format!(
                "the spec file {file} asks for {}; {} is the smallest {arch} tier with that ({})",
                spec::describe_request(&loaded.spec),
                ladder[index].name,
                spec::describe_tier(&ladder[index])
            ),
        };
        return Ok(decision(
            Source::Spec,
            index,
            loaded.spec.memory_mib(),
            None,
            reason,
        ));
    }

    if let Some(need) = rules::history_need(&peaks, policy) {
        let required = need.required_mib.ceil() as u64;
        let head = format!(
            "p{} of the last {samples} successful builds of {} is {} MiB; × {} = {} MiB",
            fmt_num(policy.percentile),
            input.key,
            need.percentile_mib,
            fmt_num(policy.margin),
            required
        );
        let fit = rules::smallest_fitting(ladder, need.required_mib, policy.reserved_mib);
        let index = fit.unwrap_or(ladder.len() - 1);
        let tier = &ladder[index];
        let usable = tier.usable_mib(policy.reserved_mib);
        let reason = match fit {
            Some(_) => format!(
                "{head}, which {} covers with {usable} MiB usable ({} MiB less {} MiB reserved)",
                tier.name, tier.memory_mib, policy.reserved_mib
            ),
            None => format!(
                "{head}, more than any {arch} tier offers; using the largest, {} ({usable} MiB usable)",
                tier.name
            ),
        };
        return Ok(decision(
            Source::History,
            index,
            Some(required),
            Some(need.percentile_mib),
            reason,
        ));
    }

    let name = input
        .language
        .default_tier(config.language_defaults.get(arch));
    // Config validation guarantees every default names a tier of its ladder.
    let index = rules::index_of(ladder, name).unwrap_or(0);
    let why_not_history = if input.history_unreadable {
        "the history store could not be read".to_owned()
    } else if samples == 0 {
        "no successful builds of this key in history".to_owned()
    } else {
        format!(
            "only {samples} of the {} successful builds history needs",
            policy.min_samples
        )
    };
    let why_not_spec = match input.spec {
        Some(_) => "the spec file sets no size",
        None => "no spec file",
    };
    let detected = match input.language_marker {
        Some(marker) => format!("{} (found {marker})", input.language),
        None => format!("{} (no language marker found)", input.language),
    };
    let reason = format!(
        "{why_not_spec} and {why_not_history}; the {arch} default for {detected} is {}",
        ladder[index].name
    );
    Ok(decision(Source::Default, index, None, None, reason))
}

/// `95`, `1.2`: numbers as a person writes them.
pub fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        let s = format!("{x:.4}");
        s.trim_end_matches('0').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key() -> HistoryKey {
        HistoryKey {
            repo: "org/app".into(),
            dockerfile: "Dockerfile".into(),
            target: None,
            arch: Arch::Amd64,
        }
    }

    fn samples(peaks: &[u64]) -> Vec<Sample> {
        peaks
            .iter()
            .map(|&p| Sample {
                ts: "2026-11-01T00:00:00Z".into(),
                repo: "org/app".into(),
                dockerfile: "Dockerfile".into(),
                target: None,
                lang: None,
                tier: None,
                peak_memory_mib: p,
                duration_s: 100.0,
                outcome: Default::default(),
                arch: None,
            })
            .collect()
    }

    fn decide_with(
        spec_text: Option<&str>,
        arch_flag: Option<Arch>,
        peaks: &[u64],
        language: Language,
    ) -> Result<Sizing, SizingError> {
        let config = Config::defaults();
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_text.map(|text| {
            let path = dir.path().join(".build-spec.ncl");
            std::fs::write(&path, text).unwrap();
            LoadedSpec::load(&path, dir.path(), Duration::from_secs(5)).unwrap()
        });
        let history = samples(peaks);
        decide(&SizingInput {
            config: &config,
            arch_flag,
            spec: spec.as_ref(),
            language,
            language_marker: None,
            key: &key(),
            history: &history,
            history_unreadable: false,
        })
    }

    #[test]
    fn spec_beats_history_beats_default() {
        let s = decide_with(
            Some("{ memory_gb = 16 }"),
            None,
            &[1000; 10],
            Language::Rust,
        )
        .unwrap();
        assert_eq!((s.source, s.tier.name.as_str()), (Source::Spec, "cx43"));
        assert_eq!(s.required_memory_mib, Some(16384));
        let s = decide_with(None, None, &[1000; 10], Language::Rust).unwrap();
        assert_eq!((s.source, s.tier.name.as_str()), (Source::History, "cx23"));
        let s = decide_with(None, None, &[1000; 4], Language::Rust).unwrap();
        assert_eq!((s.source, s.tier.name.as_str()), (Source::Default, "cx43"));
        assert!(s.reason.contains("only 4 of the 5"), "{}", s.reason);
    }

    #[test]
    fn history_rule_is_p95_times_margin_against_usable_memory() {
        // 20 samples: p95 is the 19th smallest = 3000; × 1.2 = 3600 > 3584 usable on cx23.
        let mut peaks: Vec<u64> = vec![1000; 18];
        peaks.extend([3000, 9000]);
        let s = decide_with(None, None, &peaks, Language::Generic).unwrap();
        assert_eq!(s.percentile_mib, Some(3000));
        assert_eq!(s.required_memory_mib, Some(3600));
        assert_eq!(s.tier.name, "cx33");
        assert_eq!(s.retry_tier.as_ref().unwrap().name, "cx43");
        assert_eq!(s.samples, 20);
        assert!(
            s.reason
                .starts_with("p95 of the last 20 successful builds of org/app (Dockerfile) is 3000 MiB; × 1.2 = 3600 MiB"),
            "{}",
            s.reason
        );
    }

    #[test]
    fn history_beyond_the_top_tier_takes_the_top_tier() {
        let s = decide_with(None, None, &[40_000; 5], Language::Generic).unwrap();
        assert_eq!(s.tier.name, "cx53");
        assert_eq!(s.retry_tier, None);
        assert!(
            s.reason.contains("more than any amd64 tier offers"),
            "{}",
            s.reason
        );
    }

    #[test]
    fn language_defaults_follow_the_arch_ladder() {
        let cases = [
            (Language::Rust, "cx43", "cax31"),
            (Language::Java, "cx43", "cax31"),
            (Language::Go, "cx33", "cax21"),
            (Language::Node, "cx33", "cax21"),
            (Language::Python, "cx23", "cax11"),
            (Language::Generic, "cx33", "cax21"),
        ];
        for (lang, amd, arm) in cases {
            let s = decide_with(None, None, &[], lang).unwrap();
            assert_eq!(s.tier.name, amd, "{lang}");
            let s = decide_with(None, Some(Arch::Arm64), &[], lang).unwrap();
            assert_eq!(s.tier.name, arm, "{lang}");
        }
    }

    #[test]
    fn spec_arch_picks_the_ladder_and_a_conflicting_flag_is_an_error() {
        let s = decide_with(Some("{ arch = \"arm64\" }"), None, &[], Language::Rust).unwrap();
        assert_eq!((s.source, s.tier.name.as_str()), (Source::Default, "cax31"));
        assert!(
            s.reason.starts_with("the spec file sets no size"),
            "{}",
            s.reason
        );
        let err = decide_with(
            Some("{ arch = \"arm64\" }"),
            Some(Arch::Amd64),
            &[],
            Language::Rust,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("the spec asks for arm64 but --arch/--platform asks for amd64"),
            "{err}"
        );
    }

    #[test]
    fn top_tier_has_no_retry() {
        let s = decide_with(Some("{ tier = \"cx53\" }"), None, &[], Language::Rust).unwrap();
        assert_eq!(s.retry_tier, None);
    }
}
