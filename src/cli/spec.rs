//! `buildkit-launcher spec check [FILE]`: evaluate a spec and say what it asks for.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use crate::config::Config;
use crate::exit::{Error, Exit};
use crate::sizing::LoadedSpec;
use crate::sizing::spec::repository_root;

#[derive(Debug, Subcommand)]
pub enum SpecCommand {
    /// Check a spec file against the contract (schemas/build_spec.ncl) and the tier ladder,
    /// and print the tier it selects.
    Check {
        /// The spec file (default: .build-spec.ncl in the current directory).
        file: Option<PathBuf>,
    },
}

pub fn run(cmd: SpecCommand, config: &Config, out: &mut dyn Write) -> Result<Exit, Error> {
    let SpecCommand::Check { file } = cmd;
    let file = file.unwrap_or_else(|| PathBuf::from(&config.spec.file));
    if !file.is_file() {
        return Err(Error::Usage(format!("{}: no such file", file.display())));
    }
    let dir = std::path::absolute(&file)
        .ok()
        .and_then(|f| f.parent().map(|p| p.to_owned()))
        .unwrap_or_else(|| PathBuf::from("."));
    let spec = LoadedSpec::load(&file, &repository_root(&dir, None), config.spec_timeout())?;
    let arch = spec.spec.arch().unwrap_or(config.default_arch);
    let ladder = config.ladder(arch);
    let chosen = spec.choose(arch, ladder, config.ceiling.as_deref())?;
    let spec_json = serde_json::to_string(&spec.spec).expect("a spec always serializes");
    let selects = match chosen {
        Some(i) => format!("selects {} on {arch}", ladder[i].name),
        None => "sets no size: history or the language default decides".to_owned(),
    };
    writeln!(out, "{}: ok, {selects} {spec_json}", file.display()).map_err(Error::Output)?;
    Ok(Exit::Success)
}
