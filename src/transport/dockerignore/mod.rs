//! Which entries of a local build context are sent to the build server: the `.dockerignore`
//! rules, reproduced so the launcher can hand rsync an explicit list (`--files-from=- --from0`).
//!
//! Docker's behaviour is defined by code, not by its docs, so this follows the code:
//! - reading the file: `ReadAll` in moby/patternmatcher `ignorefile/ignorefile.go`
//!   (<https://github.com/moby/patternmatcher/blob/main/ignorefile/ignorefile.go>);
//! - patterns: `New`, `compile`, `match` and `MatchesUsingParentResults` in
//!   <https://github.com/moby/patternmatcher/blob/main/patternmatcher.go>, with Go's
//!   `filepath.Match` (<https://pkg.go.dev/path/filepath#Match>) as the syntax check;
//! - walking: BuildKit's sender, `filterFS.Walk` in
//!   <https://github.com/tonistiigi/fsutil/blob/master/filter.go>;
//! - `<Dockerfile>.dockerignore` taking precedence over `.dockerignore`: BuildKit's dockerui
//!   frontend (<https://docs.docker.com/build/concepts/context/#dockerignore-files>).
//!
//! Docker turns each pattern into a Go regexp by a loop that does not know about `[...]`; the
//! few constructs where that translation departs from `filepath.Match` (an escaped letter, digit
//! or non-ASCII character, `*` or `?` or `[:` inside a class, a reversed range) are rejected as
//! bad patterns here instead of being imitated: Docker either fails on them or matches oddly.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DockerignoreError {
    #[error("{} line {line}: bad pattern {pattern:?}: {reason}", file.display())]
    BadPattern {
        file: PathBuf,
        line: usize,
        pattern: String,
        reason: &'static str,
    },
    #[error("{} is not valid UTF-8", .0.display())]
    NotUtf8(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("Dockerfile {0:?} is not a relative path inside the build context")]
    DockerfileOutsideContext(String),
    /// The Dockerfile or an ignore file is reached through a symlink, or is not a regular file.
    #[error("{}: {what}", path.display())]
    NotPlainFile { path: PathBuf, what: String },
    #[error(
        "{} line {line}: a pattern of {chars} characters, more than the cap of {MAX_PATTERN_CHARS} (no path is longer)",
        file.display()
    )]
    PatternTooLong {
        file: PathBuf,
        line: usize,
        chars: usize,
    },
    #[error(
        "{}: more than {MAX_PATTERNS} patterns (the cap); an ignore file this long is not one a person wrote",
        .0.display()
    )]
    TooManyPatterns(PathBuf),
    #[error(
        "{}: matching its patterns against the build context takes more than {MATCH_BUDGET} steps (the cap); use fewer or simpler patterns, or a smaller context",
        .0.display()
    )]
    TooMuchWork(PathBuf),
}

/// Patterns an ignore file may hold. Real ones hold tens; each costs work for every entry of
/// the context.
pub const MAX_PATTERNS: usize = 10_000;
/// Characters of one pattern: Linux names no path longer (`PATH_MAX`), so a longer pattern can
/// only be an attack on the matcher.
pub const MAX_PATTERN_CHARS: usize = 4096;
/// Matching steps (a state of a pattern advanced over one character, a pattern tried on an
/// entry, a string compared) allowed for the whole walk of a context; see docs/PERFORMANCE.md
/// for what this costs at most.
pub const MATCH_BUDGET: u64 = 1_000_000_000;

/// The steps left of [`MATCH_BUDGET`]; `Err(())` once spent.
#[derive(Debug)]
pub(crate) struct Budget(u64);

impl Budget {
    fn new() -> Budget {
        Budget(MATCH_BUDGET)
    }

    fn unlimited() -> Budget {
        Budget(u64::MAX)
    }

    fn spend(&mut self, steps: usize) -> Result<(), Spent> {
        self.0 = self.0.checked_sub(steps as u64).ok_or(Spent)?;
        Ok(())
    }
}

