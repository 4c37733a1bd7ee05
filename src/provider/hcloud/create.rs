//! `POST /servers` as Hetzner really answers it.
//!
//! - **Never without an SSH key.** Every create names the project key [`PROJECT_KEY`]: without
//!   one Hetzner sets an expired root password, e-mails it to the project owner, and Debian's
//!   sshd (PAM) then refuses every non-interactive session. The key is registered once per
//!   project (a throwaway public key whose private half is never kept: the per-build key in
//!   the cloud-init user data is what the launcher logs in with) and reused by name, so the
//!   happy path costs no extra request. It is looked up (and registered when missing) only
//!   when a create is refused with a 4xx that can mean a missing key (`not_found`, or an
//!   `invalid_input` naming `ssh_keys`), and the create is then tried once more, whoever
//!   registered the key (eight first builds of a project at once race to register it).
//! - **Per location, then per type.** Only locations that sell the type are tried;
//!   `resource_unavailable`, `placement_error` and 400 `invalid_input` "unsupported location for
//!   server type" move on to the next one. A type refused so in every location moves on to the
//!   rung's next candidate (`candidates.rs`), and the log says why: "cx33 sold out in fsn1
//!   (resource_unavailable), …: cpx32, 8 GB, 4 vCPUs, 0.0240 EUR/h".
//! - **Never lost.** After a 5xx, `timeout` or a transport failure the server may exist: it is
//!   looked up by its unique name before the create is repeated, and a `uniqueness_error` on
//!   a repeat means the first one made it (found by name, and used). When the outcome stays
//!   unknown (a `uniqueness_error` while the lookup finds nothing yet, a 2xx whose body does not
//!   decode, the repeats spent), the error is [`ProviderError::Unconfirmed`]: the name stays
//!   registered, so the destroy looks for it again and `reap` finds it by its labels.
//! - **Leases in the API's time.** The `expires` label is the API's now (from the `Date` of its
//!   earlier answers) plus the lease, so agents whose clocks differ agree on it.
//! - **Quota.** 403 `resource_limit_exceeded` (the project's server or IP limit: too many
//!   builds at once) waits for a slot with bounded backoff, then fails naming the quota.

use reqwest::Method;

use super::{
    ApiError, HcloudProvider, ProviderError, Retry, RunnerSpec, address, api, encode, setup,
};
use crate::provider::keys::KeyPair;
use crate::provider::{LABEL_EXPIRES, LABEL_MANAGED_BY, MANAGED_BY, unix_now};

/// The name of the one SSH key the launcher registers in a project and names on every create.
pub const PROJECT_KEY: &str = "buildkit-launcher";

/// Tries when the project's quota is reached: about 5 minutes with the default policy
/// (1, 2, 4 … 60 s), a few seconds with a test's fast one.
const QUOTA_TRIES: u32 = 10;

/// A created (or found) server.
pub(super) struct Created {
    pub server: api::Server,
    /// The create action and its `next_actions` (empty when the server was found by name).
    pub actions: Vec<i64>,
}

