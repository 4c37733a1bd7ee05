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
}

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
}

#[derive(Debug, Clone)]
struct Pattern {
    exception: bool,
    cleaned: String,
    matcher: Matcher,
}

/// Docker's four match types. Patterns without regexp syntax are compared as plain strings,
/// which is observable: `**foo` is a string suffix and also matches `barfoo`.
#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Tokens(Vec<Tok>),
}

/// One piece of the regexp Docker would build: `*` → `[^/]*` (Star), `?` → `[^/]` (Quest),
/// `**` or `**/` before more pattern → `(.*/)?` (AnyDirs), `**` at the end → `.*` (Rest), and an
/// unescaped `^` outside a class, which reaches the regexp as a start-of-text anchor (Start).
#[derive(Debug, Clone)]
enum Tok {
    Lit(char),
    Star,
    Quest,
    /// `[...]`: negated, ranges.
    Class(bool, Vec<(char, char)>),
    AnyDirs,
    Rest,
    Start,
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
        Ok(Dockerignore { patterns })
    }

    /// Is this path (relative, '/'-separated) excluded? Implements "last matching pattern wins", `!` exceptions.
    ///
    /// Evaluated directory by directory from the root, exactly as Docker's walk does, so the
    /// answer is the one [`context_entries`] acts on.
    pub fn is_excluded(&self, rel_path: &str) -> bool {
        let mut info: Option<Vec<bool>> = None;
        let mut path = String::new();
        let mut excluded = false;
        for part in rel_path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
            let (now, next) = self.evaluate(&path, info.as_deref());
            excluded = now;
            info = Some(next);
        }
        excluded
    }

    /// `MatchesUsingParentResults`: a pattern the parent directory matched counts as matched, and
    /// a pattern that cannot change the verdict is skipped and not recorded. The second rule is a
    /// quirk with a visible effect: after `dir`, `!dir/keep`, `dir` the file `dir/keep` is sent,
    /// because the final `dir` was skipped for `dir` itself and so is not inherited.
    fn evaluate(&self, path: &str, parent: Option<&[bool]>) -> (bool, Vec<bool>) {
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
                hit = pattern.matcher.matches(path);
            }
            info[i] = hit;
            if hit {
                matched = !pattern.exception;
            }
        }
        (matched, info)
    }

    /// fsutil's shortcut for an excluded directory: when every exception is a literal path
    /// (`onlyPrefixExcludeExceptions`), skip it unless an exception names something below it.
    /// The shortcut changes nothing but which directories are read.
    fn must_descend_excluded(&self, dir: &str) -> bool {
        let mut exceptions = self.patterns.iter().filter(|p| p.exception);
        let literal = |p: &&Pattern| !without_trailing_glob(&p.cleaned).contains(GLOB_CHARS);
        if !exceptions.clone().all(|p| literal(&p)) {
            return true;
        }
        let dir_slash = format!("{dir}/");
        exceptions
            .any(|p| format!("{}/", without_trailing_glob(&p.cleaned)).starts_with(&dir_slash))
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

/// Builds the matcher Docker's `compile` would, rejecting what `filepath.Match(p, ".")` rejects
/// (Docker calls it only for that error) and the constructs named in the module doc.
fn compile(p: &str) -> Result<Matcher, &'static str> {
    #[derive(PartialEq)]
    enum Ty {
        Exact,
        Prefix,
        Suffix,
        Regexp,
    }
    let cs: Vec<char> = p.chars().collect();
    let (mut ty, mut toks, mut i) = (Ty::Exact, Vec::new(), 0);
    while i < cs.len() {
        let first = i == 0;
        let ch = cs[i];
        i += 1;
        let tok = match ch {
            '*' if cs.get(i) == Some(&'*') => {
                i += 1;
                if cs.get(i) == Some(&'/') {
                    i += 1;
                }
                let at_end = i == cs.len();
                let tok = if at_end { Tok::Rest } else { Tok::AnyDirs };
                ty = match (first, at_end, ty) {
                    (true, _, _) => Ty::Suffix,
                    (false, true, Ty::Exact) => Ty::Prefix,
                    _ => Ty::Regexp,
                };
                tok
            }
            '*' | '?' | '\\' | '[' | ']' => {
                ty = Ty::Regexp;
                match ch {
                    '*' => Tok::Star,
                    '?' => Tok::Quest,
                    '\\' => {
                        let c = *cs.get(i).ok_or("trailing backslash")?;
                        i += 1;
                        Tok::Lit(escaped(c)?)
                    }
                    '[' => {
                        let (tok, next) = compile_class(&cs, i)?;
                        i = next;
                        tok
                    }
                    _ => Tok::Lit(']'),
                }
            }
            '^' => Tok::Start,
            c => Tok::Lit(c),
        };
        toks.push(tok);
    }
    Ok(match ty {
        Ty::Exact => Matcher::Exact(p.to_string()),
        Ty::Prefix => Matcher::Prefix(p[..p.len() - 2].to_string()),
        Ty::Suffix => Matcher::Suffix(p[2..].to_string()),
        Ty::Regexp => Matcher::Tokens(toks),
    })
}

/// What an escape means in Docker's regexp must equal what it means in a glob: the literal.
fn escaped(c: char) -> Result<char, &'static str> {
    if c.is_ascii_alphanumeric() || !c.is_ascii() {
        Err("escaping a letter, digit or non-ASCII character is not supported")
    } else {
        Ok(c)
    }
}

