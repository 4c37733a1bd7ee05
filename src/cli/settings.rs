//! What a pipeline may choose. Every `PLUGIN_*` setting is written by whoever writes the
//! pipeline file, a pull request's author included, so each is read here as an attacker's
//! value before it becomes a flag: it names nothing secret, no path outside the workspace, no
//! provider but Hetzner, and only variables the operator's policy lets builds read
//! (docs/SECURITY.md, "Settings: who decides what"). A refusal is one line naming the setting
//! as the pipeline's YAML spells it, the value (escaped) and the rule, before anything runs.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::exit::quote;
use crate::policy::Policy;

/// The setting's name as the pipeline's YAML spells it (`PLUGIN_TAGS_FILE` → `tags_file`).
pub fn yaml_name(key: &str) -> String {
    key.strip_prefix("PLUGIN_")
        .unwrap_or(key)
        .to_ascii_lowercase()
}

/// Settings of the local provider: it runs the repository's tools as root on the agent, so a
/// pipeline never chooses it.
const LOCAL_ONLY: &[&str] = &["LOCAL_TOOLS", "LOCAL_DIR", "LOCAL_MEMORY_SCALE"];

/// What a path setting must name beneath the workspace.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// An existing directory.
    Dir,
    /// An existing regular file.
    File,
    /// A regular file that may not exist yet (its directory must).
    NewFile,
}

/// Check every setting; returns the settings with each path made absolute beneath the
/// workspace (the flags then name exactly what was checked).
pub fn check(
    env: &BTreeMap<String, String>,
    policy: &Policy,
    workspace: &Path,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = env.clone();
    let pull_request = env
        .get("CI_PIPELINE_EVENT")
        .is_some_and(|e| crate::plan::PULL_REQUEST_EVENTS.contains(&e.as_str()));
    for (key, value) in env {
        let Some(name) = key.strip_prefix("PLUGIN_") else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        let setting = yaml_name(key);
        match name {
            "PROVIDER" if value.trim().eq_ignore_ascii_case("hcloud") => {}
            "PROVIDER" => {
                return Err(format!(
                    "{setting}: {}: a pipeline builds on Hetzner Cloud only; the local provider runs the repository's tools as root on the agent and is for a terminal; remove the setting",
                    quote(value)
                ));
            }
            n if LOCAL_ONLY.contains(&n) => {
                return Err(format!(
                    "{setting}: {}: a setting of the local provider, which a pipeline never uses; remove it",
                    quote(value)
                ));
            }
            "BUILD_ARG_FROM_ENV" | "BUILD_ARGS_FROM_ENV" => {
                for var in super::plugin::split_list("build-arg-from-env", value)
                    .map_err(|e| format!("{setting}: {e}"))?
                {
                    readable(&setting, var.trim(), policy, pull_request)?;
                }
            }
            "SECRET" | "SECRETS" => {
                for item in super::plugin::split_list("secret", value)
                    .map_err(|e| format!("{setting}: {e}"))?
                {
                    let secret: crate::backend::SecretRef = item
                        .parse()
                        .map_err(|e| format!("{setting}: {}: {e}", quote(&item)))?;
                    // A pull request's secrets are refused later, by name, with the
                    // registry password (cli/build.rs, enforce_policy).
                    readable(&setting, &secret.env, policy, false)?;
                }
            }
            "CONTEXT" => {
                let dir = beneath(&setting, workspace, value, Want::Dir)?;
                out.insert(key.clone(), dir.display().to_string());
            }
            // Only where the policy lets a pipeline choose its config at all (plugin.rs); the
            // file is the repository's, read in the sandbox, so it stays in the workspace too.
            "CONFIG" if policy.may_set(crate::policy::Redirecting::Config) => {
                let file = beneath(&setting, workspace, value, Want::File)?;
                out.insert(key.clone(), file.display().to_string());
            }
            "REPORT" => {
                let file = beneath(&setting, workspace, value, Want::NewFile)?;
                out.insert(key.clone(), file.display().to_string());
            }
            "TAGS_FILE" => {
                // Read relative to the workspace (the step's directory), as checked here.
                let file = beneath(&setting, workspace, value, Want::File)?;
                let rel = file.strip_prefix(workspace).unwrap_or(&file);
                out.insert(key.clone(), rel.display().to_string());
            }
            "HISTORY" => {
                if let Some(path) = value.strip_prefix("file:") {
                    let file = beneath(&setting, workspace, path, Want::NewFile)?;
                    out.insert(key.clone(), format!("file:{}", file.display()));
                }
            }
            "HTTP_PROXY" | "HTTPS_PROXY" | "NO_PROXY" => {
                proxy_setting(&setting, name, value, policy)?
            }
            "PIPELINE" => {
                crate::provider::check_pipeline_name(value)
                    .map_err(|e| format!("{setting}: {}: {e}", quote(value)))?;
            }
            _ => {}
        }
    }
    // The Dockerfile is named relative to the context: it must stay inside it, through no
    // symlink (plan checks the same again on the descriptor it reads).
    if let Some(dockerfile) = env.get("PLUGIN_DOCKERFILE").filter(|v| !v.is_empty()) {
        let context = out
            .get("PLUGIN_CONTEXT")
            .filter(|v| !v.is_empty())
            .map_or_else(|| workspace.to_owned(), PathBuf::from);
        let rel = Path::new(dockerfile);
        if rel.is_absolute() {
            return Err(format!(
                "dockerfile: {}: must be a path relative to the context ({}), without '..'",
                quote(dockerfile),
                context.display()
            ));
        }
        beneath("dockerfile", &context, dockerfile, Want::File)?;
    }
    Ok(out)
}

