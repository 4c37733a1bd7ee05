//! The buildctl test double (tests/tools/buildctl) with a real registry and buildah: it is fed
//! the launcher's own invocation (`backend::buildctl::args`, with the runner's work directory in
//! a temp dir) and must build, push, cache, fail and mount secrets like buildctl.
//! Needs root and the Debian packages of TESTING.md; skipped with one line otherwise (not in CI).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use buildkit_launcher::backend::{
    Backend, BuildRequest, CacheMode, RemotePaths, SecretRef, buildctl,
};
use support::cgroup::MemoryCgroup;
use support::registry::{Registry, loopback_name, require_root_and_tools};

const TOOLS: &[&str] = &["buildah", "docker-registry", "busybox", "curl"];

fn double() -> PathBuf {
    support::repo_dir().join("tests/tools/buildctl")
}

/// A private buildah store (vfs), emptied and removed on drop.
struct Store {
    dir: Option<tempfile::TempDir>,
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::Builder::new()
            .prefix("buildah-store-")
            .tempdir()
            .unwrap();
        let d = dir.path().display();
        let conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/run\"\n"
        );
        std::fs::write(dir.path().join("storage.conf"), conf).unwrap();
        Store { dir: Some(dir) }
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("CONTAINERS_STORAGE_CONF", self.path().join("storage.conf"))
            .env("BUILDAH_ISOLATION", "chroot")
            .env_remove("REGISTRY_AUTH_FILE");
    }

    fn buildah(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("buildah");
        self.env(&mut cmd);
        cmd.args(args).output().expect("run buildah")
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        for args in [&["rm", "--all"][..], &["rmi", "--all", "--force"]] {
            let mut cmd = Command::new("buildah");
            self.env(&mut cmd);
            let _ = cmd.args(args).output(); // never panic in drop
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

/// The runner's work directory (context, secrets, metadata) and HOME, in a temp dir.
struct Work {
    dir: tempfile::TempDir,
}

struct Run {
    code: i32,
    /// stderr then stdout
    output: String,
    metadata: Option<serde_json::Value>,
}

impl Work {
    fn new(dockerfile: &str) -> Work {
        let dir = tempfile::Builder::new()
            .prefix("buildctl-work-")
            .tempdir()
            .unwrap();
        for sub in ["context", "secrets", "home"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("context/Dockerfile"), dockerfile).unwrap();
        Work { dir }
    }

    fn secret(self, id: &str, value: &str) -> Self {
        std::fs::write(self.dir.path().join("secrets").join(id), value).unwrap();
        self
    }

    fn docker_config(self, json: &str) -> Self {
        let docker = self.dir.path().join("home/.docker");
        std::fs::create_dir_all(&docker).unwrap();
        std::fs::write(docker.join("config.json"), json).unwrap();
        self
    }

    /// Runs the double with the launcher's arguments for `req`.
    fn build(&self, store: &Store, req: &BuildRequest) -> Run {
        self.build_with(store, req, &[], None)
    }

    /// The same with extra environment, optionally inside a memory cgroup.
    fn build_with(
        &self,
        store: &Store,
        req: &BuildRequest,
        env: &[(&str, &Path)],
        cgroup: Option<&MemoryCgroup>,
    ) -> Run {
        let paths = RemotePaths::new(self.dir.path().to_str().unwrap());
        let args = buildctl::args(req, &paths);
        let metadata = self.dir.path().join("metadata.json");
        let _ = std::fs::remove_file(&metadata);
        let mut cmd = match cgroup {
            // Join the cgroup, then become the double (its children inherit the cgroup).
            Some(cg) => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
                    .arg(&cg.path)
                    .arg(double());
                cmd
            }
            None => Command::new(double()),
        };
        store.env(&mut cmd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd
            .args(&args)
            .env("HOME", self.dir.path().join("home"))
            .output()
            .unwrap();
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let metadata = std::fs::read_to_string(&metadata)
            .ok()
            .map(|m| serde_json::from_str(&m).expect("metadata is JSON"));
        Run {
            code: out.status.code().unwrap_or(-1),
            output,
            metadata,
        }
    }
}

fn request(registry: &Registry, tags: &[&str]) -> BuildRequest {
    BuildRequest {
        backend: Backend::Buildctl,
        dockerfile: "Dockerfile".into(),
        target: None,
        build_args: vec![],
        secrets: vec![],
        platform: "linux/amd64".into(),
        registry: Some(registry.addr.clone()),
        image_repo: "org/app".into(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        insecure_registry: true,
        cache: CacheMode::Off,
        ..Default::default()
    }
}

fn digest(run: &Run) -> String {
    assert_eq!(run.code, 0, "build failed:\n{}", run.output);
    let meta = run.metadata.as_ref().expect("metadata file");
    meta["containerimage.digest"]
        .as_str()
        .expect("containerimage.digest")
        .to_owned()
}

#[test]
fn two_tags_push_one_digest() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let registry = Registry::start().with_base_image();
    let store = Store::new();
    let work = Work::new(&format!(
        "FROM {}\nRUN echo built > /built\n",
        registry.base_image()
    ));
    let run = work.build(&store, &request(&registry, &["1.0", "latest"]));
    let digest = digest(&run);
    assert!(digest.starts_with("sha256:"), "{digest}");
    for tag in ["1.0", "latest"] {
        assert_eq!(
            registry.manifest_digest("org/app", tag).as_deref(),
            Some(digest.as_str()),
            "{tag}"
        );
    }
}

#[test]
fn failing_run_step_reports_exit_code_like_buildctl() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let registry = Registry::start().with_base_image();
    let store = Store::new();
    let work = Work::new(&format!(
        "FROM {}\nRUN echo before && exit 3\n",
        registry.base_image()
    ));
    let run = work.build(&store, &request(&registry, &["1"]));
    assert_eq!(run.code, 1, "{}", run.output);
    let last = run.output.lines().last().unwrap();
    assert_eq!(
        last,
        "error: failed to solve: process \"/bin/sh -c echo before && exit 3\" did not complete \
         successfully: exit code: 3"
    );
    assert!(run.metadata.is_none());
    assert_eq!(registry.manifest_digest("org/app", "1"), None);
}

#[test]
fn build_args_and_target_are_honoured() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let registry = Registry::start().with_base_image();
    let store = Store::new();
    let work = Work::new(&format!(
        "FROM {} AS first\nARG MESSAGE=default\nRUN echo \"message=$MESSAGE\" | tee /message\n\
         FROM first AS second\nRUN echo second-$((1+1))\n",
        registry.base_image()
    ));
    let mut req = request(&registry, &["first"]);
    req.target = Some("first".into());
    req.build_args = vec![("MESSAGE".into(), "hello-arg".into())];
    let first = work.build(&store, &req);
    let first_digest = digest(&first);
    assert!(
        first.output.contains("message=hello-arg"),
        "{}",
        first.output
    );
    assert!(
        !first.output.contains("second-2"),
        "stage second ran:\n{}",
        first.output
    );

    let second = work.build(&store, &request(&registry, &["second"]));
    assert_ne!(digest(&second), first_digest);
    assert!(
        second.output.contains("message=default"),
        "{}",
        second.output
    );
    assert!(second.output.contains("second-2"), "{}", second.output);
}

