//! The simulated runtime: many nodes in one process, no containers.
//!
//! It does what agents do, minus Docker: registers its nodes (Ready, with
//! capacity and labels), heartbeats all of them in one RPC with usage, and
//! follows the tasks bound to them — a Scheduled task starts (Running) after
//! the start latency, a batch task succeeds after the batch run time, every
//! running task uses a fixed share of its requests. Status changes that fall
//! due together go out in one Batch write.
//!
//! Scale runs of the scheduler use it so that they need no Docker.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::connect::BerthClient;
use berth_proto::object::ObjectKey;
use berth_proto::pb;
use berth_proto::pb::batch_op::Op;
use berth_proto::pb::batch_result::Result as Answer;
use berth_proto::process::now_ms;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::node::{NodeInfo, register, send_heartbeats};

/// One simulated node.
#[derive(Debug, Clone)]
pub struct SimNode {
    pub name: String,
    pub allocatable: pb::Resources,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub server: String,
    pub nodes: Vec<SimNode>,
    /// Bind → Running.
    pub start_latency: Duration,
    /// Running → Succeeded for batch tasks; None: they run until stopped.
    pub batch_runtime: Option<Duration>,
    /// Share of its requests a running task uses.
    pub usage: f64,
    pub heartbeat: Duration,
}

/// Most writes per Batch request.
const WRITES_PER_BATCH: usize = 1000;
/// Batches of status writes in flight at once.
const IN_FLIGHT: usize = 4;
/// Pause before re-listing after a broken watch.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopped| *stopped).await;
}

/// Tasks bound to this process's nodes and not finished.
type Bound = Arc<Mutex<HashMap<ObjectKey, Arc<pb::Object>>>>;

fn lock(bound: &Bound) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, Arc<pb::Object>>> {
    bound.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the simulated nodes until `shutdown` turns true, keeping `metrics`
/// up to date (running tasks count as running containers).
pub async fn run(
    config: SimConfig,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let client = Arc::new(BerthClient::from_list(&config.server)?);
    let infos: Vec<NodeInfo> = config
        .nodes
        .iter()
        .map(|n| NodeInfo {
            name: n.name.clone(),
            capacity: n.allocatable.clone(),
            allocatable: n.allocatable.clone(),
            labels: n.labels.clone(),
            address: "simulated".into(),
        })
        .collect();
    register(&client, &infos, WRITES_PER_BATCH).await?;
    tracing::info!(nodes = config.nodes.len(), "simulated nodes registered");
    let bound: Bound = Arc::default();
    let heartbeats = tokio::spawn(heartbeat(
        client.clone(),
        config.clone(),
        bound.clone(),
        metrics,
        shutdown.clone(),
    ));
    let mut runner = Runner {
        names: config.nodes.iter().map(|n| n.name.clone()).collect(),
        config,
        client,
        bound,
        timers: BinaryHeap::new(),
        armed: HashSet::new(),
    };
    runner.follow_tasks(shutdown).await;
    let _ = heartbeats.await;
    Ok(())
}

/// What a running task uses: a share of what it asked for.
fn usage_of(task: &pb::Task, share: f64) -> pb::Usage {
    let asked = task.requests().cloned().unwrap_or_default();
    pb::Usage {
        cpu_millis: (asked.cpu_millis as f64 * share) as i64,
        memory_bytes: (asked.memory_bytes as f64 * share) as i64,
    }
}

/// Heartbeats every node, with its running tasks' usage, until shutdown.
/// The running count goes to `metrics` from the same walk over the tasks.
async fn heartbeat(
    client: Arc<BerthClient>,
    config: SimConfig,
    bound: Bound,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(config.heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped(&mut shutdown) => return,
        }
        let mut beats: HashMap<&str, pb::NodeHeartbeat> = config
            .nodes
            .iter()
            .map(|n| {
                let beat = pb::NodeHeartbeat {
                    node: n.name.clone(),
                    usage: Some(pb::Usage::default()),
                    tasks: Vec::new(),
                };
                (n.name.as_str(), beat)
            })
            .collect();
        let mut running = 0;
        for (key, object) in lock(&bound).iter() {
            let Some(task) = object.as_task() else {
                continue;
            };
            let Some(status) = &task.status else { continue };
            if status.phase() != pb::TaskPhase::Running {
                continue;
            }
            let Some(beat) = beats.get_mut(status.node.as_str()) else {
                continue;
            };
            running += 1;
            let usage = usage_of(task, config.usage);
            if let Some(total) = beat.usage.as_mut() {
                total.cpu_millis += usage.cpu_millis;
                total.memory_bytes += usage.memory_bytes;
            }
            beat.tasks.push(pb::TaskUsage {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                usage: Some(usage),
            });
        }
        metrics.set_running(running);
        let nodes: Vec<pb::NodeHeartbeat> = beats.into_values().collect();
        for chunk in nodes.chunks(5000) {
            send_heartbeats(&client, chunk.to_vec(), &metrics).await;
        }
    }
}

/// A status change a task is due for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Step {
    Start,
    Finish,
}

struct Runner {
    config: SimConfig,
    client: Arc<BerthClient>,
    names: HashSet<String>,
    bound: Bound,
    timers: BinaryHeap<Reverse<(Instant, ObjectKey, Step)>>,
    /// Timers set, so that each is set once.
    armed: HashSet<(ObjectKey, Step)>,
}

