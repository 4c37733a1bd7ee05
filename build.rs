//! What `--version` says besides the crate's version: the commit and its date (a build outside
//! a git checkout says "unknown"), and the BuildKit release the golden image pins.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // The commit's date, not the clock's: the same commit builds the same version text.
    let date = git(&["log", "-1", "--format=%cs"]).unwrap_or_else(|| "unknown".into());
    let pin = std::fs::read_to_string("golden-image/buildkit.pin").unwrap_or_default();
    let buildkit = pin
        .lines()
        .find_map(|l| l.strip_prefix("BUILDKIT_VERSION="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BKL_COMMIT={commit}");
    println!("cargo:rustc-env=BKL_COMMIT_DATE={date}");
    println!("cargo:rustc-env=BKL_BUILDKIT_PIN={buildkit}");
    println!("cargo:rerun-if-changed=golden-image/buildkit.pin");
    // Rebuilt when the checkout moves to another commit (the paths git itself names, which
    // also holds in a worktree, where .git is a file).
    for path in ["HEAD", "refs/heads", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path])
            && std::path::Path::new(&p).exists()
        {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