/// The matching budget ran out.
#[derive(Debug)]
pub(crate) struct Spent;

fn io_error(path: &Path, source: io::Error) -> DockerignoreError {
    DockerignoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The parsed patterns of a .dockerignore text.
#[derive(Debug, Clone, Default)]
pub struct Dockerignore {
    patterns: Vec<Pattern>,
    /// The ignore file, for messages.
    file: PathBuf,
}

#[derive(Debug, Clone)]
struct Pattern {
    exception: bool,
    cleaned: String,
    matcher: Matcher,
}

impl Dockerignore {
    pub fn parse(text: &str) -> Result<Dockerignore, DockerignoreError> {
        Self::parse_named(text, Path::new(".dockerignore"))
    }

    fn parse_named(text: &str, file: &Path) -> Result<Dockerignore, DockerignoreError> {
        let mut patterns = Vec::new();
        for (index, raw) in text.split('\n').enumerate() {
            let line = raw
                .strip_prefix('\u{feff}')
                .filter(|_| index == 0)
                .unwrap_or(raw);
            // Only a `#` in the very first column is a comment; ` # x` is the pattern `# x`.
            if line.starts_with('#') {
                continue;
            }
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            let chars = trimmed.chars().count();
            if chars > MAX_PATTERN_CHARS {
                return Err(DockerignoreError::PatternTooLong {
                    file: file.to_path_buf(),
                    line: index + 1,
                    chars,
                });
            }
            if patterns.len() == MAX_PATTERNS {
                return Err(DockerignoreError::TooManyPatterns(file.to_path_buf()));
            }
            let bad = |reason| DockerignoreError::BadPattern {
                file: file.to_path_buf(),
                line: index + 1,
                pattern: trimmed.to_string(),
                reason,
            };
            // ReadAll's normalisation, then patternmatcher.New's own trim-and-clean on the
            // result: the second pass is observable (`!/` becomes `!`, an error).
            let (invert, rest) = match trimmed.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, trimmed),
            };
            let mut read = Some(rest)
                .filter(|r| !r.is_empty())
                .map(go_clean)
                .unwrap_or_default();
            if read.len() > 1 && read.starts_with('/') {
                read.remove(0);
            }
            if invert {
                read.insert(0, '!');
            }
            let read = read.trim();
            if read.is_empty() {
                continue;
            }
            let cleaned = go_clean(read);
            let (exception, body) = match cleaned.strip_prefix('!') {
                Some("") => return Err(bad("`!` must be followed by a pattern")),
                Some(body) => (true, body.to_string()),
                None => (false, cleaned),
            };
            let matcher = compile(&body).map_err(bad)?;
            patterns.push(Pattern {
                exception,
                cleaned: body,
                matcher,
            });
        }
        Ok(Dockerignore {
            patterns,
            file: file.to_path_buf(),
        })
    }

    /// Is this path (relative, '/'-separated) excluded? Implements "last matching pattern wins", `!` exceptions.
    ///
    /// Evaluated directory by directory from the root, exactly as Docker's walk does, so the
    /// answer is the one [`context_entries`] acts on.
    pub fn is_excluded(&self, rel_path: &str) -> bool {
        let mut budget = Budget::unlimited();
        let mut info: Option<Vec<bool>> = None;
        let mut path = String::new();
        let mut excluded = false;
        for part in rel_path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
            let (now, next) = self
                .evaluate(&path, info.as_deref(), &mut budget)
                .expect("an unlimited budget is never spent");
            excluded = now;
            info = Some(next);
        }
        excluded
    }

    /// `MatchesUsingParentResults`: a pattern the parent directory matched counts as matched, and
    /// a pattern that cannot change the verdict is skipped and not recorded. The second rule is a
    /// quirk with a visible effect: after `dir`, `!dir/keep`, `dir` the file `dir/keep` is sent,
    /// because the final `dir` was skipped for `dir` itself and so is not inherited.
    ///
    /// Every pattern costs a step per entry, and each match its own steps, from `budget`.
    fn evaluate(
        &self,
        path: &str,
        parent: Option<&[bool]>,
        budget: &mut Budget,
    ) -> Result<(bool, Vec<bool>), Spent> {
        budget.spend(self.patterns.len())?;
        let mut matched = false;
        let mut info = vec![false; self.patterns.len()];
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = parent.is_some_and(|p| p[i]);
            if !hit {
                if pattern.exception != matched {
                    continue;
                }
                // Without parent results Docker also tries each parent directory; callers only
                // pass None for top-level entries, which have none.
                hit = pattern.matcher.matches(path, budget)?;
            }
            info[i] = hit;
            if hit {
                matched = !pattern.exception;
            }
        }
        Ok((matched, info))
    }

    /// fsutil's shortcut for an excluded directory: when every exception is a literal path
    /// (`onlyPrefixExcludeExceptions`), skip it unless an exception names something below it.
    /// The shortcut changes nothing but which directories are read.
    fn must_descend_excluded(&self, dir: &str, budget: &mut Budget) -> Result<bool, Spent> {
        budget.spend(self.patterns.len())?;
        let mut exceptions = self.patterns.iter().filter(|p| p.exception);
        let literal = |p: &&Pattern| !without_trailing_glob(&p.cleaned).contains(GLOB_CHARS);
        if !exceptions.clone().all(|p| literal(&p)) {
            return Ok(true);
        }
        let dir_slash = format!("{dir}/");
        Ok(exceptions
            .any(|p| format!("{}/", without_trailing_glob(&p.cleaned)).starts_with(&dir_slash)))
    }
}

