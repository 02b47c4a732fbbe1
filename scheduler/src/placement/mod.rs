//! Placement: pending tasks to nodes.
//!
//! ```text
//!  pending tasks ─▶ classes: tasks that need the same thing (equivalence)
//!       │              in order: prod first, then priority, then age
//!       ▼
//!  for each class:  nodes ─▶ feasible? (feasible.rs) ─▶ score (score.rs) ─▶ heap
//!       │           (all nodes, or a sample of them, relaxed-randomly)
//!       ▼
//!  for each task:   best node still feasible and allowed by the spread
//!       │           (spread.rs); the node's score is recomputed and it
//!       │           goes back into the heap
//!       ▼
//!  none: a prod task may evict batch (preempt.rs); else it waits, and
//!  its message says why ─▶ decisions, bound in batches by the writer
//! ```
//!
//! Scores are computed once per class and node, then only for the node a
//! task lands on: placing k tasks of a class over n nodes costs about
//! n + k·log n, not k·n. Decisions of the cycle are kept in an overlay over
//! the cluster view, so each decision sees the ones before it.

pub mod feasible;
pub mod preempt;
pub mod score;
pub mod spread;

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use berth_proto::capacity::Amount;
use berth_proto::object::ObjectKey;
use berth_proto::pb;
use berth_proto::selector::Selector;

use crate::state::{ClusterState, JobKey, NodeView};
use feasible::{Reason, Why};
use preempt::Candidate;
use spread::Spread;

/// How nodes are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Fill nodes up without stranding resources (Borg-like; the default).
    Binpack,
    /// Prefer the least allocated node (Kubernetes' default).
    Spread,
    /// The first feasible node in name order.
    Firstfit,
}

/// Tasks that need the same thing from a node.
#[derive(Debug, Clone)]
pub struct Class {
    pub prod: bool,
    pub priority: i32,
    pub asked: Amount,
    pub constraints: Selector,
    /// The job, when rules per job apply (spread, anti-affinity).
    pub job: Option<JobKey>,
    pub spread: Option<(String, u32)>,
    pub max_per_node: u32,
    pub tasks: Vec<Arc<pb::Object>>,
}

/// What placement decided for one task.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Bind the task to the node, after evicting `victims` (prod only).
    Bind {
        task: Arc<pb::Object>,
        node: String,
        victims: Vec<Arc<pb::Object>>,
    },
    /// No node can take it now.
    Wait {
        task: Arc<pb::Object>,
        reason: String,
    },
}

/// The class key: every field that makes two tasks need different nodes.
fn class_key(task: &pb::Task, namespace: &str) -> Option<(String, Class)> {
    let spec = task.spec.as_ref()?;
    let asked = task.requests().map(Amount::of).unwrap_or_default();
    let constraints = Selector::from_constraints(&spec.constraints);
    let (spread, max_per_node) = job_rules(task);
    let per_job = spread.is_some() || max_per_node > 0;
    let job = per_job.then(|| (namespace.to_string(), spec.job.clone()));
    let key = format!(
        "{}|{}|{:?}|{}|{:?}|{:?}|{}",
        spec.tier, spec.priority, asked, constraints, job, spread, max_per_node
    );
    Some((
        key,
        Class {
            prod: spec.tier() == pb::Tier::Prod,
            priority: spec.priority,
            asked,
            constraints,
            job,
            spread,
            max_per_node,
            tasks: Vec::new(),
        },
    ))
}

/// Spread and anti-affinity travel with the task as labels the reconciler
/// copies from the job spec (so that placement needs only the task).
fn job_rules(task: &pb::Task) -> (Option<(String, u32)>, u32) {
    let Some(spec) = &task.spec else {
        return (None, 0);
    };
    let spread = spec
        .spread
        .as_ref()
        .map(|s| (s.key.clone(), s.max_skew.max(1)));
    (spread, spec.max_per_node)
}

/// When a task arrived, for first come, first served within a priority: the
/// time it was created, or, for a task about to be created, what `arrived`
/// says (its job's creation time); then its version and name, so that the
/// order is total.
fn arrival<'t>(task: &'t pb::Object, arrived: &HashMap<ObjectKey, i64>) -> (i64, u64, &'t str) {
    let created = task.metadata().map_or(0, |m| m.created_at_ms);
    let at = match task.resource_version() {
        0 => arrived.get(&task.key()).copied().unwrap_or(created),
        _ => created,
    };
    (at, task.resource_version(), task.name())
}

