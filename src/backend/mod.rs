//! Build backends: the command that builds and pushes the image on the runner.
//!
//! For now this is the pure part: turning a [`BuildRequest`] into the exact `buildctl` argument
//! list, which `plan` prints and `build` runs. Secrets appear here only as ids and file paths;
//! their values never enter an argument list.

pub mod buildah;
pub mod buildctl;
pub mod cache;
pub mod cache_exports;
pub mod classify;

use serde::Serialize;

/// The work directory on a production runner (the golden image's); local sandbox runners each
/// have their own. Everything a build puts on a runner lives under it.
pub const REMOTE_WORKDIR: &str = "/var/lib/buildkit-launcher";

/// Paths under a runner's work directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePaths {
    pub workdir: String,
}

impl RemotePaths {
    pub fn new(workdir: &str) -> RemotePaths {
        RemotePaths {
            workdir: workdir.trim_end_matches('/').to_owned(),
        }
    }
    pub fn context(&self) -> String {
        format!("{}/context", self.workdir)
    }
    pub fn secret(&self, id: &str) -> String {
        format!("{}/secrets/{id}", self.workdir)
    }
    pub fn metadata(&self) -> String {
        format!("{}/metadata.json", self.workdir)
    }
}

/// The shell script that builds and pushes on the runner, for the request's backend.
pub fn script(req: &BuildRequest, paths: &RemotePaths) -> String {
    match req.backend {
        Backend::Buildctl => buildctl::script(req, paths),
        Backend::Buildah => buildah::script(req, paths),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Buildctl,
    Buildah,
}

/// Registry cache export mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Export every layer, including intermediate stages (best hit rate).
    #[default]
    Max,
    /// Export only the final image's layers.
    Min,
    /// No default registry cache (extra `--cache-to`/`--cache-from` caches stay).
    Off,
}

/// A build secret: the value comes from an environment variable of the launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRef {
    pub id: String,
    pub env: String,
}

impl std::str::FromStr for SecretRef {
    type Err = String;
    /// `id=X,env=VAR` (the order of the two does not matter).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut id, mut env) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("id", v)) if !v.is_empty() => id = Some(v.to_owned()),
                Some(("env", v)) if !v.is_empty() => env = Some(v.to_owned()),
                _ => return Err(format!("\"{part}\" is not id=NAME or env=VARIABLE")),
            }
        }
        let (Some(id), Some(env)) = (id, env) else {
            return Err("expected id=NAME,env=VARIABLE".to_owned());
        };
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(format!(
                "secret id \"{id}\" may only use letters, digits, '_', '-' and '.'"
            ));
        }
        Ok(SecretRef { id, env })
    }
}

/// `KEY=VALUE` for `--build-arg`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("\"{s}\" is not KEY=VALUE")),
    }
}

/// What to build and where to push it. `Default` is the command line's defaults (buildctl,
/// cache `max`) with nothing else set; the launcher itself names every field (cli/args.rs).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BuildRequest {
    pub backend: Backend,
    /// Dockerfile path relative to the context root.
    pub dockerfile: String,
    pub target: Option<String>,
    pub build_args: Vec<(String, String)>,
    pub secrets: Vec<SecretRef>,
    /// `linux/amd64` or `linux/arm64`.
    pub platform: String,
    /// One platform of several: push the image by digest only, under no tag (the launcher
    /// then pushes one index under every tag).
    pub by_digest: bool,
    /// `host[:port]`; without it the image is built but not pushed.
    pub registry: Option<String>,
    /// Repository path in the registry (`org/app`).
    pub image_repo: String,
    /// More repositories of the same registry that get the same image under the same tags
    /// (`repo` as a list); the cache, labels and runner name follow `image_repo`.
    pub also_repos: Vec<String>,
    pub tags: Vec<String>,
    pub insecure_registry: bool,
    pub cache: CacheMode,
    /// The cache's repository path (config `registry.cache`); set by the plan. Empty:
    /// `cache/<image_repo>`.
    pub cache_repo: String,
    /// Image labels (`--label`, and the standard OCI labels in a pipeline).
    pub labels: Vec<(String, String)>,
    /// Build, push nothing: no image push, no cache export, nothing verified.
    pub dry_run: bool,
    /// Ignore every cache while building.
    pub no_cache: bool,
    /// Attestations (buildctl only): an SBOM, provenance of mode `min` or `max`.
    pub sbom: bool,
    /// The SBOM scanner image (config `buildkitd.sbom_generator`; set by the plan when `sbom`).
    pub sbom_generator: String,
    pub provenance: Option<String>,
    /// Extra registry caches beside the default one (`--cache-to`, `--cache-from`; checked by
    /// [`cache::settle`]). Written only when the build pushes.
    pub cache_to: Vec<cache::CacheExport>,
    pub cache_from: Vec<cache::CacheImport>,
    /// A pull request's scope (`pr-7`): the default cache is written under this tag instead of
    /// the default branch's (and read from both).
    pub cache_scope: Option<String>,
}

