//! Golden images: the snapshot every hcloud runner boots from (ARCHITECTURE.md, "Golden
//! snapshots"; the files are in `golden-image/`).
//!
//! - [`bake`] (`golden-image build`): a throwaway server of the arch's smallest tier from a
//!   base system image, provisioned and verified over SSH with the embedded `golden-image/`
//!   scripts, cleaned, powered off and snapshotted with the golden labels. The server is deleted
//!   on every path out (success, failure, error, cancellation, panic); until then it carries
//!   lease labels like any runner, so `reap` finds it if the launcher is killed.
//! - [`list`] and [`prune`] (`golden-image list|prune`): the golden snapshots per arch, and the
//!   rotation that keeps the newest N, never the newest one, and never a protected one.
//!
//! Labels of a golden snapshot: `buildkit-launcher/role=golden`, `buildkit-launcher/arch`,
//! `buildkit-launcher/buildkit` (the BuildKit version), `buildkit-launcher/created` (unix s),
//! `buildkit-launcher/source-commit`, `buildkit-launcher/buildkitd-config` (the digest of the
//! buildkitd.toml rendered from the operator's launcher config), `managed-by=buildkit-launcher`.

mod bake;
mod images;
mod pin;

pub use bake::{BakeReport, BakeSettings, bake};
pub use images::{
    PruneAction, PruneEntry, Snapshot, config_warnings, list, prune, render_list, render_prune,
};
pub use pin::{DEFAULT_PIN, Pin, PinError};

use crate::config::Arch;

pub const LABEL_ROLE: &str = "buildkit-launcher/role";
pub const LABEL_ARCH: &str = "buildkit-launcher/arch";
pub const LABEL_BUILDKIT: &str = "buildkit-launcher/buildkit";
pub const LABEL_CREATED: &str = "buildkit-launcher/created";
pub const LABEL_SOURCE_COMMIT: &str = "buildkit-launcher/source-commit";
/// The digest of the buildkitd.toml the snapshot was baked with
/// ([`crate::config::buildkitd_toml`]).
pub const LABEL_BUILDKITD_CONFIG: &str = "buildkit-launcher/buildkitd-config";
pub const ROLE_GOLDEN: &str = "golden";
/// The role label of a bake server (a golden snapshot's is [`ROLE_GOLDEN`]).
pub const ROLE_BAKE: &str = "bake";

/// The files uploaded to a bake server, beside the pin (`buildkit.pin`) and the
/// `buildkitd.toml` rendered from the launcher config (with its CA files in `registry-ca/`).
pub const FILES: &[(&str, &str)] = &[
    (
        "provision.sh",
        include_str!("../../golden-image/provision.sh"),
    ),
    ("verify.sh", include_str!("../../golden-image/verify.sh")),
    ("clean.sh", include_str!("../../golden-image/clean.sh")),
    (
        "buildkit.service",
        include_str!("../../golden-image/buildkit.service"),
    ),
    (
        "bkl-runner-stats",
        include_str!("../../golden-image/bkl-runner-stats"),
    ),
    (
        "bkl-runner-stats.service",
        include_str!("../../golden-image/bkl-runner-stats.service"),
    ),
    (
        "ssh-oom.conf",
        include_str!("../../golden-image/ssh-oom.conf"),
    ),
];

/// The bake server's base cloud-config, merged with the per-build keys (see [`bake`]).
pub const CLOUD_INIT: &str = include_str!("../../golden-image/cloud-init.yaml");

/// The label selector of golden snapshots (of every arch: the arch is filtered afterwards, so
/// that a snapshot without an arch label still counts by its architecture).
pub fn golden_selector() -> String {
    format!("{LABEL_ROLE}={ROLE_GOLDEN}")
}

pub use crate::provider::label_value;

/// The warning for the newest golden snapshot of `arch` (`id`) when its buildkitd config
/// digest (`label`) is not `current`, the one the launcher config renders now; `None` when it is.
pub fn config_drift(arch: Arch, id: i64, label: Option<&str>, current: &str) -> Option<String> {
    let fix = format!("bake again with `buildkit-launcher golden-image build --arch {arch}`");
    match label {
        Some(label) if label == current => None,
        Some(label) => Some(format!(
            "the newest {arch} golden snapshot ({id}) was baked with other buildkitd settings (digest {label}) than the launcher config has now ({current}): {fix}"
        )),
        None => Some(format!(
            "the newest {arch} golden snapshot ({id}) records no buildkitd config digest (baked before the launcher recorded one): it may not have the launcher config's buildkitd settings; {fix}"
        )),
    }
}

/// `x86`/`arm` (Hetzner's names) or ours.
fn arch_from(text: &str) -> Option<Arch> {
    match text {
        "amd64" | "x86" => Some(Arch::Amd64),
        "arm64" | "arm" => Some(Arch::Arm64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_valid_for_hetzner() {
        assert_eq!(label_value("v0.33.1"), "v0.33.1");
        assert_eq!(label_value("0123abcd"), "0123abcd");
        assert_eq!(label_value("feature/x y"), "feature_x_y");
        assert_eq!(label_value("-a-"), "a");
        assert_eq!(label_value(""), "unknown");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn every_golden_image_file_is_embedded_and_the_scripts_are_bash() {
        for (name, text) in FILES {
            assert!(!text.is_empty(), "{name}");
            if name.ends_with(".sh") {
                assert!(text.starts_with("#!/usr/bin/env bash\n"), "{name}");
            }
        }
        assert!(CLOUD_INIT.starts_with("#cloud-config\n"));
    }
    // bkl-runner-stats on cgroup v1 and v2 fixture directories: tests/runner_stats.rs.
}
