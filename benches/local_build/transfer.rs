//! Timing one transfer method into one target directory over the runner's SSH master.

use super::*;

/// Runs every method of every target, round after round; returns how ssh was invoked.
pub(crate) async fn measure(
    conn: &Connection,
    host: &str,
    context: &Path,
    targets: &mut [Target],
) -> Result<&'static str> {
    let socket = conn.control_socket();
    let (ssh, ssh_via) = ssh_command(&socket);
    progress(&format!("ssh for tar and rsync: {ssh}"));
    let check = Command::new("ssh")
        .arg("-S")
        .arg(&socket)
        .args(["-O", "check", &format!("root@{host}")])
        .output()
        .await?;
    ensure!(
        check.status.success(),
        "the master connection does not answer on {}: {}",
        socket.display(),
        last_line(&check.stderr)
    );
    let x = Transfer {
        conn,
        host,
        ssh: &ssh,
        context,
    };
    // One unmeasured transfer each of the launcher's way and tar's per target: programs
    // loaded, the context in the page cache, and the whole path checked before any timing.
    for target in targets.iter() {
        for method in [Method::Launcher, Method::Tar] {
            let dir = format!("{}/bench-warmup-{}", target.dir, method.slug());
            x.run(method, &dir).await?;
            verify(conn, &dir).await?;
            clean(conn, &dir).await?;
        }
    }
    let rounds = rounds();
    for round in 0..rounds {
        for target in targets.iter_mut() {
            let n = target.methods.len();
            for k in 0..n {
                check_stop()?;
                // Each round starts with another method: none always runs right after another.
                let i = (k + round) % n;
                let method = target.methods[i];
                if target.seconds[i].is_none() {
                    continue;
                }
                let dir = format!("{}/bench-{}-{round}", target.dir, method.slug());
                match x.run(method, &dir).await {
                    Ok(t) => {
                        if method != Method::SshOnly {
                            verify(conn, &dir).await?;
                        }
                        progress(&format!(
                            "round {}/{rounds} {:<5} {:<48} {:6.2} s {:6.0} MB/s",
                            round + 1,
                            target.short,
                            method.label(),
                            t.listing + t.seconds,
                            mb_per_s(t.listing + t.seconds)
                        ));
                        if method == Method::Launcher {
                            target.listing.push(t.listing);
                        }
                        if let Some(v) = target.seconds[i].as_mut() {
                            v.push(t.listing + t.seconds);
                        }
                    }
                    // A flag set this rsync does not know is a finding, not a failure.
                    Err(e)
                        if matches!(method, Method::Rsync(v) if v > 0)
                            && !STOP.load(Ordering::SeqCst) =>
                    {
                        progress(&format!("{}: not measured: {e:#}", method.label()));
                        target.seconds[i] = None;
                    }
                    Err(e) => return Err(e),
                }
                clean(conn, &dir).await?;
            }
        }
    }
    Ok(ssh_via)
}

pub(crate) struct Timing {
    /// `context_entries` (the launcher's way only).
    pub(crate) listing: f64,
    /// The transfer itself.
    pub(crate) seconds: f64,
}

/// What every transfer needs.
pub(crate) struct Transfer<'a> {
    pub(crate) conn: &'a Connection,
    pub(crate) host: &'a str,
    pub(crate) ssh: &'a str,
    pub(crate) context: &'a Path,
}

