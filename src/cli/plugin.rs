//! Woodpecker plugin mode: settings from `PLUGIN_*`, pipeline facts from `CI_*`.
//!
//! With no subcommand and plugin variables present, the binary runs `build`. The mapping is
//! derived from clap's own definition of `build`, so every flag has its `PLUGIN_<NAME>` twin by
//! construction (`--build-arg` ↔ `PLUGIN_BUILD_ARG`, plus the plural forms Woodpecker users
//! write: `PLUGIN_TAGS`, `PLUGIN_BUILD_ARGS`, `PLUGIN_SECRETS`, `PLUGIN_LOCATIONS`).
//!
//! Woodpecker joins lists with commas and sends maps as JSON. Values may contain commas (a build
//! arg `A=x,y`, a secret `id=npm,env=NPM_TOKEN`), so lists are split with care: a JSON array or
//! object is used as is; otherwise a piece that cannot start an item (no `=` for key=value
//! lists, not `id=` for secrets, a key the cache before it lacks for caches) continues the
//! previous one.

use std::collections::BTreeMap;
use std::ffi::OsString;

use clap::{ArgAction, CommandFactory};

use super::Cli;
use crate::policy::{Policy, Redirecting};

/// Settings that are not flags of `build`.
pub(super) const GLOBAL: &[(&str, &str)] = &[
    ("CONFIG", "--config"),
    ("HTTP_PROXY", "--http-proxy"),
    ("HTTPS_PROXY", "--https-proxy"),
    ("NO_PROXY", "--no-proxy"),
];
/// Plural spellings users write in pipelines.
pub(super) const ALIASES: &[(&str, &str)] = &[
    ("TAGS", "TAG"),
    ("BUILD_ARGS", "BUILD_ARG"),
    ("SECRETS", "SECRET"),
    ("LOCATIONS", "LOCATION"),
    ("USERNAME", "REGISTRY_USER"),
    ("LABELS", "LABEL"),
    ("BUILD_ARGS_FROM_ENV", "BUILD_ARG_FROM_ENV"),
    ("PLATFORMS", "PLATFORM"),
];
/// Secret values read from the environment where they are needed; never turned into flags.
pub const SECRET_SETTINGS: &[&str] = &[
    "HCLOUD_TOKEN",
    "PASSWORD",
    "REGISTRY_PASSWORD",
    "BUILD_SECRETS",
];

/// The name a `build_secrets` value is known by inside the launcher (never a real environment
/// variable: see [`build_secrets`]).
fn build_secret_var(id: &str) -> String {
    format!("BKL_BUILD_SECRET_{id}")
}

/// `build_secrets: { npmrc: { from_secret: npm_token } }`: Woodpecker resolves `from_secret`
/// inside settings maps and masks the values in the log, and hands the map over as JSON in
/// `PLUGIN_BUILD_SECRETS`. The values become build secrets by id; they never enter an argument
/// list (`argv` names them by id only) and are read from the launcher's own memory
/// (`environment::snapshot_with`).
pub fn build_secrets(
    env: &BTreeMap<String, String>,
) -> Result<Vec<(String, zeroize::Zeroizing<String>)>, String> {
    let Some(raw) = env
        .get("PLUGIN_BUILD_SECRETS")
        .filter(|v| !v.trim().is_empty())
    else {
        return Ok(Vec::new());
    };
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(raw).map_err(|_| {
        "PLUGIN_BUILD_SECRETS: expected a map of secret ids to values (build_secrets: { npmrc: { from_secret: npm_token } })".to_owned()
    })?;
    map.into_iter()
        .map(|(id, value)| {
            format!("id={id},env=X")
                .parse::<crate::backend::SecretRef>()
                .map_err(|e| format!("PLUGIN_BUILD_SECRETS: {e}"))?;
            match value {
                serde_json::Value::String(s) => {
                    Ok((build_secret_var(&id), zeroize::Zeroizing::new(s)))
                }
                _ => Err(format!(
                    "PLUGIN_BUILD_SECRETS: the value of {id} must be a string (a from_secret)"
                )),
            }
        })
        .collect()
}

