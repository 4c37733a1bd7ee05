//! `buildkit-launcher reap`: delete runners whose lease has expired, and nothing else.

use std::io::Write;

use clap::Args;

use super::provider::ProviderArgs;
use crate::config::Config;
use crate::exit::{Error, Exit};
use crate::provider::unix_now;
use crate::reap::{ReapAction, reap, render};

#[derive(Debug, Args)]
pub struct ReapArgs {
    #[command(flatten)]
    pub provider: ProviderArgs,

    /// List what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ReapArgs, config: &Config, out: &mut dyn Write) -> Result<Exit, Error> {
    let log = super::logger();
    let provider = args.provider.choose(config, log.clone())?.as_dyn();
    let runtime = super::runtime()?;
    let now = unix_now();
    let entries = runtime
        .block_on(reap(provider.as_ref(), now, args.dry_run, log.as_ref()))
        .map_err(super::provider::cloud_error)?;
    if args.json {
        let json = serde_json::to_string_pretty(&entries).expect("reap entries serialize");
        writeln!(out, "{json}").map_err(Error::Output)?;
    } else {
        write!(out, "{}", render(&entries, now)).map_err(Error::Output)?;
    }
    Ok(if entries.iter().any(|e| e.action == ReapAction::Failed) {
        Exit::NotDestroyed
    } else {
        Exit::Success
    })
}
