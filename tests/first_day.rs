//! The mistakes of a first day with the launcher (issue 19), each answered with what to write
//! instead, in the words the user used: flags at a terminal, settings in a pipeline.

mod support;

use support::hcloud_sim::HcloudSim;
use support::{Context, Launcher};

/// A bad command line: clap's message with its tips, no usage block, exit 2.
fn clap_error(args: &[&str]) -> String {
    let out = Launcher::new().args(args).run();
    assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    assert!(!out.stderr.contains("Usage:"), "{}", out.stderr);
    out.stderr
}

#[test]
fn command_line_mistakes_keep_clap_s_tips() {
    let e = clap_error(&["plan", "--regsitry", "zot:5000"]);
    assert!(
        e.contains("tip: a similar argument exists: '--registry'"),
        "{e}"
    );
    let e = clap_error(&["biuld"]);
    assert!(
        e.contains("tip: a similar subcommand exists: 'build'"),
        "{e}"
    );
    let e = clap_error(&["simulate"]);
    assert!(
        e.contains("--trace <FILE>"),
        "the missing argument is named: {e}"
    );
    let e = clap_error(&["plan", "--arch", "x86_64"]);
    assert!(e.contains("[possible values: amd64, arm64]"), "{e}");
    let e = clap_error(&["plan", "--tags", "v1"]);
    assert!(e.contains("'--tag'"), "{e}");
}

#[test]
fn a_repo_with_a_host_says_where_the_host_goes() {
    let e = clap_error(&["plan", "--repo", "zot.example:5000/org/app"]);
    assert!(
        e.contains("put zot.example:5000 in registry (--registry) and org/app in repo (--repo)"),
        "{e}"
    );
}

#[test]
fn history_in_the_registry_without_one_says_what_to_set() {
    let ctx = Context::new().file("Dockerfile", "FROM scratch\n");
    let out = Launcher::new()
        .args(["plan", "--history", "registry", "--context"])
        .args([ctx.path()])
        .run();
    let line = out.assert_one_line_error(2);
    assert!(
        line.contains("set --registry (or --history none)"),
        "{line}"
    );
}

/// A plugin step, as Woodpecker runs it: no arguments, the settings in `PLUGIN_*`.
fn plugin(ctx: &Context, settings: &[(&str, &str)]) -> support::Outcome {
    let mut launcher = Launcher::new()
        .current_dir(ctx.path())
        .env("CI_WORKSPACE", ctx.path())
        .env("CI_REPO", "org/app");
    for (k, v) in settings {
        launcher = launcher.env(k, *v);
    }
    launcher.run()
}

#[test]
fn plugin_errors_name_settings_not_flags() {
    let ctx = Context::new().file("Dockerfile", "FROM scratch\n");
    let out = plugin(&ctx, &[("PLUGIN_TAGS", "v1,bad tag")]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("for tags:"), "{}", out.stderr);
    assert!(!out.stderr.contains("--tag"), "{}", out.stderr);
    assert!(!out.stderr.contains("PLUGIN_"), "{}", out.stderr);

    let out = plugin(
        &ctx,
        &[
            ("PLUGIN_TAGZ", "v1"),
            ("PLUGIN_REGSITRY", "zot:5000"),
            ("PLUGIN_DOCKERFLIE", "Dockerfile"),
        ],
    );
    let line = out.assert_one_line_error(2);
    for part in [
        "tagz (did you mean tag?)",
        "regsitry (did you mean registry?)",
        "dockerflie (did you mean dockerfile?)",
    ] {
        assert!(line.contains(part), "every unknown setting at once: {line}");
    }
}

