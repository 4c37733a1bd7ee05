//! The names settings go by, so that a plugin user reads the words of the pipeline's YAML:
//! every unknown setting at once with a "did you mean", and clap's messages about the flags
//! that settings became rewritten in the settings' own names.

use std::collections::BTreeMap;

use clap::CommandFactory;

use super::Cli;
use super::settings::yaml_name;

/// Every setting name the plugin knows (YAML spelling): each flag of `build`, the plural and
/// plugin-docker-buildx spellings, the global and secret settings.
pub fn known() -> Vec<String> {
    let cli = Cli::command();
    let build = cli
        .find_subcommand("build")
        .expect("the build subcommand exists");
    let mut names: Vec<String> = build
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| *l != "help")
        .map(|l| l.replace('-', "_"))
        .collect();
    names.extend(
        super::plugin::ALIASES
            .iter()
            .chain(super::plugin::GLOBAL)
            .map(|(alias, _)| alias.to_ascii_lowercase()),
    );
    names.extend(
        super::plugin::SECRET_SETTINGS
            .iter()
            .map(|s| s.to_ascii_lowercase()),
    );
    names.sort();
    names.dedup();
    names
}

/// The closest known name, if one is close enough to be a typo.
pub fn suggest(name: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.clone())
}

/// Every `PLUGIN_*` variable that is no setting of this plugin, reported together.
pub fn check_known(env: &BTreeMap<String, String>) -> Result<(), String> {
    let known = known();
    let unknown: Vec<String> = env
        .iter()
        .filter(|(k, v)| k.starts_with("PLUGIN_") && !v.is_empty())
        .map(|(k, _)| yaml_name(k))
        .filter(|name| !known.contains(name))
        .map(|name| match suggest(&name, &known) {
            Some(close) => format!("{name} (did you mean {close}?)"),
            None => name,
        })
        .collect();
    match unknown.as_slice() {
        [] => Ok(()),
        [one] => Err(format!(
            "{one}: not a setting of this plugin; docs.md lists the settings"
        )),
        many => Err(format!(
            "not settings of this plugin: {}; docs.md lists the settings",
            many.join(", ")
        )),
    }
}

/// Remember which setting became which flag (`tag` ← `tags`), for [`in_settings_words`] and
/// every message that names a flag (`exit::option`).
pub fn remember(flag_to_setting: BTreeMap<String, String>) {
    crate::exit::remember_settings(flag_to_setting);
}

/// clap's message about the command line the settings became, in the settings' words:
/// `'--tag <TAG>'` → `tags` (as the pipeline wrote it).
pub fn in_settings_words(text: &str) -> String {
    if !crate::exit::plugin_mode() {
        return text.to_owned();
    }
    let cli = Cli::command();
    let Some(build) = cli.find_subcommand("build") else {
        return text.to_owned();
    };
    let mut text = text.to_owned();
    for arg in build.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let setting = crate::exit::written_setting(long)
            .map_or_else(|| long.replace('-', "_"), str::to_owned);
        let values = arg
            .get_value_names()
            .map(|v| v.iter().map(|s| format!("<{s}>")).collect::<Vec<_>>())
            .unwrap_or_default();
        let with_value = format!("--{long} {}", values.join(" "));
        text = text
            .replace(&format!("'{}'", with_value.trim_end()), &setting)
            .replace(&format!("'--{long}'"), &setting);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_setting_at_once_with_a_suggestion() {
        let env = crate::cli::settings_env(&[
            ("PLUGIN_TAGZ", "x"),
            ("PLUGIN_REGSITRY", "y"),
            ("PLUGIN_QQQQQQ", "z"),
            ("PLUGIN_TAGS", "ok"),
        ]);
        let err = check_known(&env).unwrap_err();
        assert!(err.contains("tagz (did you mean tag?)"), "{err}");
        assert!(err.contains("regsitry (did you mean registry?)"), "{err}");
        assert!(err.contains("qqqqqq;") || err.contains("qqqqqq,"), "{err}");
        assert!(!err.contains("PLUGIN_"), "settings, not variables: {err}");
    }
}
