//! One attempt on one tier: runner up, context over, build, stats. Destroying is the caller's.

use std::time::{Duration, Instant};

use crate::backend::classify::Verdict;
use crate::backend::{self, Backend, RemotePaths};
use crate::config::Tier;
use crate::provider::cloud_init::UserData;
use crate::provider::keys::BuildKeys;
use crate::provider::{Lease, RunnerSpec, labels, runner_name};
use crate::transport::session::{Connection, RemoteExit};

use super::live::LiveRunners;
use super::report::AttemptReport;
use super::{Platform, lease_seconds};

pub struct Done {
    pub verdict: Verdict,
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error(transparent)]
    Provider(#[from] crate::provider::ProviderError),
    #[error(transparent)]
    Transport(#[from] crate::transport::session::TransportError),
    #[error(transparent)]
    Keys(#[from] crate::provider::keys::KeyError),
}

pub async fn run(
    p: &Platform<'_>,
    tier: &Tier,
    live: &LiveRunners,
    record: &mut AttemptReport,
) -> Result<Done, AttemptError> {
    let (ex, plan) = (p.ex, p.plan);
    let phase = Instant::now();
    // A provider that renews leases (Hetzner) gets its short lease; else one covering the build.
    let lease = Lease::new(
        ex.provider
            .lease()
            .map_or_else(|| lease_seconds(plan), |l| l.as_secs()),
    );
    let keys = BuildKeys::generate(&lease.id)?;
    let spec = RunnerSpec {
        name: runner_name(&plan.history.key.repo, &ex.pipeline, &lease.id),
        labels: labels(&lease, &plan.build.image_repo, &tier.name),
        lease,
        tier: tier.clone(),
        arch: plan.arch,
        user_data: UserData::for_build(&keys).render(),
    };
    // Registered for destruction by `live` the moment the id exists, even if this attempt is
    // cancelled while the create is in flight.
    let id = live.create(&spec).await?;
    record.runner = Some(id.clone());
    record.substitute = ex.provider.substitute(&id);
    (p.log)(&format!(
        "runner {id} ({}) created; waiting for it",
        spec.name
    ));
    let runner = ex.provider.wait_ready(&id).await?;
    record.seconds.spawn = phase.elapsed().as_secs_f64();

    let phase = Instant::now();
    let log = p.log.as_ref();
    let mut progress = |line: String| log(&line);
    let connect = Connection::connect(
        &runner,
        &keys.client.private_openssh,
        &keys.host.public_openssh,
        ex.connect.unwrap_or_else(|| ex.provider.connect_policy()),
        &mut progress,
    );
    // While SSH waits, the provider watches the boot: a failed create ends the attempt now,
    // not after the whole SSH budget.
    let watch = async {
        match ex.provider.watch_boot(&id).await {
            Ok(()) => std::future::pending().await,
            Err(e) => e,
        }
    };
    let conn = tokio::select! {
        conn = connect => conn?,
        failed = watch => return Err(failed.into()),
    };
    record.seconds.ssh = phase.elapsed().as_secs_f64();
    (p.log)(&format!(
        "connected to {} (host key verified)",
        conn.address()
    ));

    // The runner says where its home and work directory are (the golden image and sandbox
    // runners differ); the provider's values are the fallback.
    // Close the connection on every path out of here; the runner is destroyed anyway.
    let (home, workdir) = match runner_paths(&conn, &runner.home, &runner.workdir).await {
        Ok(paths) => paths,
        Err(e) => {
            conn.close().await;
            return Err(e.into());
        }
    };
    let result = build_over(p, &conn, &workdir, &home, record).await;
    conn.close().await;
    result
}

async fn build_over(
    p: &Platform<'_>,
    conn: &Connection,
    workdir: &str,
    home: &str,
    record: &mut AttemptReport,
) -> Result<Done, AttemptError> {
    let (ex, plan) = (p.ex, p.plan);
    let paths = RemotePaths::new(workdir);
    let phase = Instant::now();
    // Credentials and secrets travel over stdin into 0600 files: never in an argument list.
    if let (Some(credentials), Some(registry)) = (&ex.credentials, &plan.build.registry) {
        let config = credentials.docker_config(registry);
        conn.put_private_file(&format!("{home}/.docker/config.json"), config.as_bytes())
            .await?;
    }
    for (id, value) in &ex.secrets {
        conn.put_private_file(&paths.secret(id), value.as_bytes())
            .await?;
    }
    let bytes: u64 = plan
        .context_entries
        .iter()
        .filter_map(|e| plan.context_root.join(e).symlink_metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    (p.log)(&format!(
        "sending the context: {} entries, {:.1} MB",
        plan.context_entries.len(),
        bytes as f64 / 1e6
    ));
    let remote_context = paths.context();
    let sync = conn.sync(&plan.context_root, &plan.context_entries, &remote_context);
    tokio::pin!(sync);
    // A large context takes a while: say so every 15 s, so the log never looks stuck.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + std::time::Duration::from_secs(15),
        std::time::Duration::from_secs(15),
    );
    let stats = loop {
        tokio::select! {
            result = &mut sync => break result?,
            _ = tick.tick() => (p.log)(&format!(
                "still sending the context ({:.0} s)",
                phase.elapsed().as_secs_f64()
            )),
        }
    };
    record.seconds.sync = phase.elapsed().as_secs_f64();
    (p.log)(&format!(
        "context sent: {} entries, {} bytes",
        stats.entries, stats.bytes
    ));

    let mut request = plan.build.clone();
    if request.backend == Backend::Buildctl && !has_buildctl(conn).await {
        if request.by_digest {
            // buildah cannot push by digest for the index: this runner cannot do its share.
            return Ok(Done {
                verdict: Verdict::Lost {
                    reason: "buildctl is not on the runner, and a platform of several needs it (the image is pushed by digest for the index)".into(),
                },
                digest: None,
            });
        }
        (p.log)("buildctl is not on the runner; building with buildah");
        request.backend = Backend::Buildah;
    }
    if request.backend == Backend::Buildctl {
        let ready = backend::buildctl::wait_ready(
            conn,
            plan.buildkitd_ready_timeout_s,
            &request.platform,
            p.log.as_ref(),
        );
        // A daemon the provider sees end (the local runner's) fails the attempt now, not
        // after the whole wait.
        let watch = async {
            match &record.runner {
                Some(id) => match ex.provider.watch_daemon(id).await {
                    Ok(()) => std::future::pending().await,
                    Err(e) => e,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ready = ready => if let Err(reason) = ready {
                return Ok(Done {
                    verdict: Verdict::Lost { reason },
                    digest: None,
                });
            },
            ended = watch => return Err(ended.into()),
        }
    }
    let script = backend::script(&request, &paths);
    let phase = Instant::now();
    // Cache-export steps are watched over the whole output, not only its last lines: a long
    // mode=max export pushes its step line out of the tail.
    let exports = std::sync::Mutex::new(backend::cache_exports::CacheExports::default());
    let output = p.output.as_ref();
    let sink = |line: &str| {
        exports.lock().expect("cache exports lock").feed(line);
        output(line)
    };
    let build = conn.run(&script, None, &sink);
    let (exit, tail) = match plan.timeout_minutes {
        Some(minutes) => match tokio::time::timeout(Duration::from_secs(minutes * 60), build).await
        {
            Ok(result) => result?,
            Err(_) => {
                record.seconds.build = phase.elapsed().as_secs_f64();
                return Ok(Done {
                    verdict: Verdict::Failed {
                        reason: format!("the build ran longer than its {minutes}-minute timeout"),
                    },
                    digest: None,
                });
            }
        },
        None => build.await?,
    };
    record.seconds.build = phase.elapsed().as_secs_f64();

    let (peak, oom_kills) = if matches!(exit, RemoteExit::Lost(_)) {
        (None, None)
    } else {
        runner_stats(conn).await
    };
    record.peak_memory_mib = peak;
    let verdict = backend::classify::classify_request(&exit, &tail, oom_kills, &request);
    if verdict == Verdict::Ok && request.backend == Backend::Buildctl {
        let exports = exports.into_inner().expect("cache exports lock");
        for failure in exports.failures() {
            let warning = format!("the build cache could not be written: {failure}");
            (p.log)(&format!("warning: {warning}"));
            record.warnings.push(warning);
        }
    }
    let digest = match (&verdict, &plan.build.registry) {
        (Verdict::Ok, Some(_)) => read_digest(conn, &paths).await,
        _ => None,
    };
    Ok(Done { verdict, digest })
}

/// The first command on the runner: its home and work directory. A runner that refuses
/// commands (an sshd whose PAM wants a password change, for one) fails the attempt here, with
/// what it said, instead of failing the build later as if the Dockerfile were wrong.
async fn runner_paths(
    conn: &Connection,
    home: &str,
    workdir: &str,
) -> Result<(String, String), crate::transport::session::TransportError> {
    let script = format!(
        "printf '%s\\n%s\\n' \"$HOME\" \"${{BKL_RUNNER_WORKDIR:-{}}}\"",
        workdir
    );
    let text = conn
        .run_checked("run a first command on the runner", &script, None)
        .await?;
    let mut lines = text.lines().map(str::trim).filter(|l| l.starts_with('/'));
    Ok(match (lines.next(), lines.next()) {
        (Some(h), Some(w)) => (h.to_owned(), w.to_owned()),
        _ => (home.to_owned(), workdir.to_owned()),
    })
}

async fn has_buildctl(conn: &Connection) -> bool {
    conn.run_checked("look for buildctl", "command -v buildctl", None)
        .await
        .is_ok()
}

/// `bkl-runner-stats`: peak memory and OOM kills since the runner started.
async fn runner_stats(conn: &Connection) -> (Option<u64>, Option<u64>) {
    let Ok(text) = conn
        .run_checked(
            "read the runner's memory statistics",
            "bkl-runner-stats",
            None,
        )
        .await
    else {
        return (None, None);
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text.trim()) else {
        return (None, None);
    };
    (
        value["peak_memory_mib"].as_u64(),
        value["oom_kills"].as_u64(),
    )
}

async fn read_digest(conn: &Connection, paths: &RemotePaths) -> Option<String> {
    let text = conn
        .run_checked(
            "read the build's metadata file",
            &format!(
                "cat {}",
                crate::transport::session::shell_quote(&paths.metadata())
            ),
            None,
        )
        .await
        .ok()?;
    let value: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    value["containerimage.digest"]
        .as_str()
        .filter(|d| d.starts_with("sha256:"))
        .map(str::to_owned)
}
