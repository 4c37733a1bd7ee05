//! Talking to registries a pipeline names, which may be an attacker's: every answer is read
//! within a cap, and a token realm is followed only where the operator allows.
//!
//! - Bodies: [`read_capped`] reads a response chunk by chunk and stops past its cap (a
//!   `Content-Length` above it is refused before reading), so an endless tag list or token
//!   answer costs at most the cap, never the agent's memory.
//! - Token realms: a registry answering 401 names in `WWW-Authenticate: Bearer realm=…` the URL
//!   the client is to fetch a token from, with the build's credentials, and then sends the token
//!   back to the registry. A realm on an internal URL would make the agent fetch it and hand the
//!   answer to the registry. [`check_realm`] lets a realm through only on the registry's own
//!   host or on a host the operator policy lists in `token_realms`; every token request of the
//!   launcher goes through [`fetch_token`], which checks first.
//! - [`authenticate`]: the `/v2/` handshake (challenge, then token), done here rather than by
//!   oci-client, whose handshake follows any realm and reads the token answer whole.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::WWW_AUTHENTICATE;
use zeroize::Zeroizing;

use super::Credentials;

/// A token service's answer: a JWT is a few KiB.
pub const MAX_TOKEN_BYTES: usize = 1 << 20;
/// A manifest, an image config, an error answer, one page of a tag list.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// A whole tag list, over all its pages.
pub const MAX_TAG_LIST_BYTES: usize = 16 << 20;

/// `1 MiB`, `512 KiB`: a cap for messages.
pub fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BodyError {
    #[error("{what} is larger than {} (the cap); the rest was not read", size(*cap))]
    TooLarge { what: String, cap: usize },
    #[error("{what}: {detail}")]
    Read { what: String, detail: String },
}

