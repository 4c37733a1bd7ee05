//! The values of `plan`'s and `build`'s flags, checked as clap parses them: platforms, stores,
//! registries, repositories and tags, and the repository a project's name makes.

use crate::config::Arch;
use crate::history::StoreSpec;

pub(super) fn parse_platform(s: &str) -> Result<Arch, String> {
    Arch::from_platform(s.trim()).ok_or_else(|| {
        format!(
            "\"{s}\" is not a platform Hetzner has servers for; use linux/amd64 (x86) or linux/arm64 (ARM)"
        )
    })
}

pub(super) fn parse_store(s: &str) -> Result<StoreSpec, String> {
    s.parse()
        .map_err(|e: crate::history::HistoryError| e.to_string())
}

pub(super) fn parse_registry(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && !s.contains("://")
        && !s.contains('/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("\"{s}\" is not HOST[:PORT] (no scheme, no path)"))
    }
}

pub(super) fn parse_repo(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.split('/').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                })
        });
    if ok {
        return Ok(s.to_owned());
    }
    // `zot.example:5000/org/app`, as plugin-docker-buildx's `repo` holds it: the host goes to
    // the registry setting here.
    if let Some((host, rest)) = s.split_once('/')
        && (host.contains('.') || host.contains(':') || host == "localhost")
        && parse_repo(rest).is_ok()
    {
        return Err(format!(
            "\"{s}\" names a registry host: put {host} in registry (--registry) and {rest} in repo (--repo)"
        ));
    }
    Err(format!(
        "{}: is not a repository path (lowercase letters, digits, '.', '_', '-', separated by '/')",
        crate::exit::quote(s)
    ))
}

pub(super) fn parse_tag(s: &str) -> Result<String, String> {
    let mut chars = s.chars();
    let ok = s.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "\"{s}\" is not a tag (up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-')"
        ))
    }
}

/// Lowercase and replace what a repository path cannot hold.
pub(super) fn repo_slug(name: &str) -> String {
    let slug: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let parts: Vec<&str> = slug
        .split('/')
        .map(|p| p.trim_matches(|c| matches!(c, '-' | '.' | '_')))
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        "build".to_owned()
    } else {
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_tag_and_repo_validation() {
        assert!(parse_registry("127.0.0.1:5000").is_ok());
        assert!(parse_registry("https://zot").is_err());
        assert!(parse_registry("zot/x").is_err());
        assert!(parse_tag("v1.2.3").is_ok());
        assert!(parse_tag("-x").is_err());
        assert!(parse_tag("a:b").is_err());
        assert!(parse_repo("org/app").is_ok());
        assert!(parse_repo("Org/App").is_err());
        assert!(parse_repo("org//app").is_err());
    }

    #[test]
    fn slugs_are_valid_repository_paths() {
        assert_eq!(repo_slug("Org/My App"), "org/my-app");
        assert_eq!(repo_slug("///"), "build");
        assert_eq!(repo_slug("a//-b-/"), "a/b");
        assert!(parse_repo(&repo_slug("Héllo/World!")).is_ok());
    }
}
