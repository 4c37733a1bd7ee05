//! Arguments shared by `plan` and `build`: the plan is computed from the same values the build
//! executes.

use std::path::PathBuf;

use clap::Args;

use crate::backend::{Backend, BuildRequest, CacheMode, SecretRef, parse_key_value};
use crate::config::Arch;
use crate::exit::Error;
use crate::history::{HistoryKey, StoreSpec};
use crate::plan::PlanRequest;

use super::values::{
    parse_platform, parse_registry, parse_repo, parse_store, parse_tag, repo_slug,
};

#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// Build context directory; .build-spec.ncl and language markers are read from its root.
    #[arg(
        long,
        value_name = "DIR",
        default_value = ".",
        help_heading = "What to build"
    )]
    pub context: PathBuf,

    /// Dockerfile path, relative to the context.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "Dockerfile",
        help_heading = "What to build"
    )]
    pub dockerfile: String,

    /// Build stage to stop at (also part of the history key).
    #[arg(long, value_name = "STAGE", help_heading = "What to build")]
    pub target: Option<String>,

    /// Where recent peak memory is read from and written to: file:PATH, registry or none.
    /// Default at a terminal: file: under your state directory.
    #[arg(long, value_name = "STORE", value_parser = parse_store, help_heading = "Sizing")]
    pub history: Option<StoreSpec>,

    /// Runner architecture. Default: the spec file's `arch`, else the config's default_arch.
    #[arg(long, value_enum, help_heading = "What to build")]
    pub arch: Option<Arch>,

    /// Build for this platform, linux/amd64 or linux/arm64; repeat (or comma-separate) for
    /// both: each is built natively on a runner of its own architecture, at the same time,
    /// and one image index goes under every tag. One platform is the same as --arch.
    #[arg(
        long = "platform",
        value_name = "PLATFORM",
        value_delimiter = ',',
        value_parser = parse_platform, help_heading = "What to build")]
    pub platforms: Vec<Arch>,

    /// Project name for the history key when CI_REPO is not set (default: the context
    /// directory's name).
    #[arg(long, value_name = "NAME", help_heading = "Sizing")]
    pub project: Option<String>,

    /// Registry to push to and cache in, HOST[:PORT] without scheme.
    #[arg(long, value_name = "HOST[:PORT]", value_parser = parse_registry, help_heading = "Where it goes")]
    pub registry: Option<String>,

    /// Repository path in the registry (default: the history key's repo, lowercased); repeat
    /// to push the same image under the same tags to several repositories of the registry (the
    /// first one keeps the cache and names the runner).
    #[arg(long, value_name = "PATH", value_parser = parse_repo, action = clap::ArgAction::Append, help_heading = "Where it goes")]
    pub repo: Vec<String>,

    /// Image tag; repeat for several (default: latest).
    #[arg(long = "tag", value_name = "TAG", value_parser = parse_tag, help_heading = "Where it goes")]
    pub tags: Vec<String>,

    /// Tags from the pipeline, as plugin-docker-buildx makes them: on a git tag v1.2.3 the tags
    /// 1.2.3, 1.2 and 1; on the default branch latest; on any other branch the build is
    /// skipped. --tag values are added to them.
    #[arg(long, help_heading = "Where it goes")]
    pub auto_tag: bool,

    /// With --auto-tag: the tag of the default branch (plugin-docker-buildx's default_tag).
    #[arg(long, value_name = "TAG", value_parser = parse_tag, default_value = "latest", help_heading = "Where it goes")]
    pub default_tag: String,

    /// With --auto-tag: appended to every tag (`1.2-alpine`); the default branch's tag becomes
    /// the suffix itself (plugin-docker-buildx's default_suffix / auto_tag_suffix).
    #[arg(long, value_name = "SUFFIX", value_parser = parse_tag, help_heading = "Where it goes")]
    pub auto_tag_suffix: Option<String>,

    /// Read the tags from this file (one per line or comma-separated, as plugin-docker-buildx
    /// reads .tags), instead of --tag: a path relative to the current directory (the
    /// workspace), reached through no symlink.
    #[arg(long, value_name = "FILE", help_heading = "Where it goes")]
    pub tags_file: Option<PathBuf>,

    /// Image label KEY=VALUE; repeat for several. In a pipeline the standard OCI labels
    /// (org.opencontainers.image.source, revision, created, url, version) are added too.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = super::pipeline::parse_label, help_heading = "Where it goes")]
    pub labels: Vec<(String, String)>,

    /// Leave out the standard OCI labels taken from the pipeline.
    #[arg(long, help_heading = "Where it goes")]
    pub no_default_labels: bool,

    /// Build on the runner but push nothing and verify nothing in the registry (no registry
    /// credentials needed): what pull requests usually run.
    #[arg(long, help_heading = "Where it goes")]
    pub dry_run: bool,

    /// Build argument KEY=VALUE; repeat for several.
    #[arg(long = "build-arg", value_name = "KEY=VALUE", value_parser = parse_key_value, help_heading = "What to build")]
    pub build_args: Vec<(String, String)>,

    /// Build secret from an environment variable: id=NAME,env=VARIABLE. The value never
    /// appears in an argument list, log or report.
    #[arg(
        long = "secret",
        value_name = "id=NAME,env=VAR",
        help_heading = "What to build"
    )]
    pub secrets: Vec<SecretRef>,

    /// The registry speaks plain HTTP or has a certificate that does not verify.
    #[arg(long, help_heading = "Where it goes")]
    pub insecure_registry: bool,

    /// Registry user name; the password is read from the REGISTRY_PASSWORD environment
    /// variable only (never from an argument, which other users could see).
    #[arg(
        long,
        value_name = "NAME",
        env = "REGISTRY_USERNAME",
        help_heading = "Where it goes"
    )]
    pub registry_user: Option<String>,

    /// Registry cache under <registry>/cache/<repo>.
    #[arg(long, value_enum, default_value = "max", help_heading = "Cache")]
    pub cache: CacheMode,

    /// Build every step anew, ignoring any cache (the registry cache is still written).
    #[arg(long, help_heading = "Cache")]
    pub no_cache: bool,

    /// Also export the build cache here, beside the default cache (repeatable or
    /// comma-separated): HOST[:PORT]/PATH[:TAG] or type=registry,ref=REF[,mode=min|max] (mode
    /// default max). Only in the build's --registry; a dry run writes none.
    #[arg(long, value_name = "REF", help_heading = "Cache")]
    pub cache_to: Vec<String>,

    /// Also import the build cache from here (repeatable or comma-separated):
    /// HOST[:PORT]/PATH[:TAG] or type=registry,ref=REF. Another registry than --registry is
    /// read anonymously.
    #[arg(long, value_name = "REF", help_heading = "Cache")]
    pub cache_from: Vec<String>,

    /// Pass the launcher's environment variable NAME as the build argument NAME (repeatable
    /// or comma-separated), as plugin-docker-buildx's build_args_from_env.
    #[arg(
        long = "build-arg-from-env",
        value_name = "NAME",
        value_delimiter = ',',
        help_heading = "What to build"
    )]
    pub build_args_from_env: Vec<String>,

    /// Attach an SBOM attestation (BuildKit's attest:sbom; buildctl backend only).
    #[arg(long, help_heading = "What to build")]
    pub sbom: bool,

    /// Attach a provenance attestation of this mode (BuildKit's attest:provenance; buildctl
    /// backend only).
    #[arg(long, value_name = "MODE", value_parser = ["min", "max"], help_heading = "What to build")]
    pub provenance: Option<String>,

    /// Build tool on the runner.
    #[arg(
        long,
        value_enum,
        default_value = "buildctl",
        help_heading = "What to build"
    )]
    pub backend: Backend,
}

