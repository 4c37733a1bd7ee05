//! The fixed catalogue of the Hetzner Cloud API simulator (a test double of Hetzner's API, not
//! the real thing): server types with per-location prices and deprecations, locations and the
//! system images, rendered with the `hcloud` crate's own models.
//!
//! Facts: cx23…cx53 and cax11…cax41 shapes from FACTS.md; amd64 hourly prices are SIZING.md's
//! reference prices; arm64 prices are the ones Hetzner listed in early 2026 (cax11 0.0064 …
//! cax41 0.0433, as seen in public tool output) and only need to be plausible. cx22/cx32 were
//! deprecated on 2025-10-16 and not orderable after 2025-12-31. cpx22…cpx42 and ccx13…ccx33:
//! vCPUs, memory and disk as a public 2026 price table of Hetzner types lists them (cpx32: 4
//! vCPUs, 8 GB, 160 GB, also so in public API fixtures); their hourly prices are that table's
//! monthly prices divided by 730 (its ap-southeast column, the only one with the new cpx
//! names): plausible, not Hetzner's EU prices, and only their order matters to the tests
//! (cpx32 within a 0.03 EUR/h ceiling, ccx23 above it). Location coordinates and cities
//! are Hetzner's. The ids of the new types are made up.
//!
//! Types are sold per location: `server_types[].locations[]` lists where, each entry with its
//! own `deprecation`; the top-level `deprecated`/`deprecation` are being phased out (Hetzner
//! changelog, 2025-09: "server type deprecation per location"), and asking for a type in a
//! location that does not sell it (or past its `unavailable_after` there) is 400
//! `invalid_input` "unsupported location for server type". [`Sales`] scripts both.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use hcloud::models::server_type::{CpuType, StorageType};
use hcloud::models::{
    Architecture, DeprecationInfo, IpType, ListPricesResponse, ListPricesResponsePricing,
    ListPricesResponsePricingFloatingIp, ListPricesResponsePricingImage,
    ListPricesResponsePricingPrimaryIps, ListPricesResponsePricingServerBackup,
    ListPricesResponsePricingServerTypes, ListPricesResponsePricingVolume, Location, Price,
    PricePerTime, PricePerTimeWithoutTraffic, ServerType, ServerTypeLocation,
};

/// One server type of the catalogue.
pub(super) struct TypeSpec {
    pub id: i64,
    pub name: &'static str,
    pub arch: Architecture,
    pub cores: i32,
    pub memory_gb: f64,
    pub disk_gb: f64,
    /// Net hourly price in EUR (the same in every location here).
    pub hourly_net: f64,
    /// Built-in deprecation: (announced, unavailable_after).
    pub deprecated: Option<(&'static str, &'static str)>,
}

const OLD: Option<(&str, &str)> = Some(("2025-10-16T06:00:00+00:00", "2025-12-31T23:59:59+00:00"));

