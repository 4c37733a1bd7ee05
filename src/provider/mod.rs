//! Where runners come from: `trait Provider` and its implementations.
//!
//! Spawning is two steps, [`Provider::create`] and [`Provider::wait_ready`], so that the caller
//! can register a runner for destruction the moment an id exists, before the (possibly long)
//! boot. [`Provider::destroy`] returns only once the runner is confirmed gone.

pub mod cloud_init;
pub mod hcloud;
pub mod keys;
pub mod local;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Serialize;

use crate::config::{Arch, Tier};

pub const LABEL_MANAGED_BY: &str = "managed-by";
pub const MANAGED_BY: &str = "buildkit-launcher";
pub const LABEL_LEASE: &str = "buildkit-launcher/lease";
pub const LABEL_EXPIRES: &str = "buildkit-launcher/expires";
pub const LABEL_REPO: &str = "buildkit-launcher/repo";
pub const LABEL_TIER: &str = "buildkit-launcher/tier";

/// What to start.
#[derive(Debug, Clone)]
pub struct RunnerSpec {
    /// DNS-safe name, at most 63 characters.
    pub name: String,
    pub lease: Lease,
    pub tier: Tier,
    pub arch: Arch,
    /// cloud-init user data (holds the per-build keys: never log it).
    pub user_data: String,
    pub labels: BTreeMap<String, String>,
}

pub use crate::runner::{ConnectPolicy, Runner};

/// A runner on another server type than its rung names ([`Provider::substitute`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Substitute {
    pub server_type: String,
    /// "cx33 sold out in fsn1 (resource_unavailable), …"
    pub why: String,
    /// Net EUR/h of the type used, when the provider knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_eur_per_hour: Option<f64>,
}

/// A runner's lease: the reaper deletes runners whose lease has expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub id: String,
    /// Unix seconds.
    pub expires: u64,
}

impl Lease {
    /// A fresh lease id (8 hex digits) valid for `seconds` from now.
    pub fn new(seconds: u64) -> Lease {
        let id = format!("{:08x}", rand::random::<u32>());
        Lease {
            id,
            expires: unix_now() + seconds,
        }
    }
}

/// What `list_leases` reports per runner.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseInfo {
    pub id: String,
    /// The runner's name (`bkl-<repo>-<pipeline>-<lease>` on Hetzner), so a person can tell
    /// which build it was.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// An action runs on it now (Hetzner's `locked`): a delete must wait for it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub locked: bool,
    /// When it was created (unix s, in the provider's time), when the provider says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
}

/// The longest a managed runner without a readable expiry label is kept, counted from its
/// creation: the longest build (`timeout_minutes` at most 1440) and an hour more. Every runner
/// gets the label when it is created, so only an edited or damaged label gets here; without
/// this it would never be reaped.
pub const UNLABELLED_MAX_AGE_S: u64 = 25 * 3600;

impl LeaseInfo {
    pub fn expires(&self) -> Option<u64> {
        self.labels.get(LABEL_EXPIRES)?.parse().ok()
    }