#[test]
fn registry_cache_is_exported_and_imported() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let registry = Registry::start().with_base_image();
    let work = Work::new(&format!(
        "FROM {}\nRUN echo ran-$((40+2)) | tee /ran\n",
        registry.base_image()
    ));
    let mut req = request(&registry, &["1"]);
    req.cache = CacheMode::Max;

    let first = work.build(&Store::new(), &req);
    digest(&first);
    assert!(first.output.contains("ran-42"), "{}", first.output);
    let tags = registry
        .tags("cache/org/app")
        .expect("cache exported to <registry>/cache/org/app");
    assert!(tags.contains("\"tags\":[\""), "{tags}");

    // A fresh store (a new runner): the RUN step comes from the registry cache.
    let second = work.build(&Store::new(), &req);
    digest(&second);
    assert!(second.output.contains("CACHED"), "{}", second.output);
    assert!(
        second.output.contains("Cache pulled from remote"),
        "{}",
        second.output
    );
    assert!(
        !second.output.contains("ran-42"),
        "the RUN step ran again:\n{}",
        second.output
    );
}

#[test]
fn secret_is_mounted_but_not_in_the_image() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    const VALUE: &str = "s3cr3t-value-for-test";
    let rot13: String = VALUE
        .chars()
        .map(|c| match c {
            'a'..='z' => (((c as u8 - b'a' + 13) % 26) + b'a') as char,
            _ => c,
        })
        .collect();
    let registry = Registry::start().with_base_image();
    let store = Store::new();
    let work = Work::new(&format!(
        "FROM {}\nRUN --mount=type=secret,id=token tr a-z n-za-m < /run/secrets/token | tee /rot13\n\
         RUN test ! -e /run/secrets/token && echo secret-gone-$((1+1))\n",
        registry.base_image()
    ))
    .secret("token", VALUE);
    let mut req = request(&registry, &["1"]);
    req.secrets = vec![SecretRef {
        id: "token".into(),
        env: "NOT_READ_HERE".into(),
    }];
    let run = work.build(&store, &req);
    digest(&run);
    assert!(
        run.output.contains(&rot13),
        "secret not readable in RUN:\n{}",
        run.output
    );
    assert!(run.output.contains("secret-gone-2"), "{}", run.output);

    // Every layer, uncompressed, plus config and manifest: the derived text is there, the value not.
    let export = tempfile::tempdir().unwrap();
    let dest = format!("dir:{}", export.path().join("image").display());
    let image = format!("{}/org/app:1", registry.addr);
    let out = store.buildah(&["push", "--quiet", "--disable-compression", &image, &dest]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut all = Vec::new();
    for entry in std::fs::read_dir(export.path().join("image")).unwrap() {
        all.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let has = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has(&rot13), "the export should hold /rot13");
    assert!(!has(VALUE), "the secret's value is in the image");
}

