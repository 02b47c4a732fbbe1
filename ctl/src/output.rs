//! How `get` prints objects: aligned columns as kubectl does, or wide, YAML,
//! JSON or names.

use std::time::{SystemTime, UNIX_EPOCH};

use berth_proto::pb::{self, object::Kind as Body};
use berth_proto::quantity::{format_cpu, format_memory, format_memory_short};
use comfy_table::{Table, presets};

use crate::manifest::values::{NodeState, RestartPolicy, TaskPhase, Tier};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// More columns.
    Wide,
    /// YAML documents that `apply` accepts again.
    Yaml,
    Json,
    /// `kind/name` per line.
    Name,
}

/// A column table without borders, columns three spaces apart.
pub fn table(header: Option<Vec<String>>, rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    if let Some(header) = header {
        table.set_header(header);
    }
    table.add_rows(rows);
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    table.trim_fmt()
}

/// The columns of a kind, with a NAMESPACE column first when listing several
/// namespaces.
pub fn header(kind: pb::Kind, wide: bool, with_namespace: bool) -> Vec<String> {
    let mut columns: Vec<&str> = match kind {
        pb::Kind::Namespace => vec!["NAME", "PROD QUOTA", "BATCH QUOTA", "AGE"],
        pb::Kind::Node => vec!["NAME", "STATUS", "CPU", "MEMORY", "AGE"],
        pb::Kind::Job => vec!["NAME", "TIER", "PRIORITY", "READY", "STATUS", "AGE"],
        pb::Kind::Task => vec!["NAME", "PHASE", "NODE", "RESTARTS", "AGE"],
        pb::Kind::Event => vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        pb::Kind::Lease => vec!["NAME", "HOLDER", "RENEWED", "DURATION", "AGE"],
        pb::Kind::Unspecified => vec!["NAME"],
    };
    if wide {
        columns.extend(match kind {
            pb::Kind::Node => vec!["ADDRESS", "CPU USED", "MEMORY USED", "LABELS"],
            pb::Kind::Job => vec!["IMAGE", "CPU", "MEMORY", "RESTART", "LABELS"],
            pb::Kind::Task => vec!["JOB", "IMAGE", "EXIT CODE", "MESSAGE"],
            pb::Kind::Event => vec!["SOURCE"],
            _ => vec!["LABELS"],
        });
    }
    if with_namespace && kind.is_namespaced() {
        columns.insert(0, "NAMESPACE");
    }
    columns.into_iter().map(String::from).collect()
}

