//! Attestations under the real BuildKit on a sandbox runner: an SBOM made by the tests' own
//! scanner image (no Docker Hub), provenance, and the image index BuildKit pushes for them,
//! which the launcher's per-tag verification must accept; a scanner image that cannot be
//! pulled is the runner's failure (exit 4), naming the image.

mod support;

use support::Launcher;
use support::local_build::{Fixture, outcomes};

/// A tiny SBOM scanner that follows BuildKit's SBOM scanner protocol
/// (docs/attestations/sbom-protocol.md): for the target `$BUILDKIT_SCAN_SOURCE` and every
/// directory in `$BUILDKIT_SCAN_SOURCE_EXTRAS`, one SPDX JSON document
/// `$BUILDKIT_SCAN_DESTINATION/<target name>.spdx.json` counting the target's regular files.
/// What the document does not say and BuildKit v0.32.2 requires: each file is an in-toto
/// statement (`predicateType` `https://spdx.dev/Document`, the SPDX document as `predicate`);
/// a bare SPDX document fails the build with `bundle entry  does not match required predicate
/// type` (BuildKit's unbundle, solver/llbsolver/proc/sbom.go). busybox's sh, find and wc only.
const SCANNER: &str = r#"#!/bin/sh
set -eu
scan() {
    name=${1##*/}
    files=$(cd "$1" && find . -type f | wc -l)
    printf '{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document","subject":[],"predicate":{"spdxVersion":"SPDX-2.3","dataLicense":"CC0-1.0","SPDXID":"SPDXRef-DOCUMENT","name":"%s","documentNamespace":"https://buildkit-launcher.invalid/bkl-test-scanner/%s","creationInfo":{"created":"2026-01-01T00:00:00Z","creators":["Tool: bkl-test-scanner"]},"packages":[{"name":"bkl-test-scanner-files","SPDXID":"SPDXRef-Package-files","downloadLocation":"NOASSERTION","comment":"%s regular files"}]}}\n' \
        "$name" "$name" $files >"$BUILDKIT_SCAN_DESTINATION/$name.spdx.json"
}
scan "$BUILDKIT_SCAN_SOURCE"
if [ -n "${BUILDKIT_SCAN_SOURCE_EXTRAS:-}" ] && [ -d "$BUILDKIT_SCAN_SOURCE_EXTRAS" ]; then
    for extra in "$BUILDKIT_SCAN_SOURCE_EXTRAS"/*; do
        if [ -d "$extra" ]; then scan "$extra"; fi
    done
fi
"#;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `args` with the value after `flag` replaced.
fn with(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    let i = args.iter().position(|a| a == flag).expect(flag) + 1;
    args[i] = value.to_owned();
    args
}

/// Build the scanner image with the launcher itself (real BuildKit on a sandbox runner) and
/// push it to the fixture's registry as `test/scanner:1`; its reference.
fn push_scanner(f: &Fixture) -> String {
    let ctx = support::Context::new()
        .file(
            "Dockerfile",
            &format!(
                "FROM {}\nCOPY scan.sh /bin/bkl-test-scanner\nENTRYPOINT [\"/bin/sh\", \"/bin/bkl-test-scanner\"]\n",
                f.registry.base_image()
            ),
        )
        .file("scan.sh", SCANNER);
    let args = with(
        f.args("buildctl"),
        "--context",
        &ctx.path().display().to_string(),
    );
    let args = with(args, "--project", "test/scanner");
    let args = with(
        args,
        "--report",
        &ctx.path().join("report.json").display().to_string(),
    );
    let out = Launcher::new().args(args).args(["--tag", "1"]).run();
    assert_eq!(out.code, 0, "building the scanner:\n{}", out.stderr);
    format!("{}/test/scanner:1", f.registry.addr)
}

/// A launcher config naming the SBOM scanner image.
fn config(f: &Fixture, scanner: &str) -> String {
    let path = f.ctx.path().join("launcher.ncl");
    std::fs::write(
        &path,
        format!("{{ buildkitd = {{ sbom_generator = \"{scanner}\" }} }}\n"),
    )
    .unwrap();
    path.display().to_string()
}

fn blob(f: &Fixture, repo: &str, digest: &str) -> String {
    let (status, _, body) = f
        .registry
        .get(&format!("/v2/{repo}/blobs/{digest}"), &[])
        .unwrap();
    assert_eq!(status, 200, "{repo}@{digest}: {body}");
    body
}

#[test]
fn sbom_from_the_tests_own_scanner_and_provenance_end_to_end() {
    let Some(f) = Fixture::new("RUN echo built > /built.txt") else {
        return;
    };
    let scanner = push_scanner(&f);
    let config = config(&f, &scanner);
    let out = f.build(
        "buildctl",
        &[
            "--config",
            &config,
            "--tag",
            "v1",
            "--tag",
            "latest",
            "--sbom",
            "--provenance",
            "max",
        ],
    );
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("generating sbom using {scanner}")),
        "{}",
        out.stderr
    );
    let report = f.report();
    assert_eq!(report["outcome"], "success");
    // The plan shows the scanner: the buildctl command line names it.
    let commands = report["plan"]["commands"].to_string();
    assert!(
        commands.contains(&format!("attest:sbom=generator={scanner}")),
        "{commands}"
    );
    let digest = report["digest"].as_str().unwrap();
    f.assert_nothing_left();

    // What BuildKit pushed under both tags: an index of the image and its attestation manifest
    // (the digest the launcher verified and reported).
    for tag in ["v1", "latest"] {
        let (status, headers, _) = f
            .registry
            .get(
                &format!("/v2/e2e/app/manifests/{tag}"),
                &[("Accept", INDEX)],
            )
            .unwrap();
        assert_eq!(status, 200);
        let got = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Docker-Content-Digest"))
            .map(|(_, v)| v.as_str());
        assert_eq!(got, Some(digest), "tag {tag}");
    }
    let (_, index) = f.registry.manifest_json("e2e/app", digest, INDEX);
    assert_eq!(index["mediaType"], INDEX, "{index}");
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2, "{index}");
    assert_eq!(manifests[0]["platform"]["architecture"], "amd64", "{index}");
    let attestation = &manifests[1];
    assert_eq!(
        attestation["annotations"]["vnd.docker.reference.type"], "attestation-manifest",
        "{index}"
    );
    assert_eq!(
        attestation["platform"]["architecture"], "unknown",
        "{index}"
    );
    let (_, att) =
        f.registry
            .manifest_json("e2e/app", attestation["digest"].as_str().unwrap(), MANIFEST);
    let layers = att["layers"].as_array().unwrap();
    let predicate = |l: &serde_json::Value| {
        l["annotations"]["in-toto.io/predicate-type"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let sbom = layers
        .iter()
        .find(|l| predicate(l) == "https://spdx.dev/Document")
        .unwrap_or_else(|| panic!("no SPDX layer: {att}"));
    assert!(
        layers
            .iter()
            .any(|l| predicate(l).contains("slsa.dev/provenance")),
        "no provenance layer: {att}"
    );
    let statement: serde_json::Value =
        serde_json::from_str(&blob(&f, "e2e/app", sbom["digest"].as_str().unwrap())).unwrap();
    assert_eq!(
        statement["predicate"]["creationInfo"]["creators"][0], "Tool: bkl-test-scanner",
        "{statement}"
    );
    assert!(
        statement["predicate"]["packages"][0]["comment"]
            .as_str()
            .unwrap()
            .ends_with(" regular files"),
        "{statement}"
    );
}

#[test]
fn an_sbom_scanner_that_cannot_be_pulled_is_exit_4_naming_it() {
    let Some(f) = Fixture::new("RUN echo built > /built.txt") else {
        return;
    };
    let scanner = format!("{}/test/no-such-scanner:1", f.registry.addr);
    let config = config(&f, &scanner);
    let out = f.build("buildctl", &["--config", &config, "--tag", "v1", "--sbom"]);
    assert_eq!(out.code, 4, "stderr:\n{}", out.stderr);
    let report = f.report();
    assert_eq!(outcomes(&report), [("cx33".into(), "lost".into())]);
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("the SBOM scanner image {scanner}")),
        "{error}"
    );
    assert_eq!(f.registry.manifest_digest("e2e/app", "v1"), None);
    f.assert_nothing_left();
}
