//! Rendering for the Hetzner Cloud API simulator (a test double of Hetzner's API, not the real
//! thing): images and actions as the `hcloud` crate's models, and time as the API writes it
//! (RFC 3339 with `+00:00`).

use std::collections::HashMap;
use std::time::SystemTime;

use hcloud::models::{self, Action, CreatedFrom, Image, Protection, Resource};
use hcloud::models::{action, image};

use super::state::{ActionRec, ImageRec};

pub(super) fn image_model(i: &ImageRec) -> Image {
    let mut model = Image::new(
        i.arch,
        None,
        i.created.clone(),
        i.created_from
            .clone()
            .map(|(id, name)| CreatedFrom::new(id, name)),
        None,
        None,
        i.description.clone(),
        i.disk_size,
        i.id,
        (i.kind == image::Type::Snapshot).then_some(1.2),
        i.labels.clone().into_iter().collect::<HashMap<_, _>>(),
        i.name.clone(),
        if i.name.as_deref().is_some_and(|n| n.starts_with("ubuntu")) {
            image::OsFlavor::Ubuntu
        } else {
            image::OsFlavor::Debian
        },
        i.os_version.clone(),
        Protection::new(i.protected),
        i.status,
        i.kind,
    );
    model.rapid_deploy = Some(i.kind == image::Type::System);
    model
}

pub(super) fn action_model(a: &ActionRec) -> Action {
    let progress = match a.status {
        action::Status::Running if a.delay.is_zero() => 0,
        action::Status::Running => {
            let part = a.started_at.elapsed().as_secs_f64() / a.delay.as_secs_f64();
            (part * 100.0).min(99.0) as i32
        }
        _ => 100,
    };
    Action::new(
        a.command.clone(),
        a.error.clone().map(|(c, m)| models::Error::new(c, m)),
        a.finished.clone(),
        a.id,
        progress,
        a.resources
            .iter()
            .map(|(id, kind)| Resource::new(*id, (*kind).into()))
            .collect(),
        a.started.clone(),
        a.status,
    )
}

// ---- time ---------------------------------------------------------------------------------

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// RFC 3339 as the API writes it: `2026-11-02T10:00:00+00:00`.
pub(super) fn rfc3339(t: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(t).to_string();
    text.strip_suffix('Z')
        .map_or(text.clone(), |t| format!("{t}+00:00"))
}

pub(super) fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// Parses `…Z` and `…+00:00` (other offsets are not used by the API).
pub(super) fn parse_time(text: &str) -> Option<SystemTime> {
    let normalized = text
        .strip_suffix("+00:00")
        .map_or(text.to_owned(), |t| format!("{t}Z"));
    humantime::parse_rfc3339_weak(&normalized).ok()
}
