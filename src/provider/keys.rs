//! Per-build SSH keys: a client key the launcher logs in with and a host key the runner serves.
//!
//! Both are ed25519, generated fresh for every build and handed to the runner through its
//! cloud-init user data, so the launcher can connect with strict host key checking against
//! exactly that host key: no long-lived keys, no trust on first use.

use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey};
use zeroize::Zeroizing;

/// One key pair in OpenSSH formats.
pub struct KeyPair {
    /// `-----BEGIN OPENSSH PRIVATE KEY-----…`, wiped from memory on drop.
    pub private_openssh: Zeroizing<String>,
    /// `ssh-ed25519 AAAA… comment`
    pub public_openssh: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_openssh", &self.public_openssh)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct BuildKeys {
    pub client: KeyPair,
    pub host: KeyPair,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot generate an SSH key: {0}")]
pub struct KeyError(String);

impl KeyPair {
    pub fn generate(comment: &str) -> Result<KeyPair, KeyError> {
        let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .map_err(|e| KeyError(e.to_string()))?;
        key.set_comment(comment);
        let private_openssh = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| KeyError(e.to_string()))?;
        let public_openssh = key
            .public_key()
            .to_openssh()
            .map_err(|e| KeyError(e.to_string()))?;
        Ok(KeyPair {
            private_openssh,
            public_openssh,
        })
    }
}

impl BuildKeys {
    pub fn generate(lease: &str) -> Result<BuildKeys, KeyError> {
        Ok(BuildKeys {
            client: KeyPair::generate(&format!("buildkit-launcher client {lease}"))?,
            host: KeyPair::generate(&format!("buildkit-launcher host {lease}"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_ed25519_pairs_in_openssh_format() {
        let a = BuildKeys::generate("abc").unwrap();
        let b = BuildKeys::generate("abc").unwrap();
        assert!(a.client.public_openssh.starts_with("ssh-ed25519 "));
        assert!(
            a.host
                .private_openssh
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
        );
        assert_ne!(a.client.public_openssh, b.client.public_openssh);
        assert_ne!(a.client.public_openssh, a.host.public_openssh);
        assert!(
            !format!("{a:?}").contains("PRIVATE"),
            "Debug never shows a private key"
        );
    }
}
