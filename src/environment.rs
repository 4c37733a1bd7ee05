//! The process environment, read once and then emptied of everything a child need not see.
//!
//! The launcher's environment holds the Hetzner token, the registry password and build secrets
//! (`--secret id=..,env=VAR`). Every program it starts — the ssh master connection (which the
//! openssh crate spawns with the inherited environment), rsync, the local provider's sshd,
//! scripts — would inherit them and show them in `/proc/PID/environ`. So `main` takes a
//! [`snapshot`] before anything else runs, parses the command line (clap reads its `env`
//! defaults then), and calls [`scrub`] while the process is still single-threaded: from then on
//! the process environment holds only [`KEPT`] (no secret among them), and the code reads
//! variables through [`var`].
//! Children spawned by the launcher itself also get [`for_child`], explicitly.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use zeroize::Zeroizing;

/// What a child process the launcher starts itself gets: nothing secret, nothing from the
/// pipeline.
pub const FOR_CHILDREN: &[&str] = &[
    "PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME", "TERM",
];

/// What stays in the launcher's own environment after [`scrub`]: [`FOR_CHILDREN`], plus what its
/// own HTTP clients read when they are built (an operator's proxy and CA bundle) and
/// `RUST_BACKTRACE`. The ssh master, which the openssh crate spawns with the inherited
/// environment, sees these too; none is a secret of the launcher's.
pub const KEPT: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "TERM",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "RUST_BACKTRACE",
];

static SNAPSHOT: OnceLock<BTreeMap<String, Zeroizing<String>>> = OnceLock::new();

/// Read the whole environment into memory (values that are not UTF-8 are skipped).
pub fn snapshot() {
    snapshot_with(Vec::new());
}

/// The same, with `extra` variables that exist only in the launcher's memory (the values of a
/// plugin's `build_secrets`, which [`var`] finds like any other).
pub fn snapshot_with(extra: Vec<(String, Zeroizing<String>)>) {
    let mut vars: BTreeMap<String, Zeroizing<String>> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, Zeroizing::new(v.into_string().ok()?))))
        .collect();
    vars.extend(extra);
    let _ = SNAPSHOT.set(vars);
}

/// Remove every variable but [`KEPT`] from the process environment.
///
/// # Safety
///
/// Must be called while the process has a single thread (before any runtime or helper thread
/// starts), as `std::env::remove_var` requires.
pub unsafe fn scrub() {
    let names: Vec<_> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| !k.to_str().is_some_and(|k| KEPT.contains(&k)))
        .collect();
    for name in names {
        // SAFETY: the caller guarantees that no other thread reads or writes the environment.
        unsafe { std::env::remove_var(name) };
    }
}

/// A variable as the launcher was started with it (before [`scrub`]); without a snapshot
/// (library use, unit tests) the live environment.
pub fn var(name: &str) -> Option<String> {
    match SNAPSHOT.get() {
        Some(snapshot) => snapshot.get(name).map(|v| v.to_string()),
        None => std::env::var(name).ok(),
    }
}

/// The variables whose names start with one of `prefixes`.
pub fn with_prefixes(prefixes: &[&str]) -> BTreeMap<String, String> {
    match SNAPSHOT.get() {
        Some(snapshot) => snapshot
            .iter()
            .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        None => std::env::vars()
            .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p)))
            .collect(),
    }
}

/// The explicit environment of a child the launcher starts: [`FOR_CHILDREN`] as it is now.
pub fn for_child() -> Vec<(String, String)> {
    FOR_CHILDREN
        .iter()
        .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
        .collect()
}

/// `PR_SET_DUMPABLE` 0 for this process: other processes of the same user can no longer read
/// its memory or its `/proc/PID/environ` (where the initial environment, secrets included,
/// stays readable after [`scrub`]) unless they hold `CAP_SYS_PTRACE`, which a Woodpecker step's
/// container does not. A rsync that a swapped workspace symlink pointed at
/// `/proc/<launcher>/environ` reads nothing. Core dumps are off with it.
pub fn forbid_inspection() {
    // SAFETY: prctl with these arguments only changes this process's dumpable flag.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_environment_holds_only_kept_names() {
        for (k, _) in for_child() {
            assert!(FOR_CHILDREN.contains(&k.as_str()), "{k}");
        }
        assert!(FOR_CHILDREN.iter().all(|k| KEPT.contains(k)));
    }
}
