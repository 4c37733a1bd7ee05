//! The plan: every decision a build makes before it touches a cloud, as one printable value.
//!
//! [`gather`] reads what sizing needs (spec file, history, language markers); [`Plan::new`] is
//! pure and builds the value that `plan` prints and `build` executes, so the dry run and the
//! real run cannot drift apart.

mod cost;
mod render;
pub mod rung;
mod several;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backend::{self, Backend, BuildRequest, REMOTE_WORKDIR, RemotePaths};
use crate::config::{Arch, Config, Tier};
use crate::history::{HistoryKey, HistoryStore, Sample};
use crate::sizing::rules::{billed_hours, nearest_rank};
use crate::sizing::{self, Language, LoadedSpec, SizingError, SizingInput, Source};

use cost::{REFERENCE_IPV4, REFERENCE_SERVER, cost, cost_of};
pub use render::render_human;
pub use rung::Rung;
pub use several::BuildPlan;

/// What the user asked for, after argument parsing.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub context: PathBuf,
    pub key: HistoryKey,
    pub arch: Option<Arch>,
    /// `--platform` naming several: one plan (and runner) per architecture. Empty otherwise
    /// (a single platform is `arch`).
    pub platforms: Vec<Arch>,
    pub build: BuildRequest,
    /// A pull-request pipeline (`CI_PIPELINE_EVENT`): history is read, never written.
    pub pull_request: bool,
    /// `--auto-tag` found nothing to tag on this branch: nothing to build, and why.
    pub skip: Option<String>,
    /// What the launcher changed of the request, and why (a pull request's own tag), for the
    /// log once the build is allowed to start.
    pub notes: Vec<String>,
}

impl PlanRequest {
    /// One request per platform: each of several `--platform`s as its `--arch`, pushing by
    /// digest; otherwise just this one.
    pub fn per_platform(&self) -> Vec<PlanRequest> {
        if self.platforms.len() < 2 {
            return vec![self.clone()];
        }
        self.platforms
            .iter()
            .map(|&arch| {
                let mut one = self.clone();
                one.arch = Some(arch);
                one.platforms = Vec::new();
                one.build.by_digest = true;
                // Two platforms exporting to one cache reference would overwrite each other's
                // cache: as with the default cache, every architecture but amd64 gets its own
                // tag (`:v1` → `:v1-arm64`, none → `:latest-arm64`). Imports follow, so each
                // platform reads what it wrote.
                if arch != Arch::Amd64 {
                    let own = |r: &mut crate::backend::cache::CacheRef| {
                        // A tag has at most 128 characters: the base gives way to the suffix.
                        let suffix = format!("-{arch}");
                        let base = r.tag_or_latest();
                        let keep = base.len().min(128 - suffix.len());
                        r.tag = Some(format!("{}{suffix}", &base[..keep]));
                    };
                    one.build
                        .cache_to
                        .iter_mut()
                        .for_each(|e| own(&mut e.reference));
                    one.build
                        .cache_from
                        .iter_mut()
                        .for_each(|i| own(&mut i.reference));
                }
                one
            })
            .collect()
    }
}

/// Woodpecker's pull-request events (`CI_PIPELINE_EVENT`).
pub const PULL_REQUEST_EVENTS: &[&str] = &[
    "pull_request",
    "pull_request_closed",
    "pull_request_metadata",
];

