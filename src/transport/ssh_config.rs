//! The client side of one SSH connection to a runner, as files and words: the per-connection
//! `ssh_config` (the build's own key and known host, nothing from the agent's), the
//! `ProxyCommand` through the agent's HTTP proxy, and the quoting every remote word gets.

use std::path::Path;

use super::session::TransportError;

/// The proxy URL (with its credentials) for the tunnel, 0600 in the key directory.
pub(super) const PROXY_FILE: &str = "proxy";
/// Where the tunnel writes why it failed.
pub(super) const PROXY_ERROR_FILE: &str = "proxy-error";

/// The `ProxyCommand` line: this launcher's `connect-proxy` with the runner's address written
/// out (never ssh's `%h`, which reaches the shell unquoted), each word shell-quoted and `%`
/// doubled for ssh's own expansion. A word that ssh's config parser could cut (a line break,
/// `#`) is refused.
pub(super) fn proxy_command(dir: &Path, host: &str, port: u16) -> Result<String, TransportError> {
    let exe = std::env::current_exe().map_err(|e| {
        TransportError::Local(format!("cannot find the launcher's own binary: {e}"))
    })?;
    let words = [
        exe.display().to_string(),
        crate::proxy::tunnel::SUBCOMMAND.to_owned(),
        "--proxy-file".to_owned(),
        dir.join(PROXY_FILE).display().to_string(),
        "--error-file".to_owned(),
        dir.join(PROXY_ERROR_FILE).display().to_string(),
        host.to_owned(),
        port.to_string(),
    ];
    if let Some(bad) = words
        .iter()
        .find(|w| w.chars().any(|c| c.is_control() || c == '#'))
    {
        return Err(TransportError::Local(format!(
            "cannot write the ssh ProxyCommand: {} holds a line break, a control byte or '#'",
            crate::exit::quote(bad)
        )));
    }
    Ok(words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
        .replace('%', "%%"))
}

/// The connection's `ssh_config`: this build's key and known host only.
pub(super) fn ssh_config(dir: &Path, proxy_command: Option<&str>) -> String {
    let proxy = proxy_command.map_or_else(String::new, |c| format!("  ProxyCommand {c}\n"));
    format!(
        "Host *\n{proxy}  IdentitiesOnly yes\n  IdentityAgent none\n  IdentityFile {0}/id\n  UserKnownHostsFile {0}/known_hosts\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  CheckHostIP no\n  BatchMode yes\n  PasswordAuthentication no\n  KbdInteractiveAuthentication no\n  LogLevel ERROR\n  ServerAliveInterval 5\n  ServerAliveCountMax 3\n",
        dir.display()
    )
}

/// Single-quote for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | ':' | '=' | '@' | ',')
        })
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `host`, in brackets when it is an IPv6 literal (`[2001:db8::1]`), for `host:path` and
/// `host:port`.
pub(super) fn bracketed(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b"), "/a/b");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn ipv6_literals_are_bracketed() {
        assert_eq!(bracketed("2001:db8:1:2::1"), "[2001:db8:1:2::1]");
        assert_eq!(bracketed("127.0.0.2"), "127.0.0.2");
        assert_eq!(bracketed("[::1]"), "[::1]");
    }

    #[test]
    fn the_proxy_command_quotes_every_word() {
        let line = proxy_command(Path::new("/tmp/bkl-ssh-1 %x"), "203.0.113.7", 22).unwrap();
        assert!(line.contains(" connect-proxy --proxy-file '/tmp/bkl-ssh-1 %%x/proxy' --error-file '/tmp/bkl-ssh-1 %%x/proxy-error' 203.0.113.7 22"), "{line}");
        let line = proxy_command(Path::new("/tmp/d"), "a'b;rm -rf /", 22).unwrap();
        assert!(line.ends_with(r"'a'\''b;rm -rf /' 22"), "{line}");
        assert!(proxy_command(Path::new("/tmp/d"), "evil\nProxyCommand x", 22).is_err());
        assert!(proxy_command(Path::new("/tmp/d"), "h#x", 22).is_err());
        let config = ssh_config(Path::new("/tmp/d"), Some("x y"));
        assert!(
            config.starts_with("Host *\n  ProxyCommand x y\n  IdentitiesOnly"),
            "{config}"
        );
    }
}
