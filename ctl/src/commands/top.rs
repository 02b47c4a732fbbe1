//! `berthctl top nodes|tasks`: what nodes and tasks use now, as measured by
//! the agents (Docker stats) and reported in their heartbeats. The leader
//! keeps the latest report in memory; one report of its usage stream is
//! one consistent picture.

use anyhow::bail;
use berth_proto::pb;
use berth_proto::quantity::{format_cpu, format_memory};

use crate::Context;
use crate::cli::TopArgs;
use crate::output::{age, table};

fn percent(used: i64, of: i64) -> String {
    if of <= 0 {
        return "-".into();
    }
    format!("{}%", used * 100 / of)
}

pub async fn run(ctx: &Context, args: TopArgs) -> anyhow::Result<()> {
    let what = args.kind.as_str();
    let nodes_wanted = matches!(what, "nodes" | "node" | "no");
    let tasks_wanted = matches!(what, "tasks" | "task" | "t");
    if !nodes_wanted && !tasks_wanted {
        bail!("top: {what:?} is not nodes or tasks");
    }
    let request = pb::WatchUsageRequest { interval_ms: 1000 };
    let mut stream = ctx
        .client
        .call_nodes(|mut c| async move { c.watch_usage(request).await })
        .await
        .map_err(|s| ctx.error(&s))?
        .into_inner();
    let report = match stream.message().await {
        Ok(Some(report)) => report,
        Ok(None) => bail!("the server sent no usage report"),
        Err(s) => return Err(ctx.error(&s)),
    };
    if nodes_wanted {
        let (nodes, _) = ctx.list(pb::Kind::Node, None, "").await?;
        let mut rows = Vec::new();
        for node in &nodes {
            let name = node.name().to_string();
            let allocatable = node
                .as_node()
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.allocatable.clone())
                .unwrap_or_default();
            let seen = report.nodes.iter().find(|n| n.node == name);
            let usage = seen.and_then(|n| n.usage).unwrap_or_default();
            rows.push(vec![
                name,
                format_cpu(usage.cpu_millis),
                percent(usage.cpu_millis, allocatable.cpu_millis),
                format_memory(usage.memory_bytes),
                percent(usage.memory_bytes, allocatable.memory_bytes),
                seen.map_or("-".into(), |n| age(n.last_heartbeat_ms)),
            ]);
        }
        let header = ["NAME", "CPU", "CPU%", "MEMORY", "MEMORY%", "LAST HEARTBEAT"];
        crate::say!("{}", table(Some(header.map(String::from).to_vec()), rows));
        return Ok(());
    }
    let namespace = ctx.namespace_or_default();
    let all = args.all_namespaces;
    let mut rows = Vec::new();
    for node in &report.nodes {
        for task in &node.tasks {
            if !all && task.namespace != namespace {
                continue;
            }
            let usage = task.usage.unwrap_or_default();
            let mut row = vec![
                task.name.clone(),
                node.node.clone(),
                format_cpu(usage.cpu_millis),
                format_memory(usage.memory_bytes),
            ];
            if all {
                row.insert(0, task.namespace.clone());
            }
            rows.push(row);
        }
    }
    rows.sort();
    let mut header = vec!["NAME", "NODE", "CPU", "MEMORY"];
    if all {
        header.insert(0, "NAMESPACE");
    }
    crate::say!(
        "{}",
        table(Some(header.into_iter().map(String::from).collect()), rows)
    );
    Ok(())
}
