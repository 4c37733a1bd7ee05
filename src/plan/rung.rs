//! The rung a build runs on, as a need (memory, vCPUs, disk, architecture), and the server
//! types that meet it in the order a create tries them (`provider::hcloud::candidates`), each
//! with its shape and price, those above the operator's ceiling marked. Without a token they are
//! ranked from the built-in catalogue at reference prices; a build ranks them again from
//! `GET /server_types` (the plan in its report says which).

use std::time::SystemTime;

use serde::Serialize;

use crate::config::{Arch, Config, Tier};
use crate::provider::hcloud::candidates::{Ceiling, Ranked, rank_all};
use crate::provider::hcloud::{api, catalogue};

/// What a rung needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Need {
    pub arch: Arch,
    pub memory_gb: f64,
    pub vcpus: u32,
    pub disk_gb: u64,
}

/// One server type that meets the need.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RungCandidate {
    pub name: String,
    pub vcpus: u32,
    pub memory_gb: f64,
    pub disk_gb: f64,
    /// Net EUR per started hour, without the primary IPv4.
    pub eur_per_hour: Option<f64>,
    /// Why a create would not try it: "above the price ceiling (0.03 EUR/h)".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub above_ceiling: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rung {
    pub need: Need,
    /// Where the candidates and their prices come from.
    pub source: String,
    /// In the order a create tries them; those above the ceiling last, marked.
    pub candidates: Vec<RungCandidate>,
}

impl Rung {
    /// The need of `tier` and its candidates from the built-in catalogue in the configured
    /// locations, at reference prices (the tier's own from the config), under the policy's
    /// ceiling.
    pub fn offline(tier: &Tier, arch: Arch, config: &Config) -> Rung {
        let locations = &config.hcloud.locations;
        let mut types = catalogue::as_server_types(locations);
        // The configured type as the config describes it (its shape and reference price win
        // over the catalogue's; a type the catalogue does not know is still the first).
        types.retain(|t| t.name != tier.name);
        types.push(configured(tier, arch, locations));
        let ranked = rank_all(
            &types,
            arch,
            tier,
            locations,
            ceiling(config, arch),
            SystemTime::now(),
        );
        Rung::from_ranked(
            tier,
            arch,
            &ranked,
            "the built-in catalogue at reference prices; no token, so the API was not asked",
        )
    }

    pub fn from_ranked(tier: &Tier, arch: Arch, ranked: &[Ranked], source: &str) -> Rung {
        Rung {
            need: Need {
                arch,
                memory_gb: tier.memory_mib as f64 / 1024.0,
                vcpus: tier.vcpus,
                disk_gb: tier.disk_gb,
            },
            source: source.to_owned(),
            candidates: ranked
                .iter()
                .map(|r| RungCandidate {
                    name: r.candidate.name.clone(),
                    vcpus: r.candidate.vcpus,
                    memory_gb: r.candidate.memory_gb,
                    disk_gb: r.candidate.disk_gb,
                    eur_per_hour: r.candidate.price,
                    above_ceiling: r.above_ceiling.clone(),
                })
                .collect(),
        }
    }
}

/// The policy's ceiling for `arch`, as the config carries it.
pub fn ceiling(config: &Config, arch: Arch) -> Ceiling {
    Ceiling {
        eur_per_hour: config.limits.eur_per_hour,
        memory_gb: Some(config.limits.memory_gb_for(arch)),
    }
}

fn configured(tier: &Tier, arch: Arch, locations: &[String]) -> api::ServerType {
    let mut t = catalogue::as_server_types(locations)
        .into_iter()
        .find(|t| t.name == tier.name)
        .unwrap_or_else(|| api::ServerType {
            name: tier.name.clone(),
            architecture: String::new(),
            cores: 0,
            memory: 0.0,
            disk: 0.0,
            deprecation: None,
            prices: Vec::new(),
            locations: None,
        });
    t.architecture = match arch {
        Arch::Amd64 => "x86",
        Arch::Arm64 => "arm",
    }
    .to_owned();
    t.cores = tier.vcpus;
    t.memory = tier.memory_mib as f64 / 1024.0;
    t.disk = tier.disk_gb as f64;
    t.prices = tier
        .price_eur_per_hour
        .map(|p| {
            locations
                .iter()
                .map(|l| api::Price {
                    location: l.clone(),
                    price_hourly: api::Amount { net: p.to_string() },
                })
                .collect()
        })
        .unwrap_or_default();
    t
}

