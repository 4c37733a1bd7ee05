//! The local provider: a sandboxed, throwaway runner on this machine.
//!
//! Each runner gets its own loopback address `127.0.0.N`, its own sshd (configured from the
//! cloud-init user data the launcher generated, exactly as a Hetzner server would read it), its
//! own memory cgroup (the tier's memory ÷ `memory_scale`, so out-of-memory can be exercised for
//! real on a small machine), its own work directory, home and build-tool storage. Destroy kills
//! every process in the cgroup, removes the cgroup and the directory, and checks that they are
//! gone. Runners of concurrent builds never share an address, a directory or a cgroup.
//!
//! Each runner also runs its own real buildkitd, set up from the golden image's files and
//! started inside the runner's memory cgroup with build containers below it ([`buildkitd`]).
//!
//! Layout of `<base>/<id>/`: `sshd_config`, host key, `authorized_keys`, `labels.json`,
//! `user-data`, `bin/` (on the runner's PATH: `bkl-runner-stats`), `home/`, `work/`, `tmp/`,
//! `storage/` (buildah's graph and run roots, `storage.conf`), `root/` (the install prefix the
//! runner's own buildkitd was provisioned into: its config, state, socket and BuildKit links),
//! `image/` (the install prefix the runner's sessions see as `BKL_ROOT`: a golden-image bake in
//! a sandbox installs there, as on a fresh server with no BuildKit yet, and never touches the
//! host's system directories or the runner's own buildkitd), `golden/` (the golden image's
//! files provisioning ran from), `buildkitd.log`,
//! `oom-events` (OOM events of the runner's memory limit, cgroup v1: see [`oom`]).

pub mod buildkitd;
pub mod oom;
mod teardown;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::cloud_init::UserData;
use super::{LeaseInfo, Provider, ProviderError, Runner, RunnerSpec};