impl BuildArgs {
    /// Resolve defaults that depend on the environment (CI_REPO) and the context.
    pub fn request(&self) -> Result<PlanRequest, Error> {
        let context = std::path::absolute(&self.context).map_err(|e| {
            Error::Usage(format!(
                "--context {}: cannot resolve: {e}",
                self.context.display()
            ))
        })?;
        let key = history_key(
            &context,
            self.project.as_deref(),
            &self.dockerfile,
            self.target.as_deref(),
        );
        let repo = key.repo.clone();
        let facts = super::pipeline::Facts::from_environment();
        let (tags, skip) = self.tags(&facts)?;
        let mut labels = if self.no_default_labels || facts == super::pipeline::Facts::default() {
            Vec::new()
        } else {
            super::pipeline::default_labels(&facts, std::time::SystemTime::now())
        };
        for (k, v) in &self.labels {
            labels.retain(|(key, _)| key != k);
            labels.push((k.clone(), v.clone()));
        }
        let policy = crate::policy::Policy::current()?;
        let mut build_args = self.build_args.clone();
        for name in &self.build_args_from_env {
            let flag = crate::exit::option("--build-arg-from-env");
            if policy.is_secret_name(name) {
                return Err(Error::Usage(format!(
                    "{flag}: {}: holds a secret of the launcher; a build may never read it",
                    crate::exit::quote(name)
                )));
            }
            let value = crate::environment::var(name).ok_or_else(|| {
                Error::Usage(format!(
                    "{flag}: {}: the environment variable is not set",
                    crate::exit::quote(name)
                ))
            })?;
            build_args.push((name.clone(), value));
        }
        for secret in &self.secrets {
            if policy.is_secret_name(&secret.env) && !secret.env.starts_with("BKL_BUILD_SECRET_") {
                return Err(Error::Usage(format!(
                    "{}: id={},env={}: the variable holds a secret of the launcher; a build may never read it",
                    crate::exit::option("--secret"),
                    secret.id,
                    crate::exit::quote(&secret.env)
                )));
            }
        }
        let (arch, platforms) = self.platforms()?;
        let pull_request = crate::environment::var("CI_PIPELINE_EVENT")
            .is_some_and(|e| crate::plan::PULL_REQUEST_EVENTS.contains(&e.as_str()));
        let mut secret_values = policy.secret_values();
        secret_values.extend(
            self.secrets
                .iter()
                .filter_map(|s| crate::environment::var(&s.env))
                .map(zeroize::Zeroizing::new),
        );
        super::secret_values::refuse_secret_values(&build_args, &labels, &tags, &secret_values)
            .map_err(Error::Usage)?;
        let mut request = PlanRequest {
            context,
            key,
            arch,
            platforms,
            pull_request,
            skip,
            notes: Vec::new(),
            build: BuildRequest {
                backend: self.backend,
                dockerfile: self.dockerfile.clone(),
                target: self.target.clone(),
                build_args,
                secrets: self.secrets.clone(),
                platform: String::new(), // set by the plan from the chosen arch
                by_digest: false,        // set by the plan for one platform of several
                registry: self.registry.clone(),
                image_repo: self
                    .repo
                    .first()
                    .cloned()
                    .unwrap_or_else(|| repo_slug(&repo)),
                also_repos: self.repo.iter().skip(1).cloned().collect(),
                tags,
                insecure_registry: self.insecure_registry,
                cache: self.cache,
                cache_repo: String::new(),
                labels,
                dry_run: self.dry_run,
                no_cache: self.no_cache,
                sbom: self.sbom,
                sbom_generator: String::new(),
                provenance: self.provenance.clone(),
                cache_to: crate::backend::cache::exports(&self.cache_to).map_err(Error::Usage)?,
                cache_from: crate::backend::cache::imports(&self.cache_from)
                    .map_err(Error::Usage)?,
                cache_scope: None,
            },
        };
        super::pipeline::scope_pull_request(&mut request, &facts, policy);
        Ok(request)
    }

