//! Evaluating Nickel files against an embedded contract: the one way the launcher reads Nickel.
//!
//! Both the launcher config and a repository's `.build-spec.ncl` go through [`evaluate`]. Three
//! guarantees matter, because a spec arrives in a pull request and is untrusted:
//!
//! - **Imports stay inside a root.** Before Nickel reads anything, every file the program would
//!   import is parsed and each `import` path resolved (symlinks included); an absolute path, a
//!   `..` that leaves the root or a package import is refused. Nickel only ever opens files this
//!   pre-pass has already checked, so a spec cannot read the plugin's token files.
//! - **Evaluation is bounded in time.** It runs on its own thread; past the deadline the caller
//!   gets an error and the process moves on (a CLI run then exits, which ends the thread).
//! - **Errors are one line** with `file:line:column`, the message and Nickel's most useful note.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nickel_lang_core::error::{Diagnostic, IntoDiagnostics, LabelStyle};
use nickel_lang_core::eval::cache::CacheImpl;
use nickel_lang_core::files::{FileId, Files};
use nickel_lang_core::program::{Program, ProgramBuilder};
use nickel_lang_parser::ErrorTolerantParser;
use nickel_lang_parser::ast::{Ast, AstAlloc, Import, Node};
use nickel_lang_parser::grammar::TermParser;
use nickel_lang_parser::lexer::Lexer;
use nickel_lang_parser::traverse::{TraverseAlloc, TraverseControl};
use serde::de::DeserializeOwned;

/// Nickel evaluation recurses deeply on nested data; give it a stack it cannot reasonably exhaust.
const EVAL_STACK_BYTES: usize = 256 * 1024 * 1024;

/// An embedded contract: its source text and the name it is reported under.
#[derive(Debug, Clone, Copy)]
pub struct Contract {
    pub name: &'static str,
    pub source: &'static str,
    /// Appended to an "extra field" error: what the fields may be.
    pub fields_hint: &'static str,
}

/// What a failed evaluation looked like. Every variant renders as one line.
#[derive(Debug, thiserror::Error)]
pub enum NclError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: import \"{import}\" is refused: {why}", file.display())]
    ImportRefused {
        file: PathBuf,
        import: String,
        why: &'static str,
    },
    #[error("{}: evaluation took longer than {} ms and was stopped", path.display(), limit.as_millis())]
    Timeout { path: PathBuf, limit: Duration },
    /// A Nickel diagnostic flattened to one line (`file:line:col: message: detail`).
    #[error("{0}")]
    Nickel(String),
    #[error("{}: {message}", path.display())]
    Shape { path: PathBuf, message: String },
}

/// Evaluate `path` (or `{}` when `None`) against `contract` and deserialize the result.
///
/// `root` confines imports: every file the program imports must resolve to a path inside it.
pub fn evaluate<T>(
    path: Option<&Path>,
    root: &Path,
    contract: Contract,
    timeout: Duration,
) -> Result<T, NclError>
where
    T: DeserializeOwned + Send + 'static,
{
    let main = match path {
        Some(path) => {
            let path = std::path::absolute(path).map_err(|source| NclError::Read {
                path: path.to_owned(),
                source,
            })?;
            let root = root.canonicalize().map_err(|source| NclError::Read {
                path: root.to_owned(),
                source,
            })?;
            check_imports(&path, &root)?;
            Some(path)
        }
        None => None,
    };
    let shown = main
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("<{}>", contract.name)));
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("nickel-eval".into())
        .stack_size(EVAL_STACK_BYTES)
        .spawn(move || {
            let _ = tx.send(run_program::<T>(main.as_deref(), contract));
        })
        .map_err(|source| NclError::Read {
            path: shown.clone(),
            source,
        })?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(NclError::Timeout {
            path: shown,
            limit: timeout,
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(NclError::Nickel(format!(
            "{}: the Nickel evaluator stopped without an answer",
            shown.display()
        ))),
    }
}

/// Build the program `(import "<file>") | (<contract>)`, evaluate it, deserialize.
fn run_program<T: DeserializeOwned>(
    main: Option<&Path>,
    contract: Contract,
) -> Result<T, NclError> {
    let value_expr = match main {
        Some(path) => format!("(import \"{}\")", escape_string(path)),
        None => "{}".to_owned(),
    };
    let source = format!("{value_expr}\n| (\n{}\n)\n", contract.source);
    let mut program: Program<CacheImpl> = ProgramBuilder::new()
        .add_source_string(source, format!("<{}>", contract.name))
        .build()
        .map_err(|e| NclError::Nickel(format!("<{}>: {e}", contract.name)))?;
    let value = program.eval_full_for_export().map_err(|error| {
        let mut line = one_line(&mut program.files(), error);
        if line.contains("extra field") {
            line.push_str(if line.ends_with(['?', '.']) {
                " "
            } else {
                "; "
            });
            line.push_str(contract.fields_hint);
        }
        NclError::Nickel(line)
    })?;
    T::deserialize(value).map_err(|e| NclError::Shape {
        path: main.map_or_else(|| PathBuf::from(contract.name), Path::to_owned),
        message: e.to_string(),
    })
}

