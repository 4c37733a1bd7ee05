//! What an attempt's end means (SIZING.md, "OOM retry"): only out-of-memory is retried.
//!
//! A build ran out of memory when buildctl (or the remote shell) exited 137, when its output
//! says `exit code: 137` or `cannot allocate memory` (BuildKit ≥ 0.16 reports a cgroup OOM kill
//! as ENOMEM), or when the runner's own memory accounting counted an OOM kill during the build.
//! `no space left on device` is a disk failure, not memory.

use serde::Serialize;

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
/// runner started (runners are single-use, so every kill belongs to this build).
pub fn classify(exit: &RemoteExit, output_tail: &[String], oom_kills: Option<u64>) -> Verdict {
    let said = |needle: &str| {
        output_tail
            .iter()
            .rev()
            .find(|l| l.to_ascii_lowercase().contains(needle))
            .map(|l| l.trim().to_owned())
    };
    match exit {
        RemoteExit::Lost(why) => {
            return Verdict::Lost {
                reason: format!("the connection to the runner was lost ({why})"),
            };
        }
        // The image was built and pushed: whatever else was killed, this is a success.
        RemoteExit::Code(0) => return Verdict::Ok,
        RemoteExit::Code(137) => {
            return Verdict::Oom {
                evidence: "the build exited with status 137 (killed)".into(),
            };
        }
        _ => {}
    }
    if let Some(kills) = oom_kills.filter(|k| *k > 0) {
        return Verdict::Oom {
            evidence: format!("the runner's memory accounting counted {kills} OOM kill(s)"),
        };
    }
    if let Some(line) = said("exit code: 137") {
        return Verdict::Oom { evidence: line };
    }
    if let Some(line) = said("cannot allocate memory") {
        return Verdict::Oom { evidence: line };
    }
    match exit {
        RemoteExit::Killed => Verdict::Failed {
            reason: "the build process was killed by a signal".into(),
        },
        other => {
            let reason = said("no space left on device")
                .map(|l| format!("the runner's disk is full: {l}"))
                .or_else(|| said("error:"))
                .or_else(|| output_tail.last().map(|l| l.trim().to_owned()))
                .unwrap_or_else(|| crate::transport::session::describe(other));
            Verdict::Failed { reason }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    #[test]
    fn status_137_is_oom() {
        assert!(matches!(
            classify(&RemoteExit::Code(137), &[], None),
            Verdict::Oom { .. }
        ));
    }

    #[test]
    fn buildkit_messages_are_oom() {
        let t = lines(
            "#5 ERROR\nerror: failed to solve: process \"/bin/sh -c make\" did not complete successfully: exit code: 137",
        );
        assert!(matches!(
            classify(&RemoteExit::Code(1), &t, Some(0)),
            Verdict::Oom { .. }
        ));
        let t = lines("error: failed to solve: write /x: cannot allocate memory");
        assert!(matches!(
            classify(&RemoteExit::Code(1), &t, None),
            Verdict::Oom { .. }
        ));
    }

    #[test]
    fn the_runners_oom_counter_is_evidence_even_when_the_tool_hides_it() {
        // buildah with chroot isolation reports an OOM-killed RUN step as a plain failure.
        let t =
            lines("subprocess exited on killed\nerror building at STEP \"RUN dd\": exit status 1");
        match classify(&RemoteExit::Code(1), &t, Some(1)) {
            Verdict::Oom { evidence } => assert!(evidence.contains("1 OOM kill"), "{evidence}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn disk_full_is_a_failure_not_oom() {
        let t = lines("error: failed to solve: write /var/lib: no space left on device");
        match classify(&RemoteExit::Code(1), &t, Some(0)) {
            Verdict::Failed { reason } => assert!(reason.contains("disk is full"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_failures_and_success_and_loss() {
        let t = lines(
            "step 3\nerror: failed to solve: process \"/bin/sh -c exit 3\" did not complete successfully: exit code: 3",
        );
        match classify(&RemoteExit::Code(1), &t, Some(0)) {
            Verdict::Failed { reason } => assert!(reason.contains("exit code: 3"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(classify(&RemoteExit::Code(0), &[], Some(0)), Verdict::Ok);
        assert!(matches!(
            classify(&RemoteExit::Lost("x".into()), &[], None),
            Verdict::Lost { .. }
        ));
    }
}
