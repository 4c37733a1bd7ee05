//! The runners that exist right now, so that every path out of a build destroys them.
//!
//! A create runs as a task of its own ([`LiveRunners::create`]): cancelling the attempt (SIGTERM)
//! does not drop a `POST /servers` in flight. The task registers the id the moment the answer
//! comes; [`LiveRunners::destroy_all`] first waits (at most [`CREATE_GRACE`]) for creates still
//! in flight, then looks the ones that did not answer up by name, and destroys everything.
//!
//! Leases: while a runner is registered, a task renews its lease every third of it
//! ([`Provider::lease`]; one label update), so a long build is never reaped and a SIGKILLed
//! launcher's runner is reaped within one lease. After SIGTERM the destroy has until
//! [`CANCEL_CONFIRM`] to be confirmed (Woodpecker kills 20 s after SIGTERM); a runner not
//! confirmed gone by then, or whose destroy failed, gets its lease ended now (its `expires`
//! label set to the provider's now), so the next reap of any build deletes it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::provider::{Provider, ProviderError, RunnerSpec};

use super::{DESTROY_ATTEMPTS, DESTROY_BACKOFF};

/// How long a cancelled build waits for a create in flight (Woodpecker kills 20 s after
/// SIGTERM; the delete and its confirmation need the rest).
pub const CREATE_GRACE: Duration = Duration::from_secs(10);

/// After SIGTERM: the destroys must be confirmed by then, else the leases are ended instead
/// (within [`EXPIRE_TIMEOUT`]), so the launcher leaves before Woodpecker's SIGKILL at 20 s.
pub const CANCEL_CONFIRM: Duration = Duration::from_secs(14);
const EXPIRE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Registry {
    ids: Vec<String>,
    /// Names of runners whose create is in flight.
    creating: Vec<String>,
    /// Names whose create ended without telling whether the server exists.
    unconfirmed: Vec<String>,
    /// Each runner's labels (a lease update writes them all), by id and by name.
    labels: BTreeMap<String, BTreeMap<String, String>>,
    /// The lease renewals running, by id.
    renewals: Vec<(String, JoinHandle<()>)>,
    /// Destroying has begun: a create that answers now starts no renewal.
    closing: bool,
}

pub struct LiveRunners {
    provider: Arc<dyn Provider>,
    ids: Arc<Mutex<Registry>>,
    settled: Arc<Notify>,
}

impl LiveRunners {
    pub fn new(provider: Arc<dyn Provider>) -> LiveRunners {
        LiveRunners {
            provider,
            ids: Arc::new(Mutex::new(Registry::default())),
            settled: Arc::new(Notify::new()),
        }
    }

    /// Create a runner in a task of its own and register it the moment its id exists, even
    /// when the caller is dropped (cancelled) meanwhile; its lease is renewed from then on.
    pub async fn create(&self, spec: &RunnerSpec) -> Result<String, ProviderError> {
        let (provider, ids, settled) = (
            self.provider.clone(),
            self.ids.clone(),
            self.settled.clone(),
        );
        let spec = spec.clone();
        {
            let mut reg = lock(&ids);
            reg.creating.push(spec.name.clone());
            reg.labels.insert(spec.name.clone(), spec.labels.clone());
        }
        let task = tokio::spawn(async move {
            let result = provider.create(&spec).await;
            {
                let mut reg = lock(&ids);
                if let Some(i) = reg.creating.iter().position(|n| *n == spec.name) {
                    reg.creating.remove(i);
                }
                match &result {
                    Ok(id) => {
                        reg.ids.push(id.clone());
                        reg.labels.insert(id.clone(), spec.labels.clone());
                        if let Some(lease) = provider.lease().filter(|_| !reg.closing) {
                            let renewal = renew(provider.clone(), id, &spec.labels, lease);
                            reg.renewals.push((id.clone(), renewal));
                        }
                    }
                    Err(ProviderError::Unconfirmed { name, .. }) => {
                        reg.unconfirmed.push(name.clone());
                    }
                    Err(_) => {}
                }
            }
            settled.notify_waiters();
            result
        });
        task.await.unwrap_or_else(|e| {
            Err(ProviderError::Setup {
                action: "create a runner",
                detail: format!("the create task failed: {e}"),
            })
        })
    }

