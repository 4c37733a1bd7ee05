//! `buildkit-launcher build`: plan, then execute that plan on a throwaway runner.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::provider::{Chosen, ProviderArgs};
use super::{BuildArgs, warn};
use crate::config::Config;
use crate::exit::{Error, Exit};
use crate::plan::{BuildPlan, Plan};
use crate::provider::hcloud::{HcloudProvider, LadderError};
use crate::run::{Executor, execute};

#[derive(Debug, Args)]
pub struct BuildCommandArgs {
    #[command(flatten)]
    pub build: BuildArgs,

    #[command(flatten)]
    pub provider: ProviderArgs,

    /// Skip the cheap reap of expired runners that every build does first.
    #[arg(long, help_heading = "Run")]
    pub no_reap: bool,

    /// Write the run report (JSON) to this file.
    #[arg(long, value_name = "FILE", help_heading = "Run")]
    pub report: Option<PathBuf>,

    /// Print the run report as JSON on stdout instead of the summary.
    #[arg(long, help_heading = "Run")]
    pub json: bool,

    /// CI pipeline number, part of the runner's name.
    #[arg(
        long,
        value_name = "N",
        env = "CI_PIPELINE_NUMBER",
        default_value = "0",
        value_parser = parse_pipeline,
        help_heading = "Run"
    )]
    pub pipeline: String,
}

fn parse_pipeline(s: &str) -> Result<String, String> {
    crate::provider::check_pipeline_name(s)?;
    Ok(s.to_ascii_lowercase())
}

