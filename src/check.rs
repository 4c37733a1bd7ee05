//! Infrastructure validation: what is wrong before builds start failing, each with a fix.
//!
//! Looks at the Hetzner token and request budget, the ladder's server types and, per rung and
//! location, the stock its candidates have by the API's hint (`server stock`), the newest golden
//! snapshot per architecture (missing, or older than 14 days), runners whose lease expired but
//! which still exist, the registry (reachable, credentials accepted) and the history store.

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;

use crate::config::{Arch, Config, Tier};
use crate::history::{HistoryKey, HistoryStore};
use crate::provider::Provider;
use crate::provider::hcloud::api::ImagesPage;
use crate::provider::hcloud::{HcloudProvider, LadderError, Retry};
use crate::provider::unix_now;
use crate::registry::Credentials;

/// A golden snapshot older than this gets a warning: it misses two weekly rebuilds.
pub const GOLDEN_MAX_AGE_DAYS: u64 = 14;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A check that found nothing wrong: listed too, so the checklist is whole.
    Passed,
    Info,
    Warning,
    High,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub area: &'static str,
    pub message: String,
    pub fix: String,
}

/// A check that found nothing wrong.
fn passed(area: &'static str, message: String) -> Finding {
    finding(Severity::Passed, area, message, "-")
}

fn finding(severity: Severity, area: &'static str, message: String, fix: &str) -> Finding {
    Finding {
        severity,
        area,
        message,
        fix: fix.to_owned(),
    }
}

/// What to look at besides the cloud.
pub struct CheckInputs<'a> {
    pub config: &'a Config,
    pub registry: Option<&'a str>,
    /// With `registry`: the image repository whose permissions to check.
    pub repo: Option<&'a str>,
    pub insecure_registry: bool,
    pub credentials: Option<&'a Credentials>,
    pub history: Option<&'a dyn HistoryStore>,
}

