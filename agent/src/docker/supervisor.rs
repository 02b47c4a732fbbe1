//! The supervisor: makes this node's containers match the tasks bound to it.
//!
//! One loop, woken by anything that may change the answer — a task event,
//! a Docker event, an operation finishing, a health verdict, a backoff
//! running out, and a periodic resync in case an event was missed. Each pass
//! lists the node's containers and, per task, asks [`decide`] what to do:
//!
//! ```text
//! tasks bound here (watch) ─┐
//!                           ├─▶ pass: fence strays ─▶ decide per task ─▶ Docker ops (spawned)
//! containers (Docker list) ─┘                                        └─▶ status writes (one Batch)
//! ```
//!
//! Fencing: a container whose task is gone, replaced (another uid) or bound
//! to another node is removed; a container whose task ended (preempted,
//! killed, lost) is stopped. A restarted agent finds its containers by
//! their labels and adopts them: a running container of a current task is
//! simply reported, never restarted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::connect::BerthClient;
use berth_proto::object::ObjectKey;
use berth_proto::pb;
use berth_proto::pb::batch_op::Op;
use berth_proto::pb::batch_result::Result as Answer;
use berth_proto::process::now_ms;
use futures::StreamExt as _;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::decide::{self, Backoff, Seen, Step, decide};
use super::health::{Probe, Unhealthy, run_prober};
use super::runtime::{Container, ContainerState, CreateError, Engine, Exit};
use crate::metrics::Metrics;

/// Docker operations (create, start, stop) running at once.
const CONCURRENT_OPS: usize = 16;
/// Passes are at least this far apart: events that arrive meanwhile (a
/// burst of container starts) are taken in by one pass, not one each.
const MIN_PASS_INTERVAL: Duration = Duration::from_millis(250);
/// A pass even when nothing was heard of (a missed event, a clock rule).
const RESYNC: Duration = Duration::from_secs(2);
/// Pause before re-listing after a broken task watch.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub node: String,
    pub stop_grace: Duration,
    pub backoff: Backoff,
}

/// What the task watch tells the loop.
enum TaskEvent {
    /// A fresh list: the whole set of tasks bound here.
    Listed(Vec<pb::Object>),
    Changed(Box<pb::Object>),
    Deleted(ObjectKey),
}

/// A finished Docker operation. `restart`: the operation restarts the
/// task's container (its restart count goes up), as opposed to a first start.
enum Done {
    Created {
        uid: String,
        restarts: u32,
        restart: bool,
        result: Result<(String, i64), CreateError>,
    },
    Started {
        uid: String,
        id: String,
        restarts: u32,
        restart: bool,
        result: anyhow::Result<()>,
    },
    Stopped {
        uid: String,
    },
}

fn uid_of(object: &pb::Object) -> &str {
    object.metadata().map_or("", |m| m.uid.as_str())
}

fn task_node(object: &pb::Object) -> &str {
    object.as_task().map_or("", pb::Task::bound_node)
}

fn task_phase(object: &pb::Object) -> pb::TaskPhase {
    object
        .as_task()
        .and_then(|t| t.status.as_ref())
        .map_or(pb::TaskPhase::Pending, |s| s.phase())
}

fn health_check(object: &pb::Object) -> Option<&pb::HealthCheck> {
    object
        .as_task()?
        .spec
        .as_ref()?
        .template
        .as_ref()?
        .health_check
        .as_ref()
        .filter(|h| h.probe.is_some())
}

