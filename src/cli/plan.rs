//! `buildkit-launcher plan`: the dry run.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::provider::{ProviderKind, resolve_backend};
use super::{BuildArgs, warn};
use crate::config::Config;
use crate::exit::{Error, Exit};
use crate::plan::{BuildPlan, Plan};
use crate::provider::hcloud::{DEFAULT_ENDPOINT, HcloudProvider};

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

    /// Hetzner Cloud API endpoint, asked only when HCLOUD_TOKEN is set (then the prices and the
    /// rung's candidates come from the API: GET /server_types, GET /pricing).
    #[arg(long, value_name = "URL", env = "HCLOUD_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub hcloud_endpoint: String,
}

pub fn run(args: PlanArgs, config: &Config, out: &mut dyn Write) -> Result<Exit, Error> {
    let mut request = args.build.request()?;
    if let Some(why) = &request.skip {
        writeln!(out, "{why}").map_err(Error::Output)?;
        return Ok(Exit::Success);
    }
    for note in &request.notes {
        crate::text::to_stderr(&format!("note: {}", super::printable(note)));
    }
    let note = resolve_backend(args.provider, &args.local_tools, &mut request.build);
    let store = args.build.open_store(config, args.build.credentials()?)?;
    let mut plan = BuildPlan::new(&request, config, store.as_ref(), &mut |w| warn(w))?;
    for one in plan.plans_mut() {
        one.backend_note = note.clone();
    }
    if args.provider == ProviderKind::Hcloud
        && let Some(token) = super::plugin::secret_env(&["HCLOUD_TOKEN", "PLUGIN_HCLOUD_TOKEN"])
    {
        with_api_prices(&mut plan, config, &args.hcloud_endpoint, token)?;
    }
    if args.json {
        let json = serde_json::to_string_pretty(&plan).expect("a Plan always serializes");
        writeln!(out, "{json}").map_err(Error::Output)?;
    } else {
        write!(out, "{}", plan.render_human()).map_err(Error::Output)?;
    }
    Ok(Exit::Success)
}

/// With a token the plan's prices and the rung's candidates are the API's (two read-only
/// requests: `GET /server_types`, `GET /pricing`); without one nothing is contacted. An API that
/// cannot be asked is a warning: the plan keeps its reference prices, and says so.
fn with_api_prices(
    plan: &mut BuildPlan,
    config: &Config,
    endpoint: &str,
    token: String,
) -> Result<(), Error> {
    let log = super::logger();
    let hcloud = super::provider::hcloud_provider(
        config,
        endpoint,
        token,
        config.hcloud.locations.clone(),
        None,
        log,
    )?
    .with_ipv4(config.hcloud.ipv4);
    super::runtime()?.block_on(async {
        for one in plan.plans_mut() {
            api_prices(&hcloud, one, config).await?;
        }
        Ok(())
    })
}

/// One platform's plan at the API's prices, held to the ceiling as a build holds it (the
/// build refuses what the plan warns about here).
async fn api_prices(
    hcloud: &HcloudProvider,
    plan: &mut Plan,
    config: &Config,
) -> Result<(), Error> {
    let mut needed = vec![plan.tier.clone()];
    needed.extend(plan.retry_server.as_ref().map(|t| t.name.clone()));
    let needed: Vec<&str> = needed.iter().map(String::as_str).collect();
    let check = match hcloud
        .check_ladder_for(plan.arch, config.ladder(plan.arch), &needed)
        .await
    {
        Ok(check) => check,
        Err(e) => {
            warn(&format!(
                "the Hetzner API could not be asked for prices ({e}); the plan shows reference prices"
            ));
            return Ok(());
        }
    };
    let policy = crate::policy::Policy::current()?;
    let location = check.prices.get(&plan.tier).map(|(_, l)| l.clone());
    if let Some((price, location)) = check.prices.get(&plan.tier) {
        if policy.max_eur_per_hour.is_some_and(|max| *price > max) {
            warn(&format!(
                "server type {}: the API's price in {location}, {price} EUR/h, is above the ceiling, so a build would refuse it: {}",
                plan.tier,
                policy.describe_ceiling(plan.arch)
            ));
        }
        plan.use_api_price(*price, location);
    }
    if let Some(retry) = &plan.retry_server {
        let price = check.prices.get(&retry.name).map(|(p, l)| (*p, l.as_str()));
        plan.hold_retry_to_ceiling(
            price,
            policy.max_eur_per_hour,
            &policy.describe_ceiling(plan.arch),
        );
    }
    super::build::api_costs(hcloud, plan, config, location.as_deref()).await;
    Ok(())
}
