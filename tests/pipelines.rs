//! The Woodpecker pipelines in pipelines/ are valid for this binary: every plugin setting maps to
//! a real flag, every `buildkit-launcher …` command parses, secrets come from `from_secret`, and
//! the cron pipelines run on their cron.

mod support;

use std::collections::BTreeMap;
use std::ffi::OsString;

use buildkit_launcher::cli::{Cli, plugin};
use clap::Parser;
use serde_yaml_ng::Value;

fn load(name: &str) -> Value {
    let path = support::repo_dir().join("pipelines").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{name}: not valid YAML: {e}"))
}

fn steps(doc: &Value) -> Vec<&Value> {
    let steps = doc["steps"].as_sequence().expect("steps is a list");
    assert!(!steps.is_empty());
    for step in steps {
        assert!(
            step["name"].as_str().is_some_and(|n| !n.is_empty()),
            "{step:?}"
        );
        assert!(step["image"].as_str().is_some(), "{step:?}");
        assert!(
            step.get("settings").is_some() != step.get("commands").is_some(),
            "a step has settings (plugin) or commands, not both: {step:?}"
        );
        if step.get("settings").is_some() {
            // Woodpecker's schema for a plugin step (schema.json, "plugin_step"): no
            // `environment` (its linter: "Should not configure both `environment` and
            // `settings`"), no `commands`, no `secrets`.
            for key in step.as_mapping().unwrap().keys() {
                let key = key.as_str().unwrap();
                assert!(
                    PLUGIN_STEP_KEYS.contains(&key),
                    "a plugin step may not have `{key}`: {step:?}"
                );
            }
        }
        if let Some(when) = step.get("when") {
            check_when(when);
        }
    }
    if let Some(when) = doc.get("when") {
        check_when(when);
    }
    steps.iter().collect()
}

/// The keys Woodpecker accepts on a plugin step.
const PLUGIN_STEP_KEYS: &[&str] = &[
    "name",
    "image",
    "pull",
    "settings",
    "when",
    "depends_on",
    "failure",
    "backend_options",
];

/// A `when` (a filter or a list of them): known filter keys, known events.
fn check_when(when: &Value) {
    const KEYS: &[&str] = &[
        "event", "branch", "ref", "cron", "status", "path", "repo", "instance", "matrix",
        "evaluate",
    ];
    const EVENTS: &[&str] = &[
        "push",
        "pull_request",
        "pull_request_closed",
        "pull_request_metadata",
        "tag",
        "release",
        "deployment",
        "cron",
        "manual",
    ];
    let filters: Vec<&Value> = match when.as_sequence() {
        Some(list) => list.iter().collect(),
        None => vec![when],
    };
    for filter in filters {
        for (key, value) in filter.as_mapping().expect("a when filter is a map") {
            let key = key.as_str().unwrap();
            assert!(KEYS.contains(&key), "unknown when filter `{key}`");
            if key == "event" {
                let events: Vec<&str> = match value.as_sequence() {
                    Some(list) => list.iter().filter_map(Value::as_str).collect(),
                    None => value.as_str().into_iter().collect(),
                };
                for event in events {
                    assert!(EVENTS.contains(&event), "unknown event `{event}`");
                }
            }
        }
    }
}

fn is_secret(v: &Value) -> bool {
    v.get("from_secret").and_then(Value::as_str).is_some()
}