pub struct Supervisor {
    config: SupervisorConfig,
    engine: Engine,
    client: Arc<BerthClient>,
    /// Tasks bound to this node, by key (terminal ones too: their
    /// containers may still need stopping).
    tasks: HashMap<ObjectKey, Arc<pb::Object>>,
    listed: bool,
    /// Task uids with a Docker operation in flight.
    busy: HashSet<String>,
    /// Why the last create of an incarnation failed.
    create_errors: HashMap<String, String>,
    /// Restarts done per task uid that the stored status may not show yet.
    restarts_done: HashMap<String, u32>,
    /// The exit that caused a task's last restart, by uid.
    last_exit: HashMap<String, String>,
    /// Containers the agent killed, and why.
    killed: HashMap<String, String>,
    /// Containers whose health check failed past the threshold.
    unhealthy: HashMap<String, String>,
    /// Health probers by container id, with the start time they probe.
    probers: HashMap<String, (i64, JoinHandle<()>)>,
    /// When running containers started, by id (inspected once per start).
    started_at: HashMap<String, i64>,
    /// When a restart backoff runs out next.
    wake_at: Option<Instant>,
    ops: Arc<Semaphore>,
    done_tx: mpsc::Sender<Done>,
    unhealthy_tx: mpsc::Sender<Unhealthy>,
    metrics: Metrics,
}

