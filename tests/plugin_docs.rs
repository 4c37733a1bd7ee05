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

/// The plugin index shows docs.md's front matter: nothing there may look like a real address
/// that is not one. Values are either real or marked `<…>` for the operator to fill.
#[test]
fn front_matter_values_are_real_or_marked_for_the_operator() {
    let docs = read("docs.md");
    let front = docs
        .strip_prefix("---\n")
        .and_then(|rest| rest.split_once("\n---\n"))
        .expect("front matter between --- lines")
        .0;
    let meta: serde_yaml_ng::Value = serde_yaml_ng::from_str(front).unwrap();
    for (key, value) in meta.as_mapping().unwrap() {
        let Some(value) = value.as_str() else {
            continue;
        };
        assert!(
            !value.contains("example"),
            "front matter {key:?}: {value} looks like an address but is a stand-in; mark it <…>"
        );
    }
    let image = meta["containerImage"].as_str().unwrap();
    assert!(
        image.starts_with('<') && image.ends_with("/images/buildkit-launcher"),
        "containerImage is the operator's own registry path, marked as such: {image}"
    );
}

/// Every relative link in the user-facing pages names a file of this repository, and the
/// operator's page is linked from the README and docs.md.
#[test]
fn relative_links_resolve_and_the_operators_page_is_linked() {
    let root = support::repo_dir();
    for page in [
        "README.md",
        "docs.md",
        "docs/OPERATORS.md",
        "docs/SECURITY.md",
        "golden-image/README.md",
    ] {
        let text = read(page);
        let dir = root.join(page).parent().unwrap().to_owned();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').expect("a closed link");
            let target = &after[..end];
            rest = &after[end..];
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap();
            assert!(
                dir.join(path).exists(),
                "{page}: the link ({target}) names no file of the repository"
            );
        }
    }
    for page in ["README.md", "docs.md"] {
        assert!(
            read(page).contains("](docs/OPERATORS.md)"),
            "{page} links docs/OPERATORS.md"
        );
    }
}

/// Cargo.toml declares `MIT OR Apache-2.0`: both texts are at the root, the README says so.
#[test]
fn both_licenses_are_there_as_cargo_toml_declares() {
    assert!(read("Cargo.toml").contains("license = \"MIT OR Apache-2.0\""));
    let mit = read("LICENSE-MIT");
    assert!(mit.starts_with("MIT License\n"));
    assert!(mit.contains("Copyright (c) the buildkit-launcher developers"));
    assert!(mit.contains("THE SOFTWARE IS PROVIDED \"AS IS\""));
    let apache = read("LICENSE-APACHE");
    assert!(apache.contains("Apache License"));
    assert!(apache.contains("Version 2.0, January 2004"));
    assert!(apache.contains("END OF TERMS AND CONDITIONS"));
    let readme = read("README.md");
    assert!(readme.contains("](LICENSE-MIT)") && readme.contains("](LICENSE-APACHE)"));
}

/// docs.md's table of plugin-docker-buildx settings is the code's (src/cli/migrate.rs), so the
/// two cannot drift.
#[test]
fn the_buildx_migration_table_is_the_codes() {
    let docs = std::fs::read_to_string(support::repo_dir().join("docs.md")).unwrap();
    let start = docs
        .find("<!-- buildx-table: generated from src/cli/migrate.rs -->\n")
        .expect("docs.md has the generated table");
    let rest = &docs[start..];
    let body = &rest[rest.find('\n').unwrap() + 1..rest.find("<!-- /buildx-table -->").unwrap()];
    assert_eq!(
        body,
        buildkit_launcher::cli::migrate::markdown_table(),
        "regenerate docs.md's table from src/cli/migrate.rs (markdown_table)"
    );
}