/// Quote a path for a Nickel string literal.
fn escape_string(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '\\' | '"' | '%' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// Flatten Nickel's first diagnostic into `file:line:col: message: label; note`.
fn one_line(files: &mut Files, error: impl IntoDiagnostics) -> String {
    let diagnostics = error.into_diagnostics(files);
    let Some(diag) = diagnostics.first() else {
        return "Nickel reported an error without a description".to_owned();
    };
    flatten(files, diag)
}

fn flatten(files: &Files, diag: &Diagnostic<FileId>) -> String {
    // Prefer a label in a real file (the user's), else any primary label.
    let in_user_file = |id: FileId| !files.is_stdlib(id) && !name_of(files, id).starts_with('<');
    let label = diag
        .labels
        .iter()
        .find(|l| l.style == LabelStyle::Primary && in_user_file(l.file_id))
        .or_else(|| diag.labels.iter().find(|l| in_user_file(l.file_id)))
        .or_else(|| diag.labels.iter().find(|l| l.style == LabelStyle::Primary));
    let mut line = String::new();
    if let Some(label) = label {
        line.push_str(&name_of(files, label.file_id));
        let (row, col) = line_col(files.source(label.file_id), label.range.start);
        line.push_str(&format!(":{row}:{col}"));
        line.push_str(": ");
    }
    // Nickel puts a contract's own message on the lines after its headline.
    let message: Vec<&str> = diag
        .message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    line.push_str(&message.join(": "));
    // Contract failures carry the useful text (our validators' messages) in labels and notes.
    let mut details: Vec<String> = Vec::new();
    if let Some(label) = label {
        let text = label.message.trim();
        if !text.is_empty() && !is_generic_label(text) {
            details.push(text.to_owned());
        }
    }
    for note in &diag.notes {
        let note = note.trim();
        if !note.is_empty() && !is_generic_note(note) {
            details.push(note.to_owned());
            break;
        }
    }
    for detail in details {
        line.push_str(": ");
        line.push_str(&detail);
    }
    // One line, whatever Nickel's formatting.
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// 1-based line and column (in characters) of a byte offset; past the end means the end.
fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let row = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (row, col)
}

fn name_of(files: &Files, id: FileId) -> String {
    files.name(id).to_string_lossy().into_owned()
}

fn is_generic_label(text: &str) -> bool {
    matches!(
        text,
        "applied to this expression" | "evaluated to this expression" | "bound here"
    )
}

fn is_generic_note(note: &str) -> bool {
    note.starts_with("Either change the")
        || note.starts_with("Did you mean")
        || note.starts_with("Use `std.contract")
}

/// Walk the import graph from `main`, refusing any file that would leave `root`.
///
/// Nickel resolves an import lexically against the importing file's (lexically normalized)
/// path and lets the OS follow symlinks when it opens the result. This walk tracks exactly those
/// lexical paths and checks where each really points, so it judges the very file Nickel would
/// open. A file that does not parse is not followed further: Nickel fails on the same syntax
/// error before it resolves that file's imports.
fn check_imports(main: &Path, root: &Path) -> Result<(), NclError> {
    let main = lexical_normalize(main);
    confine(&main, root).map_err(|why| NclError::ImportRefused {
        file: main.clone(),
        import: main.display().to_string(),
        why,
    })?;
    let mut seen = std::collections::HashSet::new();
    let mut queue = vec![main];
    while let Some(file) = queue.pop() {
        if !seen.insert(file.clone()) {
            continue;
        }
        let Ok(source) = std::fs::read_to_string(&file) else {
            // Missing or unreadable: Nickel reports it with the import's position.
            continue;
        };
        for import in imports_of(&source) {
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

/// Require that `path`, as the OS resolves it (symlinks included), lies under `root`.
fn confine(path: &Path, root: &Path) -> Result<(), &'static str> {
    let real = match path.canonicalize() {
        Ok(real) => real,
        // Does not exist: judge the lexical path, so a `..` escape is still named as one.
        Err(_) => lexical_normalize(path),
    };
    if real.starts_with(root) {
        Ok(())
    } else {
        Err("it resolves outside the repository")
    }
}

fn lexical_normalize(path: &Path) -> PathBuf {
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

enum ImportPath {
    Path(PathBuf),
    Package(String),
}

/// The import expressions of one Nickel source, found by parsing it (not by text search).
fn imports_of(source: &str) -> Vec<ImportPath> {
    let alloc = AstAlloc::new();
    let mut files = Files::empty();
    let id = files.add("<scan>", source);
    let Ok(ast) = TermParser::new().parse_strict(&alloc, id, Lexer::new(source)) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let _: Option<()> = ast.traverse_ref(
        &mut |node: &Ast<'_>, _: &()| {
            if let Node::Import(import) = &node.node {
                found.push(match import {
                    Import::Path { path, .. } => ImportPath::Path(PathBuf::from(*path as &OsStr)),
                    Import::Package { id } => ImportPath::Package(id.to_string()),
                });
            }
            TraverseControl::Continue
        },
        &(),
    );
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_quotes_and_interpolation() {
        assert_eq!(escape_string(Path::new("a\"b%{c}")), "a\\\"b\\%{c}");
    }

    #[test]
    fn finds_imports_by_parsing_not_by_text() {
        let src = r#"
            # import "/etc/passwd" in a comment is not an import
            let x = import "a.ncl" in
            { s = "import \"nope\"", y = import "../b.ncl" as 'Text, z = x }
        "#;
        let paths: Vec<String> = imports_of(src)
            .into_iter()
            .map(|i| match i {
                ImportPath::Path(p) => p.display().to_string(),
                ImportPath::Package(p) => format!("pkg:{p}"),
            })
            .collect();
        assert_eq!(paths.len(), 2, "{paths:?}");
        assert!(paths.contains(&"a.ncl".to_owned()));
        assert!(paths.contains(&"../b.ncl".to_owned()));
    }

    #[test]
    fn line_col_counts_from_one_and_clamps_at_the_end() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab\ncd", 99), (2, 3));
        assert_eq!(line_col("é", 1), (1, 1));
    }

    #[test]
    fn lexical_normalize_collapses_parent_dirs() {
        assert_eq!(
            lexical_normalize(Path::new("/repo/sub/../../etc/x")),
            PathBuf::from("/etc/x")
        );
    }
}
