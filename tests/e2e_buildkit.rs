//! `build --provider local --backend buildctl` end to end against BuildKit as it really is (the
//! stricter double, tests/tools/buildctl): a daemon that is not serving yet, one that never
//! serves, `FROM` over plain HTTP and buildkitd.toml, an OOM kill reported with BuildKit's
//! text. Each test gives its runners a tools directory whose `buildctl` sets the double's knobs
//! and runs the double; every test checks that nothing is left behind.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use support::local_build::{Fixture, TOOLS, assert_success, outcomes};
use support::registry::{Registry, loopback_name, require_root_and_tools};

/// A `--local-tools` directory whose `buildctl` exports `env` and runs the double.
struct Tools {
    dir: tempfile::TempDir,
}

impl Tools {
    fn new(env: &[(&str, &str)]) -> Tools {
        let dir = tempfile::Builder::new()
            .prefix("bkl-tools-")
            .tempdir()
            .unwrap();
        let mut script =
            "#!/bin/sh\n# buildctl double with test knobs (tests/e2e_buildkit.rs)\n".to_owned();
        for (k, v) in env {
            script.push_str(&format!("export {k}='{v}'\n"));
        }
        let double = support::repo_dir().join("tests/tools/buildctl");
        script.push_str(&format!("exec '{}' \"$@\"\n", double.display()));
        let path = dir.path().join("buildctl");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Runners run as root; the directory must be readable by the runner's sessions.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Tools { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

fn fixture_with_tools(body: &str, tools: &Tools) -> Option<Fixture> {
    let mut f = Fixture::new(body)?;
    f.tools = Some(tools.path());
    Some(f)
}

/// A launcher config file in the context: buildkitd gets `seconds` to list a worker.
fn ready_timeout_config(f: &Fixture, seconds: u64) -> PathBuf {
    let path = f.ctx.path().join("launcher.ncl");
    std::fs::write(
        &path,
        format!("{{ buildkitd = {{ ready_timeout_s = {seconds} }} }}\n"),
    )
    .unwrap();
    path
}

#[test]
fn a_daemon_not_ready_for_a_few_seconds_is_waited_for_and_the_build_succeeds() {
    let tools = Tools::new(&[("BKL_DOUBLE_BUILDKITD_READY_AFTER", "3")]);
    let Some(f) = fixture_with_tools("RUN echo built > /built.txt", &tools) else {
        return;
    };
    let out = f.build("buildctl", &["--tag", "v1", "--tag", "latest"]);
    assert_success(&f, &out);
    assert!(
        out.stderr
            .contains("waiting up to 60 s for buildkitd on the runner to list a worker"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("buildkitd is ready after"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("worker bkl-double-oci linux/"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_daemon_that_never_serves_is_exit_4_naming_buildkitd_not_a_build_failure() {
    let tools = Tools::new(&[("BKL_DOUBLE_BUILDKITD_READY_AFTER", "never")]);
    let Some(f) = fixture_with_tools("RUN echo built > /built.txt", &tools) else {
        return;
    };
    let config = ready_timeout_config(&f, 2);
    let config = format!("--config={}", config.display());
    let out = f.build("buildctl", &[&config]);
    assert_eq!(out.code, 4, "stderr:\n{}", out.stderr);
    let report = f.report();
    assert_eq!(report["outcome"], "infrastructure");
    assert_eq!(outcomes(&report), [("cx33".into(), "lost".into())]);
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("buildkitd"), "{error}");
    assert!(error.contains("context deadline exceeded"), "{error}");
    assert!(
        !out.stderr.contains("#1 "),
        "no build was started:\n{}",
        out.stderr
    );
    f.assert_nothing_left();
}

#[test]
fn an_oom_killed_step_reported_as_resource_exhausted_is_retried_on_the_next_tier() {
    // cx23 ÷ 16 = 256 MiB: a 350 MiB buffer is OOM-killed; cx33 ÷ 16 = 512 MiB: it fits.
    let Some(f) = Fixture::new("RUN dd if=/dev/zero of=/dev/null bs=350M count=1") else {
        return;
    };
    std::fs::write(f.ctx.path().join(".build-spec.ncl"), "{ tier = \"cx23\" }").unwrap();
    let out = f.build("buildctl", &["--tag", "v1", "--tag", "latest"]);
    assert_success(&f, &out);
    assert_eq!(
        outcomes(&f.report()),
        [("cx23".into(), "oom".into()), ("cx33".into(), "ok".into())]
    );
    assert!(
        out.stderr.contains(
            "error: failed to solve: ResourceExhausted: process \"/bin/sh -c dd if=/dev/zero \
             of=/dev/null bs=350M count=1\" did not complete successfully: cannot allocate memory"
        ),
        "BuildKit's text, streamed from the first attempt:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("retrying once on cx33"),
        "{}",
        out.stderr
    );
}

/// A registry under a name BuildKit does not treat as local, with the base image; the
/// Dockerfile pulls from it by that name. `None`: skipped (not in CI).
fn named_registry_fixture(tools: &Tools) -> Option<(Fixture, String)> {
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
    let dockerfile = format!("FROM {host}/base/busybox:latest\nRUN echo built > /built.txt\n");
    let mut f = Fixture::with(registry, &dockerfile);
    f.tools = Some(tools.path());
    f.registry_addr = host.clone();
    Some((f, host))
}

fn buildkitd_toml(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("buildkitd.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn from_an_http_registry_missing_from_buildkitd_toml_fails_clearly() {
    let conf = tempfile::tempdir().unwrap();
    let toml = buildkitd_toml(
        conf.path(),
        "[registry.\"zot.example:5000\"]\n  http = true\n",
    );
    let tools = Tools::new(&[("BKL_DOUBLE_BUILDKITD_CONFIG", toml.to_str().unwrap())]);
    let Some((f, host)) = named_registry_fixture(&tools) else {
        return;
    };
    let out = f.build("buildctl", &[]);
    assert_eq!(out.code, 1, "stderr:\n{}", out.stderr);
    let report = f.report();
    assert_eq!(report["outcome"], "build_failed");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "failed to resolve source metadata for {host}/base/busybox:latest"
        )) && error.contains("http: server gave HTTP response to HTTPS client"),
        "{error}"
    );
    f.assert_nothing_left();
}

#[test]
fn from_an_http_registry_named_in_buildkitd_toml_succeeds() {
    let conf = tempfile::tempdir().unwrap();
    // The host is known only once the registry runs: write the file then (the wrapper reads it
    // at build time).
    let toml = conf.path().join("buildkitd.toml");
    let tools = Tools::new(&[("BKL_DOUBLE_BUILDKITD_CONFIG", toml.to_str().unwrap())]);
    let Some((f, host)) = named_registry_fixture(&tools) else {
        return;
    };
    buildkitd_toml(
        conf.path(),
        &format!("[registry.\"{host}\"]\n  http = true\n"),
    );
    let out = f.build("buildctl", &["--tag", "v1", "--tag", "latest"]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    let report = f.report();
    assert_eq!(report["outcome"], "success");
    let digest = report["digest"].as_str().unwrap();
    for tag in ["v1", "latest"] {
        assert_eq!(
            f.registry.manifest_digest("e2e/app", tag).as_deref(),
            Some(digest),
            "tag {tag}"
        );
    }
    f.assert_nothing_left();
}
