//! The state of the Hetzner Cloud API simulator (a test double of Hetzner's API, not the real
//! thing): servers, images, actions, scripted faults, the rate-limit bucket, call counters; the
//! rules the API applies (label syntax and selectors, create validation, error codes and their
//! HTTP statuses, create validation); and the rendering of servers with the `hcloud` crate's
//! models (images, actions and time: `render.rs`). Label syntax and selectors are in `labels.rs`.
//!
//! No HTTP here: `api.rs` turns an [`ApiError`] into a response.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use hcloud::models::{Architecture, Server};
use hcloud::models::{Ipv4, Ipv6, ServerProtection, ServerPublicNet};
use hcloud::models::{action, image, server};
use serde_json::{Value, json};

use super::catalog::{self, TypeSpec};
pub(super) use super::faults::{Bucket, Faults};
use super::keys::SshKeyRec;
use super::labels::{labels_field, valid_hostname};
pub(super) use super::render::{action_model, image_model};
pub(super) use super::render::{now_rfc3339, parse_time, rfc3339, unix_now};

/// Hetzner's limit for `user_data`.
const USER_DATA_MAX: usize = 32 * 1024;

/// An error the API answers with: `{"error": {"code", "message", "details"}}`.
#[derive(Debug)]
pub(super) struct ApiError {
    pub code: String,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: code.into(),
            message: message.into(),
            details: json!({}),
        }
    }

    /// `invalid_input` with the per-field details the API gives.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError {
            code: "invalid_input".into(),
            message: format!("invalid input in field '{field}'"),
            details: json!({"fields": [{"name": field, "messages": [message]}]}),
        }
    }

    pub fn not_found(kind: &str, id: impl std::fmt::Display) -> ApiError {
        ApiError::new("not_found", format!("{kind} with ID '{id}' not found"))
    }
}

/// The HTTP status of an error code (Hetzner's documented table; 412 for `resource_unavailable`
/// as real responses show; `placement_error` and `invalid_server_type` are assumed).
pub(super) fn status_for(code: &str) -> u16 {
    match code {
        "invalid_input" | "json_error" | "unsupported_error" | "invalid_server_type" => 400,
        "unauthorized" => 401,
        "forbidden" | "resource_limit_exceeded" | "token_readonly" => 403,
        "not_found" => 404,
        "conflict" | "uniqueness_error" => 409,
        "deprecated_api_endpoint" => 410,
        "resource_unavailable" | "placement_error" => 412,
        "locked" | "protected" => 423,
        "rate_limit_exceeded" => 429,
        "bad_gateway" => 502,
        "unavailable" | "service_error" | "maintenance" => 503,
        "timeout" => 504,
        _ => 500,
    }
}

/// A default message per error code, for scripted faults.
pub(super) fn message_for(code: &str) -> &'static str {
    match code {
        "resource_unavailable" | "placement_error" => "error during placement",
        "rate_limit_exceeded" => "limit of 3600 requests per hour reached",
        "unavailable" => "service temporarily unavailable",
        "resource_limit_exceeded" => "server limit reached",
        "token_readonly" => "the token is only allowed to perform GET requests",
        // Scripted with `fail_location(l, "invalid_input")`: the type is not sold there.
        "invalid_input" => "unsupported location for server type",
        "locked" => "resource is locked",
        "conflict" => "the resource has changed during the request, please retry",
        "timeout" => "the request could not be answered in time, please retry",
        _ => "simulated error",
    }
}

pub(super) struct ServerRec {
    pub id: i64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub server_type: &'static TypeSpec,
    pub location: String,
    pub status: server::Status,
    pub created: String,
    pub image: Option<i64>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    /// The sandbox runner realizing it (`None` for `add_server` ones and failed creates).
    pub runner: Option<String>,
    /// Being created, before its create actions exist (they lock it from then on: see
    /// [`State::is_locked`]).
    pub locked: bool,
}

pub(super) struct ImageRec {
    pub id: i64,
    pub kind: image::Type,
    pub name: Option<String>,
    pub arch: Architecture,
    pub labels: BTreeMap<String, String>,
    pub description: String,
    pub created: String,
    pub disk_size: f64,
    pub created_from: Option<(i64, String)>,
    pub status: image::Status,
    pub os_version: Option<String>,
    /// `protection.delete`: a delete is refused with 423 `protected`.
    pub protected: bool,
}

