//! Several platforms, one image: each platform's runner pushed its image by digest; the
//! launcher writes one OCI image index listing them and puts it under every tag, then checks
//! what the registry serves (every tag → the index's digest, the index lists each platform).
//!
//! Each platform's manifest is read back and its config's `os`/`architecture` must be the
//! platform it was built for, so an image built on the wrong runner can never be listed under
//! another platform. A platform whose push is itself an index (BuildKit pushes one when it adds
//! attestations) contributes the manifests it lists, as `docker buildx imagetools create` does:
//! nested indexes are valid OCI but many clients do not follow them.

use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::{Client, Reference};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Credentials, RegistryError, auth, client, one_line_error, parse};

/// Manifests are small; anything larger is not what a runner pushed.
const MAX_MANIFEST_BYTES: usize = 4 << 20;

const ACCEPTED: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// One platform's pushed image: `linux/arm64` and the digest its build reported.
#[derive(Debug, Clone)]
pub struct Part {
    pub platform: String,
    pub digest: String,
}

/// Build the index of `parts` in `repository` (`host/path`), push it under every image of
/// `images`, and verify; the index's digest.
pub async fn push_index(
    repository: &str,
    images: &[String],
    parts: &[Part],
    registry: &str,
    insecure: bool,
    credentials: Option<&Credentials>,
) -> Result<String, RegistryError> {
    let client = client(registry, insecure);
    let auth = auth(credentials);
    // oci-client looks credentials up by the reference's resolved registry (`index.docker.io`
    // for `docker.io`), not by the spelling of --registry.
    let resolved = parse(&format!("{repository}:latest"))?;
    client
        .store_auth_if_needed(resolved.resolve_registry(), &auth)
        .await;
    let mut entries = Vec::new();
    for part in parts {
        entries.extend(entries_of(&client, repository, part, false).await?);
    }
    let body = index_body(entries);
    let digest = format!("sha256:{:x}", Sha256::digest(&body));
    for image in images {
        let reference = parse(image)?;
        client
            .push_manifest_raw(
                &reference,
                body.clone(),
                OCI_IMAGE_INDEX_MEDIA_TYPE
                    .parse()
                    .expect("a valid header value"),
            )
            .await
            .map_err(|e| RegistryError::Push {
                image: image.clone(),
                detail: one_line_error(&e),
            })?;
    }
    verify_index(&client, images, &digest, parts).await?;
    Ok(digest)
}

