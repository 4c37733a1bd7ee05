//! `buildkit-launcher plan`: the dry run.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::provider::{ProviderKind, resolve_backend};
use super::{BuildArgs, warn};
use crate::config::Config;
use crate::exit::{Error, Exit};
use crate::plan::BuildPlan;

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub build: BuildArgs,

    /// Where the build would run; with `local`, the plan shows the command a sandbox runner
    /// really runs (buildah where no buildctl is on its PATH).
    #[arg(long, value_enum, default_value = "hcloud")]
    pub provider: ProviderKind,

    /// Local provider: a directory put first on the runner's PATH (repeatable), as for build.
    #[arg(long, value_name = "DIR")]
    pub local_tools: Vec<PathBuf>,

    /// Print the plan as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PlanArgs, config: &Config, out: &mut dyn Write) -> Result<Exit, Error> {
    let mut request = args.build.request()?;
    if let Some(why) = &request.skip {
        writeln!(out, "{why}").map_err(Error::Output)?;
        return Ok(Exit::Success);
    }
    for note in &request.notes {
        eprintln!("note: {}", super::printable(note));
    }
    let note = resolve_backend(args.provider, &args.local_tools, &mut request.build);
    let store = args.build.open_store(config, args.build.credentials()?)?;
    let mut plan = BuildPlan::new(&request, config, store.as_ref(), &mut |w| warn(w))?;
    for one in plan.plans_mut() {
        one.backend_note = note.clone();
    }
    if args.json {
        let json = serde_json::to_string_pretty(&plan).expect("a Plan always serializes");
        writeln!(out, "{json}").map_err(Error::Output)?;
    } else {
        write!(out, "{}", plan.render_human()).map_err(Error::Output)?;
    }
    Ok(Exit::Success)
}
