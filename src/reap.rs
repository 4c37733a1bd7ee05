//! Expired-lease cleanup: the safety net for runners whose launcher was SIGKILLed.
//!
//! Every runner carries `managed-by=buildkit-launcher` and `buildkit-launcher/expires=<unix s>`.
//! `reap` deletes the managed runners whose lease has expired, and nothing else: unmanaged
//! servers are never listed, unexpired ones and ones without a readable expiry are kept.
//!
//! A managed runner whose expiry label is missing or unreadable (edited, damaged) is judged by
//! its creation time instead: expired once it is older than the longest build and an hour
//! (`UNLABELLED_MAX_AGE_S`, 25 h), so no runner escapes the reaper for ever.
//!
//! Expiry is judged by the provider's clock when it has one (Hetzner: the `Date` of the listing's
//! answer), never by this agent's alone: an agent whose clock runs ahead cannot reap another
//! agent's live runner. Leases are short and renewed while their build runs (run/live.rs), so a
//! lease that ended means its launcher is gone, or ended it on purpose after a failed delete.

use serde::Serialize;

use crate::provider::{
    LABEL_EXPIRES, LABEL_LEASE, LABEL_REPO, Provider, ProviderError, human_duration,
};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reaped {
    pub id: String,
    /// The runner's name: it says which repository and pipeline it was for.
    pub name: String,
    pub lease: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    pub expires: Option<u64>,
    /// Expiry judged by its creation: it had no readable expiry label.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub by_age: bool,
    pub action: ReapAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReapAction {
    Deleted,
    WouldDelete,
    Kept,
    Failed,
}

/// Look at every managed runner; delete (or, with `dry_run`, list) the expired ones. An
/// expired runner that is locked (an action runs on it: the boot of a cancelled build, the
/// snapshot of a cancelled bake) is deleted once the action ends; the delete waits for it.
pub async fn reap(
    provider: &dyn Provider,
    now: u64,
    dry_run: bool,
    log: &(dyn Fn(&str) + Send + Sync),
) -> Result<Vec<Reaped>, ProviderError> {
    reap_with(provider, now, dry_run, true, log).await
}

/// The reap before a build: as [`reap`], but an expired runner that is locked now is left for
/// the next reap (waiting minutes for a snapshot would hold the build up).
pub async fn reap_unlocked(
    provider: &dyn Provider,
    now: u64,
    log: &(dyn Fn(&str) + Send + Sync),
) -> Result<Vec<Reaped>, ProviderError> {
    reap_with(provider, now, false, false, log).await
}

async fn reap_with(
    provider: &dyn Provider,
    now: u64,
    dry_run: bool,
    wait_locked: bool,
    log: &(dyn Fn(&str) + Send + Sync),
) -> Result<Vec<Reaped>, ProviderError> {
    let mut out = Vec::new();
    let leases = provider.list_leases().await?;
    // The API's time, read from the listing's own answer.
    let now = provider.now().unwrap_or(now);
    for lease in leases {
        let judged = lease.judged_expiry();
        let expires = judged.map(|(e, _)| e);
        let mut entry = Reaped {
            id: lease.id.clone(),
            name: lease.name.clone(),
            lease: lease.labels.get(LABEL_LEASE).cloned(),
            repo: lease.labels.get(LABEL_REPO).cloned(),
            expires,
            by_age: false,
            action: ReapAction::Kept,
            error: None,
        };
        // No readable expiry label: judged by its creation (`UNLABELLED_MAX_AGE_S`); with
        // neither, not ours to judge.
        let expired = expires.is_some_and(|e| e <= now);
        if expired && judged.is_some_and(|(_, by_age)| by_age) {
            entry.by_age = true;
            log(&format!(
                "runner {} ({}) has no readable {LABEL_EXPIRES} label and was created more than {} ago: judged expired by its age",
                lease.name,
                lease.id,
                human_duration(crate::provider::UNLABELLED_MAX_AGE_S)
            ));
        }
        if expired && dry_run {
            entry.action = ReapAction::WouldDelete;
        } else if expired && lease.locked && !wait_locked {
            log(&format!(
                "runner {} ({}) {} but is locked by a running action; the next reap deletes it",
                lease.name,
                lease.id,
                when(expires, now)
            ));
        } else if expired {
            log(&format!(
                "runner {} ({}, lease {}) {}; deleting it",
                lease.name,
                lease.id,
                entry.lease.as_deref().unwrap_or("-"),
                when(expires, now)
            ));
            match provider.destroy(&lease.id).await {
                Ok(()) => entry.action = ReapAction::Deleted,
                Err(e) => {
                    entry.action = ReapAction::Failed;
                    entry.error = Some(e.to_string());
                }
            }
        }
        out.push(entry);
    }
    Ok(out)
}

/// `expired 2 h 5 min ago`, `expires in 12 min`, `no expiry label`.
pub fn when(expires: Option<u64>, now: u64) -> String {
    match expires {
        Some(t) if t < now => format!("expired {} ago", human_duration(now - t)),
        Some(t) => format!("expires in {}", human_duration(t - now)),
        None => format!("no {LABEL_EXPIRES} label"),
    }
}

pub fn render(entries: &[Reaped], now: u64) -> String {
    if entries.is_empty() {
        return "no managed runners\n".to_owned();
    }
    let width = entries
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let mut out = format!(
        "{:<width$} {:<10} {:<8} {:<28} action\n",
        "runner", "id", "lease", "lease ends"
    );
    for e in entries {
        let action = match (e.action, &e.error) {
            (ReapAction::Failed, Some(err)) => format!("failed: {err}"),
            (ReapAction::Deleted, _) => "deleted".to_owned(),
            (ReapAction::WouldDelete, _) => "would delete".to_owned(),
            (ReapAction::Kept, _) => "kept".to_owned(),
            (ReapAction::Failed, None) => "failed".to_owned(),
        };
        out.push_str(&format!(
            "{:<width$} {:<10} {:<8} {:<28} {action}\n",
            e.name,
            e.id,
            e.lease.as_deref().unwrap_or("-"),
            when(e.expires, now)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_the_runner_its_lease_and_a_human_time() {
        let now = 1_800_000_000;
        let entry = |name: &str, expires, action| Reaped {
            id: "1001".into(),
            name: name.into(),
            lease: Some("deadbeef".into()),
            repo: None,
            expires,
            by_age: false,
            action,
            error: None,
        };
        let text = render(
            &[
                entry(
                    "bkl-org-app-42-deadbeef",
                    Some(now - 2 * 3600 - 5 * 60),
                    ReapAction::WouldDelete,
                ),
                entry("bkl-org-app-43-cafebabe", Some(now + 600), ReapAction::Kept),
                entry("bkl-x-1-00000000", None, ReapAction::Kept),
            ],
            now,
        );
        assert!(text.contains("bkl-org-app-42-deadbeef"), "{text}");
        assert!(text.contains("expired 2 h 5 min ago"), "{text}");
        assert!(text.contains("expires in 10 min"), "{text}");
        assert!(
            text.contains("no buildkit-launcher/expires label"),
            "{text}"
        );
        assert!(text.contains("would delete"), "{text}");
    }
}
