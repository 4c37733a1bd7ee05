//! What an attempt's end means (SIZING.md, "OOM retry"): only out-of-memory is retried.
//!
//! Out of memory is decided from evidence, never from what the build printed (the Dockerfile's
//! author writes that, and can print `exit code: 137` or `cannot allocate memory` at will):
//!
//! 1. the runner's own memory accounting (`bkl-runner-stats`' `oom_kills`) counted a kill during
//!    the build (runners are single-use, so every kill belongs to it); or
//! 2. buildctl itself (or the remote shell) exited 137: buildctl exits 1 on every solve error,
//!    so 137 means buildctl was the process killed. With the buildah backend a RUN step's status
//!    can come through, so there 137 counts only when the counter cannot say otherwise; or
//! 3. only when the counter is unavailable, and only with buildctl: buildctl's own final
//!    `error:` line (the last line of its output; the build's own lines come prefixed `#N` in
//!    plain progress) reports BuildKit's ENOMEM, `ResourceExhausted: ... cannot allocate memory`.
//!
//! buildkitd lost mid-build (buildctl's own final line, in one of two forms depending on which
//! of buildctl's calls saw the connection drop first: `failed to receive status: rpc error:
//! code = Unavailable …` or `failed to solve: Unavailable: error reading from server: EOF`, both
//! measured with BuildKit v0.32.2 by killing the daemon) is the runner's
//! failure, not the build's: [`Verdict::Lost`] (infrastructure), naming buildkitd, unless the
//! evidence above says the kernel killed it for memory (then OOM).
//!
//! The reason given for a failure is buildctl's own final `error:` line (cut to
//! [`MAX_REASON_CHARS`]; it names what failed: a step's command and exit code, a base image that
//! could not be resolved), never a line the build printed, which can carry anything, a secret
//! included. With buildah, whose build output is not prefixed, it is a category and the exit
//! status. The run loop also masks every known secret value in it.

use serde::Serialize;

use super::{Backend, BuildRequest};
use crate::transport::session::RemoteExit;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Verdict {
    Ok,
    Oom { evidence: String },
    Failed { reason: String },
    Lost { reason: String },
}

/// Classify a finished build command. `oom_kills` is what `bkl-runner-stats` counted since the
/// runner started, `None` when it could not be read.
pub fn classify(
    exit: &RemoteExit,
    output_tail: &[String],
    oom_kills: Option<u64>,
    backend: Backend,
) -> Verdict {
    match exit {
        RemoteExit::Lost(why) => {
            return Verdict::Lost {
                reason: format!("the connection to the runner was lost ({why})"),
            };
        }
        // The image was built and pushed: whatever else was killed, this is a success.
        RemoteExit::Code(0) => return Verdict::Ok,
        _ => {}
    }
    if let Some(kills) = oom_kills.filter(|k| *k > 0) {
        return Verdict::Oom {
            evidence: format!("the runner's memory accounting counted {kills} OOM kill(s)"),
        };
    }
    let final_error = final_error_line(output_tail, backend);
    // What buildctl's line says in BuildKit's own words: the build's command (which the line
    // quotes) and every other quoted value the Dockerfile's author chose are blanked out.
    let own_words = final_error.map(buildkits_own_words);
    let own_words = own_words.as_deref();
    if let Some(line) = final_error.filter(|_| own_words.is_some_and(daemon_unavailable)) {
        return Verdict::Lost {
            reason: format!(
                "buildkitd on the runner stopped answering during the build: {}",
                cut(line.trim_start_matches("error: ").trim())
            ),
        };
    }
    match (exit, backend, oom_kills) {
        (RemoteExit::Code(137), Backend::Buildctl, _) | (RemoteExit::Code(137), _, None) => {
            return Verdict::Oom {
                evidence: format!("{} exited with status 137 (killed)", backend_name(backend)),
            };
        }
        (_, Backend::Buildctl, None)
            if own_words.is_some_and(|l| {
                l.starts_with("error: failed to solve: ResourceExhausted: ")
                    && l.contains("cannot allocate memory")
            }) =>
        {
            return Verdict::Oom {
                evidence: "buildctl reported ResourceExhausted (cannot allocate memory) and the runner's OOM counter was unavailable".into(),
            };
        }
        _ => {}
    }
    let reason = match exit {
        RemoteExit::Killed => "the build process was killed by a signal".to_owned(),
        RemoteExit::Code(code) => match final_error {
            Some(line) if line.contains("no space left on device") => {
                "the runner's disk is full (no space left on device)".to_owned()
            }
            // BuildKit's own refusal (frontend/gateway/gateway.go): the Dockerfile's
            // `# syntax=` names a frontend image outside the operator's list.
            Some(line) if line.contains("is not an allowed gateway source") => format!(
                "the Dockerfile's # syntax= names a frontend image the runners do not allow (the operator's list: buildkitd.frontends in the launcher config, the golden image's allowedRepositories): {}",
                cut(line.trim_start_matches("error: ").trim())
            ),
            // Pulling (a base image, the SBOM scanner) from a plain-HTTP registry BuildKit was
            // not told about: only buildkitd.toml can say so (pushing and the cache have
            // --insecure-registry).
            Some(line)
                if line.contains("failed to resolve source metadata")
                    && line.contains("server gave HTTP response to HTTPS client") =>
            {
                format!(
                    "{} (a registry served over plain HTTP: the operator names its host in the launcher config's buildkitd.registries with http = true and bakes the golden image again)",
                    cut(line.trim_start_matches("error: ").trim())
                )
            }
            Some(line) => cut(line.trim_start_matches("error: ").trim()),
            None => format!(
                "{} failed with exit status {code} (see the build log)",
                backend_name(backend)
            ),
        },
        RemoteExit::Lost(_) => unreachable!("handled above"),
    };
    Verdict::Failed { reason }
}

