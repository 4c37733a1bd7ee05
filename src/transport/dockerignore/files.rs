//! Reading the files the repository names for the build (the Dockerfile, the ignore files): only
//! regular files reached through real directories, without blocking, within a size cap.

use std::fs;
use std::io;
use std::path::Path;

use super::{Dockerignore, DockerignoreError, io_error};

/// The most of an ignore file that is read; real ones are a few hundred bytes.
pub const MAX_IGNORE_BYTES: u64 = 1024 * 1024;

/// Is `rel` (relative to `context`) a regular file reached through real directories only?
/// `Ok(None)` when nothing is there; an error for a symlink anywhere on the way, or anything
/// but a regular file at the end.
pub fn plain_file(context: &Path, rel: &Path) -> Result<Option<()>, DockerignoreError> {
    let mut at = context.to_path_buf();
    let mut components = rel.components().peekable();
    while let Some(component) = components.next() {
        at.push(component);
        let meta = match at.symlink_metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&at, e)),
        };
        let refuse = |what: &str| DockerignoreError::NotPlainFile {
            path: context.join(rel),
            what: what.to_owned(),
        };
        if meta.file_type().is_symlink() {
            return Err(refuse(&format!(
                "is reached through the symlink {}; name the file by its real path inside the context",
                at.strip_prefix(context).unwrap_or(&at).display()
            )));
        }
        if components.peek().is_some() {
            if !meta.is_dir() {
                return Ok(None);
            }
        } else if !meta.is_file() {
            return Err(refuse(
                "is not a regular file (a directory, device, FIFO or socket)",
            ));
        }
    }
    Ok(Some(()))
}

pub(super) fn read_rules(
    context: &Path,
    rel: &Path,
) -> Result<Option<Dockerignore>, DockerignoreError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if plain_file(context, rel)?.is_none() {
        return Ok(None);
    }
    let path = context.join(rel);
    // O_NOFOLLOW and O_NONBLOCK: a file swapped for a symlink or a FIFO since the check above
    // is refused or returns at once; the descriptor is checked again.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    let meta = file.metadata().map_err(|e| io_error(&path, e))?;
    let too_big = || DockerignoreError::NotPlainFile {
        path: path.clone(),
        what: format!("is larger than {} KiB", MAX_IGNORE_BYTES / 1024),
    };
    if !meta.is_file() {
        return Err(DockerignoreError::NotPlainFile {
            path: path.clone(),
            what: "is not a regular file".into(),
        });
    }
    if meta.len() > MAX_IGNORE_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(MAX_IGNORE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(&path, e))?;
    if bytes.len() as u64 > MAX_IGNORE_BYTES {
        return Err(too_big());
    }
    let text = String::from_utf8(bytes).map_err(|_| DockerignoreError::NotUtf8(path.clone()))?;
    Dockerignore::parse_named(&text, &path).map(Some)
}
