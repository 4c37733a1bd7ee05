//! Evaluating an untrusted Nickel file in a child process that cannot hurt the launcher.
//!
//! The launcher holds the cloud token, the registry password and build secrets; a
//! `.build-spec.ncl` comes from whoever opened the pull request. So the file is evaluated by a
//! child process of the same binary (the hidden `__eval-ncl` subcommand), and the child:
//!
//! - starts with an **empty environment** (there is nothing to print, `/proc/self/environ`
//!   included);
//! - confines itself with **Landlock** before it reads anything: reads only beneath the
//!   repository root, no writes or executions anywhere, no TCP, no signals or abstract sockets
//!   outside itself. Where the kernel or a container's seccomp profile does not offer Landlock,
//!   the child says so and the parent prints one warning line; the other layers stay;
//! - limits itself with **rlimits**: address space ([`MEMORY_BYTES`]), CPU seconds, no file
//!   writes, few descriptors, no core dumps; it dies with the parent (`PR_SET_PDEATHSIG`) and
//!   cannot be ptraced by other processes of the user (`PR_SET_DUMPABLE` 0);
//! - checks every file against the import pre-pass and the input caps ([`super::imports`]);
//! - evaluates on a thread with a bounded stack, and answers with one JSON line on stdout.
//!
//! The parent enforces the **wall-clock** limit (spawn, parsing and evaluation together) and
//! turns every way the child can end (answer, error, timeout, memory cap, crash) into one line.
//! It never shows the child's stderr: only the child's own error text, which is rendered from
//! files inside the repository.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Contract, NclError};

/// The hidden subcommand the child runs.
pub const SUBCOMMAND: &str = "__eval-ncl";

/// Address space of the child: Nickel's evaluation of a real spec needs a few MiB.
pub const MEMORY_BYTES: u64 = 512 * 1024 * 1024;
/// Stack of the evaluation thread (it counts toward [`MEMORY_BYTES`]).
const EVAL_STACK_BYTES: usize = 64 * 1024 * 1024;
/// Most of the child's answer that is read.
const MAX_ANSWER_BYTES: u64 = 4 * 1024 * 1024;

static EXECUTABLE: OnceLock<PathBuf> = OnceLock::new();

/// Evaluate untrusted files in a child of `executable` from now on (the launcher's `main` calls
/// this with its own binary). Without it, evaluation runs in-process with the import pre-pass
/// only: that is what the library's unit tests use.
pub fn enable(executable: PathBuf) {
    let _ = EXECUTABLE.set(executable);
}

pub(super) fn enabled() -> Option<&'static Path> {
    EXECUTABLE.get().map(PathBuf::as_path)
}

/// What the child answers.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Empty when Landlock is enforced; otherwise why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unconfined: Option<String>,
}

/// Parent side: evaluate `path` (imports confined to `root`) against `contract` in a child.
pub(super) fn evaluate(
    executable: &Path,
    path: &Path,
    root: &Path,
    contract: Contract,
    timeout: Duration,
) -> Result<serde_json::Value, NclError> {
    let cpu_seconds = timeout.as_secs().max(1) + 1;
    let mut child = Command::new(executable)
        .arg(SUBCOMMAND)
        .arg(contract.name)
        .arg(root)
        .arg(path)
        .arg(cpu_seconds.to_string())
        .env_clear()
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NclError::Read {
            path: path.to_owned(),
            source: std::io::Error::other(format!(
                "cannot start the sandboxed evaluator: {source}"
            )),
        })?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::sync_channel(1);
    // Both pipes are drained to the end (what is past the caps is thrown away), so that the
    // child can never block on a full pipe. (Nickel's `std.trace` writes to the program's trace
    // sink, `io::sink` by default, so a spec cannot print; stderr carries panic messages.)
    std::thread::spawn(move || {
        let mut stdout = stdout;
        let mut bytes = Vec::new();
        let _ = (&mut stdout).take(MAX_ANSWER_BYTES).read_to_end(&mut bytes);
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        let _ = tx.send(bytes);
    });
    // Only read to tell a memory cap from a stack overflow; never shown.
    let stderr_reader = std::thread::spawn(move || {
        let mut stderr = stderr;
        let mut bytes = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut bytes);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let answer = rx.recv_timeout(timeout);
    if answer.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|source| NclError::Read {
        path: path.to_owned(),
        source,
    })?;
    let stderr = stderr_reader.join().unwrap_or_default();
    let bytes = match answer {
        Ok(bytes) => bytes,
        Err(_) => {
            return Err(NclError::Timeout {
                path: path.to_owned(),
                limit: timeout,
            });
        }
    };
    if let Ok(answer) = serde_json::from_slice::<Answer>(&bytes) {
        if let Some(why) = answer.unconfined {
            crate::warn_once(&format!(
                "Landlock is not available ({why}); {} was evaluated with an empty environment, resource limits and the import check, but without kernel confinement",
                path.display()
            ));
        }
        match (answer.value, answer.error) {
            (Some(value), None) => return Ok(value),
            (_, Some(error)) => return Err(NclError::Nickel(error)),
            _ => {}
        }
    }
    Err(ended_without_answer(path, status, &stderr, timeout))
}

