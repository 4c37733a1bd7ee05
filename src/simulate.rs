//! The sizing what-if (SIZING.md, "The simulation"): replay a history file through the sizing
//! rule and compare its cost with the oracle (smallest fitting tier) and a fixed-size baseline.
//!
//! The rule itself is [`crate::sizing::rules`], the same code `plan` uses, so the simulation
//! measures what the launcher really does.

use std::collections::HashMap;

use serde::Serialize;

use crate::config::{SizingPolicy, Tier};
use crate::history::Sample;
use crate::sizing::Language;
use crate::sizing::rules::{billed_hours, history_need, index_of, smallest_fitting};

/// Everything the replay depends on.
pub struct SimParams<'a> {
    pub policy: SizingPolicy,
    pub ladder: &'a [Tier],
    /// Per-tier hourly prices, aligned with `ladder`.
    pub prices: Vec<f64>,
    /// Each runner's primary IPv4, per started hour (0 for IPv6-only runners).
    pub ipv4_eur_per_hour: f64,
    /// Default tier index per language.
    pub default_for: &'a dyn Fn(Language) -> usize,
    /// The fixed baseline's tier index.
    pub fixed: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SimReport {
    pub builds: usize,
    pub unbuildable: usize,
    pub policy_cost: f64,
    pub oracle_cost: f64,
    pub cost_ratio_vs_oracle: f64,
    pub oom_retries: usize,
    pub oom_rate: f64,
    pub failures: usize,
    pub fixed_cost: f64,
    pub fixed_cost_ratio_vs_oracle: f64,
    pub fixed_failures: usize,
    pub sized_by_history: usize,
    pub sized_by_default: usize,
    /// The primary IPv4's hourly price counted on every runner (0: IPv6-only runners).
    pub ipv4_eur_per_hour: f64,
}

/// Replay `builds` in order.
pub fn simulate(builds: &[Sample], p: &SimParams<'_>) -> SimReport {
    let reserved = p.policy.reserved_mib;
    let fits = |t: usize, peak: u64| p.ladder[t].usable_mib(reserved) >= peak;
    // A runner is billed per started hour for its server and its primary IPv4.
    let hourly = |t: usize| p.prices[t] + p.ipv4_eur_per_hour;
    let fit_cost = |t: usize, d: f64| billed_hours(d) * hourly(t);
    let oom_cost = |t: usize, d: f64| billed_hours(0.5 * d) * hourly(t);
    let top = p.ladder.len() - 1;

    let mut r = SimReport {
        builds: builds.len(),
        ipv4_eur_per_hour: p.ipv4_eur_per_hour,
        ..SimReport::default()
    };
    let mut history: HashMap<(&str, &str, Option<&str>), Vec<u64>> = HashMap::new();

    for b in builds {
        let (peak, d) = (b.peak_memory_mib, b.duration_s);
        let Some(oracle) = (0..=top).find(|&t| fits(t, peak)) else {
            r.unbuildable += 1;
            continue;
        };
        r.oracle_cost += fit_cost(oracle, d);

        // Fixed baseline: one static size.
        if fits(p.fixed, peak) {
            r.fixed_cost += fit_cost(p.fixed, d);
        } else {
            r.fixed_cost += oom_cost(p.fixed, d);
            r.fixed_failures += 1;
        }

        // The policy, from what earlier lines taught.
        let key = (b.repo.as_str(), b.dockerfile.as_str(), b.target.as_deref());
        let peaks = history.entry(key).or_default();
        let tier = match history_need(peaks, &p.policy) {
            Some(need) => {
                r.sized_by_history += 1;
                smallest_fitting(p.ladder, need.required_mib, reserved).unwrap_or(top)
            }
            None => {
                r.sized_by_default += 1;
                (p.default_for)(Language::from_name(b.lang.as_deref().unwrap_or("")))
            }
        };
        let succeeded = if fits(tier, peak) {
            r.policy_cost += fit_cost(tier, d);
            true
        } else {
            r.policy_cost += oom_cost(tier, d);
            r.oom_retries += 1;
            if tier < top && fits(tier + 1, peak) {
                r.policy_cost += fit_cost(tier + 1, d);
                true
            } else {
                if tier < top {
                    r.policy_cost += oom_cost(tier + 1, d);
                }
                r.failures += 1;
                false
            }
        };
        if succeeded {
            peaks.push(peak);
            // Only the last `window` ever matter; keep memory flat on long traces.
            if peaks.len() > 2 * p.policy.window {
                peaks.drain(..peaks.len() - p.policy.window);
            }
        }
    }
    // Sums of 4-decimal prices pick up float noise (9.231999999999992); a nanoeuro is plenty.
    let round = |x: f64| (x * 1e9).round() / 1e9;
    r.policy_cost = round(r.policy_cost);
    r.oracle_cost = round(r.oracle_cost);
    r.fixed_cost = round(r.fixed_cost);
    let ratio = |x: f64| {
        if r.oracle_cost > 0.0 {
            x / r.oracle_cost
        } else {
            0.0
        }
    };
    r.cost_ratio_vs_oracle = ratio(r.policy_cost);
    r.fixed_cost_ratio_vs_oracle = ratio(r.fixed_cost);
    r.oom_rate = if r.builds > 0 {
        r.oom_retries as f64 / r.builds as f64
    } else {
        0.0
    };
    r
}

