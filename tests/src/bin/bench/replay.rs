//! Replays a workload end to end: apiserver members + `berth-scheduler` (a
//! process) + simulated nodes (in this process), submitting every job as
//! fast as the apiserver takes them, and watching tasks to see when each is
//! bound (committed) and when the first one is turned away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_agent::sim::{self, SimConfig};
use berth_proto::connect::BerthClient;
use berth_proto::pb;
use berth_proto::pb::batch_op::Op;
use berth_tests::{Cluster, Component, try_wait_until};
use tokio::sync::watch;

use crate::workload::{Totals, Workload, first_refusal};

/// Most jobs, and most tasks in those jobs, per Batch request while
/// submitting: jobs arrive in trace order a few thousand tasks at a time, so
/// that the order in which they arrived means something to the scheduler.
const SUBMIT_JOBS: usize = 500;
const SUBMIT_TASKS: u64 = 2000;
/// With everything submitted and some task bound, no bind for this long
/// means the rest waits.
const QUIET: Duration = Duration::from_secs(5);
/// The longest a replay may take.
const LIMIT: Duration = Duration::from_secs(600);

pub struct Options {
    pub replicas: u64,
    pub policy: String,
    pub sample: usize,
    /// Extra scheduler flags.
    pub scheduler_args: Vec<String>,
}

