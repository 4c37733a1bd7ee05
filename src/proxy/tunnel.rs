//! `buildkit-launcher connect-proxy`: ssh's `ProxyCommand`. It opens an HTTP CONNECT tunnel
//! through the proxy to the runner and then copies standard input to the tunnel and the tunnel
//! to standard output until either side ends. Hidden (not in `--help`): the launcher writes it
//! into the connection's ssh config itself (transport/session.rs).
//!
//! ```text
//! buildkit-launcher connect-proxy --proxy-file FILE [--error-file FILE] HOST PORT
//! buildkit-launcher connect-proxy --proxy http://HOST:PORT [--error-file FILE] HOST PORT
//! ```
//!
//! The proxy URL with its user info comes from a 0600 file, never an argument (other users see
//! argument lists); `--proxy` takes a URL without user info, for trying the tunnel by hand.
//! ssh discards a ProxyCommand's stderr when it logs to a file, so a failure is also written to
//! `--error-file`, one line starting with [`REFUSED`] (the proxy will not make this tunnel:
//! retrying is pointless) or [`UNREACHABLE`] (the proxy or the runner cannot be reached yet).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::ProxyUrl;

/// The subcommand's name (main.rs dispatches on it before clap).
pub const SUBCOMMAND: &str = "connect-proxy";
/// The error file's first word when the proxy refuses the tunnel.
pub const REFUSED: &str = "refused:";
/// The error file's first word when it may work later.
pub const UNREACHABLE: &str = "unreachable:";

const HEAD_LIMIT: usize = 16 * 1024;

/// What went wrong, and whether a retry may help.
enum Failure {
    Refused(String),
    Unreachable(String),
    Usage(String),
}

/// Run the subcommand with its arguments (those after `connect-proxy`); the exit code.
pub fn main(args: &[std::ffi::OsString]) -> i32 {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut error_file: Option<PathBuf> = None;
    let result = parse(&args, &mut error_file).and_then(|(proxy, host, port)| {
        let stream = open(&proxy, &host, port)?;
        pump(stream);
        Ok(())
    });
    match result {
        Ok(()) => 0,
        Err(Failure::Usage(message)) => {
            crate::text::to_stderr(&format!("error: {SUBCOMMAND}: {message}"));
            2
        }
        Err(Failure::Refused(message) | Failure::Unreachable(message)) if error_file.is_none() => {
            crate::text::to_stderr(&format!("error: {message}"));
            4
        }
        Err(failure) => {
            let (word, message) = match failure {
                Failure::Refused(m) => (REFUSED, m),
                Failure::Unreachable(m) => (UNREACHABLE, m),
                Failure::Usage(_) => unreachable!("handled above"),
            };
            crate::text::to_stderr(&format!("error: {message}"));
            if let Some(path) = error_file {
                let _ = std::fs::write(path, format!("{word} {message}\n"));
            }
            4
        }
    }
}

fn parse(
    args: &[String],
    error_file: &mut Option<PathBuf>,
) -> Result<(ProxyUrl, String, u16), Failure> {
    let usage = || {
        Failure::Usage(
            "usage: connect-proxy (--proxy-file FILE | --proxy http://HOST:PORT) [--error-file FILE] HOST PORT".into(),
        )
    };
    let mut proxy = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--proxy-file" => {
                let path = it.next().ok_or_else(usage)?;
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Failure::Usage(format!("--proxy-file {path}: cannot read it: {e}"))
                })?;
                proxy = Some(
                    ProxyUrl::parse(text.trim())
                        .map_err(|e| Failure::Usage(format!("--proxy-file {path}: {e}")))?,
                );
            }
            "--proxy" => {
                let value = it.next().ok_or_else(usage)?;
                let parsed = ProxyUrl::parse(value).map_err(|e| {
                    Failure::Usage(format!("--proxy {}: {e}", super::redacted(value)))
                })?;
                if parsed.user.is_some() {
                    return Err(Failure::Usage(format!(
                        "--proxy {}: user info in an argument is visible to every user of this machine; put the URL in a 0600 file and use --proxy-file",
                        super::redacted(value)
                    )));
                }
                proxy = Some(parsed);
            }
            "--error-file" => *error_file = Some(PathBuf::from(it.next().ok_or_else(usage)?)),
            _ => rest.push(arg.clone()),
        }
    }
    let (Some(proxy), [host, port]) = (proxy, rest.as_slice()) else {
        return Err(usage());
    };
    let port: u16 = port
        .parse()
        .map_err(|_| Failure::Usage(format!("{}: not a port", crate::exit::quote(port))))?;
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Failure::Usage(format!(
            "{}: not a host",
            crate::exit::quote(host)
        )));
    }
    Ok((proxy, host.trim_matches(['[', ']']).to_owned(), port))
}

