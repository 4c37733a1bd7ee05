//! The `buildkitd` section of the launcher config: how the launcher uses a runner's BuildKit
//! daemon (readiness wait, SBOM scanner) and what goes into its `buildkitd.toml` (registry
//! hosts and mirrors, the frontend images `# syntax=` may name, garbage collection).
//!
//! Only the operator's config file sets these; nothing a repository or a pipeline controls
//! reaches them (docs/SECURITY.md). Nickel's contract (schemas/launcher.ncl) checks each value's
//! shape; [`BuildkitdSettings::validate`] repeats what a value must satisfy with the setting
//! named, so a config that passed the contract still gets one clear line for what it cannot
//! state (a port above 65535, a percentage above 100). The file itself is rendered by
//! [`super::buildkitd_toml`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The BuildKit daemon on a runner (the buildctl backend) and its configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildkitdSettings {
    /// Seconds a build waits for buildkitd to serve and list a worker.
    pub ready_timeout_s: u64,
    /// The SBOM scanner image BuildKit runs for `--sbom` (`attest:sbom=generator=IMAGE`).
    pub sbom_generator: String,
    /// Registry hosts (`HOST[:PORT]`, `docker.io` for Docker Hub) and how BuildKit reaches them.
    pub registries: BTreeMap<String, RegistryHost>,
    /// The only repositories a Dockerfile's `# syntax=` may name as its frontend.
    pub frontends: Vec<String>,
    /// When BuildKit prunes its cache.
    pub gc: GcSettings,
}

/// How BuildKit talks to one registry host (`[registry."HOST"]` in buildkitd.toml).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryHost {
    /// Plain HTTP instead of HTTPS.
    pub http: bool,
    /// HTTPS without verifying the certificate.
    pub insecure: bool,
    /// Hosts tried before this one for pulls (BuildKit falls back to the host itself).
    pub mirrors: Vec<String>,
    /// A PEM file of CA certificates to trust for this host, on the machine that bakes (read
    /// then, installed on the runner). Relative paths are relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// BuildKit's garbage collection (`[worker.oci]` gc keys, BuildKit >= 0.17 names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcSettings {
    pub reserved_space: String,
    pub max_used_space: String,
    pub min_free_space: String,
}

impl GcSettings {
    /// `(setting name, buildkitd.toml key, value)`.
    pub fn entries(&self) -> [(&'static str, &'static str, &str); 3] {
        [
            ("reserved_space", "reservedSpace", &self.reserved_space),
            ("max_used_space", "maxUsedSpace", &self.max_used_space),
            ("min_free_space", "minFreeSpace", &self.min_free_space),
        ]
    }
}

impl BuildkitdSettings {
    /// Make every `ca_file` absolute: relative to `dir`, the config file's directory.
    pub(super) fn resolve_paths(&mut self, dir: &Path) {
        for host in self.registries.values_mut() {
            if let Some(ca) = &mut host.ca_file
                && ca.is_relative()
            {
                *ca = dir.join(&*ca);
            }
        }
    }

    /// The first value that buildkitd would refuse or misread: `(setting, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |setting: String, message: String| Err((setting, message));
        // Empty: BuildKit's own default scanner (the plan then passes no generator).
        if !self.sbom_generator.is_empty()
            && let Err(why) = check_image(&self.sbom_generator)
        {
            return bad("buildkitd.sbom_generator".into(), why);
        }
        for (name, host) in &self.registries {
            let setting = format!("buildkitd.registries.\"{}\"", name.escape_debug());
            if let Err(why) = check_host(name) {
                return bad(setting, why);
            }
            let value = |m: &str, why: String| format!("\"{}\": {why}", m.escape_debug());
            if host.http && host.insecure {
                return bad(
                    setting,
                    "http and insecure exclude each other: http is plain HTTP, insecure is HTTPS without certificate checks".into(),
                );
            }
            if host.http && host.ca_file.is_some() {
                return bad(
                    format!("{setting}.ca_file"),
                    "a CA file is for HTTPS, and this host has http = true".into(),
                );
            }
            for (i, mirror) in host.mirrors.iter().enumerate() {
                if let Err(why) = check_host(mirror) {
                    return bad(format!("{setting}.mirrors[{i}]"), value(mirror, why));
                }
                if mirror == name {
                    return bad(
                        format!("{setting}.mirrors[{i}]"),
                        "a host cannot be its own mirror".into(),
                    );
                }
            }
            if let Some(ca) = &host.ca_file
                && ca.as_os_str().is_empty()
            {
                return bad(format!("{setting}.ca_file"), "the path is empty".into());
            }
        }
        if self.frontends.is_empty() {
            return bad(
                "buildkitd.frontends".into(),
                "the list is empty, and BuildKit lets any image serve as a frontend when it is; list at least one (the default: docker.io/docker/dockerfile)".into(),
            );
        }
        for (i, frontend) in self.frontends.iter().enumerate() {
            if let Err(why) = check_repository(frontend) {
                return bad(format!("buildkitd.frontends[{i}]"), why);
            }
        }
        for (name, _, value) in self.gc.entries() {
            if let Err(why) = check_disk_space(value) {
                return bad(format!("buildkitd.gc.{name}"), why);
            }
        }
        Ok(())
    }
}

const HOST_HINT: &str = "expected a registry host as HOST or HOST:PORT in lowercase (docker.io for Docker Hub), without a scheme or a path";

