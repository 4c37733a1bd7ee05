//! A throwaway OCI registry for tests: Debian's `docker-registry` (distribution v2) on a free
//! loopback port, with its own config and temporary storage, killed and removed on drop.
//! What the tests need and run: README.md, "Two commands".

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// `user:password` when started with auth.
    credentials: Option<String>,
    /// With scoped bearer tokens: the service that issues them (the tests' own reads use a
    /// token it mints for the admin user).
    tokens: Option<(std::sync::Arc<super::token_auth::TokenService>, String)>,
    child: Child,
    dir: tempfile::TempDir,
    /// The htpasswd file's directory, with basic auth.
    auth_dir: Option<tempfile::TempDir>,
}

impl Registry {
    /// Make the registry fail every request for repository `repo` (`cache/e2e/app`) from now
    /// on, with a server error, while every other repository works: its storage gets a plain
    /// file where the repository's directory was.
    pub fn break_repository(&self, repo: &str) {
        let path = self
            .dir
            .path()
            .join("data/docker/registry/v2/repositories")
            .join(repo);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "broken by the test\n").unwrap();
    }

    pub fn start() -> Registry {
        Registry::spawn(None, Ipv4Addr::LOCALHOST)
    }

    /// On another loopback address (for [`loopback_name`]'s).
    pub fn start_at(ip: Ipv4Addr) -> Registry {
        Registry::spawn(None, ip)
    }

    /// `NAME:PORT`: this registry under another name for its address.
    pub fn addr_as(&self, name: &str) -> String {
        let port = self.addr.rsplit_once(':').unwrap().1;
        format!("{name}:{port}")
    }

    /// Basic auth from an htpasswd file (bcrypt, `htpasswd -Bbn`).
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Registry::spawn(Some((user, password)), Ipv4Addr::LOCALHOST)
    }

    /// Scoped bearer tokens from `service` (distribution's `auth.token`); `admin` (a user of the
    /// service with every grant) is whom the tests' own calls and the base image push act as.
    pub fn start_with_tokens(
        service: std::sync::Arc<super::token_auth::TokenService>,
        admin: (&str, &str),
    ) -> Registry {
        let mut registry = Registry::spawn_with(
            service.registry_auth_config(),
            Some(format!("{}:{}", admin.0, admin.1)),
            Ipv4Addr::LOCALHOST,
        );
        registry.tokens = Some((service, admin.0.to_owned()));
        registry
    }

    /// Pushes `base/busybox:latest` (scripts/prepare-base-image) into this registry.
    pub fn with_base_image(self) -> Registry {
        let script = super::repo_dir().join("scripts/prepare-base-image");
        let mut cmd = Command::new(&script);
        cmd.arg(&self.addr);
        if self.credentials.is_some() {
            let auth = self.dir.path().join("auth.json");
            std::fs::write(&auth, self.docker_config()).unwrap();
            cmd.env("REGISTRY_AUTH_FILE", auth);
        }
        let out = cmd.output().expect("run scripts/prepare-base-image");
        assert!(
            out.status.success(),
            "prepare-base-image failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self
    }

    /// `ADDR/base/busybox:latest`, after [`Registry::with_base_image`].
    pub fn base_image(&self) -> String {
        format!("{}/base/busybox:latest", self.addr)
    }

    /// A `~/.docker/config.json` holding this registry's credentials (`{"auths":{}}` without).
    pub fn docker_config(&self) -> String {
        match &self.credentials {
            Some(c) => format!(
                r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
                self.addr,
                base64(c.as_bytes())
            ),
            None => r#"{"auths":{}}"#.to_owned(),
        }
    }

    /// `GET /v2/REPO/manifests/REFERENCE`: the `Docker-Content-Digest`, or `None` on 404.
    pub fn manifest_digest(&self, repo: &str, reference: &str) -> Option<String> {
        let accept = "application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json";
        let (status, headers, body) = self
            .get(
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("Accept", accept)],
            )
            .expect("query the registry");
        match status {
            200 => Some(header(&headers, "Docker-Content-Digest").expect("digest header")),
            404 => None,
            _ => panic!("registry answered {status} for {repo}:{reference}: {body}"),
        }
    }

    /// `GET /v2/REPO/manifests/REFERENCE` asking for `accept`: the status and the JSON (null when
    /// the body is none).
    #[allow(dead_code)] // not every test binary reads manifests
    pub fn manifest_json(
        &self,
        repo: &str,
        reference: &str,
        accept: &str,
    ) -> (u16, serde_json::Value) {
        let (status, _, body) = self
            .get(
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("Accept", accept)],
            )
            .unwrap();
        (status, serde_json::from_str(&body).unwrap_or_default())
    }

    /// The config blob of the image manifest `REPO:REFERENCE` (a tag or a digest).
    #[allow(dead_code)]
    pub fn image_config(&self, repo: &str, reference: &str) -> serde_json::Value {
        let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
        let (status, manifest) = self.manifest_json(repo, reference, accept);
        assert_eq!(status, 200, "{repo}:{reference}: {manifest}");
        let config = manifest["config"]["digest"].as_str().unwrap();
        let (status, _, body) = self
            .get(&format!("/v2/{repo}/blobs/{config}"), &[])
            .unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Where the registry keeps its blobs and manifests (distribution's filesystem driver):
    /// every byte anything pushed, for a test that scans them.
    #[allow(dead_code)]
    pub fn storage(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// `GET /v2/REPO/tags/list` as raw JSON (`None` on 404).
    pub fn tags(&self, repo: &str) -> Option<String> {
        let (status, _, body) = self.get(&format!("/v2/{repo}/tags/list"), &[]).unwrap();
        (status == 200).then_some(body)
    }

    /// A plain HTTP/1.0 GET, with this registry's credentials when it has any (a pull token
    /// for the path's repository when it uses bearer tokens).
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        let mut all: Vec<(&str, String)> =
            headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        match (&self.tokens, &self.credentials) {
            (Some((service, admin)), _) => {
                let repo = path
                    .strip_prefix("/v2/")
                    .and_then(|p| {
                        p.rsplit_once("/manifests/")
                            .map(|(r, _)| r)
                            .or_else(|| p.strip_suffix("/tags/list"))
                    })
                    .unwrap_or_default();
                let token = service.mint(admin, &[format!("repository:{repo}:pull")]);
                all.push(("Authorization", format!("Bearer {token}")));
            }
            (None, Some(c)) => {
                all.push(("Authorization", format!("Basic {}", base64(c.as_bytes()))));
            }
            (None, None) => {}
        }
        http_get(&self.addr, path, &all)
    }

    fn spawn(auth: Option<(&str, &str)>, ip: Ipv4Addr) -> Registry {
        let dir_for_htpasswd = tempfile::Builder::new()
            .prefix("test-registry-auth-")
            .tempdir()
            .expect("temp dir for the registry's htpasswd");
        let mut auth_config = String::new();
        if let Some((user, password)) = auth {
            require_tool("htpasswd", "apache2-utils");
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("run htpasswd");
            assert!(out.status.success(), "htpasswd failed");
            std::fs::write(dir_for_htpasswd.path().join("htpasswd"), out.stdout).unwrap();
            auth_config = format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir_for_htpasswd.path().join("htpasswd").display()
            );
        }
        let mut registry =
            Registry::spawn_with(auth_config, auth.map(|(u, p)| format!("{u}:{p}")), ip);
        registry.auth_dir = Some(dir_for_htpasswd);
        registry
    }

    fn spawn_with(auth_config: String, credentials: Option<String>, ip: Ipv4Addr) -> Registry {
        require_tool("docker-registry", "docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("test-registry-")
            .tempdir()
            .expect("temp dir for the registry");
        let config = dir.path().join("config.yml");
        let log_path = dir.path().join("registry.log");
        // The free port can be taken between probing and binding: try a few.
        for _ in 0..3 {
            let addr = free_loopback_addr(ip);
            let data = dir.path().join("data");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    \
                     rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n\
                     {auth_config}",
                    data.display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                // 200, or 401 when auth is on: either way it serves the API.
                if let Ok((200 | 401, _, _)) = http_get(&addr, "/v2/", &[]) {
                    return Registry {
                        addr,
                        credentials,
                        tokens: None,
                        child,
                        dir,
                        auth_dir: None,
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    break; // exited (port taken?): next port
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "docker-registry on {addr} did not answer GET /v2/ within 10 s: {}",
                        last_line(&log_path)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("docker-registry exited at start: {}", last_line(&log_path));
    }
}

/// A second docker-registry serving the same storage over HTTPS (see [`Registry::tls_twin`]),
/// killed on drop.
pub struct TlsTwin {
    /// `IP:PORT`
    pub addr: String,
    child: Child,
    /// Its config and log, removed on drop.
    _dir: tempfile::TempDir,
}

impl TlsTwin {
    /// `NAME:PORT`: this registry under another name for its address.
    pub fn addr_as(&self, name: &str) -> String {
        let port = self.addr.rsplit_once(':').unwrap().1;
        format!("{name}:{port}")
    }
}

impl Drop for TlsTwin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// The same repositories (this registry's storage) served over HTTPS with `cert` and `key`
    /// (PEM) on another port of the same address: images pushed here over HTTP (the base image)
    /// are pulled there over TLS. Ready once it accepts connections.
    pub fn tls_twin(&self, cert: &Path, key: &Path) -> TlsTwin {
        let ip: Ipv4Addr = self.addr.rsplit_once(':').unwrap().0.parse().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("test-registry-tls-")
            .tempdir()
            .expect("temp dir for the TLS registry");
        let config = dir.path().join("config.yml");
        let log_path = dir.path().join("registry.log");
        let addr = free_loopback_addr(ip);
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\nhttp:\n  addr: {addr}\n  tls:\n    certificate: {}\n    key: {}\n",
                self.dir.path().join("data").display(),
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry with TLS");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&addr).is_err() {
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "docker-registry with TLS on {addr} did not listen: {}",
                    last_line(&log_path)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsTwin {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `dir` (storage, config, log) is removed when the field drops.
    }
}

/// A response: status, headers (name, value), body.
pub type Response = (u16, Vec<(String, String)>, String);

/// `GET path` over HTTP/1.0 (so the body is neither chunked nor kept alive).
pub fn http_get(addr: &str, path: &str, headers: &[(&str, String)]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, body.to_owned()))
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

fn free_loopback_addr(ip: Ipv4Addr) -> String {
    let listener = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
    listener.local_addr().unwrap().to_string()
}

/// A host name that is neither `localhost` nor an IP literal and resolves to a loopback IPv4
/// address, with that address: what BuildKit treats as a remote registry. Its resolver speaks
/// plain HTTP, without asking buildkitd.toml, to `localhost`, `::1` and every loopback IP
/// literal (containerd's docker.MatchLocalhost: all of 127.0.0.0/8), so neither 127.0.0.1 nor
/// 127.0.0.N can show a registry missing from buildkitd.toml. Debian lists the machine's own
/// name in /etc/hosts (127.0.1.1, or 127.0.0.1 here); the first such entry is used.
pub fn loopback_name() -> Option<(String, Ipv4Addr)> {
    use std::net::ToSocketAddrs;
    let hosts = std::fs::read_to_string("/etc/hosts").ok()?;
    for line in hosts.lines() {
        let mut words = line.split('#').next()?.split_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse::<Ipv4Addr>().ok()) else {
            continue;
        };
        if !ip.is_loopback() {
            continue;
        }
        for name in words {
            let special = name.contains("localhost") || name.parse::<std::net::IpAddr>().is_ok();
            let resolves = (name, 0)
                .to_socket_addrs()
                .is_ok_and(|mut a| a.any(|a| a.ip() == std::net::IpAddr::V4(ip)));
            if !special && resolves {
                return Some((name.to_owned(), ip));
            }
        }
    }
    None
}

fn last_line(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    log.lines().last().unwrap_or("(empty log)").to_owned()
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | ((*b as u32) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(tool))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn require_tool(tool: &str, package: &str) {
    assert!(on_path(tool), "{tool} not found: apt-get install {package}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|uids| uids.split_whitespace().nth(1) == Some("0")) // effective uid
        })
        .unwrap_or(false)
}

/// Whether a test that needs root and these tools can run here. If not, prints one line saying
/// what is missing and returns false -- except with `CI=true`, where it panics with that line.
pub fn require_root_and_tools(tools: &[&str]) -> bool {
    let tools: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root".to_owned());
    }
    if !tools.is_empty() {
        missing.push(format!("{} (scripts/install-deps)", tools.join(", ")));
    }
    if missing.is_empty() {
        return true;
    }
    let line = format!("skipped: needs {}", missing.join(" and "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{line}");
    }
    eprintln!("{line}");
    false
}