    /// Wait until no create is in flight, at most `grace`; the names still in flight.
    async fn settle(&self, grace: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.settled.notified();
            let creating = lock(&self.ids).creating.clone();
            if creating.is_empty() {
                return creating;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return lock(&self.ids).creating.clone();
            }
        }
    }

    /// Call the moment a runner id exists (creates through [`LiveRunners::create`] do).
    #[cfg(test)]
    pub fn register(&self, id: &str) {
        lock(&self.ids).ids.push(id.to_owned());
    }

    /// The runners registered now.
    pub fn ids(&self) -> Vec<String> {
        lock(&self.ids).ids.clone()
    }

    /// Destroy every registered runner (retrying), and report each one's fate. Once `signal`
    /// fires (SIGINT/SIGTERM), what is not confirmed within [`CANCEL_CONFIRM`] gets its lease
    /// ended instead; a runner whose destroy failed gets it ended too.
    pub async fn destroy_all(
        &self,
        log: &(dyn Fn(&str) + Send + Sync),
        signal: &CancellationToken,
    ) -> Vec<(String, Result<(), ProviderError>)> {
        self.stop_renewals();
        let results = self.destroy_by_deadline(log, signal).await;
        // The next attempt's runner gets renewals again.
        lock(&self.ids).closing = false;
        results
    }

    async fn destroy_by_deadline(
        &self,
        log: &(dyn Fn(&str) + Send + Sync),
        signal: &CancellationToken,
    ) -> Vec<(String, Result<(), ProviderError>)> {
        let deadline = async {
            signal.cancelled().await;
            tokio::time::sleep(CANCEL_CONFIRM).await;
        };
        let mut results = Vec::new();
        let done = tokio::select! {
            () = self.destroy_each(log, &mut results) => true,
            () = deadline => false,
        };
        if done {
            return results;
        }
        // Past the deadline: what is still registered was not confirmed gone.
        let (ids, names) = {
            let mut reg = lock(&self.ids);
            let mut names = std::mem::take(&mut reg.creating);
            names.append(&mut reg.unconfirmed);
            (std::mem::take(&mut reg.ids), names)
        };
        log(&format!(
            "the destroy could not be confirmed within {} s of the signal; ending the lease of {} now so that the next reap deletes it",
            CANCEL_CONFIRM.as_secs(),
            if ids.is_empty() {
                "-".to_owned()
            } else {
                ids.join(", ")
            }
        ));
        for id in ids {
            let ended = self.end_lease(&id, log).await;
            results.push((
                id.clone(),
                Err(ProviderError::Runner {
                    id,
                    action: "confirm its deletion",
                    detail: format!(
                        "not confirmed within {} s of SIGTERM (Woodpecker kills at 20 s); {ended}",
                        CANCEL_CONFIRM.as_secs()
                    ),
                }),
            ));
        }
        for name in names {
            results.push((
                name.clone(),
                Err(ProviderError::Runner {
                    id: name,
                    action: "confirm it is gone",
                    detail: "its create had not answered by the deadline; if it exists, its lease labels let `reap` delete it once the lease ends".into(),
                }),
            ));
        }
        results
    }

    /// The destroys themselves. A runner leaves the registry once its fate is in `results`.
    async fn destroy_each(
        &self,
        log: &(dyn Fn(&str) + Send + Sync),
        results: &mut Vec<(String, Result<(), ProviderError>)>,
    ) {
        let mut lost = self.settle(CREATE_GRACE).await;
        lost.extend(lock(&self.ids).unconfirmed.clone());
        for name in lost {
            // Its create did not answer (in time, or readably): it may exist all the same.
            let found = self.provider.find(&name).await;
            {
                let mut reg = lock(&self.ids);
                reg.creating.retain(|n| *n != name);
                reg.unconfirmed.retain(|n| *n != name);
                if let Ok(Some(id)) = &found {
                    if let Some(labels) = reg.labels.get(&name).cloned() {
                        reg.labels.insert(id.clone(), labels);
                    }
                    reg.ids.push(id.clone());
                }
            }
            match found {
                Ok(Some(id)) => log(&format!(
                    "runner {name} ({id}) was being created; destroying it"
                )),
                // Its fate is unknown: never reported as destroyed (exit 6; its labels let
                // `reap` find it if it appears).
                Ok(None) => results.push((
                    name.clone(),
                    Err(ProviderError::Runner {
                        id: name.clone(),
                        action: "confirm it is gone",
                        detail: "its create did not answer (in time, or readably) and no server of that name exists yet; if it appears, its lease labels let `reap` delete it".into(),
                    }),
                )),
                Err(e) => results.push((
                    name.clone(),
                    Err(ProviderError::Runner {
                        id: name.clone(),
                        action: "confirm it is gone",
                        detail: format!(
                            "its create did not answer (in time, or readably) and the lookup by name failed: {e}"
                        ),
                    }),
                )),
            }
        }
        let ids: Vec<String> = lock(&self.ids).ids.clone();
        for id in ids {
            let mut result = Err(ProviderError::Runner {
                id: id.clone(),
                action: "destroy it",
                detail: "not attempted".into(),
            });
            for attempt in 1..=DESTROY_ATTEMPTS {
                result = self.provider.destroy(&id).await;
                match &result {
                    Ok(()) => {
                        log(&format!("runner {id} destroyed"));
                        break;
                    }
                    Err(e) if attempt < DESTROY_ATTEMPTS => {
                        log(&format!(
                            "destroying runner {id} failed ({e}); retrying ({attempt}/{DESTROY_ATTEMPTS})"
                        ));
                        tokio::time::sleep(DESTROY_BACKOFF * attempt).await;
                    }
                    Err(_) => {}
                }
            }
            if let Err(e) = result {
                // Not gone: a lease that ends now, so the next reap deletes it (exit 6 either way).
                let ended = self.end_lease(&id, log).await;
                result = Err(ProviderError::Runner {
                    id: id.clone(),
                    action: "destroy it",
                    detail: format!("{e}; {ended}"),
                });
            }
            lock(&self.ids).ids.retain(|i| *i != id);
            results.push((id, result));
        }
    }

    /// End runner `id`'s lease now; says what came of it, for the error.
    async fn end_lease(&self, id: &str, log: &(dyn Fn(&str) + Send + Sync)) -> String {
        let Some(labels) = lock(&self.ids).labels.get(id).cloned() else {
            return "its lease labels are unknown here; `reap` deletes it when its lease ends"
                .into();
        };
        match tokio::time::timeout(EXPIRE_TIMEOUT, self.provider.set_lease(id, &labels, 0)).await {
            Ok(Ok(())) => {
                log(&format!(
                    "runner {id}: lease ended now (buildkit-launcher/expires); the next `reap` deletes it"
                ));
                "its lease was ended now, so the next `reap` deletes it".into()
            }
            Ok(Err(e)) => {
                format!("ending its lease failed too ({e}); `reap` deletes it when its lease ends")
            }
            Err(_) => format!(
                "ending its lease got no answer within {} s; `reap` deletes it when its lease ends",
                EXPIRE_TIMEOUT.as_secs()
            ),
        }
    }

    fn stop_renewals(&self) {
        let mut reg = lock(&self.ids);
        reg.closing = true;
        for (_, task) in std::mem::take(&mut reg.renewals) {
            task.abort();
        }
    }
}

