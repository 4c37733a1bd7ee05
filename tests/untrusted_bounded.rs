//! Inputs a repository or a pipeline controls, made as large or as slow as an attacker can
//! (issue 16, "every input is bounded"): each is refused with exit 2 and one line naming the
//! file and the cap, quickly, before any server or API request; nothing is read unbounded.
//!
//! Hostile registries are small loopback servers here, answering what an attacker's would.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buildkit_launcher::history::registry::RegistryStore;
use buildkit_launcher::history::{HistoryKey, HistoryStore};

use support::hcloud_sim::HcloudSim;
use support::{BIN, Context};

/// Runs `cmd` to its end, or kills it after `limit` and fails: an attack must not hang the step.
fn finishes_within(cmd: &mut Command, limit: Duration) -> support::Outcome {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    support::Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The launcher with nothing of this environment but `PATH`, at home in `home`.
fn launcher(home: &Context) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("HOME", home.path())
        .env("NO_COLOR", "1");
    cmd
}

/// `build --provider hcloud` against the simulator, at a terminal, with `extra` arguments.
fn build(sim: &HcloudSim, ctx: &Context, extra: &[&str]) -> support::Outcome {
    finishes_within(
        launcher(ctx)
            .env("HCLOUD_TOKEN", &sim.token)
            .env("HCLOUD_ENDPOINT", &sim.endpoint)
            .args(["build", "--provider", "hcloud", "--registry", "127.0.0.1:9"])
            .arg("--context")
            .arg(ctx.path())
            .args(extra),
        Duration::from_secs(60),
    )
}

fn assert_no_request(sim: &HcloudSim, what: &str) {
    assert_eq!(sim.total_calls(), 0, "{what}: {:?}", sim.calls());
    sim.assert_clean();
}

/// The committed `.dockerignore` of an attacker: a line of 50,000 `^` (it overflowed the stack:
/// SIGABRT), and 70,000 patterns (10 ms a file, silently). Both are one line naming the file
/// and the cap, exit 2, no API request.
#[test]
fn ignore_files_beyond_the_caps_cost_no_server() {
    let sim = HcloudSim::with_golden_amd64();
    let ctx = Context::new().file("Dockerfile", "FROM scratch\n");
    let ignore = ctx.path().join(".dockerignore");
    let cases = [
        (
            format!("{}*\n", "^".repeat(50_000)),
            " line 1: a pattern of 50001 characters, more than the cap of 4096",
        ),
        (
            (0..70_000).map(|i| format!("**/*p{i}*q*\n")).collect(),
            ": more than 10000 patterns (the cap)",
        ),
    ];
    for (text, expect) in cases {
        std::fs::write(&ignore, text).unwrap();
        let out = build(&sim, &ctx, &["--history", "none"]);
        let line = out.assert_one_line_error(2);
        assert!(
            line.contains(&format!("{}{expect}", ignore.display())),
            "{line}"
        );
        assert!(!out.stderr.contains("overflow"), "{}", out.stderr);
        assert_no_request(&sim, expect);
    }
}

/// `history: file:/dev/zero` ate memory until killed; a FIFO hung for ever; a symlink was
/// followed. Each is exit 2 with the file named, at once, and the build never starts.
#[test]
fn a_history_file_that_is_not_one_costs_no_server() {
    let sim = HcloudSim::with_golden_amd64();
    let ctx = Context::new().file("Dockerfile", "FROM scratch\n");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("history.jsonl");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let cases = [
        ("/dev/zero".into(), "is not a regular file"),
        (fifo, "is not a regular file"),
        (link, "is a symlink"),
    ];
    for (path, expect) in cases {
        let setting = format!("file:{}", path.display());
        let out = build(&sim, &ctx, &["--history", &setting]);
        let line = out.assert_one_line_error(2);
        assert!(
            line.contains(&format!("history file {}: {expect}", path.display())),
            "{line}"
        );
        assert_no_request(&sim, expect);
        // `plan` reads it the same way.
        let out = finishes_within(
            launcher(&ctx)
                .args(["plan", "--history", &setting, "--context"])
                .arg(ctx.path()),
            Duration::from_secs(30),
        );
        out.assert_one_line_error(2);
    }
}

/// A registry an attacker runs, on loopback: answers by path, counts what it sent and what it
/// was asked. Each connection gets one answer and is closed (`Connection: close`), so an
/// endless body is read until the client hangs up.
struct Hostile {
    /// `127.0.0.x:PORT`
    addr: String,
    sent: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<String>>>,
}

/// What a hostile server answers to `GET path`: head lines, then a body (endless when
/// `endless` repeats for ever after `body`).
struct Answer {
    status: &'static str,
    headers: Vec<String>,
    body: Vec<u8>,
    endless: Option<Vec<u8>>,
}

