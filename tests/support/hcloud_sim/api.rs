//! The HTTP face of the Hetzner Cloud API simulator (a test double of Hetzner's API, not the
//! real thing): the axum router under `/v1`, the gate every request passes (counting, logging,
//! bearer auth, rate limit with `RateLimit-*` headers, scripted 429/503 faults), the shared
//! helpers (errors, pagination, sorting), and the catalogue, image and action endpoints.
//! Servers are in `servers.rs`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, Query, Request, State as AxumState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use buildkit_launcher::provider::local::LocalProvider;
use hcloud::models::{self, Meta, Pagination, image};
use serde::Serialize;

use super::catalog;
use super::keys;
use super::labels::{Requirement, parse_selector, selects};
use super::servers;
use super::state::{self, ApiError, ImageRec, State, action_model, image_model, take};
use super::strict;

/// What every handler shares: the state and the provider that realizes servers.
#[derive(Clone)]
pub(super) struct Shared {
    pub state: Arc<Mutex<State>>,
    pub provider: Arc<LocalProvider>,
    pub base: PathBuf,
}

impl Shared {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) type Q = Query<Vec<(String, String)>>;

pub(super) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/v1/server_types", get(list_server_types))
        .route("/v1/server_types/{id}", get(get_server_type))
        .route("/v1/locations", get(list_locations))
        .route("/v1/pricing", get(get_pricing))
        .route("/v1/images", get(list_images))
        .route("/v1/images/{id}", get(get_image).delete(delete_image))
        .route("/v1/servers", get(servers::list).post(servers::create))
        .route(
            "/v1/servers/{id}",
            get(servers::get)
                .put(servers::update)
                .delete(servers::delete),
        )
        .route("/v1/servers/{id}/actions", get(servers::actions_of))
        .route("/v1/servers/{id}/actions/{action}", post(servers::action))
        .route("/v1/ssh_keys", get(keys::list).post(keys::create))
        .route(
            "/v1/ssh_keys/{id}",
            get(keys::get).put(keys::update).delete(keys::delete),
        )
        .route("/v1/actions", get(list_actions))
        .route("/v1/actions/{id}", get(get_action))
        .fallback(|| async { error(ApiError::new("not_found", "not found")) })
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

// ---- the gate -----------------------------------------------------------------------------

/// Counts and logs the request, checks the token, spends the rate limit, applies the scripted
/// 429 and 503 faults, and puts `RateLimit-*` headers on whatever the answer is.
async fn gate(AxumState(sh): AxumState<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let path = path.strip_prefix("/v1").unwrap_or(path).to_owned();
    let template: Vec<String> = path
        .split('/')
        .map(|seg| {
            if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                "{id}".to_owned()
            } else {
                seg.to_owned()
            }
        })
        .collect();
    let method = req.method().clone();
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let early = {
        let mut st = sh.state();
        *st.calls
            .entry(format!("{method} {}", template.join("/")))
            .or_default() += 1;
        st.requests
            .push((Instant::now(), format!("{method} {path}{query}")));
        st.bucket.refill();
        let readonly = bearer.as_deref() == Some(format!("Bearer {}", st.readonly_token).as_str());
        if bearer.as_deref() != Some(format!("Bearer {}", st.token).as_str()) && !readonly {
            Some(ApiError::new("unauthorized", "unable to authenticate"))
        } else if readonly && method != axum::http::Method::GET {
            // A read-only token may only GET (API reference, "Errors": `token_readonly`).
            Some(ApiError::new(
                "token_readonly",
                state::message_for("token_readonly"),
            ))
        } else if take(&mut st.faults.burst_429) || !st.bucket.take() {
            st.rate_limited += 1;
            Some(ApiError::new(
                "rate_limit_exceeded",
                state::message_for("rate_limit_exceeded"),
            ))
        } else if take(&mut st.faults.fail_5xx) {
            Some(ApiError::new(
                "unavailable",
                state::message_for("unavailable"),
            ))
        } else {
            None
        }
    };
    let mut response = match early {
        Some(e) => error(e),
        None => next.run(req).await,
    };
    let (limit, remaining, reset, now) = {
        let mut st = sh.state();
        st.bucket.refill();
        let (limit, remaining, reset) = st.bucket.headers();
        (limit, remaining, reset, st.api_time())
    };
    let headers = response.headers_mut();
    // Every answer carries the API's time (RFC 9110 `Date`; one-second resolution).
    headers.insert(
        header::DATE,
        HeaderValue::from_str(&httpdate::fmt_http_date(now)).expect("an HTTP date"),
    );
    for (name, value) in [
        ("ratelimit-limit", limit.to_string()),
        ("ratelimit-remaining", remaining.to_string()),
        ("ratelimit-reset", reset.to_string()),
    ] {
        headers.insert(name, HeaderValue::from_str(&value).expect("a number"));
    }
    response
}

