//! What baking golden snapshots needs of Hetzner (used by `crate::golden`): a few calls that
//! builds never make — booting from a base system image, powering off, snapshotting, and
//! listing and deleting snapshots.

use super::*;

/// How long a snapshot may take (Hetzner copies the whole disk) and when it is first looked at.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(45 * 60);
const FIRST_SNAPSHOT_POLL: Duration = Duration::from_secs(2);
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// A snapshot being made: its image, and its create action when the API's answer arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartedSnapshot {
    pub image: i64,
    pub action: Option<i64>,
}

fn started_from(id: &str, resp: &serde_json::Value) -> Result<StartedSnapshot, ApiError> {
    let decode = |field: &str| ApiError::Decode {
        method: "POST".into(),
        path: format!("/servers/{id}/actions/create_image"),
        detail: format!("no {field} in the answer"),
    };
    Ok(StartedSnapshot {
        image: resp["image"]["id"]
            .as_i64()
            .ok_or_else(|| decode("image.id"))?,
        action: Some(
            resp["action"]["id"]
                .as_i64()
                .ok_or_else(|| decode("action.id"))?,
        ),
    })
}

impl HcloudProvider {
    /// Boot this provider's `arch` runners from image `image` instead of the golden snapshot
    /// (the golden-image bake starts from a base system image such as debian-12).
    pub async fn boot_from(&self, arch: Arch, image: i64) {
        self.images.lock().await.insert(arch, (image, None));
    }

    /// The id of the image called `name` for `arch` (a system image such as "debian-12"), or of
    /// image `name` when it is a number and of that architecture; `None` when there is none.
    pub async fn find_image(&self, name: &str, arch: Arch) -> Result<Option<i64>, ApiError> {
        if let Ok(id) = name.parse::<i64>() {
            let resp: serde_json::Value = match self
                .api
                .call(Method::GET, &format!("/images/{id}"), None, Retry::Always)
                .await
            {
                Ok(resp) => resp,
                Err(e) if e.status() == Some(404) => return Ok(None),
                Err(e) => return Err(e),
            };
            let image_arch = resp["image"]["architecture"].as_str().unwrap_or_default();
            return Ok((image_arch == hetzner_arch(arch)).then_some(id));
        }
        // Without include_deprecated=true a deprecated system image is not listed at all, and
        // the weekly bake would stop the day debian-12 is deprecated.
        let path = format!(
            "/images?name={}&architecture={}&include_deprecated=true",
            encode(name),
            hetzner_arch(arch)
        );
        let page: api::ImagesPage = self
            .api
            .call(Method::GET, &path, None, Retry::Always)
            .await?;
        let Some(image) = page.images.first() else {
            return Ok(None);
        };
        if let Some(since) = image.deprecated.as_deref() {
            (self.log)(&format!(
                "warning: image {name} ({}) is deprecated at Hetzner since {}; move --base-image to its successor",
                image.id,
                since.get(..10).unwrap_or(since)
            ));
        }
        Ok(Some(image.id))
    }

    /// Power server `id` off and wait until it is off. This is a hard stop, like pulling the
    /// plug: the caller syncs the disks first.
    pub async fn power_off(&self, id: &str) -> Result<(), ApiError> {
        let resp: api::ActionResponse = self
            .api
            .call(
                Method::POST,
                &format!("/servers/{id}/actions/poweroff"),
                None,
                Retry::Always,
            )
            .await?;
        self.wait_action(
            resp.action.id,
            "the server to power off",
            FIRST_DELETE_POLL,
            POWER_OFF_TIMEOUT,
        )
        .await
    }