#[test]
fn registry_credentials_come_from_docker_config() {
    if !require_root_and_tools(&[TOOLS, &["htpasswd"]].concat()) {
        return;
    }
    let registry = Registry::start_with_auth("ci", "pw-7f3a").with_base_image();
    let dockerfile = format!("FROM {}\nRUN true\n", registry.base_image());
    let store = Store::new();

    let anonymous = Work::new(&dockerfile).build(&store, &request(&registry, &["1"]));
    assert_eq!(anonymous.code, 1, "{}", anonymous.output);
    let last = anonymous.output.lines().last().unwrap();
    assert!(
        last.starts_with("error: failed to solve: ") && last.contains("unauthorized"),
        "{last}"
    );

    let work = Work::new(&dockerfile).docker_config(&registry.docker_config());
    let digest = digest(&work.build(&store, &request(&registry, &["1"])));
    assert_eq!(registry.manifest_digest("org/app", "1"), Some(digest));
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = Command::new(double())
        .args(["build", "--frobnicate", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "buildctl: unknown flag --frobnicate\n"
    );
}

#[test]
fn an_oom_killed_step_is_reported_with_buildkits_resource_exhausted_text() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let registry = Registry::start().with_base_image();
    let store = Store::new();
    let work = Work::new(&format!(
        "FROM {}\nRUN dd if=/dev/zero of=/dev/null bs=350M count=1\n",
        registry.base_image()
    ));
    // 256 MiB, as cx23 on a sandbox runner (TESTING.md, "Real OOM").
    let cgroup = MemoryCgroup::new(256);
    let run = work.build_with(&store, &request(&registry, &["1"]), &[], Some(&cgroup));
    assert_eq!(run.code, 1, "{}", run.output);
    let last = run.output.lines().last().unwrap();
    assert_eq!(
        last,
        "error: failed to solve: ResourceExhausted: process \"/bin/sh -c dd if=/dev/zero \
         of=/dev/null bs=350M count=1\" did not complete successfully: cannot allocate memory"
    );
    assert!(
        run.output.contains("ERROR: process \"/bin/sh -c dd"),
        "{}",
        run.output
    );
    assert!(!run.output.contains("exit code: 137"), "{}", run.output);
    assert!(cgroup.oom_kills() >= 1, "the cgroup counted the kill");
}

