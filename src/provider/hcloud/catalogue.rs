//! The reference catalogue: Hetzner's server types as the launcher knows them without asking the
//! API, with reference net prices, and the primary IPv4's. `plan` ranks a rung's candidates from
//! it when no token is at hand, and estimates use its prices; a build with a token ranks and
//! prices from `GET /server_types` and `GET /pricing` instead, and the plan says which it used.
//!
//! Every price says where it comes from ([`RefType::basis`]). Read on 2026-12-06; Hetzner
//! changed its prices on 2026-04-01 and again for new orders on 2026-06-15 (no public table of
//! the latter was found), so these are references for estimates, never what is billed. Where no
//! 2026 figure was found the price is an estimate and says its basis, or it is left out (an
//! unpriced type counts as above a price ceiling). Shapes: cx and cax from FACTS.md, cpx from
//! public benchmarks and the simulator's source, ccx13…33 from the simulator's source, ccx43…63
//! from memory of the API's older listing (say so). No cpx52 or cpx62 was found in any source
//! read, so there is none here. `docs/design/hcloud.md` shows the table.

use super::api;
use crate::config::Arch;

/// One server type of the reference catalogue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefType {
    pub name: &'static str,
    pub arch: Arch,
    pub vcpus: u32,
    pub memory_gb: f64,
    pub disk_gb: f64,
    /// Net EUR per started hour; `None` where no 2026 figure was found.
    pub eur_per_hour: Option<f64>,
    /// Where the price (and, when unusual, the shape) comes from.
    pub basis: &'static str,
}

const VDHOME: &str =
    "https://docs.vdhome.be/reference/costs (\"Actual 2026-04-15\"), read 2026-12-06";
const CNAP: &str =
    "https://docs.cnap.tech/compute/providers/hetzner (undated, 3 decimals), read 2026-12-06";
const SIM: &str = "estimate: a public 2026 table's monthly price ÷ 730 (its ap-southeast column; the simulator's catalogue uses the same), not an EU price";

#[rustfmt::skip]
pub const SERVER_TYPES: &[RefType] = &[
    RefType { name: "cx23", arch: Arch::Amd64, vcpus: 2, memory_gb: 4.0, disk_gb: 40.0, eur_per_hour: Some(0.0064),
        basis: "estimate: 3.99 EUR/month (https://docs.vdhome.be/reference/costs, 2026-04-15, read 2026-12-06) ÷ 624 h, the month-to-hour ratio of cx33's API prices" },
    RefType { name: "cx33", arch: Arch::Amd64, vcpus: 4, memory_gb: 8.0, disk_gb: 80.0, eur_per_hour: Some(0.0104),
        basis: "GET /v1/pricing, fsn1, 2026-05-27, as quoted in https://github.com/devantler-tech/platform/commit/cb791c6f (6.49 EUR/month cap), read 2026-12-06" },
    RefType { name: "cx43", arch: Arch::Amd64, vcpus: 8, memory_gb: 16.0, disk_gb: 160.0, eur_per_hour: Some(0.0210), basis: CNAP },
    RefType { name: "cx53", arch: Arch::Amd64, vcpus: 16, memory_gb: 32.0, disk_gb: 320.0, eur_per_hour: Some(0.0360), basis: VDHOME },
    RefType { name: "cpx12", arch: Arch::Amd64, vcpus: 1, memory_gb: 2.0, disk_gb: 40.0, eur_per_hour: None,
        basis: "shape: a public benchmark of 2026-07-22 (https://gist.github.com/derhuerst/4ef9a832e031bf82d6e640e2dd6b2d24); no 2026 net price found" },
    RefType { name: "cpx22", arch: Arch::Amd64, vcpus: 2, memory_gb: 4.0, disk_gb: 80.0, eur_per_hour: Some(0.0080),
        basis: "price: https://docs.cnap.tech/compute/providers/hetzner (undated); vCPUs uncertain: a public benchmark of 2025-10-21 measured 2 (gist derhuerst/4ef9a832…), docs.cnap.tech and the simulator's table list 3; 2 is the safe side" },
    RefType { name: "cpx32", arch: Arch::Amd64, vcpus: 4, memory_gb: 8.0, disk_gb: 160.0, eur_per_hour: Some(0.0160), basis: CNAP },
    RefType { name: "cpx42", arch: Arch::Amd64, vcpus: 8, memory_gb: 16.0, disk_gb: 240.0, eur_per_hour: Some(0.0320),
        basis: "estimate: twice cpx32, as cpx22 to cpx32 doubles (no 2026 figure found); shape: the simulator's source, a public 2026 price table" },
    RefType { name: "ccx13", arch: Arch::Amd64, vcpus: 2, memory_gb: 8.0, disk_gb: 80.0, eur_per_hour: Some(0.0240), basis: SIM },
    RefType { name: "ccx23", arch: Arch::Amd64, vcpus: 4, memory_gb: 16.0, disk_gb: 160.0, eur_per_hour: Some(0.0459), basis: SIM },
    RefType { name: "ccx33", arch: Arch::Amd64, vcpus: 8, memory_gb: 32.0, disk_gb: 240.0, eur_per_hour: Some(0.0877), basis: SIM },
    RefType { name: "ccx43", arch: Arch::Amd64, vcpus: 16, memory_gb: 64.0, disk_gb: 360.0, eur_per_hour: None,
        basis: "shape from memory of the API's listing before 2026, in no source read this time; no 2026 net price found" },
    RefType { name: "ccx53", arch: Arch::Amd64, vcpus: 32, memory_gb: 128.0, disk_gb: 600.0, eur_per_hour: None,
        basis: "shape from memory of the API's listing before 2026, in no source read this time; no 2026 net price found" },
    RefType { name: "ccx63", arch: Arch::Amd64, vcpus: 48, memory_gb: 192.0, disk_gb: 960.0, eur_per_hour: None,
        basis: "shape from memory of the API's listing before 2026, in no source read this time; no 2026 net price found" },
    RefType { name: "cax11", arch: Arch::Arm64, vcpus: 2, memory_gb: 4.0, disk_gb: 40.0, eur_per_hour: Some(0.0040), basis: CNAP },
    RefType { name: "cax21", arch: Arch::Arm64, vcpus: 4, memory_gb: 8.0, disk_gb: 80.0, eur_per_hour: Some(0.0070), basis: CNAP },
    RefType { name: "cax31", arch: Arch::Arm64, vcpus: 8, memory_gb: 16.0, disk_gb: 160.0, eur_per_hour: Some(0.0130), basis: CNAP },
    RefType { name: "cax41", arch: Arch::Arm64, vcpus: 16, memory_gb: 32.0, disk_gb: 320.0, eur_per_hour: Some(0.0260),
        basis: "estimate: twice cax31, as each cax step about doubles (no 2026 figure found)" },
];