#[rustfmt::skip]
pub(super) const SERVER_TYPES: &[TypeSpec] = &[
    TypeSpec { id: 104, name: "cx22", arch: Architecture::X86, cores: 2, memory_gb: 4.0, disk_gb: 40.0, hourly_net: 0.0060, deprecated: OLD },
    TypeSpec { id: 105, name: "cx32", arch: Architecture::X86, cores: 4, memory_gb: 8.0, disk_gb: 80.0, hourly_net: 0.0110, deprecated: OLD },
    TypeSpec { id: 114, name: "cx23", arch: Architecture::X86, cores: 2, memory_gb: 4.0, disk_gb: 40.0, hourly_net: 0.0080, deprecated: None },
    TypeSpec { id: 115, name: "cx33", arch: Architecture::X86, cores: 4, memory_gb: 8.0, disk_gb: 80.0, hourly_net: 0.0128, deprecated: None },
    TypeSpec { id: 116, name: "cx43", arch: Architecture::X86, cores: 8, memory_gb: 16.0, disk_gb: 160.0, hourly_net: 0.0240, deprecated: None },
    TypeSpec { id: 117, name: "cx53", arch: Architecture::X86, cores: 16, memory_gb: 32.0, disk_gb: 320.0, hourly_net: 0.0464, deprecated: None },
    TypeSpec { id: 108, name: "cpx22", arch: Architecture::X86, cores: 3, memory_gb: 4.0, disk_gb: 80.0, hourly_net: 0.0123, deprecated: None },
    TypeSpec { id: 109, name: "cpx32", arch: Architecture::X86, cores: 4, memory_gb: 8.0, disk_gb: 160.0, hourly_net: 0.0240, deprecated: None },
    TypeSpec { id: 110, name: "cpx42", arch: Architecture::X86, cores: 8, memory_gb: 16.0, disk_gb: 240.0, hourly_net: 0.0425, deprecated: None },
    TypeSpec { id: 96, name: "ccx13", arch: Architecture::X86, cores: 2, memory_gb: 8.0, disk_gb: 80.0, hourly_net: 0.0240, deprecated: None },
    TypeSpec { id: 97, name: "ccx23", arch: Architecture::X86, cores: 4, memory_gb: 16.0, disk_gb: 160.0, hourly_net: 0.0459, deprecated: None },
    TypeSpec { id: 98, name: "ccx33", arch: Architecture::X86, cores: 8, memory_gb: 32.0, disk_gb: 240.0, hourly_net: 0.0877, deprecated: None },
    TypeSpec { id: 45, name: "cax11", arch: Architecture::Arm, cores: 2, memory_gb: 4.0, disk_gb: 40.0, hourly_net: 0.0064, deprecated: None },
    TypeSpec { id: 93, name: "cax21", arch: Architecture::Arm, cores: 4, memory_gb: 8.0, disk_gb: 80.0, hourly_net: 0.0112, deprecated: None },
    TypeSpec { id: 94, name: "cax31", arch: Architecture::Arm, cores: 8, memory_gb: 16.0, disk_gb: 160.0, hourly_net: 0.0216, deprecated: None },
    TypeSpec { id: 95, name: "cax41", arch: Architecture::Arm, cores: 16, memory_gb: 32.0, disk_gb: 320.0, hourly_net: 0.0433, deprecated: None },
];

/// (id, name, description, city, country, latitude, longitude, network zone)
type LocationSpec = (
    i64,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    f64,
    f64,
    &'static str,
);

#[rustfmt::skip]
pub(super) const LOCATIONS: &[LocationSpec] = &[
    (1, "fsn1", "Falkenstein DC Park 1", "Falkenstein", "DE", 50.47612, 12.370071, "eu-central"),
    (2, "nbg1", "Nuremberg DC Park 1", "Nuremberg", "DE", 49.452102, 11.076665, "eu-central"),
    (3, "hel1", "Helsinki DC Park 1", "Helsinki", "FI", 60.169855, 24.938379, "eu-central"),
];

/// System images: (id, name, architecture, os version).
#[rustfmt::skip]
pub(super) const SYSTEM_IMAGES: &[(i64, &str, Architecture, &str)] = &[
    (114690387, "debian-12", Architecture::X86, "12"),
    (114690389, "debian-12", Architecture::Arm, "12"),
    (161547269, "ubuntu-24.04", Architecture::X86, "24.04"),
    (161547270, "ubuntu-24.04", Architecture::Arm, "24.04"),
];

/// Traffic included with every type (20 TB), in bytes.
pub(super) const INCLUDED_TRAFFIC: i64 = 21_990_232_555_520;

pub(super) fn server_type(name_or_id: &str) -> Option<&'static TypeSpec> {
    SERVER_TYPES
        .iter()
        .find(|t| t.name == name_or_id || t.id.to_string() == name_or_id)
}

pub(super) fn location(name_or_id: &str) -> Option<&'static LocationSpec> {
    LOCATIONS
        .iter()
        .find(|l| l.1 == name_or_id || l.0.to_string() == name_or_id)
}

pub(super) fn location_model(name: &str) -> Location {
    let (id, name, description, city, country, lat, lon, zone) =
        *location(name).expect("a location of the catalogue");
    Location::new(
        city.into(),
        country.into(),
        description.into(),
        id,
        lat,
        lon,
        name.into(),
        zone.into(),
    )
}

