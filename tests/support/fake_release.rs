//! A fake BuildKit release for golden-image tests: a tarball of shell stubs (`bin/buildctl`,
//! `bin/buildkitd`) that print BuildKit-style version lines, served from a loopback HTTP server,
//! so a bake can download, checksum and install "BuildKit" without reaching GitHub.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const VERSION: &str = "v0.16.0";
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A fake BuildKit release and a loopback HTTP server handing it out.
pub struct Release {
    pub dir: tempfile::TempDir,
    sha256: String,
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
        let bin = dir.path().join("tree/bin");
        std::fs::create_dir_all(&bin).unwrap();
        for tool in ["buildctl", "buildkitd"] {
            let stub = format!(
                "#!/bin/sh\n# FAKE {tool} for tests: only prints a BuildKit-style version line.\necho \"{tool} github.com/moby/buildkit {VERSION} 0000000000000000000000000000000000000000\"\n"
            );
            let path = bin.join(tool);
            std::fs::write(&path, stub).unwrap();
            Command::new("chmod")
                .arg("755")
                .arg(&path)
                .status()
                .unwrap();
        }
        let name = format!("buildkit-{VERSION}.linux-amd64.tar.gz");
        let status = Command::new("tar")
            .arg("-czf")
            .arg(dir.path().join(&name))
            .arg("-C")
            .arg(dir.path().join("tree"))
            .arg("bin")
            .status()
            .unwrap();
        assert!(status.success(), "tar failed");
        let out = Command::new("sha256sum")
            .arg(dir.path().join(&name))
            .output()
            .unwrap();
        let sha256 = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        let body = std::fs::read(dir.path().join(&name)).unwrap();

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
            port,
            asked,
            downloads,
            stop,
            thread: Some(thread),
        }
    }

    /// A pin for the fake release; `sha256` overrides the amd64 checksum.
    pub fn pin(&self, sha256: Option<&str>) -> PathBuf {
        let path = self.dir.path().join("test.pin");
        let text = format!(
            "# test pin: a FAKE BuildKit served on loopback\nBUILDKIT_VERSION={VERSION}\nBUILDKIT_SHA256_AMD64={}\nBUILDKIT_SHA256_ARM64={}\nBUILDKIT_URL='http://127.0.0.1:{}/buildkit-${{BUILDKIT_VERSION}}.linux-${{ARCH}}.tar.gz'\n",
            sha256.unwrap_or(&self.sha256),
            "0".repeat(64),
            self.port
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