/// Why a tier with no retry has none when the operator's ceiling took the next larger tier
/// out of the ladder (it is not the ladder's largest: the ceiling stops the retry).
pub fn ceiling_took_the_retry(
    arch: Arch,
    tier: &Tier,
    retry: Option<&Tier>,
    config: &Config,
) -> Option<String> {
    if retry.is_some() {
        return None;
    }
    let ceiling = config.ceiling.as_ref()?;
    let next = config
        .above_ceiling
        .iter()
        .filter(|(a, t)| *a == arch && t.memory_mib > tier.memory_mib)
        .map(|(_, t)| t)
        .min_by_key(|t| t.memory_mib)?;
    let price = next
        .price_eur_per_hour
        .map_or_else(|| "no price".to_owned(), |p| format!("{p} EUR/h"));
    Some(format!(
        "the retry's server type {} ({} GB memory, {price} in the launcher config) is above the ceiling: {ceiling}",
        next.name,
        next.memory_mib / 1024
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(r: &Rung) -> Vec<(&str, bool)> {
        r.candidates
            .iter()
            .map(|c| (c.name.as_str(), c.above_ceiling.is_some()))
            .collect()
    }

    #[test]
    fn offline_the_rung_ranks_the_catalogue_configured_type_first_then_cheapest() {
        let mut config = Config::defaults();
        let tier = config.tiers.amd64[1].clone(); // cx33: 8 GB, 4 vCPUs, 80 GB
        let r = Rung::offline(&tier, Arch::Amd64, &config);
        assert_eq!(
            r.need,
            Need {
                arch: Arch::Amd64,
                memory_gb: 8.0,
                vcpus: 4,
                disk_gb: 80
            }
        );
        assert_eq!(
            names(&r),
            [
                ("cx33", false),
                ("cpx32", false),
                ("cx43", false),
                ("cpx42", false),
                ("cx53", false),
                ("ccx23", false),
                ("ccx33", false),
                // Above the built-in ladder's top (32 GB), the policy's memory ceiling when it
                // sets none: listed, never tried.
                ("ccx43", true),
                ("ccx53", true),
                ("ccx63", true),
            ]
        );
        assert_eq!(r.candidates[1].eur_per_hour, Some(0.016));
        // Under a ceiling: the ones above it go last, marked why.
        config.limits.eur_per_hour = Some(0.025);
        config.limits.memory_gb = Some(16.0);
        let r = Rung::offline(&tier, Arch::Amd64, &config);
        assert_eq!(
            names(&r)[..4],
            [
                ("cx33", false),
                ("cpx32", false),
                ("cx43", false),
                ("cpx42", true)
            ]
        );
        let why = |n: &str| {
            r.candidates
                .iter()
                .find(|c| c.name == n)
                .unwrap()
                .above_ceiling
                .clone()
                .unwrap()
        };
        assert_eq!(why("cpx42"), "above the price ceiling (0.025 EUR/h)");
        assert_eq!(why("cx53"), "above the memory ceiling (16 GB)");
        assert_eq!(why("ccx43"), "above the memory ceiling (16 GB)");
    }

    #[test]
    fn arm64_rungs_have_priced_cax_candidates_and_a_configured_unknown_type_still_comes_first() {
        let config = Config::defaults();
        let r = Rung::offline(&config.tiers.arm64[0], Arch::Arm64, &config);
        assert_eq!(
            names(&r),
            [
                ("cax11", false),
                ("cax21", false),
                ("cax31", false),
                ("cax41", false)
            ]
        );
        assert!(r.candidates.iter().all(|c| c.eur_per_hour.is_some()));
        let own = Tier {
            name: "zz9".into(),
            vcpus: 16,
            memory_mib: 32768,
            disk_gb: 300,
            price_eur_per_hour: Some(0.5),
        };
        let r = Rung::offline(&own, Arch::Amd64, &config);
        assert_eq!(r.candidates[0].name, "zz9");
        assert_eq!(r.candidates[0].eur_per_hour, Some(0.5));
        assert_eq!(r.candidates[1].name, "cx53");
    }

    #[test]
    fn a_missing_retry_is_explained_only_when_the_ceiling_took_it() {
        let mut config = Config::defaults();
        let ladder = config.tiers.amd64.clone();
        // No ceiling: the top of the ladder simply has no larger type.
        let top = ladder.last().unwrap();
        assert_eq!(
            ceiling_took_the_retry(Arch::Amd64, top, None, &config),
            None
        );
        // A ceiling of 8 GB took every larger tier out: the 8 GB tier's retry is gone, and
        // the note names the smallest of the removed ones, not the largest.
        config.ceiling = Some("8 GB memory (operator policy)".into());
        config.above_ceiling = ladder[2..]
            .iter()
            .map(|t| (Arch::Amd64, t.clone()))
            .chain([(Arch::Arm64, config.tiers.arm64[3].clone())])
            .collect();
        let note = ceiling_took_the_retry(Arch::Amd64, &ladder[1], None, &config).unwrap();
        assert!(
            note.starts_with(&format!("the retry's server type {} (", ladder[2].name)),
            "{note}"
        );
        assert!(
            note.ends_with("is above the ceiling: 8 GB memory (operator policy)"),
            "{note}"
        );
        // A tier that still has a retry needs no note; another architecture's removed tiers
        // say nothing about this one.
        assert_eq!(
            ceiling_took_the_retry(Arch::Amd64, &ladder[0], Some(&ladder[1]), &config),
            None
        );
        config.above_ceiling.retain(|(a, _)| *a == Arch::Arm64);
        assert_eq!(
            ceiling_took_the_retry(Arch::Amd64, &ladder[1], None, &config),
            None
        );
    }
}
