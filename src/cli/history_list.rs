//! `buildkit-launcher history list`: every key of a history file or a registry with its builds,
//! the tier of its latest build, the trend of its peak memory and what its builds cost per week.

use std::collections::BTreeMap;
use std::io::Write;

use clap::Args;
use serde::Serialize;

use crate::config::Config;
use crate::exit::{Error, Exit};
use crate::history::{Outcome, Sample, StoreSpec};
use crate::sizing::rules::billed_hours;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The history to read: file:PATH or registry (default at a terminal: the state-directory
    /// file). In a registry every key is a repository beneath registry.history; listing them
    /// needs the registry's repository list (GET /v2/_catalog).
    #[arg(long, value_name = "STORE")]
    pub history: Option<StoreSpec>,
    #[command(flatten)]
    pub access: super::history::RegistryAccess,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Samples read per key from a registry: the newest, as many as it keeps.
const PER_KEY: usize = crate::history::registry::DEFAULT_RETENTION;

/// One key's builds.
#[derive(Debug, Serialize, PartialEq)]
pub struct KeyRow {
    pub key: String,
    pub builds: usize,
    pub failed_or_oom: usize,
    pub last_tier: Option<String>,
    /// Peak memory of the key's successful builds, oldest first (the last 30).
    pub peak_mib: Vec<u64>,
    /// What the key's builds of the 7 days before the newest sample cost, at the config's
    /// reference prices, each runner's primary IPv4 included (started hours; `None` where a
    /// tier has no price).
    pub eur_last_week: Option<f64>,
}

pub fn run(args: ListArgs, config: &Config, out: &mut dyn Write) -> Result<Exit, Error> {
    let spec = args
        .history
        .clone()
        .unwrap_or_else(StoreSpec::terminal_default);
    let mut samples = Vec::new();
    let place = match &spec {
        StoreSpec::File(path) => {
            for w in crate::history::file::read_samples(path, |s| samples.push(s))? {
                super::warn(&w);
            }
            path.display().to_string()
        }
        StoreSpec::Registry => {
            let Some(registry) = args.access.registry.clone() else {
                return Err(Error::Usage(format!(
                    "{} registry lists the history kept in a registry: set {}",
                    crate::exit::option("--history"),
                    crate::exit::option("--registry"),
                )));
            };
            let credentials =
                super::args::registry_credentials(args.access.registry_user.as_deref())?;
            let store = crate::history::registry::RegistryStore::new(
                registry,
                args.access.insecure_registry,
                credentials,
                0,
            )
            .with_namespace(&config.registry.history);
            let recent = store.every_key(PER_KEY)?;
            for w in &recent.warnings {
                super::warn(w);
            }
            samples = recent.samples;
            crate::history::HistoryStore::describe(&store)
        }
        StoreSpec::None => {
            return Err(Error::Usage(format!(
                "{} none keeps no history: there is nothing to list",
                crate::exit::option("--history")
            )));
        }
    };
    let rows = rows(&samples, config);
    if args.json {
        let json = serde_json::to_string_pretty(&rows).expect("rows serialize");
        writeln!(out, "{json}").map_err(Error::Output)?;
        return Ok(Exit::Success);
    }
    use std::io::IsTerminal;
    let chart = std::io::stdout().is_terminal();
    let mut text = format!("{} key(s) in {place}\n\n", rows.len());
    text.push_str(&format!(
        "  {:<44} {:>6} {:>6} {:<7} {:<24} {:>10}\n",
        "key", "builds", "failed", "tier", "peak MiB (first → last)", "EUR/week"
    ));
    for r in &rows {
        let trend = match (r.peak_mib.first(), r.peak_mib.last()) {
            (Some(a), Some(b)) if chart => format!("{a} → {b} {}", sparkline(&r.peak_mib)),
            (Some(a), Some(b)) => format!("{a} → {b}"),
            _ => "-".into(),
        };
        text.push_str(&format!(
            "  {:<44} {:>6} {:>6} {:<7} {:<24} {:>10}\n",
            crate::exit::escape_controls(&r.key),
            r.builds,
            r.failed_or_oom,
            r.last_tier.as_deref().unwrap_or("-"),
            trend,
            r.eur_last_week
                .map_or_else(|| "-".into(), |e| format!("{e:.4}"))
        ));
    }
    write!(out, "{text}").map_err(Error::Output)?;
    Ok(Exit::Success)
}

/// The keys, in name order.
pub fn rows(samples: &[Sample], config: &Config) -> Vec<KeyRow> {
    let mut by_key: BTreeMap<String, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        let key = match &s.target {
            Some(t) => format!("{} {} --target {t} ({})", s.repo, s.dockerfile, arch(s)),
            None => format!("{} {} ({})", s.repo, s.dockerfile, arch(s)),
        };
        by_key.entry(key).or_default().push(s);
    }
    let ipv4 = if config.hcloud.ipv4 {
        crate::provider::hcloud::catalogue::IPV4_EUR_PER_HOUR
    } else {
        0.0
    };
    let price = |tier: &str| {
        config
            .tiers
            .amd64
            .iter()
            .chain(&config.tiers.arm64)
            .find(|t| t.name == tier)
            .and_then(|t| t.price_eur_per_hour)
            // Each runner's primary IPv4 is billed per started hour too.
            .map(|p| p + ipv4)
    };
    by_key
        .into_iter()
        .map(|(key, samples)| {
            let ok: Vec<u64> = samples
                .iter()
                .filter(|s| s.outcome == Outcome::Ok)
                .map(|s| s.peak_memory_mib)
                .collect();
            let newest = samples.iter().filter_map(|s| timestamp(&s.ts)).max();
            let week: Vec<&&Sample> = samples
                .iter()
                .filter(|s| match (timestamp(&s.ts), newest) {
                    (Some(t), Some(n)) => n.saturating_sub(t) < 7 * 86_400,
                    _ => false,
                })
                .collect();
            let eur_last_week = week.iter().try_fold(0.0, |sum, s| {
                let p = price(s.tier.as_deref()?)?;
                Some(sum + billed_hours(s.duration_s) * p)
            });
            KeyRow {
                builds: samples.len(),
                failed_or_oom: samples.iter().filter(|s| s.outcome != Outcome::Ok).count(),
                last_tier: samples.last().and_then(|s| s.tier.clone()),
                peak_mib: ok[ok.len().saturating_sub(30)..].to_vec(),
                eur_last_week,
                key,
            }
        })
        .collect()
}

