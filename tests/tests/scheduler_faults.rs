//! Scheduling safety under real faults: no node is ever over-committed and
//! no task is ever bound to two nodes at once (DESIGN.md, contracts 3, 5
//! and 6), whatever the nemesis does to the processes that decide.
//!
//! The run: three `berth-apiserver` members, each in a network namespace of
//! its own (the transport's fault injection where namespaces are not
//! available), two `berth-scheduler`s sharing the lease (one active, one
//! standby), one `berth-agent --runtime sim` hosting eight nodes, all given
//! the list of members. Batch jobs fill the cluster, then prod jobs arrive
//! that only fit by preempting batch; during the run jobs are scaled up and
//! down and one is deleted and created again, while a seeded nemesis kills
//! (SIGKILL) and restarts members, pauses them (SIGSTOP/SIGCONT), cuts one
//! off from the others, kills the active scheduler and starts a new one,
//! pauses the active scheduler past its lease (it wakes up no longer
//! holding it), and kills and restarts the agent (its nodes go NotReady,
//! then Lost: their tasks are fenced and replaced).
//!
//! Two watchers (tasks, nodes) follow the whole run, resuming on another
//! member when a stream breaks. Their events, merged by revision, are
//! replayed afterwards, and at every revision:
//!
//! 1. no node is over-committed: `Capacity::check` of the prod and batch
//!    requests of the tasks holding it. One state breaks that rule legally:
//!    when the scheduler lowers a node's `reclaimable` (prod wants back what
//!    it lent), batch that borrowed it is evicted by writes that may land a
//!    revision later. Such a node is accepted as long as nothing new was
//!    bound to it and it still fits the last amount it was lent (the
//!    apiserver refuses every bind onto a node that does not fit);
//! 2. no task is bound to two nodes: a task (uid) bound to a node is never
//!    seen on another, never comes back once ended or deleted, never holds a
//!    node that is Lost (fencing) or unknown; and no two live tasks claim the
//!    same replica (namespace, job, index — so a fortiori the same
//!    incarnation) at once.
//!
//! The same checks run on a final linearizable List, which must also equal
//! what the watchers replayed; and after healing, every job must converge
//! (3): prod fully running, batch running or waiting only where it fits on
//! no node.
//!
//! `BERTH_SEED` replays a run's choices; `BERTH_FAULT_SECONDS` (default 15)
//! sets how long the nemesis runs. A failed check names the seed, the
//! revision and the objects.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::capacity::{Amount, Capacity};
use berth_proto::connect::BerthClient;
use berth_proto::pb;
use berth_tests::nemesis::{Rng, seconds_from_env, seed_from_env};
use berth_tests::{Cluster, Component, try_wait_until};

const NAMESPACE: &str = "sim";
const NODES: usize = 8;
/// Each node: 4 CPUs (32 in all); memory never binds.
const NODE_ARGS: [&str; 4] = ["--cpu", "4", "--memory", "16Gi"];
const LEASE: &str = "2s";
const LEASE_DURATION: Duration = Duration::from_secs(2);
/// Nodes go NotReady and Lost quickly, so that the agent's death within a
/// run makes its tasks Lost and replaced (fencing, contract 5); idle watch
/// streams get a bookmark often, so that the watchers know when they have
/// caught up.
const MEMBER_ARGS: [&str; 6] = [
    "--node-not-ready-after",
    "2s",
    "--node-lost-after",
    "4s",
    "--bookmark-interval",
    "250ms",
];
/// How long anything may take to settle once the faults are over.
const SETTLE: Duration = Duration::from_secs(30);

/// A job of the run: prod needs more than batch leaves, so it preempts.
struct Shape {
    name: &'static str,
    tier: pb::Tier,
    priority: i32,
    cpu_millis: i64,
    /// Initial replicas, and the range the churn scales within.
    replicas: u32,
    scale: (u32, u32),
}

// Batch first: 20 × 700m + 10 × 1 CPU = 24 of 32 CPUs. Then prod: 8 × 1.5 +
// 4 × 2 = 20 CPUs, which fit only by evicting batch (prod lends back at
// most 40% of what it reserved: the sim uses half, plus the 20% margin).
const CRUNCH: Shape = Shape {
    name: "crunch",
    tier: pb::Tier::Batch,
    priority: 1,
    cpu_millis: 700,
    replicas: 20,
    scale: (16, 24),
};
const ETL: Shape = Shape {
    name: "etl",
    tier: pb::Tier::Batch,
    priority: 5,
    cpu_millis: 1000,
    replicas: 10,
    scale: (6, 12),
};
const WEB: Shape = Shape {
    name: "web",
    tier: pb::Tier::Prod,
    priority: 100,
    cpu_millis: 1500,
    replicas: 8,
    scale: (6, 10),
};
/// Deleted and created again during the run.
const API: Shape = Shape {
    name: "api",
    tier: pb::Tier::Prod,
    priority: 50,
    cpu_millis: 2000,
    replicas: 4,
    scale: (4, 4),
};

