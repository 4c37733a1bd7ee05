//! Before any server exists: may the build's own credentials do what the build will do?
//!
//! A registry with scoped bearer tokens (zot, Harbor, GHCR, Docker Hub, distribution with
//! `auth.token`) grants per repository: a token scoped to `images/*` and `cache/*` may push the
//! image and the cache but not read a history kept elsewhere. Finding that out at the push costs
//! a whole build on a paid server, so [`check`] asks first, one repository at a time:
//!
//! - `GET /v2/` tells the scheme. With `Bearer realm=…,service=…`, the token service is asked for
//!   exactly the scope the build needs (`repository:NAME:pull,push`), with the credentials the
//!   build has. It answers 401 when it refuses the credentials; otherwise it issues a token with
//!   the actions it grants (the distribution token spec: the `access` claim of the JWT), which is
//!   compared with what is needed. A token that is not a readable JWT is tried instead.
//! - Otherwise (no auth, HTTP basic), or to try an opaque token: pushing is probed by starting a
//!   blob upload (`POST /v2/NAME/blobs/uploads/`, 202) and cancelling it (`DELETE` on the upload
//!   URL); reading by listing tags (200, or 404 for a repository that does not exist yet).
//!
//! Every check gets a token of its own and drops it, so nothing here can expire during a build.
//! The realm is followed only to the registry's own host or a host of the policy's
//! `token_realms`, and the token answer is read within a cap (see [`super::bounded`]); a realm
//! elsewhere is [`AccessError::RealmRefused`], a refusal (exit 2), before any token request.

use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use reqwest::header::LOCATION;
use zeroize::Zeroizing;

use super::Credentials;
use super::bounded::{Challenge, TokenError, challenge, fetch_token};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Pull => "read",
            Action::Push => "push to",
        }
    }
}

/// One repository the build will use, what for, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    /// `image`, `cache` or `history`: named in messages.
    pub what: &'static str,
    pub repository: String,
    pub actions: Vec<Action>,
}

/// What a build of `image` needs: pull and push on the image repository, on its cache
/// repository when it has one, and on its history repository when history is kept in the
/// registry (pull only when the build records no sample).
pub fn build_needs(
    image: &str,
    cache: Option<String>,
    history: Option<(String, bool)>,
) -> Vec<Need> {
    let both = vec![Action::Pull, Action::Push];
    let mut needs = vec![Need {
        what: "image",
        repository: image.to_owned(),
        actions: both.clone(),
    }];
    if let Some(cache) = cache {
        needs.push(Need {
            what: "cache",
            repository: cache,
            actions: both.clone(),
        });
    }
    if let Some((repository, records)) = history {
        needs.push(Need {
            what: "history",
            repository,
            actions: if records { both } else { vec![Action::Pull] },
        });
    }
    needs
}

/// What the extra caches in the build's registry need (those elsewhere are read anonymously and
/// not asked about): pull and push where the build exports (BuildKit's exporter asks for both),
/// pull where it only imports; one need per repository, none where a need of `covered` has the
/// same actions already.
pub fn cache_needs(exports: &[String], imports: &[String], covered: &[Need]) -> Vec<Need> {
    let mut needs: Vec<Need> = Vec::new();
    let both = [Action::Pull, Action::Push];
    let wanted = exports
        .iter()
        .map(|r| (r, &both[..]))
        .chain(imports.iter().map(|r| (r, &both[..1])));
    for (repository, actions) in wanted {
        if covered
            .iter()
            .any(|n| &n.repository == repository && actions.iter().all(|a| n.actions.contains(a)))
        {
            continue;
        }
        match needs.iter_mut().find(|n| &n.repository == repository) {
            Some(need) => {
                for action in actions {
                    if !need.actions.contains(action) {
                        need.actions.push(*action);
                    }
                }
            }
            None => needs.push(Need {
                what: "cache",
                repository: repository.clone(),
                actions: actions.to_vec(),
            }),
        }
    }
    needs
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccessError {
    #[error(
        "registry {registry}: the token service {realm} refused the credentials of user \"{user}\" (401 Unauthorized)"
    )]
    CredentialsRefused {
        registry: String,
        realm: String,
        user: String,
    },
    #[error(
        "registry {registry}: user \"{user}\" may not {} the {what} repository {repository} ({why})",
        action.verb()
    )]
    Denied {
        registry: String,
        user: String,
        what: &'static str,
        repository: String,
        action: Action,
        why: String,
    },
    #[error("registry {registry}: cannot check permissions: {detail}")]
    Unreachable { registry: String, detail: String },
    /// The registry's token realm is not one to follow (see [`super::bounded::check_realm`]).
    #[error("{0}")]
    RealmRefused(String),
}

