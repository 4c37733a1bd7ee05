//! `.build-spec.ncl`: a repository's own statement of what its build needs (SIZING.md, tier 1).
//!
//! The file is untrusted (it can come from a pull request): it is evaluated through
//! [`crate::ncl::evaluate`], so its imports stay inside the repository and its evaluation is
//! bounded in time, against the closed contract in `schemas/build_spec.ncl`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Arch, Tier, tier_names};
use crate::ncl::{self, Contract, NclError};

pub const BUILD_SPEC_CONTRACT: Contract = Contract {
    name: "schemas/build_spec.ncl",
    source: include_str!("../../schemas/build_spec.ncl"),
    fields_hint: "a spec may set memory_gb, cpus, tier, arch, disk_gb and timeout_minutes",
};

/// The evaluated spec. Every field is optional; the contract guarantees at least one is set and
/// every value is in range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_minutes: Option<u64>,
}

/// A spec and the file it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadedSpec {
    pub path: PathBuf,
    #[serde(flatten)]
    pub spec: BuildSpec,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Nickel(#[from] NclError),
    /// Every field the contract refused, each at its place in the file when it is written
    /// there (`file:line:col: field: message`), in the file's order, on one line.
    #[error("{}", problems.join("; "))]
    Problems { problems: Vec<String> },
    #[error("{}: {field}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

impl BuildSpec {
    /// Does the spec say anything about size (as opposed to only arch or timeout)?
    pub fn sizes(&self) -> bool {
        self.tier.is_some()
            || self.memory_gb.is_some()
            || self.cpus.is_some()
            || self.disk_gb.is_some()
    }

    pub fn arch(&self) -> Option<Arch> {
        match self.arch.as_deref() {
            Some("amd64") => Some(Arch::Amd64),
            Some("arm64") => Some(Arch::Arm64),
            _ => None,
        }
    }

    pub fn memory_mib(&self) -> Option<u64> {
        self.memory_gb.map(|gb| (gb * 1024.0).ceil() as u64)
    }
}

/// The most problems one error lists.
const MAX_PROBLEMS: usize = 20;

/// The fields a spec may set (`schemas/build_spec.ncl`).
const SPEC_FIELDS: [&str; 6] = [
    "memory_gb",
    "cpus",
    "tier",
    "arch",
    "disk_gb",
    "timeout_minutes",
];

/// What `schemas/build_spec.ncl` puts before its list of problems, and between them.
const PROBLEMS: &str = "spec problems ␞ ";
const BETWEEN: &str = " ␞ ";

/// The contract's list of problems as [`SpecError::Problems`], each placed at its field; any
/// other error as it is.
fn every_problem(path: &Path, error: NclError) -> SpecError {
    let NclError::Nickel(line) = &error else {
        return error.into();
    };
    let Some((_, list)) = line.split_once(PROBLEMS) else {
        return error.into();
    };
    // Read again only to place each field, as the evaluation read it: a regular file within
    // the cap, opened without blocking (a file swapped for a FIFO cannot hang this).
    let source = ncl::read_capped(path).unwrap_or_default();
    let mut placed: Vec<(Option<(usize, usize)>, String)> = list
        .split(BETWEEN)
        .map(|problem| {
            let field = problem.split(':').next().unwrap_or_default();
            let mut problem = problem.to_owned();
            if problem.contains(": not a field of a spec")
                && let Some(close) = SPEC_FIELDS
                    .iter()
                    .find(|known| strsim::damerau_levenshtein(field, known) <= 2)
            {
                problem = format!("{field}: not a field of a spec; did you mean {close}?");
            }
            (field_position(&source, field), cut(&problem))
        })
        .collect();
    placed.sort_by_key(|(at, _)| at.unwrap_or((usize::MAX, 0)));
    // A spec of thousands of wrong fields gets a line of reasonable length.
    let more = placed.len().saturating_sub(MAX_PROBLEMS);
    let mut problems: Vec<String> = placed
        .into_iter()
        .take(MAX_PROBLEMS)
        .map(|(at, problem)| match at {
            Some((line, col)) => format!("{}:{line}:{col}: {problem}", path.display()),
            None => format!("{}: {problem}", path.display()),
        })
        .collect();
    if more > 0 {
        problems.push(format!("and {more} more problem(s)"));
    }
    SpecError::Problems { problems }
}

/// A problem as the error line shows it: at most 300 characters (a field's name is the spec's
/// and can be long).
fn cut(problem: &str) -> String {
    match problem.char_indices().nth(300) {
        Some((end, _)) => format!("{}…", &problem[..end]),
        None => problem.to_owned(),
    }
}

/// Where `field` is defined in `source` (1-based line and column): its name at the start of a
/// line or after `{` or `,`, followed by `=` or `|`. `None` when it is not written there (it
/// comes from an import or a merge).
fn field_position(source: &str, field: &str) -> Option<(usize, usize)> {
    if field.is_empty() {
        return None;
    }
    for (n, line) in source.lines().enumerate() {
        let mut from = 0;
        while let Some(i) = line[from..].find(field) {
            let at = from + i;
            let before = line[..at].trim_end();
            let after = line[at + field.len()..].trim_start();
            let starts = before.is_empty() || before.ends_with('{') || before.ends_with(',');
            let quoted = line[..at].ends_with('"');
            if starts && !quoted && (after.starts_with('=') || after.starts_with('|')) {
                return Some((n + 1, line[..at].chars().count() + 1));
            }
            from = at + field.len();
        }
    }
    None
}

impl LoadedSpec {
    /// Evaluate `path` against the build-spec contract, confining imports to `repo_root`.
    pub fn load(path: &Path, repo_root: &Path, timeout: Duration) -> Result<LoadedSpec, SpecError> {
        let spec: BuildSpec = ncl::evaluate(Some(path), repo_root, BUILD_SPEC_CONTRACT, timeout)
            .map_err(|e| every_problem(path, e))?;
        Ok(LoadedSpec {
            path: path.to_owned(),
            spec,
        })
    }

    /// The tier the spec asks for on `ladder`, or `None` when it names no size at all.
    /// `ceiling` says why the ladder ends where it does, when the operator policy cut it.
    pub fn choose(
        &self,
        arch: Arch,
        ladder: &[Tier],
        ceiling: Option<&str>,
    ) -> Result<Option<usize>, SpecError> {
        let with_ceiling = |message: String| match ceiling {
            Some(ceiling) => format!("{message} ({ceiling})"),
            None => message,
        };
        let spec = &self.spec;
        if let Some(name) = &spec.tier {
            return match ladder.iter().position(|t| &t.name == name) {
                Some(i) => Ok(Some(i)),
                None => Err(self.invalid(
                    "tier",
                    with_ceiling(format!(
                        "\"{name}\" is not a server type of the {arch} ladder; choose one of {}",
                        tier_names(ladder)
                    )),
                )),
            };
        }
        if !spec.sizes() {
            return Ok(None);
        }
        let need_mib = spec.memory_mib().unwrap_or(0);
        let need_cpus = spec.cpus.unwrap_or(0);
        let need_disk = spec.disk_gb.unwrap_or(0);
        let fits =
            |t: &Tier| t.memory_mib >= need_mib && t.vcpus >= need_cpus && t.disk_gb >= need_disk;
        match ladder.iter().position(fits) {
            Some(i) => Ok(Some(i)),
            None => {
                let top = ladder.last().expect("config guarantees non-empty ladders");
                Err(self.invalid(
                    "request",
                    with_ceiling(format!(
                        "no {arch} tier has {}; the largest, {}, has {}",
                        describe_request(spec),
                        top.name,
                        describe_tier(top)
                    )),
                ))
            }
        }
    }

    fn invalid(&self, field: &'static str, message: String) -> SpecError {
        SpecError::Invalid {
            path: self.path.clone(),
            field,
            message,
        }
    }
}

/// `12 GB memory, 4 vCPUs and 100 GB disk`
pub fn describe_request(spec: &BuildSpec) -> String {
    let mut parts = Vec::new();
    if let Some(gb) = spec.memory_gb {
        parts.push(format!("{gb} GB memory"));
    }
    if let Some(c) = spec.cpus {
        parts.push(format!("{c} vCPUs"));
    }
    if let Some(d) = spec.disk_gb {
        parts.push(format!("{d} GB disk"));
    }
    match parts.len() {
        0 => String::new(),
        1 => parts.remove(0),
        _ => {
            let last = parts.pop().unwrap_or_default();
            format!("{} and {last}", parts.join(", "))
        }
    }
}

/// `16 GB memory, 8 vCPUs, 160 GB disk`
pub fn describe_tier(t: &Tier) -> String {
    format!(
        "{} GB memory, {} vCPUs, {} GB disk",
        fmt_gb(t.memory_mib),
        t.vcpus,
        t.disk_gb
    )
}

fn fmt_gb(mib: u64) -> String {
    if mib.is_multiple_of(1024) {
        (mib / 1024).to_string()
    } else {
        format!("{:.1}", mib as f64 / 1024.0)
    }
}

/// The repository a context belongs to: the nearest ancestor holding `.git`, else the context.
/// Spec imports are confined to it. With `within` (a plugin's workspace), the search never
/// climbs above it: a workspace cloned without `.git` must not open imports up to a `.git`
/// somewhere above it (the volume's root, an agent's home); the workspace is the root then.
pub fn repository_root(context: &Path, within: Option<&Path>) -> PathBuf {
    let context = context
        .canonicalize()
        .unwrap_or_else(|_| context.to_owned());
    let ceiling = within.filter(|w| context.starts_with(w));
    context
        .ancestors()
        .take_while(|dir| ceiling.is_none_or(|w| dir.starts_with(w)))
        .find(|dir| dir.join(".git").exists())
        .or(ceiling)
        .unwrap_or(&context)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn spec(text: &str) -> Result<LoadedSpec, SpecError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".build-spec.ncl");
        std::fs::write(&path, text).unwrap();
        LoadedSpec::load(&path, dir.path(), Duration::from_secs(5))
    }

    fn choose(text: &str) -> Result<Option<String>, SpecError> {
        let ladder = Config::defaults().tiers.amd64;
        let s = spec(text)?;
        Ok(s.choose(Arch::Amd64, &ladder, None)?
            .map(|i| ladder[i].name.clone()))
    }

    #[test]
    fn tier_wins_outright() {
        assert_eq!(
            choose("{ tier = \"cx53\", memory_gb = 1 }")
                .unwrap()
                .unwrap(),
            "cx53"
        );
    }

    #[test]
    fn smallest_tier_satisfying_memory_cpus_and_disk() {
        assert_eq!(choose("{ memory_gb = 8 }").unwrap().unwrap(), "cx33");
        assert_eq!(choose("{ memory_gb = 8.5 }").unwrap().unwrap(), "cx43");
        assert_eq!(
            choose("{ memory_gb = 2, cpus = 8 }").unwrap().unwrap(),
            "cx43"
        );
        assert_eq!(choose("{ disk_gb = 100 }").unwrap().unwrap(), "cx43");
        assert_eq!(choose("{ cpus = 2 }").unwrap().unwrap(), "cx23");
    }

    #[test]
    fn a_spec_without_a_size_chooses_nothing() {
        assert_eq!(choose("{ arch = \"amd64\" }").unwrap(), None);
        assert_eq!(choose("{ timeout_minutes = 30 }").unwrap(), None);
    }

    #[test]
    fn a_request_no_tier_satisfies_is_an_error_not_a_clamp() {
        let err = choose("{ memory_gb = 64 }").unwrap_err().to_string();
        assert!(err.contains("no amd64 tier has 64 GB memory"), "{err}");
        assert!(err.contains("the largest, cx53, has 32 GB memory"), "{err}");
    }

    #[test]
    fn an_unknown_tier_lists_the_valid_ones() {
        let err = choose("{ tier = \"cx42\" }").unwrap_err().to_string();
        assert!(
            err.contains("\"cx42\" is not a server type of the amd64 ladder"),
            "{err}"
        );
        assert!(err.contains("cx23, cx33, cx43, cx53"), "{err}");
    }

    #[test]
    fn the_contract_rejects_what_sizing_md_rejects() {
        for (text, needle) in [
            ("{ memory_gb = 8, colour = 1 }", "colour"),
            ("{ memory_gb = \"8\" }", "expected a number"),
            ("{ memory_gb = 0 }", "between 0.5 and 512"),
            ("{ cpus = 2.5 }", "whole number"),
            ("{ arch = \"x86\" }", "\"amd64\", \"arm64\""),
            ("{}", "at least one"),
            ("{ memory_gb = ", "unexpected end of file"),
        ] {
            let err = spec(text).unwrap_err().to_string();
            assert!(err.contains(".build-spec.ncl:1:"), "{text}: {err}");
            assert!(err.contains(needle), "{text}: {err}");
            assert!(!err.contains('\n'), "{text}: {err}");
        }
    }

    #[test]
    fn repository_root_is_the_nearest_git_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("services/app");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        assert_eq!(
            repository_root(&sub, None),
            dir.path().canonicalize().unwrap()
        );
        let lone = tempfile::tempdir().unwrap();
        assert_eq!(
            repository_root(lone.path(), None),
            lone.path().canonicalize().unwrap()
        );
        // Held to a workspace below the `.git`: the workspace is the root, never above it.
        let workspace = dir.path().canonicalize().unwrap().join("services");
        assert_eq!(repository_root(&sub, Some(&workspace)), workspace);
        // A `.git` inside the workspace is still found.
        std::fs::create_dir(sub.join(".git")).unwrap();
        assert_eq!(
            repository_root(&sub, Some(&workspace)),
            sub.canonicalize().unwrap()
        );
    }
}
