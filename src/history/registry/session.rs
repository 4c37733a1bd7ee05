//! The registry conversation behind the history store: authentication, then plain reqwest
//! calls for tags, manifests and deletes, with the registry's failures classified so the store
//! can retry, repair or warn. Every answer is read within a cap ([`MAX_BODY_BYTES`], a tag
//! list within [`MAX_TAG_LIST_BYTES`] over all its pages): the registry may be one a pipeline
//! names.

use super::*;
use crate::registry::bounded::{Auth, MAX_BODY_BYTES, MAX_TAG_LIST_BYTES, read_capped, size};

/// One repository on one registry, authenticated, for the length of one store call.
///
/// The authentication handshake (`/v2/` challenge, token from a realm the policy allows) is
/// `registry::bounded::authenticate`; the requests are made here, because oci-client 0.15 has
/// no delete, hides `Link` pagination and error details, and reads every answer whole.
#[derive(Clone)]
pub(super) struct Session {
    pub(super) http: reqwest::Client,
    pub(super) auth: Auth,
    pub(super) user: Option<String>,
    /// `http[s]://HOST`
    pub(super) base: String,
    pub(super) repository: String,
}

/// A registry's answer.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Vec<u8>,
}

#[derive(serde::Deserialize)]
pub(super) struct TagList {
    #[serde(default)]
    pub(super) tags: Option<Vec<String>>,
}

impl Session {
    /// `BASE/v2/REPOSITORY/PATH`
    pub(super) fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// What a failure means for a person. With a bearer token, a 401 or 403 from the registry
    /// means the token service issued a token without this repository's scope (the
    /// credentials themselves were accepted when the token was issued).
    pub(super) fn explain(&self, failure: &Failure) -> String {
        match (failure.status, &self.auth) {
            (Some(status @ (401 | 403)), Auth::Bearer(_)) => format!(
                "user \"{}\" may not use the repository {} (the token service did not grant its scope; HTTP {status})",
                self.user.as_deref().unwrap_or("anonymous"),
                self.repository
            ),
            _ => failure.message(self.user.as_deref()),
        }
    }