#[test]
fn a_dry_run_step_without_a_registry_is_not_told_about_history() {
    let ctx = Context::new().file("Dockerfile", "FROM scratch\n");
    let out = plugin(&ctx, &[("PLUGIN_DRY_RUN", "true")]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(!out.stderr.contains("history"), "{}", out.stderr);
    assert!(out.stderr.contains("hcloud_token"), "{}", out.stderr);
}

#[test]
fn a_refused_token_is_the_user_s_to_fix() {
    let sim = HcloudSim::with_golden_amd64();
    let ctx = Context::new().file("Dockerfile", "FROM scratch\n");
    let context = ctx.path().display().to_string();
    let build = [
        "build",
        "--history",
        "none",
        "--dry-run",
        "--context",
        &context,
    ];
    for args in [&build[..], &["reap"][..]] {
        let out = Launcher::new()
            .env("HCLOUD_TOKEN", "obviously-wrong-token")
            .env("HCLOUD_ENDPOINT", &sim.endpoint)
            .args(args)
            .run();
        let line = out.assert_one_line_error(2);
        assert!(line.contains("(HTTP 401)"), "{line}");
        assert!(
            line.contains("the Hetzner API refused the token; create a read & write API token"),
            "{}: {line}",
            args[0]
        );
    }
    assert!(sim.servers().is_empty());
}

/// A step written for plugin-docker-buildx runs with warnings and no edits beyond the token:
/// `registry` as a URL, `repo` with the host in it, `cache_images`, `pull_image`,
/// `provenance: false`.
#[test]
fn a_plugin_docker_buildx_step_runs_with_warnings() {
    use support::registry::{Registry, require_root_and_tools};
    if !require_root_and_tools(support::local_build::TOOLS) {
        return;
    }
    let sim = HcloudSim::with_golden_amd64();
    let registry = Registry::start().with_base_image();
    let ctx = Context::new().file(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo buildx > /from.txt\n",
            registry.base_image()
        ),
    );
    let url = format!("http://{}/", registry.addr);
    // `repo` as a list: the host of the first moves to registry, the image goes to both.
    let repo = format!("{}/org/moved,org/mirror", registry.addr);
    let cache = format!("{}/cache/org/moved:buildx", registry.addr);
    let out = support::plugin_step::run(
        &sim,
        &ctx,
        &[
            ("CI_REPO", "org/moved"),
            ("PLUGIN_REGISTRY", &url),
            ("PLUGIN_REPO", &repo),
            ("PLUGIN_TAGS", "latest,1.0"),
            ("PLUGIN_CACHE_IMAGES", &cache),
            ("PLUGIN_PULL_IMAGE", "true"),
            ("PLUGIN_PROVENANCE", "false"),
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    for warning in [
        "warning: pull_image: not needed here",
        "warning: cache_images: each image is read (cache_from) and written (cache_to)",
        "warning: registry: ",
    ] {
        assert!(out.stderr.contains(warning), "{warning}: {}", out.stderr);
    }
    // The build log says which launcher ran, why this size, what was sent, where history went
    // and how long it all took.
    for line in [
        "buildkit-launcher: buildkit-launcher 0.",
        "buildkit-launcher: why cx",
        "buildkit-launcher: sending the context: ",
        "buildkit-launcher: history: recorded ",
        "buildkit-launcher: finished in ",
    ] {
        assert!(out.stderr.contains(line), "{line}: {}", out.stderr);
    }
    for repository in ["org/moved", "org/mirror"] {
        let tags = registry.tags(repository).unwrap_or_default();
        assert!(
            tags.contains("\"latest\"") && tags.contains("\"1.0\""),
            "{repository}: {tags}"
        );
    }
    // The cache stays with the first repository only.
    assert!(
        registry
            .tags("cache/org/mirror")
            .is_none_or(|t| !t.contains("latest"))
    );
    sim.assert_clean();
}

#[test]
fn version_completions_and_the_manual() {
    let out = Launcher::new().args(["--version"]).run();
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.starts_with("buildkit-launcher 0.") && out.stdout.contains("(commit "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("BuildKit v"),
        "the pinned BuildKit: {}",
        out.stdout
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = Launcher::new().args(["completions", shell]).run();
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert!(
            out.stdout.contains("golden-image"),
            "{shell}: every subcommand"
        );
    }
    let out = Launcher::new().args(["man"]).run();
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.contains(".TH buildkit-launcher 1"),
        "{}",
        out.stdout
    );
}

#[test]
fn simulate_without_a_valid_sample_is_exit_2() {
    let ctx = Context::new()
        .file("empty.jsonl", "")
        .file("bad.jsonl", "{\"bad\": 1}\n");
    for name in ["empty.jsonl", "bad.jsonl"] {
        let out = Launcher::new()
            .args(["simulate", "--trace"])
            .args([ctx.path().join(name)])
            .run();
        assert_eq!(out.code, 2, "{name}: {}", out.stderr);
        let last = out.stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: --trace "), "{last}");
        assert!(last.contains("holds no valid sample"), "{last}");
    }
}

/// A plain-HTTP registry without `insecure_registry`: what rustls says ("corrupt message of
/// type InvalidContentType") comes with what it means and what to set, exit 2, no server.
#[test]
fn a_plain_http_registry_without_insecure_registry_says_what_to_set() {
    use support::registry::{Registry, require_root_and_tools};
    if !require_root_and_tools(&["docker-registry"]) {
        return;
    }
    let sim = HcloudSim::with_golden_amd64();
    let registry = Registry::start();
    let ctx = Context::new().file("Dockerfile", "FROM scratch\n");
    let out = Launcher::new()
        .env("HCLOUD_TOKEN", &sim.token)
        .env("HCLOUD_ENDPOINT", &sim.endpoint)
        .args(["build", "--history", "none", "--registry", &registry.addr])
        .args(["--context"])
        .args([ctx.path()])
        .run();
    let line = out.assert_one_line_error(2);
    assert!(
        line.contains("plain HTTP where TLS was expected: set insecure_registry: true (--insecure-registry at a terminal)"),
        "{line}"
    );
    assert!(sim.servers().is_empty());
}

#[test]
fn history_list_shows_every_key() {
    let trace = support::trace("dev-steady-noisy.jsonl");
    let out = Launcher::new()
        .args(["history", "list", "--json", "--history"])
        .args([format!("file:{}", trace.display())])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rows.len(), 12, "{}", out.stdout);
    assert!(rows.iter().all(|r| r["builds"] == 60), "{}", out.stdout);
    let out = Launcher::new()
        .args(["history", "list", "--history", "registry"])
        .run();
    let line = out.assert_one_line_error(2);
    assert!(
        line.contains("--history registry lists the history kept in a registry: set --registry"),
        "{line}"
    );
}

/// The two spec mistakes of a first day: TOML-style lines, and a forgotten comma.
#[test]
fn spec_syntax_mistakes_get_a_hint() {
    let ctx = Context::new()
        .file("toml.ncl", "memory_gb = 4\ncpus = 2\n")
        .file("comma.ncl", "{\n  memory_gb = 4\n  cpus = 2\n}\n");
    for (file, hint) in [
        (
            "toml.ncl",
            "braces around the fields and a comma between them",
        ),
        ("comma.ncl", "a comma missing at the end of line 2?"),
    ] {
        let out = Launcher::new()
            .args(["spec", "check"])
            .args([ctx.path().join(file)])
            .run();
        let line = out.assert_one_line_error(2);
        assert!(line.contains(hint), "{file}: {line}");
    }
}
