//! What every node has promised to the tasks bound to it, kept up to date on
//! every task write, so that a bind is checked against the whole node in
//! constant time (Omega's shared state: a stale scheduler cache cannot
//! over-commit a node, because the check happens here, at apply).
//!
//! The invariants a bind keeps, per node:
//!
//! - prod requests ≤ allocatable;
//! - batch requests ≤ allocatable − prod requests + reclaimable, where
//!   reclaimable (written by the scheduler from measured usage) is what prod
//!   reserved but is not expected to use, never more than prod requests;
//! - extended resources (`gpu`): all requests ≤ allocatable, no borrowing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use berth_proto::object::ObjectKey;
use berth_proto::pb;
use berth_proto::quantity::{format_cpu, format_memory};

/// Summed requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Amount {
    pub cpu: i64,
    pub memory: i64,
    pub extended: BTreeMap<String, i64>,
}

impl Amount {
    pub fn of(r: &pb::Resources) -> Amount {
        Amount {
            cpu: r.cpu_millis,
            memory: r.memory_bytes,
            extended: r.extended.clone(),
        }
    }

    fn add(&mut self, other: &Amount, sign: i64) {
        self.cpu += sign * other.cpu;
        self.memory += sign * other.memory;
        for (k, v) in &other.extended {
            let slot = self.extended.entry(k.clone()).or_default();
            *slot += sign * v;
            if *slot == 0 {
                self.extended.remove(k);
            }
        }
    }

    pub fn plus(&self, other: &Amount) -> Amount {
        let mut sum = self.clone();
        sum.add(other, 1);
        sum
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu {}, memory {}",
            format_cpu(self.cpu),
            format_memory(self.memory)
        )?;
        for (k, v) in &self.extended {
            write!(f, ", {k} {v}")?;
        }
        Ok(())
    }
}

/// One node's promises.
#[derive(Debug, Clone, Default)]
pub struct NodeAllocation {
    pub prod: Amount,
    pub batch: Amount,
    /// Tasks holding resources here.
    pub tasks: BTreeSet<Arc<ObjectKey>>,
}

#[derive(Debug, Clone, Default)]
pub struct Allocations {
    by_node: HashMap<String, NodeAllocation>,
}

/// What a task holds, and where.
struct Holding<'a> {
    node: &'a str,
    prod: bool,
    amount: Amount,
}

fn holding(task: &pb::Task) -> Option<Holding<'_>> {
    let node = task.holding_node()?;
    let amount = task.requests().map(Amount::of).unwrap_or_default();
    let prod = task
        .spec
        .as_ref()
        .is_some_and(|s| s.tier() == pb::Tier::Prod);
    Some(Holding { node, prod, amount })
}

