//! Several platforms, one image: each platform's runner pushed its image by digest; the
//! launcher writes one OCI image index listing them and puts it under every tag, then checks
//! what the registry serves (every tag → the index's digest, the index lists each platform).
//!
//! Each platform's manifest is read back and its config's `os`/`architecture` must be the
//! platform it was built for, so an image built on the wrong runner can never be listed under
//! another platform. A platform whose push is itself an index (BuildKit pushes one when it adds
//! attestations) contributes the manifests it lists, as `docker buildx imagetools create` does:
//! nested indexes are valid OCI but many clients do not follow them.
//!
//! The requests are [`super::repo::Repo`]'s: every answer within a cap, the token only from a
//! realm the policy allows.

use oci_client::Reference;
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::repo::Repo;
use super::{Credentials, RegistryError, parse};

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
    let open = |reference: Reference, image: String| async move {
        // Plain HTTP only to the build's own registry, as `--insecure-registry` says.
        let insecure = insecure && reference.registry() == registry;
        Repo::open(&reference, &image, insecure, credentials, "pull,push").await
    };
    let main_ref = parse(&format!("{repository}:latest"))?;
    let same = |r: &Reference| {
        r.registry() == main_ref.registry() && r.repository() == main_ref.repository()
    };
    let main = open(main_ref.clone(), repository.to_owned()).await?;
    let mut entries = Vec::new();
    for part in parts {
        entries.extend(entries_of(&main, repository, part, false).await?);
    }
    let body = index_body(entries);
    let digest = format!("sha256:{:x}", Sha256::digest(&body));
    let mut targets = Vec::new();
    for image in images {
        let reference = parse(image)?;
        let push = |detail: String| RegistryError::Push {
            image: image.clone(),
            detail,
        };
        let tag = reference
            .tag()
            .ok_or_else(|| push("the image names no tag".into()))?
            .to_owned();
        let target = if same(&reference) {
            None
        } else {
            Some(open(reference, image.clone()).await?)
        };
        target
            .as_ref()
            .unwrap_or(&main)
            .put_manifest(&tag, body.clone(), OCI_IMAGE_INDEX_MEDIA_TYPE)
            .await
            .map_err(push)?;
        targets.push((image, tag, target));
    }
    for (image, tag, target) in &targets {
        verify_index(target.as_ref().unwrap_or(&main), image, tag, &digest, parts).await?;
    }
    Ok(digest)
}

/// The index's descriptors for one platform's pushed image. `nested`: this is the image of a
/// platform's own index, which may not be an index again.
async fn entries_of(
    repo: &Repo,
    repository: &str,
    part: &Part,
    nested: bool,
) -> Result<Vec<Value>, RegistryError> {
    let image = format!("{repository}@{}", part.digest);
    let (bytes, media_type, manifest) = fetch(repo, &part.digest, &image).await?;
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
                Box::pin(entries_of(repo, repository, &child, true)).await?;
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
        let config =
            repo.blob(config_digest)
                .await
                .map_err(|detail| RegistryError::Unreachable {
                    image: format!("{image} (its config {config_digest})"),
                    detail,
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

/// A manifest's bytes (checked against the digest it was asked by, when it was), media type
/// and JSON. `image` names it in errors.
async fn fetch(
    repo: &Repo,
    tag_or_digest: &str,
    image: &str,
) -> Result<(Vec<u8>, String, Value), RegistryError> {
    let bad = |detail: String| RegistryError::Unreachable {
        image: image.to_owned(),
        detail,
    };
    let (bytes, served) = repo.manifest(tag_or_digest, ACCEPTED).await.map_err(bad)?;
    let hashed = format!("sha256:{:x}", Sha256::digest(&bytes));
    if tag_or_digest.starts_with("sha256:")
        && (served.as_deref().is_some_and(|d| d != tag_or_digest) || hashed != tag_or_digest)
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

/// `tag` serves the index (its bytes hash to `digest`), and the index lists an image of every
/// platform.
async fn verify_index(
    repo: &Repo,
    image: &str,
    tag: &str,
    digest: &str,
    parts: &[Part],
) -> Result<(), RegistryError> {
    let (bytes, media_type, index) = fetch(repo, tag, image).await?;
    let served = format!("sha256:{:x}", Sha256::digest(&bytes));
    if served != digest || !is_index(&media_type) {
        return Err(RegistryError::Mismatch {
            image: image.to_owned(),
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
            image: image.to_owned(),
            expected: format!("an index listing {}", missing.platform),
            found: format!("an index of {}", listed.join(", ")),
        });
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
