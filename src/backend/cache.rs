//! Extra registry caches beside the default one: `--cache-to` / `--cache-from` (the plugin
//! settings `cache_to` / `cache_from`), as plugin-docker-buildx hands them to buildx.
//!
//! The values come from the pipeline file, which a pull request controls, and would end up in a
//! CSV record on buildctl's command line (`--export-cache type=registry,ref=…`). So no value is
//! passed on as written: each is parsed into a reference checked against the distribution
//! grammar (no comma, quote, `=`, space or control character survives it) and a mode from a
//! fixed list, and the launcher writes BuildKit's attributes itself. Accepted, one cache each:
//!
//! - `HOST[:PORT]/PATH[:TAG]`, a registry reference with an explicit host (without one it would
//!   mean Docker Hub);
//! - `type=registry,ref=HOST[:PORT]/PATH[:TAG][,mode=min|max]`, BuildKit's own form; `mode` is
//!   for `cache_to` only and defaults to `max`, like the default cache.
//!
//! Anything else is refused: other types (`local` and its `dest`/`src` are paths on the runner,
//! which on the local provider is the agent itself; `gha`, `s3`, `azblob` send the cache
//! elsewhere), unknown keys, digests, quotes. Values may be repeated or comma-separated
//! ([`split`]). [`settle`] then checks them against the rest of the build: a cache is written
//! only to the build's own registry (the only one its credentials are for), never over one of
//! the build's images or into the history namespace; another registry's cache is read
//! anonymously.

use std::fmt;

use serde::Serialize;

use super::{Backend, BuildRequest, CacheMode};

/// At most this many extra caches each way: each export is a push during a paid build.
pub const MAX_EXTRA: usize = 8;

/// A cache's registry reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRef {
    /// `HOST[:PORT]`, as written (compared as written: `ZOT.example` is not `zot.example`).
    pub host: String,
    /// The repository path (`cache/org/app`).
    pub path: String,
    pub tag: Option<String>,
}

impl fmt::Display for CacheRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        Ok(())
    }
}

impl Serialize for CacheRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl CacheRef {
    /// `HOST[:PORT]/PATH[:TAG]`, with the distribution grammar's rules for each part.
    pub fn parse(s: &str) -> Result<CacheRef, String> {
        if s.contains('@') {
            return Err("a digest cannot hold a cache: name a tag (HOST[:PORT]/PATH[:TAG])".into());
        }
        let Some((host, rest)) = s.split_once('/') else {
            return Err("not a registry reference HOST[:PORT]/PATH[:TAG]".into());
        };
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(format!(
                "{} is not a registry host (a name with a '.', a port, or localhost); without one the reference would mean Docker Hub",
                quoted(host)
            ));
        }
        if !valid_host(host) {
            return Err(format!("{} is not a registry HOST[:PORT]", quoted(host)));
        }
        let (path, tag) = match rest.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') => (path, Some(tag)),
            _ => (rest, None),
        };
        if !path.split('/').all(valid_component) {
            return Err(format!(
                "{} is not a repository path (lowercase letters and digits, separated by '.', '_', '__', '-' or '/')",
                quoted(path)
            ));
        }
        if host.len() + 1 + path.len() > 255 {
            return Err("the repository name is longer than 255 characters".into());
        }
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(format!(
                "{} is not a tag (up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-')",
                quoted(tag)
            ));
        }
        Ok(CacheRef {
            host: host.to_owned(),
            path: path.to_owned(),
            tag: tag.map(str::to_owned),
        })
    }

    /// The tag BuildKit uses: the one given, else `latest` (cache/remotecache/registry:
    /// `reference.TagNameOnly`).
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// `HOST[:PORT]/PATH`, without the tag (what buildah takes).
    pub fn repository(&self) -> String {
        format!("{}/{}", self.host, self.path)
    }

    /// Do both name the same manifest in BuildKit's terms?
    fn same_target(&self, other: &CacheRef) -> bool {
        self.host == other.host
            && self.path == other.path
            && self.tag_or_latest() == other.tag_or_latest()
    }

    /// Is this in the build's registry, spelled as `--registry` spells it? Only then do the
    /// build's credentials (keyed by that spelling on the runner) and `--insecure-registry` apply.
    pub fn in_registry(&self, registry: Option<&str>) -> bool {
        registry.is_some_and(|r| self.host == r)
    }
}

