//! SSH keys in the Hetzner Cloud API simulator (a test double of Hetzner's API, not the real
//! thing): `GET/POST /ssh_keys`, `GET/PUT/DELETE /ssh_keys/{id}`, in the `hcloud` crate's models.
//!
//! Where the behaviour comes from: names are unique per project and so are fingerprints
//! (`uniqueness_error`, API reference "SSH Keys"); `name` filters the list; a create of a
//! server names keys by id or name (`ssh_keys`, API reference "Create a Server"). The API does
//! not document the error for an unknown key in `ssh_keys`; the simulator answers
//! `invalid_input` naming the field, and the launcher does not depend on the exact code.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hcloud::models::{self, SshKey};
use serde_json::Value;

use super::api::{Q, Shared, error, id_of, ok, paginate, param, selector_filter, sort_by};
use super::labels::{labels_field, selects};
use super::state::{ApiError, now_rfc3339};

pub(super) struct SshKeyRec {
    pub id: i64,
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
    pub labels: BTreeMap<String, String>,
    pub created: String,
}

pub(super) fn key_model(k: &SshKeyRec) -> SshKey {
    SshKey::new(
        k.created.clone(),
        k.fingerprint.clone(),
        k.id,
        k.labels.clone().into_iter().collect(),
        k.name.clone(),
        k.public_key.clone(),
    )
}

/// An MD5-looking fingerprint of the key's base64 part (only uniqueness matters here).
fn fingerprint(public_key: &str) -> String {
    let blob = public_key.split_whitespace().nth(1).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in blob.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let bytes = [h.to_be_bytes(), h.rotate_left(17).to_be_bytes()].concat();
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub(super) async fn list(AxumState(sh): AxumState<Shared>, Query(q): Q) -> Response {
    let selector = match selector_filter(&q) {
        Ok(s) => s,
        Err(e) => return error(e),
    };
    if let Err(e) = super::strict::sort_fields(&q, &["id", "name"]) {
        return error(e);
    }
    let names = param(&q, "name");
    let st = sh.state();
    let mut keys: Vec<&SshKeyRec> = st
        .ssh_keys
        .values()
        .filter(|k| names.is_empty() || names.contains(&k.name.as_str()))
        .filter(|k| selects(&selector, &k.labels))
        .collect();
    sort_by(&mut keys, &q, |k, field| match field {
        "id" => Some(format!("{:020}", k.id)),
        "name" => Some(k.name.clone()),
        _ => None,
    });
    let keys: Vec<_> = keys.into_iter().map(key_model).collect();
    let (keys, meta) = paginate(keys, &q);
    ok(StatusCode::OK, models::ListSshKeysResponse::new(meta, keys))
}

pub(super) async fn get(AxumState(sh): AxumState<Shared>, Path(id): Path<String>) -> Response {
    let st = sh.state();
    match id_of(&id).ok().and_then(|n| st.ssh_keys.get(&n)) {
        Some(k) => ok(StatusCode::OK, models::GetSshKeyResponse::new(key_model(k))),
        None => error(ApiError::not_found("ssh key", id)),
    }
}

pub(super) async fn create(AxumState(sh): AxumState<Shared>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(ApiError::new("json_error", format!("invalid JSON: {e}"))),
    };
    let name = request
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let public_key = request
        .get("public_key")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() {
        return error(ApiError::invalid_field("name", "is required"));
    }
    if !["ssh-ed25519 ", "ssh-rsa ", "ecdsa-sha2-"]
        .iter()
        .any(|p| public_key.starts_with(p))
    {
        return error(ApiError::invalid_field(
            "public_key",
            "SSH key type is invalid",
        ));
    }
    let labels = match labels_field(request.get("labels")) {
        Ok(l) => l,
        Err(e) => return error(e),
    };
    let mut st = sh.state();
    let fingerprint = fingerprint(public_key);
    if st
        .ssh_keys
        .values()
        .any(|k| k.name == name || k.fingerprint == fingerprint)
    {
        return error(ApiError::new(
            "uniqueness_error",
            "SSH key with the same fingerprint or name already exists",
        ));
    }
    let id = st.alloc_id();
    let key = SshKeyRec {
        id,
        name: name.into(),
        public_key: public_key.trim().into(),
        fingerprint,
        labels,
        created: now_rfc3339(),
    };
    let body = models::CreateSshKeyResponse::new(key_model(&key));
    st.ssh_keys.insert(id, key);
    ok(StatusCode::CREATED, body)
}

pub(super) async fn update(
    AxumState(sh): AxumState<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(ApiError::new("json_error", format!("invalid JSON: {e}"))),
    };
    let labels = match request.get("labels") {
        Some(l) => match labels_field(Some(l)) {
            Ok(l) => Some(l),
            Err(e) => return error(e),
        },
        None => None,
    };
    let mut st = sh.state();
    let Some(key) = id_of(&id).ok().and_then(|n| st.ssh_keys.get_mut(&n)) else {
        return error(ApiError::not_found("ssh key", id));
    };
    if let Some(labels) = labels {
        key.labels = labels;
    }
    if let Some(name) = request.get("name").and_then(Value::as_str) {
        key.name = name.into();
    }
    ok(
        StatusCode::OK,
        models::ReplaceSshKeyResponse::new(key_model(key)),
    )
}

pub(super) async fn delete(AxumState(sh): AxumState<Shared>, Path(id): Path<String>) -> Response {
    let mut st = sh.state();
    match id_of(&id).ok().and_then(|n| st.ssh_keys.remove(&n)) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(ApiError::not_found("ssh key", id)),
    }
}
