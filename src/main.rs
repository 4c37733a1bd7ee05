use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::ExitCode;

use buildkit_launcher::cli::{self, Cli, plugin};
use clap::Parser;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("PLUGIN_") || k.starts_with("CI_"))
        .collect();
    // Woodpecker runs the plugin with no arguments: its settings become a `build` command line.
    let args = if plugin::detected(&args, &env) {
        match plugin::argv(&env) {
            Ok(argv) => argv,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(2);
            }
        }
    } else {
        args
    };
    let cli = Cli::parse_from(args);
    match cli::run(cli) {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(error) => {
            eprintln!("error: {}", error.one_line());
            ExitCode::from(error.exit() as u8)
        }
    }
}
