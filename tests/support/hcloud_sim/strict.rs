//! Where the simulator (a test double of Hetzner's API, not the real thing) is as strict as
//! the real API about query parameters:
//! - `sort`, `type` and `status` take closed sets of values; anything else is 400
//!   `invalid_input` (the API's public OpenAPI description lists the enums per endpoint).
//! - Without `sort` the order of a list is unspecified (the API promises none): the simulator
//!   reverses it on every other request, so a client paging without `sort=id:asc` sees items
//!   twice or never, as it may on the real API while things are created and deleted.
//! - `per_page` is 25 by default and at most 50 (API reference, "Pagination"); see
//!   `api::paginate`.

use std::sync::atomic::{AtomicU32, Ordering};

use super::api::param;
use super::state::ApiError;

/// `sort=field`, `sort=field:asc|desc`, for fields in `allowed`.
pub(super) fn sort_fields(q: &[(String, String)], allowed: &[&str]) -> Result<(), ApiError> {
    for spec in param(q, "sort") {
        let (field, dir) = spec.split_once(':').unwrap_or((spec, "asc"));
        if !allowed.contains(&field) || !matches!(dir, "asc" | "desc") {
            return Err(ApiError::invalid_field(
                "sort",
                format!("invalid value '{spec}'"),
            ));
        }
    }
    Ok(())
}

/// Every value of `key` is one of `allowed`.
pub(super) fn one_of(q: &[(String, String)], key: &str, allowed: &[&str]) -> Result<(), ApiError> {
    match param(q, key).into_iter().find(|v| !allowed.contains(v)) {
        Some(bad) => Err(ApiError::invalid_field(
            key,
            format!("invalid value '{bad}'"),
        )),
        None => Ok(()),
    }
}

pub(super) const SERVER_STATUSES: &[&str] = &[
    "initializing",
    "starting",
    "running",
    "stopping",
    "off",
    "deleting",
    "migrating",
    "rebuilding",
    "unknown",
];
pub(super) const IMAGE_TYPES: &[&str] = &["system", "snapshot", "backup", "app"];
pub(super) const IMAGE_STATUSES: &[&str] = &["available", "creating", "unavailable"];

static UNSORTED_LISTS: AtomicU32 = AtomicU32::new(0);

/// No `sort`: an order of the simulator's choosing, changing from request to request.
pub(super) fn unspecified_order<T>(q: &[(String, String)], items: &mut [T]) {
    if param(q, "sort").is_empty() && UNSORTED_LISTS.fetch_add(1, Ordering::Relaxed) % 2 == 1 {
        items.reverse();
    }
}