/// The primary IPv4's reference net price per started hour (every server gets one unless it is
/// created IPv6-only, `hcloud.ipv4 = false`).
pub const IPV4_EUR_PER_HOUR: f64 = 0.0008;
/// Where [`IPV4_EUR_PER_HOUR`] comes from.
pub const IPV4_BASIS: &str = "https://docs.hetzner.com/cloud/servers/primary-ips/overview (0.0008 EUR/h, 0.50 EUR/month; page last changed 2022-08-10, read 2026-12-06): no 2026 figure was found, so whether the 2026 price changes touched it is unknown";

/// The reference entry of `name`.
pub fn reference(name: &str) -> Option<&'static RefType> {
    SERVER_TYPES.iter().find(|t| t.name == name)
}

/// The catalogue as `GET /server_types` would list it: sold in every one of `locations`, at the
/// reference price in each, availability unknown. Ranking offline uses the same code as online.
pub fn as_server_types(locations: &[String]) -> Vec<api::ServerType> {
    SERVER_TYPES
        .iter()
        .map(|t| api::ServerType {
            name: t.name.to_owned(),
            architecture: super::hetzner_arch(t.arch).to_owned(),
            cores: t.vcpus,
            memory: t.memory_gb,
            disk: t.disk_gb,
            deprecation: None,
            prices: t
                .eur_per_hour
                .map(|p| {
                    locations
                        .iter()
                        .map(|l| api::Price {
                            location: l.clone(),
                            price_hourly: api::Amount {
                                net: format!("{p:.4}"),
                            },
                        })
                        .collect()
                })
                .unwrap_or_default(),
            locations: Some(
                locations
                    .iter()
                    .map(|l| api::TypeLocation {
                        name: l.clone(),
                        deprecation: None,
                        available: None,
                    })
                    .collect(),
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn every_type_of_the_built_in_ladders_is_in_the_catalogue_at_its_price_and_shape() {
        let config = Config::defaults();
        for arch in [Arch::Amd64, Arch::Arm64] {
            for tier in config.ladder(arch) {
                let r = reference(&tier.name).unwrap_or_else(|| panic!("{}", tier.name));
                assert_eq!(r.arch, arch, "{}", tier.name);
                assert_eq!(r.vcpus, tier.vcpus, "{}", tier.name);
                assert_eq!(
                    r.memory_gb * 1024.0,
                    tier.memory_mib as f64,
                    "{}",
                    tier.name
                );
                assert_eq!(r.disk_gb, tier.disk_gb as f64, "{}", tier.name);
                assert_eq!(
                    r.eur_per_hour, tier.price_eur_per_hour,
                    "the ladder's reference price is the catalogue's: {}",
                    tier.name
                );
            }
        }
    }

    #[test]
    fn every_entry_says_where_its_price_comes_from_and_names_are_unique() {
        let mut names: Vec<&str> = SERVER_TYPES.iter().map(|t| t.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SERVER_TYPES.len());
        for t in SERVER_TYPES {
            assert!(!t.basis.is_empty(), "{}", t.name);
            if t.eur_per_hour.is_none() {
                assert!(t.basis.contains("no 2026"), "{}: {}", t.name, t.basis);
            }
        }
        let locations = vec!["fsn1".to_owned(), "hel1".to_owned()];
        let types = as_server_types(&locations);
        let cx33 = types.iter().find(|t| t.name == "cx33").unwrap();
        assert_eq!(cx33.hourly_price("hel1"), Some((0.0104, "hel1".into())));
        assert_eq!(cx33.architecture, "x86");
        let ccx63 = types.iter().find(|t| t.name == "ccx63").unwrap();
        assert_eq!(ccx63.hourly_price("fsn1"), None);
    }
}
