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
