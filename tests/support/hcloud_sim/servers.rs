//! Servers in the Hetzner Cloud API simulator (a test double of Hetzner's API, not the real
//! thing): list, get, create, update (name, labels), delete, the server actions (`poweroff`,
//! `poweron`, `shutdown`, `create_image`) and their listing. A server is locked (423 `locked`
//! on delete and on actions) while any of its actions runs (`State::is_locked`); a label
//! update is not an action and is accepted while locked. A created server is realized as a sandbox runner
//! (`LocalProvider`) listening on `127.0.0.N:22`; its create action succeeds once that sshd
//! listens, and its delete action succeeds once the runner is torn down and the server gone.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::Response;
use buildkit_launcher::config::{Arch, Tier};
use buildkit_launcher::provider::cloud_init::{Chpasswd, UserData};
use buildkit_launcher::provider::{LABEL_EXPIRES, Lease, Provider, RunnerSpec};
use hcloud::models::{self, Architecture, image, server};
use serde_json::{Value, json};

use super::api::{Q, Shared, error, id_of, ok, paginate, param, selector_filter, sort_by};
use super::faults;
use super::labels::{labels_field, selects};
use super::state::{self, ApiError, CreatePlan, ImageRec, ServerRec, action_model};
use super::state::{image_model, now_rfc3339, take};

pub(super) async fn list(AxumState(sh): AxumState<Shared>, Query(q): Q) -> Response {
    let selector = match selector_filter(&q) {
        Ok(s) => s,
        Err(e) => return error(e),
    };
    for check in [
        super::strict::one_of(&q, "status", super::strict::SERVER_STATUSES),
        super::strict::sort_fields(&q, &["id", "name", "created"]),
    ] {
        if let Err(e) = check {
            return error(e);
        }
    }
    let (names, statuses) = (param(&q, "name"), param(&q, "status"));
    let mut st = sh.state();
    let lagging = !names.is_empty() && take(&mut st.faults.lagging_lookups);
    let mut servers: Vec<&ServerRec> = st
        .servers
        .values()
        .filter(|s| names.is_empty() || names.contains(&s.name.as_str()))
        .filter(|s| statuses.is_empty() || statuses.contains(&state::enum_text(&s.status).as_str()))
        .filter(|s| selects(&selector, &s.labels))
        .filter(|_| !lagging)
        .collect();
    super::strict::unspecified_order(&q, &mut servers);
    sort_by(&mut servers, &q, |s, field| match field {
        "id" | "created" => Some(format!("{:020}", s.id)),
        "name" => Some(s.name.clone()),
        _ => None,
    });
    let servers: Vec<_> = servers.into_iter().map(|s| st.server_model(s)).collect();
    let (servers, meta) = paginate(servers, &q);
    ok(
        StatusCode::OK,
        models::ListServersResponse::new(meta, servers),
    )
}

pub(super) async fn get(AxumState(sh): AxumState<Shared>, Path(id): Path<String>) -> Response {
    let st = sh.state();
    match id_of(&id).ok().and_then(|n| st.servers.get(&n)) {
        Some(s) => {
            let mut body = models::GetServerResponse::new();
            body.server = Some(Box::new(st.server_model(s)));
            ok(StatusCode::OK, body)
        }
        None => error(ApiError::not_found("server", id)),
    }
}

