//! `berth-scheduler`: keeps every job's tasks as its spec says and places
//! pending tasks on nodes. See README.md in this crate for the pipeline.
//!
//! One loop owns the cluster view. It applies what the reflectors report,
//! then — when this scheduler holds the lease and has listed everything —
//! runs a cycle: reconcile the jobs that changed, place the tasks that
//! wait, lend and take back reclaimable resources, and send the writes in
//! batches. Everything a cycle decides is a pure function of the view
//! (`reconcile`, `placement`, `reclaim`); only `write` talks to the
//! apiserver.

pub mod config;
pub mod lease;
pub mod metrics;
pub mod placement;
pub mod reclaim;
pub mod reconcile;
pub mod reflect;
pub mod state;
pub mod write;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::connect::BerthClient;
use berth_proto::object::ObjectKey;
use berth_proto::pb;
use berth_proto::process::now_ms;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use config::Config;
pub use metrics::Metrics;
use placement::{Decision, Placer};
use reconcile::Backoff;
use reflect::Update;
use state::{ClusterState, JobKey};
use write::Write;

/// How long a task whose bind (or placed create) was refused — the view was
/// stale — waits before it is placed again, so that the watch brings news.
const RETRY: Duration = Duration::from_millis(200);

/// The scheduler's loop state.
struct Scheduler {
    config: Config,
    client: Arc<BerthClient>,
    state: ClusterState,
    backoff: Backoff,
    /// Jobs to reconcile again at a given Unix time (a backoff running out).
    wake_jobs: BTreeMap<JobKey, i64>,
    /// Tasks whose bind was refused: not placed again before this instant.
    bind_retry: HashMap<ObjectKey, Instant>,
    /// When to place the waiting tasks again although nothing was reported:
    /// after a refused bind or create, which held room in the cycle that
    /// decided it — room the tasks told to wait then may now have.
    place_again_at: Option<Instant>,
    /// Set when a usage report arrived since the last reclamation round.
    usage_changed: bool,
    seed: usize,
    metrics: Metrics,
}

impl Scheduler {
    fn apply(&mut self, update: Update) {
        match update {
            Update::Listed {
                kind,
                objects,
                revision,
            } => self.state.relist(kind, objects, revision),
            Update::Changed(object) => self.state.upsert(object),
            Update::Deleted(object, revision) => self.state.remove_key(object.key(), revision),
            Update::Progress { kind, revision } => self.state.forget_tombstones(kind, revision),
            Update::Usage(report) => {
                self.state.usage = report
                    .nodes
                    .into_iter()
                    .map(|n| (n.node.clone(), n))
                    .collect();
                self.usage_changed = true;
            }
        }
    }

    /// When the loop must run a cycle even if nothing is reported.
    fn next_wake(&self) -> Option<Instant> {
        let job = self.wake_jobs.values().min().map(|at_ms| {
            let wait = (*at_ms - now_ms()).max(0) as u64;
            Instant::now() + Duration::from_millis(wait)
        });
        [job, self.place_again_at].into_iter().flatten().min()
    }

    async fn send(&mut self, groups: Vec<Vec<Write>>) -> write::Report {
        if groups.is_empty() {
            return write::Report::default();
        }
        let report = write::send(&self.client, groups, self.config.batch, &mut self.state).await;
        // Once per round of batches, not per write.
        self.metrics.binds.inc_by(report.binds);
        self.metrics.bind_conflicts.inc_by(report.bind_conflicts);
        self.metrics.preemptions.inc_by(report.evicted);
        report
    }

    /// One round: reconcile, place, reclaim.
    async fn cycle(&mut self) {
        let now = now_ms();
        let mut groups = self.reconcile_jobs(now);
        let waiting = self.place(&mut groups, now);
        let mut report = self.send(groups).await;
        // Writes that say a task waits go once what was placed before them
        // is committed: "no room" is then true of the stored state too.
        if !waiting.is_empty() {
            report.merge(self.send(waiting).await);
        }
        let retry_at = Instant::now() + RETRY;
        if !report.refused_binds.is_empty() || !report.refused_creates.is_empty() {
            self.place_again_at = Some(retry_at);
        }
        for task in report.refused_binds {
            self.bind_retry.insert(task, retry_at);
        }
        let retry_at_ms = now_ms() + RETRY.as_millis() as i64;
        for job in report.refused_creates {
            self.wake_jobs.insert(job, retry_at_ms);
        }

        // Reclamation, when new usage arrived.
        if self.usage_changed {
            self.usage_changed = false;
            let margin = (!self.config.no_reclaim).then_some(self.config.reclaim_margin);
            let groups = reclaim::plan(&self.state, &self.state.usage, margin, now);
            self.send(groups).await;
        }
    }

