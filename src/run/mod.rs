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

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::backend::classify::Verdict;
use crate::config::Tier;
use crate::exit::Exit;
use crate::history::{HistoryStore, Outcome, Sample};
use crate::plan::{BuildPlan, Plan};
use crate::provider::Provider;
use crate::registry::{self, Credentials};
use crate::transport::session::ConnectPolicy;
use live::LiveRunners;
pub use report::{AttemptReport, RunReport};

/// Everything a build needs besides its plan.
pub struct Executor<'a> {
    /// One plan, or one per platform (run at the same time).
    pub plan: &'a BuildPlan,
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

type Line<'a> = Box<dyn Fn(&str) + Send + Sync + 'a>;

/// One platform's share of a build: its plan, and its progress and output lines (named by the
/// platform when there are several).
pub(crate) struct Platform<'a> {
    pub ex: &'a Executor<'a>,
    pub plan: &'a Plan,
    pub log: Line<'a>,
    pub output: Line<'a>,
}

impl<'a> Platform<'a> {
    fn new(ex: &'a Executor<'a>, plan: &'a Plan) -> Platform<'a> {
        let (log, output) = (ex.log, ex.output);
        if !ex.plan.several() {
            return Platform {
                ex,
                plan,
                log: Box::new(log),
                output: Box::new(output),
            };
        }
        let name = plan.build.platform.as_str();
        Platform {
            ex,
            plan,
            log: Box::new(move |line| log(&format!("{name}: {line}"))),
            output: Box::new(move |line| output(&format!("{name} │ {line}"))),
        }
    }
}

/// Lease length: the build's timeout plus room for boot, sync and destroy.
fn lease_seconds(plan: &Plan) -> u64 {
    plan.timeout_minutes.unwrap_or(120) * 60 + 15 * 60
}

/// What one platform's attempts came to.
struct PlatformRun {
    attempts: Vec<AttemptReport>,
    digest: Option<String>,
    /// The last attempt's verdict; `None` when it was stopped (cancelled) before one.
    verdict: Option<Verdict>,
    error: Option<String>,
    samples: Vec<Sample>,
    /// Stopped by SIGINT/SIGTERM (not by another platform's failure).
    signalled: bool,
}

impl PlatformRun {
    fn succeeded(&self) -> bool {
        matches!(self.verdict, Some(Verdict::Ok))
    }
}

/// Run the plan: every platform at the same time, each on runners of its own. One platform
/// failing stops the others (their runners are destroyed at once); SIGINT/SIGTERM (`cancel`)
/// stops them all. History samples are recorded once every runner is gone.
pub async fn execute(ex: &Executor<'_>, cancel: CancellationToken) -> RunReport {
    let stop = cancel.child_token();
    let several = ex.plan.several();
    let runs: Vec<PlatformRun> = join_all(ex.plan.platforms.iter().map(|plan| {
        let (stop, cancel) = (&stop, &cancel);
        async move {
            // A platform that fails for good cancels `stop` itself (run_platform).
            run_platform(&Platform::new(ex, plan), stop, cancel).await
        }
    }))
    .await;
    // Cancelled means a platform was stopped by the signal: a SIGTERM that comes after every
    // platform ended (during the last destroy) changes nothing that was built.
    let cancelled = runs.iter().any(|r| r.signalled);

    let named = |plan: &Plan, message: &str| {
        if several {
            format!("{}: {message}", plan.build.platform)
        } else {
            message.to_owned()
        }
    };
    let failed = ex
        .plan
        .platforms
        .iter()
        .zip(&runs)
        .find(|(_, run)| run.verdict.is_some() && !run.succeeded());
    let mut exit = match (cancelled, failed) {
        (true, _) => Exit::Cancelled,
        (false, Some((_, run))) => match &run.verdict {
            Some(Verdict::Oom { .. }) => Exit::OutOfMemory,
            Some(Verdict::Failed { .. }) => Exit::BuildFailed,
            _ => Exit::Infrastructure,
        },
        (false, None) if runs.iter().all(PlatformRun::succeeded) => Exit::Success,
        (false, None) => Exit::Infrastructure,
    };
    let mut error = match (cancelled, failed) {
        (true, _) => Some(format!(
            "cancelled (SIGINT/SIGTERM); {} destroyed",
            if several {
                "every runner was"
            } else {
                "the runner was"
            }
        )),
        (false, Some((plan, run))) => run.error.as_deref().map(|e| named(plan, e)),
        (false, None) => None,
    };
    let mut digest = None;
    if exit == Exit::Success {
        match finish(ex, &runs).await {
            Ok(d) => digest = d,
            Err(message) => {
                exit = Exit::Infrastructure;
                error = Some(message);
            }
        }
    }
    let attempts: Vec<AttemptReport> = runs.iter().flat_map(|r| r.attempts.clone()).collect();
    if let Some(failed) = attempts.iter().find(|a| !a.destroyed && a.runner.is_some()) {
        exit = Exit::NotDestroyed;
        error = Some(format!(
            "runner {} could not be confirmed destroyed: {}; it carries lease labels, so `reap` will find it",
            failed.runner.as_deref().unwrap_or("?"),
            failed.destroy_error.as_deref().unwrap_or("unknown error")
        ));
    }
    for sample in runs.iter().flat_map(|r| &r.samples) {
        match ex.history.append(sample) {
            Ok(()) => (ex.log)(&format!(
                "history: recorded {} MiB peak on {} for {} in {}",
                sample.peak_memory_mib,
                sample.tier.as_deref().unwrap_or("?"),
                sample.repo,
                ex.history.describe()
            )),
            Err(e) => (ex.log)(&format!(
                "warning: the history sample was not recorded: {e}"
            )),
        }
    }
    if ex.plan.platforms.iter().any(|p| !p.history.records) {
        (ex.log)("history: none recorded (a pull request never teaches the sizer)");
    }
    let platforms = if several {
        ex.plan
            .platforms
            .iter()
            .zip(&runs)
            .map(|(plan, run)| report::PlatformReport {
                platform: plan.build.platform.clone(),
                outcome: match &run.verdict {
                    Some(v) => report::AttemptOutcome::from(v),
                    None => report::AttemptOutcome::Cancelled,
                },
                digest: run.digest.clone(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let error = error.map(|e| mask_secrets(&e, ex));
    let mut report = RunReport::new(ex.plan, exit, digest, attempts, error, ex.provider.name());
    report.platforms = platforms;
    report
}

/// After every platform succeeded: verify what was pushed; the digest the tags name (the one
/// image's, or the index's).
async fn finish(ex: &Executor<'_>, runs: &[PlatformRun]) -> Result<Option<String>, String> {
    let first = ex.plan.first();
    let Some(registry) = &first.build.registry else {
        return Ok(runs[0].digest.clone());
    };
    if ex.plan.dry_run() {
        (ex.log)("dry run: nothing was pushed, nothing to verify");
        // Several platforms made no index: there is no one digest to report.
        return Ok(runs[0].digest.clone().filter(|_| !ex.plan.several()));
    }
    let mut parts = Vec::new();
    for (plan, run) in ex.plan.platforms.iter().zip(runs) {
        let Some(digest) = &run.digest else {
            return Err(format!(
                "{}the build reported no image digest (metadata file missing or empty)",
                if ex.plan.several() {
                    format!("{}: ", plan.build.platform)
                } else {
                    String::new()
                }
            ));
        };
        parts.push(registry::index::Part {
            platform: plan.build.platform.clone(),
            digest: digest.clone(),
        });
    }
    if !ex.plan.several() {
        (ex.log)(&format!(
            "verifying {} tag(s) in {registry}",
            first.images.len()
        ));
        return registry::verify_digests(
            &first.images,
            &parts[0].digest,
            registry,
            first.build.insecure_registry,
            ex.credentials.as_ref(),
        )
        .await
        .map(|()| Some(parts[0].digest.clone()))
        .map_err(|e| e.to_string());
    }
    (ex.log)(&format!(
        "pushing one image index of {} platforms under {} tag(s) in {registry}, then verifying it",
        parts.len(),
        first.images.len()
    ));
    let digest = registry::index::push_index(
        &first.build.repository(),
        &first.images,
        &parts,
        registry,
        first.build.insecure_registry,
        ex.credentials.as_ref(),
    )
    .await
    .map_err(|e| e.to_string())?;
    (ex.log)(&format!("image index {digest} verified under every tag"));
    Ok(Some(digest))
}

/// One platform's attempts: its tier, then once more on the next tier after running out of
/// memory. Every attempt's runner is destroyed before the next step, whatever happened.
async fn run_platform(
    p: &Platform<'_>,
    stop: &CancellationToken,
    signal: &CancellationToken,
) -> PlatformRun {
    let plan = p.plan;
    let live = LiveRunners::new(p.ex.provider.clone());
    let mut tiers: Vec<Tier> = vec![plan.server.clone()];
    tiers.extend(plan.retry_server.clone());
    let mut run = PlatformRun {
        attempts: Vec::new(),
        digest: None,
        verdict: None,
        error: None,
        samples: Vec::new(),
        signalled: false,
    };
    let several = p.ex.plan.several();

    for (n, tier) in tiers.iter().enumerate() {
        (p.log)(&format!(
            "attempt {}/{} on {} ({} MiB)",
            n + 1,
            tiers.len(),
            tier.name,
            tier.memory_mib
        ));
        let mut record = AttemptReport::new(&tier.name, &plan.build.platform);
        let attempt = attempt::run(p, tier, &live, &mut record);
        let result = tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            result = attempt => Some(result),
        };
        // A final failure stops the other platforms now, before this runner's destroy (which
        // can take minutes): none of them may start another paid server for a lost build.
        let last = n + 1 == tiers.len();
        let failed_for_good = match &result {
            Some(Ok(done)) => match &done.verdict {
                Verdict::Ok => false,
                Verdict::Oom { .. } => last,
                _ => true,
            },
            Some(Err(_)) => true,
            None => false,
        };
        if failed_for_good && !stop.is_cancelled() {
            if several {
                (p.log)("failed; stopping the other platforms and destroying their runners");
            }
            stop.cancel();
        }
        // Whatever happened, the runner goes now (a dropped attempt left it registered).
        let destroy_started = std::time::Instant::now();
        for (id, outcome) in live.destroy_all(p.log.as_ref(), signal).await {
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
        record.set_cost(tier.price_eur_per_hour, p.plan.ipv4_eur_per_hour);
        let Some(result) = result else {
            record.outcome = report::AttemptOutcome::Cancelled;
            run.attempts.push(record);
            run.verdict = None;
            run.signalled = signal.is_cancelled();
            break;
        };
        let verdict = match result {
            Ok(done) => {
                run.digest = done.digest;
                done.verdict
            }
            Err(e) => Verdict::Lost {
                reason: e.to_string(),
            },
        };
        record.outcome = report::AttemptOutcome::from(&verdict);
        run.samples.extend(sample(p, tier, &record, &verdict));
        run.attempts.push(record);
        let retry = matches!(verdict, Verdict::Oom { .. }) && n + 1 < tiers.len();
        run.error = match &verdict {
            Verdict::Oom { evidence } if retry => {
                (p.log)(&format!(
                    "out of memory on {} ({evidence}); retrying once on {}",
                    tier.name,
                    tiers[n + 1].name
                ));
                None
            }
            Verdict::Oom { evidence } => Some(match (&plan.retry_note, n) {
                (Some(note), 0) => format!("out of memory on {}: {evidence}; {note}", tier.name),
                _ => format!(
                    "out of memory on {}, the last allowed tier: {evidence}",
                    tier.name
                ),
            }),
            Verdict::Failed { reason } => Some(format!("the build failed: {reason}")),
            Verdict::Lost { reason } => Some(reason.clone()),
            Verdict::Ok => None,
        };
        run.verdict = Some(verdict);
        if !retry {
            break;
        }
    }
    run
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

/// The history sample an attempt makes, if it makes one.
fn sample(
    p: &Platform<'_>,
    tier: &Tier,
    record: &AttemptReport,
    verdict: &Verdict,
) -> Option<Sample> {
    // A pull request must not teach the sizer: one big PR build would size the next
    // default-branch builds (ARCHITECTURE.md, "Trust boundaries").
    if !p.plan.history.records {
        return None;
    }
    let peak = record.peak_memory_mib?;
    let outcome = match verdict {
        Verdict::Ok => Outcome::Ok,
        Verdict::Oom { .. } => Outcome::Oom,
        Verdict::Failed { .. } => Outcome::Failed,
        Verdict::Lost { .. } => return None,
    };
    let key = &p.plan.history.key;
    Some(Sample {
        ts: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        repo: key.repo.clone(),
        dockerfile: key.dockerfile.clone(),
        target: key.target.clone(),
        lang: Some(p.plan.language.as_str().to_owned()),
        tier: Some(tier.name.clone()),
        arch: Some(key.arch),
        peak_memory_mib: peak,
        duration_s: (record.seconds.build * 10.0).round() / 10.0,
        outcome,
    })
}

/// Bounded retry of a destroy: transient failures happen, a leaked runner costs money.
pub(crate) const DESTROY_ATTEMPTS: u32 = 3;
pub(crate) const DESTROY_BACKOFF: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests;
