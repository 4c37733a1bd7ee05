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

#[derive(Debug, Clone, Deserialize)]
pub struct Server {
    pub id: i64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub public_net: PublicNet,
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
    /// Present and non-null when the type is deprecated.
    #[serde(default)]
    pub deprecation: Option<serde_json::Value>,
    #[serde(default)]
    pub prices: Vec<Price>,
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
        assert_eq!(t.hourly_price("hel1"), Some((0.007, "hel1".into())));
        assert_eq!(t.hourly_price("nbg1"), Some((0.006, "fsn1".into())));
    }
}
