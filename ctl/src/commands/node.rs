//! `berthctl cordon|uncordon|drain NODE`, as `kubectl` has them.
//!
//! Cordon marks the node unschedulable: tasks already there stay, no new
//! one is placed. Drain cordons, then evicts the node's tasks — marks them
//! Killed, so that their node's agent stops them and their jobs replace them
//! elsewhere — a few at a time: a job never has more tasks down at once than
//! its `maxUnavailable` allows (its rollout setting, as a
//! PodDisruptionBudget would say it in Kubernetes). A job already at its
//! limit waits until its replacements run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use berth_proto::pb;
use berth_proto::pb::batch_op::Op;
use indicatif::{ProgressBar, ProgressStyle};
use tonic::Code;

use crate::Context;
use crate::cli::{DrainArgs, NodeArgs};

/// Tries before giving up when the node keeps changing under us.
const ATTEMPTS: usize = 5;

/// How often a drain looks at the cluster again.
const POLL: Duration = Duration::from_millis(250);

pub async fn cordon(ctx: &Context, args: NodeArgs) -> anyhow::Result<()> {
    if set_unschedulable(ctx, &args.node, true).await? {
        crate::say!("node/{} cordoned", args.node);
    } else {
        crate::say!("node/{} already cordoned", args.node);
    }
    Ok(())
}

pub async fn uncordon(ctx: &Context, args: NodeArgs) -> anyhow::Result<()> {
    if set_unschedulable(ctx, &args.node, false).await? {
        crate::say!("node/{} uncordoned", args.node);
    } else {
        crate::say!("node/{} already schedulable", args.node);
    }
    Ok(())
}

/// Sets the node's `unschedulable`, writing at the version read; returns
/// whether it changed. Uncordoning also lifts an agent's drain mark.
async fn set_unschedulable(ctx: &Context, node: &str, value: bool) -> anyhow::Result<bool> {
    for _ in 0..ATTEMPTS {
        let mut object = ctx
            .get(pb::Kind::Node, String::new(), node)
            .await
            .map_err(|s| ctx.error(&s))?;
        let Some(pb::object::Kind::Node(n)) = &mut object.kind else {
            bail!("node/{node}: the server answered with another kind");
        };
        let spec = n.spec.get_or_insert_with(Default::default);
        if spec.unschedulable == value {
            return Ok(false);
        }
        spec.unschedulable = value;
        if !value && let Some(meta) = object.metadata_mut() {
            meta.labels.remove(berth_agent::node::DRAINED_LABEL);
        }
        match ctx.client.apply(object, false).await {
            Ok(_) => return Ok(true),
            // Changed since we read it (a heartbeat's state change): again.
            Err(status) if status.code() == Code::Aborted => continue,
            Err(status) => bail!("node/{node}: {}", ctx.explain(&status)),
        }
    }
    bail!("node/{node} kept changing; try again")
}

/// A job's tasks, as a drain weighs them.
#[derive(Debug, Default)]
struct JobView {
    replicas: u32,
    /// Tasks down that a drain may add to (see [`disruption_budget`]).
    budget: u32,
    /// Tasks of the job running anywhere.
    running: u32,
    /// Live tasks of the job on the node being drained.
    here: Vec<pb::Object>,
}

/// How many of a job's tasks may be down at once: its `maxUnavailable`
/// when set (0 blocks a drain, as a PodDisruptionBudget of 0 does), else a
/// quarter of its replicas, at least one — so that a job of one replica can
/// be drained, as `kubectl drain` drains a pod without a budget.
fn disruption_budget(spec: &pb::JobSpec) -> u32 {
    spec.update
        .and_then(|u| u.max_unavailable)
        .unwrap_or((spec.replicas / 4).max(1))
}

