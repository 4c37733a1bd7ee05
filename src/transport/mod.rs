//! Talking to a runner: the SSH session, syncing the build context, running remote commands.

pub mod context_guard;
pub mod dockerignore;
pub mod session;
mod ssh_config;