    /// `--arch` and `--platform`: one platform is an `--arch`; several are returned as such.
    fn platforms(&self) -> Result<(Option<Arch>, Vec<Arch>), Error> {
        let mut platforms: Vec<Arch> = Vec::new();
        for arch in &self.platforms {
            if platforms.contains(arch) {
                return Err(Error::Usage(format!(
                    "--platform: {} is named twice",
                    arch.platform()
                )));
            }
            platforms.push(*arch);
        }
        match (self.arch, platforms.as_slice()) {
            (arch, []) => Ok((arch, Vec::new())),
            (None, [one]) => Ok((Some(*one), Vec::new())),
            (Some(arch), [one]) if arch == *one => Ok((Some(arch), Vec::new())),
            (Some(arch), _) => Err(Error::Usage(format!(
                "--arch {arch} and --platform {} disagree; use one of them",
                platforms
                    .iter()
                    .map(|a| a.platform())
                    .collect::<Vec<_>>()
                    .join(",")
            ))),
            (None, _) => Ok((None, platforms)),
        }
    }

    /// The image tags (`--tags-file`, else `--auto-tag` and `--tag`, else `latest`), and why
    /// the build is skipped when `--auto-tag` finds nothing to tag.
    fn tags(&self, facts: &super::pipeline::Facts) -> Result<(Vec<String>, Option<String>), Error> {
        let checked = |source: &str, tags: Vec<String>| -> Result<Vec<String>, Error> {
            let mut out: Vec<String> = Vec::new();
            for tag in tags {
                parse_tag(&tag).map_err(|e| Error::Usage(format!("{source}: {e}")))?;
                if !out.contains(&tag) {
                    out.push(tag);
                }
            }
            Ok(out)
        };
        if let Some(file) = &self.tags_file {
            // A plugin's tags_file was checked beneath the workspace: read it from there
            // (the step's directory may be another one); at a terminal, the current directory.
            let workspace = match crate::transport::context_guard::confinement() {
                Some(workspace) => workspace.to_owned(),
                None => std::env::current_dir().map_err(|e| {
                    Error::Usage(format!(
                        "{}: the current directory is unreadable: {e}",
                        crate::exit::option("--tags-file")
                    ))
                })?,
            };
            let tags = super::pipeline::read_tags_file(&workspace, file).map_err(Error::Usage)?;
            return Ok((
                checked(
                    &format!(
                        "{} {}",
                        crate::exit::option("--tags-file"),
                        crate::exit::quote(&file.display().to_string())
                    ),
                    tags,
                )?,
                None,
            ));
        }
        if self.auto_tag {
            return match super::pipeline::auto_tags(facts).map_err(Error::Usage)? {
                super::pipeline::AutoTags::Tags(tags) => {
                    let mut tags: Vec<String> = tags
                        .into_iter()
                        .map(|t| match (t.as_str(), &self.auto_tag_suffix) {
                            ("latest", Some(suffix)) => suffix.clone(),
                            ("latest", None) => self.default_tag.clone(),
                            (_, Some(suffix)) => format!("{t}-{suffix}"),
                            (_, None) => t,
                        })
                        .collect();
                    tags.extend(self.tags.iter().cloned());
                    Ok((checked("--auto-tag", tags)?, None))
                }
                super::pipeline::AutoTags::Skip(why) => Ok((vec!["latest".to_owned()], Some(why))),
            };
        }
        if self.tags.is_empty() {
            Ok((vec!["latest".to_owned()], None))
        } else {
            Ok((self.tags.clone(), None))
        }
    }

