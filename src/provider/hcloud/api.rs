//! The parts of Hetzner's JSON the launcher reads, parsed leniently: unknown fields are ignored
//! and enum-like values stay strings, so a value the API adds tomorrow does not break a build.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Action {
    pub id: i64,
    pub status: String,
    #[serde(default)]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Deserialize)]
pub struct ActionResponse {
    pub action: Action,
}

#[derive(Debug, Deserialize)]
pub struct ActionsPage {
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Server {
    pub id: i64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub public_net: PublicNet,
    /// An action runs on it (boot, snapshot, delete…): a delete now answers 423.
    #[serde(default)]
    pub locked: bool,
    /// RFC 3339, in the API's time.
    #[serde(default)]
    pub created: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PublicNet {
    #[serde(default)]
    pub ipv4: Option<Ip>,
    #[serde(default)]
    pub ipv6: Option<Ip>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Ip {
    pub ip: String,
}

#[derive(Debug, Deserialize)]
pub struct CreateServerResponse {
    pub server: Server,
    pub action: Action,
    /// Started by the create (`start_server`…): watched with it.
    #[serde(default)]
    pub next_actions: Vec<Action>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SshKey {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct SshKeysPage {
    pub ssh_keys: Vec<SshKey>,
}

#[derive(Debug, Deserialize)]
pub struct ServerResponse {
    pub server: Server,
}

#[derive(Debug, Deserialize)]
pub struct ServersPage {
    pub servers: Vec<Server>,
    #[serde(default)]
    pub meta: Option<Meta>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Image {
    pub id: i64,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub created: String,
    /// When Hetzner deprecated the image (system images only); null while it is current.
    #[serde(default)]
    pub deprecated: Option<String>,
    /// GB: the disk of the server a snapshot was taken from. A server type with a smaller
    /// disk cannot boot it (FACTS.md "Snapshots"; the API refuses the create).
    #[serde(default)]
    pub disk_size: Option<f64>,
    /// A golden snapshot's labels (its buildkitd config digest, for `check`).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct ImagesPage {
    /// Sorted newest first by the request; only the first is used.
    pub images: Vec<Image>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerType {
    pub name: String,
    #[serde(default)]
    pub architecture: String,
    /// vCPUs, memory (GB) and disk (GB): the shape a substitute must match.
    #[serde(default)]
    pub cores: u32,
    #[serde(default)]
    pub memory: f64,
    #[serde(default)]
    pub disk: f64,
    /// Present and non-null when the type is deprecated.
    #[serde(default)]
    pub deprecation: Option<serde_json::Value>,
    #[serde(default)]
    pub prices: Vec<Price>,
    /// Where the type is sold, each with its own deprecation (the top-level one is being
    /// phased out since 2025-09).
    /// `None` only in an older answer without the field; an empty list: sold nowhere.
    #[serde(default)]
    pub locations: Option<Vec<TypeLocation>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TypeLocation {
    pub name: String,
    #[serde(default)]
    pub deprecation: Option<Deprecation>,
    /// Since 2026-04-01: whether the type can be ordered there now. A hint only (types
    /// marked `false` were ordered, types marked `true` answered `resource_unavailable`):
    /// it orders candidates and locations, it never skips one. `None` in older answers.
    #[serde(default)]
    pub available: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Deprecation {
    #[serde(default)]
    pub announced: String,
    #[serde(default)]
    pub unavailable_after: String,
}

impl Deprecation {
    /// Past `unavailable_after`: no longer sold.
    pub fn is_over(&self, now: std::time::SystemTime) -> bool {
        parse_time(&self.unavailable_after).is_some_and(|t| t <= now)
    }

    /// The date part of `unavailable_after`, for messages.
    pub fn until(&self) -> &str {
        self.unavailable_after
            .get(..10)
            .unwrap_or(&self.unavailable_after)
    }
}

/// RFC 3339 as the API writes it (`…+00:00` or `…Z`).
pub fn parse_time(text: &str) -> Option<std::time::SystemTime> {
    let normalized = text
        .strip_suffix("+00:00")
        .map_or(text.to_owned(), |t| format!("{t}Z"));
    humantime::parse_rfc3339_weak(&normalized).ok()
}

#[derive(Debug, Clone, Deserialize)]
pub struct Price {
    pub location: String,
    pub price_hourly: Amount,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Amount {
    pub net: String,
}

/// `GET /pricing` (hcloud-go `schema.PricingGetResponse`): only the primary IPs are read here;
/// server types are priced by `GET /server_types`.
#[derive(Debug, Deserialize)]
pub struct PricingResponse {
    pub pricing: Pricing,
}

#[derive(Debug, Default, Deserialize)]
pub struct Pricing {
    #[serde(default)]
    pub currency: String,
    #[serde(default)]
    pub primary_ips: Vec<PrimaryIpPricing>,
}

/// hcloud-go `schema.PricingPrimaryIP`: per type (`ipv4`, `ipv6`), a price per location.
#[derive(Debug, Deserialize)]
pub struct PrimaryIpPricing {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub prices: Vec<PrimaryIpPrice>,
}

/// hcloud-go `schema.PricingPrimaryIPTypePrice` (`location`; its `datacenter` is deprecated and
/// no longer sent).
#[derive(Debug, Deserialize)]
pub struct PrimaryIpPrice {
    #[serde(default)]
    pub location: String,
    pub price_hourly: Amount,
}

impl Pricing {
    /// The primary IPv4's net hourly price in `location`, else the first listed.
    pub fn primary_ipv4_hourly(&self, location: &str) -> Option<(f64, String)> {
        let ipv4 = self.primary_ips.iter().find(|p| p.kind == "ipv4")?;
        let price = ipv4
            .prices
            .iter()
            .find(|p| p.location == location)
            .or_else(|| ipv4.prices.first())?;
        Some((price.price_hourly.net.parse().ok()?, price.location.clone()))
    }
}

#[derive(Debug, Deserialize)]
pub struct ServerTypesPage {
    pub server_types: Vec<ServerType>,
    #[serde(default)]
    pub meta: Option<Meta>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub pagination: Option<Pagination>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Pagination {
    #[serde(default)]
    pub next_page: Option<u32>,
}

impl Meta {
    pub fn next_page(meta: &Option<Meta>) -> Option<u32> {
        meta.as_ref()?.pagination.as_ref()?.next_page
    }
}

impl ServerType {
    pub fn is_deprecated(&self) -> bool {
        self.deprecation.as_ref().is_some_and(|d| !d.is_null())
    }

    /// The deprecation that applies in `location`: the per-location one; the top-level one
    /// only when the API lists no locations (an older answer).
    pub fn deprecation_in(&self, location: &str) -> Option<Deprecation> {
        let Some(locations) = &self.locations else {
            return self
                .deprecation
                .clone()
                .and_then(|d| serde_json::from_value(d).ok());
        };
        locations
            .iter()
            .find(|l| l.name == location)
            .and_then(|l| l.deprecation.clone())
    }

    /// Sold in `location` now: listed there and not past `unavailable_after`.
    pub fn sold_in(&self, location: &str, now: std::time::SystemTime) -> bool {
        let listed = self
            .locations
            .as_ref()
            .is_none_or(|ls| ls.iter().any(|l| l.name == location));
        listed
            && !self
                .deprecation_in(location)
                .is_some_and(|d| d.is_over(now))
    }

    /// Every location where it is sold now.
    pub fn sold_anywhere(&self, now: std::time::SystemTime) -> Vec<String> {
        self.locations
            .iter()
            .flatten()
            .filter(|l| !l.deprecation.as_ref().is_some_and(|d| d.is_over(now)))
            .map(|l| l.name.clone())
            .collect()
    }

    /// What `GET /server_types` says about ordering it in `location` (`None`: it does not say).
    pub fn available_in(&self, location: &str) -> Option<bool> {
        self.locations
            .as_ref()?
            .iter()
            .find(|l| l.name == location)?
            .available
    }

    /// Net hourly price in EUR in `location`, else the first listed.
    pub fn hourly_price(&self, location: &str) -> Option<(f64, String)> {
        let price = self
            .prices
            .iter()
            .find(|p| p.location == location)
            .or_else(|| self.prices.first())?;
        Some((price.price_hourly.net.parse().ok()?, price.location.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_new_enum_values_do_not_break_parsing() {
        let s: Server = serde_json::from_str(
            r#"{"id": 1, "name": "x", "status": "teleporting", "brand_new_field": {"a": 1},
                "labels": {"managed-by": "buildkit-launcher"},
                "public_net": {"ipv4": {"ip": "127.0.0.2", "blocked": false}, "ipv6": null}}"#,
        )
        .unwrap();
        assert_eq!(s.labels["managed-by"], "buildkit-launcher");
        assert_eq!(s.public_net.ipv4.unwrap().ip, "127.0.0.2");
    }

    #[test]
    fn server_type_price_and_deprecation() {
        let t: ServerType = serde_json::from_str(
            r#"{"name": "cx22", "architecture": "x86", "deprecation": {"announced": "2025-10-01T00:00:00Z", "unavailable_after": "2026-01-01T00:00:00Z"},
                "prices": [{"location": "fsn1", "price_hourly": {"net": "0.0060000000", "gross": "0.0071"}},
                           {"location": "hel1", "price_hourly": {"net": "0.0070000000", "gross": "0.0083"}}]}"#,
        )
        .unwrap();
        assert!(t.is_deprecated());
        // No per-location list (an older answer): the top-level deprecation counts.
        let now = parse_time("2026-06-01T00:00:00Z").unwrap();
        assert!(!t.sold_in("fsn1", now));
        assert_eq!(t.hourly_price("hel1"), Some((0.007, "hel1".into())));
        assert_eq!(t.hourly_price("nbg1"), Some((0.006, "fsn1".into())));
    }

    #[test]
    fn the_primary_ipv4_price_is_read_per_location() {
        let p: PricingResponse = serde_json::from_str(
            r#"{"pricing": {"currency": "EUR", "vat_rate": "19.00",
                "primary_ips": [
                  {"type": "ipv6", "prices": [{"location": "fsn1", "price_hourly": {"net": "0.0000000000", "gross": "0"}}]},
                  {"type": "ipv4", "prices": [
                    {"location": "fsn1", "price_hourly": {"net": "0.0008000000", "gross": "0.000952"}, "price_monthly": {"net": "0.5000000000", "gross": "0.595"}},
                    {"location": "hel1", "price_hourly": {"net": "0.0009000000", "gross": "0.001071"}}]}],
                "server_types": []}}"#,
        )
        .unwrap();
        assert_eq!(
            p.pricing.primary_ipv4_hourly("hel1"),
            Some((0.0009, "hel1".into()))
        );
        assert_eq!(
            p.pricing.primary_ipv4_hourly("nbg1"),
            Some((0.0008, "fsn1".into()))
        );
        assert_eq!(Pricing::default().primary_ipv4_hourly("fsn1"), None);
    }

    #[test]
    fn deprecation_and_availability_are_judged_per_location() {
        let t: ServerType = serde_json::from_str(
            r#"{"name": "cx33", "architecture": "x86", "deprecation": null, "prices": [],
                "locations": [
                  {"id": 1, "name": "fsn1", "deprecation": {"announced": "2026-01-01T00:00:00+00:00", "unavailable_after": "2026-03-01T00:00:00+00:00"}},
                  {"id": 2, "name": "nbg1", "deprecation": {"announced": "2026-01-01T00:00:00+00:00", "unavailable_after": "2027-03-01T00:00:00+00:00"}},
                  {"id": 3, "name": "hel1", "deprecation": null}]}"#,
        )
        .unwrap();
        let now = parse_time("2026-06-01T00:00:00+00:00").unwrap();
        assert!(!t.sold_in("fsn1", now), "past unavailable_after");
        assert!(t.sold_in("nbg1", now) && t.deprecation_in("nbg1").is_some());
        assert!(t.sold_in("hel1", now) && t.deprecation_in("hel1").is_none());
        assert!(!t.sold_in("ash", now), "not listed: not sold");
        assert_eq!(t.sold_anywhere(now), ["nbg1", "hel1"]);
    }
}
