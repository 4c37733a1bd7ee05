//! Exit codes (the contract scripts rely on; each has one line in the README) and the one
//! mapping from an error to its code.

use crate::config::ConfigError;
use crate::history::HistoryError;
use crate::plan::PlanError;
use crate::sizing::{SizingError, SpecError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    /// The build itself failed (Dockerfile or RUN error).
    BuildFailed = 1,
    /// Usage, settings, config or spec error.
    Usage = 2,
    /// Out of memory on the last allowed tier.
    OutOfMemory = 3,
    /// Cloud API, SSH, registry, runner lost.
    Infrastructure = 4,
    /// SIGINT or SIGTERM.
    Cancelled = 5,
    /// A runner could not be confirmed destroyed (it is labelled; `reap` will find it).
    NotDestroyed = 6,
}

/// Any error that ends a command, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Sizing(#[from] SizingError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// A setting that is wrong in a way argument parsing could not see.
    #[error("{0}")]
    Usage(String),
    /// Cloud API, SSH, registry: something outside failed.
    #[error("{0}")]
    Infrastructure(String),
    #[error("cannot write to standard output: {0}")]
    Output(#[source] std::io::Error),
}

impl Error {
    pub fn exit(&self) -> Exit {
        match self {
            Error::History(HistoryError::Io { .. }) => Exit::Infrastructure,
            Error::Plan(PlanError::History(HistoryError::Io { .. })) => Exit::Infrastructure,
            Error::Output(_) | Error::Infrastructure(_) => Exit::Infrastructure,
            Error::Config(_)
            | Error::Spec(_)
            | Error::Sizing(_)
            | Error::Plan(_)
            | Error::History(_)
            | Error::Policy(_)
            | Error::Usage(_) => Exit::Usage,
        }
    }

    /// The message as one line, whatever the sources contained, with control bytes escaped
    /// (a value a pipeline wrote may hold terminal escape sequences).
    pub fn one_line(&self) -> String {
        escape_controls(
            &self
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        )
    }
}

pub use crate::text::{escape_controls, quote};

static PLUGIN_MODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// This process runs as a Woodpecker plugin: messages name settings, not flags.
pub fn set_plugin_mode() {
    PLUGIN_MODE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Does this process run as a Woodpecker plugin?
pub fn plugin_mode() -> bool {
    PLUGIN_MODE.load(std::sync::atomic::Ordering::Relaxed)
}

/// In plugin mode, the setting each flag came from as the pipeline's YAML spelled it
/// (`build-arg` ← `build_args`), set once the settings became a command line.
static WRITTEN: std::sync::OnceLock<std::collections::BTreeMap<String, String>> =
    std::sync::OnceLock::new();

/// Remember which setting became which flag (long name without dashes → setting).
pub fn remember_settings(flag_to_setting: std::collections::BTreeMap<String, String>) {
    let _ = WRITTEN.set(flag_to_setting);
}

/// The setting the flag `long` (`tag`) came from, as the pipeline wrote it (`tags`).
pub fn written_setting(long: &str) -> Option<&'static str> {
    WRITTEN.get()?.get(long).map(String::as_str)
}

/// How the user wrote the option `--repo`: the setting as the pipeline's YAML spelled it in
/// plugin mode (`tags` for `--tag` when the pipeline wrote `tags`), `--repo` at a terminal.
pub fn option(flag: &str) -> String {
    if plugin_mode() {
        let long = flag.trim_start_matches('-');
        written_setting(long).map_or_else(|| long.replace('-', "_"), str::to_owned)
    } else {
        flag.to_owned()
    }
}
