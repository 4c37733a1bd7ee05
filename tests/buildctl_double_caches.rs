//! The buildctl test double (tests/tools/buildctl) with several `--export-cache` and
//! `--import-cache` values: it parses them as buildctl does (cmd/buildctl/build/exportcache.go,
//! importcache.go; the double's header names each source), refuses what BuildKit would refuse,
//! and builds with several caches for real (buildah and a registry, root only: skipped with one
//! line otherwise, never in CI).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use buildkit_launcher::backend::{Backend, BuildRequest, CacheMode, RemotePaths, buildctl, cache};
use support::registry::{Registry, require_root_and_tools};

const TOOLS: &[&str] = &["buildah", "docker-registry", "busybox", "curl"];

fn double() -> PathBuf {
    support::repo_dir().join("tests/tools/buildctl")
}

/// The double's exit code and stderr for `build` with the required flags and `caches`.
fn parse(caches: &[&str]) -> (i32, String) {
    let out = Command::new(double())
        .env_remove("BKL_ROOT")
        .env_remove("BKL_DOUBLE_STATE_DIR")
        .args([
            "build",
            "--frontend",
            "dockerfile.v0",
            "--local",
            "context=/nonexistent",
            "--local",
            "dockerfile=/nonexistent",
            "--output",
            "type=image,name=127.0.0.1:9/a:1,push=false",
        ])
        .args(caches)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cache_values_are_parsed_as_buildctl_parses_them() {
    if Command::new("buildah").arg("--version").output().is_err() {
        // The parse errors below come before the double looks for buildah, except the
        // daemon-side ones (duplicates, references), which need it.
        eprintln!("skipped: buildah is not installed");
        return;
    }
    let ex = "--export-cache";
    let im = "--import-cache";
    for (args, stderr) in [
        // client side, cmd/buildctl/build and client/solve.go: handleErr's "error: %v"
        (&[ex, "type=registry,ref"][..], "error: invalid value ref\n"),
        (
            &[ex, "type=,ref=127.0.0.1:9/c"],
            "error: --export-cache requires type=<type>\n",
        ),
        (
            &[im, "type=,ref=127.0.0.1:9/c"],
            "error: --import-cache requires type=<type>\n",
        ),
        (
            &[ex, "type=registry"],
            "error: registry cache exporter requires ref\n",
        ),
        (
            &[im, "type=registry,ref="],
            "error: registry cache importer requires ref\n",
        ),
        // daemon side, control/control.go and cache/remotecache/registry
        (
            &[
                ex,
                "type=registry,ref=127.0.0.1:9/c",
                ex,
                "type=registry,ref=127.0.0.1:9/d",
                ex,
                "type=registry,ref=127.0.0.1:9/c,mode=max",
            ],
            "error: failed to solve: duplicate cache exports [registry]\n",
        ),
        (
            &[ex, "type=registry,ref=127.0.0.1:9/Upper"],
            "error: failed to solve: failed to configure registry cache exporter: invalid reference format\n",
        ),
        // A quoted field is one field: the comma stays inside the ref, which is then invalid.
        (
            &[ex, "type=registry,\"ref=127.0.0.1:9/c,push=true\""],
            "error: failed to solve: failed to configure registry cache exporter: invalid reference format\n",
        ),
    ] {
        let (code, err) = parse(args);
        assert_eq!((code, err.as_str()), (1, stderr), "{args:?}");
    }
    // Stricter than buildctl (the header lists these): usage errors of the double.
    for (args, needle) in [
        (&[ex, "127.0.0.1:9/c"][..], "deprecated bare-reference form"),
        (
            &[ex, "TYPE=registry,ref=127.0.0.1:9/c"],
            "deprecated bare-reference form",
        ),
        (
            &[ex, "type=registry,ref=127.0.0.1:9/c,ref=127.0.0.1:9/d"],
            "ref given twice",
        ),
        (
            &[ex, "type=registry,ref=127.0.0.1:9/c,mode=all"],
            "min or max",
        ),
        (
            &[im, "type=registry,ref=127.0.0.1:9/c,mode=max"],
            "mode is for --export-cache",
        ),
        (
            &[ex, "type=local,dest=/tmp/x"],
            "unsupported --export-cache type \"local\"",
        ),
        (
            &[ex, "type=registry,ref=127.0.0.1:9/c,ignore-error=true"],
            "unsupported --export-cache attribute",
        ),
        (
            &[ex, "type=registry,ref=127.0.0.1:9/c\"x"],
            "bad CSV quoting",
        ),
        (
            &[im, "type=registry,ref=docker-hub-name/c"],
            "(BuildKit would skip this import)",
        ),
        (
            &[ex, "type=registry,ref=docker-hub-name/c"],
            "no registry host",
        ),
    ] {
        let (code, err) = parse(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.starts_with("buildctl: "), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// A private buildah store (vfs) and the runner's work directory, removed on drop.
struct Runner {
    dir: Option<tempfile::TempDir>,
}

impl Runner {
    fn new(dockerfile: &str) -> Runner {
        let dir = tempfile::Builder::new()
            .prefix("buildctl-caches-")
            .tempdir()
            .unwrap();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/run\"\n"
            ),
        )
        .unwrap();
        for sub in ["work/context", "home"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("work/context/Dockerfile"), dockerfile).unwrap();
        Runner { dir: Some(dir) }
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("CONTAINERS_STORAGE_CONF", self.path().join("storage.conf"))
            .env("BUILDAH_ISOLATION", "chroot")
            .env("HOME", self.path().join("home"))
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("BKL_ROOT")
            .env_remove("BKL_DOUBLE_STATE_DIR");
        cmd
    }

    /// The double with the launcher's own arguments for `req`: exit code and stderr.
    fn build(&self, req: &BuildRequest) -> (i32, String) {
        let paths = RemotePaths::new(self.path().join("work").to_str().unwrap());
        let out = self
            .command(double())
            .args(buildctl::args(req, &paths))
            .output()
            .unwrap();
        let output = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code().unwrap_or(-1), output)
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        for args in [&["rm", "--all"][..], &["rmi", "--all", "--force"]] {
            let _ = self.command("buildah").args(args).output(); // never panic in drop
        }
        let dir = self.dir.take().unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        if mounts.contains(&format!(" {}/", dir.path().display())) {
            eprintln!(
                "leaving {} behind: something is still mounted in it",
                dir.path().display()
            );
            let _ = dir.keep();
        }
    }
}

fn request(registry: &Registry, to: &[String], from: &[String]) -> BuildRequest {
    let mut req = BuildRequest {
        backend: Backend::Buildctl,
        dockerfile: "Dockerfile".into(),
        platform: "linux/amd64".into(),
        registry: Some(registry.addr.clone()),
        image_repo: "org/app".into(),
        tags: vec!["1".into()],
        insecure_registry: true,
        cache: CacheMode::Off,
        cache_to: cache::exports(to).unwrap(),
        cache_from: cache::imports(from).unwrap(),
        ..Default::default()
    };
    cache::settle(&mut req, "cache/buildkit-launcher/history").unwrap();
    req
}

fn has_tags(registry: &Registry, repo: &str) -> bool {
    registry
        .tags(repo)
        .is_some_and(|t| t.contains("\"tags\":[\""))
}

#[test]
fn several_caches_are_all_written_and_any_of_them_is_read() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let registry = Registry::start().with_base_image();
    let dockerfile = format!(
        "FROM {}\nRUN echo ran-$((40+2)) | tee /ran\n",
        registry.base_image()
    );
    let r = &registry.addr;
    let to = [format!(
        "{r}/cache/a,type=registry,ref={r}/cache/b:main,mode=min"
    )];
    let (code, out) = Runner::new(&dockerfile).build(&request(&registry, &to, &[]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ran-42"), "{out}");
    assert!(out.contains("exporting cache to registry"), "{out}");
    // `cache/b:main` is the buildah repository `cache/b/main` (the double's header).
    for repo in ["cache/a", "cache/b/main"] {
        assert!(has_tags(&registry, repo), "no cache in {repo}:\n{out}");
    }

    // A new runner reading an empty cache first and the second export after it: the RUN step
    // comes from the second (pulled whole before the build), and the empty one is no error.
    let from = [format!("{r}/cache/empty"), format!("{r}/cache/b:main")];
    let (code, out) = Runner::new(&dockerfile).build(&request(&registry, &[], &from));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("importing cache manifest from {r}/cache/b")),
        "{out}"
    );
    assert!(out.contains("CACHED"), "{out}");
    assert!(!out.contains("ran-42"), "the RUN step ran again:\n{out}");

    // And the first import alone is buildah's own --cache-from.
    let from = [format!("{r}/cache/a")];
    let (code, out) = Runner::new(&dockerfile).build(&request(&registry, &[], &from));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Cache pulled from remote"), "{out}");
    assert!(!out.contains("ran-42"), "the RUN step ran again:\n{out}");
}