/// A `[...]` class after its `[`, with Go's rules: at least one item, no bare `-` or `]` as
/// an item, and each item followed by something.
fn compile_class(cs: &[char], mut i: usize) -> Result<(Tok, usize), &'static str> {
    let negated = cs.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if !ranges.is_empty() && cs.get(i) == Some(&']') {
            return Ok((Tok::Class(negated, ranges), i + 1));
        }
        let (lo, next) = class_char(cs, i)?;
        let (hi, next) = if cs[next] == '-' {
            class_char(cs, next + 1)?
        } else {
            (lo, next)
        };
        if hi < lo {
            return Err("reversed range in character class");
        }
        ranges.push((lo, hi));
        i = next;
    }
}

fn class_char(cs: &[char], i: usize) -> Result<(char, usize), &'static str> {
    const UNCLOSED: &str = "unclosed character class";
    let (c, next) = match cs.get(i) {
        None => return Err(UNCLOSED),
        Some('-' | ']') => return Err("malformed character class"),
        Some('*' | '?') => return Err("`*` or `?` inside [...] is not supported"),
        Some('[') if cs.get(i + 1) == Some(&':') => {
            return Err("`[:` inside [...] is not supported");
        }
        Some('\\') => (escaped(*cs.get(i + 1).ok_or(UNCLOSED)?)?, i + 2),
        Some(&c) => (c, i + 1),
    };
    if next >= cs.len() {
        return Err(UNCLOSED);
    }
    Ok((c, next))
}

impl Matcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            Matcher::Exact(s) => path == s,
            Matcher::Prefix(s) => path.starts_with(s.as_str()),
            Matcher::Suffix(s) => path.ends_with(s.as_str()) || s.strip_prefix('/') == Some(path),
            Matcher::Tokens(toks) => {
                let chars: Vec<char> = path.chars().collect();
                let mut memo = vec![None; (toks.len() + 1) * (chars.len() + 1)];
                tokens_match(toks, &chars, 0, 0, &mut memo)
            }
        }
    }
}

/// Whole-string regexp match by memoised backtracking; paths are short.
fn tokens_match(toks: &[Tok], s: &[char], t: usize, p: usize, memo: &mut [Option<bool>]) -> bool {
    let key = t * (s.len() + 1) + p;
    if let Some(known) = memo[key] {
        return known;
    }
    let not_slash = |p: usize| s.get(p).is_some_and(|&c| c != '/');
    let result = match toks.get(t) {
        None => p == s.len(),
        Some(Tok::Lit(c)) => s.get(p) == Some(c) && tokens_match(toks, s, t + 1, p + 1, memo),
        Some(Tok::Quest) => not_slash(p) && tokens_match(toks, s, t + 1, p + 1, memo),
        Some(Tok::Class(negated, ranges)) => {
            s.get(p)
                .is_some_and(|c| ranges.iter().any(|(lo, hi)| lo <= c && c <= hi) != *negated)
                && tokens_match(toks, s, t + 1, p + 1, memo)
        }
        Some(Tok::Star) => {
            tokens_match(toks, s, t + 1, p, memo)
                || (not_slash(p) && tokens_match(toks, s, t, p + 1, memo))
        }
        // Go's `.` does not match a newline; `[^/]` does.
        Some(Tok::AnyDirs) => {
            tokens_match(toks, s, t + 1, p, memo)
                || (p..s.len())
                    .take_while(|&j| s[j] != '\n')
                    .any(|j| s[j] == '/' && tokens_match(toks, s, t + 1, j + 1, memo))
        }
        Some(Tok::Rest) => (p..=s.len())
            .take_while(|&j| j == p || s[j - 1] != '\n')
            .any(|j| tokens_match(toks, s, t + 1, j, memo)),
        Some(Tok::Start) => p == 0 && tokens_match(toks, s, t + 1, p, memo),
    };
    memo[key] = Some(result);
    result
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
    };
    walk.visit(context, Path::new(""), None, false)?;
    for forced in [dockerfile_rel, PathBuf::from(".dockerignore"), specific] {
        // Not there (or not stat-able) means nothing to force; rsync would only fail on it.
        if context.join(&forced).symlink_metadata().is_ok() {
            walk.entries.insert(forced);
        }
    }
    // Docker sends the parents of anything it sends, even excluded ones; rsync needs them too.
    let with_parents: BTreeSet<&Path> = walk
        .entries
        .iter()
        .flat_map(|p| p.ancestors().filter(|a| !a.as_os_str().is_empty()))
        .collect();
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
}

impl Walk<'_> {
    /// Names are matched as lossy UTF-8 (Go sees raw bytes; only non-UTF-8 names can differ)
    /// but listed exactly as they are on disk.
    fn visit(
        &mut self,
        dir: &Path,
        rel_dir: &Path,
        parent_info: Option<&[bool]>,
        dir_excluded: bool,
    ) -> Result<(), DockerignoreError> {
        let listing = match fs::read_dir(dir) {
            Ok(listing) => listing,
            // fsutil, too, forgives an unreadable directory that would not be sent anyway.
            Err(e) if dir_excluded && e.kind() == io::ErrorKind::PermissionDenied => return Ok(()),
            Err(e) => return Err(io_error(dir, e)),
        };
        for entry in listing {
            let entry = entry.map_err(|e| io_error(dir, e))?;
            let rel = rel_dir.join(entry.file_name());
            let rel_str = rel.to_string_lossy();
            let file_type = entry.file_type().map_err(|e| io_error(&entry.path(), e))?;
            let (excluded, info) = self.rules.evaluate(&rel_str, parent_info);
            let descend =
                file_type.is_dir() && (!excluded || self.rules.must_descend_excluded(&rel_str));
            if descend {
                self.visit(&entry.path(), &rel, Some(&info), excluded)?;
            }
            if !excluded {
                self.entries.insert(rel);
            }
        }
        Ok(())
    }
}

mod files;
#[cfg(test)]
mod tests;

use files::read_rules;
pub use files::{MAX_IGNORE_BYTES, plain_file};
