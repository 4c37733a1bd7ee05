//! What Woodpecker users of plugin-docker-buildx expect, end to end through the Hetzner API
//! simulator: a dry run pushes nothing, extra registry caches are written and read, `auto_tag`
//! and labels come from the pipeline, a branch `auto_tag` has nothing for is skipped without a
//! server, and `build_secrets` reach the build.

mod support;

use std::process::Command;

use support::BIN;
use support::hcloud_sim::cloud::Cloud;

/// The image config's labels of `repo:tag` in the fixture's registry.
fn labels(c: &Cloud, repo: &str, tag: &str) -> serde_json::Value {
    c.registry.image_config(repo, tag)["config"]["Labels"].clone()
}

#[test]
fn a_dry_run_builds_on_a_server_and_pushes_nothing() {
    let Some(c) = Cloud::new("RUN echo built > /built.txt") else {
        return;
    };
    let extra = format!("{}/cache/e2e/extra", c.registry.addr);
    // With other build options: no cache, provenance, an extra cache (an SBOM needs a scanner
    // image: tests/e2e_attestations.rs).
    let out = c.build(&[
        "--dry-run",
        "--tag",
        "latest",
        "--no-cache",
        "--provenance",
        "max",
        "--cache-to",
        &extra,
    ]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("build succeeded (dry run, nothing pushed)"),
        "{}",
        out.stdout
    );
    let report = c.report();
    assert_eq!(report["plan"]["dry_run"], true);
    assert_eq!(report["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(
        c.registry.manifest_digest("e2e/app", "latest"),
        None,
        "a dry run pushed"
    );
    assert_eq!(
        c.registry.tags("cache/e2e/app"),
        None,
        "a dry run exported its cache"
    );
    assert_eq!(
        c.registry.tags("cache/e2e/extra"),
        None,
        "a dry run exported an extra cache"
    );
    c.sim.assert_clean();
}

#[test]
fn an_extra_cache_is_written_to_the_builds_registry_and_read_by_a_later_build() {
    let Some(c) = Cloud::new("RUN echo ran-$((40+2)) | tee /ran") else {
        return;
    };
    let extra = format!("{}/cache/e2e/shared:main", c.registry.addr);
    let out = c.build(&["--cache-to", &format!("type=registry,ref={extra},mode=max")]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("ran-42"), "{}", out.stderr);
    assert_eq!(
        c.report()["plan"]["extra_caches"]["to"][0]["ref"].as_str(),
        Some(extra.as_str())
    );
    // BuildKit keeps each registry cache as one manifest under its reference's tag.
    for (repo, tag) in [("cache/e2e/shared", "main"), ("cache/e2e/app", "latest")] {
        let tags = c.registry.tags(repo).unwrap_or_default();
        assert!(
            tags.contains(&format!("\"{tag}\"")),
            "no cache in {repo}: {tags}"
        );
    }
    c.sim.assert_clean();

    // A later build on a new server, its default cache off: the RUN step comes from the extra
    // cache alone.
    let out = c.build(&["--cache", "off", "--cache-from", &extra]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(
        !out.stderr.contains("ran-42"),
        "the RUN step ran again:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("importing cache manifest from") && out.stderr.contains(" CACHED"),
        "{}",
        out.stderr
    );
    assert_eq!(c.report()["plan"]["cache_ref"], serde_json::Value::Null);
    c.sim.assert_clean();
}

#[test]
fn auto_tag_and_labels_come_from_the_pipeline() {
    let Some(c) = Cloud::new("RUN echo built > /built.txt") else {
        return;
    };
    let out = c
        .launcher()
        .env("CI_COMMIT_TAG", "v1.2.3")
        .env("CI_COMMIT_SHA", "0123456789abcdef0123456789abcdef01234567")
        .env("CI_REPO_URL", "https://git.example/org/app")
        .args(c.args())
        .args(["--auto-tag", "--label", "team=builds"])
        .run();
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    let digest = c.report()["digest"].as_str().unwrap().to_owned();
    for tag in ["1", "1.2", "1.2.3"] {
        assert_eq!(
            c.registry.manifest_digest("e2e/app", tag).as_deref(),
            Some(digest.as_str()),
            "tag {tag}"
        );
    }
    assert_eq!(c.registry.manifest_digest("e2e/app", "latest"), None);
    let labels = labels(&c, "e2e/app", "1.2.3");
    assert_eq!(labels["team"], "builds", "{labels}");
    assert_eq!(
        labels["org.opencontainers.image.version"], "1.2.3",
        "{labels}"
    );
    assert_eq!(
        labels["org.opencontainers.image.revision"], "0123456789abcdef0123456789abcdef01234567",
        "{labels}"
    );
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://git.example/org/app"
    );
    assert!(
        labels["org.opencontainers.image.created"].is_string(),
        "{labels}"
    );
    c.sim.assert_clean();
}

#[test]
fn auto_tag_on_a_feature_branch_is_skipped_without_a_server() {
    let Some(c) = Cloud::new("RUN true") else {
        return;
    };
    // The fixture registered the project's SSH key through the API.
    let before = c.sim.total_calls();
    let out = c
        .launcher()
        .env("CI_COMMIT_BRANCH", "feature/x")
        .env("CI_REPO_DEFAULT_BRANCH", "main")
        .args(c.args())
        .args(["--auto-tag"])
        .run();
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(
        out.stdout.contains("the build is skipped"),
        "{}",
        out.stdout
    );
    assert_eq!(c.sim.total_calls(), before);

    // Without pipeline facts, auto_tag cannot work: exit 2, one line, nothing spawned.
    let out = c.launcher().args(c.args()).args(["--auto-tag"]).run();
    let line = out.assert_one_line_error(2);
    assert!(
        line.contains("auto_tag needs the pipeline's CI_COMMIT_TAG"),
        "{line}"
    );
    assert_eq!(c.sim.total_calls(), before);
}

#[test]
fn build_secrets_from_the_settings_map_reach_the_build_and_nothing_else() {
    let Some(c) = Cloud::new(
        // The value's hash, so that the Dockerfile (which the log shows) does not hold it.
        "RUN --mount=type=secret,id=npmrc test \"$(sha256sum < /run/secrets/npmrc | cut -c1-16)\" = 4b9f7c32ad116efe",
    ) else {
        return;
    };
    let policy = c.ctx.path().join("operator-policy.ncl");
    std::fs::write(
        &policy,
        format!("{{ hcloud_endpoint = \"{}\" }}", c.sim.endpoint),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if ["CI", "PLUGIN_", "HCLOUD_", "BUILDKIT_LAUNCHER"]
            .iter()
            .any(|p| key.starts_with(p))
        {
            cmd.env_remove(&key);
        }
    }
    let report = c.report_path();
    let out = cmd
        .current_dir(c.ctx.path())
        .env("HOME", c.tmp.path())
        .env("TMPDIR", c.tmp.path())
        .env("BUILDKIT_LAUNCHER_POLICY", &policy)
        .env("CI_WORKSPACE", c.ctx.path())
        .env("CI_REPO", "e2e/app")
        .env("PLUGIN_HCLOUD_TOKEN", &c.sim.token)
        .env("PLUGIN_REGISTRY", &c.registry.addr)
        .env("PLUGIN_INSECURE_REGISTRY", "true")
        .env("PLUGIN_HISTORY", "none")
        .env("PLUGIN_REPORT", &report)
        .env("PLUGIN_BUILD_SECRETS", r#"{"npmrc":"fake-npm-secret-31"}"#)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    let report_text = std::fs::read_to_string(&report).unwrap();
    for text in [stderr.as_ref(), report_text.as_str()] {
        assert!(
            !text.contains("fake-npm-secret-31"),
            "the secret value leaked: {text}"
        );
    }
    c.sim.assert_clean();

    // A value that is not a string (a map the user forgot to resolve) is exit 2.
    let out = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("CI_WORKSPACE", c.ctx.path())
        .env("PLUGIN_BUILD_SECRETS", r#"{"npmrc":{"from_secret":"npm"}}"#)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the value of npmrc must be a string"),
        "{stderr}"
    );
}
