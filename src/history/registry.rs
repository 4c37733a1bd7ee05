//! `registry`: history kept in the OCI registry the build already pushes to.
//!
//! Layout: every sample is its own small OCI artifact, tagged `s<unix millis, 14 digits>-<8 hex
//! random>` in the repository `<namespace>/<repo slug>/<key hash>` (namespace
//! `buildkit-launcher/history` unless [`RegistryStore::with_namespace`] says otherwise). One
//! repository per history key, so reading a key never touches another key's samples; the slug
//! keeps it readable, the hash of (repo, dockerfile, target) keeps keys apart that slug alike.
//! The artifact is an image manifest whose config and single layer are the OCI 1.1 empty
//! descriptor (`{}`, pushed once per repository); the sample's JSON travels in the manifest
//! annotation [`SAMPLE_ANNOTATION`], so reading a sample costs one GET.
//!
//! Appending only ever adds a tag: writers never read-modify-write a shared object, so concurrent
//! writers cannot lose each other's samples. Each manifest also carries its own tag as an
//! annotation, so no two samples share a digest (deleting a digest removes every tag on it).
//!
//! Reading lists the tags (following `Link` pagination; distribution returns them all, unsorted),
//! sorts them newest first and fetches manifests, a few at a time, until `window` successful
//! samples of the key are found. A repository that does not exist yet is an empty history; a
//! manifest that does not parse is skipped with a warning. The order is the writers' clocks at
//! append time: writers on machines with skewed clocks interleave by their own clocks.
//!
//! Pruning: after an append, samples beyond the newest `retention` are deleted by digest (a tag
//! that a racing delete left behind is repaired, see `Session::delete`). It is best effort: a
//! registry that refuses deletes (distribution without `storage.delete.enabled` answers 405
//! UNSUPPORTED) costs a warning in the store's next [`Recent`], and a repository holding more
//! than twice its retention is reported by every read; never a failed build.
//!
//! The trait is sync and is called from async code too: every call runs on a thread of its own
//! with a current-thread runtime, so it neither needs nor enters the caller's runtime (the
//! calling thread waits, as for any sync store).

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, LINK, LOCATION};
use reqwest::{Method, StatusCode};
use tokio::task::JoinSet;
use zeroize::Zeroizing;

use super::{HistoryError, HistoryKey, HistoryStore, Outcome, Recent, Sample};
use crate::registry::Credentials;

/// Where the history repositories live unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "buildkit-launcher/history";
/// Samples kept per key: comfortably more than any percentile window.
pub const DEFAULT_RETENTION: usize = 100;
/// The manifest annotation holding the sample's JSON.
pub const SAMPLE_ANNOTATION: &str = "dev.buildkit-launcher.sample";
/// The manifest annotation holding the sample's own tag (makes every manifest unique).
pub const TAG_ANNOTATION: &str = "dev.buildkit-launcher.tag";
/// The manifest annotation of a tombstone (see [`Session::delete`]), holding its tag.
pub const TOMBSTONE_ANNOTATION: &str = "dev.buildkit-launcher.tombstone";
/// `artifactType` of a sample manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.buildkit-launcher.history.sample.v1+json";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_CONTENT_DIGEST: &str = "Docker-Content-Digest";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// sha256 of `{}`, the OCI 1.1 empty descriptor.
const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
const EMPTY_DATA: &[u8] = b"{}";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of a whole `recent`, or of an `append` before pruning.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound of the pruning after an append.
const PRUNE_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests in flight at once while reading.
const IN_FLIGHT: usize = 16;
/// Tries of a manifest fetch while reading.
const FETCH_ATTEMPTS: u32 = 2;
/// Tries of a delete (see [`Session::delete`]).
const DELETE_ATTEMPTS: u32 = 6;
/// Tries of a manifest push (see [`Session::push`]).
const PUSH_ATTEMPTS: u32 = 6;
/// Manifests fetched per round while reading.
const MAX_BATCH: usize = 64;
/// Pages of a tag list followed at most.
const MAX_PAGES: usize = 1000;
/// Skipped samples listed one by one in the warnings; the rest are counted.
const MAX_SKIP_WARNINGS: usize = 5;
/// Repository slugs are cut to this length.
const MAX_SLUG: usize = 100;