pub(super) struct ActionRec {
    pub id: i64,
    pub command: String,
    pub status: action::Status,
    pub started: String,
    pub started_at: Instant,
    pub delay: Duration,
    pub finished: Option<String>,
    pub error: Option<(String, String)>,
    pub resources: Vec<(i64, &'static str)>,
}

/// What the scripting API reports per server.
#[derive(Debug, Clone, PartialEq)]
pub struct SimServer {
    pub id: i64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub server_type: String,
    pub location: String,
    /// `initializing`, `running`, `off`, `deleting`…
    pub status: String,
    /// The sandbox runner's id (`local-…`), when the server was realized as one.
    pub runner: Option<String>,
    /// `public_net.ipv4.ip`: the runner's loopback address.
    pub ip: Option<String>,
}

/// What the scripting API reports per image.
#[derive(Debug, Clone, PartialEq)]
pub struct SimImage {
    /// `system`, `snapshot`, `backup`.
    pub kind: String,
    pub labels: BTreeMap<String, String>,
    pub description: String,
    /// `available`, `creating`…
    pub status: String,
    /// The name of the server it was taken from.
    pub created_from: Option<String>,
}

pub(super) struct State {
    pub token: String,
    next_id: i64,
    pub servers: BTreeMap<i64, ServerRec>,
    pub images: BTreeMap<i64, ImageRec>,
    pub actions: BTreeMap<i64, ActionRec>,
    /// What is sold where (`deprecate_server_type`, `stop_selling`, `deprecate_in`).
    pub sales: catalog::Sales,
    /// SSH keys of the project.
    pub ssh_keys: BTreeMap<i64, SshKeyRec>,
    /// A second token of the project, read-only (`token_readonly` on anything but GET).
    pub readonly_token: String,
    /// System images deprecated by a test: id → when.
    pub image_deprecations: BTreeMap<i64, String>,
    pub faults: Faults,
    pub action_delay: Duration,
    /// How long actions of one command run (`create_server`, `create_image`…), when scripted;
    /// others run `action_delay`.
    pub command_times: BTreeMap<String, Duration>,
    /// The API's clock minus the test machine's, in seconds: what the `Date` header and the
    /// `created` of new servers show.
    pub clock_skew: i64,
    pub bucket: Bucket,
    pub calls: BTreeMap<String, u32>,
    /// Requests answered 429 `rate_limit_exceeded`.
    pub rate_limited: u32,
    pub requests: Vec<(Instant, String)>,
    pub last_create: Option<Value>,
    /// Sandbox runners that exist right now.
    pub realized: BTreeSet<String>,
    /// Every sandbox runner ever realized (for leftover checks).
    pub ever_realized: BTreeSet<String>,
}

/// A validated `POST /servers`.
pub(super) struct CreatePlan {
    pub name: String,
    pub server_type: &'static TypeSpec,
    pub location: String,
    pub image: i64,
    pub labels: BTreeMap<String, String>,
    pub user_data: String,
    pub ipv4: bool,
    pub ipv6: bool,
    pub start: bool,
    pub fail_action: bool,
    /// The public keys of the `ssh_keys` named (empty: a root password is set instead).
    pub ssh_keys: Vec<String>,
}

impl State {
    pub fn new(token: String) -> State {
        let token_for_readonly = token.clone();
        let mut images = BTreeMap::new();
        for &(id, name, arch, version) in catalog::SYSTEM_IMAGES {
            images.insert(
                id,
                ImageRec {
                    id,
                    kind: image::Type::System,
                    name: Some(name.into()),
                    arch,
                    labels: BTreeMap::new(),
                    description: name.replace('-', " "),
                    created: "2023-06-13T06:00:00+00:00".into(),
                    disk_size: 5.0,
                    created_from: None,
                    status: image::Status::Available,
                    os_version: Some(version.into()),
                    protected: false,
                },
            );
        }
        State {
            token,
            next_id: 1000,
            servers: BTreeMap::new(),
            images,
            actions: BTreeMap::new(),
            sales: catalog::Sales::default(),
            ssh_keys: BTreeMap::new(),
            readonly_token: format!("{token_for_readonly}-readonly"),
            image_deprecations: BTreeMap::new(),
            faults: Faults::default(),
            action_delay: Duration::from_millis(100),
            command_times: BTreeMap::new(),
            clock_skew: 0,
            bucket: Bucket {
                limit: 3600,
                tokens: 3600.0,
                refill: 1.0,
                last: Instant::now(),
            },
            calls: BTreeMap::new(),
            rate_limited: 0,
            requests: Vec::new(),
            last_create: None,
            realized: BTreeSet::new(),
            ever_realized: BTreeSet::new(),
        }
    }

