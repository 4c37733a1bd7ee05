//! A build's plans: one, or one per platform of `--platform linux/amd64,linux/arm64`.
//!
//! Each platform is planned on its own: its own history key (the architecture is part of it),
//! its own ladder, size, retry and cost. [`BuildPlan`] holds them; with one platform it prints
//! and serializes exactly as that plan, so single-platform output is what it always was.

use std::fmt::Write;

use serde::{Serialize, Serializer};

use super::{Facts, Plan, PlanError, PlanRequest, gather, render_human};
use crate::config::Config;
use crate::history::HistoryStore;

#[derive(Debug, Clone, PartialEq)]
pub struct BuildPlan {
    /// At least one; several are built at the same time, each on a runner of its own.
    pub platforms: Vec<Plan>,
}

impl BuildPlan {
    pub fn one(plan: Plan) -> BuildPlan {
        BuildPlan {
            platforms: vec![plan],
        }
    }

    /// Plan every platform of `req`: gather and decide each one. Warnings of every gather
    /// (history that could not be read, skipped lines) go to `warn`, each once.
    pub fn new(
        req: &PlanRequest,
        config: &Config,
        store: &dyn HistoryStore,
        warn: &mut dyn FnMut(&str),
    ) -> Result<BuildPlan, PlanError> {
        let mut platforms = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for one in req.per_platform() {
            let facts: Facts = gather(&one, config, store)?;
            for warning in &facts.warnings {
                if !seen.contains(warning) {
                    warn(warning);
                    seen.push(warning.clone());
                }
            }
            platforms.push(Plan::new(&one, config, &facts)?);
        }
        Ok(BuildPlan { platforms })
    }

    pub fn several(&self) -> bool {
        self.platforms.len() > 1
    }

    /// The plan every platform shares the build settings of (the first).
    pub fn first(&self) -> &Plan {
        &self.platforms[0]
    }

    /// Every tag's image reference; with several platforms each names the index.
    pub fn images(&self) -> &[String] {
        &self.first().images
    }

    pub fn dry_run(&self) -> bool {
        self.first().dry_run
    }

    /// The first attempts' cost: the sum over platforms, when every one has a price.
    pub fn estimated_cost_eur(&self) -> Option<f64> {
        self.platforms.iter().map(|p| p.estimated_cost_eur).sum()
    }

    pub fn plans_mut(&mut self) -> impl Iterator<Item = &mut Plan> {
        self.platforms.iter_mut()
    }

    /// The human form: one plan as always; several as a section per platform, then what they
    /// make together.
    pub fn render_human(&self) -> String {
        if !self.several() {
            return render_human(self.first());
        }
        let mut out = String::new();
        let names: Vec<&str> = self
            .platforms
            .iter()
            .map(|p| p.build.platform.as_str())
            .collect();
        let _ = writeln!(
            out,
            "{} platforms ({}), each built natively on a runner of its own, at the same time\n",
            self.platforms.len(),
            names.join(", ")
        );
        for plan in &self.platforms {
            let _ = writeln!(out, "── {} ──", plan.build.platform);
            let _ = writeln!(out, "{}", render_human(plan));
        }
        let push = match &self.first().build.registry {
            Some(_) if self.dry_run() => "not pushed: dry run",
            Some(_) => "each platform pushed by digest, then one OCI image index under every tag",
            None => "not pushed: no --registry given",
        };
        let _ = writeln!(out, "Together:");
        let _ = writeln!(out, "  images    {} ({push})", self.images().join(", "));
        let cost = match self.estimated_cost_eur() {
            Some(eur) => format!("about {eur:.4} EUR, the sum of the platforms' estimates"),
            None => "unknown: a platform's tier has no known price".to_owned(),
        };
        let _ = writeln!(out, "  cost      {cost}");
        out
    }
}

/// What `plan --json` prints and a report's `plan` holds for several platforms.
#[derive(Serialize)]
struct Several<'a> {
    platforms: &'a [Plan],
    images: &'a [String],
    dry_run: bool,
    /// Always true here: the tags name an OCI image index of the platforms' images.
    index: bool,
    estimated_cost_eur: Option<f64>,
    cost_basis: &'static str,
}

impl Serialize for BuildPlan {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.several() {
            return self.first().serialize(s);
        }
        Several {
            platforms: &self.platforms,
            images: self.images(),
            dry_run: self.dry_run(),
            index: true,
            estimated_cost_eur: self.estimated_cost_eur(),
            cost_basis: "the sum of the platforms' first attempts",
        }
        .serialize(s)
    }
}