/// History in an OCI registry. See the module documentation for the layout.
#[derive(Debug)]
pub struct RegistryStore {
    /// `host[:port]`
    registry: String,
    insecure: bool,
    credentials: Option<Credentials>,
    /// Samples kept per key; 0 keeps everything.
    retention: usize,
    namespace: String,
    /// Pruning failures of this store's appends, reported by its next `recent`.
    pending: Mutex<Vec<String>>,
}

impl RegistryStore {
    /// History in `registry` (`host[:port]`; plain HTTP when `insecure`), keeping the newest
    /// `retention` samples per key (0: never prune).
    pub fn new(
        registry: String,
        insecure: bool,
        credentials: Option<Credentials>,
        retention: usize,
    ) -> RegistryStore {
        RegistryStore {
            registry,
            insecure,
            credentials,
            retention,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            pending: Mutex::new(Vec::new()),
        }
    }

    /// Keep the repositories under `namespace` instead of `buildkit-launcher/history`, for
    /// registries that only accept repositories under an owner (`ghcr.io/OWNER/…`, Forgejo).
    /// Made a valid repository path the same way repo names are.
    pub fn with_namespace(mut self, namespace: &str) -> RegistryStore {
        self.namespace = slug(namespace);
        self
    }

    /// The repository holding `key`'s samples: `NAMESPACE/REPO-SLUG/KEY-HASH`.
    pub fn repository(&self, key: &HistoryKey) -> String {
        format!(
            "{}/{}/{}",
            self.namespace,
            slug(&key.repo),
            key_hash(&key.repo, &key.dockerfile, key.target.as_deref())
        )
    }

    fn repository_of(&self, sample: &Sample) -> String {
        self.repository(&HistoryKey {
            repo: sample.repo.clone(),
            dockerfile: sample.dockerfile.clone(),
            target: sample.target.clone(),
        })
    }

    /// `registry:HOST/REPOSITORY`, how warnings and errors name a repository.
    fn place(&self, repository: &str) -> String {
        format!("registry:{}/{repository}", self.registry)
    }

    fn error(&self, repository: &str, action: &'static str, message: String) -> HistoryError {
        HistoryError::Io {
            path: PathBuf::from(self.place(repository)),
            action,
            source: std::io::Error::other(self.redact(message)),
        }
    }

    /// A message never carries the password, whatever a registry echoes back.
    fn redact(&self, message: String) -> String {
        match &self.credentials {
            Some(c) if c.password.len() >= 4 => message.replace(c.password.as_str(), "***"),
            _ => message,
        }
    }