impl Answer {
    fn new(status: &'static str, body: &str) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            endless: None,
        }
    }

    /// `401` with a Bearer challenge naming `realm` (and `service`, when given).
    fn bearer_challenge(realm: &str, service: Option<&str>) -> Answer {
        let mut answer = Answer::new("401 Unauthorized", "{}");
        let service = service
            .map(|s| format!(",service=\"{s}\""))
            .unwrap_or_default();
        answer.headers.push(format!(
            "WWW-Authenticate: Bearer realm=\"{realm}\"{service}"
        ));
        answer
    }
}

impl Hostile {
    fn start(ip: &str, answer: impl Fn(&str) -> Answer + Send + Sync + 'static) -> Hostile {
        let listener = TcpListener::bind(format!("{ip}:0")).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let sent = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let (s, r) = (sent.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let (answer, sent, requests) = (answer.clone(), s.clone(), r.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut first = String::new();
                    if reader.read_line(&mut first).is_err() {
                        return;
                    }
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                    }
                    let path = first.split_whitespace().nth(1).unwrap_or("").to_owned();
                    requests.lock().unwrap().push(path.clone());
                    let a = answer(&path);
                    let mut head = format!("HTTP/1.1 {}\r\nConnection: close\r\n", a.status);
                    for h in &a.headers {
                        head.push_str(h);
                        head.push_str("\r\n");
                    }
                    if a.endless.is_none() {
                        head.push_str(&format!("Content-Length: {}\r\n", a.body.len()));
                    }
                    head.push_str("\r\n");
                    let mut write = |bytes: &[u8]| {
                        let ok = stream.write_all(bytes).is_ok();
                        if ok {
                            sent.fetch_add(bytes.len() as u64, Ordering::SeqCst);
                        }
                        ok
                    };
                    if !write(head.as_bytes()) || !write(&a.body) {
                        return;
                    }
                    if let Some(chunk) = a.endless {
                        while write(&chunk) {}
                    }
                });
            }
        });
        Hostile {
            addr,
            sent,
            requests,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn history_key() -> HistoryKey {
    HistoryKey {
        repo: "acme/app".into(),
        dockerfile: "Dockerfile".into(),
        target: None,
        arch: buildkit_launcher::config::Arch::Amd64,
    }
}

/// A registry a pipeline names answers an endless tag list (it was read whole: 1.1 GB, then
/// the OOM killer). The history read stops past the cap, with an error naming the registry and
/// what was too large, having read little more than the cap.
#[test]
fn an_endless_tag_list_is_read_no_further_than_its_cap() {
    let registry = Hostile::start("127.0.0.1", |path| {
        if path == "/v2/" {
            return Answer::new("200 OK", "{}");
        }
        let mut answer = Answer::new("200 OK", "{\"name\":\"x\",\"tags\":[\"");
        answer.headers.push("Content-Type: application/json".into());
        answer.endless = Some(b"s".repeat(64 * 1024));
        answer
    });
    let store = RegistryStore::new(registry.addr.clone(), true, None, 0);
    let err = store.recent(&history_key(), 30).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "the answer of registry {} to GET /v2/",
            registry.addr
        )),
        "{err}"
    );
    assert!(
        err.contains("/tags/list is larger than 4 MiB (the cap); the rest was not read"),
        "{err}"
    );
    // What was sent before the launcher hung up: the cap and what the sockets buffer.
    let sent = registry.sent.load(Ordering::SeqCst);
    assert!(sent < 64 << 20, "{sent} bytes were read");
}

/// The same registry, politer: pages of 1 MiB, each with a `Link` to the next, for ever. The
/// pages together are capped too.
#[test]
fn endless_tag_list_pages_stop_at_the_cap_over_all_pages() {
    let registry = Hostile::start("127.0.0.1", |path| {
        if path == "/v2/" {
            return Answer::new("200 OK", "{}");
        }
        let tags: Vec<String> = (0..40_000).map(|i| format!("t{i:019}")).collect();
        let body = serde_json::json!({ "name": "x", "tags": tags }).to_string();
        let mut answer = Answer::new("200 OK", &body);
        let next = format!(
            "{}?n=40000&last=x{}",
            path.split('?').next().unwrap(),
            body.len()
        );
        answer.headers.push(format!("Link: <{next}>; rel=\"next\""));
        answer
    });
    let store = RegistryStore::new(registry.addr.clone(), true, None, 0);
    let err = store.recent(&history_key(), 30).unwrap_err().to_string();
    assert!(
        err.contains("is larger than 16 MiB over its pages (the cap)"),
        "{err}"
    );
    let pages = registry.requests().len() - 1;
    assert!(pages <= 20, "{pages} pages were read");
}

