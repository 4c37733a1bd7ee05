//! `registry`: history kept in the OCI registry the build already pushes to.
//!
//! Layout: every sample is its own small OCI artifact, tagged `s<unix millis, 14 digits>-<8 hex
//! random>` in the repository `<namespace>/<repo slug>/<key hash>` (namespace
//! `cache/buildkit-launcher/history`, inside the cache namespace, unless [`RegistryStore::with_namespace`] says otherwise). One
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

use oci_client::Reference;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, LINK, LOCATION};
use reqwest::{Method, StatusCode};
use tokio::task::JoinSet;

use super::{HistoryError, HistoryKey, HistoryStore, Outcome, Recent, Sample};
use crate::config::Arch;
use crate::registry::Credentials;

/// Where the history repositories live unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "cache/buildkit-launcher/history";
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

/// The repository holding `key`'s samples beneath `namespace`: `NAMESPACE/REPO-SLUG/KEY-HASH`.
pub fn key_repository(namespace: &str, key: &HistoryKey) -> String {
    format!(
        "{}/{}/{}",
        slug(namespace),
        slug(&key.repo),
        key_hash(&key.repo, &key.dockerfile, key.target.as_deref(), key.arch)
    )
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

    /// Keep the repositories under `namespace` instead of `cache/buildkit-launcher/history`, for
    /// registries that only accept repositories under an owner (`ghcr.io/OWNER/…`, Forgejo).
    /// Made a valid repository path the same way repo names are.
    pub fn with_namespace(mut self, namespace: &str) -> RegistryStore {
        self.namespace = slug(namespace);
        self
    }

    /// The repository holding `key`'s samples: `NAMESPACE/REPO-SLUG/KEY-HASH`.
    pub fn repository(&self, key: &HistoryKey) -> String {
        key_repository(&self.namespace, key)
    }

    fn repository_of(&self, sample: &Sample) -> String {
        self.repository(&key_of(sample))
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

    /// An authenticated session on `repository` for `actions` (`pull`, `pull,push`): the
    /// `/v2/` handshake of `registry::bounded` (a token only from a realm the policy allows,
    /// read within its cap).
    async fn session(&self, repository: &str, actions: &str) -> Result<Session, String> {
        self.session_for(repository, &format!("repository:{repository}:{actions}"))
            .await
    }

    /// [`RegistryStore::session`] with the token `scope` spelled out.
    async fn session_for(&self, repository: &str, scope: &str) -> Result<Session, String> {
        use crate::registry::bounded::{TokenError, authenticate_scope, http_client};
        let http = http_client(CONNECT_TIMEOUT, READ_TIMEOUT)?;
        let user = self.credentials.as_ref().map(|c| c.username.clone());
        // `docker.io` is served by `index.docker.io`.
        let host = Reference::with_tag(
            self.registry.clone(),
            repository.to_owned(),
            "latest".to_owned(),
        )
        .resolve_registry()
        .to_owned();
        let scheme = if self.insecure { "http" } else { "https" };
        let base = format!("{scheme}://{host}");
        let auth = authenticate_scope(
            &http,
            &base,
            &self.registry,
            scope,
            self.credentials.as_ref(),
        )
        .await
        .map_err(|e| match e {
            TokenError::CredentialsRefused { realm, status } => format!(
                "authentication failed: the token service {realm} refused the credentials of user \"{}\" (HTTP {status})",
                user.as_deref().unwrap_or("anonymous")
            ),
            other => other.to_string(),
        })?;
        Ok(Session {
            http,
            auth,
            user,
            base,
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
        let session = self.session(&repository, "pull").await.map_err(fail)?;
        let listed = session.list_tags().await;
        let Some(tags) = listed.map_err(|e| fail(session.explain(&e)))? else {
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
                        session.explain(&e)
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
        let session = self.session(&repository, "pull,push").await.map_err(fail)?;
        session
            .push(&tag, body)
            .await
            .map_err(|e| fail(session.explain(&e)))?;
        if self.retention > 0 {
            let key = key_of(sample);
            let outcome = tokio::time::timeout(PRUNE_TIMEOUT, session.prune(self.retention, &key))
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

/// The key a sample belongs to.
fn key_of(sample: &Sample) -> HistoryKey {
    HistoryKey {
        repo: sample.repo.clone(),
        dockerfile: sample.dockerfile.clone(),
        target: sample.target.clone(),
        arch: sample.arch(),
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

mod catalog;
mod layout;
mod session;
#[cfg(test)]
mod tests;

use layout::*;
use session::*;