pub(super) fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(state::status_for(&e.code)).expect("a valid status");
    let mut body = models::ErrorResponseError::new(e.code, e.message);
    body.details = Some(Some(e.details));
    (status, axum::Json(models::ErrorResponse::new(body))).into_response()
}

pub(super) fn ok<T: Serialize>(status: StatusCode, body: T) -> Response {
    (status, axum::Json(body)).into_response()
}

pub(super) fn id_of(text: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::invalid_field("id", "must be an integer"))
}

/// The values of one query parameter (`id=1&id=2`).
pub(super) fn param<'a>(q: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    q.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// `page`/`per_page` (default 25, at most 50) and the `meta.pagination` of the answer.
pub(super) fn paginate<T>(items: Vec<T>, q: &[(String, String)]) -> (Vec<T>, Meta) {
    let number = |key: &str, default: i64| {
        param(q, key)
            .first()
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    let (page, per_page) = (number("page", 1), number("per_page", 25).min(50));
    let total = items.len() as i64;
    let last = ((total + per_page - 1) / per_page).max(1);
    let items = items
        .into_iter()
        .skip(((page - 1) * per_page) as usize)
        .take(per_page as usize)
        .collect();
    let pagination = Pagination::new(
        Some(last),
        (page < last).then_some(page + 1),
        page,
        per_page,
        (page > 1).then_some(page - 1),
        Some(total),
    );
    (items, Meta::new(pagination))
}

pub(super) fn selector_filter(q: &[(String, String)]) -> Result<Vec<Requirement>, ApiError> {
    match param(q, "label_selector").first() {
        Some(s) => parse_selector(s),
        None => Ok(Vec::new()),
    }
}

/// `sort=created:desc` and friends; keys in order of precedence.
pub(super) fn sort_by<T>(
    items: &mut [T],
    q: &[(String, String)],
    key: impl Fn(&T, &str) -> Option<String>,
) {
    for spec in param(q, "sort").iter().rev() {
        let (field, desc) = match spec.split_once(':') {
            Some((f, dir)) => (f, dir == "desc"),
            None => (*spec, false),
        };
        items.sort_by(|a, b| {
            let order = key(a, field).cmp(&key(b, field));
            if desc { order.reverse() } else { order }
        });
    }
}

// ---- catalogue ----------------------------------------------------------------------------

async fn list_server_types(AxumState(sh): AxumState<Shared>, Query(q): Q) -> Response {
    if let Err(e) = strict::sort_fields(&q, &["id", "name"]) {
        return error(e);
    }
    let st = sh.state();
    let names = param(&q, "name");
    let types: Vec<_> = catalog::SERVER_TYPES
        .iter()
        .filter(|t| names.is_empty() || names.contains(&t.name))
        .map(|t| catalog::server_type_json(t, &st.sales))
        .collect();
    let (types, meta) = paginate(types, &q);
    ok(
        StatusCode::OK,
        serde_json::json!({ "server_types": types, "meta": meta }),
    )
}

async fn get_server_type(AxumState(sh): AxumState<Shared>, Path(id): Path<String>) -> Response {
    let st = sh.state();
    match catalog::SERVER_TYPES
        .iter()
        .find(|t| t.id.to_string() == id)
    {
        Some(t) => ok(
            StatusCode::OK,
            serde_json::json!({ "server_type": catalog::server_type_json(t, &st.sales) }),
        ),
        None => error(ApiError::not_found("server type", id)),
    }
}

async fn get_pricing() -> Response {
    ok(StatusCode::OK, catalog::pricing())
}

async fn list_locations(Query(q): Q) -> Response {
    let names = param(&q, "name");
    let locations: Vec<_> = catalog::LOCATIONS
        .iter()
        .filter(|l| names.is_empty() || names.contains(&l.1))
        .map(|l| catalog::location_model(l.1))
        .collect();
    let (locations, meta) = paginate(locations, &q);
    ok(
        StatusCode::OK,
        models::ListLocationsResponse::new(locations, meta),
    )
}

// ---- images -------------------------------------------------------------------------------

async fn list_images(AxumState(sh): AxumState<Shared>, Query(q): Q) -> Response {
    let selector = match selector_filter(&q) {
        Ok(s) => s,
        Err(e) => return error(e),
    };
    let (types, arch, name) = (
        param(&q, "type"),
        param(&q, "architecture"),
        param(&q, "name"),
    );
    let statuses = param(&q, "status");
    for check in [
        strict::one_of(&q, "type", strict::IMAGE_TYPES),
        strict::one_of(&q, "status", strict::IMAGE_STATUSES),
        strict::one_of(&q, "include_deprecated", &["true", "false"]),
        strict::sort_fields(&q, &["id", "name", "created", "description"]),
    ] {
        if let Err(e) = check {
            return error(e);
        }
    }
    // Deprecated images are listed only with include_deprecated=true (API reference, "List
    // Images").
    let with_deprecated = param(&q, "include_deprecated").contains(&"true");
    let st = sh.state();
    let mut images: Vec<&ImageRec> = st
        .images
        .values()
        .filter(|i| types.is_empty() || types.contains(&state::enum_text(&i.kind).as_str()))
        .filter(|i| arch.is_empty() || arch.contains(&state::enum_text(&i.arch).as_str()))
        .filter(|i| name.is_empty() || i.name.as_deref().is_some_and(|n| name.contains(&n)))
        .filter(|i| statuses.is_empty() || statuses.contains(&state::enum_text(&i.status).as_str()))
        .filter(|i| selects(&selector, &i.labels))
        .filter(|i| with_deprecated || !st.image_deprecations.contains_key(&i.id))
        .collect();
    strict::unspecified_order(&q, &mut images);
    sort_by(&mut images, &q, |i, field| match field {
        "id" => Some(format!("{:020}", i.id)),
        "name" => i.name.clone(),
        "created" => Some(
            state::parse_time(&i.created)
                .map(state::rfc3339)
                .unwrap_or_else(|| i.created.clone()),
        ),
        _ => None,
    });
    let images: Vec<_> = images
        .into_iter()
        .map(|i| {
            let mut model = image_model(i);
            model.deprecated = st.image_deprecations.get(&i.id).cloned();
            model
        })
        .collect();
    let (images, meta) = paginate(images, &q);
    ok(
        StatusCode::OK,
        models::ListImagesResponse::new(images, meta),
    )
}

async fn get_image(AxumState(sh): AxumState<Shared>, Path(id): Path<String>) -> Response {
    let st = sh.state();
    let found = id_of(&id).ok().and_then(|n| st.images.get(&n));
    match found {
        Some(i) => {
            let mut body = models::GetImageResponse::new();
            body.image = Some(Box::new(image_model(i)));
            ok(StatusCode::OK, body)
        }
        None => error(ApiError::not_found("image", id)),
    }
}

async fn delete_image(AxumState(sh): AxumState<Shared>, Path(id): Path<String>) -> Response {
    let mut st = sh.state();
    let removable = id_of(&id).ok().filter(|n| {
        st.images
            .get(n)
            .is_some_and(|i| i.kind != image::Type::System)
    });
    if removable.is_some_and(|n| st.images[&n].protected) {
        return error(ApiError::new(
            "protected",
            "image is protected against deletion",
        ));
    }
    match removable {
        Some(n) => {
            st.images.remove(&n);
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(ApiError::not_found("image", id)),
    }
}

// ---- actions ------------------------------------------------------------------------------

async fn get_action(AxumState(sh): AxumState<Shared>, Path(id): Path<String>) -> Response {
    let st = sh.state();
    match id_of(&id).ok().and_then(|n| st.actions.get(&n)) {
        Some(a) => ok(
            StatusCode::OK,
            models::GetActionResponse::new(action_model(a)),
        ),
        None => error(ApiError::not_found("action", id)),
    }
}

/// `GET /actions?id=1&id=2` (unknown ids are left out; listing all actions is not offered).
async fn list_actions(AxumState(sh): AxumState<Shared>, Query(q): Q) -> Response {
    let ids = param(&q, "id");
    if ids.is_empty() {
        return error(ApiError::invalid_field("id", "at least one id is required"));
    }
    let st = sh.state();
    let actions: Vec<_> = ids
        .iter()
        .filter_map(|i| i.parse::<i64>().ok())
        .filter_map(|i| st.actions.get(&i))
        .map(action_model)
        .collect();
    let (actions, meta) = paginate(actions, &q);
    ok(
        StatusCode::OK,
        models::ListActionsResponse::new(actions, meta),
    )
}