/// The body of `response`, at most `cap` bytes; `what` names it in errors ("the token answer
/// of …").
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
    what: &str,
) -> Result<Vec<u8>, BodyError> {
    let too_large = || BodyError::TooLarge {
        what: what.to_owned(),
        cap,
    };
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| BodyError::Read {
        what: what.to_owned(),
        detail: super::one_line_error(&e),
    })? {
        if body.len() + chunk.len() > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The hosts the operator policy lets token realms point at (`token_realms`). A policy that
/// cannot be read allows none: the command has failed on it before any registry is asked.
pub fn allowed_realms() -> Vec<String> {
    crate::policy::Policy::current()
        .map(|p| p.token_realms.clone())
        .unwrap_or_default()
}

/// The host of `registry` (`HOST[:PORT]`, `[v6]:PORT`), lowercase.
fn registry_host(registry: &str) -> Option<String> {
    let url = url::Url::parse(&format!("http://{registry}/")).ok()?;
    url.host_str().map(str::to_ascii_lowercase)
}

/// May a token be asked of `realm` for `registry`? Only an http(s) URL without user
/// information, on the registry's own host (any port) or on a host of `allowed`. The refusal
/// is one line naming the registry, the realm's host and the rule.
pub fn check_realm(registry: &str, realm: &str, allowed: &[String]) -> Result<(), String> {
    let refuse = |host: &str, why: &str| {
        format!(
            "registry {registry}: its token realm {realm:?} {why}; no token was requested (a token \
             realm is followed only to the registry's own host {:?} or to a host the operator \
             policy lists in token_realms{})",
            registry_host(registry).unwrap_or_default(),
            if host.is_empty() {
                String::new()
            } else {
                format!(", e.g. token_realms = [{host:?}] if it is the registry's token service")
            }
        )
    };
    let url = url::Url::parse(realm).map_err(|_| refuse("", "is not a URL"))?;
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    if !matches!(url.scheme(), "http" | "https") || host.is_empty() {
        return Err(refuse("", "is not an http(s) URL with a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("", "carries user information"));
    }
    let own = registry_host(registry).is_some_and(|h| h == host);
    if own || allowed.iter().any(|a| a.eq_ignore_ascii_case(&host)) {
        Ok(())
    } else {
        Err(refuse(&host, &format!("is on the host {host:?}")))
    }
}

/// What `GET /v2/` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Challenge {
    Open,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// `GET BASE/v2/` and the scheme it asks for. Its body is never read.
pub async fn challenge(http: &reqwest::Client, base: &str) -> Result<Challenge, String> {
    let response = http
        .get(format!("{base}/v2/"))
        .send()
        .await
        .map_err(|e| super::one_line_error(&e))?;
    match response.status() {
        s if s.is_success() => Ok(Challenge::Open),
        StatusCode::UNAUTHORIZED => {
            let header = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            Ok(match parse_bearer(header) {
                Some((realm, service)) => Challenge::Bearer { realm, service },
                None => Challenge::Basic,
            })
        }
        s => Err(format!("GET /v2/ answered {s}")),
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    /// The realm is not one to follow ([`check_realm`]); nothing was sent to it.
    #[error("{0}")]
    RealmRefused(String),
    /// The token service answered 401 or 403: it refuses the credentials.
    #[error("the token service {realm} refused the credentials (HTTP {status})")]
    CredentialsRefused { realm: String, status: u16 },
    #[error("{0}")]
    Failed(String),
}

/// A token for `scope` (`repository:NAME:pull,push`) from `realm`, with the credentials, once
/// [`check_realm`] allows the realm for `registry`.
pub async fn fetch_token(
    http: &reqwest::Client,
    registry: &str,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    credentials: Option<&Credentials>,
) -> Result<Zeroizing<String>, TokenError> {
    check_realm(registry, realm, &allowed_realms()).map_err(TokenError::RealmRefused)?;
    let mut query = vec![("scope", scope)];
    if let Some(service) = service {
        query.push(("service", service));
    }
    let mut request = http.get(realm).query(&query);
    if let Some(c) = credentials {
        request = request
            .basic_auth(&c.username, Some(c.password.as_str()))
            .query(&[("account", c.username.as_str())]);
    }
    let response = request.send().await.map_err(|e| {
        let why = format!("token service {realm}: {}", super::one_line_error(&e));
        if e.is_redirect() {
            TokenError::RealmRefused(format!("registry {registry}: {why}; no token was sent"))
        } else {
            TokenError::Failed(why)
        }
    })?;
    match response.status() {
        s if s.is_success() => {}
        s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
            return Err(TokenError::CredentialsRefused {
                realm: realm.to_owned(),
                status: s.as_u16(),
            });
        }
        s => {
            return Err(TokenError::Failed(format!(
                "token service {realm} answered {s}"
            )));
        }
    }
    let what = format!("the answer of the token service {realm} for registry {registry}");
    let body = Zeroizing::new(
        read_capped(response, MAX_TOKEN_BYTES, &what)
            .await
            .map_err(|e| TokenError::Failed(e.to_string()))?,
    );
    let body: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| TokenError::Failed(format!("token service {realm}: {e}")))?;
    body["token"]
        .as_str()
        .or_else(|| body["access_token"].as_str())
        .map(|t| Zeroizing::new(t.to_owned()))
        .ok_or_else(|| TokenError::Failed(format!("token service {realm} sent no token")))
}

/// How requests to a registry authenticate, from [`authenticate`].
#[derive(Clone)]
pub enum Auth {
    Anonymous,
    Basic(String, Zeroizing<String>),
    Bearer(Zeroizing<String>),
}

impl Auth {
    /// `request` with these credentials.
    pub fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::Anonymous => request,
            Auth::Basic(user, password) => request.basic_auth(user, Some(password.as_str())),
            Auth::Bearer(token) => request.bearer_auth(token.as_str()),
        }
    }
}

/// The `/v2/` handshake for `actions` (`pull`, `pull,push`) on `repository` of `registry`,
/// served at `base` (`http[s]://HOST`): no credentials for an open registry, basic for basic,
/// a token (realm checked) for bearer.
pub async fn authenticate(
    http: &reqwest::Client,
    base: &str,
    registry: &str,
    repository: &str,
    actions: &str,
    credentials: Option<&Credentials>,
) -> Result<Auth, TokenError> {
    let scope = format!("repository:{repository}:{actions}");
    authenticate_scope(http, base, registry, &scope, credentials).await
}

/// [`authenticate`] for any token `scope` (`registry:catalog:*` for the repository list).
pub async fn authenticate_scope(
    http: &reqwest::Client,
    base: &str,
    registry: &str,
    scope: &str,
    credentials: Option<&Credentials>,
) -> Result<Auth, TokenError> {
    let basic = || match credentials {
        Some(c) => Auth::Basic(c.username.clone(), c.password.clone()),
        None => Auth::Anonymous,
    };
    match challenge(http, base).await.map_err(TokenError::Failed)? {
        Challenge::Open => Ok(Auth::Anonymous),
        Challenge::Basic => Ok(basic()),
        Challenge::Bearer { realm, service } => fetch_token(
            http,
            registry,
            &realm,
            service.as_deref(),
            scope,
            credentials,
        )
        .await
        .map(Auth::Bearer),
    }
}