    /// The writes that make the jobs that changed (or whose backoff ran
    /// out) match their specs.
    fn reconcile_jobs(&mut self, now: i64) -> Vec<Vec<Write>> {
        let mut jobs = self.state.take_dirty_jobs();
        let due: Vec<JobKey> = self
            .wake_jobs
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(job, _)| job.clone())
            .collect();
        for job in due {
            self.wake_jobs.remove(&job);
            jobs.push(job);
        }
        jobs.sort();
        jobs.dedup();
        let mut groups = Vec::new();
        for job in &jobs {
            let plan = reconcile::reconcile(&self.state, job, now, &self.backoff);
            groups.extend(plan.writes);
            if let Some(at) = plan.wake_at_ms {
                self.wake_jobs.insert(job.clone(), at);
            }
        }
        groups
    }

    /// Places the tasks that wait and the tasks `groups` creates. A new task
    /// is created already placed (one write, as Nomad's plans do); a waiting
    /// one gets a bind; a prod task's victims are evicted in the same group.
    /// Returns the groups that record a task left waiting (taken out of
    /// `groups`), to be sent after the rest.
    fn place(&mut self, groups: &mut Vec<Vec<Write>>, now: i64) -> Vec<Vec<Write>> {
        // Where each new task's create is, by task key.
        let mut created: HashMap<ObjectKey, (usize, usize)> = HashMap::new();
        let mut deleted: HashSet<ObjectKey> = HashSet::new();
        let mut arrived: HashMap<ObjectKey, i64> = HashMap::new();
        let mut candidates: Vec<Arc<pb::Object>> = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            for (w, write) in group.iter().enumerate() {
                match write {
                    Write::Create(object) if object.kind() == pb::Kind::Task => {
                        created.insert(object.key(), (g, w));
                        // A new task arrived when its job did.
                        let job = object
                            .as_task()
                            .and_then(|t| t.spec.as_ref())
                            .map(|s| (object.namespace().to_string(), s.job.clone()));
                        if let Some(job) = job.and_then(|j| self.state.jobs.get(&j)) {
                            let created = job.metadata().map_or(0, |m| m.created_at_ms);
                            arrived.insert(object.key(), created);
                        }
                        candidates.push(Arc::new(object.clone()));
                    }
                    Write::Delete { key, .. } => {
                        deleted.insert(key.clone());
                    }
                    _ => {}
                }
            }
        }
        let instant = Instant::now();
        let again = self.place_again_at.is_some_and(|at| at <= instant);
        if again {
            self.place_again_at = None;
        }
        self.bind_retry.retain(|_, at| *at > instant);
        let changed = self.state.placement_changed || self.state.pending_changed || again;
        if changed {
            self.state.placement_changed = false;
            self.state.pending_changed = false;
            candidates.extend(
                self.state
                    .pending
                    .iter()
                    .filter(|key| !self.bind_retry.contains_key(*key) && !deleted.contains(*key))
                    .filter_map(|key| self.state.tasks.get(key).cloned()),
            );
        }
        if candidates.is_empty() {
            return Vec::new();
        }
        self.seed = self.seed.wrapping_add(7919);
        let started = std::time::Instant::now();
        let decisions = Placer::new(
            &self.state,
            self.config.policy,
            self.config.sample,
            self.seed,
        )
        .with_arrivals(arrived)
        .place(candidates);
        self.metrics
            .placement_seconds
            .observe(started.elapsed().as_secs_f64());
        let mut evictions_before: BTreeMap<usize, Vec<Write>> = BTreeMap::new();
        let mut waiting: Vec<Vec<Write>> = Vec::new();
        let mut groups_with_waits: BTreeSet<usize> = BTreeSet::new();
        for decision in decisions {
            match decision {
                Decision::Bind {
                    task,
                    node,
                    victims,
                } => {
                    let mut writes = Vec::with_capacity(2 * victims.len() + 1);
                    for victim in &victims {
                        let message = format!(
                            "preempted on node {node} by prod task {}/{}",
                            task.namespace(),
                            task.name()
                        );
                        writes.extend(write::evict(victim, "Preempted", message, now));
                    }
                    match created.get(&task.key()) {
                        Some(&(g, w)) => {
                            if let Write::Create(object) = &mut groups[g][w] {
                                set_status(object, |s| s.node = node);
                            }
                            // The evictions go first in the create's group
                            // (spliced in at the end, so that the positions
                            // in `created` stay right meanwhile).
                            evictions_before.entry(g).or_default().extend(writes);
                        }
                        None => {
                            writes.push(Write::Bind {
                                task: task.key(),
                                node,
                                version: task.resource_version(),
                            });
                            groups.push(writes);
                        }
                    }
                }
                Decision::Wait { task, reason } => match created.get(&task.key()) {
                    Some(&(g, w)) => {
                        if let Write::Create(object) = &mut groups[g][w] {
                            set_status(object, |s| s.message = reason);
                        }
                        groups_with_waits.insert(g);
                    }
                    None => {
                        // Say why, once: a status write with the version
                        // seen, so that a task bound meanwhile is left alone.
                        if task
                            .as_task()
                            .and_then(|t| t.status.as_ref())
                            .is_some_and(|s| s.message == reason)
                        {
                            continue;
                        }
                        let mut task_waiting = (*task).clone();
                        set_status(&mut task_waiting, |s| s.message = reason);
                        waiting.push(vec![Write::Status(task_waiting)]);
                    }
                },
            }
        }
        for (g, evictions) in evictions_before {
            groups[g].splice(0..0, evictions);
        }
        // Highest index first, so that the ones left keep their positions.
        for g in groups_with_waits.into_iter().rev() {
            waiting.push(groups.remove(g));
        }
        waiting
    }
}