/// Is this a plugin run: no arguments, and plugin settings or a Woodpecker workspace present?
pub fn detected(args: &[OsString], env: &BTreeMap<String, String>) -> bool {
    args.len() <= 1
        && env
            .keys()
            .any(|k| k.starts_with("PLUGIN_") || k == "CI_WORKSPACE")
}

/// The `build` command line that the plugin settings stand for.
///
/// Settings come from the pipeline file, which a pull request can change: those that would
/// send the token elsewhere (`hcloud_endpoint`) or replace the ladder (`config`) are refused
/// unless the operator `policy` lets pipelines set them; the endpoint is otherwise the policy's
/// (Hetzner's by default).
pub fn argv(env: &BTreeMap<String, String>, policy: &Policy) -> Result<Vec<OsString>, String> {
    let workspace = match env.get("CI_WORKSPACE").filter(|w| !w.trim().is_empty()) {
        Some(w) => std::path::PathBuf::from(w),
        None => std::env::current_dir().map_err(|e| {
            format!("CI_WORKSPACE is not set and the current directory is unreadable: {e}")
        })?,
    };
    let workspace = super::settings::real_workspace(&workspace)?;
    crate::transport::context_guard::confine_to(workspace.clone());
    let (env, warnings) = super::migrate::migrate(env, &workspace)?;
    super::plugin_names::check_known(&env)?;
    super::secret_values::refuse_secrets_in_settings(&env, policy)?;
    let env = super::settings::check(&env, policy, &workspace)?;
    for warning in warnings {
        super::warn(&warning);
    }
    to_argv(&env, policy)
}

/// The mapping of settings (already checked) to flags.
fn to_argv(env: &BTreeMap<String, String>, policy: &Policy) -> Result<Vec<OsString>, String> {
    for (name, setting, what) in [
        (
            "PLUGIN_CONFIG",
            Redirecting::Config,
            "replace the launcher config (its ladder and prices)",
        ),
        (
            "PLUGIN_HCLOUD_ENDPOINT",
            Redirecting::HcloudEndpoint,
            "send the Hetzner token to another endpoint",
        ),
    ] {
        if env.get(name).is_some_and(|v| !v.is_empty()) && !policy.may_set(setting) {
            return Err(format!(
                "{}: the operator policy ({}) does not let a pipeline {what}; ask the operator to add it to repository_may_set",
                super::settings::yaml_name(name),
                policy.origin
            ));
        }
    }
    let cli = Cli::command();
    let build = cli
        .find_subcommand("build")
        .expect("the build subcommand exists");
    let mut global = Vec::new();
    let mut args: Vec<String> = Vec::new();
    let mut history_given = false;
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in env {
        let Some(name) = key.strip_prefix("PLUGIN_") else {
            continue;
        };
        if SECRET_SETTINGS.contains(&name) || value.is_empty() {
            continue;
        }
        if let Some((_, flag)) = GLOBAL.iter().find(|(n, _)| *n == name) {
            global.extend([flag.to_string(), value.clone()]);
            continue;
        }
        let canonical = ALIASES
            .iter()
            .find(|(alias, _)| *alias == name)
            .map_or(name, |(_, to)| to);
        let long = canonical.to_ascii_lowercase().replace('_', "-");
        let Some(arg) = build
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            return Err(format!(
                "{}: not a setting of this plugin; docs.md lists the settings",
                super::settings::yaml_name(key)
            ));
        };
        written.insert(long.clone(), super::settings::yaml_name(key));
        if long == "history" {
            history_given = true;
        }
        let flag = format!("--{long}");
        match arg.get_action() {
            ArgAction::SetTrue => match value.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => args.push(flag),
                "false" | "0" | "no" | "off" => {}
                other => {
                    return Err(format!(
                        "{}: expected true or false, got {}",
                        super::settings::yaml_name(key),
                        crate::exit::quote(other)
                    ));
                }
            },
            ArgAction::Append => {
                for item in split_list(&long, value)
                    .map_err(|e| format!("{}: {e}", super::settings::yaml_name(key)))?
                {
                    args.extend([flag.clone(), item]);
                }
            }
            _ => args.extend([flag, value.clone()]),
        }
    }
    if env
        .get("PLUGIN_HCLOUD_ENDPOINT")
        .is_none_or(|v| v.is_empty())
    {
        let endpoint = policy
            .hcloud_endpoint
            .clone()
            .unwrap_or_else(|| crate::provider::hcloud::DEFAULT_ENDPOINT.to_owned());
        args.extend(["--hcloud-endpoint".to_owned(), endpoint]);
    }
    for (var, _) in build_secrets(env)? {
        let id = var.trim_start_matches("BKL_BUILD_SECRET_");
        args.extend(["--secret".to_owned(), format!("id={id},env={var}")]);
    }
    // In a plugin container history must outlive the container: keep it in the registry the
    // build pushes to (a step without one keeps none: nothing to push, nowhere to keep it).
    if !history_given && env.get("PLUGIN_REGISTRY").is_none_or(|r| r.is_empty()) {
        args.extend(["--history".to_owned(), "none".to_owned()]);
    } else if !history_given {
        args.extend(["--history".to_owned(), "registry".to_owned()]);
    }
    super::plugin_names::remember(written);
    let mut out: Vec<OsString> = vec!["buildkit-launcher".into()];
    out.extend(global.into_iter().map(OsString::from));
    out.push("build".into());
    out.extend(args.into_iter().map(OsString::from));
    Ok(out)
}

