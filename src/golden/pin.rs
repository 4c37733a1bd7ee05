//! The BuildKit pin (`golden-image/buildkit.pin`): which release the golden image holds and the
//! sha256 of its tarball per architecture.
//!
//! The file is shell-sourceable `KEY=VALUE`; provision.sh reads it on the bake server (and
//! enforces the checksum), the launcher reads it here first so that a broken pin fails before
//! any server exists (exit 2) and so that the version can label the snapshot.

use crate::config::Arch;

/// The pin shipped with the binary.
pub const DEFAULT_PIN: &str = include_str!("../../golden-image/buildkit.pin");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// `v0.33.1`: also a Hetzner label value.
    pub version: String,
    pub sha256_amd64: String,
    pub sha256_arm64: String,
    /// With `${BUILDKIT_VERSION}` and `${ARCH}` still in it.
    pub url: String,
    /// The file as given: it is uploaded to the bake server unchanged.
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{origin}: {key}: {message}")]
pub struct PinError {
    pub origin: String,
    pub key: String,
    pub message: String,
}

impl Pin {
    /// Parse and check a pin; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Pin, PinError> {
        let err = |key: &str, message: &str| PinError {
            origin: origin.to_owned(),
            key: key.to_owned(),
            message: message.to_owned(),
        };
        let get = |key: &str| -> Result<String, PinError> {
            value(text, key).ok_or_else(|| err(key, "is not set"))
        };
        let version = get("BUILDKIT_VERSION")?;
        if !is_version(&version) {
            return Err(err(
                "BUILDKIT_VERSION",
                &format!("\"{version}\" is not a release tag such as v0.33.1"),
            ));
        }
        let mut sums = Vec::new();
        for key in ["BUILDKIT_SHA256_AMD64", "BUILDKIT_SHA256_ARM64"] {
            let sum = get(key)?;
            if sum.len() != 64 || !sum.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(err(key, "must be a sha256: 64 lowercase hex digits"));
            }
            sums.push(sum);
        }
        let url = get("BUILDKIT_URL")?;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(err("BUILDKIT_URL", "must be an http:// or https:// URL"));
        }
        let sha256_arm64 = sums.pop().expect("two sums");
        let sha256_amd64 = sums.pop().expect("two sums");
        Ok(Pin {
            version,
            sha256_amd64,
            sha256_arm64,
            url,
            text: text.to_owned(),
        })
    }

    /// The pin shipped with the binary.
    pub fn embedded() -> Pin {
        Pin::parse(DEFAULT_PIN, "golden-image/buildkit.pin").expect("the embedded pin is valid")
    }

    pub fn sha256(&self, arch: Arch) -> &str {
        match arch {
            Arch::Amd64 => &self.sha256_amd64,
            Arch::Arm64 => &self.sha256_arm64,
        }
    }

    /// The tarball's URL for `arch`, as provision.sh computes it.
    pub fn url_for(&self, arch: Arch) -> String {
        self.url
            .replace("${BUILDKIT_VERSION}", &self.version)
            .replace("${ARCH}", arch.as_str())
    }
}

/// The last `KEY=VALUE` line for `key`: trailing ` # comment` and one pair of quotes removed.
fn value(text: &str, key: &str) -> Option<String> {
    let raw = text
        .lines()
        .rev()
        .find_map(|l| l.trim_start().strip_prefix(key)?.strip_prefix('='))?;
    let raw = match raw.find(" #").or_else(|| raw.find("\t#")) {
        Some(at) => &raw[..at],
        None => raw,
    }
    .trim();
    let unquoted = ['\'', '"']
        .iter()
        .find_map(|q| raw.strip_prefix(*q)?.strip_suffix(*q))
        .unwrap_or(raw);
    (!unquoted.is_empty()).then(|| unquoted.to_owned())
}

/// `v1.2.3` with an optional `-rc1`-style suffix; only characters a Hetzner label value allows.
fn is_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let (core, suffix) = rest.split_once('-').unwrap_or((rest, ""));
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.')
        && v.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "4e044bcd62a0c0bbe6a8c94d73989de2bfe4c04dbc0f9d6021cf96b72cd1d965";

    fn pin(version: &str, sum: &str, url: &str) -> String {
        format!(
            "# c\nBUILDKIT_VERSION={version}\nBUILDKIT_SHA256_AMD64={sum}  # amd64\nBUILDKIT_SHA256_ARM64=\"{SUM}\"\nBUILDKIT_URL='{url}'\n"
        )
    }

    #[test]
    fn the_embedded_pin_is_valid_and_names_a_real_release_url() {
        let p = Pin::embedded();
        assert!(p.version.starts_with("v0."), "{}", p.version);
        assert_eq!(
            p.url_for(Arch::Arm64),
            format!(
                "https://github.com/moby/buildkit/releases/download/{0}/buildkit-{0}.linux-arm64.tar.gz",
                p.version
            )
        );
        assert_ne!(p.sha256(Arch::Amd64), p.sha256(Arch::Arm64));
    }

    #[test]
    fn values_lose_quotes_and_comments() {
        let p = Pin::parse(
            &pin("v0.16.0", SUM, "http://127.0.0.1:1/b-${ARCH}.tgz"),
            "t",
        )
        .unwrap();
        assert_eq!(p.version, "v0.16.0");
        assert_eq!(p.sha256_amd64, SUM);
        assert_eq!(p.sha256_arm64, SUM);
        assert_eq!(p.url_for(Arch::Amd64), "http://127.0.0.1:1/b-amd64.tgz");
    }

    #[test]
    fn bad_pins_name_the_file_and_the_setting() {
        let e = Pin::parse(&pin("0.16", SUM, "https://x"), "my.pin").unwrap_err();
        assert_eq!(
            e.to_string().split(':').take(2).collect::<Vec<_>>(),
            ["my.pin", " BUILDKIT_VERSION"]
        );
        let e = Pin::parse(&pin("v0.16.0", "abc", "https://x"), "p").unwrap_err();
        assert_eq!(e.key, "BUILDKIT_SHA256_AMD64");
        let e = Pin::parse(&pin("v0.16.0", &SUM.to_uppercase(), "https://x"), "p").unwrap_err();
        assert_eq!(e.key, "BUILDKIT_SHA256_AMD64");
        let e = Pin::parse(&pin("v0.16.0", SUM, "ftp://x"), "p").unwrap_err();
        assert_eq!(e.key, "BUILDKIT_URL");
        let e = Pin::parse("BUILDKIT_VERSION=v1.0.0\n", "p").unwrap_err();
        assert_eq!(e.to_string(), "p: BUILDKIT_SHA256_AMD64: is not set");
        assert!(Pin::parse(&pin("v0.17.0-rc1", SUM, "https://x"), "p").is_ok());
        assert!(Pin::parse(&pin("v0.17.0;rm", SUM, "https://x"), "p").is_err());
    }
}