    pub fn alloc_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// A new action, `running` for the current `action_delay`.
    pub fn new_action(&mut self, command: &str, resources: Vec<(i64, &'static str)>) -> i64 {
        let id = self.alloc_id();
        let delay = self
            .command_times
            .get(command)
            .copied()
            .unwrap_or(self.action_delay);
        let action = ActionRec {
            id,
            command: command.into(),
            status: action::Status::Running,
            started: now_rfc3339(),
            started_at: Instant::now(),
            delay,
            finished: None,
            error: None,
            resources,
        };
        self.actions.insert(id, action);
        id
    }

    /// A server is locked while any action on it runs (create and start during boot, delete,
    /// poweroff, create_image): FACTS.md "Locks", from hcloud-go's `ErrorCodeLocked` ("item is
    /// locked, another action is running") and the create answer's `"locked": true`.
    pub fn is_locked(&self, id: i64) -> bool {
        self.servers.get(&id).is_some_and(|s| s.locked)
            || self.actions.values().any(|a| {
                a.status == action::Status::Running && a.resources.contains(&(id, "server"))
            })
    }

    /// The API's now, skewed as scripted.
    pub fn api_time(&self) -> SystemTime {
        let now = SystemTime::now();
        let skew = Duration::from_secs(self.clock_skew.unsigned_abs());
        if self.clock_skew >= 0 {
            now + skew
        } else {
            now - skew
        }
    }

    pub fn finish_action(&mut self, id: i64, error: Option<(&str, &str)>) {
        if let Some(a) = self.actions.get_mut(&id) {
            a.finished = Some(now_rfc3339());
            a.status = if error.is_some() {
                action::Status::Error
            } else {
                action::Status::Success
            };
            a.error = error.map(|(c, m)| (c.to_owned(), m.to_owned()));
        }
    }

    /// Validate a `POST /servers` body the way the API does, and apply the scripted faults.
    pub fn plan_create(&mut self, body: &Value) -> Result<CreatePlan, ApiError> {
        let text = |field: &str| -> Result<String, ApiError> {
            match body.get(field) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                None | Some(Value::Null) => Err(ApiError::invalid_field(field, "is required")),
                Some(_) => Err(ApiError::invalid_field(field, "must be a string")),
            }
        };
        let name = text("name")?;
        if !valid_hostname(&name) {
            return Err(ApiError::invalid_field(
                "name",
                "must be a valid hostname (RFC 1123)",
            ));
        }
        let type_name = text("server_type")?;
        let spec = catalog::server_type(&type_name).ok_or_else(|| {
            ApiError::new(
                "invalid_input",
                format!("server type '{type_name}' not found"),
            )
        })?;
        let location = match body.get("location") {
            None | Some(Value::Null) => "fsn1".to_owned(),
            Some(_) => {
                let l = text("location")?;
                catalog::location(&l)
                    .map(|l| l.1.to_owned())
                    .ok_or_else(|| {
                        ApiError::new("invalid_input", format!("location '{l}' not found"))
                    })?
            }
        };
        let image_ref = text("image")?;
        let image = self
            .images
            .values()
            .find(|i| {
                i.id.to_string() == image_ref
                    || (i.name.as_deref() == Some(&image_ref) && i.arch == spec.arch)
            })
            .ok_or_else(|| {
                ApiError::new("invalid_input", format!("image '{image_ref}' not found"))
            })?;
        // An image boots only a type of its architecture with at least its disk (FACTS.md
        // "Snapshots"; the OpenAPI description's `image.disk_size`: "size of the disk contained
        // in the image"). The launcher picks only `status=available` golden snapshots of the
        // build's architecture, so the status is not judged here.
        if image.arch != spec.arch {
            return Err(ApiError::new(
                "invalid_input",
                "image architecture does not match the server type's architecture",
            ));
        }
        if image.disk_size > spec.disk_gb {
            return Err(ApiError::new(
                "invalid_input",
                "image disk is bigger than the server type's disk",
            ));
        }
        let image = image.id;
        let labels = labels_field(body.get("labels"))?;
        let user_data = match body.get("user_data") {
            None | Some(Value::Null) => String::new(),
            Some(_) => text("user_data")?,
        };
        if user_data.len() > USER_DATA_MAX {
            return Err(ApiError::invalid_field(
                "user_data",
                "is longer than 32 KiB",
            ));
        }
        let flag = |net: &str, key: &str| {
            body.get(net)
                .and_then(|n| n.get(key))
                .and_then(Value::as_bool)
                .unwrap_or(true)
        };
        let (ipv4, ipv6) = (
            flag("public_net", "enable_ipv4"),
            flag("public_net", "enable_ipv6"),
        );
        // Neither a public IP nor a private network: refused. The API "did not allow creating
        // servers with neither public nor private networking" (ansible-collections/
        // hetzner.hcloud PR #160, which fixed issue #150 by passing `networks`); a server
        // without Primary IPs must be in a private network (Hetzner docs, "Primary IPs"). The
        // code is the API's for a refused field; the wording here is the simulator's own.
        let networks = body
            .get("networks")
            .and_then(Value::as_array)
            .is_some_and(|n| !n.is_empty());
        if !ipv4 && !ipv6 && !networks {
            return Err(ApiError::invalid_field(
                "public_net",
                "a server without public IPs must be attached to a private network (networks)",
            ));
        }
        let start = body
            .get("start_after_create")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if !catalog::sold_in(spec, &location, &self.sales) {
            return Err(ApiError::new(
                "invalid_input",
                "unsupported location for server type",
            ));
        }
        // `ssh_keys`: ids or names of the project's keys. Without any, Hetzner sets a root
        // password (returned as `root_password`, e-mailed to the owner, expired).
        let mut ssh_keys = Vec::new();
        match body.get("ssh_keys") {
            None | Some(Value::Null) => {}
            Some(Value::Array(refs)) => {
                for r in refs {
                    let text = match r {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => {
                            return Err(ApiError::invalid_field(
                                "ssh_keys",
                                "must be ids or names",
                            ));
                        }
                    };
                    let key = self
                        .ssh_keys
                        .values()
                        .find(|k| k.name == text || k.id.to_string() == text)
                        .ok_or_else(|| {
                            ApiError::invalid_field(
                                "ssh_keys",
                                format!("SSH key '{text}' not found"),
                            )
                        })?;
                    ssh_keys.push(key.public_key.clone());
                }
            }
            Some(_) => return Err(ApiError::invalid_field("ssh_keys", "must be a list")),
        }
        if self.servers.values().any(|s| s.name == name) {
            return Err(ApiError::new(
                "uniqueness_error",
                "server name is already used",
            ));
        }
        if let Some(code) = self.faults.locations.get(&location) {
            return Err(ApiError::new(code, message_for(code)));
        }
        // Out of stock: 412 `resource_unavailable`, whatever `available` says (catalog.rs).
        if self
            .sales
            .sold_out
            .contains(&(spec.name.to_owned(), location.clone()))
        {
            return Err(ApiError::new(
                "resource_unavailable",
                message_for("resource_unavailable"),
            ));
        }
        if take(&mut self.faults.quota) {
            return Err(ApiError::new(
                "resource_limit_exceeded",
                message_for("resource_limit_exceeded"),
            ));
        }
        let fail_action = take(&mut self.faults.fail_create_actions);
        Ok(CreatePlan {
            name,
            server_type: spec,
            location,
            image,
            labels,
            user_data,
            ipv4,
            ipv6,
            start,
            fail_action,
            ssh_keys,
        })
    }