/// Resolve a tier name on the ladder for the fixed baseline.
pub fn fixed_index(ladder: &[Tier], name: &str) -> Option<usize> {
    index_of(ladder, name)
}

/// The readable table.
pub fn render(r: &SimReport, title: &str, fixed_name: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{title}: {} builds ({} fit no tier and are left out)\n\n",
        r.builds, r.unbuildable
    ));
    out.push_str("              cost EUR   vs oracle   OOM retries   failures\n");
    out.push_str(&format!(
        "  policy    {:>10.4}   {:>9.4}   {:>11}   {:>8}\n",
        r.policy_cost, r.cost_ratio_vs_oracle, r.oom_retries, r.failures
    ));
    out.push_str(&format!(
        "  oracle    {:>10.4}   {:>9.4}   {:>11}   {:>8}\n",
        r.oracle_cost, 1.0, "-", "-"
    ));
    out.push_str(&format!(
        "  fixed {:<4}{:>10.4}   {:>9.4}   {:>11}   {:>8}\n\n",
        fixed_name, r.fixed_cost, r.fixed_cost_ratio_vs_oracle, "-", r.fixed_failures
    ));
    out.push_str(&format!(
        "sized by history: {}, by language default: {}; OOM rate {:.2}%\n",
        r.sized_by_history,
        r.sized_by_default,
        r.oom_rate * 100.0
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn sample(repo: &str, lang: &str, peak: u64, d: f64) -> Sample {
        Sample {
            ts: String::new(),
            repo: repo.into(),
            dockerfile: "Dockerfile".into(),
            target: None,
            lang: Some(lang.into()),
            tier: None,
            peak_memory_mib: peak,
            arch: None,
            duration_s: d,
            outcome: Default::default(),
        }
    }

    fn run(builds: &[Sample]) -> SimReport {
        run_with_ipv4(builds, 0.0)
    }

    fn run_with_ipv4(builds: &[Sample], ipv4: f64) -> SimReport {
        let config = Config::defaults();
        let ladder = config.tiers.amd64.clone();
        // SIZING.md's simulation prices, not the defaults' (which follow Hetzner's), so the
        // arithmetic below stays readable.
        let prices = vec![0.0080, 0.0128, 0.0240, 0.0464];
        let defaults = config.language_defaults.amd64.clone();
        let l2 = ladder.clone();
        let default_for =
            move |lang: Language| index_of(&l2, lang.default_tier(&defaults)).unwrap();
        simulate(
            builds,
            &SimParams {
                policy: config.sizing.clone(),
                ladder: &ladder,
                prices,
                ipv4_eur_per_hour: ipv4,
                default_for: &default_for,
                fixed: 2,
            },
        )
    }

    #[test]
    fn oom_on_default_retries_on_next_tier_and_costs_both() {
        // python default cx23 (3584 usable); 5000 MiB fits cx33.
        let r = run(&[sample("a", "python", 5000, 100.0)]);
        assert_eq!(r.oom_retries, 1);
        assert_eq!(r.failures, 0);
        assert!((r.policy_cost - (0.0080 + 0.0128)).abs() < 1e-12);
        assert!((r.oracle_cost - 0.0128).abs() < 1e-12);
        assert_eq!(r.sized_by_default, 1);
    }

    #[test]
    fn every_runner_of_every_attempt_pays_for_its_primary_ipv4() {
        // The OOM attempt on cx23 and the retry on cx33: two runners, one started hour each.
        let r = run_with_ipv4(&[sample("a", "python", 5000, 100.0)], 0.001);
        assert!((r.policy_cost - (0.0080 + 0.0128 + 2.0 * 0.001)).abs() < 1e-12);
        assert!((r.oracle_cost - (0.0128 + 0.001)).abs() < 1e-12);
        assert_eq!(r.ipv4_eur_per_hour, 0.001);
    }

    #[test]
    fn retry_that_does_not_fit_is_a_failure_and_teaches_nothing() {
        // python → cx23, retry cx33 (7680 usable); 10000 needs cx43.
        let b = sample("a", "python", 10_000, 100.0);
        let r = run(&vec![b; 6]);
        assert_eq!(r.failures, 6);
        assert_eq!(r.oom_retries, 6);
        assert_eq!(r.sized_by_history, 0, "failed builds append no history");
        assert!((r.policy_cost - 6.0 * (0.0080 + 0.0128)).abs() < 1e-12);
    }

    #[test]
    fn unbuildable_builds_are_counted_and_left_out_of_every_cost() {
        let r = run(&[sample("a", "rust", 40_000, 100.0)]);
        assert_eq!(r.unbuildable, 1);
        assert_eq!(
            (r.policy_cost, r.oracle_cost, r.fixed_cost),
            (0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn history_takes_over_after_min_samples_successes() {
        let builds: Vec<_> = (0..7).map(|_| sample("a", "rust", 1000, 100.0)).collect();
        let r = run(&builds);
        assert_eq!((r.sized_by_default, r.sized_by_history), (5, 2));
        // 5 × cx43 by default, then 2 × cx23 (1000 × 1.2 fits 3584)
        assert!((r.policy_cost - (5.0 * 0.0240 + 2.0 * 0.0080)).abs() < 1e-12);
        assert!((r.fixed_cost - 7.0 * 0.0240).abs() < 1e-12);
    }
}
