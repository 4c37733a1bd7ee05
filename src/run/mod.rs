//! Executing a plan: the attempt loop, the destroy guard, cancellation, and the run report.
//!
//! ```text
//! for tier in [chosen, next-up] (at most two):
//!     create runner ── registered for destruction the moment its id exists
//!     wait for it, connect (strict host key), send credentials and secrets over stdin,
//!     sync the context, run the build (streamed), read bkl-runner-stats, classify
//!     destroy (always, confirmed, retried)
//!     out of memory and a next tier exists → next attempt; otherwise stop
//! verify every tag in the registry, append history, report
//! ```
//! Cancellation (SIGINT/SIGTERM) drops the running attempt and destroys its runner; a panic
//! unwinding through [`execute`] destroys it from [`LiveRunners`]'s `Drop`.

mod attempt;
pub(crate) mod live;
pub mod report;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::backend::classify::Verdict;
use crate::config::Tier;
use crate::exit::Exit;
use crate::history::{HistoryStore, Outcome, Sample};
use crate::plan::Plan;
use crate::provider::Provider;
use crate::registry::{self, Credentials};
use crate::transport::session::ConnectPolicy;
use live::LiveRunners;
pub use report::{AttemptReport, RunReport};

/// Everything a build needs besides its plan.
pub struct Executor<'a> {
    pub plan: &'a Plan,
    pub provider: Arc<dyn Provider>,
    pub credentials: Option<Credentials>,
    /// Build secrets: id and value (read from the environment by the caller).
    pub secrets: Vec<(String, Zeroizing<String>)>,
    pub history: &'a dyn HistoryStore,
    /// The CI pipeline number, for runner names.
    pub pipeline: String,
    /// SSH connect bounds; `None`: the provider's (a cloud server boots slower than a sandbox).
    pub connect: Option<ConnectPolicy>,
    /// Progress lines (stderr at a terminal).
    pub log: &'a (dyn Fn(&str) + Send + Sync),
    /// Build output lines, streamed live.
    pub output: &'a (dyn Fn(&str) + Send + Sync),
}

/// Lease length: the build's timeout plus room for boot, sync and destroy.
fn lease_seconds(plan: &Plan) -> u64 {
    plan.timeout_minutes.unwrap_or(120) * 60 + 15 * 60
}

pub async fn execute(ex: &Executor<'_>, cancel: CancellationToken) -> RunReport {
    let live = LiveRunners::new(ex.provider.clone());
    let mut tiers: Vec<Tier> = vec![ex.plan.server.clone()];
    tiers.extend(ex.plan.retry_server.clone());
    let mut attempts: Vec<AttemptReport> = Vec::new();
    let mut digest = None;
    let mut error = None;
    let mut final_verdict = None;
    let mut cancelled = false;

    for (n, tier) in tiers.iter().enumerate() {
        (ex.log)(&format!(
            "attempt {}/{} on {} ({} MiB)",
            n + 1,
            tiers.len(),
            tier.name,
            tier.memory_mib
        ));
        let mut record = AttemptReport::new(&tier.name);
        let run = attempt::run(ex, tier, &live, &mut record);
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            result = run => Some(result),
        };
        // Whatever happened, the runner goes now (a dropped attempt left it registered).
        let destroy_started = std::time::Instant::now();
        for (id, outcome) in live.destroy_all(ex.log).await {
            record.runner.get_or_insert(id.clone());
            match outcome {
                Ok(()) => record.destroyed = true,
                Err(e) => {
                    record.destroyed = false;
                    record.destroy_error = Some(e.to_string());
                }
            }
        }
        record.seconds.destroy = destroy_started.elapsed().as_secs_f64();
        let Some(result) = result else {
            record.outcome = report::AttemptOutcome::Cancelled;
            attempts.push(record);
            cancelled = true;
            break;
        };
        let verdict = match result {
            Ok(done) => {
                digest = done.digest;
                done.verdict
            }
            Err(e) => {
                let message = e.to_string();
                error = Some(message.clone());
                Verdict::Lost { reason: message }
            }
        };
        record.outcome = report::AttemptOutcome::from(&verdict);
        append_history(ex, tier, &record, &verdict);
        attempts.push(record);
        let retry = matches!(verdict, Verdict::Oom { .. }) && n + 1 < tiers.len();
        match &verdict {
            Verdict::Oom { evidence } if retry => {
                (ex.log)(&format!(
                    "out of memory on {} ({evidence}); retrying once on {}",
                    tier.name,
                    tiers[n + 1].name
                ));
            }
            Verdict::Oom { evidence } => {
                error = Some(format!(
                    "out of memory on {}, the last allowed tier: {evidence}",
                    tier.name
                ));
            }
            Verdict::Failed { reason } => error = Some(format!("the build failed: {reason}")),
            Verdict::Lost { reason } => error = Some(reason.clone()),
            Verdict::Ok => {}
        }
        final_verdict = Some(verdict);
        if !retry {
            break;
        }
    }

    let mut exit = match (&final_verdict, cancelled) {
        (_, true) => Exit::Cancelled,
        (Some(Verdict::Ok), _) => Exit::Success,
        (Some(Verdict::Oom { .. }), _) => Exit::OutOfMemory,
        (Some(Verdict::Failed { .. }), _) => Exit::BuildFailed,
        (Some(Verdict::Lost { .. }), _) | (None, _) => Exit::Infrastructure,
    };
    if cancelled {
        error = Some("cancelled (SIGINT/SIGTERM); the runner was destroyed".into());
    }
    if exit == Exit::Success {
        match verify(ex, digest.as_deref()).await {
            Ok(()) => {}
            Err(message) => {
                exit = Exit::Infrastructure;
                error = Some(message);
            }
        }
    }
    if let Some(failed) = attempts.iter().find(|a| !a.destroyed && a.runner.is_some()) {
        exit = Exit::NotDestroyed;
        error = Some(format!(
            "runner {} could not be confirmed destroyed: {}; it carries lease labels, so `reap` will find it",
            failed.runner.as_deref().unwrap_or("?"),
            failed.destroy_error.as_deref().unwrap_or("unknown error")
        ));
    }
    let error = error.map(|e| mask_secrets(&e, ex));
    RunReport::new(ex.plan, exit, digest, attempts, error, ex.provider.name())
}