    pub fn sim_server(&self, s: &ServerRec) -> SimServer {
        SimServer {
            id: s.id,
            name: s.name.clone(),
            labels: s.labels.clone(),
            server_type: s.server_type.name.into(),
            location: s.location.clone(),
            status: enum_text(&s.status),
            runner: s.runner.clone(),
            ip: s.ipv4.clone(),
        }
    }

    pub fn server_model(&self, s: &ServerRec) -> Server {
        let octets = s.ipv4.as_deref().unwrap_or("0.0.0.0").replace('.', "-");
        let ipv4 = s.ipv4.as_ref().map(|ip| {
            let mut v4 = Ipv4::new(
                false,
                format!("static.{octets}.clients.your-server.de"),
                ip.clone(),
            );
            v4.id = Some(s.id * 10 + 4);
            v4
        });
        let ipv6 = s.ipv6.as_ref().map(|ip| {
            let mut v6 = Ipv6::new(false, Some(Vec::new()), ip.clone());
            v6.id = Some(s.id * 10 + 6);
            v6
        });
        let mut model = Server::new(
            None,
            s.created.clone(),
            s.id,
            s.image.and_then(|i| self.images.get(&i)).map(image_model),
            Some(catalog::INCLUDED_TRAFFIC),
            Some(0),
            None,
            s.labels.clone().into_iter().collect(),
            catalog::location_model(&s.location),
            s.locked,
            s.name.clone(),
            Some(0),
            s.server_type.disk_gb as i32,
            Vec::new(),
            ServerProtection::new(false, false),
            ServerPublicNet::new(Vec::new(), ipv4, ipv6),
            false,
            catalog::server_type_model(s.server_type, &self.sales),
            s.status,
        );
        model.locked = self.is_locked(s.id);
        model.load_balancers = Some(Vec::new());
        model.volumes = Some(Vec::new());
        model.placement_group = Some(None);
        model
    }
}

/// Decrement a fault counter; true when it was set.
pub(super) fn take(counter: &mut u32) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

/// The wire name of one of the crate's enums (`running`, `x86`…).
pub(super) fn enum_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
