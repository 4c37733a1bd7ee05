//! What a build of each rung would meet, as `GET /server_types` tells it (for `check`): per rung,
//! its candidates in the order a create tries them ([`super::candidates::rank`]) and, per
//! configured location, whether each is marked available, sold out (`available: false`),
//! deprecated there (its per-location `deprecation`, FACTS.md "Server types") or of unknown
//! stock (an answer without `available`, from before 2026-04-01). `available` is a hint that is
//! wrong both ways (FACTS.md "Stock"), so "no candidate in stock" is what the API says, not a
//! promise that a create fails.

use std::time::SystemTime;

use super::candidates::rank;
use super::types::policy_ceiling;
use super::{ApiError, HcloudProvider, api};
use crate::config::{Arch, Tier};

/// One configured location of one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stock {
    /// `available: true`.
    InStock,
    /// `available: false`.
    SoldOut,
    /// The answer does not say.
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LocationStock {
    pub location: String,
    pub stock: Stock,
    /// The date after which the type is no longer sold there, when it is deprecated there.
    pub deprecated_until: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CandidateStock {
    pub name: String,
    /// The configured locations that sell it (the others are not tried).
    pub locations: Vec<LocationStock>,
}

impl CandidateStock {
    /// Marked available (or of unknown stock) in some configured location.
    pub fn maybe_in_stock(&self) -> bool {
        self.locations.iter().any(|l| l.stock != Stock::SoldOut)
    }

    /// "cx33 sold out in fsn1, nbg1; in stock in hel1 (deprecated there after 2026-12-31)"
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (stock, word) in [
            (Stock::InStock, "in stock"),
            (Stock::SoldOut, "sold out"),
            (Stock::Unknown, "stock unknown"),
        ] {
            let here: Vec<String> = self
                .locations
                .iter()
                .filter(|l| l.stock == stock)
                .map(|l| match &l.deprecated_until {
                    Some(until) => format!("{} (deprecated there, sold until {until})", l.location),
                    None => l.location.clone(),
                })
                .collect();
            if !here.is_empty() {
                parts.push(format!("{word} in {}", here.join(", ")));
            }
        }
        format!("{} {}", self.name, parts.join("; "))
    }
}

/// A rung of a ladder and its candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct RungStock {
    pub tier: Tier,
    pub candidates: Vec<CandidateStock>,
}

impl RungStock {
    /// The first candidate a create would find in stock, by the API's hint.
    pub fn first_in_stock(&self) -> Option<&CandidateStock> {
        self.candidates.iter().find(|c| c.maybe_in_stock())
    }
}

/// The stock of each rung of `ladder` in `locations`, from `types`.
pub fn ladder_stock(
    types: &[api::ServerType],
    arch: Arch,
    ladder: &[Tier],
    locations: &[String],
    now: SystemTime,
) -> Vec<RungStock> {
    ladder
        .iter()
        .map(|tier| RungStock {
            tier: tier.clone(),
            candidates: rank(types, arch, tier, locations, policy_ceiling(arch), now)
                .into_iter()
                .filter_map(|c| {
                    let t = types.iter().find(|t| t.name == c.name)?;
                    Some(CandidateStock {
                        name: c.name.clone(),
                        locations: locations
                            .iter()
                            .filter(|l| t.sold_in(l, now))
                            .map(|l| LocationStock {
                                location: l.clone(),
                                stock: match t.available_in(l) {
                                    Some(true) => Stock::InStock,
                                    Some(false) => Stock::SoldOut,
                                    None => Stock::Unknown,
                                },
                                deprecated_until: t.deprecation_in(l).map(|d| d.until().to_owned()),
                            })
                            .collect(),
                    })
                })
                .collect(),
        })
        .collect()
}

impl HcloudProvider {
    /// [`ladder_stock`] from this run's `GET /server_types` (read once per run).
    pub async fn ladder_stock(
        &self,
        arch: Arch,
        ladder: &[Tier],
    ) -> Result<Vec<RungStock>, ApiError> {
        let types = self.server_types().await?;
        Ok(ladder_stock(
            &types,
            arch,
            ladder,
            &self.locations,
            SystemTime::now(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(name: &str, cores: u32, memory: f64, locations: &str) -> api::ServerType {
        serde_json::from_str(&format!(
            r#"{{"name": "{name}", "architecture": "x86", "cores": {cores}, "memory": {memory}, "disk": 80,
                "prices": [{{"location": "fsn1", "price_hourly": {{"net": "0.0100"}}}}],
                "locations": [{locations}]}}"#
        ))
        .unwrap()
    }

    fn tier(name: &str, vcpus: u32, gb: u64) -> Tier {
        Tier {
            name: name.into(),
            vcpus,
            memory_mib: gb * 1024,
            disk_gb: 40,
            price_eur_per_hour: None,
        }
    }

    #[test]
    fn each_candidate_says_per_location_what_the_api_says() {
        let types = vec![
            ty(
                "cx33",
                4,
                8.0,
                r#"{"name": "fsn1", "available": false}, {"name": "nbg1", "available": false}"#,
            ),
            ty(
                "cpx32",
                4,
                8.0,
                r#"{"name": "fsn1", "available": true, "deprecation": {"announced": "2026-10-01T00:00:00+00:00", "unavailable_after": "2099-01-01T00:00:00+00:00"}}, {"name": "nbg1"}"#,
            ),
        ];
        let locations = vec!["fsn1".to_owned(), "nbg1".to_owned(), "hel1".to_owned()];
        let stock = ladder_stock(
            &types,
            Arch::Amd64,
            &[tier("cx33", 4, 8)],
            &locations,
            SystemTime::now(),
        );
        assert_eq!(stock.len(), 1);
        let rung = &stock[0];
        assert_eq!(rung.candidates[0].describe(), "cx33 sold out in fsn1, nbg1");
        assert!(!rung.candidates[0].maybe_in_stock());
        assert_eq!(
            rung.candidates[1].describe(),
            "cpx32 in stock in fsn1 (deprecated there, sold until 2099-01-01); stock unknown in nbg1"
        );
        assert_eq!(rung.first_in_stock().unwrap().name, "cpx32");
    }

    #[test]
    fn a_rung_whose_every_candidate_is_sold_out_has_none_in_stock() {
        let types = vec![ty(
            "cx33",
            4,
            8.0,
            r#"{"name": "fsn1", "available": false}"#,
        )];
        let stock = ladder_stock(
            &types,
            Arch::Amd64,
            &[tier("cx33", 4, 8)],
            &["fsn1".to_owned()],
            SystemTime::now(),
        );
        assert!(stock[0].first_in_stock().is_none());
        // A type of another architecture is never a candidate.
        let stock = ladder_stock(
            &types,
            Arch::Arm64,
            &[tier("cax21", 4, 8)],
            &["fsn1".to_owned()],
            SystemTime::now(),
        );
        assert!(stock[0].candidates.is_empty());
    }
}
