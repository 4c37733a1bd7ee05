//! The context must still be the one that was listed while rsync reads it.
//!
//! The entry list is made (and every path checked for symlinks) when the plan is made; rsync
//! opens the files by path tens of seconds later, once the runner is up. The kernel follows a
//! symlink in the middle of a path, so a process sharing the workspace (a `detach`ed step of the
//! same pipeline) that swapped a listed directory for a symlink in between would have rsync
//! send files from outside the workspace under listed names. rsync reads the context by the
//! real path it had when it was listed (the plan's `context_root`); that path, every directory
//! above it and every directory the list passes through are checked to be real directories
//! (never a symlink) right before rsync starts and again once it has finished; a change is a
//! refusal and the build does not start. A swap made
//! and undone exactly within rsync's run is not seen: the launcher's own memory and environment
//! stay out of reach regardless (environment::forbid_inspection), see docs/SECURITY.md.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

static WORKSPACE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Hold every context of this process to `workspace` (its real path): a plugin's context is
/// the pipeline's, and must be the workspace or beneath it when its real path is taken.
pub fn confine_to(workspace: PathBuf) {
    let _ = WORKSPACE.set(workspace);
}

/// The workspace [`confine_to`] set, if any (plugin mode).
pub fn confinement() -> Option<&'static Path> {
    WORKSPACE.get().map(PathBuf::as_path)
}

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

/// Whether `context` (the real path taken when it was listed) and every directory above it
/// are still real directories, and each of `dirs` beneath it too; the first that is not,
/// named. The context is looked at by its own name (never `context/`, which would follow a
/// symlink put in its place), and its parents too: a swap anywhere on the path counts.
pub fn check(context: &Path, dirs: &BTreeSet<PathBuf>) -> Result<(), String> {
    let beneath = dirs
        .iter()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| context.join(d));
    for path in context.ancestors().map(Path::to_owned).chain(beneath) {
        let real = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_dir());
        if !real {
            return Err(format!(
                "the build context changed while it was being read or sent: {} is no longer a directory (a symlink or something else now); another process writes into the workspace, and nothing was built",
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

    #[test]
    fn the_context_itself_or_a_parent_swapped_for_a_symlink_is_seen() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().canonicalize().unwrap();
        let ctx = root.join("ws/ctx");
        std::fs::create_dir_all(ctx.join("a")).unwrap();
        let dirs = directories(&[PathBuf::from("a/f")]);
        check(&ctx, &dirs).unwrap();
        // The context itself: `ctx/` would follow the link and look fine.
        std::fs::rename(&ctx, root.join("ws/ctx.moved")).unwrap();
        std::fs::create_dir(root.join("elsewhere")).unwrap();
        std::fs::create_dir(root.join("elsewhere/a")).unwrap();
        std::os::unix::fs::symlink(root.join("elsewhere"), &ctx).unwrap();
        let err = check(&ctx, &dirs).unwrap_err();
        assert!(err.contains("/ws/ctx\" is no longer a directory"), "{err}");
        std::fs::remove_file(&ctx).unwrap();
        std::fs::rename(root.join("ws/ctx.moved"), &ctx).unwrap();
        check(&ctx, &dirs).unwrap();
        // A parent of it, the workspace.
        std::fs::rename(root.join("ws"), root.join("ws.moved")).unwrap();
        std::fs::create_dir_all(root.join("elsewhere/ctx/a")).unwrap();
        std::os::unix::fs::symlink(root.join("elsewhere"), root.join("ws")).unwrap();
        let err = check(&ctx, &dirs).unwrap_err();
        assert!(err.contains("/ws\" is no longer a directory"), "{err}");
    }
}