impl BuildRequest {
    /// `<registry>/<repo>`, the image's repository without a tag.
    pub fn repository(&self) -> String {
        match &self.registry {
            Some(registry) => format!("{registry}/{}", self.image_repo),
            None => self.image_repo.clone(),
        }
    }

    /// Every repository the image goes to: `image_repo`, then `also_repos`, with the registry.
    pub fn repositories(&self) -> Vec<String> {
        std::iter::once(&self.image_repo)
            .chain(&self.also_repos)
            .map(|r| match &self.registry {
                Some(registry) => format!("{registry}/{r}"),
                None => r.clone(),
            })
            .collect()
    }

    /// Every image reference the build produces: each tag in each repository.
    pub fn images(&self) -> Vec<String> {
        self.repositories()
            .iter()
            .flat_map(|base| self.tags.iter().map(move |t| format!("{base}:{t}")))
            .collect()
    }

    /// Whether the image is pushed (a registry, and not a dry run).
    pub fn pushes(&self) -> bool {
        self.registry.is_some() && !self.dry_run
    }

    /// `<registry>/<cache repository>[:<arch>]`, when a registry cache applies.
    ///
    /// BuildKit keeps one cache manifest per reference, so two architectures exporting to one
    /// reference would each overwrite the other's cache: every architecture but amd64 (whose
    /// cache stays where it was before platforms existed) has its own tag. buildah keeps cache
    /// images by content in a repository and takes no tag.
    pub fn cache_ref(&self) -> Option<String> {
        let tag = match (self.backend, self.platform.strip_prefix("linux/")) {
            (Backend::Buildctl, Some(arch)) if arch != "amd64" => format!(":{arch}"),
            _ => String::new(),
        };
        match (&self.registry, self.cache) {
            (Some(registry), CacheMode::Max | CacheMode::Min) => {
                Some(format!("{registry}/{}{tag}", self.cache_repository()))
            }
            _ => None,
        }
    }

    /// Where a pull request writes the default cache: [`Self::cache_ref`] with its scope as
    /// the tag (`:pr-7`, `:arm64-pr-7`).
    pub fn scoped_cache_ref(&self) -> Option<String> {
        let scope = self.cache_scope.as_ref()?;
        let cache = self.cache_ref()?;
        let registry = self.registry.as_deref().unwrap_or_default();
        let path = cache.strip_prefix(registry).unwrap_or(&cache);
        Some(match path.rsplit_once(':') {
            Some((base, tag)) => format!("{registry}{base}:{tag}-{scope}"),
            None => format!("{cache}:{scope}"),
        })
    }

    /// The cache's repository path in the registry.
    pub fn cache_repository(&self) -> String {
        if self.cache_repo.is_empty() {
            format!("cache/{}", self.image_repo)
        } else {
            self.cache_repo.clone()
        }
    }
}
