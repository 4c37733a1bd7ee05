//! Every key a registry keeps, for `history list`: the repositories beneath the namespace, from
//! the registry's repository list (`GET /v2/_catalog`, the distribution spec's "Listing
//! Repositories", paged with `n` and `Link`; a token registry wants the scope
//! `registry:catalog:*`), each read newest first like one key is. A sample counts for the
//! repository it sits in only when its own key leads there: one a writer put elsewhere (a
//! forged or misplaced one) is skipped with a warning.

use super::*;
use crate::registry::bounded::{MAX_TAG_LIST_BYTES, size};

/// Repositories of the namespace read at most.
pub const MAX_KEYS: usize = 1000;

impl RegistryStore {
    /// Up to `per_key` of the newest samples of every key kept here (every outcome, oldest
    /// first per key), and what was skipped.
    pub fn every_key(&self, per_key: usize) -> Result<Recent, HistoryError> {
        let place = || format!("{}/{}", self.registry, self.namespace);
        let fail = |message: String| HistoryError::Io {
            path: PathBuf::from(format!("registry:{}", place())),
            action: "list",
            source: std::io::Error::other(self.redact(message)),
        };
        on_own_runtime(|| tokio::time::timeout(OPERATION_TIMEOUT, self.every_key_async(per_key)))
            .map_err(|e| fail(format!("cannot start a runtime: {e}")))?
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {} s",
                    OPERATION_TIMEOUT.as_secs()
                ))
            })
            .map_err(fail)
    }

    async fn every_key_async(&self, per_key: usize) -> Result<Recent, String> {
        let mut recent = Recent::default();
        let repositories = self.catalog().await?;
        if repositories.len() > MAX_KEYS {
            recent.warnings.push(format!(
                "history registry:{}/{}: {} keys; the first {MAX_KEYS} are shown",
                self.registry,
                self.namespace,
                repositories.len()
            ));
        }
        for repository in repositories.into_iter().take(MAX_KEYS) {
            let session = self.session(&repository, "pull").await?;
            let Some(tags) = session.list_tags().await.map_err(|e| session.explain(&e))? else {
                continue;
            };
            let mut tags: Vec<String> = tags.into_iter().filter(|t| is_sample_tag(t)).collect();
            tags.sort_unstable_by(|a, b| b.cmp(a)); // newest first
            tags.dedup();
            tags.truncate(per_key);
            let fetched = in_order(tags, IN_FLIGHT, |tag| {
                let session = session.clone();
                async move {
                    let body = session.fetch(&tag).await;
                    (tag, body)
                }
            })
            .await;
            let mut samples = Vec::new();
            for (tag, body) in fetched {
                let place = self.place(&repository);
                match body.map(|b| parse_sample(&b)) {
                    Ok(Ok(Some(s))) if self.repository_of(&s) == repository => samples.push(s),
                    Ok(Ok(Some(_))) => recent.warnings.push(format!(
                        "history {place}:{tag}: skipped, its key belongs in another repository"
                    )),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => recent.warnings.push(self.redact(format!(
                        "history {place}:{tag}: skipped, not a valid sample: {e}"
                    ))),
                    Err(e) if e.not_found() => {}
                    Err(e) => recent.warnings.push(self.redact(format!(
                        "history {place}:{tag}: skipped, cannot read it: {}",
                        session.explain(&e)
                    ))),
                }
            }
            samples.reverse(); // oldest first
            recent.samples.extend(samples);
        }
        Ok(recent)
    }

    /// The repositories beneath the namespace, from `GET /v2/_catalog` (paged), within
    /// [`MAX_TAG_LIST_BYTES`] over all pages.
    async fn catalog(&self) -> Result<Vec<String>, String> {
        #[derive(serde::Deserialize)]
        struct Catalog {
            #[serde(default)]
            repositories: Option<Vec<String>>,
        }
        let session = self.session_for("", "registry:catalog:*").await?;
        let prefix = format!("{}/", self.namespace);
        let mut url = format!("{}/v2/_catalog?n=1000", session.base);
        let mut found = Vec::new();
        let mut read = 0;
        for _ in 0..MAX_PAGES {
            let answer = session
                .succeed(session.request(Method::GET, &url))
                .await
                .map_err(|e| match e.status {
                    Some(401 | 403) => format!(
                        "the registry does not let user \"{}\" list its repositories (GET /v2/_catalog, HTTP {}); history list needs that, history show reads one key without it",
                        self.credentials.as_ref().map_or("anonymous", |c| c.username.as_str()),
                        e.status.unwrap_or_default()
                    ),
                    _ => session.explain(&e),
                })?;
            read += answer.body.len();
            if read > MAX_TAG_LIST_BYTES {
                return Err(format!(
                    "the registry's repository list is larger than {} (the cap); the rest was not read",
                    size(MAX_TAG_LIST_BYTES)
                ));
            }
            let page: Catalog = serde_json::from_slice(&answer.body)
                .map_err(|e| format!("the repository list is not valid JSON: {e}"))?;
            found.extend(
                page.repositories
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| r.starts_with(&prefix)),
            );
            match answer
                .headers
                .get(LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| next_link(&session.base, v))
            {
                Some(next) => url = next,
                None => break,
            }
        }
        found.sort();
        found.dedup();
        Ok(found)
    }
}
