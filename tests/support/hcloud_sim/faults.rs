//! The scripted faults of the Hetzner Cloud API simulator (a test double of Hetzner's API, not
//! the real thing) and its request budget.
//!
//! Where each behaviour comes from:
//! - the budget: 3600 requests an hour per project, refilled at one a second; every answer
//!   carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`, the last being the
//!   unix time at which the budget is *full* again (Hetzner Cloud API reference, "Rate
//!   Limiting"); over it: 429 `rate_limit_exceeded`.
//! - a create that succeeds and then answers 5xx or `timeout`, is slow, or loses its
//!   connection: what makes `POST /servers` non-idempotent for clients (hcloud-go retries
//!   only `conflict`, `rate_limit_exceeded`, bad gateway, gateway timeout and network timeouts:
//!   `hcloud/client_handler_retry.go`).
//! - 403 `resource_limit_exceeded`: the project's server (or IP) quota (API reference,
//!   "Errors").
//! - a create answered 2xx with a body cut short, and a name lookup that does not list a server
//!   made a moment ago: the rare paths issue 17 names (a truncating proxy; a listing that lags
//!   the create, which is also why a repeated create can answer `uniqueness_error` while the
//!   lookup finds nothing).
//! - a create answered with a redirect: not the API's own behaviour (it documents none), but
//!   what a gateway or proxy between might answer after passing the request on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::api::{error, ok};
use super::state::{self, ApiError, unix_now};

/// Per-token bucket: `tokens` refill at `refill` per second up to `limit`.
pub(super) struct Bucket {
    pub limit: u32,
    pub tokens: f64,
    pub refill: f64,
    pub last: Instant,
}

impl Bucket {
    pub fn refill(&mut self) {
        let now = Instant::now();
        let gained = now.duration_since(self.last).as_secs_f64() * self.refill;
        self.tokens = (self.tokens + gained).min(f64::from(self.limit));
        self.last = now;
    }

    pub fn take(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (unix seconds when full).
    pub fn headers(&self) -> (u32, u32, u64) {
        let missing = (f64::from(self.limit) - self.tokens).max(0.0);
        let wait = if missing == 0.0 {
            0
        } else if self.refill > 0.0 {
            (missing / self.refill).ceil() as u64
        } else {
            86_400
        };
        (self.limit, self.tokens.floor() as u32, unix_now() + wait)
    }
}

/// What happens to a `POST /servers` after the server was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCreate {
    /// Answer with this error code (`unavailable` 503, `timeout` 504, `bad_gateway` 502…).
    Fail(&'static str),
    /// Answer 201 after this long.
    Slow(Duration),
    /// Send the status line and drop the connection before the body.
    Drop,
    /// Answer 201 with a body cut short (not JSON the client can decode).
    Garbled,
    /// Answer `307 Temporary Redirect` to another address, as a gateway or proxy between the
    /// launcher and the API might after passing the request on. Hetzner's API documents no
    /// redirect ("Create a Server" answers 201 or an error code), so this is not the API's
    /// own behaviour: it stands for whatever sits in between.
    Redirect,
}

#[derive(Default)]
pub(super) struct Faults {
    pub burst_429: u32,
    pub fail_5xx: u32,
    pub locations: BTreeMap<String, String>,
    pub fail_deletes: u32,
    pub fail_delete_actions: u32,
    pub fail_create_actions: u32,
    /// The next creates: made, then answered like this (one entry per create).
    pub after_create: Vec<AfterCreate>,
    /// The next `n` creates are refused with 403 `resource_limit_exceeded`.
    pub quota: u32,
    /// The next `n` `GET /servers?name=…` list nothing (the listing lags the create).
    pub lagging_lookups: u32,
    /// The next `create_image` actions: the snapshot is made, then answered with this error
    /// code (one entry per request).
    pub after_create_image: Vec<&'static str>,
}

/// The answer to a create the simulator has made: `body` (201) unless `after` scripts another.
pub(super) async fn answer_create(after: Option<AfterCreate>, body: impl Serialize) -> Response {
    match after {
        None => ok(StatusCode::CREATED, body),
        Some(AfterCreate::Fail(code)) => error(ApiError::new(code, state::message_for(code))),
        Some(AfterCreate::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            ok(StatusCode::CREATED, body)
        }
        Some(AfterCreate::Drop) => dropped_connection(),
        Some(AfterCreate::Redirect) => Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header("location", "http://127.0.0.2:9/v1/servers")
            .body(axum::body::Body::empty())
            .expect("a response"),
        Some(AfterCreate::Garbled) => Response::builder()
            .status(StatusCode::CREATED)
            .header("content-type", "application/json")
            .body(axum::body::Body::from("{\"server\": {\"id\": "))
            .expect("a response"),
    }
}

/// Headers, then the connection breaks before the body: the client cannot tell whether the
/// server was made.
pub(super) fn dropped_connection() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated connection drop",
        ))
    });
    Response::builder()
        .status(StatusCode::CREATED)
        .header("content-type", "application/json")
        .body(axum::body::Body::from_stream(stream))
        .expect("a response")
}