/// `POST /servers`. The server is made (and realized) before the answer, so the scripted
/// after-create faults (`faults.rs`) leave a server that exists although the client heard
/// otherwise, as on the real API.
pub(super) async fn create(AxumState(sh): AxumState<Shared>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(ApiError::new("json_error", format!("invalid JSON: {e}"))),
    };
    let (mut plan, id, after) = {
        let mut st = sh.state();
        st.last_create = Some(request.clone());
        let plan = match st.plan_create(&request) {
            Ok(p) => p,
            Err(e) => return error(e),
        };
        let id = st.alloc_id();
        let after = (!st.faults.after_create.is_empty()).then(|| st.faults.after_create.remove(0));
        // Reserve the name now; the record gets its runner and address once realized.
        let record = ServerRec {
            id,
            name: plan.name.clone(),
            labels: plan.labels.clone(),
            server_type: plan.server_type,
            location: plan.location.clone(),
            status: server::Status::Initializing,
            created: state::rfc3339(st.api_time()),
            image: Some(plan.image),
            ipv4: None,
            ipv6: plan
                .ipv6
                .then(|| format!("2001:db8:{:x}::/64", id % 0xffff)),
            runner: None,
            // Locked from the start: the create answer says `"locked": true` (FACTS.md).
            locked: true,
        };
        st.servers.insert(id, record);
        (plan, id, after)
    };
    // No `ssh_keys`: Hetzner sets a random root password, returns it, e-mails it to the
    // project owner and expires it (API reference, "Create a Server": `root_password`).
    let root_password = plan
        .ssh_keys
        .is_empty()
        .then(|| format!("{:016x}", rand::random::<u64>()));
    if root_password.is_some() {
        plan.user_data = expire_root_password(&plan.user_data);
    }
    // A create whose action will fail never boots: nothing answers SSH.
    let realized = if plan.fail_action {
        Ok((None, NEVER_BOOTS.to_owned()))
    } else {
        realize(&sh, id, &plan).await.map(|(r, ip)| (Some(r), ip))
    };
    let (runner, ip) = match realized {
        Ok(r) => r,
        Err(message) => {
            eprintln!("hcloud simulator: {message}");
            sh.state().servers.remove(&id);
            return error(ApiError::new("server_error", message));
        }
    };
    let created = {
        let mut st = sh.state();
        match st.servers.get_mut(&id) {
            None => None,
            Some(server) => {
                server.runner = runner.clone();
                server.ipv4 = plan.ipv4.then_some(ip.clone());
                // IPv6 only: Hetzner gives a /64 and the host is its `::1`; loopback has no
                // routable /64, so the simulator reports the runner's loopback address
                // IPv4-mapped (RFC 4291 2.5.5.2) as a single address. The launcher then
                // reaches the runner through its IPv6 path (a literal with colons, bracketed
                // for rsync) as it would on Hetzner.
                if !plan.ipv4 && plan.ipv6 {
                    server.ipv6 = Some(format!("::ffff:{ip}/128"));
                }
                // From here its running create and start actions lock it.
                server.locked = false;
                let action = st.new_action("create_server", vec![(id, "server")]);
                let start = st.new_action("start_server", vec![(id, "server")]);
                let server = st.server_model(&st.servers[&id]);
                let body = models::CreateServerResponse::new(
                    action_model(&st.actions[&action]),
                    vec![action_model(&st.actions[&start])],
                    root_password.clone(),
                    server,
                );
                Some((body, action, start))
            }
        }
    };
    let Some((body, action, start_action)) = created else {
        // Deleted (found by a listing) while being realized.
        if let Some(runner) = runner {
            teardown(&sh, runner).await;
        }
        return error(ApiError::new("conflict", state::message_for("conflict")));
    };
    let (fail, start) = (plan.fail_action, plan.start);
    let sh2 = sh.clone();
    tokio::spawn(async move {
        let delay = sh2.state().actions[&action].delay;
        tokio::time::sleep(delay).await;
        let ready = match &runner {
            Some(runner) => sh2.provider.wait_ready(runner).await.is_ok(),
            None => false,
        };
        let failed = fail || !ready;
        if failed && let Some(runner) = runner {
            // The runner goes first: once the action reports, the server is unreachable.
            teardown(&sh2, runner).await;
        }
        let outcome = failed.then_some(("action_failed", "Action failed"));
        // The create action ends first; the start action runs its own time (`action_time`).
        let start_left = {
            let mut st = sh2.state();
            st.finish_action(action, outcome);
            let start = &st.actions[&start_action];
            start.delay.saturating_sub(start.started_at.elapsed())
        };
        tokio::time::sleep(start_left).await;
        let mut st = sh2.state();
        if let Some(s) = st.servers.get_mut(&id) {
            s.status = match (failed, start) {
                (false, true) => server::Status::Running,
                _ => server::Status::Off,
            };
            if failed {
                s.runner = None;
            }
        }
        st.finish_action(start_action, outcome);
    });
    faults::answer_create(after, body).await
}

/// An address where nothing listens: the server of a failed create.
const NEVER_BOOTS: &str = "127.255.0.1";

/// The user data as a server without `ssh_keys` behaves: the root password is expired
/// (`chpasswd: {expire: true}`), so the sandbox's sshd refuses sessions as PAM does.
fn expire_root_password(user_data: &str) -> String {
    match UserData::parse(user_data) {
        Ok(mut data) => {
            data.chpasswd = Some(Chpasswd { expire: true });
            data.render()
        }
        Err(_) => user_data.to_owned(),
    }
}