impl HcloudProvider {
    pub(super) async fn create_server(&self, spec: &RunnerSpec) -> Result<String, ProviderError> {
        let (image, disk) = self.golden_image(spec.arch).await?;
        // A snapshot boots only types with at least its disk: that is part of the need.
        let candidates = self
            .candidates(spec.arch, &super::bootable(&spec.tier, disk))
            .await;
        let mut attempt = Attempt {
            key_checked: false,
            quota_waits: 0,
        };
        // The lease as the API's clock counts (this agent's may be off).
        let mut labels = spec.labels.clone();
        labels.insert(
            LABEL_EXPIRES.to_owned(),
            (self.api.now() + spec.lease.expires.saturating_sub(unix_now())).to_string(),
        );
        // "cx33 sold out in fsn1, nbg1, hel1", one per candidate tried in vain.
        let mut sold_out: Vec<String> = Vec::new();
        if candidates.first().is_some_and(|c| c.name != spec.tier.name) {
            sold_out.push(format!(
                "{} is not a candidate (not sold in a configured location, above the ceiling, or too small a disk for the golden snapshot)",
                spec.tier.name
            ));
        }
        for candidate in &candidates {
            if !sold_out.is_empty() {
                (self.log)(&format!(
                    "{}: trying {}",
                    sold_out.join("; "),
                    candidate.describe()
                ));
            }
            let body = |location: &str| {
                serde_json::json!({
                    "name": spec.name,
                    "server_type": candidate.name,
                    "image": image.to_string(),
                    "location": location,
                    "user_data": spec.user_data,
                    "labels": labels,
                    "ssh_keys": [PROJECT_KEY],
                    "start_after_create": true,
                    // A primary IPv4 is billed per started hour; IPv6 is free (Hetzner,
                    // "Primary IPs"). At least one of them must be enabled.
                    "public_net": { "enable_ipv4": self.ipv4, "enable_ipv6": true },
                })
            };
            match self
                .create_in_locations(
                    &spec.name,
                    &candidate.name,
                    &candidate.locations,
                    &body,
                    &mut attempt,
                )
                .await?
            {
                Ok(id) => {
                    if !sold_out.is_empty() {
                        let why = sold_out.join("; ");
                        (self.log)(&format!("{why}: {}", candidate.describe()));
                        self.substitutes.lock().expect("substitutes lock").insert(
                            id.clone(),
                            crate::provider::Substitute {
                                server_type: candidate.name.clone(),
                                why,
                                price_eur_per_hour: candidate.price,
                            },
                        );
                    }
                    return Ok(id);
                }
                Err(refused) => sold_out.push(format!(
                    "{} sold out in {}",
                    candidate.name,
                    refused.join(", ")
                )),
            }
        }
        Err(ProviderError::Setup {
            action: "create a server",
            detail: format!(
                "every server type that fits {} ({} vCPUs, {} GB) is sold out: {}; nothing was created",
                spec.tier.name,
                spec.tier.vcpus,
                spec.tier.memory_mib as f64 / 1024.0,
                sold_out.join("; ")
            ),
        })
    }

    /// One server type, tried in each of `locations` in turn. `Ok(Err(refusals))` when every
    /// location refused it for capacity or as not sold there ("fsn1 (resource_unavailable)").
    async fn create_in_locations(
        &self,
        name: &str,
        server_type: &str,
        locations: &[String],
        body: &(dyn Fn(&str) -> serde_json::Value + Sync),
        attempt: &mut Attempt,
    ) -> Result<Result<String, Vec<String>>, ProviderError> {
        let mut refused = Vec::new();
        let mut next = 0;
        while let Some(location) = locations.get(next) {
            let e = match self.create_once(name, &body(location)).await {
                Err(Unknown(e)) => {
                    return Err(ProviderError::Unconfirmed {
                        name: name.to_owned(),
                        action: "create a server",
                        detail: e.to_string(),
                    });
                }
                Err(Refused(e)) => e,
                Ok(created) => {
                    let id = created.server.id.to_string();
                    let host = address(&created.server.public_net);
                    self.pending
                        .lock()
                        .expect("pending lock")
                        .insert(id.clone(), (created.actions, host));
                    (self.log)(&format!(
                        "server {id} ({server_type}, {location}) is being created"
                    ));
                    return Ok(Ok(id));
                }
            };
            let code = e.code().unwrap_or_default().to_owned();
            if matches!(code.as_str(), "resource_unavailable" | "placement_error") {
                (self.log)(&format!(
                    "no capacity for {server_type} in {location} ({code}); trying the next location"
                ));
                refused.push(format!("{location} ({code})"));
                next += 1;
            } else if is_unsupported_location(&e) {
                (self.log)(&format!(
                    "{server_type} is not sold in {location}; trying the next location"
                ));
                refused.push(format!("{location} (not sold there)"));
                next += 1;
            } else if code == "resource_limit_exceeded" {
                attempt.quota_waits += 1;
                let waits = attempt.quota_waits;
                if waits >= QUOTA_TRIES {
                    return Err(ProviderError::Setup {
                        action: "create a server",
                        detail: format!(
                            "the project's quota is reached ({}) and no slot freed up in {waits} tries; raise the server limit in the Hetzner Cloud console or run fewer builds at once",
                            e.message()
                        ),
                    });
                }
                let delay = self.api.policy().delay_random(waits);
                (self.log)(&format!(
                    "the project's quota is reached ({}); waiting {:.1} s for a slot ({waits}/{})",
                    e.message(),
                    delay.as_secs_f64(),
                    QUOTA_TRIES - 1
                ));
                tokio::time::sleep(delay).await;
            } else if !attempt.key_checked && may_be_missing_key(&e) {
                // The refusal may be about the project key (deleted, or never registered):
                // make sure it exists, then try once more, whoever registered it (another
                // launcher may have done so meanwhile).
                attempt.key_checked = true;
                self.ensure_project_key()
                    .await
                    .map_err(|e| setup("register the project SSH key", e))?;
            } else {
                return Err(setup("create a server", e));
            }
        }
        if refused.is_empty() {
            refused.push("no configured location".to_owned());
        }
        Ok(Err(refused))
    }

