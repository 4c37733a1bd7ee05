//! `buildkit-launcher golden-image build|list|prune|config`: bake, list and rotate the golden
//! snapshots runners boot from (Hetzner Cloud only; see `crate::golden`), and print the
//! buildkitd.toml a bake would install.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::buildkitd_toml::{self, BuildkitdToml, Target, golden_digest};
use crate::config::{Arch, Config};
use crate::exit::{Error, Exit};
use crate::golden::{self, BakeSettings, Pin, PruneAction};
use crate::provider::hcloud::{DEFAULT_ENDPOINT, HcloudProvider};
use crate::provider::unix_now;

#[derive(Debug, Subcommand)]
pub enum GoldenCommand {
    /// Bake a golden snapshot: a server of the arch's smallest type from the base image,
    /// provisioned (BuildKit pinned and checksummed, buildkitd unit and config, rsync,
    /// bkl-runner-stats) and verified over SSH, cleaned, powered off and snapshotted with the
    /// golden labels. The server is always deleted (exit 6 when that cannot be confirmed).
    Build(BakeArgs),
    /// List the golden snapshots: id, arch, BuildKit version, created, age, protection.
    List(ListArgs),
    /// Delete old golden snapshots: per arch keep the newest N (never the newest one), skip
    /// snapshots protected against deletion, leave every other image alone.
    Prune(PruneArgs),
    /// Print the buildkitd.toml a bake would install, rendered from the launcher config's
    /// `buildkitd` section (registries, mirrors, CA files, frontends, gc); its header holds
    /// the digest a snapshot baked with it carries. Contacts nothing; needs no token.
    Config(ConfigArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Print only the digest (the snapshot label buildkit-launcher/buildkitd-config).
    #[arg(long)]
    pub digest: bool,
}

/// The Hetzner endpoint; the token is read from HCLOUD_TOKEN only.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Hetzner Cloud API endpoint. The token is read from HCLOUD_TOKEN (in a Woodpecker step:
    /// the setting hcloud_token from_secret), never from an argument.
    #[arg(long, value_name = "URL", env = "HCLOUD_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub hcloud_endpoint: String,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BakeArgs {
    /// Architecture of the snapshot (one snapshot per arch). Default: the config's default_arch.
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,

    /// Image the bake server starts from: a Hetzner system image name or an image id.
    #[arg(long, value_name = "NAME", default_value = "debian-12")]
    pub base_image: String,

    /// BuildKit pin file (KEY=VALUE: BUILDKIT_VERSION, BUILDKIT_SHA256_AMD64,
    /// BUILDKIT_SHA256_ARM64, BUILDKIT_URL). Default: golden-image/buildkit.pin, built in.
    #[arg(long, value_name = "FILE")]
    pub pin: Option<PathBuf>,

    /// A base URL holding the BuildKit release tarballs under their release names, used
    /// instead of the pin's BUILDKIT_URL (the checksum is checked all the same).
    #[arg(long, value_name = "URL", env = "BUILDKIT_MIRROR")]
    pub buildkit_mirror: Option<String>,

    /// Hetzner location to try, in order, when one has no capacity (repeatable or
    /// comma-separated). Default: hcloud.locations of the config.
    #[arg(long = "location", value_name = "LOCATION", value_delimiter = ',')]
    pub locations: Vec<String>,

    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this architecture.
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,

    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Golden snapshots to keep per architecture, newest first (at least 1).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub keep: u32,

    /// Only this architecture.
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,

    /// Show what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub api: ApiArgs,
}

pub fn run(command: GoldenCommand, config: &Config, out: &mut dyn Write) -> Result<Exit, Error> {
    let log = super::logger();
    match command {
        GoldenCommand::Build(args) => build(args, config, log, out),
        GoldenCommand::Config(args) => {
            let rendered = render_buildkitd(config)?;
            if args.digest {
                writeln!(out, "{}", rendered.digest).map_err(Error::Output)?;
            } else {
                write!(out, "{}", rendered.text).map_err(Error::Output)?;
            }
            Ok(Exit::Success)
        }
        GoldenCommand::List(args) => {
            let hcloud = provider(&args.api, Vec::new(), config, log.clone())?;
            let snapshots = super::runtime()?
                .block_on(golden::list(&hcloud, args.arch))
                .map_err(super::provider::cloud_error)?;
            // Listing works without the CA files at hand; the comparison then says unknown.
            let current = match golden_digest(&config.buildkitd) {
                Ok(digest) => {
                    for warning in golden::config_warnings(&snapshots, &digest) {
                        log(&format!("warning: {warning}"));
                    }
                    Some(digest)
                }
                Err(e) => {
                    log(&format!(
                        "warning: cannot tell whether the snapshots have the current buildkitd settings: {e}"
                    ));
                    None
                }
            };
            let text =
                golden::render_list(&snapshots, unix_now(), args.api.json, current.as_deref());
            write!(out, "{text}").map_err(Error::Output)?;
            Ok(Exit::Success)
        }
        GoldenCommand::Prune(args) => {
            let hcloud = provider(&args.api, Vec::new(), config, log.clone())?;
            let keep = args.keep as usize;
            let entries = super::runtime()?
                .block_on(golden::prune(
                    &hcloud,
                    args.arch,
                    keep,
                    args.dry_run,
                    log.as_ref(),
                ))
                .map_err(super::provider::cloud_error)?;
            let text = golden::render_prune(&entries, keep, args.api.json);
            write!(out, "{text}").map_err(Error::Output)?;
            Ok(if entries.iter().any(|e| e.action == PruneAction::Failed) {
                Exit::Infrastructure
            } else {
                Exit::Success
            })
        }
    }
}

