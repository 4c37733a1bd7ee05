//! The `buildctl build` invocation (FACTS.md, "BuildKit / buildctl"), and the wait for a
//! buildkitd that serves before it.
//!
//! buildkitd creates its socket before it loads its workers and serves gRPC only after
//! (BuildKit's cmd/buildkitd/main.go), so a build started as soon as the runner answers SSH can
//! fail with `listing workers for Build: … Unavailable`, which would read as the user's build
//! failing. The launcher first runs [`workers_command`]: `buildctl --wait` polls the daemon once a
//! second until it answers (bounded by `--timeout`; cmd/buildctl/common/common.go), and `debug
//! workers` must then list a worker. A daemon that never does is the runner's failure
//! (infrastructure, exit 4), never the build's.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{BuildRequest, CacheMode, RemotePaths};
use crate::transport::session::{Connection, shell_quote};

/// The readiness check: wait for buildkitd for at most `timeout_s` seconds, then list workers.
pub fn workers_command(timeout_s: u64) -> String {
    format!("buildctl --wait --timeout {timeout_s} debug workers")
}

/// The worker rows of `buildctl debug workers` (a tabwriter table under an `ID PLATFORMS`
/// header: cmd/buildctl/debug/workers.go). An empty list means the daemon serves without a
/// worker, which buildkitd does not outgrow.
pub fn listed_workers(output: &str) -> Vec<String> {
    let mut lines = output.lines().map(str::trim).filter(|l| !l.is_empty());
    match lines.next() {
        Some(header) if header.split_whitespace().next() == Some("ID") => lines
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a `debug workers` row (`ID PLATFORMS`, platforms comma-separated) lists `platform`
/// (BuildKit normalizes linux/arm64/v8 to linux/arm64).
fn builds(row: &str, platform: &str) -> bool {
    row.split_whitespace().nth(1).is_some_and(|list| {
        list.split(',')
            .any(|p| p == platform || p.strip_suffix("/v8") == Some(platform))
    })
}

/// Wait until buildkitd on the runner lists a worker: at most `timeout_s` seconds (plus a
/// margin for buildctl itself), one progress line before and one after. `Err` is the reason,
/// naming buildkitd, for an infrastructure verdict.
/// Wait until buildkitd on the runner lists a worker that builds `platform` natively (or
/// under emulation the runner was given): a runner of the wrong architecture would otherwise
/// build an image that no index may list as this platform.
pub async fn wait_ready(
    conn: &Connection,
    timeout_s: u64,
    platform: &str,
    log: &(dyn Fn(&str) + Send + Sync),
) -> Result<(), String> {
    log(&format!(
        "waiting up to {timeout_s} s for buildkitd on the runner to list a worker"
    ));
    let started = Instant::now();
    let bound = Duration::from_secs(timeout_s + 30);
    let command = workers_command(timeout_s);
    let check = conn.run_checked("wait for buildkitd on the runner", &command, None);
    let output = match tokio::time::timeout(bound, check).await {
        Err(_) => {
            return Err(format!(
                "buildkitd on the runner did not answer within {} s (buildctl --wait hung)",
                bound.as_secs()
            ));
        }
        Ok(Err(e)) => {
            return Err(format!(
                "buildkitd on the runner is not ready after {:.0} s (at most {timeout_s} s): {e}",
                started.elapsed().as_secs_f64()
            ));
        }
        Ok(Ok(output)) => output,
    };
    let workers = listed_workers(&output);
    match workers.first() {
        Some(_) if !platform.is_empty() && !workers.iter().any(|w| builds(w, platform)) => {
            Err(format!(
                "buildkitd on the runner has no worker for {platform} (it lists: {}); the runner is not of that architecture",
                workers.join("; ")
            ))
        }
        Some(worker) => {
            log(&format!(
                "buildkitd is ready after {:.1} s: worker {worker}",
                started.elapsed().as_secs_f64()
            ));
            Ok(())
        }
        None => Err(format!(
            "buildkitd on the runner answers but lists no worker: {}",
            output.lines().last().unwrap_or("no output")
        )),
    }
}

/// The remote command: `buildctl` with [`args`], every word quoted for the shell.
pub fn script(req: &BuildRequest, paths: &RemotePaths) -> String {
    let mut line = "buildctl".to_owned();
    for arg in args(req, paths) {
        line.push(' ');
        line.push_str(&shell_quote(&arg));
    }
    line
}

/// Arguments after `buildctl`, for a context synced to `paths.context()`.
pub fn args(req: &BuildRequest, paths: &RemotePaths) -> Vec<String> {
    let context = paths.context();
    let dockerfile = Path::new(&req.dockerfile);
    let dockerfile_dir = match dockerfile.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => format!("{context}/{}", dir.display()),
        None => context.clone(),
    };
    let filename = dockerfile.file_name().map_or_else(
        || req.dockerfile.clone(),
        |f| f.to_string_lossy().into_owned(),
    );

    let mut a: Vec<String> = vec![
        "build".into(),
        "--frontend".into(),
        "dockerfile.v0".into(),
        "--local".into(),
        format!("context={context}"),
        "--local".into(),
        format!("dockerfile={dockerfile_dir}"),
        "--opt".into(),
        format!("filename={filename}"),
        "--opt".into(),
        format!("platform={}", req.platform),
    ];
    if let Some(target) = &req.target {
        a.extend(["--opt".into(), format!("target={target}")]);
    }
    for (k, v) in &req.build_args {
        a.extend(["--opt".into(), format!("build-arg:{k}={v}")]);
    }
    for (k, v) in &req.labels {
        a.extend(["--opt".into(), format!("label:{k}={v}")]);
    }
    // Attestations: the frontend's `attest:` options (BuildKit frontend/dockerui/config.go).
    // The scanner image is always named: BuildKit's default is Docker Hub's, which a runner
    // may not reach (the operator's config says where a copy lives).
    if req.sbom {
        let opt = if req.sbom_generator.is_empty() {
            "attest:sbom=".to_owned()
        } else {
            format!("attest:sbom=generator={}", req.sbom_generator)
        };
        a.extend(["--opt".into(), opt]);
    }
    if let Some(mode) = &req.provenance {
        a.extend(["--opt".into(), format!("attest:provenance=mode={mode}")]);
    }
    if req.no_cache {
        a.push("--no-cache".into());
    }
    for secret in &req.secrets {
        a.extend([
            "--secret".into(),
            format!("id={},src={}", secret.id, paths.secret(&secret.id)),
        ]);
    }
    // buildctl parses --output as CSV: several names need one quoted field.
    let mut output = if req.by_digest && req.pushes() {
        // One platform of several: the image by digest under no tag, its canonical name
        // (`repo@digest`) in the metadata (BuildKit exporter/containerimage/opts.go); the
        // launcher pushes the index under the tags.
        format!(
            "type=image,\"name={}\",push-by-digest=true,name-canonical=true",
            req.repositories().join(",")
        )
    } else {
        format!("type=image,\"name={}\"", req.images().join(","))
    };
    if req.pushes() {
        output.push_str(",push=true");
        if req.insecure_registry {
            output.push_str(",registry.insecure=true");
        }
    } else {
        output.push_str(",push=false");
    }
    a.extend(["--output".into(), output]);
    if let Some(cache) = req.cache_ref() {
        let mode = if req.cache == CacheMode::Max {
            "max"
        } else {
            "min"
        };
        let insecure = if req.insecure_registry {
            ",registry.insecure=true"
        } else {
            ""
        };
        // A dry run reads the cache but writes nothing to the registry. A pull request writes
        // its own scope only, and reads the default branch's cache and then its own. A cache
        // export that fails would cancel the image push running beside it (BuildKit v0.32.2,
        // measured): `ignore-error=true` keeps the image; the launcher warns (cache_exports::
        // CacheExports).
        let scoped = req.scoped_cache_ref();
        if req.pushes() {
            a.extend([
                "--export-cache".into(),
                format!(
                    "type=registry,ref={},mode={mode}{insecure},ignore-error=true",
                    scoped.as_deref().unwrap_or(&cache)
                ),
            ]);
        }
        a.extend([
            "--import-cache".into(),
            format!("type=registry,ref={cache}{insecure}"),
        ]);
        if let Some(scoped) = scoped {
            a.extend([
                "--import-cache".into(),
                format!("type=registry,ref={scoped}{insecure}"),
            ]);
        }
    }
    // Extra caches: references the launcher parsed (backend::cache), written out afresh, so
    // nothing of the setting's text reaches this CSV. Only the build's registry is insecure.
    let insecure = |r: &super::cache::CacheRef| {
        if req.insecure_registry && r.in_registry(req.registry.as_deref()) {
            ",registry.insecure=true"
        } else {
            ""
        }
    };
    if req.pushes() {
        for export in &req.cache_to {
            let r = &export.reference;
            a.extend([
                "--export-cache".into(),
                format!(
                    "type=registry,ref={r},mode={}{},ignore-error=true",
                    super::cache::mode_name(export.mode),
                    insecure(r)
                ),
            ]);
        }
    }
    for import in &req.cache_from {
        let r = &import.reference;
        a.extend([
            "--import-cache".into(),
            format!("type=registry,ref={r}{}", insecure(r)),
        ]);
    }
    a.extend([
        "--progress".into(),
        "plain".into(),
        "--metadata-file".into(),
        paths.metadata(),
    ]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, REMOTE_WORKDIR, SecretRef};

    fn paths() -> RemotePaths {
        RemotePaths::new(REMOTE_WORKDIR)
    }

    fn request() -> BuildRequest {
        BuildRequest {
            backend: Backend::Buildctl,
            dockerfile: "docker/Dockerfile.prod".into(),
            target: Some("runtime".into()),
            build_args: vec![("VERSION".into(), "1.2".into())],
            secrets: vec![SecretRef {
                id: "npmrc".into(),
                env: "NPM_TOKEN".into(),
            }],
            platform: "linux/amd64".into(),
            registry: Some("zot.example:5000".into()),
            image_repo: "org/app".into(),
            tags: vec!["1.2".into(), "latest".into()],
            insecure_registry: false,
            cache: CacheMode::Max,
            ..Default::default()
        }
    }

    #[test]
    fn full_invocation() {
        let a = args(&request(), &paths()).join(" ");
        assert!(a.contains("--local dockerfile=/var/lib/buildkit-launcher/context/docker"));
        assert!(a.contains("--opt filename=Dockerfile.prod"));
        assert!(a.contains("--opt target=runtime"));
        assert!(a.contains("--opt build-arg:VERSION=1.2"));
        assert!(a.contains(
            "--output type=image,\"name=zot.example:5000/org/app:1.2,zot.example:5000/org/app:latest\",push=true"
        ));
        assert!(
            a.contains("--export-cache type=registry,ref=zot.example:5000/cache/org/app,mode=max,ignore-error=true")
        );
        assert!(a.contains("--import-cache type=registry,ref=zot.example:5000/cache/org/app"));
        assert!(a.contains("--secret id=npmrc,src=/var/lib/buildkit-launcher/secrets/npmrc"));
        assert!(a.ends_with("--metadata-file /var/lib/buildkit-launcher/metadata.json"));
        assert!(
            !a.contains("NPM_TOKEN"),
            "only the id and a file path appear"
        );
    }

    #[test]
    fn several_repositories_get_every_tag_and_the_cache_stays_with_the_first() {
        let mut r = request();
        r.also_repos = vec!["mirror/app".into()];
        let a = args(&r, &paths()).join(" ");
        assert!(a.contains(
            "--output type=image,\"name=zot.example:5000/org/app:1.2,zot.example:5000/org/app:latest,zot.example:5000/mirror/app:1.2,zot.example:5000/mirror/app:latest\",push=true"
        ), "{a}");
        assert!(a.contains("ref=zot.example:5000/cache/org/app,"), "{a}");
        assert!(!a.contains("cache/mirror"), "{a}");
        // One platform of several: pushed by digest to each repository.
        r.by_digest = true;
        let a = args(&r, &paths()).join(" ");
        assert!(
            a.contains(
                "\"name=zot.example:5000/org/app,zot.example:5000/mirror/app\",push-by-digest=true"
            ),
            "{a}"
        );
    }

    #[test]
    fn no_cache_and_attestations() {
        let mut r = request();
        r.no_cache = true;
        r.sbom = true;
        r.provenance = Some("max".into());
        let a = args(&r, &paths()).join(" ");
        assert!(
            a.contains("--opt attest:sbom= --opt attest:provenance=mode=max --no-cache"),
            "{a}"
        );
        r.sbom_generator = "zot.example:5000/mirror/buildkit-syft-scanner:stable-1".into();
        let a = args(&r, &paths()).join(" ");
        assert!(
            a.contains("--opt attest:sbom=generator=zot.example:5000/mirror/buildkit-syft-scanner:stable-1 --opt"),
            "{a}"
        );
    }

    #[test]
    fn labels_and_a_dry_run() {
        let mut r = request();
        r.labels = vec![("org.opencontainers.image.revision".into(), "abc".into())];
        r.dry_run = true;
        let a = args(&r, &paths()).join(" ");
        assert!(
            a.contains("--opt label:org.opencontainers.image.revision=abc"),
            "{a}"
        );
        assert!(a.contains(",push=false"), "a dry run pushes nothing: {a}");
        assert!(!a.contains("--export-cache"), "nor exports its cache: {a}");
        assert!(a.contains("--import-cache"), "but reads it: {a}");
    }

    #[test]
    fn one_platform_of_several_pushes_by_digest_with_its_own_cache_tag() {
        let mut r = request();
        r.by_digest = true;
        r.platform = "linux/arm64".into();
        let a = args(&r, &paths()).join(" ");
        assert!(
            a.contains("--output type=image,\"name=zot.example:5000/org/app\",push-by-digest=true,name-canonical=true,push=true"),
            "{a}"
        );
        assert!(a.contains("--opt platform=linux/arm64"), "{a}");
        assert!(
            a.contains(
                "--export-cache type=registry,ref=zot.example:5000/cache/org/app:arm64,mode=max"
            ),
            "{a}"
        );
        assert!(
            a.contains("--import-cache type=registry,ref=zot.example:5000/cache/org/app:arm64"),
            "{a}"
        );
        // A dry run pushes nothing, by digest or otherwise.
        r.dry_run = true;
        let a = args(&r, &paths()).join(" ");
        assert!(
            a.contains(",push=false") && !a.contains("push-by-digest"),
            "{a}"
        );
    }

    #[test]
    fn cache_off_and_insecure_registry() {
        let mut r = request();
        r.cache = CacheMode::Off;
        r.insecure_registry = true;
        let a = args(&r, &paths()).join(" ");
        assert!(!a.contains("cache"));
        assert!(a.contains("push=true,registry.insecure=true"));
    }

    #[test]
    fn extra_caches_add_one_option_each_and_a_dry_run_exports_none() {
        let mut r = request();
        r.insecure_registry = true;
        r.cache_to = crate::backend::cache::exports(&[
            "zot.example:5000/cache/org/app:main,type=registry,ref=zot.example:5000/c/b,mode=min"
                .into(),
        ])
        .unwrap();
        r.cache_from = crate::backend::cache::imports(&[
            "zot.example:5000/cache/org/app:main,other.example/pub/cache".into(),
        ])
        .unwrap();
        crate::backend::cache::settle(&mut r, "cache/buildkit-launcher/history").unwrap();
        let a = args(&r, &paths());
        let values = |flag: &str| -> Vec<String> {
            a.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].clone())
                .collect()
        };
        assert_eq!(
            values("--export-cache"),
            [
                "type=registry,ref=zot.example:5000/cache/org/app,mode=max,registry.insecure=true,ignore-error=true",
                "type=registry,ref=zot.example:5000/cache/org/app:main,mode=max,registry.insecure=true,ignore-error=true",
                "type=registry,ref=zot.example:5000/c/b,mode=min,registry.insecure=true,ignore-error=true",
            ]
        );
        assert_eq!(
            values("--import-cache"),
            [
                "type=registry,ref=zot.example:5000/cache/org/app,registry.insecure=true",
                "type=registry,ref=zot.example:5000/cache/org/app:main,registry.insecure=true",
                // another registry is not the one --insecure-registry speaks of
                "type=registry,ref=other.example/pub/cache",
            ]
        );
        r.dry_run = true;
        let a = args(&r, &paths()).join(" ");
        assert!(!a.contains("--export-cache"), "{a}");
        assert_eq!(a.matches("--import-cache").count(), 3, "{a}");
        // --cache off turns off only the default cache.
        r.dry_run = false;
        r.cache = CacheMode::Off;
        let a = args(&r, &paths()).join(" ");
        assert_eq!(a.matches("--export-cache").count(), 2, "{a}");
        assert!(!a.contains("ref=zot.example:5000/cache/org/app,"), "{a}");
    }

    #[test]
    fn workers_are_the_rows_under_the_header() {
        let table = "ID\t\t\t\tPLATFORMS\nw5ksz5t1ubb6u9dauqc1v8s9r\tlinux/amd64,linux/amd64/v2\n";
        assert_eq!(
            listed_workers(table),
            ["w5ksz5t1ubb6u9dauqc1v8s9r linux/amd64,linux/amd64/v2"]
        );
        assert!(builds(&listed_workers(table)[0], "linux/amd64"));
        assert!(!builds(&listed_workers(table)[0], "linux/arm64"));
        assert!(builds("w1 linux/arm64/v8,linux/arm/v7", "linux/arm64"));
        assert!(listed_workers("ID\tPLATFORMS\n").is_empty());
        assert!(listed_workers("").is_empty());
        assert!(listed_workers("error: failed to list workers").is_empty());
        assert_eq!(
            workers_command(60),
            "buildctl --wait --timeout 60 debug workers"
        );
    }

    #[test]
    fn secret_refs_parse_strictly() {
        let s: SecretRef = "env=TOKEN,id=npm".parse().unwrap();
        assert_eq!((s.id.as_str(), s.env.as_str()), ("npm", "TOKEN"));
        assert!("id=npm".parse::<SecretRef>().is_err());
        assert!("id=a/b,env=X".parse::<SecretRef>().is_err());
        assert!("id=a,src=/etc/x".parse::<SecretRef>().is_err());
    }
}
