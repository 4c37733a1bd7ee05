//! Pipeline settings as a pull request's author writes them (issue 16): each attack below
//! was shown to work against an earlier launcher. Every one is now exit 2 with one line naming
//! the setting as the YAML spells it, before any API request that costs anything, and no
//! canary (the token, the registry password, a build secret, an outside file) appears in any
//! output; or, for what a pull request may legitimately do, it does it in its own namespace.
//!
//! Through the Hetzner API simulator; every policy pins the simulator's endpoint, so that even
//! a defect that let a request through could not leave this machine.

mod support;

use support::attack::{Attack, OUTSIDE, pinned, plugin, plugin_in};

/// The canaries: values the launcher holds that a build must never see.
const TOKEN_CANARY: &str = "hcloud-canary-token-5e1f";
const PASSWORD_CANARY: &str = "registry-canary-password-77c2";

/// A plugin step with the canaries in place of the real secrets and the simulator accepting
/// the canary token.
fn step(a: &Attack, policy: &str, settings: &[(&str, &str)]) -> support::Outcome {
    let mut all: Vec<(&str, &str)> = vec![
        ("PLUGIN_PASSWORD", PASSWORD_CANARY),
        ("PLUGIN_USERNAME", "ci"),
        ("HCLOUD_TOKEN", TOKEN_CANARY),
    ];
    all.extend_from_slice(settings);
    plugin(a, policy, &all)
}