/// [`classify`] for the build `req` described: also, with `--sbom`, a scanner image BuildKit
/// could not pull (buildctl's own final line: `failed to resolve source metadata for IMAGE`,
/// BuildKit v0.32.2) is the runner's or the operator's problem, not the build's: [`Verdict::Lost`]
/// (infrastructure), naming the image and the setting.
pub fn classify_request(
    exit: &RemoteExit,
    output_tail: &[String],
    oom_kills: Option<u64>,
    req: &BuildRequest,
) -> Verdict {
    let verdict = classify(exit, output_tail, oom_kills, req.backend);
    if !matches!(verdict, Verdict::Failed { .. }) || !req.sbom || req.sbom_generator.is_empty() {
        return verdict;
    }
    let image = &req.sbom_generator;
    // BuildKit names Docker Hub images in full (docker.io/library/...).
    let names = [
        image.clone(),
        format!("docker.io/{image}"),
        format!("docker.io/library/{image}"),
    ];
    let Some(line) = final_error_line(output_tail, req.backend) else {
        return verdict;
    };
    let own_words = buildkits_own_words(line);
    // Only the scanner's own form: a Dockerfile stage naming the same image (`FROM`,
    // `COPY --from=`) fails as `failed to solve: IMAGE: failed to resolve source metadata for
    // IMAGE: …` (BuildKit v0.32.2, measured), which stays the build's failure.
    let prefixes = names
        .iter()
        .map(|n| format!("error: failed to solve: failed to resolve source metadata for {n}:"));
    if !prefixes.into_iter().any(|p| own_words.starts_with(&p)) {
        return verdict;
    }
    Verdict::Lost {
        reason: format!(
            "the SBOM scanner image {image} (config buildkitd.sbom_generator) could not be pulled on the runner: {}",
            cut(line.trim_start_matches("error: ").trim())
        ),
    }
}

/// At most [`MAX_REASON_CHARS`] of `line`, `…` marking a cut.
pub(crate) fn cut(line: &str) -> String {
    let mut reason: String = line.chars().take(MAX_REASON_CHARS).collect();
    if reason.len() < line.len() {
        reason.push('…');
    }
    reason
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Buildctl => "buildctl",
        Backend::Buildah => "buildah",
    }
}

/// buildctl's own last word: the last non-empty line, when it is an unprefixed `error:` line.
/// buildctl's final line says its gRPC connection to buildkitd broke: the status `Unavailable`,
/// as grpc-go prints it (`rpc error: code = Unavailable desc = …`) or as BuildKit's own error
/// conversion does (`failed to solve: Unavailable: …`).
///
/// Both are matched at the start of the line only: BuildKit's own words come first, and the
/// build's words (its command, its file names) can only come later.
fn daemon_unavailable(line: &str) -> bool {
    line.starts_with("error: failed to receive status: rpc error: code = Unavailable ")
        || line.starts_with("error: failed to solve: rpc error: code = Unavailable ")
        || line.starts_with("error: failed to solve: Unavailable: ")
}