pub const DEFAULT_BASE: &str = "/var/tmp/buildkit-launcher/local";
/// The system part of a runner's PATH, after its own `bin/` and the `--local-tools` directories.
const RUNNER_SYSTEM_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Where `tool` would be found on the PATH of a sandbox runner with these `--local-tools`
/// directories (the runner's own `bin/` holds only `bkl-runner-stats`), if anywhere.
pub fn runner_tool(extra_path: &[PathBuf], tool: &str) -> Option<PathBuf> {
    extra_path
        .iter()
        .cloned()
        .chain(RUNNER_SYSTEM_PATH.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}
/// The cgroup v1 hierarchies' mount point, and the runners' parent cgroup below each.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP_RUNNERS: &str = "buildkit-launcher";
const CGROUP_PARENT: &str = "/sys/fs/cgroup/memory/buildkit-launcher";
const SSHD: &str = "/usr/sbin/sshd";
/// Loopback address claims, shared by every local provider on the machine whatever its base
/// directory: one file per address, holding the directory of the runner that owns it.
const ADDRESS_CLAIMS: &str = "/var/tmp/buildkit-launcher/addresses";

pub struct LocalProvider {
    base: PathBuf,
    cgroup_parent: PathBuf,
    memory_scale: u64,
    /// Directories put first on the runner's PATH (`--local-tools`).
    extra_path: Vec<PathBuf>,
    sshd: Mutex<HashMap<String, Child>>,
    /// Each runner's `bkl-runner-stats --sample` (outside its cgroup).
    samplers: Mutex<HashMap<String, Child>>,
    /// Each runner's buildkitd (inside its cgroup).
    buildkitd: Mutex<HashMap<String, Child>>,
    /// What each runner's buildkitd.toml is rendered from (the launcher config's).
    buildkitd_settings: crate::config::BuildkitdSettings,
}

impl LocalProvider {
    pub fn new(base: PathBuf, memory_scale: u64, extra_path: Vec<PathBuf>) -> LocalProvider {
        LocalProvider {
            base,
            cgroup_parent: PathBuf::from(CGROUP_PARENT),
            memory_scale: memory_scale.max(1),
            extra_path,
            sshd: Mutex::new(HashMap::new()),
            samplers: Mutex::new(HashMap::new()),
            buildkitd: Mutex::new(HashMap::new()),
            buildkitd_settings: crate::config::Config::defaults().buildkitd,
        }
    }

    /// Render each runner's buildkitd.toml from these settings (default: the embedded
    /// defaults of the launcher config).
    pub fn with_buildkitd(mut self, settings: crate::config::BuildkitdSettings) -> LocalProvider {
        self.buildkitd_settings = settings;
        self
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.base.join(id)
    }

    fn cgroup(&self, id: &str) -> PathBuf {
        self.cgroup_parent.join(id)
    }

    fn claims(&self) -> PathBuf {
        PathBuf::from(ADDRESS_CLAIMS)
    }

    /// Fail early, and plainly, when this machine cannot host sandbox runners.
    pub fn check_host() -> Result<(), ProviderError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(ProviderError::NeedsRoot(
                "the local provider needs root: it starts an sshd per runner and creates memory cgroups; run it with sudo".into(),
            ));
        }
        if !Path::new(SSHD).exists() {
            return Err(ProviderError::NeedsRoot(format!(
                "the local provider needs {SSHD} (apt-get install openssh-server)"
            )));
        }
        if !Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
            return Err(ProviderError::NeedsRoot(
                "the local provider needs the cgroup v1 memory controller at /sys/fs/cgroup/memory"
                    .into(),
            ));
        }
        for tool in ["buildkitd", "buildctl"] {
            if runner_tool(&[], tool).is_none() {
                return Err(ProviderError::NeedsRoot(format!(
                    "the local provider needs BuildKit's {tool} on the PATH (/usr/local/bin; scripts/install-deps installs it)"
                )));
            }
        }
        if !Path::new(buildkitd::RUNC).exists() {
            return Err(ProviderError::NeedsRoot(format!(
                "the local provider needs {} for BuildKit's OCI worker (apt-get install runc)",
                buildkitd::RUNC
            )));
        }
        Ok(())
    }

    fn setup(&self, id: &str, spec: &RunnerSpec) -> Result<(), ProviderError> {
        let fail = |action: &'static str| {
            let id = id.to_owned();
            move |e: std::io::Error| ProviderError::Runner {
                id,
                action,
                detail: e.to_string(),
            }
        };
        let dir = self.dir(id);
        let user_data = UserData::parse(&spec.user_data).map_err(|e| ProviderError::Runner {
            id: id.to_owned(),
            action: "read its user data",
            detail: e.to_string(),
        })?;
        for sub in [
            "bin",
            "home",
            "work",
            "tmp",
            "root",
            "image",
            "storage/graph",
            "storage/run",
        ] {
            fs::create_dir_all(dir.join(sub)).map_err(fail("create its directories"))?;
        }
        fs::write(dir.join("user-data"), &spec.user_data).map_err(fail("store its user data"))?;
        let labels = serde_json::to_string(&spec.labels).expect("labels serialize");
        fs::write(dir.join("labels.json"), labels).map_err(fail("store its labels"))?;

        // What cloud-init does with the user data: host key and authorized keys.
        write_private(
            &dir.join("ssh_host_ed25519_key"),
            user_data.ssh_keys.ed25519_private.as_bytes(),
        )
        .map_err(fail("install its host key"))?;
        fs::write(
            dir.join("ssh_host_ed25519_key.pub"),
            format!("{}\n", user_data.ssh_keys.ed25519_public),
        )
        .map_err(fail("install its host key"))?;
        fs::write(
            dir.join("authorized_keys"),
            user_data.ssh_authorized_keys.join("\n") + "\n",
        )
        .map_err(fail("install its authorized keys"))?;

        let (host, port) = self.claim_address(id)?;
        fs::write(dir.join("address"), format!("{host}:{port}"))
            .map_err(fail("record its address"))?;

        let cgroup = self.cgroup(id);
        self.create_cgroup(id, &cgroup, spec.tier.memory_mib)?;
        oom::watch(&cgroup, &dir.join("oom-events")).map_err(fail("watch its memory limit"))?;
        self.start_buildkitd(id, &dir, &cgroup, spec.arch)?;
        fs::write(dir.join("storage/storage.conf"), storage_conf(&dir))
            .map_err(fail("write its storage config"))?;
        write_executable(
            &dir.join("bin/bkl-runner-stats"),
            &runner_stats_script(&cgroup, &dir.join("stats-peak"), &dir.join("oom-events")),
        )
        .map_err(fail("install bkl-runner-stats"))?;
        // The sampler: outside the runner's cgroup (not charged to the build, not a candidate
        // for its OOM killer), in its own process group; it ends when the cgroup is removed.
        let sampler = Command::new("/bin/sh")
            .arg(dir.join("bin/bkl-runner-stats"))
            .arg("--sample")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(fail("start its memory sampler"))?;
        fs::write(dir.join("sampler.pid.launcher"), sampler.id().to_string())
            .map_err(fail("record its memory sampler"))?;
        self.samplers
            .lock()
            .expect("sampler table lock")
            .insert(id.to_owned(), sampler);
        let mut sshd_config = self.sshd_config(&dir, &host, port, spec.arch);
        if user_data.password_expired() {
            // What Debian's sshd with PAM does once the root password is expired: the key is
            // accepted, then every session without a terminal prints this and ends (exit 1).
            sshd_config.push_str(PAM_EXPIRED_PASSWORD);
        }
        fs::write(dir.join("sshd_config"), sshd_config).map_err(fail("write its sshd config"))?;
        fs::create_dir_all("/run/sshd").map_err(fail("create /run/sshd"))?;

        let log = fs::File::create(dir.join("sshd.log")).map_err(fail("open its sshd log"))?;
        let child = Command::new(SSHD)
            .env_clear()
            .envs(crate::environment::for_child())
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(fail("open its sshd log"))?)
            .stderr(log)
            // Its own process group: a Ctrl-C at the terminal reaches the launcher, which
            // destroys the runner, instead of killing the runner's sshd behind its back.
            .process_group(0)
            .spawn()
            .map_err(fail("start its sshd"))?;
        let pid = child.id();
        self.sshd
            .lock()
            .expect("sshd table lock")
            .insert(id.to_owned(), child);
        // sshd forks a process per connection; none has arrived yet, so all of them inherit.
        fs::write(cgroup.join("cgroup.procs"), pid.to_string())
            .map_err(fail("put its sshd in its memory cgroup"))?;
        fs::write(dir.join("sshd.pid.launcher"), pid.to_string())
            .map_err(fail("record its sshd"))?;
        Ok(())
    }

    fn create_cgroup(&self, id: &str, cgroup: &Path, tier_mib: u64) -> Result<(), ProviderError> {
        let fail = |action: &'static str| {
            let id = id.to_owned();
            move |e: std::io::Error| ProviderError::Runner {
                id,
                action,
                detail: e.to_string(),
            }
        };
        fs::create_dir_all(cgroup).map_err(fail("create its memory cgroup"))?;
        let bytes = tier_mib * 1024 * 1024 / self.memory_scale;
        // v1 wants the memory limit before the memory+swap limit, which must not be lower.
        fs::write(cgroup.join("memory.limit_in_bytes"), bytes.to_string())
            .map_err(fail("set its memory limit"))?;
        let memsw = cgroup.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            fs::write(memsw, bytes.to_string()).map_err(fail("set its memory+swap limit"))?;
        }
        Ok(())
    }

    /// `BKL_RUNNER_ARCH` is the architecture the runner was made for (a sandbox standing in
    /// for an ARM server says arm64; its tools run on this machine's CPU all the same).
    fn sshd_config(&self, dir: &Path, host: &str, port: u16, arch: crate::config::Arch) -> String {
        let mut path: Vec<String> = vec![dir.join("bin").display().to_string()];
        path.extend(self.extra_path.iter().map(|p| p.display().to_string()));
        path.extend(RUNNER_SYSTEM_PATH.map(String::from));
        let d = dir.display();
        format!(
            "# sshd of buildkit-launcher local runner {d}\n\
             ListenAddress {host}:{port}\n\
             HostKey {d}/ssh_host_ed25519_key\n\
             PidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             PermitRootLogin prohibit-password\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             PrintMotd no\n\
             MaxSessions 64\n\
             MaxStartups 64\n\
             SetEnv PATH={} HOME={d}/home TMPDIR={d}/tmp CONTAINERS_STORAGE_CONF={d}/storage/storage.conf BUILDAH_ISOLATION=chroot BKL_RUNNER_WORKDIR={d}/work BKL_ROOT={d}/image BKL_RUNNER_ARCH={arch} BUILDKIT_HOST={}\n",
            path.join(":"),
            buildkitd::buildkit_host(&dir.join("root"))
        )
    }

    /// A loopback address no other runner holds, and a port on it: 22 when free there.
    fn claim_address(&self, id: &str) -> Result<(String, u16), ProviderError> {
        let claims = self.claims();
        fs::create_dir_all(&claims).map_err(|e| ProviderError::Setup {
            action: "create the address claims directory",
            detail: e.to_string(),
        })?;
        for n in 2..=254u8 {
            let ip = Ipv4Addr::new(127, 0, 0, n);
            let claim = claims.join(ip.to_string());
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&claim)
            {
                Ok(mut f) => {
                    let _ = f.write_all(self.dir(id).as_os_str().as_encoded_bytes());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A claim whose runner directory is gone is stale (a killed launcher);
                    // an empty one is being written right now.
                    let holder = fs::read_to_string(&claim).unwrap_or_default();
                    if !holder.is_empty() && !Path::new(holder.trim()).exists() {
                        let _ = fs::remove_file(&claim);
                    }
                    continue;
                }
                Err(e) => {
                    return Err(ProviderError::Setup {
                        action: "claim a loopback address",
                        detail: e.to_string(),
                    });
                }
            }
            // Port 22 where nothing listens (a system sshd on 0.0.0.0:22 takes it everywhere).
            if TcpListener::bind((ip, 22)).is_ok() {
                return Ok((ip.to_string(), 22));
            }
            if let Ok(listener) = TcpListener::bind((ip, 0))
                && let Ok(addr) = listener.local_addr()
            {
                return Ok((ip.to_string(), addr.port()));
            }
            let _ = fs::remove_file(&claim);
        }
        Err(ProviderError::Setup {
            action: "claim a loopback address",
            detail: "all of 127.0.0.2–127.0.0.254 are held by other runners".into(),
        })
    }

    fn release_address(&self, id: &str) {
        let Ok(entries) = fs::read_dir(self.claims()) else {
            return;
        };
        for entry in entries.flatten() {
            if fs::read_to_string(entry.path()).is_ok_and(|h| Path::new(h.trim()) == self.dir(id)) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn read_address(&self, id: &str) -> Option<(String, u16)> {
        let text = fs::read_to_string(self.dir(id).join("address")).ok()?;
        let (host, port) = text.trim().rsplit_once(':')?;
        Some((host.to_owned(), port.parse().ok()?))
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn create(&self, spec: &RunnerSpec) -> Result<String, ProviderError> {
        Self::check_host()?;
        let id = format!("local-{}", spec.lease.id);
        fs::create_dir_all(&self.base).map_err(|e| ProviderError::Setup {
            action: "create the local runners directory",
            detail: format!("{}: {e}", self.base.display()),
        })?;
        fs::create_dir(self.dir(&id)).map_err(|e| ProviderError::Runner {
            id: id.clone(),
            action: "create its directory",
            detail: e.to_string(),
        })?;
        let _ = fs::set_permissions(self.dir(&id), fs::Permissions::from_mode(0o700));
        if let Err(e) = self.setup(&id, spec) {
            // The caller never saw this id: clean up here.
            let _ = self.teardown(&id);
            return Err(e);
        }
        Ok(id)
    }

    async fn wait_ready(&self, id: &str) -> Result<Runner, ProviderError> {
        let (host, port) = self.read_address(id).ok_or_else(|| ProviderError::Runner {
            id: id.to_owned(),
            action: "find its address",
            detail: "the runner was not created".into(),
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect((host.as_str(), port)).is_ok() {
                break;
            }
            let exited = self
                .sshd
                .lock()
                .expect("sshd table lock")
                .get_mut(id)
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = fs::read_to_string(self.dir(id).join("sshd.log")).unwrap_or_default();
                let last = log.lines().last().unwrap_or("no output").to_owned();
                return Err(ProviderError::Runner {
                    id: id.to_owned(),
                    action: "start its sshd",
                    detail: format!("sshd is not listening on {host}:{port}: {last}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let dir = self.dir(id);
        Ok(Runner {
            id: id.to_owned(),
            host,
            port,
            workdir: dir.join("work").display().to_string(),
            home: dir.join("home").display().to_string(),
        })
    }

    /// The runner's buildkitd, watched while the launcher waits for it: one that exits (a bad
    /// flag or config, a root it cannot use) fails the attempt at once, with its own words,
    /// instead of after the whole readiness wait (and its log goes with the runner).
    async fn watch_daemon(&self, id: &str) -> Result<(), ProviderError> {
        if !self
            .buildkitd
            .lock()
            .expect("buildkitd table lock")
            .contains_key(id)
        {
            return Ok(());
        }
        loop {
            if let Some(e) = self.buildkitd_exited(id) {
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn destroy(&self, id: &str) -> Result<(), ProviderError> {
        self.teardown(id)
    }

    async fn list_leases(&self) -> Result<Vec<LeaseInfo>, ProviderError> {
        let mut leases = Vec::new();
        let Ok(entries) = fs::read_dir(&self.base) else {
            return Ok(leases);
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("local-") {
                continue;
            }
            let labels: BTreeMap<String, String> =
                fs::read_to_string(entry.path().join("labels.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default();
            let created = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            leases.push(LeaseInfo {
                name: name.clone(),
                id: name,
                labels,
                locked: false,
                created,
            });
        }
        leases.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(leases)
    }
}

/// The sshd setting that makes a sandbox runner refuse sessions the way OpenSSH's
/// `do_pwchange` does for an expired password without a TTY.
const PAM_EXPIRED_PASSWORD: &str = "ForceCommand printf '%s\\n' 'WARNING: Your password has expired.' 'Password change required but no TTY available.' >&2; exit 1\n";

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)
}

fn write_executable(path: &Path, contents: &str) -> std::io::Result<()> {
    fs::write(path, contents)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

fn storage_conf(dir: &Path) -> String {
    format!(
        "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/storage/graph\"\nrunroot = \"{0}/storage/run\"\n",
        dir.display()
    )
}

/// The runner's `bkl-runner-stats`: the golden image's script (it reads cgroup v1 as well as
/// v2), bound to the runner's cgroup v1 directory and its own sampler state file.
fn runner_stats_script(cgroup: &Path, state: &Path, oom_events: &Path) -> String {
    let script = include_str!("../../../golden-image/bkl-runner-stats");
    let body = script.split_once('\n').map_or(script, |(_, rest)| rest);
    format!(
        "#!/bin/sh\n\
         # bkl-runner-stats of a local sandbox runner (ARCHITECTURE.md): its memory cgroup.\n\
         BKL_STATS_CGROUP=${{BKL_STATS_CGROUP:-'{}'}}\n\
         BKL_STATS_STATE=${{BKL_STATS_STATE:-'{}'}}\n\
         BKL_STATS_OOM_EVENTS=${{BKL_STATS_OOM_EVENTS:-'{}'}}\n{body}",
        cgroup.display(),
        state.display(),
        oom_events.display()
    )
}

/// This machine's architecture, as [`crate::config::Arch::as_str`] names it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}