impl AccessError {
    /// Unreachable is infrastructure (exit 4); a refusal is a setting to fix (exit 2).
    pub fn is_refusal(&self) -> bool {
        match self {
            // A plain-HTTP registry without insecure_registry is a setting to fix.
            AccessError::Unreachable { detail, .. } => detail.contains(super::PLAIN_HTTP_HINT),
            _ => true,
        }
    }
}

/// Check every need; one result per need, in order.
pub async fn check(
    registry: &str,
    insecure: bool,
    credentials: Option<&Credentials>,
    needs: &[Need],
) -> Vec<Result<(), AccessError>> {
    let unreachable = |detail: String| AccessError::Unreachable {
        registry: registry.to_owned(),
        detail,
    };
    let http = match super::bounded::client_builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            return needs
                .iter()
                .map(|_| Err(unreachable(e.to_string())))
                .collect();
        }
    };
    let base = format!("{}://{registry}", if insecure { "http" } else { "https" });
    let scheme = match challenge(&http, &base).await {
        Ok(scheme) => scheme,
        Err(detail) => {
            return needs
                .iter()
                .map(|_| Err(unreachable(detail.clone())))
                .collect();
        }
    };
    let ctx = Ctx {
        http,
        base,
        registry: registry.to_owned(),
        credentials,
    };
    let mut results = Vec::new();
    for need in needs {
        results.push(ctx.check_one(&scheme, need).await);
    }
    results
}

struct Ctx<'a> {
    http: reqwest::Client,
    base: String,
    registry: String,
    credentials: Option<&'a Credentials>,
}

enum Auth {
    None,
    Basic,
    Bearer(String),
}

