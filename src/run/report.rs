//! The run report (ARCHITECTURE.md: `build --report FILE`, `--json`) and the human summary.

use std::fmt::Write;

use serde::Serialize;

use crate::backend::classify::Verdict;
use crate::exit::Exit;
use crate::plan::BuildPlan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Success,
    BuildFailed,
    OutOfMemory,
    Infrastructure,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    Ok,
    Oom,
    Failed,
    Lost,
    Cancelled,
}

impl From<&Verdict> for AttemptOutcome {
    fn from(v: &Verdict) -> Self {
        match v {
            Verdict::Ok => AttemptOutcome::Ok,
            Verdict::Oom { .. } => AttemptOutcome::Oom,
            Verdict::Failed { .. } => AttemptOutcome::Failed,
            Verdict::Lost { .. } => AttemptOutcome::Lost,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Seconds {
    pub spawn: f64,
    pub ssh: f64,
    pub sync: f64,
    pub build: f64,
    pub destroy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptReport {
    /// `linux/amd64`: with several platforms, each platform's attempts follow each other.
    pub platform: String,
    pub tier: String,
    /// The server type used instead of `tier`, and why (a sold-out type's substitute).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub substitute: Option<crate::provider::Substitute>,
    pub outcome: AttemptOutcome,
    pub runner: Option<String>,
    pub destroyed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destroy_error: Option<String>,
    pub peak_memory_mib: Option<u64>,
    pub seconds: Seconds,
    /// What the runner cost: its lifetime in started hours × (the tier's hourly price + its
    /// primary IPv4's; Hetzner bills both per started hour); `None` without a runner or a price.
    pub cost_eur: Option<f64>,
    /// The primary IPv4's part of `cost_eur` (absent for an IPv6-only runner).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4_cost_eur: Option<f64>,
    /// What went wrong without failing the attempt: a registry cache that could not be
    /// written (backend::cache_exports).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl AttemptReport {
    pub fn new(tier: &str, platform: &str) -> AttemptReport {
        AttemptReport {
            platform: platform.to_owned(),
            tier: tier.to_owned(),
            substitute: None,
            outcome: AttemptOutcome::Lost,
            runner: None,
            destroyed: false,
            destroy_error: None,
            peak_memory_mib: None,
            seconds: Seconds::default(),
            cost_eur: None,
            ipv4_cost_eur: None,
            warnings: Vec::new(),
        }
    }

    /// The runner's cost at `price` EUR per started hour and its primary IPv4's at `ipv4`
    /// (`None`: IPv6 only), once its seconds are known.
    pub fn set_cost(&mut self, price: Option<f64>, ipv4: Option<f64>) {
        let s = &self.seconds;
        let lived = s.spawn + s.ssh + s.sync + s.build + s.destroy;
        // A substitute is billed at its own price.
        let price = self
            .substitute
            .as_ref()
            .and_then(|s| s.price_eur_per_hour)
            .or(price);
        let hours = (lived / 3600.0).ceil().max(1.0);
        self.ipv4_cost_eur = match (&self.runner, ipv4) {
            (Some(_), Some(ip)) => Some(hours * ip),
            _ => None,
        };
        self.cost_eur = match (&self.runner, price) {
            (Some(_), Some(price)) => Some(hours * price + self.ipv4_cost_eur.unwrap_or(0.0)),
            _ => None,
        };
    }
}

/// One platform of several: how it ended and the digest its runner pushed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlatformReport {
    pub platform: String,
    pub outcome: AttemptOutcome,
    pub digest: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub outcome: RunOutcome,
    pub exit_code: u8,
    pub digest: Option<String>,
    pub images: Vec<String>,
    pub provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub plan: BuildPlan,
    /// Several platforms: each one's outcome and pushed digest (`digest` above is the index's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformReport>,
    pub attempts: Vec<AttemptReport>,
    /// The sum of the attempts' costs, when every runner's price is known.
    pub cost_eur: Option<f64>,
    #[serde(skip)]
    pub exit: Exit,
}

impl RunReport {
    pub fn new(
        plan: &BuildPlan,
        exit: Exit,
        digest: Option<String>,
        attempts: Vec<AttemptReport>,
        error: Option<String>,
        provider: &str,
    ) -> RunReport {
        let outcome = match exit {
            Exit::Success => RunOutcome::Success,
            Exit::BuildFailed => RunOutcome::BuildFailed,
            Exit::OutOfMemory => RunOutcome::OutOfMemory,
            Exit::Cancelled => RunOutcome::Cancelled,
            Exit::Infrastructure | Exit::NotDestroyed | Exit::Usage => RunOutcome::Infrastructure,
        };
        let images = if exit == Exit::Success {
            plan.images().to_vec()
        } else {
            Vec::new()
        };
        let cost_eur = attempts
            .iter()
            .filter(|a| a.runner.is_some())
            .map(|a| a.cost_eur)
            .sum();
        RunReport {
            outcome,
            exit_code: exit as u8,
            digest,
            images,
            provider: provider.to_owned(),
            error,
            plan: plan.clone(),
            platforms: Vec::new(),
            attempts,
            cost_eur,
            exit,
        }
    }

    /// The human summary: the result in a sentence, then one row per attempt, then the cost.
    pub fn render_human(&self) -> String {
        let mut out = String::new();
        let several = self.plan.several();
        let index = if several { "image index " } else { "" };
        let _ = match (&self.outcome, &self.error) {
            (RunOutcome::Success, _) if self.plan.dry_run() => writeln!(
                out,
                "build succeeded (dry run, nothing pushed): {}",
                self.plan.images().join(", "),
            ),
            (RunOutcome::Success, _) => writeln!(
                out,
                "build succeeded: {}{}",
                self.images.join(", "),
                self.digest
                    .as_ref()
                    .map(|d| format!(" ({index}{d})"))
                    .unwrap_or_default()
            ),
            (_, Some(error)) => writeln!(out, "build {}: {error}", outcome_word(self.outcome)),
            (_, None) => writeln!(out, "build {}", outcome_word(self.outcome)),
        };
        let platform_head = if several { "platform     " } else { "" };
        let _ = writeln!(
            out,
            "\n  #  {platform_head}tier    outcome    peak MiB   spawn     ssh    sync    build  destroy  runner"
        );
        for (i, a) in self.attempts.iter().enumerate() {
            let s = &a.seconds;
            let runner = match (&a.runner, a.destroyed) {
                (Some(r), true) => format!("{r} (destroyed)"),
                (Some(r), false) => format!("{r} (NOT destroyed)"),
                (None, _) => "-".to_owned(),
            };
            let platform = if several {
                format!("{:<12} ", a.platform)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {:<2} {platform}{:<7} {:<10} {:>8} {:>6.1}s {:>6.1}s {:>6.1}s {:>7.1}s {:>7.1}s  {runner}",
                i + 1,
                a.tier,
                format!("{:?}", a.outcome).to_lowercase(),
                a.peak_memory_mib
                    .map_or_else(|| "-".to_owned(), |p| p.to_string()),
                s.spawn,
                s.ssh,
                s.sync,
                s.build,
                s.destroy,
            );
        }
        let runners = self.attempts.iter().filter(|a| a.runner.is_some()).count();
        if runners > 0 {
            let _ = match self.cost_eur {
                Some(eur) => writeln!(
                    out,
                    "\n  cost: {eur:.4} EUR for {runners} runner{} (each billed per started hour{})",
                    if runners == 1 { "" } else { "s" },
                    if self.attempts.iter().any(|a| a.ipv4_cost_eur.is_some()) {
                        ", its primary IPv4 included"
                    } else {
                        ""
                    }
                ),
                None => writeln!(out, "\n  cost: unknown (a tier has no known price)"),
            };
        }
        out
    }
}

fn outcome_word(o: RunOutcome) -> &'static str {
    match o {
        RunOutcome::Success => "succeeded",
        RunOutcome::BuildFailed => "failed",
        RunOutcome::OutOfMemory => "ran out of memory",
        RunOutcome::Infrastructure => "stopped by an infrastructure failure",
        RunOutcome::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_costs_its_server_and_its_primary_ipv4_per_started_hour() {
        let mut a = AttemptReport::new("cx33", "linux/amd64");
        a.runner = Some("7".into());
        a.seconds.build = 3700.0; // 2 started hours
        a.set_cost(Some(0.0104), Some(0.0008));
        assert!((a.cost_eur.unwrap() - 2.0 * (0.0104 + 0.0008)).abs() < 1e-12);
        assert!((a.ipv4_cost_eur.unwrap() - 0.0016).abs() < 1e-12);
        // IPv6 only: the server alone.
        a.set_cost(Some(0.0104), None);
        assert!((a.cost_eur.unwrap() - 0.0208).abs() < 1e-12);
        assert_eq!(a.ipv4_cost_eur, None);
        // No runner, no cost.
        let mut none = AttemptReport::new("cx33", "linux/amd64");
        none.set_cost(Some(0.0104), Some(0.0008));
        assert_eq!((none.cost_eur, none.ipv4_cost_eur), (None, None));
    }
}
