//! An agent behind an HTTP proxy (docs/design/proxy.md): the launcher's registry traffic and
//! its SSH (and rsync) to a real sshd runner go through the proxy (a CONNECT tunnel made by
//! `buildkit-launcher connect-proxy`), `no_proxy` is honoured, a proxy that refuses the tunnel
//! is one clear infrastructure error without retries, and a bad proxy URL is exit 2 naming the
//! flag, variable or setting. Loopback only: the proxy is tests/support/proxy.rs.

mod support;

use support::Launcher;
use support::local_build::{Fixture, assert_success};
use support::proxy::{Options, Proxy};
use support::registry::Registry;

const USER_INFO: &str = "agent:fake-proxy-pass";
const REGISTRY_PASSWORD: &str = "fake-registry-pass-51ab";

#[test]
fn registry_and_ssh_go_through_the_agents_proxy() {
    if !support::registry::require_root_and_tools(support::local_build::TOOLS) {
        return;
    }
    let registry = Registry::start_with_auth("ci", REGISTRY_PASSWORD).with_base_image();
    let dockerfile = format!(
        "FROM {}\nRUN echo built > /built.txt\n",
        registry.base_image()
    );
    let f = Fixture::with(registry, &dockerfile);
    let proxy = Proxy::start(Options {
        basic_auth: Some(USER_INFO.into()),
        ..Options::default()
    });
    let url = proxy.url(Some(USER_INFO));
    // The agent's variables, as curl reads them (lower case).
    let out = Launcher::new()
        .args(f.args("buildctl"))
        .args(["--tag", "v1", "--tag", "latest", "--registry-user", "ci"])
        .env("REGISTRY_PASSWORD", REGISTRY_PASSWORD)
        .env("http_proxy", &url)
        .env("https_proxy", &url)
        .run();
    assert_success(&f, &out);
    // The registry speaks plain HTTP: the proxy reads its password, and the launcher says so.
    assert!(
        out.stderr.contains(&format!(
            "warning: registry {} speaks plain HTTP and is reached through the proxy http://{}: the proxy reads the registry password; list the registry in no_proxy or give it TLS",
            f.registry.addr, proxy.addr
        )),
        "{}",
        out.stderr
    );
    let connects = proxy.connects();
    assert!(
        !connects.is_empty() && connects.iter().all(|s| s.status == 200),
        "SSH to the runner was tunnelled: {connects:?}"
    );
    assert!(
        connects
            .iter()
            .all(|s| s.target.starts_with("127.0.0.") && s.target != f.registry.addr),
        "{connects:?}"
    );
    let forwarded = proxy.forwarded();
    assert!(
        forwarded.iter().any(|s| s.target == f.registry.addr),
        "the registry (plain HTTP) was reached through the proxy: {:?}",
        proxy.seen()
    );
    assert!(
        proxy.seen().iter().all(|s| s.status != 407),
        "every request carried the proxy's credentials: {:?}",
        proxy.seen()
    );
    let report = std::fs::read_to_string(&f.report).unwrap();
    for text in [&out.stdout, &out.stderr, &report] {
        assert!(!text.contains("fake-proxy-pass"), "{text}");
        assert!(!text.contains(REGISTRY_PASSWORD), "{text}");
    }
}

#[test]
fn no_proxy_and_flags() {
    let Some(f) = Fixture::new("RUN echo built > /built.txt") else {
        return;
    };
    let proxy = Proxy::start(Options::default());
    let registry_host = f.registry.addr.split(':').next().unwrap().to_owned();
    // Flags win over the variables; no_proxy names the registry's address only.
    let out = Launcher::new()
        .args(f.args("buildah"))
        .args(["--tag", "v1", "--tag", "latest"])
        .args(["--http-proxy", &proxy.url(None)])
        .args(["--https-proxy", &proxy.url(None)])
        .args(["--no-proxy", &format!("example.com, {registry_host}")])
        .env("https_proxy", "http://127.0.0.1:9")
        .env("no_proxy", "*")
        .run();
    assert_success(&f, &out);
    assert!(!proxy.connects().is_empty(), "{:?}", proxy.seen());
    assert!(
        proxy.forwarded().is_empty(),
        "the registry is in no_proxy: {:?}",
        proxy.seen()
    );
}

