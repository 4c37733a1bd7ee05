//! The registry as the seed runs zot: namespaces `images/` and `cache/`, and a token service that
//! grants the CI user exactly those (distribution with `auth.token`, tests/support/token_auth.rs).
//! Builds go through the Hetzner API simulator onto sandbox runners, so the bearer flow is
//! exercised by the launcher's own registry client and by the build tool on the runner.

mod support;

use std::sync::Arc;

use support::hcloud_sim::HcloudSim;
use support::local_build::TOOLS;
use support::registry::{Registry, require_root_and_tools};
use support::token_auth::TokenService;
use support::{Context, Launcher};

const CI_PASSWORD: &str = "fake-ci-password";

struct Zot {
    sim: HcloudSim,
    tokens: Arc<TokenService>,
    registry: Registry,
    ctx: Context,
}

impl Zot {
    fn new(dockerfile_body: &str) -> Option<Zot> {
        // A local build, and openssl for the token service's key.
        if !require_root_and_tools(TOOLS) || !require_root_and_tools(&["openssl"]) {
            return None;
        }
        let tokens = Arc::new(TokenService::start(&[
            (
                "admin",
                "fake-admin-password",
                &[("*", &["pull", "push", "delete"])],
            ),
            (
                "ci",
                CI_PASSWORD,
                &[
                    ("images/*", &["pull", "push"]),
                    ("cache/*", &["pull", "push"]),
                    ("base/*", &["pull"]),
                ],
            ),
        ]));
        let registry =
            Registry::start_with_tokens(tokens.clone(), ("admin", "fake-admin-password"))
                .with_base_image();
        let sim = HcloudSim::with_golden_amd64();
        let ctx = Context::new()
            .file(
                "Dockerfile",
                &format!("FROM {}\n{dockerfile_body}\n", registry.base_image()),
            )
            .file(
                "fast.ncl",
                "{ hcloud.retry = { initial_delay_ms = 50, max_delay_ms = 400 } }",
            );
        Some(Zot {
            sim,
            tokens,
            registry,
            ctx,
        })
    }

    fn build(&self, repo: &str, extra: &[&str]) -> support::Outcome {
        let ctx = self.ctx.path().display().to_string();
        Launcher::new()
            .env("HCLOUD_TOKEN", &self.sim.token)
            .env("HCLOUD_ENDPOINT", &self.sim.endpoint)
            .env("REGISTRY_PASSWORD", CI_PASSWORD)
            .args([
                "--config",
                &format!("{ctx}/fast.ncl"),
                "build",
                "--provider",
                "hcloud",
            ])
            .args([
                "--context",
                &ctx,
                "--project",
                "org/app",
                "--history",
                "registry",
            ])
            .args(["--registry", &self.registry.addr, "--insecure-registry"])
            .args(["--registry-user", "ci", "--repo", repo])
            .args(["--report", &format!("{ctx}/report.json")])
            .args(extra)
            .run()
    }

    fn plan(&self) -> support::Outcome {
        Launcher::new()
            .env("REGISTRY_PASSWORD", CI_PASSWORD)
            .args(["plan", "--context"])
            .args([self.ctx.path()])
            .args(["--project", "org/app", "--history", "registry"])
            .args(["--registry", &self.registry.addr, "--insecure-registry"])
            .args(["--registry-user", "ci", "--repo", "images/app"])
            .run()
    }