/// What one replay measured.
pub struct Outcome {
    pub bound: u64,
    pub pending: u64,
    /// Of those, prod tasks.
    pub prod_pending: u64,
    /// Of those, tasks the scheduler never created.
    pub missing: u64,
    pub preempted: u64,
    /// First submission to the last bind.
    pub elapsed: Duration,
    /// What the bound tasks held when the first task was turned away.
    pub at_first_refusal: Option<Totals>,
    /// That task and the scheduler's reason.
    pub first_refused: Option<String>,
    /// What the bound tasks hold at the end.
    pub at_end: Totals,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        self.bound as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What the task watch has seen.
#[derive(Default)]
struct Progress {
    /// Tasks holding a node now: name → (incarnation, requests).
    holding: HashMap<String, (u64, Totals)>,
    held: Totals,
    /// Distinct (task, incarnation) bound so far.
    bound: u64,
    preempted: u64,
    last_bind: Option<Instant>,
    first_refusal: Option<Totals>,
    first_refused: Option<String>,
    /// Jobs that fit no node even when all are empty.
    never_fit: std::collections::HashSet<String>,
}

impl Progress {
    fn observe(&mut self, object: &pb::Object, deleted: bool) {
        let Some(task) = object.as_task() else { return };
        let name = object.name().to_string();
        let incarnation = task.spec.as_ref().map_or(0, |s| s.incarnation);
        let status = task.status.clone().unwrap_or_default();
        let holds = !deleted && task.holding_node().is_some();
        match (self.holding.get(&name).copied(), holds) {
            (Some((held_incarnation, _)), true) if held_incarnation == incarnation => {}
            (previous, true) => {
                if let Some((_, amount)) = previous {
                    self.held.add(amount, -1.0);
                }
                let amount = task.requests().map(Totals::of).unwrap_or_default();
                self.held.add(amount, 1.0);
                self.holding.insert(name, (incarnation, amount));
                self.bound += 1;
                self.last_bind = Some(Instant::now());
            }
            (Some((_, amount)), false) => {
                self.held.add(amount, -1.0);
                self.holding.remove(&name);
            }
            (None, false) => {}
        }
        if status.phase() == pb::TaskPhase::Preempted && !deleted {
            self.preempted += 1;
        }
        let refused =
            status.phase() == pb::TaskPhase::Pending && status.message.starts_with("0 of ");
        let job = task.spec.as_ref().map_or("", |s| s.job.as_str());
        if refused && self.first_refusal.is_none() && !self.never_fit.contains(job) {
            self.first_refusal = Some(self.held);
            self.first_refused = Some(format!("{}: {}", object.name(), status.message));
        }
    }
}

/// Follows every task change from `revision` into `progress`.
async fn follow(
    client: Arc<BerthClient>,
    revision: u64,
    progress: Arc<Mutex<Progress>>,
) -> anyhow::Result<()> {
    let request = pb::WatchRequest {
        kind: pb::Kind::Task as i32,
        from_revision: revision,
        ..Default::default()
    };
    let mut stream = client.objects().watch(request).await?.into_inner();
    while let Some(event) = stream.message().await? {
        if let Some(object) = &event.object {
            let deleted = event.r#type() == pb::WatchEventType::Deleted;
            progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .observe(object, deleted);
        }
    }
    Ok(())
}

/// `jobs` cut into submissions of at most `SUBMIT_JOBS` jobs and (unless a
/// single job is larger) `SUBMIT_TASKS` tasks.
fn submissions(jobs: &[pb::Object]) -> Vec<&[pb::Object]> {
    let mut chunks = Vec::new();
    let (mut start, mut tasks) = (0, 0u64);
    for (i, job) in jobs.iter().enumerate() {
        let replicas = job
            .as_job()
            .and_then(|j| j.spec.as_ref())
            .map_or(0, |s| u64::from(s.replicas));
        if i > start && (i - start >= SUBMIT_JOBS || tasks + replicas > SUBMIT_TASKS) {
            chunks.push(&jobs[start..i]);
            (start, tasks) = (i, 0);
        }
        tasks += replicas;
    }
    if start < jobs.len() {
        chunks.push(&jobs[start..]);
    }
    chunks
}

/// Runs `workload` once on a fresh cluster.
pub async fn run(workload: &Workload, options: &Options) -> anyhow::Result<Outcome> {
    let cluster = Cluster::start(
        options.replicas,
        &["--node-not-ready-after", "60s", "--node-lost-after", "300s"],
    );
    let servers = cluster.addresses().join(",");
    let client = Arc::new(BerthClient::from_list(&servers)?);
    cluster.wait_for_leader(Duration::from_secs(20)).await;

    // Simulated nodes, in this process.
    let (stop, stopped) = watch::channel(false);
    let fleet = tokio::spawn(sim::run(
        SimConfig {
            server: servers.clone(),
            nodes: workload.nodes.clone(),
            start_latency: Duration::ZERO,
            batch_runtime: None,
            usage: 0.5,
            heartbeat: Duration::from_secs(2),
        },
        berth_agent::Metrics::default(),
        stopped,
    ));
    let node_count = workload.nodes.len();
    try_wait_until(
        Duration::from_secs(120),
        "the simulated nodes to register",
        || async {
            client
                .list(pb::Kind::Node, "")
                .await
                .is_ok_and(|l| l.objects.len() == node_count)
        },
    )
    .await?;

    let sample = options.sample.to_string();
    let mut args = vec![
        "--policy",
        options.policy.as_str(),
        "--sample",
        &sample,
        "--no-reclaim",
    ];
    args.extend(options.scheduler_args.iter().map(String::as_str));
    let mut scheduler = Component::scheduler(&servers, &args);
    try_wait_until(
        Duration::from_secs(30),
        "the scheduler to take its lease",
        || async {
            client
                .get(pb::Kind::Lease, "default", "berth-scheduler")
                .await
                .is_ok_and(|o| {
                    o.as_lease()
                        .and_then(|l| l.spec.as_ref())
                        .is_some_and(|s| !s.holder.is_empty())
                })
        },
    )
    .await?;

    let progress = Arc::new(Mutex::new(Progress {
        never_fit: workload.never_fit.clone(),
        ..Default::default()
    }));
    let revision = client.list(pb::Kind::Task, "").await?.revision;
    let watcher = tokio::spawn(follow(client.clone(), revision, progress.clone()));

    let started = Instant::now();
    for chunk in submissions(&workload.jobs) {
        let ops = chunk
            .iter()
            .map(|job| pb::BatchOp {
                op: Some(Op::Apply(pb::ApplyRequest {
                    object: Some(job.clone()),
                    create_only: true,
                })),
            })
            .collect();
        let response = client.batch(ops).await.context("submitting jobs")?;
        for result in response.results {
            if let Some(pb::batch_result::Result::Error(e)) = result.result {
                bail!("a job was refused: {}", e.message);
            }
        }
    }
    let submitted = started.elapsed();

    // Until every task is bound, or nothing moved for a while.
    let mut last_seen = (0, Instant::now());
    loop {
        let bound = progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .holding
            .len() as u64;
        if bound >= workload.tasks {
            break;
        }
        if bound != last_seen.0 {
            last_seen = (bound, Instant::now());
        } else if bound > 0 && last_seen.1.elapsed() > QUIET {
            break;
        }
        if started.elapsed() > LIMIT {
            bail!(
                "no end after {LIMIT:?}: {bound} of {} tasks bound",
                workload.tasks
            );
        }
        if watcher.is_finished() {
            bail!("the task watch ended");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let progress = std::mem::take(&mut *progress.lock().unwrap_or_else(|e| e.into_inner()));
    watcher.abort();
    // Prod left waiting while batch holds nodes would break prod-before-batch.
    let tasks = client.list(pb::Kind::Task, "").await?.objects;
    let prod_pending = tasks
        .iter()
        .filter_map(|o| o.as_task())
        .filter(|t| t.holding_node().is_none())
        .filter(|t| t.spec.as_ref().is_some_and(|s| s.tier() == pb::Tier::Prod))
        .count() as u64;
    let missing = workload.tasks.saturating_sub(tasks.len() as u64);
    scheduler.kill9();
    stop.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), fleet).await;
    drop(cluster);

    let elapsed = progress
        .last_bind
        .map_or(submitted, |t| t.duration_since(started));
    Ok(Outcome {
        bound: progress.bound,
        pending: workload.tasks.saturating_sub(progress.holding.len() as u64),
        prod_pending,
        missing,
        preempted: progress.preempted,
        elapsed,
        at_first_refusal: progress.first_refusal,
        first_refused: progress.first_refused.clone(),
        at_end: progress.held,
    })
}

/// Replays `workload` once per policy and prints a table.
pub async fn compare(
    workload: &Workload,
    policies: &[String],
    options: Options,
) -> anyhow::Result<()> {
    println!(
        "{}: {} nodes, {} tasks in {} jobs; {} members, sample {}",
        workload.name,
        workload.nodes.len(),
        workload.tasks,
        workload.jobs.len(),
        options.replicas,
        if options.sample == 0 {
            "all".to_string()
        } else {
            options.sample.to_string()
        }
    );
    println!(
        "demand (all tasks / capacity): {}",
        workload.demand.percent_of(&workload.capacity)
    );
    println!(
        "{:<9} {:>8} {:>9} {:>8} {:>9} {:>10}   {:<34}   allocated at end",
        "policy",
        "bound",
        "seconds",
        "tasks/s",
        "pending",
        "preempted",
        "allocated at first refusal",
    );
    for policy in policies {
        let outcome = run(
            workload,
            &Options {
                policy: policy.clone(),
                scheduler_args: options.scheduler_args.clone(),
                ..options
            },
        )
        .await
        .with_context(|| format!("policy {policy}"))?;
        let first = first_refusal(outcome.at_first_refusal, &workload.capacity);
        println!(
            "{:<9} {:>8} {:>9.2} {:>8.0} {:>9} {:>10}   {:<34}   {}",
            policy,
            outcome.bound,
            outcome.elapsed.as_secs_f64(),
            outcome.per_second(),
            outcome.pending,
            outcome.preempted,
            first,
            outcome.at_end.percent_of(&workload.capacity)
        );
        if let Some(refused) = &outcome.first_refused {
            println!("          first refused: {refused}");
        }
        if outcome.pending > 0 {
            println!(
                "          pending: {} prod; {} never created",
                outcome.prod_pending, outcome.missing
            );
        }
    }
    Ok(())
}
