//! The runners that exist right now, so that every path out of a build destroys them.
//!
//! A create runs as a task of its own ([`LiveRunners::create`]): cancelling the attempt (SIGTERM)
//! does not drop a `POST /servers` in flight. The task registers the id the moment the answer
//! comes; [`LiveRunners::destroy_all`] first waits (at most [`CREATE_GRACE`]) for creates still
//! in flight, then looks the ones that did not answer up by name, and destroys everything.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::provider::{Provider, ProviderError, RunnerSpec};

use super::{DESTROY_ATTEMPTS, DESTROY_BACKOFF};

/// How long a cancelled build waits for a create in flight (Woodpecker kills 20 s after
/// SIGTERM; the delete and its confirmation need the rest).
pub const CREATE_GRACE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Registry {
    ids: Vec<String>,
    /// Names of runners whose create is in flight.
    creating: Vec<String>,
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
    /// when the caller is dropped (cancelled) meanwhile.
    pub async fn create(&self, spec: &RunnerSpec) -> Result<String, ProviderError> {
        let (provider, ids, settled) = (
            self.provider.clone(),
            self.ids.clone(),
            self.settled.clone(),
        );
        let spec = spec.clone();
        lock(&ids).creating.push(spec.name.clone());
        let task = tokio::spawn(async move {
            let result = provider.create(&spec).await;
            {
                let mut reg = lock(&ids);
                if let Some(i) = reg.creating.iter().position(|n| *n == spec.name) {
                    reg.creating.remove(i);
                }
                if let Ok(id) = &result {
                    reg.ids.push(id.clone());
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

    /// Destroy every registered runner (retrying), and report each one's fate.
    pub async fn destroy_all(
        &self,
        log: &(dyn Fn(&str) + Send + Sync),
    ) -> Vec<(String, Result<(), ProviderError>)> {
        let lost = self.settle(CREATE_GRACE).await;
        let mut results = Vec::new();
        for name in lost {
            // Its create did not answer in time: it may exist all the same.
            match self.provider.find(&name).await {
                Ok(Some(id)) => {
                    log(&format!(
                        "runner {name} ({id}) was being created; destroying it"
                    ));
                    lock(&self.ids).ids.push(id);
                }
                // Its fate is unknown: never reported as destroyed (exit 6; its labels let
                // `reap` find it if it appears).
                Ok(None) => results.push((
                    name.clone(),
                    Err(ProviderError::Runner {
                        id: name,
                        action: "confirm it is gone",
                        detail: format!(
                            "its create did not answer within {} s and no server of that name exists yet",
                            CREATE_GRACE.as_secs()
                        ),
                    }),
                )),
                Err(e) => results.push((
                    name.clone(),
                    Err(ProviderError::Runner {
                        id: name,
                        action: "confirm it is gone",
                        detail: format!(
                            "its create did not answer within {} s and the lookup by name failed: {e}",
                            CREATE_GRACE.as_secs()
                        ),
                    }),
                )),
            }
        }
        let ids: Vec<String> = std::mem::take(&mut lock(&self.ids).ids);
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
            results.push((id, result));
        }
        results
    }
}

impl Drop for LiveRunners {
    /// Reached with runners still registered only when a panic unwinds through the build:
    /// destroy them on a thread with a runtime of its own (this one may be unwinding).
    fn drop(&mut self) {
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
                    Ok(()) => eprintln!("buildkit-launcher: runner {id} destroyed after a crash"),
                    Err(e) => eprintln!(
                        "buildkit-launcher: runner {id} could not be destroyed after a crash: {e}; `reap` will find it"
                    ),
                }
            }
        });
        let _ = handle.join();
    }
}

fn lock(ids: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    ids.lock().unwrap_or_else(|e| e.into_inner())
}