    async fn session(&self, repository: &str, op: RegistryOperation) -> Result<Session, String> {
        let protocol = if self.insecure {
            ClientProtocol::HttpsExcept(vec![self.registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..ClientConfig::default()
        });
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| chain(&e))?;
        let auth = match &self.credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.to_string()),
            None => RegistryAuth::Anonymous,
        };
        let user = self.credentials.as_ref().map(|c| c.username.clone());
        let reference = Reference::with_tag(
            self.registry.clone(),
            repository.to_owned(),
            "latest".to_owned(),
        );
        // Asks `/v2/` how to authenticate and fetches a token when the registry wants one.
        let token = client
            .auth(&reference, &auth, op)
            .await
            .map_err(|e| describe(&e, user.as_deref()))?;
        let auth = match (token, &self.credentials) {
            (Some(token), _) => Auth::Bearer(token),
            (None, Some(c)) => Auth::Basic(c.username.clone(), c.password.clone()),
            (None, None) => Auth::Anonymous,
        };
        let scheme = if self.insecure { "http" } else { "https" };
        Ok(Session {
            http,
            auth,
            user,
            // `docker.io` is served by `index.docker.io`.
            base: format!("{scheme}://{}", reference.resolve_registry()),
            repository: repository.to_owned(),
        })
    }

    /// [`RegistryStore::read`], after the warnings of this store's earlier appends.
    async fn recent_async(&self, key: &HistoryKey, window: usize) -> Result<Recent, HistoryError> {
        let mut recent = self.read(key, window).await?;
        let mut pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        pending.append(&mut recent.warnings);
        recent.warnings = pending;
        Ok(recent)
    }

    async fn read(&self, key: &HistoryKey, window: usize) -> Result<Recent, HistoryError> {
        let mut warnings = Vec::new();
        if window == 0 {
            return Ok(Recent::default());
        }
        let repository = self.repository(key);
        let fail = |message| self.error(&repository, "read", message);
        let session = self
            .session(&repository, RegistryOperation::Pull)
            .await
            .map_err(fail)?;
        let listed = session.list_tags().await;
        let Some(tags) = listed.map_err(|e| fail(e.message(session.user.as_deref())))? else {
            return Ok(Recent {
                samples: Vec::new(),
                warnings,
            });
        };
        let mut tags: Vec<String> = tags.into_iter().filter(|t| is_sample_tag(t)).collect();
        tags.sort_unstable_by(|a, b| b.cmp(a)); // newest first
        tags.dedup();
        if self.retention > 0 && tags.len() > 2 * self.retention.max(10) {
            warnings.push(format!(
                "history {}: holds {} samples, more than twice the retention of {}: \
                 old samples are not being pruned (does the registry refuse deletes?)",
                self.place(&repository),
                tags.len(),
                self.retention
            ));
        }
        let mut samples = Vec::with_capacity(window);
        let mut skipped = Vec::new();
        let mut next = 0;
        while samples.len() < window && next < tags.len() {
            // A quarter more than needed: failed and OOM samples do not count, and every
            // further round costs a round trip.
            let need = window - samples.len();
            let count = (need + need / 4).min(MAX_BATCH).min(tags.len() - next);
            let batch = tags[next..next + count].to_vec();
            next += count;
            let fetched = in_order(batch, IN_FLIGHT, |tag| {
                let session = session.clone();
                async move {
                    let body = session.fetch(&tag).await;
                    (tag, body)
                }
            })
            .await;
            for (tag, body) in fetched {
                if samples.len() == window {
                    break;
                }
                match body {
                    Ok(body) => match parse_sample(&body) {
                        Ok(Some(s)) if s.outcome == Outcome::Ok && key.matches(&s) => {
                            samples.push(s)
                        }
                        Ok(_) => {}
                        Err(e) => skipped.push(format!("{tag}: skipped, not a valid sample: {e}")),
                    },
                    // Pruned by a concurrent writer between listing and fetching: it was old.
                    Err(e) if e.not_found() => {}
                    Err(e) => skipped.push(format!(
                        "{tag}: skipped, cannot read it: {}",
                        e.message(session.user.as_deref())
                    )),
                }
            }
        }
        samples.reverse(); // oldest first
        let place = self.place(&repository);
        let more = skipped.len().saturating_sub(MAX_SKIP_WARNINGS);
        warnings.extend(
            skipped
                .into_iter()
                .take(MAX_SKIP_WARNINGS)
                .map(|s| self.redact(format!("history {place}:{s}"))),
        );
        if more > 0 {
            warnings.push(format!("history {place}: {more} more samples skipped"));
        }
        Ok(Recent { samples, warnings })
    }

    async fn append_async(&self, sample: &Sample) -> Result<(), HistoryError> {
        let repository = self.repository_of(sample);
        let fail = |message| self.error(&repository, "append to", message);
        let (tag, millis) = new_tag();
        let body = manifest(sample, &tag, millis);
        let session = self
            .session(&repository, RegistryOperation::Push)
            .await
            .map_err(fail)?;
        session
            .push(&tag, body)
            .await
            .map_err(|e| fail(e.message(session.user.as_deref())))?;
        if self.retention > 0 {
            let outcome = tokio::time::timeout(PRUNE_TIMEOUT, session.prune(self.retention))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {} s", PRUNE_TIMEOUT.as_secs())));
            if let Err(message) = outcome {
                let line = self.redact(format!(
                    "history {}: old samples not pruned: {message}",
                    self.place(&repository)
                ));
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line);
            }
        }
        Ok(())
    }
}

impl HistoryStore for RegistryStore {
    fn recent(&self, key: &HistoryKey, window: usize) -> Result<Recent, HistoryError> {
        let repository = self.repository(key);
        let timed_out = || {
            self.error(
                &repository,
                "read",
                format!("no answer within {} s", OPERATION_TIMEOUT.as_secs()),
            )
        };
        on_own_runtime(|| tokio::time::timeout(OPERATION_TIMEOUT, self.recent_async(key, window)))
            .map_err(|e| self.error(&repository, "read", format!("cannot start a runtime: {e}")))?
            .unwrap_or_else(|_| Err(timed_out()))
    }

