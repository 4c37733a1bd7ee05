//! `buildkitd.toml`, rendered from the operator's `buildkitd` settings: the file `golden-image
//! build` installs on a golden snapshot, a sandbox runner (the local provider) starts its
//! buildkitd with, and `golden-image config` prints.
//!
//! The document is built with toml_edit, so every value the config gives (host names, mirror
//! names, repositories, sizes) is quoted by the TOML writer, never pasted into text. The
//! comments are the launcher's own. A CA file a registry names is read here (at bake time, or
//! when a sandbox runner starts) and installed beside the config on the runner as
//! `etc/buildkit/registry-ca/<host>.pem`.
//!
//! The digest (the first 32 hex digits of a SHA-256 over the file's body and each CA file) is
//! written into the file's header and onto the golden snapshot as the label
//! `buildkit-launcher/buildkitd-config`, so `check` and `golden-image list` can tell whether
//! the newest snapshot was baked with the settings the launcher has now. It is computed for the
//! golden image's file ([`Target::GOLDEN`]); a sandbox's file differs in its cgroup parent and
//! its CA paths.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use toml_edit::{Array, DocumentMut, Item, Table, value};

use super::buildkitd::BuildkitdSettings;

/// Where CA files go, below the runner's install prefix.
pub const CA_DIR: &str = "etc/buildkit/registry-ca";

/// Where the rendered file is for: paths on the runner and where build containers go.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The install prefix on the runner: `/` on a server, `<runner>/root` in a sandbox.
    pub root: &'a str,
    /// buildkitd's `defaultCgroupParent`.
    pub cgroup_parent: &'a str,
}

impl Target<'static> {
    /// A golden snapshot's: build containers below buildkitd's own systemd unit.
    pub const GOLDEN: Target<'static> = Target {
        root: "/",
        cgroup_parent: "system.slice/buildkit.service",
    };
}

/// One CA file to install as `<root>/etc/buildkit/registry-ca/<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct CaFile {
    pub name: String,
    pub contents: Vec<u8>,
}

/// The rendered file, the CA files it names, and its digest.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildkitdToml {
    pub text: String,
    pub ca_files: Vec<CaFile>,
    /// 32 lowercase hex digits.
    pub digest: String,
}

/// A setting that could not be turned into the file: a CA file that cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct RenderError {
    pub setting: String,
    pub message: String,
}

const HEADER: &str = "\
# buildkitd configuration, rendered by buildkit-launcher from the operator's launcher config
# (its `buildkitd` section; `buildkit-launcher golden-image config` prints this file). Change
# that config and bake again (`golden-image build`) rather than editing this file.
";

/// What the `[registry."HOST"]` sections do, and what they are not needed for (measured with
/// BuildKit v0.32.2: a push and a registry cache export and import over plain HTTP succeed with
/// no section at all, given `registry.insecure=true` on buildctl's side; `FROM` does not).
const REGISTRIES: &str = "\
Registry hosts (the launcher config's buildkitd.registries), for what buildkitd pulls by\n\
itself: FROM base images and the SBOM scanner image. http = true: pull over plain HTTP;\n\
insecure = true: HTTPS without certificate checks; ca = CA certificates to trust;\n\
mirrors = hosts tried first for pulls from this one. The image push and the registry\n\
cache need none of it: buildctl's own registry.insecure=true (the launcher's\n\
--insecure-registry) is enough for them over plain HTTP.";

/// The same said where no registry is configured.
const NO_REGISTRIES: &str = "\
No [registry.\"HOST\"] sections (the launcher config's buildkitd.registries is empty):\n\
buildkitd pulls FROM base images and the SBOM scanner image over HTTPS with the system's\n\
CAs (from localhost and loopback addresses it falls back to plain HTTP by itself). Pulls\n\
from another plain-HTTP registry need http = true for its host there; the image push\n\
and the registry cache over plain HTTP need only buildctl's registry.insecure=true (the\n\
launcher's --insecure-registry).";

