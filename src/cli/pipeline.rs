//! What a build takes from the Woodpecker pipeline besides settings: tags derived from the git
//! ref (`auto_tag`), a tags file written by an earlier step (`tags_file`), and the standard OCI
//! labels (`org.opencontainers.image.*`).
//!
//! `auto_tag` follows plugin-docker-buildx (and drone-docker before it), so that pipelines move
//! over unchanged: on a tag event `v1.2.3` gives `1.2.3`, `1.2`, `1`; a `0.x` version gives
//! `0.x.y` and `0.x` only; a pre-release or build-metadata version gives itself alone; a tag that
//! is no semantic version, and a push to the default branch, give `latest`. Any other branch gives
//! nothing: the build is skipped, as plugin-docker-buildx skips it.

use std::path::Path;

/// The pipeline facts `auto_tag` and the default labels read (Woodpecker's `CI_*`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// `CI_PIPELINE_EVENT`: push, tag, pull_request, manual, cron, …
    pub event: Option<String>,
    /// `CI_COMMIT_REF`: `refs/heads/main`, `refs/tags/v1.2.3`, `refs/pull/7/head`.
    pub git_ref: Option<String>,
    /// `CI_COMMIT_PULL_REQUEST`: the pull request's number.
    pub pull_request: Option<String>,
    pub tag: Option<String>,
    pub branch: Option<String>,
    pub default_branch: Option<String>,
    pub sha: Option<String>,
    pub repo_url: Option<String>,
}

impl Facts {
    pub fn from_environment() -> Facts {
        let var = |name: &str| crate::environment::var(name).filter(|v| !v.trim().is_empty());
        Facts {
            event: var("CI_PIPELINE_EVENT"),
            git_ref: var("CI_COMMIT_REF"),
            pull_request: var("CI_COMMIT_PULL_REQUEST"),
            tag: var("CI_COMMIT_TAG"),
            branch: var("CI_COMMIT_BRANCH"),
            default_branch: var("CI_REPO_DEFAULT_BRANCH"),
            sha: var("CI_COMMIT_SHA"),
            repo_url: var("CI_REPO_URL").or_else(|| var("CI_REPO_CLONE_URL")),
        }
    }
}

/// What `auto_tag` makes of the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum AutoTags {
    Tags(Vec<String>),
    /// Not a tag and not the default branch: nothing to build (why, in words).
    Skip(String),
}

/// plugin-docker-buildx's rule, by the pipeline's event and git ref (never by
/// `CI_COMMIT_BRANCH`, which Woodpecker sets to the *target* branch of a pull request): a tag
/// event gives the version's tags, a push to `refs/heads/<default branch>` gives `latest`, and
/// anything else, a pull request above all, gives nothing.
pub fn auto_tags(facts: &Facts) -> Result<AutoTags, String> {
    let event = facts.event.as_deref().unwrap_or("");
    if crate::plan::PULL_REQUEST_EVENTS.contains(&event) {
        return Ok(AutoTags::Skip(
            "auto_tag: a pull request is never tagged (as plugin-docker-buildx does); the build is skipped".to_owned(),
        ));
    }
    let ref_tag = facts
        .git_ref
        .as_deref()
        .and_then(|r| r.strip_prefix("refs/tags/"));
    if event == "tag" || ref_tag.is_some() || facts.tag.is_some() {
        let Some(tag) = facts.tag.as_deref().or(ref_tag) else {
            return Err("auto_tag: a tag event without CI_COMMIT_TAG".to_owned());
        };
        return Ok(AutoTags::Tags(version_tags(tag)));
    }
    let Some(default) = &facts.default_branch else {
        return Err(
            "auto_tag needs the pipeline's CI_COMMIT_TAG, or CI_COMMIT_REF and CI_REPO_DEFAULT_BRANCH (Woodpecker sets them); at a terminal, use --tag"
                .to_owned(),
        );
    };
    let branch = match (&facts.git_ref, &facts.branch) {
        (Some(r), _) => r.strip_prefix("refs/heads/"),
        // No ref at all (an older CI): the branch, but only outside pull requests (above).
        (None, Some(branch)) => Some(branch.as_str()),
        (None, None) => {
            return Err(
                "auto_tag needs the pipeline's CI_COMMIT_TAG, or CI_COMMIT_REF and CI_REPO_DEFAULT_BRANCH (Woodpecker sets them); at a terminal, use --tag"
                    .to_owned(),
            );
        }
    };
    match branch {
        Some(branch) if branch == default => Ok(AutoTags::Tags(vec!["latest".to_owned()])),
        _ => Ok(AutoTags::Skip(format!(
            "auto_tag: {} is not the default branch {default} and this is not a tag event, so there is nothing to tag; the build is skipped (as plugin-docker-buildx does)",
            crate::exit::quote(
                facts
                    .git_ref
                    .as_deref()
                    .or(facts.branch.as_deref())
                    .unwrap_or("")
            )
        ))),
    }
}