/// A client for a registry's requests: bounded waits, the launcher's proxies (crate::proxy),
/// [`redirects`].
pub fn http_client(connect: Duration, read: Duration) -> Result<reqwest::Client, String> {
    client_builder()
        .connect_timeout(connect)
        .read_timeout(read)
        .build()
        .map_err(|e| super::one_line_error(&e))
}

/// A reqwest builder for any request to a registry or its token service: the launcher's
/// proxies and [`redirects`].
pub fn client_builder() -> reqwest::ClientBuilder {
    crate::proxy::client(reqwest::Client::builder()).redirect(redirects())
}

/// Which redirects a registry's answers may lead to. A registry (or a pull request's registry
/// playing one) could otherwise send the `/v2/` handshake or a token request on to an internal
/// address one hop after [`check_realm`] allowed its own host, and have the answer sent back to
/// it as a token.
///
/// Every hop is judged against the request the chain started with (never the hop before it,
/// which the registry chose): see [`may_follow`]. At most 5 hops.
pub fn redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > 5 {
            return attempt.error("more than 5 redirects");
        }
        let Some(first) = attempt.previous().first() else {
            return attempt.follow();
        };
        match may_follow(first, attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(why) => attempt.error(why),
        }
    })
}

/// Whether a chain that started at `first` may go on to `to`:
///
/// - a blob download (`first` is `/v2/<name>/blobs/sha256:<64 hex>`, exactly) may go to
///   storage on another host (distribution with S3 and Docker Hub do this), over https only;
///   reqwest drops the credentials on the way;
/// - anything else (the handshake, a token, a manifest, a tag list, the catalogue) stays on
///   `first`'s host and port, and never leaves https for http.
pub fn may_follow(first: &reqwest::Url, to: &reqwest::Url) -> Result<(), String> {
    let same_origin = first.host_str() == to.host_str()
        && first.port_or_known_default() == to.port_or_known_default()
        && (first.scheme() != "https" || to.scheme() == "https");
    if same_origin || (is_blob_path(first.path()) && to.scheme() == "https") {
        return Ok(());
    }
    let port = to.port().map(|p| format!(":{p}")).unwrap_or_default();
    Err(format!(
        "{} redirected to the host {:?}, which the launcher does not follow (a registry's \
         redirects are followed on its own host and port, and for blob downloads to https storage)",
        crate::text::escape_controls(&format!(
            "{}{}",
            first.host_str().unwrap_or_default(),
            first.path()
        )),
        crate::text::escape_controls(&format!("{}{port}", to.host_str().unwrap_or_default())),
    ))
}

/// `/v2/<name>/blobs/sha256:<64 lowercase hex>`: a blob by its digest, nothing else.
fn is_blob_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return false;
    };
    let Some((name, digest)) = rest.rsplit_once("/blobs/sha256:") else {
        return false;
    };
    crate::config::repository_path_ok(name)
        && digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `Bearer realm="…",service="…",scope="…"` → (realm, service).
pub fn parse_bearer(challenge: &str) -> Option<(String, Option<String>)> {
    let rest = challenge.trim();
    let rest = rest
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("bearer "))
        .map(|_| &rest[7..])?;
    let mut realm = None;
    let mut service = None;
    for part in split_params(rest) {
        let Some((key, value)) = part.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_owned();
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            _ => {}
        }
    }
    realm.map(|r| (r, service))
}