/// Render `settings` for `target`, reading the CA files they name.
pub fn render(
    settings: &BuildkitdSettings,
    target: Target<'_>,
) -> Result<BuildkitdToml, RenderError> {
    let mut ca_files = Vec::new();
    let mut doc = DocumentMut::new();
    doc["root"] = value("/var/lib/buildkit");
    comment_key(
        doc.as_table_mut(),
        "root",
        "Where BuildKit keeps its state (snapshots, cache, content store).",
    );

    let mut grpc = Table::new();
    grpc["address"] = value(Array::from_iter(["unix:///run/buildkit/buildkitd.sock"]));
    comment_table(
        &mut grpc,
        "buildctl's default address: the launcher runs `buildctl build` on the runner itself.",
    );
    doc["grpc"] = Item::Table(grpc);

    let mut oci = Table::new();
    oci["enabled"] = value(true);
    oci["snapshotter"] = value("auto");
    oci["defaultCgroupParent"] = value(target.cgroup_parent);
    oci["gc"] = value(true);
    for (_, key, space) in settings.gc.entries() {
        oci[key] = value(space);
    }
    comment_table(
        &mut oci,
        "runc with the snapshotter BuildKit picks (overlayfs where the kernel allows it, else\n\
         native). No CNI config: build containers use the host's network. Build containers go\n\
         below defaultCgroupParent: on a golden snapshot buildkitd's own unit\n\
         (buildkit.service, Delegate=yes), whose memory.peak bkl-runner-stats reads; on a\n\
         sandbox runner its memory cgroup. Garbage collection (BuildKit >= 0.17 names; the\n\
         launcher config's buildkitd.gc): never prune below reservedSpace, prune once the cache\n\
         uses more than maxUsedSpace or less than minFreeSpace is free.",
    );
    let mut containerd = Table::new();
    containerd["enabled"] = value(false);
    let mut worker = Table::new();
    worker.set_implicit(true);
    worker["oci"] = Item::Table(oci);
    worker["containerd"] = Item::Table(containerd);
    doc["worker"] = Item::Table(worker);

    let mut gateway = Table::new();
    gateway["enabled"] = value(true);
    gateway["allowedRepositories"] = value(Array::from_iter(settings.frontends.iter()));
    comment_table(
        &mut gateway,
        "`# syntax=IMAGE` in a Dockerfile makes BuildKit run IMAGE as the build's frontend, with\n\
         the build's session: only these repositories may (compared without the tag; any other\n\
         is refused as \"not an allowed gateway source\"). The launcher config's\n\
         buildkitd.frontends.",
    );
    let mut frontend = Table::new();
    frontend.set_implicit(true);
    frontend["gateway.v0"] = Item::Table(gateway);
    doc["frontend"] = Item::Table(frontend);

    if !settings.registries.is_empty() {
        let mut registries = Table::new();
        registries.set_implicit(true);
        for (host, r) in &settings.registries {
            let mut t = Table::new();
            if !r.mirrors.is_empty() {
                t["mirrors"] = value(Array::from_iter(r.mirrors.iter()));
            }
            if r.http {
                t["http"] = value(true);
            }
            if r.insecure {
                t["insecure"] = value(true);
            }
            if let Some(path) = &r.ca_file {
                let setting = format!("buildkitd.registries.\"{}\".ca_file", host.escape_debug());
                let contents = read_ca(path).map_err(|message| RenderError { setting, message })?;
                let name = format!("{}.pem", host.replace(':', "_"));
                let on_runner = Path::new(target.root).join(CA_DIR).join(&name);
                t["ca"] = value(Array::from_iter([on_runner.display().to_string()]));
                ca_files.push(CaFile { name, contents });
            }
            registries[host.as_str()] = Item::Table(t);
        }
        if let Some((_, first)) = registries.iter_mut().next()
            && let Some(t) = first.as_table_mut()
        {
            comment_table(t, REGISTRIES);
        }
        doc["registry"] = Item::Table(registries);
    } else {
        doc.set_trailing(format!("\n{}", comment_lines(NO_REGISTRIES)));
    }

    let body = doc.to_string();
    let mut hash = Sha256::new();
    hash.update(body.as_bytes());
    for ca in &ca_files {
        hash.update(ca.name.as_bytes());
        hash.update([0]);
        hash.update((ca.contents.len() as u64).to_le_bytes());
        hash.update(&ca.contents);
    }
    let digest: String = hash
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let text = format!("{HEADER}# config digest: {digest}\n\n{body}");
    Ok(BuildkitdToml {
        text,
        ca_files,
        digest,
    })
}

/// The digest a golden snapshot baked with `settings` now would carry.
pub fn golden_digest(settings: &BuildkitdSettings) -> Result<String, RenderError> {
    render(settings, Target::GOLDEN).map(|r| r.digest)
}

fn read_ca(path: &PathBuf) -> Result<Vec<u8>, String> {
    let contents = std::fs::read(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            std::io::ErrorKind::IsADirectory => "is a directory".to_owned(),
            _ => e.to_string(),
        };
        format!("{}: cannot read: {why}", path.display())
    })?;
    if !String::from_utf8_lossy(&contents).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{}: not a PEM certificate (no -----BEGIN CERTIFICATE----- line)",
            path.display()
        ));
    }
    Ok(contents)
}

fn comment_lines(text: &str) -> String {
    text.lines().map(|l| format!("# {l}\n")).collect()
}

fn comment_table(table: &mut Table, text: &str) {
    table
        .decor_mut()
        .set_prefix(format!("\n{}", comment_lines(text)));
}