/// The live tasks on `node`, by job, with each job's state.
async fn survey(ctx: &Context, node: &str) -> anyhow::Result<BTreeMap<(String, String), JobView>> {
    let (jobs, _) = ctx.list(pb::Kind::Job, None, "").await?;
    let (tasks, _) = ctx.list(pb::Kind::Task, None, "").await?;
    let mut views: BTreeMap<(String, String), JobView> = BTreeMap::new();
    for object in &jobs {
        let Some(job) = object.as_job() else { continue };
        let spec = job.spec.clone().unwrap_or_default();
        views.insert(
            (object.namespace().to_string(), object.name().to_string()),
            JobView {
                replicas: spec.replicas,
                budget: disruption_budget(&spec),
                ..Default::default()
            },
        );
    }
    for object in tasks {
        let Some(task) = object.as_task() else {
            continue;
        };
        let (Some(spec), Some(status)) = (&task.spec, &task.status) else {
            continue;
        };
        if status.phase().is_terminal() {
            continue;
        }
        let key = (object.namespace().to_string(), spec.job.clone());
        let view = views.entry(key).or_default();
        if status.phase() == pb::TaskPhase::Running {
            view.running += 1;
        }
        if status.node == node {
            view.here.push(object);
        }
    }
    views.retain(|_, view| !view.here.is_empty());
    Ok(views)
}

pub async fn drain(ctx: &Context, args: DrainArgs) -> anyhow::Result<()> {
    let node = args.node.as_str();
    if set_unschedulable(ctx, node, true).await? {
        crate::say!("node/{node} cordoned");
    }
    let deadline = Instant::now() + args.timeout;
    let first = survey(ctx, node).await?;
    let total: usize = first.values().map(|v| v.here.len()).sum();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} draining node/{prefix} [{bar:30}] {pos}/{len} tasks moved  {msg}",
        )
        .map_err(|e| anyhow::anyhow!("progress bar: {e}"))?
        .progress_chars("=> "),
    );
    bar.set_prefix(node.to_string());
    let mut evicted = 0usize;
    loop {
        let views = survey(ctx, node).await?;
        let left: usize = views.values().map(|v| v.here.len()).sum();
        bar.set_length(total.max(left) as u64);
        bar.set_position((total.max(left) - left) as u64);
        if left == 0 {
            bar.finish_with_message("done");
            break;
        }
        let mut ops = Vec::new();
        let mut waiting = Vec::new();
        for ((namespace, job), view) in views {
            // Down now: replicas not running (being replaced, or pending).
            let down = view.replicas.saturating_sub(view.running);
            let allowed = view.budget.saturating_sub(down) as usize;
            if allowed == 0 {
                waiting.push(format!(
                    "job {namespace}/{job}: {down} of {} replicas down, maxUnavailable {}",
                    view.replicas, view.budget
                ));
            }
            for object in view.here.into_iter().take(allowed) {
                ops.push(evict(object, node));
            }
        }
        if !ops.is_empty() {
            let response = ctx.client.batch(ops).await.map_err(|s| ctx.error(&s))?;
            // A task that changed meanwhile is looked at again next round.
            for result in response.results {
                if let Some(pb::batch_result::Result::Object(task)) = result.result {
                    evicted += 1;
                    let line = format!("task/{} evicted ({})", task.name(), task.namespace());
                    if bar.is_hidden() {
                        crate::say!("{line}");
                    } else {
                        bar.println(line);
                    }
                }
            }
            bar.set_message(format!("evicted {evicted}"));
        }
        if !waiting.is_empty() {
            bar.set_message(format!(
                "evicted {evicted}; waiting for {}",
                waiting.join("; ")
            ));
        }
        if Instant::now() >= deadline {
            bar.abandon();
            bail!(
                "node/{node} not drained within {:?}: {left} task(s) left{}",
                args.timeout,
                if waiting.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", waiting.join("; "))
                }
            );
        }
        tokio::time::sleep(POLL).await;
    }
    if bar.is_hidden() {
        // Not a terminal: say it in one line.
        crate::say!("node/{node} drained: {total} task(s) moved");
    }
    Ok(())
}

/// The write that evicts a task: Killed, so its job replaces it.
fn evict(mut object: pb::Object, node: &str) -> pb::BatchOp {
    if let Some(pb::object::Kind::Task(task)) = &mut object.kind
        && let Some(status) = task.status.as_mut()
    {
        status.phase = pb::TaskPhase::Killed as i32;
        status.message = format!("evicted: node {node} is being drained");
        status.finished_at_ms = berth_proto::process::now_ms();
    }
    pb::BatchOp {
        op: Some(Op::UpdateStatus(pb::UpdateStatusRequest {
            object: Some(object),
        })),
    }
}
