//! A runner as both the provider and the transport see it: where it is reached, and how long to
//! keep trying while it boots. It sits below both, so that neither imports the other.

use std::time::Duration;

use serde::Serialize;

/// A runner that is up: where to reach it (the host key it must present travels separately).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Runner {
    pub id: String,
    pub host: String,
    pub port: u16,
    /// Directory on the runner for the context, secrets and metadata.
    pub workdir: String,
    /// Home directory of the login user (registry credentials go to `~/.docker`).
    pub home: String,
}

/// Bounds for connecting while a runner boots; each provider knows its own boot times.
#[derive(Debug, Clone, Copy)]
pub struct ConnectPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for ConnectPolicy {
    fn default() -> Self {
        ConnectPolicy {
            attempts: 40,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
        }
    }
}
