//! `buildkit-launcher plan`: the dry run.

use std::io::Write;

use clap::Args;

use super::{BuildArgs, warn};
use crate::config::Config;
use crate::exit::{Error, Exit};
use crate::plan::{Plan, gather, render_human};

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub build: BuildArgs,

    /// Print the plan as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PlanArgs, config: &Config, out: &mut dyn Write) -> Result<Exit, Error> {
    let request = args.build.request()?;
    let store = args.build.open_store(args.build.credentials()?)?;
    let facts = gather(&request, config, store.as_ref())?;
    for warning in &facts.warnings {
        warn(warning);
    }
    let plan = Plan::new(&request, config, &facts)?;
    if args.json {
        let json = serde_json::to_string_pretty(&plan).expect("a Plan always serializes");
        writeln!(out, "{json}").map_err(Error::Output)?;
    } else {
        write!(out, "{}", render_human(&plan)).map_err(Error::Output)?;
    }
    Ok(Exit::Success)
}