/// One list setting's items.
pub(super) fn split_list(flag: &str, value: &str) -> Result<Vec<String>, String> {
    let trimmed = value.trim();
    if matches!(flag, "cache-from" | "cache-to") {
        return cache_items(trimmed);
    }
    if trimmed.starts_with('{') {
        let map: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(trimmed).map_err(|e| format!("not a valid JSON object: {e}"))?;
        return Ok(map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect());
    }
    if trimmed.starts_with('[') {
        let items: Vec<serde_json::Value> =
            serde_json::from_str(trimmed).map_err(|e| format!("not a valid JSON array: {e}"))?;
        return Ok(items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .collect());
    }
    let starts_item = |piece: &str| match flag {
        "secret" => piece.starts_with("id="),
        "build-arg" | "label" => piece.contains('='),
        _ => true,
    };
    let mut items: Vec<String> = Vec::new();
    for piece in value.split(',') {
        match items.last_mut() {
            Some(last) if !starts_item(piece) => {
                last.push(',');
                last.push_str(piece);
            }
            _ => items.push(piece.trim().to_owned()),
        }
    }
    Ok(items.into_iter().filter(|i| !i.is_empty()).collect())
}

/// A cache list's items: `type=registry,ref=…,mode=…` holds commas of its own
/// (backend::cache::split), and a map (`cache_to: { type: registry, ref: … }`) is one cache,
/// alone or in a list.
fn cache_items(value: &str) -> Result<Vec<String>, String> {
    let joined = |map: serde_json::Map<String, serde_json::Value>| -> String {
        map.into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let item = |v: serde_json::Value| match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Object(map) => joined(map),
        other => other.to_string(),
    };
    if value.starts_with('{') {
        let map =
            serde_json::from_str(value).map_err(|e| format!("not a valid JSON object: {e}"))?;
        return Ok(vec![joined(map)]);
    }
    if value.starts_with('[') {
        let items: Vec<serde_json::Value> =
            serde_json::from_str(value).map_err(|e| format!("not a valid JSON array: {e}"))?;
        return Ok(items.into_iter().map(item).collect());
    }
    Ok(crate::backend::cache::split(value))
}

