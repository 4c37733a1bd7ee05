//! Every bad input of the foundation issue: exit 2 (or a warning), one clear line, no panic.

mod support;

use std::path::Path;

use support::{Context, Launcher};

/// `plan` on a context whose spec file is `spec`; returns the one error line, paths redacted.
fn plan_with_spec(spec: &str) -> String {
    let ctx = Context::new().file(".build-spec.ncl", spec);
    plan_error(&ctx, &[])
}

fn plan_error(ctx: &Context, extra: &[&str]) -> String {
    let out = Launcher::new()
        .args(["plan", "--history", "none", "--context"])
        .args([ctx.path()])
        .args(extra)
        .run();
    let real = ctx.path().canonicalize().unwrap();
    out.assert_one_line_error(2)
        .replace(&real.display().to_string(), "[CTX]")
        .replace(&ctx.path().display().to_string(), "[CTX]")
}

#[test]
fn spec_syntax_error() {
    let line = plan_with_spec("{\n  memory_gb = 4,\n  cpus = ,\n}\n");
    insta::assert_snapshot!(line, @"error: [CTX]/.build-spec.ncl:3:10: unexpected token");
}

#[test]
fn spec_unknown_field() {
    let line = plan_with_spec("{ memory_gb = 4, memroy = 8 }");
    assert!(line.contains("[CTX]/.build-spec.ncl:1:"), "{line}");
    insta::assert_snapshot!(line);
}

#[test]
fn spec_wrong_type() {
    let line = plan_with_spec("{ memory_gb = \"lots\" }");
    assert!(line.contains("expected a number, got a String"), "{line}");
    insta::assert_snapshot!(line);
}

#[test]
fn spec_out_of_range() {
    let line = plan_with_spec("{\n  cpus = 200,\n}");
    assert!(line.contains("[CTX]/.build-spec.ncl:2:"), "{line}");
    assert!(
        line.contains("must be between 1 and 64 vCPUs, got 200"),
        "{line}"
    );
    insta::assert_snapshot!(line);
}

#[test]
fn spec_request_no_tier_satisfies() {
    let line = plan_with_spec("{ memory_gb = 48, cpus = 8 }");
    insta::assert_snapshot!(line, @"error: [CTX]/.build-spec.ncl: request: no amd64 tier has 48 GB memory and 8 vCPUs; the largest, cx53, has 32 GB memory, 16 vCPUs, 320 GB disk");
}

#[test]
fn spec_unknown_tier_name() {
    let line = plan_with_spec("{ tier = \"cx52\" }");
    insta::assert_snapshot!(line, @r#"error: [CTX]/.build-spec.ncl: tier: "cx52" is not a server type of the amd64 ladder; choose one of cx23, cx33, cx43, cx53"#);
}

#[test]
fn spec_unknown_tier_name_on_the_arm64_ladder() {
    let line = plan_with_spec("{ tier = \"cx43\", arch = \"arm64\" }");
    assert!(
        line.contains("choose one of cax11, cax21, cax31, cax41"),
        "{line}"
    );
}

#[test]
fn spec_import_with_an_absolute_path_is_refused() {
    let line = plan_with_spec("let secrets = import \"/etc/passwd\" as 'Text in { memory_gb = 4 }");
    insta::assert_snapshot!(line, @r#"error: [CTX]/.build-spec.ncl: import "/etc/passwd" is refused: absolute paths are not allowed; import files of the repository by relative path"#);
}

#[test]
fn spec_import_escaping_with_dotdot_is_refused_before_it_is_read() {
    // The file outside the repository holds a value the error must never show.
    let outside = tempfile::tempdir().unwrap();
    let repo = outside.path().join("repo");
    std::fs::create_dir_all(repo.join(".git")).unwrap();
    std::fs::write(
        outside.path().join("token.ncl"),
        "{ memory_gb = \"TOPSECRET-fake\" }",
    )
    .unwrap();
    std::fs::write(repo.join("Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::write(
        repo.join(".build-spec.ncl"),
        "import \"sub/../../token.ncl\"",
    )
    .unwrap();
    let out = Launcher::new()
        .args(["plan", "--history", "none", "--context"])
        .args([&repo])
        .run();
    let line = out.assert_one_line_error(2);
    assert!(!line.contains("TOPSECRET"), "{line}");
    assert!(
        line.contains(
            "import \"sub/../../token.ncl\" is refused: it resolves outside the repository"
        ),
        "{line}"
    );
}

#[test]
fn spec_import_inside_the_repository_is_allowed_even_from_a_subdirectory() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join(".git")).unwrap();
    std::fs::create_dir_all(root.path().join("sizes")).unwrap();
    std::fs::write(root.path().join("sizes/big.ncl"), "{ memory_gb = 12 }").unwrap();
    let app = root.path().join("services/app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::write(
        app.join(".build-spec.ncl"),
        "import \"../../sizes/big.ncl\"",
    )
    .unwrap();
    let out = Launcher::new()
        .args(["plan", "--json", "--history", "none", "--context"])
        .args([&app])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan["tier"], "cx43");
}

