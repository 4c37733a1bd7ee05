//! Unit tests of the history store's layout and failure handling.

use super::*;

fn sample() -> Sample {
    Sample {
        ts: "2026-11-01T00:00:00Z".into(),
        repo: "Acme/App".into(),
        dockerfile: "Dockerfile".into(),
        target: None,
        lang: Some("rust".into()),
        tier: Some("cx33".into()),
        peak_memory_mib: 4000,
        arch: None,
        duration_s: 60.0,
        outcome: Outcome::Ok,
    }
}

#[test]
fn slugs_are_valid_repository_paths() {
    assert_eq!(slug("Acme/App"), "acme/app");
    assert_eq!(slug("acme/my_app.v2"), "acme/my_app.v2");
    assert_eq!(slug("/a//b/"), "a/b");
    assert_eq!(slug("-x--y-"), "x--y");
    assert_eq!(slug("Ünïcode app!!"), "n-code-app");
    assert_eq!(slug("a._b"), "a-b");
    assert_eq!(slug("%%%"), "unnamed");
    assert_eq!(slug(""), "unnamed");
    let long = slug(&format!("{}-/b", "a".repeat(99)));
    assert_eq!(long, "a".repeat(99));
    let component = regex_like_component;
    for s in ["acme/app", "acme/my_app.v2", "x--y", "n-code-app", "a-b"] {
        assert!(s.split('/').all(component), "{s}");
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn regex_like_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    c.split(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .all(|sep| matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-'))
}

#[test]
fn key_hashes_are_stable_and_tell_keys_apart() {
    // Pinned: changing it would orphan every history in every registry.
    assert_eq!(
        key_hash("acme/app", "Dockerfile", None, Arch::Amd64),
        "7f9618eeaa38"
    );
    // An arm64 key is its own repository, pinned the same way.
    assert_eq!(
        key_hash("acme/app", "Dockerfile", None, Arch::Arm64),
        "5c2974821ce9"
    );
    let all = [
        key_hash("acme/app", "Dockerfile", None, Arch::Amd64),
        key_hash("acme/app", "Dockerfile", Some(""), Arch::Amd64),
        key_hash("acme/app", "Dockerfile", Some("prod"), Arch::Amd64),
        key_hash("acme/ap", "pDockerfile", None, Arch::Amd64),
        key_hash("Acme/App", "Dockerfile", None, Arch::Amd64),
        key_hash("acme/app", "Dockerfile", None, Arch::Arm64),
    ];
    let distinct: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "{all:?}");
    assert!(all.iter().all(|h| h.len() == 12));
}

#[test]
fn tags_sort_by_time_and_strictly_increase_within_a_process() {
    let tags: Vec<String> = (0..1000).map(|_| new_tag().0).collect();
    assert!(tags.iter().all(|t| is_sample_tag(t)), "{}", tags[0]);
    assert!(tags.windows(2).all(|w| w[0] < w[1]));
    assert!(!is_sample_tag("latest"));
    assert!(!is_sample_tag("s0000000000000x-00000000"));
    assert!(!is_sample_tag("s00000000000000-0000000G"));
}

#[test]
fn a_manifest_carries_its_sample_and_tag() {
    let (tag, millis) = new_tag();
    let body = manifest(&sample(), &tag, millis);
    assert_eq!(parse_sample(&body).unwrap(), Some(sample()));
    assert_eq!(parse_sample(&tombstone(&tag)).unwrap(), None);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["annotations"][TAG_ANNOTATION], tag.as_str());
    assert_eq!(v["config"]["digest"], EMPTY_DIGEST);
    assert_eq!(v["layers"][0]["mediaType"], EMPTY_MEDIA_TYPE);
    assert!(parse_sample(b"{}").unwrap_err().contains(SAMPLE_ANNOTATION));
}

#[test]
fn next_links_stay_on_the_registry() {
    let base = "http://r:5000";
    assert_eq!(
        next_link(base, r#"</v2/a/tags/list?n=2&last=b>; rel="next""#).as_deref(),
        Some("http://r:5000/v2/a/tags/list?n=2&last=b")
    );
    assert_eq!(
        next_link(base, r#"<http://r:5000/v2/a/tags/list?last=b>; rel=next"#).as_deref(),
        Some("http://r:5000/v2/a/tags/list?last=b")
    );
    assert_eq!(next_link(base, r#"<http://evil/v2/x>; rel="next""#), None);
    assert_eq!(next_link(base, r#"</v2/a/tags/list>; rel="prev""#), None);
}

#[test]
fn failures_read_envelopes_and_never_name_the_password() {
    let f = Failure::http(
        400,
        br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:x"}]}"#,
    );
    assert!(f.blob_trouble() && !f.not_found());
    assert_eq!(
        f.message(None),
        "HTTP 400: MANIFEST_BLOB_UNKNOWN blob unknown to registry"
    );
    assert!(Failure::http(404, b"").not_found());
    // As distribution 2.8 answers for a dangling tag and for a missing one.
    let dangling = Failure::http(
        404,
        br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Name":"h/x","Revision":"sha256:74440b8488e5407a3f11e19b1e915e4c6a891f66fc0c202058b10737674f056e"}}]}"#,
    );
    assert!(dangling.dangling() && dangling.not_found() && !dangling.transient());
    let missing = Failure::http(
        404,
        br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nosuchtag"}}]}"#,
    );
    assert!(!missing.dangling() && missing.not_found());
    assert!(Failure::http(500, br#"{"errors":[{"code":"UNKNOWN"}]}"#).transient());
    let store = RegistryStore::new(
        "r:5000".into(),
        true,
        Some(Credentials {
            username: "ci".into(),
            password: zeroize::Zeroizing::new("s3cret-pw".into()),
        }),
        10,
    );
    assert_eq!(store.redact("echo s3cret-pw".into()), "echo ***");
    assert!(!format!("{store:?}").contains("s3cret-pw"));
    assert_eq!(
        store.describe(),
        "registry:r:5000/cache/buildkit-launcher/history"
    );
}