fn arch(s: &Sample) -> String {
    s.arch.unwrap_or(crate::config::Arch::Amd64).to_string()
}

fn timestamp(ts: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(ts.trim_end_matches('Z'))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

/// Eight levels of block, lowest to highest value.
fn sparkline(values: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let (lo, hi) = (
        *values.iter().min().unwrap_or(&0),
        *values.iter().max().unwrap_or(&0),
    );
    values
        .iter()
        .map(|v| {
            let i = if hi == lo {
                0
            } else {
                ((v - lo) * 7 / (hi - lo)) as usize
            };
            BARS[i]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(repo: &str, ts: &str, tier: &str, peak: u64, outcome: Outcome) -> Sample {
        Sample {
            ts: ts.into(),
            repo: repo.into(),
            dockerfile: "Dockerfile".into(),
            target: None,
            lang: None,
            tier: Some(tier.into()),
            arch: None,
            peak_memory_mib: peak,
            duration_s: 600.0,
            outcome,
        }
    }

    #[test]
    fn keys_with_their_builds_trend_and_weekly_cost() {
        let config = Config::defaults();
        let samples = vec![
            sample("org/a", "2026-11-01T00:00:00Z", "cx23", 1000, Outcome::Ok),
            sample("org/a", "2026-11-20T00:00:00Z", "cx23", 3000, Outcome::Oom),
            sample("org/a", "2026-11-21T00:00:00Z", "cx33", 3500, Outcome::Ok),
            sample("org/b", "2026-11-21T00:00:00Z", "cx43", 9000, Outcome::Ok),
        ];
        let rows = rows(&samples, &config);
        assert_eq!(rows.len(), 2);
        let a = &rows[0];
        assert_eq!(a.key, "org/a Dockerfile (amd64)");
        assert_eq!((a.builds, a.failed_or_oom), (3, 1));
        assert_eq!(a.last_tier.as_deref(), Some("cx33"));
        assert_eq!(a.peak_mib, [1000, 3500]);
        // The week before 2026-11-21: one started hour on cx23 and one on cx33, each with its
        // primary IPv4.
        let eur = a.eur_last_week.unwrap();
        assert!(
            (eur - (0.0064 + 0.0104 + 2.0 * 0.0008)).abs() < 1e-9,
            "{eur}"
        );
        assert_eq!(sparkline(&[1, 5, 9]), "▁▄█");
    }
}
