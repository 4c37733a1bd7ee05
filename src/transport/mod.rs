//! Talking to a runner: the SSH session, syncing the build context, running remote commands.

pub mod dockerignore;
pub mod session;
mod ssh_config;
