//! buildkit-launcher: container builds on throwaway, right-sized cloud servers.
//!
//! The stages, in the order a build meets them: [`config`] and [`sizing`] decide, [`plan`]
//! holds the decision, [`backend`] turns it into the build command, [`history`] remembers what
//! builds needed. [`simulate`] replays history through the sizing rule. [`cli`] parses and
//! dispatches; [`exit`] maps every error to its documented exit code.

pub mod backend;
pub mod check;
pub mod cli;
pub mod config;
pub mod exit;
pub mod golden;
pub mod history;
pub mod ncl;
pub mod plan;
pub mod provider;
pub mod reap;
pub mod registry;
pub mod retry;
pub mod run;
pub mod simulate;
pub mod sizing;
pub mod transport;
