//! What `GET /server_types` says about a ladder (one request per run, cached): that each tier
//! exists, where it is sold among the configured locations (`server_types[].locations[]`, not
//! past `unavailable_after`), where it is deprecated, and its price. The create then tries
//! only the locations that sell the type.

use std::collections::HashMap;
use std::time::SystemTime;

use reqwest::Method;

use super::candidates::{Candidate, Ceiling, Ranked, rank, rank_all};
use super::{ApiError, HcloudProvider, Retry, api, hetzner_arch};
use crate::config::{Arch, Tier};

/// What `GET /server_types` says about a ladder.
#[derive(Debug, Default)]
pub struct LadderCheck {
    /// Tier name → (net EUR/h, location of that price).
    pub prices: HashMap<String, (f64, String)>,
    /// A tier deprecated in a configured location where it is still sold: (type, location,
    /// the date after which it is not sold there).
    pub deprecated: Vec<(String, String, String)>,
    /// Warnings: a needed rung that runs on a substitute (and why), a type of the ladder the
    /// build does not order that Hetzner does not know.
    pub notes: Vec<String>,
    /// A needed rung no type can serve (not sold in a configured location, or above the
    /// ceiling, with no other type meeting its need): the caller decides (the build's rung:
    /// exit 2; its retry rung: no retry).
    pub without_candidate: Vec<(String, LadderError)>,
}

