//! `berthctl describe KIND NAME`: one object in detail, with what relates to
//! it (a job's tasks, a node's tasks and load, a namespace's quota use) and
//! its events.

use std::collections::BTreeMap;
use std::fmt::Write;

use berth_proto::pb::{self, object::Kind as Body};
use berth_proto::quantity::{format_cpu, format_memory};

use crate::Context;
use crate::cli::DescribeArgs;
use crate::manifest::Manifest;
use crate::output;

pub async fn run(ctx: &Context, args: DescribeArgs) -> anyhow::Result<()> {
    let kind = crate::parse_kind(&args.kind)?;
    let namespace = if kind.is_namespaced() {
        ctx.namespace_or_default()
    } else {
        String::new()
    };
    let object = ctx
        .get(kind, namespace.clone(), &args.name)
        .await
        .map_err(|s| ctx.error(&s))?;
    let mut out = String::new();
    header(&mut out, &object);
    body(&mut out, &object)?;

    match &object.kind {
        Some(Body::Job(_)) => {
            let (tasks, _) = ctx
                .list(pb::Kind::Task, Some(namespace.clone()), "")
                .await?;
            let tasks: Vec<_> = tasks
                .into_iter()
                .filter(|t| matches!(&t.kind, Some(Body::Task(t)) if t.spec.as_ref().is_some_and(|s| s.job == args.name)))
                .collect();
            section(&mut out, "Tasks", pb::Kind::Task, &tasks, false);
        }
        Some(Body::Node(node)) => {
            let (tasks, _) = ctx.list(pb::Kind::Task, None, "").await?;
            let tasks: Vec<_> = tasks
                .into_iter()
                .filter(|t| matches!(&t.kind, Some(Body::Task(t)) if t.status.as_ref().is_some_and(|s| s.node == args.name)))
                .collect();
            allocation(&mut out, node, &tasks);
            section(&mut out, "Tasks", pb::Kind::Task, &tasks, true);
        }
        Some(Body::Namespace(ns)) => {
            let (jobs, _) = ctx.list(pb::Kind::Job, Some(args.name.clone()), "").await?;
            quota_use(&mut out, ns, &jobs);
        }
        _ => {}
    }

    if kind != pb::Kind::Event {
        let (events, _) = ctx
            .list(
                pb::Kind::Event,
                (!namespace.is_empty()).then_some(namespace),
                "",
            )
            .await?;
        let events: Vec<_> = events
            .into_iter()
            .filter(|e| match &e.kind {
                Some(Body::Event(e)) => e
                    .involved
                    .as_ref()
                    .is_some_and(|i| i.kind == kind as i32 && i.name == args.name),
                _ => false,
            })
            .collect();
        section(&mut out, "Events", pb::Kind::Event, &events, false);
    }
    crate::say_raw!("{out}");
    Ok(())
}

fn header(out: &mut String, object: &pb::Object) {
    let meta = object.metadata().cloned().unwrap_or_default();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "{:<14}{v}", format!("{k}:"));
    };
    line("Name", meta.name.clone());
    if !meta.namespace.is_empty() {
        line("Namespace", meta.namespace.clone());
    }
    line("Kind", object.kind().title().to_string());
    line(
        "Labels",
        if meta.labels.is_empty() {
            "<none>".into()
        } else {
            meta.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    line("UID", meta.uid.clone());
    line(
        "Created",
        format!("{} ago", output::age(meta.created_at_ms)),
    );
    line(
        "Version",
        format!(
            "resource version {}, generation {}",
            meta.resource_version, meta.generation
        ),
    );
}

/// Everything but metadata, in manifest form.
fn body(out: &mut String, object: &pb::Object) -> anyhow::Result<()> {
    let mut value = serde_yaml::to_value(Manifest::from_object(object))?;
    if let serde_yaml::Value::Mapping(map) = &mut value {
        for key in ["apiVersion", "kind", "metadata"] {
            map.remove(key);
        }
        if !map.is_empty() {
            out.push('\n');
            out.push_str(&serde_yaml::to_string(&value)?);
        }
    }
    Ok(())
}

fn section(
    out: &mut String,
    title: &str,
    kind: pb::Kind,
    objects: &[pb::Object],
    with_namespace: bool,
) {
    let _ = writeln!(out, "\n{title}:");
    if objects.is_empty() {
        let _ = writeln!(out, "  <none>");
        return;
    }
    let rows = objects
        .iter()
        .map(|o| output::row(o, false, with_namespace))
        .collect();
    let table = output::table(Some(output::header(kind, false, with_namespace)), rows);
    for line in table.lines() {
        let _ = writeln!(out, "  {line}");
    }
}

/// Requests of the tasks bound to a node, against what it can allocate.
fn allocation(out: &mut String, node: &pb::Node, tasks: &[pb::Object]) {
    let (mut cpu, mut memory) = (0i64, 0i64);
    for t in tasks {
        if let Some(Body::Task(t)) = &t.kind
            && let Some(r) = t
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.resources.as_ref())
        {
            cpu += r.cpu_millis;
            memory += r.memory_bytes;
        }
    }
    let alloc = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.clone().or(s.capacity.clone()))
        .unwrap_or_default();
    let _ = writeln!(out, "\nAllocated (requests of bound tasks / allocatable):");
    let _ = writeln!(
        out,
        "  cpu      {} / {}",
        format_cpu(cpu),
        format_cpu(alloc.cpu_millis)
    );
    let _ = writeln!(
        out,
        "  memory   {} / {}",
        format_memory(memory),
        format_memory(alloc.memory_bytes)
    );
}

/// Sum of replicas × requests per tier, against the namespace's quota.
fn quota_use(out: &mut String, ns: &pb::Namespace, jobs: &[pb::Object]) {
    let quota = ns
        .spec
        .as_ref()
        .and_then(|s| s.quota.clone())
        .unwrap_or_default();
    let mut used: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for job in jobs {
        if let Some(Body::Job(j)) = &job.kind
            && let Some(spec) = &j.spec
        {
            let r = spec
                .template
                .as_ref()
                .and_then(|t| t.resources.clone())
                .unwrap_or_default();
            let tier = match spec.tier() {
                pb::Tier::Prod => "prod",
                _ => "batch",
            };
            let entry = used.entry(tier).or_default();
            entry.0 += r.cpu_millis * i64::from(spec.replicas);
            entry.1 += r.memory_bytes * i64::from(spec.replicas);
        }
    }
    let _ = writeln!(out, "\nQuota (requests of all jobs / limit):");
    for (tier, limits) in [("prod", &quota.prod), ("batch", &quota.batch)] {
        let (cpu, memory) = used.get(tier).copied().unwrap_or_default();
        let limit = |v: Option<i64>, f: fn(i64) -> String| v.map_or("unlimited".to_string(), f);
        let limits = limits.clone().unwrap_or_default();
        let _ = writeln!(
            out,
            "  {tier:<6} cpu {} / {}   memory {} / {}",
            format_cpu(cpu),
            limit(limits.cpu_millis, format_cpu),
            format_memory(memory),
            limit(limits.memory_bytes, format_memory),
        );
    }
}