pub async fn run(hcloud: &HcloudProvider, inputs: &CheckInputs<'_>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let config = inputs.config;
    // Token and ladder in one request; a refused token makes the other cloud checks moot.
    let mut token_ok = true;
    for arch in [Arch::Amd64, Arch::Arm64] {
        match hcloud.check_ladder(arch, config.ladder(arch)).await {
            Ok(check) => {
                if check.without_candidate.is_empty() && check.notes.is_empty() {
                    findings.push(passed(
                        "server types",
                        format!(
                            "tiers.{arch}: {} exist and are sold in a configured location",
                            crate::config::tier_names(config.ladder(arch))
                        ),
                    ));
                }
                for (_, e) in check.without_candidate {
                    findings.push(finding(
                        Severity::High,
                        "server types",
                        e.to_string(),
                        "add a location that sells it to hcloud.locations, raise the policy's ceiling, or replace the type in the ladder",
                    ));
                }
                for note in check.notes {
                    findings.push(finding(
                        Severity::Warning,
                        "server types",
                        note,
                        &format!("nothing to do (a rung is a need: the launcher orders a substitute); to choose another first type, change tiers.{arch}"),
                    ));
                }
                for (name, location, until) in check.deprecated {
                    findings.push(finding(
                        Severity::Warning,
                        "server types",
                        format!("{name} (tiers.{arch}) is deprecated at Hetzner in {location} and will not be sold there after {until}"),
                        &format!("replace {name} in tiers.{arch} of the launcher config with its successor"),
                    ));
                }
            }
            Err(e @ (LadderError::NotSold { .. } | LadderError::AboveCeiling { .. })) => {
                findings.push(finding(
                    Severity::High,
                    "server types",
                    e.to_string(),
                    "add a location that sells it to hcloud.locations, raise the policy's ceiling, or replace the type in the ladder",
                ))
            }
            Err(e @ LadderError::WrongArch { .. }) => findings.push(finding(
                Severity::High,
                "server types",
                e.to_string(),
                &format!("list only {arch} types in tiers.{arch}"),
            )),
            Err(LadderError::Unknown { name, valid, .. }) => findings.push(finding(
                Severity::High,
                "server types",
                format!("{name} (tiers.{arch}) does not exist at Hetzner"),
                &format!("use one of {valid} in tiers.{arch}"),
            )),
            Err(LadderError::Api(e)) => {
                token_ok = false;
                let (severity, fix) = match e.status() {
                    Some(401) => (
                        Severity::Critical,
                        "create a read & write API token in the Hetzner Cloud console and put it in HCLOUD_TOKEN",
                    ),
                    _ => (
                        Severity::Critical,
                        "check HCLOUD_ENDPOINT and the network path to the Hetzner API",
                    ),
                };
                findings.push(finding(severity, "hcloud token", e.to_string(), fix));
                break;
            }
        }
    }
    if token_ok {
        for arch in [Arch::Amd64, Arch::Arm64] {
            stock_findings(hcloud, arch, config.ladder(arch), &mut findings).await;
        }
        write_findings(hcloud, &mut findings).await;
        golden_findings(hcloud, config, &mut findings).await;
        expired_findings(hcloud, &mut findings).await;
        let rate = hcloud.rate_limit();
        if !rate.is_low() {
            findings.push(passed(
                "hcloud rate limit",
                format!(
                    "{} of {} API requests left in this project's budget",
                    rate.remaining.map_or("?".into(), |r| r.to_string()),
                    rate.limit.map_or("?".into(), |l| l.to_string())
                ),
            ));
        }
        if rate.is_low() {
            findings.push(finding(
                Severity::Warning,
                "hcloud rate limit",
                format!(
                    "only {} of {} API requests left in this project's budget",
                    rate.remaining.unwrap_or(0),
                    rate.limit.unwrap_or(0)
                ),
                "find what else spends the project's requests; builds will wait for the budget to refill (1 per second)",
            ));
        }
    }
    if let Some(registry) = inputs.registry {
        registry_findings(registry, inputs, &mut findings).await;
        if let Some(repo) = inputs.repo {
            access_findings(registry, repo, inputs, &mut findings).await;
        }
    }
    if let Some(store) = inputs.history {
        let probe = HistoryKey {
            repo: "buildkit-launcher/check".into(),
            dockerfile: "Dockerfile".into(),
            target: None,
            arch: crate::config::Arch::Amd64,
        };
        if store.recent(&probe, 1).is_ok() {
            findings.push(passed(
                "history",
                format!("the history store {} can be read", store.describe()),
            ));
        }
        if let Err(e) = store.recent(&probe, 1) {
            findings.push(finding(
                Severity::High,
                "history",
                format!("the history store {} cannot be read: {e}", store.describe()),
                "fix the path or permissions of --history, or the registry it points at; builds fall back to language defaults meanwhile",
            ));
        }
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    findings
}

/// Per rung: what a build of it would meet, by `GET /server_types`' stock hint (it can be
/// wrong both ways, so a rung with no candidate in stock is High, not Critical: its builds
/// fail with exit 4 unless the hint is wrong).
async fn stock_findings(
    hcloud: &HcloudProvider,
    arch: Arch,
    ladder: &[Tier],
    out: &mut Vec<Finding>,
) {
    let rungs = match hcloud.ladder_stock(arch, ladder).await {
        Ok(rungs) => rungs,
        // The ladder check above already said what is wrong with the API.
        Err(_) => return,
    };
    for rung in rungs {
        let need = format!(
            "rung {} of tiers.{arch} ({} GB, {} vCPUs)",
            rung.tier.name,
            rung.tier.memory_mib as f64 / 1024.0,
            rung.tier.vcpus
        );
        let all: Vec<String> = rung.candidates.iter().map(|c| c.describe()).collect();
        match rung.first_in_stock() {
            None if rung.candidates.is_empty() => out.push(finding(
                Severity::High,
                "server stock",
                format!("{need}: no server type of any allowed family meets it in a configured location"),
                &format!("set tiers.{arch} to types Hetzner sells, or add locations to hcloud.locations"),
            )),
            None => out.push(finding(
                Severity::High,
                "server stock",
                format!(
                    "{need}: no candidate in stock anywhere; builds of this rung fail with exit 4 unless the API's hint is wrong: {}",
                    all.join("; ")
                ),
                "add locations to hcloud.locations, raise the policy's max_eur_per_hour or max_memory_gb to admit larger families, or wait for Hetzner's stock",
            )),
            Some(first) if first.name == rung.tier.name => out.push(passed(
                "server stock",
                format!("{need}: {}", first.describe()),
            )),
            Some(first) => out.push(finding(
                Severity::Warning,
                "server stock",
                format!(
                    "{need}: builds of this rung will use {} ({})",
                    first.name,
                    all.join("; ")
                ),
                &format!("nothing to do (a rung is a need: the launcher orders a substitute); to choose another first type, change tiers.{arch}"),
            )),
        }
    }
}

/// Reads succeeded; can the token write? A harmless write says (`probe_write`): a read-only
/// token is refused with 403 `token_readonly`, and every build would be too.
async fn write_findings(hcloud: &HcloudProvider, out: &mut Vec<Finding>) {
    match hcloud.probe_write().await {
        Ok(_) => out.push(passed(
            "hcloud token",
            "the token is accepted and may write (create servers)".into(),
        )),
        Err(e) if e.code() == Some("token_readonly") => out.push(finding(
            Severity::Critical,
            "hcloud token",
            "the token is read-only: builds could not create servers".into(),
            "create a read & write API token in the Hetzner Cloud console and put it in HCLOUD_TOKEN",
        )),
        Err(e) => out.push(finding(
            Severity::Warning,
            "hcloud token",
            format!("not verified that the token may write (the probe on the project SSH key failed: {e})"),
            "make sure HCLOUD_TOKEN is a read & write token; builds fail with token_readonly otherwise",
        )),
    }
}

async fn golden_findings(hcloud: &HcloudProvider, config: &Config, out: &mut Vec<Finding>) {
    for arch in [Arch::Amd64, Arch::Arm64] {
        let path = format!(
            "/images?type=snapshot&status=available&sort=created:desc&architecture={}&label_selector={}",
            match arch {
                Arch::Amd64 => "x86",
                Arch::Arm64 => "arm",
            },
            url::form_urlencoded::byte_serialize(
                format!("buildkit-launcher/role=golden,buildkit-launcher/arch={arch}").as_bytes()
            )
            .collect::<String>()
        );
        let page: Result<ImagesPage, _> = hcloud
            .api()
            .call(Method::GET, &path, None, Retry::Always)
            .await;
        let fix = format!(
            "run `buildkit-launcher golden-image build --arch {arch}` (the weekly pipeline does)"
        );
        match page.map(|p| p.images.into_iter().next()) {
            Ok(None) => out.push(finding(
                if arch == config.default_arch {
                    Severity::High
                } else {
                    Severity::Warning
                },
                "golden image",
                format!("no golden snapshot for {arch}: {arch} builds cannot start"),
                &fix,
            )),
            Ok(Some(image)) => {
                out.push(golden_config_finding(arch, &image, config));
                let created =
                    humantime::parse_rfc3339_weak(image.created.trim_end_matches("+00:00"))
                        .ok()
                        .or_else(|| humantime::parse_rfc3339(&image.created).ok());
                if let Some(created) = created {
                    let age = std::time::SystemTime::now()
                        .duration_since(created)
                        .unwrap_or(Duration::ZERO);
                    let days = age.as_secs() / 86_400;
                    if days <= GOLDEN_MAX_AGE_DAYS {
                        out.push(passed(
                            "golden image",
                            format!(
                                "the newest {arch} golden snapshot ({}) is {days} days old",
                                image.id
                            ),
                        ));
                    }
                    if days > GOLDEN_MAX_AGE_DAYS {
                        out.push(finding(
                            Severity::Warning,
                            "golden image",
                            format!(
                                "the newest {arch} golden snapshot ({}) is {days} days old, more than {GOLDEN_MAX_AGE_DAYS}",
                                image.id
                            ),
                            &fix,
                        ));
                    }
                }
            }
            Err(e) => out.push(finding(
                Severity::High,
                "golden image",
                e.to_string(),
                "check the token's permissions (read & write) and the API endpoint",
            )),
        }
    }
}

/// Whether the newest golden snapshot of `arch` was baked with the buildkitd.toml the launcher
/// config renders now (its digest label; `crate::config::buildkitd_toml`).
fn golden_config_finding(
    arch: Arch,
    image: &crate::provider::hcloud::api::Image,
    config: &Config,
) -> Finding {
    let area = "golden image";
    let fix = format!(
        "bake again with `buildkit-launcher golden-image build --arch {arch}` (`golden-image config` prints the file it installs)"
    );
    match crate::config::buildkitd_toml::golden_digest(&config.buildkitd) {
        Err(e) => finding(
            Severity::Warning,
            area,
            format!(
                "cannot tell whether the {arch} golden snapshot has the launcher config's buildkitd settings: {e}"
            ),
            "run `check` where the CA files the config names are readable",
        ),
        Ok(current) => match crate::golden::config_drift(
            arch,
            image.id,
            image
                .labels
                .get(crate::golden::LABEL_BUILDKITD_CONFIG)
                .map(String::as_str),
            &current,
        ) {
            None => passed(
                area,
                format!(
                    "the newest {arch} golden snapshot ({}) has the launcher config's buildkitd settings (digest {current})",
                    image.id
                ),
            ),
            Some(warning) => finding(Severity::Warning, area, warning, &fix),
        },
    }
}

async fn expired_findings(hcloud: &HcloudProvider, out: &mut Vec<Finding>) {
    match hcloud.list_leases().await {
        Ok(leases) => {
            // The API's time (the listing's own answer), as `reap` judges it.
            let now = hcloud.now().unwrap_or_else(unix_now);
            let expired: Vec<String> = leases
                .iter()
                .filter(|l| l.judged_expiry().is_some_and(|(e, _)| e < now))
                .map(|l| l.id.clone())
                .collect();
            if expired.is_empty() {
                out.push(passed(
                    "runners",
                    format!("no runner with an expired lease ({} running)", leases.len()),
                ));
            } else {
                out.push(finding(
                    Severity::High,
                    "runners",
                    format!(
                        "{} runner(s) with expired leases still exist and are billed: {}",
                        expired.len(),
                        expired.join(", ")
                    ),
                    "run `buildkit-launcher reap` (and schedule pipelines/reap-hourly.yaml)",
                ));
            }
        }
        Err(e) => out.push(finding(
            Severity::High,
            "runners",
            e.to_string(),
            "check the token's permissions and the API endpoint",
        )),
    }
}

async fn registry_findings(registry: &str, inputs: &CheckInputs<'_>, out: &mut Vec<Finding>) {
    let scheme = if inputs.insecure_registry {
        "http"
    } else {
        "https"
    };
    let url = format!("{scheme}://{registry}/v2/");
    let client = match crate::registry::bounded::client_builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            out.push(finding(Severity::High, "registry", e.to_string(), "-"));
            return;
        }
    };
    let mut request = client.get(&url);
    if let Some(c) = inputs.credentials {
        request = request.basic_auth(&c.username, Some(c.password.as_str()));
    }
    match request.send().await {
        Ok(resp) if resp.status().is_success() => out.push(passed(
            "registry",
            match inputs.credentials {
                Some(c) => format!("{registry} answers and accepts user {}", c.username),
                None => format!("{registry} answers without credentials"),
            },
        )),
        Ok(resp) if resp.status().as_u16() == 401 => out.push(match inputs.credentials {
            Some(c) => finding(
                Severity::High,
                "registry",
                format!("{registry} refused the credentials of user {}", c.username),
                "check REGISTRY_PASSWORD (the password or token for that user)",
            ),
            None => finding(
                Severity::High,
                "registry",
                format!("{registry} requires credentials"),
                "set --registry-user and REGISTRY_PASSWORD",
            ),
        }),
        Ok(resp) => out.push(finding(
            Severity::High,
            "registry",
            format!("{url} answered HTTP {}", resp.status().as_u16()),
            "check --registry: it must be the registry's host[:port]",
        )),
        Err(e) => out.push(finding(
            Severity::High,
            "registry",
            format!("{registry} is unreachable: {}", e.without_url()),
            "check --registry and --insecure-registry (plain HTTP), and that the registry runs",
        )),
    }
}

