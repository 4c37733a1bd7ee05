//! Issue 16's attacks carried through to the end: builds that really run (the Hetzner API
//! simulator's sandbox runners, real BuildKit, a real registry) with canary values for every
//! secret the launcher holds, scanned for everywhere a value could come out; the settings that
//! would carry a secret into the build, refused before any API request; and the OOM retry held
//! to the operator's price ceiling when the build really runs out of memory.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use support::attack::{Attack, pinned, plugin};
use support::hcloud_sim::HcloudSim;
use support::hcloud_sim::cloud::Cloud;
use support::local_build::outcomes;
use support::registry::{Registry, require_root_and_tools};

/// The registry password, a build secret's value and a variable the policy marks secret: what
/// the build must never see (the password, the policy's variable) or the launcher never print
/// (all of them). The Hetzner token is the simulator's own (random per run).
const PASSWORD: &str = "registry-canary-password-77c2";
const BUILD_SECRET: &str = "build-secret-canary-3a9d";
const SECRET_ENV: &str = "secret-env-canary-e41b";
/// An allow-listed variable of the agent (`build_env`): not a secret of the launcher.
const FLAVOUR: &str = "flavour-plain-0b7c";

fn reversed(s: &str) -> String {
    s.chars().rev().collect()
}

fn base64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The retry is a server the build may order: when the build really runs out of memory on a
/// tier within the operator's price ceiling and the next tier (cx33) is above it, no second
/// server is ordered, exit 3, and the plan, the report's error and the summary say why. Two
/// ceilings: 0.011 EUR/h keeps cx33 in the policy's ladder (0.0104 EUR/h in the reference
/// table) but the API's price (0.0128 from the simulator) is above it; 0.009 EUR/h takes cx33
/// out of the ladder already at the reference price.
#[test]
fn an_oom_gets_no_retry_above_the_price_ceiling() {
    let Some(c) = Cloud::new("RUN dd if=/dev/zero of=/dev/null bs=350M count=1") else {
        return;
    };
    std::fs::write(c.ctx.path().join(".build-spec.ncl"), "{ tier = \"cx23\" }").unwrap();
    let operator = tempfile::tempdir().unwrap();
    let policy = operator.path().join("policy.ncl");
    let mut wrong = Vec::new();
    for ceiling in ["0.011", "0.009"] {
        let (servers, deletes) = (c.calls("POST /servers"), c.calls("DELETE /servers/{id}"));
        std::fs::write(
            &policy,
            format!(
                "{{ hcloud_endpoint = \"{}\", max_eur_per_hour = {ceiling} }}",
                c.sim.endpoint
            ),
        )
        .unwrap();
        let out = c
            .launcher()
            .env("BUILDKIT_LAUNCHER_POLICY", &policy)
            .args(c.args())
            .run();
        assert_eq!(
            out.code, 3,
            "{ceiling}: OOM without a retry (README, exit codes):\n{}",
            out.stderr
        );
        assert_eq!(
            c.calls("POST /servers") - servers,
            1,
            "{ceiling}: {:?}",
            c.sim.calls()
        );
        assert_eq!(
            c.sim.last_create_request().unwrap()["server_type"],
            "cx23",
            "{ceiling}: the only server ordered is the one within the ceiling"
        );
        assert!(
            !out.stderr.contains("retrying once"),
            "{ceiling}: no retry announced: {}",
            out.stderr
        );
        let report = c.report();
        assert_eq!(
            outcomes(&report),
            [("cx23".into(), "oom".into())],
            "{ceiling}"
        );
        assert_eq!(
            report["plan"]["retry_server"],
            serde_json::Value::Null,
            "{ceiling}"
        );
        assert_eq!(report["attempts"][0]["destroyed"], true, "{ceiling}");
        assert_eq!(c.calls("DELETE /servers/{id}") - deletes, 1, "{ceiling}");
        c.sim.assert_clean();
        // Why: the next tier and the ceiling, in the plan, the report's error and the summary.
        let says_why =
            |text: &str| text.contains("cx33") && text.contains(&format!("{ceiling} EUR/h"));
        let note = report["plan"]["retry_note"].as_str().unwrap_or_default();
        let error = report["error"].as_str().unwrap_or_default();
        let summary = out.stdout.lines().next().unwrap_or_default();
        if !says_why(note) || !says_why(error) || !says_why(summary) {
            wrong.push(format!(
                "ceiling {ceiling}:\n  plan.retry_note: {note:?}\n  error: {error:?}\n  summary: {summary:?}"
            ));
            continue;
        }
        assert!(
            error.starts_with("out of memory on cx23") && error.contains(note),
            "{error}"
        );
        if ceiling == "0.011" {
            // Held at the API's price, not the reference table's.
            assert!(note.contains("cx33 costs 0.0128 EUR/h"), "{note}");
        }
    }
    assert!(
        wrong.is_empty(),
        "no retry, but not said why:\n{}",
        wrong.join("\n")
    );
}