/// `line` with every double-quoted part (Go's `%q`, as BuildKit quotes a step's command, a file
/// name, a URL) replaced by `"…"`: what is left is BuildKit's own framing, which the Dockerfile's
/// author cannot write. `RUN echo "code = Unavailable"; exit 1` fails with
/// `process "/bin/sh -c echo \"code = Unavailable\"; exit 1" did not complete successfully`,
/// whose own words say nothing of buildkitd. An unterminated quote blanks the rest of the line.
fn buildkits_own_words(line: &str) -> String {
    let mut own = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        own.push(c);
        if c != '"' {
            continue;
        }
        own.push('…');
        let mut closed = false;
        while let Some(q) = chars.next() {
            match q {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
        if closed {
            own.push('"');
        }
    }
    own
}

fn final_error_line(tail: &[String], backend: Backend) -> Option<&str> {
    if backend != Backend::Buildctl {
        return None;
    }
    let last = tail
        .iter()
        .rev()
        .map(|l| l.trim_end())
        .find(|l| !l.is_empty())?;
    last.starts_with("error: ").then_some(last)
}

/// The most of buildctl's error line that goes into a failure reason.
pub const MAX_REASON_CHARS: usize = 300;

#[cfg(test)]
mod tests {
    use super::*;
    use Backend::{Buildah, Buildctl};

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    fn code(c: i32) -> RemoteExit {
        RemoteExit::Code(c)
    }

    #[test]
    fn buildctl_killed_is_oom_and_a_step_killed_is_evidence_only_with_the_counter() {
        assert!(matches!(
            classify(&code(137), &[], Some(0), Buildctl),
            Verdict::Oom { .. }
        ));
        assert!(matches!(
            classify(&code(137), &[], None, Buildah),
            Verdict::Oom { .. }
        ));
        // `RUN exit 137` under buildah, with a counter that saw no kill: the build's own doing.
        assert!(matches!(
            classify(&code(137), &[], Some(0), Buildah),
            Verdict::Failed { .. }
        ));
    }

    #[test]
    fn the_runners_counter_is_evidence_whatever_the_tool_says() {
        let t =
            lines("subprocess exited on killed\nerror building at STEP \"RUN dd\": exit status 1");
        match classify(&code(1), &t, Some(1), Buildah) {
            Verdict::Oom { evidence } => assert!(evidence.contains("1 OOM kill"), "{evidence}"),
            other => panic!("{other:?}"),
        }
        let t = lines(
            "error: failed to solve: ResourceExhausted: process \"/bin/sh -c make\" did not complete successfully: cannot allocate memory",
        );
        assert!(matches!(
            classify(&code(1), &t, Some(2), Buildctl),
            Verdict::Oom { .. }
        ));
    }

    #[test]
    fn words_in_the_build_output_are_not_evidence() {
        // Printed by a RUN step (prefixed in plain progress), then a normal failure.
        let t = lines(
            "#5 0.10 exit code: 137\n#5 0.11 cannot allocate memory\n#5 0.12 error: failed to solve: ResourceExhausted: cannot allocate memory\nerror: failed to solve: process \"/bin/sh -c false\" did not complete successfully: exit code: 1",
        );
        for kills in [Some(0), None] {
            match classify(&code(1), &t, kills, Buildctl) {
                Verdict::Failed { reason } => {
                    assert_eq!(
                        reason,
                        "failed to solve: process \"/bin/sh -c false\" did not complete successfully: exit code: 1"
                    )
                }
                other => panic!("{kills:?}: {other:?}"),
            }
        }
        // BuildKit's own ENOMEM line counts only while the counter is unavailable...
        let t = lines(
            "error: failed to solve: ResourceExhausted: process \"/bin/sh -c make\" did not complete successfully: cannot allocate memory",
        );
        assert!(matches!(
            classify(&code(1), &t, None, Buildctl),
            Verdict::Oom { .. }
        ));
        // ...never against a counter that saw no kill, and never from buildah's output.
        assert!(matches!(
            classify(&code(1), &t, Some(0), Buildctl),
            Verdict::Failed { .. }
        ));
        assert!(matches!(
            classify(&code(1), &t, None, Buildah),
            Verdict::Failed { .. }
        ));
    }

    #[test]
    fn a_failure_reason_is_buildctls_own_last_line_only() {
        let t = lines(
            "#7 0.2 token=hunter2\nerror: failed to solve: process \"/bin/sh -c ./build.sh\" did not complete successfully: exit code: 3",
        );
        match classify(&code(1), &t, Some(0), Buildctl) {
            Verdict::Failed { reason } => {
                assert!(!reason.contains("hunter2"), "{reason}");
                assert!(reason.ends_with("exit code: 3"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // The build's own last line (not buildctl's) is never the reason.
        let t = lines("#7 0.2 error: hunter2");
        match classify(&code(1), &t, Some(0), Buildctl) {
            Verdict::Failed { reason } => assert!(!reason.contains("hunter2"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let long = format!("error: failed to solve: {}", "x".repeat(1000));
        match classify(&code(1), &lines(&long), Some(0), Buildctl) {
            Verdict::Failed { reason } => assert!(reason.chars().count() <= MAX_REASON_CHARS + 1),
            other => panic!("{other:?}"),
        }
        let t = lines("Error: building at STEP \"RUN echo hunter2\": exit status 1");
        match classify(&code(1), &t, Some(0), Buildah) {
            Verdict::Failed { reason } => assert_eq!(
                reason,
                "buildah failed with exit status 1 (see the build log)"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn buildkitd_lost_mid_build_is_infrastructure_unless_the_kernel_killed_it() {
        // What buildctl v0.32.2 printed when its buildkitd was killed mid-build.
        let t = lines(
            "#6 [2/2] RUN sleep 30\nerror: failed to receive status: rpc error: code = Unavailable desc = error reading from server: EOF",
        );
        match classify(&code(1), &t, Some(0), Buildctl) {
            Verdict::Lost { reason } => {
                assert!(reason.starts_with("buildkitd on the runner"), "{reason}");
                assert!(reason.contains("code = Unavailable"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(&code(1), &t, Some(1), Buildctl),
            Verdict::Oom { .. }
        ));
        // The other form it prints for the same kill (about one run in six).
        let t = lines(
            "#6 [2/2] RUN sleep 30\nerror: failed to solve: Unavailable: error reading from server: EOF",
        );
        match classify(&code(1), &t, Some(0), Buildctl) {
            Verdict::Lost { reason } => {
                assert!(reason.contains("Unavailable: error reading"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // The build's own words are never that line.
        let t = lines(
            "#6 0.1 error: rpc error: code = Unavailable\nerror: failed to solve: process \"/bin/sh -c x\" did not complete successfully: exit code: 1",
        );
        assert!(matches!(
            classify(&code(1), &t, Some(0), Buildctl),
            Verdict::Failed { .. }
        ));
    }

    #[test]
    fn words_in_the_builds_command_are_not_buildkits() {
        // buildctl's final line quotes the failed step's command (Go's %q): the Dockerfile's
        // author writes that part, and can write in it every phrase a verdict rests on.
        let quoted = |cmd: &str| {
            lines(&format!(
                "error: failed to solve: process \"/bin/sh -c {cmd}\" did not complete successfully: exit code: 1"
            ))
        };
        for cmd in [
            r#"echo \"rpc error: code = Unavailable desc = EOF\"; exit 1"#,
            "echo code = Unavailable; exit 1",
            r#"echo \"\\\" error: failed to solve: Unavailable: x\"; exit 1"#,
        ] {
            match classify(&code(1), &quoted(cmd), Some(0), Buildctl) {
                Verdict::Failed { reason } => assert!(reason.contains(cmd), "{reason}"),
                other => panic!("{cmd}: {other:?}"),
            }
        }
        // ENOMEM counts (without a counter) only as BuildKit's own status, not as a command.
        let t = quoted("echo ResourceExhausted: cannot allocate memory; exit 1");
        assert!(matches!(
            classify(&code(1), &t, None, Buildctl),
            Verdict::Failed { .. }
        ));
        // A command that names the SBOM scanner is not the scanner failing to pull.
        let req = BuildRequest {
            sbom: true,
            sbom_generator: "docker/buildkit-syft-scanner:stable-1".into(),
            ..Default::default()
        };
        let t = quoted(
            "echo failed to resolve source metadata for docker.io/docker/buildkit-syft-scanner:stable-1: x; exit 1",
        );
        assert!(matches!(
            classify_request(&code(1), &t, Some(0), &req),
            Verdict::Failed { .. }
        ));
        assert_eq!(
            buildkits_own_words(r#"error: a "b\"c" d "e"#),
            r#"error: a "…" d "…"#
        );
    }

    #[test]
    fn an_unpullable_sbom_scanner_is_infrastructure_naming_it() {
        let mut req = BuildRequest {
            sbom: true,
            sbom_generator: "docker/buildkit-syft-scanner:stable-1".into(),
            ..Default::default()
        };
        // BuildKit v0.32.2 without a route to Docker Hub.
        let t = lines(
            "error: failed to solve: failed to resolve source metadata for docker.io/docker/buildkit-syft-scanner:stable-1: dial tcp: lookup registry-1.docker.io: no such host",
        );
        match classify_request(&code(1), &t, Some(0), &req) {
            Verdict::Lost { reason } => assert!(
                reason.starts_with("the SBOM scanner image docker/buildkit-syft-scanner:stable-1 (config buildkitd.sbom_generator)"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
        // Another image that cannot be resolved is the build's own failure.
        let t = lines(
            "error: failed to solve: failed to resolve source metadata for 127.0.0.1:5000/app/base:1: not found",
        );
        assert!(matches!(
            classify_request(&code(1), &t, Some(0), &req),
            Verdict::Failed { .. }
        ));
        // A Dockerfile stage (`FROM` or `COPY --from=`) naming the scanner image itself fails
        // in the stage's own form, image first (BuildKit v0.32.2, measured): the build's own
        // failure, never blamed on the scanner.
        let t = lines(
            "error: failed to solve: docker.io/docker/buildkit-syft-scanner:stable-1: failed to resolve source metadata for docker.io/docker/buildkit-syft-scanner:stable-1: no match for platform in manifest",
        );
        assert!(matches!(
            classify_request(&code(1), &t, Some(0), &req),
            Verdict::Failed { .. }
        ));
        req.sbom = false;
        let t = lines(
            "error: failed to solve: failed to resolve source metadata for docker.io/docker/buildkit-syft-scanner:stable-1: x",
        );
        assert!(matches!(
            classify_request(&code(1), &t, Some(0), &req),
            Verdict::Failed { .. }
        ));
    }

    #[test]
    fn a_pull_from_an_unlisted_http_registry_names_the_config_setting() {
        let tail = lines(
            "error: failed to solve: zot.internal:5000/base/busybox:latest: failed to resolve source metadata for zot.internal:5000/base/busybox:latest: failed to do request: Head \"https://zot.internal:5000/v2/base/busybox/manifests/latest\": http: server gave HTTP response to HTTPS client",
        );
        match classify(&code(1), &tail, Some(0), Backend::Buildctl) {
            Verdict::Failed { reason } => {
                assert!(
                    reason.ends_with("(a registry served over plain HTTP: the operator names its host in the launcher config's buildkitd.registries with http = true and bakes the golden image again)"),
                    "{reason}"
                );
                assert!(reason.contains("server gave HTTP response"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refused_syntax_frontend_says_whose_list_it_is() {
        let tail = lines(
            "#1 [internal] load build definition\nerror: failed to solve: '127.0.0.1:5000/evil/frontend:1' is not an allowed gateway source",
        );
        match classify(&code(1), &tail, Some(0), Backend::Buildctl) {
            Verdict::Failed { reason } => {
                assert!(reason.contains("buildkitd.frontends"), "{reason}");
                assert!(reason.contains("evil/frontend"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn disk_full_is_a_failure_not_oom() {
        let t = lines("error: failed to solve: write /var/lib: no space left on device");
        match classify(&code(1), &t, Some(0), Buildctl) {
            Verdict::Failed { reason } => assert!(reason.contains("disk is full"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn success_and_loss() {
        assert_eq!(classify(&code(0), &[], Some(0), Buildctl), Verdict::Ok);
        assert!(matches!(
            classify(&RemoteExit::Lost("x".into()), &[], None, Buildctl),
            Verdict::Lost { .. }
        ));
        assert!(matches!(
            classify(&RemoteExit::Killed, &[], Some(0), Buildctl),
            Verdict::Failed { .. }
        ));
    }
}