impl Ctx<'_> {
    fn user(&self) -> String {
        self.credentials
            .map_or_else(|| "anonymous".to_owned(), |c| c.username.clone())
    }

    fn denied(&self, need: &Need, action: Action, why: String) -> AccessError {
        AccessError::Denied {
            registry: self.registry.clone(),
            user: self.user(),
            what: need.what,
            repository: need.repository.clone(),
            action,
            why,
        }
    }

    fn unreachable(&self, detail: String) -> AccessError {
        AccessError::Unreachable {
            registry: self.registry.clone(),
            detail,
        }
    }

    async fn check_one(&self, scheme: &Challenge, need: &Need) -> Result<(), AccessError> {
        match scheme {
            Challenge::Open => self.probe(need, &Auth::None).await,
            Challenge::Basic => self.probe(need, &Auth::Basic).await,
            Challenge::Bearer { realm, service } => {
                let token = self.token(realm, service.as_deref(), need).await?;
                match granted(&token, &need.repository) {
                    Some(granted) => {
                        let has = |a: &Action| granted.iter().any(|g| g == a.as_str() || g == "*");
                        // Name the push first: it is what the build is for.
                        let missing = [Action::Push, Action::Pull]
                            .into_iter()
                            .find(|a| need.actions.contains(a) && !has(a));
                        match missing {
                            None => Ok(()),
                            Some(missing) => Err(self.denied(
                                need,
                                missing,
                                if granted.is_empty() {
                                    "the token service granted no access to it".to_owned()
                                } else {
                                    format!("the token service granted {} only", granted.join(","))
                                },
                            )),
                        }
                    }
                    None => self.probe(need, &Auth::Bearer(token.to_string())).await,
                }
            }
        }
    }

    /// A token for exactly this need's scope, from a realm the policy allows, read within
    /// its cap.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        need: &Need,
    ) -> Result<Zeroizing<String>, AccessError> {
        let actions: Vec<&str> = need.actions.iter().map(|a| a.as_str()).collect();
        let scope = format!("repository:{}:{}", need.repository, actions.join(","));
        fetch_token(
            &self.http,
            &self.registry,
            realm,
            service,
            &scope,
            self.credentials,
        )
        .await
        .map_err(|e| match e {
            TokenError::RealmRefused(line) => AccessError::RealmRefused(line),
            TokenError::CredentialsRefused { .. } => AccessError::CredentialsRefused {
                registry: self.registry.clone(),
                realm: realm.to_owned(),
                user: self.user(),
            },
            TokenError::Failed(detail) => self.unreachable(detail),
        })
    }

    fn with_auth(&self, request: reqwest::RequestBuilder, auth: &Auth) -> reqwest::RequestBuilder {
        match (auth, self.credentials) {
            (Auth::Basic, Some(c)) => request.basic_auth(&c.username, Some(c.password.as_str())),
            (Auth::Bearer(token), _) => request.bearer_auth(token),
            _ => request,
        }
    }

    /// Try what the need asks for: start and cancel an upload to push, list tags to read.
    async fn probe(&self, need: &Need, auth: &Auth) -> Result<(), AccessError> {
        let refused = |status: StatusCode, action: Action| -> AccessError {
            match (status, auth) {
                (StatusCode::UNAUTHORIZED, Auth::Basic) if self.credentials.is_some() => {
                    AccessError::CredentialsRefused {
                        registry: self.registry.clone(),
                        realm: format!("{}/v2/", self.base),
                        user: self.user(),
                    }
                }
                _ => self.denied(need, action, format!("the registry answered {status}")),
            }
        };
        if need.actions.contains(&Action::Push) {
            let url = format!("{}/v2/{}/blobs/uploads/", self.base, need.repository);
            let response = self
                .with_auth(self.http.post(&url), auth)
                .header(reqwest::header::CONTENT_LENGTH, "0")
                .send()
                .await
                .map_err(|e| self.unreachable(super::one_line_error(&e)))?;
            match response.status() {
                StatusCode::ACCEPTED => {
                    // Cancel the upload we started; a registry that keeps it expires it. Only
                    // on the registry's own origin: the credentials go with the request, and
                    // an upload URL elsewhere (another host the registry names) is not theirs.
                    if let Some(location) = response
                        .headers()
                        .get(LOCATION)
                        .and_then(|v| v.to_str().ok())
                    {
                        let location = if location.starts_with('/') {
                            format!("{}{location}", self.base)
                        } else {
                            location.to_owned()
                        };
                        if location.starts_with(&format!("{}/", self.base)) {
                            let _ = self
                                .with_auth(self.http.delete(location), auth)
                                .send()
                                .await;
                        }
                    }
                }
                s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                    return Err(refused(s, Action::Push));
                }
                s => {
                    return Err(self.unreachable(format!(
                        "starting an upload to {} answered {s}",
                        need.repository
                    )));
                }
            }
        }
        if need.actions.contains(&Action::Pull) {
            let url = format!("{}/v2/{}/tags/list", self.base, need.repository);
            let response = self
                .with_auth(self.http.get(&url), auth)
                .send()
                .await
                .map_err(|e| self.unreachable(super::one_line_error(&e)))?;
            match response.status() {
                s if s.is_success() || s == StatusCode::NOT_FOUND => {}
                s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                    return Err(refused(s, Action::Pull));
                }
                s => {
                    return Err(self.unreachable(format!(
                        "listing the tags of {} answered {s}",
                        need.repository
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The actions a distribution-spec JWT grants on `repository`; `None` when the token is not a
/// JWT with an `access` claim (then it has to be tried instead).
fn granted(token: &str, repository: &str) -> Option<Vec<String>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let access = claims.get("access")?.as_array()?;
    Some(
        access
            .iter()
            .filter(|a| a["type"] == "repository" && a["name"] == repository)
            .flat_map(|a| a["actions"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_caches_need_push_where_exported_and_pull_where_read() {
        let covered = build_needs("org/app", Some("cache/org/app".into()), None);
        let needs = cache_needs(
            &["cache/x".into(), "org/app".into()],
            &["cache/y".into(), "cache/x".into(), "cache/org/app".into()],
            &covered,
        );
        let got: Vec<(&str, Vec<Action>)> = needs
            .iter()
            .map(|n| (n.repository.as_str(), n.actions.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("cache/x", vec![Action::Pull, Action::Push]),
                ("cache/y", vec![Action::Pull]),
            ]
        );
        assert!(needs.iter().all(|n| n.what == "cache"));
    }

    #[test]
    fn granted_actions_come_from_the_access_claim() {
        let claims = serde_json::json!({
            "access": [
                { "type": "repository", "name": "images/app", "actions": ["pull", "push"] },
                { "type": "repository", "name": "other", "actions": ["*"] },
            ]
        });
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims).unwrap());
        let token = format!("e30.{payload}.sig");
        assert_eq!(granted(&token, "images/app").unwrap(), ["pull", "push"]);
        assert_eq!(granted(&token, "cache/app").unwrap(), Vec::<String>::new());
        assert_eq!(granted("opaque-token", "images/app"), None);
    }
}
