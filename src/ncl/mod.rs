//! Evaluating Nickel files against an embedded contract: the one way the launcher reads Nickel.
//!
//! Both the launcher config and a repository's `.build-spec.ncl` go through [`evaluate`]. A spec
//! arrives in a pull request and is untrusted, so a file is evaluated in a sandboxed child
//! process ([`sandbox`]: empty environment, Landlock, rlimits, wall-clock limit), which first
//! runs the import pre-pass and the input caps ([`imports`]): every file the program would read
//! must resolve inside the root, be a regular file within the size cap and stay within the
//! token and nesting caps. Errors are one line with `file:line:column`, the message and
//! Nickel's most useful note.

mod imports;
pub use imports::read_capped;
pub mod sandbox;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nickel_lang_core::error::{Diagnostic, IntoDiagnostics, LabelStyle};
use nickel_lang_core::eval::cache::CacheImpl;
use nickel_lang_core::files::{FileId, Files};
use nickel_lang_core::program::{Program, ProgramBuilder};
use serde::de::DeserializeOwned;

/// In-process evaluation (embedded contracts, unit tests): a stack the caps cannot exhaust.
const EVAL_STACK_BYTES: usize = 64 * 1024 * 1024;

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
    /// An input cap or a resource limit of the sandbox.
    #[error("{}: refused: {what}", path.display())]
    Limit { path: PathBuf, what: String },
}

/// Evaluate `path` (or `{}` when `None`) against `contract` and deserialize the result.
///
/// `root` confines imports: every file the program imports must resolve to a path inside it.
/// `timeout` bounds the whole evaluation, parsing included. A file is evaluated in the sandboxed
/// child once [`sandbox::enable`] was called (the launcher always does); the embedded defaults
/// alone (`None`) are trusted and evaluated in-process.
pub fn evaluate<T>(
    path: Option<&Path>,
    root: &Path,
    contract: Contract,
    timeout: Duration,
) -> Result<T, NclError>
where
    T: DeserializeOwned + Send + 'static,
{
    let Some(path) = path else {
        return in_process(None, contract, timeout);
    };
    let path = std::path::absolute(path).map_err(|source| NclError::Read {
        path: path.to_owned(),
        source,
    })?;
    let root = root.canonicalize().map_err(|source| NclError::Read {
        path: root.to_owned(),
        source,
    })?;
    match sandbox::enabled() {
        Some(executable) => {
            let value = sandbox::evaluate(executable, &path, &root, contract, timeout)?;
            T::deserialize(value).map_err(|e| NclError::Shape {
                path: path.clone(),
                message: e.to_string(),
            })
        }
        None => {
            imports::check(&path, &root)?;
            in_process(Some(path), contract, timeout)
        }
    }
}

/// Evaluate on a thread of this process, bounded in time (a CLI run that times out exits, which
/// ends the thread).
fn in_process<T>(
    main: Option<PathBuf>,
    contract: Contract,
    timeout: Duration,
) -> Result<T, NclError>
where
    T: DeserializeOwned + Send + 'static,
{
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
pub(crate) fn run_program<T: DeserializeOwned>(
    main: Option<&Path>,
    contract: Contract,
) -> Result<T, NclError> {
    let value = eval(main, contract)?;
    T::deserialize(value).map_err(|e| NclError::Shape {
        path: main.map_or_else(|| PathBuf::from(contract.name), Path::to_owned),
        message: e.to_string(),
    })
}

/// The same, as JSON (Nickel's own export: whole numbers stay integers), for the sandbox's
/// answer.
pub(crate) fn run_program_json(
    main: Option<&Path>,
    contract: Contract,
) -> Result<serde_json::Value, NclError> {
    let value = eval(main, contract)?;
    serde_json::to_value(&value).map_err(|e| NclError::Shape {
        path: main.map_or_else(|| PathBuf::from(contract.name), Path::to_owned),
        message: e.to_string(),
    })
}

fn eval(
    main: Option<&Path>,
    contract: Contract,
) -> Result<nickel_lang_core::eval::value::NickelValue, NclError> {
    let value_expr = match main {
        Some(path) => format!("(import \"{}\")", escape_string(path)),
        None => "{}".to_owned(),
    };
    let source = format!("{value_expr}\n| (\n{}\n)\n", contract.source);
    let mut program: Program<CacheImpl> = ProgramBuilder::new()
        .add_source_string(source, format!("<{}>", contract.name))
        .build()
        .map_err(|e| NclError::Nickel(format!("<{}>: {e}", contract.name)))?;
    program.eval_full_for_export().map_err(|error| {
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
    if let Some(label) = label
        && message.first() == Some(&"unexpected token")
        && let Some(hint) = syntax_hint(files.source(label.file_id), label.range.start)
    {
        line.push_str(&format!(" ({hint})"));
    }
    // One line, whatever Nickel's formatting.
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What the common mistakes behind "unexpected token" at `offset` look like: a TOML-style file
/// of `key = value` lines without braces, or a field without its comma.
fn syntax_hint(source: &str, offset: usize) -> Option<String> {
    let code = |l: &&str| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    };
    let first = source.lines().find(code)?.trim();
    if !first.starts_with('{') && first.contains('=') {
        return Some(
            "a spec is a Nickel record: braces around the fields and a comma between them, as { memory_gb = 4, cpus = 2 }"
                .to_owned(),
        );
    }
    let (row, col) = line_col(source, offset);
    let lines: Vec<&str> = source.lines().collect();
    let at = lines.get(row - 1)?;
    // Nickel reads `4\n  cpus = 2` as `4 cpus` and stops at the `=`: the error stands at the
    // start of a line or just after the field name that begins it.
    let before: String = at.chars().take(col - 1).collect();
    let before = before.trim();
    let is_name = before
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !is_name {
        return None;
    }
    let (previous_row, previous) = lines[..row - 1]
        .iter()
        .enumerate()
        .rev()
        .find(|(_, l)| code(l))?;
    let end = previous.split(" #").next().unwrap_or(previous).trim_end();
    (!end.ends_with(',') && !end.ends_with('{') && !end.ends_with('['))
        .then(|| format!("a comma missing at the end of line {}?", previous_row + 1))
}

/// 1-based line and column (in characters) of a byte offset; past the end means the end.
pub(crate) fn line_col(source: &str, offset: usize) -> (usize, usize) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_quotes_and_interpolation() {
        assert_eq!(escape_string(Path::new("a\"b%{c}")), "a\\\"b\\%{c}");
    }

    #[test]
    fn unexpected_tokens_get_a_hint_for_the_common_mistakes() {
        let toml = "# sizes\nmemory_gb = 4\ncpus = 2\n";
        assert!(
            syntax_hint(toml, 18)
                .unwrap()
                .contains("braces around the fields")
        );
        let comma = "{\n  memory_gb = 4\n  cpus = 2\n}\n";
        for at in [comma.find("cpus").unwrap(), comma.find("= 2").unwrap()] {
            assert_eq!(
                syntax_hint(comma, at).as_deref(),
                Some("a comma missing at the end of line 2?")
            );
        }
        let fine = "{\n  memory_gb = 4,\n  cpus = ,\n}\n";
        assert_eq!(syntax_hint(fine, fine.find(" ,").unwrap() + 1), None);
    }

    #[test]
    fn line_col_counts_from_one_and_clamps_at_the_end() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab\ncd", 99), (2, 3));
        assert_eq!(line_col("é", 1), (1, 1));
    }
}
