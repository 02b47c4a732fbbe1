//! The scheduler's view of the cluster: jobs, tasks and nodes from List and
//! Watch, plus its own writes as soon as the apiserver answers them, so that
//! the next decision already sees the last one.
//!
//! Every update carries a resource version; an update older than what the
//! view holds (the watch catching up with a write the view already has) is
//! ignored, and deletions leave a tombstone until the watch has passed them.
//! Per node, the view keeps what its tasks hold (the same accounting the
//! apiserver does), so that placement never scans all tasks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use berth_proto::capacity::{Amount, Capacity};
use berth_proto::object::ObjectKey;
use berth_proto::pb;

/// A job, by namespace and name.
pub type JobKey = (String, String);

/// One node as placement sees it.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub name: String,
    /// False for a name tasks mention but no Node object has (yet).
    pub known: bool,
    pub ready: bool,
    pub cordoned: bool,
    pub labels: BTreeMap<String, String>,
    pub capacity: Capacity,
    /// Requests of the prod and batch tasks holding resources here.
    pub prod: Amount,
    pub batch: Amount,
    pub tasks: BTreeSet<ObjectKey>,
    pub resource_version: u64,
    /// The Node object itself (for status writes such as reclamation).
    pub object: Option<Arc<pb::Object>>,
}

impl NodeView {
    pub fn schedulable(&self) -> bool {
        self.known && self.ready && !self.cordoned
    }
}

#[derive(Debug, Default)]
pub struct ClusterState {
    pub jobs: BTreeMap<JobKey, Arc<pb::Object>>,
    pub tasks: BTreeMap<ObjectKey, Arc<pb::Object>>,
    pub nodes: BTreeMap<String, NodeView>,
    /// Task names of each job.
    pub tasks_by_job: HashMap<JobKey, BTreeSet<String>>,
    /// Latest usage per node, from the leader's heartbeats.
    pub usage: HashMap<String, pb::NodeUsage>,
    tombstones: HashMap<ObjectKey, u64>,
    dirty_jobs: BTreeSet<JobKey>,
    /// Kinds listed at least once (nothing is decided before all are).
    synced: BTreeSet<i32>,
    /// Tasks waiting for a node: phase Pending and not bound.
    pub pending: BTreeSet<ObjectKey>,
    /// Set when a task became pending.
    pub pending_changed: bool,
    /// Set when nodes or task placements changed: pending tasks may fit now.
    pub placement_changed: bool,
}

fn is_pending(object: &pb::Object) -> bool {
    object.as_task().is_some_and(|t| {
        let status = t.status.as_ref();
        status.is_none_or(|s| s.node.is_empty() && s.phase() == pb::TaskPhase::Pending)
    })
}

fn job_of(object: &pb::Object) -> Option<JobKey> {
    let task = object.as_task()?;
    let job = task.spec.as_ref()?.job.clone();
    Some((object.namespace().to_string(), job))
}

impl ClusterState {
    pub fn is_synced(&self) -> bool {
        [pb::Kind::Job, pb::Kind::Task, pb::Kind::Node]
            .iter()
            .all(|k| self.synced.contains(&(*k as i32)))
    }

    fn version_of(&self, key: &ObjectKey) -> u64 {
        let stored = match key.kind {
            pb::Kind::Job => self
                .jobs
                .get(&(key.namespace.clone(), key.name.clone()))
                .map(|o| o.resource_version()),
            pb::Kind::Task => self.tasks.get(key).map(|o| o.resource_version()),
            pb::Kind::Node => self
                .nodes
                .get(&key.name)
                .filter(|n| n.known)
                .map(|n| n.resource_version),
            _ => None,
        };
        stored
            .unwrap_or(0)
            .max(self.tombstones.get(key).copied().unwrap_or(0))
    }