/// What a pull-request build may push, by the operator's `pull_requests.push`: its own
/// `pr-<N>` tag and cache scope, or nothing. `None` for other builds.
#[derive(Debug, Clone, PartialEq)]
pub enum PullRequestPush {
    /// Push under `pr-<N>` only; the default cache is written under that scope.
    Scoped(String),
    /// A dry run, and why (for the log).
    DryRun(String),
}

pub fn pull_request_push(facts: &Facts, policy: &crate::policy::Policy) -> Option<PullRequestPush> {
    let event = facts.event.as_deref()?;
    if !crate::plan::PULL_REQUEST_EVENTS.contains(&event) {
        return None;
    }
    let number = facts
        .pull_request
        .clone()
        .or_else(|| {
            facts
                .git_ref
                .as_deref()
                .and_then(|r| r.strip_prefix("refs/pull/"))
                .and_then(|r| r.split('/').next())
                .map(str::to_owned)
        })
        .filter(|n| !n.is_empty() && n.len() <= 12 && n.bytes().all(|b| b.is_ascii_digit()));
    match (policy.pull_requests.push, number) {
        (crate::policy::PullRequestPush::PrTag, Some(n)) => {
            Some(PullRequestPush::Scoped(format!("pr-{n}")))
        }
        (crate::policy::PullRequestPush::PrTag, None) => Some(PullRequestPush::DryRun(
            "a pull-request build pushes only under pr-<N>, and CI_COMMIT_PULL_REQUEST holds no number: building without pushing".to_owned(),
        )),
        (crate::policy::PullRequestPush::DryRun, _) => Some(PullRequestPush::DryRun(format!(
            "the operator policy ({}) builds pull requests without pushing (pull_requests.push = 'dry_run)",
            policy.origin
        ))),
    }
}

/// The tags of a git tag, plugin-docker-buildx's way.
pub fn version_tags(git_tag: &str) -> Vec<String> {
    let version = git_tag.strip_prefix('v').unwrap_or(git_tag);
    let (core, metadata) = match version.split_once('+') {
        Some((core, meta)) => (core, Some(meta)),
        None => (version, None),
    };
    let (core, prerelease) = match core.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (core, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if parts.len() != 3 || !parts.iter().all(numeric) {
        return vec!["latest".to_owned()];
    }
    if prerelease.is_some() || metadata.is_some() {
        // A docker tag cannot hold '+'.
        return vec![version.replace('+', "-")];
    }
    let (major, minor, patch) = (parts[0], parts[1], parts[2]);
    let full = format!("{major}.{minor}.{patch}");
    let minor_tag = format!("{major}.{minor}");
    if major.trim_start_matches('0').is_empty() {
        vec![minor_tag, full]
    } else {
        vec![major.to_owned(), minor_tag, full]
    }
}

/// The most of a tags file that is read.
const MAX_TAGS_FILE_BYTES: u64 = 64 * 1024;

/// Tags from a file (one per line, or comma-separated), as plugin-docker-buildx reads `.tags`.
///
/// The file and its path are the repository's (the setting is in the pipeline file), and a bad
/// tag is quoted in the error: so `rel` must lead, from `root` (the workspace), through real
/// directories to a regular file, no symlink on the way, read without blocking. Otherwise a
/// `tags_file` pointing at `/etc/shadow` would print its first line.
pub fn read_tags_file(root: &Path, rel: &Path) -> Result<Vec<String>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // `tags_file "x"` in plugin mode, `--tags-file "x"` at a terminal; the name escaped.
    let shown = format!(
        "{} {}",
        crate::exit::option("--tags-file"),
        crate::exit::quote(&rel.display().to_string())
    );
    if rel.is_absolute()
        || rel.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
    {
        return Err(format!(
            "{shown}: must be a path inside the workspace, relative and without '..'"
        ));
    }
    match crate::transport::dockerignore::plain_file(root, rel) {
        Ok(Some(())) => {}
        Ok(None) => return Err(format!("{shown}: no such file")),
        Err(e) => return Err(format!("{} {e}", crate::exit::option("--tags-file"))),
    }
    let path = root.join(rel);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
        .map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{shown}: cannot read: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown}: not a regular file"));
    }
    let mut text = String::new();
    file.take(MAX_TAGS_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{shown}: cannot read: {e}"))?;
    if text.len() as u64 > MAX_TAGS_FILE_BYTES {
        return Err(format!("{shown}: larger than 64 KiB"));
    }
    let tags: Vec<String> = text
        .split(['\n', ','])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if tags.is_empty() {
        return Err(format!("{shown}: holds no tag"));
    }
    Ok(tags)
}

