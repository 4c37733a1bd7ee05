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
//! `buildkit-launcher/source-commit`, `managed-by=buildkit-launcher`.

mod bake;
mod images;
mod pin;

pub use bake::{BakeReport, BakeSettings, bake};
pub use images::{PruneAction, PruneEntry, Snapshot, list, prune, render_list, render_prune};
pub use pin::{DEFAULT_PIN, Pin, PinError};

use crate::config::Arch;

pub const LABEL_ROLE: &str = "buildkit-launcher/role";
pub const LABEL_ARCH: &str = "buildkit-launcher/arch";
pub const LABEL_BUILDKIT: &str = "buildkit-launcher/buildkit";
pub const LABEL_CREATED: &str = "buildkit-launcher/created";
pub const LABEL_SOURCE_COMMIT: &str = "buildkit-launcher/source-commit";
pub const ROLE_GOLDEN: &str = "golden";
/// The role label of a bake server (a golden snapshot's is [`ROLE_GOLDEN`]).
pub const ROLE_BAKE: &str = "bake";

/// The files uploaded to a bake server, beside the pin (`buildkit.pin`).
pub const FILES: &[(&str, &str)] = &[
    (
        "provision.sh",
        include_str!("../../golden-image/provision.sh"),
    ),
    ("verify.sh", include_str!("../../golden-image/verify.sh")),
    ("clean.sh", include_str!("../../golden-image/clean.sh")),
    (
        "buildkitd.toml",
        include_str!("../../golden-image/buildkitd.toml"),
    ),
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