    fn append(&self, sample: &Sample) -> Result<(), HistoryError> {
        let repository = self.repository_of(sample);
        let timed_out = || {
            self.error(
                &repository,
                "append to",
                format!("no answer within {} s", OPERATION_TIMEOUT.as_secs()),
            )
        };
        // The pruning has its own, shorter bound inside.
        let bound = OPERATION_TIMEOUT + PRUNE_TIMEOUT;
        on_own_runtime(|| tokio::time::timeout(bound, self.append_async(sample)))
            .map_err(|e| {
                self.error(
                    &repository,
                    "append to",
                    format!("cannot start a runtime: {e}"),
                )
            })?
            .unwrap_or_else(|_| Err(timed_out()))
    }

    fn describe(&self) -> String {
        format!("registry:{}/{}", self.registry, self.namespace)
    }
}

/// Runs the future `make` builds on a thread of its own with a current-thread runtime: works
/// the same from plain threads and from inside any tokio runtime, which it never enters (the
/// calling thread just waits).
fn on_own_runtime<F, T>(make: impl FnOnce() -> F + Send) -> std::io::Result<T>
where
    F: Future<Output = T>,
    T: Send,
{
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("history-registry".into())
            .spawn_scoped(scope, move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                // `make` runs inside the runtime: timers need its driver when they are created.
                Ok(runtime.block_on(async move { make().await }))
            })?;
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `f` over `items`, at most `limit` at once, and returns the outputs in item order.
async fn in_order<I, F, Fut>(items: I, limit: usize, f: F) -> Vec<Fut::Output>
where
    I: IntoIterator,
    F: Fn(I::Item) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let mut set = JoinSet::new();
    let mut outputs = Vec::new();
    let mut items = items.into_iter().enumerate();
    loop {
        while set.len() < limit {
            let Some((i, item)) = items.next() else {
                break;
            };
            outputs.push(None);
            let task = f(item);
            set.spawn(async move { (i, task.await) });
        }
        match set.join_next().await {
            Some(Ok((i, output))) => outputs[i] = Some(output),
            Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            None => break,
        }
    }
    outputs
        .into_iter()
        .map(|o| o.expect("every task reports"))
        .collect()
}

/// How a session's requests authenticate.
#[derive(Clone)]
enum Auth {
    Anonymous,
    Basic(String, Zeroizing<String>),
    Bearer(String),
}

/// One repository on one registry, authenticated, for the length of one store call.
///
/// oci-client does the authentication handshake (`/v2/` challenge, token); the requests are
/// made here, because oci-client 0.15 has no delete, hides `Link` pagination and error
/// details, and asks `/v2/` again before every request of an anonymous client.
#[derive(Clone)]
struct Session {
    http: reqwest::Client,
    auth: Auth,
    user: Option<String>,
    /// `http[s]://HOST`
    base: String,
    repository: String,
}

/// A registry's answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

