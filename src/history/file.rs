//! `file:PATH`: history as JSON lines.
//!
//! Appends take an exclusive `flock` on the file and write each line with one `write` on an
//! `O_APPEND` descriptor, so lines from concurrent processes never interleave; reads take a
//! shared lock, so they never see half a line. A line that does not parse is skipped with a
//! warning naming the file and line: one bad line must not cost the whole history.
//!
//! The path is a setting (`history: file:…`), so it is read like the repository's ignore files:
//! a regular file only, opened with `O_NONBLOCK | O_NOFOLLOW` (a FIFO cannot hang the open, a
//! symlink is refused) and checked again on the descriptor, at most [`MAX_HISTORY_BYTES`] read.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::{HistoryError, HistoryKey, HistoryStore, Outcome, Recent, Sample};

pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: PathBuf) -> FileStore {
        FileStore { path }
    }

    fn io(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> HistoryError + '_ {
        move |source| HistoryError::Io {
            path: self.path.clone(),
            action,
            source,
        }
    }
}

/// The most of a history file that is read: 16 MiB is some 80,000 samples, far more than any
/// key's window; a bigger file is refused, not read.
pub const MAX_HISTORY_BYTES: u64 = 16 << 20;

/// `path` opened without following a final symlink and without blocking (a FIFO, a terminal),
/// checked on the descriptor to be a regular file of at most [`MAX_HISTORY_BYTES`]. Appending
/// opens for append (and creates a missing file); a missing file otherwise is `Ok(None)`.
fn open_checked(path: &Path, append: bool) -> Result<Option<File>, HistoryError> {
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |what: &str| HistoryError::NotAHistoryFile {
        path: path.to_owned(),
        what: what.to_owned(),
    };
    let mut options = OpenOptions::new();
    options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY);
    if append {
        options.create(true).append(true);
    } else {
        options.read(true);
    }
    let file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !append => return Ok(None),
        // O_NOFOLLOW on a symlink: ELOOP.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refuse(
                "is a symlink; name the history file by its real path",
            ));
        }
        // Opening a directory to write, or a FIFO nobody reads without blocking.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR | libc::ENXIO)) => {
            return Err(refuse(
                "is not a regular file (a directory, device, FIFO or socket)",
            ));
        }
        Err(e) => {
            return Err(HistoryError::Io {
                path: path.to_owned(),
                action: "open",
                source: e,
            });
        }
    };
    let meta = file.metadata().map_err(|source| HistoryError::Io {
        path: path.to_owned(),
        action: "inspect",
        source,
    })?;
    if !meta.is_file() {
        return Err(refuse(
            "is not a regular file (a directory, device, FIFO or socket)",
        ));
    }
    if meta.len() > MAX_HISTORY_BYTES {
        return Err(refuse(&format!(
            "is {} bytes, larger than the cap of {} MiB; move it aside, or keep history in the registry",
            meta.len(),
            MAX_HISTORY_BYTES >> 20
        )));
    }
    Ok(Some(file))
}

/// Every well-formed sample of a JSONL file, in file order, with a warning per skipped line.
/// A missing file is an empty history; anything but a regular file of at most
/// [`MAX_HISTORY_BYTES`] is refused ([`HistoryError::NotAHistoryFile`]).
pub fn read_samples(
    path: &Path,
    mut each: impl FnMut(Sample),
) -> Result<Vec<String>, HistoryError> {
    let io = |action| {
        move |source| HistoryError::Io {
            path: path.to_owned(),
            action,
            source,
        }
    };
    let Some(file) = open_checked(path, false)? else {
        return Ok(Vec::new());
    };
    file.lock_shared().map_err(io("lock"))?;
    let mut warnings = Vec::new();
    // The size was checked; a file that grows meanwhile is read up to the cap only.
    let mut reader = BufReader::new(std::io::Read::take(&file, MAX_HISTORY_BYTES));
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io("read"))? == 0 {
            break;
        }
        number += 1;
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Sample>(text) {
            Ok(sample) => each(sample),
            Err(e) => warnings.push(format!(
                "history file {} line {number}: skipped, not a valid sample: {e}",
                path.display()
            )),
        }
    }
    Ok(warnings)
}

impl HistoryStore for FileStore {
    fn recent(&self, key: &HistoryKey, window: usize) -> Result<Recent, HistoryError> {
        let mut samples = VecDeque::with_capacity(window + 1);
        let warnings = read_samples(&self.path, |sample| {
            if sample.outcome == Outcome::Ok && key.matches(&sample) {
                if samples.len() == window {
                    samples.pop_front();
                }
                samples.push_back(sample);
            }
        })?;
        Ok(Recent {
            samples: samples.into(),
            warnings,
        })
    }

