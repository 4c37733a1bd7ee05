//! The attempt loop's paths that need a provider to misbehave: a scripted fake provider
//! (house style: fakes are first-class) records every call.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::live::LiveRunners;
use super::*;
use crate::backend::{Backend, BuildRequest, CacheMode};
use crate::config::Config;
use crate::history::{HistoryKey, NoHistory};
use crate::plan::{Facts, PlanRequest};
use crate::provider::{LeaseInfo, ProviderError, Runner, RunnerSpec};
use crate::sizing::Language;

#[derive(Default)]
struct FakeProvider {
    created: Mutex<Vec<String>>,
    destroyed: Mutex<Vec<String>>,
    destroy_calls: AtomicU32,
    /// Destroy fails this many times before it succeeds (u32::MAX: never succeeds).
    destroy_failures: u32,
    /// wait_ready never returns (a runner that never boots).
    hang: bool,
}

#[async_trait]
impl Provider for FakeProvider {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn create(&self, spec: &RunnerSpec) -> Result<String, ProviderError> {
        let id = format!("fake-{}", spec.lease.id);
        self.created.lock().unwrap().push(id.clone());
        Ok(id)
    }
    async fn wait_ready(&self, id: &str) -> Result<Runner, ProviderError> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        Err(ProviderError::Runner {
            id: id.to_owned(),
            action: "boot",
            detail: "scripted failure".into(),
        })
    }
    async fn destroy(&self, id: &str) -> Result<(), ProviderError> {
        let n = self.destroy_calls.fetch_add(1, Ordering::SeqCst);
        if n < self.destroy_failures {
            return Err(ProviderError::Runner {
                id: id.to_owned(),
                action: "delete it",
                detail: "scripted 503".into(),
            });
        }
        self.destroyed.lock().unwrap().push(id.to_owned());
        Ok(())
    }
    async fn list_leases(&self) -> Result<Vec<LeaseInfo>, ProviderError> {
        Ok(Vec::new())
    }
}

fn plan(dir: &std::path::Path) -> BuildPlan {
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\n").unwrap();
    let config = Config::defaults();
    let req = PlanRequest {
        pull_request: false,
        skip: None,
        notes: Vec::new(),
        context: dir.to_owned(),
        key: HistoryKey {
            repo: "org/app".into(),
            dockerfile: "Dockerfile".into(),
            target: None,
            arch: crate::config::Arch::Amd64,
        },
        arch: None,
        platforms: Vec::new(),
        build: BuildRequest {
            backend: Backend::Buildah,
            dockerfile: "Dockerfile".into(),
            target: None,
            build_args: vec![],
            secrets: vec![],
            platform: String::new(),
            registry: None,
            image_repo: "org/app".into(),
            tags: vec!["latest".into()],
            insecure_registry: false,
            cache: CacheMode::Off,
            ..Default::default()
        },
    };
    let facts = Facts {
        key: req.key.clone(),
        spec: None,
        language: Language::Generic,
        language_marker: None,
        history: vec![],
        history_store: "none".into(),
        warnings: vec![],
        context_entries: vec![],
        context_root: req.context.clone(),
        history_unreadable: false,
    };
    BuildPlan::one(Plan::new(&req, &config, &facts).unwrap())
}

async fn run_with(provider: Arc<FakeProvider>, cancel: CancellationToken) -> RunReport {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path());
    let quiet = |_: &str| {};
    let executor = Executor {
        plan: &plan,
        provider,
        credentials: None,
        secrets: vec![],
        history: &NoHistory,
        pipeline: "1".into(),
        connect: None,
        log: &quiet,
        output: &quiet,
    };
    execute(&executor, cancel).await
}

#[tokio::test(start_paused = true)]
async fn a_runner_that_never_boots_is_destroyed_and_is_an_infrastructure_failure() {
    let provider = Arc::new(FakeProvider::default());
    let report = run_with(provider.clone(), CancellationToken::new()).await;
    assert_eq!(report.exit, Exit::Infrastructure);
    assert_eq!(report.attempts.len(), 1, "only OOM is retried");
    assert!(report.attempts[0].destroyed);
    assert_eq!(
        *provider.destroyed.lock().unwrap(),
        *provider.created.lock().unwrap()
    );
}

#[tokio::test(start_paused = true)]
async fn destroy_is_retried_until_it_succeeds() {
    let provider = Arc::new(FakeProvider {
        destroy_failures: 2,
        ..FakeProvider::default()
    });
    let report = run_with(provider.clone(), CancellationToken::new()).await;
    assert_eq!(provider.destroy_calls.load(Ordering::SeqCst), 3);
    assert!(report.attempts[0].destroyed);
    assert_eq!(report.exit, Exit::Infrastructure);
}

#[tokio::test(start_paused = true)]
async fn a_destroy_that_keeps_failing_is_exit_6_and_says_reap_will_find_it() {
    let provider = Arc::new(FakeProvider {
        destroy_failures: u32::MAX,
        ..FakeProvider::default()
    });
    let report = run_with(provider.clone(), CancellationToken::new()).await;
    assert_eq!(report.exit, Exit::NotDestroyed);
    assert_eq!(report.exit_code, 6);
    assert_eq!(
        provider.destroy_calls.load(Ordering::SeqCst),
        DESTROY_ATTEMPTS
    );
    assert!(!report.attempts[0].destroyed);
    let error = report.error.unwrap();
    assert!(
        error.contains("could not be confirmed destroyed") && error.contains("reap"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_while_the_runner_boots_destroys_it_and_is_exit_5() {
    let provider = Arc::new(FakeProvider {
        hang: true,
        ..FakeProvider::default()
    });
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        trigger.cancel();
    });
    let report = run_with(provider.clone(), cancel).await;
    assert_eq!(report.exit, Exit::Cancelled);
    assert_eq!(
        report.attempts[0].outcome,
        report::AttemptOutcome::Cancelled
    );
    assert_eq!(provider.created.lock().unwrap().len(), 1);
    assert_eq!(
        *provider.destroyed.lock().unwrap(),
        *provider.created.lock().unwrap()
    );
}

#[test]
fn a_panic_with_a_live_runner_still_destroys_it() {
    let provider = Arc::new(FakeProvider::default());
    let live = LiveRunners::new(provider.clone());
    live.register("fake-1");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _live = live;
        panic!("a bug in the middle of a build");
    }));
    assert!(result.is_err());
    assert_eq!(*provider.destroyed.lock().unwrap(), ["fake-1"]);
}
