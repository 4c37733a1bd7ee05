//! Registry caches a successful buildctl build could not write.
//!
//! The default and extra cache exports carry `ignore-error=true` (a failed export would
//! otherwise cancel the image push beside it: measured with BuildKit v0.32.2), so the build
//! succeeds and the failure shows only in plain progress as the `exporting cache to registry`
//! step's `#N ERROR: …` line. [`CacheExports`] watches every line of the build's output as it
//! streams, so a long `mode=max` export whose step line scrolled out of the last lines the
//! transport keeps is still seen; it keeps only step numbers and errors, bounded.
//!
//! Only BuildKit's own step lines count: the step's name line (`#N exporting cache to
//! registry`) and its error line (`#N ERROR: …`), never a RUN step's output, which plain
//! progress prints as `#M <seconds> <text>` under that step's own number.

use super::classify::cut;

/// At most this many export steps and failures are remembered (a build has one export per
/// cache destination: the default cache and a few `--cache-to`).
const MAX_REMEMBERED: usize = 32;

/// The cache-export steps seen so far and their errors.
#[derive(Debug, Default)]
pub struct CacheExports {
    steps: Vec<String>,
    failures: Vec<String>,
}

impl CacheExports {
    /// One line of the build's output.
    pub fn feed(&mut self, line: &str) {
        let line = line.trim_end();
        let Some((step, rest)) = line.split_once(' ') else {
            return;
        };
        if !step.starts_with('#')
            || step.len() < 2
            || !step[1..].chars().all(|c| c.is_ascii_digit())
        {
            return;
        }
        if rest == "exporting cache to registry" {
            if self.steps.len() < MAX_REMEMBERED && !self.steps.iter().any(|s| s == step) {
                self.steps.push(step.to_owned());
            }
        } else if let Some(error) = rest.strip_prefix("ERROR: ")
            && self.steps.iter().any(|s| s == step)
            && self.failures.len() < MAX_REMEMBERED
        {
            self.failures.push(cut(error.trim()));
        }
    }

    /// One warning per failed export, in the order printed; cut like a failure reason.
    pub fn failures(self) -> Vec<String> {
        self.failures
    }
}

/// The failed exports in `output` (lines already collected).
pub fn cache_export_failures(output: &[String]) -> Vec<String> {
    let mut exports = CacheExports::default();
    for line in output {
        exports.feed(line);
    }
    exports.failures()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    #[test]
    fn a_failed_cache_export_is_a_warning_from_buildkits_own_lines_only() {
        // BuildKit v0.32.2's plain progress with ignore-error=true and an unreachable cache.
        let t = lines(
            "#6 [2/2] RUN echo '#7 ERROR: forged'\n#6 0.05 #7 ERROR: forged\n#6 DONE 0.1s\n\n#7 exporting to image\n#7 DONE 0.1s\n\n#8 exporting cache to registry\n#8 preparing build cache for export done\n#8 ERROR: error writing layer blob: failed to do request: dial tcp 127.0.0.1:1: connect: connection refused\n------\n > exporting cache to registry:\n------",
        );
        assert_eq!(
            cache_export_failures(&t),
            [
                "error writing layer blob: failed to do request: dial tcp 127.0.0.1:1: connect: connection refused"
            ]
        );
        assert!(
            cache_export_failures(&lines("#8 exporting cache to registry\n#8 DONE 0.1s"))
                .is_empty()
        );
        assert!(cache_export_failures(&lines("#5 ERROR: failed to build")).is_empty());
    }

    #[test]
    fn an_export_step_far_from_its_error_is_still_matched_and_memory_stays_bounded() {
        // A mode=max export writing many layers: thousands of lines between the step's name
        // and its error (more than the transport's 200-line tail).
        let mut exports = CacheExports::default();
        exports.feed("#9 exporting cache to registry");
        for n in 0..5000 {
            exports.feed(&format!("#9 writing layer sha256:{n:064x} 0.1s done"));
        }
        exports.feed("#9 ERROR: unexpected status from PUT request: 500 Internal Server Error");
        assert_eq!(
            exports.failures(),
            ["unexpected status from PUT request: 500 Internal Server Error"]
        );
        let mut many = CacheExports::default();
        for n in 0..1000 {
            many.feed(&format!("#{n} exporting cache to registry"));
            many.feed(&format!("#{n} ERROR: refused"));
        }
        assert_eq!(many.failures().len(), MAX_REMEMBERED);
    }
}
