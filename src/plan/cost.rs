//! What a build's server costs by the plan's prices: the started hours it is billed times the
//! server's and the primary IPv4's hourly prices, and words saying where each price came from.

use crate::sizing::Sizing;

pub(super) const REFERENCE_SERVER: &str = "the reference price in the launcher config";
pub(super) const REFERENCE_IPV4: &str = "the reference price (catalogue.rs)";

pub(super) fn cost(sizing: &Sizing, hours: f64, ipv4: Option<f64>) -> (Option<f64>, String) {
    match cost_of(
        hours,
        sizing.tier.price_eur_per_hour,
        REFERENCE_SERVER,
        ipv4,
        REFERENCE_IPV4,
    ) {
        (Some(eur), basis) => (Some(eur), basis),
        (None, _) => (
            None,
            format!(
                "unknown: the launcher config has no price for {} (tiers.{}[].price_eur_per_hour)",
                sizing.tier.name, sizing.arch
            ),
        ),
    }
}

/// "1 started hour × (0.0104 EUR/h server + 0.0008 EUR/h primary IPv4): reference prices …";
/// IPv6 only: "1 started hour × 0.0104 EUR/h, …; IPv6 only, no primary IPv4".
pub(super) fn cost_of(
    hours: f64,
    server: Option<f64>,
    server_from: &str,
    ipv4: Option<f64>,
    ipv4_from: &str,
) -> (Option<f64>, String) {
    let Some(server) = server else {
        return (None, String::new());
    };
    let started = format!(
        "{hours} started hour{}",
        if hours == 1.0 { "" } else { "s" }
    );
    match ipv4 {
        Some(ip) => {
            let from = if server_from == REFERENCE_SERVER && ipv4_from == REFERENCE_IPV4 {
                "reference prices (the server's from the launcher config, the IPv4's built in)"
                    .to_owned()
            } else {
                format!("server: {server_from}; IPv4: {ipv4_from}")
            };
            (
                Some(hours * (server + ip)),
                format!("{started} × ({server} EUR/h server + {ip} EUR/h primary IPv4): {from}"),
            )
        }
        None => (
            Some(hours * server),
            format!("{started} × {server} EUR/h, {server_from}; IPv6 only, no primary IPv4"),
        ),
    }
}