/// The workspace's real path: it must be one already (absolute, no symlink, no `..` on it),
/// as Woodpecker creates it. Every path setting is checked beneath it and the context is held
/// to it; a directory above it swapped for a symlink (in the volume steps share) would move
/// the whole workspace, and everything beneath it, elsewhere.
pub fn real_workspace(workspace: &Path) -> Result<PathBuf, String> {
    let shown = || quote(&workspace.display().to_string());
    let real = workspace
        .canonicalize()
        .map_err(|e| format!("CI_WORKSPACE: {}: {e}", shown()))?;
    let given = std::path::absolute(workspace).unwrap_or_else(|_| workspace.to_owned());
    if !real.components().eq(given.components()) {
        return Err(format!(
            "CI_WORKSPACE: {}: reached through a symlink or '..' (its real path is {}); the workspace must be a real directory",
            shown(),
            quote(&real.display().to_string())
        ));
    }
    Ok(real)
}

/// The proxy is the operator's (docs/design/proxy.md): it sees every host the launcher talks
/// to, can hold up every build, and reads a plain-HTTP registry's password. A pipeline may
/// repeat the agent's own value (a pipeline written for plugin-docker-buildx often does), or
/// choose another one only when the policy's `repository_may_set` names `'proxy`.
fn proxy_setting(setting: &str, name: &str, value: &str, policy: &Policy) -> Result<(), String> {
    use crate::proxy;
    if policy.may_set(crate::policy::Redirecting::Proxy) {
        return Ok(());
    }
    let vars = match name {
        "HTTP_PROXY" => proxy::HTTP_VARS,
        "HTTPS_PROXY" => proxy::HTTPS_VARS,
        _ => proxy::NO_PROXY_VARS,
    };
    let agent = proxy::from_env(vars, &|n| crate::environment::var(n));
    if agent.as_ref().is_some_and(|(_, v)| v == value.trim()) {
        return Ok(());
    }
    let agents = match &agent {
        Some((var, _)) => format!("the agent's {var} says otherwise"),
        None => format!("the agent sets no {}", vars[0]),
    };
    Err(format!(
        "{setting}: {}: the proxy is the operator's ({agents}): it sees every host the launcher reaches and a plain-HTTP registry's password; remove the setting and set {} in the agent's environment, or ask the operator to add 'proxy to repository_may_set in the policy ({}); a proxy for the build itself goes in build_args (HTTP_PROXY=…)",
        proxy::redacted(value),
        vars[0],
        policy.origin
    ))
}

/// May a setting read the variable `var` of the agent's environment?
fn readable(setting: &str, var: &str, policy: &Policy, pull_request: bool) -> Result<(), String> {
    if policy.is_secret_name(var) {
        return Err(format!(
            "{setting}: {}: holds a secret of the launcher (the Hetzner token, the registry password, a build secret or a variable the policy marks secret); a build may never read it",
            quote(var)
        ));
    }
    if !policy.build_env.iter().any(|allowed| allowed == var) {
        let allowed = if policy.build_env.is_empty() {
            "none".to_owned()
        } else {
            policy.build_env.join(", ")
        };
        return Err(format!(
            "{setting}: {}: the operator policy ({}) lets builds read only these variables of the agent: {allowed}; ask the operator to add it to build_env",
            quote(var),
            policy.origin
        ));
    }
    if pull_request && !policy.pull_requests.secrets {
        return Err(format!(
            "{setting}: {}: a pull-request build may not read the agent's variables under the operator policy ({}); they count as secrets there (pull_requests.secrets)",
            quote(var),
            policy.origin
        ));
    }
    Ok(())
}