const GLOB_CHARS: [char; 6] = ['*', '[', ']', '?', '^', '\\'];

fn without_trailing_glob(pattern: &str) -> &str {
    let p = pattern.strip_suffix("/**").unwrap_or(pattern);
    p.strip_suffix("/*").unwrap_or(p)
}

/// Go's `filepath.Clean` for '/'-separated paths.
fn go_clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|l| *l != "..") => {
                parts.pop();
            }
            ".." if rooted => {}
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Every entry of the context that Docker would send, as paths relative to the context root,
/// sorted, directories included (so empty directories are transferred too). The Dockerfile
/// (path relative to the context, e.g. "docker/Dockerfile.prod") and ".dockerignore" are always
/// included, whatever the patterns say (as Docker does), together with their parent directories.
///
/// The rules come from `<dockerfile>.dockerignore` if it exists, else `.dockerignore`, as
/// BuildKit does; both files are sent if present, so the server reads the same rules. A
/// Dockerfile or ignore file that does not exist is simply not listed. Symlinks are entries
/// of their own and never followed.
///
/// The repository is untrusted: the Dockerfile and the ignore files must be regular files
/// reached through no symlink at all (so nothing outside the context is read or sent, whatever
/// the path goes through), and an ignore file is read without blocking and within
/// [`MAX_IGNORE_BYTES`] (a FIFO, a device or a huge file is refused, not read).
pub fn context_entries(
    context: &Path,
    dockerfile: &str,
) -> Result<Vec<PathBuf>, DockerignoreError> {
    entries_within(context, dockerfile, Budget::new())
}