    /// Start a snapshot of server `id`: the new image's id, and the action creating it when
    /// the answer said (see [`HcloudProvider::wait_for_snapshot`]).
    ///
    /// `create_image` is not idempotent, and an answer that was lost (5xx, `timeout`, a dropped
    /// connection: [`ApiError::is_ambiguous`]) may come after the image was made. So the
    /// snapshot is then looked up by its labels (unique per bake: `buildkit-launcher/created`)
    /// before the request is made once more; one that exists is waited for by its status.
    pub async fn start_snapshot(
        &self,
        id: &str,
        description: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<StartedSnapshot, ApiError> {
        let body = serde_json::json!({
            "type": "snapshot",
            "description": description,
            "labels": labels,
        });
        let selector = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut last = None;
        for _ in 0..2 {
            match self
                .api
                .call::<serde_json::Value>(
                    Method::POST,
                    &format!("/servers/{id}/actions/create_image"),
                    Some(&body),
                    Retry::IfRefused,
                )
                .await
            {
                Ok(resp) => return started_from(id, &resp),
                Err(e) if e.is_ambiguous() => {
                    #[derive(serde::Deserialize)]
                    struct Found {
                        id: i64,
                    }
                    let found: Vec<Found> = self.list_snapshots(&selector).await?;
                    if let Some(image) = found.first() {
                        (self.log)(&format!(
                            "the snapshot request was answered {}, but snapshot {} exists: waiting for it",
                            e.message(),
                            image.id
                        ));
                        return Ok(StartedSnapshot {
                            image: image.id,
                            action: None,
                        });
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("two ambiguous answers"))
    }

    /// Wait for image `id` to become `available` (a snapshot whose create action is unknown).
    pub async fn wait_for_image(&self, id: i64) -> Result<(), ApiError> {
        let started = Instant::now();
        let mut interval = FIRST_SNAPSHOT_POLL;
        loop {
            tokio::time::sleep(self.api.poll_interval(interval)).await;
            interval = (interval * 3 / 2).min(Duration::from_secs(10));
            let resp: serde_json::Value = self
                .api
                .call(Method::GET, &format!("/images/{id}"), None, Retry::Always)
                .await?;
            match resp["image"]["status"].as_str() {
                Some("available") => return Ok(()),
                Some("creating") => {}
                other => {
                    return Err(ApiError::Decode {
                        method: "GET".into(),
                        path: format!("/images/{id}"),
                        detail: format!("the snapshot is {}", other.unwrap_or("gone")),
                    });
                }
            }
            if started.elapsed() > SNAPSHOT_TIMEOUT {
                return Err(ApiError::Transport {
                    method: "GET".into(),
                    path: format!("/images/{id}"),
                    detail: format!(
                        "the snapshot did not become available within {} s",
                        SNAPSHOT_TIMEOUT.as_secs()
                    ),
                });
            }
        }
    }

    /// Wait for a snapshot's create action (Hetzner copies the whole disk: minutes).
    pub async fn wait_for_snapshot(&self, action: i64) -> Result<(), ApiError> {
        self.wait_action(
            action,
            "the snapshot",
            FIRST_SNAPSHOT_POLL,
            SNAPSHOT_TIMEOUT,
        )
        .await
    }

    /// Every snapshot matching the label `selector`, newest first, parsed as the caller's
    /// (lenient) type.
    pub async fn list_snapshots<T: serde::de::DeserializeOwned>(
        &self,
        selector: &str,
    ) -> Result<Vec<T>, ApiError> {
        #[derive(serde::Deserialize)]
        struct Page<T> {
            images: Vec<T>,
            #[serde(default)]
            meta: Option<api::Meta>,
        }
        let mut images = Vec::new();
        let mut page = Some(1);
        while let Some(n) = page {
            let path = format!(
                "/images?type=snapshot&sort=created:desc&sort=id:desc&label_selector={}&per_page=50&page={n}",
                encode(selector)
            );
            let resp: Page<T> = self
                .api
                .call(Method::GET, &path, None, Retry::Always)
                .await?;
            page = api::Meta::next_page(&resp.meta);
            images.extend(resp.images);
        }
        Ok(images)
    }

    /// Delete image `id`; one that is already gone counts as deleted.
    pub async fn delete_image(&self, id: i64) -> Result<(), ApiError> {
        match self
            .api
            .call::<serde_json::Value>(
                Method::DELETE,
                &format!("/images/{id}"),
                None,
                Retry::Always,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
