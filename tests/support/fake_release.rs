//! A BuildKit release for golden-image tests, served from a loopback HTTP server so a bake
//! can download, checksum and install BuildKit without reaching GitHub: a tarball made at
//! test time from this machine's installed, real `buildctl` and `buildkitd`
//! ([`super::buildkit_tarball`]), with its sha256 and the version they report, so the bake's
//! `verify.sh` checks the real binaries' `--version` against the pin.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A BuildKit release and a loopback HTTP server handing it out.
pub struct Release {
    pub dir: tempfile::TempDir,
    sha256: String,
    /// The version the installed BuildKit reports (`v0.32.2`): the pin's.
    pub version: String,
    pub port: u16,
    /// Requests for the tarball that arrived, and that were answered.
    pub asked: Arc<AtomicU32>,
    pub downloads: Arc<AtomicU32>,
    pub stop: Arc<AtomicBool>,
    pub thread: Option<JoinHandle<()>>,
}

impl Release {
    pub fn serve() -> Release {
        Release::serve_after(Duration::ZERO)
    }

    /// Answer each request only after `delay` (a download that hangs).
    pub fn serve_after(delay: Duration) -> Release {
        let dir = tempfile::tempdir().unwrap();
        let tarball = super::buildkit_tarball::from_installed(dir.path());
        let (name, sha256, version) = (tarball.name, tarball.sha256, tarball.version);
        let body = std::fs::read(&tarball.path).unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (downloads, stop) = (
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let asked = Arc::new(AtomicU32::new(0));
        let (count, halt, arrived) = (downloads.clone(), stop.clone(), asked.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: it stops when the test ends, and at the latest after five minutes.
            let deadline = Instant::now() + Duration::from_secs(300);
            while !halt.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        arrived.fetch_add(1, Ordering::Relaxed);
                        let until = Instant::now() + delay;
                        while Instant::now() < until && !halt.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        answer(stream, &name, &body, &count);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Release {
            dir,
            sha256,
            version,
            port,
            asked,
            downloads,
            stop,
            thread: Some(thread),
        }
    }

    /// A pin for the release; `sha256` overrides this machine's architecture's checksum.
    pub fn pin(&self, sha256: Option<&str>) -> PathBuf {
        let path = self.dir.path().join("test.pin");
        let ours = sha256.unwrap_or(&self.sha256).to_owned();
        let other = "0".repeat(64);
        let (amd64, arm64) = match super::buildkit_tarball::release_arch() {
            "arm64" => (&other, &ours),
            _ => (&ours, &other),
        };
        let text = format!(
            "# test pin: this machine's BuildKit, served on loopback\nBUILDKIT_VERSION={}\nBUILDKIT_SHA256_AMD64={amd64}\nBUILDKIT_SHA256_ARM64={arm64}\nBUILDKIT_URL='http://127.0.0.1:{}/buildkit-${{BUILDKIT_VERSION}}.linux-${{ARCH}}.tar.gz'\n",
            self.version, self.port
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(mut stream: TcpStream, name: &str, body: &[u8], count: &AtomicU32) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&request);
    let wanted = format!("GET /{name} ");
    let head = if line.starts_with(&wanted) {
        count.fetch_add(1, Ordering::Relaxed);
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: application/gzip\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    } else {
        "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned()
    };
    let _ = stream.write_all(head.as_bytes());
    if line.starts_with(&wanted) {
        let _ = stream.write_all(body);
    }
}
