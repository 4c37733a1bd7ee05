//! The `buildctl build` invocation (FACTS.md, "BuildKit / buildctl").

use std::path::Path;

use super::{BuildRequest, CacheMode, RemotePaths};
use crate::transport::session::shell_quote;

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
    for secret in &req.secrets {
        a.extend([
            "--secret".into(),
            format!("id={},src={}", secret.id, paths.secret(&secret.id)),
        ]);
    }
    // buildctl parses --output as CSV: several names need one quoted field.
    let names = req.images().join(",");
    let mut output = format!("type=image,\"name={names}\"");
    if req.registry.is_some() {
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
        a.extend([
            "--export-cache".into(),
            format!("type=registry,ref={cache},mode={mode}{insecure}"),
            "--import-cache".into(),
            format!("type=registry,ref={cache}{insecure}"),
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
            a.contains("--export-cache type=registry,ref=zot.example:5000/cache/org/app,mode=max")
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
    fn cache_off_and_insecure_registry() {
        let mut r = request();
        r.cache = CacheMode::Off;
        r.insecure_registry = true;
        let a = args(&r, &paths()).join(" ");
        assert!(!a.contains("cache"));
        assert!(a.contains("push=true,registry.insecure=true"));
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
