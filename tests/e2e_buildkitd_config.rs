//! The runner's buildkitd.toml comes from the operator's launcher config (`buildkitd`
//! section), end to end on sandbox runners with the real BuildKit: a plain-HTTP registry, a
//! mirror and a frontend image each take effect only because the launcher config names them.
//! (Without them the same builds fail: tests/e2e_buildkit.rs and tests/e2e_untrusted_build.rs.)
//! Every test checks that nothing is left behind.

mod support;

use support::local_build::{Fixture, TOOLS, assert_success};
use support::registry::{Registry, loopback_name, require_root_and_tools};

/// `--config=FILE` with `text` written into the fixture's context.
fn config(f: &Fixture, text: &str) -> String {
    let path = f.ctx.path().join("launcher.ncl");
    std::fs::write(&path, text).unwrap();
    format!("--config={}", path.display())
}

/// A registry with the base image under a name BuildKit does not treat as local (so it speaks
/// HTTPS to it unless told otherwise), and a fixture whose Dockerfile is `dockerfile(host)`.
/// `None`: skipped (not in CI).
fn named(dockerfile: impl Fn(&str) -> String) -> Option<(Fixture, String)> {
    if !require_root_and_tools(TOOLS) {
        return None;
    }
    let Some((name, ip)) = loopback_name() else {
        let line = "needs a host name other than localhost for a loopback address in /etc/hosts";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{line}");
        eprintln!("skipped: {line}");
        return None;
    };
    let registry = Registry::start_at(ip).with_base_image();
    let host = registry.addr_as(&name);
    let mut f = Fixture::with(registry, &dockerfile(&host));
    f.registry_addr = host.clone();
    Some((f, host))
}

#[test]
fn a_plain_http_registry_named_only_in_the_launcher_config_serves_the_base_image() {
    let Some((f, host)) =
        named(|host| format!("FROM {host}/base/busybox:latest\nRUN echo built > /built.txt\n"))
    else {
        return;
    };
    let config = config(
        &f,
        &format!("{{ buildkitd.registries.\"{host}\" = {{ http = true }} }}\n"),
    );
    let out = f.build("buildctl", &[&config, "--tag", "latest", "--tag", "v1"]);
    assert_success(&f, &out);
}

#[test]
fn a_mirror_named_only_in_the_launcher_config_serves_pulls_of_another_host() {
    // `mirror.invalid` never resolves (RFC 2606), so the base image can only come through the
    // mirror; BuildKit falls back to the host itself, which fails, when the mirror is not used.
    let Some((f, host)) = named(|_| {
        "FROM mirror.invalid/base/busybox:latest\nRUN echo built > /built.txt\n".to_owned()
    }) else {
        return;
    };
    let config = config(
        &f,
        &format!(
            "{{ buildkitd.registries = {{ \"mirror.invalid\" = {{ mirrors = [\"{host}\"] }}, \"{host}\" = {{ http = true }} }} }}\n"
        ),
    );
    let out = f.build("buildctl", &[&config, "--tag", "latest", "--tag", "v1"]);
    assert_success(&f, &out);

    // The same build without the mirror: BuildKit looks for mirror.invalid itself.
    let config_without = format!("{{ buildkitd.registries.\"{host}\" = {{ http = true }} }}\n");
    let path = f.ctx.path().join("launcher.ncl");
    std::fs::write(&path, config_without).unwrap();
    let out = f.build(
        "buildctl",
        &[&format!("--config={}", path.display()), "--tag", "v2"],
    );
    assert_eq!(out.code, 1, "stderr:\n{}", out.stderr);
    let report = f.report();
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("mirror.invalid/base/busybox:latest"),
        "{error}"
    );
    f.assert_nothing_left();
}

#[test]
fn a_frontend_image_allowed_by_the_launcher_config_is_no_longer_refused() {
    let Some(f) = Fixture::new("RUN echo never") else {
        return;
    };
    let frontend = format!("{}/team/frontend", f.registry_addr);
    let dockerfile = format!(
        "# syntax={frontend}:1\nFROM {}\nRUN echo never\n",
        f.registry.base_image()
    );
    std::fs::write(f.ctx.path().join("Dockerfile"), dockerfile).unwrap();
    let config = config(
        &f,
        &format!("{{ buildkitd.frontends = [\"docker.io/docker/dockerfile\", \"{frontend}\"] }}\n"),
    );
    let out = f.build("buildctl", &[&config]);
    // The registry has no such image: BuildKit, allowed to use it, looks it up and finds none.
    assert_eq!(out.code, 1, "stderr:\n{}", out.stderr);
    let report = f.report();
    let error = report["error"].as_str().unwrap();
    assert!(
        !error.contains("do not allow") && !error.contains("not an allowed gateway source"),
        "{error}"
    );
    assert!(
        error.contains(&format!("{frontend}:1")) && error.contains("not found"),
        "{error}"
    );
    f.assert_nothing_left();
}

#[test]
fn an_unreadable_ca_file_is_exit_2_before_any_runner_exists() {
    let Some(f) = Fixture::new("RUN echo never") else {
        return;
    };
    let config = config(
        &f,
        "{ buildkitd.registries.\"reg.example\" = { ca_file = \"missing-ca.pem\" } }\n",
    );
    let out = f.build("buildctl", &[&config]);
    let line = out.assert_one_line_error(2);
    assert_eq!(
        line,
        format!(
            "error: buildkitd.registries.\"reg.example\".ca_file: {}: cannot read: no such file",
            f.ctx.path().join("missing-ca.pem").display()
        )
    );
    let dirs: Vec<_> = std::fs::read_dir(f.runners.path()).unwrap().collect();
    assert!(dirs.is_empty(), "a runner was made: {dirs:?}");
}