#[test]
fn spec_import_through_a_symlink_that_leaves_the_repository_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("x.ncl"), "{ memory_gb = 4 }").unwrap();
    let ctx = Context::new().file(".build-spec.ncl", "import \"link/x.ncl\"");
    std::os::unix::fs::symlink(outside.path(), ctx.path().join("link")).unwrap();
    let line = plan_error(&ctx, &[]);
    assert!(
        line.contains("import \"link/x.ncl\" is refused: it resolves outside the repository"),
        "{line}"
    );
}

#[test]
fn spec_that_is_itself_a_symlink_out_of_the_repository_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("x.ncl"), "{ memory_gb = 4 }").unwrap();
    let ctx = Context::new();
    std::os::unix::fs::symlink(
        outside.path().join("x.ncl"),
        ctx.path().join(".build-spec.ncl"),
    )
    .unwrap();
    let line = plan_error(&ctx, &[]);
    assert!(line.contains("resolves outside the repository"), "{line}");
}

#[test]
fn spec_package_import_is_refused() {
    let line = plan_with_spec("import foo");
    assert!(line.contains("package imports are not allowed"), "{line}");
}

#[test]
fn spec_evaluation_is_bounded_in_time() {
    let ctx = Context::new().file(
        ".build-spec.ncl",
        "let rec spin = fun n => spin (n + 1) in { memory_gb = spin 0 }",
    );
    let config = ctx.path().join("fast.ncl");
    std::fs::write(&config, "{ spec.timeout_ms = 300 }").unwrap();
    let line = plan_error(&ctx, &["--config", config.to_str().unwrap()]);
    insta::assert_snapshot!(line, @"error: [CTX]/.build-spec.ncl: evaluation took longer than 300 ms and was stopped");
}

#[test]
fn arch_flag_conflicting_with_the_spec() {
    let ctx = Context::new().file(".build-spec.ncl", "{ arch = \"arm64\" }");
    let line = plan_error(&ctx, &["--arch", "amd64"]);
    insta::assert_snapshot!(line, @"error: [CTX]/.build-spec.ncl: arch: the spec asks for arm64 but --arch/--platform asks for amd64; remove one of them");
}

#[test]
fn missing_context() {
    let out = Launcher::new()
        .args(["plan", "--context", "/nonexistent/context"])
        .run();
    let line = out.assert_one_line_error(2);
    insta::assert_snapshot!(line, @"error: /nonexistent/context: the build context does not exist or is not a directory");
}

#[test]
fn missing_dockerfile() {
    let ctx = Context::new();
    let line = plan_error(&ctx, &["--dockerfile", "build/Dockerfile"]);
    insta::assert_snapshot!(line, @"error: [CTX]/build/Dockerfile: no Dockerfile there (set --dockerfile to a file inside the context)");
}

#[test]
fn unreadable_config() {
    let ctx = Context::new();
    let line = plan_error(&ctx, &["--config", "/nonexistent/launcher.ncl"]);
    insta::assert_snapshot!(line, @"error: /nonexistent/launcher.ncl: cannot read: no such file");
}

