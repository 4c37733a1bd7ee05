//! Pipelines written for plugin-docker-buildx run here without guesswork: each of its settings
//! (`cmd/docker-buildx/config.go` at commit c88f0f4, the last on GitHub, 2024-04-23; read setting
//! by setting in docs/design/buildx-settings.md) is accepted as ours, accepted with a one-line
//! warning that it is not needed here, or refused with the way to get the same result. Every
//! refusal is reported at once. docs.md's migration table is [`markdown_table`], checked by
//! tests/plugin_docs.rs, so the two cannot drift.

use std::collections::BTreeMap;
use std::path::Path;

use crate::exit::quote;

/// What becomes of one plugin-docker-buildx setting.
#[derive(Debug, Clone, Copy)]
pub enum Handling {
    /// The same setting under our name (`PLUGIN_<to>`).
    Alias(&'static str),
    /// Accepted as ours with its value rewritten (the code below says how).
    Mapped(&'static str),
    /// Accepted with a warning: not needed here, and why.
    Warn(&'static str),
    /// Refused, with the way to the same result. `Some(default)`: at that value (the setting's
    /// default there) it asks for nothing this launcher does not do already, so it is a warning.
    Refuse(&'static str, Option<&'static str>),
}

use Handling::{Alias, Mapped, Refuse, Warn};

const NO_DAEMON: &str = "no Docker daemon runs on the agent: BuildKit runs on the build's own server, configured by the operator's golden image";

/// plugin-docker-buildx's settings that are not ours by name and meaning (those are simply
/// accepted: context, tags, labels, build_args, build_args_from_env, secrets, target, cache_from,
/// cache_to, platforms, registry, username, password, dry_run, no_cache, auto_tag, tags_file).
pub const BUILDX: &[(&str, Handling)] = &[
    ("tag_file", Alias("TAGS_FILE")),
    ("insecure", Alias("INSECURE_REGISTRY")),
    ("default_suffix", Alias("AUTO_TAG_SUFFIX")),
    ("dry-run", Alias("DRY_RUN")),
    (
        "auto_label",
        Mapped("default_labels: false is no_default_labels: true"),
    ),
    ("default_labels", Mapped("false is no_default_labels: true")),
    (
        "cache_images",
        Mapped("each image is read (cache_from) and written (cache_to)"),
    ),
    (
        "provenance",
        Mapped("false is off; true and mode=min are min; mode=max is max"),
    ),
    (
        "sbom",
        Mapped("true/false; the scanner image is the operator's"),
    ),
    (
        "repo",
        Mapped(
            "a host in front moves to registry; a list pushes the image to each repository of the registry",
        ),
    ),
    (
        "pull_image",
        Warn("every build server starts empty: base images are always pulled"),
    ),
    (
        "compress",
        Warn("the context goes to the server with rsync over SSH, after .dockerignore"),
    ),
    (
        "quiet",
        Warn("the build runs on another machine: its streamed log is the only view of it"),
    ),
    (
        "purge",
        Warn("the build server is deleted after every build"),
    ),
    (
        "email",
        Warn("the registry login takes user and password only"),
    ),
    (
        "log_level",
        Warn("the launcher has one level; the whole log is always streamed"),
    ),
    (
        "skip_verify",
        Warn(
            "it had no effect on the registry there either; a registry whose certificate does not verify is insecure_registry",
        ),
    ),
    (
        "mirror",
        Refuse(
            "registry mirrors are the operator's: buildkitd.registries.<host>.mirrors in the launcher config",
            None,
        ),
    ),
    ("storage_driver", Refuse(NO_DAEMON, None)),
    ("storage_path", Refuse(NO_DAEMON, Some("/var/lib/docker"))),
    ("bip", Refuse(NO_DAEMON, None)),
    ("mtu", Refuse(NO_DAEMON, None)),
    (
        "custom_dns",
        Refuse(
            "the server resolves with Hetzner's resolvers; another resolver belongs in the operator's golden image",
            None,
        ),
    ),
    (
        "custom_dns_search",
        Refuse("as custom_dns: the operator's golden image", None),
    ),
    ("ipv6", Refuse(NO_DAEMON, Some("false"))),
    (
        "experimental",
        Refuse(
            "Dockerfile features come from # syntax= (within the operator's frontend list)",
            Some("false"),
        ),
    ),
    (
        "debug",
        Refuse(
            "buildctl's full plain progress is always streamed",
            Some("false"),
        ),
    ),
    ("daemon_off", Refuse(NO_DAEMON, Some("false"))),
    (
        "buildkit_config",
        Refuse(
            "buildkitd.toml is the operator's: the launcher config's buildkitd section, baked into the golden image",
            None,
        ),
    ),
    (
        "buildkit_debug",
        Refuse(
            "buildkitd.toml is the operator's: the launcher config's buildkitd section, baked into the golden image",
            Some("false"),
        ),
    ),
    (
        "buildkit_driveropt",
        Refuse(
            "there is no buildx builder; buildkitd's environment is the golden image's",
            None,
        ),
    ),
    (
        "logins",
        Refuse(
            "one registry receives credentials (registry, username, password); caches elsewhere are read anonymously; push to a second registry in a second step",
            None,
        ),
    ),
    (
        "add_host",
        Refuse(
            "the build server's /etc/hosts is the golden image's; name hosts in DNS",
            None,
        ),
    ),
    (
        "output",
        Refuse(
            "the image goes to the registry (or nowhere with dry_run); copy it to a file in a later step (skopeo, crane)",
            None,
        ),
    ),
    (
        "aws_access_key_id",
        Refuse(
            "no ECR login: use user AWS and a password from aws ecr get-login-password in the password secret",
            None,
        ),
    ),
    (
        "aws_secret_access_key",
        Refuse(
            "no ECR login: use user AWS and a password from aws ecr get-login-password in the password secret",
            None,
        ),
    ),
    (
        "aws_region",
        Refuse(
            "no ECR login: use user AWS and a password from aws ecr get-login-password in the password secret",
            None,
        ),
    ),
    (
        "ecr_create_repository",
        Refuse("create the ECR repository outside the pipeline", None),
    ),
    (
        "ecr_lifecycle_policy",
        Refuse("set the ECR lifecycle policy outside the pipeline", None),
    ),
    (
        "ecr_repository_policy",
        Refuse("set the ECR repository policy outside the pipeline", None),
    ),
    (
        "ecr_scan_on_push",
        Refuse(
            "set scan on push on the ECR repository outside the pipeline",
            None,
        ),
    ),
    (
        "env_file",
        Refuse(
            "a file of the workspace would set settings the step does not show: write them in the step",
            None,
        ),
    ),
];

/// The key of a buildx name in the environment (`dry-run` → `PLUGIN_DRY-RUN` as Woodpecker
/// upper-cases it, and `PLUGIN_DRY_RUN`).
fn keys(name: &str) -> [String; 2] {
    let upper = name.to_ascii_uppercase();
    [
        format!("PLUGIN_{upper}"),
        format!("PLUGIN_{}", upper.replace('-', "_")),
    ]
}

/// Rewrite plugin-docker-buildx's settings into ours. Returns the settings and the warnings to
/// print; every refusal at once as the error.
pub fn migrate(
    env: &BTreeMap<String, String>,
    workspace: &Path,
) -> Result<(BTreeMap<String, String>, Vec<String>), String> {
    let mut out = env.clone();
    let mut warnings = Vec::new();
    let mut refused = Vec::new();
    let take = |out: &mut BTreeMap<String, String>, name: &str| -> Option<String> {
        let mut found = None;
        for key in keys(name) {
            if let Some(v) = out.remove(&key).filter(|v| !v.is_empty()) {
                found = Some(v);
            }
        }
        found
    };
    for (name, handling) in BUILDX {
        let Some(value) = take(&mut out, name) else {
            continue;
        };
        match handling {
            Alias(to) => {
                out.entry(format!("PLUGIN_{to}")).or_insert(value);
            }
            Warn(why) => warnings.push(format!("{name}: not needed here ({why}); ignored")),
            Refuse(how, Some(default)) if value.trim().eq_ignore_ascii_case(default) => {
                warnings.push(format!("{name}: {how}; ignored"));
            }
            Refuse(how, _) => refused.push(format!("{name}: {how}")),
            Mapped(_) => match mapped(name, &value, &mut out, workspace) {
                Ok(Some(warning)) => warnings.push(warning),
                Ok(None) => {}
                Err(e) => refused.push(e),
            },
        }
    }
    // `secrets: id=x,src=FILE` names a file on the agent.
    for key in ["PLUGIN_SECRETS", "PLUGIN_SECRET"] {
        if let Some(v) = out.get(key)
            && v.split(',').any(|p| p.trim().starts_with("src="))
        {
            refused.push(format!(
                "{}: src= names a file on the agent; give the value with build_secrets: {{ ID: {{ from_secret: NAME }} }}",
                key.trim_start_matches("PLUGIN_").to_ascii_lowercase()
            ));
        }
    }
    registry_url(&mut out, &mut warnings);
    dockerfile_in_context(&mut out, workspace);
    dot_tags(&mut out, workspace, &mut warnings);
    match refused.as_slice() {
        [] => Ok((out, warnings)),
        [one] => Err(format!("{one} (a plugin-docker-buildx setting)")),
        many => Err(format!(
            "plugin-docker-buildx settings that do not apply here: {}",
            many.join("; ")
        )),
    }
}

fn mapped(
    name: &str,
    value: &str,
    out: &mut BTreeMap<String, String>,
    workspace: &Path,
) -> Result<Option<String>, String> {
    let v = value.trim();
    let is_false = |v: &str| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "false" | "0" | "no" | "off"
        )
    };
    match name {
        "auto_label" | "default_labels" => {
            if is_false(v) {
                out.insert("PLUGIN_NO_DEFAULT_LABELS".into(), "true".into());
            }
            Ok(None)
        }
        "provenance" => {
            let mode = match v.to_ascii_lowercase().as_str() {
                "false" | "0" | "off" => None,
                "true" | "1" | "min" | "mode=min" => Some("min"),
                "max" | "mode=max" => Some("max"),
                _ => {
                    return Err(format!(
                        "provenance: {}: write false, true, min, max, mode=min or mode=max",
                        quote(v)
                    ));
                }
            };
            if let Some(mode) = mode {
                out.insert("PLUGIN_PROVENANCE".into(), mode.into());
            }
            Ok(None)
        }
        "sbom" => match v.to_ascii_lowercase().as_str() {
            "true" | "1" => {
                out.insert("PLUGIN_SBOM".into(), "true".into());
                Ok(None)
            }
            "false" | "0" => Ok(None),
            _ => Err(format!(
                "sbom: {}: write true or false; the SBOM scanner image is the operator's (launcher config)",
                quote(v)
            )),
        },
        "cache_images" => {
            let images = super::plugin::split_list("tag", v)?;
            for key in ["PLUGIN_CACHE_FROM", "PLUGIN_CACHE_TO"] {
                let flag = if key.ends_with("FROM") {
                    "cache-from"
                } else {
                    "cache-to"
                };
                let mut items = match out.get(key).filter(|v| !v.is_empty()) {
                    Some(existing) => super::plugin::split_list(flag, existing)?,
                    None => Vec::new(),
                };
                items.extend(images.iter().cloned());
                out.insert(
                    key.into(),
                    serde_json::to_string(&items).expect("strings serialize"),
                );
            }
            Ok(Some(format!(
                "cache_images: each image is read (cache_from) and written (cache_to); every build also has its own cache under cache/<repo> (cache_images: {})",
                images.join(", ")
            )))
        }
        "repo" => repo(v, out, workspace).map(|()| None),
        _ => unreachable!("every Mapped setting has its code"),
    }
}

/// plugin-docker-buildx's `repo` is the whole image name, host included (`zot.example/app`);
/// here the host is `registry` and `repo` the path in it. A list names one repository.
fn repo(value: &str, out: &mut BTreeMap<String, String>, _workspace: &Path) -> Result<(), String> {
    let repos = super::plugin::split_list("repo", value)?;
    let mut paths = Vec::new();
    for r in &repos {
        let (host, path) = match r.split_once('/') {
            Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => (Some(h), p),
            _ => (None, r.as_str()),
        };
        if let Some(host) = host {
            match out.get("PLUGIN_REGISTRY").filter(|r| !r.is_empty()) {
                Some(registry)
                    if registry.trim_end_matches('/').rsplit("://").next() != Some(host) =>
                {
                    return Err(format!(
                        "repo: {}: in another registry than registry {}; one registry per step",
                        quote(r),
                        quote(registry)
                    ));
                }
                Some(_) => {}
                None => {
                    out.insert("PLUGIN_REGISTRY".into(), host.to_owned());
                }
            }
        }
        if !paths.contains(&path.to_owned()) {
            paths.push(path.to_owned());
        }
    }
    // Several: the same image under the same tags in each (the first keeps the cache).
    if !paths.is_empty() {
        out.insert("PLUGIN_REPO".into(), paths.join(","));
    }
    Ok(())
}

/// `registry: https://zot.example/` as plugin-docker-buildx takes it: the host here. Plain
/// `http://` says what it means: the registry speaks plain HTTP.
fn registry_url(out: &mut BTreeMap<String, String>, warnings: &mut Vec<String>) {
    let Some(value) = out.get("PLUGIN_REGISTRY").cloned() else {
        return;
    };
    let trimmed = value.trim().trim_end_matches('/');
    if let Some(host) = trimmed.strip_prefix("https://") {
        out.insert("PLUGIN_REGISTRY".into(), host.to_owned());
    } else if let Some(host) = trimmed.strip_prefix("http://") {
        out.insert("PLUGIN_REGISTRY".into(), host.to_owned());
        if !out.contains_key("PLUGIN_INSECURE_REGISTRY") {
            out.insert("PLUGIN_INSECURE_REGISTRY".into(), "true".into());
            warnings.push(format!(
                "registry: {}: plain HTTP, so insecure_registry: true (write registry: {host} and insecure_registry: true to say so)",
                quote(&value)
            ));
        }
    }
}

/// plugin-docker-buildx's `dockerfile` is relative to the workspace, ours to the context:
/// `context: app` with `dockerfile: app/Dockerfile.prod` names `Dockerfile.prod` here.
fn dockerfile_in_context(out: &mut BTreeMap<String, String>, workspace: &Path) {
    let (Some(context), Some(dockerfile)) =
        (out.get("PLUGIN_CONTEXT"), out.get("PLUGIN_DOCKERFILE"))
    else {
        return;
    };
    let context = context.trim_start_matches("./").trim_end_matches('/');
    if context.is_empty() || context == "." || Path::new(context).is_absolute() {
        return;
    }
    if let Some(rel) = dockerfile
        .trim_start_matches("./")
        .strip_prefix(&format!("{context}/"))
        && !workspace.join(context).join(dockerfile).exists()
    {
        out.insert("PLUGIN_DOCKERFILE".into(), rel.to_owned());
    }
}

/// plugin-docker-buildx reads `.tags` in the workspace when no tags are set (urfave/cli's
/// `FilePath`); so does this launcher, and says so.
fn dot_tags(out: &mut BTreeMap<String, String>, workspace: &Path, warnings: &mut Vec<String>) {
    let set = |k: &str| out.get(k).is_some_and(|v| !v.is_empty());
    if [
        "PLUGIN_TAGS",
        "PLUGIN_TAG",
        "PLUGIN_TAGS_FILE",
        "PLUGIN_AUTO_TAG",
    ]
    .iter()
    .any(|k| set(k))
    {
        return;
    }
    let dot = workspace.join(".tags");
    if dot.symlink_metadata().is_ok_and(|m| m.is_file()) {
        out.insert("PLUGIN_TAGS_FILE".into(), ".tags".into());
        warnings.push("tags: none set, so the tags come from .tags in the workspace (as plugin-docker-buildx reads it)".into());
    }
}

/// docs.md's migration table, made from [`BUILDX`].
pub fn markdown_table() -> String {
    let mut text = String::from("| plugin-docker-buildx | here |\n|---|---|\n");
    for (name, handling) in BUILDX {
        let here = match handling {
            Alias(to) => format!("the same as `{}`", to.to_ascii_lowercase()),
            Mapped(how) => format!("accepted: {how}"),
            Warn(why) => format!("accepted with a warning, not needed here: {why}"),
            Refuse(how, None) => format!("refused: {how}"),
            Refuse(how, Some(default)) => {
                format!("refused: {how} (at `{default}`, its default there: a warning)")
            }
        };
        text.push_str(&format!("| `{name}` | {here} |\n"));
    }
    text.push_str("| `secrets` with `src=` | refused: a file on the agent; use `build_secrets: { ID: { from_secret: NAME } }` |\n");
    text.push_str("| `registry` as a URL | accepted: `https://` and a trailing `/` are dropped; `http://` also sets `insecure_registry` |\n");
    text.push_str("| `dockerfile` relative to the workspace | accepted: beneath `context`, it is made relative to the context |\n");
    text.push_str("| `.tags` (read when no tags are set) | accepted: read as `tags_file: .tags`, with a note |\n");
    text.push_str("| `http_proxy`, `https_proxy`, `no_proxy` (settings or the agent's variables) | accepted, with another meaning: the launcher's own proxy (Hetzner API, registry, SSH to the server through CONNECT), never passed into the build, whose server has its own way out (a build that needs a proxy names it in `build_args`); a value other than the agent's own needs `'proxy` in the policy's `repository_may_set` |\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cli::settings_env as env;

    #[test]
    fn a_buildx_pipeline_runs_with_warnings() {
        let ws = tempfile::tempdir().unwrap();
        let (out, warnings) = migrate(
            &env(&[
                ("PLUGIN_REGISTRY", "https://zot.example.com/"),
                ("PLUGIN_REPO", "zot.example.com/images/app"),
                ("PLUGIN_TAGS", "latest"),
                ("PLUGIN_CACHE_IMAGES", "zot.example.com/cache/app:buildx"),
                ("PLUGIN_PULL_IMAGE", "true"),
                ("PLUGIN_PROVENANCE", "false"),
                ("PLUGIN_TAG_FILE", ".tags"),
                ("PLUGIN_PURGE", "true"),
                ("PLUGIN_DAEMON_OFF", "false"),
                ("PLUGIN_DEFAULT_LABELS", "false"),
            ]),
            ws.path(),
        )
        .unwrap();
        assert_eq!(out["PLUGIN_REGISTRY"], "zot.example.com");
        assert_eq!(out["PLUGIN_REPO"], "images/app");
        assert_eq!(out["PLUGIN_TAGS_FILE"], ".tags");
        assert_eq!(out["PLUGIN_NO_DEFAULT_LABELS"], "true");
        assert!(!out.contains_key("PLUGIN_PROVENANCE"));
        assert_eq!(
            out["PLUGIN_CACHE_TO"],
            r#"["zot.example.com/cache/app:buildx"]"#
        );
        assert!(!out.contains_key("PLUGIN_PULL_IMAGE"));
        assert_eq!(warnings.len(), 4, "{warnings:?}");
    }

    #[test]
    fn repo_as_a_list_keeps_every_repository_of_the_registry() {
        let ws = tempfile::tempdir().unwrap();
        let (out, _) = migrate(
            &env(&[(
                "PLUGIN_REPO",
                "zot.example.com/images/app,images/mirror,zot.example.com/images/app",
            )]),
            ws.path(),
        )
        .unwrap();
        assert_eq!(out["PLUGIN_REGISTRY"], "zot.example.com");
        assert_eq!(out["PLUGIN_REPO"], "images/app,images/mirror");
    }

    #[test]
    fn every_refusal_at_once_with_the_way() {
        let ws = tempfile::tempdir().unwrap();
        let err = migrate(
            &env(&[
                ("PLUGIN_MIRROR", "https://mirror.example"),
                ("PLUGIN_LOGINS", "[]"),
                ("PLUGIN_SECRETS", "id=npm,src=/root/.npmrc"),
                ("PLUGIN_IPV6", "true"),
                ("PLUGIN_PROVENANCE", "yes-please"),
            ]),
            ws.path(),
        )
        .unwrap_err();
        for part in [
            "mirror:",
            "logins:",
            "secrets: src=",
            "ipv6:",
            "provenance:",
        ] {
            assert!(err.contains(part), "{part}: {err}");
        }
        let err = migrate(
            &env(&[
                ("PLUGIN_REGISTRY", "zot.example.com"),
                ("PLUGIN_REPO", "other.example.com/app"),
            ]),
            ws.path(),
        )
        .unwrap_err();
        assert!(err.contains("one registry per step"), "{err}");
    }

    #[test]
    fn proxies_are_the_launchers_own_settings() {
        let ws = tempfile::tempdir().unwrap();
        let given = env(&[
            ("PLUGIN_HTTP_PROXY", "http://proxy.corp:3128"),
            ("PLUGIN_HTTPS_PROXY", "http://proxy.corp:3128"),
            ("PLUGIN_NO_PROXY", "localhost,.corp"),
        ]);
        let (out, warnings) = migrate(&given, ws.path()).unwrap();
        assert_eq!(out, given);
        assert!(warnings.is_empty(), "{warnings:?}");
        super::super::plugin_names::check_known(&out).unwrap();
    }

    #[test]
    fn dockerfile_and_dot_tags_as_buildx_reads_them() {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join("app")).unwrap();
        std::fs::write(ws.path().join("app/Dockerfile.prod"), "FROM scratch\n").unwrap();
        std::fs::write(ws.path().join(".tags"), "1.0\n").unwrap();
        let (out, warnings) = migrate(
            &env(&[
                ("PLUGIN_CONTEXT", "app"),
                ("PLUGIN_DOCKERFILE", "app/Dockerfile.prod"),
            ]),
            ws.path(),
        )
        .unwrap();
        assert_eq!(out["PLUGIN_DOCKERFILE"], "Dockerfile.prod");
        assert_eq!(out["PLUGIN_TAGS_FILE"], ".tags");
        assert!(warnings[0].contains(".tags"), "{warnings:?}");
    }
}
