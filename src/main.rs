use std::process::ExitCode;

use buildkit_launcher::cli::{self, Cli};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::run(cli) {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(error) => {
            eprintln!("error: {}", error.one_line());
            ExitCode::from(error.exit() as u8)
        }
    }
}
