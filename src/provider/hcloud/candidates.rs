//! A rung of the ladder is a need, not a name: its memory, vCPUs, disk and architecture. Server
//! types sell out in every location at once (July 2026: cx33, cx43, cx53 and every cax type in
//! fsn1, nbg1 and hel1, answered 412 `resource_unavailable`), so the create tries candidates:
//! the configured type first, then every other type of `GET /server_types` of the same
//! architecture and a family allowed for it (amd64: cx, cpx, ccx; arm64: cax) with at least the
//! rung's shape, cheapest first, within the operator's price and memory ceiling (policy
//! `max_eur_per_hour`, `max_memory_gb`; an unpriced type counts as above a price ceiling).
//! `locations[].available` (since 2026-04-01) is a hint only: it puts the available candidates
//! and locations first and never skips one.

use std::time::SystemTime;

use super::api;
use crate::config::{Arch, Tier};

/// Families a substitute may come from, per architecture.
fn families(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Amd64 => &["cx", "cpx", "ccx"],
        Arch::Arm64 => &["cax"],
    }
}

/// The family of a type name: its leading letters (`cpx32` → `cpx`).
fn family(name: &str) -> &str {
    let end = name
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(name.len());
    &name[..end]
}

/// One server type a rung may run on.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: String,
    pub vcpus: u32,
    pub memory_gb: f64,
    pub disk_gb: f64,
    /// Net EUR/h in the first location tried, when the API gives one.
    pub price: Option<f64>,
    /// Configured locations that sell it, the ones marked available first.
    pub locations: Vec<String>,
}

impl Candidate {
    /// "cpx32, 8 GB, 4 vCPUs, 0.0240 EUR/h"
    pub fn describe(&self) -> String {
        let price = self
            .price
            .map_or_else(|| "price unknown".to_owned(), |p| format!("{p:.4} EUR/h"));
        format!(
            "{}, {} GB, {} vCPUs, {price}",
            self.name, self.memory_gb, self.vcpus
        )
    }
}

/// The operator's ceiling (policy).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ceiling {
    pub eur_per_hour: Option<f64>,
    pub memory_gb: Option<f64>,
}

/// The configured locations that sell `t` now, those marked available first (a stable order
/// otherwise: the configured one).
fn locations_of(t: &api::ServerType, locations: &[String], now: SystemTime) -> Vec<String> {
    let mut sold: Vec<String> = locations
        .iter()
        .filter(|l| t.sold_in(l, now))
        .cloned()
        .collect();
    sold.sort_by_key(|l| t.available_in(l) == Some(false));
    sold
}

/// The candidates of `tier`: the configured type first (as long as it is of the architecture,
/// sold in a configured location and within the ceiling), then the others that meet its shape
/// within the ceiling, cheapest first: the order a create tries them.
pub fn rank(
    types: &[api::ServerType],
    arch: Arch,
    tier: &Tier,
    locations: &[String],
    ceiling: Ceiling,
    now: SystemTime,
) -> Vec<Candidate> {
    rank_all(types, arch, tier, locations, ceiling, now)
        .into_iter()
        .filter(|r| r.above_ceiling.is_none())
        .map(|r| r.candidate)
        .collect()
}

/// A candidate, and why the ceiling keeps it out when it does.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub candidate: Candidate,
    /// "above the price ceiling (0.03 EUR/h)"; `None` within it.
    pub above_ceiling: Option<String>,
}

