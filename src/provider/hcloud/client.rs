//! A thin client for the few Hetzner Cloud endpoints the launcher uses.
//!
//! Why not the `hcloud` crate's client: it discards response headers, and the launcher must read
//! `RateLimit-Remaining`/`RateLimit-Reset` on every response (all builds of a project share
//! 3600 requests an hour), and its closed enums fail on values the API adds. Responses are
//! parsed leniently into the small structs in `api.rs`.
//!
//! Every call goes through [`ApiClient::call`]: one retry policy for 5xx, `conflict`, `locked`,
//! `timeout` and transport failures; a 429 is waited out (about a second at a time, jittered,
//! with a progress line) within a total bound of its own ([`ApiClient::rate_limit_wait`]),
//! because the budget refills one request a second and every build of the project shares it.
//! Errors carry the API's code and message and never the token. The `Date` of every answer is
//! kept: leases are written and judged in the API's time, not this agent's ([`ApiClient::now`]).

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::provider::unix_now;
use crate::retry::RetryPolicy;

pub use super::rate::RateLimit;
use super::rate::{
    DEFAULT_RATE_LIMIT_WAIT, RATE_LIMIT_PROGRESS, RATE_LIMIT_REFILL, budget_spent, rate_limit_delay,
};

pub const DEFAULT_ENDPOINT: &str = "https://api.hetzner.cloud/v1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Hetzner API {method} {path}: {code}: {message} (HTTP {status})")]
    Api {
        method: String,
        path: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("Hetzner API {method} {path}: {detail}")]
    Transport {
        method: String,
        path: String,
        detail: String,
    },
    #[error("Hetzner API {method} {path}: unexpected response: {detail}")]
    Decode {
        method: String,
        path: String,
        detail: String,
    },
}

impl ApiError {
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API certainly did not act on the request and asks to be asked again: `conflict`
    /// and `rate_limit_exceeded`, the two codes hcloud-go's retry policy retries by code
    /// (hcloud-go `hcloud/client_handler_retry.go`). Safe to repeat, even for a create.
    pub fn is_refused_for_now(&self) -> bool {
        match self {
            ApiError::Api { status, code, .. } => {
                *status == 429 || matches!(code.as_str(), "conflict" | "rate_limit_exceeded")
            }
            _ => false,
        }
    }

    /// It is unknown whether the API acted on the request: a 5xx (bad gateway, `unavailable`,
    /// `timeout`…) or a transport failure (connection dropped, no answer in time). hcloud-go
    /// retries bad gateway, gateway timeout and network timeouts; for a read or a delete that is
    /// harmless, for a create the caller must first look for what may have been made.
    ///
    /// A 3xx counts too: the API never redirects and the client follows no redirect, so one can
    /// only come from something between (a proxy, a gateway) that may have passed the request
    /// on before answering.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            ApiError::Api { status, code, .. } => {
                *status >= 500
                    || (300..400).contains(status)
                    || matches!(code.as_str(), "timeout" | "unavailable")
            }
            ApiError::Transport { .. } => true,
            ApiError::Decode { .. } => false,
        }
    }

    /// Worth repeating an idempotent request (a read, a delete, a poll) for.
    pub fn is_transient(&self) -> bool {
        self.is_refused_for_now() || self.is_ambiguous() || self.code() == Some("locked")
    }

    /// The message, for one-line summaries.
    pub fn message(&self) -> String {
        match self {
            ApiError::Api { code, message, .. } => format!("{code}: {message}"),
            ApiError::Transport { detail, .. } | ApiError::Decode { detail, .. } => detail.clone(),
        }
    }
}

pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: Zeroizing<String>,
    policy: RetryPolicy,
    rate: Mutex<RateLimit>,
    calls: AtomicU32,
    /// How long one request may wait in all for the request budget to refill (429s).
    rate_limit_wait: Duration,
    /// The API's clock minus this agent's, in seconds, from the last `Date` header (`None`
    /// before the first answer).
    clock_offset: AtomicI64,
    clock_known: std::sync::atomic::AtomicBool,
    log: Arc<dyn Fn(&str) + Send + Sync>,
}

impl ApiClient {
    pub fn new(
        endpoint: &str,
        token: Zeroizing<String>,
        policy: RetryPolicy,
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Result<ApiClient, ApiError> {
        // Hetzner's API answers where it is asked: a redirect (a proxy or an endpoint playing
        // the API) is an answer like any other, never a reason to send the token elsewhere.
        let http = crate::proxy::client(reqwest::Client::builder())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("buildkit-launcher/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Transport {
                method: "-".into(),
                path: endpoint.into(),
                detail: e.to_string(),
            })?;
        Ok(ApiClient {
            http,
            base: endpoint.trim_end_matches('/').to_owned(),
            token,
            policy,
            rate: Mutex::new(RateLimit::default()),
            calls: AtomicU32::new(0),
            rate_limit_wait: DEFAULT_RATE_LIMIT_WAIT,
            clock_offset: AtomicI64::new(0),
            clock_known: std::sync::atomic::AtomicBool::new(false),
            log,
        })
    }