/// [`context_entries`] with `budget` for the matching.
fn entries_within(
    context: &Path,
    dockerfile: &str,
    budget: Budget,
) -> Result<Vec<PathBuf>, DockerignoreError> {
    let dockerfile_rel = inside_context(dockerfile)?;
    match plain_file(context, &dockerfile_rel)? {
        Some(()) => {}
        None => {
            return Err(DockerignoreError::NotPlainFile {
                path: context.join(&dockerfile_rel),
                what: "no Dockerfile there (set --dockerfile to a file inside the context)".into(),
            });
        }
    }
    let mut specific = dockerfile_rel.clone().into_os_string();
    specific.push(".dockerignore");
    let specific = PathBuf::from(specific);
    let rules = match read_rules(context, &specific)? {
        Some(rules) => rules,
        None => read_rules(context, Path::new(".dockerignore"))?.unwrap_or_default(),
    };

    let mut walk = Walk {
        rules: &rules,
        entries: BTreeSet::new(),
        budget,
    };
    walk.run(context)?;
    for forced in [dockerfile_rel, PathBuf::from(".dockerignore"), specific] {
        // Not there (or not stat-able) means nothing to force; rsync would only fail on it.
        if context.join(&forced).symlink_metadata().is_ok() {
            walk.entries.insert(forced);
        }
    }
    // Docker sends the parents of anything it sends, even excluded ones; rsync needs them too.
    // A path already there came with its parents, so each entry climbs only until it meets
    // one: linear in the entries, however deep the repository nests.
    let mut with_parents: BTreeSet<&Path> = BTreeSet::new();
    for entry in &walk.entries {
        for parent in entry.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            if !with_parents.insert(parent) {
                break;
            }
        }
    }
    Ok(with_parents.into_iter().map(Path::to_path_buf).collect())
}

fn inside_context(dockerfile: &str) -> Result<PathBuf, DockerignoreError> {
    let outside = || DockerignoreError::DockerfileOutsideContext(dockerfile.to_string());
    let mut rel = PathBuf::new();
    for component in Path::new(dockerfile).components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir if rel.pop() => {}
            _ => return Err(outside()),
        }
    }
    (!rel.as_os_str().is_empty())
        .then_some(rel)
        .ok_or_else(outside)
}

struct Walk<'a> {
    rules: &'a Dockerignore,
    entries: BTreeSet<PathBuf>,
    budget: Budget,
}

/// A directory still to read: where it is, its path in the context, its parent's pattern
/// results, and whether it is excluded.
struct Pending {
    dir: PathBuf,
    rel: PathBuf,
    info: Option<Vec<bool>>,
    excluded: bool,
}

impl Walk<'_> {
    /// Reads the context directory by directory from a list of those still to read (no
    /// recursion: the repository decides how deep it is). Names are matched as lossy UTF-8 (Go
    /// sees raw bytes; only non-UTF-8 names can differ) but listed exactly as they are on disk.
    fn run(&mut self, context: &Path) -> Result<(), DockerignoreError> {
        let mut pending = vec![Pending {
            dir: context.to_path_buf(),
            rel: PathBuf::new(),
            info: None,
            excluded: false,
        }];
        let file = self.rules.file.clone();
        let spent = |_| DockerignoreError::TooMuchWork(file.clone());
        while let Some(Pending {
            dir,
            rel,
            info,
            excluded,
        }) = pending.pop()
        {
            let listing = match fs::read_dir(&dir) {
                Ok(listing) => listing,
                // fsutil, too, forgives an unreadable directory that would not be sent anyway.
                Err(e) if excluded && e.kind() == io::ErrorKind::PermissionDenied => continue,
                Err(e) => return Err(io_error(&dir, e)),
            };
            for entry in listing {
                let entry = entry.map_err(|e| io_error(&dir, e))?;
                let rel = rel.join(entry.file_name());
                let rel_str = rel.to_string_lossy();
                let file_type = entry.file_type().map_err(|e| io_error(&entry.path(), e))?;
                let (entry_excluded, entry_info) = self
                    .rules
                    .evaluate(&rel_str, info.as_deref(), &mut self.budget)
                    .map_err(spent)?;
                let descend = file_type.is_dir()
                    && (!entry_excluded
                        || self
                            .rules
                            .must_descend_excluded(&rel_str, &mut self.budget)
                            .map_err(spent)?);
                if descend {
                    pending.push(Pending {
                        dir: entry.path(),
                        rel: rel.clone(),
                        info: Some(entry_info),
                        excluded: entry_excluded,
                    });
                }
                if !entry_excluded {
                    self.entries.insert(rel);
                }
            }
        }
        Ok(())
    }
}

mod files;
mod pattern;
#[cfg(test)]
mod tests;

use files::read_rules;
pub use files::{MAX_IGNORE_BYTES, plain_file};
use pattern::{Matcher, compile};
