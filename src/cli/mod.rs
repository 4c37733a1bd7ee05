//! The command line: one module per subcommand, each owning its arguments and its `run`.

mod args;
mod build;
mod check;
mod golden;
mod history;
mod history_list;
pub mod migrate;
pub mod pipeline;
mod plan;
pub mod plugin;
mod plugin_names;
mod provider;
mod reap;
mod secret_values;
mod settings;
mod simulate;
mod spec;
mod values;

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::exit::{Error, Exit};

pub use args::BuildArgs;
pub use plugin_names::in_settings_words;

const ABOUT: &str = "Container builds on throwaway, right-sized cloud servers.";

const LONG_ABOUT: &str = "\
Container builds on throwaway, right-sized cloud servers.

Each build gets its own server, sized from the repository's .build-spec.ncl, else from the peak \
memory of its recent builds (p95 × 1.2), else from a per-language default. `plan` shows that \
decision and the commands it leads to without touching any cloud.";

const AFTER_HELP: &str = "\
Exit codes: 0 success · 1 the build failed · 2 usage, settings, config or spec error · \
3 out of memory on the last allowed tier · 4 infrastructure failure · 5 cancelled · \
6 a runner could not be confirmed destroyed.

Examples:
  buildkit-launcher plan --context examples/hello
  sudo buildkit-launcher build --provider local --registry 127.0.0.1:5000 --insecure-registry
  buildkit-launcher plan --context . --json
  buildkit-launcher spec check .build-spec.ncl
  buildkit-launcher simulate --trace history.jsonl --margin 1.3";

/// `--version`: the crate's version, the commit and its date, the pinned BuildKit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BKL_COMMIT"),
    ", ",
    env!("BKL_COMMIT_DATE"),
    "; BuildKit ",
    env!("BKL_BUILDKIT_PIN"),
    " in the golden image)"
);

#[derive(Debug, Parser)]
#[command(name = "buildkit-launcher", version = VERSION, about = ABOUT, long_about = LONG_ABOUT,
          after_help = AFTER_HELP, arg_required_else_help = true)]
pub struct Cli {
    /// Launcher configuration (Nickel) overriding any part of the built-in defaults
    /// (schemas/launcher.ncl): tier ladders, prices, language defaults, sizing policy.
    #[arg(
        long,
        global = true,
        value_name = "FILE.ncl",
        env = "BUILDKIT_LAUNCHER_CONFIG"
    )]
    pub config: Option<PathBuf>,

    /// Proxy for the launcher's plain-HTTP requests, http://HOST:PORT (default: http_proxy,
    /// else all_proxy, as curl reads them). Never used by the build on the runner.
    #[arg(long, global = true, value_name = "URL", help_heading = "Proxy")]
    pub http_proxy: Option<String>,

    /// Proxy for HTTPS requests (API, registry) and for SSH to the runner (a CONNECT tunnel),
    /// http://HOST:PORT (default: https_proxy, HTTPS_PROXY, else all_proxy). Credentials are
    /// better given in the variable: an argument is visible to other users.
    #[arg(long, global = true, value_name = "URL", help_heading = "Proxy")]
    pub https_proxy: Option<String>,

    /// Hosts, domains (.example.com), IP addresses and networks (10.0.0.0/8) reached without
    /// the proxy, comma-separated; * for all (default: no_proxy, NO_PROXY).
    #[arg(long, global = true, value_name = "HOSTS", help_heading = "Proxy")]
    pub no_proxy: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a build would do — size and why, server type, retry type, cost, commands —
    /// without touching any cloud.
    Plan(Box<plan::PlanArgs>),
    /// Build and push an image on a throwaway runner sized by the plan, retry once on the
    /// next size if it runs out of memory, and always destroy the runner.
    Build(Box<build::BuildCommandArgs>),
    /// Look for what would make builds fail: token, budget, server types, golden snapshots,
    /// expired runners, registry, history store. Non-zero exit on high or critical findings.
    Check(Box<check::CheckArgs>),
    /// Look at the build history that sizes builds.
    #[command(subcommand)]
    History(history::HistoryCommand),
    /// Delete runners whose lease has expired (their launcher was killed), and nothing else.
    Reap(Box<reap::ReapArgs>),
    /// Replay a history file through the sizing rule and compare its cost with the oracle
    /// and a fixed-size baseline.
    Simulate(simulate::SimulateArgs),
    /// Work with .build-spec.ncl files.
    #[command(subcommand)]
    Spec(spec::SpecCommand),
    /// Bake, list and prune the golden snapshots runners boot from (Hetzner Cloud).
    #[command(subcommand, name = "golden-image")]
    GoldenImage(golden::GoldenCommand),
    /// Print a shell completion script: `buildkit-launcher completions bash >
    /// /etc/bash_completion.d/buildkit-launcher` (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `buildkit-launcher man > buildkit-launcher.1; man
    /// ./buildkit-launcher.1`.
    Man,
}

