//! The `buildctl build` invocation (FACTS.md, "BuildKit / buildctl").

use std::path::Path;

use super::{BuildRequest, CacheMode, REMOTE_CONTEXT, REMOTE_METADATA, REMOTE_SECRETS};

/// Arguments after `buildctl`, for a context synced to [`REMOTE_CONTEXT`].
pub fn args(req: &BuildRequest) -> Vec<String> {
    let dockerfile = Path::new(&req.dockerfile);
    let dockerfile_dir = match dockerfile.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => format!("{REMOTE_CONTEXT}/{}", dir.display()),
        None => REMOTE_CONTEXT.to_owned(),
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
        format!("context={REMOTE_CONTEXT}"),
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
            format!("id={},src={REMOTE_SECRETS}/{}", secret.id, secret.id),
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
        REMOTE_METADATA.into(),
    ]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, SecretRef};

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
        let a = args(&request()).join(" ");
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
        let a = args(&r).join(" ");
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