impl Transfer<'_> {
    pub(crate) async fn run(&self, method: Method, dir: &str) -> Result<Timing> {
        let q = |s: &str| shell_quote(s);
        let context = self.context;
        match method {
            Method::Launcher => {
                let started = Instant::now();
                let entries = context_entries(context, "Dockerfile")?;
                let listing = started.elapsed().as_secs_f64();
                let started = Instant::now();
                let stats = self.conn.sync(context, &entries, dir).await?;
                let seconds = started.elapsed().as_secs_f64();
                ensure!(
                    stats.bytes == CONTEXT_BYTES,
                    "rsync reported {} bytes",
                    stats.bytes
                );
                Ok(Timing { listing, seconds })
            }
            Method::Tar | Method::TarList | Method::LocalTar | Method::SshOnly => {
                let started = Instant::now();
                let (sender, list, listing) = if method == Method::TarList {
                    let entries = context_entries(context, "Dockerfile")?;
                    let mut list = Vec::new();
                    for entry in &entries {
                        list.extend_from_slice(entry.as_os_str().as_encoded_bytes());
                        list.push(0);
                    }
                    let listing = started.elapsed().as_secs_f64();
                    // Directories are listed themselves: no recursion, as with rsync.
                    ("--null --no-recursion -T - -cf -", Some(list), listing)
                } else {
                    ("-cf - .", None, 0.0)
                };
                let remote = match method {
                    Method::SshOnly => "cat > /dev/null".to_owned(),
                    _ => format!("mkdir -p {0} && tar -C {0} -xf -", q(dir)),
                };
                let receiver = match method {
                    // The runner's directories are on this machine: the same writes, no SSH.
                    Method::LocalTar => format!("bash -c {}", q(&remote)),
                    _ => format!(
                        "{} {} {}",
                        self.ssh,
                        q(&format!("root@{}", self.host)),
                        q(&remote)
                    ),
                };
                let pipeline = format!(
                    "set -o pipefail; tar -C {} {sender} | {receiver}",
                    q(&context.display().to_string()),
                );
                let started = Instant::now();
                let mut child = Command::new("bash")
                    .arg("-c")
                    .arg(&pipeline)
                    .stdin(if list.is_some() {
                        Stdio::piped()
                    } else {
                        Stdio::null()
                    })
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .context("start the tar pipeline")?;
                let stdin = child.stdin.take();
                let writer = async move {
                    if let (Some(mut stdin), Some(list)) = (stdin, list) {
                        let _ = stdin.write_all(&list).await;
                        let _ = stdin.shutdown().await;
                    }
                };
                let (_, out) = tokio::join!(writer, child.wait_with_output());
                let out = out?;
                let seconds = started.elapsed().as_secs_f64();
                ensure!(
                    out.status.success(),
                    "{}: {}: {}",
                    method.label(),
                    out.status,
                    last_line(&out.stderr)
                );
                Ok(Timing { listing, seconds })
            }
            Method::Rsync(i) => {
                // As `Connection::sync` does it: the directory made over the connection first,
                // then rsync with the list on stdin (the list itself is made untimed here).
                let entries = context_entries(context, "Dockerfile")?;
                let mut list = Vec::new();
                for entry in &entries {
                    list.extend_from_slice(entry.as_os_str().as_encoded_bytes());
                    list.push(0);
                }
                let started = Instant::now();
                self.conn
                    .run_checked(
                        "create the target directory",
                        &format!("mkdir -p {}", q(dir)),
                        None,
                    )
                    .await?;
                let mut child = Command::new("rsync")
                    .args([
                        "--archive",
                        "--from0",
                        "--files-from=-",
                        "--numeric-ids",
                        "--stats",
                    ])
                    .args(RSYNC_VARIANTS[i])
                    .arg("-e")
                    .arg(self.ssh)
                    .arg(format!("{}/", context.display()))
                    .arg(format!("root@{}:{dir}/", self.host))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .context("start rsync")?;
                let mut stdin = child.stdin.take().context("rsync stdin")?;
                let writer = async move {
                    let _ = stdin.write_all(&list).await;
                    let _ = stdin.shutdown().await;
                };
                let (_, out) = tokio::join!(writer, child.wait_with_output());
                let out = out?;
                let seconds = started.elapsed().as_secs_f64();
                ensure!(
                    out.status.success(),
                    "rsync: {}: {}",
                    out.status,
                    last_line(&out.stderr)
                );
                Ok(Timing {
                    listing: 0.0,
                    seconds,
                })
            }
        }
    }
}

/// Every file arrived, whole: the count and the sum of the sizes on the runner.
pub(crate) async fn verify(conn: &Connection, dir: &str) -> Result<()> {
    let sizes = conn
        .run_checked(
            "list the transferred files",
            &format!("find {} -type f -printf '%s\\n'", shell_quote(dir)),
            None,
        )
        .await?;
    let sizes: Vec<u64> = sizes
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let total: u64 = sizes.iter().sum();
    ensure!(
        sizes.len() == CONTEXT_FILES && total == CONTEXT_BYTES,
        "{dir} holds {} files, {total} bytes; expected {CONTEXT_FILES}, {CONTEXT_BYTES}",
        sizes.len()
    );
    Ok(())
}

/// Remove a target directory and write back what is dirty, so the next transfer starts even.
pub(crate) async fn clean(conn: &Connection, dir: &str) -> Result<()> {
    conn.run_checked(
        "remove the target directory",
        &format!("rm -rf {} && sync", shell_quote(dir)),
        None,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}
