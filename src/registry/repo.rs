//! The few registry requests the launcher makes after a build (manifests and an image config:
//! read, put, resolve), made here rather than through oci-client so that every answer is read
//! within a cap and the token comes from a realm the policy allows ([`super::bounded`]):
//! oci-client 0.15 reads manifests, token answers and error answers whole, and its handshake
//! follows any realm.

use std::time::Duration;

use oci_client::Reference;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use sha2::{Digest, Sha256};

use super::bounded::{Auth, MAX_BODY_BYTES, authenticate, http_client, read_capped};
use super::{Credentials, RegistryError, one_line_error};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const DOCKER_CONTENT_DIGEST: &str = "Docker-Content-Digest";

/// One repository of a registry, authenticated for `actions`.
pub(crate) struct Repo {
    http: reqwest::Client,
    auth: Auth,
    /// `http[s]://HOST/v2/REPOSITORY`
    base: String,
    /// `HOST`, for messages.
    host: String,
}

impl Repo {
    /// The repository of `reference` (on `registry`, plain HTTP when `insecure`), after the
    /// `/v2/` handshake for `actions` (`pull`, `pull,push`). `image` names it in errors.
    pub(crate) async fn open(
        reference: &Reference,
        image: &str,
        insecure: bool,
        credentials: Option<&Credentials>,
        actions: &str,
    ) -> Result<Repo, RegistryError> {
        let fail = |detail: String| RegistryError::Unreachable {
            image: image.to_owned(),
            detail,
        };
        let http = http_client(CONNECT_TIMEOUT, READ_TIMEOUT).map_err(fail)?;
        // `docker.io` is served by `index.docker.io`.
        let host = reference.resolve_registry().to_owned();
        let scheme = if insecure { "http" } else { "https" };
        let registry_base = format!("{scheme}://{host}");
        let auth = authenticate(
            &http,
            &registry_base,
            reference.registry(),
            reference.repository(),
            actions,
            credentials,
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
        Ok(Repo {
            http,
            auth,
            base: format!("{registry_base}/v2/{}", reference.repository()),
            host,
        })
    }

    fn what(&self, method: &str, path: &str) -> String {
        format!("the answer of registry {} to {method} {path}", self.host)
    }

    /// The manifest `tag_or_digest` (any of `accept`): its bytes and `Docker-Content-Digest`.
    pub(crate) async fn manifest(
        &self,
        tag_or_digest: &str,
        accept: &[&str],
    ) -> Result<(Vec<u8>, Option<String>), String> {
        let url = format!("{}/manifests/{tag_or_digest}", self.base);
        let response = self
            .auth
            .apply(self.http.get(&url).header(ACCEPT, accept.join(", ")))
            .send()
            .await
            .map_err(|e| one_line_error(&e))?;
        let status = response.status();
        let digest = header_digest(&response);
        let what = self.what("GET", &format!("manifests/{tag_or_digest}"));
        let body = read_capped(response, MAX_BODY_BYTES, &what)
            .await
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(answered(status, &body));
        }
        Ok((body, digest))
    }

    /// The digest `tag_or_digest` resolves to: `HEAD`, else the hash of the manifest's bytes.
    pub(crate) async fn digest(
        &self,
        tag_or_digest: &str,
        accept: &[&str],
    ) -> Result<String, String> {
        let url = format!("{}/manifests/{tag_or_digest}", self.base);
        let response = self
            .auth
            .apply(self.http.head(&url).header(ACCEPT, accept.join(", ")))
            .send()
            .await
            .map_err(|e| one_line_error(&e))?;
        if response.status().is_success()
            && let Some(digest) = header_digest(&response)
        {
            return Ok(digest);
        }
        let (bytes, _) = self.manifest(tag_or_digest, accept).await?;
        Ok(format!("sha256:{:x}", Sha256::digest(&bytes)))
    }

    /// The blob `digest`, checked against it.
    pub(crate) async fn blob(&self, digest: &str) -> Result<Vec<u8>, String> {
        let url = format!("{}/blobs/{digest}", self.base);
        let response = self
            .auth
            .apply(self.http.get(&url))
            .send()
            .await
            .map_err(|e| one_line_error(&e))?;
        let status = response.status();
        let what = self.what("GET", &format!("blobs/{digest}"));
        let body = read_capped(response, MAX_BODY_BYTES, &what)
            .await
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(answered(status, &body));
        }
        let hashed = format!("sha256:{:x}", Sha256::digest(&body));
        if hashed != digest {
            return Err(format!(
                "the registry served {hashed} for the blob {digest}"
            ));
        }
        Ok(body)
    }

    /// Puts `body` (of `media_type`) under `tag`.
    pub(crate) async fn put_manifest(
        &self,
        tag: &str,
        body: Vec<u8>,
        media_type: &str,
    ) -> Result<(), String> {
        let url = format!("{}/manifests/{tag}", self.base);
        let response = self
            .auth
            .apply(
                self.http
                    .put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(body),
            )
            .send()
            .await
            .map_err(|e| one_line_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let what = self.what("PUT", &format!("manifests/{tag}"));
        let body = read_capped(response, MAX_BODY_BYTES, &what)
            .await
            .map_err(|e| e.to_string())?;
        Err(answered(status, &body))
    }
}

fn header_digest(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(DOCKER_CONTENT_DIGEST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `HTTP 404: MANIFEST_UNKNOWN manifest unknown`, on one line, cut to a readable length.
fn answered(status: reqwest::StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    if line.is_empty() {
        line = "no details".into();
    }
    format!("HTTP {}: {line}", status.as_u16())
}