    /// A request, with credentials only when it goes to the registry itself.
    pub(super) fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        if !url.starts_with(&format!("{}/", self.base)) {
            return request;
        }
        self.auth.apply(request)
    }

    /// Sends `request` and reads its answer, at most [`MAX_BODY_BYTES`] of it.
    pub(super) async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, Failure> {
        let request = request
            .build()
            .map_err(|e| Failure::plain(None, chain(&e)))?;
        let what = format!(
            "the answer of registry {} to {} {}",
            self.base
                .split_once("://")
                .map_or(self.base.as_str(), |(_, host)| host),
            request.method(),
            request.url().path()
        );
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| Failure::plain(None, chain(&e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_capped(response, MAX_BODY_BYTES, &what)
            .await
            .map_err(|e| Failure::plain(Some(status.as_u16()), e.to_string()))?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// [`Session::send`], any answer but 2xx a failure.
    pub(super) async fn succeed(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Answer, Failure> {
        let answer = self.send(request).await?;
        if answer.status.is_success() {
            Ok(answer)
        } else {
            Err(Failure::http(answer.status.as_u16(), &answer.body))
        }
    }

    /// Every tag of the repository, following `Link` pagination; `None` when the repository
    /// does not exist.
    pub(super) async fn list_tags(&self) -> Result<Option<Vec<String>>, Failure> {
        let mut url = self.url("tags/list");
        let mut tags = Vec::new();
        let mut read = 0;
        for page in 0..MAX_PAGES {
            let answer = self.send(self.request(Method::GET, &url)).await?;
            read += answer.body.len();
            if read > MAX_TAG_LIST_BYTES {
                return Err(Failure::plain(
                    None,
                    format!(
                        "the tag list of {} is larger than {} over its pages (the cap); the rest was not read",
                        self.repository,
                        size(MAX_TAG_LIST_BYTES)
                    ),
                ));
            }
            if answer.status == StatusCode::NOT_FOUND && page == 0 {
                return Ok(None); // NAME_UNKNOWN: nothing appended yet
            }
            if !answer.status.is_success() {
                return Err(Failure::http(answer.status.as_u16(), &answer.body));
            }
            let list: TagList = serde_json::from_slice(&answer.body).map_err(|e| {
                Failure::plain(None, format!("the tag list is not valid JSON: {e}"))
            })?;
            tags.extend(list.tags.unwrap_or_default());
            let next = answer
                .headers
                .get(LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| next_link(&self.base, v));
            match next {
                Some(next) => url = next,
                None => break,
            }
        }
        Ok(Some(tags))
    }

    pub(super) async fn get_manifest(&self, tag: &str) -> Result<Answer, Failure> {
        let url = self.url(&format!("manifests/{tag}"));
        self.succeed(self.request(Method::GET, &url).header(ACCEPT, OCI_MANIFEST))
            .await
    }

    /// The manifest of `tag`. Tried twice: a tag link that another writer is writing reads as
    /// garbage for a moment.
    pub(super) async fn fetch(&self, tag: &str) -> Result<Vec<u8>, Failure> {
        let mut attempt = 1;
        loop {
            match self.get_manifest(tag).await {
                Ok(answer) => return Ok(answer.body),
                Err(e) if attempt < FETCH_ATTEMPTS && e.transient() => {
                    attempt += 1;
                    pause(attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) async fn put_manifest(&self, tag: &str, body: Vec<u8>) -> Result<(), Failure> {
        let url = self.url(&format!("manifests/{tag}"));
        self.succeed(
            self.request(Method::PUT, &url)
                .header(CONTENT_TYPE, OCI_MANIFEST)
                .body(body),
        )
        .await
        .map(drop)
    }

    /// Whether the repository links the empty blob already (pushing it again would rewrite
    /// the link under other writers' feet).
    pub(super) async fn has_empty_blob(&self) -> bool {
        let url = self.url(&format!("blobs/{EMPTY_DIGEST}"));
        matches!(self.send(self.request(Method::HEAD, &url)).await, Ok(a) if a.status.is_success())
    }

    /// Uploads `{}` in one piece: POST for an upload, PUT of the data to where it says.
    pub(super) async fn push_empty_blob(&self) -> Result<(), Failure> {
        let answer = self
            .succeed(self.request(Method::POST, &self.url("blobs/uploads/")))
            .await?;
        let location = answer
            .headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Failure::plain(None, "the registry gave no Location for the upload".into())
            })?;
        let mut url = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location.to_owned()
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("digest=");
        url.push_str(EMPTY_DIGEST);
        self.succeed(
            self.request(Method::PUT, &url)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(EMPTY_DATA),
        )
        .await
        .map(drop)
    }

    /// Puts the manifest under `tag`, pushing the empty blob when the repository lacks it (the
    /// first sample of a key). Retried a few times: while writers push that blob at once,
    /// distribution rewrites its link file in place, and a manifest checked at that moment is
    /// refused (DIGEST_INVALID, MANIFEST_BLOB_UNKNOWN) although the blob is there.
    pub(super) async fn push(&self, tag: &str, body: Vec<u8>) -> Result<(), Failure> {
        let mut attempt = 1;
        loop {
            let error = match self.put_manifest(tag, body.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if !error.blob_trouble() || attempt == PUSH_ATTEMPTS {
                return Err(error);
            }
            attempt += 1;
            let pushed = !self.has_empty_blob().await
                && match self.push_empty_blob().await {
                    Ok(()) => true,
                    Err(e) if attempt == PUSH_ATTEMPTS => return Err(e),
                    Err(_) => false,
                };
            if !pushed {
                // The blob is there (or could not be pushed): let concurrent pushes settle.
                pause(attempt).await;
            }
        }
    }

    /// Deletes the samples beyond the newest `retention` valid ones of `key`, and every entry
    /// among those newest that is not a valid sample of `key` (see [`valid_sample`]): only
    /// valid samples count towards the retention, so tags that merely look like samples (a
    /// pull request pushing `s99999999999999-…` into the history repository) are deleted
    /// instead of pushing real samples out. Manifests are read only when there is something
    /// to prune (more sample-shaped tags than the retention), newest first, until `retention`
    /// valid ones are found; older tags are deleted unread.
    ///
    /// Deletes go oldest first and one at a time (deletes contend in the registry). A refusal
    /// stops it at once, so a registry that refuses deletes costs one request, not one per
    /// sample; other failures leave that entry to the next prune. The caller bounds the whole
    /// prune in time.
    pub(super) async fn prune(&self, retention: usize, key: &HistoryKey) -> Result<(), String> {
        let Some(tags) = self.list_tags().await.map_err(|e| self.explain(&e))? else {
            return Ok(());
        };
        let mut tags: Vec<String> = tags.into_iter().filter(|t| is_sample_tag(t)).collect();
        tags.sort_unstable_by(|a, b| b.cmp(a)); // newest first
        tags.dedup();
        if tags.len() <= retention {
            return Ok(());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut doomed = Vec::new();
        let mut kept = 0;
        let mut next = 0;
        while kept < retention && next < tags.len() {
            let count = (retention - kept).min(MAX_BATCH).min(tags.len() - next);
            let batch = tags[next..next + count].to_vec();
            next += count;
            let fetched = in_order(batch, IN_FLIGHT, |tag| {
                let session = self.clone();
                async move {
                    let body = session.fetch(&tag).await;
                    (tag, body)
                }
            })
            .await;
            for (tag, body) in fetched {
                match body {
                    Ok(body) if kept < retention && valid_sample(&tag, &body, key, now) => {
                        kept += 1
                    }
                    Ok(_) => doomed.push(tag),
                    // Deleted meanwhile by another writer's prune.
                    Err(e) if e.not_found() => {}
                    // Unreadable this time: neither counted nor deleted.
                    Err(_) => {}
                }
            }
        }
        doomed.extend(tags.drain(next..));
        doomed.sort_unstable(); // oldest first
        let mut first_failure = None;
        for tag in doomed {
            match self.delete(&tag).await {
                Ok(()) => {}
                Err(Delete::Refused(message)) => return Err(message),
                Err(Delete::Failed(message)) => {
                    first_failure.get_or_insert(message);
                }
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Deletes the manifest `tag` points at (distribution deletes by digest only, and only
    /// that untags). Gone already is fine: another writer pruned it.
    ///
    /// Distribution's delete is not atomic: it removes the manifest, then looks for the tags
    /// on it, and that look fails (500) while another writer is writing a tag link. The tag
    /// then dangles: listed, pointing at nothing (404 naming a `Revision`). Untagging races
    /// with writes to the same tag too, leaving it listed but unknown (404 naming the `Tag`).
    /// Either is pointed at a tombstone manifest, which is then deleted like any sample.
    pub(super) async fn delete(&self, tag: &str) -> Result<(), Delete> {
        let mut last = String::new();
        for attempt in 1..=DELETE_ATTEMPTS {
            if attempt > 1 {
                pause(attempt).await;
            }
            let digest = match self.get_manifest(tag).await {
                Ok(answer) => answer
                    .headers
                    .get(DOCKER_CONTENT_DIGEST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                Err(failure) => {
                    let stuck =
                        failure.dangling() || (failure.not_found() && self.still_listed(tag).await);
                    if stuck {
                        if let Err(e) = self.put_manifest(tag, tombstone(tag)).await {
                            last = self.explain(&e);
                        }
                        continue;
                    }
                    if failure.not_found() {
                        return Ok(());
                    }
                    last = self.explain(&failure);
                    continue;
                }
            };
            let Some(digest) = digest else {
                return Err(Delete::Refused(format!(
                    "cannot delete {tag}: the registry names no {DOCKER_CONTENT_DIGEST}"
                )));
            };
            let url = self.url(&format!("manifests/{digest}"));
            let failure = match self.succeed(self.request(Method::DELETE, &url)).await {
                Ok(_) => return Ok(()),
                Err(failure) => failure,
            };
            if failure.status == Some(405) || failure.has("UNSUPPORTED") {
                return Err(Delete::Refused(format!(
                    "the registry does not allow deleting manifests ({}); distribution needs \
                     storage.delete.enabled",
                    self.explain(&failure)
                )));
            }
            if matches!(failure.status, Some(401 | 403)) {
                return Err(Delete::Refused(format!(
                    "cannot delete {tag}: {}",
                    self.explain(&failure)
                )));
            }
            // 404: deleted meanwhile, but was the tag untagged? The next look tells.
            last = self.explain(&failure);
        }
        Err(Delete::Failed(format!("cannot delete {tag}: {last}")))
    }

    /// Whether `tag` is listed although it resolves to nothing: a half-removed tag (another
    /// writer's tombstone raced its untagging), which only a tombstone clears.
    pub(super) async fn still_listed(&self, tag: &str) -> bool {
        matches!(self.list_tags().await, Ok(Some(tags)) if tags.iter().any(|t| t == tag))
    }
}

/// Why a sample was not deleted.
pub(super) enum Delete {
    /// Deletes are not allowed: pointless to try the others.
    Refused(String),
    /// This one, this time.
    Failed(String),
}

/// A short, jittered wait before retry `attempt` (2, 3, …), so racing writers drift apart.
pub(super) async fn pause(attempt: u32) {
    let millis = 25 * u64::from(attempt) + u64::from(rand::random::<u8>() % 50);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

/// What went wrong with a request: the registry's answer, or oci-client's error.
pub(super) struct Failure {
    pub(super) status: Option<u16>,
    /// Error codes of the registry's error envelope (`MANIFEST_UNKNOWN`, …).
    pub(super) codes: Vec<String>,
    /// The envelope's `detail` values.
    pub(super) details: Vec<serde_json::Value>,
    /// One line, without URL.
    pub(super) detail: String,
}

#[derive(serde::Deserialize)]
pub(super) struct Envelope {
    pub(super) errors: Vec<EnvelopeError>,
}

#[derive(serde::Deserialize)]
pub(super) struct EnvelopeError {
    #[serde(default)]
    pub(super) code: String,
    #[serde(default)]
    pub(super) message: String,
    #[serde(default)]
    pub(super) detail: serde_json::Value,
}

impl Failure {
    pub(super) fn plain(status: Option<u16>, detail: String) -> Failure {
        Failure {
            status,
            codes: Vec::new(),
            details: Vec::new(),
            detail,
        }
    }

    pub(super) fn http(status: u16, body: &[u8]) -> Failure {
        match serde_json::from_slice::<Envelope>(body) {
            Ok(envelope) if !envelope.errors.is_empty() => {
                Failure::envelope(Some(status), envelope)
            }
            _ => Failure::plain(Some(status), one_line(&String::from_utf8_lossy(body))),
        }
    }

    pub(super) fn envelope(status: Option<u16>, envelope: Envelope) -> Failure {
        let detail = envelope
            .errors
            .iter()
            .map(|e| format!("{} {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let (codes, details) = envelope
            .errors
            .into_iter()
            .map(|e| (e.code, e.detail))
            .unzip();
        Failure {
            status,
            codes,
            details,
            detail: one_line(&detail),
        }
    }

    /// Worth another try: not an answer that would be the same next time.
    pub(super) fn transient(&self) -> bool {
        !self.not_found() && !matches!(self.status, Some(401 | 403))
    }

    /// A tag whose manifest is gone: distribution answers MANIFEST_UNKNOWN naming the
    /// `Revision` it points at (a tag that does not exist names the `Tag`).
    pub(super) fn dangling(&self) -> bool {
        self.has("MANIFEST_UNKNOWN")
            && self
                .details
                .iter()
                .any(|d| d.get("Revision").is_some_and(|r| r.is_string()))
    }

    pub(super) fn has(&self, code: &str) -> bool {
        self.codes.iter().any(|c| c == code)
    }

    pub(super) fn not_found(&self) -> bool {
        self.status == Some(404)
            || self.has("MANIFEST_UNKNOWN")
            || self.has("NAME_UNKNOWN")
            || self.has("NOT_FOUND")
    }

    /// The manifest was refused over its blob: missing, or being linked by another writer.
    pub(super) fn blob_trouble(&self) -> bool {
        [
            "MANIFEST_BLOB_UNKNOWN",
            "BLOB_UNKNOWN",
            "NAME_UNKNOWN",
            "DIGEST_INVALID",
        ]
        .iter()
        .any(|code| self.has(code))
    }

    /// One line for a person: what the registry said, credentials named by user only.
    pub(super) fn message(&self, user: Option<&str>) -> String {
        match (self.status, user) {
            (Some(401), Some(user)) => {
                format!(
                    "the registry refused the credentials of user \"{user}\" (401 Unauthorized)"
                )
            }
            (Some(401), None) => "the registry wants credentials (401 Unauthorized)".into(),
            (Some(403), _) => format!("access denied (403 Forbidden): {}", self.detail),
            (Some(status), _) if self.detail.is_empty() => format!("HTTP {status}"),
            (Some(status), _) => format!("HTTP {status}: {}", self.detail),
            (None, _) => self.detail.clone(),
        }
    }
}

/// An error and its sources on one line (`error sending request…: connection refused`), cut
/// to a readable length.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    one_line(&crate::registry::one_line_error(e))
}

/// Whitespace collapsed, cut to a readable length.
pub(super) fn one_line(text: &str) -> String {
    let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > 300 {
        let mut cut = 300;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

/// The `rel="next"` target of a `Link` header, as an absolute URL on `base` (a link to another
/// host is not followed: it would get the credentials).
pub(super) fn next_link(base: &str, header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.split_once('>')?;
        let target = target.trim().strip_prefix('<')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().to_ascii_lowercase();
            p == "rel=\"next\"" || p == "rel=next"
        });
        if !is_next {
            return None;
        }
        if target.starts_with('/') {
            Some(format!("{base}{target}"))
        } else if target.starts_with(&format!("{base}/")) {
            Some(target.to_owned())
        } else {
            None
        }
    })
}

/// Whether the manifest `body` under `tag` is a sample this store wrote for `key`: a sample
/// annotation that parses, of `key`, carrying its own tag, and not dated more than a day ahead
/// of `now` (milliseconds; writers' clocks drift, not by days).
pub(super) fn valid_sample(tag: &str, body: &[u8], key: &HistoryKey, now: u64) -> bool {
    const DAY_MILLIS: u64 = 24 * 3600 * 1000;
    let Ok(Some(sample)) = parse_sample(body) else {
        return false;
    };
    let own_tag = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|m| m["annotations"][TAG_ANNOTATION].as_str().map(|t| t == tag))
        .unwrap_or(false);
    let millis: Option<u64> = tag.get(1..15).and_then(|m| m.parse().ok());
    own_tag && key.matches(&sample) && millis.is_some_and(|m| m <= now + DAY_MILLIS)
}
