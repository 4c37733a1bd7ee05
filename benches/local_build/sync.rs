//! Part 2: context sync throughput of the launcher against plain `tar | ssh` on one runner.

use super::*;

// ---------------------------------------------------------------------------------------------
// Part 2: context sync throughput.

/// Destroys the sandbox runner when dropped, whatever happened.
pub(crate) struct RunnerGuard<'a> {
    pub(crate) provider: &'a LocalProvider,
    pub(crate) id: String,
}

impl Drop for RunnerGuard<'_> {
    fn drop(&mut self) {
        match self.provider.teardown(&self.id) {
            Ok(()) => progress(&format!("runner {} destroyed", self.id)),
            Err(e) => progress(&format!("warning: {e}")),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Method {
    /// `context_entries` + `Connection::sync`.
    Launcher,
    /// `tar -cf - | ssh 'tar -xf -'` through the master connection.
    Tar,
    /// The same tar, fed the launcher's entry list (`context_entries`, timed as the launcher's).
    TarList,
    /// rsync as `Connection::sync` runs it, with extra flags (index into RSYNC_VARIANTS).
    Rsync(usize),
    /// Reference: `tar -cf - | tar -xf -` into the target, the writes without SSH.
    LocalTar,
    /// Reference: `tar -cf - | ssh 'cat > /dev/null'`, the SSH channel without the writes.
    SshOnly,
}

impl Method {
    pub(crate) fn slug(self) -> String {
        match self {
            Method::Launcher => "launcher".into(),
            Method::Tar => "tar".into(),
            Method::TarList => "tarlist".into(),
            Method::Rsync(i) => format!("rsync{i}"),
            Method::LocalTar => "localtar".into(),
            Method::SshOnly => "sshonly".into(),
        }
    }

    pub(crate) fn label(self) -> String {
        match self {
            Method::Launcher => "launcher (context_entries + Connection::sync)".into(),
            Method::Tar => "tar | ssh".into(),
            Method::TarList => "context_entries + tar -T - | ssh".into(),
            Method::Rsync(0) => "rsync, the launcher's flags".into(),
            Method::Rsync(i) => format!("rsync + {}", RSYNC_VARIANTS[i].join(" ")),
            Method::LocalTar => "reference: tar | tar, no ssh".into(),
            Method::SshOnly => "reference: tar | ssh cat > /dev/null".into(),
        }
    }
}

/// Where the transfers go, and the seconds each method took there, one per round.
pub(crate) struct Target {
    pub(crate) name: String,
    /// For progress lines.
    pub(crate) short: &'static str,
    pub(crate) dir: String,
    pub(crate) methods: Vec<Method>,
    /// Per method (same order): seconds per round; `None` once this rsync rejected the flags.
    pub(crate) seconds: Vec<Option<Vec<f64>>>,
    /// `context_entries`, per launcher round.
    pub(crate) listing: Vec<f64>,
}

impl Target {
    pub(crate) fn new(
        name: String,
        short: &'static str,
        dir: String,
        with_ssh_only: bool,
    ) -> Target {
        let mut methods = vec![Method::Launcher, Method::Tar];
        methods.extend((0..RSYNC_VARIANTS.len()).map(Method::Rsync));
        methods.push(Method::TarList);
        methods.push(Method::LocalTar);
        if with_ssh_only {
            methods.push(Method::SshOnly);
        }
        Target {
            name,
            short,
            dir,
            seconds: vec![Some(Vec::new()); methods.len()],
            methods,
            listing: Vec::new(),
        }
    }

    pub(crate) fn of(&self, method: Method) -> Option<&[f64]> {
        let i = self.methods.iter().position(|m| *m == method)?;
        self.seconds[i].as_deref().filter(|s| !s.is_empty())
    }
}

pub(crate) struct SyncResults {
    pub(crate) targets: Vec<Target>,
    pub(crate) ssh_via: &'static str,
    pub(crate) rounds: usize,
}

pub(crate) async fn sync_runs() -> Result<SyncResults> {
    progress("part 2: context sync throughput, launcher vs tar|ssh");
    let context_dir = tempfile::Builder::new()
        .prefix("bkl-bench-context-")
        .tempdir_in("/var/tmp")
        .context("create the context directory")?;
    let context = context_dir.path().join("context");
    let started = Instant::now();
    generate_context(&context)?;
    // Written back now, so that no transfer pays for the generator's dirty pages.
    std::process::Command::new("sync").status()?;
    progress(&format!(
        "context generated: {CONTEXT_FILES} files, {CONTEXT_BYTES} bytes in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    check_stop()?;
    // A second target on tmpfs takes the disk out: what is left is SSH and the copying tool.
    let shm = tempfile::Builder::new()
        .prefix("bkl-bench-")
        .tempdir_in("/dev/shm")
        .context("create a directory in /dev/shm")?;

    let base = tempfile::Builder::new()
        .prefix("bkl-bench-runner-")
        .tempdir_in("/var/tmp")
        .context("create the runners directory")?;
    // Memory scale 1: the runner's cgroup is the whole tier (4 GiB), so the 200 MB written
    // into its page cache (or tmpfs) is not squeezed by the limit test builds get (÷ 16).
    let provider = LocalProvider::new(base.path().to_owned(), 1, Vec::new());
    let lease = Lease::new(3600);
    let keys = BuildKeys::generate(&lease.id)?;
    let tier = Tier {
        name: "bench".into(),
        vcpus: 2,
        memory_mib: 4096,
        disk_gb: 40,
        price_eur_per_hour: None,
    };
    let spec = RunnerSpec {
        name: format!("bkl-bench-{}", lease.id),
        labels: labels(&lease, "bench/local-build", &tier.name),
        lease,
        tier,
        arch: Arch::Amd64,
        user_data: UserData::for_build(&keys).render(),
    };
    let id = provider.create(&spec).await?;
    let _guard = RunnerGuard {
        provider: &provider,
        id: id.clone(),
    };
    let runner = provider.wait_ready(&id).await?;
    let mut log = |line: String| progress(&line);
    let conn = Connection::connect(
        &runner,
        &keys.client.private_openssh,
        &keys.host.public_openssh,
        ConnectPolicy::default(),
        &mut log,
    )
    .await?;
    progress(&format!("runner {id} up at {}", conn.address()));
    let mut targets = vec![
        Target::new(
            format!("the runner's work directory ({})", fs_type(&runner.workdir)),
            "disk",
            runner.workdir.clone(),
            true,
        ),
        Target::new(
            format!("{} (/dev/shm)", fs_type("/dev/shm")),
            "shm",
            shm.path().display().to_string(),
            false,
        ),
    ];
    let result = measure(&conn, &runner.host, &context, &mut targets).await;
    conn.close().await;
    let ssh_via = result?;
    Ok(SyncResults {
        targets,
        ssh_via,
        rounds: rounds(),
    })
    // The runner is destroyed (guard), then its base, /dev/shm's directory and the context
    // are removed.
}

/// The file system type of `path`: that of the longest mount point above it.
pub(crate) fn fs_type(path: &str) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .enumerate()
        .filter_map(|(n, l)| {
            let mut fields = l.split(' ');
            let point = fields.nth(1)?.replace("\\040", " ");
            let kind = fields.next()?;
            // The longest mount point wins; at the same point, the later mount.
            path.starts_with(&point)
                .then(|| ((point.len(), n), kind.to_owned()))
        })
        .max_by_key(|(rank, _)| *rank)
        .map_or_else(|| "unknown file system".into(), |(_, kind)| kind)
}

/// Transfers per method and target: ROUNDS, or LOCAL_BUILD_ROUNDS to look closer.
pub(crate) fn rounds() -> usize {
    std::env::var("LOCAL_BUILD_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(ROUNDS)
}

/// A 64-bit generator (SplitMix64): deterministic, fast, and its output does not compress.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// CONTEXT_FILES files of 10–190 kB (pairs averaging 100 kB: CONTEXT_BYTES in all) in 30
/// directories two levels deep.
pub(crate) fn generate_context(root: &Path) -> Result<()> {
    let mean = usize::try_from(CONTEXT_BYTES)? / CONTEXT_FILES;
    let mut rng = SplitMix64(0x6c6f_6361_6c5f_6275); // "local_bu"
    let mut buf = vec![0u8; 2 * mean];
    let mut offset = 0;
    let mut total = 0u64;
    for i in 0..CONTEXT_FILES {
        let dir = root
            .join(format!("d{:02}", i % 10))
            .join(format!("s{}", (i / 10) % 3));
        fs::create_dir_all(&dir)?;
        let size = if i % 2 == 0 {
            offset = usize::try_from(rng.next() % 90_001)?;
            mean + offset
        } else {
            mean - offset
        };
        rng.fill(&mut buf[..size]);
        fs::write(dir.join(format!("f{i:04}.bin")), &buf[..size])?;
        total += size as u64;
    }
    ensure!(total == CONTEXT_BYTES, "generated {total} bytes");
    Ok(())
}

/// The ssh command rsync and tar use: the launcher's own config file when it can be found
/// beside the control socket, else options that make a fallback to a new connection fail.
pub(crate) fn ssh_command(socket: &Path) -> (String, &'static str) {
    let config = socket
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("config"))
        .find(|p| fs::read_to_string(p).is_ok_and(|t| t.contains("IdentitiesOnly yes")));
    let socket = shell_quote(&socket.display().to_string());
    match config {
        Some(config) => (
            format!(
                "ssh -F {} -S {socket} -o ControlMaster=no",
                shell_quote(&config.display().to_string())
            ),
            "the connection's own ssh config (-F), as `Connection::sync` does",
        ),
        None => (
            format!(
                "ssh -F /dev/null -S {socket} -o ControlMaster=no -o BatchMode=yes \
                 -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/dev/null"
            ),
            "-F /dev/null and explicit options (the connection's config was not found)",
        ),
    }
}

pub(crate) fn sync_tables(r: &SyncResults) -> String {
    let mut out = format!(
        "Context sync: 200 MB in {CONTEXT_FILES} files (incompressible) to one sandbox runner, \
         each transfer into a fresh directory, tar and rsync through the launcher's SSH master \
         connection ({}); medians of {} (MB = 10^6 bytes). The launcher's time includes \
         listing the context (`context_entries`).\n",
        r.ssh_via, r.rounds
    );
    let mut measures = Vec::new();
    for target in &r.targets {
        let tar = target
            .of(Method::Tar)
            .map_or(f64::NAN, |v| median(v.iter().copied()));
        let _ = write!(
            out,
            "\nInto {}:\n\n\
             | method | median time | MB/s | MB/s, slowest – fastest | ÷ tar\\|ssh |\n\
             |---|---|---|---|---|\n",
            target.name
        );
        for (i, method) in target.methods.iter().enumerate() {
            let name = match method {
                Method::Launcher => {
                    "launcher: `context_entries` + `Connection::sync` (rsync)".to_owned()
                }
                Method::Tar => "`tar -cf - . \\| ssh … 'tar -xf -'`".to_owned(),
                Method::TarList => {
                    "`context_entries` + `tar --null --no-recursion -T - -cf - \\| ssh …` (the launcher's list, sent by tar)".to_owned()
                }
                Method::Rsync(0) => {
                    "rsync, the launcher's flags (the same command, run by the bench)".to_owned()
                }
                Method::Rsync(v) => format!("rsync + `{}`", RSYNC_VARIANTS[*v].join(" ")),
                Method::LocalTar => "reference: `tar \\| tar`, no SSH (the writes)".to_owned(),
                Method::SshOnly => {
                    "reference: `tar \\| ssh 'cat > /dev/null'` (the SSH channel)".to_owned()
                }
            };
            let _ = match target.seconds[i].as_deref().filter(|v| !v.is_empty()) {
                Some(v) => {
                    let s = median(v.iter().copied());
                    let (fast, slow) = min_max(v);
                    writeln!(
                        out,
                        "| {name} | {s:.2} s | {:.0} | {:.0} – {:.0} | {:.2} |",
                        mb_per_s(s),
                        mb_per_s(slow),
                        mb_per_s(fast),
                        tar / s
                    )
                }
                None => writeln!(out, "| {name} | rejected by this rsync | — | — | — |"),
            };
        }
        let launcher = target
            .of(Method::Launcher)
            .map_or(f64::NAN, |v| median(v.iter().copied()));
        let _ = writeln!(
            out,
            "\nListing ({CONTEXT_FILES} files): {:.1} ms (median).",
            1e3 * median(target.listing.iter().copied())
        );
        measures.push((&target.name, tar / launcher));
    }
    out.push_str("\n| measure | result | target | result ÷ target |\n|---|---|---|---|\n");
    for (name, ratio) in measures {
        let _ = writeln!(
            out,
            "| launcher sync throughput ÷ tar\\|ssh throughput, into {name} | {ratio:.2} | ≥ {SYNC_TARGET} | {:.2} |",
            ratio / SYNC_TARGET
        );
    }
    out
}