/// What the credentials may do where a build of `repo` would push, cache and keep history
/// (registry::access, the check every build makes before its first server).
async fn access_findings(
    registry: &str,
    repo: &str,
    inputs: &CheckInputs<'_>,
    out: &mut Vec<Finding>,
) {
    use crate::registry::access::{AccessError, build_needs, check};
    let layout = &inputs.config.registry;
    let history = crate::history::registry::key_repository(
        &layout.history,
        &HistoryKey {
            repo: repo.to_owned(),
            dockerfile: "Dockerfile".into(),
            target: None,
            arch: crate::config::Arch::Amd64,
        },
    );
    let needs = build_needs(repo, Some(layout.cache_repo(repo)), Some((history, true)));
    let results = check(
        registry,
        inputs.insecure_registry,
        inputs.credentials,
        &needs,
    )
    .await;
    for (need, result) in needs.iter().zip(results) {
        let e = match result {
            Ok(()) => {
                out.push(passed(
                    "registry permissions",
                    format!("{} ({}): allowed", need.repository, need.what),
                ));
                continue;
            }
            // Reachability is the registry finding's business.
            Err(AccessError::Unreachable { .. }) => continue,
            Err(e) => e,
        };
        out.push(if need.what == "history" {
            finding(
                Severity::Warning,
                "registry permissions",
                e.to_string(),
                "grant the token pull and push on the history namespace (registry.history in the launcher config), or move that namespace under one it has; builds size from language defaults meanwhile",
            )
        } else {
            finding(
                Severity::High,
                "registry permissions",
                e.to_string(),
                "grant the token pull and push on this repository in the registry or its token service, or build to a repository it has (registry.cache in the launcher config places the cache)",
            )
        });
    }
}

pub fn render(findings: &[Finding], symbols: bool) -> String {
    if findings.is_empty() {
        return "nothing to check\n".to_owned();
    }
    let mut out = String::new();
    for f in findings {
        let mark = match (f.severity, symbols) {
            (Severity::Passed, true) => "✓".to_owned(),
            (Severity::Info | Severity::Warning, true) => "!".to_owned(),
            (_, true) => "✗".to_owned(),
            (Severity::Passed, false) => "PASSED".to_owned(),
            (severity, false) => format!("{severity:?}").to_uppercase(),
        };
        out.push_str(&format!("{mark:<8} {:<20} {}\n", f.area, f.message));
        if f.severity != Severity::Passed {
            out.push_str(&format!("{:<29} fix: {}\n", "", f.fix));
        }
    }
    let failed = findings
        .iter()
        .filter(|f| f.severity >= Severity::High)
        .count();
    let warned = findings
        .iter()
        .filter(|f| matches!(f.severity, Severity::Info | Severity::Warning))
        .count();
    let ok = findings.len() - failed - warned;
    out.push_str(&format!(
        "{ok} checks passed, {warned} warned, {failed} failed\n"
    ));
    out
}
