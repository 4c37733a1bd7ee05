//! The import pre-pass: which files a Nickel program would read, checked before Nickel reads any.
//!
//! This is the second layer behind the sandbox ([`super::sandbox`]): it runs inside the sandboxed
//! child and fails closed. Imports are found from Nickel's own lexer, not from its syntax tree:
//! `import` is a keyword, so every import expression starts with that token wherever the grammar
//! puts it (a field, a pattern's default value or annotation, a type, an enum row's argument, a
//! string interpolation...). A position the tree walk forgets cannot hide one from a token scan.
//!
//! Every file is also held to the input caps: a regular file (no device, FIFO or socket), at most
//! [`MAX_FILE_BYTES`], at most [`MAX_TOKENS`] tokens and [`MAX_DEPTH`] open brackets deep, so that
//! nothing recursive in the parser or evaluator can be driven into a stack overflow.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use nickel_lang_parser::lexer::{Lexer, MultiStringToken, NormalToken, StringToken, Token};

use super::NclError;

/// A spec is a few lines; anything near this is not a spec.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Files one program may consist of (the main file and everything it imports).
pub const MAX_FILES: usize = 32;
/// Tokens per file; also bounds the depth of any syntax tree built from it.
pub const MAX_TOKENS: usize = 20_000;
/// Brackets, braces, parentheses and interpolations open at once.
pub const MAX_DEPTH: usize = 64;

/// Walk the import graph from `main`, refusing any file that would leave `root`, that cannot be
/// resolved with certainty, or that breaks an input cap.
///
/// Nickel resolves an import lexically against the importing file's (lexically normalized) path
/// and lets the OS follow symlinks when it opens the result. This walk tracks exactly those
/// lexical paths and checks where each really points, so it judges the very file Nickel would
/// open.
pub fn check(main: &Path, root: &Path) -> Result<(), NclError> {
    let main = lexical_normalize(main);
    confine(&main, root).map_err(|why| NclError::ImportRefused {
        file: main.clone(),
        import: main.display().to_string(),
        why,
    })?;
    let mut seen = HashSet::new();
    let mut queue = vec![main];
    while let Some(file) = queue.pop() {
        if !seen.insert(file.clone()) {
            continue;
        }
        if seen.len() > MAX_FILES {
            return Err(NclError::Limit {
                path: file,
                what: format!("the program imports more than {MAX_FILES} files"),
            });
        }
        let source = read_capped(&file)?;
        for import in imports_of(&file, &source)? {
            let refuse = |import: String, why| NclError::ImportRefused {
                file: file.clone(),
                import,
                why,
            };
            let target = match import {
                ImportPath::Package(id) => {
                    return Err(refuse(id, "package imports are not allowed here"));
                }
                ImportPath::Path(target) => target,
            };
            let literal = target.display().to_string();
            if target.is_absolute() {
                return Err(refuse(
                    literal,
                    "absolute paths are not allowed; import files of the repository by relative path",
                ));
            }
            let next = lexical_normalize(&file.parent().unwrap_or(root).join(&target));
            confine(&next, root).map_err(|why| refuse(literal, why))?;
            queue.push(next);
        }
    }
    Ok(())
}

/// Read a file that must be a regular file within the size cap. Opened without blocking (a FIFO
/// planted by a symlink does not hang the open) and checked on the open descriptor.
pub fn read_capped(path: &Path) -> Result<String, NclError> {
    let read_error = |source| NclError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(NclError::Limit {
            path: path.to_owned(),
            what: "not a regular file (a device, FIFO, socket or directory)".into(),
        });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(NclError::Limit {
            path: path.to_owned(),
            what: format!("larger than {} KiB", MAX_FILE_BYTES / 1024),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(NclError::Limit {
            path: path.to_owned(),
            what: format!("larger than {} KiB", MAX_FILE_BYTES / 1024),
        });
    }
    String::from_utf8(bytes).map_err(|_| NclError::Limit {
        path: path.to_owned(),
        what: "not valid UTF-8".into(),
    })
}

/// Require that `path`, as the OS resolves it (symlinks included), lies under `root`. Fails
/// closed: a path that cannot be resolved (too long, a symlink loop, no permission) is refused.
/// Only a file that does not exist is judged by its parent directory, so that Nickel can report
/// it as missing with the import's position.
fn confine(path: &Path, root: &Path) -> Result<(), &'static str> {
    let real = match path.canonicalize() {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path.parent().ok_or("it cannot be resolved")?;
            let name = path.file_name().ok_or("it cannot be resolved")?;
            match parent.canonicalize() {
                Ok(parent) => parent.join(name),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err("it does not exist");
                }
                Err(_) => return Err("it cannot be resolved with certainty"),
            }
        }
        Err(_) => return Err("it cannot be resolved with certainty"),
    };
    if real.starts_with(root) {
        Ok(())
    } else {
        Err("it resolves outside the repository")
    }
}

