//! `file:PATH`: history as JSON lines.
//!
//! Appends take an exclusive `flock` on the file and write each line with one `write` on an
//! `O_APPEND` descriptor, so lines from concurrent processes never interleave; reads take a
//! shared lock, so they never see half a line. A line that does not parse is skipped with a
//! warning naming the file and line: one bad line must not cost the whole history.

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

/// Every well-formed sample of a JSONL file, in file order, with a warning per skipped line.
/// A missing file is an empty history.
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
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("open")(e)),
    };
    file.lock_shared().map_err(io("lock"))?;
    let mut warnings = Vec::new();
    let mut reader = BufReader::new(&file);
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
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(self.io("open"))?;
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
