//! `buildkit-launcher simulate`: the sizing what-if over a history file (SIZING.md).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::warn;
use crate::config::{Arch, Config};
use crate::exit::{Error, Exit};
use crate::history::file::read_samples;
use crate::simulate::{SimParams, render, simulate};
use crate::sizing::rules::index_of;
use crate::sizing::{Language, fmt_num};

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// History file to replay (JSON lines: ts, repo, dockerfile, lang, peak_memory_mib,
    /// duration_s), in file order.
    #[arg(long, value_name = "FILE")]
    pub trace: PathBuf,

    /// Percentile of recent peaks (default from the config: 95).
    #[arg(long, value_name = "P")]
    pub percentile: Option<f64>,

    /// Safety margin on the percentile (default from the config: 1.2).
    #[arg(long, value_name = "M")]
    pub margin: Option<f64>,

    /// Successful builds needed before history decides (default from the config: 5).
    #[arg(long, value_name = "N")]
    pub min_samples: Option<usize>,

    /// Recent successful builds looked at (default from the config: 30).
    #[arg(long, value_name = "W")]
    pub window: Option<usize>,

    /// The fixed baseline's server type.
    #[arg(long, value_name = "TIER", default_value = "cx43")]
    pub fixed_tier: String,

    /// Print the figures as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: SimulateArgs, config: &Config, out: &mut dyn Write) -> Result<Exit, Error> {
    let mut policy = config.sizing.clone();
    if let Some(p) = args.percentile {
        check(
            p > 0.0 && p <= 100.0,
            "--percentile",
            p,
            "a number in (0, 100]",
        )?;
        policy.percentile = p;
    }
    if let Some(m) = args.margin {
        check(
            (1.0..=4.0).contains(&m),
            "--margin",
            m,
            "a number between 1 and 4",
        )?;
        policy.margin = m;
    }
    if let Some(n) = args.min_samples {
        check(n >= 1, "--min-samples", n, "at least 1")?;
        policy.min_samples = n;
    }
    if let Some(w) = args.window {
        check(w >= 1, "--window", w, "at least 1")?;
        policy.window = w;
    }
    if policy.min_samples > policy.window {
        return Err(Error::Usage(format!(
            "--min-samples {} is larger than --window {}, so history could never be used",
            policy.min_samples, policy.window
        )));
    }
    if !args.trace.is_file() {
        return Err(Error::Usage(format!(
            "--trace {}: no such file",
            args.trace.display()
        )));
    }

    let ladder = config.ladder(Arch::Amd64);
    // What a runner really costs: its primary IPv4 is billed per started hour too, unless the
    // runners are IPv6-only.
    let ipv4 = if config.hcloud.ipv4 {
        crate::provider::hcloud::catalogue::IPV4_EUR_PER_HOUR
    } else {
        0.0
    };
    let mut prices = Vec::with_capacity(ladder.len());
    for (i, tier) in ladder.iter().enumerate() {
        let price = tier.price_eur_per_hour.ok_or_else(|| {
            Error::Usage(format!(
                "tiers.amd64[{i}] ({}): simulate needs price_eur_per_hour for every amd64 tier",
                tier.name
            ))
        })?;
        prices.push(price);
    }
    let fixed = index_of(ladder, &args.fixed_tier).ok_or_else(|| {
        Error::Usage(format!(
            "--fixed-tier {}: not a tier of the amd64 ladder ({})",
            args.fixed_tier,
            crate::config::tier_names(ladder)
        ))
    })?;
    let defaults = &config.language_defaults.amd64;
    // Config validation guarantees every default names a tier of the ladder.
    let default_for = |lang: Language| index_of(ladder, lang.default_tier(defaults)).unwrap_or(0);

    let mut builds = Vec::new();
    let warnings = read_samples(&args.trace, |s| builds.push(s))?;
    for w in &warnings {
        warn(w);
    }
    if builds.is_empty() {
        return Err(Error::Usage(format!(
            "--trace {}: holds no valid sample ({} line(s) skipped); each line is a JSON sample such as {{\"ts\": \"2026-01-09T14:00:00Z\", \"repo\": \"org/app\", \"dockerfile\": \"Dockerfile\", \"peak_memory_mib\": 3000, \"duration_s\": 120}}",
            args.trace.display(),
            warnings.len()
        )));
    }
    let report = simulate(
        &builds,
        &SimParams {
            policy: policy.clone(),
            ladder,
            prices,
            ipv4_eur_per_hour: ipv4,
            default_for: &default_for,
            fixed,
        },
    );
    if args.json {
        let json = serde_json::to_string_pretty(&report).expect("a report always serializes");
        writeln!(out, "{json}").map_err(Error::Output)?;
    } else {
        let title = format!(
            "{} with p{} × {}, window {}, min {} samples",
            args.trace.display(),
            fmt_num(policy.percentile),
            fmt_num(policy.margin),
            policy.window,
            policy.min_samples
        );
        write!(out, "{}", render(&report, &title, &args.fixed_tier)).map_err(Error::Output)?;
        let prices = if config.hcloud.ipv4 {
            format!("each runner's primary IPv4 included ({ipv4} EUR/h)")
        } else {
            "IPv6-only runners: no primary IPv4 (hcloud.ipv4 = false)".to_owned()
        };
        writeln!(
            out,
            "prices: the config's amd64 reference prices per started hour, {prices}"
        )
        .map_err(Error::Output)?;
    }
    Ok(Exit::Success)
}

fn check(ok: bool, flag: &str, value: impl std::fmt::Display, allowed: &str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!("{flag} {value}: must be {allowed}")))
    }
}