/// Run the parsed command; the caller maps the error to its exit code.
pub fn run(cli: Cli) -> Result<Exit, Error> {
    use clap::CommandFactory;
    // Made from the same definitions as the parser, before any config or policy is read.
    match &cli.command {
        Command::Completions { shell } => {
            use clap_complete::Generator;
            let mut cmd = Cli::command();
            cmd.set_bin_name("buildkit-launcher");
            cmd.build();
            // try_generate: a closed stdout (`| head -1`) is an output error, not a panic.
            shell
                .try_generate(&cmd, &mut std::io::stdout())
                .map_err(Error::Output)?;
            return Ok(Exit::Success);
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(Error::Output)?;
            return Ok(Exit::Success);
        }
        _ => {}
    }
    // The proxies every HTTP client and SSH connection use, fixed before any of them exists.
    let given = crate::proxy::Given {
        http: cli.http_proxy.clone(),
        https: cli.https_proxy.clone(),
        no_proxy: cli.no_proxy.clone(),
    };
    let proxies = crate::proxy::resolve(&given, &|name| crate::environment::var(name), &|flag| {
        crate::exit::option(flag)
    })
    .map_err(Error::Usage)?;
    crate::proxy::set(proxies);
    let mut config = Config::load(cli.config.as_deref())?;
    // Whatever the config says, no tier above the operator's ceiling is ever chosen.
    crate::policy::Policy::current()?.cap(&mut config)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let exit = match cli.command {
        Command::Plan(args) => plan::run(*args, &config, &mut out),
        Command::Build(args) => build::run(*args, &config, &mut out),
        Command::Reap(args) => reap::run(*args, &config, &mut out),
        Command::Check(args) => check::run(*args, &config, &mut out),
        Command::History(cmd) => history::run(cmd, &config, &mut out),
        Command::GoldenImage(cmd) => golden::run(cmd, &config, &mut out),
        Command::Simulate(args) => simulate::run(args, &config, &mut out),
        Command::Spec(cmd) => spec::run(cmd, &config, &mut out),
        Command::Completions { .. } | Command::Man => Ok(Exit::Success),
    }?;
    out.flush().map_err(Error::Output)?;
    Ok(exit)
}

/// The sandboxed evaluator's side of `__eval-ncl` (see [`crate::ncl::sandbox`]): the contracts
/// it may evaluate against are the launcher's own.
pub fn eval_child(args: &[std::ffi::OsString]) -> i32 {
    crate::ncl::sandbox::child_main(
        args,
        &[
            crate::sizing::spec::BUILD_SPEC_CONTRACT,
            crate::config::LAUNCHER_CONTRACT,
            crate::policy::POLICY_CONTRACT,
        ],
    )
}

/// Plugin settings as the environment holds them, for tests.
#[cfg(test)]
pub(crate) fn settings_env(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The async runtime for commands that talk to runners or clouds.
fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Infrastructure(format!("cannot start the async runtime: {e}")))
}

/// SIGINT and SIGTERM cancel the work; whatever it created is destroyed before the process
/// exits. `stopping` says what that means, e.g. "the build and destroying the runner".
fn watch_signals(cancel: tokio_util::sync::CancellationToken, stopping: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        crate::text::to_stderr(&format!(
            "buildkit-launcher: {name} received; stopping {stopping}"
        ));
        cancel.cancel();
    });
}

/// Warnings go to stderr, one line each (control bytes escaped, known secrets masked), and
/// never stop the command.
pub fn warn(message: &str) {
    crate::text::to_stderr(&format!("warning: {}", printable(message)));
}

/// A line for the terminal or the CI log: control bytes escaped, every secret value the
/// launcher holds masked.
pub use crate::policy::printable;

/// The log of a command: each line prefixed `buildkit-launcher: ` and [`printable`].
pub fn logger() -> std::sync::Arc<dyn Fn(&str) + Send + Sync> {
    std::sync::Arc::new(|line: &str| {
        crate::text::to_stderr(&format!("buildkit-launcher: {}", printable(line)))
    })
}
