//! What every node has promised to the tasks bound to it, kept up to date on
//! every task write, so that a bind is checked against the whole node in
//! constant time (Omega's shared state: a stale scheduler cache cannot
//! over-commit a node, because the check happens here, at apply). The rule
//! itself is `berth_proto::capacity`, shared with the scheduler.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use berth_proto::capacity::{Amount, Capacity};
use berth_proto::object::ObjectKey;
use berth_proto::pb;

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
        let here = self.by_node.get(node_name).cloned().unwrap_or_default();
        let asked = task.requests().map(Amount::of).unwrap_or_default();
        let prod = task
            .spec
            .as_ref()
            .is_some_and(|s| s.tier() == pb::Tier::Prod);
        Capacity::of(node).check_add(node_name, &here.prod, &here.batch, &asked, prod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn node(cpu: i64) -> pb::Node {
        pb::Node {
            metadata: None,
            spec: None,
            status: Some(pb::NodeStatus {
                allocatable: Some(pb::Resources {
                    cpu_millis: cpu,
                    memory_bytes: 100,
                    extended: BTreeMap::new(),
                }),
                ..Default::default()
            }),
        }
    }

    fn task(tier: pb::Tier, cpu: i64, on: &str, phase: pb::TaskPhase) -> pb::Object {
        pb::Object::from(pb::Task {
            metadata: None,
            spec: Some(pb::TaskSpec {
                tier: tier as i32,
                template: Some(pb::TaskTemplate {
                    resources: Some(pb::Resources {
                        cpu_millis: cpu,
                        memory_bytes: 1,
                        extended: BTreeMap::new(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(pb::TaskStatus {
                node: on.into(),
                phase: phase as i32,
                ..Default::default()
            }),
        })
    }

    #[test]
    fn bound_tasks_count_until_they_finish() {
        let mut a = Allocations::default();
        let key = Arc::new(ObjectKey::new(pb::Kind::Task, "default", "t"));
        let running = task(pb::Tier::Prod, 3000, "n1", pb::TaskPhase::Running);
        a.account(&key, None, Some(&running));
        let another = task(pb::Tier::Prod, 2000, "", pb::TaskPhase::Pending);
        assert!(
            a.check_bind("n1", &node(4000), another.as_task().unwrap())
                .is_err()
        );
        let done = task(pb::Tier::Prod, 3000, "n1", pb::TaskPhase::Succeeded);
        a.account(&key, Some(&running), Some(&done));
        assert!(
            a.check_bind("n1", &node(4000), another.as_task().unwrap())
                .is_ok()
        );
        assert!(a.get("n1").is_none());
    }
}
