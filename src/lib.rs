//! buildkit-launcher: container builds on throwaway, right-sized cloud servers.
//!
//! The stages, in the order a build meets them: [`config`] and [`sizing`] decide, [`plan`]
//! holds the decision, [`backend`] turns it into the build command, [`history`] remembers what
//! builds needed. [`simulate`] replays history through the sizing rule. [`cli`] parses and
//! dispatches; [`exit`] maps every error to its documented exit code.

// Printing goes through text::to_stderr/to_stdout: `eprintln!` panics when the log is closed.
#![deny(clippy::print_stderr, clippy::print_stdout)]
pub mod backend;
pub mod check;
pub mod cli;
pub mod config;
pub mod environment;
pub mod exit;
pub mod golden;
pub mod history;
pub mod ncl;
pub mod plan;
pub mod policy;
pub mod provider;
pub mod proxy;
pub mod reap;
pub mod registry;
pub mod retry;
pub mod run;
pub mod runner;
pub mod simulate;
pub mod sizing;
pub mod text;
pub mod transport;

/// A warning line on stderr, printed once per process whatever the number of callers.
pub fn warn_once(message: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.iter().any(|m| m == message) {
        text::to_stderr(&format!("warning: {message}"));
        seen.push(message.to_owned());
    }
}
