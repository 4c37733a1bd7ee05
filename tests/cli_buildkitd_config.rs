//! `golden-image config`: the buildkitd.toml rendered from the launcher config's `buildkitd`
//! section, and each bad value there refused in one line naming the setting (exit 2), by the
//! contract (Nickel, with the file's line and column) or by the launcher's own checks.

mod support;

use support::{Context, Launcher};

/// `golden-image config` with `config` as the launcher config file; the context's path is
/// written `[CTX]` in the result.
fn config(ctx: &Context, text: &str, extra: &[&str]) -> support::Outcome {
    std::fs::write(ctx.path().join("launcher.ncl"), text).unwrap();
    Launcher::new()
        .args(["--config".into(), ctx.path().join("launcher.ncl")])
        .args(["golden-image", "config"])
        .args(extra)
        .run()
}

fn error_line(text: &str) -> String {
    let ctx = Context::new();
    let out = config(&ctx, text, &[]);
    out.assert_one_line_error(2)
        .replace(&ctx.path().display().to_string(), "[CTX]")
}

#[test]
fn the_default_file_is_printed_without_a_token_or_a_config() {
    let out = Launcher::new().args(["golden-image", "config"]).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    let text = &out.stdout;
    assert!(text.starts_with("# buildkitd configuration, rendered by buildkit-launcher"));
    for line in [
        "root = \"/var/lib/buildkit\"\n",
        "[worker.oci]\nenabled = true\nsnapshotter = \"auto\"\ndefaultCgroupParent = \"system.slice/buildkit.service\"\ngc = true\nreservedSpace = \"2GB\"\nmaxUsedSpace = \"70%\"\nminFreeSpace = \"4GB\"\n",
        "[frontend.\"gateway.v0\"]\nenabled = true\nallowedRepositories = [\"docker.io/docker/dockerfile\"]\n",
    ] {
        assert!(text.contains(line), "{line}\n---\n{text}");
    }
    assert!(!text.lines().any(|l| l.starts_with("[registry.")), "{text}");
    // Without registries the file says what plain HTTP needs, and where.
    assert!(
        text.contains("# No [registry.\"HOST\"] sections")
            && text.contains("# and the registry cache over plain HTTP need only buildctl's registry.insecure=true"),
        "{text}"
    );
    let digest = Launcher::new()
        .args(["golden-image", "config", "--digest"])
        .run();
    assert_eq!(digest.code, 0);
    assert!(text.contains(&format!("# config digest: {}", digest.stdout.trim())));
}

#[test]
fn registries_mirrors_frontends_and_gc_come_from_the_config() {
    let ctx = Context::new().file(
        "certs/zot.pem",
        "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n",
    );
    let out = config(
        &ctx,
        r#"{ buildkitd = {
          registries = {
            "zot.example:5000" = { http = true },
            "docker.io" = { mirrors = ["zot.example:5000"] },
            "reg.example" = { ca_file = "certs/zot.pem" },
            "self-signed.example" = { insecure = true },
          },
          frontends = ["docker.io/docker/dockerfile", "zot.example:5000/mirror/dockerfile"],
          gc = { max_used_space = "50%", min_free_space = "10GB" },
        } }"#,
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = &out.stdout;
    for part in [
        "allowedRepositories = [\"docker.io/docker/dockerfile\", \"zot.example:5000/mirror/dockerfile\"]\n",
        "maxUsedSpace = \"50%\"\nminFreeSpace = \"10GB\"\n",
        "[registry.\"docker.io\"]\nmirrors = [\"zot.example:5000\"]\n",
        "[registry.\"reg.example\"]\nca = [\"/etc/buildkit/registry-ca/reg.example.pem\"]\n",
        "[registry.\"self-signed.example\"]\ninsecure = true\n",
        "[registry.\"zot.example:5000\"]\nhttp = true\n",
    ] {
        assert!(text.contains(part), "{part}\n---\n{text}");
    }
}

