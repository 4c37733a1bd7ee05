//! The project's request budget as Hetzner meters it: 3600 requests an hour, refilled one a
//! second; `RateLimit-Reset` is when it is *full* again (FACTS.md). What the last answer said,
//! how long to wait after a 429, and the error once a request has waited its bound
//! (`hcloud.rate_limit_wait_s`).

use std::time::Duration;

use super::client::ApiError;
use crate::provider::unix_now;
use crate::retry::RetryPolicy;

/// What the last response said about the project's request budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
    /// Unix seconds when the budget is full again.
    pub reset: Option<u64>,
}

impl RateLimit {
    /// ` (0 of 3600 requests left, full again in 60 min)`, for a log line; empty when unknown.
    pub fn describe(&self) -> String {
        match (self.remaining, self.limit) {
            (Some(remaining), Some(limit)) => {
                let full = self.reset.map_or(String::new(), |r| {
                    format!(
                        ", full again in {}",
                        crate::provider::human_duration(r.saturating_sub(unix_now()))
                    )
                });
                format!(" ({remaining} of {limit} requests left{full})")
            }
            _ => String::new(),
        }
    }

    /// Below a tenth of the budget: everyone polling should slow down.
    pub fn is_low(&self) -> bool {
        match (self.limit, self.remaining) {
            (Some(limit), Some(remaining)) => remaining.saturating_mul(10) < limit,
            _ => false,
        }
    }
}

/// How long to wait after a 429 before retry number `retry`: at least a second (the refill
/// interval), full jitter up to the policy's exponential delay (at least 2 s), so that the
/// launchers of one project that all hit an empty budget do not come back in step.
pub fn rate_limit_delay(policy: &RetryPolicy, retry: u32, unit: f64) -> Duration {
    let floor = RATE_LIMIT_REFILL.as_secs_f64();
    let top = policy.base_delay(retry).as_secs_f64().max(2.0 * floor);
    Duration::from_secs_f64(floor + unit.clamp(0.0, 1.0) * (top - floor))
}

/// Hetzner refills the request budget at one request per second.
pub const RATE_LIMIT_REFILL: Duration = Duration::from_secs(1);

/// How long one request waits in all for the budget when the config says nothing: 10 minutes.
pub const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(600);

/// At most one progress line per this while a request waits for the budget.
pub(super) const RATE_LIMIT_PROGRESS: Duration = Duration::from_secs(10);

/// The 429 that ended a request's wait, naming the budget and the bound.
pub(super) fn budget_spent(error: ApiError, waited: Duration, budget: String) -> ApiError {
    match error {
        ApiError::Api {
            method,
            path,
            status,
            code,
            message,
        } => ApiError::Api {
            method,
            path,
            status,
            code,
            message: format!(
                "{message}{budget}; the project's request budget did not refill for this request within {} s (hcloud.rate_limit_wait_s); other builds or tools of the project are spending it",
                waited.as_secs()
            ),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> ApiError {
        ApiError::Api {
            method: "GET".into(),
            path: "/x".into(),
            status,
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn after_a_429_the_wait_is_about_a_second_jittered_never_the_reset() {
        let p = RetryPolicy::API;
        for i in 0..=100 {
            let unit = f64::from(i) / 100.0;
            let first = rate_limit_delay(&p, 1, unit).as_secs_f64();
            assert!((1.0..=2.0 + 1e-9).contains(&first), "{first}");
            let fast = RetryPolicy {
                initial_delay: Duration::from_millis(50),
                max_delay: Duration::from_millis(400),
                ..p
            };
            assert!(rate_limit_delay(&fast, 3, unit) >= RATE_LIMIT_REFILL);
        }
        // Launchers drawing different numbers come back at different times.
        assert_ne!(rate_limit_delay(&p, 1, 0.1), rate_limit_delay(&p, 1, 0.9));
        assert!(rate_limit_delay(&p, 10, 1.0) <= p.max_delay);
    }

    #[test]
    fn a_spent_budget_names_the_setting_and_the_time_waited() {
        let e = budget_spent(
            api(429, "rate_limit_exceeded"),
            Duration::from_secs(600),
            " (0 of 3600 requests left)".into(),
        );
        let text = e.to_string();
        assert!(text.contains("rate_limit_exceeded"), "{text}");
        assert!(
            text.contains("within 600 s (hcloud.rate_limit_wait_s)"),
            "{text}"
        );
        assert!(text.contains("0 of 3600 requests left"), "{text}");
        assert_eq!(e.status(), Some(429));
    }

    #[test]
    fn low_budget_is_a_tenth() {
        let r = RateLimit {
            limit: Some(3600),
            remaining: Some(359),
            reset: None,
        };
        assert!(r.is_low());
        let r = RateLimit {
            remaining: Some(360),
            ..r
        };
        assert!(!r.is_low());
        assert!(!RateLimit::default().is_low());
    }
}
