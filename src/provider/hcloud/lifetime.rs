//! A server's lifetime at Hetzner: its delete, which waits for a locked server's running
//! actions (423 `locked` while its boot, a snapshot or another action runs: FACTS.md "Locks"),
//! and its lease label, written with `PUT /servers/{id}` in the API's time (a label update
//! starts no action, so a locked server accepts it).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::Method;

use super::{
    ApiError, DELETE_TIMEOUT, FIRST_DELETE_POLL, HcloudProvider, Retry, api, runner_error,
};
use crate::provider::{LABEL_EXPIRES, ProviderError};

/// How long a delete waits for a locked server's actions: a boot from a large snapshot takes
/// minutes, a snapshot of a 40 GB disk several (FACTS.md, "Locks" and "Snapshots").
pub const LOCKED_WAIT: Duration = Duration::from_secs(20 * 60);
/// The actions of a locked server are looked at after 2 s, then every 1.5× longer, at most 15 s
/// (five looks for a 25 s boot).
const LOCKED_POLL_FIRST: Duration = Duration::from_secs(2);
const LOCKED_POLL_MAX: Duration = Duration::from_secs(15);

impl HcloudProvider {
    /// `DELETE /servers/{id}` and its action confirmed (404: already gone); a 423 `locked`
    /// waits for the server's running actions, then deletes, within [`LOCKED_WAIT`].
    pub(super) async fn delete_confirmed(&self, id: &str) -> Result<(), ProviderError> {
        let deadline = Instant::now() + LOCKED_WAIT;
        loop {
            let resp = self
                .api
                .call::<api::ActionResponse>(
                    Method::DELETE,
                    &format!("/servers/{id}"),
                    None,
                    Retry::NotLocked,
                )
                .await;
            return match resp {
                Ok(resp) => self
                    .wait_action(
                        resp.action.id,
                        "the server to be deleted",
                        FIRST_DELETE_POLL,
                        DELETE_TIMEOUT,
                    )
                    .await
                    .map_err(|e| runner_error(id, "confirm its deletion", e)),
                // Already gone: that is the confirmation.
                Err(e) if e.status() == Some(404) => Ok(()),
                // An action runs on it (boot, snapshot…): wait for it, then delete.
                Err(e) if e.code() == Some("locked") && Instant::now() < deadline => {
                    self.wait_unlocked(id, deadline)
                        .await
                        .map_err(|e| runner_error(id, "delete it", e))?;
                    continue;
                }
                Err(e) => Err(runner_error(id, "delete it", e)),
            };
        }
    }

    /// `PUT /servers/{id}` with every label, the expiry `seconds` from the API's now. A label
    /// update starts no action, so a locked server accepts it (FACTS.md, "Locks").
    pub(super) async fn put_lease(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
        seconds: u64,
    ) -> Result<(), ProviderError> {
        let mut labels = labels.clone();
        labels.insert(
            LABEL_EXPIRES.to_owned(),
            (self.api.now() + seconds).to_string(),
        );
        let body = serde_json::json!({ "labels": labels });
        match self
            .api
            .call::<serde_json::Value>(
                Method::PUT,
                &format!("/servers/{id}"),
                Some(&body),
                Retry::Always,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(runner_error(id, "change its lease", e)),
        }
    }

    /// Wait until server `id` has no running action (it is `locked` until then), at most
    /// until `deadline`: its running actions (`GET /servers/{id}/actions?status=running`), then
    /// those actions, polled together from 2 s, 1.5× longer each time, at most 15 s apart.
    async fn wait_unlocked(&self, id: &str, deadline: Instant) -> Result<(), ApiError> {
        let page: api::ActionsPage = self
            .api
            .call(
                Method::GET,
                &format!("/servers/{id}/actions?status=running"),
                None,
                Retry::Always,
            )
            .await?;
        let running: Vec<i64> = page
            .actions
            .iter()
            .filter(|a| a.status == "running")
            .map(|a| a.id)
            .collect();
        if running.is_empty() {
            // Locked a moment ago, free now (or its action has just ended): try again soon.
            tokio::time::sleep(self.api.poll_interval(Duration::from_secs(1))).await;
            return Ok(());
        }
        (self.log)(&format!(
            "server {id} is locked by running action(s) {running:?}; deleting it once they end"
        ));
        let query: Vec<String> = running.iter().map(|a| format!("id={a}")).collect();
        let path = format!("/actions?{}", query.join("&"));
        let mut interval = LOCKED_POLL_FIRST;
        loop {
            if Instant::now() + interval > deadline {
                return Err(ApiError::Transport {
                    method: "DELETE".into(),
                    path: format!("/servers/{id}"),
                    detail: format!(
                        "the server stayed locked by action(s) {running:?} for {} s",
                        LOCKED_WAIT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(self.api.poll_interval(interval)).await;
            interval = (interval * 3 / 2).min(LOCKED_POLL_MAX);
            let page: api::ActionsPage = self
                .api
                .call(Method::GET, &path, None, Retry::Always)
                .await?;
            if page.actions.iter().all(|a| a.status != "running") {
                return Ok(());
            }
        }
    }
}
