//! The image index of a several-platform build against a real registry (distribution): a
//! platform that pushed an index of its own (BuildKit does when it adds attestations) contributes
//! its manifests, checked against the image config; an image of the wrong architecture is never
//! listed.

mod support;

use buildkit_launcher::registry::index::{Part, push_index};
use serde_json::json;
use sha2::{Digest, Sha256};
use support::registry::{Registry, require_root_and_tools};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// An attestation-like manifest (OCI 1.1 artifact, the empty descriptor as config and layer) in
/// `repo`; its digest.
async fn put_attestation(registry: &Registry, repo: &str) -> String {
    let empty = b"{}".to_vec();
    let empty_digest = format!("sha256:{:x}", Sha256::digest(&empty));
    // An upload session, then its one PUT with the digest (distribution has no single POST).
    let http = reqwest::Client::new();
    let started = http
        .post(format!("http://{}/v2/{repo}/blobs/uploads/", registry.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let location = started.headers()["location"].to_str().unwrap().to_owned();
    let location = if location.starts_with('/') {
        format!("http://{}{location}", registry.addr)
    } else {
        location
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let status = http
        .put(format!("{location}{separator}digest={empty_digest}"))
        .header("Content-Type", "application/octet-stream")
        .body(empty)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 201);
    let descriptor = json!({"mediaType": "application/vnd.oci.empty.v1+json",
                            "digest": empty_digest, "size": 2});
    put_manifest(
        registry,
        repo,
        &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": "application/vnd.in-toto+json",
                "config": descriptor, "layers": [descriptor]}),
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await
}

/// PUT `body` as a manifest of `repo` under its digest; the digest.
async fn put_manifest(
    registry: &Registry,
    repo: &str,
    body: &serde_json::Value,
    media_type: &str,
) -> String {
    let bytes = serde_json::to_vec(body).unwrap();
    let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
    let status = reqwest::Client::new()
        .put(format!(
            "http://{}/v2/{repo}/manifests/{digest}",
            registry.addr
        ))
        .header("Content-Type", media_type)
        .body(bytes)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 201);
    digest
}

/// `push_index` of one platform's `digest` as `platform`, under `repo:tag` in `registry`.
async fn index_of(
    registry: &Registry,
    repo: &str,
    tag: &str,
    platform: &str,
    digest: &str,
) -> Result<String, String> {
    let repository = format!("{}/{repo}", registry.addr);
    push_index(
        &repository,
        &[format!("{repository}:{tag}")],
        &[Part {
            platform: platform.into(),
            digest: digest.into(),
        }],
        &registry.addr,
        true,
        None,
    )
    .await
    .map_err(|e| e.to_string())
}

#[test]
fn a_platform_pushed_as_an_index_with_an_attestation_is_checked_and_flattened() {
    if !require_root_and_tools(&["docker-registry", "buildah", "busybox"]) {
        return;
    }
    let registry = Registry::start().with_base_image();
    let repo = "base/busybox";
    let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
    let (status, image) = registry.manifest_json(repo, "latest", accept);
    assert_eq!(status, 200);
    let image_digest = registry.manifest_digest(repo, "latest").unwrap();
    let size = serde_json::to_vec(&image).unwrap().len();
    let media_type = image["mediaType"].as_str().unwrap().to_owned();
    let arch = registry.image_config(repo, "latest")["architecture"]
        .as_str()
        .unwrap()
        .to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // What BuildKit pushes with attestations: the image, and an attestation manifest for it.
        let attestation = put_attestation(&registry, repo).await;
        let own = json!({
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [
                {"mediaType": media_type, "digest": image_digest, "size": size,
                 "platform": {"architecture": arch, "os": "linux"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                 "digest": attestation, "size": 100,
                 "platform": {"architecture": "unknown", "os": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                 "vnd.docker.reference.digest": image_digest}},
            ],
        });
        let own_digest = put_manifest(&registry, repo, &own, INDEX).await;
        let platform = format!("linux/{arch}");
        let digest = index_of(&registry, repo, "multi", &platform, &own_digest)
            .await
            .unwrap();
        let (status, index) = registry.manifest_json(repo, "multi", INDEX);
        assert_eq!(status, 200);
        let listed: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap())
            .collect();
        assert_eq!(
            listed.len(),
            2,
            "the image and its attestation, flattened: {index}"
        );
        assert_eq!(listed[0], image_digest);
        assert!(digest.starts_with("sha256:"));

        // The same index claimed for the other architecture: refused, nothing pushed.
        let other = if arch == "amd64" {
            "linux/arm64"
        } else {
            "linux/amd64"
        };
        let err = index_of(&registry, repo, "wrong", other, &own_digest)
            .await
            .unwrap_err();
        assert!(err.contains(&format!("not for {other}")), "{err}");
        assert_eq!(registry.manifest_json(repo, "wrong", INDEX).0, 404);

        // An image whose config says another architecture than its index descriptor claims.
        let lying = json!({
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [
                {"mediaType": media_type, "digest": image_digest, "size": size,
                 "platform": {"architecture": other.trim_start_matches("linux/"), "os": "linux"}},
            ],
        });
        let lying_digest = put_manifest(&registry, repo, &lying, INDEX).await;
        let err = index_of(&registry, repo, "lying", other, &lying_digest)
            .await
            .unwrap_err();
        assert!(err.contains(&format!("built for linux/{arch}")), "{err}");
        assert_eq!(registry.manifest_json(repo, "lying", INDEX).0, 404);
    });
}