fn ended_without_answer(
    path: &Path,
    status: std::process::ExitStatus,
    stderr: &str,
    timeout: Duration,
) -> NclError {
    use std::os::unix::process::ExitStatusExt;
    let limit = |what: &str| NclError::Limit {
        path: path.to_owned(),
        what: what.to_owned(),
    };
    if ["memory allocation of", "capacity overflow", "out of memory"]
        .iter()
        .any(|m| stderr.contains(m))
    {
        return limit(&format!(
            "evaluating it needs more than {} MiB of memory",
            MEMORY_BYTES >> 20
        ));
    }
    if stderr.contains("has overflowed its stack") {
        return limit("it recurses too deeply to evaluate");
    }
    match status.signal() {
        Some(libc::SIGXCPU) => NclError::Timeout {
            path: path.to_owned(),
            limit: timeout,
        },
        Some(signal) => limit(&format!(
            "the sandboxed evaluator was stopped by signal {signal} (the file is too large or too deep to evaluate)"
        )),
        None => limit(&format!(
            "the sandboxed evaluator ended without an answer ({status})"
        )),
    }
}

/// Child side: `__eval-ncl CONTRACT ROOT FILE CPU_SECONDS`. Prints one JSON answer; the exit
/// status is 0 whenever an answer was printed.
pub fn child_main(args: &[std::ffi::OsString], contracts: &[Contract]) -> i32 {
    let answer = match child(args, contracts) {
        Ok((value, unconfined)) => Answer {
            value: Some(value),
            error: None,
            unconfined,
        },
        Err((error, unconfined)) => Answer {
            value: None,
            error: Some(error.to_string()),
            unconfined,
        },
    };
    match serde_json::to_string(&answer) {
        Ok(line) => {
            crate::text::to_stdout(&line);
            0
        }
        Err(_) => 3,
    }
}

type ChildResult = Result<(serde_json::Value, Option<String>), (NclError, Option<String>)>;

fn child(args: &[std::ffi::OsString], contracts: &[Contract]) -> ChildResult {
    let usage = || {
        (
            NclError::Nickel(format!(
                "{SUBCOMMAND}: expected CONTRACT ROOT FILE CPU_SECONDS (an internal command)"
            )),
            None,
        )
    };
    let [name, root, file, cpu] = args else {
        return Err(usage());
    };
    let contract = contracts
        .iter()
        .find(|c| name.to_str() == Some(c.name))
        .copied()
        .ok_or_else(usage)?;
    let cpu: u64 = cpu
        .to_str()
        .and_then(|c| c.parse().ok())
        .ok_or_else(usage)?;
    limit_self(cpu);
    let root = PathBuf::from(root);
    let file = PathBuf::from(file);
    let unconfined = confine_self(&root);
    let result = (|| {
        let root = root.canonicalize().map_err(|source| NclError::Read {
            path: root.clone(),
            source,
        })?;
        super::imports::check(&file, &root)?;
        let handle = std::thread::Builder::new()
            .name("nickel-eval".into())
            .stack_size(EVAL_STACK_BYTES)
            .spawn(move || super::run_program_json(Some(&file), contract))
            .map_err(|source| NclError::Read {
                path: root.clone(),
                source,
            })?;
        match handle.join() {
            Ok(result) => result,
            // The panic message (an allocation that failed, a stack overflow) is on stderr,
            // where the parent reads what happened; no answer is the signal.
            Err(_) => std::process::exit(101),
        }
    })();
    match result {
        Ok(value) => Ok((value, unconfined.clone())),
        Err(e) => Err((e, unconfined)),
    }
}

/// rlimits and process flags; failures leave the remaining layers in place.
fn limit_self(cpu_seconds: u64) {
    use nix::sys::resource::{Resource, setrlimit};
    let _ = setrlimit(Resource::RLIMIT_AS, MEMORY_BYTES, MEMORY_BYTES);
    let _ = setrlimit(Resource::RLIMIT_CPU, cpu_seconds, cpu_seconds + 1);
    let _ = setrlimit(Resource::RLIMIT_FSIZE, 0, 0);
    let _ = setrlimit(Resource::RLIMIT_NOFILE, 64, 64);
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    // SAFETY: prctl with these options takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0);
    }
}

/// Landlock: read beneath `root`, nothing else. Returns why it is not enforced, if it is not.
fn confine_self(root: &Path) -> Option<String> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
        Scope, path_beneath_rules,
    };
    let abi = ABI::V6;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules([root], AccessFs::from_read(abi))))
        .and_then(|r| r.restrict_self());
    match status {
        Ok(status) => match status.ruleset {
            RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => None,
            RulesetStatus::NotEnforced => Some("the kernel does not enforce it".into()),
        },
        Err(e) => Some(e.to_string()),
    }
}