/// `zot.example:5000`, `docker.io`, `10.0.0.2:5000`: what buildkitd.toml's `[registry."…"]`
/// keys and mirrors name (compared as written, hence lowercase only). The message does not
/// repeat the value.
pub fn check_host(text: &str) -> Result<(), String> {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(HOST_HINT.to_owned());
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err("the port must be a number from 1 to 65535".to_owned()),
        }
    }
    Ok(())
}

/// A repository name as BuildKit's allow list compares it: `[HOST[:PORT]/]path`, lowercase,
/// without a tag or digest.
fn check_repository(text: &str) -> Result<(), String> {
    let hint = "expected a repository name such as docker.io/docker/dockerfile (lowercase, no tag or digest)";
    let (first, rest) = text.split_once('/').unwrap_or(("", text));
    let host_like = first.contains('.') || first.contains(':') || first == "localhost";
    let path = if host_like {
        check_host(first).map_err(|_| format!("\"{}\": {hint}", text.escape_debug()))?;
        rest
    } else {
        text
    };
    if !repository_path_ok(path) {
        return Err(format!("\"{}\": {hint}", text.escape_debug()));
    }
    Ok(())
}

/// A repository's path (`org/app`, no host) as the distribution spec writes it: components of
/// lowercase letters, digits, `.`, `_` and `-`, each starting and ending with a letter or digit.
pub fn repository_path_ok(path: &str) -> bool {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && c.as_bytes()[0].is_ascii_alphanumeric()
            && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
    };
    !path.is_empty() && path.split('/').all(component_ok)
}

/// An image reference for the SBOM scanner: a repository name with an optional tag or digest.
fn check_image(text: &str) -> Result<(), String> {
    let name = match text.split_once('@') {
        Some((name, digest)) => {
            if !digest.starts_with("sha256:")
                || digest.len() != 71
                || !digest[7..].bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(format!(
                    "\"{}\": the digest must be sha256: and 64 hex digits",
                    text.escape_debug()
                ));
            }
            name
        }
        None => text,
    };
    // A tag is after the last ':' that follows the last '/'.
    let last = name.rfind('/').map_or(0, |i| i + 1);
    let name = match name[last..].rsplit_once(':') {
        Some((_, tag))
            if !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
        {
            &name[..name.len() - tag.len() - 1]
        }
        Some(_) => {
            return Err(format!(
                "\"{}\": not an image reference (REPOSITORY[:TAG][@sha256:DIGEST])",
                text.escape_debug()
            ));
        }
        None => name,
    };
    check_repository(name).map_err(|_| {
        format!(
            "\"{}\": not an image reference (REPOSITORY[:TAG][@sha256:DIGEST])",
            text.escape_debug()
        )
    })
}

/// What BuildKit reads as disk space: `N%` (0 to 100) or a size such as `2GB`, `512MiB`,
/// `1.5g` (go-units' RAMInBytes: binary units) or bytes.
fn check_disk_space(text: &str) -> Result<(), String> {
    let hint = "expected a size such as 2GB or 512MB, or a share of the disk such as 70%";
    if let Some(pct) = text.strip_suffix('%') {
        return match pct.parse::<u8>() {
            Ok(p) if p <= 100 && pct.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
            _ => Err(format!("\"{}\": {hint}", text.escape_debug())),
        };
    }
    let digits = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number_ok = !number.is_empty()
        && !number.starts_with('.')
        && !number.ends_with('.')
        && number.matches('.').count() <= 1;
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let unit_ok = matches!(
        unit.as_str(),
        "" | "b"
            | "k"
            | "kb"
            | "kib"
            | "m"
            | "mb"
            | "mib"
            | "g"
            | "gb"
            | "gib"
            | "t"
            | "tb"
            | "tib"
    );
    if number_ok && unit_ok {
        Ok(())
    } else {
        Err(format!("\"{}\": {hint}", text.escape_debug()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "zot.example:5000",
            "docker.io",
            "10.0.0.2:5000",
            "localhost",
            "a-b.c",
        ] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Zot.example",
            "http://zot.example",
            "zot.example/path",
            "zot.example:0",
            "zot.example:65536",
            "zot.example:",
            "zot.example:+80",
            "-a.b",
            "a..b",
            "a b",
            "[::1]:5000",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        assert_eq!(
            check_host("zot.example:70000").unwrap_err(),
            "the port must be a number from 1 to 65535"
        );
    }

    #[test]
    fn repositories_and_images() {
        for ok in [
            "docker.io/docker/dockerfile",
            "zot.example:5000/mirror/dockerfile",
            "docker/dockerfile",
            "dockerfile",
        ] {
            assert_eq!(check_repository(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "docker/dockerfile:1",
            "Docker/dockerfile",
            "zot.example:5000/",
            "a//b",
            "a/b@sha256:00",
        ] {
            assert!(check_repository(bad).is_err(), "{bad}");
        }
        for ok in [
            "docker.io/docker/buildkit-syft-scanner:stable-1",
            "zot.example:5000/mirror/scanner",
            &format!("zot.example:5000/s@sha256:{}", "a".repeat(64)),
        ] {
            assert_eq!(check_image(ok), Ok(()), "{ok}");
        }
        for bad in ["", "scanner:", "scanner:bad tag", "s@sha256:00", "UPPER:1"] {
            assert!(check_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn disk_space() {
        for ok in [
            "2GB", "70%", "0%", "100%", "4GB", "512MiB", "1.5g", "1024", "10 GB",
        ] {
            assert_eq!(check_disk_space(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "101%", "-1GB", "GB", "2 PB", "1.2.3G", "x%", "2GBs", "2  GB",
        ] {
            assert!(check_disk_space(bad).is_err(), "{bad}");
        }
    }
}
