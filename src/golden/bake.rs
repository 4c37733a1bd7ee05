//! `golden-image build`: bake one golden snapshot on a throwaway server, and always delete it.
//!
//! ```text
//! base image id (--base-image, e.g. debian-12)      unknown → exit 2, nothing created
//! server bkl-golden-<arch>-<lease>: smallest tier, lease labels, user data = golden-image/
//!     cloud-init.yaml + the bake's own SSH keys       registered for deletion at once
//! SSH (strict host key) → upload golden-image/ files and the buildkitd.toml rendered from the
//!     launcher config (its digest is a snapshot label) → provision.sh → verify.sh → clean.sh
//! power off → create_image (type snapshot, golden labels) → wait
//! delete the server (always; confirmed, retried)    not confirmed → exit 6
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_yaml_ng::Value;
use tokio_util::sync::CancellationToken;

use super::{
    CLOUD_INIT, FILES, LABEL_ARCH, LABEL_BUILDKIT, LABEL_BUILDKITD_CONFIG, LABEL_CREATED,
    LABEL_ROLE, LABEL_SOURCE_COMMIT, Pin, ROLE_BAKE, ROLE_GOLDEN, label_value,
};
use crate::config::buildkitd_toml::BuildkitdToml;
use crate::config::{Arch, Tier};
use crate::exit::Exit;
use crate::provider::cloud_init::UserData;
use crate::provider::hcloud::{ApiError, HcloudProvider};
use crate::provider::keys::BuildKeys;
use crate::provider::{
    LABEL_MANAGED_BY, LABEL_REPO, Lease, MANAGED_BY, Provider, ProviderError, RunnerSpec, labels,
    unix_now,
};
use crate::run::live::LiveRunners;
use crate::transport::session::{Connection, RemoteExit, describe, shell_quote};

/// A bake must be done by then. Its server's lease (what `reap` goes by) is the provider's
/// short one, renewed while the bake runs (run/live.rs), so a killed bake's server is reaped
/// within minutes; a bake cancelled while its snapshot is taken ends its lease at once.
const BAKE_TIMEOUT: Duration = Duration::from_secs(150 * 60);

/// What to bake.
pub struct BakeSettings<'a> {
    pub arch: Arch,
    /// The smallest tier of the arch's ladder: a snapshot cannot boot a smaller disk.
    pub tier: Tier,
    /// Name (e.g. `debian-12`) or id of the image the bake server starts from.
    pub base_image: String,
    pub pin: Pin,
    /// Commit of the golden-image definition (`CI_COMMIT_SHA`, git, or `unknown`).
    pub source_commit: String,
    /// Passed to provision.sh as `BUILDKIT_MIRROR`.
    pub mirror: Option<String>,
    /// buildkitd.toml rendered from the launcher config for a golden snapshot
    /// (`Target::GOLDEN`), with its CA files; its digest becomes a label.
    pub buildkitd: BuildkitdToml,
    pub log: &'a (dyn Fn(&str) + Send + Sync),
    /// The bake server's script output, streamed.
    pub output: &'a (dyn Fn(&str) + Send + Sync),
}

#[derive(Debug, Serialize)]
pub struct BakeReport {
    /// `success`, `bad_input`, `failed`, `cancelled`.
    pub outcome: &'static str,
    pub exit_code: u8,
    pub arch: Arch,
    pub buildkit: String,
    pub base_image: String,
    pub server_name: String,
    pub server: Option<String>,
    /// False only when a server was created and its deletion could not be confirmed.
    pub server_deleted: bool,
    pub snapshot: Option<i64>,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    pub exit: Exit,
}

impl BakeReport {
    pub fn render_human(&self) -> String {
        let snapshot = match self.snapshot {
            Some(id) => format!(
                "golden snapshot {id} ({}, buildkit {}) created",
                self.arch, self.buildkit
            ),
            None => "no golden snapshot was made".to_owned(),
        };
        let server = match (&self.server, self.server_deleted) {
            (None, _) => "no bake server was created".to_owned(),
            (Some(id), true) => format!("bake server {id} deleted"),
            (Some(id), false) => format!(
                "bake server {id} NOT confirmed deleted (it carries lease labels: `reap` will find it)"
            ),
        };
        format!("{snapshot}; {server}\n")
    }
}

