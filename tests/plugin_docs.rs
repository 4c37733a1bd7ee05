//! docs.md documents every plugin setting and carries the plugin index's front matter; the
//! plugin image's Dockerfile is multi-stage with an exec-form ENTRYPOINT (so SIGTERM reaches
//! the launcher) and ships what the launcher runs locally.

mod support;

use buildkit_launcher::cli::Cli;
use clap::CommandFactory;

fn read(name: &str) -> String {
    std::fs::read_to_string(support::repo_dir().join(name)).unwrap()
}

#[test]
fn docs_md_has_front_matter_and_documents_every_setting() {
    let docs = read("docs.md");
    let front = docs
        .strip_prefix("---\n")
        .and_then(|rest| rest.split_once("\n---\n"))
        .expect("front matter between --- lines")
        .0;
    let meta: serde_yaml_ng::Value = serde_yaml_ng::from_str(front).unwrap();
    for key in [
        "name",
        "description",
        "author",
        "tags",
        "containerImage",
        "url",
    ] {
        assert!(meta.get(key).is_some(), "front matter lacks {key}");
    }
    let cli = Cli::command();
    let build = cli.find_subcommand("build").unwrap();
    let mut settings: Vec<String> = build
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| *l != "help")
        .map(|l| l.replace('-', "_"))
        .collect();
    settings.extend(["hcloud_token", "password"].map(String::from));
    for setting in settings {
        assert!(
            docs.contains(&format!("`{setting}`")),
            "docs.md does not document the setting {setting}"
        );
    }
}

#[test]
fn the_plugin_image_is_multi_stage_with_an_exec_form_entrypoint() {
    let dockerfile = read("Dockerfile");
    let froms = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(froms >= 2, "multi-stage");
    let entrypoint = dockerfile
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    let json = entrypoint.trim_start_matches("ENTRYPOINT ").trim();
    let argv: Vec<String> = serde_json::from_str(json).expect("exec form: a JSON array");
    assert_eq!(argv, ["/usr/local/bin/buildkit-launcher"]);
    for package in ["openssh-client", "rsync", "ca-certificates"] {
        assert!(dockerfile.contains(package), "the image needs {package}");
    }
}