    /// Takes a newer version of an object; older ones are ignored.
    pub fn upsert(&mut self, object: pb::Object) {
        let key = object.key();
        if object.resource_version() < self.version_of(&key) {
            return;
        }
        self.tombstones.remove(&key);
        let object = Arc::new(object);
        match key.kind {
            pb::Kind::Job => {
                let job = (key.namespace, key.name);
                self.dirty_jobs.insert(job.clone());
                self.jobs.insert(job, object);
            }
            pb::Kind::Task => {
                let old = self.tasks.insert(key.clone(), object.clone());
                self.account(&key, old.as_deref(), Some(&object));
                if is_pending(&object) {
                    self.pending_changed |= self.pending.insert(key.clone());
                } else {
                    self.pending.remove(&key);
                }
                if let Some(job) = job_of(&object) {
                    self.tasks_by_job
                        .entry(job.clone())
                        .or_default()
                        .insert(key.name.clone());
                    self.dirty_jobs.insert(job);
                }
            }
            pb::Kind::Node => {
                let Some(node) = object.as_node() else { return };
                let view = self.nodes.entry(key.name.clone()).or_default();
                let status = node.status.clone().unwrap_or_default();
                view.name = key.name.clone();
                view.known = true;
                view.ready = status.state() == pb::NodeState::Ready;
                view.cordoned = node.spec.as_ref().is_some_and(|s| s.unschedulable);
                view.labels = status.labels;
                view.capacity = Capacity::of(node);
                view.resource_version = object.resource_version();
                view.object = Some(object.clone());
                self.placement_changed = true;
            }
            _ => {}
        }
    }

    /// Forgets an object deleted at `object`'s resource version.
    pub fn remove(&mut self, object: &pb::Object) {
        self.remove_key(object.key(), object.resource_version());
    }

    /// Forgets the object `key`, deleted at `version`. A deletion is ignored
    /// when the view holds a version as new as it: the object was created
    /// again in the same write (a replacement).
    pub fn remove_key(&mut self, key: ObjectKey, version: u64) {
        if version <= self.version_of(&key) {
            return;
        }
        self.tombstones.insert(key.clone(), version);
        match key.kind {
            pb::Kind::Job => {
                let job = (key.namespace, key.name);
                self.jobs.remove(&job);
                self.dirty_jobs.insert(job);
            }
            pb::Kind::Task => {
                self.pending.remove(&key);
                if let Some(old) = self.tasks.remove(&key) {
                    self.account(&key, Some(&old), None);
                    if let Some(job) = job_of(&old) {
                        if let Some(names) = self.tasks_by_job.get_mut(&job) {
                            names.remove(&key.name);
                            if names.is_empty() {
                                self.tasks_by_job.remove(&job);
                            }
                        }
                        self.dirty_jobs.insert(job);
                    }
                }
            }
            pb::Kind::Node => {
                if let Some(view) = self.nodes.get_mut(&key.name) {
                    view.known = false;
                    view.ready = false;
                    view.object = None;
                    if view.tasks.is_empty() {
                        self.nodes.remove(&key.name);
                    }
                }
                self.placement_changed = true;
            }
            _ => {}
        }
    }

    /// Replaces every object of `kind` with a fresh list at `revision`.
    pub fn relist(&mut self, kind: pb::Kind, objects: Vec<pb::Object>, revision: u64) {
        let listed: BTreeSet<ObjectKey> = objects.iter().map(|o| o.key()).collect();
        let held: Vec<ObjectKey> = match kind {
            pb::Kind::Job => self
                .jobs
                .keys()
                .map(|(ns, name)| ObjectKey::new(kind, ns.clone(), name.clone()))
                .collect(),
            pb::Kind::Task => self.tasks.keys().cloned().collect(),
            pb::Kind::Node => self
                .nodes
                .values()
                .filter(|n| n.known)
                .map(|n| ObjectKey::new(kind, "", n.name.clone()))
                .collect(),
            _ => Vec::new(),
        };
        for key in held.into_iter().filter(|k| !listed.contains(k)) {
            self.remove_key(key, revision);
        }
        for object in objects {
            self.upsert(object);
        }
        self.tombstones
            .retain(|k, v| k.kind != kind || *v > revision);
        self.synced.insert(kind as i32);
    }

    /// Drops tombstones the watch of `kind` has passed.
    pub fn forget_tombstones(&mut self, kind: pb::Kind, revision: u64) {
        self.tombstones
            .retain(|k, v| k.kind != kind || *v > revision);
    }

    /// Jobs whose job or tasks changed since the last call.
    pub fn take_dirty_jobs(&mut self) -> Vec<JobKey> {
        std::mem::take(&mut self.dirty_jobs).into_iter().collect()
    }

    pub fn mark_all_jobs_dirty(&mut self) {
        self.dirty_jobs.extend(self.jobs.keys().cloned());
    }

