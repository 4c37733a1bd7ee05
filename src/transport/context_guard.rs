//! The context must still be the one that was listed while rsync reads it.
//!
//! The entry list is made (and every path checked for symlinks) when the plan is made; rsync
//! opens the files by path tens of seconds later, once the runner is up. The kernel follows a
//! symlink in the middle of a path, so a process sharing the workspace (a `detach`ed step of the
//! same pipeline) that swapped a listed directory for a symlink in between would have rsync
//! send files from outside the workspace under listed names. Every directory the list passes
//! through is checked to be a real directory (never a symlink) right before rsync starts and
//! again once it has finished; a change is a refusal and the build does not start. A swap made
//! and undone exactly within rsync's run is not seen: the launcher's own memory and environment
//! stay out of reach regardless (environment::forbid_inspection), see docs/SECURITY.md.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every directory `entries` (relative to `context`) pass through, the context itself included.
pub fn directories(entries: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::from([PathBuf::new()]);
    for entry in entries {
        let mut parent = entry.parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            if !dirs.insert(dir.to_owned()) {
                break;
            }
            parent = dir.parent();
        }
    }
    dirs
}

/// Whether each of `dirs` beneath `context` is still a real directory, not a symlink; the
/// first that is not, named.
pub fn check(context: &Path, dirs: &BTreeSet<PathBuf>) -> Result<(), String> {
    for dir in dirs {
        let path = context.join(dir);
        let real = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_dir());
        if !real {
            return Err(format!(
                "the build context changed while it was being sent: {} is no longer a directory (a symlink or something else now); another process writes into the workspace, and nothing was built",
                crate::text::quote(&path.display().to_string())
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_swapped_for_a_symlink_is_seen() {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ctx.path().join("a/b")).unwrap();
        std::fs::write(ctx.path().join("a/b/f"), "x").unwrap();
        let dirs = directories(&[PathBuf::from("a/b/f"), PathBuf::from("top")]);
        assert_eq!(
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>(),
            ["", "a", "a/b"]
        );
        check(ctx.path(), &dirs).unwrap();
        std::fs::rename(ctx.path().join("a/b"), ctx.path().join("a/c")).unwrap();
        std::os::unix::fs::symlink("/proc/self", ctx.path().join("a/b")).unwrap();
        let err = check(ctx.path(), &dirs).unwrap_err();
        assert!(err.contains("/a/b\" is no longer a directory"), "{err}");
    }
}