pub fn lexical_normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[derive(Debug, PartialEq)]
pub enum ImportPath {
    Path(PathBuf),
    Package(String),
}

/// The imports of one Nickel source, from its tokens, and the caps on its shape.
///
/// An import is `import "<plain string>"` or `import <package>`; anything else after the keyword
/// (an escape, an interpolation, a multi-line string) is refused rather than interpreted, since
/// this scan must never read a path differently from Nickel.
pub fn imports_of(file: &Path, source: &str) -> Result<Vec<ImportPath>, NclError> {
    let limit = |what: String| NclError::Limit {
        path: file.to_owned(),
        what,
    };
    let mut tokens = Vec::new();
    for token in Lexer::new(source) {
        match token {
            Ok((start, token, _)) => tokens.push((start, token)),
            // Nickel fails on the same input; say where, without guessing at what follows.
            Err(_) => {
                let at = tokens.last().map_or(0, |(start, _)| *start);
                let (line, col) = super::line_col(source, at);
                return Err(limit(format!(
                    "cannot be read as Nickel after line {line}, column {col}"
                )));
            }
        }
        if tokens.len() > MAX_TOKENS {
            return Err(limit(format!("more than {MAX_TOKENS} tokens")));
        }
    }
    let mut depth = 0usize;
    for (start, token) in &tokens {
        match token {
            Token::Normal(NormalToken::LBrace | NormalToken::LBracket | NormalToken::LParen)
            | Token::Str(StringToken::Interpolation) => depth += 1,
            Token::MultiStr(MultiStringToken::Interpolation) => depth += 1,
            Token::Normal(NormalToken::RBrace | NormalToken::RBracket | NormalToken::RParen) => {
                depth = depth.saturating_sub(1)
            }
            _ => {}
        }
        if depth > MAX_DEPTH {
            let (line, col) = super::line_col(source, *start);
            return Err(limit(format!(
                "nests more than {MAX_DEPTH} levels deep (line {line}, column {col})"
            )));
        }
    }
    let mut found = Vec::new();
    for (i, (start, token)) in tokens.iter().enumerate() {
        if !matches!(token, Token::Normal(NormalToken::Import)) {
            continue;
        }
        let (line, col) = super::line_col(source, *start);
        let refuse = |why: &'static str| NclError::ImportRefused {
            file: file.to_owned(),
            import: format!("at line {line}, column {col}"),
            why,
        };
        match tokens.get(i + 1).map(|(_, t)| t) {
            Some(Token::Normal(NormalToken::Identifier(id))) => {
                found.push(ImportPath::Package((*id).to_owned()));
            }
            Some(Token::Normal(NormalToken::DoubleQuote)) => {
                let mut path = String::new();
                let mut closed = false;
                for (_, next) in &tokens[i + 2..] {
                    match next {
                        Token::Str(StringToken::Literal(text)) => path.push_str(text),
                        Token::Normal(NormalToken::DoubleQuote) => {
                            closed = true;
                            break;
                        }
                        _ => {
                            return Err(refuse(
                                "the path must be a plain string (no escapes or interpolation)",
                            ));
                        }
                    }
                }
                if !closed || path.is_empty() {
                    return Err(refuse("the path must be a non-empty plain string"));
                }
                found.push(ImportPath::Path(PathBuf::from(path)));
            }
            _ => {
                return Err(refuse(
                    "an import must be followed by a plain string path (multi-line strings are not accepted)",
                ));
            }
        }
    }
    Ok(found)
}