fn valid_host(host: &str) -> bool {
    let valid_port = |p: &str| {
        !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && {
            p.parse::<u32>().is_ok_and(|n| n <= 65535)
        }
    };
    if let Some(rest) = host.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        return !v6.is_empty()
            && v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':')
            && (after.is_empty() || after.strip_prefix(':').is_some_and(valid_port));
    }
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    }) && port.is_none_or(valid_port)
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` (distribution/reference's path component).
fn valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if !bytes.first().is_some_and(|&b| alnum(b)) || !bytes.last().is_some_and(|&b| alnum(b)) {
        return false;
    }
    let mut separator = String::new();
    for &b in bytes {
        if alnum(b) {
            let ok = matches!(separator.as_str(), "" | "." | "_" | "__")
                || separator.bytes().all(|s| s == b'-');
            if !ok {
                return false;
            }
            separator.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            separator.push(b as char);
        } else {
            return false;
        }
    }
    true
}

fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    bytes.len() <= 128
        && bytes.first().is_some_and(|&b| word(b))
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// An extra cache the build exports to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheExport {
    #[serde(rename = "ref")]
    pub reference: CacheRef,
    /// `min` or `max`.
    pub mode: CacheMode,
}

/// An extra cache the build imports from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheImport {
    #[serde(rename = "ref")]
    pub reference: CacheRef,
    /// In another registry than the build's: read without credentials (set by [`settle`]).
    pub anonymous: bool,
}

/// The extra caches as `plan --json` shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExtraCaches {
    pub to: Vec<CacheExport>,
    pub from: Vec<CacheImport>,
}

impl ExtraCaches {
    pub fn of(req: &BuildRequest) -> ExtraCaches {
        ExtraCaches {
            to: req.cache_to.clone(),
            from: req.cache_from.clone(),
        }
    }

    /// One line for the human plan; `None` without extra caches.
    pub fn describe(&self, dry_run: bool) -> Option<String> {
        let mut parts = Vec::new();
        if !self.to.is_empty() {
            let list: Vec<String> = self
                .to
                .iter()
                .map(|e| format!("{} (mode {})", e.reference, mode_name(e.mode)))
                .collect();
            let note = if dry_run {
                " (not written: dry run)"
            } else {
                ""
            };
            parts.push(format!("also exported to {}{note}", list.join(", ")));
        }
        if !self.from.is_empty() {
            let list: Vec<String> = self
                .from
                .iter()
                .map(|i| {
                    let note = if i.anonymous { " (anonymous)" } else { "" };
                    format!("{}{note}", i.reference)
                })
                .collect();
            parts.push(format!("also imported from {}", list.join(", ")));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

pub fn mode_name(mode: CacheMode) -> &'static str {
    match mode {
        CacheMode::Min => "min",
        _ => "max",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    To,
    From,
}

impl Direction {
    /// How messages name the setting: the flag and its plugin twin.
    fn setting(self) -> &'static str {
        match self {
            Direction::To => "--cache-to (cache_to)",
            Direction::From => "--cache-from (cache_from)",
        }
    }
}

/// The value as an error message quotes it: escaped (a newline cannot start a second line) and
/// cut to a readable length.
fn quoted(value: &str) -> String {
    const MAX: usize = 120;
    match value.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// Split a comma-separated list into caches. A `KEY=VALUE` piece continues the cache before it
/// when that one is in `KEY=VALUE` form and lacks the key, so
/// `type=registry,ref=a/b,mode=max,host/c` is two caches and `…,ref=x,…,ref=y` starts a second
/// one at the second `ref`.
pub fn split(value: &str) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    let mut keys: Vec<String> = Vec::new(); // of the last item, when it is KEY=VALUE
    for piece in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let key = piece
            .split_once('=')
            .map(|(k, _)| k.trim().to_ascii_lowercase());
        match (key, items.last_mut()) {
            (Some(key), Some(last)) if !keys.is_empty() && !keys.contains(&key) => {
                last.push(',');
                last.push_str(piece);
                keys.push(key);
            }
            (key, _) => {
                items.push(piece.to_owned());
                keys = key.into_iter().collect();
            }
        }
    }
    items
}

/// One cache: a reference, or BuildKit's `type=registry,ref=…[,mode=…]`.
fn parse_item(direction: Direction, item: &str) -> Result<(CacheRef, Option<CacheMode>), String> {
    if item.contains(['"', '\'']) {
        return Err("quotes are not accepted (no cache reference needs one)".into());
    }
    if !item.contains('=') {
        return Ok((CacheRef::parse(item)?, None));
    }
    let mut fields = Vec::new();
    for field in item.split(',') {
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!("{} is not KEY=VALUE", quoted(field)));
        };
        // BuildKit reads keys case-insensitively (cmd/buildctl/build/exportcache.go).
        fields.push((key.trim().to_ascii_lowercase(), value));
    }
    match fields.iter().find(|(k, _)| k == "type") {
        Some((_, "registry")) => {}
        Some((_, other)) => {
            return Err(format!(
                "type={} is not accepted: only type=registry (local, gha, s3, azblob and inline caches write or read outside the registry)",
                quoted(other)
            ));
        }
        None => return Err("the KEY=VALUE form needs type=registry".into()),
    }
    let (mut reference, mut mode) = (None, None);
    for (key, value) in &fields {
        match (key.as_str(), direction) {
            ("type", _) => {}
            ("ref", _) => reference = Some(CacheRef::parse(value)?),
            ("mode", Direction::To) => {
                mode = Some(match *value {
                    "min" => CacheMode::Min,
                    "max" => CacheMode::Max,
                    other => {
                        return Err(format!("mode={} is not min or max", quoted(other)));
                    }
                });
            }
            ("mode", Direction::From) => {
                return Err(
                    "mode is for cache_to only (an import reads what the export wrote)".into(),
                );
            }
            (other, _) => {
                let keys = match direction {
                    Direction::To => "type, ref and mode",
                    Direction::From => "type and ref",
                };
                return Err(format!(
                    "unknown key {}: the accepted keys are {keys} (registry.insecure follows --insecure-registry)",
                    quoted(other)
                ));
            }
        }
    }
    let reference = reference.ok_or("type=registry needs ref=HOST[:PORT]/PATH[:TAG]")?;
    Ok((reference, mode))
}

fn parse_all(
    direction: Direction,
    values: &[String],
) -> Result<Vec<(CacheRef, Option<CacheMode>)>, String> {
    let mut out = Vec::new();
    for value in values {
        for item in split(value) {
            let parsed = parse_item(direction, &item)
                .map_err(|e| format!("{} {}: {e}", direction.setting(), quoted(&item)))?;
            out.push(parsed);
        }
    }
    if out.len() > MAX_EXTRA {
        return Err(format!(
            "{}: at most {MAX_EXTRA} extra caches, got {}",
            direction.setting(),
            out.len()
        ));
    }
    Ok(out)
}

/// `--cache-to` values: the mode defaults to `max`, like the default cache's.
pub fn exports(values: &[String]) -> Result<Vec<CacheExport>, String> {
    Ok(parse_all(Direction::To, values)?
        .into_iter()
        .map(|(reference, mode)| CacheExport {
            reference,
            mode: mode.unwrap_or(CacheMode::Max),
        })
        .collect())
}

/// `--cache-from` values.
pub fn imports(values: &[String]) -> Result<Vec<CacheImport>, String> {
    Ok(parse_all(Direction::From, values)?
        .into_iter()
        .map(|(reference, _)| CacheImport {
            reference,
            anonymous: false,
        })
        .collect())
}

/// Check the extra caches against the rest of the build (its registry, images, default cache,
/// backend) and drop imports that repeat another; `history` is the history namespace
/// (config `registry.history`).
pub fn settle(req: &mut BuildRequest, history: &str) -> Result<(), String> {
    let registry = req.registry.clone();
    let default = req.cache_ref().map(|_| CacheRef {
        host: registry.clone().unwrap_or_default(),
        path: req.cache_repository(),
        tag: None,
    });
    if req.backend == Backend::Buildah {
        let tagged = req
            .cache_to
            .iter()
            .map(|e| (Direction::To, &e.reference))
            .chain(
                req.cache_from
                    .iter()
                    .map(|i| (Direction::From, &i.reference)),
            )
            .find(|(_, r)| r.tag.is_some());
        if let Some((direction, r)) = tagged {
            return Err(format!(
                "{} \"{r}\": buildah takes a cache repository without a tag (it tags each step's cache image itself); drop the tag or use the buildctl backend",
                direction.setting()
            ));
        }
    }
    let mut seen: Vec<CacheRef> = default.iter().cloned().collect();
    for export in &req.cache_to {
        let r = &export.reference;
        let setting = Direction::To.setting();
        let Some(own) = registry.as_deref() else {
            return Err(format!(
                "{setting} \"{r}\": needs --registry: a cache is written only to the build's own registry"
            ));
        };
        if !r.in_registry(Some(own)) {
            return Err(format!(
                "{setting} \"{r}\": not in the build's registry {own}; a cache is written only where the build's credentials go (cache_from may read another registry)"
            ));
        }
        if r.path == req.image_repo && req.tags.iter().any(|t| t == r.tag_or_latest()) {
            return Err(format!(
                "{setting} \"{r}\": would overwrite the image {own}/{}:{}",
                req.image_repo,
                r.tag_or_latest()
            ));
        }
        if r.path == history || r.path.starts_with(&format!("{history}/")) {
            return Err(format!(
                "{setting} \"{r}\": inside the history namespace {history} (registry.history in the launcher config)"
            ));
        }
        if seen.iter().any(|s| s.same_target(r)) {
            let why = if default.as_ref().is_some_and(|d| d.same_target(r)) {
                "is the default cache already (set its mode with --cache, or turn it off with --cache off)"
            } else {
                "is given twice"
            };
            return Err(format!("{setting} \"{r}\": {why}"));
        }
        seen.push(r.clone());
    }
    let mut kept: Vec<CacheImport> = Vec::new();
    for mut import in std::mem::take(&mut req.cache_from) {
        let r = &import.reference;
        if default.as_ref().is_some_and(|d| d.same_target(r))
            || kept.iter().any(|k| k.reference.same_target(r))
        {
            continue; // read once is enough (BuildKit, too, keys an import by its ref)
        }
        import.anonymous = !r.in_registry(registry.as_deref());
        kept.push(import);
    }
    req.cache_from = kept;
    if req.backend == Backend::Buildah {
        let default_on = usize::from(default.is_some());
        for (direction, count) in [
            (Direction::To, req.cache_to.len()),
            (Direction::From, req.cache_from.len()),
        ] {
            if count + default_on > 1 {
                let beside = if default_on == 1 {
                    " and the default cache is on (--cache off leaves only yours)"
                } else {
                    ""
                };
                return Err(format!(
                    "{}: the buildah backend (buildah 1.28 keeps only the last of several) uses one cache repository each way{beside}; use the buildctl backend for more",
                    direction.setting()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