/// What sizing reads from disk and history, gathered once.
pub struct Facts {
    /// The history key, with the architecture decided (flag, spec or default).
    pub key: HistoryKey,
    pub spec: Option<LoadedSpec>,
    pub language: Language,
    pub language_marker: Option<&'static str>,
    pub history: Vec<Sample>,
    pub history_store: String,
    pub warnings: Vec<String>,
    /// The context's entries to send (relative paths), `.dockerignore` applied.
    pub context_entries: Vec<PathBuf>,
    /// The context's real path (no symlink in it) when its entries were listed.
    pub context_root: PathBuf,
    /// The history store could not be read; sizing went on without it.
    pub history_unreadable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{}: the build context does not exist or is not a directory", .0.display())]
    MissingContext(PathBuf),
    #[error(
        "{}: the build context now resolves to {}, outside the workspace {} (a symlink appeared on its path after the settings were checked: another process writes into the workspace); nothing was built",
        crate::text::quote(&context.display().to_string()),
        crate::text::quote(&real.display().to_string()),
        crate::text::quote(&workspace.display().to_string())
    )]
    ContextOutside {
        context: PathBuf,
        real: PathBuf,
        workspace: PathBuf,
    },
    #[error("{0}")]
    ContextChanged(String),
    #[error(transparent)]
    Context(#[from] crate::transport::dockerignore::DockerignoreError),
    #[error("{0}")]
    Unsupported(String),
    #[error("--dockerfile {0}: must be a relative path inside the context")]
    DockerfileOutside(String),
    #[error(transparent)]
    Spec(#[from] sizing::SpecError),
    #[error(transparent)]
    Sizing(#[from] SizingError),
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
}

/// Read the spec file, detect the language, and load the key's recent history.
pub fn gather(
    req: &PlanRequest,
    config: &Config,
    store: &dyn HistoryStore,
) -> Result<Facts, PlanError> {
    if !req.context.is_dir() {
        return Err(PlanError::MissingContext(req.context.clone()));
    }
    let dockerfile = Path::new(&req.build.dockerfile);
    if dockerfile.is_absolute()
        || dockerfile
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(PlanError::DockerfileOutside(req.build.dockerfile.clone()));
    }
    // The context's real path, taken as it is listed: the sync reads that path, through no
    // symlink a later swap could add (transport::context_guard).
    let context_root = req
        .context
        .canonicalize()
        .map_err(|_| PlanError::MissingContext(req.context.clone()))?;
    // A plugin's context was checked beneath the workspace through no symlink; one swapped in
    // since (by another step sharing the workspace) must not take the build elsewhere.
    let confinement = crate::transport::context_guard::confinement();
    if let Some(workspace) = confinement
        && !context_root.starts_with(workspace)
    {
        return Err(PlanError::ContextOutside {
            context: req.context.clone(),
            real: context_root,
            workspace: workspace.to_owned(),
        });
    }
    // What would be sent, decided now: a bad ignore file or a Dockerfile reached through a
    // symlink is refused before any server exists. A plugin's context is read by its real
    // path (at a terminal, by the name it was given, so that messages name files as the user
    // wrote them).
    let base = if confinement.is_some() {
        context_root.as_path()
    } else {
        req.context.as_path()
    };
    let context_entries =
        crate::transport::dockerignore::context_entries(base, &req.build.dockerfile)?;
    let spec_path = base.join(&config.spec.file);
    let spec = if spec_path.exists() {
        let root = sizing::spec::repository_root(base, confinement);
        Some(LoadedSpec::load(&spec_path, &root, config.spec_timeout())?)
    } else {
        None
    };
    let (language, language_marker) = Language::detect(base);
    // Still the same directories once read: a swap while they were read is refused here, as
    // one while rsync reads them is later.
    crate::transport::context_guard::check(
        &context_root,
        &crate::transport::context_guard::directories(&context_entries),
    )
    .map_err(PlanError::ContextChanged)?;
    let key = HistoryKey {
        arch: sizing::choose_arch(req.arch, spec.as_ref(), config.default_arch)?,
        ..req.key.clone()
    };
    // History never blocks a build: a store that cannot be read (a registry token scoped to
    // images and cache only, a registry down) is a warning, and sizing goes on without it.
    let (recent, history_unreadable) = match store.recent(&key, config.sizing.window) {
        Ok(recent) => (recent, false),
        // Not a store that is down but a setting naming a device, a FIFO or a huge file.
        Err(e @ crate::history::HistoryError::NotAHistoryFile { .. }) => return Err(e.into()),
        Err(e) => (
            crate::history::Recent {
                samples: Vec::new(),
                warnings: vec![format!(
                    "{e}; sizing this build without history (from the spec or the language default)"
                )],
            },
            true,
        ),
    };
    Ok(Facts {
        key,
        spec,
        language,
        language_marker,
        history: recent.samples,
        history_store: store.describe(),
        warnings: recent.warnings,
        context_entries,
        context_root,
        history_unreadable,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub tier: String,
    pub retry_tier: Option<String>,
    pub source: Source,
    pub required_memory_mib: Option<u64>,
    pub samples: usize,
    pub reason: String,
    pub arch: Arch,
    /// First attempt, per started hour, the primary IPv4 included; `None` when the tier has no
    /// known price.
    pub estimated_cost_eur: Option<f64>,
    pub cost_basis: String,
    /// The runner's primary IPv4, net EUR per started hour; `None` for IPv6-only runners
    /// (`hcloud.ipv4 = false`).
    pub ipv4_eur_per_hour: Option<f64>,
    pub server: Tier,
    /// The rung as a need, and the types a create would try for it.
    pub rung: Rung,
    /// Where the server's and the IPv4's prices come from, for the cost basis.
    #[serde(skip)]
    pub server_price_from: String,
    #[serde(skip)]
    pub ipv4_price_from: String,
    pub retry_server: Option<Tier>,
    /// Why there is no retry although a larger tier exists (its price is above the ceiling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_note: Option<String>,
    pub percentile_mib: Option<u64>,
    pub language: Language,
    pub timeout_minutes: Option<u64>,
    pub history: HistoryInfo,
    pub spec_file: Option<PathBuf>,
    pub context: PathBuf,
    pub dockerfile: String,
    pub images: Vec<String>,
    /// Built on the runner, nothing pushed (`--dry-run`).
    pub dry_run: bool,
    pub cache_ref: Option<String>,
    /// `--cache-to` / `--cache-from` beside the default cache.
    pub extra_caches: backend::cache::ExtraCaches,
    pub commands: Vec<String>,
    /// Why the build tool differs from the one asked for (`--backend`), when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_note: Option<String>,
    /// buildctl backend: seconds to wait for buildkitd to list a worker before the build.
    #[serde(skip)]
    pub buildkitd_ready_timeout_s: u64,
    #[serde(skip)]
    pub build: BuildRequest,
    /// What the sync sends, computed with the plan (before any runner exists).
    #[serde(skip)]
    pub context_entries: Vec<PathBuf>,
    /// The context's real path when it was listed: what the sync reads.
    #[serde(skip)]
    pub context_root: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryInfo {
    pub store: String,
    pub key: HistoryKey,
    /// Hours the cost estimate assumes (from recent durations, else one).
    pub billed_hours: f64,
    /// Whether this build appends its sample (pull-request builds do not).
    pub records: bool,
}

impl Plan {
    /// Decide. Pure: everything read from outside is in `facts`.
    pub fn new(req: &PlanRequest, config: &Config, facts: &Facts) -> Result<Plan, PlanError> {
        if req.build.backend == backend::Backend::Buildah
            && (req.build.sbom || req.build.provenance.is_some())
        {
            return Err(PlanError::Unsupported(
                "--sbom/--provenance: attestations need the buildctl backend (BuildKit); buildah cannot make them".into(),
            ));
        }
        if req.build.backend == backend::Backend::Buildah && req.build.by_digest {
            return Err(PlanError::Unsupported(
                "--platform: several platforms need the buildctl backend (BuildKit pushes each by digest for the image index); buildah cannot".into(),
            ));
        }
        let sizing = sizing::decide(&SizingInput {
            config,
            arch_flag: req.arch,
            spec: facts.spec.as_ref(),
            language: facts.language,
            language_marker: facts.language_marker,
            key: &facts.key,
            history: &facts.history,
            history_unreadable: facts.history_unreadable,
        })?;
        let durations: Vec<u64> = facts
            .history
            .iter()
            .map(|s| s.duration_s.max(0.0).ceil() as u64)
            .collect();
        let expected_s = nearest_rank(&durations, config.sizing.percentile).unwrap_or(0) as f64;
        let hours = billed_hours(expected_s);
        let ipv4 = config
            .hcloud
            .ipv4
            .then_some(crate::provider::hcloud::catalogue::IPV4_EUR_PER_HOUR);
        let (estimated_cost_eur, cost_basis) = cost(&sizing, hours, ipv4);
        let mut build = req.build.clone();
        build.platform = sizing.arch.platform().to_owned();
        for repo in std::iter::once(&build.image_repo).chain(&build.also_repos) {
            if let Some(namespace) = config.registry.namespace_of(repo) {
                return Err(PlanError::Unsupported(format!(
                    "{}: \"{repo}\" is inside {namespace}; push images elsewhere",
                    crate::exit::option("--repo"),
                )));
            }
        }
        build.cache_repo = config.registry.cache_repo(&build.image_repo);
        if build.sbom {
            build.sbom_generator = config.buildkitd.sbom_generator.clone();
        }
        backend::cache::settle(&mut build, &config.registry.history)
            .map_err(PlanError::Unsupported)?;
        let paths = RemotePaths::new(REMOTE_WORKDIR);
        let mut commands = vec![format!(
            "rsync --archive {}/ root@<runner>:{}/   # honours .dockerignore",
            req.context.display(),
            paths.context()
        )];
        let ready_timeout_s = config.buildkitd.ready_timeout_s;
        if build.backend == Backend::Buildctl {
            commands.push(format!(
                "{}   # until buildkitd lists a worker",
                backend::buildctl::workers_command(ready_timeout_s)
            ));
        }
        commands.push(backend::script(&build, &paths));
        Ok(Plan {
            tier: sizing.tier.name.clone(),
            retry_tier: sizing.retry_tier.as_ref().map(|t| t.name.clone()),
            source: sizing.source,
            required_memory_mib: sizing.required_memory_mib,
            samples: sizing.samples,
            reason: sizing.reason.clone(),
            arch: sizing.arch,
            estimated_cost_eur,
            cost_basis,
            ipv4_eur_per_hour: ipv4,
            rung: Rung::offline(&sizing.tier, sizing.arch, config),
            server_price_from: REFERENCE_SERVER.to_owned(),
            ipv4_price_from: REFERENCE_IPV4.to_owned(),
            server: sizing.tier.clone(),
            retry_server: sizing.retry_tier.clone(),
            retry_note: rung::ceiling_took_the_retry(
                sizing.arch,
                &sizing.tier,
                sizing.retry_tier.as_ref(),
                config,
            ),
            percentile_mib: sizing.percentile_mib,
            language: sizing.language,
            timeout_minutes: sizing.timeout_minutes,
            history: HistoryInfo {
                store: facts.history_store.clone(),
                key: facts.key.clone(),
                billed_hours: hours,
                records: !req.pull_request,
            },
            spec_file: facts.spec.as_ref().map(|s| s.path.clone()),
            context: req.context.clone(),
            dockerfile: build.dockerfile.clone(),
            images: build.images(),
            dry_run: build.dry_run,
            cache_ref: build.cache_ref(),
            extra_caches: backend::cache::ExtraCaches::of(&build),
            commands,
            backend_note: None,
            buildkitd_ready_timeout_s: ready_timeout_s,
            build,
            context_entries: facts.context_entries.clone(),
            context_root: facts.context_root.clone(),
        })
    }
}

impl Plan {
    /// The retry is a server the build may order too: it is held against the same price
    /// ceiling (`max`, described as `ceiling`) at the API's price (`price`, in a location).
    /// Above it, or without a price under a price ceiling, the build gets no retry, and the
    /// plan says why.
    pub fn hold_retry_to_ceiling(
        &mut self,
        price: Option<(f64, &str)>,
        max: Option<f64>,
        ceiling: &str,
    ) {
        let Some(retry) = &mut self.retry_server else {
            return;
        };
        let why = match (price, max) {
            (Some((price, location)), Some(max)) if price > max => format!(
                "the retry's server type {} costs {price} EUR/h in {location} (the API's price), above the ceiling: {ceiling}",
                retry.name
            ),
            (Some((price, _)), _) => {
                retry.price_eur_per_hour = Some(price);
                return;
            }
            (None, Some(_)) => format!(
                "the retry's server type {} has no price from the API, and an unpriced type counts as above the ceiling: {ceiling}",
                retry.name
            ),
            (None, None) => return,
        };
        self.retry_server = None;
        self.retry_tier = None;
        self.retry_note = Some(why);
    }

    /// Replace the reference price with the API's (hourly, net, in `location`).
    pub fn use_api_price(&mut self, eur_per_hour: f64, location: &str) {
        self.server.price_eur_per_hour = Some(eur_per_hour);
        self.server_price_from = format!("the Hetzner API's net price in {location}");
        self.recost();
    }

    /// Replace the primary IPv4's reference price with the API's (`GET /pricing`, in
    /// `location`). IPv6-only runners have none to replace.
    pub fn use_api_ipv4_price(&mut self, eur_per_hour: f64, location: &str) {
        if self.ipv4_eur_per_hour.is_none() {
            return;
        }
        self.ipv4_eur_per_hour = Some(eur_per_hour);
        self.ipv4_price_from = format!("GET /pricing in {location}");
        self.recost();
    }

    fn recost(&mut self) {
        let hours = self.history.billed_hours;
        let (cost, basis) = cost_of(
            hours,
            self.server.price_eur_per_hour,
            &self.server_price_from,
            self.ipv4_eur_per_hour,
            &self.ipv4_price_from,
        );
        self.estimated_cost_eur = cost;
        self.cost_basis = match cost {
            Some(_) => basis,
            None => self.cost_basis.clone(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Python build (cx23, retry cx33) with nothing read from disk.
    fn plan() -> Plan {
        let config = Config::defaults();
        let key = HistoryKey {
            repo: "org/app".into(),
            dockerfile: "Dockerfile".into(),
            target: None,
            arch: Arch::Amd64,
        };
        let req = PlanRequest {
            context: PathBuf::from("/nonexistent"),
            key: key.clone(),
            arch: Some(Arch::Amd64),
            platforms: Vec::new(),
            build: BuildRequest {
                dockerfile: "Dockerfile".into(),
                image_repo: "org/app".into(),
                tags: vec!["latest".into()],
                ..BuildRequest::default()
            },
            pull_request: false,
            skip: None,
            notes: Vec::new(),
        };
        let facts = Facts {
            key,
            spec: None,
            language: Language::Python,
            language_marker: None,
            history: Vec::new(),
            history_store: "none".into(),
            warnings: Vec::new(),
            context_entries: Vec::new(),
            context_root: req.context.clone(),
            history_unreadable: false,
        };
        Plan::new(&req, &config, &facts).unwrap()
    }

    #[test]
    fn the_estimate_counts_the_primary_ipv4_at_the_reference_then_the_apis_price() {
        let mut p = plan();
        assert_eq!(p.ipv4_eur_per_hour, Some(0.0008));
        assert!((p.estimated_cost_eur.unwrap() - (0.0064 + 0.0008)).abs() < 1e-12);
        assert_eq!(
            p.cost_basis,
            "1 started hour × (0.0064 EUR/h server + 0.0008 EUR/h primary IPv4): reference prices (the server's from the launcher config, the IPv4's built in)"
        );
        p.use_api_price(0.007, "fsn1");
        p.use_api_ipv4_price(0.001, "fsn1");
        assert!((p.estimated_cost_eur.unwrap() - 0.008).abs() < 1e-12);
        assert_eq!(
            p.cost_basis,
            "1 started hour × (0.007 EUR/h server + 0.001 EUR/h primary IPv4): server: the Hetzner API's net price in fsn1; IPv4: GET /pricing in fsn1"
        );
        // IPv6-only runners: no IPv4 to count, whatever /pricing says.
        let mut p = plan();
        p.ipv4_eur_per_hour = None;
        p.use_api_ipv4_price(0.001, "fsn1");
        p.use_api_price(0.007, "fsn1");
        assert_eq!(p.ipv4_eur_per_hour, None);
        assert!((p.estimated_cost_eur.unwrap() - 0.007).abs() < 1e-12);
        assert!(
            p.cost_basis.ends_with("IPv6 only, no primary IPv4"),
            "{}",
            p.cost_basis
        );
    }

    #[test]
    fn the_retry_is_held_to_the_price_ceiling_at_the_apis_price() {
        let mut p = plan();
        assert_eq!(p.tier, "cx23");
        assert_eq!(p.retry_tier.as_deref(), Some("cx33"));
        // Within the ceiling: the API's price replaces the reference.
        p.hold_retry_to_ceiling(Some((0.0129, "fsn1")), Some(0.02), "at most 0.02 EUR/h");
        assert_eq!(
            p.retry_server.as_ref().unwrap().price_eur_per_hour,
            Some(0.0129)
        );
        // Above it: no retry, and why.
        p.hold_retry_to_ceiling(Some((0.0135, "fsn1")), Some(0.013), "at most 0.013 EUR/h");
        assert_eq!(p.retry_server, None);
        assert_eq!(p.retry_tier, None);
        let note = p.retry_note.clone().unwrap();
        assert!(note.contains("cx33 costs 0.0135 EUR/h in fsn1"), "{note}");
        assert!(render_human(&p).contains(&note), "the plan says why");
        // Unpriced under a price ceiling counts as above it.
        let mut p = plan();
        p.hold_retry_to_ceiling(None, Some(0.05), "at most 0.05 EUR/h");
        assert!(p.retry_note.unwrap().contains("no price"));
        // No ceiling, no price: the retry stays.
        let mut p = plan();
        p.hold_retry_to_ceiling(None, None, "");
        assert!(p.retry_server.is_some());
    }
}