#[derive(Debug, thiserror::Error)]
enum BakeError {
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Transport(#[from] crate::transport::session::TransportError),
    #[error(transparent)]
    Keys(#[from] crate::provider::keys::KeyError),
    #[error("{0}")]
    Step(String),
    #[error("the bake took longer than {} minutes", BAKE_TIMEOUT.as_secs() / 60)]
    Timeout,
    #[error("cancelled (SIGINT/SIGTERM)")]
    Cancelled,
}

/// Bake a golden snapshot with `hcloud` (a provider of its own: its runners boot from the base
/// image). The bake server is deleted whatever happens; see the module doc.
pub async fn bake(
    hcloud: Arc<HcloudProvider>,
    s: &BakeSettings<'_>,
    cancel: CancellationToken,
) -> BakeReport {
    let created = unix_now();
    let lease = Lease::new(
        hcloud
            .lease()
            .unwrap_or(crate::provider::hcloud::DEFAULT_LEASE)
            .as_secs(),
    );
    let server_name = format!("bkl-golden-{}-{}", s.arch, lease.id);
    let snapshot_labels = golden_labels(s, created);
    let description = format!(
        "buildkit-launcher golden {} buildkit {} {}",
        s.arch,
        s.pin.version,
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(created))
            .to_string()
            .get(..10)
            .unwrap_or_default()
    );
    // Registered the moment it exists; destroyed on every path out, by `Drop` after a panic.
    let server = LiveRunners::new(hcloud.clone());
    let work = bake_on(
        &hcloud,
        s,
        lease,
        &server_name,
        &server,
        &description,
        &snapshot_labels,
    );
    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(BakeError::Cancelled),
        r = tokio::time::timeout(BAKE_TIMEOUT, work) => r.unwrap_or(Err(BakeError::Timeout)),
    };
    let server_id = server.ids().into_iter().next();
    let deleted = server
        .destroy_all(s.log, &cancel)
        .await
        .into_iter()
        .map(|(_, result)| result)
        .find(Result::is_err)
        .unwrap_or(Ok(()));
    let (mut exit, mut outcome) = match &result {
        Ok(_) => (Exit::Success, "success"),
        Err(BakeError::BadInput(_)) => (Exit::Usage, "bad_input"),
        Err(BakeError::Cancelled) => (Exit::Cancelled, "cancelled"),
        Err(_) => (Exit::Infrastructure, "failed"),
    };
    let mut error = result.as_ref().err().map(ToString::to_string);
    let snapshot = result.ok();
    if let Err(e) = &deleted {
        exit = Exit::NotDestroyed;
        outcome = "failed";
        error = Some(format!(
            "the bake server {} could not be confirmed deleted: {e}; it carries lease labels, so `reap` will find it{}",
            server_id.as_deref().unwrap_or("?"),
            error
                .map(|e| format!(" (the bake itself: {e})"))
                .unwrap_or_default()
        ));
    }
    BakeReport {
        outcome,
        exit_code: exit as u8,
        arch: s.arch,
        buildkit: s.pin.version.clone(),
        base_image: s.base_image.clone(),
        server_name,
        server: server_id,
        server_deleted: deleted.is_ok(),
        snapshot,
        description,
        labels: snapshot_labels,
        error,
        exit,
    }
}