/// Connect to the proxy and ask it for the tunnel; the stream once it stands, with nothing of
/// the runner's data consumed.
fn open(proxy: &ProxyUrl, host: &str, port: u16) -> Result<BufReader<TcpStream>, Failure> {
    let target = super::authority(host, port);
    let unreachable = |e: String| {
        Failure::Unreachable(format!(
            "cannot reach the proxy {} for the tunnel to {target}: {e}",
            proxy.display()
        ))
    };
    let addrs: Vec<_> = (proxy.host(), proxy.port())
        .to_socket_addrs()
        .map_err(|e| unreachable(e.to_string()))?
        .collect();
    let mut last = "the proxy's name resolves to no address".to_owned();
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let mut stream = stream.ok_or_else(|| unreachable(last))?;
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = proxy.authorization() {
        request.push_str(&format!("Proxy-Authorization: {}\r\n", auth.as_str()));
    }
    request.push_str("\r\n");
    let request = zeroize::Zeroizing::new(request);
    stream
        .write_all(request.as_bytes())
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader).map_err(unreachable)?;
    let _ = reader.get_ref().set_read_timeout(None);
    let status_line = head.lines().next().unwrap_or_default().trim().to_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok());
    let shown = crate::exit::escape_controls(&status_line);
    match status {
        Some(200..=299) if status_line.starts_with("HTTP/1.") => Ok(reader),
        Some(407) => Err(Failure::Refused(format!(
            "the proxy {} refused the tunnel to {target}: {shown}: it wants credentials{}; give them in the proxy URL (http://USER:PASSWORD@HOST:PORT)",
            proxy.display(),
            if proxy.authorization().is_some() {
                " and did not take the ones given"
            } else {
                ""
            }
        ))),
        // 502, 503, 504: the proxy could not reach the runner (yet: it may still boot).
        Some(500..=599) => Err(Failure::Unreachable(format!(
            "the proxy {} could not open the tunnel to {target}: {shown}",
            proxy.display()
        ))),
        Some(_) => Err(Failure::Refused(format!(
            "the proxy {} refused the tunnel to {target}: {shown}; the proxy must allow CONNECT to the runners' SSH port {port}, or list the runners in no_proxy",
            proxy.display()
        ))),
        None => Err(Failure::Refused(format!(
            "the proxy {} answered CONNECT with {}: not an HTTP proxy",
            proxy.display(),
            crate::exit::quote(&status_line)
        ))),
    }
}

/// The response head up to the empty line, at most [`HEAD_LIMIT`] bytes; nothing after it is
/// consumed from the reader's point of view (it stays in the buffer).
fn read_head(reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take((HEAD_LIMIT - head.len()) as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the proxy closed the connection without an answer".into());
        }
        head.extend_from_slice(&line);
        if head.len() > HEAD_LIMIT {
            return Err(format!(
                "the proxy's answer head is over {HEAD_LIMIT} bytes"
            ));
        }
        if line == b"\r\n" || line == b"\n" {
            return Ok(String::from_utf8_lossy(&head).into_owned());
        }
    }
}

/// Copy stdin to the tunnel and the tunnel to stdout until either ends. Through the
/// descriptors with a plain read/write loop: Rust's stdout holds bytes back until a newline,
/// which would stall ssh's handshake.
fn pump(reader: BufReader<TcpStream>) {
    use std::os::fd::AsFd;
    let (Ok(upstream), Ok(stdin), Ok(stdout)) = (
        reader.get_ref().try_clone(),
        std::io::stdin().as_fd().try_clone_to_owned(),
        std::io::stdout().as_fd().try_clone_to_owned(),
    ) else {
        return;
    };
    std::thread::spawn(move || {
        let mut upstream = upstream;
        copy(&mut std::fs::File::from(stdin), &mut upstream);
        let _ = upstream.shutdown(Shutdown::Write);
    });
    let mut reader = reader;
    copy(&mut reader, &mut std::fs::File::from(stdout));
}

/// Each read written out at once, until end of file or an error.
fn copy(from: &mut impl Read, to: &mut impl Write) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