    fn append(&self, sample: &Sample) -> Result<(), HistoryError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(self.io("create the directory of"))?;
        }
        let mut line = serde_json::to_vec(sample).expect("a Sample always serializes");
        line.push(b'\n');
        let mut file = open_checked(&self.path, true)?.expect("append creates the file");
        file.lock().map_err(self.io("lock"))?;
        file.write_all(&line).map_err(self.io("append to"))?;
        // The lock is released when `file` closes.
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(repo: &str, peak: u64, outcome: Outcome) -> Sample {
        Sample {
            ts: "2026-11-01T00:00:00Z".into(),
            repo: repo.into(),
            dockerfile: "Dockerfile".into(),
            target: None,
            lang: Some("rust".into()),
            tier: Some("cx33".into()),
            peak_memory_mib: peak,
            arch: None,
            duration_s: 60.0,
            outcome,
        }
    }

    fn key(repo: &str) -> HistoryKey {
        HistoryKey {
            repo: repo.into(),
            dockerfile: "Dockerfile".into(),
            target: None,
            arch: crate::config::Arch::Amd64,
        }
    }

    #[test]
    fn recent_keeps_the_last_window_of_successful_samples_of_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("sub/h.jsonl"));
        for i in 0..10 {
            store.append(&sample("a/x", 100 + i, Outcome::Ok)).unwrap();
            store.append(&sample("a/y", 900, Outcome::Ok)).unwrap();
        }
        store.append(&sample("a/x", 5000, Outcome::Oom)).unwrap();
        let recent = store.recent(&key("a/x"), 3).unwrap();
        let peaks: Vec<_> = recent.samples.iter().map(|s| s.peak_memory_mib).collect();
        assert_eq!(peaks, [107, 108, 109]);
        assert!(recent.warnings.is_empty());
    }

    #[test]
    fn a_corrupt_line_is_skipped_with_file_and_line_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let store = FileStore::new(path.clone());
        store.append(&sample("a/x", 100, Outcome::Ok)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"ts\": oops\n")
            .unwrap();
        store.append(&sample("a/x", 200, Outcome::Ok)).unwrap();
        let recent = store.recent(&key("a/x"), 30).unwrap();
        assert_eq!(recent.samples.len(), 2);
        assert_eq!(recent.warnings.len(), 1);
        assert!(
            recent.warnings[0].contains(&format!("{} line 2:", path.display())),
            "{}",
            recent.warnings[0]
        );
    }

    #[test]
    fn a_missing_file_is_an_empty_history() {
        let store = FileStore::new("/nonexistent/dir/h.jsonl".into());
        assert!(store.recent(&key("a/x"), 30).unwrap().samples.is_empty());
    }

    /// What a `history: file:…` setting may name instead of a history file: each is refused
    /// at once, naming the file, and nothing is read from it.
    #[test]
    fn devices_fifos_symlinks_and_huge_files_are_refused_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let huge = dir.path().join("huge.jsonl");
        // Sparse: the size is what counts, not the blocks.
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(MAX_HISTORY_BYTES + 1)
            .unwrap();
        let cases = [
            ("/dev/zero".into(), "is not a regular file"),
            (fifo, "is not a regular file"),
            (link, "is a symlink"),
            (huge, "larger than the cap of 16 MiB"),
            (dir.path().to_owned(), "is not a regular file"),
        ];
        for (path, expect) in cases {
            let store = FileStore::new(path.clone());
            let err = store.recent(&key("a/x"), 30).unwrap_err();
            assert!(
                matches!(err, HistoryError::NotAHistoryFile { .. }),
                "{}: {err}",
                path.display()
            );
            let line = err.to_string();
            assert!(
                line.starts_with(&format!("history file {}: ", path.display())),
                "{line}"
            );
            assert!(line.contains(expect), "{line}");
            // Appending is refused the same way (a FIFO would block an append-open).
            let err = store.append(&sample("a/x", 1, Outcome::Ok)).unwrap_err();
            assert!(matches!(err, HistoryError::NotAHistoryFile { .. }), "{err}");
        }
        // A name that would drive the terminal is printed escaped.
        let escape = dir.path().join("\u{1b}[31mred");
        std::fs::create_dir(&escape).unwrap();
        let line = FileStore::new(escape)
            .recent(&key("a/x"), 30)
            .unwrap_err()
            .to_string();
        assert!(
            line.contains("\\u{1b}[31mred: is not a regular file"),
            "{line}"
        );
        // At the cap it is read.
        let at_cap = dir.path().join("at-cap.jsonl");
        std::fs::File::create(&at_cap)
            .unwrap()
            .set_len(MAX_HISTORY_BYTES)
            .unwrap();
        let recent = FileStore::new(at_cap).recent(&key("a/x"), 30).unwrap();
        assert!(recent.samples.is_empty());
    }

    #[test]
    fn concurrent_appends_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let writers = 16;
        let per_writer = 200;
        std::thread::scope(|scope| {
            for w in 0..writers {
                let path = path.clone();
                scope.spawn(move || {
                    // Each writer opens its own descriptor, as separate processes would.
                    let store = FileStore::new(path);
                    let mut s = sample(&format!("repo/{w}"), 0, Outcome::Ok);
                    s.lang = Some("x".repeat(3000)); // lines larger than PIPE_BUF
                    for i in 0..per_writer {
                        s.peak_memory_mib = i;
                        store.append(&s).unwrap();
                    }
                });
            }
        });
        let mut count = 0;
        let warnings = read_samples(&path, |_| count += 1).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(count, writers * per_writer as usize);
    }
}
