//! `buildkit-launcher build`: plan, then execute that plan on a throwaway runner.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::{BuildArgs, warn};
use crate::config::Config;
use crate::exit::{Error, Exit};
use crate::plan::{Plan, gather};
use crate::provider::Provider;
use crate::provider::local::{DEFAULT_BASE, LocalProvider};
use crate::registry::Credentials;
use crate::run::{Executor, execute};
use crate::transport::session::ConnectPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// Hetzner Cloud (production).
    Hcloud,
    /// A sandboxed runner on this machine (needs root).
    Local,
}

#[derive(Debug, Args)]
pub struct BuildCommandArgs {
    #[command(flatten)]
    pub build: BuildArgs,

    /// Where the runner comes from.
    #[arg(long, value_enum, default_value = "hcloud")]
    pub provider: ProviderKind,

    /// Registry user name; the password is read from the REGISTRY_PASSWORD environment
    /// variable only (never from an argument, which other users could see).
    #[arg(long, value_name = "NAME", env = "REGISTRY_USERNAME")]
    pub registry_user: Option<String>,

    /// Write the run report (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Print the run report as JSON on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,

    /// CI pipeline number, part of the runner's name.
    #[arg(
        long,
        value_name = "N",
        env = "CI_PIPELINE_NUMBER",
        default_value = "0"
    )]
    pub pipeline: String,

    /// Local provider: divide each tier's memory by this for the runner's memory cgroup
    /// (16: cx23 → 256 MiB), so out-of-memory and the retry happen for real on a small machine.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub local_memory_scale: u64,

    /// Local provider: a directory to put first on the runner's PATH (repeatable), e.g. one
    /// holding a `buildctl`.
    #[arg(long, value_name = "DIR")]
    pub local_tools: Vec<PathBuf>,

    /// Local provider: where runner directories live.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BASE)]
    pub local_dir: PathBuf,
}

pub fn run(args: BuildCommandArgs, config: &Config, out: &mut dyn Write) -> Result<Exit, Error> {
    // Everything that can be wrong with the input is found before anything is spawned.
    let request = args.build.request()?;
    let store = args.build.store().open()?;
    let facts = gather(&request, config, store.as_ref())?;
    for warning in &facts.warnings {
        warn(warning);
    }
    let plan = Plan::new(&request, config, &facts)?;
    let secrets = read_secrets(&plan)?;
    let credentials = read_credentials(args.registry_user.as_deref())?;
    let provider: Arc<dyn Provider> = match args.provider {
        ProviderKind::Hcloud => {
            return Err(Error::Usage(
                "--provider hcloud is not available yet; use --provider local".into(),
            ));
        }
        ProviderKind::Local => {
            LocalProvider::check_host().map_err(|e| Error::Usage(e.to_string()))?;
            for dir in &args.local_tools {
                if !dir.is_dir() {
                    return Err(Error::Usage(format!(
                        "--local-tools {}: not a directory",
                        dir.display()
                    )));
                }
            }
            let tools = args
                .local_tools
                .iter()
                .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone()))
                .collect();
            Arc::new(LocalProvider::new(
                args.local_dir.clone(),
                args.local_memory_scale,
                tools,
            ))
        }
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))?;
    let log = |line: &str| eprintln!("buildkit-launcher: {line}");
    let output = |line: &str| eprintln!("  │ {line}");
    let report = runtime.block_on(async {
        let cancel = CancellationToken::new();
        watch_signals(cancel.clone());
        log(&format!(
            "building {} on {} ({}, {})",
            plan.history.key,
            plan.tier,
            plan.arch,
            args.provider_name()
        ));
        let executor = Executor {
            plan: &plan,
            provider,
            credentials,
            secrets,
            history: store.as_ref(),
            pipeline: args.pipeline.clone(),
            connect: ConnectPolicy::default(),
            log: &log,
            output: &output,
        };
        execute(&executor, cancel).await
    });

    let json = serde_json::to_string_pretty(&report).expect("a report always serializes");
    if let Some(path) = &args.report {
        std::fs::write(path, format!("{json}\n"))
            .map_err(|e| Error::Usage(format!("--report {}: cannot write: {e}", path.display())))?;
    }
    if args.json {
        writeln!(out, "{json}").map_err(Error::Output)?;
    } else {
        write!(out, "{}", report.render_human()).map_err(Error::Output)?;
    }
    Ok(report.exit)
}

impl BuildCommandArgs {
    fn provider_name(&self) -> &'static str {
        match self.provider {
            ProviderKind::Hcloud => "hcloud",
            ProviderKind::Local => "local runner",
        }
    }
}

/// SIGINT and SIGTERM cancel the build; the runner is destroyed before the process exits.
fn watch_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        eprintln!(
            "buildkit-launcher: {name} received; stopping the build and destroying the runner"
        );
        cancel.cancel();
    });
}

/// `--secret id=X,env=VAR`: the values, read now, so a missing one fails before any runner.
fn read_secrets(plan: &Plan) -> Result<Vec<(String, Zeroizing<String>)>, Error> {
    plan.build
        .secrets
        .iter()
        .map(|s| match std::env::var(&s.env) {
            Ok(value) => Ok((s.id.clone(), Zeroizing::new(value))),
            Err(_) => Err(Error::Usage(format!(
                "--secret id={},env={}: the environment variable {} is not set",
                s.id, s.env, s.env
            ))),
        })
        .collect()
}

fn read_credentials(user: Option<&str>) -> Result<Option<Credentials>, Error> {
    let password = std::env::var("REGISTRY_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    match (user, password) {
        (Some(user), Some(password)) => Ok(Some(Credentials {
            username: user.to_owned(),
            password: Zeroizing::new(password),
        })),
        (Some(_), None) => Err(Error::Usage(
            "--registry-user is set but REGISTRY_PASSWORD is not; set the password in that environment variable".into(),
        )),
        (None, Some(_)) => Err(Error::Usage(
            "REGISTRY_PASSWORD is set but --registry-user (REGISTRY_USERNAME) is not".into(),
        )),
        (None, None) => Ok(None),
    }
}
