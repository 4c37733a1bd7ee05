//! The `buildah` backend: the same build as buildctl's, daemonless (`bud --layers`, registry
//! cache to and from `<registry>/cache/<repo>` or one extra cache each way, a push per tag, the
//! digest in the same metadata file buildctl writes). It is what the local provider uses where
//! BuildKit is absent.

use super::{BuildRequest, CacheMode, RemotePaths};
use crate::transport::session::shell_quote;

pub fn script(req: &BuildRequest, paths: &RemotePaths) -> String {
    let q = |s: &str| shell_quote(s);
    let context = paths.context();
    let tls = if req.insecure_registry {
        " --tls-verify=false"
    } else {
        ""
    };
    let mut bud = format!(
        "buildah bud --layers --isolation chroot --authfile \"$auth\"{tls} -f {} --platform {}",
        q(&format!("{context}/{}", req.dockerfile)),
        q(&req.platform)
    );
    if let Some(target) = &req.target {
        bud.push_str(&format!(" --target {}", q(target)));
    }
    for (k, v) in &req.build_args {
        bud.push_str(&format!(" --build-arg {}", q(&format!("{k}={v}"))));
    }
    for (k, v) in &req.labels {
        bud.push_str(&format!(" --label {}", q(&format!("{k}={v}"))));
    }
    if req.no_cache {
        bud.push_str(" --no-cache");
    }
    for secret in &req.secrets {
        let spec = format!("id={},src={}", secret.id, paths.secret(&secret.id));
        bud.push_str(&format!(" --secret {}", q(&spec)));
    }
    // Repositories, without tags: buildah tags each step's cache image itself. buildah 1.28
    // keeps only the last of several --cache-to/--cache-from, so cache::settle has left at most
    // one each way (the default cache, or an extra one when it is off).
    let default = req.cache_ref().filter(|_| req.cache != CacheMode::Off);
    // buildah takes no cache tag, so a pull request's scope cannot be kept apart: it reads
    // the default cache and writes none.
    let to = default
        .iter()
        .filter(|_| req.cache_scope.is_none())
        .cloned()
        .chain(req.cache_to.iter().map(|e| e.reference.repository()));
    let from = default
        .iter()
        .cloned()
        .chain(req.cache_from.iter().map(|i| i.reference.repository()));
    // A dry run reads the cache but writes nothing to the registry.
    if req.pushes() {
        for cache in to {
            bud.push_str(&format!(" --cache-to {}", q(&cache)));
        }
    }
    for cache in from {
        bud.push_str(&format!(" --cache-from {}", q(&cache)));
    }
    for image in req.images() {
        bud.push_str(&format!(" -t {}", q(&image)));
    }
    bud.push_str(&format!(" {}", q(&context)));

    let digest = format!("{}/digest", paths.workdir);
    let mut lines = vec![
        // Registry credentials, when the launcher installed them, are in the Docker config.
        "auth=\"$HOME/.docker/config.json\"; [ -f \"$auth\" ] || { auth=\"$HOME/.bkl-no-auth.json\"; echo '{}' > \"$auth\"; }".to_owned(),
        format!("{bud} || exit $?"),
    ];
    if req.pushes() {
        for image in req.images() {
            lines.push(format!(
                "buildah push --authfile \"$auth\"{tls} --digestfile {} {} {} || exit $?",
                q(&digest),
                q(&image),
                q(&format!("docker://{image}"))
            ));
        }
        lines.push(format!(
            "printf '{{\"containerimage.digest\": \"%s\"}}\\n' \"$(cat {})\" > {}",
            q(&digest),
            q(&paths.metadata())
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, SecretRef};

    fn request() -> BuildRequest {
        BuildRequest {
            backend: Backend::Buildah,
            dockerfile: "Dockerfile".into(),
            target: None,
            build_args: Vec::new(),
            secrets: Vec::new(),
            platform: "linux/amd64".into(),
            registry: Some("127.0.0.1:5000".into()),
            image_repo: "org/app".into(),
            tags: vec!["latest".into()],
            insecure_registry: true,
            cache: CacheMode::Max,
            ..Default::default()
        }
    }

    #[test]
    fn labels_and_a_dry_run() {
        let mut req = request();
        req.labels = vec![("team".into(), "a b".into())];
        req.dry_run = true;
        let s = script(&req, &RemotePaths::new("/w"));
        assert!(s.contains("--label 'team=a b'"), "{s}");
        assert!(!s.contains("buildah push"), "a dry run pushes nothing: {s}");
        assert!(!s.contains("--cache-to"), "nor exports its cache: {s}");
        assert!(s.contains("--cache-from"), "{s}");
    }

    #[test]
    fn an_extra_cache_replaces_the_default_one_when_it_is_off() {
        let mut req = request();
        req.cache = CacheMode::Off;
        req.cache_to = crate::backend::cache::exports(&["127.0.0.1:5000/cache/x".into()]).unwrap();
        req.cache_from =
            crate::backend::cache::imports(&["type=registry,ref=127.0.0.1:5000/cache/y".into()])
                .unwrap();
        crate::backend::cache::settle(&mut req, "h").unwrap();
        let s = script(&req, &RemotePaths::new("/w"));
        assert!(
            s.contains("--cache-to 127.0.0.1:5000/cache/x --cache-from 127.0.0.1:5000/cache/y"),
            "{s}"
        );
        assert_eq!(s.matches("--cache-").count(), 2, "{s}");
    }

    #[test]
    fn script_builds_pushes_every_tag_and_records_the_digest() {
        let req = BuildRequest {
            build_args: vec![("A".into(), "b c".into())],
            secrets: vec![SecretRef {
                id: "npm".into(),
                env: "NPM_TOKEN".into(),
            }],
            tags: vec!["1".into(), "latest".into()],
            ..request()
        };
        let s = script(&req, &RemotePaths::new("/w"));
        assert!(s.contains("buildah bud --layers --isolation chroot"), "{s}");
        assert!(s.contains("--build-arg 'A=b c'"), "{s}");
        assert!(s.contains("--secret id=npm,src=/w/secrets/npm"), "{s}");
        assert!(
            s.contains(
                "--cache-to 127.0.0.1:5000/cache/org/app --cache-from 127.0.0.1:5000/cache/org/app"
            ),
            "{s}"
        );
        assert!(s.contains("docker://127.0.0.1:5000/org/app:1"), "{s}");
        assert!(s.contains("docker://127.0.0.1:5000/org/app:latest"), "{s}");
        assert!(s.contains("/w/metadata.json"), "{s}");
        assert!(!s.contains("NPM_TOKEN"), "{s}");
    }
}