/// Split `a="x,y",b=z` on the commas outside quotes.
fn split_params(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_parsed_with_commas_inside_quotes() {
        assert_eq!(
            parse_bearer(
                r#"Bearer realm="https://auth.example/token",service="zot",scope="repository:a:pull,push""#
            ),
            Some(("https://auth.example/token".into(), Some("zot".into())))
        );
        assert_eq!(
            parse_bearer(r#"bearer realm="https://r/t""#),
            Some(("https://r/t".into(), None))
        );
        assert_eq!(parse_bearer(r#"Basic realm="x""#), None);
    }

    #[test]
    fn a_realm_is_followed_only_to_the_registry_host_or_a_policy_host() {
        let none: &[String] = &[];
        assert!(check_realm("zot.example:5000", "https://zot.example/token", none).is_ok());
        assert!(check_realm("ZOT.example", "https://zot.EXAMPLE:8443/t", none).is_ok());
        assert!(check_realm("127.0.0.1:5000", "http://127.0.0.1:5001/token", none).is_ok());
        assert!(check_realm("[::1]:5000", "http://[::1]:9/token", none).is_ok());
        let policy = ["auth.docker.io".to_owned()];
        assert!(check_realm("docker.io", "https://auth.docker.io/token", &policy).is_ok());

        let err = check_realm("docker.io", "https://auth.docker.io/token", none).unwrap_err();
        assert_eq!(
            err,
            "registry docker.io: its token realm \"https://auth.docker.io/token\" is on the host \
             \"auth.docker.io\"; no token was requested (a token realm is followed only to the \
             registry's own host \"docker.io\" or to a host the operator policy lists in \
             token_realms, e.g. token_realms = [\"auth.docker.io\"] if it is the registry's \
             token service)"
        );
        for (realm, why) in [
            ("http://169.254.169.254/latest/meta-data", "is on the host"),
            ("http://127.0.0.1:8080/internal", "is on the host"),
            ("https://zot.example.evil/t", "is on the host"),
            ("file:///etc/passwd", "http(s) URL"),
            ("https://user:pw@zot.example/t", "user information"),
            ("/token", "not a URL"),
            ("https://zot.example\u{1b}[2J/t", "not a URL"),
        ] {
            let err = check_realm("zot.example", realm, &policy).unwrap_err();
            assert!(err.contains(why), "{realm}: {err}");
            assert!(!err.contains('\u{1b}'), "{err}");
        }
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(MAX_TOKEN_BYTES), "1 MiB");
        assert_eq!(size(MAX_TAG_LIST_BYTES), "16 MiB");
        assert_eq!(size(1536), "2 KiB");
    }

    #[test]
    fn a_redirect_is_judged_against_where_the_chain_started() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let digest = "a".repeat(64);
        let blob = url(&format!(
            "https://reg.example/v2/org/app/blobs/sha256:{digest}"
        ));
        // A blob may go to https storage elsewhere, never to http.
        assert!(may_follow(&blob, &url("https://s3.example/x?sig=1")).is_ok());
        assert!(may_follow(&blob, &url("http://169.254.169.254/token")).is_err());
        // Anything else stays on its host and port, and never leaves https.
        let handshake = url("https://reg.example/v2/");
        assert!(may_follow(&handshake, &url("https://reg.example/v2/other")).is_ok());
        let err = may_follow(&handshake, &url("https://10.0.0.1:8443/token")).unwrap_err();
        assert!(
            err.starts_with("reg.example/v2/ redirected to the host \"10.0.0.1:8443\""),
            "{err}"
        );
        assert!(may_follow(&handshake, &url("https://reg.example:444/v2/")).is_err());
        assert!(may_follow(&handshake, &url("http://reg.example/v2/")).is_err());
        // A hop the registry chose on its own host (a path that merely looks like a blob) does
        // not make the chain a blob download: the first request decides.
        assert!(may_follow(&handshake, &url("https://s3.example/x")).is_err());
        // What counts as a blob path: exactly /v2/<name>/blobs/sha256:<64 hex>.
        for (path, blob) in [
            (format!("/v2/org/app/blobs/sha256:{digest}"), true),
            (format!("/v2/a/blobs/sha256:{digest}"), true),
            (format!("/v2//blobs/sha256:{digest}"), false),
            (format!("/v2/org/app/blobs/sha256:{digest}0"), false),
            (
                format!("/v2/org/app/blobs/sha256:{}", "A".repeat(64)),
                false,
            ),
            (format!("/token/blobs/sha256:{digest}"), false),
            (format!("/v2/Org/blobs/sha256:{digest}"), false),
            (format!("/v2/-org/blobs/sha256:{digest}"), false),
            ("/v2/org/app/blobs/uploads/".to_owned(), false),
            ("/v2/org/app/manifests/latest".to_owned(), false),
        ] {
            assert_eq!(is_blob_path(&path), blob, "{path}");
        }
    }
}