fn assert_no_canary(out: &support::Outcome, what: &str) {
    for canary in [
        TOKEN_CANARY,
        PASSWORD_CANARY,
        OUTSIDE,
        &reversed(TOKEN_CANARY),
    ] {
        assert!(
            !out.stderr.contains(canary) && !out.stdout.contains(canary),
            "{what}: a canary leaked:\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

fn reversed(s: &str) -> String {
    s.chars().rev().collect()
}

#[test]
fn no_setting_hands_the_token_or_the_password_to_the_build() {
    let a = Attack::new();
    let cases = [
        ("PLUGIN_BUILD_ARGS_FROM_ENV", "PLUGIN_HCLOUD_TOKEN"),
        ("PLUGIN_BUILD_ARGS_FROM_ENV", "HCLOUD_TOKEN"),
        ("PLUGIN_BUILD_ARGS_FROM_ENV", "PATH,PLUGIN_PASSWORD"),
        ("PLUGIN_BUILD_ARG_FROM_ENV", "REGISTRY_PASSWORD"),
        ("PLUGIN_SECRETS", "id=t,env=PLUGIN_HCLOUD_TOKEN"),
        ("PLUGIN_SECRETS", "id=t,env=HCLOUD_TOKEN"),
        ("PLUGIN_SECRETS", "id=t,env=PLUGIN_PASSWORD"),
        ("PLUGIN_SECRETS", "id=t,env=CI_NETRC_PASSWORD"),
    ];
    // Even an operator who lists them in build_env does not make them readable.
    let policy = pinned(
        &a,
        ", build_env = [\"PATH\", \"HCLOUD_TOKEN\", \"PLUGIN_HCLOUD_TOKEN\", \"PLUGIN_PASSWORD\"]",
    );
    for (key, value) in cases {
        let out = step(&a, &policy, &[(key, value)]);
        let line = a.assert_refused_before_any_request(&out, value);
        let setting = key.trim_start_matches("PLUGIN_").to_ascii_lowercase();
        assert!(line.starts_with(&format!("error: {setting}: ")), "{line}");
        assert!(line.contains("secret of the launcher"), "{line}");
        assert_no_canary(&out, value);
    }
    // A variable the operator did not list is not readable either.
    let out = step(
        &a,
        &pinned(&a, ""),
        &[
            ("PLUGIN_BUILD_ARGS_FROM_ENV", "DEPLOY_KEY"),
            ("DEPLOY_KEY", "deploy-canary"),
        ],
    );
    let line = a.assert_refused_before_any_request(&out, "unlisted variable");
    assert!(line.contains("build_env"), "{line}");
    assert!(!out.stderr.contains("deploy-canary"), "{}", out.stderr);
}

#[test]
fn a_value_holding_a_secret_is_refused_and_never_printed() {
    let a = Attack::new();
    for (key, value) in [
        (
            "PLUGIN_BUILD_ARGS",
            format!(r#"{{"X":"prefix-{TOKEN_CANARY}"}}"#),
        ),
        ("PLUGIN_LABELS", format!("leak={PASSWORD_CANARY}")),
        ("PLUGIN_TAGS", format!("v1,{PASSWORD_CANARY}")),
        // Woodpecker lets any setting take from_secret: `context: {from_secret: hcloud_token}`
        // would put the token in the error that names a missing directory.
        ("PLUGIN_CONTEXT", TOKEN_CANARY.to_owned()),
        ("PLUGIN_PIPELINE", TOKEN_CANARY.to_owned()),
        ("PLUGIN_USERNAME", PASSWORD_CANARY.to_owned()),
    ] {
        let out = step(&a, &pinned(&a, ""), &[(key, &value)]);
        let line = a.assert_refused_before_any_request(&out, key);
        let setting = key.trim_start_matches("PLUGIN_").to_ascii_lowercase();
        assert!(line.starts_with(&format!("error: {setting}: ")), "{line}");
        assert!(line.contains("holds a secret of the launcher"), "{line}");
        assert_no_canary(&out, key);
    }
}

#[test]
fn paths_stay_inside_the_workspace() {
    let a = Attack::new();
    let outside = a.outside.path();
    std::os::unix::fs::symlink(outside, a.ctx.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink("/", a.ctx.path().join("root")).unwrap();
    let fifo = a.ctx.path().join("history.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let outside_report = outside.join("report.json");
    let cases: Vec<(&str, String, &str)> = vec![
        ("PLUGIN_CONTEXT", "/".into(), "must be a path inside"),
        ("PLUGIN_CONTEXT", "root".into(), "symlink"),
        ("PLUGIN_CONTEXT", "elsewhere".into(), "symlink"),
        ("PLUGIN_CONTEXT", "../..".into(), "must be a path inside"),
        (
            "PLUGIN_DOCKERFILE",
            "../../../../etc/passwd".into(),
            "must be a path inside",
        ),
        (
            "PLUGIN_DOCKERFILE",
            "elsewhere/Dockerfile".into(),
            "symlink",
        ),
        (
            "PLUGIN_REPORT",
            outside_report.display().to_string(),
            "must be a path inside",
        ),
        ("PLUGIN_REPORT", "elsewhere/report.json".into(), "symlink"),
        ("PLUGIN_TAGS_FILE", "elsewhere/rules".into(), "symlink"),
        (
            "PLUGIN_HISTORY",
            "file:/dev/zero".into(),
            "must be a path inside",
        ),
        ("PLUGIN_HISTORY", "file:history.fifo".into(), "regular file"),
    ];
    for (key, value, says) in cases {
        let out = plugin(&a, &pinned(&a, ""), &[(key, &value)]);
        let line = a.assert_refused_before_any_request(&out, &format!("{key}={value}"));
        let setting = key.trim_start_matches("PLUGIN_").to_ascii_lowercase();
        assert!(
            line.starts_with(&format!("error: {setting}: ")),
            "{key}: {line}"
        );
        assert!(line.contains(says), "{key}={value}: {line}");
    }
    assert!(!outside_report.exists(), "no report was written outside");
}

/// The workspace reached through a symlink (a directory above it swapped for one in the volume
/// the steps share), and a context whose real path is not beneath the workspace (the step's
/// directory elsewhere, as a symlink swapped in after the settings were checked would make
/// it): refused in one line, nothing read from there, no API request.
#[test]
fn the_workspace_is_real_and_the_context_stays_beneath_it() {
    let a = Attack::new();
    let policy = pinned(&a, "");
    let link = a.outside.path().join("workspace-link");
    std::os::unix::fs::symlink(a.ctx.path(), &link).unwrap();
    let link = link.display().to_string();
    let out = plugin(&a, &policy, &[("CI_WORKSPACE", &link)]);
    let line = a.assert_refused_before_any_request(&out, "a symlinked workspace");
    assert!(
        line.starts_with("error: CI_WORKSPACE: ") && line.contains("reached through a symlink"),
        "{line}"
    );
    // The context left at its default (the step's directory), which is outside the workspace.
    let out = plugin_in(&a, a.outside.path(), &policy, &[]);
    let line = a.assert_refused_before_any_request(&out, "a context outside the workspace");
    assert!(line.contains("outside the workspace"), "{line}");
}

#[test]
fn the_provider_and_its_tools_are_the_operators() {
    let a = Attack::new();
    std::fs::create_dir(a.ctx.path().join("tools")).unwrap();
    for (key, value) in [
        ("PLUGIN_PROVIDER", "local"),
        ("PLUGIN_LOCAL_TOOLS", "tools"),
        ("PLUGIN_LOCAL_DIR", "/tmp"),
        ("PLUGIN_LOCAL_MEMORY_SCALE", "1"),
    ] {
        let out = plugin(&a, &pinned(&a, ""), &[(key, value)]);
        let line = a.assert_refused_before_any_request(&out, key);
        let setting = key.trim_start_matches("PLUGIN_").to_ascii_lowercase();
        assert!(line.starts_with(&format!("error: {setting}: ")), "{line}");
    }
}

#[test]
fn golden_image_chooses_among_golden_snapshots_only() {
    let a = Attack::new();
    let production = a.sim.add_snapshot(
        "amd64",
        &[("role", "db"), ("env", "production")],
        "2026-11-25T00:00:00+00:00",
    );
    for value in ["role=db".to_owned(), production.to_string()] {
        // A dry run: the registry is not asked, so the snapshot is the first thing checked.
        let out = plugin(
            &a,
            &pinned(&a, ""),
            &[("PLUGIN_GOLDEN_IMAGE", &value), ("PLUGIN_DRY_RUN", "true")],
        );
        let line = out.assert_one_line_error(2).to_owned();
        assert!(
            line.contains(&format!(
                "golden_image \"{value}\": no golden amd64 snapshot"
            )) || line.contains(&format!(
                "golden_image {value}: not one of the newest golden"
            )),
            "{value}: {line}"
        );
        assert_eq!(
            a.sim.calls().get("POST /servers"),
            None,
            "{value}: no server was created"
        );
        a.sim.assert_clean();
    }
    // A selector the operator's policy names is the operator's choice: used as it is.
    let out = plugin(
        &a,
        &pinned(&a, ", golden_images = [\"role=db\"]"),
        &[
            ("PLUGIN_GOLDEN_IMAGE", "role=db"),
            ("PLUGIN_DRY_RUN", "true"),
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let create = a.sim.last_create_request().expect("a server was created");
    assert_eq!(create["image"], production.to_string(), "{create}");
    a.sim.assert_clean();
}

#[test]
fn a_pipeline_cannot_push_into_the_history_or_the_cache() {
    let a = Attack::new();
    for repo in [
        "cache/buildkit-launcher/history/org/attack",
        "cache/org/app",
    ] {
        let out = plugin(&a, &pinned(&a, ""), &[("PLUGIN_REPO", repo)]);
        let line = a.assert_refused_before_any_request(&out, repo);
        assert!(line.starts_with("error: repo: "), "{line}");
        assert!(line.contains("namespace"), "{line}");
    }
}

#[test]
fn auto_tag_never_tags_a_pull_request_latest() {
    let a = Attack::new();
    // Woodpecker sets CI_COMMIT_BRANCH to the target branch of a pull request.
    let out = plugin(
        &a,
        &pinned(&a, ""),
        &[
            ("PLUGIN_AUTO_TAG", "true"),
            ("CI_PIPELINE_EVENT", "pull_request"),
            ("CI_COMMIT_BRANCH", "main"),
            ("CI_REPO_DEFAULT_BRANCH", "main"),
            ("CI_COMMIT_REF", "refs/pull/7/head"),
            ("CI_COMMIT_PULL_REQUEST", "7"),
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("never tagged"), "{}", out.stdout);
    assert_eq!(a.sim.total_calls(), 0, "{:?}", a.sim.calls());
}

#[test]
fn no_server_above_the_price_ceiling_not_even_the_retry() {
    let a = Attack::new();
    // 8 GB on arm64 is cax21 (0.007 EUR/h by reference), above a 0.0065 EUR/h ceiling that
    // leaves only cax11: refused before any request, the ceiling named.
    std::fs::write(
        a.ctx.path().join(".build-spec.ncl"),
        "{ arch = \"arm64\", memory_gb = 8 }",
    )
    .unwrap();
    let out = plugin(&a, &pinned(&a, ", max_eur_per_hour = 0.0065"), &[]);
    let line = a.assert_refused_before_any_request(&out, "arm64 under a price ceiling");
    assert!(
        line.contains("no arm64 tier has 8 GB memory") && line.contains("0.0065 EUR/h"),
        "{line}"
    );
}

#[test]
fn names_and_quoted_values_are_safe() {
    let a = Attack::new();
    let out = plugin(&a, &pinned(&a, ""), &[("PLUGIN_PIPELINE", "7;rm")]);
    let line = a.assert_refused_before_any_request(&out, "pipeline");
    assert!(line.starts_with("error: pipeline: "), "{line}");
    // A tags file line with escape sequences is quoted escaped, never raw.
    std::fs::write(
        a.ctx.path().join(".tags"),
        "v1\n\u{1b}]0;owned\u{7}\u{1b}[2J\n",
    )
    .unwrap();
    let out = plugin(&a, &pinned(&a, ""), &[("PLUGIN_TAGS_FILE", ".tags")]);
    let line = a.assert_refused_before_any_request(&out, "tags file");
    assert!(!out.stderr.contains('\u{1b}'), "{:?}", out.stderr);
    assert!(line.contains("\\u{1b}"), "{line}");
    // From a step directory inside the workspace holding another `.tags`: the file checked
    // (the workspace's) is the one read.
    let sub = a.ctx.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join(".tags"), "v1\n").unwrap();
    let out = plugin_in(&a, &sub, &pinned(&a, ""), &[("PLUGIN_TAGS_FILE", ".tags")]);
    let line = a.assert_refused_before_any_request(&out, "tags file from a step directory");
    assert!(line.contains("\\u{1b}"), "{line}");
}

#[test]
fn an_upper_case_pipeline_becomes_a_valid_server_name() {
    let name = buildkit_launcher::provider::runner_name("Org/App", "ABC", "deadbeef");
    assert_eq!(name, "bkl-org-app-abc-deadbeef");
}

/// A pull request's plugin build pushes under `pr-<N>` only, writes the default cache under
/// that scope, never `latest` nor main's cache entry, and records no history sample: through
/// the simulator, a real runner and a real registry.
#[test]
fn a_pull_request_pushes_only_into_its_own_namespace() {
    use support::hcloud_sim::HcloudSim;
    use support::registry::{Registry, require_root_and_tools};
    if !require_root_and_tools(support::local_build::TOOLS) {
        return;
    }
    let sim = HcloudSim::with_golden_amd64();
    let registry = Registry::start().with_base_image();
    let ctx = support::Context::new().file(
        "Dockerfile",
        &format!("FROM {}\nRUN echo pr > /pr.txt\n", registry.base_image()),
    );
    let out = support::plugin_step::run(
        &sim,
        &ctx,
        &[
            ("CI_REPO", "org/app"),
            ("CI_PIPELINE_EVENT", "pull_request"),
            ("CI_COMMIT_BRANCH", "main"),
            ("CI_COMMIT_REF", "refs/pull/7/head"),
            ("CI_COMMIT_PULL_REQUEST", "7"),
            ("PLUGIN_REGISTRY", &registry.addr),
            ("PLUGIN_INSECURE_REGISTRY", "true"),
            ("PLUGIN_REPO", "org/app"),
            ("PLUGIN_TAGS", "latest,v1"),
            ("PLUGIN_REPORT", "report.json"),
        ],
    );
    let stderr = out.stderr;
    assert_eq!(out.code, 0, "{stderr}");
    assert!(
        stderr.contains("pushes only the tag pr-7"),
        "the log says why the tags changed: {stderr}"
    );
    let tags = registry.tags("org/app").unwrap_or_default();
    assert!(tags.contains("\"pr-7\""), "{tags}");
    assert!(
        !tags.contains("latest") && !tags.contains("\"v1\""),
        "main's tags untouched: {tags}"
    );
    let (_, _, catalog) = registry.get("/v2/_catalog", &[]).unwrap();
    let cache = registry.tags("cache/org/app").unwrap_or_default();
    assert!(
        cache.contains("\"pr-7\""),
        "the PR's own cache entry: {cache} (catalog {catalog})"
    );
    assert!(
        !cache.contains("latest"),
        "main's cache entry untouched: {cache}"
    );
    let (status, _, catalog) = registry.get("/v2/_catalog", &[]).unwrap();
    assert_eq!(status, 200);
    assert!(catalog.contains("org/app"), "{catalog}");
    assert!(
        !catalog.contains("history"),
        "a pull request writes no history: {catalog}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ctx.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(
        report["plan"]["images"][0],
        format!("{}/org/app:pr-7", registry.addr)
    );
    sim.assert_clean();
}