/// A Dockerfile written to exfiltrate: it prints its environment (reversed and in base64,
/// which exact-string masking misses), a build argument from the agent, and the build secret
/// it is given, and keeps its environment in the image.
const EXFILTRATING: &str = "ARG FLAVOUR\n\
    RUN env | rev; env | base64; echo \"flavour=$FLAVOUR\"; cat /proc/self/environ | tr '\\0' '\\n' | rev\n\
    RUN env > /env.txt; ls -la /run > /run.txt 2>&1 || true\n\
    LABEL built=yes\n";
/// The build secret, printed by the build (the launcher masks it in its log).
const PRINTS_ITS_SECRET: &str =
    "RUN --mount=type=secret,id=npmrc echo \"secret: $(cat /run/secrets/npmrc)\"\n";

/// Every canary in every form the launcher could let out.
fn forbidden(token: &str) -> Vec<(String, &'static str)> {
    let mut all = Vec::new();
    for (value, what) in [
        (token, "the Hetzner token"),
        (PASSWORD, "the registry password"),
        (SECRET_ENV, "the policy's secret_env variable"),
    ] {
        all.push((value.to_owned(), what));
        all.push((reversed(value), what));
        all.push((base64(value), what));
    }
    // The build was given this one: it may print it, the launcher must mask it.
    all.push((BUILD_SECRET.to_owned(), "the build secret"));
    all
}

fn assert_nowhere(text: &str, token: &str, where_: &str) {
    for (canary, what) in forbidden(token) {
        assert!(
            !text.contains(&canary),
            "{what} ({canary}) is in {where_}:\n{text}"
        );
    }
}

/// Every file of the registry's storage (manifests, configs, layers decompressed), scanned
/// for the canaries the build was never given (the build secret is the build's own: it may
/// put it in its image, this one does not, so it is scanned for too).
fn assert_not_in_registry(registry: &Registry, token: &str) {
    let mut scanned = 0;
    let mut stack = vec![registry.storage()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let raw = std::fs::read(&path).unwrap();
            let plain = gunzip(&path).unwrap_or_default();
            for bytes in [&raw, &plain] {
                let text = String::from_utf8_lossy(bytes);
                for (canary, what) in forbidden(token) {
                    assert!(
                        !text.contains(&canary),
                        "{what} is in the registry's {}",
                        path.display()
                    );
                }
            }
            scanned += 1;
        }
    }
    assert!(
        scanned > 10,
        "the registry's storage was scanned ({scanned} files)"
    );
}

/// A gzip layer's bytes, decompressed (`None` for anything that is not gzip).
fn gunzip(path: &Path) -> Option<Vec<u8>> {
    let mut head = [0u8; 2];
    use std::io::Read;
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if head != [0x1f, 0x8b] {
        return None;
    }
    let out = std::process::Command::new("gzip")
        .args(["-dc"])
        .arg(path)
        .output()
        .ok()?;
    Some(out.stdout)
}

/// The image `repo:tag`: its manifest and config (history, labels, environment), as text.
fn image_text(registry: &Registry, repo: &str, tag: &str) -> String {
    let accept = "application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.v2+json";
    let (status, manifest) = registry.manifest_json(repo, tag, accept);
    assert_eq!(status, 200, "{repo}:{tag}: {manifest}");
    let config = registry.image_config(repo, tag);
    assert!(
        config["history"].as_array().is_some_and(|h| h.len() > 1),
        "{config}"
    );
    assert_eq!(config["config"]["Labels"]["built"], "yes", "{config}");
    format!("{manifest}\n{config}")
}