    /// One create that cannot be lost: repeated only when certainly refused, or after the
    /// server was looked up by name and is not there. `Unknown`: it may exist all the same.
    async fn create_once(
        &self,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<Created, CreateError> {
        let mut repeats = 0u32;
        let found = |server: api::Server| Created {
            server,
            actions: Vec::new(),
        };
        loop {
            let result = self
                .api
                .call::<api::CreateServerResponse>(
                    Method::POST,
                    "/servers",
                    Some(body),
                    Retry::IfRefused,
                )
                .await;
            match result {
                Ok(resp) => {
                    let mut actions = vec![resp.action.id];
                    actions.extend(resp.next_actions.iter().map(|a| a.id));
                    return Ok(Created {
                        server: resp.server,
                        actions,
                    });
                }
                // A 2xx whose body does not decode: the server was made; find it by name.
                Err(e @ ApiError::Decode { .. }) => {
                    (self.log)(&format!(
                        "{e}; the server was made: looking for {name} by name"
                    ));
                    return match self.find_by_name(name).await {
                        Ok(Some(server)) => Ok(found(server)),
                        Ok(None) | Err(_) => Err(Unknown(e)),
                    };
                }
                Err(e) if e.is_ambiguous() => {
                    (self.log)(&format!(
                        "{e}; the server may exist: looking for {name} before creating again"
                    ));
                    match self.find_by_name(name).await {
                        Ok(Some(server)) => {
                            (self.log)(&format!("server {} ({name}) exists: using it", server.id));
                            return Ok(found(server));
                        }
                        Ok(None) => {}
                        Err(_) => return Err(Unknown(e)),
                    }
                    repeats += 1;
                    if !self.api.policy().allows_another(repeats) {
                        return Err(Unknown(e));
                    }
                    tokio::time::sleep(self.api.policy().delay_random(repeats)).await;
                }
                Err(e) if repeats > 0 && e.code() == Some("uniqueness_error") => {
                    // An earlier try made it after all (it was not yet listed when looked for).
                    return match self.find_by_name(name).await {
                        Ok(Some(server)) => Ok(found(server)),
                        Ok(None) | Err(_) => Err(Unknown(e)),
                    };
                }
                Err(e) => return Err(Refused(e)),
            }
        }
    }

    /// The server called `name`, if it exists (names are unique per project).
    pub async fn find_by_name(&self, name: &str) -> Result<Option<api::Server>, ApiError> {
        let page: api::ServersPage = self
            .api
            .call(
                Method::GET,
                &format!("/servers?name={}", encode(name)),
                None,
                Retry::Always,
            )
            .await?;
        Ok(page
            .servers
            .into_iter()
            .find(|s| s.name == name || s.name.is_empty()))
    }

    /// Make sure the project key exists; true when it had to be registered now (so a create
    /// refused for its lack is worth repeating). Another launcher registering it at the same
    /// moment (`uniqueness_error`) is as good.
    pub async fn ensure_project_key(&self) -> Result<bool, ApiError> {
        if self.find_project_key().await?.is_some() {
            return Ok(false);
        }
        self.register_project_key().await?;
        Ok(true)
    }

    /// Prove the token may write, harmlessly (for `check`): register the project key when it is
    /// missing (builds need it anyway), else `PUT` its own `managed-by` label back onto it. A
    /// read-only token is refused with 403 `token_readonly`. Returns what was written.
    pub async fn probe_write(&self) -> Result<&'static str, ApiError> {
        match self.find_project_key().await? {
            None => {
                self.register_project_key().await?;
                Ok("registered the project SSH key")
            }
            Some(key) => {
                let body = serde_json::json!({ "labels": { LABEL_MANAGED_BY: MANAGED_BY } });
                self.api
                    .call::<serde_json::Value>(
                        Method::PUT,
                        &format!("/ssh_keys/{}", key.id),
                        Some(&body),
                        Retry::Always,
                    )
                    .await?;
                Ok("updated the project SSH key's label")
            }
        }
    }