impl Allocations {
    /// Builds the index from every task.
    pub fn build<'a>(
        tasks: impl Iterator<Item = (&'a Arc<ObjectKey>, &'a Arc<pb::Object>)>,
    ) -> Allocations {
        let mut allocations = Allocations::default();
        for (key, object) in tasks {
            allocations.account(key, None, Some(object));
        }
        allocations
    }

    pub fn get(&self, node: &str) -> Option<&NodeAllocation> {
        self.by_node.get(node)
    }

    /// Moves a task's promise from its old version to its new one.
    pub fn account(
        &mut self,
        key: &Arc<ObjectKey>,
        old: Option<&pb::Object>,
        new: Option<&pb::Object>,
    ) {
        if key.kind != pb::Kind::Task {
            return;
        }
        if let Some(h) = old.and_then(|o| o.as_task()).and_then(holding)
            && let Some(node) = self.by_node.get_mut(h.node)
        {
            let side = if h.prod {
                &mut node.prod
            } else {
                &mut node.batch
            };
            side.add(&h.amount, -1);
            node.tasks.remove(key);
            if node.tasks.is_empty() {
                self.by_node.remove(h.node);
            }
        }
        if let Some(h) = new.and_then(|o| o.as_task()).and_then(holding) {
            let node = self.by_node.entry(h.node.to_string()).or_default();
            let side = if h.prod {
                &mut node.prod
            } else {
                &mut node.batch
            };
            side.add(&h.amount, 1);
            node.tasks.insert(key.clone());
        }
    }

    /// Whether `task` fits on `node` next to what is bound there; the error
    /// says which resource does not.
    pub fn check_bind(
        &self,
        node_name: &str,
        node: &pb::Node,
        task: &pb::Task,
    ) -> Result<(), String> {
        let status = node.status.clone().unwrap_or_default();
        let capacity = Amount::of(&status.allocatable.or(status.capacity).unwrap_or_default());
        let asked = task.requests().map(Amount::of).unwrap_or_default();
        let prod_task = task
            .spec
            .as_ref()
            .is_some_and(|s| s.tier() == pb::Tier::Prod);
        let here = self.by_node.get(node_name).cloned().unwrap_or_default();
        let (prod, batch) = if prod_task {
            (here.prod.plus(&asked), here.batch.clone())
        } else {
            (here.prod.clone(), here.batch.plus(&asked))
        };
        let reclaimable = status.reclaimable.unwrap_or_default();
        let room = |resource: &str,
                    capacity: i64,
                    prod: i64,
                    batch: i64,
                    reclaimable: i64,
                    show: fn(i64) -> String| {
            if prod > capacity {
                return Err(format!(
                    "node {node_name} has {} of {resource} for prod, its prod tasks would ask {}",
                    show(capacity),
                    show(prod)
                ));
            }
            let borrowable = reclaimable.clamp(0, prod);
            if batch > capacity - prod + borrowable {
                return Err(format!(
                    "node {node_name}: batch tasks would ask {} of {resource}, but prod leaves {} \
                     (with {} reclaimed); preempt batch first",
                    show(batch),
                    show(capacity - prod),
                    show(borrowable)
                ));
            }
            Ok(())
        };
        room(
            "cpu",
            capacity.cpu,
            prod.cpu,
            batch.cpu,
            reclaimable.cpu_millis,
            format_cpu,
        )?;
        room(
            "memory",
            capacity.memory,
            prod.memory,
            batch.memory,
            reclaimable.memory_bytes,
            format_memory,
        )?;
        for (name, wanted) in prod.plus(&batch).extended {
            let have = capacity.extended.get(&name).copied().unwrap_or(0);
            if wanted > have {
                return Err(format!(
                    "node {node_name} has {have} {name}, its tasks would ask {wanted}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cpu: i64, memory: i64, reclaimable_cpu: i64) -> pb::Node {
        pb::Node {
            metadata: None,
            spec: None,
            status: Some(pb::NodeStatus {
                allocatable: Some(pb::Resources {
                    cpu_millis: cpu,
                    memory_bytes: memory,
                    extended: [("gpu".to_string(), 1)].into(),
                }),
                reclaimable: Some(pb::Usage {
                    cpu_millis: reclaimable_cpu,
                    memory_bytes: 0,
                }),
                ..Default::default()
            }),
        }
    }

    fn task(tier: pb::Tier, cpu: i64, gpu: i64, on: &str) -> pb::Object {
        pb::Object::from(pb::Task {
            metadata: None,
            spec: Some(pb::TaskSpec {
                tier: tier as i32,
                template: Some(pb::TaskTemplate {
                    resources: Some(pb::Resources {
                        cpu_millis: cpu,
                        memory_bytes: 1,
                        extended: if gpu > 0 {
                            [("gpu".to_string(), gpu)].into()
                        } else {
                            BTreeMap::new()
                        },
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(pb::TaskStatus {
                node: on.into(),
                phase: pb::TaskPhase::Running as i32,
                ..Default::default()
            }),
        })
    }

    fn bound(allocations: &mut Allocations, name: &str, object: &pb::Object) {
        let key = Arc::new(ObjectKey::new(pb::Kind::Task, "default", name));
        allocations.account(&key, None, Some(object));
    }

    #[test]
    fn prod_fills_the_node_batch_fills_the_rest() {
        let mut a = Allocations::default();
        let n = node(4000, 100, 0);
        bound(&mut a, "p", &task(pb::Tier::Prod, 3000, 0, "n1"));
        let batch = task(pb::Tier::Batch, 1000, 0, "");
        assert!(a.check_bind("n1", &n, batch.as_task().unwrap()).is_ok());
        let too_big = task(pb::Tier::Batch, 1001, 0, "");
        let err = a
            .check_bind("n1", &n, too_big.as_task().unwrap())
            .unwrap_err();
        assert!(err.contains("prod leaves 1"), "{err}");
        let prod = task(pb::Tier::Prod, 1001, 0, "");
        assert!(
            a.check_bind("n1", &n, prod.as_task().unwrap())
                .unwrap_err()
                .contains("for prod")
        );
    }

    #[test]
    fn batch_borrows_what_prod_does_not_use_and_prod_takes_it_back() {
        let mut a = Allocations::default();
        let n = node(4000, 100, 2000);
        bound(&mut a, "p", &task(pb::Tier::Prod, 3000, 0, "n1"));
        // 1 core free plus 2 reclaimed.
        bound(&mut a, "b", &task(pb::Tier::Batch, 3000, 0, "n1"));
        let more = task(pb::Tier::Batch, 1, 0, "");
        assert!(a.check_bind("n1", &n, more.as_task().unwrap()).is_err());
        // A prod task that fits prod's share still must not leave batch over.
        let prod = task(pb::Tier::Prod, 500, 0, "");
        let err = a.check_bind("n1", &n, prod.as_task().unwrap()).unwrap_err();
        assert!(err.contains("preempt batch first"), "{err}");
    }

    #[test]
    fn extended_resources_are_never_borrowed_and_finished_tasks_free_them() {
        let mut a = Allocations::default();
        let n = node(4000, 100, 4000);
        let gpu_task = task(pb::Tier::Batch, 100, 1, "n1");
        bound(&mut a, "g", &gpu_task);
        let another = task(pb::Tier::Batch, 100, 1, "");
        assert!(
            a.check_bind("n1", &n, another.as_task().unwrap())
                .unwrap_err()
                .contains("gpu")
        );
        let mut done = gpu_task.clone();
        if let Some(pb::object::Kind::Task(t)) = &mut done.kind {
            t.status.as_mut().unwrap().phase = pb::TaskPhase::Succeeded as i32;
        }
        let key = Arc::new(ObjectKey::new(pb::Kind::Task, "default", "g"));
        a.account(&key, Some(&gpu_task), Some(&done));
        assert!(a.check_bind("n1", &n, another.as_task().unwrap()).is_ok());
        assert!(a.get("n1").is_none());
    }
}
