// Printing goes through text::to_stderr/to_stdout: `eprintln!` panics when the log is closed.
#![deny(clippy::print_stderr, clippy::print_stdout)]

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
    // ssh's ProxyCommand (proxy::tunnel): a pipe through the proxy, nothing else runs.
    if args
        .get(1)
        .is_some_and(|a| a == buildkit_launcher::proxy::tunnel::SUBCOMMAND)
    {
        return ExitCode::from(buildkit_launcher::proxy::tunnel::main(&args[2..]) as u8);
    }
    // The launcher's memory and its initial environment (the token, the registry password:
    // /proc/PID/environ keeps the strings the process started with, whatever is unset later)
    // are not for other processes of its user: no ptrace, no /proc/PID/environ or /mem
    // without CAP_SYS_PTRACE, no core dump. A child gets its own (exec resets it).
    environment::forbid_inspection();
    // Untrusted Nickel files are evaluated by a child of this very binary.
    ncl::sandbox::enable("/proc/self/exe".into());
    let env = environment::with_prefixes(&["PLUGIN_", "CI_"]);
    // A plugin's build_secrets live in the launcher's memory only, beside the environment.
    let build_secrets = if plugin::detected(&args, &env) {
        match plugin::build_secrets(&env) {
            Ok(secrets) => secrets,
            Err(message) => {
                buildkit_launcher::text::to_stderr(&format!("error: {}", cli::printable(&message)));
                return ExitCode::from(2);
            }
        }
    } else {
        Vec::new()
    };
    environment::snapshot_with(build_secrets);
    // Woodpecker runs the plugin with no arguments: its settings become a `build` command line.
    let plugin_mode = plugin::detected(&args, &env);
    let args = if plugin_mode {
        buildkit_launcher::exit::set_plugin_mode();
        let policy = match buildkit_launcher::policy::Policy::current() {
            Ok(policy) => policy,
            Err(e) => {
                buildkit_launcher::text::to_stderr(&format!(
                    "error: {}",
                    cli::printable(&e.to_string())
                ));
                return ExitCode::from(2);
            }
        };
        match plugin::argv(&env, policy) {
            Ok(argv) => argv,
            Err(message) => {
                buildkit_launcher::text::to_stderr(&format!("error: {}", cli::printable(&message)));
                return ExitCode::from(2);
            }
        }
    } else {
        args
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e, plugin_mode),
    };
    // SAFETY: still single-threaded: no runtime, no helper thread has started yet.
    unsafe { environment::scrub() };
    match cli::run(cli) {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(error) => {
            buildkit_launcher::text::to_stderr(&format!(
                "error: {}",
                cli::printable(&error.one_line())
            ));
            ExitCode::from(error.exit() as u8)
        }
    }
}

/// `--help` and `--version` print as clap makes them. A bad command line is clap's own message
/// (the error line, its tips, the possible values, the missing arguments) without the usage
/// block, and exit 2; in plugin mode in the settings' words, since the user wrote settings.
fn usage_error(e: clap::Error, plugin: bool) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            let mut text = without_usage(&e.render().to_string());
            if plugin {
                text = cli::in_settings_words(&text).replace(
                    "For more information, try '--help'.",
                    "docs.md lists the settings.",
                );
            }
            // Masked: a setting's value (a secret passed through the wrong setting) may be
            // quoted by clap; every line's control bytes escaped.
            let text: Vec<String> = text.trim_end().lines().map(cli::printable).collect();
            buildkit_launcher::text::to_stderr(&text.join("\n"));
            ExitCode::from(2)
        }
    }
}

/// clap's rendered error without its `Usage:` block and its pointer to `--help`, blank lines
/// collapsed: a plain error is one line, its tips and possible values follow.
fn without_usage(text: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut in_usage = false;
    for line in text.lines() {
        // `--help` is where it always is; an error alone stays one line.
        if line.starts_with("For more information, try") {
            continue;
        }
        if line.starts_with("Usage:") {
            in_usage = true;
            continue;
        }
        if in_usage {
            if line.trim().is_empty() {
                in_usage = false;
            }
            continue;
        }
        if line.trim().is_empty() && out.last().is_none_or(|l| l.trim().is_empty()) {
            continue;
        }
        out.push(line);
    }
    out.join("\n")
}