async fn bake_on(
    hcloud: &HcloudProvider,
    s: &BakeSettings<'_>,
    lease: Lease,
    name: &str,
    server: &LiveRunners,
    description: &str,
    snapshot_labels: &BTreeMap<String, String>,
) -> Result<i64, BakeError> {
    let image = hcloud
        .find_image(&s.base_image, s.arch)
        .await?
        .ok_or_else(|| {
            BakeError::BadInput(format!(
                "--base-image {}: no such {} image at Hetzner (a system image name such as debian-12, or an image id)",
                s.base_image, s.arch
            ))
        })?;
    hcloud.boot_from(s.arch, image).await;
    let keys = BuildKeys::generate(&lease.id)?;
    let mut server_labels = labels(&lease, "golden", &s.tier.name);
    server_labels.insert(LABEL_REPO.to_owned(), format!("golden-{}", s.arch));
    server_labels.insert(LABEL_ROLE.to_owned(), ROLE_BAKE.to_owned());
    let spec = RunnerSpec {
        name: name.to_owned(),
        lease,
        tier: s.tier.clone(),
        arch: s.arch,
        user_data: user_data(&keys),
        labels: server_labels,
    };
    (s.log)(&format!(
        "creating bake server {name} ({}, {} from image {image})",
        s.tier.name, s.base_image
    ));
    // Registered for deletion the moment its id exists, even if the bake is cancelled while
    // the create is in flight.
    let id = server.create(&spec).await?;
    let runner = hcloud.wait_ready(&id).await?;
    let mut progress = |line: String| (s.log)(&line);
    let connect = Connection::connect(
        &runner,
        &keys.client.private_openssh,
        &keys.host.public_openssh,
        hcloud.connect_policy(),
        &mut progress,
    );
    let watch = async {
        match hcloud.watch_create(&id).await {
            Ok(()) => std::future::pending().await,
            Err(e) => e,
        }
    };
    let conn = tokio::select! {
        conn = connect => conn?,
        failed = watch => return Err(failed.into()),
    };
    (s.log)(&format!(
        "connected to {} (host key verified)",
        conn.address()
    ));
    let provisioned = provision(&conn, s).await;
    conn.close().await;
    provisioned?;

    (s.log)(&format!("powering server {id} off"));
    hcloud.power_off(&id).await?;
    (s.log)(&format!("snapshotting server {id}: {description}"));
    let started = hcloud
        .start_snapshot(&id, description, snapshot_labels)
        .await?;
    let snapshot = started.image;
    let waited = match started.action {
        Some(action) => hcloud.wait_for_snapshot(action).await,
        None => hcloud.wait_for_image(snapshot).await,
    };
    if let Err(e) = waited {
        // A half-made snapshot with golden labels must not be picked by a build.
        if let Err(d) = hcloud.delete_image(snapshot).await {
            (s.log)(&format!(
                "the unfinished snapshot {snapshot} could not be deleted: {d}; delete it by hand"
            ));
        }
        return Err(e.into());
    }
    (s.log)(&format!("snapshot {snapshot} is ready"));
    Ok(snapshot)
}

/// Upload the golden-image files, then provision, verify and clean; each script's output is
/// streamed, and a failure names its step and its failed checks.
async fn provision(conn: &Connection, s: &BakeSettings<'_>) -> Result<(), BakeError> {
    let dir = conn
        .run_checked(
            "prepare the bake directory",
            "d=\"${BKL_RUNNER_WORKDIR:-/var/lib/buildkit-launcher}/golden\"; rm -rf \"$d\" && mkdir -p \"$d\" && printf '%s\\n' \"$d\"",
            None,
        )
        .await?;
    let dir = dir
        .lines()
        .map(str::trim)
        .rfind(|l| l.starts_with('/'))
        .ok_or_else(|| BakeError::Step("the bake server reported no work directory".into()))?
        .to_owned();
    conn.put_private_file(&format!("{dir}/buildkit.pin"), s.pin.text.as_bytes())
        .await?;
    for (name, text) in FILES {
        conn.put_private_file(&format!("{dir}/{name}"), text.as_bytes())
            .await?;
    }
    (s.log)(&format!(
        "buildkitd.toml from the launcher config: digest {}{}",
        s.buildkitd.digest,
        match s.buildkitd.ca_files.len() {
            0 => String::new(),
            n => format!(", {n} registry CA file(s)"),
        }
    ));
    conn.put_private_file(
        &format!("{dir}/buildkitd.toml"),
        s.buildkitd.text.as_bytes(),
    )
    .await?;
    for ca in &s.buildkitd.ca_files {
        conn.put_private_file(&format!("{dir}/registry-ca/{}", ca.name), &ca.contents)
            .await?;
    }
    let mut env = format!("BKL_ARCH={}", s.arch);
    if let Some(mirror) = &s.mirror {
        env.push_str(&format!(" BUILDKIT_MIRROR={}", shell_quote(mirror)));
    }
    let dir = shell_quote(&dir);
    for (step, script) in [
        ("provisioning", "provision.sh"),
        ("verification", "verify.sh"),
        ("cleaning", "clean.sh"),
    ] {
        (s.log)(&format!("{step} ({script})"));
        let command = format!("cd {dir} && {env} bash ./{script} ./buildkit.pin");
        let (exit, tail) = conn.run(&command, None, s.output).await?;
        if exit != RemoteExit::Code(0) {
            let failed: Vec<&str> = tail
                .iter()
                .map(String::as_str)
                .filter(|l| l.contains("FAILED"))
                .collect();
            let detail = if failed.is_empty() {
                tail.last().map_or("no output", String::as_str).to_owned()
            } else {
                failed.join("; ")
            };
            return Err(BakeError::Step(format!(
                "{step} of the bake server failed ({}): {detail}",
                describe(&exit)
            )));
        }
    }
    Ok(())
}