/// Realize a server as a sandbox runner listening on `127.0.0.N:22`; returns (runner, address).
async fn realize(
    sh: &Shared,
    server_id: i64,
    plan: &CreatePlan,
) -> Result<(String, String), String> {
    let spec = plan.server_type;
    let expires = plan
        .labels
        .get(LABEL_EXPIRES)
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| state::unix_now() + 3600);
    let mut wrong_port = Vec::new();
    let result = loop {
        let spec = RunnerSpec {
            name: plan.name.clone(),
            lease: Lease {
                id: format!("hc{server_id}-{:08x}", rand::random::<u32>()),
                expires,
            },
            tier: Tier {
                name: spec.name.into(),
                vcpus: spec.cores as u32,
                memory_mib: (spec.memory_gb * 1024.0) as u64,
                disk_gb: spec.disk_gb as u64,
                price_eur_per_hour: None,
            },
            arch: match spec.arch {
                Architecture::X86 => Arch::Amd64,
                Architecture::Arm => Arch::Arm64,
            },
            user_data: plan.user_data.clone(),
            labels: plan.labels.clone(),
        };
        let runner = match sh.provider.create(&spec).await {
            Ok(id) => id,
            Err(e) => {
                break Err(format!(
                    "cannot realize server '{}' as a sandbox runner: {e}",
                    plan.name
                ));
            }
        };
        {
            let mut st = sh.state();
            st.realized.insert(runner.clone());
            st.ever_realized.insert(runner.clone());
        }
        let address =
            std::fs::read_to_string(sh.base.join(&runner).join("address")).unwrap_or_default();
        let (host, port) = address.trim().rsplit_once(':').unwrap_or(("", ""));
        let host = host.to_owned();
        if port == "22" {
            break Ok((runner, host));
        }
        wrong_port.push(runner);
        if wrong_port.len() == 3 {
            break Err(format!(
                "sandbox runners for server '{}' got {host}:{port}, not port 22 (is an sshd \
                 listening on 0.0.0.0:22?); the launcher connects to port 22 of \
                 public_net.ipv4.ip, so the simulator needs 127.0.0.N:22 free",
                plan.name
            ));
        }
    };
    for runner in wrong_port {
        teardown(sh, runner).await;
    }
    result
}

/// Tear a sandbox runner down off the async threads (it waits for processes to die).
async fn teardown(sh: &Shared, runner: String) {
    let provider = sh.provider.clone();
    let id = runner.clone();
    let result = tokio::task::spawn_blocking(move || provider.teardown(&id)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("hcloud simulator: teardown of {runner} failed: {e}"),
        Err(e) => eprintln!("hcloud simulator: teardown of {runner} panicked: {e}"),
    }
    sh.state().realized.remove(&runner);
}

pub(super) async fn delete(AxumState(sh): AxumState<Shared>, Path(id): Path<String>) -> Response {
    let (action, fail, id) = {
        let mut st = sh.state();
        let Some(id) = id_of(&id).ok().filter(|n| st.servers.contains_key(n)) else {
            return error(ApiError::not_found("server", id));
        };
        if st.is_locked(id) {
            return error(ApiError::new("locked", state::message_for("locked")));
        }
        if take(&mut st.faults.fail_deletes) {
            return error(ApiError::new(
                "unavailable",
                state::message_for("unavailable"),
            ));
        }
        let fail = take(&mut st.faults.fail_delete_actions);
        // The running delete action locks it.
        let action = st.new_action("delete_server", vec![(id, "server")]);
        (action, fail, id)
    };
    let body = {
        let st = sh.state();
        let mut body = models::DeleteServerResponse::new();
        body.action = Some(Box::new(action_model(&st.actions[&action])));
        body
    };
    let sh2 = sh.clone();
    tokio::spawn(async move {
        let delay = sh2.state().actions[&action].delay;
        tokio::time::sleep(delay).await;
        if fail {
            let mut st = sh2.state();
            st.finish_action(action, Some(("action_failed", "Action failed")));
            return;
        }
        let runner = sh2.state().servers.get(&id).and_then(|s| s.runner.clone());
        if let Some(runner) = runner {
            teardown(&sh2, runner).await;
        }
        let mut st = sh2.state();
        st.servers.remove(&id);
        st.finish_action(action, None);
    });
    ok(StatusCode::OK, body)
}

