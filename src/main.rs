use std::ffi::OsString;
use std::process::ExitCode;

use buildkit_launcher::cli::{self, Cli, plugin};
use buildkit_launcher::{environment, ncl};
use clap::Parser;
use clap::error::ErrorKind;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // The sandboxed Nickel evaluator (ncl::sandbox): a child of this binary, nothing else runs.
    if args.get(1).is_some_and(|a| a == ncl::sandbox::SUBCOMMAND) {
        return ExitCode::from(cli::eval_child(&args[2..]) as u8);
    }
    // Untrusted Nickel files are evaluated by a child of this very binary.
    ncl::sandbox::enable("/proc/self/exe".into());
    let env = environment::with_prefixes(&["PLUGIN_", "CI_"]);
    // A plugin's build_secrets live in the launcher's memory only, beside the environment.
    let build_secrets = if plugin::detected(&args, &env) {
        match plugin::build_secrets(&env) {
            Ok(secrets) => secrets,
            Err(message) => {
                eprintln!(
                    "error: {}",
                    buildkit_launcher::exit::escape_controls(&message)
                );
                return ExitCode::from(2);
            }
        }
    } else {
        Vec::new()
    };
    environment::snapshot_with(build_secrets);
    // Woodpecker runs the plugin with no arguments: its settings become a `build` command line.
    let args = if plugin::detected(&args, &env) {
        buildkit_launcher::exit::set_plugin_mode();
        let policy = match buildkit_launcher::policy::Policy::current() {
            Ok(policy) => policy,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        match plugin::argv(&env, policy) {
            Ok(argv) => argv,
            Err(message) => {
                eprintln!(
                    "error: {}",
                    buildkit_launcher::exit::escape_controls(&message)
                );
                return ExitCode::from(2);
            }
        }
    } else {
        args
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // SAFETY: still single-threaded: no runtime, no helper thread has started yet.
    unsafe { environment::scrub() };
    match cli::run(cli) {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(error) => {
            eprintln!("error: {}", cli::printable(&error.one_line()));
            ExitCode::from(error.exit() as u8)
        }
    }
}

/// `--help` and `--version` print as clap makes them; a bad command line is one line (clap's
/// own first line, which names the flag and the value) and exit 2.
fn usage_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            let text = e.render().to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: bad arguments");
            eprintln!("{line}");
            ExitCode::from(2)
        }
    }
}