/// `value` as a path beneath `root`, reached through real directories only (no symlink on
/// the way, none as the last component), absolute or relative to `root`.
fn beneath(setting: &str, root: &Path, value: &str, want: Want) -> Result<PathBuf, String> {
    let given = Path::new(value);
    let outside = || {
        format!(
            "{setting}: {}: must be a path inside {}, without '..'",
            quote(value),
            root.display()
        )
    };
    let rel = if given.is_absolute() {
        given.strip_prefix(root).map_err(|_| outside())?
    } else {
        given
    };
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(outside());
    }
    let mut at = root.to_path_buf();
    let parts: Vec<_> = rel
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let last = i + 1 == parts.len();
        let meta = match at.symlink_metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if last && want == Want::NewFile {
                    return Ok(at);
                }
                return Err(format!(
                    "{setting}: {}: no such file or directory",
                    quote(value)
                ));
            }
            Err(e) => return Err(format!("{setting}: {}: {e}", quote(value))),
        };
        if meta.file_type().is_symlink() {
            return Err(format!(
                "{setting}: {}: reached through the symlink {}; name a real path inside the workspace",
                quote(value),
                quote(&at.strip_prefix(root).unwrap_or(&at).display().to_string())
            ));
        }
        let ok = match (last, want) {
            (false, _) | (true, Want::Dir) => meta.is_dir(),
            (true, Want::File | Want::NewFile) => meta.is_file(),
        };
        if !ok {
            let what = if !last || want == Want::Dir {
                "a directory"
            } else {
                "a regular file"
            };
            return Err(format!(
                "{setting}: {}: {} is not {what}",
                quote(value),
                quote(&at.strip_prefix(root).unwrap_or(&at).display().to_string())
            ));
        }
    }
    if parts.is_empty() && want != Want::Dir {
        return Err(format!("{setting}: {}: names no file", quote(value)));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cli::settings_env as env;

    #[test]
    fn paths_stay_in_the_workspace_through_no_symlink() {
        let ws = tempfile::tempdir().unwrap();
        let root = ws.path();
        std::fs::create_dir(root.join("app")).unwrap();
        std::fs::write(root.join("app/Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(root.join(".tags"), "v1\n").unwrap();
        std::os::unix::fs::symlink("/", root.join("rootlink")).unwrap();
        std::os::unix::fs::symlink("/tmp", root.join("out")).unwrap();
        let p = Policy::default();
        let ok = check(
            &env(&[
                ("PLUGIN_CONTEXT", "app"),
                ("PLUGIN_REPORT", "report.json"),
                ("PLUGIN_TAGS_FILE", ".tags"),
                ("PLUGIN_HISTORY", "file:hist.jsonl"),
            ]),
            &p,
            root,
        )
        .unwrap();
        assert_eq!(ok["PLUGIN_CONTEXT"], root.join("app").display().to_string());
        assert_eq!(
            ok["PLUGIN_HISTORY"],
            format!("file:{}", root.join("hist.jsonl").display())
        );
        for (key, value, says) in [
            ("PLUGIN_CONTEXT", "/", "must be a path inside"),
            ("PLUGIN_CONTEXT", "..", "must be a path inside"),
            ("PLUGIN_CONTEXT", "rootlink", "symlink"),
            ("PLUGIN_REPORT", "/tmp/r.json", "must be a path inside"),
            ("PLUGIN_REPORT", "out/r.json", "symlink"),
            ("PLUGIN_TAGS_FILE", "/etc/hostname", "must be a path inside"),
            ("PLUGIN_HISTORY", "file:/dev/zero", "must be a path inside"),
            ("PLUGIN_HISTORY", "file:out/h", "symlink"),
            (
                "PLUGIN_DOCKERFILE",
                "../../etc/passwd",
                "must be a path inside",
            ),
            (
                "PLUGIN_DOCKERFILE",
                "/etc/passwd",
                "relative to the context",
            ),
        ] {
            let err = check(&env(&[(key, value)]), &p, root).unwrap_err();
            assert!(err.starts_with(&yaml_name(key)), "{key}={value}: {err}");
            assert!(err.contains(says), "{key}={value}: {err}");
        }
    }

    #[test]
    fn no_setting_reads_a_secret_or_an_unlisted_variable() {
        let ws = tempfile::tempdir().unwrap();
        let mut p = Policy::default();
        for (key, value) in [
            ("PLUGIN_BUILD_ARGS_FROM_ENV", "PLUGIN_HCLOUD_TOKEN"),
            ("PLUGIN_BUILD_ARGS_FROM_ENV", "HCLOUD_TOKEN"),
            ("PLUGIN_SECRETS", "id=t,env=PLUGIN_PASSWORD"),
            ("PLUGIN_SECRETS", "id=t,env=REGISTRY_PASSWORD"),
            ("PLUGIN_SECRETS", "id=t,env=CI_NETRC_PASSWORD"),
        ] {
            let err = check(&env(&[(key, value)]), &p, ws.path()).unwrap_err();
            assert!(err.contains("secret of the launcher"), "{value}: {err}");
        }
        let err = check(
            &env(&[("PLUGIN_BUILD_ARGS_FROM_ENV", "NPM_TOKEN")]),
            &p,
            ws.path(),
        )
        .unwrap_err();
        assert!(err.contains("build_env"), "{err}");
        p.build_env = vec!["NPM_TOKEN".into(), "HCLOUD_TOKEN".into()];
        check(
            &env(&[("PLUGIN_BUILD_ARGS_FROM_ENV", "NPM_TOKEN")]),
            &p,
            ws.path(),
        )
        .unwrap();
        // Listed or not, the launcher's own secrets stay unreadable.
        assert!(
            check(
                &env(&[("PLUGIN_BUILD_ARGS_FROM_ENV", "HCLOUD_TOKEN")]),
                &p,
                ws.path()
            )
            .is_err()
        );
        let pr = env(&[
            ("PLUGIN_BUILD_ARGS_FROM_ENV", "NPM_TOKEN"),
            ("CI_PIPELINE_EVENT", "pull_request"),
        ]);
        assert!(
            check(&pr, &p, ws.path())
                .unwrap_err()
                .contains("pull-request")
        );
    }

    #[test]
    fn a_pipeline_chooses_no_proxy_unless_the_policy_lets_it() {
        let ws = tempfile::tempdir().unwrap();
        let mut p = Policy {
            origin: "defaults".into(),
            ..Policy::default()
        };
        // The unit tests' environment names no proxy (std::env, no snapshot).
        for var in [
            "http_proxy",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
            "no_proxy",
            "NO_PROXY",
        ] {
            assert!(
                std::env::var(var).is_err(),
                "{var} is set where the unit tests run"
            );
        }
        let err = check(
            &env(&[(
                "PLUGIN_HTTPS_PROXY",
                "http://mallory:s3cret@evil.example:3128",
            )]),
            &p,
            ws.path(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "https_proxy: \"http://****@evil.example:3128\": the proxy is the operator's (the agent sets no https_proxy): it sees every host the launcher reaches and a plain-HTTP registry's password; remove the setting and set https_proxy in the agent's environment, or ask the operator to add 'proxy to repository_may_set in the policy (defaults); a proxy for the build itself goes in build_args (HTTP_PROXY=…)"
        );
        let err = check(&env(&[("PLUGIN_NO_PROXY", "*")]), &p, ws.path()).unwrap_err();
        assert!(
            err.starts_with("no_proxy: \"*\": the proxy is the operator's"),
            "{err}"
        );
        p.repository_may_set = vec![crate::policy::Redirecting::Proxy];
        check(
            &env(&[
                ("PLUGIN_HTTP_PROXY", "http://proxy.corp:3128"),
                ("PLUGIN_NO_PROXY", "*"),
            ]),
            &p,
            ws.path(),
        )
        .unwrap();
    }

    #[test]
    fn the_local_provider_is_not_a_pipelines_choice() {
        let ws = tempfile::tempdir().unwrap();
        let p = Policy::default();
        for (key, value) in [
            ("PLUGIN_PROVIDER", "local"),
            ("PLUGIN_LOCAL_TOOLS", "tools"),
            ("PLUGIN_LOCAL_DIR", "/tmp"),
        ] {
            let err = check(&env(&[(key, value)]), &p, ws.path()).unwrap_err();
            assert!(err.starts_with(&yaml_name(key)), "{err}");
        }
        check(&env(&[("PLUGIN_PROVIDER", "hcloud")]), &p, ws.path()).unwrap();
        let err = check(
            &env(&[("PLUGIN_PROVIDER", "local\u{1b}[2J")]),
            &p,
            ws.path(),
        )
        .unwrap_err();
        assert!(!err.contains('\u{1b}'), "control bytes are escaped: {err}");
    }
}
