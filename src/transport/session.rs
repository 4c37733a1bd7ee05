//! One SSH master connection per runner (openssh native mux), and everything done over it.
//!
//! The connection trusts exactly the host key the launcher generated for this build
//! (`StrictHostKeyChecking yes` against a private known_hosts file; no agent, no user config).
//! Remote commands stream their output live and come back with a faithful status: a process
//! killed by the OOM killer is 137, and a lost connection is told apart from a failed command.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssh::{KnownHosts, Session, SessionBuilder};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

pub use crate::runner::ConnectPolicy;
use crate::runner::Runner;

pub use super::ssh_config::shell_quote;
use super::ssh_config::{PROXY_ERROR_FILE, PROXY_FILE, bracketed, proxy_command, ssh_config};

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteExit {
    /// It exited with this status (a child killed by SIGKILL comes back as 137).
    Code(i32),
    /// The remote process was killed by a signal while the connection stayed up.
    Killed,
    /// The connection to the runner was lost.
    Lost(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot prepare the SSH connection: {0}")]
    Local(String),
    #[error(
        "runner {host}:{port} presented a host key other than the one generated for this build; refusing to connect"
    )]
    HostKeyMismatch { host: String, port: u16 },
    #[error(
        "cannot reach runner {host}:{port} over SSH after {attempts} attempts in {seconds} s: {last}"
    )]
    Unreachable {
        host: String,
        port: u16,
        attempts: u32,
        seconds: u64,
        last: String,
    },
    #[error("{purpose}: {detail}")]
    Command { purpose: String, detail: String },
    /// The proxy will not tunnel to the runner (crate::proxy::tunnel): retrying cannot help.
    #[error("cannot reach runner {host}:{port} through the proxy: {detail}")]
    Proxy {
        host: String,
        port: u16,
        detail: String,
    },
}

pub struct Connection {
    session: Option<Session>,
    /// Declared before `dir`: unlocked only after the directory is gone.
    _lock: nix::fcntl::Flock<std::fs::File>,
    /// Keys, known_hosts, ssh config and the control socket; removed on drop.
    dir: tempfile::TempDir,
    host: String,
    port: u16,
}

