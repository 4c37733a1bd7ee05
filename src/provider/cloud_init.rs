//! The cloud-init user data a runner boots with: the per-build keys and nothing else.
//!
//! It uses cloud-init's standard fields (`ssh_authorized_keys`, `ssh_keys` with
//! `ed25519_private`/`ed25519_public`, `disable_root: false`), so a Hetzner server from the
//! golden snapshot and a local sandbox runner read the very same document; the local provider
//! parses it with [`UserData::parse`] the way cloud-init would.

use serde::{Deserialize, Serialize};

use super::keys::BuildKeys;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserData {
    pub disable_root: bool,
    pub ssh_pwauth: bool,
    pub ssh_deletekeys: bool,
    pub ssh_authorized_keys: Vec<String>,
    pub ssh_keys: SshKeys,
    /// cloud-init's `chpasswd: {expire: true}`: the root password must be changed at the
    /// first login. Never set by the launcher; it describes what Hetzner does to a server
    /// created without `ssh_keys`, so that a sandbox runner can behave the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chpasswd: Option<Chpasswd>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chpasswd {
    #[serde(default)]
    pub expire: bool,
}

impl UserData {
    /// The root password is expired: Debian's sshd (PAM) then refuses every session without
    /// a terminal, after authentication ("Password change required but no TTY available").
    pub fn password_expired(&self) -> bool {
        self.chpasswd.as_ref().is_some_and(|c| c.expire)
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SshKeys {
    pub ed25519_private: String,
    pub ed25519_public: String,
}

impl std::fmt::Debug for SshKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshKeys")
            .field("ed25519_public", &self.ed25519_public)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the runner's user data is not valid cloud-config: {0}")]
pub struct UserDataError(String);

impl UserData {
    pub fn for_build(keys: &BuildKeys) -> UserData {
        UserData {
            disable_root: false,
            ssh_pwauth: false,
            ssh_deletekeys: true,
            ssh_authorized_keys: vec![keys.client.public_openssh.clone()],
            ssh_keys: SshKeys {
                ed25519_private: keys.host.private_openssh.to_string(),
                ed25519_public: keys.host.public_openssh.clone(),
            },
            chpasswd: None,
        }
    }

    /// The document as sent: `#cloud-config` and YAML.
    pub fn render(&self) -> String {
        let yaml = serde_yaml_ng::to_string(self).expect("user data always serializes");
        format!("#cloud-config\n{yaml}")
    }

    pub fn parse(text: &str) -> Result<UserData, UserDataError> {
        if !text.starts_with("#cloud-config") {
            return Err(UserDataError("it does not start with #cloud-config".into()));
        }
        serde_yaml_ng::from_str(text).map_err(|e| UserDataError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_standard_cloud_config_and_parses_back() {
        let keys = BuildKeys::generate("l1").unwrap();
        let text = UserData::for_build(&keys).render();
        assert!(text.starts_with("#cloud-config\n"));
        assert!(text.contains("disable_root: false"));
        assert!(text.contains("ssh_authorized_keys:"));
        assert!(text.contains("ed25519_private:"));
        let back = UserData::parse(&text).unwrap();
        assert_eq!(back.ssh_authorized_keys.len(), 1);
        assert_eq!(back.ssh_authorized_keys[0], keys.client.public_openssh);
        assert_eq!(back.ssh_keys.ed25519_private, *keys.host.private_openssh);
        assert!(UserData::parse("disable_root: false").is_err());
        assert!(!back.password_expired());
        assert!(!text.contains("chpasswd"));
    }
}