/// A secret setting, from its usual variable or its plugin twin (`HCLOUD_TOKEN`,
/// `PLUGIN_HCLOUD_TOKEN`).
pub fn secret_env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| crate::environment::var(n))
        .find(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cli::settings_env as env;

    fn args(pairs: &[(&str, &str)]) -> Vec<String> {
        to_argv(&env(pairs), &Policy::default())
            .unwrap()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn every_build_flag_has_a_plugin_twin() {
        let cli = Cli::command();
        let build = cli.find_subcommand("build").unwrap();
        for arg in build.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" {
                continue;
            }
            let key = format!("PLUGIN_{}", long.to_ascii_uppercase().replace('-', "_"));
            let value = match arg.get_action() {
                ArgAction::SetTrue => "true".to_owned(),
                _ => arg
                    .get_possible_values()
                    .first()
                    .map_or_else(|| "x".to_owned(), |p| p.get_name().to_owned()),
            };
            let out = to_argv(&env(&[(&key, &value)]), &allow_all())
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            let out: Vec<String> = out.into_iter().map(|s| s.into_string().unwrap()).collect();
            assert!(out.contains(&format!("--{long}")), "{key} → {out:?}");
        }
    }

    #[test]
    fn lists_maps_and_values_with_commas() {
        let a = args(&[
            ("PLUGIN_TAGS", "1.2,latest"),
            ("PLUGIN_BUILD_ARGS", r#"{"VERSION":"1.2","FLAGS":"a,b"}"#),
            (
                "PLUGIN_SECRETS",
                "id=npm,env=NPM_TOKEN,id=pip,env=PIP_TOKEN",
            ),
            ("PLUGIN_LOCATIONS", "nbg1,fsn1"),
            ("PLUGIN_INSECURE_REGISTRY", "true"),
            ("PLUGIN_NO_REAP", "false"),
            ("PLUGIN_REGISTRY", "zot.example:5000"),
        ]);
        let joined = a.join(" ");
        assert!(joined.contains("--tag 1.2 --tag latest"), "{joined}");
        assert!(joined.contains("--build-arg FLAGS=a,b"), "{joined}");
        assert!(joined.contains("--build-arg VERSION=1.2"), "{joined}");
        assert!(
            joined.contains("--secret id=npm,env=NPM_TOKEN --secret id=pip,env=PIP_TOKEN"),
            "{joined}"
        );
        assert!(
            joined.contains("--location nbg1 --location fsn1"),
            "{joined}"
        );
        assert!(joined.contains("--insecure-registry"), "{joined}");
        assert!(!joined.contains("--no-reap"), "{joined}");
        assert!(
            joined.contains("--history registry"),
            "plugin default: {joined}"
        );
    }

    #[test]
    fn comma_joined_build_args_keep_commas_inside_values() {
        let a = args(&[("PLUGIN_BUILD_ARG", "A=1,B=x,y,C=3")]).join(" ");
        assert!(
            a.contains("--build-arg A=1 --build-arg B=x,y --build-arg C=3"),
            "{a}"
        );
    }

    #[test]
    fn secrets_and_unknown_settings() {
        let a = args(&[("PLUGIN_HCLOUD_TOKEN", "fake"), ("PLUGIN_PASSWORD", "fake")]).join(" ");
        assert!(
            !a.contains("fake"),
            "secret values never become arguments: {a}"
        );
        let err = argv(&env(&[("PLUGIN_TAGZ", "x")]), &Policy::default()).unwrap_err();
        assert!(
            err.starts_with("tagz (did you mean tag?): not a setting"),
            "{err}"
        );
        let err = argv(&env(&[("PLUGIN_JSON", "maybe")]), &Policy::default()).unwrap_err();
        assert!(err.contains("expected true or false"), "{err}");
    }

    fn allow_all() -> Policy {
        Policy {
            repository_may_set: vec![Redirecting::Config, Redirecting::HcloudEndpoint],
            ..Policy::default()
        }
    }

    #[test]
    fn config_is_a_global_flag_when_the_policy_allows_it() {
        // A file of the repository (the workspace: here the crate's directory).
        let a: Vec<String> = argv(
            &env(&[("PLUGIN_CONFIG", "schemas/launcher.ncl")]),
            &allow_all(),
        )
        .unwrap()
        .into_iter()
        .map(|s| s.into_string().unwrap())
        .collect();
        let file = std::env::current_dir()
            .unwrap()
            .join("schemas/launcher.ncl");
        assert_eq!(a[1..4], ["--config", &file.display().to_string(), "build"]);
        // Never a file outside it.
        let err = argv(&env(&[("PLUGIN_CONFIG", "/etc/passwd")]), &allow_all()).unwrap_err();
        assert!(
            err.starts_with("config: \"/etc/passwd\": must be a path inside"),
            "{err}"
        );
    }

    #[test]
    fn proxies_are_global_flags() {
        let a = args(&[
            ("PLUGIN_HTTPS_PROXY", "http://proxy.corp:3128"),
            ("PLUGIN_NO_PROXY", ".corp"),
            ("PLUGIN_HTTP_PROXY", "http://proxy.corp:3128"),
        ]);
        assert_eq!(
            a[1..8],
            [
                "--https-proxy",
                "http://proxy.corp:3128",
                "--http-proxy",
                "http://proxy.corp:3128",
                "--no-proxy",
                ".corp",
                "build"
            ]
        );
    }

    #[test]
    fn build_secrets_become_secret_ids_never_arguments() {
        let e = env(&[(
            "PLUGIN_BUILD_SECRETS",
            r#"{"npmrc":"fake-value-1","pip.conf":"fake-value-2"}"#,
        )]);
        let a = argv(&e, &Policy::default())
            .unwrap()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            a.contains("--secret id=npmrc,env=BKL_BUILD_SECRET_npmrc"),
            "{a}"
        );
        assert!(
            a.contains("--secret id=pip.conf,env=BKL_BUILD_SECRET_pip.conf"),
            "{a}"
        );
        assert!(!a.contains("fake-value"), "{a}");
        let values = build_secrets(&e).unwrap();
        assert_eq!(values[0].0, "BKL_BUILD_SECRET_npmrc");
        assert_eq!(values[0].1.as_str(), "fake-value-1");
        for bad in [r#"{"npmrc":1}"#, r#"["npmrc"]"#, r#"{"a b":"x"}"#] {
            let err = build_secrets(&env(&[("PLUGIN_BUILD_SECRETS", bad)])).unwrap_err();
            assert!(err.starts_with("PLUGIN_BUILD_SECRETS: "), "{err}");
            assert!(!err.contains("fake"), "{err}");
        }
    }

    #[test]
    fn cache_lists_keep_buildkits_commas() {
        let a = args(&[
            (
                "PLUGIN_CACHE_TO",
                "type=registry,ref=zot.example/cache/a:main,mode=min,zot.example/cache/b",
            ),
            (
                "PLUGIN_CACHE_FROM",
                r#"["type=registry,ref=zot.example/cache/a:main","other.example/c"]"#,
            ),
        ])
        .join(" ");
        assert!(
            a.contains("--cache-to type=registry,ref=zot.example/cache/a:main,mode=min --cache-to zot.example/cache/b"),
            "{a}"
        );
        assert!(
            a.contains("--cache-from type=registry,ref=zot.example/cache/a:main --cache-from other.example/c"),
            "{a}"
        );
        // A YAML map is one cache, alone or in a list.
        let a = args(&[
            (
                "PLUGIN_CACHE_TO",
                r#"{"type":"registry","ref":"zot.example/cache/a","mode":"min"}"#,
            ),
            (
                "PLUGIN_CACHE_FROM",
                r#"[{"type":"registry","ref":"zot.example/cache/a"},"other.example/c"]"#,
            ),
        ])
        .join(" ");
        assert!(
            a.contains("--cache-to mode=min,ref=zot.example/cache/a,type=registry"),
            "{a}"
        );
        assert!(
            a.contains(
                "--cache-from ref=zot.example/cache/a,type=registry --cache-from other.example/c"
            ),
            "{a}"
        );
    }

    #[test]
    fn labels_lists_and_maps() {
        let a = args(&[("PLUGIN_LABELS", r#"{"team":"a,b","tier":"1"}"#)]).join(" ");
        assert!(a.contains("--label team=a,b --label tier=1"), "{a}");
        let a = args(&[("PLUGIN_LABELS", "team=a,b,tier=1")]).join(" ");
        assert!(a.contains("--label team=a,b --label tier=1"), "{a}");
    }

    #[test]
    fn redirecting_settings_are_refused_by_default() {
        for key in ["PLUGIN_CONFIG", "PLUGIN_HCLOUD_ENDPOINT"] {
            let err = argv(&env(&[(key, "x")]), &Policy::default()).unwrap_err();
            assert!(
                err.starts_with(&format!(
                    "{}: the operator policy",
                    super::super::settings::yaml_name(key)
                )),
                "{err}"
            );
        }
        let a = args(&[("PLUGIN_REPO", "org/app")]).join(" ");
        assert!(
            a.contains("--hcloud-endpoint https://api.hetzner.cloud/v1"),
            "the endpoint is the policy's: {a}"
        );
    }
}