/// Groups pending tasks into classes, most important first: prod before
/// batch, then by priority, then the class whose oldest task arrived first;
/// within a class, oldest first.
pub fn classify(
    pending: Vec<Arc<pb::Object>>,
    arrived: &HashMap<ObjectKey, i64>,
    per_task: bool,
) -> Vec<Class> {
    let mut classes: BTreeMap<String, Class> = BTreeMap::new();
    for object in pending {
        let Some(task) = object.as_task() else {
            continue;
        };
        let Some((mut key, class)) = class_key(task, object.namespace()) else {
            continue;
        };
        if per_task {
            key = format!("{key}|{:?}", object.key());
        }
        classes.entry(key).or_insert(class).tasks.push(object);
    }
    let mut classes: Vec<Class> = classes.into_values().collect();
    for class in &mut classes {
        class
            .tasks
            .sort_by(|a, b| arrival(a, arrived).cmp(&arrival(b, arrived)));
    }
    classes.sort_by(|a, b| {
        let oldest_a = a.tasks.first().map(|t| arrival(t, arrived));
        let oldest_b = b.tasks.first().map(|t| arrival(t, arrived));
        b.prod
            .cmp(&a.prod)
            .then(b.priority.cmp(&a.priority))
            .then(oldest_a.cmp(&oldest_b))
    });
    classes
}

/// A score that orders (NaN is never produced; it would sort low).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Score(f64);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

pub struct Placer<'a> {
    state: &'a ClusterState,
    policy: Policy,
    sample: usize,
    /// Node names in order (first fit and sampling walk this).
    order: Vec<&'a str>,
    /// Node views changed by this cycle's decisions.
    overlay: HashMap<String, NodeView>,
    /// Tasks of jobs placed this cycle, per job and node.
    placed: HashMap<(JobKey, String), u32>,
    evicted: HashSet<ObjectKey>,
    /// Where relaxed-random sampling starts.
    start: usize,
    /// See [`Placer::with_arrivals`].
    arrived: HashMap<ObjectKey, i64>,
    /// See [`Placer::without_classes`].
    per_task: bool,
    /// The largest node, for binpack's cost of opening a node.
    largest: score::Largest,
}

impl<'a> Placer<'a> {
    pub fn new(state: &'a ClusterState, policy: Policy, sample: usize, seed: usize) -> Placer<'a> {
        let order: Vec<&str> = state
            .nodes
            .values()
            .filter(|n| n.known)
            .map(|n| n.name.as_str())
            .collect();
        let start = if order.is_empty() {
            0
        } else {
            seed % order.len()
        };
        Placer {
            state,
            policy,
            sample,
            order,
            overlay: HashMap::new(),
            placed: HashMap::new(),
            evicted: HashSet::new(),
            start,
            arrived: HashMap::new(),
            per_task: false,
            largest: score::Largest::of(state.nodes.values().filter(|n| n.known)),
        }
    }

    fn view(&self, name: &str) -> Option<&NodeView> {
        self.overlay
            .get(name)
            .or_else(|| self.state.nodes.get(name))
    }

    fn view_mut(&mut self, name: &str) -> Option<&mut NodeView> {
        if !self.overlay.contains_key(name) {
            let view = self.state.nodes.get(name)?.clone();
            self.overlay.insert(name.to_string(), view);
        }
        self.overlay.get_mut(name)
    }

    /// When tasks about to be created arrived (their job's creation), so
    /// that they take their turn among the pending ones.
    pub fn with_arrivals(mut self, arrived: HashMap<ObjectKey, i64>) -> Placer<'a> {
        self.arrived = arrived;
        self
    }

