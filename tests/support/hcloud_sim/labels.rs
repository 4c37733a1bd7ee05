//! Labels in the Hetzner Cloud API simulator (a test double of Hetzner's API, not the real
//! thing): the label syntax the API enforces on `labels` fields (and server names as RFC 1123
//! hostnames), and label selectors (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (…)`,
//! `k notin (…)`, comma-separated and ANDed) as the list endpoints apply them.

use std::collections::BTreeMap;

use serde_json::Value;

use super::state::ApiError;

/// The `labels` field of a request body, checked against Hetzner's label syntax.
pub(super) fn labels_field(value: Option<&Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut labels = BTreeMap::new();
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(labels);
    };
    let Some(map) = value.as_object() else {
        return Err(ApiError::invalid_field("labels", "must be an object"));
    };
    for (k, v) in map {
        let Some(v) = v.as_str() else {
            return Err(ApiError::invalid_field(
                "labels",
                format!("value of '{k}' must be a string"),
            ));
        };
        if !valid_label_key(k) || !valid_label_value(v) {
            return Err(ApiError::invalid_field(
                "labels",
                format!("'{k}: {v}' is not a valid label"),
            ));
        }
        labels.insert(k.clone(), v.to_owned());
    }
    Ok(labels)
}

/// `[prefix/]name`: prefix a DNS subdomain, name 1–63 of `[a-zA-Z0-9._-]`, alphanumeric ends.
fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        p.len() <= 253 && !p.starts_with("hetzner.cloud") && p.split('.').all(valid_dns_label)
    });
    prefix_ok && !name.is_empty() && valid_label_value(name)
}

fn valid_label_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && (v.is_empty()
            || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())))
}

fn valid_dns_label(l: &str) -> bool {
    (1..=63).contains(&l.len())
        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

pub(super) fn valid_hostname(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(valid_dns_label)
}

/// One requirement of a label selector.
pub(super) enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`; commas AND them.
pub(super) fn parse_selector(selector: &str) -> Result<Vec<Requirement>, ApiError> {
    let bad = || {
        ApiError::invalid_field(
            "label_selector",
            format!("invalid label selector '{selector}'"),
        )
    };
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    let set = |s: &str| -> Option<Vec<String>> {
        let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
        Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    let mut reqs = Vec::new();
    for term in terms.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        let req = if let Some(key) = term.strip_prefix('!') {
            Requirement::Absent(key.trim().to_owned())
        } else if let Some((k, rest)) = term.split_once(" notin ") {
            Requirement::NotIn(k.trim().to_owned(), set(rest).ok_or_else(bad)?)
        } else if let Some((k, rest)) = term.split_once(" in ") {
            Requirement::In(k.trim().to_owned(), set(rest).ok_or_else(bad)?)
        } else if let Some((k, v)) = term.split_once("!=") {
            Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
        } else {
            Requirement::Exists(term.to_owned())
        };
        let key = match &req {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::Exists(k)
            | Requirement::Absent(k)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _) => k,
        };
        if !valid_label_key(key) {
            return Err(bad());
        }
        reqs.push(req);
    }
    Ok(reqs)
}

pub(super) fn selects(reqs: &[Requirement], labels: &BTreeMap<String, String>) -> bool {
    reqs.iter().all(|r| match r {
        Requirement::Equals(k, v) => labels.get(k) == Some(v),
        Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
        Requirement::Exists(k) => labels.contains_key(k),
        Requirement::Absent(k) => !labels.contains_key(k),
        Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
        Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
    })
}