    /// Bound the total wait of one request for the request budget (`hcloud.rate_limit_wait_s`).
    pub fn with_rate_limit_wait(mut self, wait: Duration) -> ApiClient {
        self.rate_limit_wait = wait;
        self
    }

    /// The API's time (unix seconds): this agent's clock corrected by the `Date` of the last
    /// answer, so that agents whose clocks differ agree on when a lease ends.
    pub fn now(&self) -> u64 {
        let offset = self.clock_offset.load(Ordering::Relaxed);
        unix_now().saturating_add_signed(offset)
    }

    /// Whether [`ApiClient::now`] is the API's time (an answer with a `Date` came).
    pub fn knows_api_time(&self) -> bool {
        self.clock_known.load(Ordering::Relaxed)
    }

    /// The retry policy (also the shape of the waits callers make around requests).
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    pub fn rate_limit(&self) -> RateLimit {
        *self.rate.lock().expect("rate lock")
    }

    /// Requests sent so far (retries included).
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::Relaxed)
    }

    /// One request, retried per the policy while the failure is transient and `retry` allows.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        retry: Retry,
    ) -> Result<T, ApiError> {
        let mut attempt = 1;
        // When the first 429 of this request came: its waits are bounded in time, not count.
        let mut budget_wait: Option<Instant> = None;
        let mut last_progress: Option<Instant> = None;
        loop {
            let result = self.send(method.clone(), path, body).await;
            let error = match result {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            if error.status() == Some(429) {
                let started = *budget_wait.get_or_insert_with(Instant::now);
                let waited = started.elapsed();
                if waited >= self.rate_limit_wait {
                    return Err(budget_spent(error, waited, self.rate_limit().describe()));
                }
                // The budget refills one request a second: one is free again within about a
                // second, whatever `RateLimit-Reset` (the time it is *full* again) says.
                let retry = (waited.as_secs() as u32 / 4 + 1).min(3);
                let delay = rate_limit_delay(&self.policy, retry, rand::random::<f64>())
                    .min(self.rate_limit_wait.saturating_sub(waited) + RATE_LIMIT_REFILL);
                if last_progress.is_none_or(|t| t.elapsed() >= RATE_LIMIT_PROGRESS) {
                    last_progress = Some(Instant::now());
                    (self.log)(&format!(
                        "{error}{}; the project's request budget is spent: waiting for it to refill, retrying in {:.1} s ({:.0} s of at most {} s waited)",
                        self.rate_limit().describe(),
                        delay.as_secs_f64(),
                        waited.as_secs_f64(),
                        self.rate_limit_wait.as_secs()
                    ));
                }
                tokio::time::sleep(delay).await;
                continue;
            }
            let retryable = match retry {
                Retry::Always => error.is_transient(),
                Retry::IfRefused => error.is_refused_for_now(),
                Retry::NotLocked => error.is_transient() && error.code() != Some("locked"),
            } && self.policy.allows_another(attempt);
            if !retryable {
                return Err(error);
            }
            let delay = self.policy.delay_random(attempt);
            (self.log)(&format!(
                "{error}; retrying in {:.1} s ({attempt}/{})",
                delay.as_secs_f64(),
                self.policy.max_attempts - 1
            ));
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ApiError> {
        let url = format!("{}{path}", self.base);
        let shown = || (method.to_string(), path.to_owned());
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(self.token.as_str());
        if let Some(body) = body {
            request = request.json(body);
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let transport = |e: reqwest::Error| {
            let (method, path) = shown();
            ApiError::Transport {
                method,
                path,
                // reqwest's message names the URL (no token in it) and the cause.
                detail: without_url(e),
            }
        };
        let response = request.send().await.map_err(transport)?;
        self.observe(response.headers());
        self.observe_date(response.headers());
        let status = response.status();
        let text = response.text().await.map_err(transport)?;
        if !status.is_success() {
            let (method, path) = shown();
            let parsed: Option<super::api::ErrorBody> = serde_json::from_str(&text).ok();
            let (code, message) = parsed.map_or_else(
                || (status_code_name(status), truncate(&text)),
                |b| (b.error.code, b.error.message),
            );
            return Err(ApiError::Api {
                method,
                path,
                status: status.as_u16(),
                code,
                message,
            });
        }
        let text = if text.trim().is_empty() {
            "null"
        } else {
            &text
        };
        serde_json::from_str(text).map_err(|e| {
            let (method, path) = shown();
            ApiError::Decode {
                method,
                path,
                detail: e.to_string(),
            }
        })
    }

    fn observe(&self, headers: &reqwest::header::HeaderMap) {
        let num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let mut rate = self.rate.lock().expect("rate lock");
        if let Some(limit) = num("ratelimit-limit") {
            rate.limit = u32::try_from(limit).ok();
        }
        if let Some(remaining) = num("ratelimit-remaining") {
            rate.remaining = u32::try_from(remaining).ok();
        }
        if let Some(reset) = num("ratelimit-reset") {
            rate.reset = Some(reset);
        }
    }

    /// Keep the API's clock from the `Date` header (RFC 9110 IMF-fixdate, one-second resolution).
    fn observe_date(&self, headers: &reqwest::header::HeaderMap) {
        let Some(date) = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
        else {
            return;
        };
        let api = date.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
        let local = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()) as i64;
        self.clock_offset.store(api - local, Ordering::Relaxed);
        self.clock_known.store(true, Ordering::Relaxed);
    }

    /// How long to wait between polls of something slow: `base`, stretched when the project's
    /// request budget runs low (every build of the project shares it).
    pub fn poll_interval(&self, base: Duration) -> Duration {
        let rate = self.rate_limit();
        if rate.remaining == Some(0) {
            // Spent: the next request is free in about a second (refill 1/s), not at the reset.
            return base.max(rate_limit_delay(&self.policy, 1, rand::random::<f64>()));
        }
        if rate.is_low() { base * 4 } else { base }
    }
}

/// May a failed request be sent again?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads, deletes, polls: repeating them is harmless.
    Always,
    /// Creations: only when the API certainly refused the request (`conflict`, 429); after a
    /// 5xx, `timeout` or transport failure the caller must first look for what may have been
    /// created (names are unique per project).
    IfRefused,
    /// As `Always`, but a 423 `locked` is returned at once: the caller waits for the
    /// server's running actions instead of guessing (a delete).
    NotLocked,
}

fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

fn status_code_name(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "_")
}