#[test]
fn a_proxy_that_refuses_the_tunnel_is_an_infrastructure_error_at_once() {
    let Some(f) = Fixture::new("RUN echo built > /built.txt") else {
        return;
    };
    let proxy = Proxy::start(Options {
        refuse_connect: true,
        ..Options::default()
    });
    let out = Launcher::new()
        .args(f.args("buildctl"))
        .args(["--tag", "v1"])
        .env("http_proxy", proxy.url(None))
        .env("https_proxy", proxy.url(None))
        .run();
    assert_eq!(
        out.code, 4,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let error = out
        .stdout
        .lines()
        .find(|l| {
            l.starts_with(
                "build stopped by an infrastructure failure: cannot reach runner 127.0.0.",
            )
        })
        .unwrap_or_else(|| panic!("stdout: {}\nstderr: {}", out.stdout, out.stderr));
    assert!(
        error.contains(":22 through the proxy: ")
            && error.contains(&format!(
                "the proxy http://{} refused the tunnel to 127.0.0.",
                proxy.addr
            ))
            && error.contains("403 Forbidden")
            && error.contains("no_proxy"),
        "{error}"
    );
    // No retry against a proxy that said no: one CONNECT, and the runner is gone.
    assert_eq!(proxy.connects().len(), 1, "{:?}", proxy.seen());
    f.assert_nothing_left();
}

#[test]
fn the_tunnel_wants_the_proxys_credentials() {
    // connect-proxy by hand, as ssh runs it: a 407 is a refusal that names the fix.
    let proxy = Proxy::start(Options {
        basic_auth: Some(USER_INFO.into()),
        ..Options::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let errors = dir.path().join("error");
    let out = std::process::Command::new(support::BIN)
        .args(["connect-proxy", "--proxy", &proxy.url(None), "--error-file"])
        .arg(&errors)
        .args(["127.0.0.1", "9"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let said = std::fs::read_to_string(&errors).unwrap();
    assert!(
        said.starts_with(&format!(
            "refused: the proxy http://{} refused the tunnel to 127.0.0.1:9: HTTP/1.1 407 Proxy Authentication Required: it wants credentials",
            proxy.addr
        )),
        "{said}"
    );
    // A runner that does not listen yet (the proxy answers 502) and a proxy that is not there:
    // worth another try (ssh's attempts go on), said as such.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let tunnel = |proxy_url: &str, port: u16| {
        let _ = std::fs::remove_file(&errors);
        let out = std::process::Command::new(support::BIN)
            .args(["connect-proxy", "--proxy", proxy_url, "--error-file"])
            .arg(&errors)
            .args(["127.0.0.1", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(4));
        std::fs::read_to_string(&errors).unwrap()
    };
    let open = Proxy::start(Options::default());
    let said = tunnel(&open.url(None), closed_port);
    assert_eq!(
        said,
        format!(
            "unreachable: the proxy http://{} could not open the tunnel to 127.0.0.1:{closed_port}: HTTP/1.1 502 Bad Gateway\n",
            open.addr
        )
    );
    let said = tunnel(&format!("http://127.0.0.1:{closed_port}"), 22);
    assert!(
        said.starts_with(&format!(
            "unreachable: cannot reach the proxy http://127.0.0.1:{closed_port} for the tunnel to 127.0.0.1:22: "
        )),
        "{said}"
    );
    // User info is never taken from an argument.
    let out = std::process::Command::new(support::BIN)
        .args([
            "connect-proxy",
            "--proxy",
            &proxy.url(Some(USER_INFO)),
            "127.0.0.1",
            "9",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--proxy-file"), "{stderr}");
    assert!(!stderr.contains("fake-proxy-pass"), "{stderr}");
    // With them, from a file: the tunnel stands and carries bytes both ways.
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = echo.accept().unwrap();
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut conn, &mut buf).unwrap();
        std::io::Write::write_all(&mut conn, &buf.repeat(2)).unwrap();
    });
    let file = dir.path().join("proxy");
    std::fs::write(&file, proxy.url(Some(USER_INFO))).unwrap();
    let mut child = std::process::Command::new(support::BIN)
        .args(["connect-proxy", "--proxy-file"])
        .arg(&file)
        .args(["127.0.0.1", &echo_addr.port().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"hello").unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hellohello");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(proxy.connects().last().unwrap().status, 200);
}

#[test]
fn a_bad_proxy_url_is_exit_2_naming_the_flag_variable_or_setting() {
    let context = support::repo_dir().join("examples/hello");
    let plan = || {
        Launcher::new().args([
            "plan",
            "--context",
            context.to_str().unwrap(),
            "--history",
            "none",
        ])
    };
    let out = plan()
        .args(["--https-proxy", "socks5://127.0.0.1:1080"])
        .run();
    assert_eq!(
        out.assert_one_line_error(2),
        "error: --https-proxy: \"socks5://127.0.0.1:1080\": a socks5:// proxy is not supported: the launcher tunnels through an HTTP proxy with CONNECT; write http://HOST:PORT"
    );
    let out = plan()
        .env(
            "HTTPS_PROXY",
            "https://agent:fake-proxy-pass@proxy.example:443",
        )
        .run();
    assert_eq!(
        out.assert_one_line_error(2),
        "error: HTTPS_PROXY: \"https://****@proxy.example:443\": a https:// proxy is not supported: the launcher tunnels through an HTTP proxy with CONNECT; write http://HOST:PORT"
    );
    let out = plan().env("no_proxy", "example.com,10.0.0.0/x").run();
    assert_eq!(
        out.assert_one_line_error(2),
        "error: no_proxy: \"example.com,10.0.0.0/x\": \"10.0.0.0/x\": not a host name, IP address or network (HOST, .DOMAIN, IP, IP/BITS or *, separated by commas)"
    );
}

#[test]
fn a_pipelines_proxy_is_the_operators_choice() {
    let ws = tempfile::tempdir().unwrap();
    let plugin = |pairs: &[(&str, &str)]| {
        let mut l = Launcher::new()
            .current_dir(ws.path())
            .env("CI_WORKSPACE", ws.path());
        for (k, v) in pairs {
            l = l.env(k, v);
        }
        l
    };
    let out = plugin(&[(
        "PLUGIN_HTTPS_PROXY",
        "http://mallory:fake-pass@203.0.113.9:3128",
    )])
    .run();
    let line = out.assert_one_line_error(2);
    assert!(
        line.starts_with("error: https_proxy: \"http://****@203.0.113.9:3128\": the proxy is the operator's (the agent sets no https_proxy)"),
        "{line}"
    );
    // The agent's own value repeated is no choice: accepted (the build then stops later, at
    // the missing Dockerfile, not at the proxy).
    let out = plugin(&[
        ("PLUGIN_HTTPS_PROXY", "http://127.0.0.1:9"),
        ("https_proxy", "http://127.0.0.1:9"),
        ("PLUGIN_DRY_RUN", "true"),
    ])
    .run();
    let line = out.assert_one_line_error(2);
    assert!(
        line.ends_with(
            "/Dockerfile: no Dockerfile there (set --dockerfile to a file inside the context)"
        ),
        "past the settings and the proxy: {line}"
    );
    // With the policy's 'proxy, the setting is the pipeline's, held to the same syntax.
    let policy = ws.path().join("policy.ncl");
    std::fs::write(&policy, "{ repository_may_set = ['proxy] }\n").unwrap();
    let out = plugin(&[
        ("PLUGIN_HTTPS_PROXY", "socks5://203.0.113.9:1080"),
        ("BUILDKIT_LAUNCHER_POLICY", policy.to_str().unwrap()),
    ])
    .run();
    assert_eq!(
        out.assert_one_line_error(2),
        "error: https_proxy: \"socks5://203.0.113.9:1080\": a socks5:// proxy is not supported: the launcher tunnels through an HTTP proxy with CONNECT; write http://HOST:PORT"
    );
}

#[test]
fn the_hetzner_api_goes_through_the_proxy_too() {
    let Some(c) = support::hcloud_sim::cloud::Cloud::new("RUN true") else {
        return;
    };
    let proxy = Proxy::start(Options::default());
    let out = c
        .launcher()
        .args(c.args())
        .env("http_proxy", proxy.url(None))
        .env("https_proxy", proxy.url(None))
        .run();
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    let api = c
        .sim
        .endpoint
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let forwarded = proxy.forwarded();
    for method in ["GET", "POST", "DELETE"] {
        assert!(
            forwarded
                .iter()
                .any(|s| s.method == method && s.target == api),
            "{method} to the API {api} through the proxy: {forwarded:?}"
        );
    }
    assert!(
        proxy.connects().iter().any(|s| s.status == 200),
        "SSH to the server through the proxy: {:?}",
        proxy.seen()
    );
    c.sim.assert_clean();
}