/// golden-image/cloud-init.yaml with the bake's keys merged in (top level; the keys win).
fn user_data(keys: &BuildKeys) -> String {
    let keyed = UserData::for_build(keys).render();
    let mut base: Value =
        serde_yaml_ng::from_str(CLOUD_INIT).expect("golden-image/cloud-init.yaml is YAML");
    let keyed: Value = serde_yaml_ng::from_str(&keyed).expect("the user data is YAML");
    if let (Value::Mapping(base), Value::Mapping(keyed)) = (&mut base, keyed) {
        for (k, v) in keyed {
            base.insert(k, v);
        }
    }
    let yaml = serde_yaml_ng::to_string(&base).expect("user data serializes");
    format!("#cloud-config\n{yaml}")
}

fn golden_labels(s: &BakeSettings<'_>, created: u64) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_ROLE.to_owned(), ROLE_GOLDEN.to_owned()),
        (LABEL_ARCH.to_owned(), s.arch.to_string()),
        (LABEL_BUILDKIT.to_owned(), label_value(&s.pin.version)),
        (LABEL_CREATED.to_owned(), created.to_string()),
        (
            LABEL_SOURCE_COMMIT.to_owned(),
            label_value(&s.source_commit),
        ),
        (
            LABEL_BUILDKITD_CONFIG.to_owned(),
            label_value(&s.buildkitd.digest),
        ),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bake_user_data_is_the_base_config_plus_the_keys() {
        let keys = BuildKeys::generate("t").unwrap();
        let text = user_data(&keys);
        assert!(text.starts_with("#cloud-config\n"));
        let parsed = UserData::parse(&text).unwrap();
        assert_eq!(parsed.ssh_authorized_keys.len(), 1);
        assert_eq!(parsed.ssh_authorized_keys[0], keys.client.public_openssh);
        assert!(!parsed.disable_root);
        let value: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(value["package_update"], Value::Bool(true));
        assert!(value["packages"].as_sequence().unwrap().len() >= 2);
    }

    #[test]
    fn the_summary_tells_the_snapshot_and_the_server_apart() {
        let mut report = BakeReport {
            outcome: "failed",
            exit_code: 6,
            arch: Arch::Amd64,
            buildkit: "v0.33.1".into(),
            base_image: "debian-12".into(),
            server_name: "bkl-golden-amd64-1".into(),
            server: Some("42".into()),
            server_deleted: false,
            snapshot: Some(7),
            description: String::new(),
            labels: BTreeMap::new(),
            error: None,
            exit: Exit::NotDestroyed,
        };
        let text = report.render_human();
        assert!(text.starts_with("golden snapshot 7 (amd64, buildkit v0.33.1) created; bake server 42 NOT confirmed deleted"), "{text}");
        report.snapshot = None;
        report.server = None;
        assert_eq!(
            report.render_human(),
            "no golden snapshot was made; no bake server was created\n"
        );
    }

    #[test]
    fn snapshot_labels_are_the_golden_ones() {
        let log = |_: &str| {};
        let s = BakeSettings {
            arch: Arch::Arm64,
            tier: crate::config::Config::defaults().ladder(Arch::Arm64)[0].clone(),
            base_image: "debian-12".into(),
            pin: Pin::embedded(),
            source_commit: "refs/x y".into(),
            mirror: None,
            buildkitd: crate::config::buildkitd_toml::render(
                &crate::config::Config::defaults().buildkitd,
                crate::config::buildkitd_toml::Target::GOLDEN,
            )
            .unwrap(),
            log: &log,
            output: &log,
        };
        let l = golden_labels(&s, 1_800_000_000);
        assert_eq!(l[LABEL_ROLE], "golden");
        assert_eq!(l[LABEL_ARCH], "arm64");
        assert_eq!(l[LABEL_BUILDKIT], s.pin.version);
        assert_eq!(l[LABEL_CREATED], "1800000000");
        assert_eq!(l[LABEL_SOURCE_COMMIT], "refs_x_y");
        assert_eq!(l[LABEL_BUILDKITD_CONFIG], s.buildkitd.digest);
        assert_eq!(l["managed-by"], "buildkit-launcher");
    }
}