/// A pull request's registry answers 401 with a token realm on an internal address; the agent
/// fetched it with the registry credentials and sent the answer back. Now the build stops with
/// exit 2, one line naming the registry, the realm's host and the rule, before any token
/// request (the internal service is never asked) and before any API request.
#[test]
fn a_token_realm_on_another_host_is_never_asked() {
    let internal = Hostile::start("127.0.0.2", |_| {
        Answer::new("200 OK", "{\"token\":\"internal-secret-73a1\"}")
    });
    let realm = format!("http://{}/latest/meta-data/token", internal.addr);
    let registry = Hostile::start("127.0.0.1", move |_| {
        Answer::bearer_challenge(&realm, Some("registry"))
    });
    let sim = HcloudSim::with_golden_amd64();
    let ctx = Context::new().file("Dockerfile", "FROM scratch\n");
    let out = finishes_within(
        launcher(&ctx)
            .env("HCLOUD_TOKEN", &sim.token)
            .env("HCLOUD_ENDPOINT", &sim.endpoint)
            .env("REGISTRY_PASSWORD", "fake-registry-password")
            .args(["build", "--provider", "hcloud", "--history", "none"])
            .args(["--registry", &registry.addr, "--insecure-registry"])
            .args(["--registry-user", "ci", "--context"])
            .arg(ctx.path()),
        Duration::from_secs(60),
    );
    let line = out.assert_one_line_error(2);
    assert!(
        line.contains(&format!("registry {}:", registry.addr)),
        "{line}"
    );
    assert!(line.contains("is on the host \"127.0.0.2\""), "{line}");
    assert!(line.contains("token_realms"), "{line}");
    assert!(!line.contains("fake-registry-password"), "{line}");
    assert_eq!(internal.requests(), Vec::<String>::new());
    assert_no_request(&sim, "token realm");

    // The operator names the token service's host in the policy: now it is asked.
    let policy = ctx.path().join("policy.ncl");
    std::fs::write(&policy, "{ token_realms = [\"127.0.0.2\"] }").unwrap();
    let out = finishes_within(
        launcher(&ctx)
            .env("BUILDKIT_LAUNCHER_POLICY", &policy)
            .env("HCLOUD_TOKEN", &sim.token)
            .env("HCLOUD_ENDPOINT", &sim.endpoint)
            .env("REGISTRY_PASSWORD", "fake-registry-password")
            .args(["build", "--provider", "hcloud", "--history", "none"])
            .args(["--registry", &registry.addr, "--insecure-registry"])
            .args(["--registry-user", "ci", "--context"])
            .arg(ctx.path()),
        Duration::from_secs(60),
    );
    // The registry refuses everything it is then asked (exit 2), but the realm was followed.
    out.assert_one_line_error(2);
    let asked = internal.requests();
    assert!(!asked.is_empty());
    assert!(
        asked
            .iter()
            .all(|r| r.starts_with("/latest/meta-data/token?scope=repository")),
        "{asked:?}"
    );
    assert_no_request(&sim, "token realm allowed by the policy");
}

/// The same attack one hop later: the realm is on the registry's own host (allowed), and the
/// token service there redirects to the internal address; so does the `/v2/` handshake of a
/// second registry. Neither redirect is followed: the internal service is never asked.
#[test]
fn a_redirect_to_another_host_is_never_followed_for_a_token_or_the_handshake() {
    let internal = Hostile::start("127.0.0.2", |_| {
        Answer::new("200 OK", "{\"token\":\"internal-secret-73a1\"}")
    });
    let target = format!("http://{}/latest/meta-data/token", internal.addr);
    let own = Arc::new(Mutex::new(String::new()));
    let (host, to) = (own.clone(), target.clone());
    let registry = Hostile::start("127.0.0.1", move |path| {
        if path == "/v2/" {
            let realm = format!("http://{}/token", host.lock().unwrap());
            return Answer::bearer_challenge(&realm, Some("registry"));
        }
        let mut answer = Answer::new("302 Found", "");
        answer.headers.push(format!("Location: {to}"));
        answer
    });
    *own.lock().unwrap() = registry.addr.clone();
    let to = target.clone();
    let handshake = Hostile::start("127.0.0.1", move |_| {
        let mut answer = Answer::new("307 Temporary Redirect", "");
        answer.headers.push(format!("Location: {to}"));
        answer
    });
    let sim = HcloudSim::with_golden_amd64();
    let ctx = Context::new().file("Dockerfile", "FROM scratch\n");
    for (registry, code) in [(&registry.addr, 2), (&handshake.addr, 4)] {
        let out = finishes_within(
            launcher(&ctx)
                .env("HCLOUD_TOKEN", &sim.token)
                .env("HCLOUD_ENDPOINT", &sim.endpoint)
                .env("REGISTRY_PASSWORD", "fake-registry-password")
                .args(["build", "--provider", "hcloud", "--history", "none"])
                .args(["--registry", registry, "--insecure-registry"])
                .args(["--registry-user", "ci", "--context"])
                .arg(ctx.path()),
            Duration::from_secs(60),
        );
        let line = out.assert_one_line_error(code);
        assert!(line.contains(registry.as_str()), "{line}");
        assert!(
            line.contains("redirected to the host \"127.0.0.2:"),
            "{line}"
        );
        assert!(!line.contains("fake-registry-password"), "{line}");
    }
    assert_eq!(internal.requests(), Vec::<String>::new());
    assert_no_request(&sim, "a redirected token or handshake");
}

