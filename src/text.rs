//! Text that goes into messages: values quoted and control characters escaped, so nothing a
//! repository or a registry wrote can drive the terminal. At the bottom of the crate: every
//! stage that words a message may use it.

/// A value for a message: in double quotes, control bytes, quotes and backslashes escaped.
pub fn quote(value: &str) -> String {
    format!("\"{}\"", value.escape_debug())
}

/// `text` with every control character (newlines included) written as an escape.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `line` and a newline on stderr. A log nobody reads any more (the agent that read the step's
/// output went away, a closed pipe) is no reason to stop: `eprintln!` would panic on `EPIPE`,
/// possibly in the middle of destroying a runner; the line is dropped instead.
pub fn to_stderr(line: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err
        .write_all(line.as_bytes())
        .and_then(|()| err.write_all(b"\n"));
}

/// [`to_stderr`] for stdout.
pub fn to_stdout(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
}
