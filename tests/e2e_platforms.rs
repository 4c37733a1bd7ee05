//! Several platforms through the Hetzner API simulator: one native runner per architecture (an
//! x86 and an ARM server up at the same time), each pushing by digest, one OCI image index
//! under every tag; SIGTERM destroys both; an OOM retries only its own platform; a dry run
//! pushes nothing; bad platform input is exit 2 before any server.
//!
//! A foreign platform builds without emulation when no step executes: `FROM scratch` + `COPY`.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::BIN;
use support::hcloud_sim::cloud::Cloud;

const BOTH: &str = "linux/amd64,linux/arm64";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A simulator world with an arm64 golden snapshot too, and a Dockerfile both platforms build.
fn cloud(dockerfile: &str) -> Option<Cloud> {
    let c = Cloud::new("")?;
    let mut labels = support::hcloud_sim::cloud::GOLDEN.to_vec();
    labels[1] = ("buildkit-launcher/arch", "arm64");
    c.sim
        .add_snapshot("arm64", &labels, "2026-11-20T00:00:00+00:00");
    let dockerfile = dockerfile.replace("{base}", &c.registry.base_image());
    std::fs::write(c.ctx.path().join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(c.ctx.path().join("hello.txt"), "hello\n").unwrap();
    Some(c)
}

const SCRATCH: &str = "FROM scratch\nCOPY hello.txt /hello.txt\n";

/// Each attempt of the report as the values of `fields`, joined by spaces (`linux/amd64 cx23
/// oom`): the attempts in report order.
fn attempts(report: &serde_json::Value, fields: &[&str]) -> Vec<String> {
    report["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            fields
                .iter()
                .map(|f| match &a[*f] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn spawn(c: &Cloud, extra: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .args(c.args())
        .args(extra)
        .env("HCLOUD_TOKEN", &c.sim.token)
        .env("HCLOUD_ENDPOINT", &c.sim.endpoint)
        .env("TMPDIR", c.tmp.path())
        .env_remove("CI_REPO")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start buildkit-launcher")
}

#[test]
fn two_platforms_build_at_the_same_time_on_native_servers_under_one_index() {
    let Some(c) = cloud(SCRATCH) else {
        return;
    };
    // Two repositories (`repo` as a list): the same index under both tags in each.
    let mut child = spawn(
        &c,
        &[
            "--platform",
            BOTH,
            "--tag",
            "1.0",
            "--tag",
            "latest",
            "--repo",
            "e2e/app",
            "--repo",
            "e2e/mirror",
        ],
    );
    // Watch the simulator while the build runs: the most servers alive at once, and their types.
    let mut most = 0;
    let mut types = std::collections::BTreeSet::new();
    let status = loop {
        let servers = c.sim.servers();
        most = most.max(servers.len());
        types.extend(servers.into_iter().map(|s| s.server_type));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert_eq!(most, 2, "both servers were up at the same time");
    assert_eq!(
        types.into_iter().collect::<Vec<_>>(),
        ["cax21", "cx33"],
        "one ARM and one x86 server"
    );
    let report = c.report();
    assert_eq!(report["outcome"], "success");
    assert_eq!(
        attempts(&report, &["platform", "tier"]),
        ["linux/amd64 cx33", "linux/arm64 cax21"]
    );
    assert_eq!(report["plan"]["platforms"].as_array().unwrap().len(), 2);
    // The summary's cost is the sum of both runners' (the API's prices, one started hour each,
    // each with its primary IPv4 at the simulator's 0.0010 EUR/h).
    let cost = report["cost_eur"].as_f64().unwrap();
    assert!(
        (cost - (0.0128 + 0.0112 + 2.0 * 0.0010)).abs() < 1e-9,
        "{cost}"
    );

    // Every tag names one index listing both platforms; the report gives its digest.
    let index_digest = report["digest"].as_str().unwrap();
    for tag in ["1.0", "latest"] {
        let (status, index) = c.registry.manifest_json("e2e/app", tag, INDEX);
        assert_eq!(status, 200, "{index}");
        assert_eq!(index["mediaType"], INDEX);
        assert_eq!(
            c.registry.manifest_digest("e2e/app", tag).as_deref(),
            None,
            "a tag names the index, not an image manifest"
        );
        let listed: Vec<String> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(listed, ["amd64", "arm64"]);
        // Each listed manifest's config says the architecture the index claims for it.
        for (m, arch) in index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .zip(["amd64", "arm64"])
        {
            let digest = m["digest"].as_str().unwrap();
            let config = c.registry.image_config("e2e/app", digest);
            assert_eq!(config["architecture"], arch);
        }
    }
    assert!(
        stderr.contains(&format!("image index {index_digest} verified")),
        "{stderr}"
    );
    for tag in ["1.0", "latest"] {
        let (status, index) = c.registry.manifest_json("e2e/mirror", tag, INDEX);
        assert_eq!(status, 200, "{index}");
        let listed: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().unwrap())
            .collect();
        assert_eq!(listed, ["amd64", "arm64"], "e2e/mirror:{tag}");
        for m in index["manifests"].as_array().unwrap() {
            let config = c
                .registry
                .image_config("e2e/mirror", m["digest"].as_str().unwrap());
            assert_eq!(config["architecture"], m["platform"]["architecture"]);
        }
    }
    // Only the two tags exist: each platform pushed by digest, under no tag of its own.
    let tags: serde_json::Value =
        serde_json::from_str(&c.registry.tags("e2e/app").unwrap()).unwrap();
    let mut tags: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, ["1.0", "latest"]);
    // Each architecture has its own history key.
    let history = std::fs::read_to_string(c.ctx.path().join("history.jsonl")).unwrap();
    let archs: Vec<String> = history
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["arch"].to_string())
        .collect();
    assert_eq!(archs, ["\"amd64\"", "\"arm64\""], "{history}");
    c.sim.assert_clean();
}

#[test]
fn sigterm_during_a_two_platform_build_destroys_both_servers_within_2_s() {
    let Some(c) = cloud(SCRATCH) else {
        return;
    };
    // Both servers exist and are still booting when the signal comes. A booting server is
    // locked (423 on DELETE: FACTS.md "Locks"), so one still booting 14 s after the signal
    // gets its lease ended instead (exit 6) and the next reap deletes it.
    c.sim.action_delay(Duration::from_secs(20));
    let mut child = spawn(&c, &["--platform", BOTH]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.sim.servers().len() < 2 {
        assert!(Instant::now() < deadline, "two servers never existed");
        assert!(child.try_wait().unwrap().is_none(), "the build ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The deletes' actions take the simulator's usual 100 ms (the boots stay stuck).
    c.sim.action_delay(Duration::from_millis(100));
    let sent = Instant::now();
    support::sigterm(&child);
    let status = child.wait().unwrap();
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    let code = status.code();
    assert!(code == Some(5) || code == Some(6), "stderr:\n{stderr}");
    let deletes: Vec<Duration> = c
        .sim
        .requests()
        .into_iter()
        .filter(|(_, r)| r.starts_with("DELETE /servers/"))
        // The first DELETE of each server (a locked one is asked again once unlocked).
        .fold(Vec::<(String, Duration)>::new(), |mut first, (at, r)| {
            if !first.iter().any(|(p, _)| *p == r) {
                first.push((r, at.saturating_duration_since(sent)));
            }
            first
        })
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(deletes.len(), 2, "{stderr}");
    assert!(
        deletes.iter().all(|d| *d < Duration::from_secs(2)),
        "DELETEs came {deletes:?} after SIGTERM"
    );
    let report = c.report();
    assert!(
        report["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["outcome"] == "cancelled" && (a["destroyed"] == true || code == Some(6))),
        "{report}"
    );
    if code == Some(6) {
        assert!(stderr.contains("lease ended now"), "{stderr}");
        let out = c
            .launcher()
            .args([
                "--config",
                &format!("{}/fast.ncl", c.ctx.path().display()),
                "reap",
            ])
            .run();
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    c.sim.assert_clean();
}

#[test]
fn sigterm_while_both_creates_are_in_flight_still_deletes_both_servers() {
    let Some(c) = cloud(SCRATCH) else {
        return;
    };
    // Both creates are made and answered 4 s later: the signal comes while both are in flight.
    c.sim.after_create(&[
        support::hcloud_sim::AfterCreate::Slow(Duration::from_secs(4)),
        support::hcloud_sim::AfterCreate::Slow(Duration::from_secs(4)),
    ]);
    let mut child = spawn(&c, &["--platform", BOTH]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.calls("POST /servers") < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.calls("POST /servers"), 2, "both creates were sent");
    let sent = Instant::now();
    support::sigterm(&child);
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(5), "stderr:\n{stderr}");
    // Loosely, as the single-platform test: well inside Woodpecker's 20 s.
    assert!(
        took < Duration::from_secs(20),
        "exit {took:?} after SIGTERM"
    );
    assert_eq!(c.calls("DELETE /servers/{id}"), 2, "{stderr}");
    c.sim.assert_clean();
}

#[test]
fn out_of_memory_on_one_platform_retries_only_that_platform() {
    // amd64 runs a step that needs 350 MiB (more than cx23's sandbox share of 256 MiB); arm64
    // only copies (buildah skips the stage it does not use).
    let Some(c) = cloud(
        "ARG TARGETARCH\n\
         FROM {base} AS build-amd64\n\
         RUN dd if=/dev/zero of=/dev/null bs=350M count=1\n\
         FROM scratch AS build-arm64\n\
         FROM build-${TARGETARCH}\n\
         COPY hello.txt /hello.txt\n",
    ) else {
        return;
    };
    std::fs::write(c.ctx.path().join(".build-spec.ncl"), "{ memory_gb = 4 }").unwrap();
    let out = c.build(&["--platform", BOTH]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    let report = c.report();
    assert_eq!(
        attempts(&report, &["platform", "tier", "outcome"]),
        [
            "linux/amd64 cx23 oom",
            "linux/amd64 cx33 ok",
            "linux/arm64 cax11 ok"
        ]
    );
    assert_eq!(c.calls("POST /servers"), 3);
    assert_eq!(c.calls("DELETE /servers/{id}"), 3);
    c.sim.assert_clean();
}

#[test]
fn a_failing_platform_stops_the_other_and_every_server_goes() {
    // arm64's stage runs a step in `scratch` (no shell): the build fails; amd64 sleeps meanwhile.
    let Some(c) = cloud(
        "ARG TARGETARCH\n\
         FROM {base} AS build-amd64\n\
         RUN sleep 60\n\
         FROM scratch AS build-arm64\n\
         RUN true\n\
         FROM build-${TARGETARCH}\n\
         COPY hello.txt /hello.txt\n",
    ) else {
        return;
    };
    let out = c.build(&["--platform", BOTH]);
    assert_eq!(
        out.code, 1,
        "the failing platform's exit code:\n{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("linux/arm64: failed; stopping the other platforms"),
        "{}",
        out.stderr
    );
    let report = c.report();
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .starts_with("linux/arm64: the build failed"),
        "{}",
        report["error"]
    );
    assert_eq!(
        attempts(&report, &["platform", "outcome", "destroyed"]),
        ["linux/amd64 cancelled true", "linux/arm64 failed true"]
    );
    assert_eq!(
        c.registry.tags("e2e/app"),
        None,
        "nothing was pushed under a tag"
    );
    c.sim.assert_clean();
}

#[test]
fn a_two_platform_dry_run_builds_both_and_pushes_nothing() {
    let Some(c) = cloud(SCRATCH) else {
        return;
    };
    let out = c.build(&["--platform", BOTH, "--dry-run"]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("build succeeded (dry run, nothing pushed)"),
        "{}",
        out.stdout
    );
    assert_eq!(c.report()["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(c.registry.tags("e2e/app"), None, "a dry run pushed");
    c.sim.assert_clean();
}

#[test]
fn bad_platform_input_is_exit_2_before_any_server() {
    let Some(c) = cloud(SCRATCH) else {
        return;
    };
    let cases: &[(&[&str], &str)] = &[
        (
            &["--platform", "linux/s390x"],
            "\"linux/s390x\" is not a platform Hetzner has servers for",
        ),
        (
            &["--platform", "linux/arm/v7"],
            "use linux/amd64 (x86) or linux/arm64 (ARM)",
        ),
        (
            &["--platform", "linux/amd64,linux/amd64"],
            "--platform: linux/amd64 is named twice",
        ),
        (
            &["--platform", BOTH, "--arch", "arm64"],
            "--arch arm64 and --platform linux/amd64,linux/arm64 disagree",
        ),
        (
            &["--platform", BOTH, "--backend", "buildah"],
            "several platforms need the buildctl backend",
        ),
        (
            &["--platform", BOTH, "--golden-image", "4711"],
            "--golden-image: a snapshot id is one architecture's",
        ),
    ];
    for (args, expected) in cases {
        let out = c.build(args);
        let line = out.assert_one_line_error(2);
        assert!(line.contains(expected), "{args:?}: {line}");
    }
    assert_eq!(c.calls("POST /servers"), 0);
    c.sim.assert_clean();
}

#[test]
fn a_platform_without_a_golden_snapshot_is_exit_2_before_any_server() {
    // Only the amd64 snapshot exists.
    let Some(c) = Cloud::new("") else {
        return;
    };
    std::fs::write(c.ctx.path().join("Dockerfile"), SCRATCH).unwrap();
    std::fs::write(c.ctx.path().join("hello.txt"), "hello\n").unwrap();
    let out = c.build(&["--platform", BOTH]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    // The amd64 snapshot's progress line comes first; the error is the last line.
    let line = out.stderr.lines().last().unwrap();
    assert!(
        line.contains("error: linux/arm64: no arm64 snapshot matches")
            && line.contains("golden-image build --arch arm64"),
        "{line}"
    );
    assert_eq!(c.calls("POST /servers"), 0);
    c.sim.assert_clean();
}

/// The benchmark behind docs/PERFORMANCE.md ("Two platforms"), run by benches/platforms.sh: wall
/// time of one two-platform build against the two single-platform builds one after the other.
/// It asserts correctness only; the times are printed, never compared.
#[test]
#[ignore = "a benchmark: benches/platforms.sh"]
fn bench_two_platforms_against_two_single_builds() {
    let Some(c) = cloud("FROM scratch\nCOPY blob.bin /blob.bin\nCOPY hello.txt /hello.txt\n")
    else {
        return;
    };
    // 32 MiB of incompressible data: the build moves something on both runners.
    let blob: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(c.ctx.path().join("blob.bin"), blob).unwrap();
    // No registry cache: every build does the same work on fresh runners, whatever ran before.
    let timed = |args: &[&str]| {
        let started = Instant::now();
        let out = c.build(&[args, &["--cache", "off"]].concat());
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        started.elapsed().as_secs_f64()
    };
    let amd64 = timed(&["--platform", "linux/amd64", "--tag", "amd64"]);
    let arm64 = timed(&["--platform", "linux/arm64", "--tag", "arm64"]);
    let both = timed(&["--platform", BOTH, "--tag", "both"]);
    println!(
        "BENCH amd64 {amd64:.1} s, arm64 {arm64:.1} s, sequential {:.1} s, two-platform {both:.1} s, \
         two-platform / longer single {:.2}, two-platform / sequential {:.2}",
        amd64 + arm64,
        both / amd64.max(arm64),
        both / (amd64 + arm64)
    );
    c.sim.assert_clean();
}

/// With provenance, BuildKit pushes each platform's image by digest as an index of the image and
/// its attestation manifest; the launcher's index under the tags must take both platforms'.
#[test]
fn two_platforms_with_provenance_from_the_real_daemon_pass_the_index_check() {
    let Some(c) = cloud(SCRATCH) else {
        return;
    };
    let out = c.build(&["--platform", BOTH, "--tag", "1.0", "--provenance", "min"]);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    let report = c.report();
    assert_eq!(report["outcome"], "success");
    let digest = report["digest"].as_str().unwrap();
    let (status, index) = c.registry.manifest_json("e2e/app", "1.0", INDEX);
    assert_eq!(status, 200, "{index}");
    assert_eq!(index["mediaType"], INDEX, "{index}");
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or("?"),
                m["platform"]["architecture"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert!(
        platforms.contains(&"linux/amd64".to_owned())
            && platforms.contains(&"linux/arm64".to_owned()),
        "{index}"
    );
    let (status, _) = c.registry.manifest_json("e2e/app", digest, INDEX);
    assert_eq!(status, 200, "the reported digest is in the registry");
    c.sim.assert_clean();
}