impl Supervisor {
    /// Runs until `shutdown` turns true. Containers keep running when the
    /// agent stops, as a kubelet's do: the next agent adopts them.
    pub async fn run(
        config: SupervisorConfig,
        engine: Engine,
        client: Arc<BerthClient>,
        metrics: Metrics,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (task_tx, mut task_rx) = mpsc::channel(1024);
        let (docker_tx, mut docker_rx) = mpsc::channel(64);
        let (done_tx, mut done_rx) = mpsc::channel(256);
        let (unhealthy_tx, mut unhealthy_rx) = mpsc::channel(64);
        let watcher = tokio::spawn(follow_tasks(
            client.clone(),
            config.node.clone(),
            task_tx,
            shutdown.clone(),
        ));
        let events = tokio::spawn(follow_engine(engine.clone(), docker_tx, shutdown.clone()));
        let mut me = Supervisor {
            config,
            engine,
            client,
            tasks: HashMap::new(),
            listed: false,
            busy: HashSet::new(),
            create_errors: HashMap::new(),
            restarts_done: HashMap::new(),
            last_exit: HashMap::new(),
            killed: HashMap::new(),
            unhealthy: HashMap::new(),
            probers: HashMap::new(),
            started_at: HashMap::new(),
            wake_at: None,
            ops: Arc::new(Semaphore::new(CONCURRENT_OPS)),
            done_tx,
            unhealthy_tx,
            metrics,
        };
        let mut last_pass = Instant::now() - MIN_PASS_INTERVAL;
        let mut resync = tokio::time::interval(RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = me.wake_at;
            tokio::select! {
                Some(event) = task_rx.recv() => me.on_task_event(event),
                Some(()) = docker_rx.recv() => {}
                Some(done) = done_rx.recv() => me.on_done(done),
                Some(verdict) = unhealthy_rx.recv() => {
                    me.unhealthy.insert(verdict.container_id, verdict.reason);
                }
                _ = async { tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)).await }, if wake.is_some() => {
                    me.wake_at = None;
                }
                _ = resync.tick() => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            // Take in everything else that is waiting, then one pass.
            while let Ok(event) = task_rx.try_recv() {
                me.on_task_event(event);
            }
            while let Ok(done) = done_rx.try_recv() {
                me.on_done(done);
            }
            while docker_rx.try_recv().is_ok() {}
            if me.listed {
                let since = last_pass.elapsed();
                if since < MIN_PASS_INTERVAL {
                    tokio::time::sleep(MIN_PASS_INTERVAL - since).await;
                    while let Ok(event) = task_rx.try_recv() {
                        me.on_task_event(event);
                    }
                    while let Ok(done) = done_rx.try_recv() {
                        me.on_done(done);
                    }
                    while docker_rx.try_recv().is_ok() {}
                }
                me.pass().await;
                last_pass = Instant::now();
            }
        }
        for (_, (_, prober)) in me.probers.drain() {
            prober.abort();
        }
        let _ = watcher.await;
        events.abort();
    }

    fn on_task_event(&mut self, event: TaskEvent) {
        match event {
            TaskEvent::Listed(objects) => {
                self.tasks = objects
                    .into_iter()
                    .map(|o| (o.key(), Arc::new(o)))
                    .collect();
                self.listed = true;
            }
            TaskEvent::Changed(object) => self.take(*object),
            TaskEvent::Deleted(key) => {
                self.tasks.remove(&key);
            }
        }
    }

    /// Keeps a task version if it is bound here and newer than the one held.
    fn take(&mut self, object: pb::Object) {
        let key = object.key();
        if task_node(&object) != self.config.node {
            self.tasks.remove(&key);
            return;
        }
        let newer = self
            .tasks
            .get(&key)
            .is_none_or(|held| held.resource_version() <= object.resource_version());
        if newer {
            self.tasks.insert(key, Arc::new(object));
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Created {
                uid,
                restarts,
                restart,
                result,
            } => {
                self.busy.remove(&uid);
                match result {
                    Ok((id, started_at_ms)) => {
                        tracing::info!(container = %short(&id), "container started");
                        if restart {
                            self.metrics.restarts.inc();
                        }
                        self.started_at.insert(id, started_at_ms);
                        self.create_errors.remove(&uid);
                        self.restarts_done.insert(uid, restarts);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot create the container");
                        self.create_errors.insert(uid, e.to_string());
                    }
                }
            }
            Done::Started {
                uid,
                id,
                restarts,
                restart,
                result,
            } => {
                self.busy.remove(&uid);
                match result {
                    Ok(()) => {
                        if restart {
                            self.metrics.restarts.inc();
                        }
                        self.started_at.insert(id, now_ms());
                        self.restarts_done.insert(uid, restarts);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot start the container"),
                }
            }
            Done::Stopped { uid } => {
                self.busy.remove(&uid);
            }
        }
    }

    /// An ended task's status corrected once the engine marks its exit
    /// OOM killed after the agent reported it (see `decide::late_oom_kill`).
    async fn late_oom_kill(
        &self,
        object: &pb::Object,
        container: Option<&Container>,
        now: i64,
    ) -> Option<pb::TaskStatus> {
        let status = object.as_task()?.status.as_ref()?;
        let container = container.filter(|c| c.state == ContainerState::Exited)?;
        if !decide::may_learn_oom_kill(status, now) {
            return None;
        }
        let exit = self.engine.inspect_exit(&container.id).await.ok()?;
        decide::late_oom_kill(status, &exit)
    }

    /// One reconciliation of containers against tasks.
    async fn pass(&mut self) {
        let containers = match self.engine.list().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers");
                return;
            }
        };
        self.metrics.set_containers(&containers);
        let mut by_task: HashMap<String, Vec<&Container>> = HashMap::new();
        let by_key: HashMap<(&str, &str), &Arc<pb::Object>> = self
            .tasks
            .values()
            .map(|o| ((o.namespace(), o.name()), o))
            .collect();
        let mut strays = Vec::new();
        let mut to_stop = Vec::new();
        for container in &containers {
            let task = by_key.get(&(container.namespace.as_str(), container.task.as_str()));
            match task {
                Some(task) if uid_of(task) == container.uid => {
                    if task_phase(task).is_terminal() && container.state == ContainerState::Running
                    {
                        to_stop.push(container.clone());
                    } else {
                        by_task
                            .entry(container.uid.clone())
                            .or_default()
                            .push(container);
                    }
                }
                // Deleted, replaced by a new incarnation, or bound elsewhere.
                _ => strays.push(container.clone()),
            }
        }
        for stray in strays {
            if !self.busy.contains(&stray.uid) {
                tracing::info!(task = %stray.task, container = %short(&stray.id), "removing a container whose task is no longer bound here");
                self.spawn_stop(stray, true);
            }
        }
        for container in to_stop {
            if !self.busy.contains(&container.uid) {
                tracing::info!(task = %container.task, container = %short(&container.id), "stopping the container of an ended task");
                self.spawn_stop(container, false);
            }
        }

        let now = now_ms();
        let mut reports = Vec::new();
        let mut events = Vec::new();
        let mut running_ids = HashSet::new();
        let tasks: Vec<Arc<pb::Object>> = self.tasks.values().cloned().collect();
        for object in tasks {
            let uid = uid_of(&object).to_string();
            if self.busy.contains(&uid) {
                continue;
            }
            if task_phase(&object).is_terminal() {
                let newest = by_task
                    .get(&uid)
                    .and_then(|mine| mine.iter().max_by_key(|c| c.created).copied());
                if let Some(corrected) = self.late_oom_kill(&object, newest, now).await {
                    events.push(warning(&object, "OOMKilled", &corrected.message));
                    reports.push(with_status(&object, corrected));
                }
                continue;
            }
            let Some(task) = object.as_task() else {
                continue;
            };
            // The newest container of this incarnation; older duplicates go.
            let mut mine = by_task.remove(&uid).unwrap_or_default();
            mine.sort_by_key(|c| std::cmp::Reverse(c.created));
            for extra in mine.iter().skip(1) {
                let _ = self.engine.remove(&extra.id).await;
            }
            let container = mine.first().copied();
            let mut exit: Option<Exit> = None;
            let mut started_at_ms = 0;
            if let Some(c) = container {
                match c.state {
                    ContainerState::Exited => match self.engine.inspect_exit(&c.id).await {
                        Ok(e) => exit = Some(e),
                        Err(e) => tracing::warn!(error = %e, "cannot inspect an exited container"),
                    },
                    ContainerState::Running => {
                        running_ids.insert(c.id.clone());
                        started_at_ms = match self.started_at.get(&c.id) {
                            Some(at) => *at,
                            None => match self.engine.started_at_ms(&c.id).await {
                                Ok(at) => {
                                    self.started_at.insert(c.id.clone(), at);
                                    at
                                }
                                Err(_) => 0,
                            },
                        };
                        self.ensure_prober(&object, c, started_at_ms);
                    }
                    _ => {}
                }
                if c.state != ContainerState::Running {
                    self.started_at.remove(&c.id);
                }
            }
            let seen = Seen {
                container,
                exit: exit.as_ref(),
                started_at_ms,
                create_error: self.create_errors.get(&uid).map(String::as_str),
                unhealthy: container.and_then(|c| self.unhealthy.get(&c.id).map(String::as_str)),
                killed_because: container.and_then(|c| self.killed.get(&c.id).map(String::as_str)),
                restarts_done: self.restarts_done.get(&uid).copied().unwrap_or(0),
                last_exit: self.last_exit.get(&uid).map(String::as_str),
            };
            // The count `decide` starts from: a step asking for more restarts
            // than this is a restart (after an exit, or of a vanished container).
            let restarts_before = task
                .status
                .as_ref()
                .map_or(0, |s| s.restarts)
                .max(seen.restarts_done);
            for step in decide(task, &seen, now, &self.config.backoff) {
                match step {
                    Step::Report(status) => {
                        tracing::debug!(task = %object.name(), phase = ?status.phase(), restarts = status.restarts, message = %status.message, "reporting");
                        let before = task.status.clone().unwrap_or_default();
                        if status.oom_killed && !before.oom_killed {
                            events.push(warning(&object, "OOMKilled", &status.message));
                        }
                        if status.phase() == pb::TaskPhase::Failed
                            && let Some(error) = self.create_errors.get(&uid)
                        {
                            let reason = if error.contains("cannot be pulled") {
                                "ImagePullFailed"
                            } else {
                                "FailedCreate"
                            };
                            events.push(warning(&object, reason, error));
                        }
                        reports.push(with_status(&object, status));
                    }
                    Step::Create { restarts } => {
                        let restart = restarts > restarts_before;
                        self.spawn_create(object.clone(), uid.clone(), restarts, restart);
                    }
                    Step::Start {
                        id,
                        restarts,
                        after,
                    } => {
                        tracing::info!(task = %object.name(), restarts, %after, "starting the container");
                        if !after.is_empty() {
                            self.last_exit.insert(uid.clone(), after);
                        }
                        self.killed.remove(&id);
                        self.unhealthy.remove(&id);
                        let restart = restarts > restarts_before;
                        self.spawn_start(id, uid.clone(), restarts, restart);
                    }
                    Step::Kill { id, reason } => {
                        tracing::info!(task = %object.name(), %reason, "killing an unhealthy container");
                        events.push(warning(&object, "Unhealthy", &reason));
                        self.unhealthy.remove(&id);
                        self.killed.insert(id.clone(), reason);
                        if let Some(c) = container.cloned() {
                            self.spawn_stop(c, false);
                        }
                    }
                    Step::WakeAt { at_ms } => {
                        let at =
                            Instant::now() + Duration::from_millis((at_ms - now).max(0) as u64);
                        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
                    }
                }
            }
        }
        // Probers of containers that no longer run (or restarted) go.
        self.probers.retain(|id, (_, prober)| {
            let keep = running_ids.contains(id) && !prober.is_finished();
            if !keep {
                prober.abort();
            }
            keep
        });
        let live: HashSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
        self.killed.retain(|id, _| live.contains(id.as_str()));
        self.unhealthy.retain(|id, _| running_ids.contains(id));
        self.started_at.retain(|id, _| running_ids.contains(id));
        let uids: HashSet<&str> = self.tasks.values().map(|o| uid_of(o)).collect();
        self.create_errors
            .retain(|uid, _| uids.contains(uid.as_str()));
        self.restarts_done
            .retain(|uid, _| uids.contains(uid.as_str()));
        self.last_exit.retain(|uid, _| uids.contains(uid.as_str()));
        if !reports.is_empty() || !events.is_empty() {
            self.write(reports, events).await;
        }
    }

    /// Starts probing a running container's health, once per start.
    fn ensure_prober(&mut self, object: &pb::Object, container: &Container, started_at_ms: i64) {
        let Some(check) = health_check(object) else {
            return;
        };
        if self
            .probers
            .get(&container.id)
            .is_some_and(|(at, _)| *at == started_at_ms)
        {
            return;
        }
        if self.unhealthy.contains_key(&container.id) {
            return;
        }
        let probe = Probe {
            container_id: container.id.clone(),
            ip: container.ip.clone(),
            check: check.clone(),
        };
        let prober = tokio::spawn(run_prober(
            self.engine.clone(),
            probe,
            self.unhealthy_tx.clone(),
        ));
        if let Some((_, old)) = self
            .probers
            .insert(container.id.clone(), (started_at_ms, prober))
        {
            old.abort();
        }
    }

    /// Runs a Docker operation of task `uid` in the background, at most
    /// [`CONCURRENT_OPS`] at once; the task is left alone (busy) until the
    /// operation's [`Done`] comes back.
    fn spawn_op(&mut self, uid: String, op: impl Future<Output = Done> + Send + 'static) {
        self.busy.insert(uid);
        let (ops, done) = (self.ops.clone(), self.done_tx.clone());
        tokio::spawn(async move {
            let _permit = ops.acquire_owned().await;
            let _ = done.send(op.await).await;
        });
    }

    fn spawn_create(&mut self, object: Arc<pb::Object>, uid: String, restarts: u32, restart: bool) {
        let engine = self.engine.clone();
        self.spawn_op(uid.clone(), async move {
            let result = engine.create_and_start(&object).await;
            Done::Created {
                uid,
                restarts,
                restart,
                result,
            }
        });
    }

    fn spawn_start(&mut self, id: String, uid: String, restarts: u32, restart: bool) {
        let engine = self.engine.clone();
        self.spawn_op(uid.clone(), async move {
            let result = engine.start(&id).await;
            Done::Started {
                uid,
                id,
                restarts,
                restart,
                result,
            }
        });
    }

    /// Stops (SIGTERM, grace, SIGKILL) and, if `remove`, removes.
    fn spawn_stop(&mut self, container: Container, remove: bool) {
        let (engine, grace) = (self.engine.clone(), self.config.stop_grace);
        self.spawn_op(container.uid.clone(), async move {
            if let Err(e) = engine.stop(&container.id, grace).await {
                tracing::warn!(error = %e, "cannot stop a container");
            }
            if remove && let Err(e) = engine.remove(&container.id).await {
                tracing::warn!(error = %e, "cannot remove a container");
            }
            Done::Stopped { uid: container.uid }
        });
    }

    /// Writes status changes in one Batch; each carries the version it was
    /// derived from, so a change made meanwhile (a preemption, a re-bind)
    /// is never overwritten — the next pass sees it and decides again.
    async fn write(&mut self, statuses: Vec<pb::Object>, events: Vec<pb::Object>) {
        let status_ops = statuses.into_iter().map(|object| pb::BatchOp {
            op: Some(Op::UpdateStatus(pb::UpdateStatusRequest {
                object: Some(object),
            })),
        });
        // An event per task incarnation and reason, the latest kept.
        let event_ops = events.into_iter().map(|object| pb::BatchOp {
            op: Some(Op::Apply(pb::ApplyRequest {
                object: Some(object),
                create_only: false,
            })),
        });
        let ops = status_ops.chain(event_ops).collect();
        match self.client.batch(ops).await {
            Ok(response) => {
                for result in response.results {
                    match result.result {
                        Some(Answer::Object(object)) if object.as_task().is_some() => {
                            self.take(object)
                        }
                        Some(Answer::Object(_)) => {}
                        Some(Answer::Error(e)) => {
                            tracing::debug!(error = %e.message, "status write refused")
                        }
                        None => {}
                    }
                }
            }
            Err(status) => tracing::warn!(error = %status.message(), "cannot write task status"),
        }
    }
}

