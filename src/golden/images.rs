//! `golden-image list` and `golden-image prune`: the golden snapshots per architecture, and
//! their rotation.
//!
//! Prune, per arch, newest first: the first `keep` (at least 1, so never the newest) stay;
//! of the rest, a snapshot with `protection.delete = true` is skipped and named, every other one
//! is deleted (`DELETE /images/{id}`), or only listed with `--dry-run`. Images without the
//! golden role label are never looked at.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    LABEL_ARCH, LABEL_BUILDKIT, LABEL_BUILDKITD_CONFIG, LABEL_SOURCE_COMMIT, arch_from,
    config_drift, golden_selector,
};
use crate::config::Arch;
use crate::provider::hcloud::{ApiError, HcloudProvider};

/// A snapshot as the API lists it (only what is used; unknown fields are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Snapshot {
    pub id: i64,
    #[serde(default)]
    pub description: Option<String>,
    /// RFC 3339, as the API writes it.
    #[serde(default)]
    pub created: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub protection: Protection,
    #[serde(default)]
    pub status: String,
    /// `x86` or `arm`.
    #[serde(default)]
    pub architecture: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Protection {
    #[serde(default)]
    pub delete: bool,
}

impl Snapshot {
    /// The arch label, else the image's architecture.
    pub fn arch(&self) -> Option<Arch> {
        self.labels
            .get(LABEL_ARCH)
            .and_then(|a| arch_from(a))
            .or_else(|| arch_from(&self.architecture))
    }

    pub fn buildkit(&self) -> &str {
        self.labels.get(LABEL_BUILDKIT).map_or("-", String::as_str)
    }

    /// Unix seconds of `created` (`…Z` or `…+00:00`).
    pub fn created_unix(&self) -> Option<u64> {
        let text = self.created.trim();
        let text = text
            .strip_suffix("+00:00")
            .map_or_else(|| text.to_owned(), |t| format!("{t}Z"));
        let time = humantime::parse_rfc3339_weak(&text).ok()?;
        time.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    }

    /// `current` when baked with the buildkitd.toml that `current` (the digest the launcher
    /// config renders now) stands for, `differs` when with another, `unknown` when either is
    /// not known.
    pub fn config_state(&self, current: Option<&str>) -> &'static str {
        match (self.labels.get(LABEL_BUILDKITD_CONFIG), current) {
            (Some(label), Some(current)) if label == current => "current",
            (Some(_), Some(_)) => "differs",
            _ => "unknown",
        }
    }

    fn created_day(&self) -> &str {
        self.created.get(..10).unwrap_or(&self.created)
    }
}

/// One snapshot in `list --json`.
#[derive(Debug, Serialize)]
struct Listed<'a> {
    id: i64,
    arch: Option<Arch>,
    buildkit: &'a str,
    created: &'a str,
    age_days: Option<u64>,
    protected: bool,
    status: &'a str,
    source_commit: Option<&'a str>,
    description: Option<&'a str>,
    /// The digest of the buildkitd.toml it was baked with (label), if recorded.
    buildkitd_config: Option<&'a str>,
    /// `current`, `differs` (from what the launcher config renders now) or `unknown`.
    config: &'static str,
}

/// Golden snapshots (of `arch`, or of every arch), newest first.
pub async fn list(hcloud: &HcloudProvider, arch: Option<Arch>) -> Result<Vec<Snapshot>, ApiError> {
    let mut snapshots: Vec<Snapshot> = hcloud.list_snapshots(&golden_selector()).await?;
    snapshots.retain(|s| arch.is_none_or(|a| s.arch() == Some(a)));
    sort_newest_first(&mut snapshots);
    Ok(snapshots)
}

/// Newest first by creation time; the higher id first on a tie (ids grow).
fn sort_newest_first(snapshots: &mut [Snapshot]) {
    snapshots.sort_by_key(|s| std::cmp::Reverse((s.created_unix().unwrap_or(0), s.id)));
}

/// The warnings for the newest available snapshot of each arch that was not baked with the
/// buildkitd settings the launcher config has now (`current`: their digest).
pub fn config_warnings(snapshots: &[Snapshot], current: &str) -> Vec<String> {
    let mut newest: BTreeMap<&str, &Snapshot> = BTreeMap::new();
    for s in snapshots.iter().filter(|s| s.status == "available") {
        if let Some(arch) = s.arch() {
            let entry = newest.entry(arch.as_str()).or_insert(s);
            if (s.created_unix(), s.id) > (entry.created_unix(), entry.id) {
                *entry = s;
            }
        }
    }
    newest
        .values()
        .filter_map(|s| {
            config_drift(
                s.arch()?,
                s.id,
                s.labels.get(LABEL_BUILDKITD_CONFIG).map(String::as_str),
                current,
            )
        })
        .collect()
}

