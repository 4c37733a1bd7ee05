//! The runner's buildkitd.toml comes from the operator's launcher config (`buildkitd`
//! section), end to end on sandbox runners with the real BuildKit: a plain-HTTP registry, a
//! mirror, a registry's CA (a TLS registry with a test CA made by openssl), an insecure TLS
//! registry and a frontend image each take effect only because the launcher config names them.
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

/// `openssl` with its purpose, in `dir`.
fn openssl(dir: &std::path::Path, purpose: &str, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl ({purpose}) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA (`ca.pem`) and a server certificate for `name` it signed (`server.pem`,
/// `server.key`), in `dir`.
fn certificates(dir: &std::path::Path, name: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=bkl test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, "make the test CA", &args);
    let mut args = vec!["req"];
    args.extend(ec);
    let subject = format!("/CN={name}");
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        &subject,
    ]);
    openssl(dir, "make the server's key and request", &args);
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(
        dir,
        "sign the server's certificate with the test CA",
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

#[test]
fn a_registry_whose_ca_is_named_only_in_the_launcher_config_serves_over_tls() {
    let Some((f, _)) = named(|_| String::new()) else {
        return;
    };
    if !require_root_and_tools(&["openssl"]) {
        return;
    }
    let (name, _) = loopback_name().unwrap();
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path(), &name);
    let tls = f.registry.tls_twin(
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
    );
    let tls_host = tls.addr_as(&name);
    std::fs::write(
        f.ctx.path().join("Dockerfile"),
        format!("FROM {tls_host}/base/busybox:latest\nRUN echo built > /built.txt\n"),
    )
    .unwrap();
    let ca = certs.path().join("ca.pem");

    // Without the CA, BuildKit does not trust the registry's certificate.
    let without = config(&f, "{}\n");
    let out = f.build("buildctl", &[&without, "--tag", "v0"]);
    assert_eq!(out.code, 1, "stderr:\n{}", out.stderr);
    let report = f.report();
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("{tls_host}/base/busybox:latest"))
            && error.contains("certificate signed by unknown authority"),
        "{error}"
    );

    // With it (read by the launcher, installed beside the runner's buildkitd.toml): trusted.
    let with = config(
        &f,
        &format!(
            "{{ buildkitd.registries.\"{tls_host}\" = {{ ca_file = \"{}\" }} }}\n",
            ca.display()
        ),
    );
    let out = f.build("buildctl", &[&with, "--tag", "latest", "--tag", "v1"]);
    assert_success(&f, &out);

    // `insecure = true` instead: HTTPS without checking the certificate.
    let insecure = config(
        &f,
        &format!("{{ buildkitd.registries.\"{tls_host}\" = {{ insecure = true }} }}\n"),
    );
    let out = f.build("buildctl", &[&insecure, "--tag", "v2"]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert_eq!(f.report()["outcome"], "success");
    f.assert_nothing_left();
}