fn build(
    args: BakeArgs,
    config: &Config,
    log: Arc<dyn Fn(&str) + Send + Sync>,
    out: &mut dyn Write,
) -> Result<Exit, Error> {
    // Everything that can be wrong with the input is found before any server exists.
    let pin = match &args.pin {
        None => Pin::embedded(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Usage(format!("--pin {}: cannot read: {e}", path.display())))?;
            Pin::parse(&text, &path.display().to_string())
                .map_err(|e| Error::Usage(e.to_string()))?
        }
    };
    if args.base_image.trim().is_empty() {
        return Err(Error::Usage("--base-image: the image name is empty".into()));
    }
    if let Some(mirror) = &args.buildkit_mirror
        && !(mirror.starts_with("https://") || mirror.starts_with("http://"))
    {
        return Err(Error::Usage(format!(
            "--buildkit-mirror {mirror}: must be an http:// or https:// URL"
        )));
    }
    let buildkitd = render_buildkitd(config)?;
    let arch = args.arch.unwrap_or(config.default_arch);
    let tier = config
        .ladder(arch)
        .first()
        .cloned()
        .ok_or_else(|| Error::Usage(format!("tiers.{arch}: the ladder is empty")))?;
    let hcloud = Arc::new(provider(
        &args.api,
        args.locations.clone(),
        config,
        log.clone(),
    )?);
    let output = |line: &str| crate::text::to_stderr(&format!("  │ {}", super::printable(line)));
    let settings = BakeSettings {
        arch,
        tier,
        base_image: args.base_image.clone(),
        pin,
        source_commit: source_commit(),
        mirror: args.buildkit_mirror.clone(),
        buildkitd,
        log: log.as_ref(),
        output: &output,
    };
    let runtime = super::runtime()?;
    let report = runtime.block_on(async {
        let cancel = CancellationToken::new();
        super::watch_signals(cancel.clone(), "the bake and deleting its server");
        golden::bake(hcloud, &settings, cancel).await
    });
    if args.api.json {
        let json = serde_json::to_string_pretty(&report).expect("a report serializes");
        writeln!(out, "{json}").map_err(Error::Output)?;
    } else {
        write!(out, "{}", report.render_human()).map_err(Error::Output)?;
    }
    if let Some(error) = &report.error {
        crate::text::to_stderr(&format!(
            "error: {}",
            super::printable(&error.split_whitespace().collect::<Vec<_>>().join(" "))
        ));
    }
    Ok(report.exit)
}

/// The golden image's buildkitd.toml from the launcher config; a CA file that cannot be read
/// is bad input (exit 2).
fn render_buildkitd(config: &Config) -> Result<BuildkitdToml, Error> {
    buildkitd_toml::render(&config.buildkitd, Target::GOLDEN)
        .map_err(|e| Error::Usage(e.to_string()))
}

/// An hcloud provider for the golden-image commands; nothing is contacted yet.
fn provider(
    api: &ApiArgs,
    locations: Vec<String>,
    config: &Config,
    log: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<HcloudProvider, Error> {
    let token = super::plugin::secret_env(&["HCLOUD_TOKEN", "PLUGIN_HCLOUD_TOKEN"]).ok_or_else(
        || {
            Error::Usage(
                "HCLOUD_TOKEN is not set: golden-image needs a Hetzner Cloud API token (read & write) in that environment variable".into(),
            )
        },
    )?;
    let locations = super::provider::chosen_locations(&locations, config)?;
    super::provider::hcloud_provider(config, &api.hcloud_endpoint, token, locations, None, log)
}

/// The commit of the golden-image definition: `CI_COMMIT_SHA`, else `git rev-parse HEAD` here,
/// else `unknown`.
fn source_commit() -> String {
    if let Some(sha) = crate::environment::var("CI_COMMIT_SHA")
        && !sha.trim().is_empty()
    {
        return sha.trim().to_owned();
    }
    std::process::Command::new("git")
        .env_clear()
        .envs(crate::environment::for_child())
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