impl Runner {
    /// Lists and watches tasks, keeps those bound here, and moves them on
    /// when their timers fire.
    async fn follow_tasks(&mut self, mut shutdown: watch::Receiver<bool>) {
        'relist: loop {
            if *shutdown.borrow() {
                return;
            }
            let list = match self.client.list(pb::Kind::Task, "").await {
                Ok(list) => list,
                Err(status) => {
                    tracing::warn!(error = %status.message(), "cannot list tasks; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_PAUSE) => continue 'relist,
                        _ = stopped(&mut shutdown) => return,
                    }
                }
            };
            lock(&self.bound).clear();
            for object in list.objects {
                self.observe(object);
            }
            let request = pb::WatchRequest {
                kind: pb::Kind::Task as i32,
                from_revision: list.revision,
                ..Default::default()
            };
            let mut stream = match self.client.objects().watch(request).await {
                Ok(stream) => stream.into_inner(),
                Err(status) => {
                    tracing::debug!(error = %status.message(), "watch refused; re-listing");
                    continue 'relist;
                }
            };
            loop {
                let next = self.timers.peek().map(|Reverse((at, _, _))| *at);
                let broken = tokio::select! {
                    message = stream.message() => match message {
                        Ok(Some(event)) => {
                            match (event.r#type(), event.object) {
                                (pb::WatchEventType::Deleted, Some(object)) => {
                                    lock(&self.bound).remove(&object.key());
                                }
                                (_, Some(object)) => self.observe(object),
                                _ => {}
                            }
                            false
                        }
                        Ok(None) | Err(_) => true,
                    },
                    _ = async { tokio::time::sleep_until(next.unwrap_or_else(Instant::now)).await }, if next.is_some() => {
                        self.fire().await;
                        false
                    }
                    _ = stopped(&mut shutdown) => return,
                };
                if broken {
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_PAUSE) => continue 'relist,
                        _ = stopped(&mut shutdown) => return,
                    }
                }
            }
        }
    }

    /// Takes a task version in: keeps it if bound here and not finished,
    /// and sets the timer of its next step.
    fn observe(&mut self, object: pb::Object) {
        let key = object.key();
        let Some(task) = object.as_task() else { return };
        let Some(status) = &task.status else { return };
        let mine = self.names.contains(&status.node) && !status.phase().is_terminal();
        if !mine {
            lock(&self.bound).remove(&key);
            return;
        }
        let now = Instant::now();
        let step = match status.phase() {
            pb::TaskPhase::Scheduled | pb::TaskPhase::Starting => {
                Some((now + self.config.start_latency, Step::Start))
            }
            pb::TaskPhase::Running => {
                let batch = task
                    .spec
                    .as_ref()
                    .is_some_and(|s| s.tier() == pb::Tier::Batch);
                match self.config.batch_runtime {
                    Some(runtime) if batch => {
                        let ends_ms = status.started_at_ms + runtime.as_millis() as i64;
                        let left = Duration::from_millis((ends_ms - now_ms()).max(0) as u64);
                        Some((now + left, Step::Finish))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some((at, step)) = step
            && self.armed.insert((key.clone(), step))
        {
            self.timers.push(Reverse((at, key.clone(), step)));
        }
        lock(&self.bound).insert(key, Arc::new(object));
    }

    /// Writes every status change that is due, in batches.
    async fn fire(&mut self) {
        let now = Instant::now();
        let mut writes = Vec::new();
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, key, step))) = self.timers.pop() else {
                break;
            };
            self.armed.remove(&(key.clone(), step));
            let Some(object) = lock(&self.bound).get(&key).cloned() else {
                continue;
            };
            if let Some(changed) = advance(&object, step) {
                writes.push(changed);
            }
        }
        // A few batches in flight at once: the apiserver commits them together.
        let requests: Vec<Vec<pb::BatchOp>> = writes
            .chunks(WRITES_PER_BATCH)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|o| pb::BatchOp {
                        op: Some(Op::UpdateStatus(pb::UpdateStatusRequest {
                            object: Some(o.clone()),
                        })),
                    })
                    .collect()
            })
            .collect();
        let client = self.client.clone();
        let mut answers = futures::stream::iter(requests)
            .map(move |ops| {
                let client = client.clone();
                async move { client.batch(ops).await }
            })
            .buffered(IN_FLIGHT);
        while let Some(answer) = answers.next().await {
            match answer {
                Ok(response) => {
                    for result in response.results {
                        // Refusals (the task changed meanwhile) are settled
                        // by the watch bringing the new version.
                        if let Some(Answer::Object(object)) = result.result {
                            self.observe(object);
                        }
                    }
                }
                Err(status) => {
                    tracing::warn!(error = %status.message(), "task status writes failed")
                }
            }
        }
    }
}

/// The task's status after `step`, if it is still in the phase the step
/// expects. The write carries the version seen, so it never overwrites a
/// change made meanwhile (a re-bind, a preemption).
fn advance(object: &pb::Object, step: Step) -> Option<pb::Object> {
    let mut changed = object.clone();
    let Some(pb::object::Kind::Task(task)) = &mut changed.kind else {
        return None;
    };
    let status = task.status.as_mut()?;
    match (step, status.phase()) {
        (Step::Start, pb::TaskPhase::Scheduled | pb::TaskPhase::Starting) => {
            status.phase = pb::TaskPhase::Running as i32;
            status.started_at_ms = now_ms();
            status.message.clear();
        }
        (Step::Finish, pb::TaskPhase::Running) => {
            status.phase = pb::TaskPhase::Succeeded as i32;
            status.exit_code = Some(0);
            status.finished_at_ms = now_ms();
        }
        _ => return None,
    }
    Some(changed)
}
