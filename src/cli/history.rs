//! `buildkit-launcher history show`: a key's recent samples and what they size.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::args::{history_key, open_store};
use crate::config::Config;
use crate::exit::{Error, Exit};
use crate::history::{HistoryKey, Sample, StoreSpec};
use crate::sizing::rules::{history_need, smallest_fitting};

#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// Show the recent successful builds of a key, their percentile and the tier it selects.
    Show(ShowArgs),
    /// List every key of a history file: builds, tier, peak memory trend, cost per week.
    List(super::history_list::ListArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Build context (its directory name is the repo when neither CI_REPO nor --project is set).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub context: PathBuf,
    /// Project name for the history key when CI_REPO is not set.
    #[arg(long, value_name = "NAME")]
    pub project: Option<String>,
    /// Dockerfile path relative to the context.
    #[arg(long, value_name = "FILE", default_value = "Dockerfile")]
    pub dockerfile: String,
    /// Build stage (part of the key).
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// file:PATH, registry or none (default at a terminal: the state-directory file).
    #[arg(long, value_name = "STORE")]
    pub history: Option<StoreSpec>,
    #[command(flatten)]
    pub access: RegistryAccess,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// How to reach a registry that keeps history (`--history registry`).
#[derive(Debug, Args)]
pub struct RegistryAccess {
    /// The registry, for --history registry.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub registry: Option<String>,
    /// The registry speaks plain HTTP.
    #[arg(long)]
    pub insecure_registry: bool,
    /// Registry user; the password comes from REGISTRY_PASSWORD.
    #[arg(long, value_name = "NAME", env = "REGISTRY_USERNAME")]
    pub registry_user: Option<String>,
}

#[derive(Serialize)]
struct Shown<'a> {
    store: String,
    key: &'a HistoryKey,
    samples: &'a [Sample],
    percentile_mib: Option<u64>,
    required_mib: Option<u64>,
    tier: Option<String>,
}

pub fn run(cmd: HistoryCommand, config: &Config, out: &mut dyn Write) -> Result<Exit, Error> {
    let args = match cmd {
        HistoryCommand::Show(args) => args,
        HistoryCommand::List(args) => return super::history_list::run(args, config, out),
    };
    let credentials = super::args::registry_credentials(args.access.registry_user.as_deref())?;

    let spec = args
        .history
        .clone()
        .unwrap_or_else(StoreSpec::terminal_default);
    let store = open_store(
        &spec,
        args.access.registry.as_deref(),
        args.access.insecure_registry,
        credentials,
        &config.registry.history,
    )?;
    let key = history_key(
        &args.context,
        args.project.as_deref(),
        &args.dockerfile,
        args.target.as_deref(),
    );
    let policy = &config.sizing;
    let recent = store.recent(&key, policy.window)?;
    for w in &recent.warnings {
        super::warn(w);
    }
    let peaks: Vec<u64> = recent.samples.iter().map(|s| s.peak_memory_mib).collect();
    let need = history_need(&peaks, policy);
    let ladder = config.ladder(config.default_arch);
    let tier = need.filter(|_| !ladder.is_empty()).map(|n| {
        let i = smallest_fitting(ladder, n.required_mib, policy.reserved_mib)
            .unwrap_or(ladder.len() - 1);
        ladder[i].name.clone()
    });
    let shown = Shown {
        store: store.describe(),
        key: &key,
        samples: &recent.samples,
        percentile_mib: need.map(|n| n.percentile_mib),
        required_mib: need.map(|n| n.required_mib.ceil() as u64),
        tier,
    };
    if args.json {
        let json = serde_json::to_string_pretty(&shown).expect("history serializes");
        writeln!(out, "{json}").map_err(Error::Output)?;
        return Ok(Exit::Success);
    }
    let mut text = format!(
        "history of {key} in {}: {} successful build(s) (window {})\n",
        shown.store,
        recent.samples.len(),
        policy.window
    );
    if !recent.samples.is_empty() {
        text.push_str("\n  when                   tier     peak MiB   seconds\n");
        for s in &recent.samples {
            text.push_str(&format!(
                "  {:<22} {:<8} {:>8} {:>9.1}\n",
                s.ts,
                s.tier.as_deref().unwrap_or("-"),
                s.peak_memory_mib,
                s.duration_s
            ));
        }
        text.push('\n');
    }
    match (need, &shown.tier) {
        (Some(n), Some(tier)) => text.push_str(&format!(
            "p{} = {} MiB × {} = {} MiB → {tier} on {}\n",
            crate::sizing::fmt_num(policy.percentile),
            n.percentile_mib,
            crate::sizing::fmt_num(policy.margin),
            n.required_mib.ceil(),
            config.default_arch
        )),
        _ => text.push_str(&format!(
            "fewer than {} successful builds: the spec file or the language default decides\n",
            policy.min_samples
        )),
    }
    write!(out, "{text}").map_err(Error::Output)?;
    Ok(Exit::Success)
}
