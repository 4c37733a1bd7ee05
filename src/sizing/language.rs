//! Language detection from the files at the context root (SIZING.md, tier 3).

use std::path::Path;

use serde::Serialize;

use crate::config::LanguageDefaults;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Rust,
    Go,
    Node,
    Java,
    Python,
    Generic,
}

/// Marker files in precedence order: the first present decides.
const MARKERS: &[(&str, Language)] = &[
    ("Cargo.toml", Language::Rust),
    ("go.mod", Language::Go),
    ("package.json", Language::Node),
    ("pom.xml", Language::Java),
    ("build.gradle", Language::Java),
    ("build.gradle.kts", Language::Java),
    ("pyproject.toml", Language::Python),
    ("requirements.txt", Language::Python),
];

impl Language {
    pub fn detect(context: &Path) -> (Language, Option<&'static str>) {
        MARKERS
            .iter()
            .find(|(file, _)| context.join(file).is_file())
            .map_or((Language::Generic, None), |(file, lang)| {
                (*lang, Some(*file))
            })
    }

    /// A trace's `lang` field; anything unknown counts as generic.
    pub fn from_name(name: &str) -> Language {
        match name {
            "rust" => Language::Rust,
            "go" => Language::Go,
            "node" => Language::Node,
            "java" => Language::Java,
            "python" => Language::Python,
            _ => Language::Generic,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Go => "go",
            Language::Node => "node",
            Language::Java => "java",
            Language::Python => "python",
            Language::Generic => "generic",
        }
    }

    pub fn default_tier(self, defaults: &LanguageDefaults) -> &str {
        match self {
            Language::Rust => &defaults.rust,
            Language::Go => &defaults.go,
            Language::Node => &defaults.node,
            Language::Java => &defaults.java,
            Language::Python => &defaults.python,
            Language::Generic => &defaults.generic,
        }
    }
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect_with(files: &[&str]) -> Language {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        Language::detect(dir.path()).0
    }

    #[test]
    fn each_marker_detects_its_language() {
        assert_eq!(detect_with(&["Cargo.toml"]), Language::Rust);
        assert_eq!(detect_with(&["go.mod"]), Language::Go);
        assert_eq!(detect_with(&["package.json"]), Language::Node);
        assert_eq!(detect_with(&["pom.xml"]), Language::Java);
        assert_eq!(detect_with(&["build.gradle"]), Language::Java);
        assert_eq!(detect_with(&["build.gradle.kts"]), Language::Java);
        assert_eq!(detect_with(&["pyproject.toml"]), Language::Python);
        assert_eq!(detect_with(&["requirements.txt"]), Language::Python);
        assert_eq!(detect_with(&["Dockerfile", "main.c"]), Language::Generic);
    }

    #[test]
    fn the_first_marker_in_sizing_md_order_wins() {
        assert_eq!(detect_with(&["package.json", "Cargo.toml"]), Language::Rust);
        assert_eq!(detect_with(&["requirements.txt", "go.mod"]), Language::Go);
    }

    #[test]
    fn a_directory_named_like_a_marker_is_not_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("Cargo.toml")).unwrap();
        assert_eq!(Language::detect(dir.path()).0, Language::Generic);
    }
}