#[test]
fn malformed_config() {
    let ctx = Context::new().file("launcher.ncl", "{ sizing = { margin = 1.2 ");
    let line = plan_error(&ctx, &["--config", &path(&ctx, "launcher.ncl")]);
    assert!(line.starts_with("error: [CTX]/launcher.ncl:"), "{line}");
}

#[test]
fn config_with_a_wrong_value_names_the_setting() {
    let ctx = Context::new().file("launcher.ncl", "{\n  sizing.window = 0,\n}");
    let line = plan_error(&ctx, &["--config", &path(&ctx, "launcher.ncl")]);
    assert!(line.starts_with("error: [CTX]/launcher.ncl:2:"), "{line}");
    assert!(line.contains("window"), "{line}");
    assert!(line.contains("at least 1"), "{line}");
}

#[test]
fn config_with_an_unknown_setting() {
    let ctx = Context::new().file("launcher.ncl", "{ sizing.percentil = 90 }");
    let line = plan_error(&ctx, &["--config", &path(&ctx, "launcher.ncl")]);
    assert!(line.contains("percentil"), "{line}");
}

#[test]
fn bad_history_store_setting() {
    let ctx = Context::new();
    let out = Launcher::new()
        .args(["plan", "--history", "s3://bucket", "--context"])
        .args([ctx.path()])
        .run();
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("file:PATH, registry or none"),
        "{}",
        out.stderr
    );
}

#[test]
fn simulate_bad_inputs() {
    let out = Launcher::new()
        .args(["simulate", "--trace", "/nonexistent.jsonl"])
        .run();
    insta::assert_snapshot!(out.assert_one_line_error(2), @"error: --trace /nonexistent.jsonl: no such file");
    let trace = support::trace("dev-steady-noisy.jsonl");
    let out = Launcher::new()
        .args(["simulate", "--margin", "0.5", "--trace"])
        .args([&trace])
        .run();
    insta::assert_snapshot!(out.assert_one_line_error(2), @"error: --margin 0.5: must be a number between 1 and 4");
    let out = Launcher::new()
        .args(["simulate", "--min-samples", "40", "--trace"])
        .args([&trace])
        .run();
    insta::assert_snapshot!(out.assert_one_line_error(2), @"error: --min-samples 40 is larger than --window 30, so history could never be used");
}

#[test]
fn spec_check_of_a_bad_file() {
    let ctx = Context::new().file("s.ncl", "{ disk_gb = 5 }");
    let out = Launcher::new()
        .args(["spec", "check"])
        .args([ctx.path().join("s.ncl")])
        .run();
    let line = out.assert_one_line_error(2);
    assert!(line.contains("s.ncl:1:"), "{line}");
    assert!(
        line.contains("must be between 10 and 2000 GB, got 5"),
        "{line}"
    );
}

fn path(ctx: &Context, name: &str) -> String {
    Path::new(ctx.path()).join(name).display().to_string()
}

#[test]
fn pipeline_settings_that_cannot_work_are_exit_2() {
    let ctx = Context::new();
    let line = plan_error(&ctx, &["--backend", "buildah", "--sbom"]);
    assert!(
        line.contains("attestations need the buildctl backend"),
        "{line}"
    );
    let line = plan_error(&ctx, &["--build-arg-from-env", "BKL_TEST_SURELY_UNSET"]);
    assert!(
        line.contains("--build-arg-from-env: \"BKL_TEST_SURELY_UNSET\": the environment variable"),
        "{line}"
    );
    // A flag value clap refuses: clap's own message (first line) and exit 2.
    let out = Launcher::new()
        .args([
            "plan",
            "--history",
            "none",
            "--label",
            "no key",
            "--context",
        ])
        .args([ctx.path()])
        .run();
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("is not a label KEY=VALUE"),
        "{}",
        out.stderr
    );
    let tags = ctx.path().join(".tags");
    std::fs::write(&tags, "1.0\nnot a tag\n").unwrap();
    let out = Launcher::new()
        .current_dir(ctx.path())
        .args([
            "plan",
            "--history",
            "none",
            "--tags-file",
            ".tags",
            "--context",
            ".",
        ])
        .run();
    let line = out.assert_one_line_error(2);
    assert!(line.contains("\"not a tag\" is not a tag"), "{line}");
}