/// A step that ran to the end: no canary in its stdout, stderr, report or pushed image.
fn assert_leaks_nothing(
    out: &support::Outcome,
    report: &Path,
    registry: &Registry,
    tag: &str,
    token: &str,
    what: &str,
) {
    assert_eq!(out.code, 0, "{what}:\n{}", out.stderr);
    assert_nowhere(&out.stdout, token, &format!("{what}'s stdout"));
    assert_nowhere(&out.stderr, token, &format!("{what}'s stderr"));
    let report = std::fs::read_to_string(report).unwrap();
    assert_nowhere(&report, token, &format!("{what}'s report.json"));
    let image = image_text(registry, "org/app", tag);
    assert_nowhere(&image, token, &format!("{what}'s image org/app:{tag}"));
}

/// Every tag of every repository under `cache/` (the history's and the build cache's) with
/// the digest of its manifest's bytes.
fn cache_namespace(registry: &Registry) -> BTreeMap<String, Option<String>> {
    let (status, _, catalog) = registry.get("/v2/_catalog", &[]).unwrap();
    assert_eq!(status, 200, "{catalog}");
    let catalog: serde_json::Value = serde_json::from_str(&catalog).unwrap();
    let mut out = BTreeMap::new();
    for repo in catalog["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap();
        if !repo.starts_with("cache/") {
            continue;
        }
        let tags: serde_json::Value =
            serde_json::from_str(&registry.tags(repo).unwrap_or_default()).unwrap_or_default();
        for tag in tags["tags"].as_array().into_iter().flatten() {
            let tag = tag.as_str().unwrap();
            out.insert(format!("{repo}:{tag}"), digest_any(registry, repo, tag));
        }
    }
    out
}

/// The `Docker-Content-Digest` of `repo:tag` whatever its media type (image, index, artifact).
fn digest_any(registry: &Registry, repo: &str, tag: &str) -> Option<String> {
    let accept = "application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.oci.image.index.v1+json, \
                  application/vnd.docker.distribution.manifest.v2+json, \
                  application/vnd.docker.distribution.manifest.list.v2+json";
    let (status, headers, _) = registry
        .get(
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Accept", accept)],
        )
        .unwrap();
    (status == 200).then(|| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Docker-Content-Digest"))
            .map(|(_, v)| v.clone())
            .unwrap()
    })
}