/// Prices are strings with ten decimals, gross = net + 19 % VAT (Germany), as the API shows them.
fn price(net: f64) -> Price {
    Price::new(format!("{:.10}", net * 1.19), format!("{net:.10}"))
}

/// What is sold where, as scripted by a test.
#[derive(Default)]
pub(super) struct Sales {
    /// Type → (announced, unavailable_after) in every location (`deprecate_server_type`).
    pub deprecations: BTreeMap<String, (String, String)>,
    /// (type, location) → (announced, unavailable_after) there only.
    pub per_location: BTreeMap<(String, String), (String, String)>,
    /// (type, location) not sold at all.
    pub not_sold: BTreeSet<(String, String)>,
    /// (type, location) listed and sold, but out of stock: a create there answers 412
    /// `resource_unavailable` (hcloud-go's error codes list `resource_unavailable`; the 412
    /// and stock running out per type in every location at once are from public reports of
    /// July 2026, FACTS.md).
    pub sold_out: BTreeSet<(String, String)>,
    /// (type, location) → what `locations[].available` says when a test makes the hint wrong:
    /// others measured `available: false` types that could be ordered and `available: true`
    /// ones that answered `resource_unavailable` (FACTS.md). Without an entry it tells the
    /// truth: available unless sold out there.
    pub available: BTreeMap<(String, String), bool>,
}

/// What `locations[].available` says for `spec` in `location` (since 2026-04-01, hcloud-go
/// `ServerTypeLocation.Available`).
pub(super) fn available_hint(spec: &TypeSpec, location: &str, sales: &Sales) -> bool {
    let key = (spec.name.to_owned(), location.to_owned());
    sales
        .available
        .get(&key)
        .copied()
        .unwrap_or_else(|| !sales.sold_out.contains(&key))
}

/// A server type as the API renders it since 2026-04-01: the `hcloud` crate's model (which
/// predates the field) with `available` and `recommended` added to each `locations[]` entry.
/// `recommended` is the hint itself here (the API's meaning of it is not documented further).
pub(super) fn server_type_json(spec: &TypeSpec, sales: &Sales) -> serde_json::Value {
    let mut value =
        serde_json::to_value(server_type_model(spec, sales)).expect("a server type renders");
    if let Some(locations) = value
        .get_mut("locations")
        .and_then(serde_json::Value::as_array_mut)
    {
        for l in locations {
            let name = l["name"].as_str().unwrap_or_default().to_owned();
            let available = available_hint(spec, &name, sales);
            l["available"] = serde_json::Value::Bool(available);
            l["recommended"] = serde_json::Value::Bool(available);
        }
    }
    value
}

/// The deprecation of a type everywhere: the catalogue's own, or a scripted one.
pub(super) fn deprecation(spec: &TypeSpec, sales: &Sales) -> Option<(String, String)> {
    sales
        .deprecations
        .get(spec.name)
        .cloned()
        .or_else(|| spec.deprecated.map(|(a, u)| (a.to_owned(), u.to_owned())))
}

/// The deprecation of a type in one location.
pub(super) fn deprecation_in(
    spec: &TypeSpec,
    location: &str,
    sales: &Sales,
) -> Option<(String, String)> {
    sales
        .per_location
        .get(&(spec.name.to_owned(), location.to_owned()))
        .cloned()
        .or_else(|| deprecation(spec, sales))
}

/// Can `spec` be ordered in `location` now?
pub(super) fn sold_in(spec: &TypeSpec, location: &str, sales: &Sales) -> bool {
    !sales
        .not_sold
        .contains(&(spec.name.to_owned(), location.to_owned()))
        && !deprecation_in(spec, location, sales).is_some_and(|(_, until)| {
            super::state::parse_time(&until).is_some_and(|t| t <= SystemTime::now())
        })
}