#[test]
fn build_args_from_env_and_no_cache_reach_the_command() {
    let ctx = Context::new();
    let out = Launcher::new()
        .env("BKL_TEST_VERSION", "1.2.3")
        .args(["plan", "--history", "none", "--context"])
        .args([ctx.path()])
        .args([
            "--build-arg-from-env",
            "BKL_TEST_VERSION",
            "--no-cache",
            "--dry-run",
        ])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("build-arg:BKL_TEST_VERSION=1.2.3"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("--no-cache"), "{}", out.stdout);
}

#[test]
fn cache_settings_that_cannot_work_are_exit_2() {
    let ctx = Context::new();
    let registry = ["--registry", "127.0.0.1:9"];
    let line = plan_error(
        &ctx,
        &[&registry[..], &["--cache-to", "type=s3,bucket=x"]].concat(),
    );
    insta::assert_snapshot!(line, @r#"error: --cache-to (cache_to) "type=s3,bucket=x": type="s3" is not accepted: only type=registry (local, gha, s3, azblob and inline caches write or read outside the registry)"#);
    let line = plan_error(&ctx, &["--cache-to", "127.0.0.1:9/c"]);
    insta::assert_snapshot!(line, @r#"error: --cache-to (cache_to) "127.0.0.1:9/c": needs --registry: a cache is written only to the build's own registry"#);
    // buildah 1.28 takes one untagged repository each way.
    let buildah = [&registry[..], &["--backend", "buildah"]].concat();
    let line = plan_error(
        &ctx,
        &[&buildah[..], &["--cache-from", "127.0.0.1:9/c:main"]].concat(),
    );
    assert!(
        line.contains("buildah takes a cache repository without a tag"),
        "{line}"
    );
    let line = plan_error(
        &ctx,
        &[&buildah[..], &["--cache-to", "127.0.0.1:9/c"]].concat(),
    );
    assert!(line.contains("one cache repository each way"), "{line}");
    let plan_with_cache_to = |facts: &[(&str, &str)]| {
        let mut launcher = Launcher::new();
        for (k, v) in facts {
            launcher = launcher.env(k, v);
        }
        launcher
            .args(["plan", "--history", "none", "--context"])
            .args([ctx.path()])
            .args(&buildah)
            .args(["--cache", "off", "--cache-to", "127.0.0.1:9/c"])
            .run()
    };
    let out = plan_with_cache_to(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("--cache-to 127.0.0.1:9/c"),
        "{}",
        out.stdout
    );
    // A pull request's extra cache would land untagged where the default branch's does: with
    // buildah it writes none, and says so (it was once refused for a tag the scope added).
    let out = plan_with_cache_to(&[
        ("CI_PIPELINE_EVENT", "pull_request"),
        ("CI_COMMIT_PULL_REQUEST", "7"),
        ("CI_COMMIT_REF", "refs/pull/7/head"),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("--cache-to"), "{}", out.stdout);
    assert!(
        (out.stdout.clone() + &out.stderr).contains("writes no cache_to export"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn every_spec_problem_at_once_each_at_its_field() {
    let line = plan_with_spec(
        "{\n  memory_gb = 1000,\n  cpus = 2.5,\n  arch = \"x86\",\n  memroy_gb = 4,\n  colour = \"blue\",\n}\n",
    );
    insta::assert_snapshot!(line, @r#"error: [CTX]/.build-spec.ncl:2:3: memory_gb: must be between 0.5 and 512 GB, got 1000; [CTX]/.build-spec.ncl:3:3: cpus: expected a whole number between 1 and 64 vCPUs, got 2.5; [CTX]/.build-spec.ncl:4:3: arch: expected one of "amd64", "arm64"; [CTX]/.build-spec.ncl:5:3: memroy_gb: not a field of a spec; did you mean memory_gb?; [CTX]/.build-spec.ncl:6:3: colour: not a field of a spec (a spec may set memory_gb, cpus, tier, arch, disk_gb and timeout_minutes)"#);
}