    /// A job's tasks.
    pub fn tasks_of(&self, job: &JobKey) -> impl Iterator<Item = &Arc<pb::Object>> {
        self.tasks_by_job
            .get(job)
            .into_iter()
            .flatten()
            .filter_map(move |name| {
                self.tasks
                    .get(&ObjectKey::new(pb::Kind::Task, job.0.clone(), name.clone()))
            })
    }

    /// Moves a task's hold on a node from its old version to its new one.
    fn account(&mut self, key: &ObjectKey, old: Option<&pb::Object>, new: Option<&pb::Object>) {
        for (object, sign) in [(old, -1), (new, 1)] {
            let Some(task) = object.and_then(|o| o.as_task()) else {
                continue;
            };
            let Some(node) = task.holding_node() else {
                continue;
            };
            let amount = task.requests().map(Amount::of).unwrap_or_default();
            let prod = task
                .spec
                .as_ref()
                .is_some_and(|s| s.tier() == pb::Tier::Prod);
            let view = self
                .nodes
                .entry(node.to_string())
                .or_insert_with(|| NodeView {
                    name: node.to_string(),
                    ..Default::default()
                });
            if prod {
                view.prod.add(&amount, sign);
            } else {
                view.batch.add(&amount, sign);
            }
            if sign > 0 {
                view.tasks.insert(key.clone());
            } else {
                view.tasks.remove(key);
                if !view.known && view.tasks.is_empty() {
                    self.nodes.remove(node);
                }
            }
            self.placement_changed = true;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn node(name: &str, cpu: i64, labels: &[(&str, &str)]) -> pb::Object {
        pb::Object::from(pb::Node {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                resource_version: 1,
                ..Default::default()
            }),
            spec: Some(pb::NodeSpec::default()),
            status: Some(pb::NodeStatus {
                allocatable: Some(pb::Resources {
                    cpu_millis: cpu,
                    memory_bytes: 64 << 30,
                    ..Default::default()
                }),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                state: pb::NodeState::Ready as i32,
                ..Default::default()
            }),
        })
    }

    pub fn task(
        name: &str,
        job: &str,
        tier: pb::Tier,
        cpu: i64,
        node: &str,
        rv: u64,
    ) -> pb::Object {
        pb::Object::from(pb::Task {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                resource_version: rv,
                ..Default::default()
            }),
            spec: Some(pb::TaskSpec {
                job: job.into(),
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
                node: node.into(),
                phase: if node.is_empty() {
                    pb::TaskPhase::Pending
                } else {
                    pb::TaskPhase::Running
                } as i32,
                ..Default::default()
            }),
        })
    }

    #[test]
    fn node_views_follow_tasks_and_ignore_old_versions() {
        let mut s = ClusterState::default();
        s.upsert(node("n1", 4000, &[]));
        s.upsert(task("a-0", "a", pb::Tier::Prod, 1000, "n1", 5));
        s.upsert(task("b-0", "b", pb::Tier::Batch, 500, "n1", 6));
        assert_eq!(
            (s.nodes["n1"].prod.cpu, s.nodes["n1"].batch.cpu),
            (1000, 500)
        );
        // An older version of a-0 (still pending) changes nothing.
        s.upsert(task("a-0", "a", pb::Tier::Prod, 1000, "", 4));
        assert_eq!(s.nodes["n1"].prod.cpu, 1000);
        // A deletion at 7; the watch's older modification at 6 is ignored.
        s.remove(&task("b-0", "b", pb::Tier::Batch, 500, "n1", 7));
        s.upsert(task("b-0", "b", pb::Tier::Batch, 500, "n1", 6));
        assert_eq!(s.nodes["n1"].batch.cpu, 0);
        assert!(s.tasks_of(&("default".into(), "b".into())).next().is_none());
    }

    #[test]
    fn a_relist_drops_what_is_gone() {
        let mut s = ClusterState::default();
        s.upsert(task("a-0", "a", pb::Tier::Prod, 1000, "n1", 5));
        s.upsert(task("a-1", "a", pb::Tier::Prod, 1000, "n1", 6));
        s.relist(
            pb::Kind::Task,
            vec![task("a-1", "a", pb::Tier::Prod, 1000, "n1", 6)],
            9,
        );
        assert_eq!(s.tasks.len(), 1);
        assert_eq!(s.nodes["n1"].prod.cpu, 1000);
    }
}