    /// The project key, looked up by its name.
    async fn find_project_key(&self) -> Result<Option<api::SshKey>, ApiError> {
        let page: api::SshKeysPage = self
            .api
            .call(
                Method::GET,
                &format!("/ssh_keys?name={}", encode(PROJECT_KEY)),
                None,
                Retry::Always,
            )
            .await?;
        Ok(page.ssh_keys.into_iter().find(|k| k.name == PROJECT_KEY))
    }

    /// `POST /ssh_keys` with a throwaway public key (its private half is dropped here).
    pub(super) async fn register_project_key(&self) -> Result<(), ApiError> {
        let throwaway = KeyPair::generate("buildkit-launcher project key (no private half kept)")
            .map_err(|e| ApiError::Decode {
            method: "POST".into(),
            path: "/ssh_keys".into(),
            detail: e.to_string(),
        })?;
        let body = serde_json::json!({
            "name": PROJECT_KEY,
            "public_key": throwaway.public_openssh,
            "labels": { LABEL_MANAGED_BY: MANAGED_BY },
        });
        drop(throwaway);
        match self
            .api
            .call::<serde_json::Value>(Method::POST, "/ssh_keys", Some(&body), Retry::IfRefused)
            .await
        {
            Ok(_) => {
                (self.log)(&format!(
                    "registered the project SSH key \"{PROJECT_KEY}\" (no server is created without one)"
                ));
                Ok(())
            }
            Err(e) if e.code() == Some("uniqueness_error") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What one create spends across candidates: the key check happens once, quota waits add up.
struct Attempt {
    key_checked: bool,
    quota_waits: u32,
}

/// How a create ended when it made no server the launcher holds.
enum CreateError {
    /// Certainly not made.
    Refused(ApiError),
    /// Perhaps made: the name must stay registered.
    Unknown(ApiError),
}
use CreateError::{Refused, Unknown};

/// A refusal that can mean the project key is missing: `not_found`, or `invalid_input` naming
/// the `ssh_keys` field (the API reference's answer to a key that does not exist). Capacity,
/// quota, type or image refusals never lead to the key check.
fn may_be_missing_key(e: &ApiError) -> bool {
    match e {
        ApiError::Api {
            status: 400 | 404,
            code,
            message,
            ..
        } => {
            code == "not_found"
                || (code == "invalid_input" && message.to_ascii_lowercase().contains("ssh_key"))
        }
        _ => false,
    }
}

/// 400 `invalid_input` "unsupported location for server type": not sold there.
fn is_unsupported_location(e: &ApiError) -> bool {
    e.code() == Some("invalid_input") && e.message().contains("unsupported location")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str, message: &str) -> ApiError {
        ApiError::Api {
            method: "POST".into(),
            path: "/servers".into(),
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn only_a_refusal_that_can_mean_a_missing_key_leads_to_the_key_check() {
        assert!(may_be_missing_key(&api(
            400,
            "invalid_input",
            "invalid input in field 'ssh_keys'"
        )));
        assert!(may_be_missing_key(&api(
            404,
            "not_found",
            "ssh key not found"
        )));
        for (status, code, message) in [
            (412, "resource_unavailable", "error during placement"),
            (403, "resource_limit_exceeded", "server limit reached"),
            (400, "invalid_input", "unsupported location for server type"),
            (
                400,
                "invalid_input",
                "image disk is bigger than the server type's disk",
            ),
            (409, "uniqueness_error", "server name is already used"),
            (403, "token_readonly", "read only"),
        ] {
            assert!(
                !may_be_missing_key(&api(status, code, message)),
                "{code}: {message}"
            );
        }
        let unreadable = ApiError::Decode {
            method: "POST".into(),
            path: "/servers".into(),
            detail: "EOF".into(),
        };
        assert!(!may_be_missing_key(&unreadable));
    }
}