#[test]
fn each_bad_value_is_one_line_naming_the_setting_and_exit_2() {
    for (text, expected) in [
        (
            r#"{ buildkitd.registries."Zot.example" = {} }"#,
            "error: [CTX]/launcher.ncl:1:24: contract broken by the value of `registries`: \"Zot.example\" is not a registry host: expected HOST or HOST:PORT in lowercase (docker.io for Docker Hub), without a scheme or a path",
        ),
        (
            r#"{ buildkitd.registries."https://zot.example" = {} }"#,
            "error: [CTX]/launcher.ncl:1:24: contract broken by the value of `registries`: \"https://zot.example\" is not a registry host: expected HOST or HOST:PORT in lowercase (docker.io for Docker Hub), without a scheme or a path",
        ),
        (
            r#"{ buildkitd.registries."zot.example:70000" = {} }"#,
            "error: [CTX]/launcher.ncl: buildkitd.registries.\"zot.example:70000\": the port must be a number from 1 to 65535",
        ),
        (
            r#"{ buildkitd.registries.a = { mirrors = ["http://mirror"] } }"#,
            "error: [CTX]/launcher.ncl:1:41: contract broken by the value of `mirrors`: expected a registry host as HOST or HOST:PORT in lowercase, without a scheme or a path",
        ),
        (
            r#"{ buildkitd.registries.a = { mirrors = ["a"] } }"#,
            "error: [CTX]/launcher.ncl: buildkitd.registries.\"a\".mirrors[0]: a host cannot be its own mirror",
        ),
        (
            r#"{ buildkitd.registries.a = { http = true, insecure = true } }"#,
            "error: [CTX]/launcher.ncl: buildkitd.registries.\"a\": http and insecure exclude each other: http is plain HTTP, insecure is HTTPS without certificate checks",
        ),
        (
            r#"{ buildkitd.registries.a = { http = true, ca_file = "ca.pem" } }"#,
            "error: [CTX]/launcher.ncl: buildkitd.registries.\"a\".ca_file: a CA file is for HTTPS, and this host has http = true",
        ),
        (
            r#"{ buildkitd.registries.a = { ca_file = "missing.pem" } }"#,
            "error: buildkitd.registries.\"a\".ca_file: [CTX]/missing.pem: cannot read: no such file",
        ),
        (
            r#"{ buildkitd.registries.a = { ca_file = "launcher.ncl" } }"#,
            "error: buildkitd.registries.\"a\".ca_file: [CTX]/launcher.ncl: not a PEM certificate (no -----BEGIN CERTIFICATE----- line)",
        ),
        (
            r#"{ buildkitd.registries.a = { http = "yes" } }"#,
            "error: [CTX]/launcher.ncl:1:37: contract broken by the value of `http`: expected true or false",
        ),
        (
            r#"{ buildkitd.registries.a = { htp = true } }"#,
            "error: [CTX]/launcher.ncl:1:28: contract broken by the value of `registries`: extra field `htp`: Have you misspelled a field? see schemas/launcher.ncl for the settings and their defaults",
        ),
        (
            r#"{ buildkitd.registries = ["zot.example"] }"#,
            "error: [CTX]/launcher.ncl:1:26: contract broken by the value of `registries`: expected a record of registry hosts, e.g. { \"zot.example:5000\" = { http = true } }",
        ),
        (
            r#"{ buildkitd.frontends = [] }"#,
            "error: [CTX]/launcher.ncl:1:25: contract broken by the value of `frontends`: expected a non-empty list: BuildKit lets any image serve as a frontend when the list is empty (the default: [\"docker.io/docker/dockerfile\"])",
        ),
        (
            r#"{ buildkitd.frontends = ["docker/dockerfile:1"] }"#,
            "error: [CTX]/launcher.ncl:1:26: contract broken by the value of `frontends`: expected a repository name such as docker.io/docker/dockerfile (lowercase, no tag or digest)",
        ),
        (
            r#"{ buildkitd.gc.reserved_space = "lots" }"#,
            "error: [CTX]/launcher.ncl:1:33: contract broken by the value of `reserved_space`: expected a size such as 2GB or 512MB, or a share of the disk such as 70%",
        ),
        (
            r#"{ buildkitd.gc.max_used_space = "150%" }"#,
            "error: [CTX]/launcher.ncl: buildkitd.gc.max_used_space: \"150%\": expected a size such as 2GB or 512MB, or a share of the disk such as 70%",
        ),
        (
            r#"{ buildkitd.sbom_generator = "Scanner:1" }"#,
            "error: [CTX]/launcher.ncl: buildkitd.sbom_generator: \"Scanner:1\": not an image reference (REPOSITORY[:TAG][@sha256:DIGEST])",
        ),
    ] {
        assert_eq!(error_line(text), expected, "{text}");
    }
}

#[test]
fn a_bake_with_an_unreadable_ca_file_is_exit_2_before_the_api_is_asked() {
    let ctx = Context::new();
    std::fs::write(
        ctx.path().join("launcher.ncl"),
        r#"{ buildkitd.registries."zot.example" = { ca_file = "gone.pem" } }"#,
    )
    .unwrap();
    let out = Launcher::new()
        // Nothing listens on port 9: the bake must fail before it would ask.
        .env("HCLOUD_TOKEN", "fake-token-for-a-bake-that-never-starts")
        .env("HCLOUD_ENDPOINT", "http://127.0.0.1:9/v1")
        .args(["--config".into(), ctx.path().join("launcher.ncl")])
        .args(["golden-image", "build"])
        .run();
    let line = out
        .assert_one_line_error(2)
        .replace(&ctx.path().display().to_string(), "[CTX]");
    assert_eq!(
        line,
        "error: buildkitd.registries.\"zot.example\".ca_file: [CTX]/gone.pem: cannot read: no such file"
    );
}
