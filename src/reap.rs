//! Expired-lease cleanup: the safety net for runners whose launcher was SIGKILLed.
//!
//! Every runner carries `managed-by=buildkit-launcher` and `buildkit-launcher/expires=<unix s>`.
//! `reap` deletes the managed runners whose lease has expired, and nothing else: unmanaged
//! servers are never listed, unexpired ones and ones without a readable expiry are kept.

use serde::Serialize;

use crate::provider::{LABEL_EXPIRES, LABEL_LEASE, Provider, ProviderError};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reaped {
    pub id: String,
    pub lease: Option<String>,
    pub expires: Option<u64>,
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

/// Look at every managed runner; delete (or, with `dry_run`, list) the expired ones.
pub async fn reap(
    provider: &dyn Provider,
    now: u64,
    dry_run: bool,
    log: &(dyn Fn(&str) + Send + Sync),
) -> Result<Vec<Reaped>, ProviderError> {
    let mut out = Vec::new();
    for lease in provider.list_leases().await? {
        let expires = lease.expires();
        let mut entry = Reaped {
            id: lease.id.clone(),
            lease: lease.labels.get(LABEL_LEASE).cloned(),
            expires,
            action: ReapAction::Kept,
            error: None,
        };
        // No readable expiry: not ours to judge.
        let expired = expires.is_some_and(|e| e < now);
        if expired && dry_run {
            entry.action = ReapAction::WouldDelete;
        } else if expired {
            log(&format!(
                "runner {} ({LABEL_EXPIRES}={}) has an expired lease; deleting it",
                lease.id,
                expires.unwrap_or_default()
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

pub fn render(entries: &[Reaped], now: u64) -> String {
    if entries.is_empty() {
        return "no managed runners\n".to_owned();
    }
    let mut out = String::from("runner                 lease      expires              action\n");
    for e in entries {
        let expires = match e.expires {
            Some(t) if t < now => format!("{} s ago", now - t),
            Some(t) => format!("in {} s", t - now),
            None => "no expiry label".to_owned(),
        };
        let action = match (e.action, &e.error) {
            (ReapAction::Failed, Some(err)) => format!("failed: {err}"),
            (a, _) => format!("{a:?}")
                .to_lowercase()
                .replace("woulddelete", "would delete"),
        };
        out.push_str(&format!(
            "{:<22} {:<10} {:<20} {action}\n",
            e.id,
            e.lease.as_deref().unwrap_or("-"),
            expires
        ));
    }
    out
}
