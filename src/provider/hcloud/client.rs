//! A thin client for the few Hetzner Cloud endpoints the launcher uses.
//!
//! Why not the `hcloud` crate's client: it discards response headers, and the launcher must read
//! `RateLimit-Remaining`/`RateLimit-Reset` on every response (all builds of a project share
//! 3600 requests an hour), and its closed enums fail on values the API adds. Responses are
//! parsed leniently into the small structs in `api.rs`.
//!
//! Every call goes through [`ApiClient::call`]: one retry policy for 429, 5xx, `conflict`,
//! `locked`, `timeout` and transport failures; errors carry the API's code and message and
//! never the token.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::provider::unix_now;
use crate::retry::RetryPolicy;

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

    /// Worth trying again: the request was refused for now, not for good.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Api { status, code, .. } => {
                *status == 429
                    || *status >= 500
                    || matches!(
                        code.as_str(),
                        "conflict" | "locked" | "timeout" | "unavailable" | "rate_limit_exceeded"
                    )
            }
            ApiError::Transport { .. } => true,
            ApiError::Decode { .. } => false,
        }
    }

    /// A transport failure leaves it unknown whether the server acted on the request.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, ApiError::Transport { .. })
    }
}

/// What the last response said about the project's request budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
    /// Unix seconds when the budget is full again.
    pub reset: Option<u64>,
}

impl RateLimit {
    /// Below a tenth of the budget: everyone polling should slow down.
    pub fn is_low(&self) -> bool {
        match (self.limit, self.remaining) {
            (Some(limit), Some(remaining)) => remaining.saturating_mul(10) < limit,
            _ => false,
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
    log: Arc<dyn Fn(&str) + Send + Sync>,
}

impl ApiClient {
    pub fn new(
        endpoint: &str,
        token: Zeroizing<String>,
        policy: RetryPolicy,
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Result<ApiClient, ApiError> {
        let http = reqwest::Client::builder()
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
            log,
        })
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
        loop {
            let result = self.send(method.clone(), path, body).await;
            let error = match result {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            let retryable = error.is_transient()
                && (retry == Retry::Always || !error.is_ambiguous())
                && self.policy.allows_another(attempt);
            if !retryable {
                return Err(error);
            }
            let mut delay = self.policy.delay_random(attempt);
            if error.status() == Some(429) {
                // Waiting for the reset beats hammering a spent budget, within the policy's cap.
                if let Some(reset) = self.rate_limit().reset {
                    let until = Duration::from_secs(reset.saturating_sub(unix_now()));
                    delay = delay.max(until.min(self.policy.max_delay));
                }
            }
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

    /// How long to wait between polls of something slow: `base`, stretched when the project's
    /// request budget runs low (every build of the project shares it).
    pub fn poll_interval(&self, base: Duration) -> Duration {
        let rate = self.rate_limit();
        if rate.remaining == Some(0) {
            let until = rate.reset.map_or(base, |r| {
                Duration::from_secs(r.saturating_sub(unix_now()).max(1))
            });
            return until.min(Duration::from_secs(60)).max(base);
        }
        if rate.is_low() { base * 4 } else { base }
    }
}

/// May a failed request be sent again?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads, deletes, polls: repeating them is harmless.
    Always,
    /// Creations: only when the API certainly refused the request (an HTTP error with a body);
    /// after a transport failure the caller must first look for what may have been created.
    IfRefused,
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
    }

    #[test]
    fn low_budget_is_a_tenth() {
        let r = RateLimit {
            limit: Some(3600),
            remaining: Some(359),
            reset: None,
        };
        assert!(r.is_low());
        let r = RateLimit {
            remaining: Some(360),
            ..r
        };
        assert!(!r.is_low());
        assert!(!RateLimit::default().is_low());
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