/// `poweroff`, `poweron`, `shutdown` and `create_image`.
pub(super) async fn action(
    AxumState(sh): AxumState<Shared>,
    Path((id, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let request: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(ApiError::new("json_error", format!("invalid JSON: {e}"))),
        }
    };
    let mut st = sh.state();
    let Some(id) = id_of(&id).ok().filter(|n| st.servers.contains_key(n)) else {
        return error(ApiError::not_found("server", id));
    };
    if st.is_locked(id) {
        return error(ApiError::new("locked", state::message_for("locked")));
    }
    let (command, status, image) = match name.as_str() {
        "poweroff" | "shutdown" => (
            format!(
                "{}_server",
                if name == "poweroff" {
                    "stop"
                } else {
                    "shutdown"
                }
            ),
            server::Status::Off,
            None,
        ),
        "poweron" => ("start_server".to_owned(), server::Status::Running, None),
        "create_image" => {
            let labels = match labels_field(request.get("labels")) {
                Ok(l) => l,
                Err(e) => return error(e),
            };
            let kind = match request
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("snapshot")
            {
                "snapshot" => image::Type::Snapshot,
                "backup" => image::Type::Backup,
                other => {
                    return error(ApiError::invalid_field(
                        "type",
                        format!("unknown image type '{other}'"),
                    ));
                }
            };
            let image_id = st.alloc_id();
            let server = &st.servers[&id];
            let record = ImageRec {
                id: image_id,
                kind,
                name: None,
                arch: server.server_type.arch,
                labels,
                description: request
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                created: now_rfc3339(),
                disk_size: server.server_type.disk_gb,
                created_from: Some((id, server.name.clone())),
                status: image::Status::Creating,
                os_version: None,
                protected: false,
            };
            st.images.insert(image_id, record);
            (
                "create_image".to_owned(),
                st.servers[&id].status,
                Some(image_id),
            )
        }
        _ => {
            return error(ApiError::new(
                "not_found",
                format!("action '{name}' not found"),
            ));
        }
    };
    let mut resources = vec![(id, "server")];
    resources.extend(image.map(|i| (i, "image")));
    let action = st.new_action(&command, resources);
    let mut body = BTreeMap::new();
    body.insert(
        "action",
        serde_json::to_value(action_model(&st.actions[&action])).expect("serializes"),
    );
    if let Some(i) = image {
        body.insert(
            "image",
            serde_json::to_value(image_model(&st.images[&i])).expect("serializes"),
        );
    }
    let delay = st.actions[&action].delay;
    // A snapshot that is being made, answered with a 5xx or `timeout` all the same: Hetzner
    // may act on a request whose answer is lost (FACTS.md; hcloud-go retries such answers
    // only for idempotent requests).
    let lost_answer = if image.is_some() && !st.faults.after_create_image.is_empty() {
        Some(st.faults.after_create_image.remove(0))
    } else {
        None
    };
    drop(st);
    let sh2 = sh.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let mut st = sh2.state();
        if let Some(s) = st.servers.get_mut(&id) {
            s.status = status;
        }
        if let Some(i) = image.and_then(|i| st.images.get_mut(&i)) {
            i.status = image::Status::Available;
        }
        st.finish_action(action, None);
    });
    if let Some(code) = lost_answer {
        return error(ApiError::new(code, state::message_for(code)));
    }
    ok(StatusCode::CREATED, body)
}

/// `PUT /servers/{id}`: a new name and/or label set (labels replace the whole set; API
/// reference, "Update a Server"). It starts no action, so a locked server accepts it: the
/// reference lists no 423 for it, and `locked` means "another action is running" (hcloud-go
/// `ErrorCodeLocked`).
pub(super) async fn update(
    AxumState(sh): AxumState<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(ApiError::new("json_error", format!("invalid JSON: {e}"))),
    };
    let mut st = sh.state();
    let Some(id) = id_of(&id).ok().filter(|n| st.servers.contains_key(n)) else {
        return error(ApiError::not_found("server", id));
    };
    let labels = match request.get("labels") {
        None | Some(Value::Null) => None,
        some => match labels_field(some) {
            Ok(l) => Some(l),
            Err(e) => return error(e),
        },
    };
    let name = match request.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if super::labels::valid_hostname(n) => Some(n.clone()),
        Some(_) => {
            return error(ApiError::invalid_field(
                "name",
                "must be a valid hostname (RFC 1123)",
            ));
        }
    };
    if let Some(n) = &name
        && st.servers.values().any(|s| s.id != id && s.name == *n)
    {
        return error(ApiError::new(
            "uniqueness_error",
            "server name is already used",
        ));
    }
    let server = st.servers.get_mut(&id).expect("checked");
    if let Some(labels) = labels {
        server.labels = labels;
    }
    if let Some(name) = name {
        server.name = name;
    }
    let mut body = models::ReplaceServerResponse::new();
    body.server = Some(Box::new(st.server_model(&st.servers[&id])));
    ok(StatusCode::OK, body)
}

/// `GET /servers/{id}/actions` (`status=running` and friends): the actions on one server.
pub(super) async fn actions_of(
    AxumState(sh): AxumState<Shared>,
    Path(id): Path<String>,
    Query(q): Q,
) -> Response {
    if let Err(e) = super::strict::one_of(&q, "status", &["running", "success", "error"]) {
        return error(e);
    }
    let st = sh.state();
    let Some(id) = id_of(&id).ok().filter(|n| st.servers.contains_key(n)) else {
        return error(ApiError::not_found("server", id));
    };
    let statuses = param(&q, "status");
    let actions: Vec<_> = st
        .actions
        .values()
        .filter(|a| a.resources.contains(&(id, "server")))
        .filter(|a| statuses.is_empty() || statuses.contains(&state::enum_text(&a.status).as_str()))
        .map(action_model)
        .collect();
    let (actions, meta) = paginate(actions, &q);
    ok(
        StatusCode::OK,
        models::ListActionsResponse::new(actions, meta),
    )
}