    /// Places every task on its own, as if no two were alike: no
    /// equivalence classes, so feasibility and scores are computed per task
    /// (for measuring what classes save).
    pub fn without_classes(mut self) -> Placer<'a> {
        self.per_task = true;
        self
    }

    /// Decides for every pending task.
    pub fn place(&mut self, pending: Vec<Arc<pb::Object>>) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for class in classify(pending, &self.arrived, self.per_task) {
            self.place_class(&class, &mut decisions);
        }
        decisions
    }

    /// The job's tasks already holding each node (and placed this cycle).
    fn per_node(&self, job: &JobKey) -> HashMap<String, u32> {
        let mut counts: HashMap<String, u32> = HashMap::new();
        for task in self.state.tasks_of(job) {
            if self.evicted.contains(&task.key()) {
                continue;
            }
            if let Some(node) = task.as_task().and_then(|t| t.holding_node()) {
                *counts.entry(node.to_string()).or_default() += 1;
            }
        }
        for ((j, node), n) in &self.placed {
            if j == job {
                *counts.entry(node.clone()).or_default() += n;
            }
        }
        counts
    }

    fn place_class(&mut self, class: &Class, decisions: &mut Vec<Decision>) {
        let mut per_node = class
            .job
            .as_ref()
            .map(|j| self.per_node(j))
            .unwrap_or_default();
        let mut spread = class.spread.as_ref().map(|(key, skew)| {
            let domains: Vec<String> = self
                .order
                .iter()
                .filter_map(|name| self.view(name))
                .filter(|n| feasible::static_filter(n, class).is_ok())
                .filter_map(|n| n.labels.get(key).cloned())
                .collect();
            let placed = per_node.iter().flat_map(|(node, n)| {
                let domain = self.view(node).and_then(|v| v.labels.get(key).cloned());
                std::iter::repeat_n(domain, *n as usize).flatten()
            });
            Spread::new(key.clone(), *skew, domains, placed.collect::<Vec<_>>())
        });

        let mut heap: BinaryHeap<(Score, Reverse<usize>)> = BinaryHeap::new();
        let mut why = Why::new(self.order.len());
        let mut scanned = 0;
        let mut unplaced = Vec::new();
        for task in &class.tasks {
            let mut chosen = None;
            let mut skipped = Vec::new();
            loop {
                if heap.is_empty() && scanned < self.order.len() {
                    scanned += self.scan(class, &per_node, &mut heap, &mut why, scanned);
                    continue;
                }
                let Some((_, Reverse(index))) = heap.pop() else {
                    break;
                };
                let name = self.order[index];
                let Some(node) = self.view(name) else {
                    continue;
                };
                // A node full for this class stays so for the rest of it.
                if !feasible::fits(node, class) {
                    why.note(Reason::Resources);
                    continue;
                }
                if !feasible::below_per_node_limit(per_node.get(name).copied().unwrap_or(0), class)
                {
                    why.note(Reason::AntiAffinity);
                    continue;
                }
                let domain = spread
                    .as_ref()
                    .and_then(|s| node.labels.get(&s.key).cloned());
                if spread.as_ref().is_some_and(|s| !s.allows(domain.as_ref())) {
                    skipped.push(index);
                    continue;
                }
                chosen = Some((index, domain));
                break;
            }
            for index in skipped {
                if let Some(node) = self.view(self.order[index]) {
                    heap.push((
                        Score(score::score(self.policy, node, class, index, &self.largest)),
                        Reverse(index),
                    ));
                }
            }
            let Some((index, domain)) = chosen else {
                unplaced.push(task.clone());
                continue;
            };
            let name = self.order[index].to_string();
            self.assume(&name, task, class, &[]);
            if let Some(s) = spread.as_mut() {
                s.record(domain.as_ref());
            }
            *per_node.entry(name.clone()).or_default() += 1;
            if let Some(node) = self.view(&name) {
                heap.push((
                    Score(score::score(self.policy, node, class, index, &self.largest)),
                    Reverse(index),
                ));
            }
            decisions.push(Decision::Bind {
                task: task.clone(),
                node: name,
                victims: Vec::new(),
            });
        }
        // Once preemption finds no room for one task, it finds none for the
        // class's others: they need the same and nothing was freed.
        let mut no_room = !class.prod;
        let mut evictions: Option<Evictions> = None;
        for task in unplaced {
            let preempted = if no_room {
                None
            } else {
                let heap = evictions.get_or_insert_with(|| self.evictions(class, &per_node));
                self.preempt(class, &task, &per_node, spread.as_ref(), heap)
            };
            no_room = preempted.is_none();
            match preempted {
                Some((name, victims)) => {
                    let domain = spread
                        .as_ref()
                        .and_then(|s| self.view(&name).and_then(|v| v.labels.get(&s.key).cloned()));
                    if let Some(s) = spread.as_mut() {
                        s.record(domain.as_ref());
                    }
                    *per_node.entry(name.clone()).or_default() += 1;
                    decisions.push(Decision::Bind {
                        task,
                        node: name,
                        victims,
                    });
                }
                None => decisions.push(Decision::Wait {
                    task,
                    reason: why.to_string(),
                }),
            }
        }
    }

    /// Adds feasible nodes to the heap, starting at the `scanned`th node of
    /// the sampling order: all of them, or until `sample` are found.
    /// Returns how many nodes it looked at.
    fn scan(
        &self,
        class: &Class,
        per_node: &HashMap<String, u32>,
        heap: &mut BinaryHeap<(Score, Reverse<usize>)>,
        why: &mut Why,
        scanned: usize,
    ) -> usize {
        let n = self.order.len();
        let mut looked = 0;
        let mut found = 0;
        while scanned + looked < n {
            let index = (self.start + scanned + looked) % n;
            looked += 1;
            let name = self.order[index];
            let Some(node) = self.view(name) else {
                continue;
            };
            if let Err(reason) = feasible::static_filter(node, class) {
                why.note(reason);
                continue;
            }
            if !feasible::below_per_node_limit(per_node.get(name).copied().unwrap_or(0), class) {
                why.note(Reason::AntiAffinity);
                continue;
            }
            if !feasible::fits(node, class) {
                why.note(Reason::Resources);
                continue;
            }
            heap.push((
                Score(score::score(self.policy, node, class, index, &self.largest)),
                Reverse(index),
            ));
            found += 1;
            if self.sample > 0 && found >= self.sample {
                break;
            }
        }
        looked
    }

    /// Records a decision in the overlay: the task holds the node, the
    /// victims no longer do.
    fn assume(
        &mut self,
        node: &str,
        task: &Arc<pb::Object>,
        class: &Class,
        victims: &[Arc<pb::Object>],
    ) {
        // Every task counts towards its job's per-node tally, whatever its
        // class: during a rollout, tasks of one job may have different rules.
        let job = task
            .as_task()
            .and_then(|t| t.spec.as_ref())
            .map(|s| (task.namespace().to_string(), s.job.clone()));
        let Some(view) = self.view_mut(node) else {
            return;
        };
        for victim in victims {
            if let Some(asked) = victim.as_task().and_then(|t| t.requests()) {
                view.batch.add(&Amount::of(asked), -1);
            }
            view.tasks.remove(&victim.key());
        }
        if class.prod {
            view.prod.add(&class.asked, 1);
        } else {
            view.batch.add(&class.asked, 1);
        }
        view.tasks.insert(task.key());
        for victim in victims {
            self.evicted.insert(victim.key());
        }
        if let Some(job) = job {
            *self.placed.entry((job, node.to_string())).or_default() += 1;
        }
    }

    /// What would make room for a task of `class` on the `index`th node:
    /// `None` if the node may not take it or evicting all its batch would
    /// not be enough. (Spread is checked by the caller: it changes as the
    /// class is placed.)
    fn eviction_on(
        &self,
        index: usize,
        class: &Class,
        per_node: &HashMap<String, u32>,
    ) -> Option<preempt::Eviction> {
        let name = self.order[index];
        let node = self.view(name)?;
        if feasible::static_filter(node, class).is_err()
            || !feasible::below_per_node_limit(per_node.get(name).copied().unwrap_or(0), class)
        {
            return None;
        }
        let candidates: Vec<Candidate> = node
            .tasks
            .iter()
            .filter(|k| !self.evicted.contains(*k))
            .filter_map(|k| self.state.tasks.get(k))
            .filter_map(|o| {
                let t = o.as_task()?;
                let spec = t.spec.as_ref()?;
                (spec.tier() == pb::Tier::Batch && t.holding_node().is_some()).then(|| Candidate {
                    key: o.key(),
                    priority: spec.priority,
                    asked: t.requests().map(Amount::of).unwrap_or_default(),
                })
            })
            .collect();
        preempt::evict_for(node, class, candidates)
    }

    /// Every node where room can be made for `class`, by cost.
    fn evictions(&self, class: &Class, per_node: &HashMap<String, u32>) -> Evictions {
        (0..self.order.len())
            .filter_map(|i| {
                self.eviction_on(i, class, per_node)
                    .map(|e| Reverse((e.cost(), i)))
            })
            .collect()
    }

    /// Finds the node where evicting batch costs least for a prod task.
    ///
    /// `heap` holds, per node, a cost no higher than the true one: exact for
    /// nodes this class has not touched, the lowest possible for the node a
    /// task just went to. A popped node is re-evaluated; if its cost rose it
    /// goes back in. So each task costs a re-evaluation or a few, not a scan
    /// of every node and its tasks.
    fn preempt(
        &mut self,
        class: &Class,
        task: &Arc<pb::Object>,
        per_node: &HashMap<String, u32>,
        spread: Option<&Spread>,
        heap: &mut Evictions,
    ) -> Option<(String, Vec<Arc<pb::Object>>)> {
        if !class.prod {
            return None;
        }
        let mut held_back = Vec::new();
        let found = loop {
            let Some(Reverse((cost, index))) = heap.pop() else {
                break None;
            };
            let name = self.order[index];
            if let Some(s) = spread
                && !s.allows(self.view(name).and_then(|n| n.labels.get(&s.key)))
            {
                held_back.push(Reverse((cost, index)));
                continue;
            }
            // No eviction any more: the node stays out for this class.
            let Some(eviction) = self.eviction_on(index, class, per_node) else {
                continue;
            };
            if eviction.cost() == cost {
                break Some((index, eviction));
            }
            heap.push(Reverse((eviction.cost(), index)));
        };
        heap.extend(held_back);
        let (index, eviction) = found?;
        let name = self.order[index].to_string();
        let victims: Vec<Arc<pb::Object>> = eviction
            .victims
            .iter()
            .filter_map(|k| self.state.tasks.get(k).cloned())
            .collect();
        self.assume(&name, task, class, &victims);
        // The node changed: re-evaluated when next popped, which is first.
        heap.push(Reverse(((0, i32::MIN), index)));
        Some((name, victims))
    }
}