pub(super) fn server_type_model(spec: &TypeSpec, sales: &Sales) -> ServerType {
    let deprecation = deprecation(spec, sales)
        .map(|(announced, unavailable_after)| DeprecationInfo::new(announced, unavailable_after));
    let locations = LOCATIONS
        .iter()
        .filter(|l| {
            !sales
                .not_sold
                .contains(&(spec.name.to_owned(), l.1.to_owned()))
        })
        .map(|l| {
            let here = deprecation_in(spec, l.1, sales).map(|(a, u)| DeprecationInfo::new(a, u));
            ServerTypeLocation::new(here, l.0, l.1.into())
        })
        .collect();
    let prices = LOCATIONS
        .iter()
        .map(|l| {
            PricePerTime::new(
                INCLUDED_TRAFFIC,
                l.1.into(),
                price(spec.hourly_net),
                price((spec.hourly_net * 730.0 * 100.0).round() / 100.0),
                price(1.0),
            )
        })
        .collect();
    let arch = match spec.arch {
        Architecture::X86 => "Intel/AMD",
        Architecture::Arm => "Ampere Altra",
    };
    let mut model = ServerType::new(
        spec.arch,
        spec.cores,
        CpuType::Shared,
        Some(deprecation.is_some()),
        format!("{} ({arch})", spec.name.to_uppercase()),
        spec.disk_gb,
        spec.id,
        locations,
        spec.memory_gb,
        spec.name.into(),
        prices,
        StorageType::Local,
    );
    model.category = Some("cost_optimized".into());
    model.deprecation = Some(deprecation.map(Box::new));
    model
}

/// The primary IPv4's net hourly price here, in every location. Made up: it differs from the
/// launcher's reference price (0.0008, Hetzner's "Primary IPs" page) so a test can tell which
/// one an estimate or report used. A primary IPv6 is free (same page).
pub(super) const IPV4_HOURLY_NET: f64 = 0.0010;

/// `GET /pricing` as the API answers it: the `hcloud` crate's `ListPricesResponse` (the
/// OpenAPI description's shape; hcloud-go `schema.PricingGetResponse` reads the same fields),
/// `primary_ips` per type with a price per location (`location`; hcloud-go deprecated the
/// per-datacenter field in v1.39.0 as the API stopped sending it), server types at the
/// catalogue's prices. The other sections only need to be well-formed.
pub(super) fn pricing() -> ListPricesResponse {
    let per_location = |hourly: f64| -> Vec<PricePerTimeWithoutTraffic> {
        LOCATIONS
            .iter()
            .map(|l| {
                PricePerTimeWithoutTraffic::new(
                    l.1.into(),
                    price(hourly),
                    price((hourly * 730.0 * 100.0).round() / 100.0),
                )
            })
            .collect()
    };
    let server_types = SERVER_TYPES
        .iter()
        .map(|t| {
            let prices = LOCATIONS
                .iter()
                .map(|l| {
                    PricePerTime::new(
                        INCLUDED_TRAFFIC,
                        l.1.into(),
                        price(t.hourly_net),
                        price((t.hourly_net * 730.0 * 100.0).round() / 100.0),
                        price(1.0),
                    )
                })
                .collect();
            ListPricesResponsePricingServerTypes::new(t.id, t.name.into(), prices)
        })
        .collect();
    ListPricesResponse::new(ListPricesResponsePricing {
        currency: "EUR".into(),
        floating_ip: Box::new(ListPricesResponsePricingFloatingIp::new(price(3.0))),
        floating_ips: Vec::new(),
        image: Box::new(ListPricesResponsePricingImage::new(price(0.011))),
        load_balancer_types: Vec::new(),
        primary_ips: vec![
            ListPricesResponsePricingPrimaryIps::new(per_location(IPV4_HOURLY_NET), IpType::Ipv4),
            ListPricesResponsePricingPrimaryIps::new(per_location(0.0), IpType::Ipv6),
        ],
        server_backup: Box::new(ListPricesResponsePricingServerBackup::new("20.00".into())),
        server_types,
        vat_rate: "19.00".into(),
        volume: Box::new(ListPricesResponsePricingVolume::new(price(0.044))),
    })
}