/// What Woodpecker does to `${VAR}` and `${VAR:-default}` before a step runs, with sample
/// pipeline facts (a push without a tag).
fn substitute(text: &str) -> String {
    let facts = [("CI_COMMIT_SHA", "0123456789abcdef0123456789abcdef01234567")];
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let expr = &rest[start + 2..end];
        let (name, default) = expr.split_once(":-").unwrap_or((expr, ""));
        let value = facts
            .iter()
            .find(|(k, _)| *k == name)
            .map_or(default, |(_, v)| *v);
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Woodpecker's encoding of a setting: lists joined with commas, maps as JSON.
fn woodpecker_value(v: &Value) -> String {
    match v {
        Value::Sequence(items) => items
            .iter()
            .map(woodpecker_value)
            .collect::<Vec<_>>()
            .join(","),
        Value::Mapping(_) => {
            substitute(&serde_json::to_string(&serde_json::to_value(v).unwrap()).unwrap())
        }
        Value::String(s) => substitute(s),
        other => serde_yaml_ng::to_string(other).unwrap().trim().to_owned(),
    }
}

fn assert_secrets_are_secret(env: Option<&Value>) {
    let Some(env) = env.and_then(Value::as_mapping) else {
        return;
    };
    for (k, v) in env {
        let k = k.as_str().unwrap();
        if k.contains("TOKEN") || k.contains("PASSWORD") {
            assert!(
                is_secret(v),
                "{k} must come from from_secret, not a literal"
            );
        }
    }
}

fn parse(argv: Vec<OsString>) {
    if let Err(e) = Cli::try_parse_from(&argv) {
        panic!("{argv:?} does not parse:\n{e}");
    }
}

/// The `build` command line a plugin step stands for, as Woodpecker would hand its settings to
/// the plugin (lists joined with commas, maps as JSON, `${VAR}` substituted, `from_secret`
/// values resolved and never in the argument list), with `workspace` as `CI_WORKSPACE`.
fn plugin_argv(step: &Value, workspace: &std::path::Path) -> Vec<OsString> {
    let settings = step["settings"].as_mapping().expect("plugin settings");
    let mut env = BTreeMap::new();
    for (key, value) in settings {
        let key = key.as_str().unwrap().to_ascii_uppercase();
        // A map of secrets (build_secrets): Woodpecker resolves each from_secret inside it.
        if let Some(map) = value.as_mapping().filter(|m| m.values().all(is_secret)) {
            assert!(
                plugin::SECRET_SETTINGS.contains(&key.as_str()),
                "{key} holds from_secret values but is not read as a secret"
            );
            let resolved: BTreeMap<String, String> = map
                .keys()
                .map(|k| {
                    (
                        k.as_str().unwrap().to_owned(),
                        "fake-secret-value".to_owned(),
                    )
                })
                .collect();
            env.insert(
                format!("PLUGIN_{key}"),
                serde_json::to_string(&resolved).unwrap(),
            );
            continue;
        }
        if is_secret(value) {
            assert!(
                plugin::SECRET_SETTINGS.contains(&key.as_str()),
                "{key} is from_secret but not read as a secret"
            );
            continue;
        }
        assert!(
            !plugin::SECRET_SETTINGS.contains(&key.as_str()),
            "{key} must come from from_secret"
        );
        env.insert(format!("PLUGIN_{key}"), woodpecker_value(value));
    }
    env.insert("CI_WORKSPACE".into(), workspace.display().to_string());
    let argv = plugin::argv(&env, &buildkit_launcher::policy::Policy::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let joined = strings(&argv);
    assert!(
        !joined.iter().any(|a| a.contains("fake-secret-value")),
        "a secret value in the argument list: {joined:?}"
    );
    assert_secrets_are_secret(step.get("environment"));
    argv
}

fn strings(argv: &[OsString]) -> Vec<String> {
    argv.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// `flag value` appears in the argument list.
fn has_flag(argv: &[String], flag: &str, value: &str) -> bool {
    argv.windows(2).any(|w| w[0] == flag && w[1] == value)
}

#[test]
fn the_build_step_maps_every_setting_to_a_flag() {
    let doc = load("build-image.yaml");
    // A real directory: the workspace must be one (no symlink on its path).
    let workspace = tempfile::tempdir().unwrap();
    for step in steps(&doc) {
        let argv = plugin_argv(step, workspace.path());
        let joined = strings(&argv);
        assert!(
            joined.contains(&"--secret".into())
                && joined.contains(&"id=npmrc,env=BKL_BUILD_SECRET_npmrc".into()),
            "{joined:?}"
        );
        assert!(joined.contains(&"VERSION=dev".into()), "{joined:?}");
        assert!(
            joined.contains(&"0123456789abcdef0123456789abcdef01234567".into()),
            "{joined:?}"
        );
        parse(argv);
    }
}

/// The pipeline that publishes the plugin image builds this repository's Dockerfile (the
/// workspace is this checkout, so the settings check finds the real file through no symlink)
/// for both platforms, with the plugin image it publishes, on pushes to the default branch and
/// on version tags, under the tag scheme docs/OPERATORS.md writes down.
#[test]
fn the_plugin_image_pipeline_builds_this_dockerfile_for_amd64_and_arm64() {
    let doc = load("plugin-image.yaml");
    let repo_dir = support::repo_dir();
    let mut triggers = Vec::new();
    for step in steps(&doc) {
        let settings = &step["settings"];
        let published = format!(
            "{}/{}",
            settings["registry"].as_str().expect("a registry"),
            settings["repo"].as_str().expect("a repo")
        );
        let image = step["image"].as_str().unwrap();
        assert!(
            image.starts_with(&format!("{published}:")),
            "the step runs the plugin image it publishes ({published}), not {image}"
        );
        let argv = plugin_argv(step, &repo_dir);
        let joined = strings(&argv);
        for platform in ["linux/amd64", "linux/arm64"] {
            assert!(has_flag(&joined, "--platform", platform), "{joined:?}");
        }
        assert!(
            has_flag(&joined, "--dockerfile", "Dockerfile"),
            "{joined:?}"
        );
        assert!(
            has_flag(&joined, "--context", &repo_dir.display().to_string()),
            "{joined:?}"
        );
        assert!(
            has_flag(&joined, "--tag", "0123456789abcdef0123456789abcdef01234567"),
            "every image is also tagged with its full commit SHA: {joined:?}"
        );
        let when = step["when"].as_sequence().expect("each step has its when");
        for filter in when {
            let events: Vec<&str> = match filter["event"].as_sequence() {
                Some(list) => list.iter().filter_map(Value::as_str).collect(),
                None => filter["event"].as_str().into_iter().collect(),
            };
            assert!(
                !events.contains(&"pull_request"),
                "no pull request publishes"
            );
            for event in events {
                match event {
                    "push" | "manual" => {
                        assert_eq!(filter["branch"], "${CI_REPO_DEFAULT_BRANCH}");
                        assert!(has_flag(&joined, "--tag", "next"), "{joined:?}");
                        assert!(!joined.contains(&"--auto-tag".to_owned()), "{joined:?}");
                    }
                    "tag" => {
                        assert_eq!(filter["ref"], "refs/tags/v*");
                        assert!(joined.contains(&"--auto-tag".to_owned()), "{joined:?}");
                        assert!(has_flag(&joined, "--tag", "latest"), "{joined:?}");
                    }
                    other => panic!("unexpected event {other}"),
                }
                triggers.push(event);
            }
        }
        parse(argv);
    }
    triggers.sort_unstable();
    assert_eq!(triggers, ["manual", "push", "tag"]);
}

#[test]
fn every_command_in_the_cron_pipelines_parses_and_runs_on_its_cron() {
    for (file, cron) in [
        ("golden-image-weekly.yaml", "golden-image-weekly"),
        ("reap-hourly.yaml", "reap-hourly"),
    ] {
        let doc = load(file);
        let when = doc["when"].as_sequence().expect("when is a list");
        assert!(
            when.iter()
                .any(|w| w["event"] == "cron" && w["cron"] == cron),
            "{file}: runs on cron {cron}"
        );
        let mut commands = 0;
        for step in steps(&doc) {
            for line in step["commands"].as_sequence().unwrap() {
                let line = line.as_str().unwrap();
                let argv: Vec<OsString> = line.split_whitespace().map(OsString::from).collect();
                assert_eq!(argv[0], "buildkit-launcher", "{file}: {line}");
                parse(argv);
                commands += 1;
            }
            assert_secrets_are_secret(step.get("environment"));
            assert!(
                step["environment"]["HCLOUD_TOKEN"]
                    .get("from_secret")
                    .is_some(),
                "{file}: every step talks to Hetzner and needs the token"
            );
        }
        assert!(commands > 0);
    }
}