impl Connection {
    /// Connect to `runner`, which must present `host_key` (OpenSSH public key line).
    pub async fn connect(
        runner: &Runner,
        client_private_key: &str,
        host_key: &str,
        policy: ConnectPolicy,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<Connection, TransportError> {
        let dir = tempfile::Builder::new()
            .prefix(KEY_DIR_PREFIX)
            .tempdir_in(key_dir_base())
            .map_err(|e| TransportError::Local(e.to_string()))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| TransportError::Local(e.to_string()))?;
        // Held for the connection's life: a directory whose lock is free belongs to a launcher
        // that was killed, and the next one removes it (remove_stale_key_dirs).
        let lock = std::fs::File::create(dir.path().join("lock"))
            .map_err(|e| TransportError::Local(e.to_string()))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| TransportError::Local(format!("lock the key directory: {e}")))?;
        let key_path = dir.path().join("id");
        let mut key = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(|e| TransportError::Local(e.to_string()))?;
        key.write_all(client_private_key.as_bytes())
            .map_err(|e| TransportError::Local(e.to_string()))?;
        let host_pattern = if runner.port == 22 {
            runner.host.clone()
        } else {
            format!("[{}]:{}", runner.host, runner.port)
        };
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, format!("{host_pattern} {host_key}\n"))
            .map_err(|e| TransportError::Local(e.to_string()))?;
        // Behind a proxy, ssh reaches the runner through a CONNECT tunnel the launcher makes
        // itself (the proxy URL, with any credentials, in a 0600 file, never an argument).
        let proxy_command = match crate::proxy::current().for_ssh(&runner.host, runner.port) {
            Some(proxy) => {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(dir.path().join(PROXY_FILE))
                    .map_err(|e| TransportError::Local(e.to_string()))?;
                file.write_all(proxy.to_private_url().as_bytes())
                    .map_err(|e| TransportError::Local(e.to_string()))?;
                Some(proxy_command(dir.path(), &runner.host, runner.port)?)
            }
            None => None,
        };
        let config = dir.path().join("config");
        std::fs::write(&config, ssh_config(dir.path(), proxy_command.as_deref()))
            .map_err(|e| TransportError::Local(e.to_string()))?;
        let proxy_error = dir.path().join(PROXY_ERROR_FILE);

        let mut builder = SessionBuilder::default();
        builder
            .user("root".into())
            .port(runner.port)
            .config_file(&config)
            .keyfile(&key_path)
            .known_hosts_check(KnownHosts::Strict)
            .user_known_hosts_file(&known_hosts)
            .control_directory(dir.path())
            .connect_timeout(Duration::from_secs(5))
            .server_alive_interval(Duration::from_secs(5));

        let started = Instant::now();
        let mut delay = policy.first_delay;
        let mut last = String::new();
        for attempt in 1..=policy.attempts {
            let _ = std::fs::remove_file(&proxy_error);
            match builder.connect_mux(&runner.host).await {
                Ok(session) => {
                    return Ok(Connection {
                        session: Some(session),
                        _lock: lock,
                        dir,
                        host: runner.host.clone(),
                        port: runner.port,
                    });
                }
                Err(e) => {
                    last = one_line(&e);
                    if last.contains("Host key verification failed")
                        || last.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
                    {
                        return Err(TransportError::HostKeyMismatch {
                            host: runner.host.clone(),
                            port: runner.port,
                        });
                    }
                    // What the tunnel said (ssh does not pass it on when it logs to a file).
                    if let Ok(said) = std::fs::read_to_string(&proxy_error) {
                        let said = said.trim();
                        if let Some(detail) = said.strip_prefix(crate::proxy::tunnel::REFUSED) {
                            return Err(TransportError::Proxy {
                                host: runner.host.clone(),
                                port: runner.port,
                                detail: detail.trim().to_owned(),
                            });
                        }
                        if let Some(detail) = said.strip_prefix(crate::proxy::tunnel::UNREACHABLE) {
                            last = detail.trim().to_owned();
                        }
                    }
                }
            }
            if attempt % 5 == 0 {
                progress(format!(
                    "waiting for SSH on {}:{} ({attempt}/{} attempts, {:.0} s): {last}",
                    runner.host,
                    runner.port,
                    policy.attempts,
                    started.elapsed().as_secs_f64()
                ));
            }
            if attempt < policy.attempts {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(policy.max_delay);
            }
        }
        Err(TransportError::Unreachable {
            host: runner.host.clone(),
            port: runner.port,
            attempts: policy.attempts,
            seconds: started.elapsed().as_secs(),
            last,
        })
    }

    fn session(&self) -> &Session {
        self.session
            .as_ref()
            .expect("session is open until close()")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.session().control_socket().to_owned()
    }

    /// Run `script` with bash on the runner, streaming each output line to `sink`.
    ///
    /// Returns how it ended and the last lines of its output (for failure classification).
    pub async fn run(
        &self,
        script: &str,
        stdin: Option<&[u8]>,
        sink: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(RemoteExit, Vec<String>), TransportError> {
        // bash stays the parent (the trailing `exit` prevents exec), so a child killed by a
        // signal is reported as 128+N instead of the remote process itself vanishing.
        let wrapped = format!("{script}\nrc=$?; exit $rc");
        let mut cmd = self.session().command("bash");
        cmd.arg("-c")
            .arg(&wrapped)
            .stdin(if stdin.is_some() {
                openssh::Stdio::piped()
            } else {
                openssh::Stdio::null()
            })
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        let mut child = cmd.spawn().await.map_err(|e| TransportError::Command {
            purpose: "start a command on the runner".into(),
            detail: one_line(&e),
        })?;
        if let (Some(data), Some(mut input)) = (stdin, child.stdin().take()) {
            input
                .write_all(data)
                .await
                .map_err(|e| TransportError::Command {
                    purpose: "send data to the runner".into(),
                    detail: e.to_string(),
                })?;
            input.shutdown().await.ok();
            drop(input);
        }
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let out = child.stdout().take();
        let err = child.stderr().take();
        tokio::join!(pump(out, &tail, sink), pump(err, &tail, sink));
        let status = child.wait().await;
        let exit = match status {
            Ok(status) => match status.code() {
                Some(code) => RemoteExit::Code(code),
                None => RemoteExit::Killed,
            },
            Err(openssh::Error::RemoteProcessTerminated) => match self.session().check().await {
                Ok(()) => RemoteExit::Killed,
                Err(e) => RemoteExit::Lost(one_line(&e)),
            },
            Err(e) => match self.session().check().await {
                // openssh maps a remote exit 127 to an error of its own.
                Ok(()) if one_line(&e).contains("not found") => RemoteExit::Code(127),
                Ok(()) => RemoteExit::Lost(one_line(&e)),
                Err(check) => RemoteExit::Lost(one_line(&check)),
            },
        };
        let tail = tail.lock().expect("tail lock").drain(..).collect();
        Ok((exit, tail))
    }

    /// Run a short command that must succeed; its output is returned, not streamed.
    pub async fn run_checked(
        &self,
        purpose: &str,
        script: &str,
        stdin: Option<&[u8]>,
    ) -> Result<String, TransportError> {
        let collected = Mutex::new(Vec::new());
        let sink = |line: &str| collected.lock().expect("lock").push(line.to_owned());
        let (exit, _) = self.run(script, stdin, &sink).await?;
        let output = collected.into_inner().expect("lock").join("\n");
        match exit {
            RemoteExit::Code(0) => Ok(output),
            other => Err(TransportError::Command {
                purpose: purpose.to_owned(),
                detail: format!(
                    "{}: {}",
                    describe(&other),
                    output.lines().last().unwrap_or("no output")
                ),
            }),
        }
    }

    /// Write `contents` to `path` on the runner, mode 0600, through stdin (never an argument).
    pub async fn put_private_file(
        &self,
        path: &str,
        contents: &[u8],
    ) -> Result<(), TransportError> {
        let dir = Path::new(path)
            .parent()
            .map_or_else(|| ".".to_owned(), |d| d.display().to_string());
        let script = format!(
            "umask 077 && mkdir -p {} && cat > {}",
            shell_quote(&dir),
            shell_quote(path)
        );
        self.run_checked(
            &format!("write {path} on the runner"),
            &script,
            Some(contents),
        )
        .await
        .map(|_| ())
    }

    /// Copy `entries` (relative to `context`) to `remote_dir` with rsync over this connection.
    pub async fn sync(
        &self,
        context: &Path,
        entries: &[PathBuf],
        remote_dir: &str,
    ) -> Result<SyncStats, TransportError> {
        self.run_checked(
            "create the context directory on the runner",
            &format!("mkdir -p {}", shell_quote(remote_dir)),
            None,
        )
        .await?;
        let ssh = format!(
            "ssh -F {} -S {} -o ControlMaster=no",
            self.dir.path().join("config").display(),
            self.control_socket().display()
        );
        // rsync skips a `--files-from` entry that starts with `#` or `;` as a comment, with
        // `--from0` too (rsync(1), --files-from; tested in tests/e2e_build.rs): every entry
        // starts with `./`, which names the same file and never reads as a comment.
        let mut list = Vec::new();
        for entry in entries {
            list.extend_from_slice(b"./");
            list.extend_from_slice(entry.as_os_str().as_encoded_bytes());
            list.push(0);
        }
        let guarded = super::context_guard::directories(entries);
        let changed = |detail: String| TransportError::Command {
            purpose: "send the build context".into(),
            detail,
        };
        super::context_guard::check(context, &guarded).map_err(changed)?;
        let mut child = tokio::process::Command::new("rsync")
            .env_clear()
            .envs(crate::environment::for_child())
            .arg("--archive")
            .arg("--from0")
            .arg("--files-from=-")
            .arg("--numeric-ids")
            // Device nodes and FIFOs in a repository are never recreated on the runner.
            .arg("--no-devices")
            .arg("--no-specials")
            .arg("--stats")
            .arg("-e")
            .arg(&ssh)
            .arg(format!("{}/", context.display()))
            // An IPv6 literal (an IPv6-only runner) is bracketed, or rsync would cut the host
            // at its first colon.
            .arg(format!("root@{}:{}/", bracketed(&self.host), remote_dir))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| TransportError::Command {
                purpose: "start rsync to send the build context".into(),
                detail: e.to_string(),
            })?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let writer = async move {
            let _ = stdin.write_all(&list).await;
            let _ = stdin.shutdown().await;
        };
        let (_, output) = tokio::join!(writer, child.wait_with_output());
        let output = output.map_err(|e| TransportError::Command {
            purpose: "send the build context with rsync".into(),
            detail: e.to_string(),
        })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(TransportError::Command {
                purpose: "send the build context with rsync".into(),
                detail: format!(
                    "{}: {}",
                    output.status,
                    stderr
                        .lines()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("no output")
                ),
            });
        }
        super::context_guard::check(context, &guarded).map_err(changed)?;
        Ok(SyncStats::parse(
            &String::from_utf8_lossy(&output.stdout),
            entries.len(),
        ))
    }

    /// Close the master connection (ControlPersist would otherwise keep it forever).
    pub async fn close(mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.close().await;
        }
    }

    pub fn address(&self) -> String {
        format!("{}:{}", bracketed(&self.host), self.port)
    }
}

