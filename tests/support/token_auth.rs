//! A token service for a registry with scoped bearer tokens, the way zot, Harbor, GHCR and
//! Docker Hub authenticate: distribution's `auth.token` points clients at this service, which
//! checks their basic credentials and issues an RS256 JWT granting, per repository, only the
//! actions the user's patterns allow (the distribution token spec: `access` claims of
//! `{type, name, actions}`; <https://distribution.github.io/distribution/spec/auth/token/>,
//! `registry/auth/token` in distribution's source for what the registry verifies: issuer,
//! audience = service, expiry with 60 s leeway, a signing key chained to `rootcertbundle` by the
//! `x5c` header).
//!
//! A TEST DOUBLE, strict where the real ones are: wrong credentials are 401; a scope the user
//! may not have is not refused but left out of the token (which is what real token services do,
//! so the refusal surfaces at the registry); anonymous clients get a token with no access.
//! The key and certificate are made with `openssl` per service; nothing is kept.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;

/// What the registry calls its service and this service's issuer.
pub const SERVICE: &str = "bkl-test-registry";
pub const ISSUER: &str = "bkl-test-token-service";
/// distribution adds this to `exp` when it checks a token.
const REGISTRY_LEEWAY_S: u64 = 60;

/// A user: password and (repository pattern, actions) grants. `images/*` matches every
/// repository below `images/`; `*` matches all.
#[derive(Clone)]
pub struct User {
    pub password: String,
    pub grants: Vec<(String, Vec<String>)>,
}

/// (name, password, [(repository pattern, [actions])]).
pub type UserSpec<'a> = (&'a str, &'a str, &'a [(&'a str, &'a [&'a str])]);

struct Shared {
    users: BTreeMap<String, User>,
    key: jsonwebtoken::EncodingKey,
    cert_der_b64: String,
    /// Seconds the registry accepts a token for.
    lifetime_s: AtomicU64,
    issued: AtomicU64,
    /// (user, scope) of every token request, for tests.
    requests: Mutex<Vec<(String, String)>>,
}

pub struct TokenService {
    /// `http://127.0.0.1:PORT/token`
    pub realm: String,
    /// PEM of the certificate the registry trusts (`rootcertbundle`).
    pub cert_path: std::path::PathBuf,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TokenService {
    /// `users`: (name, password, [(pattern, [actions])]).
    pub fn start(users: &[UserSpec<'_>]) -> TokenService {
        let dir = tempfile::tempdir().expect("a directory for the token service's key");
        let key_path = dir.path().join("key.pem");
        let cert_path = dir.path().join("cert.pem");
        let out = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=bkl-test-token-service", "-keyout"])
            .arg(&key_path)
            .arg("-out")
            .arg(&cert_path)
            .output()
            .expect("run openssl (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key_pem = std::fs::read(&key_path).unwrap();
        let cert_pem = std::fs::read_to_string(&cert_path).unwrap();
        let cert_der_b64: String = cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let users = users
            .iter()
            .map(|(name, password, grants)| {
                (
                    (*name).to_owned(),
                    User {
                        password: (*password).to_owned(),
                        grants: grants
                            .iter()
                            .map(|(p, a)| {
                                ((*p).to_owned(), a.iter().map(|s| (*s).to_owned()).collect())
                            })
                            .collect(),
                    },
                )
            })
            .collect();
        let shared = Arc::new(Shared {
            users,
            key: jsonwebtoken::EncodingKey::from_rsa_pem(&key_pem).expect("the RSA key"),
            cert_der_b64,
            lifetime_s: AtomicU64::new(300),
            issued: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(shared.clone());
        let thread = std::thread::Builder::new()
            .name("token-service".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    tokio::select! {
                        _ = axum::serve(listener, app) => {}
                        _ = stop => {}
                    }
                });
            })
            .unwrap();
        TokenService {
            realm: format!("http://127.0.0.1:{port}/token"),
            cert_path,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// How long the registry accepts a token (it adds 60 s of leeway to `exp`, which the
    /// service takes off, so that short lifetimes are real).
    pub fn set_lifetime(&self, seconds: u64) {
        self.shared.lifetime_s.store(seconds, Ordering::SeqCst);
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> u64 {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// The `auth:` section of a distribution config that trusts this service.
    pub fn registry_auth_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm,
            self.cert_path.display()
        )
    }

    /// A token for `user` (no password check: for the tests' own registry calls).
    pub fn mint(&self, user: &str, scopes: &[String]) -> String {
        issue(&self.shared, Some(user), scopes)
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Sign a token granting `user` what it may have of `scopes` (`repository:NAME:ACTIONS`).
fn issue(shared: &Shared, user: Option<&str>, scopes: &[String]) -> String {
    let grants = user
        .and_then(|u| shared.users.get(u))
        .map(|u| u.grants.clone())
        .unwrap_or_default();
    let mut access = Vec::new();
    for scope in scopes {
        let mut parts = scope.splitn(2, ':');
        let (Some("repository"), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        let allowed: Vec<String> = actions
            .split(',')
            .filter(|a| {
                grants.iter().any(|(pattern, granted)| {
                    matches(pattern, name) && granted.iter().any(|g| g == a || g == "*")
                })
            })
            .map(str::to_owned)
            .collect();
        access.push(serde_json::json!({ "type": "repository", "name": name, "actions": allowed }));
    }
    let lifetime = shared.lifetime_s.load(Ordering::SeqCst);
    let issued_at = now();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": user.unwrap_or(""),
        "aud": SERVICE,
        "exp": (issued_at + lifetime).saturating_sub(REGISTRY_LEEWAY_S),
        "nbf": issued_at.saturating_sub(1),
        "iat": issued_at,
        "jti": format!("{:x}", rand::random::<u64>()),
        "access": access,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.x5c = Some(vec![shared.cert_der_b64.clone()]);
    shared.issued.fetch_add(1, Ordering::SeqCst);
    jsonwebtoken::encode(&header, &claims, &shared.key).expect("sign the token")
}

async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    let scopes: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let user = match basic {
        None => None,
        Some(pair) => {
            let (name, password) = pair.split_once(':').unwrap_or((&pair, ""));
            match shared.users.get(name) {
                Some(u) if u.password == password => Some(name.to_owned()),
                _ => {
                    return (
                        StatusCode::UNAUTHORIZED,
                        axum::Json(serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})),
                    )
                        .into_response();
                }
            }
        }
    };
    shared.requests.lock().unwrap().extend(
        scopes
            .iter()
            .map(|s| (user.clone().unwrap_or_default(), s.clone())),
    );
    let token = issue(&shared, user.as_deref(), &scopes);
    let lifetime = shared.lifetime_s.load(Ordering::SeqCst);
    axum::Json(serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": lifetime,
        "issued_at": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    }))
    .into_response()
}
