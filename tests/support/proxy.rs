//! A small HTTP proxy on a loopback port, like the one an agent sits behind: `CONNECT host:port`
//! tunnels (what HTTPS and the launcher's SSH use) and absolute-form requests
//! (`GET http://host:port/path`, what plain HTTP uses), forwarded as origin-form with
//! `Connection: close`. It records every request it was asked for, can demand basic auth
//! (`407` otherwise, RFC 9110 §11.7.1) and can refuse every CONNECT (`403`, as a proxy whose
//! policy allows no tunnel to port 22 does).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One request the proxy was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `CONNECT`, `GET`, `PUT`, ...
    pub method: String,
    /// `host:port` it was for.
    pub target: String,
    /// What the proxy answered itself (`200` for a tunnel it made; for a forwarded request
    /// `0`: the origin answered).
    pub status: u16,
}

#[derive(Default, Clone)]
pub struct Options {
    /// `user:password` the proxy demands in `Proxy-Authorization: Basic`.
    pub basic_auth: Option<String>,
    /// Answer every CONNECT with 403.
    pub refuse_connect: bool,
}

pub struct Proxy {
    /// `127.0.0.1:PORT`
    pub addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Proxy {
    pub fn start(options: Options) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let log = log.clone();
                let options = options.clone();
                std::thread::spawn(move || serve(conn, &options, &log));
            }
        });
        Proxy { addr, seen }
    }

    /// `http://127.0.0.1:PORT`, with `user:password@` when given.
    pub fn url(&self, user_info: Option<&str>) -> String {
        match user_info {
            Some(u) => format!("http://{u}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The targets of the tunnels it made or refused.
    pub fn connects(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "CONNECT")
            .collect()
    }

    /// The plain-HTTP requests it forwarded (or refused).
    pub fn forwarded(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method != "CONNECT")
            .collect()
    }
}

fn serve(client: TcpStream, options: &Options, log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let end = line == "\r\n" || line == "\n";
        head.push(line);
        if end {
            break;
        }
    }
    let request_line = head[0].trim().to_owned();
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return;
    };
    let method = method.to_owned();
    let header = |name: &str| {
        head[1..].iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let (host_port, path) = if method == "CONNECT" {
        (target.to_owned(), String::new())
    } else {
        let rest = target.strip_prefix("http://").unwrap_or(target);
        let (hp, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let hp = if hp.contains(':') {
            hp.to_owned()
        } else {
            format!("{hp}:80")
        };
        (
            hp,
            if path.is_empty() {
                "/".into()
            } else {
                path.to_owned()
            },
        )
    };
    let record = |status: u16| {
        log.lock().unwrap().push(Seen {
            method: method.clone(),
            target: host_port.clone(),
            status,
        })
    };
    let mut client_w = client;
    if let Some(expected) = &options.basic_auth {
        use base64::Engine;
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(expected)
        );
        if header("Proxy-Authorization").as_deref() != Some(want.as_str()) {
            record(407);
            let _ = client_w.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
    }
    if method == "CONNECT" && options.refuse_connect {
        record(403);
        let _ = client_w
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let Ok(mut origin) = TcpStream::connect(&host_port) else {
        record(502);
        let _ = client_w.write_all(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    };
    if method == "CONNECT" {
        record(200);
        if client_w
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_err()
        {
            return;
        }
    } else {
        record(0);
        let mut forward = format!("{method} {path} HTTP/1.1\r\n");
        for line in &head[1..head.len() - 1] {
            let name = line.split(':').next().unwrap_or("").trim();
            if ["proxy-authorization", "proxy-connection", "connection"]
                .contains(&name.to_ascii_lowercase().as_str())
            {
                continue;
            }
            forward.push_str(line);
        }
        forward.push_str("Connection: close\r\n\r\n");
        if origin.write_all(forward.as_bytes()).is_err() {
            return;
        }
    }
    // Both ways until either side ends (what the reader holds already goes first).
    let mut origin_r = origin.try_clone().unwrap();
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut reader, &mut origin);
        let _ = origin.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut origin_r, &mut client_w);
    let _ = client_w.shutdown(Shutdown::Both);
    let _ = upstream.join();
}

/// Read everything (for tests that talk to the proxy directly).
pub fn read_all(mut stream: TcpStream) -> String {
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}
