//! Retry policy as a value (house style: configured and tested, not loops sprinkled through
//! the code). Exponential backoff with jitter, bounded in attempts and in delay — the shape of
//! Hetzner's own Go client (up to 5 retries, 1 s → 60 s).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub multiplier: f64,
    /// Fraction of the delay added or removed at random (0.2 = ±20 %).
    pub jitter: f64,
}

impl RetryPolicy {
    /// For cloud API calls: 6 attempts, 1 s doubling to at most 60 s, ±20 %.
    pub const API: RetryPolicy = RetryPolicy {
        max_attempts: 6,
        initial_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
        multiplier: 2.0,
        jitter: 0.2,
    };

    /// Delay before retry number `retry` (1 = the first retry), without jitter.
    pub fn base_delay(&self, retry: u32) -> Duration {
        let factor = self.multiplier.powi(retry.saturating_sub(1).min(64) as i32);
        let secs = (self.initial_delay.as_secs_f64() * factor).min(self.max_delay.as_secs_f64());
        Duration::from_secs_f64(secs)
    }

    /// Delay before retry number `retry`, jittered with `unit` in [0, 1).
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let base = self.base_delay(retry).as_secs_f64();
        let spread = base * self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((base + spread).max(0.0))
    }

    /// Delay before retry number `retry` with random jitter.
    pub fn delay_random(&self, retry: u32) -> Duration {
        self.delay(retry, rand::random::<f64>())
    }

    /// May another attempt follow attempt number `attempt` (1-based)?
    pub fn allows_another(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_initial_delay_up_to_the_cap() {
        let p = RetryPolicy::API;
        let base: Vec<u64> = (1..=8).map(|r| p.base_delay(r).as_secs()).collect();
        assert_eq!(base, [1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn jitter_stays_within_its_bounds_for_every_retry_and_draw() {
        let p = RetryPolicy::API;
        for retry in 1..=40 {
            let base = p.base_delay(retry).as_secs_f64();
            for i in 0..=100 {
                let d = p.delay(retry, f64::from(i) / 100.0).as_secs_f64();
                assert!(
                    d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                    "retry {retry}: {d} vs {base}"
                );
                assert!(d <= p.max_delay.as_secs_f64() * 1.2 + 1e-9);
            }
        }
    }

    #[test]
    fn attempts_are_bounded() {
        let p = RetryPolicy::API;
        assert!((1..6).all(|a| p.allows_another(a)));
        assert!(!p.allows_another(6));
        let once = RetryPolicy {
            max_attempts: 1,
            ..p
        };
        assert!(!once.allows_another(1));
    }

    #[test]
    fn huge_retry_numbers_do_not_overflow() {
        assert_eq!(
            RetryPolicy::API.base_delay(u32::MAX),
            Duration::from_secs(60)
        );
    }
}