/// The access check starts an upload and cancels it with a DELETE to the upload's Location,
/// credentials attached. A registry naming an upload URL on another host (an internal service)
/// never gets that DELETE sent there: only an upload on the registry's own origin is cancelled.
#[test]
fn an_upload_location_on_another_host_is_never_sent_the_credentials() {
    let internal = Hostile::start("127.0.0.2", |_| Answer::new("202 Accepted", ""));
    let elsewhere = format!("http://{}/upload/1", internal.addr);
    let registry = Hostile::start("127.0.0.1", move |path| {
        if path.ends_with("/blobs/uploads/") {
            let mut answer = Answer::new("202 Accepted", "");
            answer.headers.push(format!("Location: {elsewhere}"));
            return answer;
        }
        if path.ends_with("/tags/list") {
            return Answer::new("200 OK", "{\"name\":\"x\",\"tags\":[]}");
        }
        Answer::new("200 OK", "{}")
    });
    let sim = HcloudSim::with_golden_amd64();
    let home = Context::new();
    let out = finishes_within(
        launcher(&home)
            .env("HCLOUD_TOKEN", &sim.token)
            .env("HCLOUD_ENDPOINT", &sim.endpoint)
            .env("REGISTRY_PASSWORD", "fake-registry-password")
            .args(["check", "--json", "--registry", &registry.addr])
            .args(["--insecure-registry", "--registry-user", "ci"])
            .args(["--repo", "acme/app"]),
        Duration::from_secs(60),
    );
    assert!(
        registry
            .requests()
            .iter()
            .any(|p| p == "/v2/acme/app/blobs/uploads/"),
        "the access check ran: {:?}\n{}",
        registry.requests(),
        out.stderr
    );
    assert_eq!(internal.requests(), Vec::<String>::new());
}

/// `token_realms` holds hosts only: a URL or a host with a port is a policy error.
#[test]
fn token_realms_in_the_policy_are_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.ncl");
    std::fs::write(&file, "{ token_realms = [\"auth.docker.io\", \"[::1]\"] }").unwrap();
    let policy = buildkit_launcher::policy::Policy::from_file(&file).unwrap();
    assert_eq!(policy.token_realms, ["auth.docker.io", "[::1]"]);
    assert!(
        buildkit_launcher::policy::Policy::default()
            .token_realms
            .is_empty()
    );
    for bad in ["https://auth.docker.io", "auth.docker.io:443", "a/b"] {
        std::fs::write(&file, format!("{{ token_realms = [\"{bad}\"] }}")).unwrap();
        let err = buildkit_launcher::policy::Policy::from_file(&file)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected a host name or address"),
            "{bad}: {err}"
        );
    }
}

/// A token service on the registry's own host answering an endless token: the check reads its
/// cap, says so and gives up (exit 4: the registry cannot be asked), before any server.
#[test]
fn an_endless_token_answer_is_read_no_further_than_its_cap() {
    let port = Arc::new(Mutex::new(String::new()));
    let own = port.clone();
    let registry = Hostile::start("127.0.0.1", move |path| {
        if path == "/v2/" {
            let realm = format!("http://{}/token", own.lock().unwrap());
            return Answer::bearer_challenge(&realm, None);
        }
        let mut answer = Answer::new("200 OK", "{\"token\":\"");
        answer.endless = Some(b"t".repeat(64 * 1024));
        answer
    });
    *port.lock().unwrap() = registry.addr.clone();
    let sim = HcloudSim::with_golden_amd64();
    let ctx = Context::new().file("Dockerfile", "FROM scratch\n");
    let out = finishes_within(
        launcher(&ctx)
            .env("HCLOUD_TOKEN", &sim.token)
            .env("HCLOUD_ENDPOINT", &sim.endpoint)
            .args(["build", "--provider", "hcloud", "--history", "none"])
            .args([
                "--registry",
                &registry.addr,
                "--insecure-registry",
                "--context",
            ])
            .arg(ctx.path()),
        Duration::from_secs(60),
    );
    let line = out.assert_one_line_error(4);
    assert!(
        line.contains("is larger than 1 MiB (the cap); the rest was not read"),
        "{line}"
    );
    assert!(line.contains(&registry.addr), "{line}");
    assert!(registry.sent.load(Ordering::SeqCst) < 64 << 20);
    assert_no_request(&sim, "token answer");
}