/// The list as a table or JSON; `current`: the digest of the buildkitd.toml the launcher
/// config renders now (`None` when it could not be rendered here).
pub fn render_list(snapshots: &[Snapshot], now: u64, json: bool, current: Option<&str>) -> String {
    if json {
        let listed: Vec<Listed> = snapshots
            .iter()
            .map(|s| Listed {
                id: s.id,
                arch: s.arch(),
                buildkit: s.buildkit(),
                created: &s.created,
                age_days: s.created_unix().map(|c| now.saturating_sub(c) / 86_400),
                protected: s.protection.delete,
                status: &s.status,
                source_commit: s.labels.get(LABEL_SOURCE_COMMIT).map(String::as_str),
                description: s.description.as_deref(),
                buildkitd_config: s.labels.get(LABEL_BUILDKITD_CONFIG).map(String::as_str),
                config: s.config_state(current),
            })
            .collect();
        return serde_json::to_string_pretty(&listed).expect("a list serializes") + "\n";
    }
    if snapshots.is_empty() {
        return "no golden snapshots\n".to_owned();
    }
    let mut out = format!(
        "{:<12} {:<6} {:<10} {:<10} {:>8} {:<9} {}\n",
        "id", "arch", "buildkit", "created", "age_days", "protected", "config"
    );
    for s in snapshots {
        let age = s.created_unix().map_or_else(
            || "-".to_owned(),
            |c| (now.saturating_sub(c) / 86_400).to_string(),
        );
        out.push_str(&format!(
            "{:<12} {:<6} {:<10} {:<10} {:>8} {:<9} {}\n",
            s.id,
            s.arch().map_or("?", Arch::as_str),
            s.buildkit(),
            s.created_day(),
            age,
            if s.protection.delete { "yes" } else { "no" },
            s.config_state(current)
        ));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneAction {
    /// Among the newest `keep` of its arch.
    Kept,
    /// Would be deleted, but `protection.delete` is set: skipped.
    Protected,
    WouldDelete,
    Deleted,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneEntry {
    pub id: i64,
    pub arch: Arch,
    pub buildkit: String,
    pub created: String,
    pub action: PruneAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What prune does with each golden snapshot, before anything is deleted: per arch, newest
/// first, the first `keep` (at least one) are kept; the rest go unless protected.
pub fn plan(snapshots: &[Snapshot], keep: usize) -> Vec<PruneEntry> {
    let keep = keep.max(1);
    let mut by_arch: BTreeMap<&str, Vec<Snapshot>> = BTreeMap::new();
    for s in snapshots {
        // No arch label and an unknown architecture: not ours to judge.
        if let Some(arch) = s.arch() {
            by_arch.entry(arch.as_str()).or_default().push(s.clone());
        }
    }
    let mut entries = Vec::new();
    for group in by_arch.values_mut() {
        sort_newest_first(group);
        // Only finished snapshots count toward `keep`: one still `creating` (a bake under
        // way) may yet fail, and is not deleted either.
        let mut rank = 0;
        for s in group.iter() {
            if s.status != "available" {
                entries.push(PruneEntry {
                    id: s.id,
                    arch: s.arch().expect("grouped by arch"),
                    buildkit: s.buildkit().to_owned(),
                    created: s.created.clone(),
                    action: PruneAction::Kept,
                    error: None,
                });
                continue;
            }
            rank += 1;
            let action = match (rank <= keep, s.protection.delete) {
                (true, _) => PruneAction::Kept,
                (false, true) => PruneAction::Protected,
                (false, false) => PruneAction::WouldDelete,
            };
            entries.push(PruneEntry {
                id: s.id,
                arch: s.arch().expect("grouped by arch"),
                buildkit: s.buildkit().to_owned(),
                created: s.created.clone(),
                action,
                error: None,
            });
        }
    }
    entries
}

/// List, plan and (unless `dry_run`) delete. An error deleting one snapshot is recorded in its
/// entry and does not stop the others.
pub async fn prune(
    hcloud: &HcloudProvider,
    arch: Option<Arch>,
    keep: usize,
    dry_run: bool,
    log: &(dyn Fn(&str) + Send + Sync),
) -> Result<Vec<PruneEntry>, ApiError> {
    let snapshots = list(hcloud, arch).await?;
    let mut entries = plan(&snapshots, keep);
    for entry in &mut entries {
        match entry.action {
            PruneAction::Protected => log(&format!(
                "snapshot {} ({}) is protected against deletion; skipped",
                entry.id, entry.arch
            )),
            PruneAction::WouldDelete if !dry_run => {
                log(&format!(
                    "deleting snapshot {} ({}, buildkit {}, created {})",
                    entry.id, entry.arch, entry.buildkit, entry.created
                ));
                match hcloud.delete_image(entry.id).await {
                    Ok(()) => entry.action = PruneAction::Deleted,
                    Err(e) => {
                        entry.action = PruneAction::Failed;
                        entry.error = Some(e.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(entries)
}

pub fn render_prune(entries: &[PruneEntry], keep: usize, json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(entries).expect("entries serialize") + "\n";
    }
    if entries.is_empty() {
        return "no golden snapshots\n".to_owned();
    }
    let mut out = String::new();
    let mut arch = None;
    for e in entries {
        if arch != Some(e.arch) {
            arch = Some(e.arch);
            let count = entries.iter().filter(|x| x.arch == e.arch).count();
            out.push_str(&format!(
                "{}: {count} golden snapshot(s), keeping the newest {keep}\n",
                e.arch
            ));
        }
        let action = match (e.action, &e.error) {
            (PruneAction::Failed, Some(err)) => format!("failed: {err}"),
            (PruneAction::Protected, _) => "kept: protected against deletion".to_owned(),
            (PruneAction::WouldDelete, _) => "would delete".to_owned(),
            (a, _) => format!("{a:?}").to_lowercase(),
        };
        out.push_str(&format!(
            "  {:<12} {:<10} {:<10} {action}\n",
            e.id,
            e.buildkit,
            e.created.get(..10).unwrap_or(&e.created)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: i64, arch: &str, day: u32, protected: bool) -> Snapshot {
        Snapshot {
            id,
            description: None,
            created: format!("2026-11-{day:02}T06:00:00+00:00"),
            labels: BTreeMap::from([
                ("buildkit-launcher/role".into(), "golden".into()),
                (LABEL_ARCH.into(), arch.into()),
            ]),
            protection: Protection { delete: protected },
            status: "available".into(),
            architecture: if arch == "arm64" { "arm" } else { "x86" }.into(),
        }
    }

    fn actions(entries: &[PruneEntry]) -> Vec<(i64, PruneAction)> {
        entries.iter().map(|e| (e.id, e.action)).collect()
    }

    #[test]
    fn keeps_the_newest_n_per_arch_and_skips_protected_ones() {
        let snapshots = vec![
            snap(1, "amd64", 1, true),
            snap(2, "amd64", 2, false),
            snap(3, "amd64", 3, false),
            snap(4, "amd64", 4, false),
            snap(5, "amd64", 5, false),
            snap(6, "arm64", 1, false),
        ];
        let entries = plan(&snapshots, 2);
        use PruneAction::*;
        assert_eq!(
            actions(&entries),
            [
                (5, Kept),
                (4, Kept),
                (3, WouldDelete),
                (2, WouldDelete),
                (1, Protected),
                (6, Kept)
            ]
        );
    }

    #[test]
    fn never_the_newest_even_with_keep_zero() {
        let entries = plan(&[snap(1, "amd64", 1, false), snap(2, "amd64", 2, false)], 0);
        assert_eq!(
            actions(&entries),
            [(2, PruneAction::Kept), (1, PruneAction::WouldDelete)]
        );
    }

    #[test]
    fn the_architecture_stands_in_for_a_missing_arch_label() {
        let mut s = snap(7, "arm64", 3, false);
        s.labels.remove(LABEL_ARCH);
        assert_eq!(s.arch(), Some(Arch::Arm64));
        s.architecture = "riscv".into();
        assert_eq!(s.arch(), None);
        assert!(plan(&[s], 1).is_empty());
    }

    #[test]
    fn created_parses_both_utc_spellings_and_the_list_shows_age_in_days() {
        let s = snap(1, "amd64", 1, false);
        let at = s.created_unix().unwrap();
        let mut z = s.clone();
        z.created = "2026-11-01T06:00:00Z".into();
        assert_eq!(z.created_unix(), Some(at));
        let text = render_list(&[s], at + 3 * 86_400 + 5, false, Some("d1"));
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .contains(" 3 no        unknown"),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_list(&[z], at + 86_400, true, None)).unwrap();
        assert_eq!(json[0]["age_days"], 1);
        assert_eq!(json[0]["arch"], "amd64");
        assert_eq!(json[0]["config"], "unknown");
        assert_eq!(json[0]["buildkitd_config"], serde_json::Value::Null);
    }

    #[test]
    fn the_newest_snapshot_of_each_arch_is_checked_against_the_current_config() {
        let mut old = snap(1, "amd64", 1, false);
        old.labels
            .insert(LABEL_BUILDKITD_CONFIG.into(), "aaaa".into());
        let mut new = snap(2, "amd64", 2, false);
        new.labels
            .insert(LABEL_BUILDKITD_CONFIG.into(), "bbbb".into());
        let arm = snap(3, "arm64", 1, false);
        assert_eq!(new.config_state(Some("bbbb")), "current");
        assert_eq!(old.config_state(Some("bbbb")), "differs");
        assert_eq!(arm.config_state(Some("bbbb")), "unknown");
        assert_eq!(new.config_state(None), "unknown");
        let warnings = config_warnings(&[old.clone(), new.clone(), arm.clone()], "bbbb");
        assert_eq!(
            warnings,
            [
                "the newest arm64 golden snapshot (3) records no buildkitd config digest (baked before the launcher recorded one): it may not have the launcher config's buildkitd settings; bake again with `buildkit-launcher golden-image build --arch arm64`"
            ]
        );
        let warnings = config_warnings(&[old, new], "aaaa");
        assert_eq!(
            warnings,
            [
                "the newest amd64 golden snapshot (2) was baked with other buildkitd settings (digest bbbb) than the launcher config has now (aaaa): bake again with `buildkit-launcher golden-image build --arch amd64`"
            ]
        );
    }
}