/// The index's descriptors for one platform's pushed image. `nested`: this is the image of a
/// platform's own index, which may not be an index again.
async fn entries_of(
    client: &Client,
    repository: &str,
    part: &Part,
    nested: bool,
) -> Result<Vec<Value>, RegistryError> {
    let image = format!("{repository}@{}", part.digest);
    let reference = parse(&image)?;
    let (bytes, media_type, manifest) = fetch(client, &reference, &image).await?;
    let (os, arch) = part
        .platform
        .split_once('/')
        .unwrap_or(("linux", &part.platform));
    let wrong = |found: String| RegistryError::WrongPlatform {
        image: image.clone(),
        expected: part.platform.clone(),
        found,
    };
    if is_index(&media_type) && nested {
        return Err(wrong("an index inside the platform's index".into()));
    }
    if is_index(&media_type) {
        let listed = manifest["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let images: Vec<&Value> = listed
            .iter()
            .filter(|m| m["platform"]["architecture"] != "unknown")
            .collect();
        match images.as_slice() {
            [one] if one["platform"]["os"] == os && one["platform"]["architecture"] == arch => {
                // The descriptor's platform is the runner's word: its image config must agree.
                let child = Part {
                    platform: part.platform.clone(),
                    digest: one["digest"].as_str().unwrap_or_default().to_owned(),
                };
                Box::pin(entries_of(client, repository, &child, true)).await?;
                Ok(listed)
            }
            _ => Err(wrong(format!(
                "an index of {} images",
                images
                    .iter()
                    .map(|m| format!(
                        "{}/{}",
                        m["platform"]["os"].as_str().unwrap_or("?"),
                        m["platform"]["architecture"].as_str().unwrap_or("?")
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    } else {
        let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default();
        let mut config = Vec::new();
        client
            .pull_blob(&reference, config_digest, &mut config)
            .await
            .map_err(|e| RegistryError::Unreachable {
                image: format!("{image} (its config {config_digest})"),
                detail: one_line_error(&e),
            })?;
        let config: Value = serde_json::from_slice(&config).map_err(|e| wrong(e.to_string()))?;
        let found = format!(
            "{}/{}",
            config["os"].as_str().unwrap_or("?"),
            config["architecture"].as_str().unwrap_or("?")
        );
        if found != part.platform {
            return Err(wrong(found));
        }
        Ok(vec![json!({
            "mediaType": media_type,
            "digest": part.digest,
            "size": bytes.len(),
            "platform": { "architecture": arch, "os": os },
        })])
    }
}

/// A manifest's bytes (checked against the digest it was asked by), media type and JSON.
async fn fetch(
    client: &Client,
    reference: &Reference,
    image: &str,
) -> Result<(Vec<u8>, String, Value), RegistryError> {
    // The credentials were stored in the client by `push_index`; this is only the fallback.
    let (bytes, digest) = client
        .pull_manifest_raw(
            reference,
            &oci_client::secrets::RegistryAuth::Anonymous,
            ACCEPTED,
        )
        .await
        .map_err(|e| RegistryError::Unreachable {
            image: image.to_owned(),
            detail: one_line_error(&e),
        })?;
    let bad = |detail: String| RegistryError::Unreachable {
        image: image.to_owned(),
        detail,
    };
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(bad(format!("a manifest of {} bytes", bytes.len())));
    }
    let hashed = format!("sha256:{:x}", Sha256::digest(&bytes));
    if let Some(asked) = reference.digest()
        && (asked != digest || asked != hashed)
    {
        return Err(bad(format!("the registry served {hashed}")));
    }
    let manifest: Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a manifest: {e}")))?;
    // `mediaType` is optional in OCI manifests; an index is told by its `manifests`.
    let media_type = match manifest["mediaType"].as_str() {
        Some(t) => t.to_owned(),
        None if manifest.get("manifests").is_some() => OCI_IMAGE_INDEX_MEDIA_TYPE.to_owned(),
        None => OCI_IMAGE_MEDIA_TYPE.to_owned(),
    };
    Ok((bytes, media_type, manifest))
}

fn is_index(media_type: &str) -> bool {
    media_type == OCI_IMAGE_INDEX_MEDIA_TYPE || media_type == IMAGE_MANIFEST_LIST_MEDIA_TYPE
}

/// The index document: fixed key order (serde_json's map is sorted), so its digest is stable.
fn index_body(entries: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
        "manifests": entries,
    }))
    .expect("an index always serializes")
}

/// Every tag serves the index (its bytes hash to `digest`), and the index lists an image of
/// every platform.
async fn verify_index(
    client: &Client,
    images: &[String],
    digest: &str,
    parts: &[Part],
) -> Result<(), RegistryError> {
    for image in images {
        let reference = parse(image)?;
        let (bytes, media_type, index) = fetch(client, &reference, image).await?;
        let served = format!("sha256:{:x}", Sha256::digest(&bytes));
        if served != digest || !is_index(&media_type) {
            return Err(RegistryError::Mismatch {
                image: image.clone(),
                expected: format!("the image index {digest}"),
                found: format!("{media_type} {served}"),
            });
        }
        let listed: Vec<String> = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["platform"]["os"].as_str().unwrap_or("?"),
                    d["platform"]["architecture"].as_str().unwrap_or("?")
                )
            })
            .collect();
        if let Some(missing) = parts.iter().find(|p| !listed.contains(&p.platform)) {
            return Err(RegistryError::Mismatch {
                image: image.clone(),
                expected: format!("an index listing {}", missing.platform),
                found: format!("an index of {}", listed.join(", ")),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_body_is_stable_and_lists_each_entry() {
        let entry = |d: &str, arch: &str| {
            json!({"mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": d, "size": 10,
                   "platform": {"architecture": arch, "os": "linux"}})
        };
        let a = index_body(vec![
            entry("sha256:aa", "amd64"),
            entry("sha256:bb", "arm64"),
        ]);
        let b = index_body(vec![
            entry("sha256:aa", "amd64"),
            entry("sha256:bb", "arm64"),
        ]);
        assert_eq!(a, b);
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["mediaType"], OCI_IMAGE_INDEX_MEDIA_TYPE);
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["manifests"][1]["platform"]["architecture"], "arm64");
    }
}
