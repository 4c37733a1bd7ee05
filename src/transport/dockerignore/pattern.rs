//! One `.dockerignore` pattern: compiled as Docker's `compile` would (see the parent module for
//! the sources), and matched without recursion or backtracking, every step paid from a
//! [`Budget`].

use super::{Budget, Spent};

/// Docker's four match types. Patterns without regexp syntax are compared as plain strings,
/// which is observable: `**foo` is a string suffix and also matches `barfoo`.
#[derive(Debug, Clone)]
pub(super) enum Matcher {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Tokens(Vec<Tok>),
}

/// One piece of the regexp Docker would build: `*` → `[^/]*` (Star), `?` → `[^/]` (Quest),
/// `**` or `**/` before more pattern → `(.*/)?` (AnyDirs), `**` at the end → `.*` (Rest), and an
/// unescaped `^` outside a class, which reaches the regexp as a start-of-text anchor (Start).
#[derive(Debug, Clone)]
pub(super) enum Tok {
    Lit(char),
    Star,
    Quest,
    /// `[...]`: negated, ranges.
    Class(bool, Vec<(char, char)>),
    AnyDirs,
    Rest,
    Start,
}

/// Builds the matcher Docker's `compile` would, rejecting what `filepath.Match(p, ".")` rejects
/// (Docker calls it only for that error) and the constructs named in the module doc.
pub(super) fn compile(p: &str) -> Result<Matcher, &'static str> {
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
    pub(super) fn matches(&self, path: &str, budget: &mut Budget) -> Result<bool, Spent> {
        match self {
            Matcher::Exact(s) | Matcher::Prefix(s) | Matcher::Suffix(s) => {
                budget.spend(1 + s.len().min(path.len()))?;
            }
            Matcher::Tokens(_) => {}
        }
        Ok(match self {
            Matcher::Exact(s) => path == s,
            Matcher::Prefix(s) => path.starts_with(s.as_str()),
            Matcher::Suffix(s) => path.ends_with(s.as_str()) || s.strip_prefix('/') == Some(path),
            Matcher::Tokens(toks) => tokens_match(toks, path, budget)?,
        })
    }
}

/// Whole-string match of the regexp Docker builds, without recursion or backtracking: the set
/// of places in `toks` the text may have reached is advanced one character at a time
/// (Thompson's construction). State `t` is "before token `t`" (`toks.len()`: matched all);
/// state `toks.len() + 1 + t` is "inside the `(.*/)?` of the `AnyDirs` at `t`". So a match
/// costs at most 2 × (tokens + 1) steps per character, whatever the pattern, and every step
/// is paid from `budget`.
fn tokens_match(toks: &[Tok], path: &str, budget: &mut Budget) -> Result<bool, Spent> {
    let n = toks.len();
    budget.spend(n + 1)?;
    // seen[state] == stamp: the state is in the set for the current position already.
    let mut seen = vec![usize::MAX; 2 * (n + 1)];
    let mut current = Vec::new();
    let mut next = Vec::new();
    enter(toks, &mut seen, &mut current, 0, 0);
    for (at, c) in path.chars().enumerate() {
        if current.is_empty() {
            return Ok(false);
        }
        budget.spend(current.len())?;
        let stamp = at + 1;
        next.clear();
        for &state in &current {
            if state > n {
                // Inside `(.*/)?`: Go's `.` is anything but a newline; a `/` may end it.
                let t = state - n - 1;
                if c != '\n' {
                    enter(toks, &mut seen, &mut next, state, stamp);
                }
                if c == '/' {
                    enter(toks, &mut seen, &mut next, t + 1, stamp);
                }
                continue;
            }
            let advance = match toks.get(state) {
                Some(Tok::Lit(l)) => (c == *l).then_some(state + 1),
                Some(Tok::Quest) => (c != '/').then_some(state + 1),
                Some(Tok::Class(negated, ranges)) => {
                    let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                    (inside != *negated).then_some(state + 1)
                }
                Some(Tok::Star) => (c != '/').then_some(state),
                Some(Tok::Rest) => (c != '\n').then_some(state),
                Some(Tok::AnyDirs | Tok::Start) | None => None,
            };
            if let Some(to) = advance {
                enter(toks, &mut seen, &mut next, to, stamp);
            }
        }
        std::mem::swap(&mut current, &mut next);
    }
    Ok(current.contains(&n))
}

/// Adds `state` to `set` with every state reachable from it without reading a character:
/// past a `*`, `**` or `(.*/)?` that matches nothing, into an `(.*/)?`, past a `^` at the start.
fn enter(toks: &[Tok], seen: &mut [usize], set: &mut Vec<usize>, mut state: usize, stamp: usize) {
    let n = toks.len();
    loop {
        if seen[state] == stamp {
            return;
        }
        seen[state] = stamp;
        set.push(state);
        if state > n {
            return;
        }
        match toks.get(state) {
            Some(Tok::Star | Tok::Rest) => state += 1,
            Some(Tok::AnyDirs) => {
                let inside = n + 1 + state;
                if seen[inside] != stamp {
                    seen[inside] = stamp;
                    set.push(inside);
                }
                state += 1;
            }
            Some(Tok::Start) if stamp == 0 => state += 1,
            _ => return,
        }
    }
}