/// Runs `buildctl ARGS` (the double) with a not-ready window of `ready_after`.
fn buildctl(state: &Path, ready_after: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(double())
        .args(args)
        .env("BKL_DOUBLE_STATE_DIR", state)
        .env("BKL_DOUBLE_BUILDKITD_READY_AFTER", ready_after)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_daemon_that_is_not_serving_yet_fails_like_buildkit_and_wait_rides_it_out() {
    let state = tempfile::tempdir().unwrap();
    // 2 s from the first call on this "runner" (no assertion depends on how long anything takes:
    // each step either runs inside the window or waits for its end).
    let (code, out, err) = buildctl(state.path(), "2", &["debug", "workers"]);
    if code == 0 {
        // The window already passed (a very slow machine): the rest still holds.
        assert!(out.starts_with("ID"), "{out}");
    } else {
        assert_eq!(code, 1);
        assert!(
            err.starts_with("error: failed to list workers: rpc error: code = Unavailable"),
            "{err}"
        );
    }
    let (code, out, err) = buildctl(
        state.path(),
        "2",
        &["--wait", "--timeout", "60", "debug", "workers"],
    );
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert!(
        rows[0].starts_with("ID") && rows[0].ends_with("PLATFORMS"),
        "{out}"
    );
    assert_eq!(rows.len(), 2, "one worker: {out}");
    assert!(rows[1].contains("linux/"), "{out}");
    // Ready now: and stays ready.
    assert_eq!(buildctl(state.path(), "2", &["debug", "workers"]).0, 0);
}

#[test]
fn a_daemon_that_never_serves_fails_build_and_wait_like_buildkit() {
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) = buildctl(
        state.path(),
        "never",
        &["build", "--frontend", "dockerfile.v0"],
    );
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "error: listing workers for Build: failed to list workers: rpc error: code = Unavailable"
        ),
        "{err}"
    );
    let (code, _, err) = buildctl(
        state.path(),
        "never",
        &["--wait", "--timeout", "1", "debug", "workers"],
    );
    assert_eq!(
        (code, err.as_str()),
        (1, "error: context deadline exceeded\n")
    );
}

#[test]
fn from_over_plain_http_needs_the_registry_in_buildkitd_toml() {
    if !require_root_and_tools(TOOLS) {
        return;
    }
    let Some((name, ip)) = loopback_name() else {
        let line = "needs a host name other than localhost for a loopback address in /etc/hosts";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{line}");
        eprintln!("skipped: {line}");
        return;
    };
    let registry = Registry::start_at(ip).with_base_image();
    let host = registry.addr_as(&name);
    let store = Store::new();
    let work = Work::new("ARG BASE=unset\nFROM ${BASE}\nRUN echo pulled-$((6*7))\n");
    let mut req = request(&registry, &["1"]);
    req.build_args = vec![("BASE".into(), format!("{host}/base/busybox:latest"))];
    let config = work.dir.path().join("buildkitd.toml");

    // Not in buildkitd.toml: BuildKit speaks HTTPS to it, registry.insecure=true or not.
    std::fs::write(&config, "[registry.\"zot.example:5000\"]\n  http = true\n").unwrap();
    let env = [("BKL_DOUBLE_BUILDKITD_CONFIG", config.as_path())];
    let run = work.build_with(&store, &req, &env, None);
    assert_eq!(run.code, 1, "{}", run.output);
    let last = run.output.lines().last().unwrap();
    assert_eq!(
        last,
        format!(
            "error: failed to solve: {host}/base/busybox:latest: failed to resolve source metadata \
             for {host}/base/busybox:latest: failed to do request: Head \
             \"https://{host}/v2/base/busybox/manifests/latest\": http: server gave HTTP \
             response to HTTPS client"
        )
    );

    // Named with http = true: pulled over plain HTTP.
    std::fs::write(
        &config,
        format!("# the test registry\n[registry.\"{host}\"]\n  http = true # plain HTTP\n"),
    )
    .unwrap();
    let run = work.build_with(&store, &req, &env, None);
    digest(&run);
    assert!(run.output.contains("pulled-42"), "{}", run.output);
}
