//! Secret values where no secret belongs: a setting other than the ones made to carry one
//! (Woodpecker lets any setting take `from_secret`), and the build arguments, labels and tags
//! that go into the image's history, the report and the log. Named, never shown.

use std::collections::BTreeMap;

use super::settings::yaml_name;
use crate::policy::Policy;
use crate::text::quote;

/// Settings whose values are secrets by design: the token, the registry password, the build
/// secrets, and the proxies (whose URLs may carry the proxy's password).
const SECRET_SETTINGS: &[&str] = &[
    "PLUGIN_HCLOUD_TOKEN",
    "PLUGIN_PASSWORD",
    "PLUGIN_REGISTRY_PASSWORD",
    "PLUGIN_BUILD_SECRETS",
    "PLUGIN_HTTP_PROXY",
    "PLUGIN_HTTPS_PROXY",
];

/// No other setting may hold a secret value the launcher holds. Woodpecker lets any setting
/// take `from_secret`, so `context: {from_secret: hcloud_token}` would otherwise put the token
/// in an error message, a server's name, a label or the report. Named, never shown.
pub fn refuse_secrets_in_settings(
    env: &BTreeMap<String, String>,
    policy: &Policy,
) -> Result<(), String> {
    let secrets = policy.secret_values();
    let holds = |value: &str| holds_secret(value, &secrets, 8);
    let found: Vec<String> = env
        .iter()
        .filter(|(k, v)| {
            k.starts_with("PLUGIN_") && !SECRET_SETTINGS.contains(&k.as_str()) && holds(v)
        })
        .map(|(k, _)| yaml_name(k))
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{}: the value holds a secret of the launcher (the token, the registry password, a build secret or a variable the policy marks secret); only hcloud_token, password and build_secrets carry secrets: never pass one through another setting",
        found.join(", ")
    ))
}

/// Whether `value` carries one of `secrets`: one of `anywhere` characters or more anywhere in
/// it, a shorter one (4 or more) only as the whole value, so that a short secret does not
/// refuse every value that happens to contain it (and one under 4 characters is no secret
/// worth the name). A map or list setting (`build_args: {X: ...}`) reaches the launcher as
/// JSON, where Woodpecker escapes quotes, backslashes, `<`, `>` and `&`: its strings, decoded,
/// count too.
fn holds_secret(value: &str, secrets: &[zeroize::Zeroizing<String>], anywhere: usize) -> bool {
    let decoded = json_strings(value);
    std::iter::once(value)
        .chain(decoded.iter().map(|s| s.as_str()))
        .any(|v| {
            secrets.iter().any(|s| {
                s.len() >= anywhere && v.contains(s.as_str())
                    || s.len() >= 4 && v.trim() == s.as_str()
            })
        })
}

/// Every string (keys too) of `value` when it is a JSON object or array; nothing otherwise.
fn json_strings(value: &str) -> Vec<zeroize::Zeroizing<String>> {
    fn walk(v: &serde_json::Value, out: &mut Vec<zeroize::Zeroizing<String>>) {
        match v {
            serde_json::Value::String(s) => out.push(zeroize::Zeroizing::new(s.clone())),
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    out.push(zeroize::Zeroizing::new(k.clone()));
                    walk(v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    if value.trim_start().starts_with(['{', '['])
        && let Ok(parsed) = serde_json::from_str::<serde_json::Value>(value)
    {
        walk(&parsed, &mut out);
    }
    out
}

/// A build argument, label or tag may not carry a secret the launcher holds: it would be in
/// the report's commands, the image's history and the log.
pub fn refuse_secret_values(
    build_args: &[(String, String)],
    labels: &[(String, String)],
    tags: &[String],
    secrets: &[zeroize::Zeroizing<String>],
) -> Result<(), String> {
    // Stricter than for settings: these values go into the image's history and the report.
    let holds = |value: &str| holds_secret(value, secrets, 4);
    // The message names the key, never the value (which holds the secret).
    let found = build_args
        .iter()
        .map(|(k, v)| ("--build-arg", quote(k), v.as_str()))
        .chain(
            labels
                .iter()
                .map(|(k, v)| ("--label", quote(k), v.as_str())),
        )
        .chain(
            tags.iter()
                .enumerate()
                .map(|(i, t)| ("--tag", format!("tag {}", i + 1), t.as_str())),
        )
        .find(|(_, _, v)| holds(v));
    match found {
        Some((flag, key, _)) => Err(format!(
            "{}: {key}: its value holds a secret of the launcher (the token, the registry password, a build secret or a variable the policy marks secret); pass secrets with secrets/build_secrets, never as a value",
            crate::exit::option(flag),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_found_as_written_or_as_json_escapes_it_never_when_short_and_inside() {
        let secrets = [
            zeroize::Zeroizing::new("tok\"en-&-<7f3a>".to_owned()),
            zeroize::Zeroizing::new("abcdef".to_owned()),
        ];
        // As written, and as a map setting's JSON carries it (Go escapes &, < and >).
        assert!(holds_secret("x tok\"en-&-<7f3a> y", &secrets, 8));
        assert!(holds_secret(
            r#"{"X":"tok\"en-\u0026-\u003c7f3a\u003e"}"#,
            &secrets,
            8
        ));
        assert!(holds_secret(r#"["v1", "tok\"en-&-<7f3a>"]"#, &secrets, 8));
        // A short secret only as the whole value in a setting, anywhere in a build value.
        assert!(holds_secret(" abcdef ", &secrets, 8));
        assert!(!holds_secret("xabcdefx", &secrets, 8));
        assert!(holds_secret("app:abcdef", &secrets, 4));
        assert!(!holds_secret("tok-en", &secrets, 8));
    }
}