/// Every type that meets `tier`'s need, in the order [`rank`] tries them, then those above the
/// ceiling (marked why), for `plan` to show. The configured type (of the architecture, with the
/// disk) is first, marked when above the ceiling.
pub fn rank_all(
    types: &[api::ServerType],
    arch: Arch,
    tier: &Tier,
    locations: &[String],
    ceiling: Ceiling,
    now: SystemTime,
) -> Vec<Ranked> {
    let wanted_arch = super::hetzner_arch(arch);
    let need_gb = tier.memory_mib as f64 / 1024.0;
    let candidate = |t: &api::ServerType, locations: Vec<String>| Candidate {
        name: t.name.clone(),
        vcpus: t.cores,
        memory_gb: t.memory,
        disk_gb: t.disk,
        price: locations
            .first()
            .and_then(|l| t.hourly_price(l))
            .map(|(p, _)| p),
        locations,
    };
    let above = |c: &Candidate| -> Option<String> {
        if let Some(max) = ceiling.memory_gb
            && c.memory_gb > max
        {
            return Some(format!("above the memory ceiling ({max} GB)"));
        }
        match (ceiling.eur_per_hour, c.price) {
            (Some(max), Some(p)) if p > max => {
                Some(format!("above the price ceiling ({max} EUR/h)"))
            }
            (Some(max), None) => Some(format!(
                "no price, so above the price ceiling ({max} EUR/h)"
            )),
            _ => None,
        }
    };
    let mut out = Vec::new();
    if let Some(t) = types.iter().find(|t| {
        t.name == tier.name && t.architecture == wanted_arch && t.disk >= tier.disk_gb as f64
    }) {
        let sold = locations_of(t, locations, now);
        if !sold.is_empty() {
            let c = candidate(t, sold);
            out.push(Ranked {
                above_ceiling: above(&c),
                candidate: c,
            });
        }
    }
    let mut others: Vec<(bool, Ranked)> = types
        .iter()
        .filter(|t| t.name != tier.name && t.architecture == wanted_arch)
        .filter(|t| families(arch).contains(&family(&t.name)))
        .filter(|t| t.cores >= tier.vcpus && t.memory >= need_gb && t.disk >= tier.disk_gb as f64)
        .filter_map(|t| {
            let sold = locations_of(t, locations, now);
            let available = sold.iter().any(|l| t.available_in(l) != Some(false));
            (!sold.is_empty()).then(|| {
                let c = candidate(t, sold);
                (
                    available,
                    Ranked {
                        above_ceiling: above(&c),
                        candidate: c,
                    },
                )
            })
        })
        .collect();
    others.sort_by(|(a_avail, a), (b_avail, b)| {
        let (a_above, b_above) = (a.above_ceiling.is_some(), b.above_ceiling.is_some());
        let (a, b) = (&a.candidate, &b.candidate);
        a_above
            .cmp(&b_above)
            .then(b_avail.cmp(a_avail))
            .then(
                a.price
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&b.price.unwrap_or(f64::INFINITY)),
            )
            .then(a.memory_gb.total_cmp(&b.memory_gb))
            .then(a.name.cmp(&b.name))
    });
    out.extend(others.into_iter().map(|(_, r)| r));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, arch: &str, cores: u32, memory: f64, disk: f64, price: &str) -> String {
        format!(
            r#"{{"name": "{name}", "architecture": "{arch}", "cores": {cores}, "memory": {memory}, "disk": {disk},
                "prices": [{{"location": "fsn1", "price_hourly": {{"net": "{price}"}}}}],
                "locations": [{{"name": "fsn1", "available": true}}, {{"name": "nbg1", "available": true}}]}}"#
        )
    }

    fn catalogue() -> Vec<api::ServerType> {
        let mut types: Vec<api::ServerType> = [
            t("cx23", "x86", 2, 4.0, 40.0, "0.0080"),
            t("cx33", "x86", 4, 8.0, 80.0, "0.0128"),
            t("cx43", "x86", 8, 16.0, 160.0, "0.0240"),
            t("cpx32", "x86", 4, 8.0, 160.0, "0.0240"),
            t("ccx13", "x86", 2, 8.0, 80.0, "0.0240"),
            t("ccx23", "x86", 4, 16.0, 160.0, "0.0459"),
            t("cax21", "arm", 4, 8.0, 80.0, "0.0112"),
            t("zz99", "x86", 64, 256.0, 960.0, "0.0010"),
        ]
        .iter()
        .map(|j| serde_json::from_str(j).unwrap())
        .collect();
        // ccx23: marked unavailable everywhere (a hint: still a candidate, last).
        for l in types[5].locations.as_mut().unwrap() {
            l.available = Some(false);
        }
        types
    }

    fn tier(name: &str, vcpus: u32, gb: u64, disk: u64) -> Tier {
        Tier {
            name: name.into(),
            vcpus,
            memory_mib: gb * 1024,
            disk_gb: disk,
            price_eur_per_hour: None,
        }
    }

    fn names(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn configured_first_then_same_shape_of_allowed_families_cheapest_first() {
        let locations = vec!["fsn1".to_owned(), "nbg1".to_owned()];
        let now = SystemTime::now();
        let c = rank(
            &catalogue(),
            Arch::Amd64,
            &tier("cx33", 4, 8, 80),
            &locations,
            Ceiling::default(),
            now,
        );
        // ccx13 has 2 vCPUs, cax21 is arm, zz99 is no allowed family; ccx23 is marked
        // unavailable: still tried, after the others.
        assert_eq!(names(&c), ["cx33", "cpx32", "cx43", "ccx23"]);
        assert_eq!(
            c[1].describe(),
            "cpx32, 8 GB, 4 vCPUs, 0.0240 EUR/h",
            "{c:?}"
        );
        let capped = rank(
            &catalogue(),
            Arch::Amd64,
            &tier("cx33", 4, 8, 80),
            &locations,
            Ceiling {
                eur_per_hour: Some(0.03),
                memory_gb: Some(8.0),
            },
            now,
        );
        assert_eq!(names(&capped), ["cx33", "cpx32"]);
        let arm = rank(
            &catalogue(),
            Arch::Arm64,
            &tier("cax21", 4, 8, 80),
            &locations,
            Ceiling::default(),
            now,
        );
        assert_eq!(names(&arm), ["cax21"]);
    }

    #[test]
    fn an_unpriced_type_is_above_a_price_ceiling_and_unavailable_locations_go_last() {
        let mut types = catalogue();
        types[3].prices.clear();
        types[3].locations.as_mut().unwrap()[0].available = Some(false);
        let locations = vec!["fsn1".to_owned(), "nbg1".to_owned()];
        let tier = tier("cx33", 4, 8, 80);
        let c = rank(
            &types,
            Arch::Amd64,
            &tier,
            &locations,
            Ceiling::default(),
            SystemTime::now(),
        );
        let cpx = c.iter().find(|c| c.name == "cpx32").unwrap();
        assert_eq!(cpx.locations, ["nbg1", "fsn1"]);
        let c = rank(
            &types,
            Arch::Amd64,
            &tier,
            &locations,
            Ceiling {
                eur_per_hour: Some(1.0),
                memory_gb: None,
            },
            SystemTime::now(),
        );
        assert!(!names(&c).contains(&"cpx32"), "{c:?}");
        assert_eq!(family("cpx32"), "cpx");
    }
}