fn truncate(text: &str) -> String {
    let one: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 200 {
        format!("{}…", one.chars().take(200).collect::<String>())
    } else {
        one
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> ApiError {
        ApiError::Api {
            method: "GET".into(),
            path: "/x".into(),
            status,
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn transient_errors_are_the_ones_hetzner_says_to_retry() {
        assert!(api(429, "rate_limit_exceeded").is_transient());
        assert!(api(503, "unavailable").is_transient());
        assert!(api(409, "conflict").is_transient());
        assert!(api(423, "locked").is_transient());
        assert!(api(504, "timeout").is_transient());
        assert!(!api(412, "resource_unavailable").is_transient());
        assert!(!api(403, "resource_limit_exceeded").is_transient());
        assert!(!api(401, "unauthorized").is_transient());
        assert!(!api(409, "uniqueness_error").is_transient());
    }

    #[test]
    fn a_create_is_repeated_only_when_certainly_refused() {
        assert!(api(409, "conflict").is_refused_for_now());
        assert!(api(429, "rate_limit_exceeded").is_refused_for_now());
        for (status, code) in [
            (502, "bad_gateway"),
            (503, "unavailable"),
            (504, "timeout"),
            // Something between the launcher and the API answered a redirect.
            (307, "temporary_redirect"),
        ] {
            let e = api(status, code);
            assert!(!e.is_refused_for_now() && e.is_ambiguous(), "{code}");
        }
        let dropped = ApiError::Transport {
            method: "POST".into(),
            path: "/servers".into(),
            detail: "connection closed before message completed".into(),
        };
        assert!(dropped.is_ambiguous() && !dropped.is_refused_for_now());
        assert!(!api(409, "uniqueness_error").is_ambiguous());
    }

    #[test]
    fn the_apis_clock_comes_from_the_date_header() {
        let client = ApiClient::new(
            "http://127.0.0.1:9",
            Zeroizing::new("fake".into()),
            RetryPolicy::API,
            Arc::new(|_: &str| {}),
        )
        .unwrap();
        assert!(!client.knows_api_time());
        let mut headers = reqwest::header::HeaderMap::new();
        let behind = SystemTime::now() - Duration::from_secs(3600);
        headers.insert(
            reqwest::header::DATE,
            httpdate::fmt_http_date(behind).parse().unwrap(),
        );
        client.observe_date(&headers);
        assert!(client.knows_api_time());
        let gap = unix_now() - client.now();
        assert!((3599..=3601).contains(&gap), "{gap}");
        // An unreadable date changes nothing.
        headers.insert(reqwest::header::DATE, "yesterday".parse().unwrap());
        client.observe_date(&headers);
        assert!((3599..=3601).contains(&(unix_now() - client.now())));
    }

    #[test]
    fn errors_show_code_and_message_never_the_token() {
        let e = api(412, "resource_unavailable");
        assert_eq!(
            e.to_string(),
            "Hetzner API GET /x: resource_unavailable: m (HTTP 412)"
        );
    }
}