/// Changes a task object's status.
fn set_status(object: &mut pb::Object, change: impl FnOnce(&mut pb::TaskStatus)) {
    if let Some(pb::object::Kind::Task(t)) = &mut object.kind {
        change(t.status.get_or_insert_with(Default::default));
    }
}

/// A default identity: host name and process id.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "scheduler".to_string());
    format!("{host}-{}", std::process::id())
}

/// Runs a scheduler until `shutdown` turns true.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let client = Arc::new(BerthClient::from_list(&config.server)?);
    let identity = config.identity.clone().unwrap_or_else(default_identity);
    let mut registry = berth_proto::metrics::Registry::default();
    let metrics = Metrics::new(&mut registry);
    berth_proto::metrics::serve_configured(config.metrics_listen, registry).await?;
    tracing::info!(%identity, policy = ?config.policy, server = %config.server, "scheduler starting");

    let (updates_tx, mut updates) = mpsc::channel(4096);
    reflect::spawn(
        client.clone(),
        &[pb::Kind::Node, pb::Kind::Job, pb::Kind::Task],
        updates_tx,
        shutdown.clone(),
    );
    let (leading_tx, mut leading) = watch::channel(false);
    let lease = tokio::spawn(lease::keep(
        client.clone(),
        identity,
        config.lease_duration,
        leading_tx,
        shutdown.clone(),
    ));

    let mut scheduler = Scheduler {
        backoff: Backoff {
            first: config.backoff,
            max: config.max_backoff,
        },
        config,
        client,
        state: ClusterState::default(),
        wake_jobs: BTreeMap::new(),
        bind_retry: HashMap::new(),
        place_again_at: None,
        usage_changed: false,
        seed: std::process::id() as usize,
        metrics,
    };
    let mut was_leading = false;
    loop {
        let wake = scheduler.next_wake();
        tokio::select! {
            update = updates.recv() => {
                let Some(update) = update else { break };
                scheduler.apply(update);
                // Take in everything already reported before deciding.
                while let Ok(update) = updates.try_recv() {
                    scheduler.apply(update);
                }
            }
            Ok(()) = leading.changed() => {}
            _ = async { tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)).await }, if wake.is_some() => {}
            _ = shutdown.wait_for(|stopped| *stopped) => break,
        }
        let is_leading = *leading.borrow();
        if is_leading != was_leading {
            was_leading = is_leading;
            scheduler.metrics.leader.set(i64::from(is_leading));
            if is_leading {
                tracing::info!("active: this scheduler holds the lease");
                // A new active scheduler looks at everything once.
                scheduler.state.mark_all_jobs_dirty();
                scheduler.state.placement_changed = true;
                scheduler.usage_changed = true;
            } else {
                tracing::info!("standby: another scheduler holds the lease");
            }
        }
        if is_leading && scheduler.state.is_synced() {
            scheduler.cycle().await;
        }
        // The set's size: O(1), once per loop turn.
        let pending = scheduler.state.pending.len();
        scheduler.metrics.pending_tasks.set(pending as i64);
    }
    // Stopped: it no longer acts (an in-process scheduler's handles may
    // outlive the loop).
    scheduler.metrics.leader.set(0);
    // Let the lease go so that a standby takes over at once.
    let _ = lease.await;
    Ok(())
}