#[derive(Debug, thiserror::Error)]
pub enum LadderError {
    #[error(
        "tiers.{arch}: server type \"{name}\" does not exist at Hetzner; valid {arch} types are {valid}"
    )]
    Unknown {
        arch: Arch,
        name: String,
        valid: String,
    },
    #[error(
        "tiers.{arch}: server type \"{name}\" is not sold in any configured location ({configured}) and no other type meets its need there; it is sold in {sold}: add one of them to hcloud.locations (or --location)"
    )]
    NotSold {
        arch: Arch,
        name: String,
        configured: String,
        sold: String,
    },
    #[error(
        "tiers.{arch}: server type \"{name}\" is of Hetzner's \"{its}\" architecture, not {arch}; list only {arch} types there"
    )]
    WrongArch {
        arch: Arch,
        name: String,
        its: String,
    },
    #[error(
        "tiers.{arch}: rung {name} has no candidate within the ceiling: {name} {price}, and no other type meeting its need is within it either; the ceiling: {ceiling}"
    )]
    AboveCeiling {
        arch: Arch,
        name: String,
        price: String,
        ceiling: String,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl HcloudProvider {
    /// Every server type, read once per run (paged, stable order).
    pub(super) async fn server_types(&self) -> Result<Vec<api::ServerType>, ApiError> {
        let mut cache = self.types.lock().await;
        if let Some(types) = cache.as_ref() {
            return Ok(types.clone());
        }
        let mut types = Vec::new();
        let mut page = Some(1);
        while let Some(n) = page {
            let resp: api::ServerTypesPage = self
                .api
                .call(
                    Method::GET,
                    &format!("/server_types?sort=id:asc&per_page=50&page={n}"),
                    None,
                    Retry::Always,
                )
                .await?;
            page = api::Meta::next_page(&resp.meta);
            types.extend(resp.server_types);
        }
        *cache = Some(types.clone());
        Ok(types)
    }

    /// Check the ladder's types exist and are sold in a configured location (exit 2
    /// otherwise), note where they are deprecated, and remember per type the locations to try.
    pub async fn check_ladder(
        &self,
        arch: Arch,
        ladder: &[Tier],
    ) -> Result<LadderCheck, LadderError> {
        let all: Vec<&str> = ladder.iter().map(|t| t.name.as_str()).collect();
        self.check_ladder_for(arch, ladder, &all).await
    }

    /// [`Self::check_ladder`] judging only `needed` (a build's rung and retry rung) by their
    /// candidates ([`rank`]): a needed rung runs as long as some type meets its need within
    /// the ceiling, on a substitute when its configured type is not sold in a configured
    /// location or costs more than the ceiling (a note says which). A needed rung without any
    /// candidate is listed in [`LadderCheck::without_candidate`]; a type of another
    /// architecture and an unknown needed type are errors (exit 2); a type of the ladder the build will not order is a warning when it is unknown or no
    /// configured location sells it.
    pub async fn check_ladder_for(
        &self,
        arch: Arch,
        ladder: &[Tier],
        needed: &[&str],
    ) -> Result<LadderCheck, LadderError> {
        let types = self.server_types().await?;
        let now = SystemTime::now();
        let ceiling = policy_ceiling(arch);
        let mut check = LadderCheck::default();
        for tier in ladder {
            let is_needed = needed.contains(&tier.name.as_str());
            let Some(t) = types.iter().find(|t| t.name == tier.name) else {
                let mut valid: Vec<&str> = types
                    .iter()
                    .filter(|t| t.architecture == hetzner_arch(arch))
                    .filter(|t| self.locations.iter().any(|l| t.sold_in(l, now)))
                    .map(|t| t.name.as_str())
                    .collect();
                valid.sort_unstable();
                let e = LadderError::Unknown {
                    arch,
                    name: tier.name.clone(),
                    valid: valid.join(", "),
                };
                if is_needed {
                    return Err(e);
                }
                check.notes.push(e.to_string());
                continue;
            };
            if t.architecture != hetzner_arch(arch) {
                return Err(LadderError::WrongArch {
                    arch,
                    name: tier.name.clone(),
                    its: t.architecture.clone(),
                });
            }
            let usable: Vec<String> = self
                .locations
                .iter()
                .filter(|l| t.sold_in(l, now))
                .cloned()
                .collect();
            let ranked = rank(&types, arch, tier, &self.locations, ceiling, now);
            if usable.is_empty() && !is_needed {
                // Withdrawn or not sold here, but not a rung this build orders: a warning,
                // naming what such a rung would use instead (another type meeting its need).
                let instead = ranked.first().map_or_else(
                    || "a rung of it has no candidate".to_owned(),
                    |c| format!("a rung of it would use {}", c.name),
                );
                check.notes.push(format!(
                    "server type {} (tiers.{arch}) is not sold in {} any more ({instead}); replace it in tiers.{arch} of the launcher config",
                    t.name,
                    self.locations.join(", ")
                ));
                self.sold
                    .lock()
                    .expect("sold lock")
                    .insert(t.name.clone(), Vec::new());
                continue;
            }
            let price_here = usable.first().and_then(|l| t.hourly_price(l));
            if is_needed && ranked.is_empty() {
                let why = if usable.is_empty() {
                    let sold = t.sold_anywhere(now);
                    LadderError::NotSold {
                        arch,
                        name: t.name.clone(),
                        configured: self.locations.join(", "),
                        sold: if sold.is_empty() {
                            "no location any more".into()
                        } else {
                            sold.join(", ")
                        },
                    }
                } else {
                    LadderError::AboveCeiling {
                    arch,
                    name: t.name.clone(),
                    price: price_here.map_or_else(
                        || "has no price from the API (an unpriced type counts as above a price ceiling)".to_owned(),
                        |(p, l)| format!("costs {p} EUR/h in {l} (the API's price)"),
                    ),
                        ceiling: crate::policy::Policy::current()
                            .map(|p| p.describe_ceiling(arch))
                            .unwrap_or_default(),
                    }
                };
                check.without_candidate.push((t.name.clone(), why));
                continue;
            }
            for location in &usable {
                if let Some(d) = t.deprecation_in(location) {
                    check
                        .deprecated
                        .push((t.name.clone(), location.clone(), d.until().to_owned()));
                }
            }
            match ranked.first() {
                Some(first) if is_needed && first.name != t.name => {
                    let why = if usable.is_empty() {
                        format!("is not sold in {}", self.locations.join(", "))
                    } else {
                        match &price_here {
                            Some((p, l)) => {
                                format!("costs {p} EUR/h in {l}, above the price ceiling")
                            }
                            None => "has no price and a price ceiling is set".to_owned(),
                        }
                    };
                    check.notes.push(format!(
                        "rung {} of tiers.{arch}: {} {why}; builds of this rung use {}",
                        t.name,
                        t.name,
                        first.describe()
                    ));
                    if let (Some(price), Some(location)) = (first.price, first.locations.first()) {
                        check.prices.insert(
                            t.name.clone(),
                            (price, format!("{location} ({})", first.name)),
                        );
                    }
                }
                _ => {
                    if let Some(price) = price_here {
                        check.prices.insert(t.name.clone(), price);
                    }
                }
            }
            self.sold
                .lock()
                .expect("sold lock")
                .insert(t.name.clone(), usable);
        }
        Ok(check)
    }

    /// The primary IPv4's net hourly price in `location` (`GET /pricing`, read once per run);
    /// `None` when the answer lists none.
    pub async fn primary_ipv4_price(
        &self,
        location: &str,
    ) -> Result<Option<(f64, String)>, ApiError> {
        let mut cache = self.pricing.lock().await;
        if cache.is_none() {
            let resp: api::PricingResponse = self
                .api
                .call(Method::GET, "/pricing", None, Retry::Always)
                .await?;
            *cache = Some(resp.pricing);
        }
        Ok(cache.as_ref().and_then(|p| p.primary_ipv4_hourly(location)))
    }

    /// Every type that meets `tier`'s need as `GET /server_types` lists them, in the order a
    /// create tries them, those above `ceiling` last and marked (for the plan).
    pub async fn rank_rung(
        &self,
        arch: Arch,
        tier: &Tier,
        ceiling: Ceiling,
    ) -> Result<Vec<Ranked>, ApiError> {
        let types = self.server_types().await?;
        Ok(rank_all(
            &types,
            arch,
            tier,
            &self.locations,
            ceiling,
            SystemTime::now(),
        ))
    }

    /// The types a rung may run on, in the order to try them ([`candidates::rank`]). When the
    /// API cannot be asked, the configured type alone.
    pub(super) async fn candidates(&self, arch: Arch, tier: &Tier) -> Vec<Candidate> {
        match self.ranked(arch, tier).await {
            // The configured type is first unless no configured location sells it.
            Some(ranked) if !ranked.is_empty() => ranked,
            _ => vec![Candidate {
                name: tier.name.clone(),
                vcpus: tier.vcpus,
                memory_gb: tier.memory_mib as f64 / 1024.0,
                disk_gb: tier.disk_gb as f64,
                price: tier.price_eur_per_hour,
                locations: self.locations_for(&tier.name),
            }],
        }
    }

    /// The candidates of `tier` by this run's `GET /server_types`; `None` when the API cannot
    /// be asked.
    pub(super) async fn ranked(&self, arch: Arch, tier: &Tier) -> Option<Vec<Candidate>> {
        let types = self.server_types().await.ok()?;
        let now = SystemTime::now();
        Some(rank(
            &types,
            arch,
            tier,
            &self.locations,
            policy_ceiling(arch),
            now,
        ))
    }

    /// The configured locations to try for `server_type`: those that sell it, once the ladder
    /// was checked; all of them otherwise.
    pub(super) fn locations_for(&self, server_type: &str) -> Vec<String> {
        self.sold
            .lock()
            .expect("sold lock")
            .get(server_type)
            .cloned()
            .unwrap_or_else(|| self.locations.clone())
    }
}

/// The operator's price and memory ceiling (policy); none when the policy cannot be read (the
/// build has already failed on it then).
pub(super) fn policy_ceiling(arch: Arch) -> Ceiling {
    crate::policy::Policy::current()
        .map(|p| Ceiling {
            eur_per_hour: p.max_eur_per_hour,
            // Without `max_memory_gb`, the built-in ladder's top (the policy's own default):
            // a sold-out cx23 must not end up on a 192 GB server.
            memory_gb: Some(p.max_memory_mib(arch) as f64 / 1024.0),
        })
        .unwrap_or_default()
}