impl Session {
    /// `BASE/v2/REPOSITORY/PATH`
    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// A request, with credentials only when it goes to the registry itself.
    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        if !url.starts_with(&format!("{}/", self.base)) {
            return request;
        }
        match &self.auth {
            Auth::Anonymous => request,
            Auth::Basic(user, password) => request.basic_auth(user, Some(password.as_str())),
            Auth::Bearer(token) => request.bearer_auth(token),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, Failure> {
        let response = request
            .send()
            .await
            .map_err(|e| Failure::plain(None, chain(&e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| Failure::plain(Some(status.as_u16()), chain(&e)))?
            .to_vec();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// [`Session::send`], any answer but 2xx a failure.
    async fn succeed(&self, request: reqwest::RequestBuilder) -> Result<Answer, Failure> {
        let answer = self.send(request).await?;
        if answer.status.is_success() {
            Ok(answer)
        } else {
            Err(Failure::http(answer.status.as_u16(), &answer.body))
        }
    }

    /// Every tag of the repository, following `Link` pagination; `None` when the repository
    /// does not exist.
    async fn list_tags(&self) -> Result<Option<Vec<String>>, Failure> {
        let mut url = self.url("tags/list");
        let mut tags = Vec::new();
        for page in 0..MAX_PAGES {
            let answer = self.send(self.request(Method::GET, &url)).await?;
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

    async fn get_manifest(&self, tag: &str) -> Result<Answer, Failure> {
        let url = self.url(&format!("manifests/{tag}"));
        self.succeed(self.request(Method::GET, &url).header(ACCEPT, OCI_MANIFEST))
            .await
    }

    /// The manifest of `tag`. Tried twice: a tag link that another writer is writing reads as
    /// garbage for a moment.
    async fn fetch(&self, tag: &str) -> Result<Vec<u8>, Failure> {
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

    async fn put_manifest(&self, tag: &str, body: Vec<u8>) -> Result<(), Failure> {
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
    async fn has_empty_blob(&self) -> bool {
        let url = self.url(&format!("blobs/{EMPTY_DIGEST}"));
        matches!(self.send(self.request(Method::HEAD, &url)).await, Ok(a) if a.status.is_success())
    }

    /// Uploads `{}` in one piece: POST for an upload, PUT of the data to where it says.
    async fn push_empty_blob(&self) -> Result<(), Failure> {
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
    async fn push(&self, tag: &str, body: Vec<u8>) -> Result<(), Failure> {
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

    /// Deletes the samples beyond the newest `retention`, oldest first and one at a time
    /// (deletes contend in the registry). A refusal stops it at once, so a registry that
    /// refuses deletes costs one request, not one per sample; other failures leave that sample
    /// to the next prune, where it is again among the oldest.
    async fn prune(&self, retention: usize) -> Result<(), String> {
        let user = self.user.as_deref();
        let Some(tags) = self.list_tags().await.map_err(|e| e.message(user))? else {
            return Ok(());
        };
        let mut tags: Vec<String> = tags.into_iter().filter(|t| is_sample_tag(t)).collect();
        tags.sort_unstable(); // oldest first
        tags.dedup();
        if tags.len() <= retention {
            return Ok(());
        }
        tags.truncate(tags.len() - retention);
        let mut first_failure = None;
        for tag in tags {
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
    async fn delete(&self, tag: &str) -> Result<(), Delete> {
        let user = self.user.as_deref();
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
                            last = e.message(user);
                        }
                        continue;
                    }
                    if failure.not_found() {
                        return Ok(());
                    }
                    last = failure.message(user);
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
                    failure.message(user)
                )));
            }
            if matches!(failure.status, Some(401 | 403)) {
                return Err(Delete::Refused(format!(
                    "cannot delete {tag}: {}",
                    failure.message(user)
                )));
            }
            // 404: deleted meanwhile, but was the tag untagged? The next look tells.
            last = failure.message(user);
        }
        Err(Delete::Failed(format!("cannot delete {tag}: {last}")))
    }

    /// Whether `tag` is listed although it resolves to nothing: a half-removed tag (another
    /// writer's tombstone raced its untagging), which only a tombstone clears.
    async fn still_listed(&self, tag: &str) -> bool {
        matches!(self.list_tags().await, Ok(Some(tags)) if tags.iter().any(|t| t == tag))
    }
}

/// Why a sample was not deleted.
enum Delete {
    /// Deletes are not allowed: pointless to try the others.
    Refused(String),
    /// This one, this time.
    Failed(String),
}

/// A short, jittered wait before retry `attempt` (2, 3, …), so racing writers drift apart.
async fn pause(attempt: u32) {
    let millis = 25 * u64::from(attempt) + u64::from(rand::random::<u8>() % 50);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

/// What went wrong with a request: the registry's answer, or oci-client's error.
struct Failure {
    status: Option<u16>,
    /// Error codes of the registry's error envelope (`MANIFEST_UNKNOWN`, …).
    codes: Vec<String>,
    /// The envelope's `detail` values.
    details: Vec<serde_json::Value>,
    /// One line, without URL.
    detail: String,
}

#[derive(serde::Deserialize)]
struct Envelope {
    errors: Vec<EnvelopeError>,
}

#[derive(serde::Deserialize)]
struct EnvelopeError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    detail: serde_json::Value,
}

impl Failure {
    fn plain(status: Option<u16>, detail: String) -> Failure {
        Failure {
            status,
            codes: Vec::new(),
            details: Vec::new(),
            detail,
        }
    }

    fn http(status: u16, body: &[u8]) -> Failure {
        match serde_json::from_slice::<Envelope>(body) {
            Ok(envelope) if !envelope.errors.is_empty() => {
                Failure::envelope(Some(status), envelope)
            }
            _ => Failure::plain(Some(status), one_line(&String::from_utf8_lossy(body))),
        }
    }

    fn envelope(status: Option<u16>, envelope: Envelope) -> Failure {
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

    fn of(e: &OciDistributionError) -> Failure {
        match e {
            OciDistributionError::RegistryError { envelope, .. } => Failure::envelope(
                None,
                Envelope {
                    errors: envelope
                        .errors
                        .iter()
                        .map(|e| EnvelopeError {
                            code: serde_json::to_value(&e.code)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default(),
                            message: e.message.clone(),
                            detail: e.detail.clone(),
                        })
                        .collect(),
                },
            ),
            OciDistributionError::ServerError { code, message, .. } => {
                Failure::http(*code, message.as_bytes())
            }
            OciDistributionError::UnauthorizedError { .. } => Failure {
                codes: vec!["UNAUTHORIZED".into()],
                ..Failure::plain(Some(401), String::new())
            },
            OciDistributionError::RequestError(e) => {
                Failure::plain(e.status().map(|s| s.as_u16()), chain(e))
            }
            other => Failure::plain(None, one_line(&other.to_string())),
        }
    }

    /// Worth another try: not an answer that would be the same next time.
    fn transient(&self) -> bool {
        !self.not_found() && !matches!(self.status, Some(401 | 403))
    }

    /// A tag whose manifest is gone: distribution answers MANIFEST_UNKNOWN naming the
    /// `Revision` it points at (a tag that does not exist names the `Tag`).
    fn dangling(&self) -> bool {
        self.has("MANIFEST_UNKNOWN")
            && self
                .details
                .iter()
                .any(|d| d.get("Revision").is_some_and(|r| r.is_string()))
    }

    fn has(&self, code: &str) -> bool {
        self.codes.iter().any(|c| c == code)
    }

    fn not_found(&self) -> bool {
        self.status == Some(404)
            || self.has("MANIFEST_UNKNOWN")
            || self.has("NAME_UNKNOWN")
            || self.has("NOT_FOUND")
    }

    /// The manifest was refused over its blob: missing, or being linked by another writer.
    fn blob_trouble(&self) -> bool {
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
    fn message(&self, user: Option<&str>) -> String {
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

fn describe(e: &OciDistributionError, user: Option<&str>) -> String {
    if let OciDistributionError::AuthenticationFailure(reason) = e {
        return format!("authentication failed: {}", one_line(reason));
    }
    Failure::of(e).message(user)
}

/// An error and its sources on one line (`error sending request…: connection refused`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    one_line(&line)
}

/// Whitespace collapsed, cut to a readable length.
fn one_line(text: &str) -> String {
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
fn next_link(base: &str, header: &str) -> Option<String> {
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

/// The last timestamp this process put in a tag: tags of one process strictly increase, even
/// within a millisecond.
static LAST_MILLIS: AtomicU64 = AtomicU64::new(0);

/// `s<unix millis, 14 digits>-<8 hex random>`: sorts by time, unique across writers.
fn new_tag() -> (String, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let previous = LAST_MILLIS
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or_else(|last| last);
    let millis = now.max(previous + 1);
    (
        format!("s{millis:014}-{:08x}", rand::random::<u32>()),
        millis,
    )
}

fn is_sample_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    b.len() == 24
        && b[0] == b's'
        && b[1..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-'
        && b[16..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// The sample's manifest: config and layer the empty descriptor, the sample in an annotation.
fn manifest(sample: &Sample, tag: &str, millis: u64) -> Vec<u8> {
    let created = UNIX_EPOCH + Duration::from_millis(millis);
    let mut annotations = serde_json::Map::new();
    annotations.insert(
        SAMPLE_ANNOTATION.into(),
        serde_json::to_string(sample)
            .expect("a Sample always serializes")
            .into(),
    );
    annotations.insert(TAG_ANNOTATION.into(), tag.into());
    annotations.insert(
        "org.opencontainers.image.created".into(),
        humantime::format_rfc3339_millis(created).to_string().into(),
    );
    artifact(annotations)
}

/// What a dangling `tag` is pointed at so that deleting it untags it (see [`Session::delete`]):
/// unique per tag, and skipped quietly by readers.
fn tombstone(tag: &str) -> Vec<u8> {
    let mut annotations = serde_json::Map::new();
    annotations.insert(TOMBSTONE_ANNOTATION.into(), tag.into());
    artifact(annotations)
}

fn artifact(annotations: serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    let empty = serde_json::json!({
        "mediaType": EMPTY_MEDIA_TYPE,
        "digest": EMPTY_DIGEST,
        "size": EMPTY_DATA.len(),
    });
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": empty,
        "layers": [empty],
        "annotations": annotations,
    }))
    .expect("a manifest always serializes")
}

/// The sample a manifest carries; `None` for a tombstone.
fn parse_sample(manifest: &[u8]) -> Result<Option<Sample>, String> {
    let manifest: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| format!("manifest is not JSON: {e}"))?;
    let annotations = manifest.get("annotations");
    if annotations.is_some_and(|a| a.get(TOMBSTONE_ANNOTATION).is_some()) {
        return Ok(None);
    }
    let text = annotations
        .and_then(|a| a.get(SAMPLE_ANNOTATION))
        .and_then(|s| s.as_str())
        .ok_or_else(|| format!("manifest has no {SAMPLE_ANNOTATION} annotation"))?;
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// A valid OCI repository path from any text: lowercase; per `/`-component, runs of other
/// characters become `-` (a lone `.`, `_`, `__` or dashes stay), separators at either end and
/// empty components go; at most [`MAX_SLUG`] characters; `unnamed` if nothing is left.
fn slug(text: &str) -> String {
    let mut components = Vec::new();
    for part in text.split('/') {
        let mut out = String::new();
        let mut separator = String::new();
        for c in part.chars().flat_map(char::to_lowercase) {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                if !out.is_empty() && !separator.is_empty() {
                    let kept = matches!(separator.as_str(), "." | "_" | "__")
                        || separator.bytes().all(|b| b == b'-');
                    out.push_str(if kept { &separator } else { "-" });
                }
                separator.clear();
                out.push(c);
            } else {
                separator.push(if matches!(c, '.' | '_' | '-') { c } else { '!' });
            }
        }
        if !out.is_empty() {
            components.push(out);
        }
    }
    let mut slug = components.join("/");
    if slug.len() > MAX_SLUG {
        slug.truncate(MAX_SLUG); // all ASCII by now
        let end = slug.trim_end_matches(['.', '_', '-', '/']).len();
        slug.truncate(end);
    }
    if slug.is_empty() {
        slug.push_str("unnamed");
    }
    slug
}

/// 12 hex digits of FNV-1a 64 over (repo, dockerfile, target), length-prefixed so no two keys
/// feed the same bytes. Stable: it names repositories that outlive any one version.
fn key_hash(repo: &str, dockerfile: &str, target: Option<&str>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for field in [Some(repo), Some(dockerfile), target] {
        match field {
            Some(text) => {
                feed(&[1]);
                feed(&(text.len() as u64).to_le_bytes());
                feed(text.as_bytes());
            }
            None => feed(&[0]),
        }
    }
    format!("{hash:016x}")[..12].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample {
            ts: "2026-11-01T00:00:00Z".into(),
            repo: "Acme/App".into(),
            dockerfile: "Dockerfile".into(),
            target: None,
            lang: Some("rust".into()),
            tier: Some("cx33".into()),
            peak_memory_mib: 4000,
            duration_s: 60.0,
            outcome: Outcome::Ok,
        }
    }

    #[test]
    fn slugs_are_valid_repository_paths() {
        assert_eq!(slug("Acme/App"), "acme/app");
        assert_eq!(slug("acme/my_app.v2"), "acme/my_app.v2");
        assert_eq!(slug("/a//b/"), "a/b");
        assert_eq!(slug("-x--y-"), "x--y");
        assert_eq!(slug("Ünïcode app!!"), "n-code-app");
        assert_eq!(slug("a._b"), "a-b");
        assert_eq!(slug("%%%"), "unnamed");
        assert_eq!(slug(""), "unnamed");
        let long = slug(&format!("{}-/b", "a".repeat(99)));
        assert_eq!(long, "a".repeat(99));
        let component = regex_like_component;
        for s in ["acme/app", "acme/my_app.v2", "x--y", "n-code-app", "a-b"] {
            assert!(s.split('/').all(component), "{s}");
        }
    }

    /// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
    fn regex_like_component(c: &str) -> bool {
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let b = c.as_bytes();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return false;
        }
        c.split(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .all(|sep| matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-'))
    }

    #[test]
    fn key_hashes_are_stable_and_tell_keys_apart() {
        // Pinned: changing it would orphan every history in every registry.
        assert_eq!(key_hash("acme/app", "Dockerfile", None), "7f9618eeaa38");
        let all = [
            key_hash("acme/app", "Dockerfile", None),
            key_hash("acme/app", "Dockerfile", Some("")),
            key_hash("acme/app", "Dockerfile", Some("prod")),
            key_hash("acme/ap", "pDockerfile", None),
            key_hash("Acme/App", "Dockerfile", None),
        ];
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len(), "{all:?}");
        assert!(all.iter().all(|h| h.len() == 12));
    }

    #[test]
    fn tags_sort_by_time_and_strictly_increase_within_a_process() {
        let tags: Vec<String> = (0..1000).map(|_| new_tag().0).collect();
        assert!(tags.iter().all(|t| is_sample_tag(t)), "{}", tags[0]);
        assert!(tags.windows(2).all(|w| w[0] < w[1]));
        assert!(!is_sample_tag("latest"));
        assert!(!is_sample_tag("s0000000000000x-00000000"));
        assert!(!is_sample_tag("s00000000000000-0000000G"));
    }

    #[test]
    fn a_manifest_carries_its_sample_and_tag() {
        let (tag, millis) = new_tag();
        let body = manifest(&sample(), &tag, millis);
        assert_eq!(parse_sample(&body).unwrap(), Some(sample()));
        assert_eq!(parse_sample(&tombstone(&tag)).unwrap(), None);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["annotations"][TAG_ANNOTATION], tag.as_str());
        assert_eq!(v["config"]["digest"], EMPTY_DIGEST);
        assert_eq!(v["layers"][0]["mediaType"], EMPTY_MEDIA_TYPE);
        assert!(parse_sample(b"{}").unwrap_err().contains(SAMPLE_ANNOTATION));
    }

    #[test]
    fn next_links_stay_on_the_registry() {
        let base = "http://r:5000";
        assert_eq!(
            next_link(base, r#"</v2/a/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("http://r:5000/v2/a/tags/list?n=2&last=b")
        );
        assert_eq!(
            next_link(base, r#"<http://r:5000/v2/a/tags/list?last=b>; rel=next"#).as_deref(),
            Some("http://r:5000/v2/a/tags/list?last=b")
        );
        assert_eq!(next_link(base, r#"<http://evil/v2/x>; rel="next""#), None);
        assert_eq!(next_link(base, r#"</v2/a/tags/list>; rel="prev""#), None);
    }

    #[test]
    fn failures_read_envelopes_and_never_name_the_password() {
        let f = Failure::http(
            400,
            br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:x"}]}"#,
        );
        assert!(f.blob_trouble() && !f.not_found());
        assert_eq!(
            f.message(None),
            "HTTP 400: MANIFEST_BLOB_UNKNOWN blob unknown to registry"
        );
        assert!(Failure::http(404, b"").not_found());
        // As distribution 2.8 answers for a dangling tag and for a missing one.
        let dangling = Failure::http(
            404,
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Name":"h/x","Revision":"sha256:74440b8488e5407a3f11e19b1e915e4c6a891f66fc0c202058b10737674f056e"}}]}"#,
        );
        assert!(dangling.dangling() && dangling.not_found() && !dangling.transient());
        let missing = Failure::http(
            404,
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nosuchtag"}}]}"#,
        );
        assert!(!missing.dangling() && missing.not_found());
        assert!(Failure::http(500, br#"{"errors":[{"code":"UNKNOWN"}]}"#).transient());
        let store = RegistryStore::new(
            "r:5000".into(),
            true,
            Some(Credentials {
                username: "ci".into(),
                password: zeroize::Zeroizing::new("s3cret-pw".into()),
            }),
            10,
        );
        assert_eq!(store.redact("echo s3cret-pw".into()), "echo ***");
        assert!(!format!("{store:?}").contains("s3cret-pw"));
        assert_eq!(
            store.describe(),
            "registry:r:5000/buildkit-launcher/history"
        );
    }
}