/// Nodes by the cost of making room on them — (victims, worst priority),
/// then node order — cheapest first.
type Evictions = BinaryHeap<Reverse<((usize, i32), usize)>>;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use berth_proto::capacity::Capacity;
    use proptest::prelude::*;

    use crate::state::tests::{node, task};

    pub fn view(name: &str, cpu: i64, labels: &[(&str, &str)]) -> NodeView {
        NodeView {
            name: name.into(),
            known: true,
            ready: true,
            cordoned: false,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            capacity: Capacity {
                allocatable: Amount {
                    cpu,
                    memory: 64 << 30,
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        }
    }

    pub fn class(tier: pb::Tier, cpu: i64, selector: &str) -> Class {
        Class {
            prod: tier == pb::Tier::Prod,
            priority: 0,
            asked: Amount {
                cpu,
                memory: 1 << 20,
                ..Default::default()
            },
            constraints: Selector::parse(selector).unwrap(),
            job: None,
            spread: None,
            max_per_node: 0,
            tasks: Vec::new(),
        }
    }

    fn spread_task(name: &str, job: &str, cpu: i64, key: &str, skew: u32) -> pb::Object {
        let mut t = task(name, job, pb::Tier::Batch, cpu, "", 1);
        if let Some(pb::object::Kind::Task(t)) = &mut t.kind {
            t.spec.as_mut().unwrap().spread = Some(pb::Spread {
                key: key.into(),
                max_skew: skew,
            });
        }
        t
    }

    fn bound_nodes(decisions: &[Decision]) -> Vec<String> {
        decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Bind { node, .. } => Some(node.clone()),
                Decision::Wait { .. } => None,
            })
            .collect()
    }

    #[test]
    fn within_a_priority_the_first_to_arrive_is_placed_first() {
        let created_at = |mut t: pb::Object, ms: i64| {
            if let Some(meta) = t.metadata_mut() {
                meta.created_at_ms = ms;
            }
            Arc::new(t)
        };
        // A pending task that arrived at 2000, and a task about to be
        // created (version 0): its job's arrival decides its turn.
        let waiting = created_at(task("w-0", "w", pb::Tier::Batch, 100, "", 7), 2_000);
        let new = Arc::new(task("n-0", "n", pb::Tier::Batch, 300, "", 0));
        let first = |job_arrived: i64| {
            let arrived = HashMap::from([(new.key(), job_arrived)]);
            let classes = classify(vec![waiting.clone(), new.clone()], &arrived, false);
            classes[0].tasks[0].name().to_string()
        };
        assert_eq!(first(1_000), "n-0");
        assert_eq!(first(3_000), "w-0");
        // Each task its own class when classes are off.
        let pending: Vec<_> = (0..3)
            .map(|i| {
                Arc::new(task(
                    &format!("b-{i}"),
                    "b",
                    pb::Tier::Batch,
                    100,
                    "",
                    i + 1,
                ))
            })
            .collect();
        assert_eq!(classify(pending.clone(), &HashMap::new(), false).len(), 1);
        assert_eq!(classify(pending, &HashMap::new(), true).len(), 3);
    }

    #[test]
    fn identical_tasks_form_one_class_prod_first() {
        let pending = vec![
            Arc::new(task("b-0", "b", pb::Tier::Batch, 100, "", 1)),
            Arc::new(task("a-0", "a", pb::Tier::Prod, 100, "", 2)),
            Arc::new(task("b-1", "b", pb::Tier::Batch, 100, "", 3)),
            Arc::new(task("c-0", "c", pb::Tier::Batch, 100, "", 4)),
        ];
        let classes = classify(pending, &HashMap::new(), false);
        assert_eq!(classes.len(), 2, "b and c ask the same: one class");
        assert!(classes[0].prod);
        assert_eq!(classes[1].tasks.len(), 3);
    }

    #[test]
    fn binpack_fills_one_node_before_the_next() {
        let mut s = ClusterState::default();
        s.upsert(node("n1", 4000, &[]));
        s.upsert(node("n2", 4000, &[]));
        // A quarter of a node's CPU and memory each: nothing to strand, so
        // binpack is free to fill.
        let pending: Vec<_> = (0..4)
            .map(|i| {
                let mut t = task(&format!("j-{i}"), "j", pb::Tier::Batch, 1000, "", i);
                if let Some(pb::object::Kind::Task(t)) = &mut t.kind
                    && let Some(r) = t
                        .spec
                        .as_mut()
                        .and_then(|s| s.template.as_mut())
                        .and_then(|t| t.resources.as_mut())
                {
                    r.memory_bytes = 16 << 30;
                }
                Arc::new(t)
            })
            .collect();
        let decisions = Placer::new(&s, Policy::Binpack, 0, 0).place(pending.clone());
        let nodes = bound_nodes(&decisions);
        assert_eq!(nodes.iter().collect::<HashSet<_>>().len(), 1, "{nodes:?}");
        let decisions = Placer::new(&s, Policy::Spread, 0, 0).place(pending);
        let nodes = bound_nodes(&decisions);
        assert_eq!(nodes.iter().filter(|n| *n == "n1").count(), 2, "{nodes:?}");
    }

    #[test]
    fn a_task_that_fits_nowhere_waits_with_the_reason() {
        let mut s = ClusterState::default();
        s.upsert(node("n1", 1000, &[]));
        let decisions = Placer::new(&s, Policy::Binpack, 0, 0).place(vec![Arc::new(task(
            "big-0",
            "big",
            pb::Tier::Batch,
            2000,
            "",
            1,
        ))]);
        match &decisions[0] {
            Decision::Wait { reason, .. } => {
                assert_eq!(reason, "0 of 1 nodes can take it: 1 insufficient resources")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prod_preempts_the_lowest_batch() {
        let mut s = ClusterState::default();
        s.upsert(node("n1", 2000, &[]));
        s.upsert(task("b-0", "b", pb::Tier::Batch, 1000, "n1", 1));
        s.upsert(task("b-1", "b", pb::Tier::Batch, 1000, "n1", 2));
        let decisions = Placer::new(&s, Policy::Binpack, 0, 0).place(vec![Arc::new(task(
            "p-0",
            "p",
            pb::Tier::Prod,
            1000,
            "",
            3,
        ))]);
        match &decisions[0] {
            Decision::Bind { node, victims, .. } => {
                assert_eq!(node, "n1");
                assert_eq!(victims.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prod_tasks_of_one_class_reuse_the_room_an_eviction_made() {
        // n1's batch is worth more (priority 5) than n2's (1). The first
        // prod task evicts a 2000m task on n2; the second then fits in what
        // is left there, with no victim — n2 must be looked at again.
        let with_priority = |mut t: pb::Object, priority: i32| {
            if let Some(pb::object::Kind::Task(t)) = &mut t.kind {
                t.spec.as_mut().unwrap().priority = priority;
            }
            t
        };
        let mut s = ClusterState::default();
        s.upsert(node("n1", 4000, &[]));
        s.upsert(node("n2", 4000, &[]));
        for i in 0..4 {
            let t = task(&format!("a-{i}"), "a", pb::Tier::Batch, 1000, "n1", i + 1);
            s.upsert(with_priority(t, 5));
        }
        for i in 0..2 {
            let t = task(&format!("b-{i}"), "b", pb::Tier::Batch, 2000, "n2", i + 10);
            s.upsert(with_priority(t, 1));
        }
        let pending = (0..2)
            .map(|i| {
                Arc::new(task(
                    &format!("p-{i}"),
                    "p",
                    pb::Tier::Prod,
                    1000,
                    "",
                    i + 20,
                ))
            })
            .collect();
        let decisions = Placer::new(&s, Policy::Binpack, 0, 0).place(pending);
        let placed: Vec<(&str, usize)> = decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Bind { node, victims, .. } => Some((node.as_str(), victims.len())),
                Decision::Wait { .. } => None,
            })
            .collect();
        assert_eq!(placed, [("n2", 1), ("n2", 0)]);
    }

    #[test]
    fn spread_keeps_zones_balanced() {
        let mut s = ClusterState::default();
        s.upsert(node("a1", 16000, &[("zone", "a")]));
        s.upsert(node("b1", 16000, &[("zone", "b")]));
        s.upsert(node("c1", 16000, &[("zone", "c")]));
        let pending: Vec<_> = (0..6)
            .map(|i| Arc::new(spread_task(&format!("s-{i}"), "s", 100, "zone", 1)))
            .collect();
        let nodes = bound_nodes(&Placer::new(&s, Policy::Binpack, 0, 0).place(pending));
        for zone in ["a1", "b1", "c1"] {
            assert_eq!(nodes.iter().filter(|n| *n == zone).count(), 2, "{nodes:?}");
        }
    }

    /// A random cluster: nodes with labels and capacities, tasks bound to
    /// some of them, and pending tasks of random tiers, shapes and rules.
    fn cluster() -> impl Strategy<Value = (ClusterState, Vec<Arc<pb::Object>>)> {
        let nodes = prop::collection::vec((1000i64..16000, 0usize..3), 1..12);
        let bound =
            prop::collection::vec((0usize..12, prop::bool::ANY, 100i64..4000, 0i32..5), 0..20);
        let pending = prop::collection::vec(
            (
                prop::bool::ANY,
                100i64..6000,
                0i32..5,
                0u32..3,
                prop::bool::ANY,
            ),
            1..40,
        );
        (nodes, bound, pending).prop_map(|(nodes, bound, pending)| {
            let mut s = ClusterState::default();
            for (i, (cpu, zone)) in nodes.iter().enumerate() {
                let zone = ["a", "b", "c"][*zone];
                s.upsert(node(&format!("n{i:02}"), *cpu, &[("zone", zone)]));
            }
            for (i, (on, prod, cpu, priority)) in bound.into_iter().enumerate() {
                let rv = 10 + i as u64;
                let on = format!("n{:02}", on % nodes.len());
                let tier = if prod {
                    pb::Tier::Prod
                } else {
                    pb::Tier::Batch
                };
                let mut t = task(
                    &format!("bound-{i}"),
                    &format!("bound-{i}"),
                    tier,
                    cpu,
                    &on,
                    rv,
                );
                if let Some(pb::object::Kind::Task(t)) = &mut t.kind {
                    t.spec.as_mut().unwrap().priority = priority;
                }
                // Only keep what the apiserver would have accepted.
                let view = s.nodes[&on].clone();
                let asked = Amount {
                    cpu,
                    memory: 1 << 20,
                    ..Default::default()
                };
                if view
                    .capacity
                    .check_add(&on, &view.prod, &view.batch, &asked, prod)
                    .is_ok()
                {
                    s.upsert(t);
                }
            }
            let pending = pending
                .into_iter()
                .enumerate()
                .map(|(i, (prod, cpu, priority, rule, spread))| {
                    let tier = if prod {
                        pb::Tier::Prod
                    } else {
                        pb::Tier::Batch
                    };
                    let job = format!("p{}", i % 4);
                    let mut t = task(&format!("{job}-{i}"), &job, tier, cpu, "", 100 + i as u64);
                    if let Some(pb::object::Kind::Task(t)) = &mut t.kind {
                        let spec = t.spec.as_mut().unwrap();
                        spec.priority = priority;
                        spec.max_per_node = rule;
                        if spread {
                            spec.spread = Some(pb::Spread {
                                key: "zone".into(),
                                max_skew: 1,
                            });
                        }
                    }
                    Arc::new(t)
                })
                .collect();
            (s, pending)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Applying every decision in order never over-commits a node, every
        /// bind goes to a feasible node, no prod task is evicted, and spread
        /// and anti-affinity hold.
        #[test]
        fn decisions_keep_every_invariant((state, pending) in cluster(), policy in prop::sample::select(vec![Policy::Binpack, Policy::Spread, Policy::Firstfit]), sample in 0usize..4) {
            let decisions = Placer::new(&state, policy, sample, 7).place(pending);
            let mut nodes = state.nodes.clone();
            let mut per_job_node: HashMap<(String, String), u32> = HashMap::new();
            for t in state.tasks.values() {
                let task = t.as_task().unwrap();
                if let Some(node) = task.holding_node() {
                    *per_job_node.entry((task.spec.as_ref().unwrap().job.clone(), node.to_string())).or_default() += 1;
                }
            }
            for decision in &decisions {
                let Decision::Bind { task, node, victims } = decision else { continue };
                let t = task.as_task().unwrap();
                let spec = t.spec.as_ref().unwrap();
                let view = nodes.get_mut(node).unwrap();
                prop_assert!(view.schedulable());
                for victim in victims {
                    let v = victim.as_task().unwrap();
                    prop_assert_eq!(v.spec.as_ref().unwrap().tier(), pb::Tier::Batch, "prod is never a victim");
                    prop_assert_eq!(spec.tier(), pb::Tier::Prod, "only prod preempts");
                    view.batch.add(&Amount::of(v.requests().unwrap()), -1);
                }
                let asked = Amount::of(t.requests().unwrap());
                let prod = spec.tier() == pb::Tier::Prod;
                prop_assert!(view.capacity.check_add(node, &view.prod, &view.batch, &asked, prod).is_ok(),
                    "{} over-committed", node);
                if prod { view.prod.add(&asked, 1) } else { view.batch.add(&asked, 1) }
                let count = per_job_node.entry((spec.job.clone(), node.clone())).or_default();
                *count += 1;
                if spec.max_per_node > 0 {
                    prop_assert!(*count <= spec.max_per_node, "anti-affinity broken on {}", node);
                }
            }
        }

        /// When every task of a spread job can be placed in any zone, the
        /// skew between zones stays within max_skew.
        #[test]
        fn spread_is_never_exceeded_when_satisfiable(tasks in 1usize..30, skew in 1u32..3, zones in 2usize..4) {
            let mut s = ClusterState::default();
            for z in 0..zones {
                s.upsert(node(&format!("n{z}"), 1_000_000, &[("zone", &format!("z{z}"))]));
            }
            let pending: Vec<_> = (0..tasks)
                .map(|i| Arc::new(spread_task(&format!("s-{i}"), "s", 10, "zone", skew)))
                .collect();
            let decisions = Placer::new(&s, Policy::Binpack, 0, 0).place(pending);
            let nodes = bound_nodes(&decisions);
            prop_assert_eq!(nodes.len(), tasks, "all placed");
            let counts: Vec<usize> = (0..zones).map(|z| nodes.iter().filter(|n| **n == format!("n{z}")).count()).collect();
            let (max, min) = (*counts.iter().max().unwrap(), *counts.iter().min().unwrap());
            prop_assert!(max - min <= skew as usize, "{:?}", counts);
        }
    }
}