/// Renew runner `id`'s lease every third of it until aborted. A failed renewal is tried again
/// after a tenth of the lease (the lease still has two thirds to run).
fn renew(
    provider: Arc<dyn Provider>,
    id: &str,
    labels: &BTreeMap<String, String>,
    lease: Duration,
) -> JoinHandle<()> {
    let (id, labels) = (id.to_owned(), labels.clone());
    tokio::spawn(async move {
        let mut wait = lease / 3;
        loop {
            tokio::time::sleep(wait).await;
            wait = match provider.set_lease(&id, &labels, lease.as_secs()).await {
                Ok(()) => lease / 3,
                Err(e) => {
                    crate::text::to_stderr(&format!(
                        "buildkit-launcher: {}",
                        crate::policy::printable(&format!(
                            "renewing the lease of runner {id} failed: {e}"
                        ))
                    ));
                    lease / 10
                }
            };
        }
    })
}

impl Drop for LiveRunners {
    /// Reached with runners still registered only when a panic unwinds through the build:
    /// destroy them on a thread with a runtime of its own (this one may be unwinding).
    fn drop(&mut self) {
        self.stop_renewals();
        let ids: Vec<String> = std::mem::take(&mut lock(&self.ids).ids);
        if ids.is_empty() {
            return;
        }
        let provider = self.provider.clone();
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            for id in ids {
                match rt.block_on(provider.destroy(&id)) {
                    Ok(()) => crate::text::to_stderr(&format!(
                        "buildkit-launcher: runner {id} destroyed after a crash"
                    )),
                    Err(e) => crate::text::to_stderr(&format!(
                        "buildkit-launcher: {}",
                        crate::policy::printable(&format!(
                            "runner {id} could not be destroyed after a crash: {e}; `reap` will find it"
                        ))
                    )),
                }
            }
        });
        let _ = handle.join();
    }
}

fn lock(ids: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    ids.lock().unwrap_or_else(|e| e.into_inner())
}