/// Every tag must resolve to the digest the build reported.
async fn verify(ex: &Executor<'_>, digest: Option<&str>) -> Result<(), String> {
    let Some(registry) = &ex.plan.build.registry else {
        return Ok(());
    };
    if ex.plan.dry_run {
        (ex.log)("dry run: nothing was pushed, nothing to verify");
        return Ok(());
    }
    let Some(digest) = digest else {
        return Err("the build reported no image digest (metadata file missing or empty)".into());
    };
    (ex.log)(&format!(
        "verifying {} tag(s) in {registry}",
        ex.plan.images.len()
    ));
    registry::verify_digests(
        &ex.plan.images,
        digest,
        registry,
        ex.plan.build.insecure_registry,
        ex.credentials.as_ref(),
    )
    .await
    .map_err(|e| e.to_string())
}

/// Every known secret value (build secrets, the registry password) replaced in `text`: a
/// failure reason quotes buildctl, and buildctl quotes what it was given.
fn mask_secrets(text: &str, ex: &Executor<'_>) -> String {
    let mut text = text.to_owned();
    let values = ex
        .secrets
        .iter()
        .map(|(_, v)| v.as_str())
        .chain(ex.credentials.iter().map(|c| c.password.as_str()));
    for value in values.filter(|v| v.len() >= 4) {
        text = text.replace(value, "****");
    }
    text
}

fn append_history(ex: &Executor<'_>, tier: &Tier, record: &AttemptReport, verdict: &Verdict) {
    // A pull request must not teach the sizer: one big PR build would size the next
    // default-branch builds (ARCHITECTURE.md, "Trust boundaries").
    if !ex.plan.history.records {
        return;
    }
    let (Some(peak), outcome) = (
        record.peak_memory_mib,
        match verdict {
            Verdict::Ok => Outcome::Ok,
            Verdict::Oom { .. } => Outcome::Oom,
            Verdict::Failed { .. } => Outcome::Failed,
            Verdict::Lost { .. } => return,
        },
    ) else {
        return;
    };
    let key = &ex.plan.history.key;
    let sample = Sample {
        ts: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        repo: key.repo.clone(),
        dockerfile: key.dockerfile.clone(),
        target: key.target.clone(),
        lang: Some(ex.plan.language.as_str().to_owned()),
        tier: Some(tier.name.clone()),
        peak_memory_mib: peak,
        duration_s: (record.seconds.build * 10.0).round() / 10.0,
        outcome,
    };
    if let Err(e) = ex.history.append(&sample) {
        (ex.log)(&format!(
            "warning: the history sample was not recorded: {e}"
        ));
    }
}

/// Bounded retry of a destroy: transient failures happen, a leaked runner costs money.
pub(crate) const DESTROY_ATTEMPTS: u32 = 3;
pub(crate) const DESTROY_BACKOFF: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests;
