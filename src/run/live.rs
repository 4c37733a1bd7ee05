//! The runners that exist right now, so that every path out of a build destroys them.

use std::sync::{Arc, Mutex};

use crate::provider::{Provider, ProviderError};

use super::{DESTROY_ATTEMPTS, DESTROY_BACKOFF};

pub struct LiveRunners {
    provider: Arc<dyn Provider>,
    ids: Mutex<Vec<String>>,
}

impl LiveRunners {
    pub fn new(provider: Arc<dyn Provider>) -> LiveRunners {
        LiveRunners {
            provider,
            ids: Mutex::new(Vec::new()),
        }
    }

    /// Call the moment a runner id exists.
    pub fn register(&self, id: &str) {
        self.ids
            .lock()
            .expect("live runners lock")
            .push(id.to_owned());
    }

    /// The runners registered now.
    pub fn ids(&self) -> Vec<String> {
        self.ids.lock().expect("live runners lock").clone()
    }

    /// Destroy every registered runner (retrying), and report each one's fate.
    pub async fn destroy_all(
        &self,
        log: &(dyn Fn(&str) + Send + Sync),
    ) -> Vec<(String, Result<(), ProviderError>)> {
        let ids: Vec<String> = std::mem::take(&mut *self.ids.lock().expect("live runners lock"));
        let mut results = Vec::new();
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
        let ids: Vec<String> =
            std::mem::take(&mut *self.ids.lock().unwrap_or_else(|e| e.into_inner()));
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
