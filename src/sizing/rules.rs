//! The arithmetic of sizing, shared by `plan` and `simulate` so they cannot disagree.

use crate::config::{SizingPolicy, Tier};

/// Nearest-rank percentile: the ⌈p/100 · n⌉-th smallest value. `None` for no values.
pub fn nearest_rank(values: &[u64], percentile: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    // p·n/100 rather than (p/100)·n: for whole p it is exact, so ⌈19.0⌉ stays 19.
    let rank = (percentile * n as f64 / 100.0).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// What the history rule asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoryNeed {
    /// The percentile of the recent peaks, MiB.
    pub percentile_mib: u64,
    /// percentile × margin, MiB (not rounded: tiers are compared against the exact value).
    pub required_mib: f64,
}

/// Apply the history rule to a key's recent successful peaks (at most `window`, oldest first).
/// `None` when there are fewer than `min_samples`.
pub fn history_need(peaks: &[u64], policy: &SizingPolicy) -> Option<HistoryNeed> {
    let recent = &peaks[peaks.len().saturating_sub(policy.window)..];
    if recent.len() < policy.min_samples {
        return None;
    }
    let percentile_mib = nearest_rank(recent, policy.percentile)?;
    Some(HistoryNeed {
        percentile_mib,
        required_mib: percentile_mib as f64 * policy.margin,
    })
}

/// The smallest tier whose usable memory covers `required_mib`, or `None` if no tier does.
pub fn smallest_fitting(ladder: &[Tier], required_mib: f64, reserved_mib: u64) -> Option<usize> {
    ladder
        .iter()
        .position(|t| t.usable_mib(reserved_mib) as f64 >= required_mib)
}

pub fn index_of(ladder: &[Tier], name: &str) -> Option<usize> {
    ladder.iter().position(|t| t.name == name)
}

/// Hours billed for a build of `seconds` plus a minute of boot: Hetzner bills per started hour.
pub fn billed_hours(seconds: f64) -> f64 {
    ((60.0 + seconds) / 3600.0).ceil()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn policy() -> SizingPolicy {
        Config::defaults().sizing
    }

    #[test]
    fn nearest_rank_is_the_ceil_rank_smallest() {
        let v: Vec<u64> = (1..=20).collect();
        assert_eq!(nearest_rank(&v, 95.0), Some(19)); // ⌈19.0⌉ = 19, not 20
        assert_eq!(nearest_rank(&v, 100.0), Some(20));
        assert_eq!(nearest_rank(&v, 50.0), Some(10));
        let v: Vec<u64> = (1..=30).collect();
        assert_eq!(nearest_rank(&v, 95.0), Some(29)); // ⌈28.5⌉
        assert_eq!(nearest_rank(&[7, 3, 5], 95.0), Some(7));
        assert_eq!(nearest_rank(&[42], 1.0), Some(42));
        assert_eq!(nearest_rank(&[], 95.0), None);
    }

    #[test]
    fn billing_is_per_started_hour_with_a_minute_of_boot() {
        assert_eq!(billed_hours(0.0), 1.0);
        assert_eq!(billed_hours(3540.0), 1.0);
        assert_eq!(billed_hours(3540.5), 2.0);
    }

    #[test]
    fn history_needs_min_samples() {
        assert_eq!(history_need(&[1000; 4], &policy()), None);
        let need = history_need(&[1000; 5], &policy()).unwrap();
        assert_eq!(need.percentile_mib, 1000);
        assert!((need.required_mib - 1200.0).abs() < 1e-9);
    }

    #[test]
    fn history_uses_only_the_last_window() {
        let mut peaks = vec![30_000u64; 10];
        peaks.extend([1000; 30]);
        let need = history_need(&peaks, &policy()).unwrap();
        assert_eq!(need.percentile_mib, 1000);
    }

    #[test]
    fn tier_choice_compares_usable_memory() {
        let ladder = Config::defaults().tiers.amd64;
        // cx23 usable = 4096 − 512 = 3584
        assert_eq!(smallest_fitting(&ladder, 3584.0, 512), Some(0));
        assert_eq!(smallest_fitting(&ladder, 3584.1, 512), Some(1));
        assert_eq!(smallest_fitting(&ladder, 32256.0, 512), Some(3));
        assert_eq!(smallest_fitting(&ladder, 32256.5, 512), None);
    }
}
