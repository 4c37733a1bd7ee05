//! `buildkit-launcher check`: findings with severity and a fix each; non-zero on high or critical.

use std::io::Write;

use clap::Args;

use super::provider::{Chosen, ProviderArgs};
use crate::check::{CheckInputs, Severity, render, run as check_run};
use crate::config::Config;
use crate::exit::{Error, Exit};
use crate::history::StoreSpec;

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub provider: ProviderArgs,

    /// Registry to check (reachable, credentials accepted), HOST[:PORT].
    #[arg(long, value_name = "HOST[:PORT]")]
    pub registry: Option<String>,

    /// The registry speaks plain HTTP.
    #[arg(long)]
    pub insecure_registry: bool,

    /// Image repository whose permissions to check: push to it and to its cache, read and
    /// write its history location, with the credentials given (as a build of it would).
    #[arg(long, value_name = "PATH")]
    pub repo: Option<String>,

    /// Registry user; the password comes from REGISTRY_PASSWORD.
    #[arg(long, value_name = "NAME", env = "REGISTRY_USERNAME")]
    pub registry_user: Option<String>,

    /// History store to check: file:PATH, registry or none.
    #[arg(long, value_name = "STORE")]
    pub history: Option<StoreSpec>,

    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: CheckArgs, config: &Config, out: &mut dyn Write) -> Result<Exit, Error> {
    let log = super::logger();
    let Chosen::Hcloud(hcloud) = args.provider.choose(config, log)? else {
        return Err(Error::Usage(
            "check looks at Hetzner Cloud: use --provider hcloud (the default)".into(),
        ));
    };
    let credentials = super::args::registry_credentials(args.registry_user.as_deref())?;

    let store = match &args.history {
        Some(spec) => Some(super::args::open_store(
            spec,
            args.registry.as_deref(),
            args.insecure_registry,
            credentials.clone(),
            &config.registry.history,
        )?),
        None => None,
    };
    let runtime = super::runtime()?;
    let findings = runtime.block_on(check_run(
        &hcloud,
        &CheckInputs {
            config,
            registry: args.registry.as_deref(),
            repo: args.repo.as_deref(),
            insecure_registry: args.insecure_registry,
            credentials: credentials.as_ref(),
            history: store.as_deref(),
        },
    ));
    if args.json {
        let json = serde_json::to_string_pretty(&findings).expect("findings serialize");
        writeln!(out, "{json}").map_err(Error::Output)?;
    } else {
        // ✓/✗ at a terminal, words in a CI log.
        use std::io::IsTerminal;
        let symbols = std::io::stdout().is_terminal() && crate::environment::var("CI").is_none();
        write!(out, "{}", render(&findings, symbols)).map_err(Error::Output)?;
    }
    Ok(if findings.iter().any(|f| f.severity >= Severity::High) {
        Exit::Infrastructure
    } else {
        Exit::Success
    })
}