/// A push build on the default branch, then a pull request's, each given every secret (the
/// policy lets pull requests use secrets, the worst case), run to the end: no canary in
/// stdout, stderr, the report, or anything either pushed; the pull request changes nothing of
/// main's history or cache (every tag's manifest digest identical) and adds only its own cache
/// tag.
#[test]
fn no_canary_leaves_a_push_or_a_pull_request_build_and_the_pr_leaves_main_untouched() {
    if !require_root_and_tools(support::local_build::TOOLS) {
        return;
    }
    let sim = HcloudSim::with_golden_amd64();
    let token = sim.token.clone();
    let registry = Registry::start_with_auth("ci", PASSWORD).with_base_image();
    let ctx = support::Context::new().file(
        "Dockerfile",
        &format!(
            "FROM {}\n{EXFILTRATING}{PRINTS_ITS_SECRET}",
            registry.base_image()
        ),
    );
    let policy = format!(
        ", build_env = [\"FLAVOUR\"], secret_env = [\"DEPLOY_KEY\"], pull_requests.secrets = true, registries = [\"{}\"]",
        registry.addr
    );
    let build_secrets = format!(r#"{{"npmrc":"{BUILD_SECRET}"}}"#);
    let common: Vec<(&str, &str)> = vec![
        ("CI_REPO", "org/app"),
        ("CI_REPO_DEFAULT_BRANCH", "main"),
        ("CI_COMMIT_BRANCH", "main"),
        ("PLUGIN_REGISTRY", &registry.addr),
        ("PLUGIN_INSECURE_REGISTRY", "true"),
        ("PLUGIN_REPO", "org/app"),
        ("PLUGIN_TAGS", "latest"),
        ("PLUGIN_USERNAME", "ci"),
        ("PLUGIN_PASSWORD", PASSWORD),
        ("PLUGIN_BUILD_SECRETS", &build_secrets),
        ("PLUGIN_BUILD_ARGS_FROM_ENV", "FLAVOUR"),
        ("PLUGIN_REPORT", "report.json"),
        ("FLAVOUR", FLAVOUR),
        ("DEPLOY_KEY", SECRET_ENV),
    ];
    let report_path = ctx.path().join("report.json");

    let mut push = common.clone();
    push.extend([("CI_PIPELINE_EVENT", "push")]);
    let out = support::plugin_step::run_with_policy(&sim, &ctx, &policy, &push);
    assert_leaks_nothing(
        &out,
        &report_path,
        &registry,
        "latest",
        &token,
        "the push build",
    );
    // The build really ran with what it was given: the allow-listed argument, the secret
    // (printed by the Dockerfile, masked by the launcher).
    assert!(
        out.stderr.contains(&format!("flavour={FLAVOUR}")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("secret: ****"),
        "masked: {}",
        out.stderr
    );
    let main = cache_namespace(&registry);
    assert!(
        main.contains_key("cache/org/app:latest"),
        "main's cache entry was written: {main:?}"
    );
    assert!(
        main.keys()
            .any(|k| k.starts_with("cache/buildkit-launcher/history/")),
        "main's build recorded its sample: {main:?}"
    );
    sim.assert_clean();

    std::fs::remove_file(&report_path).unwrap();
    // The pull request's own Dockerfile: a first step of its own, so nothing after it comes
    // from main's cache and every step really runs again.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {}\nRUN echo pull-request\n{EXFILTRATING}{PRINTS_ITS_SECRET}",
            registry.base_image()
        ),
    )
    .unwrap();
    let mut pr = common.clone();
    pr.extend([
        ("CI_PIPELINE_EVENT", "pull_request"),
        ("CI_COMMIT_REF", "refs/pull/7/head"),
        ("CI_COMMIT_PULL_REQUEST", "7"),
    ]);
    let out = support::plugin_step::run_with_policy(&sim, &ctx, &policy, &pr);
    assert_leaks_nothing(
        &out,
        &report_path,
        &registry,
        "pr-7",
        &token,
        "the pull request",
    );
    assert!(
        out.stderr.contains("secret: ****"),
        "masked: {}",
        out.stderr
    );
    let mut after = cache_namespace(&registry);
    assert!(
        after.remove("cache/org/app:pr-7").is_some(),
        "the pull request's own cache tag: {after:?}"
    );
    assert_eq!(
        after, main,
        "the pull request changed main's history or cache"
    );
    assert_not_in_registry(&registry, &token);
    sim.assert_clean();
}