    fn history_tags(&self) -> Vec<String> {
        let key = buildkit_launcher::history::HistoryKey {
            repo: "org/app".into(),
            dockerfile: "Dockerfile".into(),
            target: None,
            arch: buildkit_launcher::config::Arch::Amd64,
        };
        let repo = buildkit_launcher::history::registry::key_repository(
            "cache/buildkit-launcher/history",
            &key,
        );
        match self.registry.tags(&repo) {
            Some(body) => serde_json::from_str::<serde_json::Value>(&body).unwrap()["tags"]
                .as_array()
                .map(|t| t.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

#[test]
fn a_token_scoped_to_images_and_cache_is_enough_for_image_cache_and_history() {
    let Some(z) = Zot::new("RUN echo built > /built.txt") else {
        return;
    };
    let out = z.build("images/app", &["--tag", "latest"]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    assert!(z.registry.manifest_digest("images/app", "latest").is_some());
    assert!(
        z.registry.tags("cache/images/app").is_some(),
        "the registry cache was pushed"
    );
    assert_eq!(
        z.history_tags().len(),
        1,
        "one sample in cache/buildkit-launcher/history"
    );
    let plan = z.plan();
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(
        plan.stdout.contains("(1 successful builds of this key)"),
        "{}",
        plan.stdout
    );
    z.sim.assert_clean();
}

#[test]
fn a_repository_outside_the_tokens_scope_is_refused_before_any_server() {
    let Some(z) = Zot::new("RUN echo built > /built.txt") else {
        return;
    };
    let out = z.build("other/app", &[]);
    let line = out.assert_one_line_error(2);
    assert!(
        line.contains("user \"ci\" may not push to the image repository other/app"),
        "{line}"
    );
    assert_eq!(z.sim.total_calls(), 0, "{:?}", z.sim.calls());
    z.sim.assert_clean();
}

#[test]
fn extra_caches_outside_the_tokens_scope_are_refused_before_any_server() {
    let Some(z) = Zot::new("RUN echo built > /built.txt") else {
        return;
    };
    let r = &z.registry.addr;
    // Pushing a cache needs push there, as the default cache does.
    let out = z.build(
        "images/app",
        &["--cache-to", &format!("{r}/other/cache:main")],
    );
    let line = out.assert_one_line_error(2);
    assert!(
        line.contains("user \"ci\" may not push to the cache repository other/cache"),
        "{line}"
    );
    // Reading one in the build's registry needs pull (base/* has pull only: enough to read).
    let out = z.build(
        "images/app",
        &["--cache-from", &format!("{r}/other/cache,{r}/base/busybox")],
    );
    let line = out.assert_one_line_error(2);
    assert!(
        line.contains("user \"ci\" may not read the cache repository other/cache"),
        "{line}"
    );
    assert_eq!(z.sim.total_calls(), 0, "{:?}", z.sim.calls());
    // A dry run writes no cache, so push there is not asked for.
    let out = z.build(
        "images/app",
        &["--cache-to", &format!("{r}/base/cache"), "--dry-run"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(z.registry.tags("base/cache"), None);
    z.sim.assert_clean();
}

#[test]
fn wrong_credentials_are_named_as_such() {
    let Some(z) = Zot::new("RUN echo built > /built.txt") else {
        return;
    };
    let out = Launcher::new()
        .env("HCLOUD_TOKEN", &z.sim.token)
        .env("HCLOUD_ENDPOINT", &z.sim.endpoint)
        .env("REGISTRY_PASSWORD", "fake-wrong-password")
        .args([
            "build",
            "--provider",
            "hcloud",
            "--history",
            "none",
            "--context",
        ])
        .args([z.ctx.path()])
        .args(["--registry", &z.registry.addr, "--insecure-registry"])
        .args(["--registry-user", "ci", "--repo", "images/app"])
        .run();
    let line = out.assert_one_line_error(2);
    assert!(
        line.contains("refused the credentials of user \"ci\""),
        "{line}"
    );
    assert!(!line.contains("fake-wrong-password"), "{line}");
    assert_eq!(z.sim.total_calls(), 0);
}

#[test]
fn the_token_services_lifetimes_are_real() {
    let Some(z) = Zot::new("RUN true") else {
        return;
    };
    // The double is only useful if a token past its lifetime is refused by the registry.
    z.tokens.set_lifetime(2);
    let token = z
        .tokens
        .mint("admin", &["repository:base/busybox:pull".into()]);
    let get = |token: &str| {
        support::registry::http_get(
            &z.registry.addr,
            "/v2/base/busybox/tags/list",
            &[("Authorization", format!("Bearer {token}"))],
        )
        .unwrap()
        .0
    };
    assert_eq!(get(&token), 200);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(get(&token), 401, "an expired token was accepted");
}

#[test]
fn a_build_that_outlasts_its_tokens_still_verifies_and_records() {
    let Some(z) = Zot::new("RUN sleep 8") else {
        return;
    };
    // Every token the registry accepts for 4 s only: the ones the launcher got before the
    // build are long dead when it verifies the push and appends the sample.
    z.tokens.set_lifetime(4);
    let before = z.tokens.issued();
    let out = z.build("images/app", &["--tag", "latest"]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(z.tokens.issued() > before);
    assert_eq!(z.history_tags().len(), 1);
    z.sim.assert_clean();
}

#[test]
fn history_the_token_may_not_read_is_a_warning_and_the_default_sizes() {
    let Some(z) = Zot::new("RUN echo built > /built.txt") else {
        return;
    };
    // History kept where the CI token has no grant at all.
    let ctx = z.ctx.path().display().to_string();
    std::fs::write(
        z.ctx.path().join("fast.ncl"),
        "{ hcloud.retry = { initial_delay_ms = 50, max_delay_ms = 400 }, registry.history = \"history/buildkit-launcher\" }",
    )
    .unwrap();
    let out = z.build("images/app", &["--tag", "latest"]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(
        out.stderr
            .contains("may not push to the history repository history/buildkit-launcher/org/app/"),
        "{}",
        out.stderr
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{ctx}/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["plan"]["source"], "default", "{report}");
    z.sim.assert_clean();
}

#[test]
fn check_reports_the_permissions_per_location() {
    let Some(z) = Zot::new("RUN true") else {
        return;
    };
    let check = |repo: &str| {
        let out = Launcher::new()
            .env("HCLOUD_TOKEN", &z.sim.token)
            .env("HCLOUD_ENDPOINT", &z.sim.endpoint)
            .env("REGISTRY_PASSWORD", CI_PASSWORD)
            .args([
                "check",
                "--json",
                "--registry",
                &z.registry.addr,
                "--insecure-registry",
            ])
            .args(["--registry-user", "ci", "--repo", repo])
            .run();
        let findings: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", out.stdout, out.stderr));
        findings
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["area"] == "registry permissions" && f["severity"] != "passed")
            .map(|f| {
                (
                    f["severity"].as_str().unwrap().to_owned(),
                    f["message"].as_str().unwrap().to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(check("images/app"), Vec::<(String, String)>::new());
    let other = check("other/app");
    assert_eq!(other.len(), 1, "{other:?}");
    assert!(
        other[0]
            .1
            .contains("may not push to the image repository other/app"),
        "{other:?}"
    );
    assert_eq!(other[0].0, "high", "{other:?}");
}
