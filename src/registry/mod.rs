//! The OCI registry, seen from the launcher: before any server, the build's credentials may do
//! what the build will do ([`access`]); after a push, every tag must resolve to the digest the
//! build reported (HEAD on the manifest, `Docker-Content-Digest`). Every request to a registry
//! reads its answer within a cap and takes its token only from a realm the operator policy
//! allows ([`bounded`]); oci-client parses references, its client is not used.

pub mod access;
pub mod bounded;
pub mod index;
mod repo;

use oci_client::Reference;
use zeroize::Zeroizing;

/// Registry credentials. The password never appears in Debug output, a log or an error.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// `~/.docker/config.json` for `registry`, as buildctl and buildah read it.
    pub fn docker_config(&self, registry: &str) -> Zeroizing<String> {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.username,
            self.password.as_str()
        ));
        Zeroizing::new(serde_json::json!({ "auths": { registry: { "auth": token } } }).to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{image}: not a valid image reference: {detail}")]
    BadReference { image: String, detail: String },
    #[error("{image}: cannot read its manifest from the registry: {detail}")]
    Unreachable { image: String, detail: String },
    #[error("{image}: cannot push the image index: {detail}")]
    Push { image: String, detail: String },
    #[error("{image}: built for {found}, not for {expected}; it is not listed in the index")]
    WrongPlatform {
        image: String,
        expected: String,
        found: String,
    },
    #[error("{image}: resolves to {found}, not to {expected} that the build reported")]
    Mismatch {
        image: String,
        expected: String,
        found: String,
    },
}

pub(crate) fn parse(image: &str) -> Result<Reference, RegistryError> {
    image
        .parse()
        .map_err(|e: oci_client::ParseError| RegistryError::BadReference {
            image: image.to_owned(),
            detail: e.to_string(),
        })
}

/// Check that every image resolves to `digest` (`HEAD` on the manifest,
/// `Docker-Content-Digest`; the token from a realm the policy allows, every answer capped).
pub async fn verify_digests(
    images: &[String],
    digest: &str,
    registry: &str,
    insecure: bool,
    credentials: Option<&Credentials>,
) -> Result<(), RegistryError> {
    const ACCEPT: &[&str] = &[
        oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
        oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
        oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
        oci_client::manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    ];
    for image in images {
        let reference = parse(image)?;
        let insecure = insecure && reference.registry() == registry;
        let repo = repo::Repo::open(&reference, image, insecure, credentials, "pull").await?;
        let wanted = reference
            .digest()
            .or(reference.tag())
            .unwrap_or("latest")
            .to_owned();
        let found =
            repo.digest(&wanted, ACCEPT)
                .await
                .map_err(|detail| RegistryError::Unreachable {
                    image: image.clone(),
                    detail,
                })?;
        if found != digest {
            return Err(RegistryError::Mismatch {
                image: image.clone(),
                expected: digest.to_owned(),
                found,
            });
        }
    }
    Ok(())
}

/// An error and its sources on one line (`error sending request…: connection refused`).
pub(crate) fn one_line_error(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    let mut line = line.split_whitespace().collect::<Vec<_>>().join(" ");
    // rustls meeting a plain-HTTP answer where it expected TLS: say what that means.
    if line.contains("InvalidContentType") {
        line.push_str(PLAIN_HTTP_HINT);
    }
    line
}

/// What a TLS handshake answered in plain HTTP means, for the user.
pub const PLAIN_HTTP_HINT: &str = "; the registry answered in plain HTTP where TLS was expected: set insecure_registry: true (--insecure-registry at a terminal)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_has_basic_auth_and_debug_hides_the_password() {
        let c = Credentials {
            username: "ci".into(),
            password: Zeroizing::new("fake-pass".into()),
        };
        let cfg = c.docker_config("127.0.0.1:5000");
        let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
        assert_eq!(v["auths"]["127.0.0.1:5000"]["auth"], "Y2k6ZmFrZS1wYXNz");
        assert!(!format!("{c:?}").contains("fake-pass"));
    }
}
