//! A BuildKit release tarball made at test time from this machine's installed `buildctl` and
//! `buildkitd` (the real ones `scripts/install-deps` put on the PATH), laid out as a release
//! is (`bin/buildctl`, `bin/buildkitd`), with its sha256 and the version it holds. Nothing is
//! read from `../shared`.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tarball {
    pub path: PathBuf,
    /// `buildkit-vX.Y.Z.linux-ARCH.tar.gz`.
    pub name: String,
    pub sha256: String,
    /// `vX.Y.Z`, as the installed `buildkitd --version` says.
    pub version: String,
}

/// This machine's architecture as BuildKit's release names say it.
pub fn release_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

/// Where `tool` is on the PATH (`command -v`).
pub fn installed(tool: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{tool} is not on the PATH");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The version an installed `buildkitd --version` prints (`buildkitd github.com/moby/buildkit
/// v0.32.2 <commit>`).
pub fn installed_version() -> String {
    let out = Command::new(installed("buildkitd"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .nth(2)
        .filter(|v| v.starts_with('v'))
        .unwrap_or_else(|| panic!("buildkitd --version: {text}"))
        .to_owned()
}

/// The sha256 of a file, as `sha256sum` prints it.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The installed BuildKit as a release tarball in `dir` (gzip -1: the binaries are ~80 MB).
pub fn from_installed(dir: &Path) -> Tarball {
    let version = installed_version();
    let stage = dir.join("stage/bin");
    std::fs::create_dir_all(&stage).unwrap();
    for tool in ["buildctl", "buildkitd"] {
        std::os::unix::fs::symlink(installed(tool), stage.join(tool)).unwrap();
    }
    let name = format!("buildkit-{version}.linux-{}.tar.gz", release_arch());
    let path = dir.join(&name);
    let status = Command::new("sh")
        .arg("-c")
        .arg("tar -chf - -C \"$1\" bin | gzip -1 > \"$2\"")
        .arg("sh")
        .arg(dir.join("stage"))
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "tar of the installed BuildKit failed");
    std::fs::remove_dir_all(dir.join("stage")).unwrap();
    Tarball {
        sha256: sha256(&path),
        path,
        name,
        version,
    }
}