    /// When it is judged expired: its label, else (no readable label) its creation and
    /// [`UNLABELLED_MAX_AGE_S`]; the flag says the latter.
    pub fn judged_expiry(&self) -> Option<(u64, bool)> {
        match self.expires() {
            Some(e) => Some((e, false)),
            None => self.created.map(|c| (c + UNLABELLED_MAX_AGE_S, true)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{0}")]
    NeedsRoot(String),
    #[error("runner {id}: cannot {action}: {detail}")]
    Runner {
        id: String,
        action: &'static str,
        detail: String,
    },
    #[error("cannot {action}: {detail}")]
    Setup {
        action: &'static str,
        detail: String,
    },
    /// A create whose outcome is unknown: the server called `name` may exist (its answer was
    /// lost or unreadable, and a lookup did not find it yet). Whoever destroys must look for
    /// it by name; it carries the lease labels, so `reap` finds it too.
    #[error("cannot {action}: {detail}; a server called {name} may exist all the same")]
    Unconfirmed {
        name: String,
        action: &'static str,
        detail: String,
    },
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// `local` or `hcloud`, for reports.
    fn name(&self) -> &'static str;
    /// How long to keep trying SSH while a runner boots.
    fn connect_policy(&self) -> ConnectPolicy {
        ConnectPolicy::default()
    }
    /// Start creating a runner; returns its id as soon as one exists.
    async fn create(&self, spec: &RunnerSpec) -> Result<String, ProviderError>;
    /// Wait until the runner is booted and its sshd is started.
    async fn wait_ready(&self, id: &str) -> Result<Runner, ProviderError>;
    /// Runs while SSH waits for the runner: an error as soon as the provider knows the boot
    /// failed; `Ok` once it knows it did not (or cannot tell).
    async fn watch_boot(&self, _id: &str) -> Result<(), ProviderError> {
        Ok(())
    }
    /// Runs while the launcher waits for the runner's buildkitd to list a worker: an error as
    /// soon as the provider knows the daemon ended (the local provider's own child); `Ok` when
    /// it cannot tell.
    async fn watch_daemon(&self, _id: &str) -> Result<(), ProviderError> {
        Ok(())
    }
    /// The id of the runner called `name`, if one exists: for a create whose answer was lost
    /// (or abandoned on cancellation).
    async fn find(&self, _name: &str) -> Result<Option<String>, ProviderError> {
        Ok(None)
    }
    /// Delete the runner and confirm it is gone. Idempotent: an unknown id is already gone.
    async fn destroy(&self, id: &str) -> Result<(), ProviderError>;
    /// The lease a runner gets and keeps while its launcher lives (renewed every third of
    /// it); `None`: the provider renews nothing and the lease covers the build's timeout.
    fn lease(&self) -> Option<Duration> {
        None
    }
    /// Make runner `id`'s lease end `seconds` from now (0: now, so the next reap deletes it),
    /// writing `labels` (all of them: the provider may replace the whole set) with the new
    /// expiry, in the provider's time.
    async fn set_lease(
        &self,
        id: &str,
        _labels: &BTreeMap<String, String>,
        _seconds: u64,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Runner {
            id: id.to_owned(),
            action: "change its lease",
            detail: format!("the {} provider keeps no renewable lease", self.name()),
        })
    }
    /// The provider's own time (unix seconds) when it has one (Hetzner: the `Date` of its
    /// answers): leases are judged by it, not by this agent's clock.
    fn now(&self) -> Option<u64> {
        None
    }
    /// The server type runner `id` runs on when it is not the rung's configured one, and why
    /// (Hetzner: the configured type was sold out everywhere). `None`: the configured type.
    fn substitute(&self, _id: &str) -> Option<Substitute> {
        None
    }
    /// Every runner this provider manages, with its labels.
    async fn list_leases(&self) -> Result<Vec<LeaseInfo>, ProviderError>;
}

/// A span of seconds for people: `45 s`, `7 min`, `2 h 5 min`, `3 d 4 h`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, 0, _) => format!("{d} d"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A pipeline name or number as part of a runner's name: letters, digits and '-', at most 10
/// (Woodpecker's `CI_PIPELINE_NUMBER` is a number).
pub fn check_pipeline_name(pipeline: &str) -> Result<(), String> {
    if !pipeline.is_empty()
        && pipeline.len() <= 10
        && pipeline
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        Ok(())
    } else {
        Err("expected a pipeline number (up to 10 letters, digits or '-')".to_owned())
    }
}

/// `bkl-<repo-slug>-<pipeline>-<lease>`, DNS-safe and at most 63 characters.
pub fn runner_name(repo: &str, pipeline: &str, lease: &str) -> String {
    let slug: String = repo
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let slug = slug
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    // Hetzner's server names are lower-case (RFC 1123): an upper-case pipeline is refused
    // there, so it is folded here.
    let pipeline: String = pipeline
        .to_ascii_lowercase()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect();
    let fixed = 4 + pipeline.len() + 1 + lease.len() + 1; // "bkl-" … "-" … "-"
    let room = 63usize.saturating_sub(fixed);
    let slug = slug[..slug.len().min(room)].trim_end_matches('-');
    let slug = if slug.is_empty() { "build" } else { slug };
    let pipeline = if pipeline.is_empty() {
        "0".to_owned()
    } else {
        pipeline
    };
    format!("bkl-{slug}-{pipeline}-{lease}")
}

/// The labels every runner carries (ARCHITECTURE.md, "Runner identity and labels").
pub fn labels(lease: &Lease, repo_slug: &str, tier: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_LEASE.to_owned(), lease.id.clone()),
        (LABEL_EXPIRES.to_owned(), lease.expires.to_string()),
        (LABEL_REPO.to_owned(), label_value(repo_slug)),
        (LABEL_TIER.to_owned(), label_value(tier)),
    ])
}

/// A Hetzner label value: at most 63 characters of `[a-zA-Z0-9._-]`, alphanumeric at both
/// ends; anything else becomes `_`, and an empty result `unknown`.
pub fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    let v = v.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if v.is_empty() {
        "unknown".to_owned()
    } else {
        v.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_names_are_dns_safe_and_short() {
        assert_eq!(
            runner_name("Org/My_App", "42", "deadbeef"),
            "bkl-org-my-app-42-deadbeef"
        );
        let long = runner_name(&"x".repeat(200), "1234567890123", "deadbeef");
        assert!(long.len() <= 63, "{long}");
        assert!(long.ends_with("-1234567890-deadbeef"), "{long}");
        assert_eq!(runner_name("///", "", "deadbeef"), "bkl-build-0-deadbeef");
        let name = runner_name("a--b", "7", "00000001");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert!(!name.contains("--"), "{name}");
    }

    #[test]
    fn labels_follow_the_design() {
        let lease = Lease {
            id: "deadbeef".into(),
            expires: 1_800_000_000,
        };
        let l = labels(&lease, "org/app", "cx33");
        assert_eq!(l["managed-by"], "buildkit-launcher");
        assert_eq!(l["buildkit-launcher/lease"], "deadbeef");
        assert_eq!(l["buildkit-launcher/expires"], "1800000000");
        assert_eq!(l["buildkit-launcher/repo"], "org_app");
        assert_eq!(l["buildkit-launcher/tier"], "cx33");
    }

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(human_duration(42), "42 s");
        assert_eq!(human_duration(7 * 60 + 5), "7 min");
        assert_eq!(human_duration(2 * 3600), "2 h");
        assert_eq!(human_duration(2 * 3600 + 5 * 60 + 9), "2 h 5 min");
        assert_eq!(human_duration(3 * 86_400 + 4 * 3600 + 1), "3 d 4 h");
        assert_eq!(human_duration(86_400), "1 d");
    }

    #[test]
    fn leases_are_random_and_expire_in_the_future() {
        let a = Lease::new(600);
        let b = Lease::new(600);
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 8);
        assert!(a.expires >= unix_now() + 599);
    }
}