/// A warning Event about a task, from this agent.
/// The task with `status` in place of its own, to report.
fn with_status(task: &pb::Object, status: pb::TaskStatus) -> pb::Object {
    let mut changed = task.clone();
    if let Some(pb::object::Kind::Task(t)) = &mut changed.kind {
        t.status = Some(status);
    }
    changed
}

fn warning(task: &pb::Object, reason: &str, message: &str) -> pb::Object {
    berth_proto::object::task_warning(task, reason, message.to_string(), "berth-agent", now_ms())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Lists and watches tasks, passing on those bound to `node` (and the
/// deletion or re-binding of those that were).
async fn follow_tasks(
    client: Arc<BerthClient>,
    node: String,
    events: mpsc::Sender<TaskEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    'relist: loop {
        if *shutdown.borrow() {
            return;
        }
        let list = match client.list(pb::Kind::Task, "").await {
            Ok(list) => list,
            Err(status) => {
                tracing::warn!(error = %status.message(), "cannot list tasks; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_PAUSE) => continue 'relist,
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        };
        let revision = list.revision;
        let mine = list
            .objects
            .into_iter()
            .filter(|o| task_node(o) == node)
            .collect();
        if events.send(TaskEvent::Listed(mine)).await.is_err() {
            return;
        }
        let request = pb::WatchRequest {
            kind: pb::Kind::Task as i32,
            from_revision: revision,
            ..Default::default()
        };
        let mut stream = match client.objects().watch(request).await {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                tracing::debug!(error = %status.message(), "watch refused; re-listing");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_PAUSE) => continue 'relist,
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        };
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let event = match message {
                Ok(Some(event)) => event,
                Ok(None) | Err(_) => {
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_PAUSE) => continue 'relist,
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
            };
            let Some(object) = event.object.clone() else {
                continue;
            };
            // Everything about a task that is or was ours; the supervisor
            // drops versions bound elsewhere.
            let sent = match event.r#type() {
                pb::WatchEventType::Deleted => events.send(TaskEvent::Deleted(object.key())).await,
                _ => events.send(TaskEvent::Changed(Box::new(object))).await,
            };
            if sent.is_err() {
                return;
            }
        }
    }
}

/// Wakes the loop on every container event of this node.
async fn follow_engine(
    engine: Engine,
    wake: mpsc::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut events = Box::pin(engine.events());
        loop {
            let next = tokio::select! {
                n = events.next() => n,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            match next {
                Some(Ok(())) => {
                    // A full channel already holds a wake-up.
                    let _ = wake.try_send(());
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Docker event stream broke; reconnecting");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