/// The standard OCI labels the pipeline can fill in (`created` is `now`, RFC 3339).
pub fn default_labels(facts: &Facts, now: std::time::SystemTime) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut add = |key: &str, value: &Option<String>| {
        if let Some(value) = value {
            labels.push((format!("org.opencontainers.image.{key}"), value.clone()));
        }
    };
    let source = facts
        .repo_url
        .as_ref()
        .map(|u| u.trim_end_matches(".git").to_owned());
    add("source", &source);
    add("url", &source);
    add("revision", &facts.sha);
    add(
        "version",
        &facts
            .tag
            .as_ref()
            .map(|t| t.strip_prefix('v').unwrap_or(t).to_owned()),
    );
    labels.push((
        "org.opencontainers.image.created".to_owned(),
        humantime::format_rfc3339_seconds(now).to_string(),
    ));
    labels
}

/// `KEY=VALUE` for `--label`: a key of printable characters without spaces or `=`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v))
            if !k.is_empty() && k.chars().all(|c| c.is_ascii_graphic()) && !v.contains('\n') =>
        {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(format!(
            "\"{s}\" is not a label KEY=VALUE (the key: printable characters without spaces)"
        )),
    }
}

/// A pull request never writes where the default branch's builds do (the operator's
/// `pull_requests.push`): its image goes under `pr-<N>` only and its caches under that scope,
/// or nothing is pushed.
pub(super) fn scope_pull_request(
    request: &mut crate::plan::PlanRequest,
    facts: &Facts,
    policy: &crate::policy::Policy,
) {
    match pull_request_push(facts, policy) {
        None => {}
        Some(PullRequestPush::DryRun(why)) if !request.build.dry_run => {
            request.notes.push(why);
            request.build.dry_run = true;
        }
        Some(PullRequestPush::DryRun(_)) => {}
        Some(PullRequestPush::Scoped(scope)) => {
            if request.build.tags != [scope.clone()] {
                let note = format!(
                    "a pull-request build pushes only the tag {scope} (operator policy pull_requests.push), not {}",
                    request.build.tags.join(", ")
                );
                request.notes.push(note);
            }
            let build = &mut request.build;
            build.tags = vec![scope.clone()];
            if build.backend == crate::backend::Backend::Buildah && !build.cache_to.is_empty() {
                // buildah's cache is a repository without a tag: nothing would keep a pull
                // request's writes apart from the default branch's, so it writes none.
                request.notes.push(
                    "a pull-request build with buildah writes no cache_to export: buildah's cache has no tag to keep it apart from the default branch's".into(),
                );
                build.cache_to.clear();
            }
            for export in &mut build.cache_to {
                // A tag has at most 128 characters: the base gives way to the scope.
                let base = export.reference.tag_or_latest();
                let keep = base.len().min(127 - scope.len());
                export.reference.tag = Some(format!("{}-{scope}", &base[..keep]));
            }
            build.cache_scope = Some(scope);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_tags_follow_plugin_docker_buildx() {
        assert_eq!(version_tags("v1.2.3"), ["1", "1.2", "1.2.3"]);
        assert_eq!(version_tags("1.2.3"), ["1", "1.2", "1.2.3"]);
        assert_eq!(version_tags("v0.4.1"), ["0.4", "0.4.1"]);
        assert_eq!(version_tags("v1.2.3-rc.1"), ["1.2.3-rc.1"]);
        assert_eq!(version_tags("v1.2.3+build.5"), ["1.2.3-build.5"]);
        assert_eq!(version_tags("release-7"), ["latest"]);
        assert_eq!(version_tags("v1.2"), ["latest"]);
        assert_eq!(version_tags("v10.20.30"), ["10", "10.20", "10.20.30"]);
    }

    #[test]
    fn auto_tags_from_the_pipeline() {
        let tag = Facts {
            event: Some("tag".into()),
            git_ref: Some("refs/tags/v2.0.1".into()),
            tag: Some("v2.0.1".into()),
            branch: Some("main".into()),
            default_branch: Some("main".into()),
            ..Facts::default()
        };
        assert_eq!(
            auto_tags(&tag).unwrap(),
            AutoTags::Tags(vec!["2".into(), "2.0".into(), "2.0.1".into()])
        );
        let main = Facts {
            event: Some("push".into()),
            git_ref: Some("refs/heads/main".into()),
            tag: None,
            ..tag.clone()
        };
        assert_eq!(
            auto_tags(&main).unwrap(),
            AutoTags::Tags(vec!["latest".into()])
        );
        let feature = Facts {
            git_ref: Some("refs/heads/feature/x".into()),
            branch: Some("feature/x".into()),
            ..main.clone()
        };
        assert!(
            matches!(auto_tags(&feature).unwrap(), AutoTags::Skip(why) if why.contains("feature/x"))
        );
        // Woodpecker sets CI_COMMIT_BRANCH to the target branch of a pull request: it must not
        // make a pull request into main `latest`.
        let pull = Facts {
            event: Some("pull_request".into()),
            git_ref: Some("refs/pull/7/head".into()),
            branch: Some("main".into()),
            ..main.clone()
        };
        assert!(matches!(auto_tags(&pull).unwrap(), AutoTags::Skip(_)));
        let no_event = Facts {
            event: None,
            ..pull.clone()
        };
        assert!(
            matches!(auto_tags(&no_event).unwrap(), AutoTags::Skip(_)),
            "the ref decides, not the branch"
        );
        assert!(
            auto_tags(&Facts::default())
                .unwrap_err()
                .contains("CI_COMMIT_REF")
        );
    }

    #[test]
    fn pull_requests_push_under_their_own_tag_or_not_at_all() {
        let mut policy = crate::policy::Policy::default();
        let pull = Facts {
            event: Some("pull_request".into()),
            git_ref: Some("refs/pull/7/head".into()),
            pull_request: Some("7".into()),
            ..Facts::default()
        };
        assert_eq!(
            pull_request_push(&pull, &policy),
            Some(PullRequestPush::Scoped("pr-7".into()))
        );
        let from_ref = Facts {
            pull_request: None,
            ..pull.clone()
        };
        assert_eq!(
            pull_request_push(&from_ref, &policy),
            Some(PullRequestPush::Scoped("pr-7".into()))
        );
        let forged = Facts {
            pull_request: Some("7:latest".into()),
            git_ref: None,
            ..pull.clone()
        };
        assert!(matches!(
            pull_request_push(&forged, &policy),
            Some(PullRequestPush::DryRun(_))
        ));
        policy.pull_requests.push = crate::policy::PullRequestPush::DryRun;
        assert!(matches!(
            pull_request_push(&pull, &policy),
            Some(PullRequestPush::DryRun(_))
        ));
        let push = Facts {
            event: Some("push".into()),
            ..Facts::default()
        };
        assert_eq!(pull_request_push(&push, &policy), None);
    }

    #[test]
    fn default_labels_say_what_the_pipeline_knows() {
        let facts = Facts {
            tag: Some("v1.0.0".into()),
            sha: Some("abc123".into()),
            repo_url: Some("https://git.example/org/app.git".into()),
            ..Facts::default()
        };
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_780_000_000);
        let labels = default_labels(&facts, now);
        let get = |k: &str| {
            labels
                .iter()
                .find(|(key, _)| key == &format!("org.opencontainers.image.{k}"))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("source"), Some("https://git.example/org/app"));
        assert_eq!(get("revision"), Some("abc123"));
        assert_eq!(get("version"), Some("1.0.0"));
        assert_eq!(get("created"), Some("2026-05-28T20:26:40Z"));
        let bare = default_labels(&Facts::default(), now);
        assert_eq!(
            bare.len(),
            1,
            "only created without pipeline facts: {bare:?}"
        );
    }

    #[test]
    fn labels_and_tags_files_are_checked() {
        assert!(parse_label("a.b=c d").is_ok());
        assert!(parse_label("=x").is_err());
        assert!(parse_label("a b=x").is_err());
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let file = root.join(".tags");
        let read = |rel: &str| read_tags_file(root, Path::new(rel));
        std::fs::write(&file, "1.2.3\nlatest,edge\n\n").unwrap();
        assert_eq!(read(".tags").unwrap(), ["1.2.3", "latest", "edge"]);
        std::fs::write(&file, "\n").unwrap();
        assert!(read(".tags").unwrap_err().contains("holds no tag"));
        std::fs::create_dir(root.join("d")).unwrap();
        assert!(read("d").unwrap_err().contains("not a regular file"));
        // What the pipeline names may not lead out of the workspace.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "OUTSIDE-LINE\n").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("dir")).unwrap();
        for bad in ["link", "dir/secret", "../x", "/etc/hostname"] {
            let err = read(bad).unwrap_err();
            assert!(!err.contains("OUTSIDE-LINE"), "{bad}: {err}");
            assert!(err.starts_with("--tags-file "), "{bad}: {err}");
        }
        assert!(read("link").unwrap_err().contains("symlink"));
        assert!(read("/etc/hostname").unwrap_err().contains("relative"));
    }
}
