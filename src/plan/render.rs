//! The human form of a plan: the decision first, then its numbers, then the commands.

use std::fmt::Write;

use super::Plan;
use crate::config::Tier;
use crate::sizing::spec::describe_tier;

pub fn render_human(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Plan for {} on {}: {}",
        plan.history.key, plan.arch, plan.tier
    );
    let _ = writeln!(out);
    row(&mut out, "server", &server(&plan.server));
    row(
        &mut out,
        "why",
        &format!("{} ({})", plan.reason, source_name(plan)),
    );
    let retry = match &plan.retry_server {
        Some(t) => format!(
            "{}, once, if the build runs out of memory on {}",
            server(t),
            plan.tier
        ),
        None => match &plan.retry_note {
            Some(note) => format!("none: {note}"),
            None => format!(
                "none: {} is the largest {} tier, so running out of memory is final",
                plan.tier, plan.arch
            ),
        },
    };
    row(&mut out, "retry", &retry);
    rung(&mut out, &plan.rung);
    let cost = match plan.estimated_cost_eur {
        Some(eur) => format!("about {eur:.4} EUR ({})", plan.cost_basis),
        None => plan.cost_basis.clone(),
    };
    row(&mut out, "cost", &cost);
    if let Some(minutes) = plan.timeout_minutes {
        row(
            &mut out,
            "timeout",
            &format!("{minutes} minutes (from the spec file)"),
        );
    }
    row(
        &mut out,
        "history",
        &format!(
            "{} ({} successful builds of this key){}",
            plan.history.store,
            plan.samples,
            if plan.history.records {
                ""
            } else {
                "; read only: a pull-request build records no sample"
            }
        ),
    );
    let push = match &plan.build.registry {
        Some(_) if plan.dry_run => "not pushed: dry run",
        Some(_) if plan.build.by_digest => "this platform pushed by digest, listed in the index",
        Some(_) => "pushed",
        None => "not pushed: no --registry given",
    };
    row(
        &mut out,
        "images",
        &format!("{} ({push})", plan.images.join(", ")),
    );
    if let Some(cache) = &plan.cache_ref {
        row(&mut out, "cache", cache);
    }
    if let Some(extra) = plan.extra_caches.describe(plan.dry_run) {
        row(&mut out, "caches", &extra);
    }
    if let Some(note) = &plan.backend_note {
        row(&mut out, "backend", note);
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Commands on the runner:");
    for command in &plan.commands {
        // A multi-line script (buildah's) keeps every line under the heading.
        let _ = writeln!(out, "  {}", wrap_flags(command).replace('\n', "\n  "));
    }
    out
}

/// The rung's need, then one line per candidate in the order a create tries them.
fn rung(out: &mut String, rung: &super::Rung) {
    let need = &rung.need;
    row(
        out,
        "rung",
        &format!(
            "needs {} GB memory, {} vCPUs, {} GB disk ({}); a create tries, in this order ({}):",
            need.memory_gb, need.vcpus, need.disk_gb, need.arch, rung.source
        ),
    );
    let width = rung
        .candidates
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for c in &rung.candidates {
        let price = c
            .eur_per_hour
            .map_or_else(|| "no price".to_owned(), |p| format!("{p:.4} EUR/h"));
        let not_tried = c
            .above_ceiling
            .as_ref()
            .map(|why| format!("  not tried: {why}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "            {:<width$}  {:>2} vCPUs  {:>3} GB  {:>4} GB disk  {price}{not_tried}",
            c.name, c.vcpus, c.memory_gb, c.disk_gb
        );
    }
}

fn row(out: &mut String, label: &str, value: &str) {
    let _ = writeln!(out, "  {label:<9} {value}");
}

fn server(t: &Tier) -> String {
    format!("{} ({})", t.name, describe_tier(t))
}

fn source_name(plan: &Plan) -> &'static str {
    match plan.source {
        crate::sizing::Source::Spec => "source: spec",
        crate::sizing::Source::History => "source: history",
        crate::sizing::Source::Default => "source: default",
    }
}

/// Break a long build command before each `--flag`, shell-continued, so it reads as a list.
fn wrap_flags(command: &str) -> String {
    if command.len() <= 100 || !command.starts_with("buildctl ") {
        return command.to_owned();
    }
    let mut out = String::new();
    for (i, word) in command.split(' ').enumerate() {
        if i > 0 {
            if word.starts_with("--") {
                out.push_str(" \\\n    "); // indented by two more under the heading
            } else {
                out.push(' ');
            }
        }
        out.push_str(word);
    }
    out
}