    pub fn store(&self) -> StoreSpec {
        self.history
            .clone()
            .unwrap_or_else(StoreSpec::terminal_default)
    }

    /// The history store, which may live in the build's registry.
    pub fn open_store(
        &self,
        config: &crate::config::Config,
        credentials: Option<crate::registry::Credentials>,
    ) -> Result<Box<dyn crate::history::HistoryStore>, Error> {
        open_store(
            &self.store(),
            self.registry.as_deref(),
            self.insecure_registry,
            credentials,
            &config.registry.history,
        )
    }

    /// Registry credentials: `--registry-user` and the password from the environment.
    pub fn credentials(&self) -> Result<Option<crate::registry::Credentials>, Error> {
        registry_credentials(self.registry_user.as_deref())
    }
}

/// The history key (ARCHITECTURE.md): repo is `CI_REPO` when set, else `--project`, else the
/// context directory's name.
pub fn history_key(
    context: &std::path::Path,
    project: Option<&str>,
    dockerfile: &str,
    target: Option<&str>,
) -> HistoryKey {
    let context_name = context
        .canonicalize()
        .unwrap_or_else(|_| context.to_owned())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let repo = crate::environment::var("CI_REPO")
        .filter(|r| !r.is_empty())
        .or_else(|| project.map(str::to_owned))
        .or(context_name)
        .unwrap_or_else(|| "build".to_owned());
    HistoryKey {
        repo,
        dockerfile: dockerfile.to_owned(),
        target: target.map(str::to_owned),
        // The plan sets the architecture it decides on (spec, flag or default).
        arch: Arch::Amd64,
    }
}

/// Registry credentials for every command: the user from `--registry-user`, the password only
/// from the environment (`REGISTRY_PASSWORD`, or its plugin twins); one without the other is a
/// usage error.
pub fn registry_credentials(
    user: Option<&str>,
) -> Result<Option<crate::registry::Credentials>, Error> {
    let password = super::plugin::secret_env(&[
        "REGISTRY_PASSWORD",
        "PLUGIN_PASSWORD",
        "PLUGIN_REGISTRY_PASSWORD",
    ]);
    match (user, password) {
        (Some(user), Some(password)) => Ok(Some(crate::registry::Credentials {
            username: user.to_owned(),
            password: zeroize::Zeroizing::new(password),
        })),
        (Some(_), None) => Err(Error::Usage(
            "--registry-user is set but REGISTRY_PASSWORD is not; set the password in that environment variable".into(),
        )),
        (None, Some(_)) => Err(Error::Usage(
            "REGISTRY_PASSWORD is set but --registry-user (REGISTRY_USERNAME) is not".into(),
        )),
        (None, None) => Ok(None),
    }
}

/// Samples kept per key in the registry; older ones are pruned (the percentile reads 30).
pub const HISTORY_RETENTION: usize = 200;

/// Open a history store; `registry` needs the registry the build pushes to, and keeps the
/// samples beneath `namespace` (config `registry.history`).
pub fn open_store(
    spec: &StoreSpec,
    registry: Option<&str>,
    insecure: bool,
    credentials: Option<crate::registry::Credentials>,
    namespace: &str,
) -> Result<Box<dyn crate::history::HistoryStore>, Error> {
    match (spec, registry) {
        (StoreSpec::Registry, None) => Err(Error::Usage(format!(
            "{} registry keeps samples in the registry the build pushes to: set {} (or {} none)",
            crate::exit::option("--history"),
            crate::exit::option("--registry"),
            crate::exit::option("--history"),
        ))),
        (StoreSpec::Registry, Some(registry)) => Ok(Box::new(
            crate::history::registry::RegistryStore::new(
                registry.to_owned(),
                insecure,
                credentials,
                HISTORY_RETENTION,
            )
            .with_namespace(namespace),
        )),
        _ => Ok(spec.open()?),
    }
}