/// One table row for `object`.
pub fn row(object: &pb::Object, wide: bool, with_namespace: bool) -> Vec<String> {
    let meta = object.metadata().cloned().unwrap_or_default();
    let age = age(meta.created_at_ms);
    let labels = || show_labels(&meta.labels);
    let mut row = match &object.kind {
        Some(Body::Namespace(ns)) => {
            let quota = ns
                .spec
                .as_ref()
                .and_then(|s| s.quota.clone())
                .unwrap_or_default();
            let mut row = vec![
                meta.name.clone(),
                limits(&quota.prod),
                limits(&quota.batch),
                age,
            ];
            if wide {
                row.push(labels());
            }
            row
        }
        Some(Body::Node(node)) => {
            let status = node.status.clone().unwrap_or_default();
            let mut state = match NodeState::from_pb(status.state) {
                Some(s) => s.text().to_string(),
                None => "Unknown".to_string(),
            };
            if node.spec.as_ref().is_some_and(|s| s.unschedulable) {
                state.push_str(",SchedulingDisabled");
            }
            let alloc = status
                .allocatable
                .clone()
                .or(status.capacity.clone())
                .unwrap_or_default();
            let mut row = vec![
                meta.name.clone(),
                state,
                format_cpu(alloc.cpu_millis),
                format_memory_short(alloc.memory_bytes),
                age,
            ];
            if wide {
                let usage = status.usage.unwrap_or_default();
                row.extend([
                    or_dash(&status.address),
                    format_cpu(usage.cpu_millis),
                    format_memory_short(usage.memory_bytes),
                    show_labels(&status.labels),
                ]);
            }
            row
        }
        Some(Body::Job(job)) => {
            let spec = job.spec.clone().unwrap_or_default();
            let status = job.status.unwrap_or_default();
            let mut row = vec![
                meta.name.clone(),
                Tier::show(spec.tier).to_string(),
                spec.priority.to_string(),
                format!("{}/{}", status.running, spec.replicas),
                job_status(&status),
                age,
            ];
            if wide {
                let template = spec.template.unwrap_or_default();
                let resources = template.resources.unwrap_or_default();
                row.extend([
                    template.image,
                    format_cpu(resources.cpu_millis),
                    format_memory(resources.memory_bytes),
                    RestartPolicy::show(template.restart_policy).to_string(),
                    labels(),
                ]);
            }
            row
        }
        Some(Body::Task(task)) => {
            let spec = task.spec.clone().unwrap_or_default();
            let status = task.status.clone().unwrap_or_default();
            let phase = TaskPhase::from_pb(status.phase).unwrap_or(TaskPhase::Pending);
            let mut row = vec![
                meta.name.clone(),
                phase.text().to_string(),
                or_dash(&status.node),
                status.restarts.to_string(),
                age,
            ];
            if wide {
                row.extend([
                    spec.job,
                    spec.template.map(|t| t.image).unwrap_or_default(),
                    status.exit_code.map_or("-".into(), |c| c.to_string()),
                    or_dash(&status.message),
                ]);
            }
            row
        }
        Some(Body::Event(event)) => {
            let involved = event.involved.clone().unwrap_or_default();
            let kind = pb::Kind::try_from(involved.kind).unwrap_or(pb::Kind::Unspecified);
            let mut row = vec![
                self::age(event.time_ms.max(meta.created_at_ms)),
                crate::manifest::values::EventType::show(event.r#type).to_string(),
                event.reason.clone(),
                format!("{}/{}", kind.title().to_ascii_lowercase(), involved.name),
                event.message.clone(),
            ];
            if wide {
                row.push(or_dash(&event.source));
            }
            row
        }
        Some(Body::Lease(lease)) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let mut row = vec![
                meta.name.clone(),
                or_dash(&spec.holder),
                format!("{} ago", self::age(spec.renewed_at_ms)),
                humantime::format_duration(std::time::Duration::from_millis(spec.duration_ms))
                    .to_string(),
                age,
            ];
            if wide {
                row.push(labels());
            }
            row
        }
        None => vec![meta.name.clone()],
    };
    if with_namespace && object.kind().is_namespaced() {
        row.insert(0, meta.namespace);
    }
    row
}

fn show_labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        "<none>".to_string()
    } else {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A job's state in a word or two.
fn job_status(status: &pb::JobStatus) -> String {
    match status.phase() {
        pb::JobPhase::Succeeded => "Succeeded".into(),
        pb::JobPhase::Failed => "Failed".into(),
        pb::JobPhase::Unspecified => "-".into(),
        pb::JobPhase::Running if status.pending > 0 => format!("{} pending", status.pending),
        pb::JobPhase::Running => "Running".into(),
    }
}

/// `job/web`.
pub fn name(object: &pb::Object) -> String {
    format!(
        "{}/{}",
        object.kind().title().to_ascii_lowercase(),
        object.name()
    )
}

fn limits(limits: &Option<pb::QuotaLimits>) -> String {
    let Some(l) = limits else {
        return "-".into();
    };
    let mut parts = Vec::new();
    if let Some(cpu) = l.cpu_millis {
        parts.push(format!("cpu={}", format_cpu(cpu)));
    }
    if let Some(memory) = l.memory_bytes {
        parts.push(format!("memory={}", format_memory(memory)));
    }
    parts.extend(l.extended.iter().map(|(k, v)| format!("{k}={v}")));
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// Time since `ms` the way kubectl prints it: `45s`, `3m`, `5h`, `2d`.
pub fn age(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let secs = (now - ms).max(0) / 1000;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 120 * 60 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_without_borders() {
        let out = table(
            Some(vec!["NAME".into(), "AGE".into()]),
            vec![
                vec!["web".into(), "5s".into()],
                vec!["database".into(), "10m".into()],
            ],
        );
        assert_eq!(out, "NAME       AGE\nweb        5s\ndatabase   10m");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert_eq!(age(now - 5_000), "5s");
        assert_eq!(age(now - 3 * 3600 * 1000), "3h");
        assert_eq!(age(0), "-");
    }
}