/// A build argument, label or tag whose value holds a secret of the launcher (the token, the
/// registry password, a build secret, a variable the policy marks secret): exit 2, one line
/// naming the setting as the pipeline's YAML spells it, never the value, and no API request.
#[test]
fn a_setting_whose_value_holds_any_secret_is_refused_by_its_yaml_name() {
    let a = Attack::new();
    let policy = pinned(&a, ", secret_env = [\"DEPLOY_KEY\"]");
    let token = a.sim.token.clone();
    let build_secrets = format!(r#"{{"npmrc":"{BUILD_SECRET}"}}"#);
    let mut misnamed = Vec::new();
    for (secret, what) in [
        (token.as_str(), "the token"),
        (PASSWORD, "the registry password"),
        (BUILD_SECRET, "a build secret"),
        (SECRET_ENV, "the policy's secret_env"),
    ] {
        for (key, value) in [
            ("PLUGIN_BUILD_ARGS", format!(r#"{{"X":"v-{secret}"}}"#)),
            ("PLUGIN_BUILD_ARG", format!("X={secret}")),
            ("PLUGIN_LABELS", format!("leak=x{secret}")),
            ("PLUGIN_TAGS", format!("v1,{secret}")),
            ("PLUGIN_TAG", secret.to_owned()),
        ] {
            let out = plugin(
                &a,
                &policy,
                &[
                    ("PLUGIN_USERNAME", "ci"),
                    ("PLUGIN_PASSWORD", PASSWORD),
                    ("PLUGIN_BUILD_SECRETS", &build_secrets),
                    ("DEPLOY_KEY", SECRET_ENV),
                    (key, &value),
                ],
            );
            let case = format!("{what} in {key}");
            let line = a.assert_refused_before_any_request(&out, &case);
            let setting = key.trim_start_matches("PLUGIN_").to_ascii_lowercase();
            if !line.starts_with(&format!("error: {setting}: ")) {
                misnamed.push(format!("{case}: {line}"));
            }
            assert!(
                line.contains("holds a secret of the launcher"),
                "{case}: {line}"
            );
            for canary in [secret, PASSWORD, BUILD_SECRET, SECRET_ENV, &token] {
                assert!(!out.stderr.contains(canary), "{case}: {}", out.stderr);
            }
        }
    }
    assert!(
        misnamed.is_empty(),
        "not named as the YAML spells the setting:\n{}",
        misnamed.join("\n")
    );
}

/// `build_args_from_env` and `secrets` (`env=`) naming a variable the operator allow-listed:
/// in a pull request it counts as a secret, refused when the policy gives pull requests none,
/// naming the setting, before any API request; the same step in a push pipeline gets past it.
#[test]
fn an_allow_listed_variable_is_a_secret_in_a_pull_request() {
    let a = Attack::new();
    let pr = [
        ("CI_PIPELINE_EVENT", "pull_request"),
        ("CI_COMMIT_REF", "refs/pull/7/head"),
        ("CI_COMMIT_PULL_REQUEST", "7"),
        ("FLAVOUR", FLAVOUR),
    ];
    let policy = pinned(&a, ", build_env = [\"FLAVOUR\"]");
    for (key, value) in [
        ("PLUGIN_BUILD_ARGS_FROM_ENV", "FLAVOUR"),
        ("PLUGIN_BUILD_ARG_FROM_ENV", "FLAVOUR"),
        ("PLUGIN_SECRETS", "id=f,env=FLAVOUR"),
    ] {
        let mut settings = pr.to_vec();
        settings.push((key, value));
        let out = plugin(&a, &policy, &settings);
        let line = a.assert_refused_before_any_request(&out, key);
        let setting = key.trim_start_matches("PLUGIN_").to_ascii_lowercase();
        assert!(
            line.starts_with(&format!("error: {setting}: ")),
            "{key}: the setting as the YAML spells it: {line}"
        );
        assert!(line.contains("pull_requests.secrets"), "{key}: {line}");
        assert!(!out.stderr.contains(FLAVOUR), "{}", out.stderr);
        // A push pipeline reads it: what stops the step then is the unreachable registry
        // (127.0.0.1:9), checked before any server.
        let out = plugin(&a, &policy, &[("FLAVOUR", FLAVOUR), (key, value)]);
        assert!(
            !out.stderr.contains(&format!("error: {setting}: "))
                && !out.stderr.contains("pull_requests.secrets"),
            "{key} in a push pipeline: {}",
            out.stderr
        );
        assert_eq!(a.sim.calls().get("POST /servers"), None, "{}", out.stderr);
    }
}

/// A pull request under the default pull-request policy (no secrets, its own `pr-<N>` tag):
/// it holds no password or build secret, but the launcher still holds the token and the
/// policy's secret variable. The exfiltrating build runs to the end on an open registry; no
/// canary anywhere.
#[test]
fn no_canary_leaves_a_pull_request_build_without_secrets() {
    if !require_root_and_tools(support::local_build::TOOLS) {
        return;
    }
    let sim = HcloudSim::with_golden_amd64();
    let token = sim.token.clone();
    let registry = Registry::start().with_base_image();
    let ctx = support::Context::new().file(
        "Dockerfile",
        &format!("FROM {}\n{EXFILTRATING}", registry.base_image()),
    );
    let out = support::plugin_step::run_with_policy(
        &sim,
        &ctx,
        ", secret_env = [\"DEPLOY_KEY\"]",
        &[
            ("CI_REPO", "org/app"),
            ("CI_REPO_DEFAULT_BRANCH", "main"),
            ("CI_COMMIT_BRANCH", "main"),
            ("CI_PIPELINE_EVENT", "pull_request"),
            ("CI_COMMIT_REF", "refs/pull/8/head"),
            ("CI_COMMIT_PULL_REQUEST", "8"),
            ("PLUGIN_REGISTRY", &registry.addr),
            ("PLUGIN_INSECURE_REGISTRY", "true"),
            ("PLUGIN_REPO", "org/app"),
            ("PLUGIN_TAGS", "latest"),
            ("PLUGIN_REPORT", "report.json"),
            ("DEPLOY_KEY", SECRET_ENV),
        ],
    );
    let report = ctx.path().join("report.json");
    assert_leaks_nothing(&out, &report, &registry, "pr-8", &token, "the pull request");
    assert_eq!(registry.manifest_digest("org/app", "latest"), None);
    assert_not_in_registry(&registry, &token);
    sim.assert_clean();
}