impl Drop for Connection {
    /// Reached without `close()` when an attempt is cancelled or panics: stop the master
    /// connection now (a few milliseconds), so it neither outlives the build nor keeps writing
    /// into the directory that holds the client key while that is being removed.
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = std::process::Command::new("ssh")
                .env_clear()
                .envs(crate::environment::for_child())
                .arg("-F")
                .arg(self.dir.path().join("config"))
                .arg("-S")
                .arg(session.control_socket())
                .args(["-O", "exit", "bkl-runner"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            drop(session);
        }
    }
}

const KEY_DIR_PREFIX: &str = "bkl-ssh-";
/// Where key directories live. Control sockets must fit in 108 bytes: keep the directory short
/// ($TMPDIR when it is short, else /tmp); it is private (it holds the build's client key).
fn key_dir_base() -> PathBuf {
    std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .filter(|t| t.is_absolute() && t.as_os_str().len() <= 48)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// Remove the key directories of launchers that were killed (SIGKILL leaves them behind): those
/// older than ten seconds whose lock nobody holds, and those that never got a lock and are older
/// than a minute.
/// Returns how many were removed.
pub fn remove_stale_key_dirs() -> usize {
    let Ok(listing) = std::fs::read_dir(key_dir_base()) else {
        return 0;
    };
    let mut removed = 0;
    for entry in listing.flatten() {
        let name = entry.file_name();
        let is_ours = name.to_str().is_some_and(|n| n.starts_with(KEY_DIR_PREFIX));
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !is_ours || !meta.is_dir() {
            continue;
        }
        // A directory being set up this instant has no lock yet: leave young ones alone.
        let age = meta.modified().ok().and_then(|m| m.elapsed().ok());
        if age.is_none_or(|age| age < Duration::from_secs(10)) {
            continue;
        }
        let stale = match std::fs::File::open(entry.path().join("lock")) {
            Ok(file) => {
                nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
            }
            Err(_) => age.is_some_and(|age| age > Duration::from_secs(60)),
        };
        if stale && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// What a context sync moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct SyncStats {
    pub entries: usize,
    pub bytes: u64,
}

impl SyncStats {
    fn parse(stats: &str, entries: usize) -> SyncStats {
        let bytes = stats
            .lines()
            .find_map(|l| l.strip_prefix("Total file size: "))
            .and_then(|rest| rest.split_whitespace().next())
            .map(|n| n.replace(',', ""))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        SyncStats { entries, bytes }
    }
}

const TAIL_LINES: usize = 200;

async fn pump(
    stream: Option<impl AsyncRead + Unpin>,
    tail: &Mutex<VecDeque<String>>,
    sink: &(dyn Fn(&str) + Send + Sync),
) {
    let Some(stream) = stream else { return };
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        sink(&line);
        let mut tail = tail.lock().expect("tail lock");
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

pub fn describe(exit: &RemoteExit) -> String {
    match exit {
        RemoteExit::Code(code) => format!("exit status {code}"),
        RemoteExit::Killed => "killed by a signal".into(),
        RemoteExit::Lost(why) => format!("connection lost ({why})"),
    }
}

/// The error and its sources on one line: openssh puts ssh's own stderr in the source chain.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts
        .join(": ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsync_stats_parse() {
        let s = SyncStats::parse("Number of files: 3\nTotal file size: 1,234,567 bytes\n", 3);
        assert_eq!(s.bytes, 1_234_567);
    }
}