pub fn run(args: BuildCommandArgs, config: &Config, out: &mut dyn Write) -> Result<Exit, Error> {
    // Everything that can be wrong with the input is found before anything is spawned.
    let mut request = args.build.request()?;
    if let Some(why) = &request.skip {
        // plugin-docker-buildx's auto_tag on a branch that is not the default: nothing to do.
        writeln!(out, "{why}").map_err(Error::Output)?;
        return Ok(Exit::Success);
    }
    let backend_note = super::provider::resolve_backend(
        args.provider.provider,
        &args.provider.local_tools,
        &mut request.build,
    );
    let credentials = args.build.credentials()?;
    let store = args.build.open_store(config, credentials.clone())?;
    let mut plan = BuildPlan::new(&request, config, store.as_ref(), &mut |w| warn(w))?;
    for one in plan.plans_mut() {
        one.backend_note = backend_note.clone();
    }
    let secrets = read_secrets(plan.first())?;
    enforce_policy(plan.first(), credentials.is_some(), &secrets)?;
    // A plain-HTTP registry behind the proxy: the proxy reads the password (docs/design/proxy.md).
    if let (Some(_), true, Some(registry)) = (
        &credentials,
        plan.first().build.insecure_registry,
        &plan.first().build.registry,
    ) && let Some(proxy) = crate::proxy::current().for_plain_http(registry)
    {
        warn(&format!(
            "registry {registry} speaks plain HTTP and is reached through the proxy {}: the proxy reads the registry password; list the registry in no_proxy or give it TLS",
            proxy.display()
        ));
    }
    let stale = crate::transport::session::remove_stale_key_dirs();
    if stale > 0 {
        warn(&format!(
            "removed {stale} SSH key director{} left by killed builds",
            if stale == 1 { "y" } else { "ies" }
        ));
    }
    let log_arc = super::logger();
    let log = log_arc.as_ref();
    let build_secrets = crate::policy::Policy::current()?.secret_values();
    let output = |line: &str| {
        crate::text::to_stderr(&format!(
            "  │ {}",
            crate::policy::mask(line, &build_secrets)
        ))
    };
    let started = std::time::Instant::now();
    let chosen = args.provider.choose(config, log_arc.clone())?;
    let runtime = super::runtime()?;
    runtime.block_on(check_registry_access(
        &plan,
        credentials.as_ref(),
        &args.build.store(),
        config,
    ))?;
    if let Some(note) = &plan.first().backend_note {
        log(&format!("building with {note}"));
    }
    if let Chosen::Hcloud(hcloud) = &chosen {
        if plan.several() && hcloud.golden_image_is_an_id() {
            return Err(Error::Usage(format!(
                "{}: a snapshot id is one architecture's; several platforms need a label selector (or none: the newest golden snapshot of each architecture)",
                crate::exit::option("--golden-image")
            )));
        }
        let reap_first = !args.no_reap;
        runtime.block_on(async {
            for one in plan.plans_mut() {
                preflight(hcloud, one, config).await?;
            }
            if reap_first {
                reap(hcloud, log).await;
            }
            Ok::<(), Error>(())
        })?;
    }
    let provider = chosen.as_dyn();
    let report = runtime.block_on(async {
        let cancel = CancellationToken::new();
        super::watch_signals(cancel.clone(), "the build and destroying the runner");
        // The first line of the build's log (errors before it are one line of their own).
        log(&format!("buildkit-launcher {}", super::VERSION));
        for note in &request.notes {
            log(note);
        }
        for one in &plan.platforms {
            log(&format!(
                "building {} on {} ({}, provider {})",
                one.history.key,
                one.tier,
                one.build.platform,
                provider.name()
            ));
            log(&format!("why {}: {}", one.tier, one.reason));
        }
        let executor = Executor {
            plan: &plan,
            provider,
            credentials,
            secrets,
            history: store.as_ref(),
            pipeline: args.pipeline.clone(),
            connect: None,
            log,
            output: &output,
        };
        execute(&executor, cancel).await
    });

    log(&format!(
        "finished in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    // No secret value the launcher holds is printed or written, whatever carried it.
    let secrets = crate::policy::Policy::current()?.secret_values();
    let json = crate::policy::mask(
        &serde_json::to_string_pretty(&report).expect("a report always serializes"),
        &secrets,
    );
    if let Some(path) = &args.report {
        write_report(path, &json)?;
    }
    let written = if args.json {
        writeln!(out, "{json}")
    } else {
        write!(
            out,
            "{}",
            crate::policy::mask(&report.render_human(), &secrets)
        )
    };
    // The build is over and its runners are gone: a summary nobody reads any more (a closed
    // stdout) does not change how it ended.
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(Error::Output(e)),
        _ => {}
    }
    Ok(report.exit)
}

/// The report file: created or truncated, never through a symlink (plugin mode has checked
/// the path beneath the workspace already; this holds at the last component too).
fn write_report(path: &std::path::Path, json: &str) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| {
        Error::Usage(format!(
            "{} {}: cannot write: {e}",
            crate::exit::option("--report"),
            path.display()
        ))
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(fail)?;
    if !file.metadata().map_err(fail)?.is_file() {
        return Err(fail(std::io::Error::other("not a regular file")));
    }
    writeln!(file, "{json}").map_err(fail)
}

/// What a runner really costs and where it may run, from the API (for `build` and `plan` with a
/// token): the primary IPv4 at `GET /pricing`'s price in `location` (where the server is priced;
/// an IPv6-only runner has none), and the rung's candidates as `GET /server_types` lists them.
/// Not knowing the IPv4's price is a warning: the reference price stays, and the cost basis
/// says so.
pub(super) async fn api_costs(
    hcloud: &HcloudProvider,
    plan: &mut Plan,
    config: &Config,
    location: Option<&str>,
) {
    if plan.ipv4_eur_per_hour.is_some() {
        let location = location
            .map(str::to_owned)
            .or_else(|| config.hcloud.locations.first().cloned())
            .unwrap_or_default();
        match hcloud.primary_ipv4_price(&location).await {
            Ok(Some((price, location))) => plan.use_api_ipv4_price(price, &location),
            Ok(None) => warn(&format!(
                "GET /pricing lists no primary IPv4 price; the estimate uses the reference price ({} EUR/h)",
                crate::provider::hcloud::catalogue::IPV4_EUR_PER_HOUR
            )),
            Err(e) => warn(&format!(
                "the primary IPv4's price could not be read ({e}); the estimate uses the reference price"
            )),
        }
    }
    if let Ok(ranked) = hcloud
        .rank_rung(
            plan.arch,
            &plan.server,
            crate::plan::rung::ceiling(config, plan.arch),
        )
        .await
    {
        plan.rung = crate::plan::Rung::from_ranked(
            &plan.server,
            plan.arch,
            &ranked,
            "GET /server_types at the API's prices",
        );
    }
}

/// Before the first server: the ladder's types exist (exit 2 otherwise, nothing created),
/// deprecated ones are named, the API's prices replace the reference table, and expired
/// runners of earlier, killed builds are reaped.
async fn preflight(hcloud: &HcloudProvider, plan: &mut Plan, config: &Config) -> Result<(), Error> {
    let mut needed = vec![plan.tier.as_str()];
    needed.extend(plan.retry_server.as_ref().map(|t| t.name.as_str()));
    let check = hcloud
        .check_ladder_for(plan.arch, config.ladder(plan.arch), &needed)
        .await
        .map_err(|e| match e {
            LadderError::Api(e) => super::provider::cloud_error(e),
            e => Error::Usage(e.to_string()),
        })?;
    for (name, location, until) in &check.deprecated {
        warn(&format!(
            "server type {name} is deprecated at Hetzner in {location} (not sold there after {until}); replace it in tiers.{} of the launcher config",
            plan.arch
        ));
    }
    for note in &check.notes {
        warn(note);
    }
    for (rung, why) in &check.without_candidate {
        if *rung == plan.tier {
            // Nothing this build could order: before any request that costs anything.
            return Err(Error::Usage(why.to_string()));
        }
        if plan.retry_server.as_ref().is_some_and(|r| r.name == *rung) {
            plan.retry_server = None;
            plan.retry_tier = None;
            plan.retry_note = Some(format!(
                "the retry rung has no server type to run on: {why}"
            ));
        }
    }
    // The rung's first candidate is within the ceiling (candidates above it are never
    // ranked); its price is the API's.
    if let Some((price, location)) = check.prices.get(&plan.tier) {
        plan.use_api_price(*price, location);
    } else if crate::policy::Policy::current()?.max_eur_per_hour.is_some() {
        return Err(Error::Usage(format!(
            "server type {}: the API gives no price for it, and an unpriced type counts as above the ceiling: {}",
            plan.tier,
            crate::policy::Policy::current()?.describe_ceiling(plan.arch)
        )));
    }
    // The retry is a server the build may order too: it is held against the same ceiling, at
    // the API's price. Above it, the build gets no retry, and says why.
    if let Some(retry) = &plan.retry_server {
        let policy = crate::policy::Policy::current()?;
        let price = check.prices.get(&retry.name).map(|(p, l)| (*p, l.as_str()));
        plan.hold_retry_to_ceiling(
            price,
            policy.max_eur_per_hour,
            &policy.describe_ceiling(plan.arch),
        );
    }
    api_costs(
        hcloud,
        plan,
        config,
        check.prices.get(&plan.tier).map(|(_, l)| l.as_str()),
    )
    .await;
    // The snapshot the runners boot from, found now: none is a usage error, before any server.
    match hcloud.missing_golden_image(plan.arch, &plan.server).await {
        Ok(None) => {}
        Ok(Some(why)) => return Err(Error::Usage(format!("{}: {why}", plan.build.platform))),
        Err(e) => return Err(super::provider::cloud_error(e)),
    }
    Ok(())
}

/// Expired runners of earlier, killed builds go first (cheap; a failure is a warning).
async fn reap(hcloud: &HcloudProvider, log: &(dyn Fn(&str) + Send + Sync)) {
    match crate::reap::reap_unlocked(hcloud, crate::provider::unix_now(), log).await {
        Ok(entries) => {
            let deleted = entries
                .iter()
                .filter(|e| e.action == crate::reap::ReapAction::Deleted)
                .count();
            if deleted > 0 {
                log(&format!("reaped {deleted} runner(s) with expired leases"));
            }
        }
        Err(e) => warn(&format!("the reap before the build failed: {e}")),
    }
}

/// What the registry's credentials may do, asked before any server (registry::access): the image
/// and the caches must be pushable, extra caches read there readable (exit 2 otherwise, exit 4
/// when the registry cannot be asked);
/// a history location the token may not use is a warning, since history never blocks a build.
async fn check_registry_access(
    plans: &BuildPlan,
    credentials: Option<&crate::registry::Credentials>,
    store: &crate::history::StoreSpec,
    config: &Config,
) -> Result<(), Error> {
    use crate::registry::access::{build_needs, cache_needs, check};
    let plan = plans.first();
    let Some(registry) = &plan.build.registry else {
        return Ok(());
    };
    if plan.dry_run {
        return Ok(());
    }
    let mut needs = Vec::new();
    // Every platform pushes to the same image and cache repositories (the cache by its own
    // tag), and keeps its own history key.
    for one in &plans.platforms {
        let history = (*store == crate::history::StoreSpec::Registry).then(|| {
            (
                crate::history::registry::key_repository(
                    &config.registry.history,
                    &one.history.key,
                ),
                one.history.records,
            )
        });
        // Each further repository of `repo` gets the image too.
        for repo in &one.build.also_repos {
            for need in build_needs(repo, None, None) {
                if !needs.contains(&need) {
                    needs.push(need);
                }
            }
        }
        for need in build_needs(
            &one.build.image_repo,
            one.cache_ref
                .is_some()
                .then(|| one.build.cache_repository()),
            history,
        ) {
            if !needs.contains(&need) {
                needs.push(need);
            }
        }
    }
    // Extra caches in this registry (cache::settle keeps every export here); the others are
    // read anonymously by the runner, and the launcher never contacts them.
    let own = |r: &&crate::backend::cache::CacheRef| r.in_registry(Some(registry));
    let exports: Vec<String> = plan
        .build
        .cache_to
        .iter()
        .map(|e| &e.reference)
        .filter(own)
        .map(|r| r.path.clone())
        .collect();
    let imports: Vec<String> = plan
        .build
        .cache_from
        .iter()
        .map(|i| &i.reference)
        .filter(own)
        .map(|r| r.path.clone())
        .collect();
    let extra = cache_needs(&exports, &imports, &needs);
    needs.extend(extra);
    let results = check(registry, plan.build.insecure_registry, credentials, &needs).await;
    for (need, result) in needs.iter().zip(results) {
        match result {
            Ok(()) => {}
            Err(e) if need.what == "history" => warn(&format!(
                "{e}; the build goes on without reading or recording history there"
            )),
            Err(e) if e.is_refusal() => return Err(Error::Usage(e.to_string())),
            Err(e) => return Err(Error::Infrastructure(e.to_string())),
        }
    }
    Ok(())
}

/// What the operator policy forbids this build, found before anything is spawned.
fn enforce_policy(
    plan: &Plan,
    has_credentials: bool,
    secrets: &[(String, Zeroizing<String>)],
) -> Result<(), Error> {
    let policy = crate::policy::Policy::current()?;
    if has_credentials && let Some(registry) = &plan.build.registry {
        policy.check_registry(registry).map_err(Error::Usage)?;
    }
    if !plan.history.records {
        // A pull-request build.
        if !policy.pull_requests.secrets && (has_credentials || !secrets.is_empty()) {
            // Named as the user wrote them: `password`, `secrets`/`build_secrets` in a
            // pipeline; REGISTRY_PASSWORD and `--secret` at a terminal.
            let plugin = crate::exit::plugin_mode();
            let mut settings: Vec<String> = Vec::new();
            let mut what: Vec<String> = Vec::new();
            if has_credentials {
                settings.push(
                    if plugin {
                        "password"
                    } else {
                        "REGISTRY_PASSWORD"
                    }
                    .into(),
                );
                what.push("the registry password".into());
            }
            for (id, _) in secrets {
                let setting = match plan.build.secrets.iter().find(|s| &s.id == id) {
                    Some(s) if plugin && s.env.starts_with("BKL_BUILD_SECRET_") => {
                        "build_secrets".to_owned()
                    }
                    _ => crate::exit::option("--secret"),
                };
                if !settings.contains(&setting) {
                    settings.push(setting);
                }
                what.push(format!("the secret {}", crate::exit::quote(id)));
            }
            return Err(Error::Usage(format!(
                "{}: a pull-request build may not use secrets under the operator policy ({}), but it was given {}; remove them from the pull_request step or set pull_requests.secrets",
                settings.join(", "),
                policy.origin,
                what.join(", ")
            )));
        }
    }
    Ok(())
}

/// `--secret id=X,env=VAR`: the values, read now, so a missing one fails before any runner.
fn read_secrets(plan: &Plan) -> Result<Vec<(String, Zeroizing<String>)>, Error> {
    plan.build
        .secrets
        .iter()
        .map(|s| match crate::environment::var(&s.env) {
            Some(value) => Ok((s.id.clone(), Zeroizing::new(value))),
            None => Err(Error::Usage(format!(
                "--secret id={},env={}: the environment variable {} is not set",
                s.id, s.env, s.env
            ))),
        })
        .collect()
}
