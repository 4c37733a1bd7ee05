//! Where samples live and what they look like: tags, artifact manifests, repository slugs.

use super::*;

/// The last timestamp this process put in a tag: tags of one process strictly increase, even
/// within a millisecond.
static LAST_MILLIS: AtomicU64 = AtomicU64::new(0);

/// `s<unix millis, 14 digits>-<8 hex random>`: sorts by time, unique across writers.
pub(super) fn new_tag() -> (String, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let previous = LAST_MILLIS
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or_else(|last| last);
    let millis = now.max(previous + 1);
    (
        format!("s{millis:014}-{:08x}", rand::random::<u32>()),
        millis,
    )
}

pub(super) fn is_sample_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    b.len() == 24
        && b[0] == b's'
        && b[1..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-'
        && b[16..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// The sample's manifest: config and layer the empty descriptor, the sample in an annotation.
pub(super) fn manifest(sample: &Sample, tag: &str, millis: u64) -> Vec<u8> {
    let created = UNIX_EPOCH + Duration::from_millis(millis);
    let mut annotations = serde_json::Map::new();
    annotations.insert(
        SAMPLE_ANNOTATION.into(),
        serde_json::to_string(sample)
            .expect("a Sample always serializes")
            .into(),
    );
    annotations.insert(TAG_ANNOTATION.into(), tag.into());
    annotations.insert(
        "org.opencontainers.image.created".into(),
        humantime::format_rfc3339_millis(created).to_string().into(),
    );
    artifact(annotations)
}

/// What a dangling `tag` is pointed at so that deleting it untags it (see [`Session::delete`]):
/// unique per tag, and skipped quietly by readers.
pub(super) fn tombstone(tag: &str) -> Vec<u8> {
    let mut annotations = serde_json::Map::new();
    annotations.insert(TOMBSTONE_ANNOTATION.into(), tag.into());
    artifact(annotations)
}

pub(super) fn artifact(annotations: serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    let empty = serde_json::json!({
        "mediaType": EMPTY_MEDIA_TYPE,
        "digest": EMPTY_DIGEST,
        "size": EMPTY_DATA.len(),
    });
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": empty,
        "layers": [empty],
        "annotations": annotations,
    }))
    .expect("a manifest always serializes")
}

/// The sample a manifest carries; `None` for a tombstone.
pub(super) fn parse_sample(manifest: &[u8]) -> Result<Option<Sample>, String> {
    let manifest: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| format!("manifest is not JSON: {e}"))?;
    let annotations = manifest.get("annotations");
    if annotations.is_some_and(|a| a.get(TOMBSTONE_ANNOTATION).is_some()) {
        return Ok(None);
    }
    let text = annotations
        .and_then(|a| a.get(SAMPLE_ANNOTATION))
        .and_then(|s| s.as_str())
        .ok_or_else(|| format!("manifest has no {SAMPLE_ANNOTATION} annotation"))?;
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// A valid OCI repository path from any text: lowercase; per `/`-component, runs of other
/// characters become `-` (a lone `.`, `_`, `__` or dashes stay), separators at either end and
/// empty components go; at most [`MAX_SLUG`] characters; `unnamed` if nothing is left.
pub(super) fn slug(text: &str) -> String {
    let mut components = Vec::new();
    for part in text.split('/') {
        let mut out = String::new();
        let mut separator = String::new();
        for c in part.chars().flat_map(char::to_lowercase) {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                if !out.is_empty() && !separator.is_empty() {
                    let kept = matches!(separator.as_str(), "." | "_" | "__")
                        || separator.bytes().all(|b| b == b'-');
                    out.push_str(if kept { &separator } else { "-" });
                }
                separator.clear();
                out.push(c);
            } else {
                separator.push(if matches!(c, '.' | '_' | '-') { c } else { '!' });
            }
        }
        if !out.is_empty() {
            components.push(out);
        }
    }
    let mut slug = components.join("/");
    if slug.len() > MAX_SLUG {
        slug.truncate(MAX_SLUG); // all ASCII by now
        let end = slug.trim_end_matches(['.', '_', '-', '/']).len();
        slug.truncate(end);
    }
    if slug.is_empty() {
        slug.push_str("unnamed");
    }
    slug
}

/// 12 hex digits of FNV-1a 64 over (repo, dockerfile, target), length-prefixed so no two keys
/// feed the same bytes. Stable: it names repositories that outlive any one version.
/// The key's part of its repository name. amd64 keys hash as they did before the architecture
/// was part of the key (their samples stay where they are); other architectures add theirs.
pub(super) fn key_hash(repo: &str, dockerfile: &str, target: Option<&str>, arch: Arch) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for field in [Some(repo), Some(dockerfile), target] {
        match field {
            Some(text) => {
                feed(&[1]);
                feed(&(text.len() as u64).to_le_bytes());
                feed(text.as_bytes());
            }
            None => feed(&[0]),
        }
    }
    if arch != Arch::Amd64 {
        feed(&[2]);
        feed(arch.as_str().as_bytes());
    }
    format!("{hash:016x}")[..12].to_owned()
}