fn job(shape: &Shape, replicas: u32) -> pb::Object {
    pb::Object::from(pb::Job {
        metadata: Some(pb::ObjectMeta {
            name: shape.name.into(),
            namespace: NAMESPACE.into(),
            ..Default::default()
        }),
        spec: Some(pb::JobSpec {
            tier: shape.tier as i32,
            priority: shape.priority,
            replicas,
            template: Some(pb::TaskTemplate {
                image: "berth-testapp:latest".into(),
                resources: Some(pb::Resources {
                    cpu_millis: shape.cpu_millis,
                    memory_bytes: 256 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    })
}

// ---------------------------------------------------------------------------
// What the watchers saw.

/// One change: its revision and the object after it (before it, for a
/// deletion).
#[derive(Debug, Clone)]
struct Seen {
    revision: u64,
    deleted: bool,
    object: pb::Object,
    /// The member (1-based) whose stream delivered it.
    member: usize,
}

impl Seen {
    /// One line, for the history a failure shows.
    fn describe(&self) -> String {
        let what = if self.deleted { "deleted" } else { "now" };
        let body = match (&self.object.as_task(), &self.object.as_node()) {
            (Some(task), _) => describe_task(task),
            (_, Some(node)) => {
                let capacity = Capacity::of(node);
                format!(
                    "node {} {:?}, reclaimable cpu {}m, at revision {}",
                    self.object.name(),
                    node_state(node),
                    capacity.reclaimable_cpu,
                    self.object.resource_version()
                )
            }
            _ => format!("{:?}", self.object.key()),
        };
        format!(
            "revision {} (from member {}): {what} {body}",
            self.revision, self.member
        )
    }
}

/// Follows `kind` from revision `from` until `stop` is set and it has seen
/// revision `until`, resuming on the next member whenever its stream breaks
/// (or stays silent: bookmarks come every 250 ms from a member that is
/// alive and connected) — as faults.rs's watcher does, with one difference:
/// a revision can hold many changes (a Batch write), and a stream can break
/// in the middle of one, so it resumes from the last revision it has seen
/// *whole* and drops what it saw of the next.
async fn watch_kind(
    servers: Vec<String>,
    kind: pb::Kind,
    from: u64,
    stop: Arc<AtomicBool>,
    until: Arc<AtomicU64>,
) -> Vec<Seen> {
    let done =
        |complete: u64| stop.load(Ordering::Relaxed) && complete >= until.load(Ordering::Relaxed);
    let mut seen: Vec<Seen> = Vec::new();
    // Every change up to `complete` is in `seen`.
    let mut complete = from;
    let mut server = 0;
    loop {
        seen.retain(|s| s.revision <= complete);
        if done(complete) {
            return seen;
        }
        server = (server + 1) % servers.len();
        let client = BerthClient::new(&servers[server..=server]).expect("server");
        let request = pb::WatchRequest {
            kind: kind as i32,
            from_revision: complete,
            ..Default::default()
        };
        let opened =
            tokio::time::timeout(Duration::from_secs(2), client.objects().watch(request)).await;
        let Ok(Ok(stream)) = opened else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        let mut heard = Instant::now();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(250), stream.message()).await;
            let event = match next {
                Ok(Ok(Some(event))) => event,
                Ok(Ok(None) | Err(_)) => break,
                Err(_) => {
                    if done(complete) {
                        seen.retain(|s| s.revision <= complete);
                        return seen;
                    }
                    if heard.elapsed() > Duration::from_secs(3) {
                        break; // a paused or cut-off member: try another
                    }
                    continue;
                }
            };
            heard = Instant::now();
            if event.r#type() == pb::WatchEventType::Bookmark {
                // Everything up to the bookmark has been sent.
                complete = complete.max(event.revision);
                continue;
            }
            // A later revision means the earlier ones are whole.
            if let Some(previous) = seen.last().map(|s| s.revision)
                && event.revision > previous
            {
                complete = complete.max(previous);
            }
            assert!(
                event.revision > complete,
                "the {kind:?} watch went back to revision {} after {complete}",
                event.revision
            );
            let deleted = event.r#type() == pb::WatchEventType::Deleted;
            if let Some(object) = event.object {
                seen.push(Seen {
                    revision: event.revision,
                    deleted,
                    object,
                    member: server + 1,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// The cluster as the checks see it.

type TaskKey = (String, String);

fn uid(task: &pb::Task) -> &str {
    task.metadata.as_ref().map_or("", |m| m.uid.as_str())
}

fn phase(task: &pb::Task) -> pb::TaskPhase {
    task.status
        .as_ref()
        .map_or(pb::TaskPhase::Pending, |s| s.phase())
}

fn node_of(task: &pb::Task) -> &str {
    task.status.as_ref().map_or("", |s| s.node.as_str())
}

fn is_prod(task: &pb::Task) -> bool {
    task.spec
        .as_ref()
        .is_some_and(|s| s.tier() == pb::Tier::Prod)
}

fn node_state(node: &pb::Node) -> pb::NodeState {
    node.status
        .as_ref()
        .map_or(pb::NodeState::Unspecified, |s| s.state())
}

fn describe_task(task: &pb::Task) -> String {
    let meta = task.metadata.clone().unwrap_or_default();
    let spec = task.spec.clone().unwrap_or_default();
    let asked = task.requests().map(Amount::of).unwrap_or_default();
    format!(
        "{}/{} (uid {}, job {} index {} incarnation {}, {:?}, {asked}) {:?} on {:?} at revision {}",
        meta.namespace,
        meta.name,
        meta.uid,
        spec.job,
        spec.index,
        spec.incarnation,
        spec.tier(),
        phase(task),
        node_of(task),
        meta.resource_version
    )
}

/// What the tasks holding one node ask for.
#[derive(Debug, Default, Clone)]
struct Held {
    prod: Amount,
    batch: Amount,
    /// (uid, key) of each task holding the node.
    tasks: Vec<(String, TaskKey)>,
}

#[derive(Debug, Default, Clone)]
struct View {
    nodes: BTreeMap<String, pb::Node>,
    tasks: BTreeMap<TaskKey, pb::Task>,
}

impl View {
    fn from_lists(nodes: &pb::ListResponse, tasks: &pb::ListResponse) -> View {
        View {
            nodes: nodes
                .objects
                .iter()
                .filter_map(|o| Some((o.name().to_string(), o.as_node()?.clone())))
                .collect(),
            tasks: tasks
                .objects
                .iter()
                .filter_map(|o| {
                    let key = (o.namespace().to_string(), o.name().to_string());
                    Some((key, o.as_task()?.clone()))
                })
                .collect(),
        }
    }

    /// Per node, what holds it — the same sums as `assert_no_node_overcommitted`
    /// in scheduler.rs and the apiserver's allocation index: every task
    /// bound and not ended (`Task::holding_node`), prod and batch apart.
    fn held(&self) -> BTreeMap<String, Held> {
        let mut held: BTreeMap<String, Held> = BTreeMap::new();
        for (key, task) in &self.tasks {
            let Some(node) = task.holding_node() else {
                continue;
            };
            let asked = task.requests().map(Amount::of).unwrap_or_default();
            let entry = held.entry(node.to_string()).or_default();
            if is_prod(task) {
                entry.prod.add(&asked, 1);
            } else {
                entry.batch.add(&asked, 1);
            }
            entry.tasks.push((uid(task).to_string(), key.clone()));
        }
        held
    }

    /// A node and everything holding it, for a failure message.
    fn describe_node(&self, name: &str, held: &Held) -> String {
        let mut out = match self.nodes.get(name) {
            Some(node) => {
                let capacity = Capacity::of(node);
                format!(
                    "node {name} ({:?}, at revision {}): allocatable {}, reclaimable cpu {}m \
                     memory {}; holding prod {}, batch {}:",
                    node_state(node),
                    node.metadata.as_ref().map_or(0, |m| m.resource_version),
                    capacity.allocatable,
                    capacity.reclaimable_cpu,
                    capacity.reclaimable_memory,
                    held.prod,
                    held.batch
                )
            }
            None => format!("node {name} (unknown):"),
        };
        for (_, key) in &held.tasks {
            out.push_str(&format!("\n    {}", describe_task(&self.tasks[key])));
        }
        out
    }

    /// The rules that hold in every state, reclamation or not: a live task
    /// is on a node that exists and is not Lost (a lost node's tasks are
    /// lost with it, in the same write), and no replica is live twice.
    fn fencing_violations(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut replicas: BTreeMap<(String, String, u32), Vec<&pb::Task>> = BTreeMap::new();
        for ((namespace, _), task) in &self.tasks {
            let Some(node) = task.holding_node() else {
                continue;
            };
            match self.nodes.get(node) {
                None => problems.push(format!(
                    "{} holds node {node}, which does not exist",
                    describe_task(task)
                )),
                Some(n) if node_state(n) == pb::NodeState::Lost => problems.push(format!(
                    "{} still holds node {node}, which is Lost",
                    describe_task(task)
                )),
                Some(_) => {}
            }
            let spec = task.spec.clone().unwrap_or_default();
            replicas
                .entry((namespace.clone(), spec.job, spec.index))
                .or_default()
                .push(task);
        }
        for ((namespace, job, index), tasks) in replicas {
            if tasks.len() > 1 {
                let all: Vec<String> = tasks.iter().map(|t| describe_task(t)).collect();
                problems.push(format!(
                    "replica {index} of job {namespace}/{job} is live {} times at once:\n    {}",
                    tasks.len(),
                    all.join("\n    ")
                ));
            }
        }
        problems
    }

    /// Nodes over `Capacity::check`: (those that even the amount `lent`
    /// when they last fitted does not explain, those it does — batch being
    /// given back, see [`Replay::end_revision`]).
    fn overcommitted(&self, lent: &HashMap<String, (i64, i64)>) -> (Vec<String>, Vec<String>) {
        let held = self.held();
        let (mut broken, mut reclaiming) = (Vec::new(), Vec::new());
        for (name, node) in &self.nodes {
            let h = held.get(name).cloned().unwrap_or_default();
            let capacity = Capacity::of(node);
            let Err(e) = capacity.check(name, &h.prod, &h.batch) else {
                continue;
            };
            let (cpu, memory) = lent.get(name).copied().unwrap_or((0, 0));
            let before = Capacity {
                reclaimable_cpu: cpu,
                reclaimable_memory: memory,
                ..capacity
            };
            if before.check(name, &h.prod, &h.batch).is_ok() {
                reclaiming.push(format!("{e}\n  {}", self.describe_node(name, &h)));
            } else {
                broken.push(format!("{e}\n  {}", self.describe_node(name, &h)));
            }
        }
        (broken, reclaiming)
    }
}

// ---------------------------------------------------------------------------
// The replay: every revision the watchers saw, checked.

#[derive(Debug, Default)]
struct Stats {
    events: usize,
    revisions: usize,
    /// Task uids ever bound to a node.
    placed: HashSet<String>,
    preempted: HashSet<String>,
    reclaimed: HashSet<String>,
    lost: HashSet<String>,
    /// (node, revision) pairs over the current lending limit while batch
    /// was being given back (legal, see the module documentation).
    reclaiming: usize,
    reclaiming_nodes: BTreeSet<String>,
}

struct Replay {
    seed: u64,
    view: View,
    /// The node each task uid was first bound to.
    bound_to: HashMap<String, String>,
    /// Uids seen ended, and deleted.
    ended: HashSet<String>,
    deleted: HashSet<String>,
    /// Per node, its reclaimable (cpu, memory) at the last revision at
    /// which it was within the rule: what its batch may still be borrowing
    /// while the scheduler takes a shrink back.
    lent_when_fine: HashMap<String, (i64, i64)>,
    /// Uid → node, for the tasks holding a node at the previous revision.
    held_before: HashMap<String, String>,
    /// Every change so far, for the history a failure shows.
    history: Vec<Seen>,
    /// The first check that failed, with the history of what it names.
    failure: Option<String>,
    stats: Stats,
}

impl Replay {
    fn new(seed: u64) -> Replay {
        Replay {
            seed,
            view: View::default(),
            bound_to: HashMap::new(),
            ended: HashSet::new(),
            deleted: HashSet::new(),
            lent_when_fine: HashMap::new(),
            held_before: HashMap::new(),
            history: Vec::new(),
            failure: None,
            stats: Stats::default(),
        }
    }

    /// Records the first failed check. The replay goes on to the end, so
    /// that its comparison with the final List can tell a real violation
    /// from a change the watchers missed.
    fn fail(&mut self, revision: u64, what: String) {
        if self.failure.is_some() {
            return;
        }
        // The recent changes of every node and task the failure names.
        let named = |s: &Seen| {
            let name = s.object.name();
            let node = s.object.as_task().map_or("", node_of);
            what.contains(&format!("{name} ")) || (!node.is_empty() && what.contains(node))
        };
        let mut history: Vec<String> = self
            .history
            .iter()
            .rev()
            .filter(|s| named(s))
            .take(40)
            .map(Seen::describe)
            .collect();
        history.reverse();
        self.failure = Some(format!(
            "scheduling safety broken at revision {revision} (seed {}, BERTH_SEED={} replays \
             the run's choices): {what}\nhistory of what it names:\n  {}",
            self.seed,
            self.seed,
            history.join("\n  ")
        ));
    }

    /// Takes one change in, checking what a single task's history must keep.
    fn event(&mut self, seen: &Seen) {
        self.stats.events += 1;
        self.history.push(seen.clone());
        let key = (
            seen.object.namespace().to_string(),
            seen.object.name().to_string(),
        );
        if let Some(node) = seen.object.as_node() {
            if seen.deleted {
                self.view.nodes.remove(&key.1);
            } else {
                self.view.nodes.insert(key.1, node.clone());
            }
            return;
        }
        let Some(task) = seen.object.as_task() else {
            return;
        };
        let id = uid(task).to_string();
        if self.deleted.contains(&id) {
            self.fail(
                seen.revision,
                format!("a deleted task came back: {}", describe_task(task)),
            );
        }
        if seen.deleted {
            self.deleted.insert(id);
            self.view.tasks.remove(&key);
            return;
        }
        let node = node_of(task);
        if !node.is_empty() {
            self.stats.placed.insert(id.clone());
            match self.bound_to.get(&id).cloned() {
                Some(first) if first != node => self.fail(
                    seen.revision,
                    format!(
                        "a task moved from node {first} to another: {}",
                        describe_task(task)
                    ),
                ),
                Some(_) => {}
                None => {
                    self.bound_to.insert(id.clone(), node.to_string());
                }
            }
        }
        if task.holding_node().is_some() && self.ended.contains(&id) {
            self.fail(
                seen.revision,
                format!("an ended task holds a node again: {}", describe_task(task)),
            );
        }
        if phase(task).is_terminal() {
            self.ended.insert(id.clone());
            let message = task.status.as_ref().map_or("", |s| s.message.as_str());
            match phase(task) {
                pb::TaskPhase::Preempted if message.contains("gives it back") => {
                    self.stats.reclaimed.insert(id);
                }
                pb::TaskPhase::Preempted => {
                    self.stats.preempted.insert(id);
                }
                pb::TaskPhase::Lost => {
                    self.stats.lost.insert(id);
                }
                _ => {}
            }
        }
        self.view.tasks.insert(key, task.clone());
    }

    /// Checks the state once every change of `revision` is in.
    fn end_revision(&mut self, revision: u64) {
        self.stats.revisions += 1;
        if let Some(problem) = self.view.fencing_violations().into_iter().next() {
            self.fail(revision, problem);
        }
        let held = self.view.held();
        let mut failures = Vec::new();
        for (name, node) in &self.view.nodes {
            let h = held.get(name).cloned().unwrap_or_default();
            let capacity = Capacity::of(node);
            let Err(strict) = capacity.check(name, &h.prod, &h.batch) else {
                self.lent_when_fine.insert(
                    name.clone(),
                    (capacity.reclaimable_cpu, capacity.reclaimable_memory),
                );
                continue;
            };
            // Over the rule. Legal only while batch gives back what the
            // node lent before: nothing new may have been bound there (the
            // apiserver checks every bind against the node as it is), and
            // what holds it still fits what was lent when it last fitted.
            let newly: Vec<String> = h
                .tasks
                .iter()
                .filter(|(id, _)| self.held_before.get(id) != Some(name))
                .map(|(_, key)| describe_task(&self.view.tasks[key]))
                .collect();
            if !newly.is_empty() {
                failures.push(format!(
                    "over-committed by a bind: {strict}\n  newly bound:\n    {}\n  {}",
                    newly.join("\n    "),
                    self.view.describe_node(name, &h)
                ));
                continue;
            }
            let (cpu, memory) = self.lent_when_fine.get(name).copied().unwrap_or((0, 0));
            let before = Capacity {
                reclaimable_cpu: cpu,
                reclaimable_memory: memory,
                ..capacity.clone()
            };
            if let Err(e) = before.check(name, &h.prod, &h.batch) {
                failures.push(format!(
                    "over-committed, and not by a reclamation in progress: {strict}; even \
                     with the {cpu}m / {memory} lent when it last fitted: {e}\n  {}",
                    self.view.describe_node(name, &h)
                ));
                continue;
            }
            self.stats.reclaiming += 1;
            self.stats.reclaiming_nodes.insert(name.clone());
        }
        for failure in failures {
            self.fail(revision, failure);
        }
        self.held_before = held
            .into_iter()
            .flat_map(|(node, h)| h.tasks.into_iter().map(move |(id, _)| (id, node.clone())))
            .collect();
    }
}

/// What the replay found: its statistics, and what each node had lent when
/// it last fitted, as of the final revision.
type Replayed = (Stats, HashMap<String, (i64, i64)>);

/// Replays the merged changes revision by revision, checking each; the
/// state at `final_revision` must equal `final_view` (a List at that
/// revision): the watchers missed nothing.
fn replay(seed: u64, mut seen: Vec<Seen>, final_revision: u64, final_view: &View) -> Replayed {
    // Each watcher has everything up to the final revision, and may have
    // some of what came after: past it, one kind's changes could be there
    // without the other's, so the replay stops there.
    seen.retain(|s| s.revision <= final_revision);
    // Stable: each watcher's order within a revision is kept.
    seen.sort_by_key(|s| s.revision);
    let mut replay = Replay::new(seed);
    let mut i = 0;
    while i < seen.len() {
        let revision = seen[i].revision;
        while i < seen.len() && seen[i].revision == revision {
            replay.event(&seen[i]);
            i += 1;
        }
        replay.end_revision(revision);
    }
    let same = compare(seed, &replay.view, final_revision, final_view);
    let lent = replay.lent_when_fine.clone();
    match (replay.failure, same) {
        (Some(failure), Ok(())) => {
            panic!("{failure}\n(the watchers' replay matches the final List: they missed nothing)")
        }
        (Some(failure), Err(differ)) => panic!("{failure}\nbut also: {differ}"),
        (None, Err(differ)) => panic!("{differ}"),
        (None, Ok(())) => (replay.stats, lent),
    }
}

/// Whether the replayed state at `revision` is the List's.
fn compare(seed: u64, replayed: &View, revision: u64, listed: &View) -> Result<(), String> {
    for (what, equal) in [
        ("nodes", replayed.nodes == listed.nodes),
        ("tasks", replayed.tasks == listed.tasks),
    ] {
        if !equal {
            let (a, b): (Vec<String>, Vec<String>) = if what == "nodes" {
                (
                    replayed.nodes.keys().cloned().collect(),
                    listed.nodes.keys().cloned().collect(),
                )
            } else {
                (
                    replayed.tasks.values().map(describe_task).collect(),
                    listed.tasks.values().map(describe_task).collect(),
                )
            };
            // Only the lines that differ.
            let only = |x: &[String], y: &[String]| -> Vec<String> {
                x.iter().filter(|l| !y.contains(l)).cloned().collect()
            };
            return Err(format!(
                "the watchers' {what} at revision {revision} differ from a List (seed {seed}):\n\
                 only replayed:\n  {}\nonly listed:\n  {}",
                only(&a, &b).join("\n  "),
                only(&b, &a).join("\n  ")
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Liveness: where the cluster must get to once the faults are over.

struct Lists {
    nodes: pb::ListResponse,
    tasks: pb::ListResponse,
    jobs: pb::ListResponse,
}

async fn lists(client: &BerthClient) -> Result<Lists, String> {
    let list = |kind| async move {
        client
            .list(kind, "")
            .await
            .map_err(|e| format!("list {kind:?}: {}", e.message()))
    };
    Ok(Lists {
        nodes: list(pb::Kind::Node).await?,
        tasks: list(pb::Kind::Task).await?,
        jobs: list(pb::Kind::Job).await?,
    })
}

/// Every node Ready; every job with exactly its replicas; prod all Running;
/// batch Running, or waiting (unbound) only if it fits on no node.
fn converged(lists: &Lists) -> Result<(), String> {
    let view = View::from_lists(&lists.nodes, &lists.tasks);
    let ready = view
        .nodes
        .values()
        .filter(|n| node_state(n) == pb::NodeState::Ready)
        .count();
    if ready != NODES {
        return Err(format!("{ready} of {NODES} nodes are Ready"));
    }
    // Reclamation finished: every node within its current limit.
    let (broken, reclaiming) = view.overcommitted(&HashMap::new());
    if let Some(node) = broken.into_iter().chain(reclaiming).next() {
        return Err(format!("batch has not given back all it borrowed: {node}"));
    }
    let held = view.held();
    let mut by_job: BTreeMap<String, Vec<&pb::Task>> = BTreeMap::new();
    for ((namespace, _), task) in &view.tasks {
        if namespace == NAMESPACE {
            let job = task.spec.as_ref().map_or("", |s| s.job.as_str());
            by_job.entry(job.to_string()).or_default().push(task);
        }
    }
    for object in &lists.jobs.objects {
        let Some(job) = object.as_job() else { continue };
        if object.namespace() != NAMESPACE {
            continue;
        }
        let name = object.name();
        let replicas = job.spec.as_ref().map_or(0, |s| s.replicas);
        let tasks = by_job.remove(name).unwrap_or_default();
        let indexes: BTreeSet<u32> = tasks
            .iter()
            .map(|t| t.spec.as_ref().map_or(0, |s| s.index))
            .collect();
        if tasks.len() != replicas as usize || indexes != (0..replicas).collect() {
            return Err(format!(
                "job {name} has tasks at indexes {indexes:?}, wants 0..{replicas}"
            ));
        }
        for task in tasks {
            match phase(task) {
                pb::TaskPhase::Running => {}
                pb::TaskPhase::Pending if !is_prod(task) && node_of(task).is_empty() => {
                    let asked = task.requests().map(Amount::of).unwrap_or_default();
                    let room = view.nodes.iter().find(|(name, node)| {
                        let h = held.get(*name).cloned().unwrap_or_default();
                        node.spec.as_ref().is_none_or(|s| !s.unschedulable)
                            && Capacity::of(node)
                                .check_add(name, &h.prod, &h.batch, &asked, false)
                                .is_ok()
                    });
                    if let Some((node, _)) = room {
                        return Err(format!(
                            "{} waits, but node {node} has room for it",
                            describe_task(task)
                        ));
                    }
                }
                _ => return Err(format!("{} is not running yet", describe_task(task))),
            }
        }
    }
    if let Some((job, tasks)) = by_job.into_iter().next() {
        return Err(format!(
            "{} tasks of job {job}, which does not exist",
            tasks.len()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The actors: schedulers, job churn, nemesis.

/// The scheduler processes, each with its own identity in the lease.
struct Schedulers {
    servers: String,
    running: Vec<(String, Component)>,
    started: usize,
}

impl Schedulers {
    fn start(&mut self) {
        self.started += 1;
        let identity = format!("scheduler-{}", self.started);
        let component = Component::scheduler(
            &self.servers,
            &["--identity", &identity, "--lease-duration", LEASE],
        );
        self.running.push((identity, component));
    }

    /// The lease holder's position in `running`, if it can be read and is
    /// one of them.
    async fn active(&self, client: &BerthClient) -> Option<usize> {
        let lease = tokio::time::timeout(
            Duration::from_secs(2),
            client.get(pb::Kind::Lease, "default", "berth-scheduler"),
        )
        .await
        .ok()?
        .ok()?;
        let holder = lease.as_lease()?.spec.as_ref()?.holder.clone();
        self.running.iter().position(|(id, _)| *id == holder)
    }

    /// The active scheduler, or (when the lease cannot be read or is held
    /// by none of them) one picked at random.
    async fn victim(&self, client: &BerthClient, rng: &mut Rng) -> (usize, &'static str) {
        match self.active(client).await {
            Some(i) => (i, "active"),
            None => (rng.below(self.running.len() as u64) as usize, "some"),
        }
    }
}

/// Scales jobs up and down, and deletes and re-creates `api`, until `stop`.
/// Returns (writes acknowledged, writes that failed or timed out).
async fn churn(servers: Vec<String>, mut rng: Rng, stop: Arc<AtomicBool>) -> (usize, usize) {
    let client = BerthClient::new(&servers)
        .expect("servers")
        .with_retry_for(Duration::from_secs(2));
    let (mut ok, mut failed) = (0, 0);
    let mut api_exists = true;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(rng.millis(600, 1500)).await;
        let write = match rng.below(4) {
            3 if api_exists => {
                let request = pb::DeleteRequest {
                    kind: pb::Kind::Job as i32,
                    namespace: NAMESPACE.into(),
                    name: API.name.into(),
                    resource_version: 0,
                };
                let deleted = client
                    .call(|mut c| {
                        let request = request.clone();
                        async move { c.delete(request).await }
                    })
                    .await;
                // NotFound: an earlier delete whose answer was lost.
                let done = deleted
                    .as_ref()
                    .map_or_else(|e| e.code() == tonic::Code::NotFound, |_| true);
                api_exists = !done;
                done
            }
            3 => {
                let created = client.apply(job(&API, API.replicas), false).await;
                api_exists = created.is_ok();
                created.is_ok()
            }
            k => {
                let shape = [&WEB, &ETL, &CRUNCH][k as usize];
                let (min, max) = shape.scale;
                let replicas = min + rng.below(u64::from(max - min) + 1) as u32;
                client.apply(job(shape, replicas), false).await.is_ok()
            }
        };
        if write {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    (ok, failed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillMember,
    PauseMember,
    CutMember,
    KillScheduler,
    PauseScheduler,
    KillAgent,
}

const FAULTS: [Fault; 6] = [
    Fault::KillMember,
    Fault::PauseMember,
    Fault::CutMember,
    Fault::KillScheduler,
    Fault::PauseScheduler,
    Fault::KillAgent,
];

fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_node_is_overcommitted_and_no_task_bound_twice_under_faults() {
    let seed = seed_from_env();
    let seconds = seconds_from_env(15);
    eprintln!(
        "scheduler fault run: seed {seed}, {seconds}s (BERTH_SEED={seed} replays the choices)"
    );
    let mut rng = Rng::new(seed);
    let began = Instant::now();

    let mut cluster = Cluster::start_for_faults(3, &MEMBER_ARGS);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let servers = cluster.addresses();
    let server_list = servers.join(",");
    let client = cluster.client();

    let namespace = pb::Object::from(pb::Namespace {
        metadata: Some(pb::ObjectMeta {
            name: NAMESPACE.into(),
            ..Default::default()
        }),
        spec: Some(pb::NamespaceSpec::default()),
    });
    client.apply(namespace, false).await.expect("namespace");

    // The watchers start before there is any node or task, so that
    // replaying what they see from an empty state is the whole story.
    let start = client.list(pb::Kind::Task, "").await.expect("list tasks");
    let nodes = client.list(pb::Kind::Node, "").await.expect("list nodes");
    assert!(start.objects.is_empty() && nodes.objects.is_empty());
    let stop_watching = Arc::new(AtomicBool::new(false));
    let watched_until = Arc::new(AtomicU64::new(u64::MAX));
    let watchers: Vec<_> = [pb::Kind::Task, pb::Kind::Node]
        .into_iter()
        .map(|kind| {
            tokio::spawn(watch_kind(
                servers.clone(),
                kind,
                start.revision,
                stop_watching.clone(),
                watched_until.clone(),
            ))
        })
        .collect();

    let mut agent = Component::sim_nodes(&server_list, "n", NODES, &NODE_ARGS);
    let mut schedulers = Schedulers {
        servers: server_list.clone(),
        running: Vec::new(),
        started: 0,
    };
    schedulers.start();
    schedulers.start();

    // Batch fills the cluster first; prod then has to preempt it.
    for shape in [&CRUNCH, &ETL] {
        client
            .apply(job(shape, shape.replicas), false)
            .await
            .expect("batch job");
    }
    let batch = (CRUNCH.replicas + ETL.replicas) as usize;
    try_wait_until(SETTLE, "the batch jobs to run", || async {
        client.list(pb::Kind::Task, "").await.is_ok_and(|l| {
            l.objects
                .iter()
                .filter_map(|o| o.as_task())
                .filter(|t| phase(t) == pb::TaskPhase::Running)
                .count()
                == batch
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e} (seed {seed})"));
    for shape in [&WEB, &API] {
        client
            .apply(job(shape, shape.replicas), false)
            .await
            .expect("prod job");
    }
    eprintln!(
        "{:?}: batch running, prod applied; faults begin",
        began.elapsed()
    );

    let stop_churn = Arc::new(AtomicBool::new(false));
    let churner = tokio::spawn(churn(
        servers.clone(),
        Rng::derived(seed, 1),
        stop_churn.clone(),
    ));

    // The nemesis: every kind of fault once per round, in a seeded order.
    let clock = Instant::now();
    let deadline = clock + Duration::from_secs(seconds);
    let mut faults: Vec<String> = Vec::new();
    let mut counts: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut deck: Vec<Fault> = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(rng.millis(300, 900)).await;
        if deck.is_empty() {
            deck = FAULTS.to_vec();
            for i in (1..deck.len()).rev() {
                deck.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let fault = deck.pop().unwrap();
        *counts.entry(fault).or_default() += 1;
        let at = clock.elapsed();
        let id = 1 + rng.below(3);
        match fault {
            Fault::KillMember => {
                let hold = rng.millis(300, 2000);
                faults.push(format!("{at:.1?} kill -9 member {id}, back after {hold:?}"));
                cluster.member(id).kill9();
                tokio::time::sleep(hold).await;
                cluster.member(id).restart();
            }
            Fault::PauseMember => {
                let hold = rng.millis(300, 2000);
                faults.push(format!("{at:.1?} SIGSTOP member {id} for {hold:?}"));
                let pid = cluster.member(id).pid().expect("running");
                signal(pid, "STOP");
                tokio::time::sleep(hold).await;
                signal(pid, "CONT");
            }
            Fault::CutMember => {
                let hold = rng.millis(300, 2500);
                let others: Vec<u64> = (1..=3).filter(|o| *o != id).collect();
                faults.push(format!("{at:.1?} member {id} cut off for {hold:?}"));
                cluster.partition(id, &others).await;
                tokio::time::sleep(hold).await;
                cluster.heal().await;
            }
            Fault::KillScheduler => {
                let (i, which) = schedulers.victim(&client, &mut rng).await;
                let (identity, mut victim) = schedulers.running.remove(i);
                faults.push(format!(
                    "{at:.1?} kill -9 {which} scheduler {identity}, a new one starts"
                ));
                victim.kill9();
                schedulers.start();
            }
            Fault::PauseScheduler => {
                // Past the lease: the standby takes over, and the paused
                // one wakes up believing it still holds the lease until its
                // own clock says otherwise — what it writes then must not
                // break anything (the apiserver checks every bind).
                let hold = LEASE_DURATION + rng.millis(1000, 2500);
                let (i, which) = schedulers.victim(&client, &mut rng).await;
                let identity = schedulers.running[i].0.clone();
                faults.push(format!(
                    "{at:.1?} SIGSTOP {which} scheduler {identity} for {hold:?}"
                ));
                schedulers.running[i].1.signal("STOP");
                tokio::time::sleep(hold).await;
                schedulers.running[i].1.signal("CONT");
                // Whether the fencing case happened: someone else leads now.
                if let Some(now) = schedulers.active(&client).await
                    && now != i
                {
                    let holder = &schedulers.running[now].0;
                    if let Some(f) = faults.last_mut() {
                        f.push_str(&format!(" (woke up with {holder} holding the lease)"));
                    }
                }
            }
            Fault::KillAgent => {
                // Past 2 s the nodes are NotReady; past 4 s Lost, and their
                // tasks with them.
                let hold = rng.millis(500, 5000);
                faults.push(format!("{at:.1?} kill -9 the agent, back after {hold:?}"));
                agent.kill9();
                tokio::time::sleep(hold).await;
                agent = Component::sim_nodes(&server_list, "n", NODES, &NODE_ARGS);
            }
        }
    }
    stop_churn.store(true, Ordering::Relaxed);
    let (job_writes, job_writes_failed) = churner.await.expect("churn");
    cluster.heal().await;
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    eprintln!(
        "{:?}: faults over ({} in {:?}); waiting for the jobs to converge",
        began.elapsed(),
        faults.len(),
        clock.elapsed()
    );

    // Liveness: every job converges. Its verdict is given after the safety
    // checks, which explain a failure better when both fail.
    let settled = cluster.client().with_retry_for(Duration::from_secs(2));
    let last_reason = Mutex::new(String::new());
    let convergence = try_wait_until(SETTLE, "every job to converge", || async {
        let verdict = match lists(&settled).await {
            Ok(lists) => converged(&lists),
            Err(e) => Err(e),
        };
        let ok = verdict.is_ok();
        if let Err(why) = verdict {
            *last_reason.lock().unwrap() = why;
        }
        ok
    })
    .await;
    let converged_after = began.elapsed();

    // A final List of nodes and tasks at one revision: the nodes listed
    // before and after the tasks are the same, so they are the nodes at the
    // tasks' revision too.
    let (final_revision, final_view, final_jobs) = {
        let mut tries = 0;
        loop {
            tries += 1;
            let before = settled.list(pb::Kind::Node, "").await;
            let tasks = settled.list(pb::Kind::Task, "").await;
            let after = settled.list(pb::Kind::Node, "").await;
            let jobs = settled.list(pb::Kind::Job, "").await;
            if let (Ok(before), Ok(tasks), Ok(after), Ok(jobs)) = (before, tasks, after, jobs)
                && before.objects == after.objects
            {
                break (tasks.revision, View::from_lists(&after, &tasks), jobs);
            }
            assert!(tries < 50, "no consistent final List (seed {seed})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    // The watchers stop once they have seen the final revision.
    watched_until.store(final_revision, Ordering::Relaxed);
    stop_watching.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for watcher in watchers {
        let events = tokio::time::timeout(SETTLE, watcher)
            .await
            .unwrap_or_else(|_| panic!("a watcher did not catch up (seed {seed})"))
            .expect("watcher");
        seen.extend(events);
    }
    eprintln!(
        "{} faults:\n  {}\njob writes: {job_writes} acknowledged, {job_writes_failed} failed",
        faults.len(),
        faults.join("\n  ")
    );

    // 1 and 2 at every revision, and the replay ends at the List's state.
    let (stats, lent) = replay(seed, seen, final_revision, &final_view);
    // 1 and 2 on the final List (with the amounts each node had lent when
    // it last fitted, from the replay: the List alone cannot tell a
    // reclamation in progress from an over-commit).
    let mut problems = final_view.fencing_violations();
    let (broken, reclaiming) = final_view.overcommitted(&lent);
    problems.extend(broken);
    if !reclaiming.is_empty() {
        eprintln!(
            "at the final List, batch is still being given back on:\n{}",
            reclaiming.join("\n")
        );
    }
    assert!(
        problems.is_empty(),
        "the final List breaks scheduling safety (seed {seed}):\n{}",
        problems.join("\n")
    );
    eprintln!(
        "checked {} revisions ({} changes of tasks and nodes), up to revision {final_revision}: \
         no node over-committed, no task bound twice\n\
         faults by kind: {counts:?}\n\
         tasks placed: {}, preempted for prod: {}, evicted by reclamation: {}, lost with their \
         node: {}; a node over its lending limit while batch gave it back: {} node-revisions \
         on {:?}",
        stats.revisions,
        stats.events,
        stats.placed.len(),
        stats.preempted.len(),
        stats.reclaimed.len(),
        stats.lost.len(),
        stats.reclaiming,
        stats.reclaiming_nodes
    );

    // 3: liveness.
    if let Err(e) = convergence {
        panic!(
            "{e} (seed {seed}): {}",
            last_reason.lock().unwrap_or_else(|e| e.into_inner())
        );
    }
    let mut summary = Vec::new();
    for object in &final_jobs.objects {
        let Some(job) = object.as_job() else { continue };
        let running = final_view
            .tasks
            .values()
            .filter(|t| t.spec.as_ref().is_some_and(|s| s.job == object.name()))
            .filter(|t| phase(t) == pb::TaskPhase::Running)
            .count();
        let desired = job.spec.as_ref().map_or(0, |s| s.replicas);
        summary.push(format!("{} {running}/{desired}", object.name()));
    }
    eprintln!(
        "converged at {converged_after:?}: running/desired {}; whole run {:?}",
        summary.join(", "),
        began.elapsed()
    );
    drop(agent);
    drop(schedulers);
}

// ---------------------------------------------------------------------------
// The checker itself: it must pass what is legal and catch what is not, or
// a green run would prove nothing.

#[cfg(test)]
mod checker {
    use super::*;

    fn node(name: &str, revision: u64, state: pb::NodeState, reclaimable_cpu: i64) -> Seen {
        let object = pb::Object::from(pb::Node {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                resource_version: revision,
                ..Default::default()
            }),
            spec: None,
            status: Some(pb::NodeStatus {
                allocatable: Some(pb::Resources {
                    cpu_millis: 4000,
                    memory_bytes: 16 << 30,
                    ..Default::default()
                }),
                state: state as i32,
                reclaimable: Some(pb::Usage {
                    cpu_millis: reclaimable_cpu,
                    memory_bytes: 0,
                }),
                ..Default::default()
            }),
        });
        Seen {
            revision,
            deleted: false,
            object,
            member: 1,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn task(
        name: &str,
        uid: &str,
        index: u32,
        tier: pb::Tier,
        cpu: i64,
        on: &str,
        phase: pb::TaskPhase,
        revision: u64,
    ) -> Seen {
        let object = pb::Object::from(pb::Task {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                namespace: NAMESPACE.into(),
                uid: uid.into(),
                resource_version: revision,
                ..Default::default()
            }),
            spec: Some(pb::TaskSpec {
                job: "j".into(),
                index,
                incarnation: 1,
                tier: tier as i32,
                template: Some(pb::TaskTemplate {
                    resources: Some(pb::Resources {
                        cpu_millis: cpu,
                        memory_bytes: 1 << 20,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(pb::TaskStatus {
                phase: phase as i32,
                node: on.into(),
                ..Default::default()
            }),
        });
        Seen {
            revision,
            deleted: false,
            object,
            member: 1,
        }
    }

    /// Replays `seen`; the first failed check, if any.
    fn check(seen: Vec<Seen>) -> Result<Stats, String> {
        let mut replay = Replay::new(0);
        let mut i = 0;
        while i < seen.len() {
            let revision = seen[i].revision;
            while i < seen.len() && seen[i].revision == revision {
                replay.event(&seen[i]);
                i += 1;
            }
            replay.end_revision(revision);
        }
        match replay.failure {
            Some(failure) => Err(failure),
            None => Ok(replay.stats),
        }
    }

    use pb::NodeState::{Lost, Ready};
    use pb::TaskPhase::{Preempted, Running, Scheduled};
    use pb::Tier::{Batch, Prod};

    /// Prod reserves 3 CPUs and lends 2 to batch, which takes 3.
    fn borrowed() -> Vec<Seen> {
        vec![
            node("n-0", 1, Ready, 2000),
            task("p-0", "p0", 0, Prod, 3000, "n-0", Running, 2),
            task("b-0", "b0", 1, Batch, 3000, "n-0", Scheduled, 3),
        ]
    }

    #[test]
    fn reclamation_in_progress_is_legal_until_something_is_bound() {
        // Prod wants its reservation back: batch is over the limit until
        // it is evicted, a revision later.
        let mut seen = borrowed();
        seen.push(node("n-0", 4, Ready, 0));
        seen.push(task("b-0", "b0", 1, Batch, 3000, "n-0", Preempted, 5));
        let stats = check(seen).unwrap();
        assert_eq!(stats.reclaiming, 1);

        // Binding anything there meanwhile is an over-commit.
        let mut seen = borrowed();
        seen.push(node("n-0", 4, Ready, 0));
        seen.push(task("b-1", "b1", 2, Batch, 100, "n-0", Scheduled, 5));
        let e = check(seen).unwrap_err();
        assert!(e.contains("over-committed by a bind"), "{e}");
    }

    #[test]
    fn over_commits_are_caught() {
        let e = check(vec![
            node("n-0", 1, Ready, 0),
            task("b-0", "b0", 0, Batch, 3000, "n-0", Running, 2),
            task("b-1", "b1", 1, Batch, 3000, "n-0", Scheduled, 3),
        ])
        .unwrap_err();
        assert!(
            e.contains("over-committed by a bind") && e.contains("b-1"),
            "{e}"
        );
        // Prod never borrows.
        let e = check(vec![
            node("n-0", 1, Ready, 4000),
            task("p-0", "p0", 0, Prod, 3000, "n-0", Running, 2),
            task("p-1", "p1", 1, Prod, 3000, "n-0", Scheduled, 3),
        ])
        .unwrap_err();
        assert!(e.contains("for prod"), "{e}");
        // A node's limit shrinking with no batch to give back is no
        // reclamation: prod itself is over.
        let e = check(vec![
            node("n-0", 1, Ready, 0),
            task("p-0", "p0", 0, Prod, 4000, "n-0", Running, 2),
            {
                let mut n = node("n-0", 3, Ready, 0);
                if let Some(pb::object::Kind::Node(n)) = &mut n.object.kind {
                    n.status
                        .as_mut()
                        .unwrap()
                        .allocatable
                        .as_mut()
                        .unwrap()
                        .cpu_millis = 2000;
                }
                n
            },
        ])
        .unwrap_err();
        assert!(e.contains("not by a reclamation"), "{e}");
    }

    #[test]
    fn double_binds_are_caught() {
        let base = || {
            vec![
                node("n-0", 1, Ready, 0),
                node("n-1", 1, Ready, 0),
                task("t-0", "u0", 0, Batch, 100, "n-0", Running, 2),
            ]
        };
        // The same task on another node.
        let mut seen = base();
        seen.push(task("t-0", "u0", 0, Batch, 100, "n-1", Running, 3));
        assert!(check(seen).unwrap_err().contains("moved from node n-0"));
        // The same replica twice (another name, same job and index).
        let mut seen = base();
        seen.push(task("t-0-copy", "u1", 0, Batch, 100, "n-1", Running, 3));
        assert!(check(seen).unwrap_err().contains("live 2 times"));
        // An ended task running again.
        let mut seen = base();
        seen.push(task("t-0", "u0", 0, Batch, 100, "n-0", Preempted, 3));
        seen.push(task("t-0", "u0", 0, Batch, 100, "n-0", Running, 4));
        assert!(check(seen).unwrap_err().contains("ended task"));
        // A task still holding a node that is Lost.
        let mut seen = base();
        seen.push(node("n-0", 3, Lost, 0));
        assert!(check(seen).unwrap_err().contains("Lost"));
        // The replacement of a lost task elsewhere is fine.
        let mut seen = base();
        seen.push(node("n-0", 3, Lost, 0));
        seen.push(task(
            "t-0",
            "u0",
            0,
            Batch,
            100,
            "n-0",
            pb::TaskPhase::Lost,
            3,
        ));
        seen.push(task("t-0", "u2", 0, Batch, 100, "n-1", Scheduled, 4));
        check(seen).unwrap();
    }
}