fn comment_key(table: &mut Table, key: &str, text: &str) {
    if let Some(mut k) = table.key_mut(key) {
        k.leaf_decor_mut().set_prefix(comment_lines(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, RegistryHost};

    fn settings() -> BuildkitdSettings {
        Config::defaults().buildkitd
    }

    #[test]
    fn the_defaults_render_todays_golden_file() {
        let r = render(&settings(), Target::GOLDEN).unwrap();
        let parsed: toml_edit::DocumentMut = r.text.parse().unwrap();
        assert_eq!(parsed["root"].as_str(), Some("/var/lib/buildkit"));
        let oci = &parsed["worker"]["oci"];
        assert_eq!(
            oci["defaultCgroupParent"].as_str(),
            Some("system.slice/buildkit.service")
        );
        assert_eq!(oci["snapshotter"].as_str(), Some("auto"));
        assert_eq!(oci["gc"].as_bool(), Some(true));
        assert_eq!(oci["reservedSpace"].as_str(), Some("2GB"));
        assert_eq!(oci["maxUsedSpace"].as_str(), Some("70%"));
        assert_eq!(oci["minFreeSpace"].as_str(), Some("4GB"));
        assert_eq!(
            parsed["worker"]["containerd"]["enabled"].as_bool(),
            Some(false)
        );
        let gateway = &parsed["frontend"]["gateway.v0"];
        assert_eq!(gateway["enabled"].as_bool(), Some(true));
        assert_eq!(
            gateway["allowedRepositories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect::<Vec<_>>(),
            ["docker.io/docker/dockerfile"]
        );
        assert!(parsed.get("registry").is_none());
        assert!(r.ca_files.is_empty());
        assert_eq!(r.digest.len(), 32);
        assert!(r.text.contains(&format!("# config digest: {}\n", r.digest)));
        assert_eq!(golden_digest(&settings()).unwrap(), r.digest);
    }

    /// The whole default file, as an operator reads it (`golden-image config`).
    #[test]
    fn the_default_golden_file() {
        insta::assert_snapshot!(render(&settings(), Target::GOLDEN).unwrap().text);
    }

    #[test]
    fn registries_mirrors_and_hostile_names_are_quoted_by_the_writer() {
        let mut s = settings();
        s.registries.insert(
            "zot.example:5000".into(),
            RegistryHost {
                http: true,
                ..Default::default()
            },
        );
        s.registries.insert(
            "docker.io".into(),
            RegistryHost {
                mirrors: vec!["zot.example:5000".into()],
                ..Default::default()
            },
        );
        // Not valid config (validate refuses it), but the writer must still keep it a string.
        s.frontends
            .push("x\"]\n[grpc]\naddress = [\"tcp://0.0.0.0:1\"".into());
        let r = render(&s, Target::GOLDEN).unwrap();
        let parsed: toml_edit::DocumentMut = r.text.parse().unwrap();
        assert_eq!(
            parsed["registry"]["zot.example:5000"]["http"].as_bool(),
            Some(true)
        );
        assert!(
            parsed["registry"]["zot.example:5000"]
                .get("insecure")
                .is_none()
        );
        assert_eq!(
            parsed["registry"]["docker.io"]["mirrors"][0].as_str(),
            Some("zot.example:5000")
        );
        assert_eq!(
            parsed["grpc"]["address"].as_array().unwrap().len(),
            1,
            "{}",
            r.text
        );
        assert_eq!(
            parsed["frontend"]["gateway.v0"]["allowedRepositories"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_ne!(r.digest, golden_digest(&settings()).unwrap());
        // What http = true is for (pulls), and that pushes and the cache do not need it; the
        // note for a file without registries is not there.
        assert!(
            r.text.contains("# itself: FROM base images and the SBOM scanner image. http = true: pull over plain HTTP;")
                && r.text.contains("# cache need none of it: buildctl's own registry.insecure=true"),
            "{}",
            r.text
        );
        assert!(!r.text.contains("No [registry."), "{}", r.text);
    }

    #[test]
    fn a_ca_file_is_read_and_named_under_the_targets_root() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let mut s = settings();
        s.registries.insert(
            "reg.example:443".into(),
            RegistryHost {
                ca_file: Some(pem.clone()),
                ..Default::default()
            },
        );
        let golden = render(&s, Target::GOLDEN).unwrap();
        assert_eq!(golden.ca_files.len(), 1);
        assert_eq!(golden.ca_files[0].name, "reg.example_443.pem");
        let parsed: toml_edit::DocumentMut = golden.text.parse().unwrap();
        assert_eq!(
            parsed["registry"]["reg.example:443"]["ca"][0].as_str(),
            Some("/etc/buildkit/registry-ca/reg.example_443.pem")
        );
        let sandbox = render(
            &s,
            Target {
                root: "/var/tmp/r/root",
                cgroup_parent: "buildkit-launcher/local-1",
            },
        )
        .unwrap();
        assert!(
            sandbox
                .text
                .contains("\"/var/tmp/r/root/etc/buildkit/registry-ca/reg.example_443.pem\"")
        );
        assert!(
            sandbox
                .text
                .contains("defaultCgroupParent = \"buildkit-launcher/local-1\"")
        );
        // The CA's contents count toward the digest.
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert_ne!(render(&s, Target::GOLDEN).unwrap().digest, golden.digest);

        std::fs::write(&pem, "not a certificate").unwrap();
        let err = render(&s, Target::GOLDEN).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "buildkitd.registries.\"reg.example:443\".ca_file: {}: not a PEM certificate (no -----BEGIN CERTIFICATE----- line)",
                pem.display()
            )
        );
        std::fs::remove_file(&pem).unwrap();
        let err = render(&s, Target::GOLDEN).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "buildkitd.registries.\"reg.example:443\".ca_file: {}: cannot read: no such file",
                pem.display()
            )
        );
    }
}
